"""A stub model for runs that overlap, and gates that hold codex in the middle of a run.

testkit/fakes/model_server.py answers requests in arrival order, which cannot tell two
runs apart once they run side by side. :class:`KeyedModel` answers each request from
the script of the key its conversation contains (a key is a word in the user's
prompt, unique to one run), so several codex processes can be at different steps at
once. A :class:`Gate` is a shell command for codex to run that says when it started
and then waits until the test opens the gate: codex is then mid-run, for as long as
the test needs (up to the 30 s codex lets one command hold a turn).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from testkit.fakes.model_server import (
    STUB_USAGE,
    RecordedRequest,
    error_response,
    stream,
    text_frames,
)

#: How long a test waits for codex to reach the model or a gate.
WAIT_S = 30.0
#: codex hands a still-running command back to the model after `yield_time_ms`, which
#: it caps at 30 s; a gate asks for the cap so it holds the turn as long as possible.
YIELD_MS = 30_000


def _sse(event_type: str, payload: dict[str, Any]) -> bytes:
    data = json.dumps({"type": event_type, **payload})
    return f"event: {event_type}\ndata: {data}\n\n".encode()


def _completed(resp_id: str) -> bytes:
    usage = {
        "input_tokens": STUB_USAGE["input_tokens"],
        "input_tokens_details": {"cached_tokens": STUB_USAGE["cached_input_tokens"]},
        "output_tokens": STUB_USAGE["output_tokens"],
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": STUB_USAGE["input_tokens"] + STUB_USAGE["output_tokens"],
    }
    return _sse("response.completed", {"response": {"id": resp_id, "usage": usage}})


def command_frames(cmd: str) -> list[bytes]:
    """A turn asking codex to run `cmd`, waiting up to YIELD_MS for it to finish."""
    resp_id = f"resp_{uuid.uuid4().hex}"
    item = {
        "type": "function_call",
        "id": f"fc_{uuid.uuid4().hex}",
        "call_id": f"call_{uuid.uuid4().hex}",
        "name": "exec_command",
        "arguments": json.dumps({"cmd": cmd, "yield_time_ms": YIELD_MS}),
        "status": "completed",
    }
    return [
        _sse("response.created", {"response": {"id": resp_id}}),
        _sse("response.output_item.done", {"output_index": 0, "item": item}),
        _completed(resp_id),
    ]


@dataclass(frozen=True)
class _Turn:
    kind: str  # "text" | "command" | "status"
    text: str
    status: int = 200


def new_key(prefix: str = "job") -> str:
    """A word that names one run in its prompt and nowhere else."""
    return f"{prefix}-{secrets.token_hex(4)}"


class KeyedModel:
    """A `POST /v1/responses` server on 127.0.0.1 answering by key (see the module doc)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str | None, RecordedRequest]] = []
        self._scripts: dict[str, deque[_Turn]] = {}
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._port = 0

    @property
    def base_url(self) -> str:
        """What codex takes as the provider's `base_url`."""
        return f"http://127.0.0.1:{self._port}/v1"

    def answer(self, key: str, text: str) -> None:
        """The next turn of `key`'s run answers `text`."""
        self._scripts.setdefault(key, deque()).append(_Turn("text", text))

    def command(self, key: str, cmd: str, then: str | None = None) -> None:
        """The next turn of `key`'s run runs `cmd`; the turn after it answers `then`."""
        self._scripts.setdefault(key, deque()).append(_Turn("command", cmd))
        if then is not None:
            self.answer(key, then)

    def fail(self, key: str, status: int = 500) -> None:
        """The next turn of `key`'s run gets an HTTP error (codex then fails the run)."""
        self._scripts.setdefault(key, deque()).append(_Turn("status", "stub says no", status))

    def requests_for(self, key: str) -> list[RecordedRequest]:
        """The requests of `key`'s run so far."""
        return [request for k, request in self.requests if k == key]

    async def wait_for_requests(self, key: str, count: int) -> list[RecordedRequest]:
        """Wait (at most WAIT_S) until `key`'s run sent `count` requests."""
        async with asyncio.timeout(WAIT_S), self._changed:
            await self._changed.wait_for(lambda: len(self.requests_for(key)) >= count)
        return self.requests_for(key)

    async def start(self) -> None:
        """Listen on an ephemeral loopback port."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/responses", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self._port = int(sock.getsockname()[1])
        await web.SockSite(self._runner, sock).start()

    async def close(self) -> None:
        """Stop listening; safe to call twice."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            body = {}
        text = json.dumps(body)
        # The key mentioned last: a resumed conversation also holds earlier runs' keys.
        key = max(self._scripts, key=text.rfind, default=None)
        if key is not None and key not in text:
            key = None
        async with self._changed:
            self.requests.append((key, RecordedRequest(request.path, dict(request.headers), body)))
            self._changed.notify_all()
        script = self._scripts.get(key) if key else None
        turn = script.popleft() if script else _Turn("text", f"no script for {key}")
        if turn.kind == "status":
            return error_response(turn.text, turn.status)
        frames = command_frames(turn.text) if turn.kind == "command" else text_frames(turn.text)
        return await stream(request, frames)


class Gate:
    """A command that tells the test it runs (a FIFO), then waits until the gate opens.

    The waiting is the command's own loop on a file, so opening the gate never blocks
    the test (a FIFO's writer would block until the reader comes).
    """

    def __init__(self, workdir: Path, name: str, *, before: str = "") -> None:
        self.name = name
        self.workdir = workdir
        self.before = before
        self._ready_path = workdir / f"{name}.ready"
        self._go_path = workdir / f"{name}.go"
        os.mkfifo(self._ready_path)
        # Non-blocking, so the open needs no writer yet; the loop wakes us when one writes.
        self._fd = os.open(self._ready_path, os.O_RDONLY | os.O_NONBLOCK)
        self._watching = True
        self._ready = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._on_ready)

    @property
    def command(self) -> str:
        """What codex runs: `before`, signal, wait for the gate, then print `released`."""
        return (
            f"{self.before}echo ready > {self.name}.ready && "
            f"until [ -e {self.name}.go ]; do sleep 0.05; done && echo {self.released}"
        )

    @property
    def released(self) -> str:
        """What the command prints once through the gate (codex hands it to the model)."""
        return f"{self.name}-released"

    def _on_ready(self) -> None:
        # Read-ready stays true at EOF: stop watching at once, or the loop spins.
        self._unwatch()
        self._ready.set()

    def _unwatch(self) -> None:
        if self._watching:
            self._watching = False
            self._loop.remove_reader(self._fd)

    async def wait_ready(self, timeout: float = WAIT_S) -> None:
        """Wait until codex runs the command."""
        async with asyncio.timeout(timeout):
            await self._ready.wait()

    def open(self) -> None:
        """Let the command finish."""
        self._go_path.touch()

    def close(self) -> None:
        """Stop watching the FIFO (idempotent)."""
        if self._fd >= 0:
            self._unwatch()
            os.close(self._fd)
            self._fd = -1
