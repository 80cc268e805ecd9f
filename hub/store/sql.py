"""The store's SQL: the schema and its migrations, and every statement, as functions
``fn(conn, *args)`` that the writer thread (:mod:`hub.store.engine`) runs.

Keys append: events are keyed by the run's integer key (``runs.n``) and their sequence,
so a run's events sit together at the end of the table instead of at a random place.

Search uses two FTS5 indexes: ``runs_fts``, contentless (no second copy of the text),
holds a run's prompt and user as row ``2n`` and its answer as row ``2n + 1`` (a
contentless index cannot change a row); ``search_terms`` holds the index's words, to
turn a typed prefix into the words it starts (see :func:`fts_query`). The hot path
does not index: the transaction that writes a run (or its first answer) adds its row
number to ``search_backlog``, and the writer indexes that backlog in batches
(:func:`index_search`), a fraction of a second later. A search also scans the runs in
the backlog, so it never misses a run for it. Indexing a run at a time cost the writer
about a third of its CPU (FTS5 writes a segment per transaction and merges them); the
backlog is on disk, so a crash loses none of it.

The ``op_*`` functions are the writes the hub posts without waiting
(:meth:`~hub.store.engine.Engine.post`); :data:`READS` names the statements that only
read, which still run while the disk refuses writes.
"""

from __future__ import annotations

import functools
import logging
import re
import sqlite3
import time
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from typing import Any, TypeGuard

import orjson

from hub.store.records import Delivery, EventRow, Run, RunPage, SessionRow
from wire import RunState

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    state TEXT NOT NULL,
    source TEXT NOT NULL,
    user TEXT,
    origin TEXT NOT NULL,
    session_key TEXT,
    prompt TEXT NOT NULL,
    effective_prompt TEXT,
    optimize INTEGER,
    executor TEXT,
    thread_id TEXT,
    answer TEXT,
    usage TEXT,
    error TEXT,
    dedupe_key TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS runs_dedupe ON runs(dedupe_key) WHERE dedupe_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS runs_state ON runs(state);
CREATE INDEX IF NOT EXISTS runs_source ON runs(source);
CREATE INDEX IF NOT EXISTS runs_session ON runs(session_key);
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    exec_seq INTEGER,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS events_exec_seq ON events(run_id, exec_seq)
    WHERE exec_seq IS NOT NULL;
