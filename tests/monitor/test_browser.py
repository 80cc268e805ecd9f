"""The monitor page in headless Chromium: sign-in, live runs, timeline, cancel, composer,
reconnects, nodes; with screenshots at laptop and phone sizes, light and dark."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, Page, expect

from hub import api_runs
from hub.app import HubServer
from hub.appkeys import BUS, STORE
from hub.auth import principal_for_key
from hub.store import Run, Store, op_insert_run, op_record
from tests.monitor.conftest import API_KEY, NODE_TOKEN, SCREENSHOTS, make_settings, node_url

pytestmark = pytest.mark.browser

AUTH = {"Authorization": f"Bearer {API_KEY}"}
LAPTOP = {"width": 1366, "height": 850}
PHONE = {"width": 390, "height": 844}
EXECUTOR = Callable[[], AbstractAsyncContextManager[Any]]
OpenPage = Callable[..., Awaitable[Page]]

expect.set_options(timeout=10_000)


@pytest.fixture
async def open_page(chromium: Browser) -> AsyncIterator[OpenPage]:
    """Open the page in a fresh browser profile; fails the test on any script error."""
    contexts = []
    errors: list[str] = []

    def on_console(message: Any) -> None:
        # The browser logs by itself a refused key (a 401) and a connection refused while
        # a test has the hub down (the feed's reconnects, on a slow machine more of them);
        # anything else (a CSP violation, an exception) is a bug of the page.
        expected = ("status of 401", "net::ERR_CONNECTION_REFUSED")
        if message.type == "error" and not any(text in message.text for text in expected):
            errors.append(message.text)

    async def make(
        url: str,
        *,
        viewport: dict[str, int] = LAPTOP,
        scheme: str = "light",
        sign_in: bool = True,
        path: str = "/",
    ) -> Page:
        context = await chromium.new_context(viewport=viewport, color_scheme=scheme)
        contexts.append(context)
        page = await context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", on_console)
        await page.goto(f"{url}{path}")
        if sign_in:
            await sign_in_with(page, API_KEY)
        return page

    yield make
    for context in contexts:
        await context.close()
    assert errors == []


async def sign_in_with(page: Page, key: str) -> None:
    await expect(page.locator("#signin-form")).to_be_visible()
    await page.fill("#signin-key", key)
    await page.click("#signin-form button[type=submit]")
    if key == API_KEY:
        await expect(page.locator("#conn")).to_have_attribute("data-state", "live")


async def api(hub: HubServer, method: str, path: str, **kwargs: Any) -> Any:
    async with (
        aiohttp.ClientSession(headers=AUTH) as http,
        http.request(method, f"{hub.url}{path}", **kwargs) as response,
    ):
        assert response.status < 300, await response.text()
        return await response.json()


def row(page: Page, run_id: str) -> Any:
    return page.locator(f'.run-row[data-id="{run_id}"]')


# --- sign-in ------------------------------------------------------------------------


async def test_sign_in_asks_for_a_key_keeps_it_and_never_shows_it(
    monitor_hub: HubServer, open_page: OpenPage
) -> None:
    """Nothing shows without a valid key; the key is kept in localStorage, not on the page."""
    page = await open_page(monitor_hub.url, sign_in=False)
    await expect(page.locator("#app")).to_be_hidden()
    await sign_in_with(page, "not-the-key")
    await expect(page.locator("#signin-error")).to_contain_text("refused")
    await expect(page.locator("#app")).to_be_hidden()

    await sign_in_with(page, API_KEY)
    await expect(page.locator("#app")).to_be_visible()
    await expect(page.locator("#signin")).to_be_hidden()
    assert await page.evaluate("localStorage.getItem('codex-hub.api-key')") == API_KEY
    assert await page.input_value("#signin-key") == ""
    assert API_KEY not in await page.content()
    assert API_KEY not in page.url

    # Every control has a name a screen reader can say.
    unnamed = await page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea, button')]
            .filter((el) => !el.closest('[hidden]'))
            .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                            && !el.textContent.trim())
            .map((el) => el.id || el.outerHTML)"""
    )
    assert unnamed == []

    await page.reload()
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    await expect(page.locator("#signin")).to_be_hidden()

    await page.click("#sign-out")
    await expect(page.locator("#signin-form")).to_be_visible()
    await expect(page.locator("#app")).to_be_hidden()
    assert await page.evaluate("localStorage.getItem('codex-hub.api-key')") is None
    await page.screenshot(path=SCREENSHOTS / "signin-laptop-light.png")


