"""Real codex-hub processes for the tests: started with ``python -m codex_hub``, their
output kept (stdout and stderr together), stopped with SIGTERM (SIGKILL if they hang).

Each process gets a session of its own, so stopping it ends what it started and nothing
else; its working directory is the test's temp dir, so no ``.env`` is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

#: Settings a test process must not inherit from the shell that runs the tests.
_SETTING_PREFIXES = (
    "HUB_", "EXEC_", "SSH_", "OPENAI_", "OPENWEBUI_", "LITELLM_", "SLACK_", "TELEGRAM_",
    "OPTIMIZE_", "LOG_", "NODE_NAME", "MODEL", "AVAILABLE_CLIS", "CODEX_",
)  # fmt: skip
STOP_S = 15.0


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without any codex-hub setting, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SETTING_PREFIXES)}
    env.update(settings)
    return env


class Proc:
    """One codex-hub command as a child process; an async context manager."""

    def __init__(self, name: str, args: list[str], env: Mapping[str, str], cwd: Path) -> None:
        self.name = name
        self.args = args
        self.env = dict(env)
        self.cwd = cwd
        self.lines: list[str] = []
        self.returncode: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def output(self) -> str:
        """Everything the process wrote so far."""
        return "\n".join(self.lines)

    async def start(self) -> None:
        """Start ``python -m codex_hub ARGS``."""
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "codex_hub",
            *self.args,
            env=self.env,
            cwd=self.cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        self._reader = asyncio.create_task(self._read(), name=f"Proc:{self.name}:reader")

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        async for raw in self._proc.stdout:
            async with self._changed:
                self.lines.append(raw.decode("utf-8", errors="replace").rstrip("\n"))
                self._changed.notify_all()
        self.returncode = await self._proc.wait()
        async with self._changed:
            self._changed.notify_all()

    async def wait_for_line(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """The first output line matching ``pattern``; fails if the process ends first."""
        regex = re.compile(pattern)
        seen = 0
        try:
            async with asyncio.timeout(timeout), self._changed:
                while True:
                    for line in self.lines[seen:]:
                        if match := regex.search(line):
                            return match
                    seen = len(self.lines)
                    if self.returncode is not None:
                        raise AssertionError(
                            f"{self.name} exited {self.returncode}:\n{self.output[-3000:]}"
                        )
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"{self.name} never logged {pattern!r}:\n{self.output[-3000:]}"
            ) from None

    async def wait(self, timeout: float = 20.0) -> int:
        """Wait for the process to end by itself; its exit code."""
        assert self._proc is not None
        async with asyncio.timeout(timeout):
            code = await self._proc.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        return code

    def rss_kib(self) -> int:
        """Resident memory (VmRSS) of the process, in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError(f"no VmRSS for {self.name}")

    async def stop(self) -> int:
        """SIGTERM to the process's session, SIGKILL after STOP_S; its exit code."""
        if self._proc is None:
            return 0
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(STOP_S):
                    await self._proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, signal.SIGKILL)
                await self._proc.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        code = await self._proc.wait()
        self.returncode = code
        return code

    async def __aenter__(self) -> Proc:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def start_hub(cwd: Path, env: Mapping[str, str]) -> tuple[Proc, int]:
    """``codex-hub serve`` on a free port of 127.0.0.1; the process and its port."""
    hub = Proc("hub", ["serve"], {**env, "HUB_HOST": "127.0.0.1", "HUB_PORT": "0"}, cwd)
    await hub.start()
    try:
        match = await hub.wait_for_line(r"hub listening on http://127\.0\.0\.1:(\d+)")
    except BaseException:
        await hub.stop()
        raise
    return hub, int(match.group(1))


async def wait_for_nodes(
    port: int, key: str, executors: int, platforms: set[str], timeout: float = 30.0
) -> list[dict[str, Any]]:
    """Wait, on the hub's live feed, until these executors and bridges are connected."""
    url = f"ws://127.0.0.1:{port}/api/feed"
    async with asyncio.timeout(timeout), connect(url) as ws:
        await ws.send(json.dumps({"type": "auth", "key": key}))
        async for raw in ws:
            for message in feed_messages(raw):
                nodes = message.get("nodes")
                if nodes is None:
                    continue
                roles = [n["role"] for n in nodes]
                found = {n.get("platform") for n in nodes if n["role"] == "bridge"}
                if roles.count("executor") >= executors and platforms <= found:
                    return list(nodes)
    raise AssertionError("the feed closed before the nodes connected")


def feed_messages(raw: str | bytes) -> list[dict[str, Any]]:
    """The messages of one feed frame: one object, or a batch of them in an array."""
    parsed = json.loads(raw)
    return [dict(m) for m in parsed] if isinstance(parsed, list) else [dict(parsed)]
