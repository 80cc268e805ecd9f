"""The run store: runs, their events, sessions and the reply outbox, in SQLite.

SQLite runs in WAL mode on one dedicated thread that owns the connection, so the event
loop never blocks on disk. Operations queue up for that thread, which runs everything
waiting in one transaction (group commit) and resolves each caller's future only after
the commit: when ``await store.x(...)`` returns, the write survives a crash of the hub.

Checkpoints (copying the WAL back into the database, with an fsync) run on a second
thread with its own connection, never inside a commit: SQLite's automatic checkpoint
made every ~500th commit wait ~9 ms here, and a reply waits for its commit. They are
passive (they never hold a commit); once one has copied the whole WAL, the writer's
next transaction starts the WAL over, cut to ``journal_size_limit``. Only a WAL that
grew past ``CHECKPOINT_TRUNCATE_BYTES`` while the writer never paused is truncated,
and only once the writer is idle: a truncating checkpoint holds every commit while it
runs (169-327 ms here at 64 MiB), which was the hub's tail.

Lists and searches (:meth:`Store.list_runs`) run on their own read connections, in a
small pool of threads, never on the writer: a search over 200k runs does not hold a
single commit. A read sees every write queued before it (it waits for that commit, not
for the writes queued after it). Search uses two FTS5 indexes kept in step by the writer
in the same transactions: ``runs_fts``, contentless (no second copy of the text), holds
a run's prompt and user as row ``2n`` (written with the run) and its answer as row
``2n + 1`` (written with the answer: a contentless index cannot change a row).
A read sees the writes queued before it unless the writer is held up longer than
``READ_WAIT_S`` (then it sees what is committed).

Keys append: events are keyed by the run's integer key (``runs.n``) and their sequence,
so a run's events sit together at the end of the table instead of at a random place.

A store that cannot write (disk full: ``SQLITE_FULL``; or an I/O error, a read-only
file) loses nothing it was given. The transaction that failed is rolled back and its
writes are *held*: kept in memory, in order, with every write that comes after them
(reads still run, against what is on disk). Posted writes are simply held; a caller
awaiting a write (:meth:`Store.call`) hears :class:`StoreUnavailable` at once, and its
write is held too. The writer thread tries the held writes again, in one transaction,
with a backoff (``RETRY_UNWRITABLE_S`` doubling up to ``RETRY_UNWRITABLE_MAX_S``); once
they commit the store is writable again. Meanwhile :attr:`Store.unwritable` says why,
which the hub's ``/readyz`` shows and its router uses to refuse new runs. Held writes
live in memory only: a hub stopped before the disk has room loses them, which is why
the router acknowledges a result to its executor only once its end is committed (the
executor keeps it and sends it again to the next hub).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import queue
import re
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeGuard, TypeVar

import orjson

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The checkpointer runs at least this often, and after this many commits.
CHECKPOINT_EVERY_S = 1.0
#: ... and this often while the WAL is past ``WAL_SIZE_LIMIT_BYTES``.
CHECKPOINT_BEHIND_S = 0.05
CHECKPOINT_EVERY_COMMITS = 500
#: A WAL larger than this is truncated by a checkpoint once the writer is idle.
CHECKPOINT_TRUNCATE_BYTES = 64 << 20
#: A WAL larger than this while the writer never pauses: the writer finishes a
#: checkpoint between two transactions, so that the WAL starts over (10-60 ms, with
#: 200k runs stored: rarer is better, and the disk holds this much WAL meanwhile).
CHECKPOINT_CATCH_UP_BYTES = 256 << 20
#: The writer is idle (a truncating checkpoint may hold it) after this long without a commit.
CHECKPOINT_IDLE_S = 0.5
#: The WAL is cut back to this when it starts over (SQLite's ``journal_size_limit``).
WAL_SIZE_LIMIT_BYTES = 16 << 20
#: Read connections (and threads) for lists and searches.
READERS = 2
#: A read waits at most this long for the writes queued before it to commit.
READ_WAIT_S = 0.05
#: A store that cannot write tries its held writes again after this, then ever later.
RETRY_UNWRITABLE_S = 0.5
RETRY_UNWRITABLE_MAX_S = 10.0

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
)

_JSON_COLUMNS = ("origin", "usage", "error")


@dataclass
class Run:
    """One request handed to codex, from arrival to its final answer."""

    id: str
    prompt: str
    origin: dict[str, Any]
    source: str
    created_at: float
    state: str = "queued"
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
        }


@dataclass
class Delivery:
    """A reply waiting in the outbox until the bridge of its platform acknowledges it."""

    id: str
    run_id: str
    platform: str
    payload: dict[str, Any]
    created_at: float
    attempts: int = 0


_RUN_FIELDS = [f for f in Run.__dataclass_fields__ if f != "n"]


def _row_to_run(row: sqlite3.Row) -> Run:
    data = dict(row)
    for col in _JSON_COLUMNS:
        if data.get(col) is not None:
            data[col] = orjson.loads(data[col])
    if data.get("optimize") is not None:
        data["optimize"] = bool(data["optimize"])
    return Run(**data)


def _encode(name: str, value: Any) -> Any:
    if name in _JSON_COLUMNS and value is not None:
        return orjson.dumps(value).decode()
    return value


class StoreClosed(RuntimeError):
    """The store was closed; nothing more can be written."""


class StoreUnavailable(RuntimeError):
    """The store cannot write now (disk full, I/O error): a write is held, not lost.

    ``reason`` is SQLite's own words (``database or disk is full``). The write that
    raised this is kept in memory and committed, in order, once the store can write.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"the store cannot write ({reason}); the write is held until it can")
        self.reason = reason


