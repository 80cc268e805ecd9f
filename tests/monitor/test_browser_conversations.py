"""Conversations and search: search covers answers; a run's conversation is one click away
as a filter of the list, and one more click leads back to every run."""

from __future__ import annotations

import pytest
from playwright.async_api import expect

from hub.app import HubServer
from tests.monitor import test_browser
from tests.monitor.conftest import SCREENSHOTS
from tests.monitor.test_browser import EXECUTOR, LAPTOP, PHONE, OpenPage, api, row
from tests.monitor.test_browser_keyboard import serious_violations

pytestmark = pytest.mark.browser

open_page = test_browser.open_page  # the fixture, shared


async def test_search_finds_a_run_by_its_answer(
    monitor_hub: HubServer, scripted_executor: EXECUTOR, open_page: OpenPage
) -> None:
    """Text that is only in the answer finds the run (the hub searches answers too)."""
    async with scripted_executor():
        page = await open_page(monitor_hub.url)
        run = (await api(monitor_hub, "POST", "/api/runs", json={"prompt": "fix the tests"}))["run"]
        other = (await api(monitor_hub, "POST", "/api/runs", json={"prompt": "list pods"}))["run"]
        await expect(row(page, run["id"])).to_have_attribute("data-state", "succeeded")
        await expect(row(page, other["id"])).to_have_attribute("data-state", "succeeded")
        await page.get_by_label("Search").fill("answer: fix")
        await expect(page.locator(".run-row")).to_have_count(1)
        await expect(row(page, run["id"])).to_have_count(1)


async def test_a_runs_conversation_filters_the_list_and_clears_again(
    monitor_hub: HubServer, scripted_executor: EXECUTOR, open_page: OpenPage
) -> None:
    """ "its runs" on a run lists its conversation only; "Show every conversation" undoes it."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    async with scripted_executor():
        page = await open_page(monitor_hub.url)
        first = (await api(monitor_hub, "POST", "/api/runs", json={"prompt": "one"}))["run"]
        key = first["session_key"]
        body = {"prompt": "two", "session_key": key}
        second = (await api(monitor_hub, "POST", "/api/runs", json=body))["run"]
        await api(monitor_hub, "POST", "/api/runs", json={"prompt": "elsewhere"})
        await expect(page.locator(".run-row")).to_have_count(3)
        await page.goto(f"{monitor_hub.url}/#/runs/{second['id']}")
        await page.locator("#detail").get_by_role("button", name="its runs").click()
        await expect(page.locator(".run-row")).to_have_count(2)
        await expect(page.locator("#f-conversation-key")).to_have_text(key)
        await expect(row(page, first["id"])).to_have_attribute("data-state", "succeeded")
        for size, viewport in (("laptop", LAPTOP), ("phone", PHONE)):
            await page.set_viewport_size(viewport)
            await page.screenshot(path=SCREENSHOTS / f"conversation-filter-{size}.png")
        await page.get_by_role("button", name="Show every conversation").click()
        await expect(page.locator(".run-row")).to_have_count(3)
        await expect(page.locator("#f-conversation")).to_be_hidden()


async def test_a_conversation_reads_as_a_chat_oldest_first_with_its_totals(
    monitor_hub: HubServer, scripted_executor: EXECUTOR, open_page: OpenPage
) -> None:
    """Its prompts and answers in order, each answer rendered, totals on top; axe-clean."""
    async with scripted_executor():
        page = await open_page(monitor_hub.url)
        first = (await api(monitor_hub, "POST", "/api/runs", json={"prompt": "one"}))["run"]
        body = {"prompt": "two **bold**", "session_key": first["session_key"]}
        second = (await api(monitor_hub, "POST", "/api/runs", json=body))["run"]
        await expect(row(page, second["id"])).to_have_attribute("data-state", "succeeded")
        await page.goto(f"{monitor_hub.url}/#/runs/{second['id']}")
        await page.locator("#detail").get_by_role("link", name="read as a chat").click()
        turns = page.locator("#detail .chat-turn")
        await expect(turns).to_have_count(2)
        await expect(turns.locator(".chat-prompt")).to_have_text(["one", "two **bold**"])
        await expect(turns.nth(1).locator(".answer strong")).to_have_text("bold")
        await expect(page.locator("#detail .conversation-totals")).to_contain_text("2 runs")
        await expect(page.locator("#detail-title")).to_be_focused()
        assert await serious_violations(page) == []
        for size, viewport in (("laptop", LAPTOP), ("phone", PHONE)):
            await page.set_viewport_size(viewport)
            await page.screenshot(path=SCREENSHOTS / f"conversation-chat-{size}.png")
        await turns.nth(0).get_by_role("link", name="succeeded").click()
        await expect(page.locator("#detail-title")).to_have_text(first["id"])
