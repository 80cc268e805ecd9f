"""The router's queue: runs waiting for an executor, in order, at O(log n) per operation.

Runs wait in arrival order (a run taken back from an executor goes to the front), and
the runs of one session run one at a time, in that order: only the first queued run of
a session whose previous run has ended is *ready*. The router takes ready runs oldest
first. Walking the whole queue for that on every submit and every finish made the hub
quadratic in the runs queued in one session; here:

- every run has a place in the global order (an integer: arrival order, or below every
  other for a run put back at the front), kept in an insertion-ordered dict;
- each session has its own insertion-ordered dict of queued runs (dropped once empty),
  so its head and a new run's position are O(1);
- the ready runs sit in a heap by place, with lazy deletion: an entry is checked when it
  reaches the top and dropped if its run is gone, or is no longer its session's head,
  or its session is busy. A run becomes ready again when its session frees
  (`session_freed`) or the run before it leaves.

Add, remove, take and the position of a newly added run are O(log n) or O(1).

Runs that only some executors may take (a target, or a conversation pinned to its
executor: hub.targets) are grouped. A ready run of a group no free executor fits is
*parked* (:meth:`RunQueue.park`): out of the ready heap, into its group's own heap, so
the runs behind it are still taken. A group gets its oldest parked run back
(:meth:`RunQueue.unpark_one`) when an executor that fits it has a free slot, and the
next one each time one of its runs is assigned: each run is parked and unparked O(1)
times per slot that frees, so taking a run stays O(log n), plus a look at each parked
group (a few) per dispatch.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from collections.abc import Iterator, Mapping


class RunQueue:
    """Queued run ids in order, per session, and which of them may start now.

    `busy` maps a session key to its running run (the router's ``session_active``); the
    queue only reads it.
    """

    def __init__(self, busy: Mapping[str, str]) -> None:
        self._busy = busy
        self._order: OrderedDict[str, int] = OrderedDict()
        self._session_of: dict[str, str | None] = {}
        self._by_session: dict[str, OrderedDict[str, None]] = {}
        self._heap: list[tuple[int, str]] = []
        self._ready: dict[str, int] = {}
        self._back = 0
        self._front = 0
        #: Parked runs by group (a heap by place each, lazy deletion) and their group.
        self._parked: dict[str, list[tuple[int, str]]] = {}
        self._parked_of: dict[str, str] = {}
        self._parked_n: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._order)

    def __bool__(self) -> bool:
        return bool(self._order)

    def __iter__(self) -> Iterator[str]:
        """Queued run ids in the order they would be taken, sessions allowing."""
        return iter(list(self._order))

    def head(self, n: int) -> list[str]:
        """The first `n` queued run ids, in order: O(n), whatever the queue's length."""
        return list(itertools.islice(self._order, n))

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._order

    def __getitem__(self, index: int) -> str:
        """The run id at `index` in the global order (0: the front)."""
        if index < 0:
            index += len(self._order)
        if not 0 <= index < len(self._order):
            raise IndexError("queue index out of range")
        if index == 0:
            return next(iter(self._order))
        return next(itertools.islice(self._order, index, None))

    def sessions(self) -> int:
        """How many sessions have runs queued."""
        return len(self._by_session)

    def session_runs(self, key: str) -> Iterator[str]:
        """The queued runs of session `key`, first to run first."""
        return iter(list(self._by_session.get(key, ())))

    def has_session(self, key: str) -> bool:
        """True while session `key` has runs queued."""
        return key in self._by_session

    def add(self, run_id: str, session_key: str | None, *, front: bool = False) -> None:
        """Queue `run_id` at the back (arrival), or at the `front` (taken back)."""
        if run_id in self._order:
            return
        if front:
            self._front -= 1
            place = self._front
        else:
            self._back += 1
            place = self._back
        self._order[run_id] = place
        if front:
            self._order.move_to_end(run_id, last=False)
        self._session_of[run_id] = session_key
        if session_key is None:
            self._push(run_id, place)
            return
        runs = self._by_session.get(session_key)
        if runs is None:
            runs = self._by_session[session_key] = OrderedDict()
        runs[run_id] = None
        if front:
            runs.move_to_end(run_id, last=False)
        if session_key not in self._busy and next(iter(runs)) == run_id:
            self._push(run_id, place)

    def discard(self, run_id: str) -> None:
        """Take `run_id` out of the queue, wherever it is; nothing if it is not queued."""
        if self._order.pop(run_id, None) is None:
            return
        self._ready.pop(run_id, None)  # its heap entry is dropped when it surfaces
        group = self._parked_of.pop(run_id, None)
        if group is not None:
            self._parked_n[group] -= 1
            self._compact(group)
        key = self._session_of.pop(run_id)
        if key is None:
            return
        runs = self._by_session[key]
        was_head = next(iter(runs)) == run_id
        del runs[run_id]
        if not runs:
            del self._by_session[key]
        elif was_head:
            self.session_freed(key)

    def session_freed(self, key: str) -> None:
        """Session `key` has no run going any more: its first queued run may start."""
        runs = self._by_session.get(key)
        if runs is None or key in self._busy:
            return
        head = next(iter(runs))
        if head not in self._ready and head not in self._parked_of:
            self._push(head, self._order[head])

    def peek_ready(self) -> str | None:
        """The oldest run that may start now (its session is free and it is next in it)."""
        heap = self._heap
        while heap:
            place, run_id = heap[0]
            if self._ready.get(run_id) == place and self._startable(run_id):
                return run_id
            heapq.heappop(heap)
            if self._ready.get(run_id) == place:
                del self._ready[run_id]  # its session is busy: re-pushed once it frees
        return None

    def park(self, run_id: str, group: str) -> None:
        """Set aside ready run `run_id` until an executor of `group` is free (see above)."""
        place = self._ready.pop(run_id, None)
        if place is None or run_id in self._parked_of:
            return
        self._parked_of[run_id] = group
        self._parked_n[group] = self._parked_n.get(group, 0) + 1
        heapq.heappush(self._parked.setdefault(group, []), (place, run_id))

    def unpark_one(self, group: str) -> bool:
        """Make the oldest parked run of `group` ready again; False when none is left."""
        heap = self._parked.get(group)
        while heap:
            place, run_id = heapq.heappop(heap)
            if self._parked_of.get(run_id) != group or self._order.get(run_id) != place:
                continue  # left the queue, or parked again since (another entry)
            del self._parked_of[run_id]
            self._parked_n[group] -= 1
            if not heap:
                del self._parked[group]
                del self._parked_n[group]
            self._push(run_id, place)
            return True
        self._parked.pop(group, None)
        self._parked_n.pop(group, None)
        return False

    def _compact(self, group: str) -> None:
        """Drop the entries of runs that left a group's heap once they are most of it."""
        heap = self._parked.get(group)
        if heap is None or len(heap) <= 64 or len(heap) <= 2 * self._parked_n[group]:
            return  # amortised O(1) per entry: rebuilt only once most of it is stale
        kept = [(p, r) for p, r in heap if self._parked_of.get(r) == group]
        heapq.heapify(kept)
        self._parked[group] = kept

    def parked_groups(self) -> list[str]:
        """The groups that have parked runs (some entries may be stale)."""
        return list(self._parked)

    def parked_group(self, run_id: str) -> str | None:
        """The group `run_id` is parked in, or None."""
        return self._parked_of.get(run_id)

    def position(self, run_id: str, session_key: str) -> int:
        """How many queued runs of `session_key` are before `run_id` (O(1) for the last)."""
        runs = self._by_session.get(session_key)
        if not runs or run_id not in runs:
            return 0
        if next(reversed(runs)) == run_id:
            return len(runs) - 1
        for n, other in enumerate(runs):
            if other == run_id:
                return n
        return 0  # pragma: no cover - it is in runs

    def _startable(self, run_id: str) -> bool:
        key = self._session_of.get(run_id)
        if key is None:
            return run_id in self._order
        return key not in self._busy and next(iter(self._by_session[key])) == run_id

    def _push(self, run_id: str, place: int) -> None:
        self._ready[run_id] = place
        heapq.heappush(self._heap, (place, run_id))
        if len(self._heap) > 64 and len(self._heap) > 2 * len(self._ready):
            # Entries of runs that left before surfacing: rebuild, amortised O(1) each.
            self._heap = [(p, r) for r, p in self._ready.items()]
            heapq.heapify(self._heap)
