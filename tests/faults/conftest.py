"""Fixtures of the fault tests: real codex-hub processes, a keyed stub model, gates.

``stack`` is the product as processes (tests/faults/stack.py) on the fake Telegram and
Slack of testkit/fakes; its processes are SIGKILLed when the test ends, and the test
fails in teardown if anything they started (codex, its commands) outlived them. When a
test fails, the end of every process's log is added to its report.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Generator
from pathlib import Path
from typing import Any

import pytest

from testkit.fakes.model_server import make_codex_home
from testkit.fakes.slack import FakeSlack
from testkit.fakes.telegram import FakeTelegram
from testkit.procs import Procs
from tests.conftest import NODE_TOKEN
from tests.faults.model import KeyedModel
from tests.faults.stack import Stack

_PROCS = pytest.StashKey[Procs]()
_REPORTED = pytest.StashKey[bool]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[Any]
) -> Generator[None, Any, None]:
    """A failed fault test shows what its processes logged."""
    outcome = yield
    report = outcome.get_result()
    procs = item.stash.get(_PROCS, None)
    if procs is not None and report.failed and not item.stash.get(_REPORTED, False):
        item.stash[_REPORTED] = True
        report.sections.append(("codex-hub processes", procs.report()))


@pytest.fixture
async def procs(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    codex_tmpdir: Path,
    fake_telegram: FakeTelegram,
    fake_slack: FakeSlack,
    keyed_model: KeyedModel,
) -> AsyncIterator[Procs]:
    """The test's codex-hub processes; none of them, nor anything they started, survives.

    They are killed before the fakes they talk to stop (hence the fixtures it asks for).
    """
    env = {
        **os.environ,
        "LOG_LEVEL": "DEBUG",
        "HUB_TOKEN": NODE_TOKEN,
        "PYTHONUNBUFFERED": "1",
    }
    owned = Procs(tmp_path / "procs", env)
    request.node.stash[_PROCS] = owned
    try:
        yield owned
    finally:
        left = await owned.close()
        assert not left, f"processes outlived the test's codex-hub processes: {left}"


@pytest.fixture
async def keyed_model() -> AsyncIterator[KeyedModel]:
    """A stub model answering each run by the key in its prompt."""
    model = KeyedModel()
    await model.start()
    try:
        yield model
    finally:
        await model.close()


@pytest.fixture
def faults_home(tmp_path: Path, keyed_model: KeyedModel, codex_bin: str) -> Path:
    """A CODEX_HOME logged in and pointed at `keyed_model`."""
    return make_codex_home(tmp_path / "codex-home", keyed_model.base_url, codex_bin, logged_in=True)


@pytest.fixture
def engine() -> str:
    """EXEC_ENGINE of the stack's codex executors (`stack.BOTH_ENGINES` runs both)."""
    return "exec"


@pytest.fixture
def stack(
    procs: Procs,
    tmp_path: Path,
    fake_telegram: FakeTelegram,
    fake_slack: FakeSlack,
    engine: str,
) -> Stack:
    """The product as processes on the fake platforms; nothing is started yet."""
    return Stack(procs, tmp_path, telegram=fake_telegram, slack=fake_slack, engine=engine)
