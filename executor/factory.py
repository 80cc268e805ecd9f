"""Builds an executor's pipeline from its settings: transport, engine, optimizer."""

from __future__ import annotations

import importlib
from typing import Any

from executor.engine import CodexEngine
from executor.optimizer import PromptOptimizer
from executor.pipeline import Optimizer, Pipeline
from executor.settings import ExecutorSettings
from executor.transport import Transport
from executor.transport_local import LocalTransport


class ConfigError(ValueError):
    """A setting is missing or wrong; the message names it."""


def make_transport(settings: ExecutorSettings) -> Transport:
    """The transport ``EXEC_TRANSPORT`` asks for."""
    if settings.exec_transport == "local":
        return LocalTransport()
    try:
        module: Any = importlib.import_module("executor.transport_ssh")
    except ImportError as exc:  # pragma: no cover - shipped with the package
        raise ConfigError(f"EXEC_TRANSPORT=ssh is not available: {exc}") from exc
    return module.SshTransport.from_settings(settings)


def make_optimizer(settings: ExecutorSettings) -> Optimizer:
    """The prompt optimizer; it asks upstream only for runs that want optimization."""
    return PromptOptimizer(settings)


def build_pipeline(settings: ExecutorSettings) -> tuple[Pipeline, Transport]:
    """A pipeline and the transport it owns (close the transport when done)."""
    transport = make_transport(settings)
    engine = CodexEngine(settings, transport, codex_bin=getattr(transport, "codex_bin", None))
    return Pipeline(settings, engine, make_optimizer(settings)), transport
