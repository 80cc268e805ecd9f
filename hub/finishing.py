"""Finishing runs: a run's end, stored before its executor is told, and held writes.

While the store cannot write (disk full), a run whose own insert the store had to hold
is refused: it is not on disk, so it must not be answered as if it were. A run that was
already going finishes and is answered from memory; its end is held and written once
there is room, and its executor's result is acknowledged only then (the executor keeps
it until then and re-sends it to a restarted hub).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from hub.router_state import Live, RouterState
from hub.store import Delivery, Run, StoreUnavailable
from wire import ErrorCode, ResultAckFrame, RunCancelFrame, RunState

log = logging.getLogger("hub.router")


class Finishing(RouterState):
    """Ends runs and keeps trying to store their ends (a job of :class:`hub.router.Router`)."""

    # finishing

    async def _finish(self, live: Live, status: RunState, **fields: Any) -> bool:
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
        self.approvals.run_ended(run.id)
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
        delivery = self._reply(live, status, now)
        final = {"state": status, "error": run.error}
        seq, ts = self._publish_event(live, "state", final)
        self._dispatch()
        # The waiting caller may answer before the commit: the executor keeps re-sending
        # the result until result_ack, which is sent only after the commit below.
        live.settle(run)
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
        if status == RunState.SUCCEEDED:
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
            RunState.FAILED,
            error={
                "code": ErrorCode.STORE_UNAVAILABLE,
                "message": "the hub could not store this request (its disk is full), so it "
                "was stopped; try again later",
            },
        )
