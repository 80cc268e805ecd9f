"""A stub OpenAI-compatible chat-completions server, the upstream of the prompt optimizer.

aiohttp on 127.0.0.1 (ephemeral port) with ``POST /v1/chat/completions`` and
``GET /v1/models``. Both check ``Authorization: Bearer <api_key>`` and answer 401 in
OpenAI's envelope otherwise, echoing the presented key in the message the way some
servers do (so tests can prove it goes no further). Each completion is answered with
the next scripted reply:

- `reply_decision` (optionally inside a ```json fence), `reply_content` (any assistant
  text: invalid JSON, a wrong shape), `reply_body` (a raw HTTP body, not even the
  chat-completions envelope), `reply_status` (an HTTP error), `reply_hang` (headers
  never sent until the server closes);
- with nothing scripted: an executable decision whose prompt is ``optimized: <request>``.

Every request is recorded (`requests`, `completions`) so tests can check the model, the
messages and the header; `wait_for_requests` waits for them without sleeping.

Fixture: `chat_model` (a started `StubChatModel`, closed after the test).
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

#: The key the stub accepts.
CHAT_API_KEY = "sk-chat-stub-KEY-0123456789abcdefghij"
#: The model the stub lists on /v1/models.
CHAT_MODEL = "stub-optimizer-1"
#: The longest a test waits for requests to arrive.
WAIT_S = 10.0


@dataclass
class ChatRequest:
    """One request the stub received: method, path, headers and JSON body."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def authorization(self) -> str:
        """The Authorization header as sent ('' when absent)."""
        return self.headers.get("Authorization", "")

    def message(self, role: str) -> str:
        """The content of the first message with `role` ('' when none)."""
        for msg in self.body.get("messages") or []:
            if msg.get("role") == role:
                return str(msg.get("content", ""))
        return ""


@dataclass
class _Reply:
    kind: str  # "content" | "body" | "status" | "hang"
    text: str = ""
    status: int = 200
    content_type: str = "application/json"


def decision_json(executable: bool, reason: str = "", optimized_prompt: str = "") -> str:
    """A decision object as the optimizer asks for it, serialised."""
    return json.dumps(
        {"executable": executable, "reason": reason, "optimized_prompt": optimized_prompt}
    )


def completion(content: str, model: str) -> dict[str, Any]:
    """A non-streaming chat-completions response carrying `content`."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
    }


@dataclass
class StubChatModel:
    """A scriptable chat-completions + models server on 127.0.0.1."""

    api_key: str = CHAT_API_KEY
    models: Sequence[str] = (CHAT_MODEL,)
    requests: list[ChatRequest] = field(default_factory=list)
    _script: deque[_Reply] = field(default_factory=deque)
    _runner: web.AppRunner | None = None
    _port: int = 0
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def port(self) -> int:
        """The TCP port the stub listens on."""
        return self._port

    @property
    def base_url(self) -> str:
        """What ``OPENAI_BASE_URL`` should be: ``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self._port}/v1"

    @property
    def completions(self) -> list[ChatRequest]:
        """The ``POST /v1/chat/completions`` requests, in order."""
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    # --- script ---------------------------------------------------------------------

    def reply_decision(
        self,
        executable: bool = True,
        reason: str = "",
        optimized_prompt: str = "",
        *,
        fenced: bool = False,
    ) -> None:
        """Answer the next completion with a decision, bare or in a ```json fence."""
        text = decision_json(executable, reason, optimized_prompt)
        if fenced:
            text = f"Here is my decision:\n```json\n{text}\n```\n"
        self.reply_content(text)

    def reply_content(self, text: str) -> None:
        """Answer the next completion with an assistant message whose content is `text`."""
        self._script.append(_Reply("content", text))

    def reply_body(self, text: str, *, status: int = 200, content_type: str = "text/html") -> None:
        """Answer the next completion with `text` as the raw HTTP body."""
        self._script.append(_Reply("body", text, status, content_type))

    def reply_status(self, status: int = 500, message: str = "stub says no") -> None:
        """Answer the next completion with an HTTP error in OpenAI's envelope."""
        self._script.append(_Reply("status", message, status))

    def reply_hang(self) -> None:
        """Hold the next completion open without headers until the stub closes."""
        self._script.append(_Reply("hang"))

    async def wait_for_requests(self, count: int) -> list[ChatRequest]:
        """Wait (at most WAIT_S) until `count` requests arrived; return them all."""
        async with asyncio.timeout(WAIT_S), self._changed:
            await self._changed.wait_for(lambda: len(self.requests) >= count)
        return list(self.requests)

    # --- lifecycle ------------------------------------------------------------------

    async def __aenter__(self) -> StubChatModel:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Listen on an ephemeral loopback port."""
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle_completion)
        app.router.add_get("/v1/models", self._handle_models)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self._port = int(sock.getsockname()[1])
        await web.SockSite(self._runner, sock).start()

    async def close(self) -> None:
        """Release hanging requests and stop listening; safe to call twice."""
        self._release.set()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    # --- handlers -------------------------------------------------------------------

    async def _record(self, request: web.Request) -> ChatRequest:
        body: dict[str, Any] = {}
        if request.can_read_body:
            try:
                parsed = await request.json()
            except (ValueError, UnicodeDecodeError):
                parsed = None
            body = parsed if isinstance(parsed, dict) else {}
        recorded = ChatRequest(request.method, request.path, dict(request.headers), body)
        async with self._changed:
            self.requests.append(recorded)
            self._changed.notify_all()
        return recorded

    def _unauthorized(self, recorded: ChatRequest) -> web.Response | None:
        presented = recorded.authorization.removeprefix("Bearer ").strip()
        if presented == self.api_key:
            return None
        # Like some real servers, the message quotes the key it was given.
        message = f"Incorrect API key provided: {presented}"
        return _error(401, message, "invalid_request_error", "invalid_api_key")

    async def _handle_models(self, request: web.Request) -> web.Response:
        recorded = await self._record(request)
        refused = self._unauthorized(recorded)
        if refused is not None:
            return refused
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "stub"} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def _handle_completion(self, request: web.Request) -> web.Response:
        recorded = await self._record(request)
        refused = self._unauthorized(recorded)
        if refused is not None:
            return refused
        model = str(recorded.body.get("model", ""))
        if self._script:
            reply = self._script.popleft()
        else:
            optimized = f"optimized: {recorded.message('user')}"
            reply = _Reply("content", decision_json(True, "rewritten", optimized))
        if reply.kind == "hang":
            await self._release.wait()
            return web.Response(status=503)
        if reply.kind == "status":
            return _error(reply.status, reply.text, "server_error", None)
        if reply.kind == "body":
            return web.Response(
                status=reply.status, text=reply.text, content_type=reply.content_type
            )
        return web.json_response(completion(reply.text, model))


def _error(status: int, message: str, kind: str, code: str | None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.json_response(body, status=status)


@pytest.fixture
async def chat_model() -> AsyncIterator[StubChatModel]:
    """A started StubChatModel accepting `CHAT_API_KEY` and serving `CHAT_MODEL`."""
    async with StubChatModel() as stub:
        yield stub
