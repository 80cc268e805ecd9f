"""The pure Slack conversions: mentions, access, escaping, splitting and the bridge's texts."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridges.slack.convert import (
    MESSAGE_LIMIT,
    check_access,
    escape_mrkdwn,
    final_text,
    is_allowed,
    is_cancel_command,
    is_user_message,
    preview,
    refusal_text,
    session_key,
    split_message,
    status_text,
    status_with_answer,
    strip_mention,
    thread_ts_of,
)

BOT = "UBOT"
FENCE = "```"

# ----------------------------------------------------------------- mentions and commands


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<@UBOT> do X", "do X"),
        ("<@UBOT>: do X", "do X"),
        ("<@UBOT|codex>, do X", "do X"),
        ("  <@UBOT>   do X  ", "do X"),
        ("hey <@UBOT> do X", "hey do X"),
        ("do X <@UBOT>", "do X"),
        ("<@UBOT> ask <@U0ALICE> first", "ask <@U0ALICE> first"),
        ("<@UBOT> line one\n  indented\nline three", "line one\n  indented\nline three"),
        ("<@UBOT>", ""),
        ("<@UBOTTOM> not me", "<@UBOTTOM> not me"),
    ],
)
def test_strip_mention_removes_only_the_bot(text: str, expected: str) -> None:
    """Only the bot's own mention (and a following colon or comma) is removed."""
    assert strip_mention(text, BOT) == expected


def test_strip_mention_without_a_bot_id_only_trims() -> None:
    """With no known bot id the text is just trimmed."""
    assert strip_mention(" <@UBOT> hi ", "") == "<@UBOT> hi"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cancel", True),
        ("Stop", True),
        ("  CANCEL! ", True),
        ("stop.", True),
        ("cancel the deploy", False),
        ("please stop", False),
        ("", False),
        ("stopp", False),
    ],
)
def test_cancel_command(text: str, expected: bool) -> None:
    """Only a bare "cancel" or "stop" is a cancel command."""
    assert is_cancel_command(text) is expected


def test_cancel_command_after_mention_stripping() -> None:
    """A mention followed by "stop" is a cancel once the mention is stripped."""
    assert is_cancel_command(strip_mention("<@UBOT> stop", BOT))


def test_session_key_and_thread_of_an_event() -> None:
    """A thread's session key uses its parent ts; a top-level message starts its own thread."""
    reply = {"ts": "2.0", "thread_ts": "1.0"}
    top = {"ts": "3.0"}
    assert session_key("T1", "C1", thread_ts_of(reply)) == "slack:T1:C1:1.0"
    assert session_key("T1", "C1", thread_ts_of(top)) == "slack:T1:C1:3.0"


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"type": "message", "user": "U1", "text": "hi"}, True),
        ({"type": "message", "user": "U1", "subtype": "file_share"}, True),
        ({"type": "message", "user": "U1", "subtype": "thread_broadcast"}, True),
        ({"type": "message", "user": "U1", "subtype": "message_changed"}, False),
        ({"type": "message", "user": "U1", "subtype": "message_deleted"}, False),
        ({"type": "message", "user": "U1", "subtype": "channel_join"}, False),
        ({"type": "message", "subtype": "bot_message", "bot_id": "B2"}, False),
        ({"type": "message", "user": "U2", "bot_id": "B2"}, False),
        ({"type": "message", "user": BOT}, False),
        ({"type": "message", "text": "no user"}, False),
    ],
)
def test_is_user_message(event: dict[str, Any], expected: bool) -> None:
    """Edits, joins, bot posts and the bot's own messages are not requests."""
    assert is_user_message(event, BOT) is expected


# ----------------------------------------------------------------- access


@pytest.mark.parametrize(
    ("users", "channels", "is_dm", "expected"),
    [
        ([], [], False, "user"),
        ([], [], True, "user"),
        ([], ["*"], False, "user"),
        (["*"], [], False, "channel"),
        (["*"], [], True, None),
        (["U1"], ["C1"], False, None),
        (["U1"], ["C2"], False, "channel"),
        (["U2"], ["C1"], False, "user"),
        (["U2", "U1"], ["*"], False, None),
        (["U1"], [], True, None),
        (["U2"], ["*"], True, "user"),
    ],
)
def test_access_lists_fail_closed(
    users: list[str], channels: list[str], is_dm: bool, expected: str | None
) -> None:
    """Empty lists let nobody in, `*` lets everyone in, channels need both lists, DMs the user's."""
    assert check_access("U1", "C1", users, channels, is_dm) == expected
    assert is_allowed("U1", "C1", users, channels, is_dm) is (expected is None)


