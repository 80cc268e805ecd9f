"""The pure helpers the Telegram bridge is built on: reply targets, reply parts, pacing, texts."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from telegram import Message
from telegram.error import RetryAfter

from bridges.telegram import convert
from bridges.telegram.convert import (
    CAPTION_LIMIT,
    MESSAGE_LIMIT,
    DocumentPart,
    ReplyTarget,
    SendWindow,
    TextPart,
    utf16_len,
)

BOT_ID = 7000000001


def message(**fields: Any) -> Message:
    """A PTB Message from Bot API JSON, with a private chat and a sender unless given."""
    data: dict[str, Any] = {
        "message_id": 10,
        "date": 0,
        "chat": {"id": 42, "type": "private"},
        "from": {"id": 42, "is_bot": False, "first_name": "A"},
        "text": "hi",
    }
    data.update(fields)
    return Message.de_json(data, None)


# --- reply targets --------------------------------------------------------------------


def test_target_round_trips_through_the_origin() -> None:
    """Everything a reply needs survives the run's origin, as JSON would carry it."""
    target = ReplyTarget(chat_id=-1001, message_id=77, thread_id=5, chat_type="supergroup")
    origin = target.to_origin(42, "alice")
    assert origin["user"] == "@alice" and origin["user_id"] == 42
    assert ReplyTarget.from_origin(origin) == target
    as_strings = {k: str(v) for k, v in origin.items()}
    assert ReplyTarget.from_origin(as_strings) == target


def test_target_from_an_origin_without_a_chat_is_none() -> None:
    """An origin from another platform names no Telegram chat."""
    assert ReplyTarget.from_origin({"channel": "C1"}) is None
    assert ReplyTarget.from_origin({"chat_id": "not a number"}) is None
    minimal = ReplyTarget.from_origin({"chat_id": -5})
    assert minimal == ReplyTarget(chat_id=-5, chat_type="group")
    assert minimal is not None and minimal.is_group


def test_the_status_message_round_trips_through_the_origin() -> None:
    """The hub keeps the status message's id as a string; anything else names none."""
    assert convert.status_message_of({"status_ref": convert.status_ref(1234)}) == 1234
    assert convert.status_message_of({"chat_id": 42}) is None
    for bad in (1234, "", "-5", "0", "12a", "١٢", "9" * 30, None, True):
        assert convert.status_message_of({"status_ref": bad}) is None, bad


def test_target_of_a_topic_message_keeps_its_topic_only_in_forums() -> None:
    """A forum topic is part of the target; a reply thread in a plain group is not."""
    forum = {"id": -1002, "type": "supergroup", "is_forum": True}
    in_topic = message(chat=forum, message_thread_id=9, is_topic_message=True)
    assert ReplyTarget.of(in_topic).thread_id == 9
    plain = {"id": -1003, "type": "supergroup"}
    in_thread = message(chat=plain, message_thread_id=9)
    assert ReplyTarget.of(in_thread).thread_id is None
    assert ReplyTarget.of(in_thread).chat_type == "supergroup"


def test_reply_to_bot_ignores_the_topic_creation_message() -> None:
    """Every topic message replies to the topic's creation; that is not a reply to the bot."""
    bot = {"id": BOT_ID, "is_bot": True, "first_name": "Bot"}
    chat = {"id": -1002, "type": "supergroup", "is_forum": True}
    created = {
        "message_id": 9,
        "date": 0,
        "chat": chat,
        "from": bot,
        "forum_topic_created": {"name": "T", "icon_color": 1},
    }
    in_topic = message(chat=chat, reply_to_message=created, is_topic_message=True)
    assert not convert.is_reply_to_bot(in_topic, BOT_ID)
    answer = {"message_id": 11, "date": 0, "chat": chat, "from": bot, "text": "done"}
    assert convert.is_reply_to_bot(message(chat=chat, reply_to_message=answer), BOT_ID)
    human = {**answer, "from": {"id": 5, "is_bot": False, "first_name": "B"}}
    assert not convert.is_reply_to_bot(message(chat=chat, reply_to_message=human), BOT_ID)
    assert not convert.is_reply_to_bot(message(), BOT_ID)


# --- Telegram's errors ----------------------------------------------------------------


@pytest.mark.parametrize("value", [3, dt.timedelta(seconds=3)])
def test_retry_after_in_seconds_without_deprecation_warnings(value: Any) -> None:
    """Flood control's wait reads the same whether PTB reports an int or a timedelta."""
    assert convert.retry_after_s(RetryAfter(value)) == 3.0


def test_format_errors_are_recognised_as_ptb_words_them() -> None:
    """PTB capitalises descriptions ("Can't parse entities: character..."): still found."""
    assert convert.is_format_error("Can't parse entities: character '.' is reserved")
    assert convert.is_format_error("Can't find end of bold entity at byte offset 3")
    assert not convert.is_format_error("Chat not found")


# --- reply parts ----------------------------------------------------------------------


def test_short_answer_is_one_plain_part() -> None:
    """A short answer without a parse mode goes as it is."""
    assert convert.reply_parts("succeeded", "**hi**", "run_1") == [
        TextPart("**hi**", None, "**hi**")
    ]


