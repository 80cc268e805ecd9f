"""The CLI list the optimizer names to the model."""

from __future__ import annotations

from typing import Any

import pytest

from executor.clis import CLI_PURPOSES, available_clis
from executor.settings import ExecutorSettings


def settings(**values: Any) -> ExecutorSettings:
    return ExecutorSettings(_env_file=None, **values)  # type: ignore[call-arg]


def test_codex_and_git_always() -> None:
    """With an empty environment only codex and git are listed."""
    assert available_clis(settings(), {}) == ["codex", "git"]


@pytest.mark.parametrize(
    ("variable", "cli"),
    [
        ("AWS_PROFILE", "aws"),
        ("AWS_ACCESS_KEY_ID", "aws"),
        ("AWS_DEFAULT_REGION", "aws"),
        ("GITHUB_TOKEN", "gh"),
        ("GH_TOKEN", "gh"),
        ("KUBECONFIG", "kubectl"),
    ],
)
def test_detected_from_environment(variable: str, cli: str) -> None:
    """A CLI's credential or config variable adds it after codex and git."""
    assert available_clis(settings(), {variable: "value"}) == ["codex", "git", cli]


def test_empty_variables_do_not_count() -> None:
    """A variable that is set but blank detects nothing."""
    environ = {"GH_TOKEN": "", "KUBECONFIG": "  ", "AWS_PROFILE": ""}
    assert available_clis(settings(), environ) == ["codex", "git"]


def test_detection_order_is_stable() -> None:
    """Detected CLIs come in a fixed order whatever the environment's order."""
    environ = {"KUBECONFIG": "/k", "GH_TOKEN": "t", "AWS_REGION": "eu-west-1"}
    assert available_clis(settings(), environ) == ["codex", "git", "aws", "gh", "kubectl"]


def test_available_clis_appended_deduplicated_in_order() -> None:
    """AVAILABLE_CLIS is appended in its order; repeats and blanks are dropped."""
    s = settings(AVAILABLE_CLIS=" terraform, git,,helm , terraform, gh")
    assert available_clis(s, {"GITHUB_TOKEN": "t"}) == ["codex", "git", "gh", "terraform", "helm"]


def test_every_known_cli_has_a_purpose() -> None:
    """The doctor can say what each detected CLI is for."""
    assert {"codex", "git", "gh", "kubectl", "aws"} <= CLI_PURPOSES.keys()
