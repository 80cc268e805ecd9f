"""The run's repository: named in the composer, its changes shown as a coloured diff,
and a pull request opened from the page."""

from __future__ import annotations

import pytest
from playwright.async_api import expect

from hub.app import HubServer
from tests.monitor import test_browser
from tests.monitor.scripted_executor import DIFF, PR_URL
from tests.monitor.test_browser import EXECUTOR, OpenPage, row

pytestmark = pytest.mark.browser

open_page = test_browser.open_page  # the fixture, shared


async def test_the_composer_names_a_repository_and_the_changes_open_a_pull_request(
    monitor_hub: HubServer, scripted_executor: EXECUTOR, open_page: OpenPage
) -> None:
    """The composer's repository goes with the run; the ended run shows its changes as a
    diff with added and removed lines marked (its markup as text) and an "Open PR"
    button, which starts an open_pr run in the conversation whose changes link the PR."""
    async with scripted_executor() as executor:
        page = await open_page(monitor_hub.url)
        await page.locator("#c-repo").fill("acme/widgets@main")
        await page.locator("#c-prompt").fill("change the readme")
        await page.get_by_role("button", name="Start run").click()
        await expect(page.locator("#detail .changes-summary")).to_contain_text(
            "1 file changed, +1 -1"
        )
        (first,) = executor.assigned.values()
        assert first["repo"] == "acme/widgets@main"
        await expect(row(page, first["run_id"])).to_have_attribute("data-state", "succeeded")

        diff = page.locator("#detail pre.diff")
        await expect(diff).to_have_text(DIFF)
        await expect(diff.locator(".diff-add")).to_have_text("+<b>new</b> line\n")
        await expect(diff.locator(".diff-del")).to_have_text("-old line\n")
        assert await diff.locator("b").count() == 0

        await page.locator("#detail").get_by_role("button", name="Open PR").click()
        link = page.locator("#detail .changes-pr a")
        await expect(link).to_have_attribute("href", PR_URL)
        second = next(f for f in executor.assigned.values() if f["run_id"] != first["run_id"])
        assert second["open_pr"] is True and second["session_key"] == first["session_key"]
        await expect(page.locator("#detail").get_by_role("button", name="Open PR")).to_have_count(0)


async def test_a_run_without_a_repository_says_it_changed_nothing(
    monitor_hub: HubServer, scripted_executor: EXECUTOR, open_page: OpenPage
) -> None:
    """A run that recorded no workspace changes says so in its Changes section, with no
    "Open PR" button."""
    async with scripted_executor():
        page = await open_page(monitor_hub.url)
        await page.locator("#c-prompt").fill("just answer")
        await page.get_by_role("button", name="Start run").click()
        await expect(page.locator("#detail .changes")).to_have_text(
            "This run recorded no repository changes."
        )
        await expect(page.get_by_role("button", name="Open PR")).to_have_count(0)
