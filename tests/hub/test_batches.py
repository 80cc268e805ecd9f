"""Protocol 2: a websocket message may carry a batch of frames, only to a peer that takes them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from hub.appkeys import ROUTER
from testkit.fakes.nodes import bridge_hello, executor_hello
from tests.conftest import NODE_TOKEN, ws_url
from wire import PROTOCOL_VERSION

# The writer's batching is the codec's (wire.batch): see tests/wire/test_codec.py.


# --- the hub, as seen by a node ------------------------------------------------------


@pytest.fixture
async def raw_executor(hub: Any) -> AsyncIterator[Any]:
    """Open a raw executor socket: ``await raw_executor(protocol=None|2)``."""
    opened: list[ClientConnection] = []

    async def open_one(protocol: int | None) -> ClientConnection:
        extra = {} if protocol is None else {"protocol": protocol}
        ws = await connect(ws_url(hub))
        opened.append(ws)
        await ws.send(json.dumps(executor_hello(token=NODE_TOKEN, capacity=8, **extra)))
        return ws

    yield open_one
    for ws in opened:
        await ws.close()


async def _messages(ws: ClientConnection, frames: int) -> list[Any]:
    """Messages (decoded) until ``frames`` frames have come."""
    got: list[Any] = []
    count = 0
    async with asyncio.timeout(10):
        while count < frames:
            message = json.loads(await ws.recv())
            got.append(message)
            count += len(message) if isinstance(message, list) else 1
    return got


async def _submit(hub: Any, n: int) -> list[Any]:
    router = hub.app[ROUTER]
    return [await router.submit(f"prompt {i}", origin={"source": "http"}) for i in range(n)]


async def test_a_node_without_protocol_2_gets_one_frame_per_message(
    hub: Any, raw_executor: Any
) -> None:
    ws = await raw_executor(None)
    (welcome,) = await _messages(ws, 1)
    assert welcome["type"] == "welcome" and welcome["protocol"] == PROTOCOL_VERSION
    await _submit(hub, 3)
    messages = await _messages(ws, 3)
    assert [m["type"] for m in messages] == ["assign"] * 3


async def test_a_node_with_protocol_2_gets_what_queued_up_in_one_message(
    hub: Any, raw_executor: Any
) -> None:
    ws = await raw_executor(2)
    await _messages(ws, 1)
    # Three submits with no await in between: all three assigns are queued before the
    # writer runs, so they go as one batch.
    await _submit(hub, 3)
    (batch,) = await _messages(ws, 3)
    assert isinstance(batch, list)
    assert [f["type"] for f in batch] == ["assign"] * 3
    assert [f["prompt"] for f in batch] == ["prompt 0", "prompt 1", "prompt 2"]


async def test_a_batch_from_an_executor_is_applied_in_order_around_a_bad_frame(
    hub: Any, raw_executor: Any
) -> None:
    ws = await raw_executor(2)
    await _messages(ws, 1)
    (ticket,) = await _submit(hub, 1)
    (assign,) = await _messages(ws, 1)
    run_id = assign["run_id"]
    batch = [
        {"type": "state", "run_id": run_id, "state": "running"},
        {"type": "event", "run_id": run_id, "seq": 0, "event": {}},  # seq counts from 1
        {"type": "event", "run_id": run_id, "seq": 1, "event": {"kind": "codex", "n": 1}},
        {"type": "result", "run_id": run_id, "status": "succeeded", "answer": "done"},
    ]
    await ws.send(json.dumps(batch))
    run = await asyncio.wait_for(asyncio.shield(ticket.done), 10)
    assert (run.state, run.answer) == ("succeeded", "done")
    answers = [f for m in await _messages(ws, 2) for f in (m if isinstance(m, list) else [m])]
    assert {f["type"] for f in answers} == {"error", "result_ack"}
    error = next(f for f in answers if f["type"] == "error")
    assert error["code"] == "bad_frame" and "seq" in error["message"]
    events = await hub.app[ROUTER].store.get_events(run_id)
    assert [e.get("n") for e in events if e["kind"] == "codex"] == [1]


async def test_a_batch_that_is_not_json_is_refused_and_the_link_stays(
    hub: Any, raw_executor: Any
) -> None:
    ws = await raw_executor(2)
    await _messages(ws, 1)
    await ws.send('[{"type": "status", "capacity": 3}, oops')
    (error,) = await _messages(ws, 1)
    assert error["type"] == "error" and "batch is not valid JSON" in error["message"]
    # Frames are applied in order: once the probe is answered, the status is in.
    await ws.send(json.dumps([{"type": "status", "capacity": 3}, {"type": "probe"}]))
    (probe,) = await _messages(ws, 1)
    assert probe["type"] == "error" and "probe" in probe["message"]
    assert hub.app[ROUTER].executors["fake-exec"].capacity == 3


async def test_an_error_quoting_a_lone_surrogate_reaches_the_node(hub: Any) -> None:
    """A bad frame's error carries its req_id; one that is a lone surrogate cannot be
    encoded by orjson, the hub's fallback encodes it, and the link stays."""
    async with connect(ws_url(hub)) as ws:
        await ws.send(json.dumps(bridge_hello(token=NODE_TOKEN, platform="fuzz")))
        await _messages(ws, 1)
        await ws.send('{"type": "submit", "req_id": "\\ud800"}')  # no prompt
        (error,) = await _messages(ws, 1)
        assert error["type"] == "error" and error["code"] == "bad_frame"
        assert error["req_id"] == "\ud800"
        probe = {"type": "session_status", "req_id": "probe", "session_key": "k"}
        await ws.send(json.dumps(probe))
        (answer,) = await _messages(ws, 1)
        assert answer["req_id"] == "probe"
