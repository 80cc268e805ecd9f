"""A fake Telegram Bot API server, so the real python-telegram-bot can be driven offline.

It speaks the wire format PTB 22 uses: ``POST /bot<TOKEN>/<method>`` with form fields
(non-string values JSON-encoded, numbers as strings), multipart for uploads, JSON bodies
too, and ``/file/bot<TOKEN>/<path>`` for downloads. Answers are Bot API envelopes
(``{"ok": true, "result": ...}`` or ``{"ok": false, "error_code", "description"}``) with
Telegram's own error texts, so the bridge meets the same failures it will meet in
production: MarkdownV2 that does not parse, text over 4096 characters, an edit that
changes nothing, a second poller (409), flood control (429), an outage.

Methods: getMe, deleteWebhook, getUpdates (real long polling), sendMessage,
editMessageText, sendChatAction, sendDocument, getFile, deleteMessage, setMyCommands,
getMyCommands. Tests push user messages with ``push_message`` and friends, wait for what
the bot sends with ``wait_for_call`` (no sleeps), and inject failures with ``fail_next``
or ``stop_listening`` / ``start_listening``.

Fixture: ``fake_telegram``. Point PTB at it with
``.token(fake.token).base_url(fake.base_url).base_file_url(fake.base_file_url)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import socket
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

FAKE_BOT_ID = 7000000001
#: The only token the fake accepts; anything else is answered 401.
FAKE_TOKEN = f"{FAKE_BOT_ID}:AAFakeTelegramTokenForTests-0123456789ab"
FAKE_BOT_USERNAME = "codex_hub_test_bot"
FAKE_BOT_NAME = "Codex Hub"

#: Telegram's limits, in UTF-16 code units after entity parsing.
MESSAGE_LIMIT = 4096
CAPTION_LIMIT = 1024

PARSE_ERROR = "Bad Request: can't parse entities: "
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup "
    "are exactly the same as a current content and reply markup of the message"
)
CONFLICT = (
    "Conflict: terminated by other getUpdates request; "
    "make sure that only one bot instance is running"
)
CHAT_ACTIONS = frozenset(
    {
        "typing",
        "upload_photo",
        "record_video",
        "upload_video",
        "record_voice",
        "upload_voice",
        "upload_document",
        "choose_sticker",
        "find_location",
        "record_video_note",
        "upload_video_note",
    }
)
# Form fields that are strings on the wire even when they look like JSON ("123", "true").
_STRING_FIELDS = frozenset(
    {
        "text",
        "caption",
        "parse_mode",
        "action",
        "language_code",
        "file_id",
        "inline_message_id",
        "business_connection_id",
        "message_effect_id",
        "url",
        "secret_token",
        "emoji",
        "title",
        "name",
        "description",
    }
)
_RESERVED = frozenset("_*[]()~`>#+-=|{}.!")
_COMMAND_RE = re.compile(r"(?<!\S)/[A-Za-z0-9_]{1,32}(?:@[A-Za-z0-9_]{3,32})?(?![\w@])")
_MENTION_RE = re.compile(r"(?<![\w@/])@[A-Za-z0-9_]{5,32}(?!\w)")
_BOT_COMMAND_NAME_RE = re.compile(r"^[a-z0-9_]{1,32}$")
# Grace for a poller whose client just hung up, before a newcomer is called a second one.
_POLLER_GRACE_S = 0.25


def utf16_len(text: str) -> int:
    """Length of ``text`` in UTF-16 code units, Telegram's unit for limits and offsets."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def detect_entities(text: str) -> list[dict[str, Any]]:
    """The ``bot_command`` and ``mention`` entities Telegram would attach to ``text``."""
    found = [("bot_command", m) for m in _COMMAND_RE.finditer(text)]
    found += [("mention", m) for m in _MENTION_RE.finditer(text)]
    found.sort(key=lambda item: item[1].start())
    return [
        {
            "type": kind,
            "offset": utf16_len(text[: m.start()]),
            "length": utf16_len(m.group()),
        }
        for kind, m in found
    ]


