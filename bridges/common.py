"""What every chat bridge shares: the per-message prompt-optimization prefix.

A chat message that starts with ``!optimize`` asks for prompt optimization for that
request only; ``!raw`` turns it off for that request; without a prefix the executor's
setting (``OPTIMIZE_PROMPT``) decides.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Root of every bridge's errors; its message is fit to show a person as it is."""


OPTIMIZE_PREFIX = "!optimize"
RAW_PREFIX = "!raw"


def split_optimize_prefix(text: str) -> tuple[bool | None, str]:
    """``(optimize, rest)``: True/False when the text starts with a prefix, else None."""
    stripped = text.lstrip()
    for prefix, value in ((OPTIMIZE_PREFIX, True), (RAW_PREFIX, False)):
        if stripped.lower().startswith(prefix):
            rest = stripped[len(prefix) :]
            if not rest or rest[0].isspace():
                return value, rest.strip()
    return None, text.strip()
