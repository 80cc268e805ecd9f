"""CODEX_APPROVAL_POLICY: who asks before codex acts, and which engine can (issue #16)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from executor.engine_appserver import AppServerEngine
from executor.factory import make_engine
from executor.settings import ExecutorSettings
from executor.transport_local import LocalTransport


def test_nothing_asks_by_default() -> None:
    """Without the setting codex asks nobody, as `codex exec` does."""
    settings = ExecutorSettings(EXEC_ENGINE="app-server")
    engine = make_engine(settings, LocalTransport())
    assert settings.codex_approval_policy == "never"
    assert isinstance(engine, AppServerEngine) and engine.approval_policy == "never"


def test_the_app_server_engine_gets_the_policy() -> None:
    """The policy set is the one the engine starts its threads with."""
    settings = ExecutorSettings(EXEC_ENGINE="app-server", CODEX_APPROVAL_POLICY="on-request")
    engine = make_engine(settings, LocalTransport())
    assert isinstance(engine, AppServerEngine) and engine.approval_policy == "on-request"


def test_a_policy_that_asks_is_refused_with_the_exec_engine() -> None:
    """`codex exec` cannot ask anyone: the settings say so rather than look safe."""
    with pytest.raises(ValidationError) as info:
        ExecutorSettings(CODEX_APPROVAL_POLICY="on-request")
    assert "needs EXEC_ENGINE=app-server" in str(info.value)
