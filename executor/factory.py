"""Builds an executor's pipeline from its settings: transport, engine, optimizer."""

from __future__ import annotations

from executor.engine import CodexEngine
from executor.optimizer import PromptOptimizer
from executor.pipeline import Optimizer, Pipeline
from executor.settings import ConfigError, ExecutorSettings
from executor.transport import Transport
from executor.transport_local import LocalTransport
from executor.transport_ssh import SshTransport

__all__ = ["ConfigError", "build_pipeline", "make_optimizer", "make_transport"]


def make_transport(settings: ExecutorSettings) -> Transport:
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
    engine = CodexEngine(settings, transport, codex_bin=getattr(transport, "codex_bin", None))
    return Pipeline(settings, engine, make_optimizer(settings)), transport