async def test_a_key_in_the_links_fragment_signs_in_and_leaves_the_address(
    monitor_hub: HubServer, open_page: OpenPage
) -> None:
    """The link `codex-hub up` prints (`/#key=...`) signs the page in, keeps the key like a
    typed one, and leaves no trace of it in the address bar or the history."""
    page = await open_page(f"{monitor_hub.url}/#key={API_KEY}", sign_in=False, path="")
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    await expect(page.locator("#signin")).to_be_hidden()
    assert page.url == f"{monitor_hub.url}/"
    assert await page.evaluate("localStorage.getItem('codex-hub.api-key')") == API_KEY
    await page.reload()
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live")


async def test_without_api_keys_the_page_opens_at_once(tmp_path: Path, open_page: OpenPage) -> None:
    """A hub with HUB_AUTH=none (loopback only) needs no sign-in; there is no sign-out."""
    settings = make_settings(tmp_path, HUB_API_KEYS="", HUB_OPERATOR_KEYS="", HUB_AUTH="none")
    async with HubServer(settings) as hub:
        page = await open_page(hub.url, sign_in=False)
        await expect(page.locator("#conn")).to_have_attribute("data-state", "live")
        await expect(page.locator("#signin")).to_be_hidden()
        await expect(page.locator("#sign-out")).to_be_hidden()
        await expect(page.locator("#runs-status")).to_have_text("No runs yet.")


# --- runs, live ---------------------------------------------------------------------


async def test_a_run_over_http_appears_and_finishes_with_its_answer(
    monitor_hub: HubServer, dry_executor: EXECUTOR, open_page: OpenPage
) -> None:
    """A chat completion shows up live, finishes, and its timeline and answer open."""
    prompt = 'list the pods <img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'
    async with dry_executor():
        page = await open_page(monitor_hub.url)
        body = {"model": "codex", "messages": [{"role": "user", "content": prompt}]}
        completion = await api(monitor_hub, "POST", "/v1/chat/completions", json=body)
        run_id = (await api(monitor_hub, "GET", "/api/runs"))["runs"][0]["id"]

        line = row(page, run_id)
        await expect(line).to_have_attribute("data-state", "succeeded")
        await expect(line.locator(".row-who")).to_have_text("HTTP")
        await expect(line.locator(".row-excerpt")).to_have_text(prompt)
        await expect(line.locator(".row-exec")).to_have_text("on dry-exec")

        await line.locator("a").click()
        detail = page.locator("#detail")
        await expect(detail.locator(".answer")).to_have_text(prompt)
        assert completion["choices"][0]["message"]["content"] == prompt
        await expect(detail.locator(".prompt")).to_have_text(prompt)
        await expect(detail.locator(".ev-title", has_text="Message")).to_have_count(1)
        states = detail.locator('.ev[data-kind="state"] .badge')
        await expect(states).to_have_text(["queued", "running", "succeeded"])
        await expect(detail.locator(".usage")).to_contain_text("Output tokens")
        await expect(line.locator("a")).to_have_attribute("aria-current", "true")

        await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
        await detail.get_by_role("button", name="Copy answer").click()
        await expect(detail.locator(".answer-bar")).to_contain_text("Copied.")
        assert await page.evaluate("navigator.clipboard.readText()") == prompt

    # Untrusted text stayed text.
    assert await page.evaluate("document.querySelectorAll('#app img, #app script').length") == 0
    assert await page.evaluate("window.pwned") is None


