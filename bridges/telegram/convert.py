"""Telegram quirks as pure functions: access, addressing, splitting, formatting, texts.

Also what the bridge needs between a message and its reply: the reply target carried
in a run's ``origin``, the parts of a reply (deterministic, so a re-sent reply can skip
what already went out), flood-control waits, and the per-group send budget.

Nothing here does I/O. The bridge calls these with values taken from python-telegram-bot
objects; tests call them directly.

Lengths are measured in UTF-16 code units, as Telegram counts them (an emoji outside the
Basic Multilingual Plane is two), so a chunk that fits here fits on the wire.
"""

from __future__ import annotations

import datetime as dt
import re
import warnings
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import telegramify_markdown
from telegram import Message, MessageEntity
from telegram.error import RetryAfter
from telegramify_markdown.entity import split_entities

from bridges.core.approval import CHOICES, Approval, button_data, decided_line, request_lines
from bridges.core.texts import status_with_answer as status_with_answer_text
from wire import RunState

#: Telegram refuses message texts longer than this (after entity parsing).
MESSAGE_LIMIT = 4096

#: The commands the bot offers (``setMyCommands``), in menu order.
BOT_COMMANDS: tuple[tuple[str, str], ...] = (
    ("ask", "Ask Codex (needed in groups)"),
    ("new", "Start a fresh conversation"),
    ("cancel", "Stop the current run"),
    ("status", "Show what is running"),
    ("repo", "Set the repository runs here work on"),
    ("target", "Set which executors runs here go to"),
    ("help", "How to use this bot"),
)

_MIN_SPLIT_LIMIT = 128
# Longer fence markers or language tags are not repeated when a code block is reopened.
_MAX_MARKER = 10
_MAX_LANGUAGE = 20
_FENCE_RE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
_CLOSE_RE = re.compile(r"^ {0,3}(`{3,}|~{3,})[ \t]*$")
_COMMAND_RE = re.compile(r"(?<!\S)/[A-Za-z0-9_]{1,32}(?:@[A-Za-z0-9_]{3,32})?(?![\w@])")
_MENTION_RE = re.compile(r"(?<![\w@])@[A-Za-z0-9_]{3,32}(?!\w)")


