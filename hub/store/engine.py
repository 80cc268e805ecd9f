"""The store's engine: one writer thread with group commit, checkpoints off the commit
path, reader processes for lists and searches, and writes held while the disk refuses them.

SQLite runs in WAL mode on one dedicated thread that owns the connection, so the event
loop never blocks on disk. Operations queue up for that thread, which runs everything
waiting in one transaction (group commit, folded by :mod:`hub.store.folding`) and
resolves each caller's future only after the commit: when ``await store.x(...)``
returns, the write survives a crash of the hub.

Checkpoints (copying the WAL back into the database, with an fsync) run on a second
thread with its own connection, never inside a commit: SQLite's automatic checkpoint
made every ~500th commit wait ~9 ms here, and a reply waits for its commit. They are
passive (they never hold a commit); once one has copied the whole WAL, the writer's
next transaction starts the WAL over, from its start. A writer that never pauses never
lets a passive checkpoint finish (new frames come in meanwhile), so once the WAL holds
``CHECKPOINT_CATCH_UP_BYTES`` the writer finishes one itself between two transactions:
the frames since the checkpointer's last pass, a few ms. The WAL so stays small and
its file is reused, not cut: cutting a large WAL file is slow (a 153 MiB one took a
truncating checkpoint 59 ms here, and a writer that starts the WAL over past
``journal_size_limit`` cuts it inside a commit). Only a file that grew past
``CHECKPOINT_TRUNCATE_BYTES`` anyway (a reader held the WAL, say) is truncated, once
the writer is idle: a truncating checkpoint holds every commit while it runs (169-327
ms at 64 MiB), which was the hub's tail.

Search is indexed in batches, off the hot transactions (see :mod:`hub.store.sql`):
the writer indexes what is waiting once ``SEARCH_BATCH_ROWS`` rows wait, or
``SEARCH_LAG_S`` after the first of them (and when the store closes). The index lags
behind the writes by that much, a search does not: it also scans the few runs not yet
indexed.

Lists, searches and the overview (:meth:`Engine.read`) run in reader processes of
their own (:mod:`hub.store.readers`), never on the writer: a search over 200k runs
does not hold a single commit, and its SQLite steps do not take turns with the event
loop for the hub's GIL. A read sees every write queued before it (it waits for that
commit, not for the writes queued after it) unless the writer is held up longer than
``READ_WAIT_S`` (then it sees what is committed).

A store that cannot write (disk full: ``SQLITE_FULL``; or an I/O error, a read-only
file) loses nothing it was given. The transaction that failed is rolled back and its
writes are *held*: kept in memory, in order, with every write that comes after them
(reads still run, against what is on disk). Posted writes are simply held; a caller
awaiting a write (:meth:`Engine.call`) hears :class:`StoreUnavailable` at once, and its
write is held too. The writer thread tries the held writes again, in one transaction,
with a backoff (``RETRY_UNWRITABLE_S`` doubling up to ``RETRY_UNWRITABLE_MAX_S``); once
they commit the store is writable again. Meanwhile :attr:`Engine.unwritable` says why,
which the hub's ``/readyz`` shows and its router uses to refuse new runs. Held writes
live in memory only: a hub stopped before the disk has room loses them, which is why
the router acknowledges a result to its executor only once its end is committed (the
executor keeps it and sends it again to the next hub).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self, TypeVar

from hub.store import sql
from hub.store.folding import Item, Outcome, RunKeys, apply_all, resolve_all, run_one
from hub.store.readers import ReaderPool, ReadFailed
from hub.store.records import StoreActivity

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The checkpointer runs at least this often, and after this many commits; ...
CHECKPOINT_EVERY_S = 1.0
CHECKPOINT_EVERY_COMMITS = 500
#: ... this often while commits come in (each pass costs two fsyncs, and a page
#: written by many commits is copied once per pass: rarer passes copy less), ...
CHECKPOINT_BUSY_S = 0.25
#: ... and this often once the WAL nears ``CHECKPOINT_CATCH_UP_BYTES`` (past three
#: quarters of it), so that what the writer then copies is a moment's worth.
CHECKPOINT_BEHIND_S = 0.05
#: A WAL file larger than this is truncated by a checkpoint once the writer is idle.
CHECKPOINT_TRUNCATE_BYTES = 64 << 20
#: A WAL holding more than this while the writer never pauses: the writer finishes a
#: checkpoint between two transactions, so that the WAL starts over (a few ms: what
#: came since the checkpointer's last pass, and its fsyncs).
CHECKPOINT_CATCH_UP_BYTES = 16 << 20
#: The writer is idle (a truncating checkpoint may hold it) after this long without a commit.
CHECKPOINT_IDLE_S = 0.5
#: A WAL file is cut back to this when it starts over (SQLite's ``journal_size_limit``):
#: one that stays under it is reused, never cut inside a commit.
WAL_SIZE_LIMIT_BYTES = 64 << 20
#: The writer indexes search's backlog once this many rows (a run's prompt, an answer)
#: wait, ...
SEARCH_BATCH_ROWS = 1024
#: ... or this long after the first of them (how far a search may lag behind).
SEARCH_LAG_S = 0.25
#: The writer starts a transaction at most this often: under load, what comes
#: meanwhile joins it. Each transaction costs its statements' GIL handovers (up to
#: Python's switch interval each while the event loop is busy), a wake-up of the loop,
#: and WAL frames for the pages it touches; a writer that is idle starts at once, and
#: so does one whose last transaction held fewer than GROUP_COMMIT_MIN_WRITES writes (one
#: caller awaiting each write in turn: pacing would add the pause to every one of them).
#: A transaction costs the writer ~0.3 ms of CPU besides its rows (its WAL frames:
#: ~25 pages, two writes each, shared by its runs), so 5 ms (was 2) took a fifth off
#: its CPU per run at 64 concurrent; no answer waits for a commit, a flush under load
#: waits up to that much (a read waiting for the writer cuts the pause short).
GROUP_COMMIT_S = 0.005
GROUP_COMMIT_MIN_WRITES = 8
#: Reader processes for lists and searches (reads at once).
READERS = 2
#: A read waits at most this long for the writes queued before it to commit. Runs are
#: posted, not awaited, so a client that lists right after its answer needs this wait
#: to see its run; a writer busy for longer than 50 ms (the cap until now) is common on a
#: loaded machine. It bounds a read only while the writer is stuck (a long transaction,
#: a locked file it retries).
READ_WAIT_S = 1.0
#: A store that cannot write tries its held writes again after this, then ever later.
RETRY_UNWRITABLE_S = 0.5
RETRY_UNWRITABLE_MAX_S = 10.0

#: Times a transaction that met a locked database is run again, after a pause.
BUSY_RETRIES = 5
_backoff = time.sleep


def _settle(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


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


class Engine:
    """SQLite with a single writer thread and group commit (see the module's doc).

    Runs ``fn(conn, *args)`` operations (:mod:`hub.store.sql`): written with
    :meth:`post` or :meth:`call`, read with :meth:`read`.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._queue: queue.SimpleQueue[Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._checkpointer: threading.Thread | None = None
        self._checkpoint_wake = threading.Event()
        #: The checkpointer waits for a commit (the writer wakes it).
        self._checkpoint_idle = False
        self._checkpoint_lock = threading.Lock()
        self._checkpoint_conn: sqlite3.Connection | None = None
        self._page_size: int | None = None
        self._commits = 0
        self._batch_at = 0.0
        self._batch_size = 0
        #: Run keys and search backlog (writer thread; see hub.store.folding).
        self._keys = RunKeys()
        #: When search's backlog started to wait (monotonic), None when empty.
        self._search_since: float | None = None
        self._index_failing = False
        #: How long the writer's last search indexing took, in s (the last 100).
        self.index_s: list[float] = []
        self._last_commit = 0.0
        self._catch_up = False
        #: What the WAL held at the last checkpoint, in bytes (its file may be larger).
        self._wal_bytes = 0
        #: How long the writer's last checkpoints (see checkpoint_now) held it, in s.
        self.catch_up_s: list[float] = []
        # Counters for activity() (each written by one thread: the writer's two by the
        # writer, the reads' on the loop).
        self._transactions = 0
        self._transaction_s = 0.0
        self._reads = 0
        self._read_s = 0.0
        self._read_failures = 0
        self._closed = False
        # Reads off the writer (lists, searches): processes of their own.
        self._readers: ReaderPool | None = None
        # Items queued for the writer (loop side) and taken and applied by it: a read
        # waits until the writer has applied what was queued before it.
        self._queued = 0
        self._applied = 0
        #: Reads waiting (on the loop) for the writes numbered up to their ticket.
        self._read_waiters: list[tuple[int, asyncio.Future[None]]] = []
        #: Set while a read waits for the writer: no group-commit pause then.
        self._read_waiting = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._checkpoint_failing = False
        #: Writes the disk refused, in order, with those queued after them (writer thread).
        self._held: list[Item] = []
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
        self._readers = ReaderPool(self.path, READERS)

    async def close(self) -> None:
        """Commit what is queued, then stop the writer thread. Idempotent."""
        if self._closed or self._thread is None:
            self._closed = True
            return
        self._closed = True
        if self._readers is not None:
            await self._readers.close()
        self._checkpoint_wake.set()
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.join)
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)
        await asyncio.to_thread(self._close_checkpointer)

    async def __aenter__(self) -> Self:
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
                conn.executescript(sql.SCHEMA)
            sql.migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _checkpoint_loop(self) -> None:
        seen = self._commits
        while not self._closed:
            # See the constants; while no commit comes, the writer wakes it at its next.
            if self._wal_bytes > CHECKPOINT_CATCH_UP_BYTES * 3 // 4:
                wait = CHECKPOINT_BEHIND_S
            elif self._commits != seen:
                wait = min(CHECKPOINT_BUSY_S, CHECKPOINT_EVERY_S)
            else:
                wait = CHECKPOINT_EVERY_S
                self._checkpoint_idle = True
            seen = self._commits
            self._checkpoint_wake.wait(wait)
            self._checkpoint_idle = False
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

        Passive: it never makes the writer wait. A WAL holding more than
        ``CHECKPOINT_CATCH_UP_BYTES`` (a writer that never paused long enough for a
        passive checkpoint to finish): the writer finishes one itself. A WAL file
        larger than ``CHECKPOINT_TRUNCATE_BYTES`` is truncated, but only once the
        writer has been idle ``CHECKPOINT_IDLE_S``: a truncating checkpoint holds
        commits while it runs.
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
            if self._page_size is None:
                self._page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
            # The WAL's file is reused: what it holds is its frames (a page and a header).
            held = self._wal_bytes = max(0, int(frames)) * (self._page_size + 24)
            wal = Path(self.path + "-wal")
            size = wal.stat().st_size if wal.exists() else 0
            idle = time.monotonic() - self._last_commit >= CHECKPOINT_IDLE_S
            if idle and size > CHECKPOINT_TRUNCATE_BYTES:
                busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                self._wal_bytes = 0
            elif held > CHECKPOINT_CATCH_UP_BYTES and not busy and copied == frames:
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
        try:
            self._keys.backlog = sql.search_backlog(conn)  # left by a crash: indexed soon
        except sqlite3.Error:
            self._keys.backlog = 1
        stop = False
        while not stop:
            batch = self._next_batch()
            stop = None in batch
            items = [item for item in batch if item is not None]
            if self._held and (stop or time.monotonic() >= self._next_retry):
                self._replay(conn)
            started = time.perf_counter()
            if self._held:
                results = self._while_held(conn, items)
            elif items:
                results = self._transaction(conn, items)
            else:  # woken to index search's backlog
                results = []
            if items:
                self._transaction_s += time.perf_counter() - started
                self._transactions += 1
            self._commits += 1
            self._last_commit = time.monotonic()
            if self._checkpoint_idle or self._commits % CHECKPOINT_EVERY_COMMITS == 0:
                self._checkpoint_idle = False
                self._checkpoint_wake.set()
            self._applied += len(batch)
            if self._read_waiters:  # read after the add: see Engine.read
                self._to_loop(self._wake_reads)
            if results:
                self._to_loop(resolve_all, results)
            if self._catch_up:  # after the callers heard: only later commits wait
                self._catch_up = False
                self._finish_checkpoint(conn)
            if self._keys.backlog and not self._held:
                self._maybe_index(conn, stop)
        if self._held:
            log.error(
                "store closed with %d writes it could not write (%s): they are lost",
                len(self._held),
                self.unwritable,
            )
        conn.close()

    def _maybe_index(self, conn: sqlite3.Connection, now_anyway: bool) -> None:
        """Index search's backlog if enough waits, or long enough (see the module's doc)."""
        now = time.monotonic()
        if self._search_since is None:
            self._search_since = now
        if not (
            now_anyway
            or self._keys.backlog >= SEARCH_BATCH_ROWS
            or now - self._search_since >= SEARCH_LAG_S
        ):
            return
        started = time.perf_counter()
        try:
            conn.execute("BEGIN")
            sql.index_search(conn)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            # The backlog stays on disk: the next try is a lag later.
            sql.rollback(conn)
            self._search_since = now
            if not self._index_failing:
                log.warning("store: indexing search failed (%s); trying again", sql.reason(exc))
            self._index_failing = True
            return
        self._index_failing = False
        self._keys.backlog = 0
        self._search_since = None
        self.index_s.append(time.perf_counter() - started)
        del self.index_s[:-100]

    def _finish_checkpoint(self, conn: sqlite3.Connection) -> None:
        """Copy the rest of the WAL from the writer thread, so that it starts over."""
        started = time.perf_counter()
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            log.warning("store: a checkpoint on the writer failed: %s", exc)
        self.catch_up_s.append(time.perf_counter() - started)
        del self.catch_up_s[:-100]

    def _next_batch(self) -> list[Item | None]:
        """What is queued (up to 1000), waiting for the first; [] when a retry is due."""
        # Group commit: a transaction at most every GROUP_COMMIT_S (see there). The
        # writer waits its turn before it looks at the queue, so that under load what
        # comes meanwhile is simply there (no wake-up per write).
        if self._batch_size >= GROUP_COMMIT_MIN_WRITES:
            pause = self._batch_at + GROUP_COMMIT_S - time.monotonic()
            if pause > 0:
                # A read waiting for the writes queued before it cuts the pause short.
                self._read_waiting.wait(pause)
            self._read_waiting.clear()
        try:
            if self._held:
                wait = max(0.0, self._next_retry - time.monotonic())
                batch: list[Item | None] = [self._queue.get(timeout=wait)]
            elif self._search_since is not None:  # search's backlog is due then
                wait = max(0.0, self._search_since + SEARCH_LAG_S - time.monotonic())
                batch = [self._queue.get(timeout=wait)]
            else:
                batch = [self._queue.get()]
        except queue.Empty:
            return []
        self._batch_at = time.monotonic()
        while len(batch) < 1000:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        self._batch_size = len(batch)
        return batch

    def _to_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # loop closed during shutdown
            pass

    # --- when the disk refuses writes (see the module's doc) ---------------------------

    def _while_held(self, conn: sqlite3.Connection, items: list[Item]) -> list[Outcome]:
        """Reads run against the disk; writes join the held ones, their callers told."""
        results: list[Outcome] = []
        reason = self.unwritable or "unknown"
        for item in items:
            fut, fn, args = item
            if fn in sql.READS:
                try:
                    run_one(conn, item, results)
                except (sql.Busy, sql.Unwritable) as exc:
                    if fut is not None:
                        results.append((fut, False, exc.error))
                continue
            if fn is not sql.noop:  # a flush has nothing to hold: it only fails
                self._hold(fn, args)
            if fut is not None:
                results.append((fut, False, StoreUnavailable(reason)))
        return results

    def _hold(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self._held.append((None, fn, args))
        if fn is sql.op_insert_run:
            self._to_loop(self._insert_was_held, args[0].id)

    def _insert_was_held(self, run_id: str) -> None:
        if self.on_insert_held is not None:
            self.on_insert_held(run_id)

    def _became_unwritable(self, conn: sqlite3.Connection, error: BaseException) -> None:
        sql.rollback(conn)
        reason = sql.reason(error)
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
            apply_all(conn, held, self._keys)
        except Exception as exc:
            sql.rollback(conn)
            error = exc.error if isinstance(exc, (sql.Unwritable, sql.Busy)) else exc
            self.unwritable = sql.reason(error)
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
    def reader_pids(self) -> list[int]:
        """The store's reader processes running now (see :mod:`hub.store.readers`)."""
        return self._readers.pids if self._readers is not None else []

    @property
    def held(self) -> int:
        """Writes the disk refused, kept in memory until it takes them."""
        return len(self._held)

    @property
    def backlog(self) -> int:
        """Writes queued and not yet committed (the writer thread's queue)."""
        return self._queue.qsize()

    def _transaction(self, conn: sqlite3.Connection, items: list[Item]) -> list[Outcome]:
        """Apply ``items`` in one transaction; again, whole, if the database was busy.

        SQLite waits ``busy_timeout`` for a lock before it gives up; a transaction that
        still met one (another process reading the file, say) is rolled back and run
        again, so that no write is lost to a lock.
        """
        for attempt in range(BUSY_RETRIES + 1):
            try:
                return apply_all(conn, items, self._keys)
            except sql.Unwritable as full:
                self._became_unwritable(conn, full.error)
                return self._while_held(conn, items)
            except sql.Busy as busy:
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
        """Run the read ``fn(conn, *args)`` in a reader process, off the writer.

        It sees every write queued before this call: it waits for their commit (which
        the writer makes at once when a read waits), but at most ``READ_WAIT_S``; a
        writer held longer (a long transaction, a locked file) does not hold the read,
        which then sees what is committed. It never waits for, or holds, later writes.
        """
        if self._closed or self._loop is None or self._readers is None:
            raise StoreClosed("the store is closed")
        started = time.perf_counter()
        try:
            ticket = self._queued
            if self._applied < ticket:
                await self._writes_applied(ticket)
            return await self._readers.read(fn, args)
        except ReadFailed:
            self._read_failures += 1
            raise
        finally:
            self._reads += 1
            self._read_s += time.perf_counter() - started

    def activity(self) -> StoreActivity:
        """What the store did since it opened (a scrape may see the writer between its
        two counters: one transaction's time without its count, say)."""
        return StoreActivity(
            transactions=self._transactions,
            transaction_s=self._transaction_s,
            reads=self._reads,
            read_s=self._read_s,
            read_failures=self._read_failures,
        )

    async def _writes_applied(self, ticket: int) -> None:
        """Return once the writer applied the writes numbered up to ``ticket``, or
        after ``READ_WAIT_S``."""
        assert self._loop is not None
        done: asyncio.Future[None] = self._loop.create_future()
        entry = (ticket, done)
        self._read_waiters.append(entry)
        self._read_waiting.set()
        # The writer adds to _applied, then looks for waiters; this added itself first,
        # then looks at _applied: one of the two sees the other.
        if self._applied >= ticket:
            done.set_result(None)
        timer = self._loop.call_later(READ_WAIT_S, _settle, done)
        try:
            await done
        finally:
            timer.cancel()
            self._read_waiters.remove(entry)

    def _wake_reads(self) -> None:
        applied = self._applied
        for ticket, done in self._read_waiters:
            if ticket <= applied:
                _settle(done)

    async def flush(self) -> None:
        """Return once every write queued before this call is committed.

        Raises :class:`StoreUnavailable` while writes are held (the disk is full).
        """
        await self.call(sql.noop)

    async def set_max_pages(self, pages: int) -> int:
        """Cap the database at ``pages`` pages (SQLite's ``max_page_count``); the cap.

        Past it, writes fail with ``SQLITE_FULL`` as on a full disk: drills and tests
        fill the "disk" this way, and lift the cap to give the space back. Runs even
        while writes are held.
        """
        return await self.call(sql.set_max_pages, pages)
