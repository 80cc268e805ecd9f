"""Scale: with 10,000 runs stored and 2,000 arriving in a burst, the page stays bounded
(under 5,000 DOM nodes) and never blocks (no long task); "Load more" still works."""

from __future__ import annotations

import time

import pytest
from playwright.async_api import expect

from hub.app import HubServer
from hub.appkeys import BUS, STORE
from hub.store import Run, op_insert_run
from tests.monitor import test_browser
from tests.monitor.conftest import SCREENSHOTS
from tests.monitor.test_browser import LAPTOP, PHONE, OpenPage, row

pytestmark = pytest.mark.browser

open_page = test_browser.open_page  # the fixture, shared

STORED = 10_000
BURST = 2_000
MAX_DOM_NODES = 5_000
#: A long task, as the browser counts them (PerformanceObserver 'longtask'): 50 ms.
WATCH_LONG_TASKS = """() => {
  window.longTasks = [];
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) window.longTasks.push(entry.duration);
  }).observe({ type: 'longtask' });
}"""
DOM_NODES = "document.getElementsByTagName('*').length"


def bulk_run(i: int, at: float, state: str = "succeeded") -> Run:
    return Run(
        id=f"run_scale{i:05d}",
        prompt=f"routine task {i}",
        origin={"source": "http"},
        source="http",
        created_at=at,
        state=state,
        finished_at=at + 2 if state == "succeeded" else None,
    )


async def test_ten_thousand_stored_and_a_burst_of_two_thousand_keep_the_page_bounded(
    monitor_hub: HubServer, open_page: OpenPage
) -> None:
    """The burst shows at the top, the oldest rows leave at the bottom, nothing blocks."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    store = monitor_hub.app[STORE]
    start = time.time() - 7200
    for i in range(STORED):
        store.post(op_insert_run, bulk_run(i, start + i * 0.1))
    await store.flush()
    page = await open_page(monitor_hub.url)
    await expect(page.locator(".run-row")).to_have_count(100)
    await page.evaluate(WATCH_LONG_TASKS)

    bus = monitor_hub.app[BUS]
    now = time.time()
    for i in range(STORED, STORED + BURST):  # as the router does: stored, then published
        run = bulk_run(i, now + (i - STORED) * 0.001, state="running")
        store.post(op_insert_run, run)
        bus.publish({"type": "run", "run": run.summary()}, run.id)
    newest = f"run_scale{STORED + BURST - 1:05d}"
    await expect(page.locator(".run-row").first).to_have_attribute("data-id", newest)
    await expect(page.locator(".run-row")).to_have_count(100)
    nodes = await page.evaluate(DOM_NODES)
    long_tasks = await page.evaluate("window.longTasks")
    assert nodes < MAX_DOM_NODES, nodes
    assert long_tasks == [], long_tasks
    for size, viewport in (("laptop", LAPTOP), ("phone", PHONE)):
        await page.set_viewport_size(viewport)
        await page.screenshot(path=SCREENSHOTS / f"scale-burst-{size}.png")
    await page.set_viewport_size(LAPTOP)

    # The rows pushed out come back with "Load more", after the burst's own.
    await expect(page.locator("#runs-status")).to_have_text("100 runs (more below)")
    await page.get_by_role("button", name="Load more").click()
    await expect(page.locator(".run-row")).to_have_count(200)
    await expect(row(page, newest)).to_have_count(1)