def test_markdown_becomes_entities_with_the_markdown_as_fallback() -> None:
    """With MarkdownV2 the part carries entities; its fallback is the Markdown itself."""
    (part,) = convert.reply_parts("succeeded", "**bold** `x`", "run_1", parse_mode="MarkdownV2")
    assert isinstance(part, TextPart)
    assert part.text.startswith("bold") and "**" not in part.text
    assert part.entities and {e.type for e in part.entities} >= {"bold", "code"}
    assert part.fallback == "**bold** `x`"


def test_failures_are_plain_even_with_a_parse_mode() -> None:
    """A failed run's text is never parsed as Markdown."""
    (part,) = convert.reply_parts(
        "failed", "", "run_1", {"message": "codex **exploded**"}, parse_mode="MarkdownV2"
    )
    assert isinstance(part, TextPart) and part.entities is None
    assert "codex **exploded**" in part.text and "run_1" in part.text


def test_long_answer_is_split_and_labelled() -> None:
    """A long answer becomes labelled parts that each fit in a message, in order."""
    answer = "\n".join(f"line {i:04d} " + "x" * 60 for i in range(130))
    parts = convert.reply_parts("succeeded", answer, "run_1")
    assert len(parts) == 3
    for number, part in enumerate(parts, 1):
        assert isinstance(part, TextPart)
        assert part.text.startswith(f"({number}/3)\n\n")
        assert utf16_len(part.text) <= MESSAGE_LIMIT


def test_same_answer_same_parts() -> None:
    """Parts are deterministic, so a re-delivered reply skips exactly what went out."""
    answer = "# Title\n\n" + "\n".join(f"- item **{i}**" for i in range(800))
    first = convert.reply_parts("succeeded", answer, "r", parse_mode="MarkdownV2")
    again = convert.reply_parts("succeeded", answer, "r", parse_mode="MarkdownV2")
    assert [(p.text, p.fallback) for p in first if isinstance(p, TextPart)] == [
        (p.text, p.fallback) for p in again if isinstance(p, TextPart)
    ]


def test_very_long_answer_is_a_document_with_a_preview() -> None:
    """Past the threshold the answer is a file; the caption previews it and fits."""
    answer = "🚀 " + "word " * 5000
    (part,) = convert.reply_parts("succeeded", answer, "run_abc", document_threshold=12_000)
    assert isinstance(part, DocumentPart)
    assert part.filename == "answer-run_abc.md"
    assert part.content == answer.strip().encode()
    assert part.caption.startswith("🚀 word word")
    assert "attached file" in part.caption
    assert utf16_len(part.caption) <= CAPTION_LIMIT


def test_caption_fits_even_with_wide_characters() -> None:
    """A preview made of characters outside the BMP still fits the caption limit."""
    caption = convert.document_caption("🙂" * 5000)
    assert utf16_len(caption) <= CAPTION_LIMIT


# --- the group budget -------------------------------------------------------------------


def test_send_window_keeps_room_for_replies() -> None:
    """Status traffic stops while only the reserve is left, and resumes as sends age out."""
    window = SendWindow(limit=20, period=60.0)
    for second in range(14):
        assert window.allows_status(float(second))
        window.record(float(second))
    assert window.room(14.0) == 6 and window.allows_status(14.0)
    window.record(14.0)
    assert window.room(15.0) == 5 and not window.allows_status(15.0)
    assert window.allows_status(60.5)  # the send at 0 s has left the window
    for _ in range(10):
        window.record(61.0)
    assert window.room(61.0) == 0


# --- texts ------------------------------------------------------------------------------


def test_queue_and_cancel_texts() -> None:
    """The queue notice tells the position; /cancel says what it cancelled."""
    assert "1 run ahead" in convert.queued_text(1)
    assert "3 runs ahead" in convert.queued_text(3)
    assert convert.cancel_text([]) == "Nothing is running in this conversation."
    assert "run_1" in convert.cancel_text(["run_1"])
    assert "run_9" in convert.busy_text("run_9") and "/cancel" in convert.busy_text("run_9")


def test_hub_error_texts_never_show_a_traceback() -> None:
    """Each refusal of the hub reads as advice to the user."""
    assert "not reachable" in convert.hub_error_text("hub_unreachable", "TimeoutError()")
    assert "try again later" in convert.hub_error_text("queue_full", "100 runs are waiting")
    assert "bad prompt" in convert.hub_error_text("invalid", "bad prompt")
    assert "was not kept" in convert.hub_error_text("pending_full", "3 requests wait")
    assert "never sent" in convert.hub_error_text("pending_expired", "not back within 600 s")
    assert "was not sent" in convert.hub_error_text("bridge_stopping", "stopped")
    assert "disk is full" in convert.hub_error_text("store_unavailable", "database or disk")
    assert "kept your message" in convert.kept_text()


def test_session_text() -> None:
    """/status names the active run, its age and what waits behind it."""
    assert "Nothing is running" in convert.session_text(None, [], 0.0)
    active = {"id": "run_1", "state": "running", "started_at": 100.0, "prompt_excerpt": "fix it"}
    text = convert.session_text(active, [{"id": "run_2"}], 175.0)
    assert "run_1: running, 1 min 15 s" in text
    assert "fix it" in text
    assert "1 more waiting: run_2" in text
