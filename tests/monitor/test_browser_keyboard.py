"""Keyboard and accessibility: skip links, focus when a run opens, every scrollable region
reachable, and axe-core (pinned, tests/monitor/vendor/) finds nothing serious in any view."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, expect

from hub.app import HubServer
from tests.monitor import test_browser
from tests.monitor.conftest import SCREENSHOTS
from tests.monitor.test_browser import EXECUTOR, LAPTOP, PHONE, OpenPage, api, row

pytestmark = pytest.mark.browser

open_page = test_browser.open_page  # the fixture, shared

AXE = (Path(__file__).parent / "vendor" / "axe.min.js").read_text()


async def serious_violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the page as it is now."""
    if not await page.evaluate("typeof window.axe === 'object'"):
        await page.evaluate(AXE)  # through the DevTools protocol: the page's CSP stays
    results = await page.evaluate(
        "async () => (await axe.run(document, { resultTypes: ['violations'] })).violations"
        ".map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.map((n) => n.target) }))"
    )
    return [v for v in results if v["impact"] in ("serious", "critical")]


async def start_runs(hub: HubServer) -> dict[str, str]:
    ids = {}
    for name, prompt in (
        ("markdown", "say:\n\n## Result\n\n```sh\nmake test\n```\n"),
        ("failed", "fail: broken"),
        ("held", "hold: cancel me"),
    ):
        ids[name] = (await api(hub, "POST", "/api/runs", json={"prompt": prompt}))["run"]["id"]
    return ids


async def test_axe_finds_no_serious_violation_in_any_view(
    monitor_hub: HubServer, scripted_executor: EXECUTOR, open_page: OpenPage
) -> None:
    """Sign-in, the list, a markdown answer, a failed and a cancelled run; light and dark,
    laptop and phone."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    signin = await open_page(monitor_hub.url, sign_in=False)
    await expect(signin.locator("#signin-form")).to_be_visible()
    assert await serious_violations(signin) == [], "sign-in"
    async with scripted_executor():
        ids = await start_runs(monitor_hub)
        await api(monitor_hub, "POST", f"/api/runs/{ids['held']}/cancel")
        # A short laptop window: the list and the detail scroll, and must do so by keyboard.
        short = {"width": LAPTOP["width"], "height": 520}
        for scheme, viewport in (("light", short), ("dark", PHONE)):
            page = await open_page(monitor_hub.url, viewport=viewport, scheme=scheme)
            await expect(row(page, ids["held"])).to_have_attribute("data-state", "cancelled")
            assert await serious_violations(page) == [], f"list ({scheme})"
            for name, run_id in ids.items():
                await page.goto(f"{monitor_hub.url}/#/runs/{run_id}")
                await expect(page.locator("#detail .outcome")).not_to_contain_text(
                    "The answer appears here"
                )
                assert await serious_violations(page) == [], f"{name} run ({scheme})"
            await page.screenshot(path=SCREENSHOTS / f"keyboard-axe-{scheme}.png")


async def test_skip_links_reach_the_composer_and_the_runs_and_opening_a_run_moves_focus(
    monitor_hub: HubServer, scripted_executor: EXECUTOR, open_page: OpenPage
) -> None:
    """The first Tab offers the composer, the second the runs; Enter on a run focuses it."""
    async with scripted_executor():
        ids = await start_runs(monitor_hub)
        for size, viewport in (("laptop", LAPTOP), ("phone", PHONE)):
            page = await open_page(monitor_hub.url, viewport=viewport)
            await expect(row(page, ids["failed"])).to_have_attribute("data-state", "failed")
            await page.reload()  # signed in still; the focus starts at the top
            await expect(page.locator("#conn")).to_have_attribute("data-state", "live")
            await page.keyboard.press("Tab")
            skip = page.get_by_role("link", name="Skip to the composer")
            await expect(skip).to_be_focused()
            await page.screenshot(path=SCREENSHOTS / f"keyboard-skip-{size}.png")
            await page.keyboard.press("Enter")
            await expect(page.locator("#c-prompt")).to_be_focused()

            await page.goto(f"{monitor_hub.url}/")
            await page.reload()
            await expect(page.locator("#conn")).to_have_attribute("data-state", "live")
            await page.keyboard.press("Tab")
            await page.keyboard.press("Tab")
            await expect(page.get_by_role("link", name="Skip to the runs")).to_be_focused()
            await page.keyboard.press("Enter")
            await expect(page.locator("#runs-title")).to_be_focused()

            link = row(page, ids["failed"]).locator("a")
            await link.focus()
            await page.keyboard.press("Enter")
            await expect(page.locator("#detail-title")).to_be_focused()
            await expect(page.locator("#detail-title")).to_have_text(ids["failed"])
            # A finished run's detail scrolls by keyboard: it takes focus itself.
            await expect(page.locator("#detail")).to_have_attribute("tabindex", "0")
            if size == "phone":  # stacked: a way back to where the reader was
                await page.locator("#detail .back-link").click()
                await expect(link).to_be_focused()
