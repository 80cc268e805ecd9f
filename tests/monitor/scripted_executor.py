"""An executor that speaks the hub's protocol and plays a script instead of running codex.

It connects to ``/ws`` like a real executor (hello, role executor), and answers every
``assign`` by itself, depending on the prompt:

- a prompt starting with ``hold`` goes ``running``, reports a command that has started,
  and then waits: it ends only when the hub sends ``cancel`` (result ``cancelled``);
- a prompt starting with ``fail`` fails at once with a two-line-plus error (codex's
  exit and 30 lines of its stderr);
- a prompt starting with ``say`` plays the script and then says its answer as codex's
  last message too;
- a prompt starting with ``change`` (or an assign with ``open_pr``) plays the script and
  reports a ``workspace`` event with :data:`DIFF` (and :data:`PR_URL` for ``open_pr``);
- any other prompt plays :data:`SCRIPT` (codex's own JSON events: reasoning, commands
  with their exit codes and output, a file change, the agent's message, usage) and
  succeeds with the answer ``answer: <prompt>``.

That is how the monitor's tests get honest ``running`` runs and rich timelines without
codex.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import aiohttp

Frame = dict[str, Any]

#: The diff of a run whose prompt starts with ``change``, and the PR a ``open_pr`` run opens.
DIFF = (
    "diff --git a/README.md b/README.md\n--- a/README.md\n+++ b/README.md\n"
    "@@ -1 +1 @@\n-old line\n+<b>new</b> line\n"
)
PR_URL = "https://github.com/acme/widgets/pull/7"

LONG_OUTPUT = "\n".join(f"FAILED tests/test_{i}.py::test_case - AssertionError" for i in range(40))

#: codex events (as ``codex exec --json`` prints them) with the hub's ``summary`` line.
SCRIPT: list[tuple[dict[str, Any], str | None]] = [
    ({"type": "thread.started", "thread_id": "thread-scripted"}, "codex started"),
    ({"type": "turn.started"}, None),
    (
        {
            "type": "item.completed",
            "item": {"id": "item_0", "type": "reasoning", "text": "Look at the repository first."},
        },
        "thinking: Look at the repository first.",
    ),
    (
        {
            "type": "item.started",
            "item": {
                "id": "item_1",
                "type": "command_execution",
                "command": "git status --short",
                "aggregated_output": "",
                "exit_code": None,
                "status": "in_progress",
            },
        },
        "running `git status --short`",
    ),
    (
        {
            "type": "item.completed",
            "item": {
                "id": "item_1",
                "type": "command_execution",
                "command": "git status --short",
                "aggregated_output": " M README.md\n",
                "exit_code": 0,
                "status": "completed",
            },
        },
        "ran `git status --short` (exit 0)",
    ),
    (
        {
            "type": "item.completed",
            "item": {
                "id": "item_2",
                "type": "command_execution",
                "command": "pytest -q",
                "aggregated_output": LONG_OUTPUT,
                "exit_code": 1,
                "status": "failed",
            },
        },
        "ran `pytest -q` (exit 1)",
    ),
    (
        {
            "type": "item.completed",
            "item": {
                "id": "item_3",
                "type": "file_change",
                "changes": [{"path": "src/app.py", "kind": "update"}],
                "status": "completed",
            },
        },
        "editing src/app.py",
    ),
    (
        {
            "type": "item.completed",
            "item": {"id": "item_4", "type": "agent_message", "text": "Fixed the failing test."},
        },
        "answered",
    ),
    (
        {
            "type": "turn.completed",
            "usage": {"input_tokens": 1234, "cached_input_tokens": 1000, "output_tokens": 56},
        },
        None,
    ),
]

USAGE = {"input_tokens": 1234, "cached_input_tokens": 1000, "output_tokens": 56}


class ScriptedExecutor:
    """A connected fake executor; an async context manager."""

    def __init__(self, url: str, token: str, *, name: str = "scripted-exec", capacity: int = 4):
        self.url = url
        self.token = token
        self.name = name
        self.capacity = capacity
        self.assigned: dict[str, Frame] = {}
        self.cancelled: set[str] = set()
        self._holding: dict[str, asyncio.Event] = {}
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ScriptedExecutor:
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(self.url)
        await self._send(
            {
                "type": "hello",
                "role": "executor",
                "token": self.token,
                "node_id": self.name,
                "name": self.name,
                "capacity": self.capacity,
                "login": {"logged_in": True, "detail": "scripted: no codex"},
            }
        )
        welcome = await self._ws.receive_json(timeout=5)
        assert welcome["type"] == "welcome", welcome
        self._reader = asyncio.create_task(self._read(), name=f"ScriptedExecutor:{self.name}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()

    async def _send(self, frame: Frame) -> None:
        assert self._ws is not None
        await self._ws.send_str(json.dumps(frame))

    async def _read(self) -> None:
        assert self._ws is not None
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            frame = json.loads(message.data)
            if frame.get("type") == "assign":
                self.assigned[frame["run_id"]] = frame
                await self._play(frame)
            elif frame.get("type") == "cancel":
                self.cancelled.add(frame["run_id"])
                await self._finish_cancelled(frame["run_id"])

    async def _play(self, frame: Frame) -> None:
        run_id, prompt = frame["run_id"], frame["prompt"]
        await self._send(
            {"type": "state", "run_id": run_id, "state": "running", "effective_prompt": prompt}
        )
        if prompt.startswith("hold"):
            self._holding[run_id] = asyncio.Event()
            command = {"id": "item_0", "type": "command_execution", "command": "sleep 1000"}
            event = {"type": "item.started", "item": {**command, "status": "in_progress"}}
            await self._event(run_id, 1, event, "running `sleep 1000`")
            return
        if prompt.startswith("fail"):
            stderr = "\n".join(f"stderr line {i}: something went wrong" for i in range(30))
            await self._send(
                {
                    "type": "result",
                    "run_id": run_id,
                    "status": "failed",
                    "error": {"code": "codex_failed", "message": f"codex exited 1\n{stderr}"},
                }
            )
            return
        for seq, (event, summary) in enumerate(SCRIPT, start=1):
            await self._event(run_id, seq, event, summary)
        if prompt.startswith("say"):  # codex's last message is its answer, as for real
            message = {"id": "item_9", "type": "agent_message", "text": f"answer: {prompt}"}
            await self._event(
                run_id, len(SCRIPT) + 1, {"type": "item.completed", "item": message}, None
            )
        if prompt.startswith("change") or frame.get("open_pr"):
            await self._workspace(run_id, len(SCRIPT) + 2, bool(frame.get("open_pr")))
        await self._send(
            {
                "type": "result",
                "run_id": run_id,
                "status": "succeeded",
                "answer": f"answer: {prompt}",
                "thread_id": "thread-scripted",
                "usage": USAGE,
                "effective_prompt": prompt,
            }
        )

    async def _workspace(self, run_id: str, seq: int, open_pr: bool) -> None:
        """The ``workspace`` event of a run that changed its repository (:data:`DIFF`),
        with a pull request when the run was asked to open one."""
        event = {
            "kind": "workspace",
            "repo": "github.com/acme/widgets",
            "branch": "codex/change-1a2b3c",
            "base_branch": "main",
            "changes": "1 file changed, +1 -1",
            "diff": DIFF,
            "pr_url": PR_URL if open_pr else None,
        }
        await self._send({"type": "event", "run_id": run_id, "seq": seq, "event": event})

    async def _event(
        self, run_id: str, seq: int, data: dict[str, Any], summary: str | None
    ) -> None:
        event: dict[str, Any] = {"kind": "codex", "data": data}
        if summary:
            event["summary"] = summary
        await self._send({"type": "event", "run_id": run_id, "seq": seq, "event": event})

    async def _finish_cancelled(self, run_id: str) -> None:
        if self._holding.pop(run_id, None) is None:
            return
        await self._send(
            {
                "type": "result",
                "run_id": run_id,
                "status": "cancelled",
                "error": {"code": "cancelled", "message": "cancelled; codex was stopped"},
            }
        )
