"""The platform-independent chat bridge: everything a bridge does but talk to its platform.

:class:`ChatBridge` is the base of every platform's bridge (``SlackBridge``,
``TelegramBridge``); the platform's class, its *adapter*, provides the API calls, the
formats and the event parsing (see bridges/ADAPTERS.md). The core owns:

- **Lifecycle and tasks.** ``start`` connects to the platform (a refused token raises,
  an outage is retried in the background) and then joins the hub; ``close`` stops
  listening, gives up requests kept for an absent hub, lets the requests in hand reach
  the hub, leaves it, closes the status tickers and cancels every task the bridge
  owns. Every background task is started with :meth:`ChatBridge.spawn`, named
  ``<Bridge>:<what>``, and a failure of one is logged.
- **Submit and explain.** :meth:`ChatBridge.start_run` hands a request to the hub
  (kept and said so while the hub is away) and says in the chat why the hub refused it;
  :meth:`ChatBridge.cancel` cancels a conversation's active run and says which.
- **Progress.** ``progress`` frames feed one :class:`~bridges.core.status.RunStatus`
  per run (the status message and the keep-alive), never for a run already answered.
- **Delivery.** ``deliver`` frames are posted part by part. The hub's reply is
  acknowledged only once the platform took every part (HubLink acks when this returns):
  any failure that may pass raises, and the hub's outbox re-sends the reply. Parts
  already posted are remembered per delivery, so a re-send posts only the missing ones;
  for a run this process did not submit, the adapter may say what an earlier process
  posted (:meth:`ChatBridge.earlier`). A reply the platform refuses for good
  (:class:`~bridges.core.errors.Undeliverable`) is logged, explained by the adapter
  and acknowledged. Closing the request (the status message's end, reactions) follows
  on its own: it never holds a reply back.
- **Bounded memories**: the runs submitted here, the runs answered, the deliveries
  under way and the status tickers, each the newest :data:`RUN_MEMORY`.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any, ClassVar, Generic, Self, TypeVar

from bridges.common import (
    ATTACHMENT_ONLY_PROMPT,
    STARTUP_BACKOFF_MAX_S,
    Attachment,
    AttachmentRefused,
    RepoDefaults,
    TargetDefaults,
    attachment_options,
    freeze_startup_heap,
    retry_startup,
    split_optimize_prefix,
    split_target_prefix,
)
from bridges.core.approval import (
    DECIDED_WORDS,
    Approval,
    decided_line,
    parse_button,
    request_lines,
)
from bridges.core.delivery import Reply, Sent
from bridges.core.errors import Undeliverable
from bridges.core.lifecycle import State, remember
from bridges.core.status import RunStatus, Shown, StatusTiming
from bridges.core.texts import Texts, steer_failed_text, steered_text
from bridges.hub_link import Frame, HubError, HubLink, Submitted
from bridges.settings import BridgeSettings
from kernel.logs import bound
from wire import ErrorCode

log = logging.getLogger(__name__)

TargetT = TypeVar("TargetT")
T = TypeVar("T")

#: How long a request to the hub (submit, cancel, ...) may take.
HUB_REQUEST_TIMEOUT_S = 10.0
#: Requests in hand get this long to reach the hub when the bridge stops.
STOP_GRACE_S = 5.0
#: Each step of stopping.
STOP_TIMEOUT_S = 10.0
#: Runs remembered (submitted here, answered), deliveries under way, status tickers.
RUN_MEMORY = 1_000


class ChatBridge(abc.ABC, Generic[TargetT]):
    """A chat bridge node; an async context manager. ``TargetT`` is the platform's
    place of a conversation (a Slack thread, a Telegram chat and topic)."""

    #: The platform as the hub knows it (a bridge node's ``platform``): ``slack``.
    PLATFORM: ClassVar[str]
    #: The platform as people read it in logs: ``Slack``.
    PLATFORM_NAME: ClassVar[str]
    #: Errors of :meth:`connect` that need a person (a refused token): never retried.
    REFUSED: ClassVar[tuple[type[BaseException], ...]]
    #: Errors of :meth:`connect` that may pass (an outage): retried in the background.
    UNREACHABLE: ClassVar[tuple[type[BaseException], ...]] = (Exception,)
    #: Errors of the platform's API calls that a best-effort call swallows (and logs).
    CALL_ERRORS: ClassVar[tuple[type[BaseException], ...]] = (OSError, TimeoutError)
    #: True when replies can be posted before :meth:`connect` succeeded: the bridge
    #: then joins the hub at once, also while the connection is retried.
    REPLIES_BEFORE_CONNECT: ClassVar[bool] = False
    #: True when the platform shows a renewable "working…" activity (:meth:`keep_alive`).
    KEEP_ALIVE: ClassVar[bool] = False
    #: The middle of the name of each run's status task: ``<Bridge>:<this>:<run>``.
    STATUS_TASK: ClassVar[str] = "run"
    #: Retrying a start-up connection that failed: the longest wait between tries.
    STARTUP_BACKOFF_MAX_S: ClassVar[float] = STARTUP_BACKOFF_MAX_S
    #: The platform's wording of what the core says.
    texts: ClassVar[Texts]

    def __init__(
        self, settings: BridgeSettings, *, node_id: str | None, status: StatusTiming
    ) -> None:
        self.state = State.NEW
        self.status_timing = status
        #: The repository each place works on (``repo owner/name``; BRIDGE_REPOS at start).
        self.repos = RepoDefaults(settings.repos)
        #: Where each place's runs go (``target @label``; a message's ``@label`` wins).
        self.run_targets = TargetDefaults()
        self.link = HubLink(
            settings,
            self.PLATFORM,
            on_deliver=self._on_deliver,
            on_progress=self._on_progress,
            on_approval=self._on_approval,
            node_id=node_id,
            request_timeout=HUB_REQUEST_TIMEOUT_S,
            pending_max=settings.pending_max,
            pending_max_age_s=settings.pending_max_age_s,
        )
        self._startup: asyncio.Task[None] | None = None
        self._live = False
        self._runs: OrderedDict[str, RunStatus] = OrderedDict()
        self._submitted: OrderedDict[str, None] = OrderedDict()
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._sent: OrderedDict[str, Sent] = OrderedDict()
        #: Requests being handed to the hub: waited for (a while) when the bridge stops.
        self._requests: set[asyncio.Task[Any]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Approval frames shown by this process ((run, approval, state) -> ref): the hub
        #: may send one again before it hears it was shown; it is not shown twice.
        self._approvals: OrderedDict[str, str | None] = OrderedDict()

    # --- what an adapter provides (see bridges/ADAPTERS.md) -----------------------------

    async def open(self) -> None:
        """Build the platform's clients (no network yet)."""

    @abc.abstractmethod
    async def connect(self) -> None:
        """Reach the platform and learn who the bot is; raise one of :attr:`REFUSED`
        when it refuses the credentials, anything else when it cannot be reached."""

    async def listen(self) -> None:
        """Start taking the platform's events (the bridge joined the hub already)."""

    async def stop_listening(self) -> None:
        """Take no new events; the first step of :meth:`close`."""

    async def drain(self) -> None:
        """Let the events in hand finish (the platform's library may own them)."""

    async def shut(self) -> None:
        """Close the platform's clients; the last step of :meth:`close`."""

    @abc.abstractmethod
    def target_of(self, origin: dict[str, Any]) -> TargetT | None:
        """The place a run's ``origin`` names; None when it names none of this platform."""

    @abc.abstractmethod
    def session_key(self, target: TargetT) -> str:
        """The hub session of the conversation at ``target``."""

    @abc.abstractmethod
    def place(self, target: TargetT) -> str:
        """The key of the place's settings (its repository): a channel, a chat."""

    def where(self, target: TargetT) -> str:
        """The place as a log line names it (no secrets, no message text)."""
        return self.place(target)

    @abc.abstractmethod
    async def send_notice(self, target: TargetT, text: str) -> None:
        """Post one short message of the bot's own at ``target``; raises on failure."""

    def split_text(self, text: str) -> Sequence[str]:
        """The bot's own text cut into messages the platform takes."""
        return [text]

    def describe(self, exc: BaseException) -> str:
        """A short, secret-free account of a failed platform call."""
        return str(exc)

    async def post_status(self, run_id: str, target: TargetT, text: str) -> Shown:
        """Best effort: post a run's status message (its ref in :class:`Shown`)."""
        return Shown(stop=True)

    async def edit_status(self, target: TargetT, ref: Any, text: str) -> Shown:
        """Best effort: replace the text of a run's status message."""
        return Shown(stop=True)

    async def find_status(self, run_id: str, target: TargetT) -> tuple[Any, str] | None:
        """The status message (ref, text) an earlier process posted for a run this one
        did not submit; asked once, when a status message is due."""
        return None

    def status_ref_of(self, origin: dict[str, Any]) -> Any:
        """The status message the hub keeps in a run's ``origin`` (see ``status_ref``)."""
        return None

    async def keep_alive(self, target: TargetT) -> float:
        """Renew the platform's "working…" activity at ``target`` (best effort); the
        seconds until the next renewal. Used only when :attr:`KEEP_ALIVE` is set."""
        raise NotImplementedError

    @abc.abstractmethod
    def reply_parts(self, reply: Reply, target: TargetT) -> list[Any]:
        """The answer (or failure) of a reply as the parts to post, in order."""

    @abc.abstractmethod
    def diff_part(self, diff: str, run_id: str) -> Any:
        """The part that carries a run's changes (a unified diff) as a file."""

    @abc.abstractmethod
    def open_pr_part(self, run_id: str) -> Any:
        """The part that offers to open a pull request with a run's changes."""

    @abc.abstractmethod
    async def post_part(
        self, target: TargetT, run_id: str, part: Any, index: int, count: int
    ) -> Any:
        """Post one part of a reply; what the platform answered (e.g. its message id).

        Raises an :class:`Undeliverable` when the platform refuses it for good, anything
        else when it may take it later (the hub re-sends the reply)."""

    async def earlier(self, run_id: str, target: TargetT, parts: list[Any], sent: Sent) -> None:
        """For a run this process did not submit: fill in ``sent`` with the parts (and
        the status message) an earlier process of this bridge posted."""

    def check_deliverable(self) -> None:
        """Raise (a :class:`~bridges.core.errors.ReplyDeferred`) when no reply can be
        posted now; the hub re-sends it later."""

    @abc.abstractmethod
    async def undeliverable(self, target: TargetT, reply: Reply, exc: Undeliverable) -> None:
        """The platform refused the reply for good: log it, say it where possible."""

    @abc.abstractmethod
    async def close_request(
        self, target: TargetT, reply: Reply, sent: Sent, answered: bool
    ) -> None:
        """After the reply (best effort): end the status message, mark the request."""

    async def on_submitted(self, target: TargetT, submitted: Submitted) -> None:
        """The hub took a request (mark it, say its place in the queue)."""

    async def post_approval(self, target: TargetT, approval: Approval) -> str | None:
        """Post codex's request with the three buttons (``bridges.core.approval``); the
        message's id, to change it once decided. By default: a notice, no buttons."""
        headline, what, why = request_lines(approval)
        await self.send_notice(target, f"{headline}: {what}" + (f"\nWhy: {why}" if why else ""))
        return None

    async def edit_approval(self, target: TargetT, ref: str, approval: Approval) -> None:
        """Change the buttons' message ``ref`` to say who decided and when (raise to have
        the hub send it again)."""

    def decider_name(self, user_id: str) -> str:
        """A decider's platform user id as the chat writes it."""
        return user_id

    async def on_refused(self, target: TargetT) -> None:
        """The hub refused a request (said already): mark it as failed."""

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to the platform, then join the hub; an outage at start is retried in
        the background. Raises one of :attr:`REFUSED` when the platform refuses the
        credentials: that needs a person."""
        if self.state is not State.NEW:
            return
        self.state = State.STARTING
        try:
            await self.open()
            try:
                await self.connect()
            except self.REFUSED:
                raise
            except self.UNREACHABLE as exc:
                log.warning(
                    "%s is not reachable (%s); retrying in the background",
                    self.PLATFORM_NAME,
                    exc,
                )
                self._startup = asyncio.create_task(
                    self._connect_later(), name=f"{type(self).__name__}:startup"
                )
                if not self.REPLIES_BEFORE_CONNECT:
                    return
            await self._go_live()
        except BaseException:
            await self.close()
            raise

    async def _connect_later(self) -> None:
        up = await retry_startup(
            self.connect,
            platform=self.PLATFORM_NAME,
            refused=self.REFUSED,
            backoff_max=self.STARTUP_BACKOFF_MAX_S,
        )
        if up and not self._live:
            try:
                await self._go_live()
            except Exception:
                log.exception("starting the %s bridge failed; it stays down", self.PLATFORM_NAME)

    async def _go_live(self) -> None:
        self._live = True
        # Replies can be posted now: take them from the hub only from here on.
        await self.link.start()
        await self.listen()
        self.state = State.RUNNING
        freeze_startup_heap()

    async def close(self) -> None:
        """Take no new events, let the requests in hand reach the hub, leave it, stop.

        Idempotent."""
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        if self._startup is not None:
            self._startup.cancel()
            await asyncio.gather(self._startup, return_exceptions=True)
        await self.stop_listening()
        # Requests kept for a hub that is away end now, told they were not sent.
        self.link.give_up_kept()
        if self._requests:
            # No new events come in now; a request being submitted gets its answer.
            await asyncio.wait(set(self._requests), timeout=STOP_GRACE_S)
        await self.drain()
        # Cancels replies being posted: unacknowledged, the hub re-sends them later.
        await self.quietly("leaving the hub", self.link.close())
        runs = list(self._runs.values())
        self._runs.clear()
        await asyncio.gather(*(run.close(wait=False) for run in runs))
        tasks = [*self._requests, *self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.shut()
        log.info("%s bridge stopped", self.PLATFORM_NAME)

    async def quietly(self, what: str, step: Awaitable[Any]) -> None:
        """Await one step of stopping, time-boxed; a failure is logged, not raised."""
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await step
        except Exception as exc:
            log.warning("%s bridge: %s failed: %s", self.PLATFORM_NAME, what, exc)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def spawn(self, coro: Awaitable[T], name: str, *, request: bool = False) -> asyncio.Task[T]:
        """Run ``coro`` as a task the bridge owns (cancelled by :meth:`close`).

        A ``request`` (an event being handed to the hub) gets a grace period first."""
        task: asyncio.Task[T] = asyncio.ensure_future(coro)
        task.set_name(f"{type(self).__name__}:{name}")
        (self._requests if request else self._tasks).add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._requests.discard(task)
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    # --- the chat -> hub -------------------------------------------------------------

    async def say(self, target: TargetT, text: str) -> None:
        """Best effort: the bot's own short answers (refusals, help, notices)."""
        try:
            for chunk in self.split_text(text):
                await self.send_notice(target, chunk)
        except self.CALL_ERRORS as exc:
            log.warning("could not answer in %s: %s", self.where(target), self.describe(exc))

    def origin(self, target: TargetT, origin: dict[str, Any]) -> dict[str, Any]:
        """``origin`` with the place's repository, if it has one."""
        repo = self.repos.get(self.place(target))
        if repo:
            origin["repo"] = repo
        return origin

    async def submit(
        self,
        target: TargetT,
        prompt: str,
        *,
        origin: dict[str, Any],
        optimize: bool | None,
        dedupe_key: str | None,
        attachments: dict[str, list[dict[str, str]]] | None = None,
        keep: bool = True,
    ) -> Submitted:
        """Hand a request to the hub; raises :class:`HubError` when it refuses.

        While the hub is away the request is kept and, with ``keep``, the chat told so.
        ``dedupe_key`` (the platform's id of the message) makes a message the platform
        re-sends name the run it started instead of starting another. A prompt that
        starts with ``@label`` or ``@name`` goes there (the prefix is taken off); else
        to the place's target (``target @label``), if it has one."""
        run_target, rest = split_target_prefix(prompt)
        if run_target is None:
            run_target = self.run_targets.get(self.place(target))
        else:
            if optimize is None:  # `@gpu !optimize ...` as well as `!optimize @gpu ...`
                optimize, rest = split_optimize_prefix(rest)
            if not rest:
                raise HubError(
                    ErrorCode.BAD_FRAME.value,
                    f"the message says where to run (@{run_target}) but asks nothing",
                )
            prompt = rest
        submitted = await self.link.submit(
            prompt,
            session_key=self.session_key(target),
            origin=self.origin(target, origin),
            optimize=optimize,
            dedupe_key=dedupe_key,
            on_kept=(lambda: self.say(target, self.texts.kept())) if keep else None,
            attachments=attachments,
            target=run_target,
        )
        remember(self._submitted, submitted.run_id, None, RUN_MEMORY)
        return submitted

    async def start_run(
        self,
        target: TargetT,
        prompt: str,
        *,
        origin: dict[str, Any],
        optimize: bool | None,
        dedupe_key: str | None,
        attachments: dict[str, list[dict[str, str]]] | None = None,
    ) -> Submitted | None:
        """Submit and explain: a refusal is said in the chat; the run is then shown."""
        try:
            submitted = await self.submit(
                target,
                prompt,
                origin=origin,
                optimize=optimize,
                dedupe_key=dedupe_key,
                attachments=attachments,
            )
        except HubError as exc:
            log.warning("the hub did not take a request from %s: %s", self.where(target), exc)
            await self.say(target, self.texts.hub_error(exc.code, str(exc)))
            await self.on_refused(target)
            return None
        if submitted.steered:
            # Into the running turn: that run's status and reply go on as they were.
            await self.say(target, steered_text(submitted.run_id))
            return submitted
        if submitted.steer_error:
            await self.say(target, steer_failed_text(submitted.steer_error))
        await self.on_submitted(target, submitted)
        self.track(submitted.run_id, target, state=None, position=submitted.position)
        return submitted

    async def cancel(self, target: TargetT) -> None:
        """Cancel the active run of the conversation at ``target`` and say which."""
        try:
            cancelled = await self.link.cancel(session_key=self.session_key(target))
        except HubError as exc:
            await self.say(target, self.texts.hub_error(exc.code, str(exc)))
            return
        log.info("%s: cancelled %s", self.where(target), cancelled or "nothing")
        await self.say(target, self.texts.cancel(cancelled))

    async def explain(self, target: TargetT, exc: HubError) -> None:
        """Say why the hub refused a request."""
        await self.say(target, self.texts.hub_error(exc.code, str(exc)))

    async def answer(self, target: TargetT, answer: Awaitable[str]) -> None:
        """Say the text a request to the hub answers with, or why the hub refused it."""
        try:
            text = await answer
        except HubError as exc:
            await self.explain(target, exc)
            return
        await self.say(target, text)

    async def set_repo(self, target: TargetT, argument: str) -> None:
        """``repo <argument>``: the place's repository for new conversations; answered."""
        await self.say(target, self.repos.command(self.place(target), argument))

    async def set_run_target(self, target: TargetT, argument: str) -> None:
        """``target <argument>``: where the place's new runs go (``hub.targets``); answered."""
        await self.say(target, self.run_targets.command(self.place(target), argument))

    async def attach(
        self, target: TargetT, prompt: str, download: Awaitable[Iterable[Attachment]]
    ) -> tuple[str, dict[str, list[dict[str, str]]]] | None:
        """A message's files as a submit's ``attachments``, with its prompt (files alone
        ask about themselves); None when one may not be attached (said in the chat)."""
        try:
            found = await download
        except AttachmentRefused as exc:
            await self.say(target, str(exc))
            return None
        return prompt or ATTACHMENT_ONLY_PROMPT, attachment_options(found)

    # --- the hub -> chat: progress ----------------------------------------------------

    def track(
        self,
        run_id: str,
        target: TargetT,
        *,
        state: str | None,
        detail: str | None = None,
        position: int | None = None,
        status_ref: Any = None,
        answer: str | None = None,
    ) -> None:
        """Start or update the status of a run still going (not one already answered).

        ``state`` None keeps the state known: the answer to a submit may arrive after
        the run's first progress frames. ``status_ref``: the status message the hub
        knows of (posted by an earlier process of this bridge), used when there is none.
        """
        if self.state is not State.RUNNING or run_id in self._finished:
            return
        run = self._runs.get(run_id)
        if run is None:
            run = RunStatus(
                run_id,
                target,
                task_name=f"{type(self).__name__}:{self.STATUS_TASK}",
                timing=self.status_timing,
                calls=self,
                text=self.texts.status,
                keep_alive=self.keep_alive if self.KEEP_ALIVE else None,
                find=lambda: self.find_status(run_id, target),
                with_answer=self.texts.with_answer,
            )
            self._runs[run_id] = run
            while len(self._runs) > RUN_MEMORY:
                _, oldest = self._runs.popitem(last=False)
                self.spawn(oldest.close(wait=False), f"status-evicted:{oldest.run_id}")
        run.adopt(status_ref)
        run.update(state, detail, position, answer)

    async def _on_progress(self, frame: Frame) -> None:
        run_id = str(frame.get("run_id") or "")
        origin = frame.get("origin") or {}
        target = self.target_of(origin)
        if not run_id or target is None:
            return
        position = frame.get("position")
        detail = frame.get("detail")
        answer = frame.get("answer")
        self.track(
            run_id,
            target,
            state=str(frame.get("state") or "running"),
            detail=detail if isinstance(detail, str) else None,
            position=position if isinstance(position, int) else None,
            status_ref=self.status_ref_of(origin),
            answer=answer if isinstance(answer, str) else None,
        )

    # --- approvals ----------------------------------------------------------------------

    async def _on_approval(self, frame: Frame) -> None:
        """Show an ``approval`` frame: the buttons, or who decided on every copy of them.

        Raising leaves it unconfirmed: the hub sends it again."""
        approval = Approval.of(frame)
        shown_as = (approval.run_id, approval.approval_id, approval.state)
        key = ":".join(shown_as)
        with bound(run_id=approval.run_id):
            if key in self._approvals:
                self.link.approval_shown(*shown_as, self._approvals[key])
                return
            target = self.target_of(approval.origin)
            if target is None:
                log.error("an approval names no %s place; not shown", self.PLATFORM_NAME)
                self.link.approval_shown(*shown_as, None)
                return
            ref: str | None = None
            if approval.state == "pending":
                ref = await self.post_approval(target, approval)
                log.info("approval %s shown in %s", approval.approval_id, self.where(target))
            else:
                for shown in approval.refs:
                    await self.edit_approval(target, shown, approval)
                if not approval.refs and approval.decision != "expired":
                    await self.send_notice(target, decided_line(approval, self.decider_name))
            remember(self._approvals, key, ref, RUN_MEMORY)
            self.link.approval_shown(*shown_as, ref)

    async def press(self, user: str, data: str) -> tuple[str, str]:
        """A press of an approval button by ``user`` (the platform's user id), with the
        button's data: (the hub's outcome, what to tell the presser alone)."""
        parsed = parse_button(data)
        if parsed is None:
            return "unknown", "This button is not one of codex-hub's approval buttons."
        run_id, approval_id, decision = parsed
        try:
            result = await self.link.decide_approval(run_id, approval_id, decision, user)
        except HubError as exc:
            return "unknown", self.texts.hub_error(exc.code, str(exc))
        if result.outcome == "decided":
            text = f"{DECIDED_WORDS.get(decision, decision)}: codex hears it now."
        elif result.outcome == "refused":
            text = f"Not allowed: {result.message}."
        else:
            text = result.message[:1].upper() + result.message[1:]
        log.info("approval %s of run %s: %s by %s", approval_id, run_id, result.outcome, user)
        return result.outcome, text

    # --- the hub -> chat: delivery ----------------------------------------------------

    async def _on_deliver(self, frame: Frame) -> None:
        reply = Reply.of(frame)
        with bound(run_id=reply.run_id):
            target = self.target_of(reply.origin)
            if target is None:
                log.error(
                    "the reply names no %s place in its origin; dropping it", self.PLATFORM_NAME
                )
                return
            self.check_deliverable()
            remember(self._finished, reply.run_id, None, RUN_MEMORY)
            parts = self.reply_parts(reply, target)
            if reply.diff:
                parts.append(self.diff_part(reply.diff, reply.run_id))
                if not reply.pr_url:  # the run opened none: offer to
                    parts.append(self.open_pr_part(reply.run_id))
            sent = self._sent.get(reply.delivery_id)
            if sent is None:
                sent = await self._first_attempt(reply.run_id, target, parts)
                remember(self._sent, reply.delivery_id, sent, RUN_MEMORY)
            try:
                for index, part in enumerate(parts):
                    if index not in sent.parts:
                        sent.parts[index] = await self.post_part(
                            target, reply.run_id, part, index, len(parts)
                        )
            except Undeliverable as exc:
                # Acknowledged all the same: re-sending it would only fail again, forever.
                answered = False
                await self.undeliverable(target, reply, exc)
            else:
                answered = True
                log.info(
                    "replied in %s (%s, %d parts)", self.where(target), reply.status, len(parts)
                )
            self._sent.pop(reply.delivery_id, None)
            # The reply is out: acknowledged now (when this returns), while closing the
            # request, best effort, follows on its own.
            self.spawn(self.close_request(target, reply, sent, answered), f"close:{reply.run_id}")

    async def _first_attempt(self, run_id: str, target: TargetT, parts: list[Any]) -> Sent:
        """What a delivery starts from: its status message, and any parts posted before."""
        sent = Sent()
        run = self._runs.pop(run_id, None)
        if run is not None:
            sent.status = await run.close(wait=True)
        if run_id not in self._submitted:
            # Submitted before this process started: an earlier one may have posted parts.
            await self.earlier(run_id, target, parts, sent)
        return sent
