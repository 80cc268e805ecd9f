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