async def test_the_timeline_shows_commands_exit_codes_and_folded_output(
    monitor_hub: HubServer, scripted_executor: EXECUTOR, open_page: OpenPage
) -> None:
    """Commands show their exit code; long output is folded; files, usage and answer show."""
    async with scripted_executor():
        page = await open_page(monitor_hub.url)
        run = (await api(monitor_hub, "POST", "/api/runs", json={"prompt": "fix the tests"}))["run"]
        await expect(row(page, run["id"])).to_have_attribute("data-state", "succeeded")
        await page.goto(f"{monitor_hub.url}/#/runs/{run['id']}")
        detail = page.locator("#detail")
        await expect(detail.locator(".answer")).to_have_text("answer: fix the tests")

        commands = detail.locator('.ev[data-kind="codex"]:has(.cmd-line)')
        await expect(commands).to_have_count(2)  # started + completed became one entry
        ok, failed = commands.nth(0), commands.nth(1)
        await expect(ok.locator(".cmd-line")).to_have_text("$ git status --short")
        await expect(ok.locator(".exit")).to_have_text("exit 0")
        await expect(ok.locator("pre.output")).to_have_text("M README.md")
        await expect(failed.locator(".exit")).to_have_text("exit 1")
        fold = failed.locator("details.output")
        await expect(fold.locator("summary")).to_have_text("Output · 40 lines")
        assert await fold.get_attribute("open") is None
        await fold.locator("summary").click()
        await expect(fold.locator("pre")).to_contain_text("tests/test_39.py")

        await expect(detail.locator(".file-list")).to_have_text("update src/app.py")
        await expect(detail.locator(".ev-reasoning")).to_have_text("Look at the repository first.")
        await expect(detail.locator(".ev", has_text="Turn completed")).to_contain_text("1,234")
        await expect(detail.locator(".usage")).to_contain_text("1,000")
        await expect(detail.locator(".effective")).to_have_text("The same prompt, unchanged.")


async def test_a_running_run_ticks_and_is_cancelled_from_its_page(
    monitor_hub: HubServer, scripted_executor: EXECUTOR, open_page: OpenPage
) -> None:
    """An active run's elapsed time ticks; Cancel stops it on the executor."""
    async with scripted_executor() as executor:
        page = await open_page(monitor_hub.url)
        run = (await api(monitor_hub, "POST", "/api/runs", json={"prompt": "hold on"}))["run"]
        line = row(page, run["id"])
        await expect(line).to_have_attribute("data-state", "running")
        await expect(line.locator(".row-progress")).to_have_text("running `sleep 1000`")
        await expect(line.locator(".row-elapsed")).not_to_have_text("0 s")

        await line.locator("a").click()
        detail = page.locator("#detail")
        await expect(detail.locator(".exit-running")).to_have_text("running…")
        await detail.get_by_role("button", name="Cancel run").click()

        await expect(line).to_have_attribute("data-state", "cancelled")
        await expect(detail.locator(".detail-head .badge")).to_have_text("cancelled")
        await expect(detail.get_by_role("button", name="Cancel run")).to_be_hidden()
        await expect(detail.locator(".outcome .notice-error")).to_contain_text("cancelled")
        assert executor.cancelled == {run["id"]}
        # An ended run stops ticking: it shows the time it took, by the hub's clock.
        ended = (await api(monitor_hub, "GET", f"/api/runs/{run['id']}"))["run"]
        took = int(ended["finished_at"] - ended["created_at"])
        await expect(line.locator(".row-elapsed")).to_have_text(f"{took} s")


