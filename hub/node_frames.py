"""Frames from nodes: what an executor or a bridge sends, applied to the router's jobs.

A bridge speaks only for its platform: its session keys are prefixed with it, and it
cancels, resets, reads and acknowledges only that platform's sessions, runs and replies.
A bridge may name the status message it posted for a run (``status_ref``): kept in the
run's origin, it goes with the run's later progress and its reply.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import orjson

from hub.answer_stream import ANSWER_DELTA
from hub.finishing import Finishing
from hub.node_registry import NodeRegistry
from hub.nodes import Link
from hub.outbox import Outbox
from hub.router_errors import RouterError, StoreUnwritable
from hub.router_state import Live
from hub.scheduler import Scheduler
from hub.store import StoreUnavailable, op_set_delivery_payload, op_set_origin
from hub.targets import TargetRefused
from wire import (
    AckFrame,
    ApprovalDecideFrame,
    ApprovalShownFrame,
    CancelFrame,
    CancelledFrame,
    ErrorCode,
    EventFrame,
    FrameModel,
    OkFrame,
    ResetSessionFrame,
    ResultFrame,
    RunState,
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

log = logging.getLogger("hub.router")


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


class NodeFrames(Scheduler, Finishing, Outbox, NodeRegistry):
    """Applies executors' and bridges' frames (the router's jobs, composed)."""

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
        # The answer written as it comes counts in bytes, not in number: a long answer
        # over a long turn is many deltas (a few a second), and the answer's own size is
        # what a budget should hold.
        if frame.event.get("kind") != ANSWER_DELTA:
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
        if kind == "approval":
            self.approvals.on_event(live, event)
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
        run.state = RunState(frame.state)
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
                status = RunState(frame.status)
                if live.cancel_requested and status == RunState.FAILED:
                    status = RunState.CANCELLED
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
            # What ResultAckFrame(run_id=...).dump() gives, without a model on every run.
            link.send({"type": "result_ack", "run_id": frame.run_id})

    # frames from bridges

    async def on_bridge_frame(self, link: Link, frame: Any) -> FrameModel | None:
        """Apply one frame from a bridge; returns the answer frame, if any."""
        node = self.bridges.get(link.node_id)
        platform = node.platform if node else "bridge"
        if node is not None:
            node.last_seen = time.time()
        if isinstance(frame, AckFrame):
            return await self._on_ack(link, platform, frame)
        if isinstance(frame, StatusRefFrame):
            return await self._on_status_ref(platform, frame)
        if isinstance(frame, (ApprovalDecideFrame, ApprovalShownFrame)):
            return await self.approvals.on_bridge_frame(platform, frame)
        if isinstance(frame, SubmitFrame):
            origin = {**frame.origin, "source": platform, "platform": platform}
            key = own_session(platform, frame.session_key) if frame.session_key else None
            dedupe = f"{platform}:{frame.dedupe_key}" if frame.dedupe_key else None
            steered = None
            if not frame.attachments and not origin.get("open_pr") and not frame.target:
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
                    target=frame.target,
                )
            except (RouterError, TargetRefused) as exc:
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