def check_markdown_v2(text: str) -> tuple[str, str | None]:
    """Parse MarkdownV2 roughly as Telegram does: the plain text, and the error if any.

    Checks what bites in practice: unescaped reserved characters and unclosed entities,
    with Telegram's error texts ("can't parse entities: Character '.' is reserved ...").
    """
    out: list[str] = []
    opened: dict[str, int] = {}
    link_open: int | None = None

    def byte_offset(index: int) -> int:
        return len(text[:index].encode("utf-8"))

    def fail(message: str) -> tuple[str, str | None]:
        return "".join(out), PARSE_ERROR + message

    def find_end(start: int, token: str) -> int:
        """Index of the next unescaped ``token`` at or after ``start``, or -1."""
        index = start
        while index < len(text):
            if text[index] == "\\":
                index += 2
                continue
            if text.startswith(token, index):
                return index
            index += 1
        return -1

    def unescape(chunk: str) -> str:
        return re.sub(r"\\(.)", r"\1", chunk, flags=re.DOTALL)

    index = 0
    line_start = True
    while index < len(text):
        char = text[index]
        at_line_start, line_start = line_start, char == "\n"
        if char == "\\":
            if index + 1 >= len(text):
                return fail(
                    "Character '\\' is reserved and must be escaped with the preceding '\\'"
                )
            out.append(text[index + 1])
            index += 2
            continue
        if text.startswith("```", index):
            end = find_end(index + 3, "```")
            if end < 0:
                return fail(f"Can't find end of Pre entity at byte offset {byte_offset(index)}")
            body = text[index + 3 : end]
            first, newline, rest = body.partition("\n")
            if newline and re.fullmatch(r"[\w+#-]*", first):
                body = rest
            out.append(unescape(body))
            index = end + 3
            continue
        if char == "`":
            end = find_end(index + 1, "`")
            if end < 0:
                return fail(f"Can't find end of Code entity at byte offset {byte_offset(index)}")
            out.append(unescape(text[index + 1 : end]))
            index = end + 1
            continue
        token = next((t for t in ("||", "__", "*", "_", "~") if text.startswith(t, index)), None)
        if token is not None:
            name = {
                "||": "Spoiler",
                "__": "Underline",
                "*": "Bold",
                "_": "Italic",
                "~": "Strikethrough",
            }[token]
            if name in opened:
                del opened[name]
            else:
                opened[name] = byte_offset(index)
            index += len(token)
            continue
        if char == "!" and text.startswith("![", index) and link_open is None:
            link_open = byte_offset(index)
            index += 2
            continue
        if char == "[" and link_open is None:
            link_open = byte_offset(index)
            index += 1
            continue
        if char == "]" and link_open is not None:
            if not text.startswith("(", index + 1):
                return fail(f"Can't find end of TextUrl entity at byte offset {link_open}")
            end = find_end(index + 2, ")")
            if end < 0:
                return fail(f"Can't find end of TextUrl entity at byte offset {link_open}")
            link_open = None
            index = end + 1
            continue
        if char == ">" and at_line_start:
            index += 1
            continue
        if char in _RESERVED:
            return fail(
                f"Character '{char}' is reserved and must be escaped with the preceding '\\'"
            )
        out.append(char)
        index += 1
    if link_open is not None:
        return fail(f"Can't find end of TextUrl entity at byte offset {link_open}")
    if opened:
        name, offset = min(opened.items(), key=lambda item: item[1])
        return fail(f"Can't find end of {name} entity at byte offset {offset}")
    return "".join(out), None


class BotApiError(Exception):
    """An error answer: HTTP status, Telegram's description, optional ``parameters``."""

    def __init__(
        self, status: int, description: str, parameters: dict[str, Any] | None = None
    ) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.parameters = parameters


@dataclass
class Upload:
    """A file that arrived in a multipart request."""

    filename: str
    content: bytes
    content_type: str


@dataclass
class Call:
    """One request the fake received: method, parsed arguments, uploads and its answer."""

    method: str
    args: dict[str, Any]
    files: dict[str, Upload] = field(default_factory=dict)
    status: int | None = None  # None while pending, or when the client hung up first
    result: Any = None
    description: str | None = None
    #: Wall-clock time (``time.time()``) the request arrived, for latency measurements.
    at: float = field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        """True when the call was answered with success."""
        return self.status == 200

    @property
    def chat_id(self) -> Any:
        """The ``chat_id`` argument, if any."""
        return self.args.get("chat_id")

    @property
    def text(self) -> str | None:
        """The ``text`` (or ``caption``) argument as sent, if any."""
        return self.args.get("text", self.args.get("caption"))


@dataclass(frozen=True)
class Pushed:
    """What ``push_message`` queued: the update id and the message it carries."""

    update_id: int
    message_id: int
    message: dict[str, Any]


@dataclass
class StoredFile:
    """A file the bot uploaded, kept for ``getFile`` and downloads."""

    file_id: str
    file_unique_id: str
    file_path: str
    file_name: str
    mime_type: str
    content: bytes
    chat_id: int | None = None
    message_id: int | None = None

    def as_document(self) -> dict[str, Any]:
        """The ``Document`` object Telegram returns for this file."""
        return {
            "file_id": self.file_id,
            "file_unique_id": self.file_unique_id,
            "file_name": self.file_name,
            "mime_type": self.mime_type,
            "file_size": len(self.content),
        }


