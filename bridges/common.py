"""What every chat bridge shares: the prompt-optimization prefix and the start-up helpers.

A chat message that starts with ``!optimize`` asks for prompt optimization for that
request only; ``!raw`` turns it off for that request; without a prefix the executor's
setting (``OPTIMIZE_PROMPT``) decides.

A bridge whose platform is unreachable at start-up keeps trying in the background
(:func:`retry_startup`); once it is up it hands the objects of its start-up to
:func:`freeze_startup_heap`, so that the cyclic garbage collector stops walking them.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

# Re-exported: each bridge calls it once it is up (also when embedded in `codex-hub up`).
from hub.process import freeze_startup_heap as freeze_startup_heap

log = logging.getLogger(__name__)


class BridgeError(Exception):
    """Root of every bridge's errors; its message is fit to show a person as it is."""


OPTIMIZE_PREFIX = "!optimize"
RAW_PREFIX = "!raw"

#: Retrying a start-up connection that failed: first and longest wait (full jitter).
STARTUP_BACKOFF_MIN_S = 0.5
STARTUP_BACKOFF_MAX_S = 60.0


def split_optimize_prefix(text: str) -> tuple[bool | None, str]:
    """``(optimize, rest)``: True/False when the text starts with a prefix, else None."""
    stripped = text.lstrip()
    for prefix, value in ((OPTIMIZE_PREFIX, True), (RAW_PREFIX, False)):
        if stripped.lower().startswith(prefix):
            rest = stripped[len(prefix) :]
            if not rest or rest[0].isspace():
                return value, rest.strip()
    return None, text.strip()


async def retry_startup(
    connect: Callable[[], Awaitable[None]],
    *,
    platform: str,
    refused: tuple[type[BaseException], ...],
    backoff_min: float = STARTUP_BACKOFF_MIN_S,
    backoff_max: float = STARTUP_BACKOFF_MAX_S,
) -> bool:
    """Call ``connect`` until it returns, waiting ever longer before each try.

    The waits double from ``backoff_min`` up to ``backoff_max``, each drawn from its
    upper half (jitter: bridges restarted together do not retry in step). Returns True
    once ``connect`` returned; False when it raised one of ``refused`` (a token the
    platform refuses: trying again cannot help). Every failure is logged here, as
    nobody awaits the task this usually runs in.
    """
    attempt = 0
    while True:
        attempt += 1
        delay = min(backoff_max, backoff_min * 2 ** min(attempt, 10))
        await asyncio.sleep(random.uniform(delay / 2, delay))
        try:
            await connect()
        except refused as exc:
            log.error("%s; the %s bridge stays down", exc, platform)
            return False
        except Exception as exc:
            log.warning("%s still not reachable (%s); retrying", platform, exc)
            continue
        return True
