"""One transaction of the writer: the queued operations, the hot path's writes folded.

A run's life is ~9 statements (insert, three updates, five events). Each statement
hands the GIL back and forth between the writer and the event loop, and when the loop
is busy every handback can wait for Python's switch interval: the writer then fell
behind at ~1,000 runs/s. So within one transaction the writer folds the hot-path
operations into few statements: new runs in one multi-row INSERT, each run's updates
into one UPDATE (or into its INSERT), all events in one multi-row INSERT. The result
is what the operations one by one would have left. Anything else (a read, an ack)
first writes what was folded, so it sees it. If a folded write fails, it is undone and
the operations run one by one, so only the failing one fails, as before.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
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


def apply_all(conn: sqlite3.Connection, items: list[Item]) -> list[Outcome]:
    """One transaction: every item, folded where it can be; each item's outcome."""
    results: list[Outcome] = []
    merge = Merge()
    conn.execute("BEGIN")
    for item in items:
        _, fn, args = item
        folds = MERGEABLE.get(fn)
        if folds is not None:
            folds(merge, *args)
            merge.ops.append(item)
            continue
        if merge.ops:  # what was folded goes first: this op may read it
            merge.write(conn, results)
            merge = Merge()
        run_one(conn, item, results)
    if merge.ops:
        merge.write(conn, results)
    try:
        conn.execute("COMMIT")
    except Exception as exc:
        if sql.is_busy(exc):
            raise sql.Busy(exc) from exc
        # A full disk fails the WAL append here; whatever the cause, nothing of this
        # transaction is on disk, so all of it is held.
        raise sql.Unwritable(exc) from exc
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


#: Rows per multi-row INSERT (SQLite allows 32,766 variables; a run row has 21).
_ROWS_PER_INSERT = 500


class Merge:
    """The hot-path writes of one transaction, folded (see the module's doc)."""

    def __init__(self) -> None:
        self.ops: list[Item] = []
        self.inserts: dict[str, Run] = {}
        self.updates: dict[str, dict[str, Any]] = {}
        self.events: list[tuple[Any, ...]] = []
        self.tail: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def update(self, run_id: str, fields: dict[str, Any]) -> None:
        self.updates.setdefault(run_id, {}).update(fields)

    def event(self, run_id: str, event: EventRow) -> None:
        seq, ts, kind, data, exec_seq = event
        self.events.append((run_id, seq, ts, kind, orjson.dumps(data).decode(), exec_seq))

    def write(self, conn: sqlite3.Connection, results: list[Outcome]) -> None:
        conn.execute("SAVEPOINT folded")
        try:
            self._write(conn)
        except Exception as exc:
            if sql.is_busy(exc):
                raise sql.Busy(exc) from exc  # the whole transaction goes again
            if sql.is_unwritable(exc) or not conn.in_transaction:
                raise sql.Unwritable(exc) from exc  # the whole transaction is held
            conn.execute("ROLLBACK TO folded")
            conn.execute("RELEASE folded")
            self._one_by_one(conn, results)
            return
        conn.execute("RELEASE folded")
        results.extend((fut, True, None) for fut, _, _ in self.ops if fut is not None)

    def _write(self, conn: sqlite3.Connection) -> None:
        now = time.time()
        rows = []
        for run_id, run in self.inserts.items():
            values = {name: getattr(run, name) for name in sql.RUN_FIELDS}
            folded = self.updates.pop(run_id, None)
            if folded:
                values.update(folded, updated_at=now)
            values["updated_at"] = values["updated_at"] or now
            rows.append([sql.encode(name, values[name]) for name in sql.RUN_FIELDS])
        if rows:
            last = sql.last_n(conn)
            for chunk in _chunks(rows):
                conn.execute(
                    f"{sql.INSERT_RUN_HEAD} VALUES {_placeholders(chunk)}",
                    [v for row in chunk for v in row],
                )
            sql.index_new_runs(conn, last)
        for run_id, fields in self.updates.items():
            sql.update_run(conn, run_id, fields)
        for chunk in _chunks(self.events):
            conn.execute(
                f"INSERT OR IGNORE INTO events {sql.EVENT_COLUMNS} VALUES "
                + ", ".join([sql.EVENT_ROW] * len(chunk)),
                [v for row in chunk for v in row],
            )
        for fn, args in self.tail:
            fn(conn, *args)

    def _one_by_one(self, conn: sqlite3.Connection, results: list[Outcome]) -> None:
        for item in self.ops:
            run_one(conn, item, results)


def _chunks(rows: list[Any]) -> Iterable[list[Any]]:
    for start in range(0, len(rows), _ROWS_PER_INSERT):
        yield rows[start : start + _ROWS_PER_INSERT]


@functools.lru_cache(maxsize=64)
def _row_placeholders(width: int) -> str:
    return "(" + ", ".join("?" * width) + ")"


def _placeholders(rows: list[Any]) -> str:
    return ", ".join([_row_placeholders(len(rows[0]))] * len(rows))


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
    if event is not None:
        m.event(run.id, event)
    if delivery is not None:
        m.tail.append((sql.add_delivery, (delivery,)))
    if session is not None:
        m.tail.append((sql.set_session, session))


MERGEABLE: dict[Callable[..., Any], Callable[..., None]] = {
    sql.op_insert_run: _fold_insert,
    sql.op_record: _fold_record,
    sql.op_set_executor: _fold_set_executor,
    sql.op_set_origin: _fold_set_origin,
    sql.finish_run: _fold_finish,
}
