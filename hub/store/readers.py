"""Lists, searches and the overview, read in processes of their own.

A read on a thread of the hub hands the GIL over at each SQLite step and waits to get
it back; beside an event loop that is busy all the time each hand-back waits out
Python's switch interval, so a search of five statements took 12-15 ms at 16
concurrent chats for 0.6 ms of work, and its Python competed with the runs for the
hub's one GIL. Here a read is one message to a reader process and one back: the
event loop writes the request, reads the answer, and nothing else of the read runs
in the hub.

Each reader process (``python -c`` :data:`ENTRY`) owns one read-only connection
(the database's path is its first message, not an argument that ``ps`` would show to
every user) and serves one read at a time: a request is the read's name (one of
:data:`SERVED`) and its arguments, the answer its value or its exception, each
pickled behind its length, over the process's stdin and stdout (its stray output
goes to stderr). It exits when its stdin closes, so a hub killed with -9 leaves none
behind. It gets no environment of the hub's (no tokens, no keys): only what Python
needs to import this package. Like the hub, it makes itself non-dumpable first thing, so
that codex's commands (the same user) cannot open its pipes through ``/proc``; and both
sides unpickle only what a read takes or gives (:func:`loads`), so that a message
written into a pipe by anyone else cannot make the hub call anything.

The pool starts a process at the first read that finds none free (up to ``size``);
one starts in about 0.1 s (Python, sqlite3 and this package), which only the first reads
after start-up wait for. A process that dies is replaced, and a read it was serving
runs once more on another; a read whose caller gave up is still answered and its
answer dropped, so that the process is free again.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import io
import logging
import os
import pickle
import signal
import sqlite3
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

from hub.store import sql

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The reads a reader process serves, by name.
SERVED: dict[str, Callable[..., Any]] = {
    fn.__name__: fn for fn in (sql.list_runs, sql.run_summaries, sql.overview)
}

_LENGTH = struct.Struct(">I")
#: The interpreter a reader process runs on: the hub's own.
PYTHON = sys.executable
#: What a reader process runs (not ``-m`` this module: the package imports it first).
#: It closes itself to processes of the same user (codex's commands) before anything
#: else, as the hub does: a dumpable reader's ``/proc/<pid>/fd`` would hand them the
#: pipes to and from the hub.
ENTRY = (
    "from kernel.process import make_undumpable; make_undumpable(); "
    "from hub.store.readers import serve; serve()"
)
#: Where the ``hub`` package is: a reader process imports it from there.
_ROOT = str(Path(sql.__file__).resolve().parents[2])
#: A reader that does not exit within this long of its stdin closing is killed.
CLOSE_WAIT_S = 2.0
#: A read not answered within this long is given up, and its process killed (stuck:
#: a lock held for ever, a disk that does not answer); it is not tried again. A search
#: takes milliseconds, and SQLite waits 5 s for a lock.
READ_TIMEOUT_S = 30.0


#: What a reader process keeps of the hub's environment: what Python and SQLite need.
_KEPT_ENV = ("PYTHONHOME", "LD_LIBRARY_PATH", "TMPDIR", "SQLITE_TMPDIR")


def _environment() -> dict[str, str]:
    """A reader's environment: none of the hub's tokens and keys, only what imports
    this package and runs SQLite."""
    env = {name: os.environ[name] for name in _KEPT_ENV if name in os.environ}
    env.update(PYTHONPATH=_ROOT, PYTHONDONTWRITEBYTECODE="1")
    return env


#: What a message between the hub and a reader may hold besides plain values (str,
#: numbers, None, lists, tuples, dicts, sets): the records the reads take and give, and
#: the exceptions they raise. Nothing else unpickles, so a message written into a pipe
#: by someone else cannot make either side call anything.
_MESSAGE_CLASSES = {
    ("hub.store.records", "Run"),
    ("hub.store.records", "RunPage"),
    ("wire.codes", "RunState"),
}
_EXCEPTION_MODULES = {"builtins": builtins, "sqlite3": sqlite3}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _MESSAGE_CLASSES:
            return super().find_class(module, name)
        found = getattr(_EXCEPTION_MODULES.get(module), name, None)
        if isinstance(found, type) and issubclass(found, Exception):
            return found
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a reader's messages")


def loads(data: bytes) -> Any:
    """A message between the hub and a reader, unpickled with only what a read may hold
    (:data:`_MESSAGE_CLASSES`, plain values, exceptions of Python and sqlite3)."""
    return _Unpickler(io.BytesIO(data)).load()


class ReadFailed(RuntimeError):
    """The store could not serve a read: no reader process could be started (or the
    store is closing), one died twice while serving it, or it did not answer within
    ``READ_TIMEOUT_S``."""


class ReaderDied(ReadFailed):
    """A reader process ended while it served a read."""


class _Reader(asyncio.SubprocessProtocol):
    """One reader process: requests go down its stdin, answers come up its stdout,
    each answer to the oldest request still unanswered (one at a time: see the pool)."""

    def __init__(self) -> None:
        self.transport: asyncio.SubprocessTransport | None = None
        self._stdin: asyncio.WriteTransport | None = None
        self._buffer = bytearray()
        self._waiting: asyncio.Future[tuple[bool, Any]] | None = None
        #: Called when a read whose caller gave up has been answered after all.
        self.when_answered: Callable[[], None] | None = None
        self.alive = True
        self.timed_out = False
        self.exited = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio's classes; they have the same methods.
        self.transport = cast(asyncio.SubprocessTransport, transport)
        self._stdin = cast(asyncio.WriteTransport, self.transport.get_pipe_transport(0))

    def send(self, message: Any) -> None:
        assert self._stdin is not None
        payload = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        self._stdin.write(_LENGTH.pack(len(payload)) + payload)

    def ask(self, name: str, args: tuple[Any, ...]) -> asyncio.Future[tuple[bool, Any]]:
        """Send a read; a future of its (succeeded, value or exception)."""
        assert self._stdin is not None and self._waiting is None
        waiting = self._waiting = asyncio.get_running_loop().create_future()
        if not self.alive:
            waiting.set_exception(ReaderDied("the reader process had ended"))
            return waiting
        self.send((name, args))
        return waiting

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd != 1:
            return
        buffer = self._buffer
        buffer += data
        if len(buffer) < _LENGTH.size:
            return
        (length,) = _LENGTH.unpack_from(buffer)
        if len(buffer) < _LENGTH.size + length:
            return
        body = bytes(buffer[_LENGTH.size : _LENGTH.size + length])
        del buffer[: _LENGTH.size + length]
        waiting, self._waiting = self._waiting, None
        try:
            answer = loads(body)
        except Exception as exc:
            answer = (False, ReaderDied(f"the reader's answer did not read back ({exc!r})"))
        if waiting is not None and not waiting.done():
            waiting.set_result(answer)
        elif self.when_answered is not None:
            when_answered, self.when_answered = self.when_answered, None
            when_answered()

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1:
            self._ended(exc)

    def process_exited(self) -> None:
        self._ended(None)
        self.exited.set()

    def _ended(self, exc: Exception | None) -> None:
        self.alive = False
        waiting, self._waiting = self._waiting, None
        if waiting is not None and not waiting.done():
            waiting.set_exception(ReaderDied(f"the reader process ended ({exc or 'exited'})"))
        elif self.when_answered is not None:
            when_answered, self.when_answered = self.when_answered, None
            when_answered()

    def stuck(self) -> None:
        """Its read took too long: kill it (its read fails with :class:`ReaderDied`)."""
        self.timed_out = True
        if self.transport is not None:
            with contextlib.suppress(ProcessLookupError):
                self.transport.kill()

    @property
    def busy(self) -> bool:
        return self._waiting is not None

    @property
    def pid(self) -> int | None:
        return self.transport.get_pid() if self.transport is not None else None

    async def close(self) -> None:
        """Close its stdin (it exits once it has answered); kill it if it lingers."""
        transport = self.transport
        if transport is None:
            return
        if self._stdin is not None:
            self._stdin.close()
        try:
            await asyncio.wait_for(self.exited.wait(), CLOSE_WAIT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                transport.kill()
            await self.exited.wait()
        transport.close()


class ReaderPool:
    """Reader processes on the database at ``path``, at most ``size`` reads at once."""

    def __init__(self, path: str, size: int) -> None:
        self.path = path
        self.size = size
        self._slots = asyncio.Semaphore(size)
        self._idle: list[_Reader] = []
        self._all: set[_Reader] = set()
        self._closed = False
        self._closing: set[asyncio.Task[None]] = set()

    async def read(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        """``fn(conn, *args)`` in a reader process; its value, or its exception raised."""
        name = fn.__name__
        if SERVED.get(name) is not fn:
            raise ValueError(f"{name} is not a read the reader processes serve")
        async with self._slots:
            for attempt in range(2):
                reader = self._idle.pop() if self._idle else await self._start()
                timer = asyncio.get_running_loop().call_later(READ_TIMEOUT_S, reader.stuck)
                try:
                    ok, value = await reader.ask(name, args)
                except asyncio.CancelledError:
                    # A caller that gave up (its client gone): the process is free again
                    # once it has answered, nothing left in its pipe (or killed once the
                    # read has taken READ_TIMEOUT_S: the timer stays).
                    if reader.busy:
                        reader.when_answered = lambda r=reader, t=timer: self._after(r, t)
                    else:
                        timer.cancel()
                        self._give_back(reader)
                    raise
                except ReaderDied as exc:
                    timer.cancel()
                    self._lost(reader, exc)
                    if reader.timed_out:
                        raise ReadFailed(
                            f"the store's reader did not answer within {READ_TIMEOUT_S:.0f} s"
                        ) from None
                    if attempt:
                        raise
                    continue
                timer.cancel()
                self._give_back(reader)
                if ok:
                    return value
                raise value
        raise AssertionError("unreachable")

    async def _start(self) -> _Reader:
        if self._closed:  # closed while the read waited for the writer
            raise ReadFailed("the store is closing")
        try:
            _, reader = await asyncio.get_running_loop().subprocess_exec(
                _Reader,
                PYTHON,
                "-c",
                ENTRY,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=None,
                env=_environment(),
                cwd=_ROOT,
            )
        except OSError as exc:  # no process to be had (a limit, a missing interpreter)
            raise ReadFailed(f"could not start a reader process ({exc})") from exc
        reader.send(self.path)
        self._all.add(reader)
        return reader

    def _after(self, reader: _Reader, timer: asyncio.TimerHandle) -> None:
        """The read of a caller that gave up has been answered, or its process ended."""
        timer.cancel()
        self._give_back(reader)

    def _give_back(self, reader: _Reader) -> None:
        if not reader.alive:
            self._lost(reader, None)
        elif self._closed or len(self._idle) >= self.size:
            self._all.discard(reader)
            closing = asyncio.ensure_future(reader.close())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        else:
            self._idle.append(reader)

    def _lost(self, reader: _Reader, exc: BaseException | None) -> None:
        self._all.discard(reader)
        if reader in self._idle:
            self._idle.remove(reader)
        if not self._closed:
            log.warning(
                "store: a reader process (pid %s) ended (%s); another takes its place",
                reader.pid,
                exc or "exited",
            )
        if reader.transport is not None:
            reader.transport.close()  # kills it if it still runs

    @property
    def pids(self) -> list[int]:
        """The reader processes running now."""
        return [pid for reader in self._all if (pid := reader.pid) is not None]

    async def close(self) -> None:
        """Stop every reader process; one serving a read answers it first."""
        self._closed = True
        self._idle = []
        readers, self._all = list(self._all), set()
        await asyncio.gather(*(reader.close() for reader in readers), *self._closing)


# --- the reader process ---------------------------------------------------------------


def connect(path: str) -> sqlite3.Connection:
    """A read-only connection as the reads expect it."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA query_only=1")
    return conn


