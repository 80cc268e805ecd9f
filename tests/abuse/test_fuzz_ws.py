"""Malformed websocket frames get an error frame or a close code, never a crash; the hub
serves a real run after every batch of them (issue #8, point 5).

- ``/ws`` hello: anything but a hello with the right ``HUB_TOKEN`` is closed with 4001
  or 4002, and nothing without that token is ever welcomed.
- ``/ws`` later frames, as an executor and as a bridge: each bad frame is answered with
  an ``error`` frame and the connection stays; a probe sent after them is answered.
- ``/api/feed``: the first frame opens the feed only with the API key (else 4001);
  whatever a monitor sends later is ignored and the feed stays alive.
- Raw frames (bad opcodes, reserved bits, unmasked, lying lengths, invalid UTF-8) on
  both sockets end in a close code or a closed socket.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from hub.appkeys import ROUTER
from tests.abuse.conftest import API_KEY, FULL, QUICK, Batches
from tests.abuse.strategies import encode, json_values, obj, text
from tests.conftest import NODE_TOKEN
from wire import CLOSE_BAD_HELLO, CLOSE_FORBIDDEN, CLOSE_UNAUTHORIZED, PROTOCOL_VERSION

pytestmark = pytest.mark.timeout(120)

CLOSE_FEED_UNAUTHORIZED = 4001
#: How long a socket may take to answer a frame before the test calls it a hang.
ANSWER_S = 5.0
#: How long a raw socket is watched: the hub answers a broken frame at once, and a
#: frame that promised more bytes than it sent rightly leaves the hub waiting.
RAW_WATCH_S = 1.5

# --- frame strategies ---------------------------------------------------------------

node_ids = st.one_of(st.text(min_size=1, max_size=30), st.sampled_from(["", "x" * 201]))
tokens = st.one_of(st.just(NODE_TOKEN), st.just(NODE_TOKEN), st.just(API_KEY), text)
roles = st.sampled_from(["executor", "executor", "bridge", "bridge", "monitor", "hub", ""])
login = obj({}, {"logged_in": st.booleans(), "detail": text})
#: Hellos that are valid but for the token (half of them carry the right one).
well_formed_hello = st.fixed_dictionaries(
    {
        "type": st.just("hello"),
        "role": st.sampled_from(["executor", "bridge"]),
        "token": tokens,
        "node_id": st.text(min_size=1, max_size=30),
    },
    optional={
        "name": st.text(max_size=30),
        "capacity": st.integers(min_value=0, max_value=0),
        "platform": st.sampled_from(["slack", "telegram", "fuzz"]),
        "login": st.fixed_dictionaries({"logged_in": st.booleans()}),
    },
)
hello_frame = st.one_of(
    well_formed_hello,
    obj(
        {
            "type": st.sampled_from(["hello"] * 6 + ["submit", "welcome", "HELLO"]),
            "role": roles,
            "token": tokens,
            "node_id": node_ids,
        },
        {
            "name": text,
            "capacity": st.integers(min_value=-5, max_value=20_000),
            "platform": st.sampled_from(["slack", "telegram", "", "x" * 60]),
            "login": login,
            "active_runs": st.lists(text, max_size=3),
        },
    ),
)


def as_frame(value: Any, style: str) -> str | bytes:
    """A JSON value as a websocket frame: text (ASCII-escaped), text cut short, or binary."""
    raw = encode(value, "ascii")
    if style == "binary":
        return raw
    if style == "truncated":
        return raw[: len(raw) // 2].decode()
    return raw.decode()


def frames_of(values: st.SearchStrategy[Any]) -> st.SearchStrategy[str | bytes]:
    """Frames carrying ``values`` (seven in ten as JSON text), else junk: cut-short JSON,
    binary, text that is not JSON, JSON scalars."""
    text_frames = st.builds(as_frame, values, st.just("text"))
    other = st.one_of(
        st.builds(as_frame, values, st.sampled_from(["truncated", "binary"])),
        st.binary(max_size=100),
        st.text(max_size=100).map(_utf8_safe),
        st.sampled_from(["", "null", "[]", "{}", '{"type":null}', "1e999"]),
    )
    return st.integers(min_value=0, max_value=9).flatmap(lambda i: text_frames if i < 7 else other)


def _utf8_safe(s: str) -> str:
    return s.encode("utf-8", "replace").decode("utf-8")


run_id = st.one_of(text, st.sampled_from(["run_0000000000000000"]))
event_frames = obj(
    {"type": st.just("event"), "run_id": run_id, "seq": st.integers(), "event": json_values}
)
state_frames = obj(
    {"type": st.just("state"), "run_id": run_id, "state": st.sampled_from(["running", "x"])},
    {"effective_prompt": text},
)
result_frames = obj(
    {
        "type": st.just("result"),
        "run_id": run_id,
        "status": st.sampled_from(["succeeded", "failed", "cancelled", "timed_out", "x"]),
    },
    {
        "answer": text,
        "thread_id": text,
        "usage": st.dictionaries(text, st.integers(), max_size=3),
        "error": st.dictionaries(text, text, max_size=2),
    },
)
status_frames = obj(
    {"type": st.just("status")},
    {"capacity": st.integers(min_value=-1, max_value=0), "login": login},
)
#: Frames an executor may send, well formed, about runs that are not its own.
well_formed_executor_frames = st.one_of(
    st.fixed_dictionaries(
        {
            "type": st.just("event"),
            "run_id": run_id,
            "seq": st.integers(min_value=1),
            "event": st.dictionaries(st.text(max_size=8), json_values, max_size=3),
        }
    ),
    st.fixed_dictionaries(
        {"type": st.just("state"), "run_id": run_id, "state": st.just("running")},
        optional={"effective_prompt": text},
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("result"),
            "run_id": run_id,
            "status": st.sampled_from(["succeeded", "failed", "cancelled", "timed_out"]),
        },
        optional={"answer": text, "error": st.dictionaries(text, text, max_size=2)},
    ),
    st.fixed_dictionaries({"type": st.just("status"), "capacity": st.just(0)}),
)
executor_frames = frames_of(
    st.one_of(
        well_formed_executor_frames,
        well_formed_executor_frames,
        event_frames,
        state_frames,
        result_frames,
        status_frames,
        hello_frame,
        json_values,
    )
)

session_keys = st.one_of(text, st.none(), st.just("x" * 600))
submit_frames = obj(
    {"type": st.just("submit"), "prompt": text},
    {
        "req_id": text,
        "session_key": session_keys,
        "origin": st.dictionaries(text, json_values, max_size=3),
        "optimize": st.booleans(),
        "dedupe_key": st.one_of(text, st.just("d" * 400)),
    },
)
cancel_frames = obj(
    {"type": st.just("cancel")}, {"req_id": text, "run_id": run_id, "session_key": session_keys}
)
reset_frames = obj({"type": st.just("reset_session"), "session_key": text}, {"req_id": text})
status_query_frames = obj(
    {"type": st.just("session_status"), "session_key": text}, {"req_id": text}
)
ack_frames = obj({"type": st.just("ack"), "delivery_id": text})
status_ref_frames = obj(
    {"type": st.just("status_ref"), "run_id": run_id, "ref": st.one_of(text, st.just("r" * 201))},
    {"req_id": text},
)
well_formed_bridge_frames = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("submit"), "prompt": text.filter(bool)},
        optional={
            "req_id": st.text(max_size=10),
            "session_key": st.text(max_size=20),
            "origin": st.dictionaries(st.text(max_size=8), json_values, max_size=3),
            "dedupe_key": st.text(max_size=20),
        },
    ),
    st.fixed_dictionaries(
        {"type": st.just("cancel")}, optional={"run_id": run_id, "session_key": text}
    ),
    st.fixed_dictionaries({"type": st.just("reset_session"), "session_key": text}),
    st.fixed_dictionaries({"type": st.just("ack"), "delivery_id": run_id}),
    st.fixed_dictionaries(
        {"type": st.just("status_ref"), "run_id": run_id, "ref": text.filter(bool)}
    ),
)
bridge_frames = frames_of(
    st.one_of(
        well_formed_bridge_frames,
        well_formed_bridge_frames,
        submit_frames,
        cancel_frames,
        reset_frames,
        status_query_frames,
        ack_frames,
        status_ref_frames,
        hello_frame,
        json_values,
    )
)

feed_first = frames_of(
    st.one_of(
        obj({"type": st.just("auth"), "key": st.one_of(st.just(API_KEY), tokens)}),
        obj({"type": st.just("auth"), "key": st.just(API_KEY)}),
        hello_frame,
        json_values,
    )
)
#: What a monitor might try on an open feed: act as a node, or send anything at all.
feed_later = frames_of(st.one_of(hello_frame, submit_frames, result_frames, json_values))


# --- helpers ------------------------------------------------------------------------


def ws_url(hub: Any, path: str = "/ws") -> str:
    return f"ws://127.0.0.1:{hub.port}{path}"


@asynccontextmanager
async def opened(url: str) -> AsyncIterator[ClientConnection]:
    """A websocket to the hub, closed on leaving (whatever state it is in)."""
    ws = await connect(url, max_size=None, open_timeout=ANSWER_S)
    try:
        yield ws
    finally:
        await ws.close()


async def first_answer(ws: ClientConnection) -> dict[str, Any] | int:
    """The hub's first frame as JSON, or the close code it closed with."""
    try:
        async with asyncio.timeout(ANSWER_S):
            return dict(json.loads(await ws.recv()))
    except ConnectionClosed as exc:
        assert exc.rcvd is not None, "closed without a close frame"
        return exc.rcvd.code


