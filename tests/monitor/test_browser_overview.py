"""The overview strip: running and queued now, failed in the last hour, runs and tokens
today, the median duration; it follows runs as they start and end."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from playwright.async_api import expect

from hub.app import HubServer
from hub.appkeys import STORE
from hub.store import Run, op_insert_run
from tests.monitor import test_browser
from tests.monitor.conftest import NODE_TOKEN, SCREENSHOTS, node_url
from tests.monitor.scripted_executor import ScriptedExecutor
from tests.monitor.test_browser import LAPTOP, PHONE, OpenPage, api

pytestmark = pytest.mark.browser

open_page = test_browser.open_page  # the fixture, shared


def item(page: object, name: str) -> object:
    return page.locator(".overview-item", has=page.locator("dt", has_text=name))  # type: ignore[attr-defined]


async def test_the_overview_strip_shows_now_the_last_hour_and_today(
    monitor_hub: HubServer, open_page: OpenPage
) -> None:
    """Counts come from the hub; running and queued move live with the feed."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    store = monitor_hub.app[STORE]
    now = time.time()
    # "Today" starts at the page's midnight (the machine's time zone, Chromium's too):
    # 20 minutes ago, or at midnight when the test runs in the first 20 minutes of a day.
    midnight = dt.datetime.now().astimezone().replace(hour=0, minute=0, second=0, microsecond=0)
    earlier = max(now - 1200, midnight.timestamp())
    for i, (state, took) in enumerate((("failed", 4.0), ("succeeded", 64.0), ("succeeded", 8.0))):
        await store.call(
            op_insert_run,
            Run(
                id=f"run_today{i}",
                prompt="earlier today",
                origin={"source": "slack"},
                source="slack",
                created_at=earlier,
                finished_at=earlier + took,
                state=state,
                usage={"input_tokens": 1200, "output_tokens": 300},
            ),
        )
    page = await open_page(monitor_hub.url)
    await expect(item(page, "Failed, last hour").locator("dd")).to_have_text("1")
    await expect(item(page, "Runs today").locator("dd")).to_have_text("3")
    await expect(item(page, "Tokens today").locator("dd")).to_have_text("4.5K")
    await expect(item(page, "Median duration today").locator("dd")).to_have_text("8 s")
    await expect(item(page, "Running").locator("dd")).to_have_text("0 of 0 slots")
    async with ScriptedExecutor(node_url(monitor_hub), NODE_TOKEN, capacity=1):
        await api(monitor_hub, "POST", "/api/runs", json={"prompt": "hold: one"})
        await api(monitor_hub, "POST", "/api/runs", json={"prompt": "hold: two"})
        await expect(item(page, "Running").locator("dd")).to_have_text("1 of 1 slots")
        await expect(item(page, "Queued").locator("dd")).to_have_text("1")
        await expect(item(page, "Runs today").locator("dd")).to_have_text("5")
        for size, viewport in (("laptop", LAPTOP), ("phone", PHONE)):
            await page.set_viewport_size(viewport)
            await page.screenshot(path=SCREENSHOTS / f"overview-{size}.png")