def utf16_len(text: str) -> int:
    """Length of ``text`` in UTF-16 code units, Telegram's unit for limits and offsets."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


# --- who may talk to the bot -------------------------------------------------------


def is_allowed(
    chat_id: int,
    user_id: int | None,
    allowed_chats: Iterable[str],
    allowed_users: Iterable[str],
) -> bool:
    """True when the chat is allowed (everyone in it may ask) or the sender is (anywhere).

    The lists combine with OR: ``TELEGRAM_ALLOWED_CHATS`` opens a chat to all its members,
    ``TELEGRAM_ALLOWED_USERS`` opens the bot to a person in any chat, including a private
    chat with it. ``*`` in either list admits everyone. Empty lists admit nobody, and a
    message without a sender (a channel post) only passes through the chat list.
    """
    chats = {entry.strip() for entry in allowed_chats}
    users = {entry.strip() for entry in allowed_users}
    if "*" in chats or str(chat_id) in chats:
        return True
    return "*" in users or (user_id is not None and str(user_id) in users)


def refusal_text(chat_id: int, user_id: int | None) -> str:
    """What a refused sender reads: their ids and the settings that would let them in."""
    who = f"Your user id is {user_id}." if user_id is not None else "This message has no sender."
    if user_id is not None and chat_id == user_id:
        ask = "Ask whoever runs codex-hub to add your user id to TELEGRAM_ALLOWED_USERS."
    else:
        ask = (
            f"This chat's id is {chat_id}. Ask whoever runs codex-hub to add your user id to "
            "TELEGRAM_ALLOWED_USERS, or this chat's id to TELEGRAM_ALLOWED_CHATS "
            "(which lets everyone in this chat use the bot)."
        )
    return f"Sorry, I only answer people I have been told to trust.\n{who} {ask}"


# --- which messages are addressed to the bot ---------------------------------------


def _entity_fields(entity: MessageEntity | Mapping[str, Any]) -> tuple[str, int, int]:
    if isinstance(entity, Mapping):
        return str(entity["type"]), int(entity["offset"]), int(entity["length"])
    return str(entity.type), int(entity.offset), int(entity.length)


def _python_spans(
    text: str, entities: Sequence[MessageEntity | Mapping[str, Any]] | None
) -> list[tuple[str, int, int]]:
    """Entities as (type, start, end) in Python string indices, in text order."""
    if entities is None:
        found = [("bot_command", m.start(), m.end()) for m in _COMMAND_RE.finditer(text)]
        found += [("mention", m.start(), m.end()) for m in _MENTION_RE.finditer(text)]
        return sorted(found, key=lambda span: span[1])
    # Telegram counts offsets in UTF-16 code units; map them back to string indices.
    index_of: dict[int, int] = {}
    units = 0
    for index, char in enumerate(text):
        index_of[units] = index
        units += 2 if ord(char) > 0xFFFF else 1
    index_of[units] = len(text)
    spans = []
    for entity in entities:
        kind, offset, length = _entity_fields(entity)
        start, end = index_of.get(offset), index_of.get(offset + length)
        if start is not None and end is not None:
            spans.append((kind, start, end))
    return sorted(spans, key=lambda span: span[1])


def _strip_spans(text: str, spans: list[tuple[int, int]]) -> str:
    """Remove the spans (mentions) and the separators that only existed for them."""
    out = ""
    cursor = 0
    for start, end in spans:
        out += text[cursor:start]
        cursor = end
        # "@bot, fix this" and "@bot: fix this" address the bot; the comma is not the prompt.
        while cursor < len(text) and text[cursor] in ",:":
            cursor += 1
        if (not out or out[-1] in " \t") and text[cursor : cursor + 1] in (" ", "\t"):
            cursor = len(text) - len(text[cursor:].lstrip(" \t"))
    return (out + text[cursor:]).strip()


def should_handle(
    message_text: str | None,
    chat_type: str,
    bot_username: str,
    is_reply_to_bot: bool,
    entities: Sequence[MessageEntity | Mapping[str, Any]] | None = None,
) -> tuple[bool, str]:
    """Whether a message asks the bot something, and the prompt without the addressing.

    Private chats: every text is a prompt. Groups and supergroups: only a mention of the
    bot, a reply to one of its messages, or ``/ask text`` (``/ask@botname text``); the
    mention or command is stripped from the prompt. Other commands (``/start``, ``/new``,
    ``/ask@otherbot``) are not prompts. ``(True, "")`` means the bot was addressed with
    nothing to ask: answer with help. ``entities`` are Telegram's (UTF-16 offsets, PTB
    objects or dicts); when ``None`` they are found in the text.

    ``is_reply_to_bot`` must be False for messages in a forum topic whose
    ``reply_to_message`` is only the topic's creation message (``forum_topic_created``):
    Telegram sets that on every message in the topic.
    """
    text = message_text or ""
    if not text.strip() or chat_type not in ("private", "group", "supergroup"):
        return False, ""
    bot = bot_username.lstrip("@").lower()
    spans = _python_spans(text, entities)

    command = next((s for s in spans if s[0] == "bot_command" and s[1] == 0), None)
    if command is not None:
        name, _, target = text[1 : command[2]].partition("@")
        if name.lower() != "ask" or (target and target.lower() != bot):
            return False, ""
        rest = text[command[2] :]
        offset = command[2]
    else:
        rest, offset = text, 0

    mentions = [
        (start - offset, end - offset)
        for kind, start, end in spans
        if kind == "mention" and start >= offset and text[start:end].lower() == f"@{bot}"
    ]
    prompt = _strip_spans(rest, mentions)
    if command is not None or chat_type == "private":
        return True, prompt
    if mentions or is_reply_to_bot:
        return True, prompt
    return False, ""


# --- splitting long answers --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Fence:
    """An open fenced code block: the marker that closes it and its language."""

    marker: str
    language: str

    @property
    def reopen(self) -> str:
        """The line that reopens this block at the top of the next chunk."""
        return f"{self.marker}{self.language}\n"

    @property
    def close_cost(self) -> int:
        """UTF-16 units the closing line adds to a chunk (a newline and the marker)."""
        return 1 + len(self.marker)


def _next_fence(line: str, fence: _Fence | None) -> _Fence | None:
    """The open fence after ``line``, given the one open before it (CommonMark rules)."""
    if fence is not None:
        close = _CLOSE_RE.match(line)
        if close and close[1][0] == fence.marker[0] and len(close[1]) >= len(fence.marker):
            return None
        return fence
    opening = _FENCE_RE.match(line)
    if opening is None:
        return None
    marker, info = opening[1], opening[2].strip()
    if marker[0] == "`" and "`" in info:
        return None
    language = info.split(maxsplit=1)[0] if info else ""
    return _Fence(marker, language[:_MAX_LANGUAGE])


def _repairable(fence: _Fence | None) -> _Fence | None:
    """The fence to close and reopen across chunks; absurdly long markers are left alone."""
    return fence if fence is not None and len(fence.marker) <= _MAX_MARKER else None


class _Packer:
    """Greedy line packing into chunks of at most ``budget`` UTF-16 units, fences repaired."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.chunks: list[str] = []
        self.raw: list[str] = []
        self.size = 0
        self.head: _Fence | None = None  # open when this chunk starts
        self.fence: _Fence | None = None  # open after the last line added

    def cost(self, extra: int, ends_newline: bool, fence: _Fence | None) -> int:
        """Rendered size of the chunk if ``extra`` raw units were added."""
        head = _repairable(self.head)
        tail = _repairable(fence)
        return (
            (utf16_len(head.reopen) if head else 0)
            + self.size
            + extra
            - (1 if ends_newline else 0)
            + (tail.close_cost if tail else 0)
        )

    def add(self, piece: str, fence_after: _Fence | None) -> None:
        """Append raw text that is known to fit."""
        self.raw.append(piece)
        self.size += utf16_len(piece)
        self.fence = fence_after

    def flush(self) -> None:
        """Close the current chunk (repairing an open fence) and start the next one."""
        if self.raw:
            head, tail = _repairable(self.head), _repairable(self.fence)
            body = "".join(self.raw).removesuffix("\n")
            text = (head.reopen if head else "") + body + (f"\n{tail.marker}" if tail else "")
            self.chunks.append(text)
        self.raw, self.size, self.head = [], 0, self.fence

    def room(self) -> int:
        """UTF-16 units free for raw text in an empty chunk that starts in the current fence."""
        fence = _repairable(self.fence)
        return self.budget - (utf16_len(fence.reopen) + fence.close_cost if fence else 0)


