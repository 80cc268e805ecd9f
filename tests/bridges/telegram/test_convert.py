"""Telegram's quirks as pure functions: access, addressing, splitting, formatting, texts."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from telegram import MessageEntity

from bridges.telegram import convert
from bridges.telegram.convert import (
    BOT_COMMANDS,
    MESSAGE_LIMIT,
    document_for,
    final_text,
    help_text,
    is_allowed,
    preview,
    refusal_text,
    render,
    render_message,
    session_key,
    should_handle,
    split_message,
    status_text,
    utf16_len,
)
from bridges.telegram.settings import DEFAULT_API_BASE_URL, TelegramSettings

BOT = "codex_bot"
LABEL_RE = re.compile(r"^\((\d+)/(\d+)\)\n\n")
FENCE_LINE_RE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")

# --- who may talk to the bot -------------------------------------------------------


@pytest.mark.parametrize(
    ("chat_id", "user_id", "chats", "users", "allowed"),
    [
        (10, 10, [], [], False),  # empty lists let nobody in
        (10, 10, [], ["10"], True),  # an allowed user in a private chat
        (-100, 10, [], ["10"], True),  # ... and in any group
        (-100, 11, [], ["10"], False),  # someone else in that group
        (-100, 11, ["-100"], [], True),  # an allowed chat admits all its members
        (11, 11, ["-100"], [], False),  # ... but not their private chats
        (-200, 11, ["*"], [], True),  # '*' chats: every chat
        (-200, 11, [], ["*"], True),  # '*' users: every sender
        (-200, None, [], ["10"], False),  # no sender: only the chat list can admit
        (-200, None, ["-200"], [], True),
        (10, 10, [" 10 "], [], True),  # stray spaces are not a reason to refuse
    ],
)
def test_is_allowed(
    chat_id: int, user_id: int | None, chats: list[str], users: list[str], allowed: bool
) -> None:
    """A message passes when its chat or its sender is listed; '*' is everyone; fail closed."""
    assert is_allowed(chat_id, user_id, chats, users) is allowed


def test_refusal_text_names_the_ids_and_settings() -> None:
    """A refused user learns their ids and which settings an operator must change."""
    private = refusal_text(42, 42)
    assert "42" in private and "TELEGRAM_ALLOWED_USERS" in private
    assert "TELEGRAM_ALLOWED_CHATS" not in private
    group = refusal_text(-100123, 42)
    assert "-100123" in group and "42" in group
    assert "TELEGRAM_ALLOWED_USERS" in group and "TELEGRAM_ALLOWED_CHATS" in group


# --- which messages are addressed to the bot ---------------------------------------


@pytest.mark.parametrize(
    ("text", "chat_type", "to_bot", "expected"),
    [
        ("fix the build", "private", False, (True, "fix the build")),
        ("  spaced out  ", "private", False, (True, "spaced out")),
        ("/ask fix it", "private", False, (True, "fix it")),
        ("/start", "private", False, (False, "")),
        ("/new", "private", False, (False, "")),
        ("", "private", False, (False, "")),
        ("   ", "private", False, (False, "")),
        ("just chatting", "group", False, (False, "")),
        ("just chatting", "supergroup", True, (True, "just chatting")),
        ("@codex_bot fix it", "group", False, (True, "fix it")),
        ("@Codex_Bot, fix it", "supergroup", False, (True, "fix it")),
        ("@codex_bot: fix it", "supergroup", False, (True, "fix it")),
        ("please @codex_bot fix it", "group", False, (True, "please fix it")),
        ("fix it @codex_bot", "group", False, (True, "fix it")),
        ("@codex_bot", "group", False, (True, "")),
        ("@someone_else fix it", "group", False, (False, "")),
        ("@codex_bot_two fix it", "group", False, (False, "")),
        ("/ask fix it", "group", False, (True, "fix it")),
        ("/ask@codex_bot fix it", "supergroup", False, (True, "fix it")),
        ("/ASK@CODEX_BOT fix it", "supergroup", False, (True, "fix it")),
        ("/ask@other_bot fix it", "supergroup", False, (False, "")),
        ("/ask", "group", False, (True, "")),
        ("/asking fix", "group", False, (False, "")),
        ("/start@codex_bot", "group", False, (False, "")),
        ("/ask @codex_bot fix it", "group", False, (True, "fix it")),
        ("hey /ask fix it", "group", False, (False, "")),
        ("@codex_bot fix it", "channel", False, (False, "")),
        (
            "@codex_bot line one\n    indented code\nline three",
            "group",
            False,
            (True, "line one\n    indented code\nline three"),
        ),
    ],
)
def test_should_handle_without_entities(
    text: str, chat_type: str, to_bot: bool, expected: tuple[bool, str]
) -> None:
    """Private chats take every text; groups only mentions, replies to the bot and /ask."""
    assert should_handle(text, chat_type, BOT, to_bot, None) == expected


def test_should_handle_uses_telegram_entities_in_utf16() -> None:
    """Entity offsets count UTF-16 units, so an emoji before a mention shifts it by two."""
    text = "😀 @codex_bot fix 🙂 it"
    entities = [MessageEntity(MessageEntity.MENTION, offset=3, length=10)]
    assert should_handle(text, "group", "@codex_bot", False, entities) == (True, "😀 fix 🙂 it")
    as_dicts = [{"type": "mention", "offset": 3, "length": 10}]
    assert should_handle(text, "group", BOT, False, as_dicts) == (True, "😀 fix 🙂 it")


def test_should_handle_trusts_entities_over_the_text() -> None:
    """With entities given, a mention-looking word inside code is not a mention."""
    text = "see `@codex_bot` in the docs"
    code = [{"type": "code", "offset": 4, "length": 12}]
    assert should_handle(text, "group", BOT, False, code) == (False, "")
    command = [{"type": "bot_command", "offset": 0, "length": 4}]
    assert should_handle("/ask what", "group", BOT, False, command) == (True, "what")


# --- splitting ---------------------------------------------------------------------


def strip_label(chunk: str, number: int, total: int) -> str:
    """The chunk without its '(i/n)' label, checking the label is the expected one."""
    match = LABEL_RE.match(chunk)
    assert match is not None, chunk[:40]
    assert (int(match[1]), int(match[2])) == (number, total)
    return chunk[match.end() :]


def open_fence_after(text: str) -> str | None:
    """The marker of the code fence still open at the end of ``text``, per CommonMark."""
    marker: str | None = None
    for line in text.split("\n"):
        found = FENCE_LINE_RE.match(line)
        if found is None:
            continue
        if marker is None:
            if not (found[1][0] == "`" and "`" in found[2]):
                marker = found[1]
        elif found[1][0] == marker[0] and len(found[1]) >= len(marker) and not found[2].strip():
            marker = None
    return marker


def test_short_text_is_one_unlabelled_chunk() -> None:
    """Text that fits is sent unchanged; whitespace-only text is nothing to send."""
    assert split_message("hello") == ["hello"]
    assert split_message("x" * MESSAGE_LIMIT) == ["x" * MESSAGE_LIMIT]
    assert split_message("") == []
    assert split_message(" \n\t ") == []


def test_long_text_splits_on_lines_with_labels() -> None:
    """Lines are never broken when they fit; each chunk is labelled and under the limit."""
    lines = [f"line {n:03d} " + "word " * 10 for n in range(100)]
    chunks = split_message("\n".join(lines), 500)
    assert len(chunks) > 1
    rejoined = [strip_label(c, n, len(chunks)) for n, c in enumerate(chunks, 1)]
    assert "\n".join(rejoined) == "\n".join(lines)
    assert all(utf16_len(c) <= 500 for c in chunks)


def test_code_fence_is_closed_and_reopened_with_its_language() -> None:
    """A code block cut in two is closed, then reopened with its language, never left open."""
    code = "\n".join(f"print({n})  # step" for n in range(60))
    text = f"Here is the fix:\n\n```python\n{code}\n```\nDone."
    chunks = split_message(text, 300)
    bodies = [strip_label(c, n, len(chunks)) for n, c in enumerate(chunks, 1)]
    assert all(open_fence_after(body) is None for body in bodies)
    assert all(b.startswith("```python\n") for b in bodies[1:-1])
    assert bodies[0].endswith("\n```")
    assert bodies[-1].endswith("```\nDone.")


def test_code_block_that_fits_starts_a_fresh_chunk() -> None:
    """A code block that fits in one message is moved whole rather than cut."""
    prose = "\n".join("some prose " * 5 for _ in range(4))
    code = "```sh\n" + "\n".join(f"echo {n}" for n in range(20)) + "\n```"
    chunks = split_message(f"{prose}\n{code}", 300)
    assert len(chunks) == 2
    assert strip_label(chunks[1], 2, 2) == code


def test_tilde_and_long_fences() -> None:
    """~~~ fences and longer backtick fences (holding ``` inside) are repaired with their marker."""
    inner = "\n".join(["```", "nested", "```"] * 30)
    text = f"````md\n{inner}\n````"
    chunks = split_message(text, 200)
    bodies = [strip_label(c, n, len(chunks)) for n, c in enumerate(chunks, 1)]
    assert all(b.startswith("````md\n") for b in bodies[1:])
    assert all(open_fence_after(b) is None for b in bodies)
    tildes = "~~~\n" + "\n".join("x" * 30 for _ in range(20)) + "\n~~~"
    for body in split_message(tildes, 200):
        assert open_fence_after(LABEL_RE.sub("", body)) is None


def test_overlong_line_is_hard_split_at_spaces() -> None:
    """A line longer than a message is cut, at a space when there is one near the limit."""
    words = " ".join(f"w{n:04d}" for n in range(400))
    chunks = split_message(words, 200)
    bodies = [strip_label(c, n, len(chunks)) for n, c in enumerate(chunks, 1)]
    assert "".join(bodies) == words
    assert all(b.endswith(" ") for b in bodies[:-1])
    solid = "x" * 1000
    assert "".join(LABEL_RE.sub("", c) for c in split_message(solid, 200)) == solid


def test_overlong_line_inside_code_stays_code() -> None:
    """Pieces of an overlong line inside a code block each sit inside a repaired block."""
    text = "```\n" + "y" * 700 + "\n```"
    chunks = split_message(text, 200)
    for n, chunk in enumerate(chunks, 1):
        body = strip_label(chunk, n, len(chunks))
        assert body.startswith("```") and open_fence_after(body) is None


def test_overlong_fence_opening_line_still_balances() -> None:
    """An opening fence line longer than a message is cut, and its block still closes."""
    text = "```python " + "i" * 500 + "\nprint(1)\n```"
    chunks = split_message(text, 200)
    assert all(utf16_len(c) <= 200 for c in chunks)
    for n, chunk in enumerate(chunks, 1):
        assert open_fence_after(strip_label(chunk, n, len(chunks))) is None


def test_absurd_fence_is_split_without_losing_anything() -> None:
    """A 'fence' of hundreds of backticks cannot be reopened, but nothing is lost or too long."""
    text = "`" * 600 + "\nafter"
    chunks = split_message(text, 200)
    assert all(utf16_len(c) <= 200 for c in chunks)
    assert "".join(LABEL_RE.sub("", c) for c in chunks).replace("\n", "") == text.replace("\n", "")


def test_limit_counts_utf16_units() -> None:
    """Emoji outside the BMP count twice, as Telegram counts them."""
    text = "😀" * 300
    chunks = split_message(text, 200)
    assert all(utf16_len(c) <= 200 for c in chunks)
    assert "".join(LABEL_RE.sub("", c) for c in chunks) == text


def test_labels_grow_with_the_chunk_count() -> None:
    """More than nine chunks get two-digit labels, still within the limit."""
    chunks = split_message("\n".join("z" * 100 for _ in range(60)), 128)
    assert len(chunks) >= 10
    assert chunks[-1].startswith(f"({len(chunks)}/{len(chunks)})")
    assert all(utf16_len(c) <= 128 for c in chunks)


def test_split_refuses_a_tiny_limit() -> None:
    """A limit too small to hold a label and fence repair is a programming error."""
    with pytest.raises(ValueError, match="limit"):
        split_message("x" * 100, 20)


_plain_line = st.text(
    alphabet=st.characters(
        codec="utf-8", exclude_characters="\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
    ),
    max_size=120,
).filter(lambda line: FENCE_LINE_RE.match(line) is None)
_line = st.one_of(
    _plain_line,
    _plain_line,
    st.sampled_from(["```", "```python", "~~~", "````", "```js extra", "   ```"]),
    st.just(""),
    # Overlong lines; a run of three backticks mid-line could be cut into a fence.
    st.text(alphabet="ab 😀`", min_size=200, max_size=900).filter(lambda x: "```" not in x),
)


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(lines=st.lists(_line, max_size=60), limit=st.integers(128, 700))
def test_split_message_properties(lines: list[str], limit: int) -> None:
    """Every chunk fits, fences balance, labels count, and no content is lost or reordered."""
    text = "\n".join(lines)
    chunks = split_message(text, limit)
    if not text.strip():
        assert chunks == []
        return
    assert all(utf16_len(c) <= limit for c in chunks)
    assert all(c.strip() for c in chunks)
    if len(chunks) == 1 and utf16_len(text) <= limit:
        assert chunks == [text]
        return
    bodies = [
        strip_label(c, n, len(chunks)) if len(chunks) > 1 else c for n, c in enumerate(chunks, 1)
    ]
    assert all(open_fence_after(body) is None for body in bodies)

    def content(s: str) -> str:
        """Non-whitespace characters outside fence lines, the part splitting must keep."""
        kept = [line for line in s.split("\n") if FENCE_LINE_RE.match(line) is None]
        return re.sub(r"\s", "", "".join(kept))

    assert "".join(content(b) for b in bodies) == content(text)


@settings(max_examples=100, deadline=None, database=None)
@given(
    lines=st.lists(
        st.text(alphabet="abc xyz.-_*😀", min_size=1, max_size=60), min_size=1, max_size=80
    ).filter(lambda ls: all(line.strip() for line in ls)),
    limit=st.integers(128, 400),
)
def test_split_message_is_exact_on_line_boundaries(lines: list[str], limit: int) -> None:
    """Without code or overlong lines, chunks rejoined on newlines give back the text exactly."""
    text = "\n".join(lines)
    chunks = split_message(text, limit)
    bodies = (
        chunks
        if len(chunks) == 1
        else [strip_label(c, n, len(chunks)) for n, c in enumerate(chunks, 1)]
    )
    assert "\n".join(bodies) == text


# --- formatting --------------------------------------------------------------------


def test_render_plain_is_untouched() -> None:
    """Without a parse mode the text goes out exactly as codex wrote it."""
    assert render("**bold** a_b", "") == ("**bold** a_b", None)


def test_render_markdown_gives_entities_not_escapes() -> None:
    """MarkdownV2 mode converts Markdown to plain text plus entities, reserved chars intact."""
    text, entities = render("**Done.** Run `make test` (2 files) - ok!", "MarkdownV2")
    assert text == "Done. Run make test (2 files) - ok!"
    assert entities is not None
    kinds = {(e.type, text[e.offset : e.offset + e.length]) for e in entities}
    assert kinds == {("bold", "Done."), ("code", "make test")}


def test_render_code_block_keeps_its_language() -> None:
    """A fenced block becomes a pre entity with its language."""
    text, entities = render("```python\nprint(1)\n```", "MarkdownV2")
    assert text == "print(1)"
    assert entities is not None and entities[0].type == "pre"
    assert entities[0].language == "python"


def test_render_falls_back_to_plain_when_nothing_would_show() -> None:
    """A chunk whose rendering is empty is sent as written rather than dropped."""
    assert render("<!-- note -->", "MarkdownV2") == ("<!-- note -->", None)


def test_render_message_keeps_every_chunk_under_the_limit() -> None:
    """Long Markdown is split before conversion, and every converted chunk fits."""
    answer = "\n".join(f"- **item {n}**: `value_{n}` (ok)" for n in range(600))
    chunks = render_message(answer, "MarkdownV2")
    assert len(chunks) > 1
    assert all(utf16_len(c.text) <= MESSAGE_LIMIT and c.entities for c in chunks)
    assert chunks[0].text.startswith("(1/")


def test_render_message_splits_a_table_that_grew() -> None:
    """A table padded into columns can outgrow its chunk; it is split again after conversion."""
    long_cell = "x" * 120
    rows = "\n".join("| a | b |" for _ in range(300))
    table = f"| h | {long_cell} |\n|---|---|\n{rows}"
    assert utf16_len(table) <= MESSAGE_LIMIT
    chunks = render_message(table, "MarkdownV2")
    assert len(chunks) > 1
    assert all(utf16_len(c.text) <= MESSAGE_LIMIT for c in chunks)
    assert all(c.entities and c.entities[0].type == "pre" for c in chunks)


def test_render_message_plain() -> None:
    """Plain mode splits without touching the text."""
    assert render_message("a_b *c*", "") == [("a_b *c*", None)]
    assert render_message("   ", "MarkdownV2") == []


# --- texts the bot sends ----------------------------------------------------------


def test_session_key() -> None:
    """Each chat, topic and /new generation gets its own session."""
    assert session_key(-100, None, 0) == "telegram:-100:0:0"
    assert session_key(-100, 7, 2) == "telegram:-100:7:2"
    assert len({session_key(1, t, g) for t in (None, 5) for g in (0, 1)}) == 4


def test_help_text_lists_commands_and_ids() -> None:
    """Help explains how to address the bot and shows the ids for the allow lists."""
    text = help_text(42, -100, bot_username="codex_bot")
    assert "@codex_bot" in text and "42" in text and "-100" in text
    assert all(f"/{name}" in text for name, _ in BOT_COMMANDS)
    assert utf16_len(text) < MESSAGE_LIMIT


def test_status_text() -> None:
    """Status shows the state, the queue position, a one-line detail and the run id."""
    queued = status_text("queued", "", "run-1", position=2)
    assert queued.startswith("⏳ Queued (2 ahead)") and "run-1" in queued
    running = status_text("running", "exec: make test\n  in /repo", "run-1")
    assert "Working" in running and "exec: make test in /repo" in running
    assert len(status_text("running", "x" * 10_000, "run-1")) < 400
    assert "Some new state" in status_text("some_new_state", "", "run-1")


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        ("failed", {"code": "codex_exit", "message": "codex exited with 2"}, "codex exited with 2"),
        ("failed", "no executor", "no executor"),
        ("failed", None, "failed"),
        ("cancelled", None, "Cancelled"),
        ("timed_out", {"message": "after 1800 s"}, "Timed out"),
        ("rejected", {"code": "queue_full"}, "queue_full"),
    ],
)
def test_final_text_for_failures(status: str, error: object, expected: str) -> None:
    """Anything but success says what went wrong and names the run."""
    text = final_text(status, "partial", "run-9", error)  # type: ignore[arg-type]
    assert expected in text and "run-9" in text


