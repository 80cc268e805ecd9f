"""Protocol-level peers of the hub, driven by tests: a fake executor and a fake bridge.

They speak the wire protocol of :mod:`wire` over a real websocket, frame by
frame, so a test decides exactly when a run starts, what it reports and when it ends.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

Frame = dict[str, Any]


class FakeNode:
    """A websocket peer that records every frame it receives."""

    def __init__(self, url: str, hello: Frame) -> None:
        self.url = url
        self.hello = hello
        self.frames: list[Frame] = []
        self.ws: ClientConnection | None = None
        self._changed = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None
        self.close_code: int | None = None
        self.close_reason: str = ""

    async def connect(self) -> Frame:
        """Connect and say hello; returns the hub's first answer (``welcome``)."""
        self.ws = await connect(self.url)
        await self.ws.send(json.dumps(self.hello))
        try:
            first = json.loads(await asyncio.wait_for(self.ws.recv(), 5))
        except ConnectionClosed as exc:
            self.close_code = exc.rcvd.code if exc.rcvd else None
            self.close_reason = exc.rcvd.reason if exc.rcvd else ""
            raise
        self._reader = asyncio.create_task(self._read(), name="FakeNode:reader")
        return first

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for raw in self.ws:
                async with self._changed:
                    self.frames.append(json.loads(raw))
                    self._changed.notify_all()
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.close_reason = self.ws.close_reason or ""
            async with self._changed:
                self._changed.notify_all()

    async def send(self, frame: Frame) -> None:
        """Send one frame to the hub."""
        assert self.ws is not None
        await self.ws.send(json.dumps(frame))

    async def wait_for(
        self, predicate: Callable[[Frame], bool], timeout: float = 5.0, after: int = 0
    ) -> Frame:
        """The first received frame (from index ``after``) that matches ``predicate``."""
        async with asyncio.timeout(timeout), self._changed:
            while True:
                for frame in self.frames[after:]:
                    if predicate(frame):
                        return frame
                await self._changed.wait()

    async def wait_type(self, type_: str, timeout: float = 5.0, **fields: Any) -> Frame:
        """The first frame of ``type_`` whose fields equal ``fields``."""
        return await self.wait_for(
            lambda f: f.get("type") == type_ and all(f.get(k) == v for k, v in fields.items()),
            timeout,
        )

    def of_type(self, type_: str) -> list[Frame]:
        return [f for f in self.frames if f.get("type") == type_]

    async def close(self) -> None:
        """Close the websocket (a clean disconnect)."""
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    async def drop(self) -> None:
        """Vanish without a close handshake, like a killed process."""
        if self.ws is not None:
            self.ws.transport.abort()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


class FakeExecutor(FakeNode):
    """An executor whose runs progress only when the test says so."""

    async def start_run(self, run_id: str, effective_prompt: str | None = None) -> None:
        frame: Frame = {"type": "state", "run_id": run_id, "state": "running"}
        if effective_prompt is not None:
            frame["effective_prompt"] = effective_prompt
        await self.send(frame)

    async def event(self, run_id: str, seq: int, **event: Any) -> None:
        await self.send({"type": "event", "run_id": run_id, "seq": seq, "event": event})

    async def finish(self, run_id: str, answer: str = "done", **fields: Any) -> None:
        frame = {"type": "result", "run_id": run_id, "status": "succeeded", "answer": answer}
        frame.update(fields)
        await self.send(frame)


def executor_hello(
    node_id: str = "fake-exec", capacity: int = 2, token: str = "", **extra: Any
) -> Frame:
    return {
        "type": "hello",
        "role": "executor",
        "token": token,
        "node_id": node_id,
        "name": node_id,
        "capacity": capacity,
        "login": {"logged_in": True, "detail": "fake"},
        **extra,
    }


def bridge_hello(platform: str = "slack", node_id: str = "fake-bridge", token: str = "") -> Frame:
    return {
        "type": "hello",
        "role": "bridge",
        "token": token,
        "node_id": node_id,
        "name": node_id,
        "platform": platform,
    }


@pytest.fixture
def fake_executor() -> Callable[..., Any]:
    """``async with fake_executor(url, **hello) as ex``: a connected FakeExecutor."""

    @asynccontextmanager
    async def make(url: str, **hello: Any) -> AsyncIterator[FakeExecutor]:
        node = FakeExecutor(url, executor_hello(**hello))
        await node.connect()
        try:
            yield node
        finally:
            await node.close()

    return make


@pytest.fixture
def fake_bridge() -> Callable[..., Any]:
    """``async with fake_bridge(url, platform=..., token=...) as br``: a connected bridge."""

    @asynccontextmanager
    async def make(url: str, **hello: Any) -> AsyncIterator[FakeNode]:
        node = FakeNode(url, bridge_hello(**hello))
        await node.connect()
        try:
            yield node
        finally:
            await node.close()

    return make