def parsed(frame: str | bytes) -> Any:
    try:
        return json.loads(frame)
    except ValueError:
        return None


async def wait_frame(ws: ClientConnection, predicate: Any) -> dict[str, Any]:
    """The next frame from the hub that matches ``predicate`` (others are counted)."""
    async with asyncio.timeout(ANSWER_S):
        while True:
            frame = json.loads(await ws.recv())
            if predicate(frame):
                return dict(frame)
            event(f"answered {frame.get('type')} {frame.get('code', '')}".strip())


probes = itertools.count()


# --- /ws hello ----------------------------------------------------------------------


async def hello_once(hub: Any, frame: str | bytes, batches: Batches) -> None:
    async with opened(ws_url(hub)) as ws:
        await ws.send(frame)
        answer = await first_answer(ws)
    sent = parsed(frame) if isinstance(frame, str) else None
    if isinstance(answer, dict):
        event("welcomed")
        assert answer["type"] == "welcome", answer
        assert isinstance(sent, dict) and sent.get("token") == NODE_TOKEN, (frame, answer)
    else:
        event(f"closed {answer}")
        assert answer in (CLOSE_UNAUTHORIZED, CLOSE_BAD_HELLO, CLOSE_FORBIDDEN), (frame, answer)
        if answer == CLOSE_UNAUTHORIZED:
            assert isinstance(sent, dict) and sent.get("token") != NODE_TOKEN, frame
        if answer == CLOSE_FORBIDDEN:  # a right credential, but no platform for a bridge
            assert isinstance(sent, dict) and sent.get("token") == NODE_TOKEN, frame
            assert sent.get("role") == "bridge", frame
    await batches.example_done()