class Store:
    """SQLite-backed store with a single writer thread and group commit."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._checkpointer: threading.Thread | None = None
        self._checkpoint_wake = threading.Event()
        self._checkpoint_lock = threading.Lock()
        self._checkpoint_conn: sqlite3.Connection | None = None
        self._commits = 0
        self._last_commit = 0.0
        self._catch_up = False
        #: How long the writer's last checkpoints (see checkpoint_now) held it, in s.
        self.catch_up_s: list[float] = []
        self._closed = False
        # Reads off the writer (lists, searches): a pool of threads, a connection each.
        self._readers: concurrent.futures.ThreadPoolExecutor | None = None
        self._reader_local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_conns_lock = threading.Lock()
        # Items queued for the writer (loop side) and taken and applied by it: a read
        # waits until the writer has applied what was queued before it.
        self._queued = 0
        self._applied = 0
        self._read_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._checkpoint_failing = False
        #: Writes the disk refused, in order, with those queued after them (writer thread).
        self._held: list[tuple[None, Callable[..., Any], tuple[Any, ...]]] = []
        self._retry_wait = RETRY_UNWRITABLE_S
        self._next_retry = 0.0
        #: Why the store cannot write (SQLite's words), or None while it can.
        self.unwritable: str | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        #: Called on the event loop when the store stops (a reason) or starts (None)
        #: being able to write.
        self.on_writable_change: Callable[[str | None], None] | None = None
        #: Called on the event loop with the id of a new run whose insert was held: the
        #: run is not on disk, so it must not be answered as if it were.
        self.on_insert_held: Callable[[str], None] | None = None

    # lifecycle

    async def open(self) -> None:
        """Start the writer thread and create the schema."""
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._worker, args=(ready,), name=f"Store:{self.path}", daemon=True
        )
        self._thread.start()
        await ready
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name=f"Checkpoint:{self.path}", daemon=True
        )
        self._checkpointer.start()
        self._readers = concurrent.futures.ThreadPoolExecutor(
            max_workers=READERS, thread_name_prefix=f"StoreRead:{self.path}"
        )

    async def close(self) -> None:
        """Commit what is queued, then stop the writer thread. Idempotent."""
        if self._closed or self._thread is None:
            self._closed = True
            return
        self._closed = True
        if self._readers is not None:
            await asyncio.to_thread(self._readers.shutdown, True)
            with self._reader_conns_lock:
                for conn in self._reader_conns:
                    conn.close()
                self._reader_conns.clear()
        self._checkpoint_wake.set()
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.join)
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)
        await asyncio.to_thread(self._close_checkpointer)

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _connect(self) -> sqlite3.Connection:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a crash of the process (not of the machine).
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=5000")
        # The checkpointer thread does it, off the commit path (see the module's doc).
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
        # The pages a commit touches (the runs' tail, the id index) stay in memory.
        conn.execute("PRAGMA cache_size=-16384")
        # The search's scratch index (see _add_terms) stays in memory.
        conn.execute("PRAGMA temp_store=MEMORY")
        try:
            # SCHEMA is the first release's: a migrated database has moved on from it.
            if int(conn.execute("PRAGMA user_version").fetchone()[0]) == 0:
                conn.executescript(SCHEMA)
            _migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _checkpoint_loop(self) -> None:
        while not self._closed:
            # A WAL past its limit: checkpoints back to back, so that what is left for
            # the writer to copy (see checkpoint_now) is a moment's worth.
            wal = Path(self.path + "-wal")
            behind = wal.exists() and wal.stat().st_size > WAL_SIZE_LIMIT_BYTES
            self._checkpoint_wake.wait(CHECKPOINT_BEHIND_S if behind else CHECKPOINT_EVERY_S)
            self._checkpoint_wake.clear()
            if self._closed:
                return
            try:
                self.checkpoint_now()
            except sqlite3.Error:
                # Once per failing stretch: a full disk fails every second.
                if not self._checkpoint_failing:
                    log.exception("store checkpoint failed; the next ones try again")
                self._checkpoint_failing = True
            else:
                self._checkpoint_failing = False

    def _close_checkpointer(self) -> None:
        # After the writer closed: this is then the last connection, and checkpoints.
        with self._checkpoint_lock:
            if self._checkpoint_conn is not None:
                self._checkpoint_conn.close()
                self._checkpoint_conn = None

    def checkpoint_now(self) -> tuple[int, int]:
        """Copy the WAL into the database now; (WAL frames, frames copied).

        Passive: it never makes the writer wait. A WAL that grew past
        ``CHECKPOINT_TRUNCATE_BYTES`` (a writer that never paused long enough for a
        passive checkpoint to finish) is truncated, but only once the writer has been
        idle ``CHECKPOINT_IDLE_S``: a truncating checkpoint holds commits while it runs.
        Past ``CHECKPOINT_CATCH_UP_BYTES`` the writer finishes one itself.
        The connection stays open until the store closes: a connection that closes
        checks whether it is the database's last one, taking an exclusive lock to do
        so, and the writer must not meet it.
        """
        with self._checkpoint_lock:
            conn = self._checkpoint_conn
            if conn is None:
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA busy_timeout=5000")
                self._checkpoint_conn = conn
            busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            wal = Path(self.path + "-wal")
            size = wal.stat().st_size if wal.exists() else 0
            idle = time.monotonic() - self._last_commit >= CHECKPOINT_IDLE_S
            if idle and size > CHECKPOINT_TRUNCATE_BYTES:
                busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            elif size > CHECKPOINT_CATCH_UP_BYTES and not busy and copied == frames:
                # A writer that never pauses never lets a checkpoint finish, and the
                # WAL starts over only after one has. The writer finishes this one
                # between two transactions: what came since this one, a few ms.
                self._catch_up = True
            return int(frames), int(copied)

    def _worker(self, ready: asyncio.Future[None]) -> None:
        loop = self._loop
        assert loop is not None
        try:
            conn = self._connect()
        except Exception as exc:  # the caller of open() gets the reason
            loop.call_soon_threadsafe(ready.set_exception, exc)
            return
        loop.call_soon_threadsafe(ready.set_result, None)
        stop = False
        while not stop:
            batch = self._next_batch()
            stop = None in batch
            items = [item for item in batch if item is not None]
            if self._held and (stop or time.monotonic() >= self._next_retry):
                self._replay(conn)
            if self._held:
                results = self._while_held(conn, items)
            else:
                results = self._transaction(conn, items)
            self._commits += 1
            self._last_commit = time.monotonic()
            if self._commits % CHECKPOINT_EVERY_COMMITS == 0:
                self._checkpoint_wake.set()
            self._applied += len(batch)
            if results:
                self._to_loop(_resolve_all, results)
            if self._read_waiters:
                self._to_loop(self._release_reads)
            if self._catch_up:  # after the callers heard: only later commits wait
                self._catch_up = False
                self._finish_checkpoint(conn)
        if self._held:
            log.error(
                "store closed with %d writes it could not write (%s): they are lost",
                len(self._held),
                self.unwritable,
            )
        conn.close()

    def _finish_checkpoint(self, conn: sqlite3.Connection) -> None:
        """Copy the rest of the WAL from the writer thread, so that it starts over."""
        started = time.perf_counter()
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            log.warning("store: a checkpoint on the writer failed: %s", exc)
        self.catch_up_s.append(time.perf_counter() - started)
        del self.catch_up_s[:-100]

    def _next_batch(self) -> list[Any]:
        """What is queued (up to 1000), waiting for the first; [] when a retry is due."""
        try:
            if self._held:
                wait = max(0.0, self._next_retry - time.monotonic())
                batch: list[Any] = [self._queue.get(timeout=wait)]
            else:
                batch = [self._queue.get()]
        except queue.Empty:
            return []
        while len(batch) < 1000:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _to_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # loop closed during shutdown
            pass

    # --- when the disk refuses writes (see the module's doc) ---------------------------

    def _while_held(
        self, conn: sqlite3.Connection, items: list[Any]
    ) -> list[tuple[asyncio.Future[Any], bool, Any]]:
        """Reads run against the disk; writes join the held ones, their callers told."""
        results: list[tuple[asyncio.Future[Any], bool, Any]] = []
        reason = self.unwritable or "unknown"
        for item in items:
            fut, fn, args = item
            if fn in _READS:
                try:
                    _run_one(conn, item, results)
                except (_Busy, _Unwritable) as exc:
                    if fut is not None:
                        results.append((fut, False, exc.error))
                continue
            if fn is not _noop:  # a flush has nothing to hold: it only fails
                self._hold(fn, args)
            if fut is not None:
                results.append((fut, False, StoreUnavailable(reason)))
        return results

    def _hold(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self._held.append((None, fn, args))
        if fn is op_insert_run:
            self._to_loop(self._insert_was_held, args[0].id)

    def _insert_was_held(self, run_id: str) -> None:
        if self.on_insert_held is not None:
            self.on_insert_held(run_id)

    def _became_unwritable(self, conn: sqlite3.Connection, error: BaseException) -> None:
        _rollback(conn)
        reason = _reason(error)
        if self.unwritable is None:
            log.error(
                "store: cannot write to %s (%s); writes are held in memory and written "
                "once it can, and new runs are refused until then",
                self.path,
                reason,
            )
        self.unwritable = reason
        self._retry_wait = RETRY_UNWRITABLE_S
        self._next_retry = time.monotonic() + self._retry_wait
        self._to_loop(self._writable_changed, reason)

    def _replay(self, conn: sqlite3.Connection) -> None:
        """Try the held writes again, in one transaction; writable again once they commit."""
        held = self._held
        try:
            _apply_all(conn, held)
        except Exception as exc:
            _rollback(conn)
            error = exc.error if isinstance(exc, (_Unwritable, _Busy)) else exc
            self.unwritable = _reason(error)
            self._retry_wait = min(RETRY_UNWRITABLE_MAX_S, self._retry_wait * 2)
            self._next_retry = time.monotonic() + self._retry_wait
            return
        self._held = []
        log.warning("store: writing again; the %d held writes are on disk", len(held))
        self.unwritable = None
        self._to_loop(self._writable_changed, None)

    def _writable_changed(self, reason: str | None) -> None:
        # Read again: the writer thread may have moved on since it scheduled this.
        if self.unwritable is None:
            self._writable.set()
        else:
            self._writable.clear()
        if self.on_writable_change is not None:
            self.on_writable_change(self.unwritable)

    async def wait_writable(self) -> None:
        """Return once the store can write (at once when it can)."""
        await self._writable.wait()

    @property
    def held(self) -> int:
        """Writes the disk refused, kept in memory until it takes them."""
        return len(self._held)

    @property
    def backlog(self) -> int:
        """Writes queued and not yet committed (the writer thread's queue)."""
        return self._queue.qsize()

    def _transaction(
        self, conn: sqlite3.Connection, items: list[Any]
    ) -> list[tuple[asyncio.Future[Any], bool, Any]]:
        """Apply ``items`` in one transaction; again, whole, if the database was busy.

        SQLite waits ``busy_timeout`` for a lock before it gives up; a transaction that
        still met one (another process reading the file, say) is rolled back and run
        again, so that no write is lost to a lock.
        """
        for attempt in range(BUSY_RETRIES + 1):
            try:
                return _apply_all(conn, items)
            except _Unwritable as full:
                self._became_unwritable(conn, full.error)
                return self._while_held(conn, items)
            except _Busy as busy:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if attempt == BUSY_RETRIES:
                    log.error(
                        "store: the database stayed locked through %d tries; %d writes failed: %s",
                        attempt + 1,
                        len(items),
                        busy.error,
                    )
                    return [(fut, False, busy.error) for fut, _, _ in items if fut is not None]
                log.warning("store: the database was locked (%s); trying again", busy.error)
                _backoff(min(1.0, 0.05 * 2**attempt))
            except Exception as exc:
                # The transaction itself broke (not one operation): hold its writes
                # rather than lose them or let this thread die with them.
                log.exception("store: a transaction failed; its writes are held")
                self._became_unwritable(conn, exc)
                return self._while_held(conn, items)
        raise AssertionError("unreachable")

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(conn, *args)`` without waiting for it; a failure is logged."""
        if self._closed or self._loop is None:
            log.error("store closed: dropped a write (%s)", getattr(fn, "__name__", fn))
            return
        # No future: nobody waits, and skipping the loop round trip is most of the cost.
        self._queued += 1
        self._queue.put((None, fn, args))

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` on the store thread; return after it is committed."""
        if self._closed or self._loop is None:
            raise StoreClosed("the store is closed")
        fut: asyncio.Future[T] = self._loop.create_future()
        self._queued += 1
        self._queue.put((fut, fn, args))
        return await fut

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run the read ``fn(conn, *args)`` on a read connection, off the writer thread.

        It sees every write queued before this call: it waits for their commit (which
        the writer makes anyway, in a few ms), but at most ``READ_WAIT_S``; a writer
        held longer (a long transaction, a locked file) does not hold the read, which
        then sees what is committed. It never waits for, or holds, later writes.
        """
        if self._closed or self._loop is None or self._readers is None:
            raise StoreClosed("the store is closed")
        ticket = self._queued
        if self._applied < ticket:
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._read_waiters.append((ticket, waiter))
            # Read again after queueing the waiter: the writer looks at the waiters only
            # after it counted its batch, so one of the two sees the other.
            if self._applied < ticket:
                await asyncio.wait({waiter}, timeout=READ_WAIT_S)
            if not waiter.done():
                self._read_waiters.remove((ticket, waiter))
        return await self._loop.run_in_executor(self._readers, self._read_now, fn, args)

    def _release_reads(self) -> None:
        applied = self._applied
        waiting = []
        for ticket, waiter in self._read_waiters:
            if ticket <= applied:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                waiting.append((ticket, waiter))
        self._read_waiters = waiting

    def _read_now(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        conn: sqlite3.Connection | None = getattr(self._reader_local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute("PRAGMA query_only=1")
            self._reader_local.conn = conn
            with self._reader_conns_lock:
                self._reader_conns.append(conn)
        return fn(conn, *args)

    # runs

    async def insert_run(self, run: Run) -> None:
        """Store a new run."""
        await self.call(_insert_run, run)

    async def flush(self) -> None:
        """Return once every write queued before this call is committed.

        Raises :class:`StoreUnavailable` while writes are held (the disk is full).
        """
        await self.call(_noop)

    async def set_max_pages(self, pages: int) -> int:
        """Cap the database at ``pages`` pages (SQLite's ``max_page_count``); the cap.

        Past it, writes fail with ``SQLITE_FULL`` as on a full disk: drills and tests
        fill the "disk" this way, and lift the cap to give the space back. Runs even
        while writes are held.
        """
        return await self.call(_set_max_pages, pages)

    async def update_run(self, run_id: str, **fields: Any) -> None:
        """Change some fields of a run; ``updated_at`` follows."""
        await self.call(_update_run, run_id, fields)

    async def get_run(self, run_id: str) -> Run | None:
        """One run, or None."""
        return await self.call(_get_run, run_id)

    async def list_runs(
        self,
        *,
        states: Iterable[str] = (),
        sources: Iterable[str] = (),
        query: str = "",
        session_key: str | None = None,
        before: int | None = None,
        limit: int = 50,
        principal: str | None = None,
    ) -> tuple[list[Run], int | None]:
        """Newest runs first, filtered; returns the page and the cursor of the next one.

        ``principal`` keeps only that principal's runs (None: everyone's).
        """
        return await self.read(
            _list_runs, list(states), list(sources), query, session_key, before, limit, principal
        )

    async def run_by_dedupe_key(self, key: str) -> Run | None:
        """The run submitted with this idempotency key, if any."""
        return await self.call(_run_by_dedupe_key, key)

    async def unfinished_runs(self) -> list[Run]:
        """Runs not yet in a terminal state, oldest first (for recovery at start-up)."""
        return await self.call(_unfinished_runs)

    async def count_runs(self) -> dict[tuple[str, str], int]:
        """Number of runs by (state, source)."""
        return await self.call(_count_runs)

    async def overview(self, since: float, failed_since: float) -> dict[str, Any]:
        """Runs and tokens since ``since``, the median duration of those that finished,
        and the runs that failed since ``failed_since`` (the monitor's overview strip)."""
        return await self.read(_overview, since, failed_since)

    # events

    async def add_events(
        self, run_id: str, events: list[tuple[int, float, str, Any, int | None]]
    ) -> None:
        """Store (seq, ts, kind, data, exec_seq) events; one already stored is ignored."""
        await self.call(_add_events, run_id, events)

    async def event_positions(self, run_id: str) -> tuple[int, int]:
        """(last seq, last executor seq) stored for a run, 0 when none."""
        return await self.call(_event_positions, run_id)

    async def finish_run(
        self,
        run: Run,
        delivery: Delivery | None = None,
        session: tuple[str, str | None, str | None] | None = None,
        event: tuple[int, float, str, Any, int | None] | None = None,
    ) -> None:
        """Store a run's final fields, last event, reply and session in one transaction."""
        await self.call(_finish_run, run, delivery, session, event)

    async def get_events(self, run_id: str, after: int = 0) -> list[dict[str, Any]]:
        """A run's events in order, those after ``after``."""
        return await self.call(_get_events, run_id, after)

    # sessions

    async def get_session(self, key: str) -> tuple[str | None, str | None]:
        """(thread_id, executor) remembered for a session, or (None, None)."""
        return await self.call(_get_session, key)

    async def set_session(self, key: str, thread_id: str | None, executor: str | None) -> None:
        """Remember a session's codex thread and the executor that holds it."""
        await self.call(_set_session, key, thread_id, executor)

    # outbox

    async def add_delivery(self, delivery: Delivery) -> None:
        """Queue a reply for a platform's bridge."""
        await self.call(_add_delivery, delivery)

    async def pending_deliveries(self, platform: str | None = None) -> list[Delivery]:
        """Replies not yet acknowledged, oldest first."""
        return await self.call(_pending_deliveries, platform)

    async def ack_delivery(self, delivery_id: str) -> bool:
        """Mark a reply delivered; False when it was unknown or already acknowledged."""
        return await self.call(_ack_delivery, delivery_id)

    async def count_pending_deliveries(self) -> int:
        """How many replies wait in the outbox."""
        return await self.call(_count_pending)


#: Times a transaction that met a locked database is run again, after a pause.
BUSY_RETRIES = 5
_backoff = time.sleep


class _Busy(Exception):
    """The database was locked past ``busy_timeout``: the transaction is run again."""

    def __init__(self, error: sqlite3.OperationalError) -> None:
        super().__init__(str(error))
        self.error = error


class _Unwritable(Exception):
    """The disk refused a write (full, I/O error, read-only): the writes are held."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


#: SQLite's primary result codes that mean "the disk will not take this write".
_WRITE_FAILURES = frozenset(
    {sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN}
)


def _unwritable(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return True
    if not isinstance(exc, sqlite3.Error):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _WRITE_FAILURES
    return "disk is full" in str(exc) or "disk I/O error" in str(exc)


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def _rollback(conn: sqlite3.Connection) -> None:
    # SQLite may have rolled the transaction back itself (SQLITE_FULL, SQLITE_IOERR):
    # then ROLLBACK fails, harmlessly.
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass


def _busy(exc: BaseException) -> TypeGuard[sqlite3.OperationalError]:
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


def _apply_all(
    conn: sqlite3.Connection, items: list[Any]
) -> list[tuple[asyncio.Future[Any], bool, Any]]:
    """One transaction: every item, folded where it can be; each item's outcome."""
    results: list[tuple[asyncio.Future[Any], bool, Any]] = []
    merge = _Merge()
    conn.execute("BEGIN")
    for item in items:
        _, fn, args = item
        folds = _MERGEABLE.get(fn)
        if folds is not None:
            folds(merge, *args)
            merge.ops.append(item)
            continue
        if merge.ops:  # what was folded goes first: this op may read it
            merge.write(conn, results)
            merge = _Merge()
        _run_one(conn, item, results)
    if merge.ops:
        merge.write(conn, results)
    try:
        conn.execute("COMMIT")
    except Exception as exc:
        if _busy(exc):
            raise _Busy(exc) from exc
        # A full disk fails the WAL append here; whatever the cause, nothing of this
        # transaction is on disk, so all of it is held.
        raise _Unwritable(exc) from exc
    return results


def _run_one(
    conn: sqlite3.Connection, item: Any, results: list[tuple[asyncio.Future[Any], bool, Any]]
) -> None:
    """Run one operation on its own: its outcome goes to ``results`` (a posted write that
    fails is logged); a locked database sends the whole transaction round again."""
    fut, fn, args = item
    try:
        value = fn(conn, *args)
    except Exception as exc:
        if _busy(exc):
            raise _Busy(exc) from exc
        if (fn not in _READS and _unwritable(exc)) or not conn.in_transaction:
            # A full disk, or SQLite rolled the whole transaction back on this error.
            raise _Unwritable(exc) from exc
        if fut is None:
            log.error("store write %s failed", getattr(fn, "__name__", fn), exc_info=exc)
        else:
            results.append((fut, False, exc))
    else:
        if fut is not None:
            results.append((fut, True, value))


def _resolve_all(results: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for fut, ok, value in results:
        if fut.done():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


_INSERT_RUN_HEAD = f"INSERT INTO runs ({', '.join(_RUN_FIELDS)})"
_INSERT_RUN_SQL = f"{_INSERT_RUN_HEAD} VALUES ({', '.join('?' * len(_RUN_FIELDS))})"


def _insert_run(conn: sqlite3.Connection, run: Run) -> None:
    run.updated_at = run.updated_at or time.time()
    values = [_encode(name, getattr(run, name)) for name in _RUN_FIELDS]
    last = _last_n(conn)
    cur = conn.execute(_INSERT_RUN_SQL, values)
    run.n = cur.lastrowid
    _index_new_runs(conn, last)


def _last_n(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COALESCE(MAX(n), 0) FROM runs").fetchone()[0])


def _index_new_runs(conn: sqlite3.Connection, last: int) -> None:
    """Add the runs inserted after key ``last`` to the search indexes (same transaction).

    Keys only grow and this thread is the only writer, so those are the new ones.
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


def _update_run(conn: sqlite3.Connection, run_id: str, fields: dict[str, Any]) -> None:
    if fields.get("answer"):
        # Indexed once, when a run first has an answer (the index cannot take a row
        # back: it holds no copy of the text).
        cur = conn.execute(
            "INSERT INTO runs_fts (rowid, answer) SELECT 2 * n + 1, ? FROM runs "
            "WHERE id = ? AND (answer IS NULL OR answer = '')",
            (fields["answer"], run_id),
        )
        if cur.rowcount:
            _add_terms(conn, "SELECT ?", (fields["answer"],))
    fields = {**fields, "updated_at": time.time()}
    conn.execute(
        _update_sql(tuple(fields)),
        [*(_encode(k, v) for k, v in fields.items()), run_id],
    )


@functools.lru_cache(maxsize=256)
def _update_sql(names: tuple[str, ...]) -> str:
    # Cached: the writer thread runs a few of these per run, with few distinct shapes.
    unknown = set(names) - set(_RUN_FIELDS)
    if unknown:
        raise ValueError(f"unknown run fields: {sorted(unknown)}")
    sets = ", ".join(f"{name} = ?" for name in names)
    return f"UPDATE runs SET {sets} WHERE id = ?"


def _migrate(conn: sqlite3.Connection) -> None:
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


def _get_run(conn: sqlite3.Connection, run_id: str) -> Run | None:
    row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
    return _row_to_run(row) if row else None


def _run_by_dedupe_key(conn: sqlite3.Connection, key: str) -> Run | None:
    row = conn.execute("SELECT * FROM runs WHERE dedupe_key = ?", (key,)).fetchone()
    return _row_to_run(row) if row else None


def _list_runs(
    conn: sqlite3.Connection,
    states: list[str],
    sources: list[str],
    query: str,
    session_key: str | None,
    before: int | None,
    limit: int,
    principal: str | None = None,
) -> tuple[list[Run], int | None]:
    where: list[str] = []
    args: list[Any] = []
    if principal is not None:
        where.append("runs.principal = ?")
        args.append(principal)
    if states:
        where.append(f"runs.state IN ({', '.join('?' * len(states))})")
        args += states
    if sources:
        where.append(f"runs.source IN ({', '.join('?' * len(sources))})")
        args += sources
    if session_key is not None:
        where.append("runs.session_key = ?")
        args.append(session_key)
    match = _fts_query(conn, query) if query else None
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
        rows = _search(conn, match, query, where, args, before, limit + 1)
    else:
        if before is not None:
            where.append("runs.n < ?")
            args.append(before)
        sql = "SELECT * FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY n DESC LIMIT ?"
        rows = conn.execute(sql, [*args, limit + 1]).fetchall()
    runs = [_row_to_run(r) for r in rows[:limit]]
    next_before = runs[-1].n if len(rows) > limit and runs else None
    return runs, next_before


def _search(
    conn: sqlite3.Connection,
    match: str,
    query: str,
    where: list[str],
    args: list[Any],
    before: int | None,
    limit: int,
) -> list[sqlite3.Row]:
    """The newest ``limit`` runs the index finds for ``match`` that pass ``where``.

    The index is walked newest first (FTS5 hands rowids out in order; a run's prompt
    and user are row ``2n``, its answer ``2n + 1``) and stops once ``limit`` runs
    passed, so a common word costs no more than a rare one. The run whose id is the
    query joins them.
    """
    cond = "".join(f" AND {w}" for w in where)
    bound: list[Any] = []
    sql = (
        # CROSS JOIN: the index is the outer loop, in its own order.
        "SELECT runs.* FROM runs_fts AS f CROSS JOIN runs ON runs.n = f.rowid >> 1 "
        "WHERE f.runs_fts MATCH ?"
    )
    if before is not None:
        sql += " AND f.rowid < ?"
        bound = [2 * before]
    sql += f"{cond} ORDER BY f.rowid DESC LIMIT ?"
    found: dict[int, sqlite3.Row] = {}
    # A run matched by its prompt and its answer comes twice, one after the other.
    for row in conn.execute(sql, [match, *bound, *args, 2 * limit]):
        found.setdefault(row["n"], row)
    by_id = "SELECT * FROM runs WHERE runs.id = ?"
    if before is not None:
        by_id += " AND runs.n < ?"
        bound = [before]
    for row in conn.execute(by_id + cond, [query, *bound, *args]):
        found[row["n"]] = row
    return [found[n] for n in sorted(found, reverse=True)[:limit]]


#: What the FTS5 tokenizer (unicode61) takes as a word: letters and digits.
_WORD = re.compile(r"[^\W_]+")


#: A typed prefix that starts more words than this is looked up by FTS5 itself.
_MAX_PREFIX_TERMS = 64


def _fts_query(conn: sqlite3.Connection, query: str) -> str | None:
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
    terms = [
        row[0]
        for row in conn.execute(
            "SELECT term FROM search_terms WHERE term >= ? AND term < ? LIMIT ?",
            (last, last + "\U0010ffff", _MAX_PREFIX_TERMS + 1),
        )
    ]
    if not terms or len(terms) > _MAX_PREFIX_TERMS or any(c.isdigit() for c in last):
        return '"' + " ".join(words) + '"*'
    return " OR ".join(f'"{head} {term}"' if head else f'"{term}"' for term in terms)


def _fold(word: str) -> str:
    """A word as the tokenizer keeps it: case folded, without diacritics."""
    decomposed = unicodedata.normalize("NFKD", word.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _unfinished_runs(conn: sqlite3.Connection) -> list[Run]:
    rows = conn.execute(
        "SELECT * FROM runs WHERE state IN ('queued', 'optimizing', 'running') ORDER BY n"
    ).fetchall()
    return [_row_to_run(r) for r in rows]


def _count_runs(conn: sqlite3.Connection) -> dict[tuple[str, str], int]:
    rows = conn.execute("SELECT state, source, COUNT(*) FROM runs GROUP BY state, source")
    return {(state, source): count for state, source, count in rows}


def _overview(conn: sqlite3.Connection, since: float, failed_since: float) -> dict[str, Any]:
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
_EVENT_ROW = "((SELECT n FROM runs WHERE id = ?), ?, ?, ?, ?, ?)"
_EVENT_COLUMNS = "(run_n, seq, ts, kind, data, exec_seq)"


def _add_events(
    conn: sqlite3.Connection,
    run_id: str,
    events: list[tuple[int, float, str, Any, int | None]],
) -> None:
    if len(events) == 1:
        seq, ts, kind, data, exec_seq = events[0]
        conn.execute(
            f"INSERT OR IGNORE INTO events {_EVENT_COLUMNS} VALUES {_EVENT_ROW}",
            (run_id, seq, ts, kind, orjson.dumps(data).decode(), exec_seq),
        )
        return
    conn.executemany(
        f"INSERT OR IGNORE INTO events {_EVENT_COLUMNS} VALUES {_EVENT_ROW}",
        [
            (run_id, seq, ts, kind, orjson.dumps(data).decode(), exec_seq)
            for seq, ts, kind, data, exec_seq in events
        ],
    )


def _event_positions(conn: sqlite3.Connection, run_id: str) -> tuple[int, int]:
    row = conn.execute(
        "SELECT COALESCE(MAX(seq), 0), COALESCE(MAX(exec_seq), 0) FROM events "
        "WHERE run_n = (SELECT n FROM runs WHERE id = ?)",
        (run_id,),
    ).fetchone()
    return int(row[0]), int(row[1])


_FINAL_FIELDS = (
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


def _finish_run(
    conn: sqlite3.Connection,
    run: Run,
    delivery: Delivery | None,
    session: tuple[str, str | None, str | None] | None,
    event: tuple[int, float, str, Any, int | None] | None = None,
) -> None:
    _update_run(conn, run.id, {name: getattr(run, name) for name in _FINAL_FIELDS})
    if event is not None:
        _add_events(conn, run.id, [event])
    if delivery is not None:
        _add_delivery(conn, delivery)
    if session is not None:
        _set_session(conn, *session)


def _get_events(conn: sqlite3.Connection, run_id: str, after: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT seq, ts, kind, data FROM events "
        "WHERE run_n = (SELECT n FROM runs WHERE id = ?) AND seq > ? ORDER BY seq",
        (run_id, after),
    ).fetchall()
    return [
        {"seq": seq, "ts": ts, "kind": kind, **orjson.loads(data)} for seq, ts, kind, data in rows
    ]


def _get_session(conn: sqlite3.Connection, key: str) -> tuple[str | None, str | None]:
    row = conn.execute("SELECT thread_id, executor FROM sessions WHERE key = ?", (key,)).fetchone()
    return (row[0], row[1]) if row else (None, None)


def _set_session(
    conn: sqlite3.Connection, key: str, thread_id: str | None, executor: str | None
) -> None:
    conn.execute(
        "INSERT INTO sessions (key, thread_id, executor, updated_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT(key) DO UPDATE SET thread_id = excluded.thread_id, "
        "executor = excluded.executor, updated_at = excluded.updated_at",
        (key, thread_id, executor, time.time()),
    )


def _add_delivery(conn: sqlite3.Connection, d: Delivery) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO outbox (id, run_id, platform, payload, created_at, attempts) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (d.id, d.run_id, d.platform, orjson.dumps(d.payload).decode(), d.created_at, d.attempts),
    )


def _pending_deliveries(conn: sqlite3.Connection, platform: str | None) -> list[Delivery]:
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


def _ack_delivery(conn: sqlite3.Connection, delivery_id: str) -> bool:
    cur = conn.execute(
        "UPDATE outbox SET acked_at = ? WHERE id = ? AND acked_at IS NULL",
        (time.time(), delivery_id),
    )
    return cur.rowcount > 0


# Operations for Store.post(): queued without waiting, in order with everything else.
def _noop(conn: sqlite3.Connection) -> None:
    pass


def _set_max_pages(conn: sqlite3.Connection, pages: int) -> int:
    return int(conn.execute(f"PRAGMA max_page_count = {int(pages)}").fetchone()[0])


def op_insert_run(conn: sqlite3.Connection, run: Run) -> None:
    """Store a new run."""
    _insert_run(conn, run)


def op_record(
    conn: sqlite3.Connection,
    run_id: str,
    fields: dict[str, Any] | None,
    event: tuple[int, float, str, Any, int | None],
) -> None:
    """Store one event of a run, with the run's fields it changed (if any)."""
    if fields:
        _update_run(conn, run_id, fields)
    _add_events(conn, run_id, [event])


def op_set_executor(conn: sqlite3.Connection, run_id: str, executor: str | None) -> None:
    """Record which executor a run was given to."""
    _update_run(conn, run_id, {"executor": executor})


def op_set_origin(conn: sqlite3.Connection, run_id: str, origin: dict[str, Any]) -> None:
    """Replace a run's ``origin`` (a bridge told where the run's status message is)."""
    _update_run(conn, run_id, {"origin": origin})


def op_set_delivery_payload(
    conn: sqlite3.Connection, delivery_id: str, payload: dict[str, Any]
) -> None:
    """Replace the payload of a reply still waiting in the outbox."""
    conn.execute(
        "UPDATE outbox SET payload = ? WHERE id = ? AND acked_at IS NULL",
        (orjson.dumps(payload).decode(), delivery_id),
    )


# --- folding the hot path's writes -----------------------------------------------------
#
# A run's life is ~9 statements (insert, three updates, five events). Each statement
# hands the GIL back and forth between the writer and the event loop, and when the loop
# is busy every handback can wait for Python's switch interval: the writer then fell
# behind at ~1,000 runs/s. So within one transaction the writer folds the hot-path
# operations into few statements: new runs in one multi-row INSERT, each run's updates
# into one UPDATE (or into its INSERT), all events in one multi-row INSERT. The result
# is what the operations one by one would have left. Anything else (a read, an ack)
# first writes what was folded, so it sees it. If a folded write fails, it is undone and
# the operations run one by one, so only the failing one fails, as before.

#: Rows per multi-row INSERT (SQLite allows 32,766 variables; a run row has 21).
_ROWS_PER_INSERT = 500


class _Merge:
    """The hot-path writes of one transaction, folded (see above)."""

    def __init__(self) -> None:
        self.ops: list[tuple[asyncio.Future[Any] | None, Callable[..., Any], tuple[Any, ...]]] = []
        self.inserts: dict[str, Run] = {}
        self.updates: dict[str, dict[str, Any]] = {}
        self.events: list[tuple[Any, ...]] = []
        self.tail: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def update(self, run_id: str, fields: dict[str, Any]) -> None:
        self.updates.setdefault(run_id, {}).update(fields)

    def event(self, run_id: str, event: tuple[int, float, str, Any, int | None]) -> None:
        seq, ts, kind, data, exec_seq = event
        self.events.append((run_id, seq, ts, kind, orjson.dumps(data).decode(), exec_seq))

    def write(
        self, conn: sqlite3.Connection, results: list[tuple[asyncio.Future[Any], bool, Any]]
    ) -> None:
        conn.execute("SAVEPOINT folded")
        try:
            self._write(conn)
        except Exception as exc:
            if _busy(exc):
                raise _Busy(exc) from exc  # the whole transaction goes again
            if _unwritable(exc) or not conn.in_transaction:
                raise _Unwritable(exc) from exc  # the whole transaction is held
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
            values = {name: getattr(run, name) for name in _RUN_FIELDS}
            folded = self.updates.pop(run_id, None)
            if folded:
                values.update(folded, updated_at=now)
            values["updated_at"] = values["updated_at"] or now
            rows.append([_encode(name, values[name]) for name in _RUN_FIELDS])
        if rows:
            last = _last_n(conn)
            for chunk in _chunks(rows):
                conn.execute(
                    f"{_INSERT_RUN_HEAD} VALUES {_placeholders(chunk)}",
                    [v for row in chunk for v in row],
                )
            _index_new_runs(conn, last)
        for run_id, fields in self.updates.items():
            _update_run(conn, run_id, fields)
        for chunk in _chunks(self.events):
            conn.execute(
                f"INSERT OR IGNORE INTO events {_EVENT_COLUMNS} VALUES "
                + ", ".join([_EVENT_ROW] * len(chunk)),
                [v for row in chunk for v in row],
            )
        for fn, args in self.tail:
            fn(conn, *args)

    def _one_by_one(
        self, conn: sqlite3.Connection, results: list[tuple[asyncio.Future[Any], bool, Any]]
    ) -> None:
        for item in self.ops:
            _run_one(conn, item, results)


def _chunks(rows: list[Any]) -> Iterable[list[Any]]:
    for start in range(0, len(rows), _ROWS_PER_INSERT):
        yield rows[start : start + _ROWS_PER_INSERT]


@functools.lru_cache(maxsize=64)
def _row_placeholders(width: int) -> str:
    return "(" + ", ".join("?" * width) + ")"


def _placeholders(rows: list[Any]) -> str:
    return ", ".join([_row_placeholders(len(rows[0]))] * len(rows))


def _fold_insert(m: _Merge, run: Run) -> None:
    m.inserts[run.id] = run


def _fold_record(
    m: _Merge,
    run_id: str,
    fields: dict[str, Any] | None,
    event: tuple[int, float, str, Any, int | None],
) -> None:
    if fields:
        m.update(run_id, fields)
    m.event(run_id, event)


def _fold_set_executor(m: _Merge, run_id: str, executor: str | None) -> None:
    m.update(run_id, {"executor": executor})


def _fold_set_origin(m: _Merge, run_id: str, origin: dict[str, Any]) -> None:
    m.update(run_id, {"origin": origin})


def _fold_finish(
    m: _Merge,
    run: Run,
    delivery: Delivery | None,
    session: tuple[str, str | None, str | None] | None,
    event: tuple[int, float, str, Any, int | None] | None = None,
) -> None:
    m.update(run.id, {name: getattr(run, name) for name in _FINAL_FIELDS})
    if event is not None:
        m.event(run.id, event)
    if delivery is not None:
        m.tail.append((_add_delivery, (delivery,)))
    if session is not None:
        m.tail.append((_set_session, session))


_MERGEABLE: dict[Callable[..., Any], Callable[..., None]] = {
    op_insert_run: _fold_insert,
    op_record: _fold_record,
    op_set_executor: _fold_set_executor,
    op_set_origin: _fold_set_origin,
    _finish_run: _fold_finish,
}


def _count_pending(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM outbox WHERE acked_at IS NULL").fetchone()[0])


#: Operations that only read (or set a connection's limits): they run while writes are
#: held, against what is on disk; every other operation is a write.
_READS: frozenset[Callable[..., Any]] = frozenset(
    {
        _get_run,
        _run_by_dedupe_key,
        _list_runs,
        _unfinished_runs,
        _count_runs,
        _event_positions,
        _get_events,
        _get_session,
        _pending_deliveries,
        _count_pending,
        _set_max_pages,
    }
)