async def test_progress_that_comes_while_the_list_loads_shows_once_the_row_does(
    monitor_hub: HubServer, scripted_executor: EXECUTOR, open_page: OpenPage
) -> None:
    """A run's progress can reach the page before its row (the list still loading, or a
    filtered list): it is kept for the row, not dropped."""
    release = asyncio.Event()

    async def held(route: Any) -> None:
        await release.wait()
        await route.continue_()

    async with scripted_executor(), aiohttp.ClientSession() as http:
        page = await open_page(monitor_hub.url, sign_in=False)
        await page.route(lambda url: "/api/runs?" in url, held)
        await sign_in_with(page, API_KEY)  # live; the first list load is held
        async with http.ws_connect(f"{monitor_hub.url}/api/feed") as feed:
            await feed.send_json({"type": "auth", "key": API_KEY})
            assert json.loads(await feed.receive_str(timeout=5))["type"] == "ready"
            run = (await api(monitor_hub, "POST", "/api/runs", json={"prompt": "hold on"}))["run"]
            # The page's socket got each frame in the same write as this one.
            while "running `sleep 1000`" not in await feed.receive_str(timeout=5):
                pass
        release.set()
        line = row(page, run["id"])
        await expect(line).to_have_attribute("data-state", "running")
        await expect(line.locator(".row-progress")).to_have_text("running `sleep 1000`")
        # A filter rebuilds the list: the row keeps what its run was last seen doing.
        await page.get_by_label("Source").select_option(label="Page")
        await expect(page.locator("#runs")).not_to_have_attribute("aria-busy", "true")
        await expect(line.locator(".row-progress")).to_have_text("running `sleep 1000`")


async def test_the_composer_starts_a_run_and_can_continue_its_conversation(
    monitor_hub: HubServer, dry_executor: EXECUTOR, open_page: OpenPage
) -> None:
    """A prompt from the page opens its run with the answer; the follow-up shares the session."""
    async with dry_executor():
        page = await open_page(monitor_hub.url)
        keep = page.get_by_label("Continue this conversation")
        await expect(keep).to_be_disabled()
        await page.get_by_label("Ask codex").fill("first question")
        await page.get_by_role("button", name="Start run").click()
        await expect(page).to_have_url(re.compile(r"#/runs/run_\w+$"))
        detail = page.locator("#detail")
        await expect(detail.locator(".answer")).to_have_text("first question")
        first_id = page.url.rsplit("/", 1)[-1]
        await expect(row(page, first_id).locator(".row-who")).to_have_text("Page · monitor")

        await expect(keep).to_be_enabled()
        await keep.check()
        await page.get_by_label("Ask codex").fill("second question")
        await page.get_by_label("Ask codex").press("Control+Enter")
        await expect(detail.locator(".answer")).to_have_text("second question")
        second_id = page.url.rsplit("/", 1)[-1]
        assert second_id != first_id
        await expect(page.get_by_label("Ask codex")).to_have_value("")

    first = (await api(monitor_hub, "GET", f"/api/runs/{first_id}"))["run"]
    second = (await api(monitor_hub, "GET", f"/api/runs/{second_id}"))["run"]
    own = f"monitor:{principal_for_key(API_KEY)}:{first_id}"
    assert second["session_key"] == first["session_key"] == own


