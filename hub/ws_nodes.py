"""The websocket endpoint ``/ws`` where executors and bridges connect.

Speaks the protocol of :mod:`hub.protocol`: checks the hello (role, ``HUB_TOKEN``),
then feeds every frame to the router. Frames to the node leave through one writer
task per connection, so the router never waits on a slow socket. What an executor
sends is masked (:func:`hub.logs.redact`) before the router stores or shows any of it.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from typing import Any

from aiohttp import WSMsgType, web
from pydantic import ValidationError

from hub.appkeys import ROUTER, SETTINGS, SOCKETS
from hub.logs import redact, redact_json
from hub.protocol import (
    BRIDGE_FRAME,
    CLOSE_BAD_HELLO,
    CLOSE_HELLO_TIMEOUT,
    CLOSE_UNAUTHORIZED,
    EXECUTOR_FRAME,
    HELLO,
    PROTOCOL_VERSION,
    EventFrame,
    ResultFrame,
    StateFrame,
    StatusFrame,
    error_frame,
)
from hub.router import Router

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 10.0
MAX_FRAME_BYTES = 4 * 1024 * 1024


class WsLink:
    """A connected node: frames are queued and written by a task of its own."""

    def __init__(self, ws: web.WebSocketResponse, node_id: str) -> None:
        self.ws = ws
        self.node_id = node_id
        self._out: asyncio.Queue[str | None] = asyncio.Queue()
        self._writer = asyncio.create_task(self._write_loop(), name=f"WsLink:{node_id}:writer")
        self._close_task: asyncio.Task[Any] | None = None

    def send(self, frame: dict[str, Any]) -> None:
        """Queue a frame for the node; never waits."""
        self._out.put_nowait(json.dumps(frame, separators=(",", ":")))

    def close(self, code: int, reason: str) -> None:
        """Close the connection with ``code`` after the frames already queued."""
        if self._close_task is None:
            self._close_task = asyncio.create_task(
                self.ws.close(code=code, message=reason.encode()),
                name=f"WsLink:{self.node_id}:close",
            )

    async def _write_loop(self) -> None:
        while True:
            data = await self._out.get()
            if data is None:
                return
            try:
                await self.ws.send_str(data)
            except (ConnectionError, RuntimeError):
                return

    async def stop(self) -> None:
        """Stop the writer task."""
        self._writer.cancel()
        await asyncio.gather(self._writer, return_exceptions=True)
        if self._close_task is not None:
            await asyncio.gather(self._close_task, return_exceptions=True)


async def _refuse(ws: web.WebSocketResponse, code: int, reason: str) -> web.WebSocketResponse:
    log.warning("node refused: %s", reason)
    await ws.close(code=code, message=reason.encode())
    return ws


def token_ok(presented: str, expected: str) -> bool:
    """Constant-time token check; an empty ``HUB_TOKEN`` accepts every node."""
    if not expected:
        return True
    return hmac.compare_digest(presented.encode(), expected.encode())


async def node_socket(request: web.Request) -> web.WebSocketResponse:
    """Serve one node for as long as it stays connected."""
    settings = request.app[SETTINGS]
    router: Router = request.app[ROUTER]
    # Frames are small JSON on a trusted link: deflate costs more CPU than it saves.
    ws = web.WebSocketResponse(heartbeat=10.0, max_msg_size=MAX_FRAME_BYTES, compress=False)
    await ws.prepare(request)
    sockets = request.app[SOCKETS]
    sockets.add(ws)
    try:
        try:
            first = await ws.receive(timeout=HELLO_TIMEOUT_S)
        except TimeoutError:
            return await _refuse(ws, CLOSE_HELLO_TIMEOUT, "no hello within 10 s")
        if first.type != WSMsgType.TEXT:
            return await _refuse(ws, CLOSE_BAD_HELLO, "expected a hello frame")
        try:
            hello = HELLO.validate_json(first.data)
        except ValidationError as exc:
            return await _refuse(ws, CLOSE_BAD_HELLO, f"bad hello: {_first_error(exc)}")
        if not token_ok(hello.token, settings.token.get_secret_value()):
            return await _refuse(ws, CLOSE_UNAUTHORIZED, "wrong or missing HUB_TOKEN")
        link = WsLink(ws, hello.node_id)
        link.send({"type": "welcome", "node_id": hello.node_id, "protocol": PROTOCOL_VERSION})
        try:
            if hello.role == "executor":
                router.executor_connected(link, hello)
                await _serve_executor(ws, link, router)
            else:
                router.bridge_connected(link, hello)
                await _serve_bridge(ws, link, router)
        finally:
            if hello.role == "executor":
                router.executor_disconnected(link)
            else:
                router.bridge_disconnected(link)
            await link.stop()
        return ws
    finally:
        sockets.discard(ws)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "frame"
    return f"{where}: {err.get('msg', 'invalid')}"


async def _serve_executor(ws: web.WebSocketResponse, link: WsLink, router: Router) -> None:
    tasks: set[asyncio.Task[None]] = set()
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                frame = _masked(EXECUTOR_FRAME.validate_json(msg.data))
            except ValidationError as exc:
                link.send(error_frame("bad_frame", _first_error(exc)))
                continue
            if not _storable(frame):
                link.send(error_frame("bad_frame", UNSTORABLE))
                continue
            if isinstance(frame, ResultFrame):
                # Results wait for the store; other runs' frames need not wait with them.
                task = asyncio.create_task(
                    router.on_executor_frame(link, frame), name=f"result:{frame.run_id}"
                )
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            else:
                await router.on_executor_frame(link, frame)
    finally:
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


async def _serve_bridge(ws: web.WebSocketResponse, link: WsLink, router: Router) -> None:
    async for msg in ws:
        if msg.type != WSMsgType.TEXT:
            continue
        try:
            frame = BRIDGE_FRAME.validate_json(msg.data)
        except ValidationError as exc:
            req_id = _req_id(msg.data)
            link.send(error_frame("bad_frame", _first_error(exc), req_id))
            continue
        if not _storable(frame):
            link.send(error_frame("bad_frame", UNSTORABLE, getattr(frame, "req_id", None)))
            continue
        reply = await router.on_bridge_frame(link, frame)
        if reply is not None:
            link.send(reply)


#: The store writes JSON with orjson, which holds integers of 64 bits at most.
_INT_RANGE = range(-(2**63), 2**64)
UNSTORABLE = "a number in the frame does not fit in 64 bits"


def _storable(frame: Any) -> bool:
    """True when the store can write every value of ``frame`` (free-form dicts included)."""
    stack: list[Any] = [frame.model_dump()]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list | tuple):
            stack.extend(value)
        elif isinstance(value, int) and not isinstance(value, bool) and value not in _INT_RANGE:
            return False
    return True


def _masked(frame: Any) -> Any:
    """``frame`` with secrets masked before the hub stores, shows or forwards any of it.

    codex's events and errors can quote anything it read (a stderr line with a key in
    it): they lose registered secrets and credential-shaped tokens. The answer and the
    effective prompt are codex's and the user's text: they lose registered secrets only.
    """
    if isinstance(frame, EventFrame):
        return frame.model_copy(update={"event": redact_json(frame.event)})
    if isinstance(frame, StateFrame) and frame.effective_prompt is not None:
        return frame.model_copy(
            update={"effective_prompt": redact(frame.effective_prompt, shapes=False)}
        )
    if isinstance(frame, ResultFrame):
        update: dict[str, Any] = {"answer": redact(frame.answer, shapes=False)}
        if frame.error is not None:
            update["error"] = redact_json(frame.error)
        if frame.effective_prompt is not None:
            update["effective_prompt"] = redact(frame.effective_prompt, shapes=False)
        return frame.model_copy(update=update)
    if isinstance(frame, StatusFrame) and frame.login is not None:
        login = frame.login.model_copy(update={"detail": redact(frame.login.detail)})
        return frame.model_copy(update={"login": login})
    return frame


def _req_id(data: str) -> str | None:
    try:
        value = json.loads(data).get("req_id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None
