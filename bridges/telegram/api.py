"""The Bot API as the Telegram bridge uses it: time-boxed calls, flood control, budgets.

Every call to a chat goes through :meth:`BotApi.call`: time-boxed
(:data:`CALL_TIMEOUT_S`), flood control (429) waited out inline for up to
:data:`MAX_FLOOD_WAIT_S`, a group that became a supergroup followed to its new id, and
the sends to a group counted (:class:`~bridges.telegram.convert.SendWindow`), so that
status edits leave the group's budget free for replies.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import mimetypes
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from telegram import (
    Bot,
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
    RetryAfter,
    TelegramError,
)
from telegram.ext import Application

from bridges import common, core
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

log = logging.getLogger(__name__)

T = TypeVar("T")
AnyApp = Application[Any, Any, Any, Any, Any, Any]

#: Long-poll timeout of ``getUpdates``.
POLL_TIMEOUT_S = 10.0
#: Connecting to Telegram at start-up; after that it is retried in the background.
STARTUP_TIMEOUT_S = 15.0

#: A typing action that takes longer than this is not worth waiting for.
TYPING_TIMEOUT_S = 5.0
#: The longest one Bot API request may take.
CALL_TIMEOUT_S = 30.0
#: Flood waits (429) longer than this, in all, give up; the hub re-sends the reply later.
MAX_FLOOD_WAIT_S = 60.0
APPLICATION_OCTET = "application/octet-stream"
#: What a failed Bot API call raises.
CALL_ERRORS = (TelegramError, TimeoutError)


class AttachmentRefused(common.AttachmentRefused):
    """A file that may not be attached; the message is the reply to its sender."""


class BridgeError(common.BridgeError):
    """Root of the Telegram bridge's errors.

    - :class:`TokenRefused`: Telegram refused ``TELEGRAM_BOT_TOKEN`` at start.
    - :class:`Undeliverable`: Telegram refused a reply for good; it is logged and dropped.
    """


class TokenRefused(BridgeError):
    """Telegram refused the bot token; a person must fix ``TELEGRAM_BOT_TOKEN``.

    Raised instead of PTB's ``InvalidToken``, whose message quotes the token itself.
    """


class Undeliverable(BridgeError, core.Undeliverable):
    """Telegram refused a reply for good (blocked bot, unknown chat, bad request)."""


def _polling_error(exc: TelegramError) -> None:
    log.warning("polling Telegram failed: %s; retrying", exc)


def _reply_to(target: ReplyTarget) -> ReplyParameters | None:
    if target.message_id is None:
        return None
    # The user may have deleted their message meanwhile: answer anyway.
    return ReplyParameters(message_id=target.message_id, allow_sending_without_reply=True)


class BotApi:
    """The Bot API calls of the Telegram bridge, on PTB's embedded ``Application``."""

    def __init__(self, settings: TelegramSettings) -> None:
        #: The Bot API's HTTP clients: for calls, and for the one long poll.
        self.http = (AiohttpRequest(), AiohttpRequest(1))
        self.app: AnyApp = (
            Application.builder()
            .token(settings.bot_token.get_secret_value())
            .base_url(settings.api_base_url)
            .base_file_url(settings.file_base_url)
            # aiohttp, not PTB's httpx: a third of the CPU per call (see bridges.telegram.http).
            .request(self.http[0])
            .get_updates_request(self.http[1])
            .concurrent_updates(True)
            .build()
        )
        self._windows: dict[int, SendWindow] = {}

    @property
    def bot(self) -> Bot:
        return self.app.bot

    async def initialize(self) -> tuple[int, str]:
        """Ask Telegram who the bot is (``getMe``): its id and username.

        Raises :class:`TokenRefused` when Telegram refuses the token."""
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT_S):
                await self.app.initialize()
        except InvalidToken:
            # Not chained: PTB's message quotes the token itself.
            raise TokenRefused(
                "Telegram refused TELEGRAM_BOT_TOKEN; check it with @BotFather"
            ) from None
        return self.bot.id, self.bot.username

    async def start_polling(self) -> None:
        """Start the application and its long poll of ``getUpdates``."""
        await self.app.start()
        assert self.app.updater is not None
        await self.app.updater.start_polling(
            timeout=dt.timedelta(seconds=POLL_TIMEOUT_S),
            allowed_updates=[Update.MESSAGE, Update.CALLBACK_QUERY],
            bootstrap_retries=3,
            error_callback=_polling_error,
        )

    async def publish_commands(self) -> None:
        """Best effort: the bot's command menu."""
        commands = [BotCommand(name, about) for name, about in convert.BOT_COMMANDS]
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                await self.bot.set_my_commands(commands)
        except CALL_ERRORS as exc:
            log.warning("could not publish the command menu: %s", exc)

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

    async def call(
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
        return await self.call(
            target.chat_id,
            lambda chat_id: self.bot.send_message(
                chat_id,
                text,
                entities=entities,
                message_thread_id=target.thread_id,
                reply_parameters=_reply_to(target),
                link_preview_options=LinkPreviewOptions(is_disabled=True),
                disable_notification=quiet,
            ),
            max_wait=max_wait,
        )

    async def edit_text(self, target: ReplyTarget, message_id: int, text: str) -> None:
        """Replace the text of one of the bot's messages (no flood wait: best effort)."""
        await self.call(
            target.chat_id,
            lambda chat_id: self.bot.edit_message_text(
                text, chat_id=chat_id, message_id=message_id
            ),
            max_wait=0.0,
        )

    async def send_typing(self, target: ReplyTarget) -> None:
        """Show "typing…" in the target's chat and topic for a few seconds."""
        await self.call(
            target.chat_id,
            lambda chat_id: self.bot.send_chat_action(
                chat_id, ChatAction.TYPING, message_thread_id=target.thread_id
            ),
            counted=False,
            max_wait=0.0,
            time_limit=TYPING_TIMEOUT_S,
        )

    async def delete(self, target: ReplyTarget, message_id: int) -> None:
        """Best effort: delete one of the bot's messages."""
        try:
            await self.call(
                target.chat_id,
                lambda chat_id: self.bot.delete_message(chat_id, message_id),
                counted=False,
                max_wait=0.0,
            )
        except CALL_ERRORS as exc:
            log.info("could not delete status message %s: %s", message_id, exc)

    async def send_keyboard(
        self, target: ReplyTarget, text: str, rows: list[list[tuple[str, str]]]
    ) -> int:
        """Post ``text`` with an inline keyboard (rows of (label, callback data)); its id."""
        markup = InlineKeyboardMarkup(
            [
                [InlineKeyboardButton(label, callback_data=data) for label, data in row]
                for row in rows
            ]
        )
        message = await self.call(
            target.chat_id,
            lambda chat_id: self.bot.send_message(
                chat_id,
                text,
                message_thread_id=target.thread_id,
                reply_parameters=_reply_to(target),
                reply_markup=markup,
            ),
        )
        return int(message.message_id)

    async def edit_approval(self, target: ReplyTarget, message_id: int, text: str) -> None:
        """The approval message says who decided; raises when Telegram may take it later."""
        try:
            await self.edit_text(target, message_id, text)
        except (BadRequest, Forbidden) as exc:
            # Deleted, not modified, or the bot left the chat: nothing left to update (any
            # other failure is raised: the hub sends the decision again).
            log.warning("approval message %s not updated for good: %s", message_id, exc)

    async def answer_query(self, query_id: str, text: str, *, alert: bool = False) -> None:
        """Best effort: the small notice Telegram shows to whoever pressed a button."""
        try:
            await self.bot.answer_callback_query(query_id, text=text[:200], show_alert=alert)
        except CALL_ERRORS as exc:
            log.warning("could not answer a button press: %s", exc)

    async def post(self, target: ReplyTarget, part: ReplyPart) -> int:
        """Post one part of a reply; its message id. Raises Undeliverable when hopeless."""
        try:
            if isinstance(part, ButtonPart):
                message = await self.call(
                    target.chat_id,
                    lambda chat_id: self.bot.send_message(
                        chat_id,
                        part.text,
                        message_thread_id=target.thread_id,
                        reply_parameters=_reply_to(target),
                        reply_markup=InlineKeyboardMarkup(
                            [[InlineKeyboardButton(part.label, callback_data=part.data)]]
                        ),
                    ),
                )
                return message.message_id
            if isinstance(part, DocumentPart):
                message = await self.call(
                    target.chat_id,
                    lambda chat_id: self.bot.send_document(
                        chat_id,
                        InputFile(part.content, filename=part.filename),
                        caption=part.caption,
                        message_thread_id=target.thread_id,
                        reply_parameters=_reply_to(target),
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

    async def post_status(self, target: ReplyTarget, text: str) -> core.Shown:
        """Best effort: post a run's status message, quietly (its id in ``ref``)."""
        if not self.status_allowed(target):
            return core.NOT_SHOWN
        try:
            message = await self.send_text(target, text, quiet=True, max_wait=0.0)
        except CALL_ERRORS as exc:
            return _status_failed(exc)
        return core.Shown(ref=message.message_id)

    async def edit_status(self, target: ReplyTarget, message_id: int, text: str) -> core.Shown:
        """Best effort: replace the text of a run's status message."""
        if not self.status_allowed(target):
            return core.NOT_SHOWN
        try:
            await self.edit_text(target, message_id, text)
        except CALL_ERRORS as exc:
            return _status_failed(exc)
        return core.Shown()

    async def download(
        self, message: Message, max_bytes: int, types: str
    ) -> list[common.Attachment]:
        """The photo (its largest size) or document of ``message``, downloaded (a message
        carries one); raises AttachmentRefused, with the reply, when it is over the limits
        or unreadable."""
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
        refusal = common.attachment_refusal(name, mime, size, max_bytes, types)
        if refusal is not None:
            raise AttachmentRefused(refusal)
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                file = await self.bot.get_file(file_id)
                data = bytes(await file.download_as_bytearray())
        except CALL_ERRORS as exc:
            log.warning("could not download a file from chat %s: %s", message.chat.id, exc)
            raise AttachmentRefused(f"{name} could not be downloaded from Telegram.") from exc
        refusal = common.attachment_refusal(name, mime, len(data), max_bytes, types)
        if refusal is not None:
            raise AttachmentRefused(refusal)
        return [common.Attachment(name, mime, data)]


def _status_failed(exc: BaseException) -> core.Shown:
    """A failed status post or edit: when (and whether) to try again."""
    if isinstance(exc, RetryAfter):
        return core.Shown(ok=False, hold=convert.retry_after_s(exc))
    if isinstance(exc, BadRequest):
        if "not modified" in exc.message.lower():
            return core.Shown()
        if "not found" in exc.message.lower():
            return core.Shown(ok=False, gone=True)  # deleted by someone: post a new one
        log.info("status message refused: %s", exc)
        return core.Shown()
    log.info("status message not updated: %s", exc)
    return core.NOT_SHOWN