async def test_the_answer_shows_as_it_is_written_and_the_composer_steers_the_turn(
    monitor_hub: HubServer, fake_executor: Any, open_page: OpenPage
) -> None:
    """App-server engine: the run's Answer grows with each delta; a follow-up prompt while
    it works goes into its turn, and the composer says so."""
    async with fake_executor(node_url(monitor_hub), token=NODE_TOKEN, engine="app-server") as ex:
        page = await open_page(monitor_hub.url)
        run = (await api(monitor_hub, "POST", "/api/runs", json={"prompt": "write"}))["run"]
        await ex.wait_type("assign")
        await ex.start_run(run["id"])
        line = row(page, run["id"])
        await expect(line).to_have_attribute("data-state", "running")
        await line.locator("a").click()
        detail = page.locator("#detail")
        await ex.event(run["id"], 1, kind="answer_delta", item_id="m1", delta="Half of ")
        await expect(detail.locator(".live-answer")).to_have_text("Half of ")
        await ex.event(run["id"], 2, kind="answer_delta", item_id="m1", delta="the answer")
        await expect(detail.locator(".live-answer")).to_have_text("Half of the answer")
        await expect(detail.locator(".timeline")).not_to_contain_text("answer_delta")

        await page.get_by_label("Continue this conversation").check()
        await page.get_by_label("Ask codex").fill("and a summary")
        await page.get_by_role("button", name="Start run").click()
        steer = await ex.wait_type("steer")
        steered = {"type": "steered", "run_id": run["id"], "steer_id": steer["steer_id"]}
        await ex.send({**steered, "ok": True})
        await expect(page.locator("#c-status")).to_have_text(
            f"Added to the running turn of {run['id']}."
        )
        await ex.finish(run["id"], "Half of the answer, and a summary.")
        await expect(detail.locator(".answer")).to_have_text("Half of the answer, and a summary.")
    assert steer["text"] == "and a summary"


# --- lists, filters, nodes ------------------------------------------------------------


async def test_thousands_of_runs_page_and_filter_on_the_server(
    monitor_hub: HubServer, open_page: OpenPage
) -> None:
    """The list shows a page at a time; filters and search ask the hub."""
    store = monitor_hub.app[STORE]
    now = time.time() - 3600
    sources = ["slack", "telegram", "http", "monitor"]
    await asyncio.gather(
        *(
            store.call(
                op_insert_run,
                Run(
                    id=f"run_bulk{i:05d}",
                    prompt="the needle in the haystack" if i == 777 else f"routine task {i}",
                    origin={"source": sources[i % 4]},
                    source=sources[i % 4],
                    user=f"user{i % 7}",
                    created_at=now + i,
                    state="succeeded",
                    finished_at=now + i + 3,
                ),
            )
            for i in range(1500)
        )
    )
    page = await open_page(monitor_hub.url)
    rows = page.locator(".run-row")
    await expect(rows).to_have_count(100)
    await expect(rows.first).to_have_attribute("data-id", "run_bulk01499")
    await expect(page.locator("#runs-status")).to_have_text("100 runs (more below)")
    await page.get_by_role("button", name="Load more").click()
    await expect(rows).to_have_count(200)
    await expect(rows.last).to_have_attribute("data-id", "run_bulk01300")

    await page.get_by_label("Search").fill("needle")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_have_attribute("data-id", "run_bulk00777")
    await expect(page.get_by_role("button", name="Load more")).to_be_hidden()

    await page.get_by_label("Search").fill("")
    # Each step's own first row: the rows of the step before may still be showing.
    await expect(rows.first).to_have_attribute("data-id", "run_bulk01499")
    await page.get_by_label("Source").select_option("telegram")
    await expect(rows.first).to_have_attribute("data-id", "run_bulk01497")  # newest of i % 4 == 1
    await expect(rows).to_have_count(100)
    who = await page.locator(".run-row .row-who").all_text_contents()
    assert {text.split(" · ")[0] for text in who} == {"Telegram"}
    await page.get_by_label("State").select_option(label="Failed")
    await expect(page.locator("#runs-status")).to_have_text("No runs match these filters.")


async def test_the_nodes_panel_follows_executors_and_bridges(
    monitor_hub: HubServer, scripted_executor: EXECUTOR, open_page: OpenPage
) -> None:
    """Executors show busy slots and codex login; bridges show online, then offline."""
    page = await open_page(monitor_hub.url)
    panel = page.locator("#nodes-list")
    await expect(panel).to_contain_text("No executor is connected")
    hello = {"type": "hello", "role": "bridge", "token": NODE_TOKEN, "node_id": "tg-1"}
    async with scripted_executor(), aiohttp.ClientSession() as http:
        executor = panel.locator(".node", has_text="scripted-exec")
        await expect(executor).to_contain_text("executor · 0/4 busy")
        await expect(executor).to_contain_text("codex logged in")
        async with http.ws_connect(node_url(monitor_hub)) as bridge:
            await bridge.send_json({**hello, "name": "tg-1", "platform": "telegram"})
            tg = panel.locator(".node", has_text="tg-1")
            await expect(tg).to_contain_text("Telegram bridge · online")
            await expect(tg).to_contain_text("last heartbeat")
            await expect(page.locator("#nodes-count")).to_have_text("(1 executor, 1 bridge)")
        await expect(tg).to_contain_text("Telegram bridge · offline")
        await expect(tg).to_have_attribute("data-online", "false")


