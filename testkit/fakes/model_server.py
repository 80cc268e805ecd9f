"""A stub Responses-API model server, so tests can run the real codex binary offline.

codex only speaks the Responses API: it POSTs `/v1/responses` once per model turn and
reads an SSE stream back (see /work/shared/CODEX.md). The stub answers each request
with the next scripted reply (text, an `exec_command` tool call, an HTTP error, or a
hang without headers) and records every request so a test can inspect what codex sent.

Fixtures: `model_server`, `codex_home`, `codex_home_logged_out`, `unreachable_port`,
`codex_tmpdir`, `executor_settings` (a factory) and `codex_bin`.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from executor.codex import resolve_codex_bin
from executor.settings import ExecutorSettings

#: The key `codex login --with-api-key` stores; the stub expects it as the bearer token.
STUB_API_KEY = "sk-stub-0123456789abcdefghijklmnopqrstuvwxyz"
#: The longest a test waits for codex to reach the stub.
WAIT_S = 30.0
#: Token counts every `response.completed` reports.
STUB_USAGE = {"input_tokens": 120, "cached_input_tokens": 20, "output_tokens": 7}


@dataclass
class RecordedRequest:
    """One request codex sent to the stub: path, headers and parsed JSON body."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def text(self) -> str:
        """The whole body as JSON text, for substring checks."""
        return json.dumps(self.body)


@dataclass
class _Reply:
    kind: str  # "text" | "exec" | "patch" | "status" | "hang" | "stall" | "gated" | "paced"
    text: str = ""
    status: int = 200
    justification: str = ""  # an exec that asks for escalated permissions, and why
    gate: asyncio.Event | None = None
    #: "paced": the answer's deltas, each after the first sent once its gate is set.
    parts: list[str] = field(default_factory=list)
    gates: list[asyncio.Event] = field(default_factory=list)


def _sse(event_type: str, payload: dict[str, Any]) -> bytes:
    """One SSE frame the way the Responses API streams it."""
    data = json.dumps({"type": event_type, **payload})
    return f"event: {event_type}\ndata: {data}\n\n".encode()


def _usage() -> dict[str, Any]:
    return {
        "input_tokens": STUB_USAGE["input_tokens"],
        "input_tokens_details": {"cached_tokens": STUB_USAGE["cached_input_tokens"]},
        "output_tokens": STUB_USAGE["output_tokens"],
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": STUB_USAGE["input_tokens"] + STUB_USAGE["output_tokens"],
    }


def text_frames(text: str) -> list[bytes]:
    """The frames of a turn whose answer is the assistant message `text`."""
    resp_id, msg_id = f"resp_{uuid.uuid4().hex}", f"msg_{uuid.uuid4().hex}"
    item = {"type": "message", "role": "assistant", "id": msg_id, "status": "completed"}
    done = {**item, "content": [{"type": "output_text", "text": text, "annotations": []}]}
    return [
        _sse("response.created", {"response": {"id": resp_id}}),
        _sse("response.output_item.added", {"output_index": 0, "item": {**item, "content": []}}),
        _sse(
            "response.output_text.delta",
            {"item_id": msg_id, "output_index": 0, "content_index": 0, "delta": text},
        ),
        _sse("response.output_item.done", {"output_index": 0, "item": done}),
        _sse("response.completed", {"response": {"id": resp_id, "usage": _usage()}}),
    ]


