"""The fleet view and the settings view in headless Chromium (issue #20): executors with
their labels, load, login, codex version, engine, heartbeat and runs, live; the hub's
settings for operators, with no secret anywhere on the page."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect

from hub.app import HubServer
from kernel.credentials import derive
from testkit.fakes.nodes import FakeExecutor, executor_hello
from tests.monitor import test_browser
from tests.monitor.conftest import API_KEY, NODE_TOKEN, SCREENSHOTS, make_settings, node_url
from tests.monitor.test_api_settings import distinct_secrets, leaked
from tests.monitor.test_browser import LAPTOP, PHONE, OpenPage, api, sign_in_with
from tests.monitor.test_browser_keyboard import serious_violations

pytestmark = pytest.mark.browser

open_page = test_browser.open_page  # the fixture, shared


@asynccontextmanager
async def executor(hub: HubServer, **hello: Any) -> AsyncIterator[FakeExecutor]:
    node = FakeExecutor(
        node_url(hub), executor_hello(token=derive(NODE_TOKEN, "executor"), **hello)
    )
    await node.connect()
    try:
        yield node
    finally:
        await node.close()


def fleet_row(page: Page, node_id: str) -> Any:
    return page.locator(f'.fleet-row[data-id="{node_id}"]')


async def test_the_fleet_view_shows_each_executor_with_its_labels_and_runs_live(
    monitor_hub: HubServer, open_page: OpenPage
) -> None:
    """Two executors with different labels show with load, login, version, engine and
    heartbeat; a run shows on the one it went to and links to its page; executors that
    come and go appear and turn offline without a reload."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = await open_page(monitor_hub.url)
    await page.get_by_role("link", name="Fleet", exact=True).click()
    await expect(page.locator("#detail-title")).to_have_text("Fleet")
    await expect(page.locator("#detail")).to_contain_text("No executor is connected")

    async with (
        executor(
            monitor_hub,
            node_id="gpu-box",
            capacity=1,
            labels=["gpu", "prod"],
            engine="app-server",
            codex_version="0.169.0",
        ) as gpu,
        executor(monitor_hub, node_id="laptop", capacity=2, labels=["dev"]) as laptop,
    ):
        gpu_row, laptop_row = fleet_row(page, "gpu-box"), fleet_row(page, "laptop")
        await expect(gpu_row.locator(".label")).to_have_text(["gpu", "prod"])
        await expect(laptop_row.locator(".label")).to_have_text(["dev"])
        await expect(gpu_row.locator(".fleet-load")).to_have_text("0/1 busy")
        await expect(gpu_row.locator(".fleet-login")).to_have_text("logged in")
        await expect(gpu_row.locator(".fleet-version")).to_have_text("0.169.0")
        await expect(gpu_row.locator(".fleet-engine")).to_have_text("app-server")
        await expect(laptop_row.locator(".fleet-version")).to_have_text("unknown")
        await expect(gpu_row.locator(".fleet-seen")).to_contain_text("ago")
        # The nodes panel shows the labels too.
        await expect(page.locator(".node", has_text="laptop").locator(".label")).to_have_text(
            ["dev"]
        )

        run = (await api(monitor_hub, "POST", "/api/runs", json={"prompt": "on the fleet"}))["run"]
        ran_on = gpu if gpu.of_type("assign") else laptop
        await ran_on.wait_type("assign", run_id=run["id"])
        other = laptop if ran_on is gpu else gpu
        link = fleet_row(page, str(ran_on.hello["node_id"])).get_by_role("link", name=run["id"])
        await expect(link).to_be_visible()
        await expect(
            fleet_row(page, str(other.hello["node_id"])).locator(".fleet-runs")
        ).to_have_text("idle")
        # A change redraws the view: a keyboard reader keeps their place on the link.
        await link.focus()
        await other.send({"type": "status", "capacity": 3})
        other_row = fleet_row(page, str(other.hello["node_id"]))
        await expect(other_row.locator(".fleet-load")).to_have_text("0/3 busy")
        await expect(link).to_be_focused()
        for size, viewport in (("laptop", LAPTOP), ("phone", PHONE)):
            await page.set_viewport_size(viewport)
            await page.screenshot(path=SCREENSHOTS / f"fleet-{size}.png", full_page=True)
        await page.set_viewport_size(LAPTOP)
        assert await serious_violations(page) == []

        await link.click()
        await expect(page.locator("#detail-title")).to_have_text(run["id"])
        await page.get_by_role("link", name="Fleet", exact=True).click()
        await expect(fleet_row(page, "gpu-box")).to_be_visible()

        async with executor(monitor_hub, node_id="late-comer", labels=["k8s"]):
            await expect(fleet_row(page, "late-comer").locator(".label")).to_have_text(["k8s"])
        await expect(fleet_row(page, "late-comer")).to_have_attribute("data-online", "false")
        await expect(fleet_row(page, "late-comer").locator(".fleet-load")).to_have_text("offline")
        await ran_on.finish(run["id"])
        await expect(
            fleet_row(page, str(ran_on.hello["node_id"])).locator(".fleet-runs")
        ).to_have_text("idle")