@QUICK
@given(frame=frames_of(hello_frame))
async def test_a_bad_hello_is_closed_and_only_the_token_is_welcomed(
    hub: Any, batches: Batches, frame: str | bytes
) -> None:
    """Any first frame: welcome only with HUB_TOKEN (and a platform for a bridge),
    otherwise 4001, 4002 or 4403."""
    await hello_once(hub, frame, batches)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@FULL
@given(frame=frames_of(hello_frame))
async def test_thousands_of_bad_hellos_are_closed(
    hub: Any, batches: Batches, frame: str | bytes
) -> None:
    """The big run of the hello property."""
    await hello_once(hub, frame, batches)


# --- /ws later frames ----------------------------------------------------------------

EXECUTOR_HELLO = {
    "type": "hello",
    "role": "executor",
    "token": NODE_TOKEN,
    "node_id": "fuzz-executor",
    "capacity": 0,
    "login": {"logged_in": True, "detail": "fuzz"},
}
BRIDGE_HELLO = {
    "type": "hello",
    "role": "bridge",
    "token": NODE_TOKEN,
    "node_id": "fuzz-bridge",
    "platform": "fuzz",
}


async def frames_as_executor(hub: Any, frames: list[str | bytes], batches: Batches) -> None:
    async with opened(ws_url(hub)) as ws:
        await ws.send(json.dumps(EXECUTOR_HELLO))
        assert (await first_answer(ws)) == {
            "type": "welcome",
            "node_id": "fuzz-executor",
            "protocol": PROTOCOL_VERSION,
        }
        for frame in frames:
            await ws.send(frame)
        # Frames are applied in order: the probe's error comes after theirs.
        probe = f"probe-{next(probes)}"
        await ws.send(json.dumps({"type": probe}))
        await wait_frame(ws, lambda f: f.get("type") == "error" and probe in f.get("message", ""))
    await batches.example_done()


async def frames_as_bridge(hub: Any, frames: list[str | bytes], batches: Batches) -> None:
    async with opened(ws_url(hub)) as ws:
        await ws.send(json.dumps(BRIDGE_HELLO))
        welcome = await first_answer(ws)
        assert isinstance(welcome, dict) and welcome["type"] == "welcome", welcome
        for frame in frames:
            await ws.send(frame)
        probe = f"probe-{next(probes)}"
        await ws.send(json.dumps({"type": "session_status", "req_id": probe, "session_key": "p"}))
        answer = await wait_frame(ws, lambda f: f.get("req_id") == probe)
        assert answer["type"] == "session", answer
    await batches.example_done()


