"""The monitor tells the truth about live state: executor load, the queue and why runs
wait, when a run was made, names after a restart, and what it does not know while the
feed is down."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from playwright.async_api import expect

from hub.app import HubServer
from hub.store import Run, Store, op_insert_run
from tests.monitor import test_browser
from tests.monitor.conftest import NODE_TOKEN, SCREENSHOTS, make_settings, node_url
from tests.monitor.scripted_executor import ScriptedExecutor
from tests.monitor.test_browser import (
    LAPTOP,
    PHONE,
    OpenPage,
    api,
    row,
)

pytestmark = pytest.mark.browser

open_page = test_browser.open_page  # the fixture, shared


async def test_executor_load_and_queue_positions_follow_runs_as_they_start_and_end(
    monitor_hub: HubServer, open_page: OpenPage
) -> None:
    """The executor card counts busy slots live; a queued run shows its place and why."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = await open_page(monitor_hub.url)
    waiting = (await api(monitor_hub, "POST", "/api/runs", json={"prompt": "hold: early"}))["run"]
    await expect(row(page, waiting["id"]).locator(".row-exec")).to_have_text(
        "#1 in queue · no executor connected"
    )
    async with ScriptedExecutor(node_url(monitor_hub), NODE_TOKEN, capacity=1):
        card = page.locator(".node", has_text="scripted-exec")
        await expect(card).to_contain_text("executor · 1/1 busy")
        await expect(row(page, waiting["id"])).to_have_attribute("data-state", "running")
        second = (await api(monitor_hub, "POST", "/api/runs", json={"prompt": "hold: two"}))["run"]
        third = (await api(monitor_hub, "POST", "/api/runs", json={"prompt": "three"}))["run"]
        await expect(row(page, second["id"]).locator(".row-exec")).to_have_text(
            "#1 in queue · the executor is busy"
        )
        await expect(row(page, third["id"]).locator(".row-exec")).to_have_text(
            "#2 in queue · the executor is busy"
        )
        # Rows say when they were made, not only how long they took.
        made = row(page, third["id"]).locator("time.row-made")
        await expect(made).to_have_text(time.strftime("%H:%M"))
        for size, viewport in (("laptop", LAPTOP), ("phone", PHONE)):
            await page.set_viewport_size(viewport)
            await page.screenshot(path=SCREENSHOTS / f"live-state-queue-{size}.png")
        await page.set_viewport_size(LAPTOP)

        await api(monitor_hub, "POST", f"/api/runs/{waiting['id']}/cancel")
        await expect(row(page, second["id"])).to_have_attribute("data-state", "running")
        await expect(row(page, third["id"]).locator(".row-exec")).to_have_text(
            "#1 in queue · the executor is busy"
        )
        await expect(card).to_contain_text("executor · 1/1 busy")
        await api(monitor_hub, "POST", f"/api/runs/{second['id']}/cancel")
        await expect(row(page, third["id"])).to_have_attribute("data-state", "succeeded")
        await expect(card).to_contain_text("executor · 0/1 busy")


async def test_while_the_feed_is_down_active_runs_say_unknown_and_retry_reconnects_at_once(
    tmp_path: Path, open_page: OpenPage
) -> None:
    """No ticking "queued" while the hub is away; "Retry now" reconnects without waiting."""
    ts = time.time() - 3600
    async with Store(tmp_path / "hub.db") as store:
        # A run from an executor that is gone (a restart): its name still shows.
        gone = Run(
            id="run_before_restart",
            prompt="made before the restart",
            origin={"source": "http"},
            source="http",
            created_at=ts,
            state="succeeded",
            finished_at=ts + 5,
            executor="build-box-4242-0a1b2c",
            answer="ok",
        )
        await store.call(op_insert_run, gone)
    first = HubServer(make_settings(tmp_path))
    await first.start()
    port = first.port
    try:
        page = await open_page(first.url)
        await expect(row(page, gone.id).locator(".row-exec")).to_have_text("on build-box")
        run = (await api(first, "POST", "/api/runs", json={"prompt": "wait for me"}))["run"]
        await expect(row(page, run["id"]).locator(".badge")).to_have_text("queued")
        await expect(page.locator("#retry")).to_be_hidden()
        # The feed's attempts to reconnect, each a new websocket (refused while no hub).
        attempts = 0
        backed_off = asyncio.Event()

        def attempted(_: object) -> None:
            nonlocal attempts
            attempts += 1
            if attempts >= 4:  # the next one waits 4-8 s (500 ms x 2^4, jittered by half)
                backed_off.set()

        page.on("websocket", attempted)
    finally:
        await first.close()
    badge = row(page, run["id"]).locator(".badge")
    await expect(badge).to_have_text("state unknown")
    await expect(row(page, gone.id).locator(".badge")).to_have_text("succeeded")
    retry = page.get_by_role("button", name="Retry now")
    await expect(retry).to_be_visible()
    for size, viewport in (("laptop", LAPTOP), ("phone", PHONE)):
        await page.set_viewport_size(viewport)
        await page.screenshot(path=SCREENSHOTS / f"live-state-feed-down-{size}.png")
    await page.set_viewport_size(LAPTOP)
    # Let the backoff grow well past what the test waits, then retry by hand: an
    # attempt of the page's own that met the new hub first would hide the button.
    async with asyncio.timeout(30):
        await backed_off.wait()
    async with HubServer(make_settings(tmp_path, port=port)):
        started = time.monotonic()
        await retry.click()
        await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=3000)
        assert time.monotonic() - started < 3
        await expect(badge).to_have_text("queued")
        await expect(retry).to_be_hidden()
