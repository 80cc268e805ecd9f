"""The Telegram bridge node: Telegram chats in, hub runs out, answers back as replies.

A translator and nothing more; every Telegram quirk is a pure function in
:mod:`bridges.telegram.convert`.

- **Telegram -> hub.** python-telegram-bot's ``Application`` is embedded (initialize,
  start, ``updater.start_polling``; the reverse on stop), long-polls
  ``TELEGRAM_API_BASE_URL`` and handles updates concurrently. A text addressed to the
  bot (any text in a private chat; in a group a mention, a reply to the bot or ``/ask``)
  from an allowed chat or user becomes :meth:`HubLink.submit`, with the chat (and its
  forum topic) as the session and everything a reply needs in the run's ``origin``.
  ``/new`` resets the session in the hub, ``/cancel`` cancels its active run,
  ``/status`` shows it, ``/start`` and ``/help`` explain the bot and show the ids.
  A message sent while the hub cannot be reached is kept by :class:`HubLink` (within
  ``BRIDGE_PENDING_MAX`` / ``BRIDGE_PENDING_MAX_AGE_S``), answered with a note that it
  is queued, and submitted once the hub is back.
- **hub -> Telegram.** ``progress`` frames feed one watcher task per run: the typing
  action, renewed while the run works, and, only once the run has lasted
  ``TELEGRAM_STATUS_DELAY_S``, one status message edited with the state and the command
  codex is running (at most every ``TELEGRAM_STATUS_EDIT_INTERVAL_S``, and in groups
  only while Telegram's per-group budget leaves room for replies). ``deliver`` posts
  the answer as a reply to the user's message: split and labelled, or as a document,
  then deletes the status message.
- **The status message survives a restart.** The Bot API cannot list a chat's
  messages, so once posted, the status message's id goes to the hub (``status_ref``,
  best effort), which keeps it in the run's ``origin`` and hands it back in the run's
  later ``progress`` and ``deliver`` frames. A bridge restarted mid-run thus edits
  the message posted before the restart instead of posting a second one, and deletes
  it when the answer is posted.

Delivery. A reply is acknowledged to the hub only after Telegram accepted every part
(HubLink acks when ``on_deliver`` returns); a failure leaves it in the hub's outbox,
which re-sends it. Flood control (429) is waited out inline for up to
:data:`MAX_FLOOD_WAIT_S`. Parts already posted are remembered per delivery, so a reply
re-sent after a partial failure posts only the parts still missing. That memory lives
in this process: a bridge restarted between a partial failure and the re-send posts the
whole reply again, once, and the ``(i/n)`` labels make that repeat visible. A reply
Telegram refuses for good (the bot was blocked, the chat is gone) is logged and
acknowledged, so it does not come back forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import logging
import math
import mimetypes
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from telegram import (
    BotCommand,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputFile,
    LinkPreviewOptions,
    Message,
    ReplyParameters,
    Update,
)
from telegram.constants import ChatAction
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
)
from telegram.ext import (
    Application,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from bridges import common
from bridges.common import (
    RepoDefaults,
    freeze_startup_heap,
    repo_line,
    retry_startup,
    split_optimize_prefix,
)
from bridges.hub_link import Frame, HubError, HubLink
from bridges.telegram import convert
from bridges.telegram.convert import (
    ButtonPart,
    DocumentPart,
    ReplyPart,
    ReplyTarget,
    SendWindow,
    TextPart,
)
from bridges.telegram.http import AiohttpRequest
from bridges.telegram.settings import TelegramSettings
from kernel.logs import bound, register_secret

log = logging.getLogger(__name__)

APPLICATION_OCTET = "application/octet-stream"


class AttachmentRefused(Exception):
    """A file that may not be attached; the message is the reply to its sender."""


T = TypeVar("T")
AnyApp = Application[Any, Any, Any, Any, Any, Any]

#: Telegram shows "typing" for about 5 s, or until the bot sends a message.
TYPING_EVERY_S = 4.0
#: A typing action that takes longer than this is not worth waiting for.
TYPING_TIMEOUT_S = 5.0
#: The longest one Bot API request may take.
CALL_TIMEOUT_S = 30.0
#: Flood waits (429) longer than this, in all, give up; the hub re-sends the reply later.
MAX_FLOOD_WAIT_S = 60.0
#: How long a request to the hub (submit, cancel, ...) may take.
HUB_REQUEST_TIMEOUT_S = 10.0
#: Long-poll timeout of ``getUpdates``.
POLL_TIMEOUT_S = 10.0
#: Connecting to Telegram at start-up; after that it is retried in the background.
STARTUP_TIMEOUT_S = 15.0
#: Retrying a start-up connection that failed: the longest wait between tries.
STARTUP_BACKOFF_MAX_S = common.STARTUP_BACKOFF_MAX_S
#: Each step of stopping.
STOP_TIMEOUT_S = 10.0
#: Deliveries whose posted parts are remembered, and runs known to be finished.
MEMORY = 1000


class State(enum.Enum):
    """Where a :class:`TelegramBridge` is in its life."""

    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    CLOSED = "closed"


class BridgeError(common.BridgeError):
    """Root of the Telegram bridge's errors.

    - :class:`TokenRefused`: Telegram refused ``TELEGRAM_BOT_TOKEN`` at start.
    - :class:`Undeliverable`: Telegram refused a reply for good; it is logged and dropped.
    """


class TokenRefused(BridgeError):
    """Telegram refused the bot token; a person must fix ``TELEGRAM_BOT_TOKEN``.

    Raised instead of PTB's ``InvalidToken``, whose message quotes the token itself.
    """


class Undeliverable(BridgeError):
    """Telegram refused a reply for good (blocked bot, unknown chat, bad request)."""


@dataclass
class _Posted:
    """What went out for one delivery: part index -> message id, and the status message."""

    parts: dict[int, int] = field(default_factory=dict)
    status_message_id: int | None = None


class TelegramBridge:
    """The Telegram bridge node; an async context manager (see the module docstring)."""

    def __init__(self, settings: TelegramSettings, *, node_id: str | None = None) -> None:
        if not settings.configured:
            raise ValueError("TELEGRAM_BOT_TOKEN is not set")
        # The token is in every Bot API URL: mask it wherever a log line might carry it.
        register_secret(settings.bot_token)
        self.settings = settings
        self.state = State.NEW
        self.link = HubLink(
            settings,
            "telegram",
            on_deliver=self._on_deliver,
            on_progress=self._on_progress,
            node_id=node_id,
            request_timeout=HUB_REQUEST_TIMEOUT_S,
            pending_max=settings.pending_max,
            pending_max_age_s=settings.pending_max_age_s,
        )
        #: The Bot API's HTTP clients: for calls, and for the one long poll.
        self._http = (AiohttpRequest(), AiohttpRequest(1))
        self.app: AnyApp = self._build_app()
        self.bot_id = 0
        self.bot_username = ""
        self._runs: dict[str, _RunView] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._posted: OrderedDict[str, _Posted] = OrderedDict()
        self._windows: dict[int, SendWindow] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._startup: asyncio.Task[None] | None = None
        #: The repository each chat works on (``/repo``; BRIDGE_REPOS at start).
        self.repos = RepoDefaults(settings.repos)

    def _build_app(self) -> AnyApp:
        app = (
            Application.builder()
            .token(self.settings.bot_token.get_secret_value())
            .base_url(self.settings.api_base_url)
            .base_file_url(self.settings.file_base_url)
            # aiohttp, not PTB's httpx: a third of the CPU per call (see bridges.telegram.http).
            .request(self._http[0])
            .get_updates_request(self._http[1])
            .concurrent_updates(True)
            .build()
        )
        new = filters.UpdateType.MESSAGE
        app.add_handler(CommandHandler(["start", "help"], self._cmd_help, filters=new))
        app.add_handler(CommandHandler("new", self._cmd_new, filters=new))
        app.add_handler(CommandHandler("cancel", self._cmd_cancel, filters=new))
        app.add_handler(CommandHandler("status", self._cmd_status, filters=new))
        app.add_handler(CommandHandler("repo", self._cmd_repo, filters=new))
        app.add_handler(CommandHandler("ask", self._on_text, filters=new))
        app.add_handler(CallbackQueryHandler(self._on_open_pr, pattern=f"^{convert.OPEN_PR_DATA}"))
        app.add_handler(MessageHandler(new & filters.TEXT & ~filters.COMMAND, self._on_text))
        app.add_handler(MessageHandler(new & (filters.PHOTO | filters.Document.ALL), self._on_text))
        app.add_handler(
            MessageHandler(new & filters.COMMAND & filters.ChatType.PRIVATE, self._cmd_help)
        )
        app.add_error_handler(self._on_error)
        return app

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Connect to Telegram, then the hub, then poll; an outage at start is retried.

        Raises :class:`TokenRefused` when Telegram refuses the token: that needs a person.
        """
        if self.state is not State.NEW:
            return
        self.state = State.STARTING
        try:
            await self._initialize()
        except TokenRefused:
            await self.close()
            raise
        except (NetworkError, TimeoutError) as exc:
            log.warning("Telegram is not reachable (%s); retrying in the background", exc)
            self._startup = asyncio.create_task(self._start_later(), name="TelegramBridge:startup")
            return
        try:
            await self._go_live()
        except BaseException:
            await self.close()
            raise

    async def _initialize(self) -> None:
        """Ask Telegram who the bot is (``getMe``); a refused token is :class:`TokenRefused`."""
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT_S):
                await self.app.initialize()
        except InvalidToken:
            # Not chained: PTB's message quotes the token itself.
            raise TokenRefused(
                "Telegram refused TELEGRAM_BOT_TOKEN; check it with @BotFather"
            ) from None

    async def _start_later(self) -> None:
        up = await retry_startup(
            self._initialize,
            platform="Telegram",
            refused=(TokenRefused,),
            backoff_max=STARTUP_BACKOFF_MAX_S,
        )
        if up:
            try:
                await self._go_live()
            except Exception:
                log.exception("starting the Telegram bridge failed; it stays down")

    async def _go_live(self) -> None:
        self.bot_id = self.app.bot.id
        self.bot_username = self.app.bot.username
        # Replies can only be posted once the bot is up: take them from the hub only now.
        await self.link.start()
        await self.app.start()
        assert self.app.updater is not None
        await self.app.updater.start_polling(
            timeout=dt.timedelta(seconds=POLL_TIMEOUT_S),
            allowed_updates=[Update.MESSAGE, Update.CALLBACK_QUERY],
            bootstrap_retries=3,
            error_callback=self._polling_error,
        )
        self.state = State.RUNNING
        self._spawn(self._publish_commands(), "commands")
        log.info("Telegram bridge is up as @%s", self.bot_username)
        freeze_startup_heap()

    async def close(self) -> None:
        """Stop polling, finish the updates in hand, leave the hub, stop. Idempotent."""
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        if self._startup is not None:
            self._startup.cancel()
            await asyncio.gather(self._startup, return_exceptions=True)
        updater = self.app.updater
        if updater is not None and updater.running:
            await self._quietly("stopping the poller", updater.stop())
        # Messages kept for a hub that is away end now, told they were not sent.
        self.link.give_up_kept()
        if self.app.running:
            # Waits for the updates in hand: a message being submitted gets its answer.
            await self._quietly("stopping the application", self.app.stop())
        # Cancels replies being posted: unacknowledged, the hub re-sends them later.
        await self.link.close()
        views = list(self._runs.values())
        self._runs.clear()
        await asyncio.gather(*(view.close(wait=False) for view in views))
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._quietly("shutting down", self.app.shutdown())
        # The bot's HTTP clients exist even when initialize failed half-way, when the
        # bot's own shutdown does nothing.
        await self._quietly("closing the HTTP clients", self.app.bot.shutdown())
        for http in self._http:
            await self._quietly("closing an HTTP client", http.shutdown())
        log.info("Telegram bridge stopped")

    async def _quietly(self, what: str, step: Awaitable[None]) -> None:
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await step
        except Exception as exc:
            log.warning("Telegram bridge: %s failed: %s", what, exc)

    async def __aenter__(self) -> TelegramBridge:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(f"TelegramBridge:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    async def _publish_commands(self) -> None:
        commands = [BotCommand(name, about) for name, about in convert.BOT_COMMANDS]
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                await self.app.bot.set_my_commands(commands)
        except (TelegramError, TimeoutError) as exc:
            log.warning("could not publish the command menu: %s", exc)

    def _polling_error(self, exc: TelegramError) -> None:
        log.warning("polling Telegram failed: %s; retrying", exc)

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        log.error("handling a Telegram update failed", exc_info=context.error)

    # --- Bot API calls -----------------------------------------------------------------

    def _window(self, chat_id: int) -> SendWindow:
        window = self._windows.get(chat_id)
        if window is None:
            window = self._windows[chat_id] = SendWindow()
        return window

    def status_allowed(self, target: ReplyTarget) -> bool:
        """True when a status post or edit keeps a group's budget free for replies."""
        if not target.is_group:
            return True
        return self._window(target.chat_id).allows_status(time.monotonic())

    async def _call(
        self,
        chat_id: int,
        send: Callable[[int], Awaitable[T]],
        *,
        counted: bool = True,
        max_wait: float = MAX_FLOOD_WAIT_S,
        time_limit: float = CALL_TIMEOUT_S,
    ) -> T:
        """One Bot API call to a chat: time-boxed, flood control waited out, sends counted.

        ``send`` gets the chat id (a group that became a supergroup has a new one).
        """
        waited = 0.0
        migrated = False
        while True:
            try:
                async with asyncio.timeout(time_limit):
                    result = await send(chat_id)
            except RetryAfter as exc:
                delay = convert.retry_after_s(exc)
                if waited + delay > max_wait:
                    raise
                log.warning("Telegram flood control: waiting %.1f s (chat %s)", delay, chat_id)
                waited += delay
                await asyncio.sleep(delay)
                continue
            except ChatMigrated as exc:
                if migrated:
                    raise
                migrated = True
                log.info("chat %s became supergroup %s", chat_id, exc.new_chat_id)
                chat_id = int(exc.new_chat_id)
                continue
            if counted and chat_id < 0:
                self._window(chat_id).record(time.monotonic())
            return result

    @staticmethod
    def _reply_to(target: ReplyTarget) -> ReplyParameters | None:
        if target.message_id is None:
            return None
        # The user may have deleted their message meanwhile: answer anyway.
        return ReplyParameters(message_id=target.message_id, allow_sending_without_reply=True)

    async def send_text(
        self,
        target: ReplyTarget,
        text: str,
        *,
        entities: list[Any] | None = None,
        quiet: bool = False,
        max_wait: float = MAX_FLOOD_WAIT_S,
    ) -> Message:
        """Post ``text`` in the target's chat and topic, as a reply to its message."""
        return await self._call(
            target.chat_id,
            lambda chat_id: self.app.bot.send_message(
                chat_id,
                text,
                entities=entities,
                message_thread_id=target.thread_id,
                reply_parameters=self._reply_to(target),
                link_preview_options=LinkPreviewOptions(is_disabled=True),
                disable_notification=quiet,
            ),
            max_wait=max_wait,
        )

    async def edit_text(self, target: ReplyTarget, message_id: int, text: str) -> None:
        """Replace the text of one of the bot's messages (no flood wait: best effort)."""
        await self._call(
            target.chat_id,
            lambda chat_id: self.app.bot.edit_message_text(
                text, chat_id=chat_id, message_id=message_id
            ),
            max_wait=0.0,
        )

    async def send_typing(self, target: ReplyTarget) -> None:
        """Show "typing…" in the target's chat and topic for a few seconds."""
        await self._call(
            target.chat_id,
            lambda chat_id: self.app.bot.send_chat_action(
                chat_id, ChatAction.TYPING, message_thread_id=target.thread_id
            ),
            counted=False,
            max_wait=0.0,
            time_limit=TYPING_TIMEOUT_S,
        )

    async def _say(self, target: ReplyTarget, text: str) -> None:
        """Best effort: the bot's own short answers (help, refusals, notices)."""
        try:
            for chunk in convert.split_message(text):
                await self.send_text(target, chunk)
        except (TelegramError, TimeoutError) as exc:
            log.warning("could not answer in chat %s: %s", target.chat_id, exc)

    async def _delete(self, target: ReplyTarget, message_id: int) -> None:
        try:
            await self._call(
                target.chat_id,
                lambda chat_id: self.app.bot.delete_message(chat_id, message_id),
                counted=False,
                max_wait=0.0,
            )
        except (TelegramError, TimeoutError) as exc:
            log.info("could not delete status message %s: %s", message_id, exc)

    # --- Telegram -> hub -----------------------------------------------------------

    async def _admit(self, message: Message) -> bool:
        """True when the sender may use the bot; otherwise tell them the ids to add."""
        user = message.from_user
        user_id = user.id if user is not None else None
        chat_id = message.chat.id
        if convert.is_allowed(
            chat_id, user_id, self.settings.allowed_chats, self.settings.allowed_users
        ):
            return True
        log.info("refused user %s in chat %s (not in the allowlists)", user_id, chat_id)
        await self._say(ReplyTarget.of(message), convert.refusal_text(chat_id, user_id))
        return False

    @staticmethod
    def _session(target: ReplyTarget) -> str:
        # Generation 0 always: /new resets the hub's session instead of moving to a new key.
        return convert.session_key(target.chat_id, target.thread_id, 0)

    async def _on_text(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.message
        if message is None:
            return
        has_file = bool(message.photo or message.document)
        if message.text is None and not has_file:
            return
        text = message.text if message.text is not None else message.caption
        addressed, prompt = convert.should_handle(
            text,
            message.chat.type,
            self.bot_username,
            convert.is_reply_to_bot(message, self.bot_id),
            message.entities if message.text is not None else message.caption_entities,
        )
        if has_file and not (text or "").strip() and message.chat.type == "private":
            addressed = True  # a file alone, in a private chat, is a request about it
        if not addressed or not await self._admit(message):
            return
        optimize, prompt = split_optimize_prefix(prompt)
        target = ReplyTarget.of(message)
        attachments = None
        if has_file:
            try:
                attachments = common.attachment_options([await self._attachment(message)])
            except AttachmentRefused as exc:
                await self._say(target, str(exc))
                return
            prompt = prompt or common.ATTACHMENT_ONLY_PROMPT
        if not prompt:
            await self._say(target, self._help(message))
            return
        user = message.from_user
        origin = target.to_origin(user.id if user else None, user.username if user else None)
        repo = self.repos.get(str(target.chat_id))
        if repo:
            origin["repo"] = repo
        try:
            submitted = await self.link.submit(
                prompt,
                session_key=self._session(target),
                origin=origin,
                optimize=optimize,
                # Telegram re-sends an update a crashed bridge never confirmed: the same
                # message then names the run it started instead of starting another.
                dedupe_key=f"{target.chat_id}:{target.message_id}" if target.message_id else None,
                on_kept=lambda: self._say(target, convert.kept_text()),
                attachments=attachments,
            )
        except HubError as exc:
            log.warning("the hub did not take a message from chat %s: %s", target.chat_id, exc)
            await self._say(target, convert.hub_error_text(exc.code, str(exc)))
            return
        with bound(run_id=submitted.run_id):
            log.info("chat %s asked; position %d", target.chat_id, submitted.position)
        self._track(submitted.run_id, target, state=None, position=submitted.position)
        if submitted.position > 0:
            await self._say(target, convert.queued_text(submitted.position))

    async def _attachment(self, message: Message) -> common.Attachment:
        """The photo (its largest size) or document of ``message``, downloaded; raises
        AttachmentRefused, with the reply, when it is over the limits or unreadable."""
        settings = self.settings
        if message.photo:
            photo = message.photo[-1]
            file_id, size = photo.file_id, photo.file_size
            name, mime = f"photo-{message.message_id}.jpg", "image/jpeg"
        else:
            document = message.document
            assert document is not None
            file_id, size = document.file_id, document.file_size
            name = document.file_name or f"file-{message.message_id}"
            mime = document.mime_type or mimetypes.guess_type(name)[0] or APPLICATION_OCTET
        limits = (settings.attachment_max_bytes, settings.attachment_types)
        refusal = common.attachment_refusal(name, mime, size, *limits)
        if refusal is not None:
            raise AttachmentRefused(refusal)
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                file = await self.app.bot.get_file(file_id)
                data = bytes(await file.download_as_bytearray())
        except (TelegramError, TimeoutError) as exc:
            log.warning("could not download a file from chat %s: %s", message.chat.id, exc)
            raise AttachmentRefused(f"{name} could not be downloaded from Telegram.") from exc
        refusal = common.attachment_refusal(name, mime, len(data), *limits)
        if refusal is not None:
            raise AttachmentRefused(refusal)
        return common.Attachment(name, mime, data)

    def _help(self, message: Message) -> str:
        user = message.from_user
        return convert.help_text(
            user.id if user else None, message.chat.id, bot_username=self.bot_username
        )

    async def _cmd_help(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.message
        if message is not None and await self._admit(message):
            await self._say(ReplyTarget.of(message), self._help(message))

    async def _cmd_new(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.message
        if message is None or not await self._admit(message):
            return
        target = ReplyTarget.of(message)
        key = self._session(target)
        try:
            status = await self.link.session_status(key)
            busy = status.get("active") or next(iter(status.get("queued") or []), None)
            if busy:
                # A run in flight would save its thread back into the session after the
                # reset: refuse rather than pretend the conversation starts over.
                await self._say(target, convert.busy_text(str(busy.get("id"))))
                return
            await self.link.reset_session(key)
        except HubError as exc:
            await self._say(target, convert.hub_error_text(exc.code, str(exc)))
            return
        log.info("chat %s started a fresh session", target.chat_id)
        await self._say(target, convert.NEW_SESSION_TEXT)

    async def _cmd_cancel(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.message
        if message is None or not await self._admit(message):
            return
        target = ReplyTarget.of(message)
        try:
            cancelled = await self.link.cancel(session_key=self._session(target))
        except HubError as exc:
            await self._say(target, convert.hub_error_text(exc.code, str(exc)))
            return
        log.info("chat %s cancelled %s", target.chat_id, cancelled or "nothing")
        await self._say(target, convert.cancel_text(cancelled))

    async def _cmd_status(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.message
        if message is None or not await self._admit(message):
            return
        target = ReplyTarget.of(message)
        try:
            status = await self.link.session_status(self._session(target))
        except HubError as exc:
            await self._say(target, convert.hub_error_text(exc.code, str(exc)))
            return
        text = convert.session_text(status.get("active"), status.get("queued") or [], time.time())
        await self._say(target, f"{text}\n{repo_line(self.repos.get(str(target.chat_id)))}")

    async def _cmd_repo(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """``/repo owner/name`` sets the chat's repository; ``/repo`` shows it."""
        message = update.message
        if message is None or message.text is None or not await self._admit(message):
            return
        target = ReplyTarget.of(message)
        argument = message.text.split(None, 1)[1] if len(message.text.split(None, 1)) > 1 else ""
        await self._say(target, self.repos.command(str(target.chat_id), argument))

    # --- hub -> Telegram -------------------------------------------------------------

    def _track(
        self,
        run_id: str,
        target: ReplyTarget,
        *,
        state: str | None,
        detail: str | None = None,
        position: int | None = None,
        status_message_id: int | None = None,
    ) -> None:
        """Start or update the watcher of a run still going (not one already answered).

        ``state`` None keeps the state known: the answer to a submit may arrive after
        the run's first progress frames. ``status_message_id``: the status message the
        hub knows of (posted by an earlier process of this bridge), used when this
        process has none.
        """
        if self.state is not State.RUNNING or run_id in self._finished:
            return
        view = self._runs.get(run_id)
        if view is None:
            view = self._runs[run_id] = _RunView(self, run_id, target)
        view.adopt(status_message_id)
        view.update(state, detail, position)

    def status_posted(self, run_id: str, message_id: int) -> None:
        """Tell the hub about a new status message (best effort: nothing waits for it)."""
        try:
            self.link.status_ref(run_id, convert.status_ref(message_id))
        except Exception:
            log.warning("could not tell the hub about the status message", exc_info=True)

    def _remember(self, memory: OrderedDict[str, Any], key: str, value: Any) -> None:
        memory[key] = value
        memory.move_to_end(key)
        while len(memory) > MEMORY:
            memory.popitem(last=False)

    async def _on_progress(self, frame: Frame) -> None:
        run_id = str(frame.get("run_id") or "")
        origin = frame.get("origin") or {}
        target = ReplyTarget.from_origin(origin)
        if not run_id or target is None:
            return
        position = frame.get("position")
        self._track(
            run_id,
            target,
            state=str(frame.get("state") or "running"),
            detail=frame.get("detail"),
            position=position if isinstance(position, int) else None,
            status_message_id=convert.status_message_of(origin),
        )

    async def _on_deliver(self, frame: Frame) -> None:
        run_id = str(frame.get("run_id") or "")
        delivery_id = str(frame.get("delivery_id") or run_id)
        with bound(run_id=run_id):
            origin = frame.get("origin") or {}
            target = ReplyTarget.from_origin(origin)
            if target is None:
                log.error("the reply names no Telegram chat in its origin; dropping it")
                return
            self._remember(self._finished, run_id, None)
            posted = self._posted.get(delivery_id) or _Posted()
            self._remember(self._posted, delivery_id, posted)
            view = self._runs.pop(run_id, None)
            if view is not None:
                posted.status_message_id = await view.close(wait=True)
            parts = convert.reply_parts(
                str(frame.get("status") or "failed"),
                str(frame.get("answer") or ""),
                run_id,
                frame.get("error"),
                parse_mode=self.settings.parse_mode,
                document_threshold=self.settings.document_threshold_chars,
            )
            diff = frame.get("diff")
            if isinstance(diff, str) and diff:
                parts.append(convert.diff_document(diff, run_id))
                if not frame.get("pr_url"):
                    parts.append(convert.open_pr_offer(run_id))
            try:
                for index, part in enumerate(parts):
                    if index not in posted.parts:
                        posted.parts[index] = await self._post(target, part)
            except Undeliverable as exc:
                # Acknowledged all the same: re-sending it would only fail again, forever.
                log.error("Telegram refused the reply to chat %s (%s)", target.chat_id, exc)
            else:
                log.info("replied in chat %s (%d parts)", target.chat_id, len(parts))
            self._posted.pop(delivery_id, None)
            # This process's status message, and the one the hub knows of: the same, or
            # one an earlier process of this bridge posted before it was restarted.
            statuses = {posted.status_message_id, convert.status_message_of(origin)}
            for message_id in sorted(m for m in statuses if m is not None):
                self._spawn(self._delete(target, message_id), "delete-status")

    async def _on_open_pr(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """The "Open PR" button: a ``!pr`` follow-up in the same conversation, by an
        allowed user only; the button's message then says who pressed it."""
        query = update.callback_query
        if query is None or not isinstance(query.message, Message) or query.data is None:
            return
        message = query.message
        user = query.from_user
        chat_id = message.chat.id
        if not convert.is_allowed(
            chat_id, user.id, self.settings.allowed_chats, self.settings.allowed_users
        ):
            log.info("refused a pull-request press by user %s in chat %s", user.id, chat_id)
            await self._answer_query(query.id, convert.open_pr_refusal(user.id), alert=True)
            return
        run_id = query.data.removeprefix(convert.OPEN_PR_DATA)
        target = ReplyTarget.of(message)
        origin = target.to_origin(user.id, user.username)
        repo = self.repos.get(str(chat_id))
        if repo:
            origin["repo"] = repo
        try:
            submitted = await self.link.submit(
                convert.OPEN_PR_PROMPT,
                session_key=self._session(target),
                origin=origin,
                optimize=False,
                # Two presses of one button (two people, or a double tap) open one PR.
                dedupe_key=f"{convert.OPEN_PR_DATA}{run_id}",
            )
        except HubError as exc:
            log.warning("the hub did not take a pull-request press in chat %s: %s", chat_id, exc)
            await self._answer_query(query.id, convert.hub_error_text(exc.code, str(exc)))
            return
        await self._answer_query(query.id, "Opening a pull request…")
        who = f"@{user.username}" if user.username else str(user.id)
        with contextlib.suppress(TelegramError, TimeoutError):
            await self.edit_text(target, message.message_id, convert.open_pr_pressed(who))
        self._track(submitted.run_id, target, state=None, position=submitted.position)

    async def _answer_query(self, query_id: str, text: str, *, alert: bool = False) -> None:
        """Best effort: the small notice Telegram shows to whoever pressed a button."""
        try:
            await self.app.bot.answer_callback_query(query_id, text=text[:200], show_alert=alert)
        except (TelegramError, TimeoutError) as exc:
            log.warning("could not answer a button press: %s", exc)

    async def _post(self, target: ReplyTarget, part: ReplyPart) -> int:
        """Post one part of a reply; its message id. Raises Undeliverable when hopeless."""
        try:
            if isinstance(part, ButtonPart):
                message = await self._call(
                    target.chat_id,
                    lambda chat_id: self.app.bot.send_message(
                        chat_id,
                        part.text,
                        message_thread_id=target.thread_id,
                        reply_parameters=self._reply_to(target),
                        reply_markup=InlineKeyboardMarkup(
                            [[InlineKeyboardButton(part.label, callback_data=part.data)]]
                        ),
                    ),
                )
                return message.message_id
            if isinstance(part, DocumentPart):
                message = await self._call(
                    target.chat_id,
                    lambda chat_id: self.app.bot.send_document(
                        chat_id,
                        InputFile(part.content, filename=part.filename),
                        caption=part.caption,
                        message_thread_id=target.thread_id,
                        reply_parameters=self._reply_to(target),
                    ),
                )
                return message.message_id
            return await self._post_text(target, part)
        except (BadRequest, Forbidden) as exc:
            raise Undeliverable(str(exc)) from exc

    async def _post_text(self, target: ReplyTarget, part: TextPart) -> int:
        try:
            message = await self.send_text(target, part.text, entities=part.entities)
        except BadRequest as exc:
            if part.entities is None or not convert.is_format_error(exc.message):
                raise
            log.warning("Telegram refused the formatting (%s); sending plain text", exc)
            message = await self.send_text(target, part.fallback)
        return message.message_id


class _RunView:
    """A run still going, as the chat sees it: "typing…" and, later, a status message.

    One task per run (``TelegramBridge:run:<id>``): it renews the typing action while
    the run works, posts the status message once the run has lasted the status delay
    (or adopts the one an earlier bridge process posted, see :meth:`adopt`), and edits
    it when the state or the command changes, never more often than the edit
    interval. ``close`` ends the task, letting a call under way finish first: a status
    post, so the message it creates is known and can be deleted once the answer is
    posted; a typing action, so it cannot land after the answer (and keep "typing…"
    showing under it) and its keep-alive connection is not torn down.
    """

    def __init__(
        self,
        bridge: TelegramBridge,
        run_id: str,
        target: ReplyTarget,
    ) -> None:
        self.bridge = bridge
        self.run_id = run_id
        self.target = target
        self.state = "queued"
        self.detail = ""
        self.position: int | None = None
        self.status_message_id: int | None = None
        #: When the run became the one working in its conversation (loop time).
        self.working_since: float | None = None
        self._adopted = False
        self._wake = asyncio.Event()
        self._stopping = False
        self._busy = False
        self.task = asyncio.create_task(self._watch(), name=f"TelegramBridge:run:{run_id}")

    def update(self, state: str | None, detail: str | None, position: int | None) -> None:
        """Take the latest progress; the watcher shows it when it may."""
        if state is not None:
            self.state = state
        if detail:
            self.detail = detail
        if position is not None:
            self.position = position
        if self.working_since is None and self.working:
            # The status delay counts from here: a run that waited in the queue and then
            # finishes fast needs no status message either.
            self.working_since = asyncio.get_running_loop().time()
        self._wake.set()

    def adopt(self, message_id: int | None) -> None:
        """Use ``message_id`` as the status message when this view has none (once).

        The hub names the status message an earlier process of this bridge posted; it
        is edited from now on instead of a second one being posted. Once only: if it
        turns out deleted, the view posts a new one rather than try it again.
        """
        if message_id is None or self._adopted or self.status_message_id is not None:
            return
        self._adopted = True
        self.status_message_id = message_id
        self._wake.set()

    @property
    def working(self) -> bool:
        """True when this run is the one working (or next) in its conversation."""
        return self.state != "queued" or not self.position

    def text(self) -> str:
        """The status message as it should read now."""
        return convert.status_text(self.state, self.detail, self.run_id, self.position)

    async def close(self, *, wait: bool) -> int | None:
        """Stop watching; the status message's id, if one was posted.

        With ``wait``, a call under way may finish first (each is time-boxed).
        """
        self._stopping = True
        self._wake.set()
        if wait and self._busy:
            await asyncio.wait({self.task}, timeout=CALL_TIMEOUT_S)
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        return self.status_message_id

    async def _watch(self) -> None:
        settings = self.bridge.settings
        loop = asyncio.get_running_loop()
        next_typing = loop.time()
        next_status = 0.0
        shown: str | None = None
        with bound(run_id=self.run_id):
            while not self._stopping:
                self._wake.clear()
                now = loop.time()
                if self.working and now >= next_typing:
                    self._busy = True
                    try:
                        next_typing = now + await self._typing()
                    finally:
                        self._busy = False
                text = self.text()
                if self.working_since is not None and self.status_message_id is None:
                    # The delay is for posting one; one already there (adopted) is edited.
                    next_status = max(next_status, self.working_since + settings.status_delay_s)
                if self.working and text != shown and now >= next_status:
                    self._busy = True
                    try:
                        hold = await self._show(text)
                    finally:
                        self._busy = False
                    if hold is None:
                        shown = text
                    next_status = loop.time() + max(settings.status_edit_interval_s, hold or 0)
                wake = math.inf
                if self.working:
                    wake = next_typing
                    if self.text() != shown:
                        wake = min(wake, next_status)
                timeout = None if wake == math.inf else max(0.0, wake - loop.time())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()

    async def _typing(self) -> float:
        """Send the typing action; seconds until the next one."""
        try:
            await self.bridge.send_typing(self.target)
        except RetryAfter as exc:
            return max(TYPING_EVERY_S, convert.retry_after_s(exc))
        except (TelegramError, TimeoutError) as exc:
            log.debug("typing action failed: %s", exc)
        return TYPING_EVERY_S

    async def _show(self, text: str) -> float | None:
        """Post or edit the status message: None when shown, else seconds to hold off."""
        bridge = self.bridge
        if not bridge.status_allowed(self.target):
            return 0.0
        try:
            if self.status_message_id is None:
                message = await bridge.send_text(self.target, text, quiet=True, max_wait=0.0)
                self.status_message_id = message.message_id
                self._adopted = True  # this process's own from now on: adopt no other
                bridge.status_posted(self.run_id, message.message_id)
            else:
                await bridge.edit_text(self.target, self.status_message_id, text)
        except RetryAfter as exc:
            return convert.retry_after_s(exc)
        except BadRequest as exc:
            if "not modified" in exc.message.lower():
                return None
            if "not found" in exc.message.lower():
                self.status_message_id = None  # deleted by someone: post a new one
                return 0.0
            log.info("status message refused: %s", exc)
            return None
        except (TelegramError, TimeoutError) as exc:
            log.info("status message not updated: %s", exc)
            return 0.0
        return None