class _Changes:
    """Wakes every waiter when the fake's state changes; ``notify`` is synchronous."""

    def __init__(self) -> None:
        self._events: set[asyncio.Event] = set()

    def notify(self) -> None:
        """Wake all current waiters so they re-check their predicates."""
        for event in self._events:
            event.set()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` is true, re-checking after every change."""
        while not predicate():
            event = asyncio.Event()
            self._events.add(event)
            try:
                await event.wait()
            finally:
                self._events.discard(event)


@dataclass
class _Failure:
    status: int
    description: str
    parameters: dict[str, Any] | None
    match: Callable[[dict[str, Any]], bool] | None = None


_DEFAULT_DESCRIPTIONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden: bot was blocked by the user",
    404: "Not Found",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}

Handler = Callable[[dict[str, Any], dict[str, Upload]], Awaitable[Any]]


class FakeTelegram:
    """A Bot API server on 127.0.0.1 (ephemeral port) for one bot, with inspection helpers."""

    def __init__(
        self,
        *,
        token: str = FAKE_TOKEN,
        bot_username: str = FAKE_BOT_USERNAME,
        bot_name: str = FAKE_BOT_NAME,
    ) -> None:
        self.token = token
        self.bot_id = int(token.split(":", 1)[0])
        self.bot_username = bot_username
        self.bot_user: dict[str, Any] = {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": bot_name,
            "username": bot_username,
        }
        self._port = 0
        self._runner: web.AppRunner | None = None
        self._changed = _Changes()
        self._calls: list[Call] = []
        self._failures: dict[str, deque[_Failure]] = defaultdict(deque)
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(100_000)
        self._chats: dict[int, dict[str, Any]] = {}
        self._topics: dict[int, dict[int, dict[str, Any]]] = defaultdict(dict)
        self._next_message_id: dict[int, int] = defaultdict(lambda: 1)
        self._messages: dict[int, dict[int, dict[str, Any]]] = defaultdict(dict)
        self._files: dict[str, StoredFile] = {}
        self._file_ids = itertools.count(1)
        self._commands: list[dict[str, Any]] = []
        self._poller: web.Request | None = None
        self._inflight: dict[int, web.Request] = {}
        self._handlers: dict[str, Handler] = {
            "getMe": self._get_me,
            "deleteWebhook": self._delete_webhook,
            "sendMessage": self._send_message,
            "editMessageText": self._edit_message_text,
            "answerCallbackQuery": self._answer_callback_query,
            "sendChatAction": self._send_chat_action,
            "sendDocument": self._send_document,
            "getFile": self._get_file,
            "deleteMessage": self._delete_message,
            "setMyCommands": self._set_my_commands,
            "getMyCommands": self._get_my_commands,
        }
        self._method_names = {name.lower(): name for name in [*self._handlers, "getUpdates"]}

    # --- addresses ---------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port; it stays the same across ``stop_listening``/``start_listening``."""
        return self._port

    @property
    def url(self) -> str:
        """The server root, ``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self._port}"

    @property
    def base_url(self) -> str:
        """What PTB takes as ``base_url`` (it appends ``<TOKEN>/<method>``)."""
        return f"{self.url}/bot"

    @property
    def base_file_url(self) -> str:
        """What PTB takes as ``base_file_url`` (it appends ``<TOKEN>/<file_path>``)."""
        return f"{self.url}/file/bot"

    # --- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Listen on an ephemeral loopback port."""
        await self.start_listening()

    async def close(self) -> None:
        """Stop listening (open requests are dropped); safe to call twice."""
        await self.stop_listening()

    async def __aenter__(self) -> FakeTelegram:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start_listening(self) -> None:
        """(Re)open the listener, on the same port after an outage."""
        if self._runner is not None:
            return
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._handle_api)
        app.router.add_route("*", "/file/bot{token}/{path:.+}", self._handle_file)
        # Handler cancellation ends a long poll as soon as its client hangs up.
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", self._port))
            await web.SockSite(runner, sock).start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._port = int(sock.getsockname()[1])
        self._runner = runner

    async def stop_listening(self) -> None:
        """Simulate an outage: drop open connections (long polls included), refuse new ones."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        for request in list(self._inflight.values()):
            if request.transport is not None:
                request.transport.abort()
        await runner.cleanup()
        self._changed.notify()

    @property
    def listening(self) -> bool:
        """True while the server accepts connections."""
        return self._runner is not None

    # --- failure injection ---------------------------------------------------------

    def fail_next(
        self,
        method: str,
        times: int = 1,
        *,
        status: int = 429,
        retry_after: int | float = 1,
        description: str | None = None,
        match: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        """Answer the next ``times`` calls of ``method`` with an error instead of serving them.

        429 carries ``parameters.retry_after`` like Telegram's flood control; other statuses
        get Telegram's usual description unless ``description`` is given. With ``match``,
        only calls whose parsed arguments it accepts fail (e.g. the second part of a reply).
        """
        name = self._canonical(method)
        parameters: dict[str, Any] | None = None
        if status == 429:
            parameters = {"retry_after": retry_after}
            text = description or f"Too Many Requests: retry after {retry_after}"
        else:
            text = description or _DEFAULT_DESCRIPTIONS.get(status, f"Error {status}")
        for _ in range(times):
            self._failures[name].append(_Failure(status, text, parameters, match))

    def _take_failure(self, method: str, args: dict[str, Any]) -> _Failure | None:
        """The first failure queued for ``method`` that applies to a call with ``args``."""
        queue = self._failures[method]
        for failure in queue:
            if failure.match is None or failure.match(args):
                queue.remove(failure)
                return failure
        return None

    # --- inspection ----------------------------------------------------------------

    def calls(self, method: str | None = None) -> list[Call]:
        """Every call received so far (of ``method`` if given), in arrival order."""
        name = self._canonical(method) if method else None
        return [c for c in self._calls if name is None or c.method == name]

    def mark(self) -> int:
        """A position in the call log, to pass as ``since`` and ignore earlier calls."""
        return len(self._calls)

    def _find(
        self, method: str, predicate: Callable[[Call], bool] | None, since: int
    ) -> list[Call]:
        return [
            c
            for c in self._calls[since:]
            if c.method == method and c.status is not None and (predicate is None or predicate(c))
        ]

    async def wait_for_calls(
        self,
        method: str,
        count: int,
        predicate: Callable[[Call], bool] | None = None,
        *,
        timeout: float = 5.0,
        since: int = 0,
    ) -> list[Call]:
        """Wait until ``count`` answered calls of ``method`` match; return the first ``count``."""
        name = self._canonical(method)
        try:
            async with asyncio.timeout(timeout):
                await self._changed.wait_for(
                    lambda: len(self._find(name, predicate, since)) >= count
                )
        except TimeoutError:
            seen = [f"{c.method}:{c.status}" for c in self._calls[since:]]
            raise AssertionError(
                f"expected {count} matching {name} call(s) within {timeout}s; seen {seen}"
            ) from None
        return self._find(name, predicate, since)[:count]

    async def wait_for_call(
        self,
        method: str,
        predicate: Callable[[Call], bool] | None = None,
        *,
        timeout: float = 5.0,
        since: int = 0,
    ) -> Call:
        """Wait for the first answered call of ``method`` (at or after ``since``) that matches."""
        calls = await self.wait_for_calls(method, 1, predicate, timeout=timeout, since=since)
        return calls[0]

    async def wait_until_polling(self, timeout: float = 5.0) -> None:
        """Wait until a long poll (``getUpdates``) is pending."""
        async with asyncio.timeout(timeout):
            await self._changed.wait_for(lambda: self._poller is not None)

    @property
    def polling(self) -> bool:
        """True while a ``getUpdates`` request is waiting for updates."""
        return self._poller is not None

    @property
    def pending_updates(self) -> list[dict[str, Any]]:
        """Updates queued and not yet confirmed by an ``offset``."""
        return list(self._updates)

    def sent_messages(self, chat_id: int | None = None) -> list[dict[str, Any]]:
        """Messages the bot sent and did not delete, as they are now (edits applied)."""
        chats = [chat_id] if chat_id is not None else list(self._messages)
        return [
            message
            for chat in chats
            for message in self._messages.get(chat, {}).values()
            if message.get("from", {}).get("id") == self.bot_id
        ]

    def sent_texts(self, chat_id: int | None = None) -> list[str]:
        """The text (or caption) of each message in ``sent_messages``."""
        return [m.get("text", m.get("caption", "")) for m in self.sent_messages(chat_id)]

    def messages(self, chat_id: int) -> list[dict[str, Any]]:
        """The whole chat as the fake knows it: users' and the bot's messages, in order."""
        return list(self._messages.get(chat_id, {}).values())

    def message(self, chat_id: int, message_id: int) -> dict[str, Any]:
        """One stored message; KeyError when unknown or deleted."""
        return self._messages[chat_id][message_id]

    def documents(self, chat_id: int | None = None) -> list[StoredFile]:
        """Files the bot uploaded (to ``chat_id`` if given), bytes included."""
        return [f for f in self._files.values() if chat_id is None or f.chat_id == chat_id]

    @property
    def commands(self) -> list[dict[str, Any]]:
        """The command list of the last ``setMyCommands``."""
        return list(self._commands)

    # --- users' side: updates -------------------------------------------------------

    def add_chat(
        self,
        chat_id: int,
        chat_type: str | None = None,
        *,
        title: str | None = None,
        is_forum: bool = False,
        username: str | None = None,
    ) -> dict[str, Any]:
        """Make a chat known (``push_message`` does this itself); returns its Chat object."""
        existing = self._chats.get(chat_id)
        if chat_type is None and existing is not None:
            chat_type = existing["type"]
        elif chat_type is None:
            # Telegram's own id ranges: users positive, supergroups -100..., groups negative.
            supergroup = is_forum or chat_id <= -1_000_000_000_000
            chat_type = "private" if chat_id > 0 else "supergroup" if supergroup else "group"
        if existing is not None:
            if existing["type"] != chat_type:
                raise ValueError(f"chat {chat_id} is a {existing['type']}, not a {chat_type}")
            if is_forum and chat_type != "supergroup":
                raise ValueError("only supergroups can be forums")
            if is_forum:
                existing["is_forum"] = True
            return existing
        if chat_type == "private":
            chat: dict[str, Any] = {
                "id": chat_id,
                "type": "private",
                "first_name": f"User{chat_id}",
                "username": username or f"user{chat_id}",
            }
        elif chat_type in ("group", "supergroup", "channel"):
            chat = {"id": chat_id, "type": chat_type, "title": title or f"Chat {chat_id}"}
            if is_forum:
                if chat_type != "supergroup":
                    raise ValueError("only supergroups can be forums")
                chat["is_forum"] = True
        else:
            raise ValueError(f"unknown chat type {chat_type!r}")
        self._chats[chat_id] = chat
        return chat

    def user(self, user_id: int, username: str | None = None) -> dict[str, Any]:
        """The ``User`` object of a human sender."""
        return {
            "id": user_id,
            "is_bot": False,
            "first_name": f"User{user_id}",
            "username": username or f"user{user_id}",
            "language_code": "en",
        }

    def create_topic(
        self,
        chat_id: int,
        name: str = "Topic",
        *,
        creator_id: int | None = None,
        thread_id: int | None = None,
    ) -> int:
        """Open a forum topic in a supergroup; returns its ``message_thread_id``.

        The thread id is the id of the topic's creation message, as in Telegram; the
        creator is a user unless ``creator_id`` is the bot's id.
        """
        self.add_chat(chat_id, "supergroup", is_forum=True)
        if thread_id is None:
            thread_id = self._new_message_id(chat_id)
        else:
            self._next_message_id[chat_id] = max(self._next_message_id[chat_id], thread_id + 1)
        creator = self.bot_user if creator_id == self.bot_id else self.user(creator_id or 1)
        created = {
            "message_id": thread_id,
            "from": creator,
            "chat": self._chats[chat_id],
            "date": int(time.time()),
            "message_thread_id": thread_id,
            "is_topic_message": True,
            "forum_topic_created": {"name": name, "icon_color": 7322096},
        }
        self._topics[chat_id][thread_id] = created
        self._messages[chat_id][thread_id] = created
        return thread_id

    def push_update(self, update: dict[str, Any]) -> int:
        """Queue a raw update (its ``update_id`` is assigned here); returns the id."""
        update_id = next(self._update_ids)
        self._updates.append({"update_id": update_id, **update})
        self._changed.notify()
        return update_id

    def push_message(
        self,
        chat_id: int,
        text: str,
        *,
        user_id: int | None = None,
        chat_type: str | None = None,
        message_thread_id: int | None = None,
        reply_to_message: int | dict[str, Any] | None = None,
        entities: list[dict[str, Any]] | None = None,
        username: str | None = None,
    ) -> Pushed:
        """Queue a user's text message as an update for ``getUpdates``.

        ``chat_type`` defaults to the chat's, else follows Telegram's id ranges ("private"
        for positive ids, "supergroup" for -100..., else "group"); in a private chat the
        sender defaults to the chat. Entities for ``/commands`` and ``@mentions``
        are found as Telegram would unless given. ``reply_to_message`` is a message id in
        this chat (any earlier message, the bot's included) or a Message dict. In a forum
        supergroup, ``message_thread_id`` puts the message in that topic (created if new),
        with the topic's creation message as ``reply_to_message``, as Telegram does.
        """
        chat = self.add_chat(chat_id, chat_type, is_forum=False)
        if user_id is None:
            if chat["type"] != "private":
                raise ValueError("user_id is required outside private chats")
            user_id = chat_id
        message_id = self._new_message_id(chat_id)
        message: dict[str, Any] = {
            "message_id": message_id,
            "from": self.user(user_id, username),
            "chat": chat,
            "date": int(time.time()),
            "text": text,
        }
        found = detect_entities(text) if entities is None else entities
        if found:
            message["entities"] = found
        if message_thread_id is not None:
            message["message_thread_id"] = message_thread_id
            if chat.get("is_forum"):
                if message_thread_id not in self._topics[chat_id]:
                    self.create_topic(chat_id, thread_id=message_thread_id)
                message["is_topic_message"] = True
                if reply_to_message is None:
                    reply_to_message = self._topics[chat_id][message_thread_id]
        if isinstance(reply_to_message, int):
            reply_to_message = self._reply_copy(self._messages[chat_id][reply_to_message])
        if reply_to_message is not None:
            message["reply_to_message"] = reply_to_message
        self._messages[chat_id][message_id] = message
        update_id = self.push_update({"message": message})
        return Pushed(update_id, message_id, message)

    def _user_file(self, content: bytes, file_name: str, mime_type: str, kind: str) -> StoredFile:
        """A file a user sent, kept for ``getFile`` and the download path."""
        number = next(self._file_ids)
        stored = StoredFile(
            file_id=f"AgACfake{number:06d}",
            file_unique_id=f"AQADfake{number:06d}",
            file_path=f"{kind}/file_{number}_{file_name}",
            file_name=file_name,
            mime_type=mime_type,
            content=content,
        )
        self._files[stored.file_id] = stored
        return stored

    def _push_media(
        self,
        chat_id: int,
        media: dict[str, Any],
        caption: str | None,
        user_id: int | None,
        file_size: int | None,
    ) -> Pushed:
        chat = self.add_chat(chat_id, None, is_forum=False)
        if user_id is None:
            if chat["type"] != "private":
                raise ValueError("user_id is required outside private chats")
            user_id = chat_id
        message_id = self._new_message_id(chat_id)
        message: dict[str, Any] = {
            "message_id": message_id,
            "from": self.user(user_id),
            "chat": chat,
            "date": int(time.time()),
            **media,
        }
        if caption:
            message["caption"] = caption
            found = detect_entities(caption)
            if found:
                message["caption_entities"] = found
        self._messages[chat_id][message_id] = message
        return Pushed(self.push_update({"message": message}), message_id, message)

    def push_photo(
        self,
        chat_id: int,
        content: bytes,
        *,
        caption: str | None = None,
        user_id: int | None = None,
        file_size: int | None = None,
    ) -> Pushed:
        """A user's photo (one size: ``content`` as JPEG), with an optional caption;
        ``file_size`` overrides the size Telegram states."""
        stored = self._user_file(content, "photo.jpg", "image/jpeg", "photos")
        size = {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "width": 64,
            "height": 64,
            "file_size": len(content) if file_size is None else file_size,
        }
        return self._push_media(chat_id, {"photo": [size]}, caption, user_id, file_size)

    def push_document(
        self,
        chat_id: int,
        content: bytes,
        file_name: str,
        mime_type: str,
        *,
        caption: str | None = None,
        user_id: int | None = None,
    ) -> Pushed:
        """A user's file sent as a document, with an optional caption."""
        stored = self._user_file(content, file_name, mime_type, "documents")
        media = {"document": stored.as_document()}
        return self._push_media(chat_id, media, caption, user_id, None)

    def push_callback_query(self, chat_id: int, message_id: int, data: str, *, user_id: int) -> int:
        """Queue a press of an inline keyboard button under the bot's ``message_id``."""
        message = self._messages[chat_id][message_id]
        query_id = f"cq{next(self._update_ids)}"
        return self.push_update(
            {
                "callback_query": {
                    "id": query_id,
                    "from": self.user(user_id),
                    "message": message,
                    "chat_instance": str(chat_id),
                    "data": data,
                }
            }
        )

    def push_command(
        self, chat_id: int, command: str, args: str = "", *, addressed: bool = False, **kw: Any
    ) -> Pushed:
        """A ``/command args`` message; ``addressed`` writes ``/command@botname``."""
        name = command.lstrip("/")
        text = f"/{name}@{self.bot_username}" if addressed else f"/{name}"
        return self.push_message(chat_id, f"{text} {args}" if args else text, **kw)

    def push_mention(self, chat_id: int, text: str, *, user_id: int, **kw: Any) -> Pushed:
        """A group message that starts with ``@botname``."""
        return self.push_message(chat_id, f"@{self.bot_username} {text}", user_id=user_id, **kw)

    def push_reply(
        self, chat_id: int, to_message_id: int, text: str, *, user_id: int, **kw: Any
    ) -> Pushed:
        """A message replying to ``to_message_id`` (typically one of the bot's)."""
        return self.push_message(
            chat_id, text, user_id=user_id, reply_to_message=to_message_id, **kw
        )

    def push_topic_message(
        self, chat_id: int, thread_id: int, text: str, *, user_id: int, **kw: Any
    ) -> Pushed:
        """A message in forum topic ``thread_id`` of supergroup ``chat_id``."""
        self.add_chat(chat_id, "supergroup", is_forum=True)
        if thread_id not in self._topics[chat_id]:
            self.create_topic(chat_id, thread_id=thread_id)
        return self.push_message(chat_id, text, user_id=user_id, message_thread_id=thread_id, **kw)

    # --- plumbing ---------------------------------------------------------------------

    def _canonical(self, method: str) -> str:
        return self._method_names.get(method.lower(), method)

    def _new_message_id(self, chat_id: int) -> int:
        message_id = self._next_message_id[chat_id]
        self._next_message_id[chat_id] = message_id + 1
        return message_id

    @staticmethod
    def _reply_copy(message: dict[str, Any]) -> dict[str, Any]:
        """A message as embedded in ``reply_to_message``: Telegram does not nest further."""
        return {k: v for k, v in message.items() if k != "reply_to_message"}

    @staticmethod
    async def _parse(request: web.Request) -> tuple[dict[str, Any], dict[str, Upload]]:
        """Arguments from query, form or multipart fields (JSON-decoded) or a JSON body."""
        args: dict[str, Any] = {}
        files: dict[str, Upload] = {}
        fields: list[tuple[str, Any]] = list(request.query.items())
        if request.content_type == "application/json":
            body = await request.json() if request.can_read_body else {}
            return {**dict(fields), **body}, files
        if request.can_read_body:
            fields += list((await request.post()).items())
        for name, value in fields:
            if isinstance(value, web.FileField):
                files[name] = Upload(value.filename, value.file.read(), value.content_type or "")
            elif name in _STRING_FIELDS:
                args[name] = value
            else:
                try:
                    args[name] = json.loads(value)
                except ValueError:
                    args[name] = value
        return args, files

    def _answer(self, call: Call, status: int, payload: dict[str, Any]) -> web.Response:
        call.status = status
        call.result = payload.get("result")
        call.description = payload.get("description")
        self._changed.notify()
        return web.json_response(payload, status=status)

    async def _handle_api(self, request: web.Request) -> web.StreamResponse:
        arrived = time.time()
        method = self._canonical(request.match_info["method"])
        self._inflight[id(request)] = request
        try:
            args, files = await self._parse(request)
            call = Call(method, args, files, at=arrived)
            self._calls.append(call)
            self._changed.notify()
            if request.match_info["token"] != self.token:
                return self._answer(
                    call, 401, {"ok": False, "error_code": 401, "description": "Unauthorized"}
                )
            if method != "getUpdates" and method not in self._handlers:
                return self._answer(
                    call, 404, {"ok": False, "error_code": 404, "description": "Not Found"}
                )
            try:
                failure = self._take_failure(method, args)
                if failure is not None:
                    raise BotApiError(failure.status, failure.description, failure.parameters)
                if method == "getUpdates":
                    result = await self._get_updates(args, request)
                else:
                    result = await self._handlers[method](args, files)
            except BotApiError as exc:
                payload: dict[str, Any] = {
                    "ok": False,
                    "error_code": exc.status,
                    "description": exc.description,
                }
                if exc.parameters:
                    payload["parameters"] = exc.parameters
                return self._answer(call, exc.status, payload)
            return self._answer(call, 200, {"ok": True, "result": result})
        finally:
            self._inflight.pop(id(request), None)

    async def _handle_file(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != self.token:
            return web.json_response(
                {"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401
            )
        path = request.match_info["path"]
        for stored in self._files.values():
            if stored.file_path == path:
                return web.Response(body=stored.content, content_type="application/octet-stream")
        return web.json_response(
            {"ok": False, "error_code": 404, "description": "Not Found"}, status=404
        )

    # --- methods -------------------------------------------------------------------

    def _chat(self, args: dict[str, Any]) -> dict[str, Any]:
        chat_id = args.get("chat_id")
        if chat_id is None or chat_id == "":
            raise BotApiError(400, "Bad Request: chat_id is empty")
        try:
            chat = self._chats.get(int(chat_id))
        except (TypeError, ValueError):
            chat = None  # an @username: the fake only knows chats by id
        if chat is None:
            raise BotApiError(400, "Bad Request: chat not found")
        return chat

    @staticmethod
    def _int(args: dict[str, Any], name: str) -> int | None:
        value = args.get(name)
        if value is None:
            return None
        try:
            return int(value)
        except (TypeError, ValueError):
            raise BotApiError(400, f"Bad Request: invalid {name} specified") from None

    @staticmethod
    def _formatted(
        text: Any, parse_mode: Any, entities: Any, *, limit: int, what: str
    ) -> tuple[str, list[dict[str, Any]] | None]:
        """Validate a text or caption the way Telegram does; the parsed text and entities."""
        if not isinstance(text, str):
            text = "" if text is None else str(text)
        mode = parse_mode or ""
        if mode == "MarkdownV2":
            text, error = check_markdown_v2(text)
            if error:
                raise BotApiError(400, error)
            entities = None
        elif mode not in ("", "HTML", "Markdown"):
            raise BotApiError(400, f"Bad Request: unsupported parse_mode {mode}")
        if what == "message" and not text.strip():
            raise BotApiError(400, "Bad Request: message text is empty")
        if utf16_len(text) > limit:
            raise BotApiError(
                400,
                "Bad Request: message is too long"
                if what == "message"
                else "Bad Request: message caption is too long",
            )
        if entities is not None and not isinstance(entities, list):
            raise BotApiError(400, "Bad Request: can't parse entities JSON object")
        return text, entities or None

    def _thread(self, chat: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
        thread_id = self._int(args, "message_thread_id")
        if thread_id is None:
            return {}
        if chat.get("is_forum"):
            if thread_id not in self._topics[chat["id"]]:
                raise BotApiError(400, "Bad Request: message thread not found")
            return {"message_thread_id": thread_id, "is_topic_message": True}
        return {"message_thread_id": thread_id}

    def _reply_target(self, chat: dict[str, Any], args: dict[str, Any]) -> dict[str, Any] | None:
        params = args.get("reply_parameters")
        if params is None and args.get("reply_to_message_id") is not None:
            params = {
                "message_id": args["reply_to_message_id"],
                "allow_sending_without_reply": args.get("allow_sending_without_reply", False),
            }
        if params is None:
            return None
        if not isinstance(params, dict) or "message_id" not in params:
            raise BotApiError(400, "Bad Request: invalid reply parameters specified")
        chat_id = params.get("chat_id", chat["id"])
        target = self._messages.get(chat_id, {}).get(int(params["message_id"]))
        if target is None:
            if params.get("allow_sending_without_reply"):
                return None
            raise BotApiError(400, "Bad Request: message to be replied not found")
        return self._reply_copy(target)

    def _bot_message(self, chat: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
        """A new message from the bot in ``chat``, threaded and replying as asked."""
        message: dict[str, Any] = {
            "message_id": 0,
            "from": self.bot_user,
            "chat": chat,
            "date": int(time.time()),
            **self._thread(chat, args),
        }
        reply = self._reply_target(chat, args)
        if reply is not None:
            message["reply_to_message"] = reply
        return message

    def _store(self, chat: dict[str, Any], message: dict[str, Any]) -> dict[str, Any]:
        message["message_id"] = self._new_message_id(chat["id"])
        self._messages[chat["id"]][message["message_id"]] = message
        return message

    async def _get_me(self, args: dict[str, Any], files: dict[str, Upload]) -> Any:
        return {
            **self.bot_user,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    async def _delete_webhook(self, args: dict[str, Any], files: dict[str, Upload]) -> Any:
        if args.get("drop_pending_updates"):
            self._updates.clear()
        return True

    async def _get_updates(self, args: dict[str, Any], request: web.Request) -> Any:
        offset = self._int(args, "offset")
        timeout = float(args.get("timeout") or 0)
        limit = min(max(self._int(args, "limit") or 100, 1), 100)
        if self._poller is not None:
            # The previous poller may have just hung up and its handler not be cancelled yet.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_POLLER_GRACE_S):
                    await self._changed.wait_for(lambda: self._poller is None)
            if self._poller is not None:
                raise BotApiError(409, CONFLICT)
        self._poller = request
        self._changed.notify()
        try:
            if offset is not None and offset > 0:
                self._updates = [u for u in self._updates if u["update_id"] >= offset]
            elif offset is not None and offset < 0:
                self._updates = self._updates[offset:]
            if not self._updates and timeout > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._changed.wait_for(
                            lambda: bool(self._updates) or self._runner is None
                        )
            return self._updates[:limit]
        finally:
            if self._poller is request:
                self._poller = None
            self._changed.notify()

    async def _send_message(self, args: dict[str, Any], files: dict[str, Upload]) -> Any:
        chat = self._chat(args)
        text, entities = self._formatted(
            args.get("text"),
            args.get("parse_mode"),
            args.get("entities"),
            limit=MESSAGE_LIMIT,
            what="message",
        )
        message = self._bot_message(chat, args)
        message["text"] = text
        if entities:
            message["entities"] = entities
        if isinstance(args.get("reply_markup"), dict):
            message["reply_markup"] = args["reply_markup"]
        return self._store(chat, message)

    async def _edit_message_text(self, args: dict[str, Any], files: dict[str, Upload]) -> Any:
        if args.get("inline_message_id"):
            raise BotApiError(400, "Bad Request: inline messages are not supported by the fake")
        chat = self._chat(args)
        message_id = self._int(args, "message_id")
        message = self._messages[chat["id"]].get(message_id or 0)
        if message is None:
            raise BotApiError(400, "Bad Request: message to edit not found")
        if message["from"]["id"] != self.bot_id:
            raise BotApiError(400, "Bad Request: message can't be edited")
        if "text" not in message:
            raise BotApiError(400, "Bad Request: there is no text in the message to edit")
        text, entities = self._formatted(
            args.get("text"),
            args.get("parse_mode"),
            args.get("entities"),
            limit=MESSAGE_LIMIT,
            what="message",
        )
        if text == message["text"] and (entities or None) == message.get("entities"):
            raise BotApiError(400, NOT_MODIFIED)
        message["text"] = text
        message.pop("entities", None)
        if entities:
            message["entities"] = entities
        # An edit without a keyboard removes the message's buttons, as Telegram does.
        message.pop("reply_markup", None)
        if isinstance(args.get("reply_markup"), dict):
            message["reply_markup"] = args["reply_markup"]
        message["edit_date"] = int(time.time())
        return message

    async def _answer_callback_query(self, args: dict[str, Any], files: dict[str, Upload]) -> Any:
        if not args.get("callback_query_id"):
            raise BotApiError(400, "Bad Request: query_id_invalid")
        return True

    async def _send_chat_action(self, args: dict[str, Any], files: dict[str, Upload]) -> Any:
        chat = self._chat(args)
        if args.get("action") not in CHAT_ACTIONS:
            raise BotApiError(400, "Bad Request: wrong parameter action in request")
        self._thread(chat, args)
        return True

    async def _send_document(self, args: dict[str, Any], files: dict[str, Upload]) -> Any:
        chat = self._chat(args)
        document = args.get("document")
        upload = files.get("document")
        if isinstance(document, str) and document.startswith("attach://"):
            upload = files.get(document.removeprefix("attach://"))
        if upload is not None:
            if not upload.content:
                raise BotApiError(400, "Bad Request: file must be non-empty")
            number = next(self._file_ids)
            stored = StoredFile(
                file_id=f"BQACAgfake{number:06d}",
                file_unique_id=f"AgADfake{number:06d}",
                file_path=f"documents/file_{number}_{upload.filename or 'document'}",
                file_name=upload.filename or "document",
                mime_type=upload.content_type or "application/octet-stream",
                content=upload.content,
            )
        elif isinstance(document, str) and document in self._files:
            stored = self._files[document]
        elif document:
            raise BotApiError(400, "Bad Request: wrong file identifier/HTTP URL specified")
        else:
            raise BotApiError(400, "Bad Request: there is no document in the request")
        caption, caption_entities = self._formatted(
            args.get("caption"),
            args.get("parse_mode"),
            args.get("caption_entities"),
            limit=CAPTION_LIMIT,
            what="caption",
        )
        message = self._bot_message(chat, args)
        message["document"] = stored.as_document()
        if caption:
            message["caption"] = caption
        if caption_entities:
            message["caption_entities"] = caption_entities
        self._store(chat, message)
        if stored.file_id not in self._files:
            stored.chat_id, stored.message_id = chat["id"], message["message_id"]
            self._files[stored.file_id] = stored
        return message

    async def _get_file(self, args: dict[str, Any], files: dict[str, Upload]) -> Any:
        stored = self._files.get(str(args.get("file_id", "")))
        if stored is None:
            raise BotApiError(400, "Bad Request: invalid file_id")
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": len(stored.content),
            "file_path": stored.file_path,
        }

    async def _delete_message(self, args: dict[str, Any], files: dict[str, Upload]) -> Any:
        chat = self._chat(args)
        message_id = self._int(args, "message_id")
        if self._messages[chat["id"]].pop(message_id or 0, None) is None:
            raise BotApiError(400, "Bad Request: message to delete not found")
        return True

    async def _set_my_commands(self, args: dict[str, Any], files: dict[str, Upload]) -> Any:
        commands = args.get("commands")
        if not isinstance(commands, list):
            raise BotApiError(400, "Bad Request: can't parse commands JSON object")
        for command in commands:
            name = command.get("command", "") if isinstance(command, dict) else ""
            if not _BOT_COMMAND_NAME_RE.match(name):
                raise BotApiError(400, "Bad Request: BOT_COMMAND_INVALID")
            if not 1 <= len(command.get("description", "")) <= 256:
                raise BotApiError(400, "Bad Request: BOT_COMMAND_DESCRIPTION_INVALID")
        self._commands = commands
        return True

    async def _get_my_commands(self, args: dict[str, Any], files: dict[str, Upload]) -> Any:
        return list(self._commands)


@pytest.fixture
async def fake_telegram() -> AsyncIterator[FakeTelegram]:
    """A fake Bot API server for one test; accepts ``FAKE_TOKEN``."""
    fake = FakeTelegram()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()