@QUICK
@given(frames=st.lists(executor_frames, min_size=1, max_size=4))
async def test_bad_frames_from_an_executor_get_errors_and_the_link_stays(
    hub: Any, batches: Batches, frames: list[str | bytes]
) -> None:
    """Malformed event, state, result and status frames never close an executor's link."""
    await frames_as_executor(hub, frames, batches)


@QUICK
@given(frames=st.lists(bridge_frames, min_size=1, max_size=4))
async def test_bad_frames_from_a_bridge_get_errors_and_the_link_stays(
    hub: Any, batches: Batches, frames: list[str | bytes]
) -> None:
    """Malformed submit, cancel, reset, status and ack frames never close a bridge's link."""
    await frames_as_bridge(hub, frames, batches)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@FULL
@given(frames=st.lists(executor_frames, min_size=1, max_size=4))
async def test_thousands_of_bad_executor_frames_keep_the_link(
    hub: Any, batches: Batches, frames: list[str | bytes]
) -> None:
    """The big run of the executor-frame property."""
    await frames_as_executor(hub, frames, batches)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@FULL
@given(frames=st.lists(bridge_frames, min_size=1, max_size=4))
async def test_thousands_of_bad_bridge_frames_keep_the_link(
    hub: Any, batches: Batches, frames: list[str | bytes]
) -> None:
    """The big run of the bridge-frame property."""
    await frames_as_bridge(hub, frames, batches)


# --- /api/feed -----------------------------------------------------------------------


async def feed_once(
    hub: Any, first: str | bytes, later: list[str | bytes], batches: Batches
) -> None:
    router = hub.app[ROUTER]
    nodes_before = sorted(router.executors), sorted(router.bridges)
    async with opened(ws_url(hub, "/api/feed")) as ws:
        await ws.send(first)
        answer = await first_answer(ws)
        sent = parsed(first) if isinstance(first, str) else None
        if isinstance(answer, int):
            event(f"closed {answer}")
            assert answer == CLOSE_FEED_UNAUTHORIZED, (first, answer)
            assert not (isinstance(sent, dict) and sent.get("key") == API_KEY), first
        else:
            event("ready")
            assert answer["type"] == "ready", answer
            assert isinstance(sent, dict) and sent.get("key") == API_KEY, first
            for frame in later:
                await ws.send(frame)
            # The feed's reader answers pings: it is alive, and it made nothing of them.
            async with asyncio.timeout(ANSWER_S):
                await (await ws.ping())
    assert (sorted(router.executors), sorted(router.bridges)) == nodes_before
    await batches.example_done()


@QUICK
@given(first=feed_first, later=st.lists(feed_later, max_size=4))
async def test_the_feed_opens_only_with_the_key_and_ignores_what_it_is_sent(
    hub: Any, batches: Batches, first: str | bytes, later: list[str | bytes]
) -> None:
    """First frame without the API key: 4001; with it, later frames change nothing."""
    await feed_once(hub, first, later, batches)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@FULL
@given(first=feed_first, later=st.lists(feed_later, max_size=4))
async def test_thousands_of_feed_frames_are_refused_or_ignored(
    hub: Any, batches: Batches, first: str | bytes, later: list[str | bytes]
) -> None:
    """The big run of the feed property."""
    await feed_once(hub, first, later, batches)


# --- raw websocket frames ------------------------------------------------------------


@st.composite
def raw_frame(draw: st.DrawFn) -> bytes:
    """One websocket frame as bytes: any opcode and bits, masked or not, honest length or not."""
    fin = draw(st.sampled_from([0x80, 0x80, 0x80, 0]))
    rsv = draw(st.sampled_from([0, 0, 0, 0x40, 0x20, 0x10]))
    opcode = draw(st.sampled_from([1, 1, 2, 0, 8, 9, 10, 3, 11, 15]))
    payload = draw(
        st.one_of(
            st.binary(max_size=60),
            st.sampled_from([b"\xff\xfe", b"\xed\xa0\x80", b"\x03\xe8", b"\x00", b""]),
            st.just(json.dumps(EXECUTOR_HELLO).encode()),
        )
    )
    masked = draw(st.sampled_from([True, True, True, False]))
    length = draw(st.sampled_from(["exact", "exact", "exact", "16", "64", "huge"]))
    size = len(payload)
    if length == "exact" and size < 126:
        head = bytes([fin | rsv | opcode, (0x80 if masked else 0) | size])
    elif length in ("exact", "16"):
        head = bytes([fin | rsv | opcode, (0x80 if masked else 0) | 126]) + struct.pack("!H", size)
    elif length == "64":
        head = bytes([fin | rsv | opcode, (0x80 if masked else 0) | 127]) + struct.pack("!Q", size)
    else:
        head = bytes([fin | rsv | opcode, (0x80 if masked else 0) | 127]) + struct.pack(
            "!Q", 2**63 - 1
        )
    if masked:
        mask = draw(st.binary(min_size=4, max_size=4))
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return head + mask + payload
    return head + payload


