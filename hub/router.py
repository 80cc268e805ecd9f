"""The router: which executor runs what, in what order, and where each reply goes.

It owns the live state of the hub: connected nodes, the queue, the runs not yet
finished. Everything it decides is written to the :class:`~hub.store.Store` before it is
acknowledged to anyone, so a restart of the hub resumes from the store.

Rules:
- A run goes to the connected executor with the most free slots; a session's next run
  prefers the executor that holds its codex thread.
- Runs of one session run one after another, in arrival order.
- The queue is bounded (``HUB_QUEUE_LIMIT``); past it :class:`QueueFull` is raised.
- An executor that disconnects has ``HUB_EXECUTOR_GRACE_S`` to come back and claim its
  runs; after that they fail with ``executor_lost``.
- Replies for runs that came from a bridge go through the store's outbox and are re-sent
  to a bridge of that platform until it acknowledges them.
- A bridge may name the status message it posted for a run (``status_ref``): kept in
  the run's origin, it goes with the run's later progress and its reply.
- While the store cannot write (disk full), new runs are refused
  (:class:`StoreUnwritable`, ``store_unavailable``), and so is a run whose own insert
  the store had to hold: it is not on disk, so it must not be answered as if it were.
  A run that was already going finishes and is answered from memory; its end is held
  and written once there is room, and its executor's result is acknowledged only then
  (the executor keeps it until then and re-sends it to a restarted hub).
- A bridge speaks only for its platform: its session keys are prefixed with it, and it
  cancels, resets, reads and acknowledges only that platform's sessions, runs and
  replies.
- A node id held by a live connection is not taken by a node with another credential.
- Every assigned run has a deadline (the executor's timeout plus ``HUB_RUN_GRACE_S``)
  and a budget of events (``HUB_RUN_MAX_EVENTS``, ``HUB_RUN_MAX_EVENT_BYTES``); past
  either, the hub cancels it on the executor and ends it itself.
- Whatever changes an executor's load or the queue (a run assigned, ended, submitted)
  publishes the node list and the queue's head (``type: queue``: each run's position and
  why it waits) once per loop turn, so the monitor never shows a stale load.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from hub.answer_stream import AnswerSoFar
from hub.bus import Bus, Subscription
from hub.metrics import Metrics
from hub.run_queue import RunQueue
from hub.settings import HubSettings
from hub.steering import Steering
from hub.store import (
    Delivery,
    Run,
    Store,
    StoreUnavailable,
    op_insert_run,
    op_record,
    op_set_delivery_payload,
    op_set_executor,
    op_set_origin,
)
from wire import (
    CLOSE_REPLACED,
    PROGRESS_ANSWER_CHARS,
    RECONNECT_MAX_S,
    AckFrame,
    AssignFrame,
    CancelFrame,
    CancelledFrame,
    DeliverFrame,
    ErrorCode,
    EventFrame,
    FrameModel,
    Hello,
    OkFrame,
    ProgressFrame,
    ResetSessionFrame,
    ResultAckFrame,
    ResultFrame,
    RunCancelFrame,
    SessionFrame,
    SessionStatusFrame,
    StateFrame,
    StatusFrame,
    StatusRefFrame,
    SteeredFrame,
    SubmitFrame,
    SubmittedFrame,
    error_frame,
)

log = logging.getLogger(__name__)


class RouterError(Exception):
    """Root of the router's errors; ``code`` is the machine-readable reason."""

    code: str = ErrorCode.ROUTER_ERROR


class QueueFull(RouterError):
    """The queue holds ``HUB_QUEUE_LIMIT`` runs already."""

    code = ErrorCode.QUEUE_FULL


class HubClosing(RouterError):
    """The hub is shutting down and takes no new runs."""

    code = ErrorCode.HUB_CLOSING


class StoreUnwritable(RouterError):
    """The store cannot write (disk full): no new run until it can."""

    code = ErrorCode.STORE_UNAVAILABLE

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"the hub cannot write to its store ({reason}), so it takes no new run until "
            "it can; try again later"
        )
        self.reason = reason


class NodeIdTaken(RouterError):
    """A live connection with another credential holds the node id a node asked for."""

    code = ErrorCode.NODE_ID_TAKEN


class Link(Protocol):
    """A connected node as the router sees it: an id and a way to send it a frame."""

    node_id: str

    def send(self, frame: dict[str, Any]) -> None:
        """Queue ``frame`` (built by :mod:`wire`, dumped by ``FrameModel.dump``)."""

    def close(self, code: int, reason: str) -> None: ...


@dataclass
class NodeInfo:
    """What the router knows about one connected node."""

    link: Link
    role: str
    name: str
    platform: str = ""
    capacity: int = 0
    login: dict[str, Any] | None = None
    busy: set[str] = field(default_factory=set)
    connected_at: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.time)
    assigned_total: int = 0
    #: The credential it presented: its role (executor, slack, ...), or the hub's secret.
    credential: str = ""
    #: Executors: the longest a run takes there, as its hello said (None: not said).
    timeout_s: float | None = None
    #: Executors: as their hello said (EXEC_LABELS, EXEC_ENGINE, `codex --version`).
    labels: list[str] = field(default_factory=list)
    engine: str = ""
    codex_version: str = ""

    @property
    def free(self) -> int:
        return self.capacity - len(self.busy)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.link.node_id,
            "role": self.role,
            "name": self.name,
            "online": True,
            "connected_at": self.connected_at,
            "last_seen": self.last_seen,
        }
        if self.role == "executor":
            data.update(capacity=self.capacity, busy=len(self.busy), login=self.login)
            data.update(
                labels=self.labels,
                engine=self.engine,
                codex_version=self.codex_version,
                runs=sorted(self.busy),
            )
        else:
            data["platform"] = self.platform
        return data


@dataclass
class Live:
    """A run that has not finished, with the router's bookkeeping."""

    run: Run
    done: asyncio.Future[Run]
    seq: int = 0
    exec_seq: int = 0
    assigned_at: float | None = None
    finishing: bool = False
    cancel_requested: bool = False
    session_gen: int = 0
    last_detail: str | None = None
    #: What the executor is told besides the prompt (instructions, output schema, images).
    options: dict[str, Any] | None = None
    #: The executor that holds the codex thread this run resumes (without a session).
    prefer: str | None = None
    #: Once finishing: True when its end is on disk, False when the store failed.
    stored: asyncio.Future[bool] | None = None
    #: Events (and their bytes) its executor sent; past the limits the run is ended.
    events: int = 0
    event_bytes: int = 0
    over_limit: bool = False
    #: The conversation's diff from the run's ``workspace`` event, for the chat reply.
    diff: str | None = None
    #: The pull request the run's ``workspace`` event names (bridges offer one if None).
    pr_url: str | None = None
    #: The answer as codex writes it (``answer_delta`` events), for the chat's status.
    answer: AnswerSoFar = field(default_factory=AnswerSoFar)


