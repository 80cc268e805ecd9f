"""One transaction of the writer: the queued operations, the hot path's writes folded.

A run's life is ~9 statements (insert, three updates, five events). Each statement
hands the GIL back and forth between the writer and the event loop, and when the loop
is busy every handback can wait for Python's switch interval: the writer then fell
behind at ~1,000 runs/s. So within one transaction the writer folds the hot-path
operations into few statements: new runs in one multi-row INSERT, the runs' updates
into one ``UPDATE ... FROM (VALUES ...)`` per set of fields changed (or into the run's
INSERT), all events in one multi-row INSERT (padded to a few fixed sizes, so that the
statements are compiled once: see :func:`hub.store.sql.pieces`). The result is what
the operations one by one would have left. Anything else (a read, an ack) first writes what was
folded, so it sees it. If a folded write fails, it is undone and the operations run one
by one, so only the failing one fails, as before.

Rows are keyed by the run's integer key (``runs.n``): the writer keeps the keys of the
runs it inserted (:class:`RunKeys`, read back with ``RETURNING``), so events and
updates name a run by its key, not by a lookup of its id per row. The search index is
not written here: new runs and first answers join ``search_backlog`` (see
:func:`hub.store.sql.index_search`).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from operator import itemgetter
from typing import Any, TypeAlias

import orjson

from hub.store import sql
from hub.store.records import Delivery, EventRow, Run, SessionRow

log = logging.getLogger(__name__)

#: An operation queued for the writer: (the caller's future or None when it was posted,
#: ``fn``, ``args``); the writer runs ``fn(conn, *args)``.
Item: TypeAlias = tuple[asyncio.Future[Any] | None, Callable[..., Any], tuple[Any, ...]]
#: An operation's outcome for its caller: (future, succeeded, value or exception).
Outcome: TypeAlias = tuple[asyncio.Future[Any], bool, Any]


#: Run keys the writer keeps at most; past this it forgets them all (and looks up those
#: it needs again): runs that never end in this process must not grow it for ever.
KEYS_KEPT = 100_000


class RunKeys:
    """The writer's memory across transactions: run id -> ``runs.n`` of the runs it
    inserted and that have not ended yet, and rows it added to ``search_backlog``."""

    def __init__(self) -> None:
        self.known: dict[str, int] = {}
        #: Rows added to ``search_backlog`` by committed transactions (the engine
        #: resets it when it indexes).
        self.backlog = 0

    def commit(self, tx: _Tx) -> None:
        """What a committed transaction learned."""
        known = self.known
        known.update(tx.new)
        for run_id in tx.ended:
            known.pop(run_id, None)
        if len(known) > KEYS_KEPT:
            known.clear()
        self.backlog += tx.backlog


class _Tx:
    """What one transaction learned; kept only once it commits."""

    def __init__(self, keys: RunKeys) -> None:
        self.known = keys.known
        self.new: dict[str, int] = {}
        self.ended: list[str] = []
        self.backlog = 0

    def key(self, run_id: str) -> int | None:
        n = self.new.get(run_id)
        return self.known.get(run_id) if n is None else n


def apply_all(
    conn: sqlite3.Connection, items: list[Item], keys: RunKeys | None = None
) -> list[Outcome]:
    """One transaction: every item, folded where it can be; each item's outcome.

    ``keys`` (the writer's) learns what the transaction did once it has committed.
    """
    results: list[Outcome] = []
    tx = _Tx(keys if keys is not None else RunKeys())
    merge = Merge()
    first = True  # nothing written yet in this transaction
    conn.execute("BEGIN")
    for item in items:
        _, fn, args = item
        folds = MERGEABLE.get(fn)
        if folds is not None:
            folds(merge, *args)
            merge.ops.append(item)
            continue
        if merge.ops:  # what was folded goes first: this op may read it
            merge.write(conn, results, tx, first)
            merge = Merge()
        if fn in _ADDS_TO_BACKLOG:
            tx.backlog += 1  # may: the engine indexes soon either way
        run_one(conn, item, results)
        first = False
    if merge.ops:
        merge.write(conn, results, tx, first)
    try:
        conn.execute("COMMIT")
    except Exception as exc:
        if sql.is_busy(exc):
            raise sql.Busy(exc) from exc
        # A full disk fails the WAL append here; whatever the cause, nothing of this
        # transaction is on disk, so all of it is held.
        raise sql.Unwritable(exc) from exc
    if keys is not None:
        keys.commit(tx)
    return results


def run_one(conn: sqlite3.Connection, item: Item, results: list[Outcome]) -> None:
    """Run one operation on its own: its outcome goes to ``results`` (a posted write that
    fails is logged); a locked database sends the whole transaction round again."""
    fut, fn, args = item
    try:
        value = fn(conn, *args)
    except Exception as exc:
        if sql.is_busy(exc):
            raise sql.Busy(exc) from exc
        if (fn not in sql.READS and sql.is_unwritable(exc)) or not conn.in_transaction:
            # A full disk, or SQLite rolled the whole transaction back on this error.
            raise sql.Unwritable(exc) from exc
        if fut is None:
            log.error("store write %s failed", getattr(fn, "__name__", fn), exc_info=exc)
        else:
            results.append((fut, False, exc))
    else:
        if fut is not None:
            results.append((fut, True, value))


def resolve_all(results: list[Outcome]) -> None:
    for fut, ok, value in results:
        if fut.done():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


class Merge:
    """The hot-path writes of one transaction, folded (see the module's doc)."""

    def __init__(self) -> None:
        self.ops: list[Item] = []
        self.inserts: dict[str, Run] = {}
        self.updates: dict[str, dict[str, Any]] = {}
        #: [run id, seq, ts, kind, data as JSON, exec_seq]: the id becomes the key.
        self.events: list[list[Any]] = []
        self.tail: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        #: Runs that ended in this batch (the writer forgets their keys).
        self.ended: list[str] = []
        #: Runs given an answer in this batch.
        self.answered: set[str] | None = None

    def update(self, run_id: str, fields: dict[str, Any]) -> None:
        self.updates.setdefault(run_id, {}).update(fields)
        if fields.get("answer"):
            if self.answered is None:
                self.answered = set()
            self.answered.add(run_id)

    def event(self, run_id: str, event: EventRow) -> None:
        seq, ts, kind, data, exec_seq = event
        self.events.append([run_id, seq, ts, kind, orjson.dumps(data).decode(), exec_seq])

    def write(
        self, conn: sqlite3.Connection, results: list[Outcome], tx: _Tx, first: bool = False
    ) -> None:
        """Write what was folded; if that fails, undo it and run the operations one by
        one. ``first``: nothing else was written in the transaction yet, so undoing is
        rolling it back (no savepoint: two statements fewer per transaction)."""
        if not first:
            conn.execute("SAVEPOINT folded")
        try:
            new, backlog = self._write(conn, tx)
        except Exception as exc:
            if sql.is_busy(exc):
                raise sql.Busy(exc) from exc  # the whole transaction goes again
            if sql.is_unwritable(exc) or not conn.in_transaction:
                raise sql.Unwritable(exc) from exc  # the whole transaction is held
            if first:
                conn.execute("ROLLBACK")
                conn.execute("BEGIN")
            else:
                conn.execute("ROLLBACK TO folded")
                conn.execute("RELEASE folded")
            self._one_by_one(conn, results)
            tx.backlog += len(self.inserts) + len(self.updates)  # an upper bound
            return
        if not first:
            conn.execute("RELEASE folded")
        tx.new.update(new)
        tx.ended.extend(self.ended)
        tx.backlog += backlog
        results.extend((fut, True, None) for fut, _, _ in self.ops if fut is not None)

    def _write(self, conn: sqlite3.Connection, tx: _Tx) -> tuple[dict[str, int], int]:
        """Write what was folded; (the keys of the runs it inserted, backlog rows added)."""
        now = time.time()
        rows = []
        backlog: list[int] = []
        for run_id, run in self.inserts.items():
            values = run.__dict__
            folded = self.updates.pop(run_id, None)
            if folded:
                values = {**values, **folded, "updated_at": now}
            row = list(_RUN_VALUES(values))
            row[_UPDATED_AT] = row[_UPDATED_AT] or now
            for i in _JSON_AT:
                if row[i] is not None:
                    row[i] = orjson.dumps(row[i]).decode()
            rows.append(row)
        new = sql.insert_runs(conn, rows) if rows else {}
        for run_id, run in self.inserts.items():
            n = new[run_id]
            backlog.append(2 * n)
            if run.answer or (self.answered and run_id in self.answered):
                backlog.append(2 * n + 1)
        # The keys of the runs this names: inserted now, by this transaction, earlier
        # (the writer keeps them), else looked up (keys are never 0).
        ids = set(self.updates)
        ids.update([event[0] for event in self.events])
        keys: dict[str, int] = {}
        missing = []
        tx_new, known = tx.new, tx.known
        for run_id in ids:
            found = new.get(run_id) or tx_new.get(run_id) or known.get(run_id)
            if found:
                keys[run_id] = found
            else:
                missing.append(run_id)
        if missing:
            keys.update(sql.run_keys(conn, missing))
        updates = []
        answered = []
        for run_id, fields in self.updates.items():
            key = keys.get(run_id)
            if key is not None:  # an unknown run has nothing to update
                fields["updated_at"] = now
                updates.append((key, fields))
                if fields.get("answer"):
                    answered.append(key)
        added = sql.add_to_backlog(conn, backlog, answered) if backlog or answered else 0
        if updates:
            sql.update_runs_by_key(conn, updates)
        events = []
        for event in self.events:
            key = keys.get(event[0])
            if key is not None:  # an event of an unknown run is not stored
                event[0] = key
                events.append(event)
        if events:
            sql.insert_events(conn, events)
        for fn, args in self.tail:
            fn(conn, *args)
        return new, added

    def _one_by_one(self, conn: sqlite3.Connection, results: list[Outcome]) -> None:
        for item in self.ops:
            run_one(conn, item, results)


_RUN_VALUES = itemgetter(*sql.RUN_FIELDS)
_UPDATED_AT = sql.RUN_FIELDS.index("updated_at")
_JSON_AT = [sql.RUN_FIELDS.index(name) for name in sql.JSON_COLUMNS]


def _fold_insert(m: Merge, run: Run) -> None:
    m.inserts[run.id] = run


def _fold_record(
    m: Merge,
    run_id: str,
    fields: dict[str, Any] | None,
    event: EventRow,
) -> None:
    if fields:
        m.update(run_id, fields)
    m.event(run_id, event)


def _fold_set_executor(m: Merge, run_id: str, executor: str | None) -> None:
    m.update(run_id, {"executor": executor})


def _fold_set_origin(m: Merge, run_id: str, origin: dict[str, Any]) -> None:
    m.update(run_id, {"origin": origin})


def _fold_finish(
    m: Merge,
    run: Run,
    delivery: Delivery | None,
    session: SessionRow | None,
    event: EventRow | None = None,
) -> None:
    m.update(run.id, {name: getattr(run, name) for name in sql.FINAL_FIELDS})
    m.ended.append(run.id)
    if event is not None:
        m.event(run.id, event)
    if delivery is not None:
        m.tail.append((sql.add_delivery, (delivery,)))
    if session is not None:
        m.tail.append((sql.set_session, session))


#: Operations that may add rows to ``search_backlog`` when they run one by one.
_ADDS_TO_BACKLOG = frozenset({sql.op_insert_run, sql.op_record, sql.finish_run})

MERGEABLE: dict[Callable[..., Any], Callable[..., None]] = {
    sql.op_insert_run: _fold_insert,
    sql.op_record: _fold_record,
    sql.op_set_executor: _fold_set_executor,
    sql.op_set_origin: _fold_set_origin,
    sql.finish_run: _fold_finish,
}