async def raw_ws(port: int, path: str, data: bytes) -> int | None:
    """Open a websocket by hand, write ``data``, and return the hub's close code.

    None when the hub closed the socket without a close frame, or kept waiting for
    more bytes (a frame that promised more than it sent).
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        + data
    )
    try:
        async with asyncio.timeout(RAW_WATCH_S):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101"), head
            while True:
                b0, b1 = await reader.readexactly(2)
                size = b1 & 0x7F
                if size == 126:
                    (size,) = struct.unpack("!H", await reader.readexactly(2))
                elif size == 127:
                    (size,) = struct.unpack("!Q", await reader.readexactly(8))
                payload = await reader.readexactly(size)
                if b0 & 0x0F == 8:
                    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
    except (asyncio.IncompleteReadError, ConnectionResetError):
        return None
    except TimeoutError:
        return None
    finally:
        writer.close()
        await asyncio.gather(writer.wait_closed(), return_exceptions=True)


async def raw_once(hub: Any, path: str, frames: list[bytes], batches: Batches) -> None:
    code = await raw_ws(hub.port, path, b"".join(frames))
    event(f"{path} close {code}")
    assert code is None or 1000 <= code < 5000, code
    assert code != 1011, "the hub failed internally"
    await batches.example_done()


@QUICK
@given(path=st.sampled_from(["/ws", "/api/feed"]), frames=st.lists(raw_frame(), max_size=3))
async def test_raw_websocket_frames_end_in_a_close_code(
    hub: Any, batches: Batches, path: str, frames: list[bytes]
) -> None:
    """Bad opcodes, reserved bits, unmasked frames, lying lengths: a close, never a crash."""
    await raw_once(hub, path, frames, batches)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@FULL
@given(path=st.sampled_from(["/ws", "/api/feed"]), frames=st.lists(raw_frame(), max_size=3))
async def test_thousands_of_raw_websocket_frames_end_in_a_close_code(
    hub: Any, batches: Batches, path: str, frames: list[bytes]
) -> None:
    """The big run of the raw-frame property."""
    await raw_once(hub, path, frames, batches)


# --- what the fuzzers found, kept as plain regressions ----------------------------------


async def test_numbers_the_store_cannot_hold_are_refused_frame_by_frame(
    hub: Any, crashes: Any
) -> None:
    """A submit whose origin, or a result whose usage, holds a number past 64 bits gets
    an error frame and the link stays (it crashed the store write and the run's end)."""
    huge = 2**70
    async with opened(ws_url(hub)) as bridge, opened(ws_url(hub)) as executor:
        await bridge.send(json.dumps(BRIDGE_HELLO))
        await executor.send(json.dumps(EXECUTOR_HELLO))
        assert isinstance(await first_answer(bridge), dict)
        assert isinstance(await first_answer(executor), dict)
        await bridge.send(
            json.dumps({"type": "submit", "req_id": "big", "prompt": "x", "origin": {"n": huge}})
        )
        refused = await wait_frame(bridge, lambda f: f.get("req_id") == "big")
        assert refused["type"] == "error" and "64 bits" in refused["message"]
        result = {"type": "result", "run_id": "r", "status": "succeeded", "usage": {"n": huge}}
        await executor.send(json.dumps(result))
        refused = await wait_frame(executor, lambda f: f.get("type") == "error")
        assert "64 bits" in refused["message"]
        await bridge.send(json.dumps({"type": "session_status", "req_id": "p", "session_key": "k"}))
        assert (await wait_frame(bridge, lambda f: f.get("req_id") == "p"))["type"] == "session"
    assert not crashes.records, crashes.report()


async def test_a_feed_key_that_is_not_unicode_is_refused(hub: Any, crashes: Any) -> None:
    """A lone surrogate as the feed's key closes it with 4001 (it was a 500)."""
    async with opened(ws_url(hub, "/api/feed")) as ws:
        await ws.send('{"type": "auth", "key": "\\ud800"}')
        assert await first_answer(ws) == CLOSE_FEED_UNAUTHORIZED
    assert not crashes.records, crashes.report()
