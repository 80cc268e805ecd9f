"""The pure pieces the bridge adds to convert.py: targets, reply plans, errors, texts."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridges.slack.convert import (
    MESSAGE_LIMIT,
    REPLY_EVENT_TYPE,
    FilePart,
    Target,
    TextPart,
    already_posted,
    answer_filename,
    cancel_text,
    closing_reaction,
    closing_status_text,
    elapsed_since,
    find_status,
    hub_error_text,
    is_direct,
    may_succeed_later,
    reply_metadata,
    reply_parts,
    status_metadata,
    undeliverable_text,
)

# ----------------------------------------------------------------- targets


def test_a_target_round_trips_through_the_origin() -> None:
    """Everything a reply needs survives the trip through the run's origin."""
    target = Target("T1", "C1", "100.1", "100.5", "U1")
    origin = target.to_origin()
    assert origin == {
        "team": "T1",
        "channel": "C1",
        "thread_ts": "100.1",
        "ts": "100.5",
        "user": "U1",
    }
    assert Target.from_origin({**origin, "source": "slack", "platform": "slack"}) == target
    assert target.session_key == "slack:T1:C1:100.1"


def test_a_target_of_an_event_follows_its_thread() -> None:
    """A top-level message starts its own thread; a reply stays in its thread."""
    top = {"channel": "C1", "ts": "1.0", "user": "U1", "team": "T9"}
    reply = {**top, "ts": "2.0", "thread_ts": "1.0"}
    assert Target.of_event(top) == Target("T9", "C1", "1.0", "1.0", "U1")
    assert Target.of_event(reply, "T1") == Target("T1", "C1", "1.0", "2.0", "U1")


@pytest.mark.parametrize("origin", [{}, {"channel": "C1"}, {"ts": "1.0"}, {"source": "http"}])
def test_an_origin_without_a_slack_message_has_no_target(origin: dict[str, Any]) -> None:
    """A reply whose origin names no channel and thread cannot be posted anywhere."""
    assert Target.from_origin(origin) is None


def test_an_origin_with_only_channel_and_ts_is_enough() -> None:
    """A request that started its own thread needs nothing more to be answered."""
    target = Target.from_origin({"channel": "C1", "ts": "1.0"})
    assert target == Target("", "C1", "1.0", "1.0", "")


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"channel": "D1", "channel_type": "im"}, True),
        ({"channel": "D1"}, True),
        ({"channel": "C1", "channel_type": "channel"}, False),
        ({"channel": "G1", "channel_type": "mpim"}, False),
    ],
)
def test_direct_messages_are_recognised(event: dict[str, Any], expected: bool) -> None:
    """A DM is `im` (app_mention events carry no channel_type: D... channels are DMs)."""
    assert is_direct(event) is expected


# ----------------------------------------------------------------- reply plans


def test_a_short_answer_is_one_message() -> None:
    """A short successful answer is posted as itself, escaped for mrkdwn."""
    assert reply_parts("r1", "succeeded", "a < b & c") == [TextPart("a &lt; b &amp; c")]


def test_a_long_answer_is_split_under_the_limit() -> None:
    """Over one message, the answer becomes labelled parts within the limit."""
    answer = "\n".join(f"line {i} " + "w" * 50 for i in range(200))
    parts = reply_parts("r1", "succeeded", answer)
    assert len(parts) > 1
    for i, part in enumerate(parts, 1):
        assert isinstance(part, TextPart) and len(part.text) <= MESSAGE_LIMIT
        assert part.text.startswith(f"({i}/{len(parts)})\n")


def test_an_answer_over_the_threshold_becomes_a_file_with_a_preview() -> None:
    """Past the threshold the raw answer goes in a file; the comment is a short preview."""
    answer = "intro & more\n" + "x" * 200
    [part] = reply_parts("r1", "succeeded", answer, file_threshold=100, preview_chars=80)
    assert isinstance(part, FilePart)
    assert part.content == answer + "\n" and part.filename == answer_filename("r1")
    assert part.comment.startswith("intro &amp; more") and "213 characters" in part.comment


def test_a_failure_is_one_message_with_the_reason_and_run_id() -> None:
    """A failed run is told with its run id and error, however long the answer would be."""
    [part] = reply_parts(
        "r7", "failed", "x" * 50_000, {"code": "codex_failed", "message": "boom"}, elapsed_s=3
    )
    assert isinstance(part, TextPart)
    assert part.text == ":x: Run `r7` failed after 3 s: boom (codex_failed)"


def test_an_empty_answer_still_says_something() -> None:
    """A run that succeeded without a written answer says so rather than posting nothing."""
    [part] = reply_parts("r1", "succeeded", "   \n ")
    assert isinstance(part, TextPart) and "without a written answer" in part.text


# ----------------------------------------------------------------- finding earlier parts


def _message(meta: Any = None, files: Any = None) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "message", "text": "x", "ts": "1.0"}
    if meta is not None:
        message["metadata"] = meta
    if files is not None:
        message["files"] = files
    return message


