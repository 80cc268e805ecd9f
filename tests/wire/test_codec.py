"""The wire codec: every frame round-trips, batches keep to their limits, bad frames are
answered one by one, and a frame's dump is the exact shape that goes on the wire."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.wire.strategies import DIRECTIONS, frames, frames_of
from wire import (
    BATCH_MAX_BYTES,
    BATCH_MAX_FRAMES,
    FRAME_MODELS,
    HELLO,
    AssignFrame,
    DeliverFrame,
    ErrorCode,
    ErrorFrame,
    EventFrame,
    Hello,
    ResultAckFrame,
    StateFrame,
    WelcomeFrame,
    batch,
    decode,
    encode,
    encode_frame,
    error_frame,
)
from wire.codec import TOO_DEEP, UNSTORABLE

DIRECTION_IDS = [f"{sender}:{role}" for sender, role in DIRECTIONS]


def test_every_frame_model_travels_in_some_direction() -> None:
    """No frame model is left out of the unions the codec decodes."""
    carried = {model for models in DIRECTIONS.values() for model in models}
    assert carried == set(FRAME_MODELS)


@pytest.mark.parametrize(("sender", "role"), list(DIRECTIONS), ids=DIRECTION_IDS)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_a_frame_round_trips_through_the_codec(sender: str, role: Any, data: Any) -> None:
    """encode -> decode gives back an equal model, with nothing refused."""
    frame = data.draw(frames(sender, role))
    (message,) = encode([frame])
    decoded = decode(message, role, sender)  # type: ignore[arg-type]
    assert decoded.errors == []
    assert decoded.frames == [frame]
    assert decoded.frames[0].dump() == frame.dump()


@settings(max_examples=100, deadline=None)
@given(hello=frames_of(Hello))
def test_a_hello_round_trips(hello: Hello) -> None:
    """The hello, kept apart from the unions, round-trips through its adapter."""
    assert HELLO.validate_json(encode_frame(hello)) == hello


@pytest.mark.parametrize(("sender", "role"), list(DIRECTIONS), ids=DIRECTION_IDS)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_a_batch_round_trips_in_order(sender: str, role: Any, data: Any) -> None:
    """Several frames go as one array and come back in order."""
    sent = data.draw(st.lists(frames(sender, role), min_size=2, max_size=12))
    messages = encode(sent)
    assert len(messages) == 1 and messages[0].startswith("[")
    decoded = decode(messages[0], role, sender)  # type: ignore[arg-type]
    assert decoded.errors == [] and decoded.frames == sent


@settings(max_examples=30, deadline=None)
@given(
    count=st.integers(min_value=1, max_value=3 * BATCH_MAX_FRAMES),
    size=st.sampled_from([0, 1000, 100_000, 400_000]),
)
def test_batches_split_at_the_frame_and_byte_limits(count: int, size: int) -> None:
    """No message holds more than BATCH_MAX_FRAMES frames or (unless alone) more than
    BATCH_MAX_BYTES bytes; together they hold every frame, in order."""
    sent = [
        EventFrame(run_id="r", seq=n + 1, event={"kind": "codex", "pad": "x" * size})
        for n in range(count)
    ]
    messages = encode(sent)
    got = []
    for message in messages:
        decoded = decode(message, "executor")
        assert decoded.errors == []
        assert len(decoded.frames) <= BATCH_MAX_FRAMES
        if len(decoded.frames) > 1:
            assert len(message) <= BATCH_MAX_BYTES
        got.extend(decoded.frames)
    assert got == sent
    assert len(messages) >= -(-count // BATCH_MAX_FRAMES)


def test_a_frame_too_big_to_share_a_message_goes_alone() -> None:
    big = json.dumps({"text": "x" * BATCH_MAX_BYTES})
    assert list(batch(['{"n":0}', big, '{"n":1}'])) == ['{"n":0}', big, '{"n":1}']


def test_a_lone_frame_goes_as_it_is_and_queued_ones_as_one_array() -> None:
    assert list(batch(['{"a":1}'])) == ['{"a":1}']
    assert list(batch(['{"n":0}', '{"n":1}'])) == ['[{"n":0},{"n":1}]']
    assert list(batch([])) == []


def test_an_error_quoting_a_lone_surrogate_is_still_encoded() -> None:
    """orjson refuses a lone surrogate; the codec falls back to json for that frame."""
    message = encode_frame(error_frame(ErrorCode.BAD_FRAME, "bad", "\ud800"))
    assert json.loads(message)["req_id"] == "\ud800"


def test_a_bad_frame_in_a_batch_is_answered_and_the_rest_kept() -> None:
    """The bad frame gets a bad_frame error with its req_id; the others stay in order."""
    message = json.dumps(
        [
            {"type": "session_status", "req_id": "a", "session_key": "k"},
            {"type": "submit", "req_id": "b"},  # no prompt
            {"type": "ack", "delivery_id": "d"},
        ]
    )
    decoded = decode(message, "bridge")
    assert [f.type for f in decoded.frames] == ["session_status", "ack"]
    (error,) = decoded.errors
    assert (error.code, error.req_id) == ("bad_frame", "b") and "prompt" in error.message


def test_a_frame_of_another_direction_is_refused() -> None:
    """A hub->executor kind sent by an executor is a bad frame, not a frame."""
    decoded = decode(ResultAckFrame(run_id="r").dump().__repr__(), "executor")
    assert decoded.frames == [] and decoded.errors[0].code == ErrorCode.BAD_FRAME
    decoded = decode(encode_frame(ResultAckFrame(run_id="r")), "executor")
    assert decoded.frames == [] and "result_ack" in decoded.errors[0].message
    assert decode(encode_frame(ResultAckFrame(run_id="r")), "executor", "hub").frames


def test_a_message_nested_too_deep_is_refused_before_it_is_walked() -> None:
    for message in (
        "[" * 2000 + "]" * 2000,
        '{"type": "ack", "x": ' + "[" * 2000 + "]" * 2000 + "}",
    ):
        decoded = decode(message, "bridge")
        assert decoded.frames == [] and [e.message for e in decoded.errors] == [TOO_DEEP]


def test_a_number_past_64_bits_from_a_node_is_refused() -> None:
    """The store cannot write it: the frame is refused, alone or in a batch."""
    frame = '{"type": "event", "run_id": "r", "seq": 1, "event": {"n": 99999999999999999999}}'
    for message in (frame, f"[{frame}]"):
        decoded = decode(message, "executor")
        assert decoded.frames == [] and [e.message for e in decoded.errors] == [UNSTORABLE]


def test_a_batch_that_is_not_json_is_one_error() -> None:
    decoded = decode('[{"type": "status", "capacity": 3}, oops', "executor")
    assert decoded.frames == [] and "batch is not valid JSON" in decoded.errors[0].message


# --- dump: the shape sent today ------------------------------------------------------


def test_an_error_without_a_request_has_no_req_id_key() -> None:
    assert error_frame("bad_frame", "m").dump() == {
        "type": "error",
        "code": "bad_frame",
        "message": "m",
    }
    assert error_frame("bad_frame", "m", "r").dump()["req_id"] == "r"


def test_a_dump_holds_the_fields_given_and_no_default_left_out() -> None:
    """Optional keys absent from what a sender set stay absent; those set stay, null too."""
    assign = AssignFrame(run_id="r", prompt="p", thread_id=None, optimize=None, origin={})
    assert assign.dump() == {
        "type": "assign",
        "run_id": "r",
        "prompt": "p",
        "thread_id": None,
        "optimize": None,
        "origin": {},
    }
    assert StateFrame(run_id="r", state="running").dump() == {
        "type": "state",
        "run_id": "r",
        "state": "running",
    }
    deliver = DeliverFrame(delivery_id="d", run_id="r", origin={}, status="succeeded")
    assert "diff" not in deliver.dump() and "pr_url" not in deliver.dump()
    assert WelcomeFrame(node_id="n", protocol=2).dump() == {
        "type": "welcome",
        "node_id": "n",
        "protocol": 2,
    }


def test_a_decoded_frame_dumps_the_keys_it_came_with() -> None:
    """What a peer sent is passed on with its own keys, no defaults added."""
    raw = {"type": "deliver", "delivery_id": "d", "run_id": "r", "origin": {"a": 1}}
    (frame,) = decode(json.dumps(raw), "bridge", "hub").frames
    assert isinstance(frame, DeliverFrame) and frame.dump() == raw


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_frame_model_dumps_its_kind_first(data: Any) -> None:
    """``type`` needs no builder's word: it is the model's own, and the first key."""
    model = data.draw(st.sampled_from(FRAME_MODELS))
    kind = model.model_fields["type"].default
    assert isinstance(kind, str) and kind
    frame = data.draw(frames_of(model))
    assert next(iter(frame.dump())) == "type" and frame.dump()["type"] == kind


def test_an_error_frame_carries_an_error_code_as_its_string() -> None:
    frame = ErrorFrame(code=ErrorCode.QUEUE_FULL, message="full")
    assert json.loads(encode_frame(frame))["code"] == "queue_full"
