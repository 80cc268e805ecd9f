"""What the bridges share: the optimization prefix, start-up retries, the frozen heap."""

from __future__ import annotations

import gc

import pytest

from bridges.common import freeze_startup_heap, retry_startup, split_optimize_prefix


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