@dataclass
class Ticket:
    """What a submitter gets back: the run, its outcome to await, and its live events."""

    run: Run
    done: asyncio.Future[Run]
    events: Subscription | None
    position: int
    duplicate: bool = False


#: Store writes that may wait for the writer thread before a new run waits for them.
STORE_BACKLOG_LIMIT = 2000

_ids = random.Random(secrets.randbits(64))


#: Longest wait between two sends of an unacknowledged reply.
REDELIVER_MAX_S = 300.0
#: Longest reconnect backoff of a node: ``wire.RECONNECT_MAX_S`` (imported above).
#: How many queued runs the ``queue`` message names (the rest are counted).
QUEUE_SHOWN = 100


def _reply_text(run: Run) -> str:
    """The answer as the chat gets it; a run asked from the monitor in a chat's
    conversation says so first, or the thread would show an answer to no question."""
    answer = run.answer or ""
    if run.origin.get("via") != "monitor":
        return answer
    asked = " ".join(run.prompt.split())
    if len(asked) > 200:
        asked = asked[:200] + "…"
    return f"(Asked from the monitor: {asked})\n\n{answer}"


def _attachment_options(
    attachments: dict[str, list[dict[str, str]]] | None,
) -> dict[str, Any] | None:
    """The assign options of a bridge's attachments: its images and files only."""
    if not attachments:
        return None
    kept = {k: attachments[k] for k in ("images", "files") if attachments.get(k)}
    return kept or None


def _json_size(value: Any) -> int:
    """Bytes of ``value`` as JSON (a lone surrogate, which orjson refuses, included)."""
    try:
        return len(orjson.dumps(value))
    except TypeError:
        return len(json.dumps(value, separators=(",", ":")))


def own_session(platform: str, key: str) -> str:
    """A bridge's session key within its platform: ``key`` if it starts with
    ``<platform>:``, else ``key`` with that prefix (so it never names another's)."""
    return key if key.startswith(f"{platform}:") else f"{platform}:{key}"


def new_run_id() -> str:
    """A short random run id (the API that names runs needs a key; ids need not be secret)."""
    return f"run_{_ids.getrandbits(64):016x}"


