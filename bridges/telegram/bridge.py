"""The Telegram bridge node: Telegram chats in, hub runs out, answers back as replies.

The Telegram adapter of the bridge core (:mod:`bridges.core` owns the lifecycle,
submits, progress, delivery and the status message; see bridges/ADAPTERS.md): polling,
updates and commands. Bot API calls are in :mod:`bridges.telegram.api`, pure Telegram
quirks in :mod:`bridges.telegram.convert`, the answers of ``/new`` and ``/status`` in
:mod:`bridges.telegram.sessions`.

- **Telegram -> hub.** A text addressed to the bot (any text in a private chat; in a
  group a mention, a reply to the bot or ``/ask``) from an allowed chat or user becomes
  a run; the chat (and its forum topic) is the session. ``/new`` resets the session,
  ``/cancel`` cancels its active run, ``/status`` shows it, ``/repo`` sets the chat's
  repository, ``/target`` where its runs go (a message starting with ``@label`` says it
  for itself), ``/start`` and ``/help`` explain the bot.
- **While it runs.** "typing…", renewed while the run works, and once it has lasted
  ``TELEGRAM_STATUS_DELAY_S`` a status message (in groups only while Telegram's
  per-group budget leaves room for replies). A message waiting behind others is told
  its place instead. The status message's id goes to the hub (``status_ref``), which
  hands it back in the run's later frames: a bridge restarted mid-run edits, then
  deletes, the message posted before the restart.
- **hub -> Telegram.** The answer is a reply to the user's message (split and
  labelled, or a document), then the status message is deleted. Parts already posted
  are remembered in this process only: after a restart a reply is posted whole again,
  once, its ``(i/n)`` labels making the repeat visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from telegram import Message, Update
from telegram.error import NetworkError, RetryAfter
from telegram.ext import (
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from bridges.common import split_optimize_prefix
from bridges.core import Approval, ChatBridge, Reply, Sent, Shown, StatusTiming, Texts
from bridges.core import State as State
from bridges.core.approval import BUTTON_PREFIX
from bridges.hub_link import HubError, Submitted
from bridges.telegram import convert, sessions
from bridges.telegram.api import CALL_ERRORS, AnyApp, BotApi
from bridges.telegram.api import BridgeError as BridgeError
from bridges.telegram.api import TokenRefused as TokenRefused
from bridges.telegram.api import Undeliverable as Undeliverable
from bridges.telegram.convert import ReplyTarget
from bridges.telegram.settings import TelegramSettings
from kernel.logs import bound, register_secret

log = logging.getLogger(__name__)


#: Telegram shows "typing" for about 5 s, or until the bot sends a message.
TYPING_EVERY_S = 4.0


class TelegramBridge(ChatBridge[ReplyTarget]):
    """The Telegram bridge node; an async context manager (see the module docstring)."""

    PLATFORM = "telegram"
    PLATFORM_NAME = "Telegram"
    REFUSED = (TokenRefused,)
    UNREACHABLE = (NetworkError, TimeoutError)
    CALL_ERRORS = CALL_ERRORS
    KEEP_ALIVE = True
    texts = Texts(
        convert.kept_text,
        convert.hub_error_text,
        convert.cancel_text,
        convert.status_text,
        with_answer=convert.status_with_answer,
    )

    def __init__(self, settings: TelegramSettings, *, node_id: str | None = None) -> None:
        if not settings.configured:
            raise ValueError("TELEGRAM_BOT_TOKEN is not set")
        # The token is in every Bot API URL: mask it wherever a log line might carry it.
        register_secret(settings.bot_token)
        timing = StatusTiming(settings.status_delay_s, settings.status_edit_interval_s)
        super().__init__(settings, node_id=node_id, status=timing)
        self.settings = settings
        self.api = BotApi(settings)
        self.app: AnyApp = self._add_handlers(self.api.app)
        self.bot_id = 0
        self.bot_username = ""

    def _add_handlers(self, app: AnyApp) -> AnyApp:
        new = filters.UpdateType.MESSAGE
        app.add_handler(CommandHandler(["start", "help"], self._cmd_help, filters=new))
        app.add_handler(CommandHandler("new", self._cmd_new, filters=new))
        app.add_handler(CommandHandler("cancel", self._cmd_cancel, filters=new))
        app.add_handler(CommandHandler("status", self._cmd_status, filters=new))
        app.add_handler(CommandHandler("repo", self._cmd_repo, filters=new))
        app.add_handler(CommandHandler("target", self._cmd_target, filters=new))
        app.add_handler(CommandHandler("ask", self._on_text, filters=new))
        app.add_handler(CallbackQueryHandler(self._on_open_pr, pattern=f"^{convert.OPEN_PR_DATA}"))
        app.add_handler(CallbackQueryHandler(self._on_approval_press, pattern=f"^{BUTTON_PREFIX}"))
        app.add_handler(MessageHandler(new & filters.TEXT & ~filters.COMMAND, self._on_text))
        app.add_handler(MessageHandler(new & (filters.PHOTO | filters.Document.ALL), self._on_text))
        app.add_handler(
            MessageHandler(new & filters.COMMAND & filters.ChatType.PRIVATE, self._cmd_help)
        )
        app.add_error_handler(self._on_error)
        return app

    # --- lifecycle -------------------------------------------------------------------

    async def connect(self) -> None:
        """Ask Telegram who the bot is (``getMe``); a refused token is :class:`TokenRefused`."""
        self.bot_id, self.bot_username = await self.api.initialize()

    async def listen(self) -> None:
        await self.api.start_polling()
        self.spawn(self.api.publish_commands(), "commands")
        log.info("Telegram bridge is up as @%s", self.bot_username)

    async def stop_listening(self) -> None:
        updater = self.app.updater
        if updater is not None and updater.running:
            await self.quietly("stopping the poller", updater.stop())

    async def drain(self) -> None:
        if self.app.running:
            # Waits for the updates in hand: a message being submitted gets its answer.
            await self.quietly("stopping the application", self.app.stop())

    async def shut(self) -> None:
        await self.quietly("shutting down", self.app.shutdown())
        # The bot's HTTP clients exist even when initialize failed half-way, when the
        # bot's own shutdown does nothing.
        await self.quietly("closing the HTTP clients", self.app.bot.shutdown())
        for http in self.api.http:
            await self.quietly("closing an HTTP client", http.shutdown())

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        log.error("handling a Telegram update failed", exc_info=context.error)

    # --- Telegram -> hub -------------------------------------------------------------

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
        await self.say(ReplyTarget.of(message), convert.refusal_text(chat_id, user_id))
        return False

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
            limits = (self.settings.attachment_max_bytes, self.settings.attachment_types)
            found = await self.attach(target, prompt, self.api.download(message, *limits))
            if found is None:
                return
            prompt, attachments = found
        if not prompt:
            await self.say(target, self._help(message))
            return
        user = message.from_user
        await self.start_run(
            target,
            prompt,
            origin=target.to_origin(user.id if user else None, user.username if user else None),
            optimize=optimize,
            # Telegram re-sends an update a crashed bridge never confirmed: the same
            # message then names the run it started instead of starting another.
            dedupe_key=f"{target.chat_id}:{target.message_id}" if target.message_id else None,
            attachments=attachments,
        )

    async def on_submitted(self, target: ReplyTarget, submitted: Submitted) -> None:
        with bound(run_id=submitted.run_id):
            log.info("chat %s asked; position %d", target.chat_id, submitted.position)
        if submitted.position > 0:
            await self.say(target, convert.queued_text(submitted.position))

    def _help(self, message: Message) -> str:
        user = message.from_user
        return convert.help_text(
            user.id if user else None, message.chat.id, bot_username=self.bot_username
        )

    async def _admitted(self, update: Update) -> ReplyTarget | None:
        """The place of a command from someone who may use the bot; else None."""
        message = update.message
        if message is None or not await self._admit(message):
            return None
        return ReplyTarget.of(message)

    async def _cmd_help(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        target = await self._admitted(update)
        if target is not None and update.message is not None:
            await self.say(target, self._help(update.message))

    async def _cmd_new(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        target = await self._admitted(update)
        if target is not None:
            key = self.session_key(target)
            await self.answer(target, sessions.new_session(self.link, key, target.chat_id))

    async def _cmd_cancel(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        target = await self._admitted(update)
        if target is not None:
            await self.cancel(target)

    async def _cmd_status(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        target = await self._admitted(update)
        if target is not None:
            key, place = self.session_key(target), self.place(target)
            await self.answer(target, sessions.session_status(self.link, key, self.repos, place))

    async def _cmd_repo(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """``/repo owner/name`` sets the chat's repository; ``/repo`` shows it."""
        message = update.message
        if message is None or message.text is None or not await self._admit(message):
            return
        await self.set_repo(ReplyTarget.of(message), convert.command_argument(message.text))

    async def _cmd_target(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """``/target @label`` sets where the chat's runs go; ``/target`` shows it."""
        message = update.message
        if message is None or message.text is None or not await self._admit(message):
            return
        argument = convert.command_argument(message.text)
        await self.set_run_target(ReplyTarget.of(message), argument)

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
            await self.api.answer_query(query.id, convert.open_pr_refusal(user.id), alert=True)
            return
        run_id = query.data.removeprefix(convert.OPEN_PR_DATA)
        target = ReplyTarget.of(message)
        try:
            submitted = await self.submit(
                target,
                convert.OPEN_PR_PROMPT,
                origin=target.to_origin(user.id, user.username),
                optimize=False,
                # Two presses of one button (two people, or a double tap) open one PR.
                dedupe_key=f"{convert.OPEN_PR_DATA}{run_id}",
                keep=False,
            )
        except HubError as exc:
            log.warning("the hub did not take a pull-request press in chat %s: %s", chat_id, exc)
            await self.api.answer_query(query.id, convert.hub_error_text(exc.code, str(exc)))
            return
        await self.api.answer_query(query.id, "Opening a pull request…")
        who = f"@{user.username}" if user.username else str(user.id)
        with contextlib.suppress(*CALL_ERRORS):
            await self.api.edit_text(target, message.message_id, convert.open_pr_pressed(who))
        self.track(submitted.run_id, target, state=None, position=submitted.position)

    async def _on_approval_press(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """An approval button: the hub decides whether the presser may; the presser alone
        is told the outcome (the hub then changes every copy of the buttons)."""
        query = update.callback_query
        if query is None or query.data is None:
            return
        outcome, text = await self.press(str(query.from_user.id), query.data)
        await self.api.answer_query(query.id, text, alert=outcome != "decided")

    async def post_approval(self, target: ReplyTarget, approval: Approval) -> str | None:
        message_id = await self.api.send_keyboard(
            target, convert.approval_text(approval), convert.approval_keyboard(approval)
        )
        return str(message_id)

    async def edit_approval(self, target: ReplyTarget, ref: str, approval: Approval) -> None:
        await self.api.edit_approval(target, int(ref), convert.approval_decided_text(approval))

    # --- the core's calls ------------------------------------------------------------

    def target_of(self, origin: dict[str, Any]) -> ReplyTarget | None:
        return ReplyTarget.from_origin(origin)

    def session_key(self, target: ReplyTarget) -> str:
        # Generation 0 always: /new resets the hub's session instead of moving to a new key.
        return convert.session_key(target.chat_id, target.thread_id, 0)

    def place(self, target: ReplyTarget) -> str:
        return str(target.chat_id)

    def where(self, target: ReplyTarget) -> str:
        return f"chat {target.chat_id}"

    def split_text(self, text: str) -> list[str]:
        return convert.split_message(text)

    async def send_notice(self, target: ReplyTarget, text: str) -> None:
        await self.api.send_text(target, text)

    async def keep_alive(self, target: ReplyTarget) -> float:
        """Send the typing action; seconds until the next one."""
        try:
            await self.api.send_typing(target)
        except RetryAfter as exc:
            return max(TYPING_EVERY_S, convert.retry_after_s(exc))
        except CALL_ERRORS as exc:
            log.debug("typing action failed: %s", exc)
        return TYPING_EVERY_S

    async def post_status(self, run_id: str, target: ReplyTarget, text: str) -> Shown:
        shown = await self.api.post_status(target, text)
        if shown.ref is not None:
            self.status_posted(run_id, shown.ref)
        return shown

    async def edit_status(self, target: ReplyTarget, ref: Any, text: str) -> Shown:
        return await self.api.edit_status(target, ref, text)

    def status_posted(self, run_id: str, message_id: int) -> None:
        """Tell the hub about a new status message (best effort: nothing waits for it)."""
        try:
            self.link.status_ref(run_id, convert.status_ref(message_id))
        except Exception:
            log.warning("could not tell the hub about the status message", exc_info=True)

    def status_ref_of(self, origin: dict[str, Any]) -> Any:
        return convert.status_message_of(origin)

    def reply_parts(self, reply: Reply, target: ReplyTarget) -> list[Any]:
        return list(
            convert.reply_parts(
                reply.status,
                reply.answer,
                reply.run_id,
                reply.error,
                parse_mode=self.settings.parse_mode,
                document_threshold=self.settings.document_threshold_chars,
            )
        )

    diff_part = staticmethod(convert.diff_document)
    open_pr_part = staticmethod(convert.open_pr_offer)

    async def post_part(
        self, target: ReplyTarget, run_id: str, part: Any, index: int, count: int
    ) -> int:
        return await self.api.post(target, part)

    async def undeliverable(self, target: ReplyTarget, reply: Reply, exc: Exception) -> None:
        log.error("Telegram refused the reply to chat %s (%s)", target.chat_id, exc)

    async def close_request(
        self, target: ReplyTarget, reply: Reply, sent: Sent, answered: bool
    ) -> None:
        """Delete the status message: this process's, and the one the hub knows of (the
        same, or one an earlier process of this bridge posted before a restart)."""
        statuses = {sent.status, convert.status_message_of(reply.origin)}
        await asyncio.gather(
            *(self.api.delete(target, m) for m in sorted(m for m in statuses if m is not None))
        )
