"""Process-wide tuning every codex-hub process applies once it is up."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import sys
from collections.abc import Callable

log = logging.getLogger(__name__)

_PR_SET_DUMPABLE = 4
_PR_GET_DUMPABLE = 3

_heap_frozen = False

#: Allocations (less deallocations) between two collections of the youngest generation.
YOUNG_THRESHOLD = 10_000

#: Seconds a thread may hold the GIL while another waits for it (Python's default: 5 ms).
SWITCH_INTERVAL_S = 0.001


def freeze_startup_heap() -> bool:
    """Hide everything alive now from the cyclic garbage collector; once per process.

    After start-up a process holds a few hundred thousand objects (aiohttp, pydantic,
    slack-bolt, python-telegram-bot, their modules) that live as long as it does. Every
    full collection walked all of them: 40 ms on a quiet machine, 200 ms on a busy one,
    with the event loop standing still, which showed as the bridges' worst latencies.
    Frozen (``gc.freeze``) they are skipped; reference counting still frees them as
    before. Returns True when this call froze the heap.

    The youngest generation is then collected every ``YOUNG_THRESHOLD`` allocations
    rather than Python's 700: what a request or a run allocates is freed by reference
    counting (it makes no cycles), so each collection walks mostly objects still in
    use, and at the default the hub spent a tenth of its event loop's time in them.
    """
    global _heap_frozen
    if _heap_frozen:
        return False
    _heap_frozen = True
    gc.collect()  # what start-up left behind is freed, not frozen
    gc.freeze()
    young, *older = gc.get_threshold()
    if 0 < young < YOUNG_THRESHOLD:  # 0: collection is off; a larger one was chosen
        gc.set_threshold(YOUNG_THRESHOLD, *older)
    return True


def share_the_gil() -> bool:
    """Let a thread that waits for the GIL have it after ``SWITCH_INTERVAL_S``, not 5 ms.

    For a process whose event loop shares the GIL with a busy thread (the hub's store
    writer): at Python's 5 ms the loop, with requests read and waiting, may stand that
    long behind the writer's Python code at every handover, which showed in the hub's
    tail (issue 19: side by side at 64 concurrent runs, p99 41-60 ms at 1 ms against
    47-63 ms at 5 ms, and 272-282 against 286-330 us of the loop's CPU per run). Never
    raises an interval the process set lower. Returns True when this call lowered it.
    """
    if sys.getswitchinterval() <= SWITCH_INTERVAL_S:
        return False
    sys.setswitchinterval(SWITCH_INTERVAL_S)
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


def make_undumpable() -> bool:
    """Close this process to other processes of the same user (Linux); True when done.

    A non-dumpable process (``prctl(PR_SET_DUMPABLE, 0)``) cannot be traced, and its
    ``/proc/<pid>/environ``, ``mem``, ``fd`` and the like belong to root: codex's commands,
    which run as the same user, can no longer read the secrets this process holds in
    its environment or memory. Only a privileged process (root) still can. The flag is
    not inherited across ``execve``, so codex and the run helper stay ordinary.

    This, not removing variables from ``os.environ``, is what closes ``environ``: the
    kernel shows the block the process started with, whatever it unset since.
    """
    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE) failed")
    except (OSError, AttributeError) as exc:
        log.warning("could not make this process non-dumpable: %s", exc)
        return False
    return True


def is_dumpable() -> bool:
    """True unless :func:`make_undumpable` took effect (always True off Linux)."""
    if sys.platform != "linux":
        return True
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0))
