"""The websocket endpoint ``/ws`` where executors and bridges connect.

Speaks the protocol of :mod:`wire`: checks the hello (the node's credential,
:mod:`hub.credentials`, against its role and platform, and its node id), then feeds
every frame to the router. Frames to the node leave through one writer
task per connection, so the router never waits on a slow socket. What an executor
sends is masked (:func:`kernel.logs.redact`) before the router stores or shows any of it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import WSMsgType, web
from pydantic import ValidationError

from hub.appkeys import AUTH_FAILURES, ROUTER, SETTINGS, SOCKETS
from hub.router import NodeIdTaken, Router
from kernel.credentials import MASTER, credential_role
from kernel.logs import redact, redact_json
from wire import (
    BATCH_SINCE,
    CLOSE_BAD_HELLO,
    CLOSE_FORBIDDEN,
    CLOSE_HELLO_TIMEOUT,
    CLOSE_NODE_ID_TAKEN,
    CLOSE_RATE_LIMITED,
    CLOSE_UNAUTHORIZED,
    HELLO,
    HELLO_TIMEOUT_S,
    HUB_HEARTBEAT_S,
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    AckFrame,
    ErrorCode,
    EventFrame,
    FrameModel,
    Hello,
    ResultFrame,
    Role,
    StateFrame,
    StatusFrame,
    WelcomeFrame,
    batch,
    decode,
    encode_frame,
    error_frame,
)
from wire.codec import TOO_DEEP as TOO_DEEP
from wire.codec import first_error

log = logging.getLogger(__name__)

MAX_FRAME_BYTES = MAX_MESSAGE_BYTES
#: Every message is parsed by jiter (pydantic's parser), which stops past
#: ``wire.MAX_NESTING`` levels without recursing in Python. A deeper message is answered
#: with an ``error`` and left out; the connection stays.


class WsLink:
    """A connected node: frames are queued and written by a task of its own."""

    def __init__(self, ws: web.WebSocketResponse, node_id: str, batches: bool = False) -> None:
        self.ws = ws
        self.node_id = node_id
        #: The node takes several frames in one message (its hello said protocol >= 2).
        self.batches = batches
        self._out: asyncio.Queue[str | None] = asyncio.Queue()
        self._writer = asyncio.create_task(self._write_loop(), name=f"WsLink:{node_id}:writer")
        self._close_task: asyncio.Task[Any] | None = None

    def send(self, frame: FrameModel | Mapping[str, Any]) -> None:
        """Queue a frame (a model, or one dumped by ``FrameModel.dump``) for the node;
        never waits."""
        self._out.put_nowait(encode_frame(frame))

    def close(self, code: int, reason: str) -> None:
        """Close the connection with ``code`` after the frames already queued."""
        if self._close_task is None:
            self._close_task = asyncio.create_task(
                self.ws.close(code=code, message=reason.encode()),
                name=f"WsLink:{self.node_id}:close",
            )

    async def _write_loop(self) -> None:
        out = self._out
        while True:
            data = await out.get()
            if data is None:
                return
            # What queued up while the last message was written goes in one message.
            stop = False
            frames = [data]
            while self.batches and not out.empty():
                more = out.get_nowait()
                if more is None:
                    stop = True
                    break
                frames.append(more)
            try:
                for message in batch(frames):
                    await self.ws.send_str(message)
            except (ConnectionError, RuntimeError):
                return
            if stop:
                return

    async def stop(self) -> None:
        """Stop the writer task."""
        self._writer.cancel()
        await asyncio.gather(self._writer, return_exceptions=True)
        if self._close_task is not None:
            await asyncio.gather(self._close_task, return_exceptions=True)


#: A close frame's reason holds at most 123 bytes.
CLOSE_REASON_BYTES = 123


async def _refuse(ws: web.WebSocketResponse, code: int, reason: str) -> web.WebSocketResponse:
    log.warning("node refused: %s", reason)
    data = reason.encode()
    if len(data) > CLOSE_REASON_BYTES:
        data = data[: CLOSE_REASON_BYTES - 3].decode(errors="ignore").encode() + b"..."
    await ws.close(code=code, message=data)
    return ws


#: Platforms a bridge may not name: the hub's own surfaces, whose sessions it keys so.
RESERVED_PLATFORMS = frozenset({"http", "monitor", "api", "executor", MASTER})


def role_problem(credential: str, hello: Hello) -> str | None:
    """None when a node with ``credential`` (a role, or MASTER) may say ``hello``; else
    why not."""
    if hello.role == "bridge":
        if not hello.platform or hello.platform in RESERVED_PLATFORMS:
            return f"a bridge must name its chat platform (not {hello.platform!r})"
        if credential in (MASTER, hello.platform):
            return None
        whose = "an executor's" if credential == "executor" else f"the {credential} bridge's"
        return f"HUB_TOKEN is {whose}, not a {hello.platform} bridge's"
    if credential in (MASTER, "executor"):
        return None
    return f"HUB_TOKEN is the {credential} bridge's: only `codex-hub token executor` gets runs"


_warned_master: set[tuple[str, str]] = set()


def _warn_master(hello: Hello) -> None:
    role = "executor" if hello.role == "executor" else hello.platform
    key = (role, hello.node_id)
    if key in _warned_master:
        return
    if len(_warned_master) < 10_000:
        _warned_master.add(key)
    log.warning(
        "node %s (%s) presented the hub's own secret (HUB_TOKEN) instead of its role "
        "credential: accepted for this release only (DEPRECATED, it will be refused); "
        "set its HUB_TOKEN to the output of `codex-hub token %s`",
        hello.node_id,
        role,
        role,
    )


async def node_socket(request: web.Request) -> web.WebSocketResponse:
    """Serve one node for as long as it stays connected."""
    settings = request.app[SETTINGS]
    router: Router = request.app[ROUTER]
    # Frames are small JSON on a trusted link: deflate costs more CPU than it saves.
    # Pings and pongs come to _serve (no autoping): each is a heartbeat of the node, its
    # "last seen" on the monitor.
    ws = web.WebSocketResponse(
        heartbeat=HUB_HEARTBEAT_S, max_msg_size=MAX_FRAME_BYTES, compress=False, autoping=False
    )
    await ws.prepare(request)
    sockets = request.app[SOCKETS]
    sockets.add(ws)
    try:
        try:
            first = await ws.receive(timeout=HELLO_TIMEOUT_S)
        except TimeoutError:
            return await _refuse(ws, CLOSE_HELLO_TIMEOUT, f"no hello within {HELLO_TIMEOUT_S:g} s")
        if first.type != WSMsgType.TEXT:
            return await _refuse(ws, CLOSE_BAD_HELLO, "expected a hello frame")
        try:
            hello = HELLO.validate_json(first.data)
        except ValidationError as exc:
            return await _refuse(ws, CLOSE_BAD_HELLO, f"bad hello: {first_error(exc)}")
        credential = credential_role(hello.token, settings.token.get_secret_value())
        if credential is None:
            # A right credential always gets in; only a wrong one counts (not a missing one).
            if hello.token:
                failures = request.app[AUTH_FAILURES]
                client = failures.client(request)
                refused = failures.refusal(client)
                if refused is not None:
                    return await _refuse(ws, CLOSE_RATE_LIMITED, refused[0])
                failures.failed(client)
            return await _refuse(
                ws,
                CLOSE_UNAUTHORIZED,
                "wrong or missing HUB_TOKEN: give this node `codex-hub token "
                "executor|slack|telegram`",
            )
        problem = role_problem(credential, hello)
        if problem is not None:
            return await _refuse(ws, CLOSE_FORBIDDEN, problem)
        try:
            router.check_node_id(hello.node_id, credential)
        except NodeIdTaken as exc:
            return await _refuse(ws, CLOSE_NODE_ID_TAKEN, str(exc))
        if credential == MASTER:
            _warn_master(hello)
        link = WsLink(ws, hello.node_id, batches=hello.protocol >= BATCH_SINCE)
        link.send(WelcomeFrame(node_id=hello.node_id, protocol=PROTOCOL_VERSION))
        try:
            if hello.role == "executor":
                router.executor_connected(link, hello, credential=credential)
                await _serve_executor(ws, link, router)
            else:
                router.bridge_connected(link, hello, credential=credential)
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


async def _serve_executor(ws: web.WebSocketResponse, link: WsLink, router: Router) -> None:
    # A result waits for the store; other runs' frames need not wait with it.
    await _serve(
        ws,
        link,
        "executor",
        router.on_executor_frame,
        ResultFrame,
        router.heard,
        _masked,
    )


async def _serve_bridge(ws: web.WebSocketResponse, link: WsLink, router: Router) -> None:
    # An ack waits for its commit; the next submit need not wait with it.
    await _serve(ws, link, "bridge", router.on_bridge_frame, AckFrame, router.heard)


async def _serve(
    ws: web.WebSocketResponse,
    link: WsLink,
    role: Role,
    apply: Callable[[WsLink, Any], Awaitable[FrameModel | None]],
    aside: type[Any],
    heard: Callable[[WsLink], None],
    mask: Callable[[Any], Any] | None = None,
) -> None:
    """Apply a node's frames in order (``mask`` each first), except that those of type
    ``aside`` (they wait for the store) go in tasks of their own: later frames do not
    wait for them. A ping is answered; a ping or a pong is a heartbeat (``heard``)."""
    tasks: set[asyncio.Task[None]] = set()
    try:
        async for msg in ws:
            if msg.type == WSMsgType.PING:
                await ws.pong(msg.data)
                heard(link)
                continue
            if msg.type == WSMsgType.PONG:
                heard(link)
                continue
            if msg.type != WSMsgType.TEXT:
                continue
            # Each frame that is malformed or holds what the store cannot write is
            # answered with an ``error`` (``bad_frame``, with its ``req_id`` when it has
            # one) and left out; the rest of a batch is applied all the same.
            decoded = decode(msg.data, role)
            for error in decoded.errors:
                link.send(error)
            for frame in decoded.frames:
                if mask is not None:
                    frame = mask(frame)
                if isinstance(frame, aside):
                    task = asyncio.create_task(
                        _apply(link, frame, apply(link, frame)), name=f"{frame.type}:{link.node_id}"
                    )
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                else:
                    await _apply(link, frame, apply(link, frame))
    finally:
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


async def _apply(link: WsLink, frame: Any, applying: Awaitable[FrameModel | None]) -> None:
    """Apply one frame and send its answer; if that fails, only this frame is lost.

    The failure is logged and the node hears an ``error`` (with the frame's ``req_id``);
    the connection stays.
    """
    try:
        reply = await applying
    except Exception:
        run_id = getattr(frame, "run_id", None)
        log.exception(
            "node %s: handling its %s frame failed%s",
            link.node_id,
            frame.type,
            f" (run {run_id})" if run_id else "",
            extra={"run_id": run_id} if run_id else None,
        )
        reply = error_frame(
            ErrorCode.INTERNAL_ERROR,
            f"the hub failed to handle this {frame.type} frame (its log says why); "
            "the connection stays open",
            getattr(frame, "req_id", None),
        )
    if reply is not None:
        link.send(reply)


def _masked(frame: Any) -> Any:
    """``frame`` with secrets masked before the hub stores, shows or forwards any of it.

    codex's events and errors can quote anything it read (a stderr line with a key in
    it): they lose registered secrets and credential-shaped tokens. The answer and the
    effective prompt are codex's and the user's text: they lose registered secrets only.
    """
    # redact/redact_json return their argument itself when nothing needed masking: then
    # the frame is kept as it is (copying a model is most of the cost of this check).
    if isinstance(frame, EventFrame):
        event = redact_json(frame.event)
        return frame if event is frame.event else frame.model_copy(update={"event": event})
    if isinstance(frame, StateFrame) and frame.effective_prompt is not None:
        prompt = redact(frame.effective_prompt, shapes=False)
        if prompt is frame.effective_prompt:
            return frame
        return frame.model_copy(update={"effective_prompt": prompt})
    if isinstance(frame, ResultFrame):
        update: dict[str, Any] = {"answer": redact(frame.answer, shapes=False)}
        if frame.error is not None:
            update["error"] = redact_json(frame.error)
        if frame.effective_prompt is not None:
            update["effective_prompt"] = redact(frame.effective_prompt, shapes=False)
        if all(value is getattr(frame, name) for name, value in update.items()):
            return frame
        return frame.model_copy(update=update)
    if isinstance(frame, StatusFrame) and frame.login is not None:
        login = frame.login.model_copy(update={"detail": redact(frame.login.detail)})
        return frame.model_copy(update={"login": login})
    return frame