# --- reconnects -----------------------------------------------------------------------


async def test_the_page_reconnects_after_a_hub_restart_and_catches_up_once(
    tmp_path: Path, open_page: OpenPage
) -> None:
    """What changed while the hub was down shows after the reconnect, nothing twice."""
    first = HubServer(make_settings(tmp_path))
    await first.start()
    port = first.port
    try:
        page = await open_page(first.url)
        run = (await api(first, "POST", "/api/runs", json={"prompt": "wait for me"}))["run"]
        await expect(row(page, run["id"])).to_have_attribute("data-state", "queued")
        await page.goto(f"{first.url}/#/runs/{run['id']}")
        timeline = page.locator("#detail .ev")
        await expect(timeline).to_have_count(1)
    finally:
        await first.close()
    await expect(page.locator("#conn")).to_have_attribute("data-state", "reconnecting")

    # While the hub is down, the store moves on: the open run ends, a new run arrives.
    async with Store(tmp_path / "hub.db") as store:
        ts = time.time()
        note = {"message": "finished while the page was away"}
        await store.call(op_record, run["id"], None, (2, ts, "note", note, None))
        ended = {"state": "cancelled", "finished_at": ts}
        await store.call(
            op_record, run["id"], ended, (3, ts, "state", {"state": "cancelled"}, None)
        )
        missed = Run(
            id="run_missed",
            prompt="arrived during the restart",
            origin={"source": "slack"},
            source="slack",
            created_at=ts,
            state="succeeded",
            finished_at=ts,
            answer="ok",
        )
        await store.call(op_insert_run, missed)
    await expect(page.locator("#conn")).to_have_attribute("data-state", "reconnecting")

    async with HubServer(make_settings(tmp_path, port=port)) as second:
        assert second.port == port
        await expect(page.locator("#conn")).to_have_attribute("data-state", "live")
        await expect(row(page, "run_missed")).to_have_count(1)
        await expect(row(page, run["id"])).to_have_attribute("data-state", "cancelled")
        await expect(timeline).to_have_count(3)
        await expect(timeline.nth(1)).to_contain_text("finished while the page was away")
        await expect(page.locator("#detail .detail-head .badge")).to_have_text("cancelled")
        await expect(page.locator(".run-row")).to_have_count(2)
        # A run after the reconnect flows live again, once.
        later = (await api(second, "POST", "/api/runs", json={"prompt": "after"}))["run"]
        await expect(row(page, later["id"])).to_have_count(1)
        await expect(page.locator(".run-row")).to_have_count(3)


async def test_a_revoked_key_brings_back_the_sign_in_form(
    tmp_path: Path, open_page: OpenPage
) -> None:
    """When the hub comes back without the page's key, the page shows nothing but sign-in."""
    first = HubServer(make_settings(tmp_path))
    await first.start()
    port = first.port
    try:
        page = await open_page(first.url)
        await api(first, "POST", "/api/runs", json={"prompt": "secret plans"})
        await expect(page.locator(".run-row")).to_have_count(1)
    finally:
        await first.close()
    async with HubServer(
        make_settings(tmp_path, port=port, HUB_API_KEYS="a-new-key", HUB_OPERATOR_KEYS="")
    ):
        await expect(page.locator("#signin-form")).to_be_visible()
        await expect(page.locator("#signin-error")).to_contain_text("refused")
        await expect(page.locator("#app")).to_be_hidden()
        assert await page.locator(".run-row").count() == 0
        assert "secret plans" not in await page.content()
        assert await page.evaluate("localStorage.getItem('codex-hub.api-key')") is None


