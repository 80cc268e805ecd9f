"""kernel.node_client: how frames from the hub reach a node's handler, and what it sends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from kernel.node_client import NodeClient, _field
from wire import ResultAckFrame, encode_frame


class Hub:
    """A hub on 127.0.0.1 that welcomes one node; the test sends it messages."""

    def __init__(self) -> None:
        self.ws: ServerConnection | None = None
        self.joined = asyncio.Event()
        self.got: asyncio.Queue[str] = asyncio.Queue()
        self.url = ""

    async def _serve(self, ws: ServerConnection) -> None:
        hello = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "welcome", "node_id": hello["node_id"], "protocol": 2}))
        self.ws = ws
        self.joined.set()
        with contextlib.suppress(ConnectionClosed):  # the node leaving, as the test ends
            async for raw in ws:
                self.got.put_nowait(raw if isinstance(raw, str) else raw.decode())

    async def send(self, message: Any) -> None:
        assert self.ws is not None
        await self.ws.send(json.dumps(message))


@asynccontextmanager
async def hub_and_client(on_frame: Any) -> AsyncIterator[tuple[Hub, NodeClient]]:
    hub = Hub()
    async with serve(hub._serve, "127.0.0.1", 0) as server:
        hub.url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
        client = NodeClient(
            hub.url, hello=lambda: {"type": "hello", "node_id": "n-1"}, on_frame=on_frame
        )
        async with client:
            async with asyncio.timeout(10):
                await hub.joined.wait()
                await client.connected.wait()
            yield hub, client


@contextmanager
def tasks_started() -> Iterator[list[str]]:
    """The qualified names of the coroutines of the tasks started inside the block."""
    loop = asyncio.get_running_loop()
    names: list[str] = []
    previous = loop.get_task_factory()

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        names.append(getattr(coro, "__qualname__", repr(coro)))
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(factory)
    try:
        yield names
    finally:
        loop.set_task_factory(previous)


FRAMES = [{"type": "cancel", "run_id": f"r{i}"} for i in range(5)]


async def test_a_plain_handler_gets_every_frame_in_order_without_a_task_or_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A handler that is a plain function is called as each frame is read, in order, in
    batches and alone alike: no task per frame, nothing logged as failed."""
    seen: list[dict[str, Any]] = []
    done = asyncio.Event()

    def on_frame(frame: dict[str, Any]) -> None:
        seen.append(frame)
        if len(seen) == len(FRAMES):
            done.set()

    caplog.set_level(logging.WARNING, logger="kernel.node_client")
    async with hub_and_client(on_frame) as (hub, _client):
        with tasks_started() as started:
            await hub.send(FRAMES[:3])  # a batch
            await hub.send(FRAMES[3])
            await hub.send(FRAMES[4])
            async with asyncio.timeout(10):
                await done.wait()
    assert seen == FRAMES
    assert "NodeClient._handle" not in started
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_plain_handler_that_fails_is_logged_and_the_next_frame_still_comes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A plain handler's exception is logged with the frame's type; the connection and
    the frames after it go on."""
    seen: list[str] = []
    done = asyncio.Event()

    def on_frame(frame: dict[str, Any]) -> None:
        if frame["run_id"] == "r0":
            raise RuntimeError("boom")
        seen.append(frame["run_id"])
        done.set()

    async with hub_and_client(on_frame) as (hub, client):
        await hub.send(FRAMES[:2])
        async with asyncio.timeout(10):
            await done.wait()
        assert client.connections == 1 and client.is_connected
    assert seen == ["r1"]
    assert "handling a cancel frame failed" in caplog.text and "boom" in caplog.text


async def test_an_async_handler_that_waits_does_not_hold_up_the_next_frames() -> None:
    """An async handler gets a task per frame: the first frame's handler waits until the
    second one's has run (a slow Slack post does not stop the others)."""
    second_seen = asyncio.Event()
    both = asyncio.Event()
    order: list[str] = []

    async def on_frame(frame: dict[str, Any]) -> None:
        if frame["run_id"] == "r0":
            await second_seen.wait()
        order.append(frame["run_id"])
        second_seen.set()
        if len(order) == 2:
            both.set()

    async with hub_and_client(on_frame) as (hub, client):
        await hub.send(FRAMES[:2])
        async with asyncio.timeout(10):
            await both.wait()
        assert client.connections == 1
    assert order == ["r1", "r0"]


async def test_frames_sent_together_go_in_one_message_in_order() -> None:
    """Frames queued before the writer runs, as a model, a dict and encoded text, reach
    the hub in one batch, in the order they were sent."""
    async with hub_and_client(lambda frame: None) as (hub, client):
        assert client.send(ResultAckFrame(run_id="a"))
        assert client.send({"type": "result_ack", "run_id": "b"})
        assert client.send(encode_frame({"type": "result_ack", "run_id": "c"}))
        async with asyncio.timeout(10):
            message = await hub.got.get()
    assert json.loads(message) == [{"type": "result_ack", "run_id": r} for r in "abc"]


def test_a_field_of_a_model_it_lacks_is_none() -> None:
    """A model without the field asked for gives None, like a dict without the key."""
    ack = ResultAckFrame(run_id="r")
    assert _field(ack, "req_id") is None and _field(ack, "run_id") == "r"
    assert _field(ack, "type") == "result_ack"
    assert _field({"req_id": "x"}, "req_id") == "x"
