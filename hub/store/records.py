"""What the store keeps: a run, a reply in the outbox, and the shape of an event row.

Plain data, no SQL and no I/O: the hub builds and reads these, the store's statements
(:mod:`hub.store.sql`) turn them into rows and back.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, TypeAlias

from wire import RunState

#: One event of a run as the store takes it: (seq, ts, kind, data, exec_seq). ``seq``
#: counts the hub's events of the run from 1; ``exec_seq`` is the executor's own count
#: (None for events the hub made), so that an event sent again is stored once.
EventRow: TypeAlias = tuple[int, float, str, Any, int | None]

#: A session to remember with a run's end: (key, codex thread id, executor).
SessionRow: TypeAlias = tuple[str, str | None, str | None]


@dataclass
class Run:
    """One request handed to codex, from arrival to its final answer."""

    id: str
    prompt: str
    origin: dict[str, Any]
    source: str
    created_at: float
    #: Stored and shown as its string value.
    state: RunState = RunState.QUEUED
    session_key: str | None = None
    user: str | None = None
    effective_prompt: str | None = None
    optimize: bool | None = None
    executor: str | None = None
    thread_id: str | None = None
    answer: str | None = None
    usage: dict[str, int] | None = None
    error: dict[str, str] | None = None
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float = 0.0
    dedupe_key: str | None = None
    #: The API principal that started it (hub.auth); None for chat bridges.
    principal: str | None = None
    #: Where it may go (hub.targets' text form, ``gpu,prod``); None: any executor.
    target: str | None = None
    n: int | None = field(default=None, repr=False)

    def snapshot(self) -> Run:
        """A shallow copy, to hand to the writer thread (which reads it later)."""
        clone = object.__new__(Run)
        clone.__dict__.update(self.__dict__)
        return clone

    def to_dict(self) -> dict[str, Any]:
        """The run as the API shows it."""
        data = asdict(self)
        data.pop("n", None)
        return data

    def summary(self, excerpt: int = 200) -> dict[str, Any]:
        """The run without its long texts, for lists and the live feed."""
        return {
            "id": self.id,
            "state": self.state,
            "source": self.source,
            "user": self.user,
            "session_key": self.session_key,
            "prompt_excerpt": self.prompt[:excerpt],
            "executor": self.executor,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "error": self.error,
            "principal": self.principal,
            "target": self.target,
        }


@dataclass(frozen=True)
class RunPage:
    """Which runs a list or search asks for: newest first, filtered, ``limit`` of them
    older than the key ``before`` (the cursor of the page before)."""

    states: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    #: What a user typed into search ('' for none).
    query: str = ""
    session_key: str | None = None
    before: int | None = None
    limit: int = 50
    #: Only this principal's runs (None: everyone's).
    principal: str | None = None


@dataclass
class Delivery:
    """A reply waiting in the outbox until the bridge of its platform acknowledges it."""

    id: str
    run_id: str
    platform: str
    payload: dict[str, Any]
    created_at: float
    attempts: int = 0


#: Run ids are numbers that grow: the milliseconds since the epoch above the low
#: ``_SEQ_BITS`` bits, a count below them; each process starts its count at a random
#: point, so that another process (a restart with its clock set back) does not meet
#: the same numbers.
_SEQ_BITS = 20
_ID_START = secrets.randbits(_SEQ_BITS - 1)
_id_lock = threading.Lock()
_last_id = 0


def new_run_id() -> str:
    """A run id (``run_`` and 16 hex digits) that sorts by creation time.

    The store indexes runs by id: ids that grow land next to each other in that index,
    where random ones put each new run on a page of its own, which its commit then
    rewrote (and the checkpoint copied back) whole. Ids need not be secret: the API
    that names runs needs a key and shows a key only its own runs, and an approval is
    decided by who may decide it, not by who knows the id. Within a process ids never
    repeat, also if the clock steps back (the count goes on from the last one).
    """
    global _last_id
    start = ((time.time_ns() // 1_000_000) << _SEQ_BITS) + _ID_START
    with _id_lock:
        number = _last_id = max(start, _last_id + 1)
    return f"run_{number:016x}"


@dataclass(frozen=True, slots=True)
class StoreActivity:
    """What the store did since it opened, as counters (``/metrics``)."""

    #: Transactions the writer committed (or rolled back), and their time in all (s).
    transactions: int
    transaction_s: float
    #: Reads (lists, searches, the overview) answered or failed, their time in all (s,
    #: the wait for earlier writes included), and those that failed (the API's 503).
    reads: int
    read_s: float
    read_failures: int