CREATE TABLE IF NOT EXISTS sessions (
    key TEXT PRIMARY KEY,
    thread_id TEXT,
    executor TEXT,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    platform TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    acked_at REAL
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(platform) WHERE acked_at IS NULL;
"""

#: Changes to the schema since the first release, in order. ``PRAGMA user_version``
#: counts those a database has had: at open, the ones it lacks run, each in the same
#: transaction as the version it brings (a new database starts from :data:`SCHEMA` and
#: runs them all).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: who owns a run (hub.auth's principals); null for chat bridges and older runs,
    # which only operators see.
    (
        "ALTER TABLE runs ADD COLUMN principal TEXT",
        "CREATE INDEX IF NOT EXISTS runs_principal ON runs(principal, n)",
    ),
    # 2: keys that append and a search index (issue 19). Events were keyed by the
    # random run id (each run's events written at a random place, a page per run per
    # commit); now by the run's integer key. The principal index leaves out the chat
    # bridges' runs (null), which nobody lists by principal. The two FTS5 indexes hold
    # what exists.
    (
        "CREATE TABLE events2 (run_n INTEGER NOT NULL, seq INTEGER NOT NULL, "
        "ts REAL NOT NULL, kind TEXT NOT NULL, data TEXT NOT NULL, exec_seq INTEGER, "
        "PRIMARY KEY (run_n, seq)) WITHOUT ROWID",
        "INSERT INTO events2 (run_n, seq, ts, kind, data, exec_seq) "
        "SELECT runs.n, events.seq, events.ts, events.kind, events.data, events.exec_seq "
        "FROM events JOIN runs ON runs.id = events.run_id ORDER BY runs.n, events.seq",
        "DROP TABLE events",
        "ALTER TABLE events2 RENAME TO events",
        "CREATE UNIQUE INDEX events_exec_seq ON events(run_n, exec_seq) WHERE exec_seq IS NOT NULL",
        "DROP INDEX IF EXISTS runs_principal",
        "CREATE INDEX runs_principal ON runs(principal) WHERE principal IS NOT NULL",
        "CREATE VIRTUAL TABLE runs_fts USING fts5(user, prompt, answer, content='', "
        "tokenize='unicode61 remove_diacritics 2')",
        "INSERT INTO runs_fts (rowid, user, prompt) SELECT 2 * n, user, prompt FROM runs",
        "INSERT INTO runs_fts (rowid, answer) SELECT 2 * n + 1, answer FROM runs "
        "WHERE answer IS NOT NULL AND answer != ''",
        # The index's words without digits, to turn a typed prefix into the words it
        # starts (FTS5's own prefix query reads every posting of every such word).
        "CREATE TABLE search_terms (term TEXT PRIMARY KEY) WITHOUT ROWID",
        "CREATE VIRTUAL TABLE temp.runs_fts_terms USING fts5vocab(main, runs_fts, row)",
        "INSERT INTO search_terms SELECT term FROM temp.runs_fts_terms "
        "WHERE term NOT GLOB '*[0-9]*'",
        "DROP TABLE temp.runs_fts_terms",
    ),
    # 3: where a run may go (issue 20): its target, so a queued targeted run keeps it
    # over a restart; and every label and name an executor ever announced, so a
    # restarted hub still refuses only the targets nobody announced (hub.targets).
    (
        "ALTER TABLE runs ADD COLUMN target TEXT",
        "CREATE TABLE known_targets (kind TEXT NOT NULL, value TEXT NOT NULL, "
        "first_seen REAL NOT NULL, PRIMARY KEY (kind, value)) WITHOUT ROWID",
    ),
    # 4: search indexed in batches, off the hot transaction (issue 19): the rows of
    # ``runs_fts`` (2n: prompt and user, 2n + 1: answer) written but not yet indexed.
    ("CREATE TABLE search_backlog (row INTEGER PRIMARY KEY)",),
    # 5: the session index leaves out the runs without a session (most API runs), which
    # nobody looks up by session (``session_key = ?`` uses it as before): a page fewer
    # written per transaction (issue 19).
    (
        "DROP INDEX IF EXISTS runs_session",
        "CREATE INDEX runs_session ON runs(session_key) WHERE session_key IS NOT NULL",
    ),
)

JSON_COLUMNS = ("origin", "usage", "error")

RUN_FIELDS = [f for f in Run.__dataclass_fields__ if f != "n"]


def row_to_run(row: sqlite3.Row) -> Run:
    data = dict(row)
    for col in JSON_COLUMNS:
        if data.get(col) is not None:
            data[col] = orjson.loads(data[col])
    if data.get("optimize") is not None:
        data["optimize"] = bool(data["optimize"])
    data["state"] = RunState(data["state"])
    return Run(**data)


def encode(name: str, value: Any) -> Any:
    if name in JSON_COLUMNS and value is not None:
        return orjson.dumps(value).decode()
    return value


# --- what SQLite's errors mean -----------------------------------------------------


class Busy(Exception):
    """The database was locked past ``busy_timeout``: the transaction is run again."""

    def __init__(self, error: sqlite3.OperationalError) -> None:
        super().__init__(str(error))
        self.error = error


class Unwritable(Exception):
    """The disk refused a write (full, I/O error, read-only): the writes are held."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


#: SQLite's primary result codes that mean "the disk will not take this write".
_WRITE_FAILURES = frozenset(
    {sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN}
)


def is_unwritable(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return True
    if not isinstance(exc, sqlite3.Error):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _WRITE_FAILURES
    return "disk is full" in str(exc) or "disk I/O error" in str(exc)


def reason(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def rollback(conn: sqlite3.Connection) -> None:
    # SQLite may have rolled the transaction back itself (SQLITE_FULL, SQLITE_IOERR):
    # then ROLLBACK fails, harmlessly.
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass


def is_busy(exc: BaseException) -> TypeGuard[sqlite3.OperationalError]:
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


# --- statements ---------------------------------------------------------------------


INSERT_RUN_HEAD = f"INSERT INTO runs ({', '.join(RUN_FIELDS)})"
_INSERT_RUN_SQL = f"{INSERT_RUN_HEAD} VALUES ({', '.join('?' * len(RUN_FIELDS))})"


def _insert_run(conn: sqlite3.Connection, run: Run) -> None:
    run.updated_at = run.updated_at or time.time()
    values = [encode(name, getattr(run, name)) for name in RUN_FIELDS]
    cur = conn.execute(_INSERT_RUN_SQL, values)
    run.n = n = int(cur.lastrowid or 0)
    add_to_backlog(conn, [2 * n, 2 * n + 1] if run.answer else [2 * n])


def index_search(conn: sqlite3.Connection) -> int:
    """Index the rows in ``search_backlog`` and empty it; how many there were.

    Prompts and users as row ``2n``, answers as row ``2n + 1``, read from ``runs`` as
    they are now, and their words into ``search_terms``.
    """
    rows = "FROM search_backlog AS b CROSS JOIN runs AS r ON r.n = b.row >> 1"
    conn.execute(
        f"INSERT INTO runs_fts (rowid, user, prompt) SELECT b.row, r.user, r.prompt {rows} "
        "WHERE b.row & 1 = 0"
    )
    conn.execute(
        f"INSERT INTO runs_fts (rowid, answer) SELECT b.row, r.answer {rows} "
        "WHERE b.row & 1 = 1 AND r.answer IS NOT NULL AND r.answer != ''"
    )
    _add_terms(
        conn,
        "SELECT CASE WHEN b.row & 1 THEN coalesce(r.answer, '') "
        f"ELSE coalesce(r.user, '') || ' ' || r.prompt END {rows}",
        (),
    )
    return int(conn.execute("DELETE FROM search_backlog").rowcount)


def search_backlog(conn: sqlite3.Connection) -> int:
    """How many rows wait in ``search_backlog``."""
    return int(conn.execute("SELECT COUNT(*) FROM search_backlog").fetchone()[0])


def index_new_runs(conn: sqlite3.Connection, last: int) -> None:
    """Add the runs inserted after key ``last`` to the search indexes at once (a bulk
    load's, in its transaction; the hub's writer goes through ``search_backlog``).
    """
    conn.execute(
        "INSERT INTO runs_fts (rowid, user, prompt) SELECT 2 * n, user, prompt FROM runs "
        "WHERE n > ?",
        (last,),
    )
    conn.execute(
        "INSERT INTO runs_fts (rowid, answer) SELECT 2 * n + 1, answer FROM runs "
        "WHERE n > ? AND answer IS NOT NULL AND answer != ''",
        (last,),
    )
    _add_terms(
        conn,
        "SELECT coalesce(user, '') || ' ' || prompt || ' ' || coalesce(answer, '') "
        "FROM runs WHERE n > ?",
        (last,),
    )


def _add_terms(conn: sqlite3.Connection, texts_sql: str, args: tuple[Any, ...]) -> None:
    """Add the words of the texts ``texts_sql`` selects to ``search_terms``.

    The texts go through a scratch FTS5 table in memory with the index's tokenizer, so
    the words are exactly the index's; only new words write to the database.
    """
    conn.execute(
        "CREATE VIRTUAL TABLE IF NOT EXISTS temp.scratch_fts USING fts5(body, content='', "
        "tokenize='unicode61 remove_diacritics 2')"
    )
    conn.execute(
        "CREATE VIRTUAL TABLE IF NOT EXISTS temp.scratch_terms "
        "USING fts5vocab(temp, scratch_fts, row)"
    )
    conn.execute(f"INSERT INTO temp.scratch_fts (body) {texts_sql}", args)
    conn.execute(
        "INSERT OR IGNORE INTO search_terms SELECT term FROM temp.scratch_terms "
        "WHERE term NOT GLOB '*[0-9]*'"
    )
    conn.execute("INSERT INTO temp.scratch_fts (scratch_fts) VALUES ('delete-all')")


def update_run(conn: sqlite3.Connection, run_id: str, fields: dict[str, Any]) -> None:
    if fields.get("answer"):
        # A run's first answer only: the index cannot take a row back (it holds no
        # copy of the text).
        conn.execute(
            "INSERT OR IGNORE INTO search_backlog (row) SELECT 2 * n + 1 FROM runs "
            "WHERE id = ? AND (answer IS NULL OR answer = '')",
            (run_id,),
        )
    fields = {**fields, "updated_at": time.time()}
    conn.execute(
        _update_sql(tuple(fields)),
        [*(encode(k, v) for k, v in fields.items()), run_id],
    )


@functools.lru_cache(maxsize=256)
def _update_sql(names: tuple[str, ...], key: str = "id") -> str:
    # Cached: the writer thread runs a few of these per run, with few distinct shapes.
    unknown = set(names) - set(RUN_FIELDS)
    if unknown:
        raise ValueError(f"unknown run fields: {sorted(unknown)}")
    sets = ", ".join(f"{name} = ?" for name in names)
    return f"UPDATE runs SET {sets} WHERE {key} = ?"


# The writer's batches go in few statements of few shapes: each statement hands the GIL
# to the event loop and back (a wait of up to Python's switch interval when the loop is
# busy), and each new shape is compiled. Rows are cut into pieces of at most MAX_ROWS,
# each padded to a power of two with rows that the statements leave out (a NULL key,
# then zeros). Binding a value costs Python 60-120 ns, a NULL 300 (sqlite3 looks for an
# adapter first): a column that is NULL in every row of a piece is not bound but
# written as NULL in the statement (of a new run, most are), and a padding row binds
# one NULL.
MAX_ROWS = 256


@dataclass(frozen=True, slots=True)
class Piece:
    """Rows of one statement (see above): which columns it binds (the rest are NULL in
    every row), how many rows it has with the padding, and its values."""

    bound: tuple[bool, ...]
    size: int
    values: list[Any]


def pieces(rows: list[list[Any]]) -> Iterator[Piece]:
    """The pieces of ``rows`` (see above); the first column must never be NULL."""
    for start in range(0, len(rows), MAX_ROWS):
        part = rows[start : start + MAX_ROWS]
        count = len(part)
        bound = tuple(column.count(None) != count for column in zip(*part, strict=True))
        width = sum(bound)
        if width == len(bound):
            values = list(chain.from_iterable(part))
        elif width == 1:
            values = [row[0] for row in part]
        else:
            pick = itemgetter(*[i for i, b in enumerate(bound) if b])
            values = list(chain.from_iterable(map(pick, part)))
        size = max(8, 1 << (count - 1).bit_length())
        if size > count:
            values.extend([None, *[0] * (width - 1)] * (size - count))
        yield Piece(bound, size, values)


@functools.lru_cache(maxsize=256)
def values_sql(width: int, size: int) -> str:
    """``VALUES`` with ``size`` rows of ``width`` placeholders."""
    row = "(" + ", ".join("?" * width) + ")"
    return "VALUES " + ", ".join([row] * size)


@functools.lru_cache(maxsize=256)
def _insert_sql(head: str, names: tuple[str, ...], bound: tuple[bool, ...], size: int) -> str:
    """``head`` (``INSERT INTO table``) of the rows of a piece, padding left out."""
    columns = ", ".join(name for name, b in zip(names, bound, strict=True) if b)
    return (
        f"{head} ({columns}) SELECT * FROM ({values_sql(sum(bound), size)}) "
        "WHERE column1 IS NOT NULL"
    )


def insert_runs(conn: sqlite3.Connection, rows: list[list[Any]]) -> dict[str, int]:
    """Insert runs (rows of :data:`RUN_FIELDS`' values); their keys by id.

    The keys are read back in one row (``RETURNING`` would step, and hand the GIL
    over, once per run): this thread is the only writer and keys only grow, so the
    new runs are those past the last key minus their number.
    """
    last = 0
    for piece in pieces(rows):
        cur = conn.execute(
            _insert_sql("INSERT INTO runs", _RUN_NAMES, piece.bound, piece.size), piece.values
        )
        last = int(cur.lastrowid or 0)
    (found,) = conn.execute(
        "SELECT json_group_object(id, n) FROM runs WHERE n > ?", (last - len(rows),)
    ).fetchone()
    keys: dict[str, int] = orjson.loads(found)
    if len(keys) != len(rows):  # not one after the other after all: ask by id
        keys = run_keys(conn, [row[0] for row in rows])
    return keys


_RUN_NAMES = tuple(RUN_FIELDS)
_EVENT_NAMES = ("run_n", "seq", "ts", "kind", "data", "exec_seq")


def insert_events(conn: sqlite3.Connection, rows: list[list[Any]]) -> None:
    """Insert events, rows of (run_n, seq, ts, kind, data as JSON, exec_seq); an event
    already stored (the same seq, or exec_seq) is left as it is."""
    for piece in pieces(rows):
        conn.execute(
            _insert_sql("INSERT OR IGNORE INTO events", _EVENT_NAMES, piece.bound, piece.size),
            piece.values,
        )


def add_to_backlog(conn: sqlite3.Connection, rows: list[int], answered: Sequence[int] = ()) -> int:
    """Rows of ``runs_fts`` to index (see :func:`index_search`), and the answers of the
    runs with keys ``answered`` that have none yet (call it before they are stored: the
    index cannot take a row back, it holds no copy of the text), in one statement; how
    many rows were added."""
    statement = "INSERT OR IGNORE INTO search_backlog (row) SELECT value FROM json_each(?)"
    if not answered:
        return int(conn.execute(statement, (orjson.dumps(rows).decode(),)).rowcount)
    statement += (
        " UNION ALL SELECT 2 * n + 1 FROM runs WHERE n IN (SELECT value FROM json_each(?)) "
        "AND (answer IS NULL OR answer = '')"
    )
    args = (orjson.dumps(rows).decode(), orjson.dumps(answered).decode())
    return int(conn.execute(statement, args).rowcount)


def update_runs_by_key(conn: sqlite3.Connection, updates: list[tuple[int, dict[str, Any]]]) -> None:
    """Set fields of runs named by their integer key: a statement per shape.

    Each dict must hold ``updated_at``. A first answer must join ``search_backlog``
    first (:func:`add_to_backlog`).
    """
    shapes: dict[tuple[str, ...], list[list[Any]]] = {}
    for n, fields in updates:
        names, values = _shape(tuple(fields))
        shapes.setdefault(names, []).append([n, *values(fields)])
    for names, rows in shapes.items():
        for i in _json_at(names):
            for row in rows:
                if row[i] is not None:
                    row[i] = orjson.dumps(row[i]).decode()
        for piece in pieces(rows):
            conn.execute(_update_from_sql(names, piece.bound, piece.size), piece.values)


@functools.lru_cache(maxsize=256)
def _shape(names: tuple[str, ...]) -> tuple[tuple[str, ...], Callable[[dict[str, Any]], Any]]:
    """The fields ``names`` in one order whatever order they were set in (a run's
    ``running`` and its end folded together, or its end alone: one statement), and
    what reads their values from a dict in that order."""
    ordered = tuple(sorted(names, key=_RUN_NAMES.index))
    if len(ordered) == 1:
        return ordered, lambda fields: (fields[ordered[0]],)
    return ordered, itemgetter(*ordered)


@functools.lru_cache(maxsize=256)
def _json_at(names: tuple[str, ...]) -> tuple[int, ...]:
    """Where the JSON columns are in a row of ``(key, *names)``."""
    return tuple(i for i, name in enumerate(names, start=1) if name in JSON_COLUMNS)


@functools.lru_cache(maxsize=256)
def _update_from_sql(names: tuple[str, ...], bound: tuple[bool, ...], size: int) -> str:
    """The update of a piece's runs (its first column is the key), padding left out."""
    _update_sql(names)  # checks the names
    sets = []
    column = 1
    for name, b in zip(names, bound[1:], strict=True):
        if b:
            column += 1
        sets.append(f"{name} = v.column{column}" if b else f"{name} = NULL")
    return (
        f"UPDATE runs SET {', '.join(sets)} FROM ({values_sql(sum(bound), size)}) AS v "
        "WHERE runs.n = v.column1"
    )


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the schema up to date (see :data:`MIGRATIONS`).

    Each step runs in its own immediate transaction that reads the version again: a
    crash leaves the database before or after a step, and of two processes opening
    the same file at once the second finds the step done.
    """
    for number, statements in enumerate(MIGRATIONS, start=1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > len(MIGRATIONS):
                raise RuntimeError(
                    f"the store has schema version {version}, newer than this codex-hub "
                    f"knows ({len(MIGRATIONS)}): upgrade codex-hub, or use another HUB_DB"
                )
            if version < number:
                for statement in statements:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
                log.info("store: schema migrated to version %d", number)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


def get_run(conn: sqlite3.Connection, run_id: str) -> Run | None:
    row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
    return row_to_run(row) if row else None


def run_by_dedupe_key(conn: sqlite3.Connection, key: str) -> Run | None:
    row = conn.execute("SELECT * FROM runs WHERE dedupe_key = ?", (key,)).fetchone()
    return row_to_run(row) if row else None


def list_runs(conn: sqlite3.Connection, page: RunPage) -> tuple[list[Run], int | None]:
    keys, next_before = page_keys(conn, page)
    rows = conn.execute(
        "SELECT * FROM runs WHERE n IN (SELECT value FROM json_each(?)) ORDER BY n DESC",
        (orjson.dumps(keys).decode(),),
    ).fetchall()
    return [row_to_run(r) for r in rows], next_before


def _float_json(column: str) -> str:
    """A REAL column as a JSON number that reads back as the same double (SQLite's JSON
    functions write 15 digits; 17 round-trip, as ``%!.17g`` writes them), or null."""
    return f"CASE WHEN {column} IS NULL THEN NULL ELSE json(printf('%!.17g', {column})) END"


#: A run's summary (:meth:`Run.summary`, for lists) as SQLite builds it in JSON.
SUMMARY_JSON = (
    "json_object('id', id, 'state', state, 'source', source, 'user', user, "
    "'session_key', session_key, 'prompt_excerpt', substr(prompt, 1, 200), "
    f"'executor', executor, 'created_at', {_float_json('created_at')}, "
    f"'started_at', {_float_json('started_at')}, "
    f"'finished_at', {_float_json('finished_at')}, 'error', json(error), "
    "'principal', principal, 'target', target)"
)


def run_summaries(
    conn: sqlite3.Connection, page: RunPage
) -> tuple[list[dict[str, Any]], int | None]:
    """:func:`list_runs`' page as the runs' summaries, built by SQLite in one step:
    a list or search of 50 runs is read without a Python object per run, and without
    handing the GIL over once per row (it runs beside a busy event loop)."""
    keys, next_before = page_keys(conn, page)
    (found,) = conn.execute(
        f"SELECT json_group_array({SUMMARY_JSON}) FROM (SELECT * FROM runs "
        "WHERE n IN (SELECT value FROM json_each(?)) ORDER BY n DESC)",
        (orjson.dumps(keys).decode(),),
    ).fetchone()
    summaries: list[dict[str, Any]] = orjson.loads(found)
    return summaries, next_before


def page_keys(conn: sqlite3.Connection, page: RunPage) -> tuple[list[int], int | None]:
    """The keys of a page of runs, newest first, filtered; and the cursor of the next
    page (None at the end)."""
    query, before, limit = page.query, page.before, page.limit
    where: list[str] = []
    args: list[Any] = []
    if page.principal is not None:
        where.append("runs.principal = ?")
        args.append(page.principal)
    if page.states:
        where.append(f"runs.state IN ({', '.join('?' * len(page.states))})")
        args += page.states
    if page.sources:
        where.append(f"runs.source IN ({', '.join('?' * len(page.sources))})")
        args += page.sources
    if page.session_key is not None:
        where.append("runs.session_key = ?")
        args.append(page.session_key)
    match = fts_query(conn, query) if query else None
    if query:
        like = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        # What the index found must hold the text exactly as typed (punctuation, and
        # LIKE's wildcards taken literally); with no word to look up, only this.
        where.append(
            "(runs.prompt LIKE ? ESCAPE '\\' OR runs.user LIKE ? ESCAPE '\\' "
            "OR runs.answer LIKE ? ESCAPE '\\' OR runs.id = ?)"
        )
        args += [like, like, like, query]
    if match is not None:
        keys = _search(conn, match, query, where, args, before, limit + 1)
    else:
        if before is not None:
            where.append("runs.n < ?")
            args.append(before)
        sql = "SELECT n FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY n DESC LIMIT ?"
        keys = sorted(_keys(conn, sql, [*args, limit + 1]), reverse=True)
    next_before = keys[limit - 1] if len(keys) > limit and limit > 0 else None
    return keys[:limit], next_before


def _search(
    conn: sqlite3.Connection,
    match: str,
    query: str,
    where: list[str],
    args: list[Any],
    before: int | None,
    limit: int,
) -> list[int]:
    """The keys of the newest ``limit`` runs the index finds for ``match`` that pass ``where``.

    The index is walked newest first (FTS5 hands rowids out in order; a run's prompt
    and user are row ``2n``, its answer ``2n + 1``) and stops once ``limit`` runs
    passed, so a common word costs no more than a rare one. The run whose id is the
    query joins them, and so do the runs in ``search_backlog`` that pass ``where``
    (which holds the query as a LIKE).

    Each of those three lookups hands back only run keys, all in one row (an SQLite
    step hands the GIL over and back, and a search runs beside a busy event loop),
    and the caller reads the page once, by key.
    """
    cond = "".join(f" AND {w}" for w in where)
    bound: list[Any] = []
    sql = (
        # CROSS JOIN: the index is the outer loop, in its own order.
        "SELECT runs.n FROM runs_fts AS f CROSS JOIN runs ON runs.n = f.rowid >> 1 "
        "WHERE f.runs_fts MATCH ?"
    )
    if before is not None:
        sql += " AND f.rowid < ?"
        bound = [2 * before]
    sql += f"{cond} ORDER BY f.rowid DESC LIMIT ?"
    # A run matched by its prompt and its answer comes twice.
    found = set(_keys(conn, sql, [match, *bound, *args, 2 * limit]))
    by_id = "SELECT runs.n FROM runs WHERE runs.id = ?"
    if before is not None:
        by_id += " AND runs.n < ?"
        bound = [before]
    found.update(_keys(conn, by_id + cond, [query, *bound, *args]))
    # Runs written but not yet indexed: a scan of the backlog (a few hundred rows; the
    # conditions hold the LIKE), so a search never lags behind the writes.
    unindexed = (
        "SELECT runs.n FROM search_backlog AS b CROSS JOIN runs ON runs.n = b.row >> 1 WHERE 1"
    )
    if before is not None:
        unindexed += " AND runs.n < ?"
    unindexed += f"{cond} ORDER BY b.row DESC LIMIT ?"  # newest first, as the index
    found.update(_keys(conn, unindexed, [*bound, *args, 2 * limit]))
    return sorted(found, reverse=True)[:limit]


def _keys(conn: sqlite3.Connection, sql: str, args: list[Any]) -> list[int]:
    """The run keys (``n``) ``sql`` selects, read in one SQLite step."""
    (found,) = conn.execute(f"SELECT json_group_array(n) FROM ({sql})", args).fetchone()
    keys: list[int] = orjson.loads(found)
    return keys


#: What the FTS5 tokenizer (unicode61) takes as a word: letters and digits.
_WORD = re.compile(r"[^\W_]+")


#: A typed prefix that starts more words than this is looked up by FTS5 itself.
_MAX_PREFIX_TERMS = 64


def fts_query(conn: sqlite3.Connection, query: str) -> str | None:
    """The FTS5 query for what a user typed: its words, in order, adjacent, the last a
    prefix (``check_thi`` is ``"check thi"*``); None when it has no word (``%``).

    A search then finds text that contains the query from the start of a word: the
    index narrows the runs, and LIKE keeps those with the exact text. The prefix is
    spelled out as the words it starts (``"check this" OR "check thin"``), which
    FTS5 walks newest first and stops early, where its own prefix query reads every
    posting of those words first (20 ms for a common word over 200k runs).
    """
    words = _WORD.findall(query)
    if not words:
        return None
    head = " ".join(words[:-1])
    last = _fold(words[-1])
    # In one SQLite step (see _search).
    (found,) = conn.execute(
        "SELECT json_group_array(term) FROM "
        "(SELECT term FROM search_terms WHERE term >= ? AND term < ? LIMIT ?)",
        (last, last + "\U0010ffff", _MAX_PREFIX_TERMS + 1),
    ).fetchone()
    terms: list[str] = orjson.loads(found)
    if not terms or len(terms) > _MAX_PREFIX_TERMS or any(c.isdigit() for c in last):
        return '"' + " ".join(words) + '"*'
    return " OR ".join(f'"{head} {term}"' if head else f'"{term}"' for term in terms)


def _fold(word: str) -> str:
    """A word as the tokenizer keeps it: case folded, without diacritics."""
    decomposed = unicodedata.normalize("NFKD", word.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def unfinished_runs(conn: sqlite3.Connection) -> list[Run]:
    rows = conn.execute(
        "SELECT * FROM runs "
        "WHERE state IN ('queued', 'optimizing', 'running', 'awaiting_approval') ORDER BY n"
    ).fetchall()
    return [row_to_run(r) for r in rows]


def count_runs(conn: sqlite3.Connection) -> dict[tuple[str, str], int]:
    rows = conn.execute("SELECT state, source, COUNT(*) FROM runs GROUP BY state, source")
    return {(state, source): count for state, source, count in rows}


def overview(conn: sqlite3.Connection, since: float, failed_since: float) -> dict[str, Any]:
    runs, input_tokens, output_tokens = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(json_extract(usage, '$.input_tokens')), 0),"
        " COALESCE(SUM(json_extract(usage, '$.output_tokens')), 0)"
        " FROM runs WHERE created_at >= ?",
        (since,),
    ).fetchone()
    finished = "FROM runs WHERE created_at >= ? AND finished_at IS NOT NULL"
    (count,) = conn.execute(f"SELECT COUNT(*) {finished}", (since,)).fetchone()
    median = None
    if count:
        # The middle one (the lower of two): no list of every duration in memory.
        (median,) = conn.execute(
            f"SELECT finished_at - created_at {finished} ORDER BY 1 LIMIT 1 OFFSET ?",
            (since, (count - 1) // 2),
        ).fetchone()
    (failed,) = conn.execute(
        "SELECT COUNT(*) FROM runs WHERE state IN ('failed', 'timed_out') AND finished_at >= ?",
        (failed_since,),
    ).fetchone()
    return {
        "since": since,
        "runs": runs,
        "input_tokens": int(input_tokens),
        "output_tokens": int(output_tokens),
        "median_duration_s": median,
        "failed_last_hour": failed,
    }


#: An event row: the run's integer key is looked up from its id (a run's events only
#: ever follow it, in the writer's order); an event of an unknown run is not stored.
EVENT_ROW = "((SELECT n FROM runs WHERE id = ?), ?, ?, ?, ?, ?)"
EVENT_COLUMNS = "(run_n, seq, ts, kind, data, exec_seq)"


def run_keys(conn: sqlite3.Connection, run_ids: list[str]) -> dict[str, int]:
    """The integer keys of the runs with these ids (those that exist)."""
    keys: dict[str, int] = {}
    for start in range(0, len(run_ids), 500):
        part = run_ids[start : start + 500]
        found = conn.execute(
            f"SELECT id, n FROM runs WHERE id IN ({', '.join('?' * len(part))})", part
        )
        keys.update((row[0], row[1]) for row in found)
    return keys


def add_events(
    conn: sqlite3.Connection,
    run_id: str,
    events: list[EventRow],
) -> None:
    if len(events) == 1:
        seq, ts, kind, data, exec_seq = events[0]
        conn.execute(
            f"INSERT OR IGNORE INTO events {EVENT_COLUMNS} VALUES {EVENT_ROW}",
            (run_id, seq, ts, kind, orjson.dumps(data).decode(), exec_seq),
        )
        return
    conn.executemany(
        f"INSERT OR IGNORE INTO events {EVENT_COLUMNS} VALUES {EVENT_ROW}",
        [
            (run_id, seq, ts, kind, orjson.dumps(data).decode(), exec_seq)
            for seq, ts, kind, data, exec_seq in events
        ],
    )


def event_positions(conn: sqlite3.Connection, run_id: str) -> tuple[int, int]:
    row = conn.execute(
        "SELECT COALESCE(MAX(seq), 0), COALESCE(MAX(exec_seq), 0) FROM events "
        "WHERE run_n = (SELECT n FROM runs WHERE id = ?)",
        (run_id,),
    ).fetchone()
    return int(row[0]), int(row[1])


FINAL_FIELDS = (
    "state",
    "effective_prompt",
    "executor",
    "thread_id",
    "answer",
    "usage",
    "error",
    "started_at",
    "finished_at",
)


def finish_run(
    conn: sqlite3.Connection,
    run: Run,
    delivery: Delivery | None,
    session: SessionRow | None,
    event: EventRow | None = None,
) -> None:
    update_run(conn, run.id, {name: getattr(run, name) for name in FINAL_FIELDS})
    if event is not None:
        add_events(conn, run.id, [event])
    if delivery is not None:
        add_delivery(conn, delivery)
    if session is not None:
        set_session(conn, *session)


def get_events(conn: sqlite3.Connection, run_id: str, after: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT seq, ts, kind, data FROM events "
        "WHERE run_n = (SELECT n FROM runs WHERE id = ?) AND seq > ? ORDER BY seq",
        (run_id, after),
    ).fetchall()
    return [
        {"seq": seq, "ts": ts, "kind": kind, **orjson.loads(data)} for seq, ts, kind, data in rows
    ]


def get_session(conn: sqlite3.Connection, key: str) -> tuple[str | None, str | None]:
    row = conn.execute("SELECT thread_id, executor FROM sessions WHERE key = ?", (key,)).fetchone()
    return (row[0], row[1]) if row else (None, None)


def set_session(
    conn: sqlite3.Connection, key: str, thread_id: str | None, executor: str | None
) -> None:
    conn.execute(
        "INSERT INTO sessions (key, thread_id, executor, updated_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT(key) DO UPDATE SET thread_id = excluded.thread_id, "
        "executor = excluded.executor, updated_at = excluded.updated_at",
        (key, thread_id, executor, time.time()),
    )


def add_delivery(conn: sqlite3.Connection, d: Delivery) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO outbox (id, run_id, platform, payload, created_at, attempts) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (d.id, d.run_id, d.platform, orjson.dumps(d.payload).decode(), d.created_at, d.attempts),
    )


def pending_deliveries(conn: sqlite3.Connection, platform: str | None) -> list[Delivery]:
    sql = "SELECT id, run_id, platform, payload, created_at, attempts FROM outbox "
    sql += "WHERE acked_at IS NULL"
    args: list[Any] = []
    if platform is not None:
        sql += " AND platform = ?"
        args.append(platform)
    rows = conn.execute(sql + " ORDER BY created_at", args).fetchall()
    return [
        Delivery(
            id=r[0],
            run_id=r[1],
            platform=r[2],
            payload=orjson.loads(r[3]),
            created_at=r[4],
            attempts=r[5],
        )
        for r in rows
    ]


def ack_delivery(conn: sqlite3.Connection, delivery_id: str) -> bool:
    cur = conn.execute(
        "UPDATE outbox SET acked_at = ? WHERE id = ? AND acked_at IS NULL",
        (time.time(), delivery_id),
    )
    return cur.rowcount > 0


def noop(conn: sqlite3.Connection) -> None:
    """Write nothing (a flush waits for it, and so for what was queued before it)."""


def set_max_pages(conn: sqlite3.Connection, pages: int) -> int:
    """Cap the database at ``pages`` pages (SQLite's ``max_page_count``); the cap."""
    return int(conn.execute(f"PRAGMA max_page_count = {int(pages)}").fetchone()[0])


# The writes the hub posts (Engine.post): queued without waiting, in order with
# everything else; the writer folds them (hub.store.folding).
def op_insert_run(conn: sqlite3.Connection, run: Run) -> None:
    """Store a new run."""
    _insert_run(conn, run)


def op_record(
    conn: sqlite3.Connection,
    run_id: str,
    fields: dict[str, Any] | None,
    event: EventRow,
) -> None:
    """Store one event of a run, with the run's fields it changed (if any)."""
    if fields:
        update_run(conn, run_id, fields)
    add_events(conn, run_id, [event])


def op_set_executor(conn: sqlite3.Connection, run_id: str, executor: str | None) -> None:
    """Record which executor a run was given to."""
    update_run(conn, run_id, {"executor": executor})


def op_set_origin(conn: sqlite3.Connection, run_id: str, origin: dict[str, Any]) -> None:
    """Replace a run's ``origin`` (a bridge told where the run's status message is)."""
    update_run(conn, run_id, {"origin": origin})


def op_set_delivery_payload(
    conn: sqlite3.Connection, delivery_id: str, payload: dict[str, Any]
) -> None:
    """Replace the payload of a reply still waiting in the outbox."""
    conn.execute(
        "UPDATE outbox SET payload = ? WHERE id = ? AND acked_at IS NULL",
        (orjson.dumps(payload).decode(), delivery_id),
    )


def known_targets(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """Every (kind, value) an executor announced: ``label`` or ``name`` (hub.targets)."""
    return [(row[0], row[1]) for row in conn.execute("SELECT kind, value FROM known_targets")]


def op_learn_targets(conn: sqlite3.Connection, pairs: list[tuple[str, str]]) -> None:
    """Remember labels and names an executor announced for the first time."""
    now = time.time()
    conn.executemany(
        "INSERT OR IGNORE INTO known_targets (kind, value, first_seen) VALUES (?, ?, ?)",
        [(kind, value, now) for kind, value in pairs],
    )


def count_pending(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM outbox WHERE acked_at IS NULL").fetchone()[0])


#: Operations that only read (or set a connection's limits): they run while writes are
#: held, against what is on disk; every other operation is a write.
READS: frozenset[Callable[..., Any]] = frozenset(
    {
        get_run,
        run_by_dedupe_key,
        list_runs,
        unfinished_runs,
        count_runs,
        event_positions,
        get_events,
        get_session,
        pending_deliveries,
        count_pending,
        known_targets,
        set_max_pages,
    }
)
