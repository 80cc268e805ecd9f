"""Builds an executor's pipeline from its settings: transport, engine, optimizer."""

from __future__ import annotations

from executor.engine import CodexEngine
from executor.engine_appserver import AppServerEngine
from executor.optimizer import PromptOptimizer
from executor.pipeline import Optimizer, Pipeline
from executor.settings import ConfigError, ExecutorSettings
from executor.transport import Transport
from executor.transport_local import LocalTransport
from executor.transport_ssh import SshTransport
from executor.workspace import Workspaces

__all__ = ["ConfigError", "build_pipeline", "make_engine", "make_optimizer", "make_transport"]


def make_transport(settings: ExecutorSettings) -> LocalTransport | SshTransport:
    """The transport ``EXEC_TRANSPORT`` asks for."""
    if settings.exec_transport == "local":
        return LocalTransport()
    return SshTransport.from_settings(settings)


def make_optimizer(settings: ExecutorSettings) -> Optimizer:
    """The prompt optimizer; it asks upstream only for runs that want optimization."""
    return PromptOptimizer(settings)


def build_pipeline(settings: ExecutorSettings) -> tuple[Pipeline, Transport]:
    """A pipeline and the transport it owns (close the transport when done)."""
    transport = make_transport(settings)
    # An explicit EXEC_WORKDIR keeps every run in that one directory; otherwise each
    # conversation gets its own workspace under WORKSPACE_ROOT.
    workspaces = None if settings.fixed_workdir else Workspaces(settings, transport)
    pipeline = Pipeline(
        settings, make_engine(settings, transport), make_optimizer(settings), workspaces
    )
    return pipeline, transport


def make_engine(
    settings: ExecutorSettings, transport: LocalTransport | SshTransport
) -> CodexEngine:
    """The engine ``EXEC_ENGINE`` asks for, on `transport`."""
    codex_bin = getattr(transport, "codex_bin", None)
    if settings.exec_engine == "app-server":
        return AppServerEngine(
            settings,
            transport,
            codex_bin=codex_bin,
            approval_policy=settings.codex_approval_policy,
        )
    return CodexEngine(settings, transport, codex_bin=codex_bin)