def paced_frames(parts: list[str]) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """The frames of a turn whose answer is ``"".join(parts)``, one delta per part:
    (the frames before the deltas, the deltas, the frames after them)."""
    resp_id, msg_id = f"resp_{uuid.uuid4().hex}", f"msg_{uuid.uuid4().hex}"
    item = {"type": "message", "role": "assistant", "id": msg_id, "status": "completed"}
    text = "".join(parts)
    done = {**item, "content": [{"type": "output_text", "text": text, "annotations": []}]}
    place = {"item_id": msg_id, "output_index": 0, "content_index": 0}
    head = [
        _sse("response.created", {"response": {"id": resp_id}}),
        _sse("response.output_item.added", {"output_index": 0, "item": {**item, "content": []}}),
    ]
    deltas = [_sse("response.output_text.delta", {**place, "delta": part}) for part in parts]
    tail = [
        _sse("response.output_item.done", {"output_index": 0, "item": done}),
        _sse("response.completed", {"response": {"id": resp_id, "usage": _usage()}}),
    ]
    return head, deltas, tail


def exec_frames(cmd: str, justification: str = "") -> list[bytes]:
    """The frames of a turn that asks codex to run `cmd` with its `exec_command` tool.

    With a `justification` the call asks to run outside the sandbox
    (``sandbox_permissions: require_escalated``), which codex's app-server turns into an
    approval request; ``login: false`` keeps the approved command out of a login shell.
    """
    resp_id = f"resp_{uuid.uuid4().hex}"
    arguments: dict[str, Any] = {"cmd": cmd}
    if justification:
        arguments.update(
            sandbox_permissions="require_escalated", justification=justification, login=False
        )
    item = {
        "type": "function_call",
        "id": f"fc_{uuid.uuid4().hex}",
        "call_id": f"call_{uuid.uuid4().hex}",
        "name": "exec_command",
        "arguments": json.dumps(arguments),
        "status": "completed",
    }
    return [
        _sse("response.created", {"response": {"id": resp_id}}),
        _sse("response.output_item.done", {"output_index": 0, "item": item}),
        _sse("response.completed", {"response": {"id": resp_id, "usage": _usage()}}),
    ]


def patch_frames(patch: str) -> list[bytes]:
    """The frames of a turn that asks codex to apply `patch` with its `apply_patch` tool."""
    resp_id = f"resp_{uuid.uuid4().hex}"
    item = {
        "type": "custom_tool_call",
        "id": f"ctc_{uuid.uuid4().hex}",
        "call_id": f"call_{uuid.uuid4().hex}",
        "name": "apply_patch",
        "input": patch,
        "status": "completed",
    }
    return [
        _sse("response.created", {"response": {"id": resp_id}}),
        _sse("response.output_item.done", {"output_index": 0, "item": item}),
        _sse("response.completed", {"response": {"id": resp_id, "usage": _usage()}}),
    ]