def test_missing_user_id_is_never_allowed() -> None:
    """An event without a user id is refused even when everyone is allowed."""
    assert not is_allowed("", "C1", ["*"], ["*"], is_dm=False)


def test_refusal_names_the_id_and_the_setting() -> None:
    """The refusal tells the user their id and which setting to add it to."""
    user = refusal_text("U0ALICE", "C0DEV", "user")
    channel = refusal_text("U0ALICE", "C0DEV", "channel")
    assert "`U0ALICE`" in user and "SLACK_ALLOWED_USERS" in user
    assert "`C0DEV`" in channel and "SLACK_ALLOWED_CHANNELS" in channel
    assert "<" not in refusal_text("<U>", "C", "user")


# ----------------------------------------------------------------- escaping and texts


def test_escape_mrkdwn_escapes_exactly_three_characters() -> None:
    """Only &, < and > are escaped (& first); Markdown-looking characters pass."""
    assert escape_mrkdwn("a & <b> *c* _d_ `e` ~f~") == "a &amp; &lt;b&gt; *c* _d_ `e` ~f~"
    assert escape_mrkdwn("&lt;") == "&amp;lt;"


def test_status_text_shows_state_position_detail_and_run() -> None:
    """A status line names the state, the queue position, a one-line detail and the run id."""
    queued = status_text("queued", "", "r-1", position=3)
    running = status_text("running", "reading\n   <files>", "r-1")
    assert "Sharpening" in status_text("optimizing", "", "r-1")
    assert "Queued" in queued and "position 3" in queued and "`r-1`" in queued
    assert "Working" in running and "reading &lt;files&gt;" in running and "\n" not in running
    assert "some new state" in status_text("some_new_state", "", "r-2")


def test_status_text_cuts_a_long_detail() -> None:
    """A long detail is cut to one short line."""
    assert len(status_text("running", "x" * 5000, "r")) < 300


def test_final_text_success_is_the_escaped_answer() -> None:
    """On success the message is the answer, escaped for mrkdwn."""
    assert final_text("r-1", "succeeded", answer="  use a < b  ") == "use a &lt; b"
    assert "without a written answer" in final_text("r-1", "succeeded", answer="  ")


def test_final_text_failure_says_what_and_which_run() -> None:
    """On failure the message says it failed, why, and gives the run id."""
    text = final_text("r-9", "failed", error="codex exited with 1:\n<boom>", elapsed_s=12.4)
    assert text.startswith(":x:") and "`r-9`" in text and "failed after 12 s" in text
    assert "codex exited with 1: &lt;boom&gt;" in text
    assert "no reason" in final_text("r-9", "failed")


def test_final_text_reads_the_hubs_error_object() -> None:
    """The hub's `{"code", "message"}` error is shown as message and code."""
    text = final_text("r-4", "failed", error={"code": "codex_exit", "message": "exit 2"})
    assert "exit 2 (codex_exit)" in text
    assert "only_code" in final_text("r-4", "failed", error={"code": "only_code"})


@pytest.mark.parametrize(
    ("status", "words"),
    [
        ("cancelled", "was cancelled"),
        ("timed_out", "timed out"),
        ("rejected", "was rejected"),
        ("exploded", "ended (exploded)"),
    ],
)
def test_final_text_other_endings_name_the_run(status: str, words: str) -> None:
    """Cancelled, timed-out, rejected and unknown endings each say so with the run id."""
    text = final_text("r-3", status, error=None)
    assert words in text and "`r-3`" in text


def test_preview_short_text_is_unchanged() -> None:
    """A text that fits is its own preview."""
    assert preview("short answer", 100) == "short answer"


