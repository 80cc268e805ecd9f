"""The composer's executor picker (issue #20): the known labels and executor names, and a
run started with one lands only on a matching executor."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.async_api import expect

from hub.app import HubServer
from tests.monitor import test_browser
from tests.monitor.conftest import NODE_TOKEN, node_url
from tests.monitor.test_browser import OpenPage

pytestmark = pytest.mark.browser

open_page = test_browser.open_page  # the fixture, shared


async def test_the_composer_picker_sends_a_run_only_to_a_matching_executor(
    monitor_hub: HubServer, fake_executor: Any, open_page: OpenPage
) -> None:
    """The picker lists every label and executor name; a run started with ``gpu`` picked
    goes to the gpu box though the laptop has more room, and one with the laptop picked
    by name goes to the laptop."""
    url = node_url(monitor_hub)
    async with (
        fake_executor(
            url, node_id="laptop", token=NODE_TOKEN, labels=["dev"], capacity=8
        ) as laptop,
        fake_executor(url, node_id="gpu-box", token=NODE_TOKEN, labels=["gpu"]) as gpu,
    ):
        page = await open_page(monitor_hub.url)
        picker = page.locator("#c-target")
        await expect(picker.locator("option")).to_have_text(
            ["Any executor", "label: dev", "label: gpu", "gpu-box", "laptop"]
        )
        await picker.select_option("gpu")
        await page.locator("#c-prompt").fill("train the model")
        await page.get_by_role("button", name="Start run").click()
        frame = await gpu.wait_type("assign", prompt="train the model")
        await expect(page.locator("#c-status")).to_contain_text(f"Started {frame['run_id']}")
        await picker.select_option("@laptop")
        await page.locator("#c-prompt").fill("lint it")
        await page.get_by_role("button", name="Start run").click()
        await laptop.wait_type("assign", prompt="lint it")
        assert [f["prompt"] for f in laptop.of_type("assign")] == ["lint it"]
        assert [f["prompt"] for f in gpu.of_type("assign")] == ["train the model"]
