"""The node side of the hub protocol: one websocket to the hub, kept open.

Used by every node (executor, bridges). It says hello, hands each frame from the hub to
the node (decoded by :func:`wire.decode` into the frame models of the node's role; a
client without a role gets the JSON objects as they are), in arrival order: a handler
that is a plain function is called at once, an async one runs in a task of its own (one
slow handler, a Slack post, must not stop the others). It reconnects with
exponential backoff and jitter whenever the connection drops or is refused. Frames sent
while disconnected are not queued: a node re-sends what matters from its own state in
``on_connect`` (see :mod:`wire`).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pydantic import BaseModel
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from wire import (
    BATCH_SINCE,
    CLOSE_REFUSED,
    HELLO_TIMEOUT_S,
    NODE_MAX_MESSAGE_BYTES,
    NODE_OPEN_TIMEOUT_S,
    NODE_PING_INTERVAL_S,
    NODE_PING_TIMEOUT_S,
    PROTOCOL_VERSION,
    RECONNECT_MAX_S,
    RECONNECT_MIN_S,
    FrameModel,
    Role,
    WelcomeFrame,
    batch,
    decode,
    decode_objects,
    encode_frame,
)

log = logging.getLogger(__name__)

#: A frame as a node builds or gets it: a model of :mod:`wire` (a client with a role),
#: or a JSON object (a client without one).
Frame = Any


def _field(frame: Frame, name: str) -> Any:
    """A field of a frame, model or dict alike (None when it has none)."""
    if type(frame) is dict:  # the common case first: an ABC check costs microseconds
        return frame.get(name)
    if isinstance(frame, BaseModel):
        # Its fields are its __dict__: getattr of one it lacks costs pydantic two
        # exceptions with their messages, some 10 us, on every frame.
        return frame.__dict__.get(name)
    if isinstance(frame, Mapping):
        return frame.get(name)
    return getattr(frame, name, None)


class State(enum.Enum):
    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"


class NotConnected(ConnectionError):
    """The hub is not reachable right now."""


class NodeClient:
    """A reconnecting websocket client for one node.

    ``hello`` builds the hello frame at each (re)connect; ``on_frame`` receives every
    frame from the hub, in arrival order: a plain function is called at once (no task:
    it must not block), an async one gets a task per frame, so a slow one does not
    hold up the next frames; ``on_connect`` runs after each welcome (re-send state there).
    With a ``role``, frames from the hub are the models of what the hub sends a node of
    that role (:data:`wire.ToExecutorFrame`, :data:`wire.ToBridgeFrame`); one that is
    not such a frame is logged and skipped.
    """

    def __init__(
        self,
        url: str,
        *,
        hello: Callable[[], Frame],
        on_frame: Callable[[Frame], Awaitable[None] | None],
        on_connect: Callable[[], Awaitable[None]] | None = None,
        name: str = "node",
        role: Role | None = None,
        backoff_min: float = RECONNECT_MIN_S,
        backoff_max: float = RECONNECT_MAX_S,
    ) -> None:
        self.url = url
        self.role = role
        self.name = name
        self._hello = hello
        self._on_frame = on_frame
        self._on_connect = on_connect
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self.state = State.NEW
        self.connected = asyncio.Event()
        self.last_close: tuple[int | None, str] | None = None
        self.connections = 0
        self._ws: ClientConnection | None = None
        #: Frames (encoded) for the writer, and the future it waits on while there are
        #: none: a list and one wake-up per message, not a Queue's work per frame.
        self._out: list[str] = []
        self._out_ready: asyncio.Future[None] | None = None
        #: The hub takes several frames in one message (it said protocol >= 2).
        self._batches = False
        self._task: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[Frame]] = {}
        self._frame_tasks: set[asyncio.Task[None]] = set()
        self._frame_task_name = f"NodeClient:{name}:frame"

    async def start(self) -> None:
        """Start connecting in the background."""
        if self._task is None:
            self.state = State.CONNECTING
            self._task = asyncio.create_task(self._run(), name=f"NodeClient:{self.name}")

    async def close(self) -> None:
        """Disconnect and stop reconnecting. Idempotent."""
        self.state = State.CLOSED
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for task in list(self._frame_tasks):
            task.cancel()
        await asyncio.gather(*self._frame_tasks, return_exceptions=True)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(NotConnected("the node is closing"))
        self._pending.clear()
        self.connected.clear()

    async def __aenter__(self) -> NodeClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def send(self, frame: Frame) -> bool:
        """Queue a frame (a model of :mod:`wire`, a dict, or the text
        :func:`wire.encode_frame` made of one) for the hub; False (and nothing queued)
        while disconnected."""
        if not self.connected.is_set():
            return False
        self._out.append(frame if type(frame) is str else encode_frame(frame))
        ready = self._out_ready
        if ready is not None:
            self._out_ready = None
            if not ready.done():
                ready.set_result(None)
        return True

    async def request(self, frame: Frame, timeout: float = 30.0) -> Frame:  # noqa: ASYNC109
        """Send a frame with a fresh ``req_id`` and wait for the hub's answer to it."""
        async with asyncio.timeout(timeout):
            await self.connected.wait()
            req_id = secrets.token_hex(6)
            fut: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
            self._pending[req_id] = fut
            try:
                if isinstance(frame, FrameModel):
                    frame = frame.model_copy(update={"req_id": req_id})
                else:
                    frame = {**frame, "req_id": req_id}
                if not self.send(frame):
                    raise NotConnected("the hub connection dropped")
                return await fut
            finally:
                self._pending.pop(req_id, None)

    async def _run(self) -> None:
        attempt = 0
        while self.state is not State.CLOSED:
            before = self.connections
            try:
                await self._connect_once()
            except asyncio.CancelledError:
                raise
            except InvalidStatus as exc:
                hint = ""
                if exc.response.status_code == 403:
                    hint = ": add the host name of HUB_URL to the hub's HUB_ALLOWED_HOSTS"
                log.warning("%s: the hub at %s refused: %s%s", self.name, self.url, exc, hint)
            except (OSError, InvalidHandshake, InvalidURI, ConnectionClosed, TimeoutError) as exc:
                log.warning("%s: cannot reach the hub at %s: %s", self.name, self.url, exc)
            except Exception:
                log.exception("%s: hub connection failed", self.name)
            self.connected.clear()
            self._fail_pending()
            attempt = 1 if self.connections > before else attempt + 1
            delay = min(self._backoff_max, self._backoff_min * 2 ** min(attempt, 10))
            # Full jitter: many nodes restarting together do not reconnect in step.
            await asyncio.sleep(random.uniform(self._backoff_min, max(self._backoff_min, delay)))

    async def _connect_once(self) -> None:
        async with connect(
            self.url,
            open_timeout=NODE_OPEN_TIMEOUT_S,
            ping_interval=NODE_PING_INTERVAL_S,
            ping_timeout=NODE_PING_TIMEOUT_S,
            max_size=NODE_MAX_MESSAGE_BYTES,
            compression=None,  # small JSON frames: deflate costs more CPU than it saves
        ) as ws:
            self._ws = ws
            hello = self._hello()
            if isinstance(hello, FrameModel):
                hello = hello.model_copy(update={"protocol": PROTOCOL_VERSION})
            else:
                hello = {**hello, "protocol": PROTOCOL_VERSION}
            await ws.send(encode_frame(hello))
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a close that
            # lands together with the welcome, and close() would then wait for ever.
            async with asyncio.timeout(HELLO_TIMEOUT_S):
                raw = await ws.recv()
            # The welcome may come first in a batch (this node said it takes batches).
            welcome, *early = self._decode(raw) or [None]
            if isinstance(welcome, Mapping) and welcome.get("type") == "welcome":
                protocol = int(welcome.get("protocol") or 1)
            elif isinstance(welcome, WelcomeFrame):
                protocol = welcome.protocol
            else:
                raise ConnectionError(f"unexpected first frame from the hub: {welcome!r}")
            self._out = []
            self._out_ready = None
            self._batches = protocol >= BATCH_SINCE
            self.state = State.CONNECTED
            self.connections += 1
            self.last_close = None
            self.connected.set()
            log.info("%s: connected to the hub at %s", self.name, self.url)
            writer = asyncio.create_task(self._write(ws), name=f"NodeClient:{self.name}:writer")
            try:
                if self._on_connect is not None:
                    await self._on_connect()
                for frame in early:
                    self._receive(frame)
                async for raw in ws:
                    for frame in self._decode(raw):
                        self._receive(frame)
            except ConnectionClosed:
                pass
            finally:
                self.connected.clear()
                closing = self.state is State.CLOSED
                if not closing:
                    self.state = State.CONNECTING
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)
                code = ws.close_code
                reason = ws.close_reason or ""
                self.last_close = (code, reason)
                if code in CLOSE_REFUSED:
                    log.error("%s: the hub refused this node (%s): %s", self.name, code, reason)
                elif not closing:
                    log.warning("%s: lost the hub (%s %s); reconnecting", self.name, code, reason)

    def _decode(self, raw: str | bytes) -> list[Frame]:
        """The frames of one message; what is not a frame (not JSON, nested too deep,
        of a kind this node does not take) is logged and skipped: the connection stays."""
        if self.role is None:
            objects = decode_objects(raw)
            if isinstance(objects, str):
                log.warning("%s: skipped a message from the hub: %s", self.name, objects)
                return []
            return objects
        decoded = decode(raw, self.role, "hub")
        for error in decoded.errors:
            log.warning("%s: skipped a frame from the hub: %s", self.name, error.message)
        return decoded.frames

    def _receive(self, frame: Frame) -> None:
        if self._pending:  # an executor never asks: no field lookups for it
            req_id = _field(frame, "req_id")
            if req_id and req_id in self._pending and _field(frame, "type") != "deliver":
                fut = self._pending.pop(req_id)
                if not fut.done():
                    fut.set_result(frame)
                return
        self._dispatch(frame)

    def _dispatch(self, frame: Frame) -> None:
        # Frames are handled in arrival order; a plain handler is done here and now, an
        # async one (a Slack post) gets a task the client owns, so that one slow frame
        # does not stop the others.
        try:
            pending = self._on_frame(frame)
        except Exception:
            log.exception("%s: handling a %s frame failed", self.name, _field(frame, "type"))
            return
        if pending is None:
            return
        task = asyncio.create_task(self._handle(pending, frame), name=self._frame_task_name)
        self._frame_tasks.add(task)
        task.add_done_callback(self._frame_tasks.discard)

    async def _handle(self, pending: Awaitable[None], frame: Frame) -> None:
        try:
            await pending
        except Exception:
            log.exception("%s: handling a %s frame failed", self.name, _field(frame, "type"))

    async def _write(self, ws: ClientConnection) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._out:
                ready = self._out_ready = loop.create_future()
                await ready
                continue
            frames, self._out = self._out, []
            if not self._batches:
                for data in frames:
                    await ws.send(data)
                continue
            # Frames queued while the last message was written go in one message: a
            # short run's state, events and result cost the hub one read, not five.
            for message in batch(frames):
                await ws.send(message)

    def _fail_pending(self) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(NotConnected("the hub connection dropped"))
        self._pending.clear()

    @property
    def is_connected(self) -> bool:
        return self.connected.is_set()
