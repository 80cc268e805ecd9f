"""Noticing from another tab: the title and icon count running and queued runs, and say
when a run started from the page ends while the reader is away."""

from __future__ import annotations

import pytest
from playwright.async_api import expect

from hub.app import HubServer
from tests.monitor import test_browser
from tests.monitor.conftest import NODE_TOKEN, SCREENSHOTS, node_url
from tests.monitor.scripted_executor import ScriptedExecutor
from tests.monitor.test_browser import LAPTOP, PHONE, OpenPage, api, row

pytestmark = pytest.mark.browser

open_page = test_browser.open_page  # the fixture, shared

SET_HIDDEN = """(hidden) => {
  Object.defineProperty(document, 'hidden', { value: hidden, configurable: true });
  document.dispatchEvent(new Event('visibilitychange'));
}"""


async def test_the_tab_title_and_icon_count_runs_and_flag_the_end_of_mine(
    monitor_hub: HubServer, open_page: OpenPage
) -> None:
    """Running and queued counts in the title; my run's end shows there while I am away."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = await open_page(monitor_hub.url)
    await expect(page).to_have_title("codex-hub monitor")
    async with ScriptedExecutor(node_url(monitor_hub), NODE_TOKEN, capacity=1):
        await page.fill("#c-prompt", "hold: watch the deploy")
        await page.click("#c-send")
        await expect(page).to_have_title("(1 running) codex-hub monitor")
        icon = await page.get_attribute("#favicon", "href")
        assert icon is not None and icon.startswith("data:image/png;base64,")
        other = (await api(monitor_hub, "POST", "/api/runs", json={"prompt": "hold: b"}))["run"]
        await expect(page).to_have_title("(1 running, 1 queued) codex-hub monitor")
        for size, viewport in (("laptop", LAPTOP), ("phone", PHONE)):
            await page.set_viewport_size(viewport)
            await page.screenshot(path=SCREENSHOTS / f"notice-{size}.png")

        mine = page.url.rsplit("/", 1)[-1]
        await page.evaluate(SET_HIDDEN, True)
        await api(monitor_hub, "POST", f"/api/runs/{mine}/cancel")
        await expect(row(page, other["id"])).to_have_attribute("data-state", "running")
        await expect(page).to_have_title(
            "✗ cancelled: hold: watch the deploy · (1 running) codex-hub monitor"
        )
        assert await page.get_attribute("#favicon", "href") != icon
        await page.evaluate(SET_HIDDEN, False)
        await expect(page).to_have_title("(1 running) codex-hub monitor")
        await api(monitor_hub, "POST", f"/api/runs/{other['id']}/cancel")
        await expect(page).to_have_title("codex-hub monitor")