async def test_a_page_that_falls_behind_resyncs_and_reloads(
    monitor_hub: HubServer, open_page: OpenPage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dropped by the hub (`resync`, 4009), the page reconnects and reloads what it missed."""
    # Every socket "holds back more than the limit": the next frame drops the page.
    monkeypatch.setattr(api_runs, "FEED_BUFFER_BYTES", -1)
    page = await open_page(monitor_hub.url)
    # The first list load must be over before the run is stored, or it (not the reload
    # after the drop) could be what shows the run.
    await expect(page.locator("#runs")).not_to_have_attribute("aria-busy", "true")
    sockets: list[Any] = []
    page.on("websocket", lambda ws: sockets.append(ws))
    now = time.time()
    unseen = Run(
        id="run_unseen",
        prompt="never published",
        origin={"source": "http"},
        source="http",
        created_at=now,
    )
    await monitor_hub.app[STORE].call(op_insert_run, unseen)
    async with page.expect_websocket():
        monitor_hub.app[BUS].publish({"type": "nodes", "nodes": []})
    await expect(row(page, "run_unseen")).to_have_count(1)
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    assert len(sockets) == 1  # exactly one new feed socket after the drop


# --- how it looks ---------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["light", "dark"])
async def test_screenshots_at_laptop_and_phone_sizes(
    monitor_hub: HubServer, scripted_executor: EXECUTOR, open_page: OpenPage, scheme: str
) -> None:
    """Saved to artifacts/screenshots/ for a person to look at; the layout adapts."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    async with scripted_executor(), aiohttp.ClientSession() as http:
        async with http.ws_connect(node_url(monitor_hub)) as bridge:
            hello = {"type": "hello", "role": "bridge", "token": NODE_TOKEN, "node_id": "slack-1"}
            await bridge.send_json({**hello, "name": "slack-1", "platform": "slack"})
            assert (await bridge.receive_json(timeout=5))["type"] == "welcome"
            await api(monitor_hub, "POST", "/api/runs", json={"prompt": "summarise open PRs"})
            await api(monitor_hub, "POST", "/api/runs", json={"prompt": "hold: tail the logs"})
            run = (
                await api(
                    monitor_hub,
                    "POST",
                    "/api/runs",
                    json={"prompt": "The test suite fails on main: find out why and fix it."},
                )
            )["run"]
            for size, viewport in [("laptop", LAPTOP), ("phone", PHONE)]:
                page = await open_page(monitor_hub.url, viewport=viewport, scheme=scheme)
                await page.goto(f"{monitor_hub.url}/#/runs/{run['id']}")
                await expect(page.locator("#detail .answer")).to_be_visible()
                await expect(page.locator(".run-row")).to_have_count(3)
                list_box = await page.locator("#runs").bounding_box()
                detail_box = await page.locator("#detail").bounding_box()
                assert list_box is not None and detail_box is not None
                if size == "laptop":  # side by side
                    assert detail_box["x"] > list_box["x"] + list_box["width"] - 1
                else:  # stacked, and nothing wider than the screen
                    assert detail_box["y"] > list_box["y"] + list_box["height"] - 1
                    width = await page.evaluate("document.documentElement.scrollWidth")
                    assert width <= viewport["width"]
                if size == "phone":
                    # What the reader sees after opening the run, then the whole page.
                    await page.screenshot(path=SCREENSHOTS / f"monitor-phone-{scheme}-open.png")
                    await page.evaluate("window.scrollTo(0, 0)")
                await page.screenshot(
                    path=SCREENSHOTS / f"monitor-{size}-{scheme}.png", full_page=size == "phone"
                )