def test_preview_cuts_at_a_line_and_marks_it() -> None:
    """A long text is cut at a line boundary and marked with an ellipsis."""
    text = "\n".join(f"line {i}" for i in range(100))
    out = preview(text, 50)
    assert len(out) <= 50 and out.endswith("…")
    assert text.startswith(out[:-1])
    assert out[:-1].split("\n")[-1] in text.split("\n")


def test_preview_closes_a_fence_it_cuts() -> None:
    """A preview cut inside a code block closes the block."""
    text = "Here:\n```python\n" + "\n".join(f"x = {i}" for i in range(100)) + "\n```\n"
    out = preview(text, 60)
    assert len(out) <= 60 and out.endswith(FENCE) and out.count(FENCE) == 2


@settings(max_examples=200, deadline=None, database=None, derandomize=True)
@given(text=st.text(alphabet="ab `\n&<>", max_size=400), n=st.integers(16, 200))
def test_preview_always_fits_and_balances(text: str, n: int) -> None:
    """Whatever the text, a preview fits in n characters and leaves no fence open."""
    out = preview(text, n)
    assert len(out) <= n
    assert out.count(FENCE) % 2 == 0


# ----------------------------------------------------------------- split_message


LABEL = re.compile(r"\((\d+)/(\d+)\)\n")


def _open(text: str) -> bool:
    return text.count(FENCE) % 2 == 1


def _bodies(text: str, cursor: int, chunk: str) -> list[int]:
    """The ends in `text` this chunk can stand for when it starts at `cursor`."""
    if _open(text[:cursor]):
        if not chunk.startswith(FENCE):
            return []  # a fence open at the cut must be reopened
        chunk = chunk[chunk.index("\n") + 1 :]
    bodies = [chunk]
    if chunk.endswith(FENCE):
        bodies += [chunk[: -len(FENCE)], chunk[: -len("\n" + FENCE)]]
    ends = []
    for body in bodies:
        end = cursor + len(body)
        repair = ""
        if _open(text[:end]):
            repair = FENCE if body.endswith("\n") else "\n" + FENCE
        if body and text.startswith(body, cursor) and chunk[len(body) :] == repair:
            ends.append(end)
    return ends


def reassembles(text: str, chunks: list[str]) -> bool:
    """True when the chunks, labels and fence repairs taken off, spell out `text` exactly.

    A chunk can be read more than one way (a repaired "```" may also be the text's own),
    so every reading is tried.
    """
    n = len(chunks)
    if n > 1:
        for i, chunk in enumerate(chunks, 1):
            assert chunk.startswith(f"({i}/{n})\n"), chunk[:20]
        chunks = [c[len(f"({i}/{n})\n") :] for i, c in enumerate(chunks, 1)]
    if not text:
        return chunks == [""]
    cursors = {0}
    for chunk in chunks:
        cursors = {end for cursor in cursors for end in _bodies(text, cursor, chunk)}
    return len(text) in cursors


def lines_strategy() -> st.SearchStrategy[str]:
    word = st.text(alphabet="abc <>&`", max_size=30)
    fence = st.sampled_from(["```", "```python", "```js", "  ```", "``` ", "````", "x ```y"])
    long_line = st.builds(
        lambda c, k: c * k, st.sampled_from(["a", "ab ", "`", "&amp;"]), st.integers(40, 400)
    )
    return st.lists(st.one_of(word, fence, long_line), max_size=60).map("\n".join)


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(text=lines_strategy(), limit=st.integers(64, 400), trailing_newline=st.booleans())
def test_split_message_properties(text: str, limit: int, trailing_newline: bool) -> None:
    """Chunks fit the limit, keep fences balanced, are labelled only when several, and
    reassemble to the original text once labels and fence repairs are taken off."""
    text += "\n" if trailing_newline else ""
    chunks = split_message(text, limit)
    assert chunks
    assert all(len(c) <= limit for c in chunks)
    assert all(c.count(FENCE) % 2 == 0 for c in chunks)
    if len(chunks) == 1:
        assert not LABEL.match(chunks[0]) or LABEL.match(text)
    assert reassembles(text, chunks)


