"""The Slack bridge node: mentions and DMs in, hub runs out, answers back in the thread.

A translator and nothing more; every Slack quirk that needs no network is a pure
function in :mod:`bridges.slack.convert`.

- **Slack -> hub.** slack-bolt's ``AsyncApp`` is embedded over Socket Mode
  (``connect_async`` / ``close_async``; it never owns the loop) with one
  ``AsyncWebClient`` on ``SLACK_API_BASE_URL`` that waits out 429s (Retry-After). An
  ``app_mention`` in a channel or a ``message`` in a DM, written by a person (not the
  bot, another bot, an edit or a join), seen for the first time (Slack re-sends an
  event whose ack it missed: the ``event_id`` and the message are remembered), from an
  allowed user and channel, becomes :meth:`HubLink.submit`. The Slack thread is the
  session, and the run's ``origin`` names the channel, the thread and the request, all
  a reply needs. ``cancel`` / ``stop`` in a thread cancels its active run. A request
  made while the hub cannot be reached is kept by :class:`HubLink` (within
  ``BRIDGE_PENDING_MAX`` / ``BRIDGE_PENDING_MAX_AGE_S``), the thread told so, and
  submitted once the hub is back.
- **While it runs.** Once the hub took the run (the Slack calls do not delay its
  start), the request gets :eyes:. A run still working after one
  ``SLACK_STATUS_EDIT_INTERVAL_S`` (or waiting behind another run of its thread, at
  once, with its place in the queue) gets one status message in the thread, named
  after the run; ``progress`` frames then edit it with the run's state and the command
  codex is running, at most once per interval (one owned task per run coalesces the
  edits). A quick answer thus comes without one. The status message carries metadata
  naming its request, so a bridge process started later finds it in the thread.
- **hub -> Slack.** ``deliver`` posts the answer in the thread (split and labelled, or
  a file with a preview above ``SLACK_FILE_THRESHOLD_CHARS``), then edits the status
  message, if there is one, to its end state and swaps :eyes: for :white_check_mark:
  or :x:. A failure says what went wrong and names the run.

Delivery. The hub's reply is acknowledged only once Slack accepted every part of the
answer (HubLink acks when ``on_deliver`` returns): a failure that may pass (429 after
the retries, 5xx, network, credentials) raises, and the hub's outbox re-sends the
reply. Parts already posted are remembered per delivery, so a re-send posts only the
missing ones. Each part carries message metadata naming its run and number; a reply
for a run this process did not submit (it started before a restart) is first checked
against the thread (``conversations.replies``), so a restart between a partial post
and the re-send does not post the same parts twice. When that read fails (e.g. a
missing ``*:history`` scope) every part is posted again: the repeat is bounded to one
per restart and visible through the ``(i/n)`` labels. A reply Slack refuses for good
(unknown or archived channel, a message it will not take) is logged, said in the
thread when possible, and acknowledged, so it does not come back forever. The status
edits and the reactions are best effort: they never hold a reply back.

The Slack app this needs: Socket Mode on, an app-level token (``xapp-``) with
``connections:write``; bot events ``app_mention`` and ``message.im``; bot scopes
``app_mentions:read``, ``chat:write``, ``reactions:write``, ``files:write``,
``im:history``, and ``channels:history`` / ``groups:history`` for reading a thread
after a restart (without them a restarted bridge may repeat parts, as said above).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.context.async_context import AsyncBoltContext
from slack_sdk.errors import SlackApiError, SlackClientError, SlackRequestError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from bridges import common
from bridges.common import (
    STARTUP_BACKOFF_MAX_S,
    BridgeError,
    RepoDefaults,
    freeze_startup_heap,
    repo_command,
    retry_startup,
    split_optimize_prefix,
)
from bridges.hub_link import Frame, HubError, HubLink
from bridges.slack import convert
from bridges.slack.convert import ButtonPart, FilePart, ReplyPart, Target, TextPart
from bridges.slack.settings import SlackSettings
from kernel.logs import bound, register_secret

log = logging.getLogger(__name__)

APPLICATION_OCTET = "application/octet-stream"


class AttachmentRefused(Exception):
    """A shared file that may not be attached; the message is the reply to its sender."""


T = TypeVar("T")

#: One Web API request over HTTP.
HTTP_TIMEOUT_S = 15
#: One Web API call, 429 waits (Retry-After) included.
CALL_TIMEOUT_S = 60.0
#: 429 answers waited out per call before the call counts as failed.
RATE_LIMIT_RETRIES = 3
#: Connecting to Slack (auth.test, apps.connections.open, the socket) at start-up.
CONNECT_TIMEOUT_S = 15.0
#: Retrying a start-up connection that failed: the longest wait between tries.
CONNECT_BACKOFF_MAX_S = STARTUP_BACKOFF_MAX_S
#: The Socket Mode client's ping and monitor period: a dropped socket is replaced
#: within this time (bolt's default is 10 s).
SOCKET_PING_INTERVAL_S = 5.0
#: How long a request to the hub (submit, cancel) may take.
HUB_REQUEST_TIMEOUT_S = 10.0
#: Requests in hand get this long to reach the hub when the bridge stops.
STOP_GRACE_S = 5.0
#: Each step of stopping.
STOP_TIMEOUT_S = 10.0
#: Threads read page by page (``conversations.replies``) when looking for earlier parts.
THREAD_PAGES = 5
#: Remembered event ids and messages (redeliveries), runs and deliveries.
EVENT_MEMORY = 10_000
RUN_MEMORY = 1_000
#: Slack errors that say a reaction is already as wanted.
_REACTION_NOOPS = frozenset({"already_reacted", "no_reaction"})


class State(enum.Enum):
    """Where a :class:`SlackBridge` is in its life."""

    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    CLOSED = "closed"


class SlackBridgeError(BridgeError):
    """Root of the Slack bridge's errors.

    - :class:`SlackRefused`: Slack refused a token at start-up; a person must fix it.
    - :class:`ReplyDeferred`: Slack did not take a reply now; the hub re-sends it.
    - :class:`Undeliverable`: Slack refused a reply for good; it is dropped.
    """


class SlackRefused(SlackBridgeError):
    """Slack refused ``SLACK_BOT_TOKEN`` or ``SLACK_APP_TOKEN``; ``setting`` names which."""

    def __init__(self, setting: str, error: str) -> None:
        super().__init__(f"Slack refused {setting}: {error}; check the token")
        self.setting = setting
        self.error = error


class ReplyDeferred(SlackBridgeError):
    """Slack did not take a reply now (rate limit, outage, credentials); it comes back."""


class Undeliverable(SlackBridgeError):
    """Slack refused a reply for good (unknown or archived channel, bad request)."""


def describe(exc: BaseException) -> str:
    """A short, token-free account of a failed Slack call."""
    if isinstance(exc, SlackApiError):
        error = exc.response.get("error") if exc.response is not None else None
        status = exc.response.status_code if exc.response is not None else "?"
        return f"{error or 'error'} (HTTP {status})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def may_succeed_later(exc: BaseException) -> bool:
    """True when a failed Slack call is worth making again later."""
    if isinstance(exc, SlackApiError):
        if exc.response is None:
            return True
        return convert.may_succeed_later(
            str(exc.response.get("error") or ""), int(exc.response.status_code)
        )
    # A failed upload, a dropped connection, a time-out: Slack may take it next time.
    return isinstance(exc, SlackRequestError | aiohttp.ClientError | OSError | TimeoutError)


def _slack_error(exc: BaseException) -> str:
    if isinstance(exc, SlackApiError) and exc.response is not None:
        return str(exc.response.get("error") or "")
    return ""


def _refusal(setting: str, exc: SlackApiError) -> SlackRefused | None:
    """A start-up call's failure as a refused token; None when it is Slack's own trouble."""
    status = exc.response.status_code if exc.response is not None else 500
    if status == 429 or status >= 500:
        return None
    return SlackRefused(setting, describe(exc))


async def _nothing() -> None:
    return None


def _remember(memory: OrderedDict[str, Any], key: str, value: Any, limit: int) -> None:
    memory[key] = value
    memory.move_to_end(key)
    while len(memory) > limit:
        memory.popitem(last=False)


class _Sent:
    """What one delivery has done so far: the parts Slack took, and the status message."""

    def __init__(self) -> None:
        self.parts: set[int] = set()
        #: The run's status message (ts, text), found once for every attempt.
        self.status: tuple[str, str] | None = None


class _StatusMessage:
    """A run's status message: posted once the run has worked a while, then kept current.

    ``show`` takes the newest text at once and without waiting. One task
    (``SlackBridge:status:<run>``) does the Slack side: once the run has lasted
    ``delay`` (at once when ``urgent``: a run waiting behind others is told its place)
    it looks for a status message an earlier bridge process posted (``find``, for runs
    from before a restart), else posts one; after that it edits the message, at most
    once per ``interval``, always with the newest text.
    ``close`` lets a post under way finish (so its message is known and gets the
    closing edit), then cancels the task: a late progress edit never overwrites the
    closing one.
    """

    def __init__(
        self,
        run_id: str,
        target: Target,
        *,
        interval: float,
        delay: float,
        post: Callable[[Target, str], Awaitable[str | None]],
        edit: Callable[[Target, str, str], Awaitable[bool]],
        find: Callable[[], Awaitable[tuple[str, str] | None]] | None = None,
    ) -> None:
        self.run_id = run_id
        self.target = target
        self.interval = interval
        self._post = post
        self._edit = edit
        self._find = find
        #: The status message's ts once posted or found; None while there is none.
        self.ts: str | None = None
        self.shown: str | None = None
        self.wanted: str | None = None
        self.urgent = False
        self.closed = False
        self._posting = False
        loop = asyncio.get_running_loop()
        self._post_at = loop.time() + delay
        self._last_edit = -math.inf
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def show(self, text: str, *, urgent: bool = False) -> None:
        """Make ``text`` the next edit (replacing one not yet made); ``urgent`` posts now."""
        if self.closed:
            return
        self.wanted = None if text == self.shown else text
        if urgent and not self.urgent:
            self.urgent = True
            self._wake.set()
        if self.wanted is not None and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(
                self._flush(), name=f"SlackBridge:status:{self.run_id}"
            )

    async def _flush(self) -> None:
        with bound(run_id=self.run_id):
            try:
                await self._keep_current()
            except Exception:
                # A bug here must not go unnoticed, nor take the reply down with it.
                log.exception("the status message stopped updating")
                self.closed = True

    async def _keep_current(self) -> None:
        loop = asyncio.get_running_loop()
        while self.wanted is not None and not self.closed:
            if self.ts is None:
                await self._until(self._post_at)
                if self._find is not None:
                    # Looked for only once a status message is due: a quick run never
                    # costs a read of its thread.
                    find, self._find = self._find, None
                    found = await find()
                    if found is not None:
                        self.ts, self.shown = found
                        continue  # edited at once with the newest text
                text, self.wanted = self.wanted, None
                if text is None:
                    continue
                self._posting = True
                try:
                    self.ts = await self._post(self.target, text)
                finally:
                    self._posting = False
                self._last_edit = loop.time()
                if self.ts is None:
                    self.closed = True  # it could not be posted: no status message
                    return
                self.shown = text
                continue
            await asyncio.sleep(max(0.0, self._last_edit + self.interval - loop.time()))
            text, self.wanted = self.wanted, None
            if text is None or text == self.shown:
                continue
            self._last_edit = loop.time()
            if await self._edit(self.target, self.ts, text):
                self.shown = text

    async def _until(self, when: float) -> None:
        """Sleep until ``when`` (loop time), or until the message becomes urgent."""
        self._wake.clear()
        delay = when - asyncio.get_running_loop().time()
        if self.urgent or delay <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()

    async def close(self) -> None:
        """Stop; a post under way may finish first (time-boxed). Idempotent."""
        self.closed = True
        if self._task is not None:
            if self._posting:
                await asyncio.wait({self._task}, timeout=CALL_TIMEOUT_S)
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


class SlackBridge:
    """The Slack bridge node; an async context manager (see the module docstring)."""

    def __init__(
        self,
        settings: SlackSettings,
        *,
        node_id: str | None = None,
        ping_interval: float = SOCKET_PING_INTERVAL_S,
    ) -> None:
        if not settings.configured:
            raise ValueError("set SLACK_BOT_TOKEN and SLACK_APP_TOKEN to run the Slack bridge")
        register_secret(settings.bot_token)
        register_secret(settings.app_token)
        self.settings = settings
        #: The repository each channel works on (`repo owner/name`; BRIDGE_REPOS at start).
        self.repos = RepoDefaults(settings.repos)
        self.state = State.NEW
        self.ping_interval = ping_interval
        self.link = HubLink(
            settings,
            "slack",
            on_deliver=self._on_deliver,
            on_progress=self._on_progress,
            node_id=node_id,
            request_timeout=HUB_REQUEST_TIMEOUT_S,
            pending_max=settings.pending_max,
            pending_max_age_s=settings.pending_max_age_s,
        )
        #: Who the bot is (from ``auth.test`` at start-up).
        self.bot_user_id = ""
        self.bot_id = ""
        #: Set once the Socket Mode connection is up.
        self.connected = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._client: AsyncWebClient | None = None
        self._app: AsyncApp | None = None
        self._handler: AsyncSocketModeHandler | None = None
        self._startup: asyncio.Task[None] | None = None
        self._events: OrderedDict[str, None] = OrderedDict()
        self._messages: OrderedDict[str, None] = OrderedDict()
        self._submitted: OrderedDict[str, None] = OrderedDict()
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._sent: OrderedDict[str, _Sent] = OrderedDict()
        self._statuses: OrderedDict[str, _StatusMessage] = OrderedDict()
        self._eyes: dict[str, asyncio.Task[Any]] = {}
        self._requests: set[asyncio.Task[Any]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- lifecycle -----------------------------------------------------------------

    @property
    def client(self) -> AsyncWebClient:
        """The Web API client (every call goes to ``SLACK_API_BASE_URL``)."""
        if self._client is None:
            raise SlackBridgeError("the Slack bridge is not started")
        return self._client

    async def start(self) -> None:
        """Join the hub and connect to Slack; an outage at start is retried in the background.

        Raises :class:`SlackRefused` when Slack refuses a token: that needs a person.
        """
        if self.state is not State.NEW:
            return
        self.state = State.STARTING
        try:
            self._session = aiohttp.ClientSession()
            self._client = AsyncWebClient(
                token=self.settings.bot_token.get_secret_value(),
                base_url=self.settings.api_base_url,
                timeout=HTTP_TIMEOUT_S,
                session=self._session,
                logger=logging.getLogger("slack_sdk.web"),
                retry_handlers=[
                    AsyncConnectionErrorRetryHandler(),
                    AsyncRateLimitErrorRetryHandler(max_retry_count=RATE_LIMIT_RETRIES),
                ],
            )
            self._app = self._build_app(self._client)
            self._handler = AsyncSocketModeHandler(
                self._app,
                self.settings.app_token.get_secret_value(),
                ping_interval=self.ping_interval,
            )
            try:
                await self._connect()
            except SlackRefused:
                raise
            except Exception as exc:
                log.warning("Slack is not reachable (%s); retrying in the background", exc)
                self._startup = asyncio.create_task(
                    self._connect_later(), name="SlackBridge:startup"
                )
            # Joined only once the tokens are known good. Replies need only the Web API,
            # so they are taken from the hub even while Socket Mode is still connecting.
            await self.link.start()
        except BaseException:
            await self.close()
            raise
        self.state = State.RUNNING
        freeze_startup_heap()

    async def _connect(self) -> None:
        assert self._handler is not None
        socket = self._handler.client
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            try:
                auth = await self.client.auth_test()
            except SlackApiError as exc:
                refused = _refusal("SLACK_BOT_TOKEN", exc)
                if refused is None:
                    raise
                raise refused from exc
            self.bot_user_id = str(auth.get("user_id") or "")
            self.bot_id = str(auth.get("bot_id") or "")
            try:
                # Fetched here, not inside connect_async, which would retry a refused
                # token forever; connect_async then uses this URL.
                socket.wss_uri = await socket.issue_new_wss_url()
            except SlackApiError as exc:
                refused = _refusal("SLACK_APP_TOKEN", exc)
                if refused is None:
                    raise
                raise refused from exc
            await self._handler.connect_async()
        self.connected.set()
        log.info("Slack bridge is up as <@%s> (Socket Mode)", self.bot_user_id)

    async def _connect_later(self) -> None:
        await retry_startup(
            self._connect,
            platform="Slack",
            refused=(SlackRefused,),
            backoff_max=CONNECT_BACKOFF_MAX_S,
        )

    def _build_app(self, client: AsyncWebClient) -> AsyncApp:
        app = AsyncApp(
            client=client,
            name="codex-hub",
            logger=logging.getLogger("slack_bolt"),
            # Socket Mode needs no signing secret; bolt must not read one from the env.
            signing_secret="",
            # HTTP-mode and workflow middleware that a Socket Mode bot never needs.
            request_verification_enabled=False,
            ssl_check_enabled=False,
            url_verification_enabled=False,
            attaching_function_token_enabled=False,
        )
        app.event("app_mention")(self._on_mention)
        app.event("message")(self._on_message)
        app.action(convert.OPEN_PR_ACTION)(self._on_open_pr)
        return app

    async def close(self) -> None:
        """Leave Slack, let requests in hand reach the hub, leave the hub. Idempotent."""
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        self.connected.clear()
        if self._startup is not None:
            self._startup.cancel()
            await asyncio.gather(self._startup, return_exceptions=True)
        if self._handler is not None:
            await self._quietly("leaving Socket Mode", self._handler.close_async())
            socket = self._handler.client
            # close_async cancels the client's tasks without waiting for them.
            leftovers = [
                t
                for t in (socket.message_processor, socket.current_session_monitor)
                if t is not None
            ]
            if socket.message_receiver is not None:
                leftovers.append(socket.message_receiver)
            await asyncio.gather(*leftovers, return_exceptions=True)
        # Requests kept for a hub that is away end now, told they were not sent.
        self.link.give_up_kept()
        if self._requests:
            # No new events come in now; a request being submitted gets its answer.
            await asyncio.wait(set(self._requests), timeout=STOP_GRACE_S)
        # Cancels replies being posted: unacknowledged, the hub re-sends them later.
        await self._quietly("leaving the hub", self.link.close())
        statuses = list(self._statuses.values())
        self._statuses.clear()
        await asyncio.gather(*(status.close() for status in statuses))
        tasks = [*self._requests, *self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        log.info("Slack bridge stopped")

    async def _quietly(self, what: str, step: Awaitable[Any]) -> None:
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await step
        except Exception as exc:
            log.warning("Slack bridge: %s failed: %s", what, exc)

    async def __aenter__(self) -> SlackBridge:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _spawn(self, coro: Awaitable[T], name: str, *, request: bool = False) -> asyncio.Task[T]:
        task: asyncio.Task[T] = asyncio.ensure_future(coro)
        task.set_name(f"SlackBridge:{name}")
        tasks = self._requests if request else self._tasks
        tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._requests.discard(task)
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    # --- Web API calls ---------------------------------------------------------------

    async def _post(self, target: Target, text: str, **extra: Any) -> str:
        """Post ``text`` in the target's thread; the new message's ts."""
        async with asyncio.timeout(CALL_TIMEOUT_S):
            response = await self.client.chat_postMessage(
                channel=target.channel,
                thread_ts=target.thread_ts,
                text=text,
                unfurl_links=False,
                unfurl_media=False,
                **extra,
            )
        return str(response.get("ts") or "")

    async def _say(self, target: Target, text: str) -> None:
        """Best effort: the bot's own short answers (refusals, help, notices)."""
        try:
            for chunk in convert.split_message(text):
                await self._post(target, chunk)
        except (SlackClientError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("could not answer in %s: %s", target.channel, describe(exc))

    async def _post_status(self, target: Target, text: str) -> str | None:
        """Best effort: post the request's status message; its ts, or None."""
        try:
            return await self._post(target, text, metadata=convert.status_metadata(target.ts))
        except (SlackClientError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("could not post a status message in %s: %s", target.channel, describe(exc))
            return None

    async def _edit_status(self, target: Target, ts: str, text: str) -> bool:
        """Best effort: replace the status message's text; True when Slack took it."""
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                await self.client.chat_update(channel=target.channel, ts=ts, text=text)
        except (SlackClientError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.info("status message not updated: %s", describe(exc))
            return False
        return True

    async def _read_thread(self, target: Target) -> list[dict[str, Any]]:
        """The thread's messages with their metadata; empty when it cannot be read."""
        messages: list[dict[str, Any]] = []
        cursor: str | None = None
        try:
            for _ in range(THREAD_PAGES):
                async with asyncio.timeout(CALL_TIMEOUT_S):
                    response = await self.client.conversations_replies(
                        channel=target.channel,
                        ts=target.thread_ts,
                        include_all_metadata=True,
                        limit=200,
                        cursor=cursor,
                    )
                messages.extend(response.get("messages") or [])
                cursor = (response.get("response_metadata") or {}).get("next_cursor") or None
                if not cursor:
                    break
        except (SlackClientError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.info("could not read thread %s: %s", target.thread_ts, describe(exc))
        return messages

    async def _find_earlier_status(self, run_id: str, target: Target) -> tuple[str, str] | None:
        """The status message (ts, text) of a run submitted before this process started."""
        if run_id in self._submitted:
            return None  # submitted here: nobody else posted one
        return convert.find_status(await self._read_thread(target), target.ts)

    async def _react(self, target: Target, name: str, *, remove: bool = False) -> None:
        """Best effort: add (or remove) the bot's reaction on the request."""
        if not target.ts:
            return
        call = self.client.reactions_remove if remove else self.client.reactions_add
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                await call(channel=target.channel, timestamp=target.ts, name=name)
        except (SlackClientError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            if _slack_error(exc) not in _REACTION_NOOPS:
                done = "removed" if remove else "added"
                log.info("reaction %s not %s: %s", name, done, describe(exc))

    # --- Slack -> hub ------------------------------------------------------------------

    async def _on_mention(
        self, body: dict[str, Any], event: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        self._accept(body, event, context)

    async def _on_message(
        self, body: dict[str, Any], event: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        # In channels the bot answers mentions only (they come as app_mention).
        if event.get("channel_type") == "im":
            self._accept(body, event, context)

    def _accept(
        self, body: dict[str, Any], event: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        """Take an event once: Slack re-sends one whose ack it missed (same event_id)."""
        event_id = str(body.get("event_id") or "")
        if event_id:
            if event_id in self._events:
                log.info("event %s came again; already handled", event_id)
                return
            _remember(self._events, event_id, None, EVENT_MEMORY)
        bot_user_id = self.bot_user_id or str(context.bot_user_id or "")
        if not convert.is_user_message(event, bot_user_id):
            return
        # The same message can come as app_mention and as message (a mention in a DM).
        message_key = f"{event.get('channel')}:{event.get('ts')}"
        if message_key in self._messages:
            return
        _remember(self._messages, message_key, None, EVENT_MEMORY)
        team = str(body.get("team_id") or context.team_id or "")
        target = Target.of_event(event, team)
        text = convert.strip_mention(str(event.get("text") or ""), bot_user_id)
        files = [f for f in event.get("files") or [] if isinstance(f, dict)]
        self._spawn(
            self._handle(target, text, convert.is_direct(event), files),
            f"request:{event_id or message_key}",
            request=True,
        )

    async def _handle(
        self, target: Target, text: str, is_dm: bool, files: list[dict[str, Any]] | None = None
    ) -> None:
        settings = self.settings
        refusal = convert.check_access(
            target.user, target.channel, settings.allowed_users, settings.allowed_channels, is_dm
        )
        if refusal is not None:
            log.info("refused user %s in %s (%s not allowed)", target.user, target.channel, refusal)
            await self._say(target, convert.refusal_text(target.user, target.channel, refusal))
            return
        if convert.is_cancel_command(text):
            await self._cancel(target)
            return
        argument = repo_command(text)
        if argument is not None:
            # `repo owner/name`: the channel's repository for new conversations.
            await self._say(target, self.repos.command(target.channel, argument))
            return
        optimize, prompt = split_optimize_prefix(text)
        attachments = None
        if files:
            try:
                attachments = common.attachment_options(await self._download(files))
            except AttachmentRefused as exc:
                await self._say(target, str(exc))
                return
            prompt = prompt or common.ATTACHMENT_ONLY_PROMPT
        if not prompt:
            await self._say(target, convert.help_text())
            return
        await self._start_run(target, prompt, optimize, attachments)

    async def _download(self, files: list[dict[str, Any]]) -> list[common.Attachment]:
        """The files shared with a message, downloaded with the bot token; raises
        AttachmentRefused, with the reply, for one over the limits or unreadable."""
        limits = (self.settings.attachment_max_bytes, self.settings.attachment_types)
        api_host = urlsplit(self.settings.api_base_url).hostname
        found: list[common.Attachment] = []
        total = 0
        for file in files:
            name = str(file.get("name") or file.get("id") or "file")
            mime = str(file.get("mimetype") or APPLICATION_OCTET)
            size = file.get("size") if isinstance(file.get("size"), int) else None
            refusal = common.attachment_refusal(name, mime, size, *limits, total=total)
            if refusal is not None:
                raise AttachmentRefused(refusal)
            url = str(file.get("url_private_download") or file.get("url_private") or "")
            host = urlsplit(url).hostname or ""
            # The bot token goes to Slack only: its file host, or the configured API's.
            if urlsplit(url).scheme not in ("https", "http") or not (
                host == api_host or host == "slack.com" or host.endswith(".slack.com")
            ):
                raise AttachmentRefused(f"{name} was not used: it is not a file on Slack.")
            data = await self._fetch_file(name, url, limits[0] - total)
            refusal = common.attachment_refusal(name, mime, len(data), *limits, total=total)
            if refusal is not None:
                raise AttachmentRefused(refusal)
            total += len(data)
            found.append(common.Attachment(name, mime, data))
        return found

    async def _fetch_file(self, name: str, url: str, room: int) -> bytes:
        """The bytes at ``url`` (a file's url_private), read up to ``room`` + 1 bytes."""
        token = self.settings.bot_token.get_secret_value()
        assert self._session is not None
        try:
            async with (
                asyncio.timeout(CALL_TIMEOUT_S),
                self._session.get(
                    url, headers={"Authorization": f"Bearer {token}"}, allow_redirects=False
                ) as response,
            ):
                if response.status != 200:
                    raise AttachmentRefused(
                        f"{name} could not be downloaded from Slack (HTTP {response.status})."
                    )
                return await response.content.read(room + 1)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("could not download a shared file: %s", describe(exc))
            raise AttachmentRefused(f"{name} could not be downloaded from Slack.") from exc

    async def _on_open_pr(
        self, ack: Any, body: dict[str, Any], action: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        """The "Open PR" button: a ``!pr`` follow-up in the same thread, by an allowed
        user only; the button's message then says who pressed it."""
        await ack()
        message = body.get("message") or {}
        channel = str((body.get("channel") or {}).get("id") or "")
        user = str((body.get("user") or {}).get("id") or "")
        ts = str(message.get("ts") or "")
        if not channel or not ts:
            return
        team = str((body.get("team") or {}).get("id") or context.team_id or "")
        target = Target(team, channel, str(message.get("thread_ts") or ts), ts, user)
        settings = self.settings
        refusal = convert.check_access(
            user, channel, settings.allowed_users, settings.allowed_channels, channel[:1] == "D"
        )
        if refusal is not None:
            log.info("refused a pull-request press by %s in %s (%s)", user, channel, refusal)
            try:
                async with asyncio.timeout(CALL_TIMEOUT_S):
                    await self.client.chat_postEphemeral(
                        channel=channel,
                        user=user,
                        thread_ts=target.thread_ts,
                        text=convert.refusal_text(user, channel, refusal),
                    )
            except (SlackClientError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.warning("could not refuse a press in %s: %s", channel, describe(exc))
            return
        # The button's ts is the dedupe key: two presses of one button open one PR.
        await self._start_run(target, convert.OPEN_PR_PROMPT, False)
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                await self.client.chat_update(
                    channel=channel, ts=ts, text=convert.open_pr_pressed(user), blocks=[]
                )
        except (SlackClientError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("could not update the button in %s: %s", channel, describe(exc))

    def _origin(self, target: Target) -> dict[str, Any]:
        origin = target.to_origin()
        repo = self.repos.get(target.channel)
        if repo:
            origin["repo"] = repo
        return origin

    async def _start_run(
        self,
        target: Target,
        prompt: str,
        optimize: bool | None,
        attachments: dict[str, list[dict[str, str]]] | None = None,
    ) -> None:
        try:
            # Submitted first: the Slack calls below would only delay the run's start.
            submitted = await self.link.submit(
                prompt,
                session_key=target.session_key,
                origin=self._origin(target),
                optimize=optimize,
                # A message re-sent after a bridge crash names the run it started.
                dedupe_key=f"{target.channel}:{target.ts}" if target.ts else None,
                on_kept=lambda: self._say(target, convert.kept_text()),
                attachments=attachments,
            )
        except HubError as exc:
            log.warning("the hub did not take a request from %s: %s", target.channel, exc)
            await self._say(target, convert.hub_error_text(exc.code, str(exc)))
            await self._react(target, convert.FAILURE_REACTION)
            return
        run_id = submitted.run_id
        _remember(self._submitted, run_id, None, RUN_MEMORY)
        key = f"{target.channel}:{target.ts}"
        eyes = self._spawn(self._react(target, convert.WORKING_REACTION), f"eyes:{run_id}")
        self._eyes[key] = eyes
        eyes.add_done_callback(lambda _: self._eyes.pop(key, None))
        with bound(run_id=run_id):
            # One INFO line per request is enough: the answer's (the hub logs the run).
            log.debug(
                "%s asked in %s; position %d", target.user, target.channel, submitted.position
            )
        self._progress(run_id, target, "queued", "", submitted.position)

    async def _cancel(self, target: Target) -> None:
        try:
            cancelled = await self.link.cancel(session_key=target.session_key)
        except HubError as exc:
            await self._say(target, convert.hub_error_text(exc.code, str(exc)))
            return
        log.info("%s cancelled %s in %s", target.user, cancelled or "nothing", target.channel)
        await self._say(target, convert.cancel_text(cancelled))

    # --- hub -> Slack ------------------------------------------------------------------

    def _progress(
        self, run_id: str, target: Target, state: str, detail: str, position: int | None
    ) -> None:
        """Show a run's state on its status message; never for a finished run."""
        if run_id in self._finished or self.state is State.CLOSED:
            return
        status = self._statuses.get(run_id)
        if status is None:
            status = _StatusMessage(
                run_id,
                target,
                interval=self.settings.status_edit_interval_s,
                # A quick run is answered without one; a longer one shows its progress.
                delay=self.settings.status_edit_interval_s,
                post=self._post_status,
                edit=self._edit_status,
                find=lambda: self._find_earlier_status(run_id, target),
            )
            self._statuses[run_id] = status
            while len(self._statuses) > RUN_MEMORY:
                _, oldest = self._statuses.popitem(last=False)
                self._spawn(oldest.close(), f"status-evicted:{oldest.run_id}")
        waiting = state == "queued" and bool(position)
        status.show(convert.status_text(state, detail, run_id, position), urgent=waiting)

    async def _on_progress(self, frame: Frame) -> None:
        run_id = str(frame.get("run_id") or "")
        target = Target.from_origin(frame.get("origin") or {})
        if not run_id or target is None:
            return
        position = frame.get("position")
        self._progress(
            run_id,
            target,
            str(frame.get("state") or "running"),
            str(frame.get("detail") or ""),
            position if isinstance(position, int) else None,
        )

    async def _on_deliver(self, frame: Frame) -> None:
        run_id = str(frame.get("run_id") or "")
        delivery_id = str(frame.get("delivery_id") or run_id)
        with bound(run_id=run_id):
            target = Target.from_origin(frame.get("origin") or {})
            if target is None:
                log.error("the reply names no Slack channel in its origin; dropping it")
                return
            if self._client is None or self.state is State.CLOSED:
                raise ReplyDeferred("the Slack bridge is not running")
            _remember(self._finished, run_id, None, RUN_MEMORY)
            outcome = str(frame.get("status") or "failed")
            elapsed = convert.elapsed_since(target.ts, time.time())
            parts = convert.reply_parts(
                run_id,
                outcome,
                str(frame.get("answer") or ""),
                frame.get("error"),
                elapsed_s=elapsed,
                file_threshold=self.settings.file_threshold_chars,
            )
            diff = frame.get("diff")
            if isinstance(diff, str) and diff:
                parts.append(convert.diff_file(diff, run_id))
                if not frame.get("pr_url"):
                    parts.append(convert.open_pr_offer(run_id))
            sent = self._sent.get(delivery_id)
            if sent is None:
                sent = await self._first_attempt(run_id, target, parts)
                _remember(self._sent, delivery_id, sent, RUN_MEMORY)
            try:
                for index, part in enumerate(parts):
                    if index not in sent.parts:
                        await self._post_part(target, run_id, part, index, len(parts))
                        sent.parts.add(index)
            except Undeliverable as exc:
                log.error("Slack refused the reply for good (%s); dropping it", exc)
                answered = False
                await self._say(target, convert.undeliverable_text(run_id, str(exc)))
            else:
                answered = True
            self._sent.pop(delivery_id, None)
            log.info(
                "answered %s in %s (%s, %d parts)", target.user, target.channel, outcome, len(parts)
            )
            # The reply is out: acknowledged now (when this returns), while the status
            # edit and the reactions, best effort, follow on their own.
            closing = convert.closing_status_text(outcome, run_id, elapsed)
            self._spawn(
                self._close_request(
                    target,
                    sent.status[0] if sent.status else None,
                    closing,
                    # No check mark on a request whose answer Slack refused.
                    outcome if answered else "failed",
                ),
                f"close:{run_id}",
            )

    async def _close_request(
        self, target: Target, status_ts: str | None, closing: str, outcome: str
    ) -> None:
        """Set the status message, if any, to its end state; swap :eyes: for the outcome's."""
        await asyncio.gather(
            self._edit_status(target, status_ts, closing) if status_ts else _nothing(),
            self._close_reactions(target, outcome),
        )

    async def _first_attempt(self, run_id: str, target: Target, parts: list[ReplyPart]) -> _Sent:
        """What a delivery starts from: its status message, and any parts posted before."""
        sent = _Sent()
        status = self._statuses.pop(run_id, None)
        if status is not None:
            await status.close()
            if status.ts is not None:
                sent.status = (status.ts, status.shown or "")
        if run_id not in self._submitted:
            # Submitted before this process started: an earlier one may have posted parts.
            thread = await self._read_thread(target)
            sent.parts = convert.already_posted(thread, run_id, parts)
            if sent.parts:
                log.info("parts %s were posted before; skipping them", sorted(sent.parts))
            sent.status = sent.status or convert.find_status(thread, target.ts)
        return sent

    async def _post_part(
        self, target: Target, run_id: str, part: ReplyPart, index: int, count: int
    ) -> None:
        """Post one part of a reply; raises ReplyDeferred or Undeliverable when Slack refuses."""
        try:
            if isinstance(part, FilePart):
                async with asyncio.timeout(CALL_TIMEOUT_S):
                    await self.client.files_upload_v2(
                        channel=target.channel,
                        thread_ts=target.thread_ts,
                        content=part.content,
                        filename=part.filename,
                        title=part.title,
                        initial_comment=part.comment,
                    )
            elif isinstance(part, TextPart):
                await self._post(
                    target, part.text, metadata=convert.reply_metadata(run_id, index, count)
                )
            elif isinstance(part, ButtonPart):
                await self._post(
                    target,
                    part.text,
                    blocks=part.blocks(),
                    metadata=convert.reply_metadata(run_id, index, count),
                )
        except (SlackClientError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            what = f"part {index + 1}/{count}: {describe(exc)}"
            if may_succeed_later(exc):
                raise ReplyDeferred(what) from exc
            raise Undeliverable(what) from exc

    async def _close_reactions(self, target: Target, outcome: str) -> None:
        """Swap :eyes: on the request for the outcome's reaction."""
        eyes = self._eyes.get(f"{target.channel}:{target.ts}")
        if eyes is not None:
            # Removing :eyes: before it was added would leave it there for good.
            await asyncio.wait({eyes}, timeout=CALL_TIMEOUT_S)
        await asyncio.gather(
            self._react(target, convert.WORKING_REACTION, remove=True),
            self._react(target, convert.closing_reaction(outcome)),
        )
