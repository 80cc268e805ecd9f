"""Fixtures of the monitor's tests: a hub with API keys, executors, headless Chromium."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from executor.factory import build_pipeline
from executor.node import ExecutorNode
from executor.settings import ExecutorSettings
from hub.app import HubServer
from hub.settings import HubSettings
from tests.monitor.scripted_executor import ScriptedExecutor

API_KEY = "monitor-test-key-0123456789"
NODE_TOKEN = "monitor-node-token-4b8e1d"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"


def make_settings(tmp_path: Path, port: int = 0, **overrides: Any) -> HubSettings:
    """Hub settings with an operator's API key (the monitor's users see every run), a
    node token and a store in ``tmp_path``."""
    values: dict[str, Any] = {
        "HUB_PORT": port,
        "HUB_DB": tmp_path / "hub.db",
        "HUB_TOKEN": NODE_TOKEN,
        "HUB_OPERATOR_KEYS": API_KEY,
        "HUB_EXECUTOR_GRACE_S": 2.0,
    }
    values.update(overrides)
    return HubSettings(**values)


def node_url(server: HubServer) -> str:
    return f"ws://127.0.0.1:{server.port}/ws"


@pytest.fixture
def monitor_settings(tmp_path: Path) -> HubSettings:
    """Settings of the hub the monitor tests talk to."""
    return make_settings(tmp_path)


@pytest.fixture
async def monitor_hub(monitor_settings: HubSettings) -> AsyncIterator[HubServer]:
    """A running hub on a free port of 127.0.0.1, with ``HUB_OPERATOR_KEYS`` set."""
    async with HubServer(monitor_settings) as server:
        yield server


@pytest.fixture
def dry_executor(
    monitor_hub: HubServer, tmp_path: Path
) -> Callable[[], AbstractAsyncContextManager[ExecutorNode]]:
    """``async with dry_executor()``: the real executor node, dry-run (answers = prompts)."""

    @asynccontextmanager
    async def start() -> AsyncIterator[ExecutorNode]:
        settings = ExecutorSettings(
            HUB_URL=node_url(monitor_hub),
            HUB_TOKEN=NODE_TOKEN,
            EXEC_DRY_RUN=True,
            EXEC_WORKDIR=tmp_path,
            NODE_NAME="dry-exec",
        )
        pipeline, transport = build_pipeline(settings)
        try:
            async with ExecutorNode(settings, pipeline) as node:
                await node.client.connected.wait()
                yield node
        finally:
            await transport.close()

    return start


@pytest.fixture
def scripted_executor(
    monitor_hub: HubServer,
) -> Callable[[], AbstractAsyncContextManager[ScriptedExecutor]]:
    """``async with scripted_executor()``: a fake executor playing a script (see its module)."""

    def start() -> AbstractAsyncContextManager[ScriptedExecutor]:
        return ScriptedExecutor(node_url(monitor_hub), NODE_TOKEN)

    return start


@pytest.fixture
async def chromium() -> AsyncIterator[Any]:
    """Headless Chromium from Debian's package, driven by Playwright (never downloaded)."""
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium (make browser)")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()
