"""The monitor page itself under a busy store: its DOM size and long tasks.

A hub (in this process, its store seeded with :data:`STORED` runs) and the page in
Debian's headless Chromium, driven by Playwright; :data:`BURST` new runs are then
published at once, as a burst of arrivals would be. The page must stay under
:data:`GOAL_DOM_NODES` elements and never block for a long task (50 ms, as the browser
counts them). Part of ``python -m bench feed`` (issue 18, point 7).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import render_table
from hub.app import HubServer
from hub.appkeys import BUS, STORE
from hub.settings import HubSettings
from hub.store import Run, op_insert_run

CHROMIUM = "/usr/bin/chromium"
STORED = 10_000
BURST = 2_000
GOAL_DOM_NODES = 5_000
_KEY = "bench-monitor-page-key-0123456789"
_LONG_TASKS = """() => {
  window.longTasks = [];
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) window.longTasks.push(entry.duration);
  }).observe({ type: 'longtask' });
}"""
_DOM_NODES = "document.getElementsByTagName('*').length"
_LIVE = "document.querySelector('#conn').dataset.state === 'live'"


@dataclass(frozen=True)
class PageResult:
    dom_before: int
    dom_after: int
    rows: int
    long_tasks: list[float]
    burst_shown_s: float


def _run(i: int, at: float, state: str) -> Run:
    return Run(
        id=f"run_page{i:05d}",
        prompt=f"routine task {i}",
        origin={"source": "http"},
        source="http",
        created_at=at,
        state=state,
        finished_at=at + 2 if state == "succeeded" else None,
    )


async def measure() -> PageResult | None:
    """None when Chromium is absent (``make browser`` installs it)."""
    if shutil.which(CHROMIUM) is None:
        return None
    from playwright.async_api import async_playwright

    with tempfile.TemporaryDirectory(prefix="bench-page-") as tmp:
        settings = HubSettings(HUB_PORT=0, HUB_DB=Path(tmp) / "hub.db", HUB_OPERATOR_KEYS=_KEY)
        async with HubServer(settings) as hub, async_playwright() as playwright:
            store = hub.app[STORE]
            start = time.time() - 7200
            for i in range(STORED):
                store.post(op_insert_run, _run(i, start + i * 0.1, "succeeded"))
            await store.flush()
            browser = await playwright.chromium.launch(
                executable_path=CHROMIUM, args=["--headless=new", "--no-sandbox", "--disable-gpu"]
            )
            try:
                page = await browser.new_page(viewport={"width": 1366, "height": 850})
                await page.goto(f"{hub.url}/")
                await page.fill("#signin-key", _KEY)
                await page.click("#signin-form button[type=submit]")
                await page.wait_for_selector(".run-row")
                await page.wait_for_function(
                    "document.querySelector('#conn').dataset.state === 'live'"
                )
                dom_before = await page.evaluate(_DOM_NODES)
                await page.evaluate(_LONG_TASKS)
                now = time.time()
                began = time.monotonic()
                for i in range(STORED, STORED + BURST):
                    run = _run(i, now + (i - STORED) * 0.001, "running")
                    store.post(op_insert_run, run)
                    hub.app[BUS].publish({"type": "run", "run": run.summary()}, run.id)
                newest = f"run_page{STORED + BURST - 1:05d}"
                await page.wait_for_selector(f'.run-row[data-id="{newest}"]')
                shown = time.monotonic() - began
                await page.wait_for_timeout(500)  # let any late work show as a long task
                return PageResult(
                    dom_before=dom_before,
                    dom_after=await page.evaluate(_DOM_NODES),
                    rows=await page.locator(".run-row").count(),
                    long_tasks=await page.evaluate("window.longTasks"),
                    burst_shown_s=shown,
                )
            finally:
                await browser.close()


def report(result: PageResult | None) -> str:
    """The markdown lines for the page, to go under the feed's section."""
    if result is None:
        return f"The monitor page: not measured ({CHROMIUM} is absent; `make browser`)."
    ok = result.dom_after < GOAL_DOM_NODES and not result.long_tasks
    longest = f"{max(result.long_tasks):.0f} ms" if result.long_tasks else "none"
    return "\n".join(
        [
            f"The monitor page in headless Chromium, {STORED:,} runs stored, then {BURST:,} "
            f"arriving at once (goal: under {GOAL_DOM_NODES:,} DOM elements, no long "
            f"task): **{'met' if ok else 'NOT met'}**.",
            "",
            render_table(
                ["DOM elements before", "after the burst", "rows", "long tasks", "burst shown in"],
                [
                    (
                        f"{result.dom_before:,}",
                        f"{result.dom_after:,}",
                        result.rows,
                        f"{len(result.long_tasks)} (longest {longest})",
                        f"{result.burst_shown_s * 1000:.0f} ms",
                    )
                ],
            ),
        ]
    )