@pytest.fixture
async def secret_hub(tmp_path: Path) -> AsyncIterator[tuple[HubServer, list[str], str]]:
    """A hub whose every secret setting holds a distinct value (the page's key among the
    operators'), with a plain API key for a non-operator."""
    env, values = distinct_secrets()
    env["HUB_OPERATOR_KEYS"] += f",{API_KEY}"
    values.append(API_KEY)
    plain = env["HUB_API_KEYS"].split(",")[0]
    async with HubServer(make_settings(tmp_path, HUB_MODEL_NAME="fleet-model", **env)) as hub:
        yield hub, values, plain


async def test_the_settings_view_shows_the_settings_and_no_secret(
    secret_hub: tuple[HubServer, list[str], str], open_page: OpenPage
) -> None:
    """An operator sees every setting read-only, secrets as set; no secret value is
    anywhere in the page, nor in what the page fetched."""
    hub, values, _ = secret_hub
    page = await open_page(hub.url)
    bodies: list[str] = []

    async def keep(response: Any) -> None:
        if "/api/" in response.url:
            bodies.append(await response.text())

    page.on("response", keep)
    await page.get_by_role("link", name="Settings", exact=True).click()
    await expect(page.locator("#detail-title")).to_have_text("Settings")
    model = page.locator('.setting[data-env="HUB_MODEL_NAME"]')
    await expect(model.locator("td")).to_have_text("fleet-model")
    for name in ("HUB_TOKEN", "HUB_API_KEYS", "HUB_OPERATOR_KEYS"):
        secret = page.locator(f'.setting[data-env="{name}"]')
        await expect(secret).to_have_attribute("data-secret", "true")
        await expect(secret.locator("td")).to_have_text("set")
    await expect(
        page.locator("input, textarea, select", has=page.locator("#detail"))
    ).to_have_count(0)
    assert leaked(await page.content(), values) == []
    assert leaked(await page.evaluate("document.body.innerText"), values) == []
    assert bodies and leaked("\n".join(bodies), values) == []
    for size, viewport in (("laptop", LAPTOP), ("phone", PHONE)):
        await page.set_viewport_size(viewport)
        await page.screenshot(path=SCREENSHOTS / f"settings-{size}.png", full_page=True)
    await page.set_viewport_size(LAPTOP)
    assert await serious_violations(page) == []


async def test_the_settings_view_tells_a_non_operator_it_is_for_operators(
    secret_hub: tuple[HubServer, list[str], str], chromium: Browser
) -> None:
    """A plain API key sees the view refuse with the reason, and no setting."""
    hub, values, plain = secret_hub
    # Not the shared open_page: the browser logs the hub's 403 as a console error, which
    # is the answer this test wants (and the 401 before signing in, as open_page allows);
    # any other error still fails it.
    context = await chromium.new_context(viewport=LAPTOP)
    errors: list[str] = []
    try:
        page = await context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on(
            "console",
            lambda m: (
                errors.append(m.text)
                if m.type == "error" and not re.search(r"status of 40[13]\b", m.text)
                else None
            ),
        )
        await page.goto(hub.url)
        await sign_in_with(page, plain)
        await expect(page.locator("#conn")).to_have_attribute("data-state", "live")
        await page.get_by_role("link", name="Settings", exact=True).click()
        await expect(page.locator("#detail [role=alert]")).to_contain_text(
            "Only operators see the settings of this hub"
        )
        await expect(page.locator(".setting")).to_have_count(0)
        assert leaked(await page.content(), [v for v in values if v != plain]) == []
    finally:
        await context.close()
    assert errors == []