def test_parts_posted_before_are_found_by_their_metadata() -> None:
    """Parts carrying this run's metadata count; other runs and other splits do not."""
    parts: list[Any] = [TextPart("a"), TextPart("b"), TextPart("c")]
    thread = [
        _message(),
        _message(reply_metadata("r1", 0, 3)),
        _message(reply_metadata("r1", 2, 3)),
        _message(reply_metadata("r2", 1, 3)),
        _message(reply_metadata("r1", 1, 4)),
        _message({"event_type": "something_else", "event_payload": {"run_id": "r1"}}),
        _message({"event_type": REPLY_EVENT_TYPE, "event_payload": "garbage"}),
    ]
    assert already_posted(thread, "r1", parts) == {0, 2}


def test_a_file_posted_before_is_found_by_its_name() -> None:
    """A long answer's file is recognised by its run-specific file name."""
    parts: list[Any] = [FilePart("c", answer_filename("r1"), "t", "p")]
    assert already_posted([_message(files=[{"name": answer_filename("r1")}])], "r1", parts) == {0}
    assert already_posted([_message(files=[{"name": answer_filename("r2")}])], "r1", parts) == set()


@given(st.integers(1, 20), st.data())
def test_metadata_names_each_part_once(count: int, data: st.DataObject) -> None:
    """Whatever subset of parts was posted, exactly that subset is found again."""
    posted = data.draw(st.sets(st.integers(0, count - 1)))
    parts: list[Any] = [TextPart(str(i)) for i in range(count)]
    thread = [_message(reply_metadata("run", i, count)) for i in sorted(posted)]
    assert already_posted(thread, "run", parts) == posted


def test_the_status_message_is_found_by_the_request_it_is_about() -> None:
    """The status message names its request in its metadata; others are passed over."""
    thread = [
        {"ts": "1.0", "text": "the request"},
        {"ts": "1.1", "metadata": status_metadata("0.9")},
        {"ts": "1.2", "metadata": reply_metadata("r1", 0, 1)},
        {"ts": "1.3", "text": "Working", "metadata": status_metadata("1.0")},
    ]
    assert find_status(thread, "1.0") == ("1.3", "Working")
    assert find_status(thread, "2.0") is None
    assert find_status([], "1.0") is None


# ----------------------------------------------------------------- errors and texts


@pytest.mark.parametrize(
    ("error", "status", "expected"),
    [
        ("ratelimited", 429, True),
        ("internal_error", 500, True),
        ("", 503, True),
        ("service_unavailable", 200, True),
        ("invalid_auth", 200, True),
        ("token_revoked", 200, True),
        ("channel_not_found", 200, False),
        ("is_archived", 200, False),
        ("not_in_channel", 200, False),
        ("msg_too_long", 200, False),
    ],
)
def test_only_errors_that_may_pass_are_tried_again(error: str, status: int, expected: bool) -> None:
    """Rate limits, outages and fixable credentials retry; a gone channel never will."""
    assert may_succeed_later(error, status) is expected


@pytest.mark.parametrize(
    ("status", "elapsed", "expected"),
    [
        ("succeeded", 4.24, ":white_check_mark: Done in 4.2 s · run `r1`"),
        ("failed", 42.0, ":x: Failed after 42 s · run `r1`"),
        ("timed_out", 3725.0, ":alarm_clock: Timed out after 62 min 5 s · run `r1`"),
        ("cancelled", None, ":no_entry_sign: Cancelled · run `r1`"),
    ],
)
def test_the_closing_status_names_the_outcome_time_and_run(
    status: str, elapsed: float | None, expected: str
) -> None:
    """The status message ends with the outcome, how long it took and the run id."""
    assert closing_status_text(status, "r1", elapsed) == expected


def test_success_gets_a_check_mark_and_anything_else_a_cross() -> None:
    """Only a succeeded run is marked done."""
    assert closing_reaction("succeeded") == "white_check_mark"
    assert {closing_reaction(s) for s in ("failed", "cancelled", "timed_out", "rejected")} == {"x"}


def test_elapsed_time_comes_from_the_request_timestamp() -> None:
    """Slack timestamps are seconds since the epoch; a bad or future one gives nothing."""
    assert elapsed_since("1700000000.000100", 1700000002.5) == pytest.approx(2.4999, abs=1e-3)
    assert elapsed_since("", 1.0) is None
    assert elapsed_since("1700000010.0", 1700000000.0) is None


def test_cancel_says_what_it_cancelled_or_that_nothing_runs() -> None:
    """The answer to `cancel` names the run, or says the thread is idle."""
    assert cancel_text(["run_1"]) == ":octagonal_sign: Cancelling run `run_1`."
    assert "Nothing is running" in cancel_text([])


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("queue_full", "Too much work"),
        ("hub_unreachable", "cannot reach"),
        ("hub_closing", "restarting"),
        ("pending_full", "was not kept"),
        ("pending_expired", "never sent"),
        ("bridge_stopping", "was not sent"),
        ("store_unavailable", "disk is full"),
        ("bad_request", "did not take the request: prompt &lt;empty&gt;"),
    ],
)
def test_hub_refusals_are_explained(code: str, expected: str) -> None:
    """Each reason the hub gives for not starting a run reads as advice, escaped."""
    assert expected in hub_error_text(code, "prompt <empty>")


def test_a_refused_answer_is_explained_with_the_run_id() -> None:
    """When Slack will not take an answer, the thread hears why and which run to look up."""
    text = undeliverable_text("run_9", "part 1/1: msg_blocked (HTTP 200)")
    assert text.startswith(":x: Slack refused the answer of run `run_9`")
    assert "msg_blocked" in text and "run history" in text
