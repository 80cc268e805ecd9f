"""The executor node: takes runs from the hub, runs the pipeline, reports back.

Every frame of a run (states, events, the result) is kept until the hub acknowledges
the result, and re-sent after each reconnect: a run that outlives a hub restart still
reports everything once the hub is back (the hub ignores what it already stored).

Approvals (app-server engine, ``CODEX_APPROVAL_POLICY`` that asks): the engine's
``approve`` callback waits for the hub's ``approval_decision`` of that run and request.
The request itself travels as the run's ``approval`` event, so it reaches a hub that was
away when codex asked; the hub decides (people, or its timeout) and re-sends a decision
until the engine's ``decided`` event confirms it. The wait ends with the run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from dataclasses import dataclass, field
from typing import Any, get_args

import orjson

from executor.appserver_protocol import ApprovalDecision, ApprovalRequest
from executor.engine_appserver import AppServerEngine
from executor.pipeline import Job, Pipeline, Result
from executor.settings import ExecutorSettings
from kernel.credentials import node_token
from kernel.logs import bind, clean_json, redact_json
from kernel.node_client import NodeClient
from wire import (
    ApprovalDecisionFrame,
    AssignFrame,
    ErrorCode,
    ErrorFrame,
    EventFrame,
    FrameModel,
    Hello,
    LoginState,
    ResultAckFrame,
    RunCancelFrame,
    StateFrame,
    StatusFrame,
    SteeredFrame,
    SteerFrame,
    encode_frame,
)

log = logging.getLogger(__name__)

LOGIN_RECHECK_S = 60.0
#: Decisions kept for requests not (yet) waited for: a hub re-sends them, so few.
EARLY_DECISIONS_MAX = 256
#: The longest a ``steer`` may take here before it is answered as failed (the hub
#: waits a little longer, then queues the text as a new run).
STEER_TIMEOUT_S = 5.0
#: What a ``state`` frame may say (wire's StateFrame: optimizing, running).
_STATES: frozenset[str] = frozenset(get_args(StateFrame.model_fields["state"].annotation))


@dataclass
class _RunState:
    job: Job
    #: The run's state and event frames, and its result, as sent (masked, encoded).
    frames: list[str] = field(default_factory=list)
    seq: int = 0
    result: str | None = None
    task: asyncio.Task[None] | None = None


#: The models of the frames a run's task builds as dicts (its result has its own).
_MODELS: dict[str, type[EventFrame] | type[StateFrame]] = {"event": EventFrame, "state": StateFrame}


def _encoded(frame: dict[str, Any], *, shapes: bool) -> str:
    """``frame`` masked (:func:`kernel.logs.redact_json`) and encoded as
    :func:`wire.encode_frame` does: encoded once and searched once when there is nothing
    to mask, as for nearly every frame."""
    try:
        data = orjson.dumps(frame)
    except TypeError:
        # Not plain JSON for orjson (an object in an event): the long way, through the
        # frame's model as before, which turns what it can into JSON or refuses it.
        model = _MODELS.get(frame["type"])
        if model is not None:
            frame = model(**frame).dump()
        return encode_frame(redact_json(frame, shapes=shapes))
    if clean_json(data, shapes=shapes):
        return data.decode()
    return encode_frame(redact_json(frame, shapes=shapes))


class ExecutorNode:
    """One executor connected to the hub; an async context manager."""

    def __init__(self, settings: ExecutorSettings, pipeline: Pipeline) -> None:
        self.settings = settings
        self.pipeline = pipeline
        base = settings.node_name or socket.gethostname()
        # A new id per process: a restarted executor does not claim a dead one's runs.
        self.node_id = f"{base}-{os.getpid()}-{secrets.token_hex(3)}"
        self.runs: dict[str, _RunState] = {}
        #: Set by close(): runs cancelled from now on were stopped by the executor itself.
        self.stopping = False
        self.login: dict[str, Any] = {"logged_in": None, "detail": "not checked yet"}
        #: codex's version, as `codex --version` says it ("" when unknown), for the hub.
        self.codex_version = ""
        self.client = NodeClient(
            settings.hub_url,
            hello=self._hello,
            on_frame=self._on_frame,
            on_connect=self._on_connect,
            name=f"executor {base}",
            role="executor",
        )
        self._login_task: asyncio.Task[None] | None = None
        self._sweep_task: asyncio.Task[None] | None = None
        #: Approval requests waiting for the hub, by (run id, approval id).
        self._approvals: dict[tuple[str, str], asyncio.Future[ApprovalDecision]] = {}
        #: Decisions that came before their request was waited for.
        self._early: dict[tuple[str, str], ApprovalDecision] = {}
        engine = pipeline.engine
        if isinstance(engine, AppServerEngine) and engine.approve is None:
            engine.approve = self._approve
        self._steers: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Check codex's login and version, then connect to the hub (in the background)."""
        self._loop = asyncio.get_running_loop()
        await self._check_login()
        await self._check_version()
        await self.client.start()
        self._login_task = asyncio.create_task(self._login_loop(), name="Executor:login")
        if self.pipeline.workspaces is not None:
            self._sweep_task = asyncio.create_task(self._sweep_loop(), name="Executor:sweep")

    async def close(self) -> None:
        """Cancel running work, disconnect. Idempotent."""
        self.stopping = True
        for task in (self._login_task, self._sweep_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._login_task = self._sweep_task = None
        tasks = [s.task for s in self.runs.values() if s.task is not None]
        tasks.extend(self._steers)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.client.close()

    async def __aenter__(self) -> ExecutorNode:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # hub side

    def _hello(self) -> Hello:
        return Hello(
            type="hello",
            role="executor",
            token=node_token(
                self.settings.hub_token.get_secret_value(), self.settings.hub_db, "executor"
            ),
            node_id=self.node_id,
            name=self.settings.node_name or socket.gethostname(),
            capacity=self.settings.exec_concurrency,
            # The hub ends a run itself past this (plus its grace): codex's timeout, and
            # the optimizer's, which may come first.
            timeout_s=self.settings.exec_timeout_s + self.settings.optimizer_timeout_s,
            login=LoginState(**self.login),
            active_runs=list(self.runs),
            labels=self.settings.exec_labels,
            engine=self.settings.exec_engine,
            codex_version=self.codex_version,
        )

    async def _on_connect(self) -> None:
        for state in self.runs.values():
            for frame in state.frames:
                self.client.send(frame)
            if state.result is not None:
                self.client.send(state.result)

    def _on_frame(self, frame: FrameModel) -> None:
        # A plain function: the client calls it as each frame comes, no task per frame
        # (what takes time, a run or a steer, gets its own task here).
        if isinstance(frame, AssignFrame):
            self._assign(frame)
        elif isinstance(frame, ResultAckFrame):
            self.runs.pop(frame.run_id, None)
        elif isinstance(frame, RunCancelFrame):
            state = self.runs.get(frame.run_id)
            if state is not None and state.task is not None and state.result is None:
                state.task.cancel()
        elif isinstance(frame, SteerFrame):
            task = asyncio.create_task(self._steer(frame), name=f"Executor:steer:{frame.run_id}")
            self._steers.add(task)
            task.add_done_callback(self._steers.discard)
        elif isinstance(frame, ApprovalDecisionFrame):
            self._decided(frame)
        elif isinstance(frame, ErrorFrame):
            log.warning("hub reported: %s", frame.message)

    def _assign(self, assign: AssignFrame) -> None:
        run_id = assign.run_id
        if run_id in self.runs:
            return
        job = Job(
            run_id=run_id,
            prompt=assign.prompt,
            thread_id=assign.thread_id,
            optimize=assign.optimize,
            origin=dict(assign.origin),
            options=dict(assign.options),
            session_key=assign.session_key,
            repo=assign.repo,
            open_pr=assign.open_pr,
        )
        state = _RunState(job)
        self.runs[run_id] = state
        # No name: building one per run is measurable; the coroutine names the run. The
        # loop is the one start() saw: asking for the running loop costs a getpid().
        loop = self._loop or asyncio.get_running_loop()
        state.task = loop.create_task(self._execute(state))

    async def _steer(self, frame: SteerFrame) -> None:
        """Add a message to a run's running turn; answer the hub how it went."""
        error = await self._steer_error(frame)
        if error is None:
            log.info("run %s: a message was added to its running turn", frame.run_id)
        else:
            log.info("run %s: could not steer: %s", frame.run_id, error)
        answer = SteeredFrame(run_id=frame.run_id, steer_id=frame.steer_id, ok=error is None)
        if error is not None:
            answer = answer.model_copy(update={"error": error[:1000]})
        self.client.send(answer.dump())

    async def _steer_error(self, frame: SteerFrame) -> str | None:
        """None once the text is in the run's turn, else why it is not."""
        state = self.runs.get(frame.run_id)
        steer = getattr(self.pipeline.engine, "steer", None)
        if steer is None:
            return f"this executor's engine ({self.settings.exec_engine}) cannot steer a turn"
        if state is None or state.result is not None:
            return "the run has ended on this executor"
        try:
            async with asyncio.timeout(STEER_TIMEOUT_S):
                await steer(frame.run_id, frame.text)
        except TimeoutError:
            return f"codex did not take the message within {STEER_TIMEOUT_S:g} s"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # SteerError, RpcError (the turn just ended), a dead server
            return str(exc) or type(exc).__name__
        return None

    # running

    def _send(self, state: _RunState, frame: dict[str, Any], *, shapes: bool) -> None:
        # codex or the optimizer may quote a secret of this process (a command that
        # prints a key): registered secrets are masked before anything leaves it, and
        # credential-shaped tokens too in events (not in the user's prompt or answer).
        text = _encoded(frame, shapes=shapes)
        state.frames.append(text)
        self.client.send(text)

    async def _execute(self, state: _RunState) -> None:
        run_id = state.job.run_id
        bind(run_id=run_id)  # every line logged on this run's path carries its id

        # The frames are built as the dicts their models' dump() gives (wire's
        # EventFrame, StateFrame: the same keys, in the same order), not through the
        # models: what goes in is this process's own, and a model built to be dumped at
        # once costs more than the rest of a dry run's frame.
        def emit(event: dict[str, Any]) -> None:
            state.seq += 1
            frame: dict[str, Any] = {
                "type": "event",
                "run_id": run_id,
                "seq": state.seq,
                "event": event,
            }
            if type(event) is not dict:  # what the model takes (a mapping) or refuses
                frame = EventFrame(**frame).dump()
            self._send(state, frame, shapes=True)

        def set_state(name: str, effective_prompt: str | None) -> None:
            if name not in _STATES:
                raise ValueError(f"a run's state frame says optimizing or running, not {name!r}")
            frame = {"type": "state", "run_id": run_id, "state": name}
            if effective_prompt is not None:
                frame["effective_prompt"] = effective_prompt
            self._send(state, frame, shapes=False)

        try:
            result = await self.pipeline.run(state.job, emit, set_state)
        except asyncio.CancelledError:
            if self.stopping:
                # Not a user's cancel: say so, or a restart reads like someone's decision.
                result = Result(
                    status="failed",
                    error={
                        "code": ErrorCode.EXECUTOR_STOPPED,
                        "message": "the executor stopped (shut down or restarted) while "
                        "this run was going; codex was stopped before it finished",
                    },
                )
            else:
                result = Result(
                    status="cancelled",
                    error={"code": ErrorCode.CANCELLED, "message": "cancelled; codex was stopped"},
                )
        except Exception as exc:
            log.exception("run %s failed inside the executor", run_id)
            result = Result(
                status="failed",
                error={"code": ErrorCode.EXECUTOR_ERROR, "message": f"executor error: {exc}"},
            )
        if result.error and result.error.get("code") == ErrorCode.CODEX_NOT_LOGGED_IN:
            self._set_login(False, result.error.get("message", "not logged in"))
        try:
            frame = result.frame(run_id)
        except ValueError as exc:  # a field the wire cannot carry: say so, never hang
            log.exception("run %s: its result does not fit the result frame", run_id)
            frame = Result(
                status="failed",
                error={"code": ErrorCode.EXECUTOR_ERROR, "message": f"executor error: {exc}"},
            ).frame(run_id)
        state.result = _encoded(frame, shapes=False)
        sent = self.client.send(state.result)
        # Kept either way until the hub acknowledges it; said so when the hub is away.
        # DEBUG when all is well: a line per run costs the executor a fifth of its CPU.
        (log.debug if sent else log.info)(
            "run %s ended %s%s",
            run_id,
            result.status,
            "" if sent else "; kept until the hub is back",
        )

    # approvals

    async def _approve(self, req: ApprovalRequest) -> ApprovalDecision:
        """The engine's approval callback: the hub's decision on ``req`` (see the doc)."""
        key = (req.run_id, req.approval_id)
        early = self._early.pop(key, None)
        if early is not None:
            return early
        waiter: asyncio.Future[ApprovalDecision] = asyncio.get_running_loop().create_future()
        self._approvals[key] = waiter
        log.info("run %s: waiting for a decision on approval %s", req.run_id, req.approval_id)
        try:
            return await waiter
        finally:
            self._approvals.pop(key, None)

    def _decided(self, frame: ApprovalDecisionFrame) -> None:
        key = (frame.run_id, frame.approval_id)
        waiter = self._approvals.get(key)
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(frame.decision)
            return
        state = self.runs.get(frame.run_id)
        if state is None or state.result is not None:
            return  # a decision re-sent for a run that ended: nothing waits for it
        while len(self._early) >= EARLY_DECISIONS_MAX:
            self._early.pop(next(iter(self._early)))
        self._early[key] = frame.decision

    # codex login

    async def _check_login(self) -> None:
        if self.settings.exec_dry_run:
            self._set_login(True, "dry run: codex is not used")
            return
        try:
            status = await self.pipeline.engine.login_status(force=True)
        except Exception as exc:
            log.warning("codex login check failed: %s", exc)
            self._set_login(False, f"login check failed: {exc}")
            return
        self._set_login(status.logged_in, status.detail)

    async def _check_version(self) -> None:
        if self.settings.exec_dry_run:
            return  # codex is not used: its version says nothing about the runs
        try:
            self.codex_version = await self.pipeline.engine.codex_version()
        except Exception as exc:
            log.warning("codex --version failed: %s", exc)

    def _set_login(self, logged_in: bool, detail: str) -> None:
        login = {"logged_in": logged_in, "detail": detail}
        if login != self.login:
            self.login = login
            self.client.send(StatusFrame(login=LoginState(logged_in=logged_in, detail=detail)))

    async def _login_loop(self) -> None:
        while True:
            await asyncio.sleep(LOGIN_RECHECK_S)
            await self._check_login()

    # workspaces

    async def _sweep_loop(self) -> None:
        """Clean up idle workspaces now and then (a tenth of WORKSPACE_TTL, at most hourly)."""
        workspaces = self.pipeline.workspaces
        assert workspaces is not None
        every = min(self.settings.workspace_ttl / 10, 3600.0)
        while True:
            await asyncio.sleep(every)
            try:
                await workspaces.sweep()
            except Exception:
                log.exception("cleaning up workspaces failed; trying again later")
