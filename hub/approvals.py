"""Approvals: codex asks before it acts, and a person decides, from wherever they are.

An executor whose codex asks (app-server engine, ``CODEX_APPROVAL_POLICY`` that asks)
sends the run's ``approval`` event with ``status: requested`` and an ``approval_id``.
From then on:

- the run's state is ``awaiting_approval`` (an event and a store write), its status
  shows the command (or the change) and why;
- the bridge of the run's platform gets an ``approval`` frame and shows buttons where
  the run came from; the monitor and the API (``GET /api/runs/{id}``) show the request
  and decide it with ``POST /api/runs/{id}/approval``;
- who may decide: ``APPROVERS`` (platform user ids and API principals), or when it is
  empty the person who asked (the Slack or Telegram user, the API principal);
- the first decision wins: it is recorded in the run's events (``status: decision``,
  with who and when), sent to the executor (``approval_decision``), and every copy of
  the buttons is changed to say who decided and when; a later press is told that; a
  press by anyone else is refused with the reason;
- no decision within ``APPROVAL_TIMEOUT_S`` denies (``by: timeout``);
- the executor confirms with the run's ``approval`` event ``status: decided``; the run
  goes back to ``running`` once nothing of it waits any more.

Durable: everything above is in the run's events, so a restarted hub rebuilds pending
approvals from the store (the run's state and its approval events), re-arms each
timeout with the time left, and re-sends a decision the executor has not confirmed
when it reconnects. The bridge keeps no state: its buttons carry the run id and the
approval id, and the hub re-sends an ``approval`` frame (after every reconnect and
every ``HUB_REDELIVER_S``) until the bridge answers ``approval_shown``; the ``ref`` it
names (the message with the buttons) is kept in the run's events, so the update after
the decision reaches every copy, even from a restarted hub.

Actors are strings: ``slack:<user id>``, ``telegram:<user id>``, an API principal
(``key:<12 hex>``, or ``anonymous`` on a hub without keys), ``timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from hub.settings import HubSettings
from hub.store import Run, Store
from wire import (
    ApprovalDecideFrame,
    ApprovalDecisionFrame,
    ApprovalFrame,
    ApprovalResultFrame,
    ApprovalShownFrame,
    RunState,
)

log = logging.getLogger(__name__)

#: Decided approvals remembered (for "already decided by ...") after their run ended.
DONE_MEMORY = 1000
#: Who decided when nobody did in time.
BY_TIMEOUT = "timeout"

Outcome = Literal["decided", "already_decided", "refused", "unknown"]
#: A run the router has not finished (``hub.router.Live``: ``run``, ``finishing``).
Live = Any


class Router(Protocol):
    """What approvals use of the router (``hub.router.Router``), which owns them."""

    live: dict[str, Any]
    executors: dict[str, Any]
    bridges: dict[str, Any]
    store: Store

    def _record(
        self,
        live: Any,
        kind: str,
        data: dict[str, Any],
        exec_seq: int | None = None,
        fields: dict[str, Any] | None = None,
    ) -> None: ...

    def _publish_run(self, run: Run) -> None: ...

    def _progress(
        self, live: Any, *, detail: str | None = None, position: int | None = None
    ) -> None: ...


@dataclass
class Approval:
    """One approval request of a run, as the hub tracks it."""

    run_id: str
    approval_id: str
    origin: dict[str, Any]
    request: dict[str, Any]
    summary: str
    requested_at: float
    expires_at: float
    state: Literal["pending", "decided"] = "pending"
    decision: str | None = None
    by: str | None = None
    decided_at: float | None = None
    reason: str = ""
    #: The platform's ids of the messages that show its buttons.
    refs: list[str] = field(default_factory=list)
    #: The states the bridge has shown ("pending": buttons posted; "decided": changed).
    shown: set[str] = field(default_factory=set)
    #: The executor has the decision (its ``decided`` event came).
    confirmed: bool = False

    @property
    def platform(self) -> str:
        return str(self.origin.get("platform") or "")

    def public(self) -> dict[str, Any]:
        """The approval as the runs API shows it."""
        data: dict[str, Any] = {
            "approval_id": self.approval_id,
            "state": self.state,
            "request": self.request,
            "summary": self.summary,
            "requested_at": self.requested_at,
            "expires_at": self.expires_at,
            "choices": ["approve", "approve_session", "deny"],
        }
        if self.state == "decided":
            data.update(decision=self.decision, by=self.by, decided_at=self.decided_at)
            if self.reason:
                data["reason"] = self.reason
        return data

    def frame(self) -> ApprovalFrame:
        """The ``approval`` frame that shows it in chat (buttons, or the outcome)."""
        fields: dict[str, Any] = {}
        if self.state == "decided":
            fields = {"decision": self.decision, "by": self.by, "decided_at": self.decided_at}
        return ApprovalFrame(
            run_id=self.run_id,
            approval_id=self.approval_id,
            origin=self.origin,
            request=self.request,
            summary=self.summary,
            requested_at=self.requested_at,
            expires_at=self.expires_at,
            state=self.state,
            refs=list(self.refs),
            **fields,
        )


@dataclass(frozen=True)
class Verdict:
    """What a decision attempt came to (``approval`` is the request it was about)."""

    outcome: Outcome
    message: str
    approval: Approval | None = None

    def frame(self, req_id: str) -> ApprovalResultFrame:
        fields: dict[str, Any] = {}
        a = self.approval
        if a is not None and a.state == "decided":
            fields = {"decision": a.decision, "by": a.by, "decided_at": a.decided_at}
        return ApprovalResultFrame(
            req_id=req_id, outcome=self.outcome, message=self.message, **fields
        )


def asker_of(run: Run) -> str | None:
    """Who asked for ``run``, as an actor string (None: nobody known)."""
    origin = run.origin
    platform = origin.get("platform")
    if platform == "slack" and origin.get("user"):
        return f"slack:{origin['user']}"
    if platform == "telegram" and origin.get("user_id") is not None:
        return f"telegram:{origin['user_id']}"
    if platform:
        return None
    return run.principal


def approvers_of(
    settings: HubSettings, principal_for_key: Callable[[str], str] | None = None
) -> frozenset[str]:
    """``APPROVERS`` as actor strings or bare user ids; with ``principal_for_key``
    (``hub.auth``'s) an API key written there counts as its principal (the principal id
    is what to write: it is no secret)."""
    if principal_for_key is None:
        return frozenset(settings.approvers)
    keys = set(settings.all_api_keys)
    return frozenset(
        principal_for_key(entry) if entry in keys else entry for entry in settings.approvers
    )


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts or 0))


class Approvals:
    """The hub's pending and recent approval requests (see the module docstring)."""

    def __init__(self, router: Router, settings: HubSettings) -> None:
        self.router = router
        self.settings = settings
        self.approvers = approvers_of(settings)
        self.timeout_s = settings.approval_timeout_s
        #: By (run id, approval id): every request of an unfinished run.
        self.open: dict[tuple[str, str], Approval] = {}
        #: Decided requests of ended runs, newest last (bounded).
        self.done: OrderedDict[tuple[str, str], Approval] = OrderedDict()
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}
        self._loop_task: asyncio.Task[None] | None = None

    # lifecycle

    async def start(self) -> None:
        """Rebuild the requests of unfinished runs from the store; start re-sending."""
        for live in list(self.router.live.values()):
            # Every run an executor has: its request and its state are two writes, and
            # the hub may have stopped between them.
            if live.run.executor is not None:
                await self._recover(live)
        self._loop_task = asyncio.create_task(self._resend_loop(), name="Approvals:resend")

    async def close(self) -> None:
        """Stop timers and re-sending (pending requests stay in the store)."""
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None

    async def _recover(self, live: Live) -> None:
        run = live.run
        for event in await self.router.store.get_events(run.id):
            if event.get("kind") == "approval":
                self._apply(live, event, replay=True)
        now = time.time()
        approvals = self.of_run(run.id)
        waiting = any(a.state == "pending" or not a.confirmed for a in approvals)
        if waiting and run.state == RunState.RUNNING:
            self._set_state(live, RunState.AWAITING_APPROVAL)
        elif not waiting and run.state == RunState.AWAITING_APPROVAL:
            self._set_state(live, RunState.RUNNING)
        for approval in approvals:
            if approval.state == "pending":
                self._arm(approval, max(0.0, approval.expires_at - now))
                log.info(
                    "run %s: approval %s still pending after a restart (%.0f s left)",
                    run.id,
                    approval.approval_id,
                    max(0.0, approval.expires_at - now),
                    extra={"run_id": run.id},
                )

    # what the executor says

    def on_event(self, live: Live, event: dict[str, Any]) -> None:
        """An ``approval`` event of ``live`` (recorded already by the router)."""
        self._apply(live, event, replay=False)

    def _apply(self, live: Live, event: dict[str, Any], *, replay: bool) -> None:
        run = live.run
        status = event.get("status")
        approval_id = str(event.get("approval_id") or "")
        if not approval_id:
            return  # an engine without approval ids: nothing a person can answer
        key = (run.id, approval_id)
        approval = self.open.get(key)
        if status == "requested":
            if approval is not None:
                return
            requested_at = float(event.get("ts") or time.time())
            approval = Approval(
                run_id=run.id,
                approval_id=approval_id,
                origin=run.origin,
                request=dict(event.get("request") or {}),
                summary=str(event.get("summary") or ""),
                requested_at=requested_at,
                expires_at=requested_at + self.timeout_s,
            )
            self.open[key] = approval
            if replay:
                return
            self._set_state(live, RunState.AWAITING_APPROVAL)
            self._arm(approval, self.timeout_s)
            self._show(approval)
            log.info(
                "run %s: codex asks for approval %s: %s",
                run.id,
                approval_id,
                approval.summary,
                extra={"run_id": run.id},
            )
            return
        if approval is None:
            return
        if status == "decision":
            approval.state = "decided"
            approval.decision = str(event.get("decision") or "deny")
            approval.by = str(event.get("by") or "")
            approval.decided_at = float(event.get("decided_at") or event.get("ts") or 0)
            approval.reason = str(event.get("reason") or "")
            self._disarm(key)
        elif status == "shown":
            ref = event.get("ref")
            if isinstance(ref, str) and ref and ref not in approval.refs:
                approval.refs.append(ref)
            if event.get("state") in ("pending", "decided"):
                approval.shown.add(str(event["state"]))
        elif status == "decided":
            approval.confirmed = True
            if approval.state == "pending":
                # The executor decided without the hub (it had no way to wait): take its
                # word, so the buttons do not stay open for nothing.
                approval.state = "decided"
                approval.decision = str(event.get("decision") or "deny")
                approval.by = str(event.get("by") or "executor")
                approval.decided_at = float(event.get("ts") or time.time())
                self._disarm(key)
                if not replay:
                    self._show(approval)
            if not replay and not any(a.state == "pending" for a in self.of_run(run.id)):
                if run.state == RunState.AWAITING_APPROVAL:
                    self._set_state(live, RunState.RUNNING)

    def _set_state(self, live: Live, state: str) -> None:
        run = live.run
        run.state = state
        self.router._record(live, "state", {"state": state}, fields={"state": state})
        self.router._publish_run(run)
        self.router._progress(live)

    # deciding

    def of_run(self, run_id: str) -> list[Approval]:
        """The run's requests, oldest first (those of an ended run: the decided ones)."""
        found = [a for (rid, _), a in self.open.items() if rid == run_id]
        found += [a for (rid, _), a in self.done.items() if rid == run_id]
        return sorted(found, key=lambda a: a.requested_at)

    def current(self, run_id: str) -> Approval | None:
        """The run's oldest pending request, else its latest one, else None."""
        approvals = self.of_run(run_id)
        pending = [a for a in approvals if a.state == "pending"]
        if pending:
            return pending[0]
        return approvals[-1] if approvals else None

    def may_decide(self, run: Run, actor: str) -> bool:
        """Whether ``actor`` may decide ``run``'s requests (APPROVERS, else the asker)."""
        if self.approvers:
            _, _, bare = actor.partition(":")
            if actor in self.approvers:
                return True
            return actor.startswith(("slack:", "telegram:")) and bare in self.approvers
        return actor == asker_of(run)

    def refusal(self, run: Run) -> str:
        """Why someone may not decide ``run``'s requests."""
        if self.approvers:
            return "you are not one of the approvers (APPROVERS) of this hub"
        return "only the person who asked for this run may decide (the hub has no APPROVERS)"

    def decide(
        self,
        run_id: str,
        approval_id: str | None,
        decision: str,
        actor: str,
        *,
        reason: str = "",
        check: bool = True,
    ) -> Verdict:
        """Decide a request of ``run_id`` (``approval_id`` None: its oldest pending one)."""
        live = self.router.live.get(run_id)
        if approval_id is None:
            approval = self.current(run_id)
        else:
            key = (run_id, approval_id)
            approval = self.open.get(key) or self.done.get(key)
        run = live.run if live is not None else None
        if approval is None:
            return Verdict("unknown", f"run {run_id} has no approval request waiting")
        if check and run is not None and not self.may_decide(run, actor):
            log.warning(
                "run %s: %s may not decide approval %s; refused",
                run_id,
                actor,
                approval.approval_id,
                extra={"run_id": run_id},
            )
            return Verdict("refused", self.refusal(run), approval)
        if approval.state == "decided":
            return Verdict(
                "already_decided",
                f"already decided: {approval.decision} by {approval.by} at "
                f"{_when(approval.decided_at)}",
                approval,
            )
        if live is None or live.finishing:
            return Verdict("unknown", f"run {run_id} has ended; nothing waits for a decision")
        now = time.time()
        approval.state = "decided"
        approval.decision = decision
        approval.by = actor
        approval.decided_at = now
        approval.reason = reason[:500]
        self._disarm((run_id, approval.approval_id))
        event = {
            "status": "decision",
            "approval_id": approval.approval_id,
            "decision": decision,
            "by": actor,
            "decided_at": now,
            "summary": f"{decision} by {actor}"
            + (f" ({approval.reason})" if approval.reason else ""),
        }
        if approval.reason:
            event["reason"] = approval.reason
        self.router._record(live, "approval", event)
        self._send_decision(approval)
        self._show(approval)
        log.info(
            "run %s: approval %s: %s by %s",
            run_id,
            approval.approval_id,
            decision,
            actor,
            extra={"run_id": run_id},
        )
        return Verdict("decided", f"{decision} by {actor} at {_when(now)}", approval)

    def _send_decision(self, approval: Approval) -> None:
        live = self.router.live.get(approval.run_id)
        if live is None or live.run.executor is None or approval.decision is None:
            return
        node = self.router.executors.get(live.run.executor)
        if node is None:
            return  # sent when it reconnects (executor_connected)
        frame = ApprovalDecisionFrame(
            run_id=approval.run_id,
            approval_id=approval.approval_id,
            decision=approval.decision,  # type: ignore[arg-type]
            by=approval.by or "",
        )
        node.link.send(frame.dump())

    # timeouts

    def _arm(self, approval: Approval, after: float) -> None:
        key = (approval.run_id, approval.approval_id)
        self._disarm(key)
        loop = asyncio.get_running_loop()
        self._timers[key] = loop.call_later(after, self._expired, key)

    def _disarm(self, key: tuple[str, str]) -> None:
        handle = self._timers.pop(key, None)
        if handle is not None:
            handle.cancel()

    def _expired(self, key: tuple[str, str]) -> None:
        self._timers.pop(key, None)
        approval = self.open.get(key)
        if approval is None or approval.state != "pending":
            return
        self.decide(
            key[0],
            key[1],
            "deny",
            BY_TIMEOUT,
            reason=f"no decision within {self.timeout_s:g} s (APPROVAL_TIMEOUT_S)",
            check=False,
        )

    # nodes

    def executor_connected(self, node_id: str) -> None:
        """Re-send the decisions an executor that (re)connected has not confirmed."""
        for approval in self.open.values():
            if approval.state == "decided" and not approval.confirmed:
                live = self.router.live.get(approval.run_id)
                if live is not None and live.run.executor == node_id:
                    self._send_decision(approval)

    def bridge_connected(self, platform: str) -> None:
        """Show a (re)connected bridge what it has not shown yet."""
        for approval in list(self.open.values()):
            if approval.platform == platform and approval.state not in approval.shown:
                self._show(approval)

    def _show(self, approval: Approval) -> None:
        platform = approval.platform
        if not platform or approval.state in approval.shown:
            return
        for node in self.router.bridges.values():
            if node.platform == platform:
                node.link.send(approval.frame().dump())
                return

    async def _resend_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.redeliver_s)
            for approval in list(self.open.values()):
                if approval.state not in approval.shown:
                    self._show(approval)

    async def on_bridge_frame(
        self, platform: str, frame: ApprovalDecideFrame | ApprovalShownFrame
    ) -> ApprovalResultFrame | None:
        """A bridge's press (answered) or its word that it showed an ``approval`` frame."""
        if isinstance(frame, ApprovalDecideFrame):
            live = self.router.live.get(frame.run_id)
            key = (frame.run_id, frame.approval_id)
            approval = self.open.get(key) or self.done.get(key)
            if approval is None or approval.platform != platform:
                message = "this approval request is unknown or no longer waits for a decision"
                return Verdict("unknown", message).frame(frame.req_id)
            actor = f"{platform}:{frame.user}"
            if live is None:
                # The run ended: nobody's press changes anything now; say what happened.
                verdict = self.decide(
                    frame.run_id, frame.approval_id, frame.decision, actor, check=False
                )
            else:
                verdict = self.decide(frame.run_id, frame.approval_id, frame.decision, actor)
            return verdict.frame(frame.req_id)
        key = (frame.run_id, frame.approval_id)
        approval = self.open.get(key)
        if approval is None or approval.platform != platform:
            return None
        if frame.state in approval.shown and (frame.ref is None or frame.ref in approval.refs):
            return None
        approval.shown.add(frame.state)
        if frame.ref and frame.ref not in approval.refs:
            approval.refs.append(frame.ref)
        live = self.router.live.get(frame.run_id)
        if live is not None and not live.finishing:
            event: dict[str, Any] = {
                "status": "shown",
                "approval_id": frame.approval_id,
                "state": frame.state,
            }
            if frame.ref:
                event["ref"] = frame.ref
            self.router._record(live, "approval", event)
        if approval.state == "decided" and "decided" not in approval.shown:
            self._show(approval)  # decided while the buttons were on their way
        return None

    # runs ending

    def run_ended(self, run_id: str) -> None:
        """Forget the run's requests; a pending one is closed in chat (nothing waits)."""
        for key in [k for k in self.open if k[0] == run_id]:
            approval = self.open.pop(key)
            self._disarm(key)
            if approval.state == "pending":
                approval.state = "decided"
                approval.decision = "expired"
                approval.by = "the run ended"
                approval.decided_at = time.time()
                approval.shown.discard("decided")
                self._show(approval)
            self.done[key] = approval
            while len(self.done) > DONE_MEMORY:
                self.done.popitem(last=False)
