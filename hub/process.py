"""Process-wide tuning every codex-hub process applies once it is up."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable

_heap_frozen = False


def freeze_startup_heap() -> bool:
    """Hide everything alive now from the cyclic garbage collector; once per process.

    After start-up a process holds a few hundred thousand objects (aiohttp, pydantic,
    slack-bolt, python-telegram-bot, their modules) that live as long as it does. Every
    full collection walked all of them: 40 ms on a quiet machine, 200 ms on a busy one,
    with the event loop standing still, which showed as the bridges' worst latencies.
    Frozen (``gc.freeze``) they are skipped; reference counting still frees them as
    before. Returns True when this call froze the heap.
    """
    global _heap_frozen
    if _heap_frozen:
        return False
    _heap_frozen = True
    gc.collect()  # what start-up left behind is freed, not frozen
    gc.freeze()
    return True


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (Linux and macOS), else asyncio's own.

    Every process the CLI starts uses it, and so does the bench's load generator (its
    effect is measured in docs/benchmarks.md).
    """
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
