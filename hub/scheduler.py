"""Scheduling: submitting and cancelling runs, the queue, dispatch, and a run's limits.

- A run goes to the connected executor with the most free slots that its target fits
  (hub.targets); a conversation's next run goes only to the executor that holds its
  codex thread, and waits for it (hub.placement). A run no free executor fits waits
  without holding up the runs behind it.
- Runs of one session run one after another, in arrival order (the queue structure is
  :mod:`hub.run_queue`).
- The queue is bounded (``HUB_QUEUE_LIMIT``); past it :class:`QueueFull` is raised.
- Every assigned run has a deadline (the executor's timeout plus ``HUB_RUN_GRACE_S``)
  and a budget of events (``HUB_RUN_MAX_EVENTS``, ``HUB_RUN_MAX_EVENT_BYTES``); past
  either, the hub cancels it on the executor and ends it itself.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from typing import Any

from hub.nodes import NodeInfo
from hub.router_errors import HubClosing, QueueFull, StoreUnwritable
from hub.router_state import Live, RouterState, Ticket
from hub.store import Run, StoreUnavailable, new_run_id, op_insert_run, op_set_executor
from hub.targets import TargetRefused
from wire import AssignFrame, ErrorCode, RunCancelFrame, RunState

log = logging.getLogger("hub.router")

#: Store writes that may wait for the writer thread before a new run waits for them.
STORE_BACKLOG_LIMIT = 2000
#: How many queued runs the ``queue`` message names (the rest are counted).
QUEUE_SHOWN = 100
#: Entries of ended runs the deadline heap may hold beyond twice the live ones.
DEADLINE_SLACK = 1024


class Scheduler(RouterState):
    """Queues, assigns, cancels and bounds runs (a job of :class:`hub.router.Router`)."""

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
        target: str | list[str] | None = None,
    ) -> Ticket:
        """Store a new run and queue it; ``watch`` subscribes to its events first.

        A ``dedupe_key`` already used returns the run it started (``Ticket.duplicate``).
        ``principal`` owns the run (hub.auth; None for chat bridges): the live feed shows
        it to that principal and to operators only. ``note`` is recorded as the run's
        first note (an operator continuing someone else's conversation, say).
        ``resume`` (thread id, executor holding it) continues that codex thread, for a
        run without a session; ``options`` go to the executor with the prompt (see
        wire's ``assign``). ``target`` says where it may go (hub.targets: refused with a
        :class:`~hub.targets.TargetRefused`).
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
        if session_key:
            thread, executor = self.sessions[session_key]
            holder = executor if thread else None
        else:
            holder = resume[1] if resume else None
        try:
            placed = self.placement.admit(
                target,
                principal=principal,
                origin=origin,
                holder=holder,
                executors=self.executors,
                expire=self._conversations_gone,
            )
        except TargetRefused:
            if session_key:
                self._release_session(session_key)
            raise
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
            target=placed.text if placed else None,
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
        self._record(live, "state", {"state": RunState.QUEUED, "position": position})
        if note:
            self._record(live, "note", {"message": note})
        self._publish_run(run)
        self._progress(live, position=position)
        self._dispatch()
        if run.executor is None and live.waiting is None:
            holder = self._holder(live)
            if self.placement.unplaceable(run, holder, self.executors):
                # Said at once, also while no executor at all is connected (no dispatch).
                self._waiting(live, self.placement.waiting(run, holder, self.executors))
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
                live, RunState.CANCELLED, error={"code": ErrorCode.CANCELLED, "message": reason}
            )
            return True
        live.cancel_requested = True
        node = self.executors.get(run.executor)
        if node is None:
            await self._finish(
                live, RunState.CANCELLED, error={"code": ErrorCode.CANCELLED, "message": reason}
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
                RunState.CANCELLED,
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
        hub.run_queue), so a session's waiting runs are not walked. A run that only
        busy or absent executors fit (its target, its conversation's executor) is
        parked, and the runs behind it still go (hub.placement).
        """
        if not self.queue or not any(n.free > 0 for n in self.executors.values()):
            return
        self.placement.wake(self.queue, self.executors)
        while (run_id := self.queue.peek_ready()) is not None:
            live = self.live.get(run_id)
            if live is None or live.finishing:
                self.queue.discard(run_id)
                continue
            holder = self._holder(live)
            node, group = self.placement.choose(live.run, holder, self.executors)
            if node is None:
                if group is None:
                    break  # no executor is free at all
                self.queue.park(run_id, group)
                self._waiting(live, self.placement.waiting(live.run, holder, self.executors))
                continue
            self._assign(live, node)  # the session is busy now: its next run waits
            self.queue.discard(run_id)
            if group is not None:
                self.queue.unpark_one(group)  # the next of its group may fit too
            self._live_state_changed()

    def _holder(self, live: Live) -> str | None:
        """The executor holding the run's conversation (workspace and codex thread)."""
        key = live.run.session_key
        if key:
            thread, executor = self.sessions.get(key, (None, None))
            return executor if thread else None
        return live.prefer

    def _waiting(self, live: Live, reason: str) -> None:
        """A parked run says why it waits: in its events, its chat status and the queue."""
        if live.waiting == reason:
            return
        live.waiting = reason
        self._record(live, "note", {"message": reason})
        self._progress(live, detail=reason, position=self.position(live.run))

    def _conversations_gone(self, name: str) -> None:
        """No executor named ``name`` came back within the grace: the queued runs of the
        conversations it holds fail, saying so."""
        if self.closing or any(node.name == name for node in self.executors.values()):
            return
        message = self.placement.gone_text(name)
        for live in list(self.live.values()):
            holder = self._holder(live) if live.run.executor is None else None
            if holder and not live.finishing and self.placement.name_of(holder) == name:
                self._spawn(
                    self._finish(
                        live,
                        RunState.FAILED,
                        error={"code": ErrorCode.CONVERSATION_ELSEWHERE, "message": message},
                    ),
                    f"Router:conversation_gone:{live.run.id}",
                )

    def _assign(self, live: Live, node: NodeInfo) -> None:
        run = live.run
        run.executor = node.link.node_id
        live.assigned_at = time.time()
        live.session_gen = self.session_gen.get(run.session_key or "", 0)
        live.waiting = None
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
        fields: dict[str, Any] = {
            "run_id": run.id,
            "prompt": run.prompt,
            "thread_id": thread_id,
            "optimize": run.optimize,
            "origin": run.origin,
            "session_key": run.session_key,
            "repo": run.origin.get("repo"),
            "open_pr": bool(run.origin.get("open_pr")),
        }
        if live.options:  # left out when there are none, as older hubs did
            fields["options"] = live.options
        # Checked as the model, sent as what its dump() is (every field given, and its
        # type): dumping the model again would cost as much as building it, on every run.
        # link.send encodes it at once, so the run's own dicts are not kept.
        AssignFrame(**fields)
        node.link.send({"type": "assign", **fields})
        self._record(
            live,
            "assigned",
            {"executor": node.name or node.link.node_id},
            fields={"executor": run.executor},
        )

    def _unassign(self, live: Live) -> None:
        run = live.run
        run.executor = None
        self._disarm_deadline(run.id)
        if run.session_key and self.session_active.get(run.session_key) == run.id:
            del self.session_active[run.session_key]
        self.queue.add(run.id, run.session_key, front=True)
        self.store.post(op_set_executor, run.id, None)

    # the hub's own limits on a run

    def _arm_deadline(self, live: Live, node: NodeInfo) -> None:
        """Start the run's deadline: the executor's timeout (else HUB_RUN_TIMEOUT_S)
        plus HUB_RUN_GRACE_S.

        One timer serves every run, due at the earliest deadline: a timer made and
        cancelled for each run cost the event loop more than the rest of its deadline.
        """
        timeout = node.timeout_s or self.settings.run_timeout_s
        loop = asyncio.get_running_loop()
        when = loop.time() + timeout + self.settings.run_grace_s
        run_id = live.run.id
        self._deadlines[run_id] = (when, timeout)
        heap = self._deadline_heap
        if len(heap) > 2 * len(self._deadlines) + DEADLINE_SLACK:
            # Most entries are of runs that ended: keep only the live ones.
            heap[:] = [(at, rid, limit) for rid, (at, limit) in self._deadlines.items()]
            heapq.heapify(heap)
        else:
            heapq.heappush(heap, (when, run_id, timeout))
        if self._deadline_timer is None or when < self._deadline_due:
            self._set_deadline_timer(loop, when)

    def _set_deadline_timer(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        self._deadline_due = when
        self._deadline_timer = loop.call_at(when, self._deadlines_due)

    def _disarm_deadline(self, run_id: str) -> None:
        # Its heap entry stays until it comes up (or the heap is rebuilt): then it is
        # not in _deadlines any more, or with another time (armed again), and is dropped.
        self._deadlines.pop(run_id, None)

    def _deadlines_due(self) -> None:
        """The earliest deadline came: end every run whose deadline passed."""
        self._deadline_timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        heap = self._deadline_heap
        passed: list[tuple[str, float]] = []
        while heap:
            when, run_id, timeout = heap[0]
            current = self._deadlines.get(run_id)
            if current is None or current[0] != when:
                heapq.heappop(heap)  # ended, or armed again since
            elif when <= now:
                heapq.heappop(heap)
                passed.append((run_id, timeout))
            else:
                self._set_deadline_timer(loop, when)
                break
        for run_id, timeout in passed:
            self._deadline_passed(run_id, timeout)

    def _deadline_passed(self, run_id: str, timeout: float) -> None:
        self._deadlines.pop(run_id, None)
        live = self.live.get(run_id)
        if live is None or live.finishing:
            return
        grace = self.settings.run_grace_s
        self._end_early(
            live,
            RunState.TIMED_OUT,
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
        self._end_early(live, RunState.FAILED, code, message)
        return True

    def _end_early(self, live: Live, status: RunState, code: str, message: str) -> None:
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

    def queue_info(self) -> dict[str, Any]:
        """The queue's length and its first :data:`QUEUE_SHOWN` runs, with why each waits.

        ``reason``: ``conversation`` (an earlier run of its conversation goes first),
        ``no_executor`` (none connected), ``all_busy`` (every executor is full),
        ``target`` (no free executor fits its target or holds its conversation; ``detail``
        says which it waits for), or ``dispatching`` (a slot is free: it is about to go).
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
        for position, run_id in enumerate(self.queue.head(QUEUE_SHOWN), 1):
            live = self.live.get(run_id)
            key = live.run.session_key if live is not None else None
            reason = "conversation" if key is not None and key in sessions else general
            if key is not None:
                sessions.add(key)
            entry = {"id": run_id, "position": position, "reason": reason}
            if live is not None and live.waiting and reason != "conversation":
                entry.update(reason="target", detail=live.waiting)
            head.append(entry)
        return {
            "total": len(self.queue),
            "executors": len(self.executors),
            "runs": head,
        }
