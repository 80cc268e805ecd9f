"""A bridge's side of the hub: submit runs, hear progress, deliver replies exactly once.

Bridges hold no routing logic; this is all they know of the hub. A reply is
acknowledged only after the platform accepted it (``on_deliver`` returned without
raising), so a crash or an outage of the platform loses no reply: the hub re-sends it.
A reply that arrives again while it is being posted, or after it was posted, is not
posted twice.

A request made while the hub cannot be reached (down, restarting, the connection just
dropped) is *kept*: :meth:`HubLink.submit` calls the bridge's ``on_kept`` (which tells
the user it is queued) and returns once the hub, back, took it. Kept requests go to the
hub one by one in the order they came, and a request made while some are kept waits
behind them, so the order within a conversation holds. They are bounded
(``BRIDGE_PENDING_MAX`` requests, each for ``BRIDGE_PENDING_MAX_AGE_S``): past the
count a new one is refused at once (:class:`HubError` ``pending_full``), past the age a
kept one is given up (``pending_expired``); the bridge says so in its own words. They
live in this process: a bridge stopped meanwhile sends none of them (``bridge_stopping``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from kernel.credentials import node_token
from kernel.node_client import NodeClient, NotConnected
from kernel.settings import NodeSettings
from wire import (
    AckFrame,
    ApprovalDecideFrame,
    ApprovalFrame,
    ApprovalResultFrame,
    ApprovalShownFrame,
    CancelFrame,
    CancelledFrame,
    DeliverFrame,
    ErrorCode,
    ErrorFrame,
    FrameModel,
    Hello,
    ProgressFrame,
    ResetSessionFrame,
    SessionStatusFrame,
    StatusRefFrame,
    SubmitFrame,
    SubmittedFrame,
    dump,
)

log = logging.getLogger(__name__)

#: A frame as the bridge gets it (``deliver``, ``progress``, a session's status): the
#: frame of :mod:`wire`, dumped as it came on the wire.
Frame = dict[str, Any]

#: Status message refs kept for re-sending after a reconnect (the newest runs').
STATUS_REF_MEMORY = 1000
#: ``req_id`` prefix of a ``status_ref`` frame: the hub's error about one names it.
_STATUS_REF_REQ = "status_ref:"
#: Requests kept while the hub is away, and for how long (BRIDGE_PENDING_MAX, _AGE_S).
PENDING_MAX = 100
PENDING_MAX_AGE_S = 600.0
#: Refusals that mean "the hub is away for now": the request is kept and sent later.
_HUB_AWAY = frozenset({ErrorCode.HUB_UNREACHABLE, ErrorCode.HUB_CLOSING})
#: A kept request the hub turned away again is sent again after this, then ever later.
KEPT_RETRY_MIN_S = 0.2
KEPT_RETRY_MAX_S = 5.0


class HubError(Exception):
    """The hub refused a request; ``code`` says why (e.g. ``queue_full``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Kept:
    """A submit kept while the hub is away, and the caller waiting for its answer."""

    frame: SubmitFrame | Frame
    kept_at: float
    answer: asyncio.Future[FrameModel] = field(repr=False)
    #: When the request was made, among all submits of this link: the queue's order.
    seq: int = 0


@dataclass(frozen=True)
class Submitted:
    """A run the hub accepted, and how many runs are ahead of it in its session."""

    run_id: str
    position: int
    duplicate: bool = False
    #: The prompt went into the running turn of ``run_id`` (no new run: STEER_MODE).
    steered: bool = False
    #: Why adding it to the running turn failed: it runs as the new run ``run_id``.
    steer_error: str | None = None


def _retrieve(answer: asyncio.Future[FrameModel]) -> None:
    if not answer.cancelled():
        answer.exception()


def _submitted(reply: FrameModel | Frame) -> Submitted:
    if not isinstance(reply, SubmittedFrame):
        try:
            reply = SubmittedFrame.model_validate(dump(reply))
        except ValueError as exc:
            raise HubError(
                ErrorCode.BAD_FRAME, f"the hub answered a submit with {reply!r}"
            ) from exc
    return Submitted(
        run_id=reply.run_id,
        position=reply.position,
        duplicate=reply.duplicate,
        steered=reply.steered,
        steer_error=reply.steer_error,
    )


class HubLink:
    """The bridge node's connection to the hub; an async context manager."""

    def __init__(
        self,
        settings: NodeSettings,
        platform: str,
        *,
        on_deliver: Callable[[Frame], Awaitable[None]],
        on_progress: Callable[[Frame], Awaitable[None]] | None = None,
        on_approval: Callable[[Frame], Awaitable[None]] | None = None,
        node_id: str | None = None,
        request_timeout: float = 30.0,
        pending_max: int = PENDING_MAX,
        pending_max_age_s: float = PENDING_MAX_AGE_S,
    ) -> None:
        self.platform = platform
        self.pending_max = pending_max
        self.pending_max_age_s = pending_max_age_s
        #: Submits kept while the hub is away, oldest first (see the module docstring).
        self._pending: deque[_Kept] = deque()
        self._sender: asyncio.Task[None] | None = None
        self._sending: _Kept | None = None
        self._submits = itertools.count()
        self.settings = settings
        self._on_deliver = on_deliver
        self._on_progress = on_progress
        self._on_approval = on_approval
        self._timeout = request_timeout
        name = settings.node_name or socket.gethostname()
        # Stable per platform and host: a restarted bridge replaces its old connection.
        self.node_id = node_id or f"{platform}-bridge-{name}"
        self._inflight: set[str] = set()
        self._done: OrderedDict[str, None] = OrderedDict()
        #: run id -> status message ref, until the run's reply is posted.
        self._status_refs: OrderedDict[str, str] = OrderedDict()
        self.client = NodeClient(
            settings.hub_url,
            hello=self._hello,
            on_frame=self._on_frame,
            on_connect=self._on_connect,
            name=f"{platform} bridge",
            role="bridge",
        )

    def _hello(self) -> Hello:
        return Hello(
            type="hello",
            role="bridge",
            token=node_token(
                self.settings.hub_token.get_secret_value(), self.settings.hub_db, self.platform
            ),
            node_id=self.node_id,
            name=self.node_id,
            platform=self.platform,
        )

    async def start(self) -> None:
        """Connect in the background (reconnecting with backoff)."""
        await self.client.start()

    def give_up_kept(self) -> None:
        """Fail every kept request with ``bridge_stopping`` (the bridge is stopping).

        A bridge calls it before it waits for the requests in hand, so that those
        waiting for a hub that is away end (and say so) at once.
        """
        if self._sender is not None:
            self._sender.cancel()
        while self._pending:
            kept = self._pending.popleft()
            if not kept.answer.done():
                kept.answer.set_exception(
                    HubError(
                        ErrorCode.BRIDGE_STOPPING, "the bridge stopped before the hub was back"
                    )
                )

    async def close(self) -> None:
        """Disconnect; kept requests fail with ``bridge_stopping``. Idempotent."""
        self.give_up_kept()
        if self._sender is not None:
            await asyncio.gather(self._sender, return_exceptions=True)
            self._sender = None
        await self.client.close()

    async def __aenter__(self) -> HubLink:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # requests

    async def _request(self, frame: FrameModel | Frame) -> FrameModel:
        try:
            reply: FrameModel = await self.client.request(frame, timeout=self._timeout)
        except (TimeoutError, NotConnected) as exc:
            raise HubError(ErrorCode.HUB_UNREACHABLE, f"the hub is not reachable: {exc}") from exc
        if isinstance(reply, ErrorFrame):
            raise HubError(reply.code, reply.message)
        return reply

    async def submit(
        self,
        prompt: str,
        *,
        session_key: str,
        origin: dict[str, Any],
        optimize: bool | None = None,
        dedupe_key: str | None = None,
        on_kept: Callable[[], Awaitable[None]] | None = None,
        attachments: dict[str, list[dict[str, str]]] | None = None,
        target: str | None = None,
    ) -> Submitted:
        """Ask the hub for a run; raises :class:`HubError` when it refuses.

        ``target`` says where it may go (``gpu,prod``, ``host-1``; the hub checks it).

        ``dedupe_key`` (the platform's id of the message) makes a re-sent message name
        the run it already started instead of starting another. While the hub is away
        the request is kept (``on_kept`` is awaited then, once) and this returns when
        the hub took it; see the module docstring for the bounds.
        """
        # Not validated here: the hub checks it, and its refusal (a prompt with a NUL
        # character: bad_frame) is what the user is shown.
        fields: dict[str, Any] = {
            "prompt": prompt,
            "session_key": session_key,
            "origin": origin,
            "optimize": optimize,
            "dedupe_key": dedupe_key,
        }
        if attachments:
            fields["attachments"] = attachments
        if target:
            fields["target"] = target
        frame = SubmitFrame.model_construct(**fields)
        seq = next(self._submits)
        if not self._pending and self.client.is_connected:
            try:
                return _submitted(await self._request(frame))
            except HubError as exc:
                # Lost with the connection, or the hub is going: keep it (the dedupe
                # key makes a repeat of one the hub did take name the same run).
                if exc.code not in _HUB_AWAY or not self.pending_max:
                    raise
            away = True
        elif not self.pending_max:
            return _submitted(await self._request(frame))
        else:
            # Connected with requests kept: this one only waits behind them, briefly.
            away = not self.client.is_connected
        return _submitted(await self._keep(frame, seq, on_kept if away else None))

    @property
    def pending(self) -> int:
        """Requests kept while the hub is away."""
        return len(self._pending)

    async def _keep(
        self, frame: SubmitFrame | Frame, seq: int, on_kept: Callable[[], Awaitable[None]] | None
    ) -> Frame:
        """Keep ``frame`` until the hub is back and took it; its answer, as a dict."""
        self._expire()
        if len(self._pending) >= self.pending_max:
            log.warning(
                "%s bridge: the hub is away and %d requests wait for it; refused one more",
                self.platform,
                len(self._pending),
            )
            raise HubError(
                ErrorCode.PENDING_FULL,
                f"the hub is not reachable and {len(self._pending)} requests already wait for it",
            )
        kept = _Kept(frame, time.monotonic(), asyncio.get_running_loop().create_future(), seq)
        # Nobody may wait for it any more (a caller cancelled): its outcome is not an error.
        kept.answer.add_done_callback(_retrieve)
        # In the order the requests were made: one whose direct submit failed with the
        # connection goes before those made while it failed.
        index = len(self._pending)
        while index > 0 and self._pending[index - 1].seq > seq:
            index -= 1
        if index == 0 and self._pending and self._pending[0] is self._sending:
            index = 1  # already on its way to the hub
        self._pending.insert(index, kept)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_kept(), name="HubLink:pending")
        log.info(
            "%s bridge: the hub is not reachable; a request is kept (%d waiting)",
            self.platform,
            len(self._pending),
        )
        if on_kept is not None:
            try:
                await on_kept()
            except Exception:  # telling the user is best effort; the request stays kept
                log.warning("%s bridge: could not say a request is kept", self.platform)
        return (await asyncio.shield(kept.answer)).dump()

    def _expire(self) -> None:
        """Give up the kept requests older than ``pending_max_age_s`` (the oldest first)."""
        limit = time.monotonic() - self.pending_max_age_s
        while (
            self._pending
            and self._pending[0].kept_at <= limit
            # Being sent now: the hub may take it, so only its answer decides.
            and self._pending[0] is not self._sending
        ):
            kept = self._pending.popleft()
            log.warning("%s bridge: a kept request waited too long for the hub", self.platform)
            if not kept.answer.done():
                kept.answer.set_exception(
                    HubError(
                        ErrorCode.PENDING_EXPIRED,
                        f"the hub was not back within {self.pending_max_age_s:g} s",
                    )
                )

    async def _send_kept(self) -> None:
        """Send the kept requests, in order, whenever the hub is there; expire the old."""
        backoff = KEPT_RETRY_MIN_S
        while True:
            self._expire()
            if not self._pending:
                return
            head = self._pending[0]
            wait = head.kept_at + self.pending_max_age_s - time.monotonic()
            try:
                async with asyncio.timeout(max(0.0, wait)):
                    await self.client.connected.wait()
            except TimeoutError:
                continue  # the head is too old now: expired at the top of the loop
            self._sending = head
            reply: FrameModel
            try:
                reply = await self._request(head.frame)
            except HubError as exc:
                if exc.code in _HUB_AWAY:
                    # Away again (a hub that is going answers hub_closing until its
                    # socket closes): try again a little later, then ever later.
                    await asyncio.sleep(backoff)
                    backoff = min(KEPT_RETRY_MAX_S, backoff * 2)
                    continue
                reply = ErrorFrame(code=exc.code, message=str(exc))
            except Exception as exc:  # never leave a caller waiting for ever
                log.exception("%s bridge: sending a kept request failed", self.platform)
                reply = ErrorFrame(code=ErrorCode.INTERNAL_ERROR, message=str(exc))
            finally:
                self._sending = None
            backoff = KEPT_RETRY_MIN_S
            if self._pending and self._pending[0] is head:
                self._pending.popleft()
            if not head.answer.done():
                if isinstance(reply, ErrorFrame):
                    head.answer.set_exception(HubError(reply.code, reply.message))
                else:
                    head.answer.set_result(reply)

    async def cancel(
        self, *, session_key: str | None = None, run_id: str | None = None
    ) -> list[str]:
        """Cancel a run, or the active run of a session; returns what was cancelled."""
        reply = await self._request(CancelFrame(session_key=session_key, run_id=run_id))
        return list(reply.run_ids) if isinstance(reply, CancelledFrame) else []

    async def reset_session(self, session_key: str) -> None:
        """Make the session's next run start a fresh codex conversation."""
        await self._request(ResetSessionFrame(session_key=session_key))

    async def session_status(self, session_key: str) -> Frame:
        """``{"active": run | None, "queued": [run, ...]}`` for a session."""
        reply = await self._request(SessionStatusFrame(session_key=session_key))
        return reply.dump()

    def status_ref(self, run_id: str, ref: str) -> None:
        """Tell the hub where a run's status message is; never waits, never raises.

        The hub keeps it with the run and puts it in the run's later ``progress`` and
        ``deliver`` frames, so a restarted bridge finds the message. Kept here until the
        run's reply is posted, and sent again after every reconnect: a hub that was away
        when it was first sent hears of it all the same.
        """
        self._status_refs[run_id] = ref
        self._status_refs.move_to_end(run_id)
        while len(self._status_refs) > STATUS_REF_MEMORY:
            self._status_refs.popitem(last=False)
        self._send_status_ref(run_id, ref)

    def _send_status_ref(self, run_id: str, ref: str) -> None:
        # Not validated here: the hub checks it (and answers a bad one with an error).
        frame = StatusRefFrame.model_construct(
            req_id=f"{_STATUS_REF_REQ}{run_id}", run_id=run_id, ref=ref
        )
        try:
            self.client.send(frame)
        except Exception:  # best effort: the reply never depends on it
            log.warning("%s bridge: could not send a status ref", self.platform, exc_info=True)

    async def decide_approval(
        self, run_id: str, approval_id: str, decision: str, user: str
    ) -> ApprovalResultFrame:
        """A press of an approval button by ``user`` (the platform's id): the hub's verdict.

        Raises HubError when the hub is away or refuses the frame."""
        reply = await self._request(
            ApprovalDecideFrame(
                run_id=run_id,
                approval_id=approval_id,
                decision=decision,  # type: ignore[arg-type]
                user=user,
            )
        )
        if not isinstance(reply, ApprovalResultFrame):
            raise HubError(ErrorCode.BAD_FRAME, f"the hub answered a press with {reply!r}")
        return reply

    def approval_shown(self, run_id: str, approval_id: str, state: str, ref: str | None) -> None:
        """Tell the hub an ``approval`` frame is on the platform (``ref``: the message with
        the buttons); until it hears so, the hub sends the frame again. Never raises."""
        fields: dict[str, Any] = {"ref": ref} if ref else {}
        try:
            frame = ApprovalShownFrame(
                run_id=run_id,
                approval_id=approval_id,
                state=state,  # type: ignore[arg-type]
                **fields,
            )
            self.client.send(frame)
        except Exception:  # the hub sends the frame again, and this is tried again
            log.warning("%s bridge: could not confirm an approval", self.platform, exc_info=True)

    async def _on_connect(self) -> None:
        for run_id, ref in list(self._status_refs.items()):
            self._send_status_ref(run_id, ref)

    # frames from the hub

    async def _on_frame(self, frame: FrameModel) -> None:
        if isinstance(frame, DeliverFrame):
            await self._deliver(frame)
        elif isinstance(frame, ProgressFrame) and self._on_progress is not None:
            await self._on_progress(frame.dump())
        elif isinstance(frame, ApprovalFrame) and self._on_approval is not None:
            try:
                await self._on_approval(frame.dump())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # not confirmed: the hub sends it again
                log.warning(
                    "%s bridge: showing approval %s of run %s failed (%s: %s); the hub "
                    "sends it again",
                    self.platform,
                    frame.approval_id,
                    frame.run_id,
                    type(exc).__name__,
                    exc,
                )
        elif isinstance(frame, ErrorFrame):
            req_id = frame.req_id or ""
            if req_id.startswith(_STATUS_REF_REQ):
                # The run is over and answered (or unknown): nothing left to tell.
                self._status_refs.pop(req_id.removeprefix(_STATUS_REF_REQ), None)
                log.info("%s bridge: status ref not kept: %s", self.platform, frame.message)
            else:
                log.warning("%s bridge: hub reported %s", self.platform, frame.message)

    async def _deliver(self, deliver: DeliverFrame) -> None:
        delivery_id = deliver.delivery_id
        if delivery_id in self._done:
            self.client.send(AckFrame(delivery_id=delivery_id))
            return
        if delivery_id in self._inflight:
            return
        self._inflight.add(delivery_id)
        try:
            await self._on_deliver(deliver.dump())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Not acknowledged: the hub re-sends it after HUB_REDELIVER_S.
            log.warning(
                "%s bridge: posting the reply of run %s failed (%s: %s); the hub re-sends it",
                self.platform,
                deliver.run_id,
                type(exc).__name__,
                exc,
            )
            log.debug("posting failed", exc_info=True)
            return
        finally:
            self._inflight.discard(delivery_id)
        self._done[delivery_id] = None
        while len(self._done) > 10_000:
            self._done.popitem(last=False)
        self._status_refs.pop(deliver.run_id, None)
        self.client.send(AckFrame(delivery_id=delivery_id))