@dataclass
class StubModelServer:
    """A scriptable `POST /v1/responses` server on 127.0.0.1 with an ephemeral port."""

    requests: list[RecordedRequest] = field(default_factory=list)
    default_text: str = "stub: no scripted reply"
    _script: deque[_Reply] = field(default_factory=deque)
    _runner: web.AppRunner | None = None
    _port: int = 0
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        return self._port

    @property
    def base_url(self) -> str:
        """What codex takes as the provider's `base_url` (it appends `/responses`)."""
        return f"http://127.0.0.1:{self._port}/v1"

    def reply_text(self, text: str) -> None:
        """Answer the next request with the assistant message `text`."""
        self._script.append(_Reply("text", text))

    def reply_exec(self, cmd: str, then: str) -> None:
        """Ask codex to run `cmd`, then answer its follow-up request with `then`."""
        self._script.append(_Reply("exec", cmd))
        self._script.append(_Reply("text", then))

    def reply_escalated_exec(self, cmd: str, justification: str, then: str) -> None:
        """Ask codex to run `cmd` outside the sandbox (an approval request under the
        app-server), then answer its follow-up request with `then`."""
        self._script.append(_Reply("exec", cmd, justification=justification))
        self._script.append(_Reply("text", then))

    def reply_patch(self, patch: str, then: str) -> None:
        """Ask codex to apply `patch` (apply_patch's format), then answer with `then`."""
        self._script.append(_Reply("patch", patch))
        self._script.append(_Reply("text", then))

    def reply_stall(self) -> None:
        """Start streaming the next answer (headers, ``response.created``), then stall
        until the server closes; codex drops such a stream on `turn/steer`."""
        self._script.append(_Reply("stall"))

    def reply_gated(self, text: str) -> asyncio.Event:
        """Answer the next request with `text` once the returned Event is set."""
        gate = asyncio.Event()
        self._script.append(_Reply("gated", text, gate=gate))
        return gate

    def reply_paced(self, parts: list[str]) -> list[asyncio.Event]:
        """Answer the next request with ``"".join(parts)``, streamed one delta per part:
        the first at once, each later one once its Event (returned, in order) is set."""
        gates = [asyncio.Event() for _ in parts[1:]]
        self._script.append(_Reply("paced", "".join(parts), parts=list(parts), gates=gates))
        return gates

    def reply_status(self, status: int = 500, text: str = "stub says no") -> None:
        """Answer the next request with a plain HTTP error."""
        self._script.append(_Reply("status", text, status))

    def reply_hang(self) -> None:
        """Hold the next request open without ever sending headers."""
        self._script.append(_Reply("hang"))

    async def wait_for_requests(self, count: int) -> list[RecordedRequest]:
        """Wait (at most WAIT_S) until `count` requests have arrived; return them all."""
        async with asyncio.timeout(WAIT_S), self._changed:
            await self._changed.wait_for(lambda: len(self.requests) >= count)
        return list(self.requests)

    async def start(self) -> None:
        """Listen on an ephemeral loopback port."""
        app = web.Application()
        app.router.add_post("/v1/responses", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self._port = int(sock.getsockname()[1])
        await web.SockSite(self._runner, sock).start()

    async def close(self) -> None:
        """Release hanging requests and stop; safe to call twice."""
        self._release.set()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            body = {}
        async with self._changed:
            self.requests.append(RecordedRequest(request.path, dict(request.headers), body))
            self._changed.notify_all()
        reply = self._script.popleft() if self._script else _Reply("text", self.default_text)
        if reply.kind == "hang":
            # Never answer: codex waits on headers until its process is killed.
            await self._release.wait()
            return web.Response(status=503)
        if reply.kind == "status":
            return error_response(reply.text, reply.status)
        if reply.kind == "stall":
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(_sse("response.created", {"response": {"id": "resp_stall"}}))
            await self._release.wait()
            return response
        if reply.gate is not None:
            waits = (
                asyncio.ensure_future(reply.gate.wait()),
                asyncio.ensure_future(self._release.wait()),
            )
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
        if reply.kind == "paced":
            return await self._paced(request, reply)
        if reply.kind == "exec":
            frames = exec_frames(reply.text, reply.justification)
        elif reply.kind == "patch":
            frames = patch_frames(reply.text)
        else:
            frames = text_frames(reply.text)
        return await stream(request, frames)

    async def _paced(self, request: web.Request, reply: _Reply) -> web.StreamResponse:
        head, deltas, tail = paced_frames(reply.parts)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for frame in head:
            await response.write(frame)
        for frame, gate in zip(deltas, [None, *reply.gates], strict=True):
            if gate is not None:
                release = asyncio.ensure_future(self._release.wait())
                opened = asyncio.ensure_future(gate.wait())
                try:
                    await asyncio.wait({release, opened}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    release.cancel()
                    opened.cancel()
            await response.write(frame)
        for frame in tail:
            await response.write(frame)
        await response.write_eof()
        return response


def config_toml(base_url: str, *, requires_openai_auth: bool = True) -> str:
    """A CODEX_HOME config.toml that sends every model turn to the stub at `base_url`."""
    auth = "requires_openai_auth = true" if requires_openai_auth else 'env_key = "STUB_API_KEY"'
    return f"""\
model = "gpt-5.5"
model_provider = "stub"

[model_providers.stub]
name = "Local stub"
base_url = "{base_url}"
wire_api = "responses"
{auth}
request_max_retries = 0
stream_max_retries = 0
stream_idle_timeout_ms = 10000

[analytics]
enabled = false

# No login shell at codex's start: on a machine whose ~/.bashrc runs `pyenv rehash`, a
# test that kills codex early could leave pyenv's lock file behind for everyone.
[features]
shell_snapshot = false
"""


def make_codex_home(path: Path, base_url: str, codex_bin: str, *, logged_in: bool) -> Path:
    """Create a CODEX_HOME at `path` for the stub, logged in with `STUB_API_KEY` if asked."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.toml").write_text(config_toml(base_url))
    if logged_in:
        env = {**os.environ, "CODEX_HOME": str(path)}
        subprocess.run(
            [codex_bin, "login", "--with-api-key"],
            input=STUB_API_KEY.encode(),
            env=env,
            check=True,
            capture_output=True,
            timeout=30,
        )
    return path


@pytest.fixture(scope="session")
def codex_bin() -> str:
    """The native codex binary: `CODEX_BIN` when set, else resolved; skips when absent."""
    try:
        return resolve_codex_bin(os.environ.get("CODEX_BIN", ""))
    except FileNotFoundError:
        pytest.skip("codex binary not installed (run `make install`)")


@pytest.fixture
async def model_server() -> AsyncIterator[StubModelServer]:
    """A stub model server, started for one test and stopped after it."""
    server = StubModelServer()
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
def codex_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point TMPDIR away from the CODEX_HOMEs, which quiets codex's temp-dir warning."""
    # codex warns when CODEX_HOME sits under the system temp dir (tmp_path does).
    path = tmp_path / "tmp"
    path.mkdir(exist_ok=True)
    monkeypatch.setenv("TMPDIR", str(path))
    return path


@pytest.fixture
def codex_home(
    tmp_path: Path, model_server: StubModelServer, codex_bin: str, codex_tmpdir: Path
) -> Path:
    """A CODEX_HOME pointing at `model_server`, logged in with an API key."""
    home = tmp_path / "codex-home"
    return make_codex_home(home, model_server.base_url, codex_bin, logged_in=True)


@pytest.fixture
def codex_home_logged_out(
    tmp_path: Path, model_server: StubModelServer, codex_bin: str, codex_tmpdir: Path
) -> Path:
    """A CODEX_HOME pointing at `model_server`, never logged in."""
    home = tmp_path / "codex-home-out"
    return make_codex_home(home, model_server.base_url, codex_bin, logged_in=False)


@pytest.fixture
def unreachable_port() -> int:
    """A loopback TCP port nothing listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def executor_settings(tmp_path: Path) -> Callable[..., ExecutorSettings]:
    """A factory of ExecutorSettings for tests: no .env, a fresh workdir, keyword overrides."""

    def make(**overrides: Any) -> ExecutorSettings:
        workdir = tmp_path / "work"
        workdir.mkdir(exist_ok=True)
        values: dict[str, Any] = {
            # Empty means resolved on first use, so codex-free tests never need the binary.
            "codex_bin": os.environ.get("CODEX_BIN", ""),
            "codex_home": None,
            "codex_model": "",
            "codex_sandbox": "workspace-write",
            "codex_network_access": True,
            "codex_extra_args": "",
            "exec_workdir": workdir,
            "exec_timeout_s": 30.0,
            "exec_dry_run": False,
        }
        values.update(overrides)
        return ExecutorSettings(_env_file=None, **values)  # type: ignore[call-arg]

    return make


def error_response(message: str, status: int) -> web.Response:
    """An error answer in the Responses API's shape."""
    return web.json_response({"error": {"message": message, "type": "server_error"}}, status=status)


async def stream(request: web.Request, frames: Iterable[bytes]) -> web.StreamResponse:
    """``frames`` (SSE events) as one streamed answer."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for frame in frames:
        await response.write(frame)
    await response.write_eof()
    return response