def _cut(line: str, start: int, room: int) -> int:
    """Where to hard-split ``line`` after ``start``: at most ``room`` units, at a space if near."""
    units = 0
    cut = len(line)
    for index in range(start, len(line)):
        units += 2 if ord(line[index]) > 0xFFFF else 1
        if units > room:
            cut = max(index, start + 1)
            break
    space = line.rfind(" ", (start + cut) // 2, cut)
    if start < space < len(line) - 1:
        cut = space + 1
    # A piece must not start like a fence, or the chunk it opens would read as code.
    floor = max(start + 1, cut - _MAX_MARKER)
    while cut > floor and _FENCE_RE.match(line[cut : cut + 2 * _MAX_MARKER]):
        cut -= 1
    return cut


def _pack(text: str, budget: int) -> list[str]:
    """Chunks of ``text`` without labels, each at most ``budget`` UTF-16 units."""
    lines = text.split("\n")
    fences: list[_Fence | None] = []  # the open fence after each line
    state: _Fence | None = None
    for line in lines:
        state = _next_fence(line, state)
        fences.append(state)

    packer = _Packer(budget)
    for number, line in enumerate(lines):
        newline = number < len(lines) - 1
        piece = line + "\n" if newline else line
        after = fences[number]
        opens_block = packer.fence is None and after is not None
        if opens_block and packer.raw:
            # Start a code block in a fresh chunk when it fits there but not here.
            end = next((n for n in range(number, len(lines)) if fences[n] is None), len(lines))
            block = sum(utf16_len(lines[n]) + 1 for n in range(number, min(end + 1, len(lines))))
            if packer.cost(block, True, None) > budget and block <= budget:
                packer.flush()
        if packer.cost(utf16_len(piece), newline, after) <= budget:
            packer.add(piece, after)
            continue
        packer.flush()
        if packer.cost(utf16_len(piece), newline, after) <= budget:
            packer.add(piece, after)
            continue
        # One line longer than a chunk: hard-split it, inside whatever fence is open.
        start, left, state = 0, utf16_len(piece), packer.fence
        room = packer.room()
        if state is None and _FENCE_RE.match(line):
            room -= _MAX_MARKER + 1  # its first piece opens a block that must be closed
        while packer.cost(left, newline, after) > budget:
            cut = min(_cut(piece, start, room), len(piece) - 1)
            head = piece[start:cut]
            if start == 0:
                state = _next_fence(head, state)  # a cut opening line still opens its block
            packer.add(head, state)
            packer.flush()
            start, left, room = cut, left - utf16_len(head), packer.room()
        packer.add(piece[start:], after)
    packer.flush()
    return packer.chunks


def split_message(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """Split ``text`` into messages of at most ``limit`` UTF-16 units each.

    Splits on line boundaries; a line longer than a message is cut, at a space when one is
    near. A fenced code block cut in two is closed at the end of one chunk and reopened,
    with its language, at the top of the next. When there is more than one chunk each
    starts with a ``(i/n)`` line and a blank line (so Markdown never reads the label as
    part of what follows), counted in the limit. Whitespace-only text gives ``[]``
    (Telegram refuses empty messages); text that fits is returned unchanged.
    """
    if limit < _MIN_SPLIT_LIMIT:
        raise ValueError(f"limit must be at least {_MIN_SPLIT_LIMIT}, got {limit}")
    if not text.strip():
        return []
    if utf16_len(text) <= limit:
        return [text]
    digits = 1
    while True:
        label_room = len(f"({'9' * digits}/{'9' * digits})\n\n")
        chunks = [c for c in _pack(text, limit - label_room) if c.strip()]
        if len(str(len(chunks))) <= digits:
            break
        digits = len(str(len(chunks)))
    if len(chunks) == 1:
        return chunks
    return [f"({n}/{len(chunks)})\n\n{chunk}" for n, chunk in enumerate(chunks, 1)]


# --- formatting --------------------------------------------------------------------


class Rendered(NamedTuple):
    """One message ready to send: text plus entities, or plain text when entities is None."""

    text: str
    entities: list[MessageEntity] | None


def _to_ptb(entities: Iterable[telegramify_markdown.MessageEntity]) -> list[MessageEntity]:
    return [MessageEntity.de_json(entity.to_dict(), None) for entity in entities]


def render(text: str, parse_mode: str) -> Rendered:
    """Format one chunk: Markdown becomes plain text plus entities when ``parse_mode`` is set.

    With ``parse_mode="MarkdownV2"`` the Markdown is converted by telegramify-markdown into
    message entities, sent as ``entities=`` with no ``parse_mode`` at all: Telegram never
    re-parses the text, so no reserved character can make it refuse the message. Any other
    value, or a conversion that fails or comes out empty, gives the text unchanged.
    """
    if parse_mode != "MarkdownV2":
        return Rendered(text, None)
    try:
        plain, entities = telegramify_markdown.convert(text)
    except Exception:  # a formatter bug must never lose an answer: fall back to plain text
        return Rendered(text, None)
    if not plain.strip():
        return Rendered(text, None)
    return Rendered(plain, _to_ptb(entities))


def render_message(text: str, parse_mode: str, limit: int = MESSAGE_LIMIT) -> list[Rendered]:
    """Split then format ``text`` chunk by chunk; every result fits in ``limit``.

    Formatting usually shortens a chunk, but it can grow one (tables are padded into
    aligned columns): such a chunk is split again after conversion, entities clipped.
    """
    out: list[Rendered] = []
    for chunk in split_message(text, limit):
        rendered = render(chunk, parse_mode)
        if rendered.entities is None or utf16_len(rendered.text) <= limit:
            out.append(rendered)
            continue
        _, entities = telegramify_markdown.convert(chunk)
        for part, part_entities in split_entities(rendered.text, entities, limit):
            out.append(Rendered(part, _to_ptb(part_entities)))
    return out


# --- texts the bot sends ----------------------------------------------------------


def session_key(chat_id: int, message_thread_id: int | None, generation: int) -> str:
    """The hub session of a chat (or forum topic); ``/new`` bumps ``generation``."""
    return f"telegram:{chat_id}:{message_thread_id or 0}:{generation}"


def preview(text: str, n: int) -> str:
    """``text`` on one line, whitespace collapsed, cut to at most ``n`` characters with '…'."""
    if n < 1:
        raise ValueError("n must be at least 1")
    flat = " ".join(text.split())
    return flat if len(flat) <= n else flat[: n - 1].rstrip() + "…"


def help_text(user_id: int | None, chat_id: int, *, bot_username: str = "") -> str:
    """How to use the bot, with the ids an operator needs to allow this user or chat."""
    mention = f"@{bot_username.lstrip('@')}" if bot_username else "me"
    commands = "\n".join(f"/{name} - {about}" for name, about in BOT_COMMANDS)
    ids = f"Your user id: {user_id}. This chat's id: {chat_id}."
    return (
        "I hand your messages to Codex and reply with its answer.\n"
        "In a private chat, just write. In a group, mention "
        f"{mention}, reply to one of my messages, or use /ask followed by your question.\n\n"
        f"{commands}\n\n{ids}"
    )


_STATE_LABELS: Mapping[str, str] = {
    RunState.QUEUED: "⏳ Queued",
    RunState.OPTIMIZING: "✍️ Preparing the prompt",
    RunState.RUNNING: "⚙️ Working",
    RunState.AWAITING_APPROVAL: "✋ Waiting for an approval",
}


def status_text(state: str, detail: str, run_id: str, position: int | None = None) -> str:
    """The status message of a run still going (plain text, edited as progress arrives)."""
    line = _STATE_LABELS.get(state, f"⚙️ {state.replace('_', ' ').capitalize()}")
    if state == "queued" and position:
        line += f" ({position} ahead)"
    parts = [f"{line}…"]
    if detail.strip():
        parts.append(preview(detail, 300))
    parts.append(f"run {run_id}")
    return "\n".join(parts)


def status_with_answer(status: str, answer: str) -> str:
    """The status message with the end of the answer being written (plain text), cut
    to fit one message: Telegram counts its 4096 in UTF-16 units, which emoji double."""
    text = status_with_answer_text(status, answer)
    while utf16_len(text) > MESSAGE_LIMIT and answer:
        answer = answer[len(answer) // 4 + 1 :]
        text = status_with_answer_text(status, "…" + answer)
    return text


def _error_message(error: Mapping[str, Any] | str | None) -> str:
    if isinstance(error, Mapping):
        message = error.get("message") or error.get("detail") or error.get("code")
        return str(message) if message else ""
    return error or ""


def final_text(
    status: str,
    answer: str,
    run_id: str,
    error: Mapping[str, Any] | str | None = None,
) -> str:
    """The reply that ends a run: codex's answer, or what went wrong and the run id.

    Only ``succeeded`` returns codex's own Markdown (render it with the parse mode); every
    other outcome is plain text and should be sent without formatting.
    """
    if status == RunState.SUCCEEDED:
        return answer.strip() or f"Codex finished without an answer. (run {run_id})"
    reason = preview(_error_message(error), 1000)
    if status == RunState.CANCELLED:
        head = "🛑 Cancelled."
    elif status == RunState.TIMED_OUT:
        head = "⌛ Timed out: the run took longer than it is allowed to."
    elif status == RunState.REJECTED:
        head = "🚫 The hub did not accept this request."
    else:
        head = "❌ The run failed."
    lines = [head]
    if reason:
        lines.append(reason)
    lines.append(f"(run {run_id})")
    return "\n".join(lines)


def document_for(answer: str, run_id: str) -> tuple[str, bytes]:
    """A long answer as a Markdown file: its name and UTF-8 bytes."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "", run_id)[:12] or "answer"
    return f"answer-{safe}.md", answer.encode("utf-8")


# --- what the bridge carries from a message to its reply ---------------------------


@dataclass(frozen=True, slots=True)
class ReplyTarget:
    """Where a reply goes: the chat, its forum topic, and the user's message it answers.

    It travels in the run's ``origin`` (:meth:`to_origin`), so whichever bridge process
    receives the reply, a restarted one included, posts it without remembering anything.
    """

    chat_id: int
    message_id: int | None = None
    thread_id: int | None = None
    chat_type: str = "private"

    @classmethod
    def of(cls, message: Message) -> ReplyTarget:
        """The target of a reply to ``message`` (its topic only in a forum supergroup)."""
        return cls(
            chat_id=message.chat.id,
            message_id=message.message_id,
            thread_id=topic_of(message),
            chat_type=str(message.chat.type),
        )

    @property
    def is_group(self) -> bool:
        """True in groups and supergroups, where Telegram's per-group budget applies."""
        return self.chat_type in ("group", "supergroup") or self.chat_id < 0

    def to_origin(self, user_id: int | None, username: str | None = None) -> dict[str, Any]:
        """The ``origin`` of a run asked from here: the target plus who asked."""
        return {
            "chat_id": self.chat_id,
            "message_id": self.message_id,
            "message_thread_id": self.thread_id,
            "chat_type": self.chat_type,
            "user_id": user_id,
            "user": f"@{username}" if username else (str(user_id) if user_id else None),
        }

    @classmethod
    def from_origin(cls, origin: Mapping[str, Any]) -> ReplyTarget | None:
        """The target a run's ``origin`` names, or None when it names no Telegram chat."""

        def number(key: str) -> int | None:
            value = origin.get(key)
            if isinstance(value, bool) or value in (None, ""):
                return None
            try:
                return int(value)
            except (TypeError, ValueError):
                return None

        chat_id = number("chat_id")
        if chat_id is None:
            return None
        return cls(
            chat_id=chat_id,
            message_id=number("message_id"),
            thread_id=number("message_thread_id") or None,
            chat_type=str(origin.get("chat_type") or ("private" if chat_id > 0 else "group")),
        )


def status_message_of(origin: Mapping[str, Any]) -> int | None:
    """The id of the run's status message that the hub keeps in ``origin``, if any.

    A bridge sends it to the hub (``status_ref``) after posting the status message; the
    hub hands it back with every later frame of the run, so a restarted bridge finds the
    message (the Bot API cannot list a chat's messages).
    """
    ref = origin.get("status_ref")
    if not isinstance(ref, str) or not ref.isascii() or not ref.isdigit():
        return None
    message_id = int(ref)
    return message_id if 0 < message_id < 2**63 else None


def status_ref(message_id: int) -> str:
    """What the hub keeps of a status message: its id, as a string."""
    return str(message_id)


def topic_of(message: Message) -> int | None:
    """The forum topic of ``message``, or None outside forums.

    Outside forum supergroups ``message_thread_id`` marks reply threads, which are not
    separate conversations: only a topic message (``is_topic_message``) has a topic.
    """
    return message.message_thread_id if message.is_topic_message else None


def is_reply_to_bot(message: Message, bot_id: int) -> bool:
    """True when ``message`` replies to one of the bot's own messages.

    In a forum topic every message "replies" to the topic's creation message
    (``forum_topic_created``); that is not a reply to the bot, even if the bot made it.
    """
    reply = message.reply_to_message
    if reply is None or reply.forum_topic_created is not None:
        return False
    return reply.from_user is not None and reply.from_user.id == bot_id


def retry_after_s(exc: RetryAfter) -> float:
    """Seconds Telegram asks to wait, whichever type this PTB version reports it in."""
    with warnings.catch_warnings():
        # PTB 22.2+ warns that the int form is deprecated; either form is read the same.
        warnings.simplefilter("ignore")
        value: Any = exc.retry_after
    if isinstance(value, dt.timedelta):
        return max(0.0, value.total_seconds())
    return max(0.0, float(value))


def is_format_error(description: str) -> bool:
    """True when Telegram refused a message for its formatting (entities or markup).

    PTB lower-cases descriptions after the first letter ("Can't parse entities: ...").
    """
    folded = description.lower()
    return "entit" in folded or "parse" in folded


# --- the parts of a reply -----------------------------------------------------------

#: Telegram refuses captions longer than this (UTF-16 units).
CAPTION_LIMIT = 1024
_CAPTION_PREVIEW = 700


@dataclass(frozen=True, slots=True)
class TextPart:
    """One message of a reply; ``fallback`` is sent, plain, if Telegram refuses ``entities``."""

    text: str
    entities: list[MessageEntity] | None
    fallback: str


@dataclass(frozen=True, slots=True)
class DocumentPart:
    """A reply too long for messages: a file, with a preview as its caption."""

    filename: str
    content: bytes
    caption: str


@dataclass(frozen=True, slots=True)
class ButtonPart:
    """A message with one inline keyboard button (``data`` comes back when pressed)."""

    text: str
    label: str
    data: str


ReplyPart = TextPart | DocumentPart | ButtonPart

#: The callback data of the "Open PR" button starts with this, then the run's id.
OPEN_PR_DATA = "pr:"
#: What a press of the button asks for: the same as a user's ``!pr`` message.
OPEN_PR_PROMPT = "!pr"


def open_pr_offer(run_id: str) -> ButtonPart:
    """The "Open PR" button under an answer whose conversation changed its repository."""
    return ButtonPart(
        "These changes are not in a pull request yet.", "Open PR", f"{OPEN_PR_DATA}{run_id}"
    )


def open_pr_pressed(who: str) -> str:
    """The button's message once pressed: the button goes, this says who pressed it."""
    return f"Pull request requested by {who}."


def open_pr_refusal(user_id: int) -> str:
    """What someone not allowed to use the bot reads when they press the button."""
    return (
        "Only people allowed to use this bot in this chat may open a pull request. "
        f"Your user id is {user_id}."
    )


def diff_document(diff: str, run_id: str) -> DocumentPart:
    """The conversation's changes as a ``.diff`` document after the answer."""
    return DocumentPart(f"{run_id}.diff", diff.encode(), "The changes so far (git diff)")


def _fit_utf16(text: str, limit: int) -> str:
    """``text`` cut (with '…') to at most ``limit`` UTF-16 units."""
    if utf16_len(text) <= limit:
        return text
    units = 0
    for index, char in enumerate(text):
        units += 2 if ord(char) > 0xFFFF else 1
        if units > limit - 1:
            return text[:index].rstrip() + "…"
    return text


def document_caption(answer: str) -> str:
    """The caption of an answer sent as a file: its beginning, and what the file holds."""
    note = f"\n\n📎 The whole answer ({len(answer):,} characters) is in the attached file."
    head = preview(answer, _CAPTION_PREVIEW)
    return _fit_utf16(head, CAPTION_LIMIT - utf16_len(note)) + note


def reply_parts(
    status: str,
    answer: str,
    run_id: str,
    error: Mapping[str, Any] | str | None = None,
    *,
    parse_mode: str = "",
    document_threshold: int = 12_000,
) -> list[ReplyPart]:
    """Everything a run's reply consists of, in posting order; the same input, the same parts.

    A successful answer longer than ``document_threshold`` characters is one document
    with a preview caption. Otherwise the text is split (labelled ``(i/n)``) and, for a
    successful answer with ``parse_mode``, formatted into entities; each part keeps the
    plain text to fall back on. Failures, cancellations and the like are plain text.
    Deterministic, so a re-delivered reply has the same parts at the same indices.
    """
    text = final_text(status, answer, run_id, error)
    if status == "succeeded" and len(text) > document_threshold:
        filename, content = document_for(text, run_id)
        return [DocumentPart(filename, content, document_caption(text))]
    mode = parse_mode if status == "succeeded" else ""
    parts: list[ReplyPart] = []
    for chunk in split_message(text):
        rendered = render_message(chunk, mode)
        if len(rendered) == 1:
            only = rendered[0]
            parts.append(TextPart(only.text, only.entities, chunk))
        else:  # formatting grew the chunk past the limit: each piece falls back to itself
            parts.extend(TextPart(r.text, r.entities, r.text) for r in rendered)
    return parts


# --- keeping inside the group budget ------------------------------------------------

#: Telegram lets a bot send about 20 messages a minute to one group (edits count too).
GROUP_SENDS_PER_MINUTE = 20
#: Sends of that budget that status messages leave for replies.
REPLY_RESERVE = 5


class SendWindow:
    """Sends to one chat in the last ``period`` seconds (times come from the caller)."""

    def __init__(self, limit: int = GROUP_SENDS_PER_MINUTE, period: float = 60.0) -> None:
        self.limit = limit
        self.period = period
        self._times: deque[float] = deque()

    def _prune(self, now: float) -> None:
        while self._times and self._times[0] <= now - self.period:
            self._times.popleft()

    def record(self, now: float) -> None:
        """Count one send at ``now``."""
        self._prune(now)
        self._times.append(now)

    def room(self, now: float) -> int:
        """How many more sends fit in the window at ``now`` (never below zero)."""
        self._prune(now)
        return max(0, self.limit - len(self._times))

    def allows_status(self, now: float, reserve: int = REPLY_RESERVE) -> bool:
        """True when a status post or edit still leaves ``reserve`` sends for replies."""
        return self.room(now) > reserve


# --- more texts the bot sends ---------------------------------------------------------


def queued_text(position: int) -> str:
    """The answer to a message that waits behind runs of the same conversation."""
    runs = "run" if position == 1 else "runs"
    return (
        f"⏳ Queued: {position} {runs} ahead of this one in this conversation. "
        "I will answer here when its turn comes."
    )


def kept_text() -> str:
    """Said when a message is kept because the hub cannot be reached right now."""
    return (
        "⏳ Codex is not reachable right now (the hub is restarting or down). "
        "I kept your message and will send it as soon as Codex is back."
    )


def hub_error_text(code: str, message: str) -> str:
    """What the user reads when the hub did not take a request."""
    if code == "hub_unreachable":
        return "⚠️ Codex is not reachable right now (the hub is down). Please try again shortly."
    if code == "queue_full":
        return "⚠️ Too much work is waiting already; please try again later."
    if code == "hub_closing":
        return "⚠️ Codex is restarting; please try again in a minute."
    if code == "pending_full":
        return (
            "⚠️ Codex is not reachable right now and too many messages are already waiting "
            "for it, so this one was not kept. Please send it again once Codex is back."
        )
    if code == "pending_expired":
        return (
            "⚠️ Codex did not come back in time, so this message was never sent. "
            "Please send it again once Codex is back."
        )
    if code == "bridge_stopping":
        return "⚠️ The bot stopped before Codex was back, so this message was not sent."
    if code == "store_unavailable":
        return "⚠️ Codex cannot save new work right now (its disk is full); please try again later."
    return f"⚠️ The request was not accepted: {preview(message, 300) or code}"


def cancel_text(run_ids: Sequence[str]) -> str:
    """The answer to ``/cancel``; the run's own reply then says it was cancelled."""
    if not run_ids:
        return "Nothing is running in this conversation."
    return f"🛑 Cancelling run {', '.join(run_ids)}…"


NEW_SESSION_TEXT = "🆕 Fresh start: your next message begins a new Codex conversation."


def command_argument(text: str) -> str:
    """What follows a command's first word (``/repo owner/name`` -> ``owner/name``)."""
    words = text.split(None, 1)
    return words[1] if len(words) > 1 else ""


def busy_text(run_id: str) -> str:
    """The answer to ``/new`` while the conversation still has work going."""
    return (
        f"Codex is still working in this conversation (run {run_id}); its answer would "
        "continue the old one. Wait for it or /cancel it, then send /new again."
    )


def _age(since: Any, now: float) -> str:
    if not isinstance(since, int | float):
        return ""
    seconds = max(0, int(now - since))
    return f", {seconds // 60} min {seconds % 60} s" if seconds >= 60 else f", {seconds} s"


def session_text(
    active: Mapping[str, Any] | None, queued: Sequence[Mapping[str, Any]], now: float
) -> str:
    """The answer to ``/status``: the run going on here and what waits behind it."""
    if active is None and not queued:
        return "Nothing is running in this conversation. Send a message to start."
    lines = []
    if active is not None:
        state = str(active.get("state", "running"))
        since = active.get("started_at") or active.get("created_at")
        lines.append(f"⚙️ Run {active.get('id')}: {state}{_age(since, now)}")
        excerpt = preview(str(active.get("prompt_excerpt") or ""), 120)
        if excerpt:
            lines.append(f"“{excerpt}”")
    if queued:
        ids = ", ".join(str(q.get("id")) for q in queued)
        lines.append(f"⏳ {len(queued)} more waiting: {ids}")
    return "\n".join(lines)


# --- approvals (bridges/core/approval.py) -------------------------------------------


def approval_text(approval: Approval) -> str:
    """The request in plain text: what codex asks to run (or change) and why."""
    headline, what, why = request_lines(approval)
    text = f"✋ {headline} (run {approval.run_id}):"
    if what:
        text += f"\n\n{what}"
    if why:
        text += f"\n\nWhy: {why}"
    return text[:4000]


def approval_keyboard(approval: Approval) -> list[list[tuple[str, str]]]:
    """The inline keyboard's rows of (label, callback data): one button per row."""
    return [
        [(label, button_data(approval.run_id, approval.approval_id, decision))]
        for decision, label, _ in CHOICES
    ]


def approval_decided_text(approval: Approval) -> str:
    """The buttons' message once decided: the request, then who decided and when."""
    return f"{approval_text(approval)}\n\n{decided_line(approval)}"[:4096]
