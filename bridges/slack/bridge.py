"""The Slack bridge node: mentions and DMs in, hub runs out, answers back in the thread.

The Slack adapter of the bridge core (:mod:`bridges.core` owns the lifecycle, submits,
progress, delivery and the status message; see bridges/ADAPTERS.md): Socket Mode, its
events, its targets. Web API calls are in :mod:`bridges.slack.api`, pure Slack quirks
in :mod:`bridges.slack.convert`.

- **Slack -> hub.** An ``app_mention`` in a channel or a ``message`` in a DM, written
  by a person, seen for the first time (Slack re-sends an event whose ack it missed:
  the ``event_id`` and the message are remembered), from an allowed user and channel,
  becomes a run; the thread is the session. ``cancel`` / ``stop`` cancels the thread's
  active run, ``repo owner/name`` sets the channel's repository, ``target @label`` where
  its runs go (a message starting with ``@label`` says it for itself).
- **While it runs.** The request gets :eyes:. A run still working after one
  ``SLACK_STATUS_EDIT_INTERVAL_S`` (or waiting behind another, at once) gets a status
  message, with metadata naming its request so that a later bridge process finds it.
- **hub -> Slack.** Each part of the answer carries metadata naming its run and number:
  for a run this process did not submit the thread is read first
  (``conversations.replies``), so a restart between a partial post and the re-send
  posts no part twice (without a ``*:history`` scope the parts are posted again, once,
  labelled ``(i/n)``). Then the status message gets its end state and :eyes: becomes
  :white_check_mark: or :x:.

The Slack app this needs: Socket Mode on, an app-level token (``xapp-``) with
``connections:write``; bot events ``app_mention`` and ``message.im``; bot scopes
``app_mentions:read``, ``chat:write``, ``reactions:write``, ``files:write``,
``im:history``, ``channels:history`` / ``groups:history`` (reading a thread).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import OrderedDict
from typing import Any

import aiohttp
from slack_bolt.context.async_context import AsyncBoltContext

from bridges.common import repo_command, split_optimize_prefix, target_command
from bridges.core import (
    NOT_SHOWN_UNTIL_NEWS,
    Approval,
    ChatBridge,
    Reply,
    Sent,
    Shown,
    State,
    StatusTiming,
    Texts,
    remember,
)
from bridges.hub_link import Submitted
from bridges.slack import convert
from bridges.slack.api import CALL_ERRORS, SlackApi, SocketMode, describe, download, web_client
from bridges.slack.api import AttachmentRefused as AttachmentRefused
from bridges.slack.api import ReplyDeferred as ReplyDeferred
from bridges.slack.api import SlackBridgeError as SlackBridgeError
from bridges.slack.api import SlackRefused as SlackRefused
from bridges.slack.api import Undeliverable as Undeliverable
from bridges.slack.convert import Target
from bridges.slack.settings import SlackSettings
from kernel.logs import bound, register_secret

log = logging.getLogger(__name__)

#: The Socket Mode client's ping and monitor period: a dropped socket is replaced
#: within this time (bolt's default is 10 s).
SOCKET_PING_INTERVAL_S = 5.0
#: Remembered event ids and messages (redeliveries).
EVENT_MEMORY = 10_000


class SlackBridge(ChatBridge[Target]):
    """The Slack bridge node; an async context manager (see the module docstring)."""

    PLATFORM = "slack"
    PLATFORM_NAME = "Slack"
    REFUSED = (SlackRefused,)
    CALL_ERRORS = CALL_ERRORS
    # Replies need only the Web API: taken from the hub while Socket Mode still connects.
    REPLIES_BEFORE_CONNECT = True
    STATUS_TASK = "status"
    texts = Texts(
        convert.kept_text,
        convert.hub_error_text,
        convert.cancel_text,
        convert.status_text,
        with_answer=convert.status_with_answer,
    )

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
        interval = settings.status_edit_interval_s
        # A quick run is answered without a status message; a longer one shows progress.
        timing = StatusTiming(delay=interval, interval=interval, while_waiting=True)
        super().__init__(settings, node_id=node_id, status=timing)
        self.settings = settings
        self.ping_interval = ping_interval
        #: Who the bot is (from ``auth.test`` at start-up).
        self.bot_user_id = ""
        self.bot_id = ""
        #: Set once the Socket Mode connection is up.
        self.connected = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._api: SlackApi | None = None
        self._socket: SocketMode | None = None
        self._events: OrderedDict[str, None] = OrderedDict()
        self._messages: OrderedDict[str, None] = OrderedDict()
        self._eyes: dict[str, asyncio.Task[Any]] = {}

    @property
    def api(self) -> SlackApi:
        """The Web API calls (every call goes to ``SLACK_API_BASE_URL``)."""
        if self._api is None:
            raise SlackBridgeError("the Slack bridge is not started")
        return self._api

    # --- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        self._session = aiohttp.ClientSession()
        token = self.settings.bot_token.get_secret_value()
        self._api = SlackApi(web_client(token, self.settings.api_base_url, self._session))
        app_token = self.settings.app_token.get_secret_value()
        self._socket = SocketMode(self._api.client, app_token, self.ping_interval)
        self._socket.app.event("app_mention")(self._on_mention)
        self._socket.app.event("message")(self._on_message)
        self._socket.app.action(convert.OPEN_PR_ACTION)(self._on_open_pr)
        self._socket.app.action(re.compile(f"^{convert.APPROVAL_ACTION}_"))(self._on_approval_press)

    async def connect(self) -> None:
        assert self._socket is not None
        self.bot_user_id, self.bot_id = await self._socket.connect()
        self.connected.set()
        log.info("Slack bridge is up as <@%s> (Socket Mode)", self.bot_user_id)

    async def stop_listening(self) -> None:
        self.connected.clear()
        if self._socket is not None:
            await self.quietly("leaving Socket Mode", self._socket.close())
            await self._socket.finish()

    async def shut(self) -> None:
        if self._session is not None:
            await self._session.close()

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
            remember(self._events, event_id, None, EVENT_MEMORY)
        bot_user_id = self.bot_user_id or str(context.bot_user_id or "")
        if not convert.is_user_message(event, bot_user_id):
            return
        # The same message can come as app_mention and as message (a mention in a DM).
        message_key = f"{event.get('channel')}:{event.get('ts')}"
        if message_key in self._messages:
            return
        remember(self._messages, message_key, None, EVENT_MEMORY)
        team = str(body.get("team_id") or context.team_id or "")
        target = Target.of_event(event, team)
        text = convert.strip_mention(str(event.get("text") or ""), bot_user_id)
        files = [f for f in event.get("files") or [] if isinstance(f, dict)]
        self.spawn(
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
            await self.say(target, convert.refusal_text(target.user, target.channel, refusal))
            return
        if convert.is_cancel_command(text):
            await self.cancel(target)
            return
        argument = repo_command(text)
        if argument is not None:
            await self.set_repo(target, argument)
            return
        argument = target_command(text)
        if argument is not None:
            await self.set_run_target(target, argument)
            return
        optimize, prompt = split_optimize_prefix(text)
        attachments = None
        if files:
            assert self._session is not None
            found = await self.attach(target, prompt, download(self._session, files, settings))
            if found is None:
                return
            prompt, attachments = found
        if not prompt:
            await self.say(target, convert.help_text())
            return
        await self._start(target, prompt, optimize, attachments)

    async def _start(
        self,
        target: Target,
        prompt: str,
        optimize: bool | None,
        attachments: dict[str, list[dict[str, str]]] | None = None,
    ) -> None:
        await self.start_run(
            target,
            prompt,
            origin=target.to_origin(),
            optimize=optimize,
            # A message re-sent after a bridge crash names the run it started.
            dedupe_key=f"{target.channel}:{target.ts}" if target.ts else None,
            attachments=attachments,
        )

    async def _on_open_pr(
        self, ack: Any, body: dict[str, Any], action: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        """The "Open PR" button: a ``!pr`` follow-up in the same thread, by an allowed
        user only; the button's message then says who pressed it."""
        await ack()
        target = Target.of_press(body, context.team_id)
        if target is None:
            return
        user, channel = target.user, target.channel
        settings = self.settings
        refusal = convert.check_access(
            user, channel, settings.allowed_users, settings.allowed_channels, channel[:1] == "D"
        )
        if refusal is not None:
            log.info("refused a pull-request press by %s in %s (%s)", user, channel, refusal)
            text = convert.refusal_text(user, channel, refusal)
            await self.api.post_ephemeral(target, user, text)
            return
        # The button's ts is the dedupe key: two presses of one button open one PR.
        await self._start(target, convert.OPEN_PR_PROMPT, False)
        await self.api.replace_button(target, convert.open_pr_pressed(user))

    async def _on_approval_press(
        self, ack: Any, body: dict[str, Any], action: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        """An approval button: the hub decides whether the presser may; the presser alone
        is told the outcome (the hub then changes every copy of the buttons)."""
        await ack()
        target = Target.of_press(body, context.team_id)
        if target is None or not target.user:
            return
        _, text = await self.press(target.user, str(action.get("value") or ""))
        await self.api.post_ephemeral(target, target.user, text)

    async def post_approval(self, target: Target, approval: Approval) -> str | None:
        return await self.api.post_approval(target, approval)

    async def edit_approval(self, target: Target, ref: str, approval: Approval) -> None:
        await self.api.edit_approval(target, ref, approval)

    def decider_name(self, user_id: str) -> str:
        return f"<@{user_id}>"

    async def on_submitted(self, target: Target, submitted: Submitted) -> None:
        key = f"{target.channel}:{target.ts}"
        run_id = submitted.run_id
        eyes = self.spawn(self.api.react(target, convert.WORKING_REACTION), f"eyes:{run_id}")
        self._eyes[key] = eyes
        eyes.add_done_callback(lambda _: self._eyes.pop(key, None))
        with bound(run_id=run_id):
            # One INFO line per request is enough: the answer's (the hub logs the run).
            log.debug(
                "%s asked in %s; position %d", target.user, target.channel, submitted.position
            )

    async def on_refused(self, target: Target) -> None:
        await self.api.react(target, convert.FAILURE_REACTION)

    # --- the core's calls ------------------------------------------------------------

    def target_of(self, origin: dict[str, Any]) -> Target | None:
        return Target.from_origin(origin)

    def session_key(self, target: Target) -> str:
        return target.session_key

    def place(self, target: Target) -> str:
        return target.channel

    def split_text(self, text: str) -> list[str]:
        return convert.split_message(text)

    async def send_notice(self, target: Target, text: str) -> None:
        await self.api.post(target, text)

    def describe(self, exc: BaseException) -> str:
        return describe(exc)

    async def post_status(self, run_id: str, target: Target, text: str) -> Shown:
        ts = await self.api.post_status(target, text)
        # One that could not be posted: no status message for this run.
        return Shown(stop=True, ok=False) if ts is None else Shown(ref=ts)

    async def edit_status(self, target: Target, ref: Any, text: str) -> Shown:
        # Not taken: tried again with the next progress, as the newest text.
        ok = await self.api.edit_status(target, ref, text)
        return Shown() if ok else NOT_SHOWN_UNTIL_NEWS

    async def find_status(self, run_id: str, target: Target) -> tuple[Any, str] | None:
        """The status message (ts, text) of a run submitted before this process started."""
        if run_id in self._submitted:
            return None  # submitted here: nobody else posted one
        return convert.find_status(await self.api.read_thread(target), target.ts)

    def check_deliverable(self) -> None:
        if self._api is None or self.state is State.CLOSED:
            raise ReplyDeferred("the Slack bridge is not running")

    def reply_parts(self, reply: Reply, target: Target) -> list[Any]:
        return list(
            convert.reply_parts(
                reply.run_id,
                reply.status,
                reply.answer,
                reply.error,
                elapsed_s=convert.elapsed_since(target.ts, reply.received_at),
                file_threshold=self.settings.file_threshold_chars,
            )
        )

    diff_part = staticmethod(convert.diff_file)
    open_pr_part = staticmethod(convert.open_pr_offer)

    async def earlier(self, run_id: str, target: Target, parts: list[Any], sent: Sent) -> None:
        thread = await self.api.read_thread(target)
        posted = convert.already_posted(thread, run_id, parts)
        if posted:
            log.info("parts %s were posted before; skipping them", sorted(posted))
        sent.parts = dict.fromkeys(posted)
        if sent.status is None:
            found = convert.find_status(thread, target.ts)
            sent.status = found[0] if found else None

    async def post_part(
        self, target: Target, run_id: str, part: Any, index: int, count: int
    ) -> None:
        await self.api.post_part(target, run_id, part, index, count)

    async def undeliverable(self, target: Target, reply: Reply, exc: Exception) -> None:
        log.error("Slack refused the reply for good (%s); dropping it", exc)
        await self.say(target, convert.undeliverable_text(reply.run_id, str(exc)))

    async def close_request(self, target: Target, reply: Reply, sent: Sent, answered: bool) -> None:
        """Set the status message, if any, to its end state; swap :eyes: for the outcome's."""
        elapsed = convert.elapsed_since(target.ts, reply.received_at)
        closing = convert.closing_status_text(reply.status, reply.run_id, elapsed)
        # No check mark on a request whose answer Slack refused.
        outcome = reply.status if answered else "failed"
        edit = [self.api.edit_status(target, sent.status, closing)] if sent.status else []
        eyes = self._eyes.get(f"{target.channel}:{target.ts}")
        await asyncio.gather(*edit, self.api.close_reactions(target, outcome, eyes))
