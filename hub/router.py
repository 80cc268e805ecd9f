"""The router: which executor runs what, in what order, and where each reply goes.

It owns the live state of the hub: connected nodes, the queue, the runs not yet
finished. Everything it decides is written to the :class:`~hub.store.Store` before it is
acknowledged to anyone, so a restart of the hub resumes from the store.

:class:`Router` composes one module per job, all on the state of
:mod:`hub.router_state`:

- :mod:`hub.node_registry`: connected executors and bridges (:mod:`hub.nodes`), hellos,
  heartbeats, a lost executor's grace;
- :mod:`hub.scheduler`: submit, cancel, sessions, the queue, dispatch, deadlines and
  event limits;
- :mod:`hub.outbox`: replies to bridges, redelivery, acknowledgements;
- :mod:`hub.finishing`: a run's end, and store writes held or retried;
- :mod:`hub.node_frames`: the frames executors and bridges send;
- :mod:`hub.router_errors`: its refusals; :mod:`hub.router_view`: what metrics, the
  runs API and readiness read of it.

Rules:
- A run goes to the connected executor with the most free slots that its target fits
  (hub.targets); a conversation's next run goes only to the executor that holds its
  codex thread, and waits for it (hub.placement). A run no free executor fits waits
  without holding up the runs behind it.
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
import logging

from hub.finishing import Finishing
from hub.node_frames import NodeFrames, own_session
from hub.node_registry import NodeRegistry
from hub.nodes import Link, NodeInfo
from hub.outbox import REDELIVER_MAX_S, Outbox
from hub.router_errors import HubClosing, NodeIdTaken, QueueFull, RouterError, StoreUnwritable
from hub.router_state import Live, Ticket
from hub.router_view import Load
from hub.scheduler import QUEUE_SHOWN, STORE_BACKLOG_LIMIT, Scheduler
from hub.store import Run, new_run_id
from wire import RECONNECT_MAX_S

__all__ = [
    "QUEUE_SHOWN",
    "REDELIVER_MAX_S",
    "STORE_BACKLOG_LIMIT",
    "HubClosing",
    "Link",
    "Live",
    "Load",
    "NodeIdTaken",
    "NodeInfo",
    "QueueFull",
    "Router",
    "RouterError",
    "StoreUnwritable",
    "Ticket",
    "new_run_id",
    "own_session",
]

log = logging.getLogger(__name__)


class Router(NodeFrames, Scheduler, Finishing, Outbox, NodeRegistry):
    """Routes runs to executors and replies to bridges; see the module docstring.

    Each base is one job's class, all on :class:`~hub.router_state.RouterState`; this
    class adds only the start, the close and the read API.
    """

    # lifecycle

    async def start(self) -> None:
        """Reload unfinished runs and pending replies from the store."""
        self.store.on_insert_held = self._insert_held
        self.store.on_writable_change = self._writable_change
        await self.placement.load()
        for run in await self.store.unfinished_runs():
            live = Live(run, asyncio.get_running_loop().create_future())
            live.options = run.origin.get("options") or None
            live.seq, live.exec_seq = await self.store.event_positions(run.id)
            self.live[run.id] = live
            if run.executor is None:
                self.queue.add(run.id, run.session_key)
                if run.session_key and run.session_key not in self.sessions:
                    # Its conversation's executor: it waits for that one (hub.placement).
                    self.sessions[run.session_key] = await self.store.get_session(run.session_key)
                holder = self._holder(live)
                if holder:
                    name = self.placement.name_of(holder)
                    self.placement.watch(
                        name, self.placement.grace_left(name), self._conversations_gone
                    )
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
        await self.approvals.start()
        if self.live or self.pending:
            log.info(
                "recovered %d unfinished runs and %d undelivered replies",
                len(self.live),
                len(self.pending),
            )

    async def close(self) -> None:
        """Stop timers and background work; runs stay in the store for the next start."""
        self.closing = True
        self.placement.close()
        await self.approvals.close()
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
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        self._deadlines.clear()
        self._deadline_heap.clear()
        for live in self.live.values():
            if not live.done.done():
                live.done.cancel()
            for waiter in live.waiters or ():
                waiter.cancel()

    # the read API (hub.router_view.RouterView)

    def load(self) -> Load:
        """Counts of queue, nodes, slots, outbox and store writes, now."""
        executors = self.executors.values()
        return Load(
            queued=len(self.queue),
            executors=len(self.executors),
            bridges=len(self.bridges),
            logged_in=sum(1 for n in executors if (n.login or {}).get("logged_in")),
            running=sum(len(n.busy) for n in executors),
            capacity=sum(n.capacity for n in executors),
            outbox=len(self.pending),
            store_backlog=self.store.backlog,
            store_held=self.store.held,
        )

    def live_run(self, run_id: str) -> Run | None:
        """The run as the router has it while it is unfinished, else None."""
        live = self.live.get(run_id)
        return live.run if live is not None else None

    def holder_connected(self, executor: str | None) -> bool:
        """Whether the executor that holds a codex thread (its node id, as runs record
        it; or another process of the same name) is connected now."""
        return bool(executor) and (
            self.placement.holder_node(executor or "", self.executors) is not None
        )
