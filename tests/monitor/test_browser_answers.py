"""Answers read well: markdown rendered and sanitised, code blocks with a copy button,
long answers folded, the answer once, one clear error line with the detail folded."""

from __future__ import annotations

import pytest
from playwright.async_api import expect

from hub.app import HubServer
from tests.monitor import test_browser
from tests.monitor.conftest import SCREENSHOTS
from tests.monitor.test_browser import EXECUTOR, LAPTOP, PHONE, OpenPage, api, row

pytestmark = pytest.mark.browser

open_page = test_browser.open_page  # the fixture, shared

MARKDOWN = """say it in markdown

## Pods that restart

- `api-7f9c` restarted **12** times
- see [the runbook](https://example.com/runbook) and [this](javascript:window.pwned=3)

```sh
kubectl -n prod get pods
```

<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>
"""


async def test_an_answer_is_rendered_markdown_with_copyable_code_and_no_markup_from_it(
    monitor_hub: HubServer, scripted_executor: EXECUTOR, open_page: OpenPage
) -> None:
    """Headings, lists, links and code render; raw HTML stays text; code copies alone."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    async with scripted_executor():
        page = await open_page(monitor_hub.url)
        run = (await api(monitor_hub, "POST", "/api/runs", json={"prompt": MARKDOWN}))["run"]
        await expect(row(page, run["id"])).to_have_attribute("data-state", "succeeded")
        await page.goto(f"{monitor_hub.url}/#/runs/{run['id']}")
        answer = page.locator("#detail .answer")
        await expect(answer.locator("h2")).to_have_text("Pods that restart")
        await expect(answer.locator("li strong")).to_have_text("12")
        await expect(answer.locator("li code")).to_have_text("api-7f9c")
        link = answer.get_by_role("link", name="the runbook")
        await expect(link).to_have_attribute("href", "https://example.com/runbook")
        await expect(link).to_have_attribute("rel", "noopener noreferrer nofollow")
        assert await answer.locator('a[href^="javascript"]').count() == 0
        # Markup in the answer is shown as the text it is.
        await expect(answer).to_contain_text('<img src=x onerror="window.pwned=1">')
        assert await page.evaluate("document.querySelectorAll('#app img, #app script').length") == 0

        code = answer.locator(".code-block pre")
        await expect(code).to_have_text("kubectl -n prod get pods\n")
        await expect(code).to_have_attribute("tabindex", "0")
        await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
        await answer.get_by_role("button", name="Copy code").click()
        await expect(answer.locator(".code-status")).to_have_text("Copied.")
        assert await page.evaluate("navigator.clipboard.readText()") == "kubectl -n prod get pods"

        # The answer is shown once: the timeline's last message is folded to its first line.
        message = page.locator("#detail .ev-message-fold")
        await expect(message.locator("summary")).to_have_text("answer: say it in markdown")
        await expect(page.get_by_text("Pods that restart", exact=True)).to_have_count(1)
        for size, viewport in (("laptop", LAPTOP), ("phone", PHONE)):
            await page.set_viewport_size(viewport)
            await page.locator("#detail h3", has_text="Answer").scroll_into_view_if_needed()
            await page.screenshot(path=SCREENSHOTS / f"answer-markdown-{size}.png")
    assert await page.evaluate("window.pwned") is None


async def test_a_long_answer_is_folded_until_the_reader_asks_for_all_of_it(
    monitor_hub: HubServer, scripted_executor: EXECUTOR, open_page: OpenPage
) -> None:
    """Past 40 lines the answer shows its start and a "Show all" button that unfolds it."""
    prompt = "long\n\n" + "\n".join(f"{i}. step number {i}" for i in range(1, 81))
    async with scripted_executor():
        page = await open_page(monitor_hub.url)
        run = (await api(monitor_hub, "POST", "/api/runs", json={"prompt": prompt}))["run"]
        await page.goto(f"{monitor_hub.url}/#/runs/{run['id']}")
        answer = page.locator("#detail .answer")
        await expect(answer).to_have_class("markdown answer folded")
        folded = (await answer.bounding_box() or {}).get("height", 0)
        toggle = page.get_by_role("button", name="Show all (82 lines)")
        await expect(toggle).to_have_attribute("aria-expanded", "false")
        await toggle.click()
        await expect(answer).to_have_class("markdown answer")
        await expect(page.get_by_role("button", name="Show less")).to_have_attribute(
            "aria-expanded", "true"
        )
        unfolded = (await answer.bounding_box() or {}).get("height", 0)
        assert unfolded > folded * 2


async def test_a_failed_run_shows_one_clear_error_line_with_the_detail_folded(
    monitor_hub: HubServer, scripted_executor: EXECUTOR, open_page: OpenPage
) -> None:
    """The first line of the error shows once in the answer; codex's stderr waits folded."""
    async with scripted_executor():
        page = await open_page(monitor_hub.url)
        run = (await api(monitor_hub, "POST", "/api/runs", json={"prompt": "fail now"}))["run"]
        await expect(row(page, run["id"])).to_have_attribute("data-state", "failed")
        await page.goto(f"{monitor_hub.url}/#/runs/{run['id']}")
        notice = page.locator("#detail .outcome .notice-error")
        await expect(notice.locator(".error-line")).to_have_text("codex exited 1")
        details = notice.locator("details")
        await expect(details.locator("pre")).to_be_hidden()
        await expect(page.get_by_text("stderr line 7: something went wrong")).to_have_count(1)
        await details.locator("summary").click()
        await expect(details.locator("pre")).to_be_visible()
        await expect(details).to_contain_text("code: codex_failed")
        await expect(page.locator("#detail .ev-error-text")).to_have_text("codex exited 1")
        for size, viewport in (("laptop", LAPTOP), ("phone", PHONE)):
            await page.set_viewport_size(viewport)
            await page.screenshot(path=SCREENSHOTS / f"answer-error-{size}.png")


async def test_the_run_header_stays_in_view_when_the_run_ends(
    monitor_hub: HubServer, scripted_executor: EXECUTOR, open_page: OpenPage
) -> None:
    """A reader scrolled down a running run still sees its header and state as it ends."""
    async with scripted_executor():
        page = await open_page(monitor_hub.url, viewport={"width": 1366, "height": 560})
        run = (await api(monitor_hub, "POST", "/api/runs", json={"prompt": "hold: long"}))["run"]
        await page.goto(f"{monitor_hub.url}/#/runs/{run['id']}")
        await expect(page.locator("#detail .detail-head .badge")).to_have_text("running")
        await page.evaluate("document.querySelector('#detail').scrollTop = 10000")
        await api(monitor_hub, "POST", f"/api/runs/{run['id']}/cancel")
        badge = page.locator("#detail .detail-head .badge")
        await expect(badge).to_have_text("cancelled")
        panel = await page.locator("#detail").bounding_box()
        head = await page.locator("#detail .detail-head").bounding_box()
        assert panel is not None and head is not None
        assert panel["y"] <= head["y"] < panel["y"] + 40
        assert await page.evaluate("document.querySelector('#detail').scrollTop") > 0
