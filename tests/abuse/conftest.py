"""Fixtures of the abuse tests: a hub with keys and token set, a dry-run executor, and
detectors that say whether the hub crashed or stopped serving.

Every hub here binds 127.0.0.1 on a free port; every process and socket a test opens is
closed by the fixture that opened it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from hypothesis import HealthCheck, Phase, settings
from pydantic_settings import BaseSettings

from hub.settings import HubSettings
from kernel.logs import quiet_client_errors
from tests.conftest import NODE_TOKEN

#: The one API key the test hubs accept.
API_KEY = "abuse-api-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHAT = "/v1/chat/completions"

#: Hypothesis for CI: the same examples on every run, no deadline, no example database.
QUICK = settings(
    max_examples=200,
    derandomize=True,
    deadline=None,
    database=None,
    phases=(Phase.explicit, Phase.generate, Phase.shrink),
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)
#: The big fuzz run of ``make faults``.
FULL = settings(QUICK, max_examples=3000)
#: Examples between two checks that the hub still serves.
BATCH = 50

S = TypeVar("S", bound=BaseSettings)


def make(cls: type[S], **values: Any) -> S:
    """Settings of ``cls`` from these values alone (by env name), never from a .env file."""
    return cls(_env_file=None, **values)


#: The fuzzers send thousands of wrong keys and tokens from 127.0.0.1, each of which must
#: get its own 401 or 4001: the limit on failures per address is set out of their reach
#: (it still counts them). Its own tests in test_auth.py use the default.
FUZZ_AUTH_FAILURE_LIMIT = 1_000_000


@pytest.fixture
def hub_settings(tmp_path: Path) -> HubSettings:
    """The root fixture's hub, with an API key as well as the node token."""
    return make(
        HubSettings,
        HUB_PORT=0,
        HUB_DB=tmp_path / "hub.db",
        HUB_TOKEN=NODE_TOKEN,
        HUB_API_KEYS=API_KEY,
        HUB_EXECUTOR_GRACE_S=2.0,
        HUB_REDELIVER_S=1.0,
        HUB_KEEPALIVE_S=0.5,
        HUB_AUTH_FAILURE_LIMIT=FUZZ_AUTH_FAILURE_LIMIT,
    )


@pytest.fixture
async def executor(
    start_executor: Callable[..., AbstractAsyncContextManager[Any]],
) -> AsyncIterator[Any]:
    """A dry-run executor (it answers with the prompt) connected to the hub."""
    async with start_executor() as node:
        yield node


@pytest.fixture
async def http(hub: Any) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client on the hub's base URL: no default headers, and a new connection
    for each request, so one request's broken connection never falls on the next."""
    async with aiohttp.ClientSession(
        hub.url,
        connector=aiohttp.TCPConnector(force_close=True),
        timeout=aiohttp.ClientTimeout(total=30),
    ) as session:
        yield session


class Crashes(logging.Handler):
    """Collects every ERROR record logged anywhere in the process while installed."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def report(self) -> str:
        """The collected records, one line each, with their exception type."""
        lines = []
        for r in self.records:
            exc = r.exc_info[1] if r.exc_info else None
            lines.append(f"{r.name}: {r.getMessage()} {type(exc).__name__ if exc else ''}")
        return "\n".join(lines)


@pytest.fixture
def crashes() -> Iterator[Crashes]:
    """ERROR records logged during the test: a hub that handled everything logs none.

    Every codex-hub process logs aiohttp's reports of malformed requests at INFO
    (``configure_logging`` installs that); these in-process hubs get the same here.
    """
    server_log = logging.getLogger("aiohttp.server")
    filters = server_log.filters[:]
    quiet_client_errors()
    handler = Crashes()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        server_log.filters[:] = filters


async def assert_serving(http: aiohttp.ClientSession, prompt: str = "still serving?") -> None:
    """The hub answers /healthz and completes a real run through the dry-run executor."""
    async with http.get("/healthz") as resp:
        assert resp.status == 200, await resp.text()
    body = {"model": "codex", "messages": [{"role": "user", "content": prompt}]}
    async with http.post(CHAT, json=body, headers=AUTH) as resp:
        text = await resp.text()
        assert resp.status == 200, text
        answer = (await resp.json())["choices"][0]["message"]["content"]
    assert answer == prompt


class Batches:
    """Counts examples and checks, every :data:`BATCH` of them, that the hub still serves."""

    def __init__(self, http: aiohttp.ClientSession, crashes: Crashes) -> None:
        self.http = http
        self.crashes = crashes
        self.examples = 0
        self.checks = 0

    async def example_done(self) -> None:
        """Called after each example: a health check at every batch boundary."""
        self.examples += 1
        assert not self.crashes.records, self.crashes.report()
        if self.examples % BATCH == 0:
            await self.check()

    async def check(self) -> None:
        """The hub serves, and nothing was logged as an error."""
        self.checks += 1
        await assert_serving(self.http, f"batch {self.checks} done")
        assert not self.crashes.records, self.crashes.report()


@pytest.fixture
async def batches(
    http: aiohttp.ClientSession, executor: Any, crashes: Crashes
) -> AsyncIterator[Batches]:
    """Batch checks for a fuzz test; after the last example the hub must still serve."""
    tracker = Batches(http, crashes)
    yield tracker
    await tracker.check()
