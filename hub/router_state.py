"""The state the router's jobs share, and the notifications they all send.

:class:`RouterState` holds the connected nodes, the unfinished runs (:class:`Live`), the
queue, the session cache, the outbox and the timers; each job is a class of its own
module built on it (:mod:`hub.node_registry`, :mod:`hub.scheduler`, :mod:`hub.outbox`,
:mod:`hub.finishing`, :mod:`hub.node_frames`), and :class:`hub.router.Router` composes
them. It also numbers, publishes and stores a run's events and tells the monitor and the
bridges what changed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from hub.answer_stream import AnswerSoFar
from hub.approvals import Approvals
from hub.bus import Bus, Subscription
from hub.metrics import Metrics
from hub.nodes import NodeInfo
from hub.placement import Placement
from hub.run_queue import RunQueue
from hub.settings import HubSettings
from hub.steering import Steering
from hub.store import Delivery, Run, Store, op_record
from wire import PROGRESS_ANSWER_CHARS, ProgressFrame, RunState

log = logging.getLogger("hub.router")


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
    #: Parked in the queue: why it waits (no executor its target or conversation fits).
    waiting: str | None = None
    #: Futures of callers waiting for the run (:meth:`RouterState.waiter`), resolved
    #: with ``done``.
    waiters: list[asyncio.Future[Run]] | None = None

    def settle(self, run: Run) -> None:
        """Give the run's outcome to ``done`` and to every caller's waiter still there."""
        for future in (self.done, *(self.waiters or ())):
            if not future.done():  # a waiter cancelled: its caller went away
                future.set_result(run)


@dataclass
class Ticket:
    """What a submitter gets back: the run, its outcome to await, and its live events."""

    run: Run
    done: asyncio.Future[Run]
    events: Subscription | None
    position: int
    duplicate: bool = False


class RouterState:
    """The router's shared state and notifications; see the module docstring."""

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
        #: The hub's own deadline of each assigned run: (loop time, the executor's timeout).
        self._deadlines: dict[str, tuple[float, float]] = {}
        #: The same deadlines as a heap (with entries of runs since ended, dropped as they
        #: come up), and the one timer of them all, due at the earliest (hub.scheduler).
        self._deadline_heap: list[tuple[float, str, float]] = []
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._deadline_due = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Ends the store failed to write, by run id: written when the result comes again.
        self._unstored: dict[str, tuple[Run, Delivery | None, Any, Any]] = {}
        #: Of those, the ends the store holds (disk full): a flush tells when they are on disk.
        self._held_ends: set[str] = set()
        self._redeliver_task: asyncio.Task[None] | None = None
        self.metrics = metrics
        self.closing = False
        self._live_state_soon: asyncio.Handle | None = None
        #: codex's approval requests and people's decisions (hub/approvals.py).
        self.approvals = Approvals(self, settings)
        #: A message into a working conversation goes into its running turn (hub.steering).
        self.steering = Steering(self)
        #: Targets, known labels, rules, conversations' executors (hub.placement).
        self.placement = Placement(settings, store)

    def waiter(self, run_id: str, done: asyncio.Future[Run]) -> asyncio.Future[Run] | None:
        """A future of the caller's own for the unfinished run whose outcome is ``done``:
        it gets the run when ``done`` does, in the same step (not a loop turn later, as
        through ``asyncio.shield(done)``), and cancelling it leaves ``done`` alone. None
        when ``done`` is not such a run's (the run has ended, or is not this router's).
        """
        live = self.live.get(run_id)
        if live is None or live.done is not done or done.done():
            return None
        waiter: asyncio.Future[Run] = asyncio.get_running_loop().create_future()
        if live.waiters is None:
            live.waiters = [waiter]
        else:
            live.waiters.append(waiter)
        return waiter

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("router task %s failed", task.get_name(), exc_info=task.exception())

    def _start_timer(self, run_id: str, coro: Any, name: str) -> None:
        self._cancel_timer(run_id)
        self._timers[run_id] = asyncio.create_task(coro, name=name)

    def _cancel_timer(self, run_id: str) -> None:
        task = self._timers.pop(run_id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    # events and notifications

    def _publish_event(self, live: Live, kind: str, data: dict[str, Any]) -> tuple[int, float]:
        """Number the run's next event and hand it to live subscribers."""
        live.seq += 1
        ts = time.time()
        if not self.bus.wanted(live.run.id):
            return live.seq, ts
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
        if not self.bus.wanted(run.id):
            return  # nobody listens: no summary to build
        self.bus.publish({"type": "run", "run": run.summary()}, run.id, owner=run.principal)

    def _publish_nodes(self) -> None:
        if not self.bus.wanted():
            return  # nobody listens: the nodes and the queue need not be walked
        nodes, queue = self.nodes(), self.queue_info()
        # Each names runs of every principal: a viewer who is not an operator gets its own.
        self.bus.publish(
            {"type": "nodes", "nodes": nodes},
            view=lambda viewer: {"type": "nodes", "nodes": self._nodes_for(nodes, viewer)},
        )
        self.bus.publish(
            {"type": "queue", **queue},
            view=lambda viewer: {"type": "queue", **self._queue_for(queue, viewer)},
        )

    def nodes_seen_by(self, viewer: str | None) -> list[dict[str, Any]]:
        """The nodes as ``viewer`` may see them (see :class:`hub.router_view.RouterView`)."""
        nodes = self.nodes()
        return nodes if viewer is None else self._nodes_for(nodes, viewer)

    def queue_seen_by(self, viewer: str | None) -> dict[str, Any]:
        """The queue as ``viewer`` may see it (see :class:`hub.router_view.RouterView`)."""
        queue = self.queue_info()
        return queue if viewer is None else self._queue_for(queue, viewer)

    def _owns(self, viewer: str, run_id: str) -> bool:
        """Whether ``run_id`` is a live run of ``viewer`` (a run gone: not, fail closed)."""
        live = self.live.get(run_id)
        return live is not None and live.run.principal == viewer

    def _nodes_for(self, nodes: list[dict[str, Any]], viewer: str) -> list[dict[str, Any]]:
        return [
            {**n, "runs": [r for r in n["runs"] if self._owns(viewer, r)]} if "runs" in n else n
            for n in nodes
        ]

    def _queue_for(self, queue: dict[str, Any], viewer: str) -> dict[str, Any]:
        return {**queue, "runs": [e for e in queue["runs"] if self._owns(viewer, e["id"])]}

    def _live_state_changed(self) -> None:
        """Publish the nodes' load and the queue once this loop turn is over."""
        if self._live_state_soon is None:
            self._live_state_soon = asyncio.get_running_loop().call_soon(self._publish_live_state)

    def _publish_live_state(self) -> None:
        self._live_state_soon = None
        self._publish_nodes()

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

    # what each job offers the others (defined in the module named; Router has them all)

    async def _finish(self, live: Live, status: RunState, **fields: Any) -> bool:
        """End a run (hub.finishing)."""
        raise NotImplementedError

    async def retry_unstored(self) -> None:
        """Write again the run ends the store failed to record (hub.finishing)."""
        raise NotImplementedError

    def _dispatch(self) -> None:
        """Assign ready runs to free executors (hub.scheduler)."""
        raise NotImplementedError

    def _unassign(self, live: Live) -> None:
        """Put an assigned run back at the queue's front (hub.scheduler)."""
        raise NotImplementedError

    def _remove_from_queue(self, run_id: str) -> None:
        """Take a run out of the queue (hub.scheduler)."""
        raise NotImplementedError

    def _release_session(self, key: str) -> None:
        """Forget an idle session's cached state (hub.scheduler)."""
        raise NotImplementedError

    def _arm_deadline(self, live: Live, node: NodeInfo) -> None:
        """Start an assigned run's deadline (hub.scheduler)."""
        raise NotImplementedError

    def _disarm_deadline(self, run_id: str) -> None:
        """Stop a run's deadline (hub.scheduler)."""
        raise NotImplementedError

    def queue_info(self) -> dict[str, Any]:
        """The ``queue`` message (hub.scheduler)."""
        raise NotImplementedError

    def _holder(self, live: Live) -> str | None:
        """The executor holding a run's conversation (hub.scheduler)."""
        raise NotImplementedError

    def _conversations_gone(self, name: str) -> None:
        """Fail the queued runs of an executor's conversations past its grace
        (hub.scheduler)."""
        raise NotImplementedError

    def _send_delivery(self, delivery: Delivery) -> None:
        """Send a reply to a bridge of its platform (hub.outbox)."""
        raise NotImplementedError

    def _reply(self, live: Live, status: RunState, now: float) -> Delivery | None:
        """A finished run's reply for the outbox (hub.outbox)."""
        raise NotImplementedError

    def nodes(self) -> list[dict[str, Any]]:
        """Connected nodes, executors first (hub.node_registry)."""
        raise NotImplementedError
