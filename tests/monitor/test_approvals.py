"""The monitor's approval buttons in headless Chromium: a run waiting for a decision
shows codex's request and decides it with ``POST /api/runs/{id}/approval``."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.async_api import expect

from hub.app import HubServer
from hub.auth import principal_for_key
from tests.monitor.conftest import API_KEY, NODE_TOKEN, node_url
from tests.monitor.test_browser import OpenPage, api, open_page, row

pytestmark = pytest.mark.browser
__all__ = ["open_page"]  # fixture used by name


async def test_a_waiting_run_shows_the_request_and_approve_decides_it(
    monitor_hub: HubServer, fake_executor: Any, open_page: OpenPage
) -> None:
    """The run's page shows the command, why and three buttons; Approve reaches the
    executor, and the page then says who decided and when."""
    async with fake_executor(node_url(monitor_hub), token=NODE_TOKEN) as ex:
        page = await open_page(monitor_hub.url)
        run = (await api(monitor_hub, "POST", "/api/runs", json={"prompt": "deploy"}))["run"]
        run_id = run["id"]
        await ex.wait_type("assign", run_id=run_id)
        await ex.start_run(run_id)
        await ex.event(
            run_id,
            1,
            kind="approval",
            status="requested",
            approval_id="ap_9",
            request={"kind": "command", "command": "kubectl apply -f prod.yaml", "reason": "ship"},
            summary="codex asks to run `kubectl apply -f prod.yaml`",
        )
        line = row(page, run_id)
        await expect(line).to_have_attribute("data-state", "awaiting_approval")
        await line.locator("a").click()
        detail = page.locator("#detail")
        box = detail.locator(".approval")
        await expect(box).to_contain_text("kubectl apply -f prod.yaml")
        await expect(box).to_contain_text("Why: ship")
        await expect(detail.locator(".detail-head .badge")).to_have_text("awaiting approval")
        await box.get_by_role("button", name="Approve", exact=True).click()
        decision = await ex.wait_type("approval_decision", run_id=run_id)
        await expect(box.locator(".approval-decided")).to_contain_text(
            f"Approved by {principal_for_key(API_KEY)} at "
        )
        await expect(box.get_by_role("button", name="Deny")).to_have_count(0)
        await ex.event(run_id, 2, kind="approval", status="decided", approval_id="ap_9")
        await expect(detail.locator(".detail-head .badge")).to_have_text("running")
    assert decision["decision"] == "approve" and decision["approval_id"] == "ap_9"
