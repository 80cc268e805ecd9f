"""The app-server engine (``EXEC_ENGINE=app-server``): one long-lived `codex app-server`.

One app-server process per executor serves every run at once, each run a turn on its own
codex thread: `thread/start` (or `thread/resume` when this process has not loaded the
conversation's thread), then `turn/start`, then the thread's notifications until
`turn/completed`. The process is started on first use through the transport (locally or
over SSH, `SessionTransport.start`), a dedicated task reads its stdout, and when it dies
the runs in flight fail with the reason and the next run starts a new one.

Seen from the pipeline it is a `CodexEngine`: `run(request, emit) -> RunOutcome` with the
same statuses and error codes, events in `codex exec --json`'s shapes (mapped by
`executor.appserver_protocol`, which also lists the event kinds this engine adds), usage,
timeout, dry run and the login check. What it adds:

- cancel (the task awaiting `run` is cancelled) and timeout end the turn with
  `turn/interrupt`, so the thread stays usable; only when codex has not ended the turn
  within `interrupt_grace_s` is the process killed (and restarted by the next run);
- `steer(run_id, text)` adds input to a running turn (`turn/steer`);
- approvals: when codex asks to run a command or apply a change outside the sandbox, the
  engine calls the `approve` callback with an `ApprovalRequest` and answers with its
  decision; with no callback it declines (fail closed) and says so in an event;
- before the first process it checks that the binary speaks the protocol this engine was
  built for (`appserver_protocol.schema_fingerprint` of the schema the binary generates,
  against the committed one) and refuses to run otherwise (error code
  `codex_incompatible`, naming the tested codex version).

codex keeps every thread a process ran loaded, and writable by that process alone, for
as long as it lives (`thread/unsubscribe` does not let go of it). So an idle process
that has loaded `recycle_after_threads` threads is replaced by a fresh one, and a
conversation whose thread another live process holds (a second executor on the same
CODEX_HOME) goes on as a fork of it (`thread/fork`), with a note saying so.

Errors::

    AppServerError              the app-server could not do what was asked
     ├── AppServerExited        the process ended (exit code, stderr's tail)
     ├── IncompatibleAppServer  the binary's protocol is not the tested one
     └── SteerError             no running turn of that run to steer
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import posixpath
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from executor.appserver_protocol import (
    DELTA_FLUSH_S,
    SCHEMA_FILES,
    ApprovalDecision,
    ApprovalRequest,
    DeltaBuffer,
    Notification,
    Response,
    RpcError,
    ServerRequest,
    TurnFold,
    approval_request,
    approval_result,
    codex_event,
    describe_approval,
    error_response,
    fingerprint_differences,
    initialize_params,
    load_expected_fingerprint,
    notification,
    parse_line,
    request,
    response,
    schema_fingerprint,
    thread_params,
    turn_interrupt_params,
    turn_start_params,
    turn_steer_params,
    user_agent_version,
)
from executor.codex import TESTED_CODEX_VERSION
from executor.engine import CodexEngine, Emit, RunOutcome, RunRequest, _clean_stderr, _failed
from executor.settings import ExecutorSettings
from executor.transport import (
    LoginStatus,
    Session,
    SessionTransport,
    SpawnError,
    TransportError,
)

log = logging.getLogger(__name__)

#: How long codex may take to end a turn after `turn/interrupt` before it is killed.
INTERRUPT_GRACE_S = 5.0
#: Starting the process and its `initialize` answer; one request's answer.
START_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 30.0
#: An idle app-server that has loaded this many threads is replaced by a new one.
RECYCLE_AFTER_THREADS = 200
#: Generating the schema for the protocol check.
SCHEMA_TIMEOUT_S = 30.0
_NO_ROLLOUT = "no rollout found"
#: codex lets one process at a time write a thread, and keeps it while it lives.
_OTHER_WRITER = "active writer"

ApprovalCallback = Callable[[ApprovalRequest], Awaitable[ApprovalDecision]]


class AppServerError(Exception):
    """The app-server could not do what was asked."""


class AppServerExited(AppServerError):
    """The app-server process ended; `reason` says how (exit code, stderr's tail)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the codex app-server exited: {reason}")
        self.reason = reason


class IncompatibleAppServer(AppServerError):
    """The binary's app-server protocol differs from the one this engine was tested with."""


class SteerError(AppServerError):
    """There is no running turn of that run to steer."""


def _client_version() -> str:
    try:
        return metadata.version("codex-hub")
    except metadata.PackageNotFoundError:
        return "0"


@dataclass
class _ActiveRun:
    """A run's turn in flight: its fold, its emit, and whether it ended."""

    run_id: str
    fold: TurnFold
    emit: Emit
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    turn_known: asyncio.Event = field(default_factory=asyncio.Event)
    died: str | None = None
    approvals: set[asyncio.Task[None]] = field(default_factory=set)
    #: Items announced by item/started, by id: what an approval request is about.
    items: dict[str, dict[str, Any]] = field(default_factory=dict)

    deltas: DeltaBuffer = field(default_factory=DeltaBuffer)
    flusher: asyncio.TimerHandle | None = None

    def feed(self, method: str, params: dict[str, Any]) -> None:
        item = params.get("item")
        if method == "item/started" and isinstance(item, dict) and item.get("id"):
            self.items[str(item["id"])] = item
        for event in self.fold.feed(method, params):
            self.send(event)
        if self.fold.turn_id is not None:
            self.turn_known.set()
        if self.fold.ended:
            self.flush()
            self.ended.set()

    def send(self, event: dict[str, Any]) -> None:
        """Emit `event`, answer deltas joined over DELTA_FLUSH_S."""
        for out in self.deltas.add(event):
            self._out(out)
        if self.deltas.holding and self.flusher is None:
            loop = asyncio.get_running_loop()
            self.flusher = loop.call_later(DELTA_FLUSH_S, self.flush)

    def flush(self) -> None:
        if self.flusher is not None:
            self.flusher.cancel()
            self.flusher = None
        for out in self.deltas.flush():
            self._out(out)

    def _out(self, event: dict[str, Any]) -> None:
        # An event the caller could not take is lost, never the run: its end must land.
        try:
            self.emit(event)
        except Exception:
            log.exception("run %s: could not emit an event", self.run_id)

    def lost(self, reason: str) -> None:
        self.flush()
        self.died = reason
        self.ended.set()


class _AppServer:
    """One running app-server process: requests in flight, threads loaded, turns listened to."""

    def __init__(
        self, on_request: Callable[[_AppServer, ServerRequest], Coroutine[Any, Any, None]]
    ) -> None:
        self.session: Session | None = None
        self.loaded: set[str] = set()
        self.listeners: dict[str, _ActiveRun] = {}
        #: Runs handed this process that have not ended yet.
        self.runs = 0
        self.dead: str | None = None
        self.user_agent = ""
        self._on_request = on_request
        self._pending: dict[int, tuple[str, asyncio.Future[dict[str, Any]]]] = {}
        self._next_id = 1
        self._tasks: set[asyncio.Task[None]] = set()
        self._write = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None

    # the reader side (called by the session's stdout task, one line at a time)

    def on_line(self, line: str) -> None:
        try:
            self._dispatch(line)
        except Exception:
            # The reader must go on whatever a run's emit does, or every run would hang.
            log.exception("could not handle a line of the codex app-server")

    def _dispatch(self, line: str) -> None:
        message = parse_line(line)
        if isinstance(message, Response):
            method, future = self._pending.pop(message.id, ("", None))
            if future is None or future.done():
                return
            if message.error is not None:
                code = int(message.error.get("code") or 0)
                future.set_exception(RpcError(method, code, str(message.error.get("message", ""))))
            else:
                future.set_result(message.result or {})
        elif isinstance(message, Notification):
            listener = self.listeners.get(_thread_of(message.params))
            if listener is not None:
                listener.feed(message.method, message.params)
        elif isinstance(message, ServerRequest):
            task = asyncio.create_task(
                self._on_request(self, message), name=f"AppServer:request:{message.id}"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def watch(self, session: Session) -> None:
        """Follow the process until it ends; then fail everything waiting on it."""
        self.session = session
        self._watcher = asyncio.create_task(self._watch(session), name="AppServer:watch")

    async def _watch(self, session: Session) -> None:
        result = await session.wait()
        stderr = _clean_stderr(result.stderr_tail)
        reason = f"exit code {result.exit_code}" + (f": {stderr}" if stderr else "")
        self.lost(reason)

    def lost(self, reason: str, *, expected: bool = False) -> None:
        if self.dead is not None:
            return
        self.dead = reason
        (log.info if expected else log.warning)("the codex app-server is gone: %s", reason)
        pending, self._pending = self._pending, {}
        for _, future in pending.values():
            if not future.done():
                future.set_exception(AppServerExited(reason))
        for listener in list(self.listeners.values()):
            listener.lost(reason)

    # the writer side

    async def send(self, data: bytes) -> None:
        if self.dead is not None or self.session is None:
            raise AppServerExited(self.dead or "not started")
        async with self._write:
            try:
                await self.session.send(data)
            except TransportError as exc:
                raise AppServerExited(str(exc)) from None

    async def request(self, method: str, params: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        """Send a request; the future holds its answer (RpcError, AppServerExited)."""
        request_id, self._next_id = self._next_id, self._next_id + 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        # Retrieved even if nobody awaits it any more (a cancelled run's turn/start).
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._pending[request_id] = (method, future)
        try:
            await self.send(request(request_id, method, params))
        except BaseException:
            self._pending.pop(request_id, None)
            raise
        return future

    async def call(
        self, method: str, params: dict[str, Any], timeout_s: float = REQUEST_TIMEOUT_S
    ) -> dict[str, Any]:
        """Send a request and wait (bounded) for its answer."""
        future = await self.request(method, params)
        try:
            async with asyncio.timeout(timeout_s):
                return await future
        except TimeoutError:
            raise AppServerError(
                f"the codex app-server did not answer {method} within {timeout_s:g} s"
            ) from None

    async def close(self, reason: str = "stopped by codex-hub") -> None:
        """Stop the process (EOF, then kill) and every task of it. Idempotent."""
        self.lost(reason, expected=True)
        if self.session is not None:
            await self.session.close()
        tasks = [*self._tasks, *([self._watcher] if self._watcher else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _thread_of(params: dict[str, Any]) -> str:
    thread = params.get("threadId")
    if thread is None and isinstance(params.get("thread"), dict):
        thread = params["thread"].get("id")
    return str(thread or "")


class AppServerEngine(CodexEngine):
    """Runs prompts as turns on one long-lived `codex app-server` (see the module doc)."""

    def __init__(
        self,
        settings: ExecutorSettings,
        transport: SessionTransport,
        *,
        codex_bin: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        approve: ApprovalCallback | None = None,
        approval_policy: str = "on-request",
        interrupt_grace_s: float = INTERRUPT_GRACE_S,
        expected_schema: dict[str, Any] | None = None,
        recycle_after_threads: int = RECYCLE_AFTER_THREADS,
    ) -> None:
        super().__init__(settings, transport, codex_bin=codex_bin, clock=clock)
        self._sessions = transport
        self.approve = approve
        self.approval_policy = approval_policy
        self.interrupt_grace_s = interrupt_grace_s
        self.recycle_after_threads = recycle_after_threads
        self._expected = expected_schema
        self._server: _AppServer | None = None
        self._start_lock = asyncio.Lock()
        self._protocol_checked = False
        self._check_lock = asyncio.Lock()
        self._runs: dict[str, _ActiveRun] = {}
        #: How many app-server processes this engine started (a restart adds one).
        self.processes_started = 0

    # --- the protocol check ------------------------------------------------------------

    async def check_protocol(self) -> str:
        """Check the binary's app-server schema against the tested one; the detail.

        Raises IncompatibleAppServer with a message naming the tested codex version.
        """
        expected = self._expected or load_expected_fingerprint()
        tempdir = await self._transport.make_tempdir()
        try:
            out = posixpath.join(tempdir, "schema")
            result = await self._transport.run(
                [self.codex_bin, "app-server", "generate-json-schema", "--out", out],
                env_overrides=self._env(),
                cwd=None,
                on_stdout_line=lambda _line: None,
                timeout_s=SCHEMA_TIMEOUT_S,
            )
            if result.timed_out or result.exit_code != 0:
                detail = _clean_stderr(result.stderr_tail) or f"exit code {result.exit_code}"
                raise IncompatibleAppServer(
                    self._refusal(f"it cannot generate its schema ({detail})")
                )
            schemas = {}
            for name in SCHEMA_FILES:
                try:
                    schemas[name] = json.loads(
                        await self._transport.read_text(posixpath.join(out, name))
                    )
                except (OSError, ValueError) as exc:
                    raise IncompatibleAppServer(
                        self._refusal(f"its schema has no usable {name} ({exc})")
                    ) from None
        finally:
            await self._transport.remove_tree(tempdir)
        differences = fingerprint_differences(expected, schema_fingerprint(schemas))
        if differences:
            shown = "; ".join(differences[:6]) + (" ..." if len(differences) > 6 else "")
            raise IncompatibleAppServer(self._refusal(f"its protocol differs: {shown}"))
        version = expected.get("codex_version", TESTED_CODEX_VERSION)
        return f"app-server protocol matches codex {version}"

    async def _check_protocol_once(self) -> None:
        """`check_protocol` until it passes once (a failing binary may be replaced)."""
        async with self._check_lock:
            if not self._protocol_checked:
                detail = await self.check_protocol()
                log.info("EXEC_ENGINE=app-server: %s", detail)
                self._protocol_checked = True

    async def login_status(self, force: bool = False) -> LoginStatus:
        """Whether codex is logged in, once the binary's protocol passed the check.

        The executor asks this at start: a binary that does not speak the tested
        protocol raises IncompatibleAppServer there, and the executor reports it.
        """
        await self._check_protocol_once()
        return await super().login_status(force)

    def _refusal(self, why: str) -> str:
        return (
            f"EXEC_ENGINE=app-server refused: the codex at {self.codex_bin} does not speak the "
            f"app-server protocol this executor was tested with (codex {TESTED_CODEX_VERSION}): "
            f"{why}. Install codex {TESTED_CODEX_VERSION} (`make install`) or set EXEC_ENGINE=exec."
        )

    # --- the process ---------------------------------------------------------------------

    async def _ensure_server(self) -> _AppServer:
        """The running app-server; started (after the protocol check) when there is none."""
        async with self._start_lock:
            server = self._server
            if server is not None and server.dead is None:
                if server.runs or len(server.loaded) < self.recycle_after_threads:
                    server.runs += 1
                    return server
                # codex keeps every thread it ran loaded (and writable by it alone) while
                # it lives: an idle process that holds many is replaced by a fresh one.
                log.info("restarting the codex app-server: %d threads loaded", len(server.loaded))
            if server is not None:
                await server.close(f"recycled after {len(server.loaded)} threads")
                self._server = None
            await self._check_protocol_once()
            server = _AppServer(self._on_server_request)
            argv = [self.codex_bin, "app-server", *self._settings.extra_args]
            session = await self._sessions.start(
                argv,
                env_overrides=self._env(),
                cwd=os.fspath(self._settings.exec_workdir),
                on_stdout_line=server.on_line,
            )
            server.watch(session)
            self.processes_started += 1
            try:
                answer = await server.call(
                    "initialize", initialize_params(_client_version()), START_TIMEOUT_S
                )
                await server.send(notification("initialized"))
            except BaseException:
                await server.close()
                raise
            server.user_agent = str(answer.get("userAgent", ""))
            version = user_agent_version(server.user_agent)
            if version and version != TESTED_CODEX_VERSION:
                log.warning(
                    "codex app-server %s is not the tested %s (its protocol matched)",
                    version,
                    TESTED_CODEX_VERSION,
                )
            log.info("codex app-server started (%s)", server.user_agent or "no user agent")
            self._server = server
            server.runs += 1
            return server

    async def aclose(self) -> None:
        """Stop the app-server; runs still in flight fail. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            await server.close()

    # --- runs ---------------------------------------------------------------------------

    async def run(self, request: RunRequest, emit: Emit) -> RunOutcome:
        """Run `request` as a turn to its end, calling `emit` for each event on the way."""
        if self._settings.exec_dry_run:
            return self._dry_run(request, emit)
        try:
            status = await self.login_status()
        except IncompatibleAppServer as exc:
            return _failed("codex_incompatible", str(exc))
        except (FileNotFoundError, SpawnError) as exc:
            return _failed("codex_not_found", f"{exc}; set CODEX_BIN or run `make install`")
        except TransportError as exc:
            return _failed("transport_error", str(exc))
        if not status.logged_in:
            return _failed("codex_not_logged_in", self._login_hint(status))
        try:
            server = await self._ensure_server()
        except IncompatibleAppServer as exc:
            return _failed("codex_incompatible", str(exc))
        except SpawnError as exc:
            return _failed("codex_not_found", f"{exc}; check CODEX_BIN and EXEC_WORKDIR")
        except TransportError as exc:
            return _failed("transport_error", str(exc))
        except AppServerError as exc:
            return _failed("codex_failed", f"the codex app-server did not start: {exc}")
        try:
            return await self._turn(server, request, emit)
        finally:
            server.runs -= 1

    async def _turn(self, server: _AppServer, request: RunRequest, emit: Emit) -> RunOutcome:
        limit = self._settings.exec_timeout_s
        active: _ActiveRun | None = None
        try:
            async with asyncio.timeout(limit):
                thread_id = await self._open_thread(server, request, emit)
                busy = server.listeners.get(thread_id)
                if busy is not None:
                    return _failed(
                        "codex_failed",
                        f"the conversation's codex thread {thread_id} is busy with run "
                        f"{busy.run_id}; try again when it has ended",
                        thread_id,
                    )
                active = _ActiveRun(request.run_id, TurnFold(thread_id), emit)
                server.listeners[thread_id] = active
                self._runs[request.run_id] = active
                started = await server.request(
                    "turn/start", turn_start_params(thread_id, request.prompt)
                )
                try:
                    answer = await asyncio.shield(started)
                except asyncio.CancelledError:
                    await self._interrupt(server, active, started)
                    raise
                turn = answer.get("turn")
                if active.fold.turn_id is None and isinstance(turn, dict) and turn.get("id"):
                    active.fold.turn_id = str(turn["id"])
                    active.turn_known.set()
                try:
                    await active.ended.wait()
                except asyncio.CancelledError:
                    await self._interrupt(server, active, started)
                    raise
        except TimeoutError:
            if active is not None:
                await self._interrupt(server, active, None)
            usage = active.fold.usage if active is not None else None
            thread = active.fold.thread_id if active is not None else request.thread_id
            return RunOutcome(
                "timed_out",
                "",
                thread,
                usage,
                {"code": "timeout", "message": f"codex did not finish within {limit:g} s"},
            )
        except RpcError as exc:
            thread = active.fold.thread_id if active is not None else request.thread_id
            return _failed("codex_failed", f"the codex app-server refused the run: {exc}", thread)
        except AppServerExited as exc:
            return self._died(request, active, exc.reason)
        except AppServerError as exc:
            return _failed("codex_failed", str(exc), request.thread_id)
        finally:
            if active is not None:
                self._forget(server, active)
        if active.died is not None:
            return self._died(request, active, active.died)
        return self._turn_outcome(active.fold)

    def _forget(self, server: _AppServer, active: _ActiveRun) -> None:
        active.flush()  # nothing may be emitted once the run has ended
        if server.listeners.get(active.fold.thread_id) is active:
            del server.listeners[active.fold.thread_id]
        if self._runs.get(active.run_id) is active:
            del self._runs[active.run_id]
        for task in active.approvals:
            task.cancel()

    def _died(self, request: RunRequest, active: _ActiveRun | None, reason: str) -> RunOutcome:
        thread = active.fold.thread_id if active is not None else request.thread_id
        usage = active.fold.usage if active is not None else None
        message = (
            f"the codex app-server stopped during the run ({reason}); the next run starts a new one"
        )
        return RunOutcome("failed", "", thread, usage, {"code": "codex_failed", "message": message})

    def _turn_outcome(self, fold: TurnFold) -> RunOutcome:
        if fold.status == "completed":
            return RunOutcome(
                "succeeded", fold.last_message or "", fold.thread_id, dict(fold.usage)
            )
        if fold.status == "interrupted":
            message = "codex's turn was interrupted"
        else:
            message = f"codex's turn failed: {fold.error_message or fold.status}"
        return RunOutcome(
            "failed",
            "",
            fold.thread_id,
            dict(fold.usage),
            {"code": "codex_failed", "message": message},
        )

    def _thread_params(self, thread_id: str | None, workdir: str) -> dict[str, Any]:
        settings = self._settings
        return thread_params(
            cwd=workdir,
            sandbox=settings.codex_sandbox,
            approval_policy=self.approval_policy,
            model=settings.codex_model,
            network_access=settings.codex_network_access,
            thread_id=thread_id,
        )

    async def _open_thread(self, server: _AppServer, request: RunRequest, emit: Emit) -> str:
        """The run's thread: the conversation's (resumed unless loaded here) or a new one."""
        thread_id = request.thread_id
        if thread_id and thread_id not in server.loaded:
            try:
                await server.call(
                    "thread/resume", self._thread_params(thread_id, self.workdir_of(request))
                )
            except RpcError as exc:
                if _OTHER_WRITER in exc.message:
                    thread_id = await self._fork(server, request, thread_id, emit)
                elif _NO_ROLLOUT in exc.message:
                    note = (
                        f"The earlier conversation (thread {thread_id}) could not be "
                        "resumed, so this runs as a new conversation."
                    )
                    log.info("run %s: %s", request.run_id, note)
                    emit({"kind": "note", "message": note, "summary": note})
                    thread_id = None
                else:
                    raise
            else:
                server.loaded.add(thread_id)
        if not thread_id:
            answer = await server.call(
                "thread/start", self._thread_params(None, self.workdir_of(request))
            )
            thread = answer.get("thread")
            if not isinstance(thread, dict) or not thread.get("id"):
                raise AppServerError("thread/start answered without a thread id")
            thread_id = str(thread["id"])
            server.loaded.add(thread_id)
        log.info("run %s: turn on thread %s", request.run_id, thread_id)
        emit(codex_event({"type": "thread.started", "thread_id": thread_id}))
        return thread_id

    async def _fork(
        self, server: _AppServer, request: RunRequest, thread_id: str, emit: Emit
    ) -> str:
        """A copy of `thread_id`, which another app-server process holds (another executor
        with the same CODEX_HOME): the conversation goes on, under a new thread id."""
        answer = await server.call(
            "thread/fork", self._thread_params(thread_id, self.workdir_of(request))
        )
        thread = answer.get("thread")
        if not isinstance(thread, dict) or not thread.get("id"):
            raise AppServerError("thread/fork answered without a thread id")
        forked = str(thread["id"])
        note = (
            f"The conversation's thread {thread_id} is held by another codex process, so "
            f"this run continues it as a copy (thread {forked})."
        )
        log.info("run %s: %s", request.run_id, note)
        emit({"kind": "note", "message": note, "summary": note})
        server.loaded.add(forked)
        return forked

    async def _interrupt(
        self,
        server: _AppServer,
        active: _ActiveRun,
        started: asyncio.Future[dict[str, Any]] | None,
    ) -> None:
        """End the run's turn with `turn/interrupt`; kill the process if codex does not."""
        if active.ended.is_set() or server.dead is not None:
            return
        try:
            async with asyncio.timeout(self.interrupt_grace_s):
                if started is not None and not active.turn_known.is_set():
                    turn = (await started).get("turn") or {}
                    if turn.get("id") and active.fold.turn_id is None:
                        active.fold.turn_id = str(turn["id"])
                await active.turn_known.wait()
                assert active.fold.turn_id is not None
                await server.call(
                    "turn/interrupt",
                    turn_interrupt_params(active.fold.thread_id, active.fold.turn_id),
                )
                await active.ended.wait()
            log.info("run %s: turn interrupted", active.run_id)
        except (TimeoutError, AppServerError, RpcError) as exc:
            log.warning(
                "run %s: codex did not end the turn on interrupt (%s); killing the app-server",
                active.run_id,
                exc or "timeout",
            )
            if self._server is server:
                self._server = None
            await server.close(f"killed: run {active.run_id} did not stop on turn/interrupt")

    # --- steering ---------------------------------------------------------------------

    async def steer(self, run_id: str, text: str) -> str:
        """Add `text` to the running turn of `run_id`; the turn's id.

        Raises SteerError when that run has no turn running here, RpcError when codex
        refuses (the turn just ended).
        """
        active = self._runs.get(run_id)
        server = self._server
        if active is None or server is None or active.ended.is_set():
            raise SteerError(f"run {run_id} has no running turn on this executor")
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            await active.turn_known.wait()
        assert active.fold.turn_id is not None
        answer = await server.call(
            "turn/steer", turn_steer_params(active.fold.thread_id, active.fold.turn_id, text)
        )
        short = " ".join(text.split())
        short = short if len(short) <= 120 else short[:119] + "…"
        active.send({"kind": "steer", "message": text, "summary": f"steered: {short}"})
        return str(answer.get("turnId") or active.fold.turn_id)

    # --- approvals --------------------------------------------------------------------

    async def _on_server_request(self, server: _AppServer, message: ServerRequest) -> None:
        active = server.listeners.get(_thread_of(message.params))
        item = active.items.get(str(message.params.get("itemId"))) if active else None
        req = approval_request(
            active.run_id if active else "", message.method, message.params, item
        )
        if req is None or active is None:
            # Not ours to grant: an approval of no run here is declined, anything else
            # (user input, elicitation, ...) refused, so that the turn does not wait.
            log.warning("codex asked %s, which no run here answers", message.method)
            answer = (
                response(message.id, approval_result("deny"))
                if req is not None
                else error_response(message.id, -32601, "not supported by codex-hub")
            )
            with contextlib.suppress(AppServerError):
                await server.send(answer)
            return
        req = dataclasses.replace(req, approval_id=f"ap_{secrets.token_hex(8)}")
        task = asyncio.current_task()
        if task is not None:
            active.approvals.add(task)
        try:
            decision = await self._decide(req, active)
        finally:
            if task is not None:
                active.approvals.discard(task)
        with contextlib.suppress(AppServerError):
            await server.send(response(message.id, approval_result(decision)))

    async def _decide(self, req: ApprovalRequest, active: _ActiveRun) -> ApprovalDecision:
        """Ask the callback; decline when there is none or it fails (fail closed)."""
        asked = describe_approval(req)
        active.send(
            {
                "kind": "approval",
                "status": "requested",
                "approval_id": req.approval_id,
                "request": req.public(),
                "summary": asked,
            }
        )
        decision: ApprovalDecision = "deny"
        by = "callback"
        if self.approve is None:
            by = "default"
            note = "declined: no approver is configured on this executor"
        else:
            try:
                decision = await self.approve(req)
                note = {
                    "approve": "approved",
                    "approve_session": "approved for this conversation",
                    "deny": "denied",
                    "cancel": "denied, and the turn was stopped",
                }.get(decision, "")
                if not note:
                    raise ValueError(f"unknown decision {decision!r}")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("run %s: the approval callback failed", req.run_id)
                decision, by, note = "deny", "default", f"declined: the approval failed ({exc})"
        active.send(
            {
                "kind": "approval",
                "status": "decided",
                "approval_id": req.approval_id,
                "decision": decision,
                "by": by,
                "summary": note,
            }
        )
        return decision
