"""Shared test set-up: every module in testkit/fakes/ is a pytest plugin of fixtures.

Also isolates the tests from the developer's environment: no proxy variables, no
settings from the shell, and no `.env` file read.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

# Imported before any test runs: on CPython 3.11.7 a test that cancels a client
# mid-stream leaves the compiler's recursion counter off, and hypothesis' plugin
# importing itself late (in the terminal summary) then fails with "AST constructor
# recursion depth mismatch". Importing it first avoids that late compile.
import hypothesis
import pytest

from testkit.procs import SETTING_PREFIXES

# Property tests are the same on every run and every machine: no timing deadline (a
# loaded CI box is slow), no example database carried between runs, a fixed seed.
hypothesis.settings.register_profile("codex-hub", deadline=None, database=None, derandomize=True)
hypothesis.settings.load_profile("codex-hub")

# Settings come from the tests alone, and slack_sdk and httpx would send loopback traffic
# to a proxy. CODEX_BIN (set by `make test`) stays: it only says where the pinned codex
# binary is.
for _var in list(os.environ):
    if _var.startswith(SETTING_PREFIXES) and _var != "CODEX_BIN":
        os.environ.pop(_var, None)

pytest_plugins = [
    f"testkit.fakes.{p.stem}"
    for p in sorted((Path(__file__).parent.parent / "testkit" / "fakes").glob("*.py"))
    if p.stem != "__init__"
]


def _no_env_file() -> None:
    import importlib

    from pydantic_settings import BaseSettings

    root = Path(__file__).resolve().parent.parent
    for path in root.glob("*/**/settings.py"):
        if path.parts[len(root.parts)] in (
            "wire",
            "kernel",
            "hub",
            "executor",
            "bridges",
            "codex_hub",
        ):
            importlib.import_module(".".join(path.relative_to(root).with_suffix("").parts))

    stack = list(BaseSettings.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls.__module__.split(".")[0] in (
            "wire",
            "kernel",
            "hub",
            "executor",
            "bridges",
            "codex_hub",
        ):
            cls.model_config["env_file"] = None


def pytest_configure(config: pytest.Config) -> None:
    """Never read a developer's .env during tests."""
    _no_env_file()


#: The test hubs' secret (HUB_TOKEN); a node presenting it itself is let in as any role
#: (deprecated). :func:`node_token` gives each role its own credential.
NODE_TOKEN = "node-token-for-tests-7f3a9c2e51"


def node_token(role: str) -> str:
    """The credential of ``role`` (executor, slack, telegram) on the test hubs."""
    from kernel.credentials import derive

    return derive(NODE_TOKEN, role)


@pytest.fixture
def hub_settings(tmp_path: Path) -> Any:
    """Hub settings for a test: port 0, a fresh store, short grace periods, and no API key
    (HUB_AUTH=none: the API tests here are not about keys; tests/abuse sets them)."""
    from hub.settings import HubSettings

    return HubSettings(
        HUB_PORT=0,
        HUB_DB=tmp_path / "hub.db",
        HUB_TOKEN=NODE_TOKEN,
        HUB_AUTH="none",
        HUB_EXECUTOR_GRACE_S=2.0,
        HUB_REDELIVER_S=1.0,
        HUB_KEEPALIVE_S=0.5,
        HUB_REATTACH_GRACE_S=1.0,
    )


@pytest.fixture
async def hub(hub_settings: Any) -> AsyncIterator[Any]:
    """A running hub on 127.0.0.1 and a free port."""
    from hub.app import HubServer

    server = HubServer(hub_settings)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


def free_port() -> int:
    """A port free on 127.0.0.1 now (for a server that must come back on the same one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def on_a_fixed_port(settings: Any) -> tuple[Any, str]:
    """Hub settings on a port chosen now, and the node URL there: for a hub that a test
    stops and starts again, and that its nodes must find on the same port."""
    fixed = settings.model_copy(update={"port": free_port()})
    return fixed, f"ws://127.0.0.1:{fixed.port}/ws"


async def outbox_drained(store: Any, timeout: float = 10.0) -> None:
    """Wait until the hub's outbox holds no reply (every one acknowledged or dropped).

    A bridge's ack can reach the hub after the last thing a test can see (the platform
    took the post before the bridge acked it), and the outbox says nothing when it empties:
    the store is asked every 20 ms, for at most `timeout`.
    """
    async with asyncio.timeout(timeout):
        while await store.count_pending_deliveries():  # noqa: ASYNC110 - no event to await
            await asyncio.sleep(0.02)


def ws_url(hub: Any) -> str:
    """The node websocket URL of a running hub."""
    return f"ws://127.0.0.1:{hub.port}/ws"


@pytest.fixture
def start_executor(hub: Any, tmp_path: Path) -> Callable[..., AbstractAsyncContextManager[Any]]:
    """Start a real executor node on the hub: ``async with start_executor(**settings)``.

    Dry-run by default; pass ``EXEC_DRY_RUN=False`` and codex settings for real runs.
    """
    from executor.factory import build_pipeline
    from executor.node import ExecutorNode
    from executor.settings import ExecutorSettings

    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[ExecutorNode]:
        values: dict[str, Any] = {
            "HUB_URL": ws_url(hub),
            "HUB_TOKEN": node_token("executor"),
            "EXEC_DRY_RUN": True,
            "EXEC_WORKDIR": tmp_path,
        }
        values.update(overrides)
        settings = ExecutorSettings(**values)
        pipeline, transport = build_pipeline(settings)
        node = ExecutorNode(settings, pipeline)
        try:
            await node.start()
            await node.client.connected.wait()
            yield node
        finally:
            await node.close()
            await pipeline.aclose()
            await transport.close()

    return start
