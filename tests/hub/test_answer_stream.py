"""The answer as it is written, folded for the hub's readers (hub.answer_stream)."""

from __future__ import annotations

from typing import Any

from hub.answer_stream import AnswerSoFar, AnswerStream


def delta(text: str, item: str = "m1", **extra: Any) -> dict[str, Any]:
    return {"kind": "answer_delta", "item_id": item, "delta": text, **extra}


def test_the_stream_sends_each_delta_and_at_the_end_nothing_the_deltas_had() -> None:
    """Deltas go out as they come; the end adds only what they lacked."""
    stream = AnswerStream()
    sent = [stream.feed(delta("Hello, ")), stream.feed(delta("wor"))]
    sent.append(stream.rest("Hello, world."))
    assert sent == ["Hello, ", "wor", "ld."]
    assert "".join(sent) == "Hello, world."


def test_commentary_and_other_events_are_not_content() -> None:
    """Narration between tool calls and events of other kinds send nothing."""
    stream = AnswerStream()
    assert stream.feed(delta("Let me look.", phase="commentary")) == ""
    assert stream.feed({"kind": "codex", "data": {"type": "turn.started"}}) == ""
    assert stream.feed(delta("The answer.", item="m2", phase="final_answer")) == "The answer."
    assert stream.rest("The answer.") == ""


def test_a_message_that_was_not_the_last_is_set_off_from_the_next() -> None:
    """A second message starts after a blank line; the end completes the last one."""
    stream = AnswerStream()
    first = stream.feed(delta("I will check."))
    second = stream.feed(delta("All", item="m2"))
    assert (first, second, stream.rest("All good.")) == ("I will check.", "\n\nAll", " good.")


def test_without_deltas_the_end_sends_the_whole_answer() -> None:
    """The exec engine sends no deltas: the answer comes whole at the end."""
    assert AnswerStream().rest("the answer") == "the answer"


def test_an_answer_that_differs_from_the_deltas_comes_whole_after_them() -> None:
    """Nothing sent is taken back: an answer not continuing the deltas follows them whole."""
    stream = AnswerStream()
    stream.feed(delta("draft"))
    assert stream.rest("final") == "\n\nfinal"


def test_the_answer_so_far_is_the_message_being_written_and_its_tail() -> None:
    """A new message starts the text over; the tail keeps the end, marked when cut."""
    so_far = AnswerSoFar()
    assert so_far.feed(delta("abc")) and so_far.feed(delta("def"))
    assert so_far.text == "abcdef" and so_far.tail(4) == "…def"
    assert not so_far.feed({"kind": "note", "message": "x"})
    assert so_far.feed(delta("new", item="m2")) and so_far.text == "new"