class Router:
    """Routes runs to executors and replies to bridges; see the module docstring."""

    def __init__(
        self,
        store: Store,
        bus: Bus,
        settings: HubSettings,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.bus = bus
        self.settings = settings
        self.executors: dict[str, NodeInfo] = {}
        self.bridges: dict[str, NodeInfo] = {}
        self.live: dict[str, Live] = {}
        self.session_active: dict[str, str] = {}
        self.queue = RunQueue(self.session_active)
        #: A session's codex thread and holder, cached while the session is in use;
        #: dropped once it is idle and its state is on disk (the store is the truth).
        self.sessions: dict[str, tuple[str | None, str | None]] = {}
        self.session_gen: dict[str, int] = {}
        self._dedupe: dict[str, str] = {}
        self.pending: dict[str, Delivery] = {}
        self._next_send: dict[str, float] = {}
        self._timers: dict[str, asyncio.Task[None]] = {}
        #: The hub's own deadline of each assigned run.
        self._deadlines: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Ends the store failed to write, by run id: written when the result comes again.
        self._unstored: dict[str, tuple[Run, Delivery | None, Any, Any]] = {}
        #: Of those, the ends the store holds (disk full): a flush tells when they are on disk.
        self._held_ends: set[str] = set()
        self._redeliver_task: asyncio.Task[None] | None = None
        self.metrics = metrics
        self.closing = False
        self._live_state_soon: asyncio.Handle | None = None
        #: A message into a working conversation goes into its running turn (hub.steering).
        self.steering = Steering(self)

    # lifecycle

    async def start(self) -> None:
        """Reload unfinished runs and pending replies from the store."""
        self.store.on_insert_held = self._insert_held
        self.store.on_writable_change = self._writable_change
        for run in await self.store.unfinished_runs():
            live = Live(run, asyncio.get_running_loop().create_future())
            live.options = run.origin.get("options") or None
            live.seq, live.exec_seq = await self.store.event_positions(run.id)
            self.live[run.id] = live
            if run.executor is None:
                self.queue.add(run.id, run.session_key)
            else:
                if run.session_key:
                    self.session_active[run.session_key] = run.id
                # Nodes reconnect to a restarted hub with jittered backoff (up to
                # RECONNECT_MAX_S): give them that long to claim their runs.
                grace = max(self.settings.executor_grace_s, RECONNECT_MAX_S + 5.0)
                self._start_timer(
                    run.id,
                    self._lose(
                        run.id,
                        run.executor,
                        grace,
                        f"the hub restarted while this run was going and its executor did not "
                        f"come back for it within {grace:g} s; the run's outcome is unknown",
                    ),
                    f"Router:grace:{run.id}",
                )
        for delivery in await self.store.pending_deliveries():
            self.pending[delivery.id] = delivery
        self._redeliver_task = asyncio.create_task(self._redeliver_loop(), name="Router:redeliver")
        if self.live or self.pending:
            log.info(
                "recovered %d unfinished runs and %d undelivered replies",
                len(self.live),
                len(self.pending),
            )

    async def close(self) -> None:
        """Stop timers and background work; runs stay in the store for the next start."""
        self.closing = True
        self.steering.close()
        if self._live_state_soon is not None:
            self._live_state_soon.cancel()
            self._live_state_soon = None
        tasks = [*self._timers.values(), *self._tasks]
        if self._redeliver_task is not None:
            tasks.append(self._redeliver_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._timers.clear()
        self._tasks.clear()
        for handle in self._deadlines.values():
            handle.cancel()
        self._deadlines.clear()
        for live in self.live.values():
            if not live.done.done():
                live.done.cancel()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("router task %s failed", task.get_name(), exc_info=task.exception())

    # submitting and cancelling

    async def submit(
        self,
        prompt: str,
        *,
        origin: dict[str, Any],
        session_key: str | None = None,
        optimize: bool | None = None,
        watch: bool = False,
        run_id: str | None = None,
        dedupe_key: str | None = None,
        principal: str | None = None,
        note: str | None = None,
        resume: tuple[str, str | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> Ticket:
        """Store a new run and queue it; ``watch`` subscribes to its events first.

        A ``dedupe_key`` already used returns the run it started (``Ticket.duplicate``).
        ``principal`` owns the run (hub.auth; None for chat bridges): the live feed shows
        it to that principal and to operators only. ``note`` is recorded as the run's
        first note (an operator continuing someone else's conversation, say).
        ``resume`` (thread id, executor holding it) continues that codex thread, for a
        run without a session; ``options`` go to the executor with the prompt (see
        wire's ``assign``).
        """
        if self.closing:
            raise HubClosing("the hub is shutting down")
        if dedupe_key is not None:
            existing = await self._by_dedupe_key(dedupe_key, watch)
            if existing is None and dedupe_key in self._dedupe:
                # Another submit with this key got in while the store was asked.
                existing = await self._by_dedupe_key(dedupe_key, watch)
            if existing is not None:
                return existing
        if self.store.unwritable is not None:
            raise StoreUnwritable(self.store.unwritable)
        if self.store.backlog > STORE_BACKLOG_LIMIT:
            # The writer thread is behind (the loop kept the GIL): new work waits until
            # what is queued is on disk, so the lag, and the memory it holds, stay bounded.
            try:
                await self.store.flush()
            except StoreUnavailable as exc:  # the disk filled meanwhile
                raise StoreUnwritable(exc.reason) from None
        if len(self.queue) >= self.settings.queue_limit:
            raise QueueFull(
                f"{len(self.queue)} runs are already waiting (HUB_QUEUE_LIMIT="
                f"{self.settings.queue_limit}); try again later"
            )
        if session_key and session_key not in self.sessions:
            self.sessions[session_key] = await self.store.get_session(session_key)
        now = time.time()
        run = Run(
            id=run_id or new_run_id(),
            prompt=prompt,
            origin=origin,
            source=str(origin.get("source", "http")),
            user=origin.get("user"),
            created_at=now,
            updated_at=now,
            session_key=session_key,
            optimize=optimize,
            dedupe_key=dedupe_key,
            principal=principal,
            thread_id=resume[0] if resume and not session_key else None,
        )
        if dedupe_key is not None:
            self._dedupe[dedupe_key] = run.id
        # Posted, not awaited: the store applies writes in order, so everything later
        # about this run lands after it. Who must not be told before it is on disk (a
        # bridge's "submitted") waits for store.flush(). A copy: the writer thread reads
        # it later, and the live run may have moved on by then (a cancel whose own write
        # failed would be stored with the insert; a half-made change could be torn).
        self.store.post(op_insert_run, run.snapshot())
        live = Live(run, asyncio.get_running_loop().create_future())
        live.options = options or None
        live.prefer = resume[1] if resume else None
        self.live[run.id] = live
        self.queue.add(run.id, session_key)
        if self.metrics is not None:
            self.metrics.run_submitted(run)
        events = self.bus.subscribe(run.id) if watch else None
        position = self.position(run)
        self._record(live, "state", {"state": "queued", "position": position})
        if note:
            self._record(live, "note", {"message": note})
        self._publish_run(run)
        self._progress(live, position=position)
        self._dispatch()
        self._live_state_changed()
        log.debug("run %s queued from %s", run.id, run.source, extra={"run_id": run.id})
        return Ticket(run, live.done, events, position)

    async def join(self, run_id: str, watch: bool = False) -> Ticket | None:
        """A ticket for an existing run: its outcome when it ends (or has ended)."""
        live = self.live.get(run_id)
        if live is not None:
            events = self.bus.subscribe(run_id) if watch else None
            return Ticket(live.run, live.done, events, self.position(live.run), duplicate=True)
        run = await self.store.get_run(run_id)
        if run is None:
            return None
        done: asyncio.Future[Run] = asyncio.get_running_loop().create_future()
        done.set_result(run)
        return Ticket(run, done, None, 0, duplicate=True)

    async def _by_dedupe_key(self, key: str, watch: bool) -> Ticket | None:
        run_id = self._dedupe.get(key)
        live = self.live.get(run_id) if run_id else None
        if live is not None:
            events = self.bus.subscribe(live.run.id) if watch else None
            return Ticket(live.run, live.done, events, self.position(live.run), duplicate=True)
        run = await self.store.run_by_dedupe_key(key)
        if run is None:
            return None
        live = self.live.get(run.id)
        if live is not None:
            return Ticket(live.run, live.done, None, self.position(live.run), duplicate=True)
        done: asyncio.Future[Run] = asyncio.get_running_loop().create_future()
        done.set_result(run)
        return Ticket(run, done, None, 0, duplicate=True)

    def position(self, run: Run) -> int:
        """How many runs of the same session are ahead of this one (O(1) for a new run)."""
        if not run.session_key:
            return 0
        ahead = 1 if self.session_active.get(run.session_key) not in (None, run.id) else 0
        return ahead + self.queue.position(run.id, run.session_key)

    async def cancel(self, run_id: str, reason: str = "cancelled on request") -> bool:
        """Cancel a run; False when it is unknown or already finished."""
        live = self.live.get(run_id)
        if live is None or live.finishing:
            return False
        run = live.run
        if run.executor is None:
            self._remove_from_queue(run_id)
            await self._finish(
                live, "cancelled", error={"code": ErrorCode.CANCELLED, "message": reason}
            )
            return True
        live.cancel_requested = True
        node = self.executors.get(run.executor)
        if node is None:
            await self._finish(
                live, "cancelled", error={"code": ErrorCode.CANCELLED, "message": reason}
            )
            return True
        node.link.send(RunCancelFrame(run_id=run_id).dump())
        self._record(live, "note", {"message": reason})
        # The executor confirms with a result; if it never does, do not hang.
        self._start_timer(
            run_id,
            self._cancel_unconfirmed(run_id, reason),
            f"Router:cancel:{run_id}",
        )
        return True

    async def _cancel_unconfirmed(self, run_id: str, reason: str) -> None:
        await asyncio.sleep(self.settings.executor_grace_s)
        self._timers.pop(run_id, None)
        live = self.live.get(run_id)
        if live is not None and not live.finishing:
            await self._finish(
                live,
                "cancelled",
                error={
                    "code": ErrorCode.CANCELLED,
                    "message": f"{reason} (executor did not confirm)",
                },
            )

    def _remove_from_queue(self, run_id: str) -> None:
        self.queue.discard(run_id)

    async def reset_session(self, session_key: str) -> None:
        """Forget a session's codex thread: its next run starts a fresh conversation.

        A run of the session that is going at the time does not write its thread back
        when it ends: the reset wins.
        """
        self.session_gen[session_key] = self.session_gen.get(session_key, 0) + 1
        self.sessions[session_key] = (None, None)
        try:
            await self.store.set_session(session_key, None, None)
        except StoreUnavailable:
            return  # held by the store (disk full): written once it has room
        self._release_session(session_key)

    def _release_session(self, key: str) -> None:
        """Forget an idle session's cached state; the store has it (the store is the truth).

        Only once nothing of the session is going or queued: a later run reads it back.
        """
        if key in self.session_active or self.queue.has_session(key):
            return
        self.sessions.pop(key, None)
        self.session_gen.pop(key, None)

    # dispatching

    def _dispatch(self) -> None:
        """Assign ready runs, oldest first, while an executor has a free slot.

        O(log n) per run assigned: the queue keeps which runs may start (see
        hub.run_queue), so a session's waiting runs are not walked.
        """
        if not self.queue or not any(n.free > 0 for n in self.executors.values()):
            return
        while (run_id := self.queue.peek_ready()) is not None:
            live = self.live.get(run_id)
            if live is None or live.finishing:
                self.queue.discard(run_id)
                continue
            node = self._pick_executor(live.run.session_key, live.prefer)
            if node is None:
                break
            self._assign(live, node)  # the session is busy now: its next run waits
            self.queue.discard(run_id)
            self._live_state_changed()

    def _pick_executor(self, session_key: str | None, prefer: str | None = None) -> NodeInfo | None:
        holder = prefer
        if session_key:
            holder = self.sessions.get(session_key, (None, None))[1]
        if holder:
            node = self.executors.get(holder) if holder else None
            if node is not None and node.free > 0:
                return node
        best: NodeInfo | None = None
        for node in self.executors.values():
            if node.free <= 0:
                continue
            if best is None or (node.free, -node.assigned_total) > (
                best.free,
                -best.assigned_total,
            ):
                best = node
        return best

    def _assign(self, live: Live, node: NodeInfo) -> None:
        run = live.run
        run.executor = node.link.node_id
        live.assigned_at = time.time()
        live.session_gen = self.session_gen.get(run.session_key or "", 0)
        node.busy.add(run.id)
        node.assigned_total += 1
        self._arm_deadline(live, node)
        if self.metrics is not None:
            self.metrics.run_assigned(run, live.assigned_at)
        if run.session_key:
            self.session_active[run.session_key] = run.id
        if run.session_key:
            thread_id = self.sessions.get(run.session_key, (None, None))[0]
        else:
            thread_id = run.thread_id  # set at submit when the run resumes a thread
        assign = AssignFrame(
            run_id=run.id,
            prompt=run.prompt,
            thread_id=thread_id,
            optimize=run.optimize,
            origin=run.origin,
            session_key=run.session_key,
            repo=run.origin.get("repo"),
            open_pr=bool(run.origin.get("open_pr")),
        )
        if live.options:  # left out when there are none, as older hubs did
            assign = assign.model_copy(update={"options": live.options})
        node.link.send(assign.dump())
        self._record(
            live,
            "assigned",
            {"executor": node.name or node.link.node_id},
            fields={"executor": run.executor},
        )

    # nodes

    def check_node_id(self, node_id: str, credential: str) -> None:
        """Raise :class:`NodeIdTaken` when a live connection that presented another
        credential holds ``node_id`` (the same credential may replace its own: a node
        that reconnects before its old connection is seen to be gone)."""
        for nodes in (self.executors, self.bridges):
            holder = nodes.get(node_id)
            if holder is not None and holder.credential != credential:
                raise NodeIdTaken(
                    f"node id {node_id[:40]!r} is held by a live {holder.role} with another "
                    "credential; pick another NODE_NAME"
                )

    def executor_connected(self, link: Link, hello: Hello, *, credential: str = "") -> None:
        """Register an executor; it claims the runs it still has going."""
        old = self.executors.get(link.node_id)
        if old is not None and old.link is not link:
            old.link.close(CLOSE_REPLACED, "replaced by a newer connection of this node")
        node = NodeInfo(
            link=link,
            role="executor",
            name=hello.name or link.node_id,
            capacity=hello.capacity,
            login=hello.login.model_dump() if hello.login else None,
            credential=credential,
            timeout_s=hello.timeout_s,
            labels=list(hello.labels),
            engine=hello.engine,
            codex_version=hello.codex_version,
        )
        self.executors[link.node_id] = node
        claimed = set(hello.active_runs)
        for run_id, live in list(self.live.items()):
            if live.run.executor != link.node_id or live.finishing:
                continue
            if run_id in claimed:
                node.busy.add(run_id)
                self._cancel_timer(run_id)
                if run_id not in self._deadlines:  # recovered by a restarted hub
                    self._arm_deadline(live, node)
            elif live.run.state == "queued":
                # It never reached the executor: give it to whoever is free.
                self._cancel_timer(run_id)
                self._unassign(live)
            else:
                self._cancel_timer(run_id)
                self._spawn(
                    self._finish(
                        live,
                        "failed",
                        error={
                            "code": ErrorCode.EXECUTOR_LOST,
                            "message": f"executor {node.name} restarted and lost this run",
                        },
                    ),
                    f"Router:lost:{run_id}",
                )
        log.info("executor %s connected (capacity %d)", node.name, node.capacity)
        self._publish_nodes()
        self._dispatch()

    def _unassign(self, live: Live) -> None:
        run = live.run
        run.executor = None
        self._disarm_deadline(run.id)
        if run.session_key and self.session_active.get(run.session_key) == run.id:
            del self.session_active[run.session_key]
        self.queue.add(run.id, run.session_key, front=True)
        self.store.post(op_set_executor, run.id, None)

    def executor_disconnected(self, link: Link) -> None:
        """Give the executor's runs a grace period to be claimed back, then fail them."""
        node = self.executors.get(link.node_id)
        if node is None or node.link is not link:
            return
        del self.executors[link.node_id]
        for run_id in node.busy:
            self._start_timer(
                run_id,
                self._lose(
                    run_id,
                    link.node_id,
                    self.settings.executor_grace_s,
                    f"executor {node.name} disconnected and did not come back for this run "
                    f"within {self.settings.executor_grace_s:g} s; the run's outcome is unknown",
                ),
                f"Router:grace:{run_id}",
            )
        log.warning("executor %s disconnected with %d runs", node.name, len(node.busy))
        self._publish_nodes()

    def _start_timer(self, run_id: str, coro: Any, name: str) -> None:
        self._cancel_timer(run_id)
        self._timers[run_id] = asyncio.create_task(coro, name=name)

    def _cancel_timer(self, run_id: str) -> None:
        task = self._timers.pop(run_id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    # the hub's own limits on a run

    def _arm_deadline(self, live: Live, node: NodeInfo) -> None:
        """Start the run's deadline: the executor's timeout (else HUB_RUN_TIMEOUT_S)
        plus HUB_RUN_GRACE_S."""
        timeout = node.timeout_s or self.settings.run_timeout_s
        limit = timeout + self.settings.run_grace_s
        self._disarm_deadline(live.run.id)
        self._deadlines[live.run.id] = asyncio.get_running_loop().call_later(
            limit, self._deadline_passed, live.run.id, timeout
        )

    def _disarm_deadline(self, run_id: str) -> None:
        handle = self._deadlines.pop(run_id, None)
        if handle is not None:
            handle.cancel()

    def _deadline_passed(self, run_id: str, timeout: float) -> None:
        self._deadlines.pop(run_id, None)
        live = self.live.get(run_id)
        if live is None or live.finishing:
            return
        grace = self.settings.run_grace_s
        self._end_early(
            live,
            "timed_out",
            ErrorCode.HUB_DEADLINE,
            f"the executor did not finish this run within {timeout:g} s (its timeout) "
            f"plus {grace:g} s (HUB_RUN_GRACE_S); the hub ended it",
        )

    def _over_limit(self, live: Live) -> bool:
        """End the run if its events went past HUB_RUN_MAX_EVENTS or _BYTES; True if so."""
        settings = self.settings
        if live.events > settings.run_max_events:
            code = ErrorCode.TOO_MANY_EVENTS
            message = (
                f"the run sent more than {settings.run_max_events} events "
                "(HUB_RUN_MAX_EVENTS); the hub ended it"
            )
        elif live.event_bytes > settings.run_max_event_bytes:
            code = ErrorCode.TOO_MANY_EVENT_BYTES
            message = (
                f"the run's events passed {settings.run_max_event_bytes} bytes "
                "(HUB_RUN_MAX_EVENT_BYTES); the hub ended it"
            )
        else:
            return False
        live.over_limit = True
        self._end_early(live, "failed", code, message)
        return True

    def _end_early(self, live: Live, status: str, code: str, message: str) -> None:
        """Stop a run on its executor and end it now, without waiting for its result."""
        run = live.run
        node = self.executors.get(run.executor) if run.executor else None
        if node is not None:
            node.link.send(RunCancelFrame(run_id=run.id).dump())
        log.warning("run %s: %s", run.id, message, extra={"run_id": run.id})
        self._spawn(
            self._finish(live, status, error={"code": code, "message": message}),
            f"Router:limit:{run.id}",
        )

    async def _lose(self, run_id: str, node_id: str, grace: float, why: str) -> None:
        await asyncio.sleep(grace)
        self._timers.pop(run_id, None)
        live = self.live.get(run_id)
        if live is None or live.finishing or live.run.executor != node_id:
            return
        if node_id in self.executors:
            return
        await self._finish(
            live,
            "failed",
            error={"code": ErrorCode.EXECUTOR_LOST, "message": f"executor lost: {why}"},
        )

    def bridge_connected(self, link: Link, hello: Hello, *, credential: str = "") -> None:
        """Register a bridge and send it every reply still waiting for its platform."""
        old = self.bridges.get(link.node_id)
        if old is not None and old.link is not link:
            old.link.close(CLOSE_REPLACED, "replaced by a newer connection of this node")
        self.bridges[link.node_id] = NodeInfo(
            link=link,
            role="bridge",
            name=hello.name or link.node_id,
            platform=hello.platform,
            credential=credential,
        )
        for delivery in list(self.pending.values()):
            if delivery.platform == hello.platform:
                delivery.attempts = 0  # a fresh bridge starts the backoff over
                self._send_delivery(delivery)
        log.info("bridge %s (%s) connected", link.node_id, hello.platform)
        self._publish_nodes()

    def bridge_disconnected(self, link: Link) -> None:
        """Forget a bridge; its replies wait in the outbox."""
        node = self.bridges.get(link.node_id)
        if node is not None and node.link is link:
            del self.bridges[link.node_id]
            self._publish_nodes()

    def heard(self, link: Link) -> None:
        """A node answered a websocket ping or pinged: its ``last_seen`` is now."""
        node = self.executors.get(link.node_id) or self.bridges.get(link.node_id)
        if node is not None and node.link is link:
            node.last_seen = time.time()
            self._live_state_changed()

    def nodes(self) -> list[dict[str, Any]]:
        """Connected nodes, executors first."""
        return [n.to_dict() for n in (*self.executors.values(), *self.bridges.values())]

    # frames from executors

    async def on_executor_frame(self, link: Link, frame: Any) -> None:
        """Apply one frame from an executor."""
        node = self.executors.get(link.node_id)
        if node is not None:
            node.last_seen = time.time()
        if isinstance(frame, EventFrame):
            self._on_event(link, frame)
        elif isinstance(frame, StateFrame):
            self._on_state(link, frame)
        elif isinstance(frame, ResultFrame):
            await self._on_result(link, frame)
        elif isinstance(frame, SteeredFrame):
            self.steering.answered(link.node_id, frame)
        elif isinstance(frame, StatusFrame) and node is not None:
            if frame.capacity is not None:
                node.capacity = frame.capacity
            if frame.login is not None:
                node.login = frame.login.model_dump()
            self._publish_nodes()
            self._dispatch()

    def _owned(self, link: Link, run_id: str) -> Live | None:
        live = self.live.get(run_id)
        if live is None or live.finishing or live.run.executor != link.node_id:
            return None
        return live

    def _on_event(self, link: Link, frame: EventFrame) -> None:
        live = self._owned(link, frame.run_id)
        if live is None or frame.seq <= live.exec_seq or live.over_limit:
            return
        live.exec_seq = frame.seq
        live.events += 1
        live.event_bytes += _json_size(frame.event)
        if self._over_limit(live):
            return
        event = dict(frame.event)
        kind = str(event.pop("kind", "codex"))
        if kind == "workspace" and isinstance(event.get("diff"), str):
            live.diff = event["diff"] or None
            live.pr_url = event.get("pr_url") if isinstance(event.get("pr_url"), str) else None
        self._record(live, kind, event, exec_seq=frame.seq)
        if live.answer.feed(frame.event):
            self._progress(live)  # the chat's status message grows with the answer
        summary = event.get("summary")
        if summary and summary != live.last_detail:
            live.last_detail = summary
            self._progress(live, detail=summary)

    def _on_state(self, link: Link, frame: StateFrame) -> None:
        live = self._owned(link, frame.run_id)
        if live is None or live.over_limit:
            return
        # Each state is stored as an event too: it counts against the same caps.
        live.events += 1
        live.event_bytes += len(frame.state) + len(frame.effective_prompt or "")
        if self._over_limit(live):
            return
        run = live.run
        run.state = frame.state
        fields: dict[str, Any] = {"state": frame.state}
        if run.started_at is None:
            run.started_at = fields["started_at"] = time.time()
        if frame.effective_prompt is not None:
            run.effective_prompt = fields["effective_prompt"] = frame.effective_prompt
        self._record(live, "state", {"state": frame.state}, fields=fields)
        self._publish_run(run)
        self._progress(live)

    async def _on_result(self, link: Link, frame: ResultFrame) -> None:
        live = self.live.get(frame.run_id)
        stored = True
        if live is not None and live.run.executor == link.node_id:
            if live.finishing:
                if live.stored is not None:
                    stored = await asyncio.shield(live.stored)
            else:
                status = frame.status
                if live.cancel_requested and status == "failed":
                    status = "cancelled"
                stored = await self._finish(
                    live,
                    status,
                    answer=frame.answer,
                    thread_id=frame.thread_id,
                    usage=frame.usage,
                    error=frame.error,
                    effective_prompt=frame.effective_prompt,
                )
        elif frame.run_id in self._unstored:
            # Sent again after the store failed to record the run's end: try once more
            # (without the reply if the bridge has acknowledged it meanwhile).
            run, delivery, session, event = self._unstored[frame.run_id]
            if delivery is not None and delivery.id not in self.pending:
                delivery = None
            stored = await self._store_end(run, delivery, session, event)
        # Acknowledge even a result the hub no longer waits for, or the executor keeps it;
        # but not one whose end the store failed to record: the executor keeps that.
        if stored:
            link.send(ResultAckFrame(run_id=frame.run_id).dump())

    # frames from bridges

    async def on_bridge_frame(self, link: Link, frame: Any) -> FrameModel | None:
        """Apply one frame from a bridge; returns the answer frame, if any."""
        node = self.bridges.get(link.node_id)
        platform = node.platform if node else "bridge"
        if node is not None:
            node.last_seen = time.time()
        if isinstance(frame, AckFrame):
            delivery = self.pending.get(frame.delivery_id)
            if delivery is None:
                return None  # acknowledged already
            if delivery.platform != platform:
                log.warning(
                    "bridge %s (%s) acknowledged a %s reply; ignored",
                    link.node_id,
                    platform,
                    delivery.platform,
                )
                return error_frame(
                    ErrorCode.UNKNOWN_DELIVERY,
                    f"no {platform} reply {frame.delivery_id} is waiting",
                )
            self.pending.pop(frame.delivery_id, None)
            self._next_send.pop(frame.delivery_id, None)
            try:
                await self.store.ack_delivery(frame.delivery_id)
            except StoreUnavailable:
                pass  # held by the store (disk full): written once it has room
            return None
        if isinstance(frame, StatusRefFrame):
            return await self._on_status_ref(platform, frame)
        if isinstance(frame, SubmitFrame):
            origin = {**frame.origin, "source": platform, "platform": platform}
            key = own_session(platform, frame.session_key) if frame.session_key else None
            dedupe = f"{platform}:{frame.dedupe_key}" if frame.dedupe_key else None
            steered = None
            if not frame.attachments and not origin.get("open_pr"):
                if steered_into := self.steering.already(dedupe):
                    return SubmittedFrame(req_id=frame.req_id, run_id=steered_into, steered=True)
                steered = await self.steering.steer(key, frame.prompt, dedupe_key=dedupe)
                if steered is not None and steered.ok:
                    return SubmittedFrame(req_id=frame.req_id, run_id=steered.run_id, steered=True)
            try:
                ticket = await self.submit(
                    frame.prompt,
                    origin=origin,
                    session_key=key,
                    optimize=frame.optimize,
                    dedupe_key=dedupe,
                    options=_attachment_options(frame.attachments),
                    note=steered.note() if steered is not None else None,
                )
            except RouterError as exc:
                return error_frame(exc.code, str(exc), frame.req_id)
            try:
                await self.store.flush()  # the bridge hears "submitted" only once on disk
            except Exception as exc:
                # Not on disk: refuse it, rather than run what the bridge hears failed.
                (log.warning if isinstance(exc, StoreUnavailable) else log.exception)(
                    "run %s: the store failed%s; refusing it",
                    ticket.run.id,
                    f" ({exc.reason})" if isinstance(exc, StoreUnavailable) else "",
                    extra={"run_id": ticket.run.id},
                )
                if not ticket.duplicate:
                    await self.cancel(ticket.run.id, "the hub could not store this request")
                if isinstance(exc, StoreUnavailable):
                    return error_frame(
                        ErrorCode.STORE_UNAVAILABLE, str(StoreUnwritable(exc.reason)), frame.req_id
                    )
                return error_frame(
                    ErrorCode.STORE_ERROR,
                    "the hub could not store this request, so it will not run; try again",
                    frame.req_id,
                )
            submitted = SubmittedFrame(
                req_id=frame.req_id,
                run_id=ticket.run.id,
                position=ticket.position,
                duplicate=ticket.duplicate,
            )
            if steered is not None and steered.error is not None:
                submitted = submitted.model_copy(update={"steer_error": steered.error[:1000]})
            return submitted
        if isinstance(frame, CancelFrame):
            targets: list[str] = []
            if frame.run_id:
                live = self.live.get(frame.run_id)
                if live is not None and live.run.origin.get("platform") == platform:
                    targets.append(frame.run_id)
            elif frame.session_key:
                key = own_session(platform, frame.session_key)
                if key in self.session_active:
                    targets.append(self.session_active[key])
            cancelled = [rid for rid in targets if await self.cancel(rid, "cancelled from chat")]
            return CancelledFrame(req_id=frame.req_id, run_ids=cancelled)
        if isinstance(frame, ResetSessionFrame):
            await self.reset_session(own_session(platform, frame.session_key))
            return OkFrame(req_id=frame.req_id)
        if isinstance(frame, SessionStatusFrame):
            key = own_session(platform, frame.session_key)
            active_id = self.session_active.get(key)
            active = self.live.get(active_id) if active_id else None
            queued = [
                self.live[rid].run.summary()
                for rid in self.queue.session_runs(key)
                if rid in self.live
            ]
            return SessionFrame(
                req_id=frame.req_id,
                active=active.run.summary() if active else None,
                queued=queued,
            )
        return None

    async def _on_status_ref(self, platform: str, frame: StatusRefFrame) -> FrameModel | None:
        """Keep where a run's status message is, in its ``origin`` (see wire).

        Replaced, never mutated: a write queued earlier may still read the old dict.
        """
        live = self.live.get(frame.run_id)
        if live is not None and live.stored is not None:
            # Finishing: its reply is being stored; once it is, update that instead.
            await asyncio.shield(live.stored)
            live = None
        if live is not None:
            run = live.run
            if run.origin.get("platform") == platform:
                if run.origin.get("status_ref") != frame.ref:
                    run.origin = {**run.origin, "status_ref": frame.ref}
                    self.store.post(op_set_origin, run.id, run.origin)
                return None
        else:
            delivery = self.pending.get(frame.run_id)  # a reply's id is its run's id
            if (
                delivery is not None
                and delivery.run_id == frame.run_id
                and delivery.platform == platform
            ):
                origin = dict(delivery.payload.get("origin") or {})
                if origin.get("status_ref") != frame.ref:
                    origin["status_ref"] = frame.ref
                    delivery.payload = {**delivery.payload, "origin": origin}
                    self.store.post(op_set_origin, frame.run_id, origin)
                    self.store.post(op_set_delivery_payload, delivery.id, delivery.payload)
                return None
        return error_frame(
            ErrorCode.UNKNOWN_RUN,
            f"no unfinished run or unacknowledged reply {frame.run_id} from {platform}",
            frame.req_id,
        )

    # finishing

    async def _finish(self, live: Live, status: str, **fields: Any) -> bool:
        """End a run; True once its end is on disk (False: the store failed, logged).

        Whatever the store does, the caller is answered, the reply goes to the bridge
        and the run's slot, session and in-memory state are released.
        """
        if live.finishing:
            return False
        live.finishing = True
        live.stored = asyncio.get_running_loop().create_future()
        run = live.run
        now = time.time()
        for name, value in fields.items():
            if value is not None:
                setattr(run, name, value)
        run.state = status
        run.finished_at = now
        self._cancel_timer(run.id)
        self._disarm_deadline(run.id)
        self._remove_from_queue(run.id)
        node = self.executors.get(run.executor) if run.executor else None
        if node is not None:
            node.busy.discard(run.id)
        self._live_state_changed()
        session = None
        key = run.session_key
        if key:
            if self.session_active.get(key) == run.id:
                del self.session_active[key]
                self.queue.session_freed(key)
            if run.thread_id and live.session_gen == self.session_gen.get(key, 0):
                self.sessions[key] = (run.thread_id, run.executor)
                session = (key, run.thread_id, run.executor)
        delivery = None
        platform = run.origin.get("platform")
        if platform:
            delivery = Delivery(
                id=run.id,
                run_id=run.id,
                platform=str(platform),
                created_at=now,
                payload={
                    "run_id": run.id,
                    "origin": run.origin,
                    "status": status,
                    "answer": _reply_text(run),
                    "error": run.error,
                    "usage": run.usage,
                    # The run's workspace changes, attached in full by the bridge.
                    **({"diff": live.diff} if live.diff else {}),
                    **({"pr_url": live.pr_url} if live.pr_url else {}),
                },
            )
        final = {"state": status, "error": run.error}
        seq, ts = self._publish_event(live, "state", final)
        self._dispatch()
        # The waiting caller may answer before the commit: the executor keeps re-sending
        # the result until result_ack, which is sent only after the commit below.
        if not live.done.done():
            live.done.set_result(run)
        stored = False
        try:
            stored = await self._store_end(run, delivery, session, (seq, ts, "state", final, None))
        finally:
            live.stored.set_result(stored)  # also when cancelled: nobody waits for ever
        self.live.pop(run.id, None)
        if run.dedupe_key:
            self._dedupe.pop(run.dedupe_key, None)
        if key and stored:
            self._release_session(key)
        self._publish_run(run)
        if delivery is not None:
            self.pending[delivery.id] = delivery
            self._send_delivery(delivery)
        if self.metrics is not None:
            self.metrics.run_finished(run)
        # A success is in the store, the metrics and the monitor: a line for each would
        # cost the hub a tenth of its time at full load (see docs/benchmarks.md).
        # Every other ending is worth an operator's eye, with its reason.
        if status == "succeeded":
            log.debug("run %s ended %s", run.id, status, extra={"run_id": run.id})
        else:
            log.info(
                "run %s ended %s: %s",
                run.id,
                status,
                (run.error or {}).get("message", "no reason given"),
                extra={"run_id": run.id},
            )
        return stored

    async def _store_end(
        self, run: Run, delivery: Delivery | None, session: Any, event: Any
    ) -> bool:
        """Write a run's end; on failure log it once and keep it to write again.

        The result is then not acknowledged: the executor keeps it and sends it again
        (after a reconnect, or to a restarted hub), and that retries the write; so does
        the background loop (:meth:`retry_unstored`), which also covers a run that never
        reached an executor (cancelled while queued): otherwise the store would still
        say ``queued`` and a restarted hub would run it. An end the store *holds* (the
        disk was full) is not written again: a flush says when it is on disk.
        """
        again = run.id in self._unstored
        try:
            if run.id in self._held_ends:
                await self.store.flush()
            else:
                await self.store.finish_run(run, delivery, session, event)
        except Exception as exc:
            if isinstance(exc, StoreUnavailable):
                self._held_ends.add(run.id)
            if not again:
                log.error(
                    "run %s ended %s but the store could not record it%s (its caller and "
                    "bridge are answered from memory; the hub tries again)",
                    run.id,
                    run.state,
                    f" ({exc.reason})" if isinstance(exc, StoreUnavailable) else "",
                    extra={"run_id": run.id},
                    # A full disk is said in words; anything else with its traceback.
                    exc_info=None if isinstance(exc, StoreUnavailable) else exc,
                )
            self._unstored[run.id] = (run, delivery, session, event)
            return False
        if again:
            log.info("run %s: its end is recorded now", run.id, extra={"run_id": run.id})
        self._unstored.pop(run.id, None)
        self._held_ends.discard(run.id)
        return True

    async def retry_unstored(self) -> None:
        """Try again to write every run end the store failed to record.

        An executor still connected hears ``result_ack`` for each end now recorded.
        """
        for run_id in list(self._unstored):
            entry = self._unstored.get(run_id)
            if entry is None:  # recorded meanwhile (a result sent again, another retry)
                continue
            run, delivery, session, event = entry
            if delivery is not None and delivery.id not in self.pending:
                delivery = None  # acknowledged meanwhile: no reply to keep
            if await self._store_end(run, delivery, session, event):
                node = self.executors.get(run.executor) if run.executor else None
                if node is not None:
                    node.link.send(ResultAckFrame(run_id=run.id).dump())

    def _writable_change(self, reason: str | None) -> None:
        """The store can write again: record the ends it could not, now."""
        if reason is None and self._unstored and not self.closing:
            self._spawn(self.retry_unstored(), "Router:retry_unstored")

    def _insert_held(self, run_id: str) -> None:
        """The store could not write a new run: refuse it rather than run it unrecorded."""
        live = self.live.get(run_id)
        if live is None:
            log.warning(
                "run %s ended before the store could record its start (the disk is full); "
                "it is held in memory and written once there is room",
                run_id,
                extra={"run_id": run_id},
            )
            return
        if live.finishing or self.closing:
            return
        self._spawn(self._refuse_unstored(live), f"Router:store_unavailable:{run_id}")

    async def _refuse_unstored(self, live: Live) -> None:
        run = live.run
        if live.finishing:
            return
        node = self.executors.get(run.executor) if run.executor else None
        if node is not None:
            node.link.send(RunCancelFrame(run_id=run.id).dump())
        await self._finish(
            live,
            "failed",
            error={
                "code": ErrorCode.STORE_UNAVAILABLE,
                "message": "the hub could not store this request (its disk is full), so it "
                "was stopped; try again later",
            },
        )

    # deliveries

    def _send_delivery(self, delivery: Delivery) -> None:
        for node in self.bridges.values():
            if node.platform == delivery.platform:
                deliver = DeliverFrame(delivery_id=delivery.id, **delivery.payload)
                node.link.send(deliver.dump())
                delivery.attempts += 1
                # Exponential backoff with jitter: a platform that is down for long is
                # not hammered, and many replies do not retry in step.
                wait = min(
                    REDELIVER_MAX_S, self.settings.redeliver_s * 2 ** (delivery.attempts - 1)
                )
                self._next_send[delivery.id] = time.monotonic() + wait * random.uniform(0.5, 1.0)
                return

    async def _redeliver_loop(self) -> None:
        last_retry = time.monotonic()
        while True:
            await asyncio.sleep(min(1.0, self.settings.redeliver_s / 2))
            now = time.monotonic()
            for delivery in list(self.pending.values()):
                if now >= self._next_send.get(delivery.id, 0.0):
                    self._send_delivery(delivery)
            if self._unstored and now - last_retry >= self.settings.redeliver_s:
                last_retry = now
                try:
                    await self.retry_unstored()
                except Exception:  # never let this loop die: replies depend on it
                    log.exception("retrying unrecorded run ends failed")

    # events and notifications

    def _publish_event(self, live: Live, kind: str, data: dict[str, Any]) -> tuple[int, float]:
        """Number the run's next event and hand it to live subscribers."""
        live.seq += 1
        ts = time.time()
        self.bus.publish(
            {
                "type": "event",
                "run_id": live.run.id,
                "event": {"seq": live.seq, "ts": ts, "kind": kind, **data},
            },
            live.run.id,
            owner=live.run.principal,
        )
        return live.seq, ts

    def _record(
        self,
        live: Live,
        kind: str,
        data: dict[str, Any],
        exec_seq: int | None = None,
        fields: dict[str, Any] | None = None,
    ) -> None:
        """Publish an event and store it, with the run fields it changed, in one write."""
        seq, ts = self._publish_event(live, kind, data)
        self.store.post(op_record, live.run.id, fields, (seq, ts, kind, data, exec_seq))

    def _publish_run(self, run: Run) -> None:
        self.bus.publish({"type": "run", "run": run.summary()}, run.id, owner=run.principal)

    def _publish_nodes(self) -> None:
        self.bus.publish({"type": "nodes", "nodes": self.nodes()})
        self.bus.publish({"type": "queue", **self.queue_info()})

    def _live_state_changed(self) -> None:
        """Publish the nodes' load and the queue once this loop turn is over."""
        if self._live_state_soon is None:
            self._live_state_soon = asyncio.get_running_loop().call_soon(self._publish_live_state)

    def _publish_live_state(self) -> None:
        self._live_state_soon = None
        self._publish_nodes()

    def queue_info(self) -> dict[str, Any]:
        """The queue's length and its first :data:`QUEUE_SHOWN` runs, with why each waits.

        ``reason``: ``conversation`` (an earlier run of its conversation goes first),
        ``no_executor`` (none connected), ``all_busy`` (every executor is full), or
        ``dispatching`` (a slot is free: it is about to go).
        """
        executors = self.executors.values()
        if not executors:
            general = "no_executor"
        elif all(n.free <= 0 for n in executors):
            general = "all_busy"
        else:
            general = "dispatching"
        sessions = set(self.session_active)
        head = []
        for position, run_id in enumerate(self.queue, 1):
            if position > QUEUE_SHOWN:
                break
            live = self.live.get(run_id)
            key = live.run.session_key if live is not None else None
            reason = "conversation" if key is not None and key in sessions else general
            if key is not None:
                sessions.add(key)
            head.append({"id": run_id, "position": position, "reason": reason})
        return {
            "total": len(self.queue),
            "executors": len(self.executors),
            "runs": head,
        }

    def _progress(
        self, live: Live, *, detail: str | None = None, position: int | None = None
    ) -> None:
        run = live.run
        platform = run.origin.get("platform")
        if not platform:
            return
        progress = ProgressFrame(
            run_id=run.id,
            origin=run.origin,
            state=run.state,
            detail=detail if detail is not None else live.last_detail,
            position=position,
        )
        if live.answer.text:  # left out until there is one, as older hubs did
            answer = live.answer.tail(PROGRESS_ANSWER_CHARS)
            progress = progress.model_copy(update={"answer": answer})
        frame = progress.dump()
        for node in self.bridges.values():
            if node.platform == platform:
                node.link.send(frame)
                return