def test_final_text_for_success() -> None:
    """Success is codex's answer as written; an empty answer still says something."""
    assert final_text("succeeded", "  **All good**\n", "run-1") == "**All good**"
    assert "without an answer" in final_text("succeeded", " ", "run-1")


def test_preview() -> None:
    """Preview collapses whitespace and cuts with an ellipsis, never past n."""
    assert preview("a\n b\t c", 50) == "a b c"
    cut = preview("word " * 100, 20)
    assert len(cut) <= 20 and cut.endswith("…")
    with pytest.raises(ValueError):
        preview("x", 0)


def test_document_for() -> None:
    """A long answer becomes a UTF-8 .md file named after its run."""
    name, data = document_for("# Résumé", "run/../42")
    assert name == "answer-run42.md"
    assert data == "# Résumé".encode()


# --- settings ------------------------------------------------------------------------


def test_settings_defaults() -> None:
    """Unconfigured by default, api.telegram.org, plain text, the documented pacing."""
    s = TelegramSettings(_env_file=None)  # type: ignore[call-arg]
    assert not s.configured
    assert s.api_base_url == DEFAULT_API_BASE_URL
    assert s.file_base_url == "https://api.telegram.org/file/bot"
    assert (s.parse_mode, s.status_delay_s, s.status_edit_interval_s) == ("", 2.0, 3.0)
    assert s.document_threshold_chars == 12_000
    assert s.allowed_chats == [] and s.allowed_users == []


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lists split on commas, parse modes fold case, a bare server root gets /bot."""
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "123456:ABC-def_ghi")
    monkeypatch.setenv("TELEGRAM_ALLOWED_CHATS", "-100123, *")
    monkeypatch.setenv("TELEGRAM_ALLOWED_USERS", "42,,7")
    monkeypatch.setenv("TELEGRAM_PARSE_MODE", "markdownv2")
    monkeypatch.setenv("TELEGRAM_API_BASE_URL", "http://127.0.0.1:8081/")
    s = TelegramSettings(_env_file=None)  # type: ignore[call-arg]
    assert s.configured
    assert s.bot_token.get_secret_value() == "123456:ABC-def_ghi"
    assert s.allowed_chats == ["-100123", "*"] and s.allowed_users == ["42", "7"]
    assert s.parse_mode == "MarkdownV2"
    assert s.api_base_url == "http://127.0.0.1:8081/bot"
    assert s.file_base_url == "http://127.0.0.1:8081/file/bot"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TELEGRAM_BOT_TOKEN", "not-a-token-secret"),
        ("TELEGRAM_ALLOWED_USERS", "@alice"),
        ("TELEGRAM_PARSE_MODE", "HTML"),
        ("TELEGRAM_API_BASE_URL", "api.telegram.org"),
        ("TELEGRAM_STATUS_EDIT_INTERVAL_S", "0"),
    ],
)
def test_settings_refuse_mistakes(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    """Malformed values fail at start-up, and a bad token is never echoed back."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as caught:
        TelegramSettings(_env_file=None)  # type: ignore[call-arg]
    assert name in str(caught.value)
    assert "not-a-token-secret" not in str(caught.value)


def test_a_status_with_the_answer_fits_one_message_even_in_emoji() -> None:
    """The answer's end is cut until the status fits 4096 UTF-16 units."""
    status = convert.status_text("running", "", "run_1")
    plain = convert.status_with_answer(status, "short answer")
    emoji = convert.status_with_answer(status, "😀" * 3000)
    assert plain == f"{status}\n\nshort answer"
    assert emoji.startswith(status) and emoji.endswith("😀")
    assert convert.utf16_len(emoji) <= convert.MESSAGE_LIMIT