def _read_exactly(fd: int, size: int) -> bytes | None:
    """``size`` bytes from ``fd``; None at its end."""
    chunks = []
    while size:
        chunk = os.read(fd, size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _answer(ok: bool, value: Any) -> bytes:
    if not ok and type(value).__module__ not in _EXCEPTION_MODULES:
        # The hub unpickles only Python's and sqlite3's exceptions: another is said in words.
        value = RuntimeError(f"{type(value).__module__}.{type(value).__name__}: {value}")
    try:
        payload = pickle.dumps((ok, value), pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # an exception that does not pickle: said in words
        error = RuntimeError(f"{type(value).__name__}: {value} (and it did not pickle: {exc})")
        payload = pickle.dumps((False, error), pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(payload)) + payload


def _receive() -> Any:
    """The next message on stdin; None at its end."""
    head = _read_exactly(0, _LENGTH.size)
    body = _read_exactly(0, _LENGTH.unpack(head)[0]) if head is not None else None
    return loads(body) if body is not None else None


def serve() -> None:
    """Open the database named by the first message, then answer reads from stdin on
    stdout until stdin ends."""
    # Ctrl-C in a terminal reaches the whole process group: the hub stops its readers
    # (it closes their stdin) once it is done with them.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = os.dup(1)
    os.dup2(2, 1)  # stray output must not corrupt the answers
    path = _receive()
    if path is None:
        return
    conn = connect(path)
    try:
        while (request := _receive()) is not None:
            name, args = request
            try:
                answer = _answer(True, SERVED[name](conn, *args))
            except Exception as exc:
                answer = _answer(False, exc)
            view = memoryview(answer)
            while view:
                view = view[os.write(out, view) :]
    finally:
        conn.close()
