"""The chat prefix that turns prompt optimization on or off for one message."""

from __future__ import annotations

import pytest

from bridges.common import split_optimize_prefix


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
