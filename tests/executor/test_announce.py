"""What an executor announces to the hub besides its capacity: its labels (EXEC_LABELS),
its engine and codex's version (issue #20)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from executor.codex import TESTED_CODEX_VERSION, version_of
from executor.engine import CodexEngine
from executor.settings import ExecutorSettings
from executor.transport_local import LocalTransport


def test_labels_are_read_as_a_comma_list_once_each() -> None:
    """EXEC_LABELS is split on commas, trimmed, and a label said twice counts once."""
    settings = ExecutorSettings(EXEC_LABELS=" prod, k8s,,gpu_2,prod ,edge-1")
    assert settings.exec_labels == ["prod", "k8s", "gpu_2", "edge-1"]


def test_no_labels_by_default() -> None:
    """Without EXEC_LABELS an executor announces none."""
    assert ExecutorSettings().exec_labels == []


@pytest.mark.parametrize("bad", ["GPU", "gpu box", "prod;rm", "k8s/prod", "é", "x" * 65])
def test_a_label_outside_the_alphabet_is_refused_naming_the_rule(bad: str) -> None:
    """A label with anything but lowercase letters, digits, '-' and '_' is a settings
    error that names EXEC_LABELS, the label and what a label may hold."""
    with pytest.raises(ValidationError) as info:
        ExecutorSettings(EXEC_LABELS=f"prod,{bad}")
    [error] = info.value.errors()
    assert error["loc"] == ("EXEC_LABELS",)
    assert repr(bad[:80]) in error["msg"]
    assert "lowercase letters, digits, '-' and '_'" in error["msg"]


@pytest.mark.parametrize(
    ("output", "version"),
    [
        ("codex-cli 0.169.0\n", "0.169.0"),
        ("codex-cli v0.170.0-alpha.2", "0.170.0-alpha.2"),
        ("WARNING: proceeding\ncodex 1.2\n", "1.2"),
        ('{"type": "thread.started", "thread_id": "t-1"}', ""),
        ("", ""),
    ],
)
def test_the_version_is_the_number_that_ends_the_first_line(output: str, version: str) -> None:
    """`codex --version` output gives its version number, anything else none."""
    assert version_of(output) == version


async def test_the_engine_asks_the_real_codex_for_its_version(codex_bin: str) -> None:
    """The engine reports the version the installed codex binary prints."""
    transport = LocalTransport()
    try:
        engine = CodexEngine(ExecutorSettings(), transport, codex_bin=codex_bin)
        assert await engine.codex_version() == TESTED_CODEX_VERSION
    finally:
        await transport.close()