@settings(max_examples=100, deadline=None, database=None, derandomize=True)
@given(
    lines=st.lists(st.text(alphabet="abc xyz", min_size=1, max_size=40), min_size=1, max_size=80),
    limit=st.integers(100, 500),
)
def test_split_message_cuts_only_between_lines_when_they_fit(lines: list[str], limit: int) -> None:
    """When every line fits in a message, no line is ever cut in two."""
    text = "\n".join(lines)
    chunks = split_message(text, limit)
    bodies = [LABEL.sub("", c, count=1) if len(chunks) > 1 else c for c in chunks]
    assert all(b.endswith("\n") for b in bodies[:-1])
    assert [line for b in bodies for line in b.split("\n") if line] == [ln for ln in lines if ln]


def test_short_text_is_one_unlabelled_message() -> None:
    """Text within the limit comes back as is, without a label."""
    assert split_message("hello") == ["hello"]
    assert split_message("x" * MESSAGE_LIMIT) == ["x" * MESSAGE_LIMIT]
    assert split_message("") == [""]


def test_one_character_over_makes_two_labelled_messages() -> None:
    """Going over the limit splits into labelled parts that each fit."""
    text = "\n".join(["y" * 99] * 40)  # 3999 characters
    chunks = split_message(text)
    assert len(chunks) == 2
    assert chunks[0].startswith("(1/2)\n") and chunks[1].startswith("(2/2)\n")
    assert all(len(c) <= MESSAGE_LIMIT for c in chunks)


def test_code_fence_is_closed_and_reopened_with_its_language() -> None:
    """A code block cut in two is closed in the first part and reopened, language kept."""
    code = "\n".join(f"print({i})" for i in range(60))
    text = f"Intro\n```python\n{code}\n```\nOutro"
    chunks = split_message(text, 200)
    assert len(chunks) > 2
    for chunk in chunks[1:-1]:
        body = LABEL.sub("", chunk, count=1)
        assert body.startswith("```python\n") and body.endswith("\n```")
    assert chunks[-1].endswith("Outro")


def test_a_fence_the_text_leaves_open_is_closed() -> None:
    """An answer that forgets its closing fence still renders as code."""
    assert split_message("```\ncode") == ["```\ncode\n```"]


def test_overlong_line_is_cut_after_a_space() -> None:
    """A paragraph longer than a message is cut after a space, not mid-word."""
    text = " ".join(f"word{i:03d}" for i in range(100))
    chunks = split_message(text, 100)
    bodies = [LABEL.sub("", c, count=1) for c in chunks]
    assert all(b.endswith(" ") for b in bodies[:-1])
    assert "".join(bodies) == text


def test_overlong_line_without_spaces_is_hard_cut() -> None:
    """A line with nowhere to break is still cut to fit."""
    chunks = split_message("z" * 1000, 100)
    assert all(len(c) <= 100 for c in chunks)
    assert "".join(LABEL.sub("", c, count=1) for c in chunks) == "z" * 1000


def test_escaped_entities_are_never_cut() -> None:
    """An `&amp;` from escaping stays whole across a hard cut."""
    text = escape_mrkdwn("&" * 500)
    for chunk in split_message(text, 97):
        body = LABEL.sub("", chunk, count=1)
        assert re.fullmatch(r"(&amp;)+", body), body


def test_many_parts_get_wider_labels_and_still_fit() -> None:
    """With ten or more parts the labels widen and every part still fits."""
    text = "\n".join(f"{i:04d} " + "q" * 50 for i in range(600))
    chunks = split_message(text, 200)
    assert len(chunks) >= 100
    assert chunks[0].startswith(f"(1/{len(chunks)})\n")
    assert all(len(c) <= 200 for c in chunks)
    assert reassembles(text, chunks)


def test_tiny_limit_is_refused() -> None:
    """A limit too small for a label and a reopened fence is an error."""
    with pytest.raises(ValueError):
        split_message("x" * 100, 10)


def test_the_status_with_the_answer_escapes_it_and_keeps_its_end() -> None:
    """The answer being written is escaped for mrkdwn and cut to its last 2500 characters."""
    status = status_text("running", "", "r1")
    assert status_with_answer(status, "a <b> & c") == f"{status}\n\na &lt;b&gt; &amp; c"
    long = status_with_answer(status, "x" * 5000 + "END")
    assert long.endswith("xEND") and len(long) == len(status) + 2 + 2500
