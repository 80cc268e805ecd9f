"""What the bridges share: the optimization and target prefixes, start-up retries, the
frozen heap."""

from __future__ import annotations

import gc

import pytest

from bridges.common import (
    TargetDefaults,
    freeze_startup_heap,
    retry_startup,
    split_optimize_prefix,
    split_target_prefix,
    target_command,
)
from kernel.process import YOUNG_THRESHOLD


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("!optimize fix the build", (True, "fix the build")),
        ("  !OPTIMIZE\nfix it", (True, "fix it")),
        ("!raw  run exactly this", (False, "run exactly this")),
        ("fix the build", (None, "fix the build")),
        ("!optimized is not a prefix", (None, "!optimized is not a prefix")),
        ("!optimize", (True, "")),
    ],
)
def test_the_prefix_is_read_and_removed(text: str, expected: tuple[bool | None, str]) -> None:
    """Only a whole-word prefix at the start counts; the rest is the prompt."""
    assert split_optimize_prefix(text) == expected


async def test_start_up_is_retried_until_the_platform_answers() -> None:
    """Failures that may pass are retried (and logged); the first success ends the retries."""
    failures = [OSError("connection refused"), TimeoutError()]
    calls = 0

    async def connect() -> None:
        nonlocal calls
        calls += 1
        if failures:
            raise failures.pop(0)

    up = await retry_startup(connect, platform="Test", refused=(ValueError,), backoff_min=0.001)
    assert up is True and calls == 3


async def test_start_up_stops_at_a_refused_token() -> None:
    """A refusal needs a person: no more tries, and the caller learns the bridge is down."""
    calls = 0

    async def connect() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("refused")

    up = await retry_startup(connect, platform="Test", refused=(ValueError,), backoff_min=0.001)
    assert up is False and calls == 1


def test_the_start_up_heap_is_frozen_once_per_process() -> None:
    """After the first bridge is up its start-up objects are out of the collector's way."""
    freeze_startup_heap()
    assert gc.get_freeze_count() > 0
    assert freeze_startup_heap() is False


def test_the_youngest_generation_is_collected_less_often_once_up() -> None:
    """After start-up the collector waits for YOUNG_THRESHOLD allocations, not 700."""
    freeze_startup_heap()
    assert gc.get_threshold()[0] >= YOUNG_THRESHOLD


def test_a_repo_command_is_told_from_a_request_that_starts_with_the_word() -> None:
    """`repo`, `repo owner/name` and `repo -` are commands; "repo is broken" is a request."""
    from bridges.common import repo_command

    assert repo_command("repo") == ""
    assert repo_command("Repo acme/widgets@dev") == "acme/widgets@dev"
    assert repo_command("repo -") == "-"
    assert repo_command("repo is broken, fix it") is None
    assert repo_command("repo broken") is None


def test_repo_defaults_set_show_and_clear_a_places_repository() -> None:
    """BRIDGE_REPOS seeds the places; the command sets, shows and clears one."""
    from bridges.common import RepoDefaults

    repos = RepoDefaults("C1=acme/one, 42=acme/two")
    assert repos.get("42") == "acme/two"
    assert "acme/three" in repos.command("C1", "acme/three")
    assert repos.get("C1") == "acme/three"
    assert "acme/three" in repos.command("C1", "")
    repos.command("C1", "-")
    assert repos.get("C1") is None
    assert "one word" in repos.command("C1", "a b")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("@gpu train it", ("gpu", "train it")),
        ("  @gpu,prod  do x", ("gpu,prod", "do x")),
        ("@host-1", ("host-1", "")),
        ("hi @gpu", (None, "hi @gpu")),
        ("email@example.com hi", (None, "email@example.com hi")),
        ("@ x", (None, "@ x")),
    ],
)
def test_a_leading_at_word_is_the_runs_target_and_leaves_the_prompt(
    text: str, expected: tuple[str | None, str]
) -> None:
    """``@label`` (or several, comma-joined) at the very start names the target; an ``@``
    elsewhere is part of the prompt."""
    assert split_target_prefix(text) == expected


def test_the_target_command_sets_shows_and_clears_a_places_target() -> None:
    """``target @gpu`` sets the place's target, ``target`` shows it, ``target -`` clears
    it; a request that starts with the word is no command, and two words are refused."""
    defaults = TargetDefaults()
    assert target_command("target the flaky tests") is None
    assert target_command("target @gpu,prod") == "@gpu,prod"
    assert "any executor" in defaults.command("C1", "")
    assert "matching gpu,prod" in defaults.command("C1", "@gpu,prod")
    assert defaults.get("C1") == "gpu,prod" and defaults.get("C2") is None
    assert "matching gpu,prod" in defaults.command("C1", "")
    assert "one word" in defaults.command("C1", "@a b")
    assert "cleared" in defaults.command("C1", "-")
    assert defaults.get("C1") is None
