"""What the executor tests share: a recorder of events, a FIFO signal, leftover checks,
and a way to run a program over a transport and keep its lines."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from executor.transport import ProcessResult, Transport
from testkit.procs import processes_under

#: The longest a test waits for something it expects to happen.
WAIT_S = 20.0

#: A child that leaves a grandchild in its group and a great-grandchild in a new session.
SPAWNER = """
import subprocess, sys, time
subprocess.Popen(["sleep", "41"])
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(42)"], start_new_session=True)
print("started", flush=True)
time.sleep(float(sys.argv[1]))
"""


#: Words a shell would split, expand or glob: each must arrive as it was sent.
NASTY = [
    "it's",
    'say "hi"',
    "$(touch pwned)",
    "`touch pwned`",
    "a; touch pwned",
    "*",
    "-n",
    "line one\nline two",
    "",
    "tab\tand \\ backslash",
    "ünïcødé ✓",
]


async def run_lines(
    transport: Transport,
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    timeout_s: float = 20.0,
) -> tuple[list[str], ProcessResult]:
    """Run `argv` over `transport`; its stdout lines and the ProcessResult."""
    lines: list[str] = []
    result = await transport.run(
        argv, env_overrides=env or {}, cwd=cwd, on_stdout_line=lines.append, timeout_s=timeout_s
    )
    return lines, result


class Recorder:
    """Collects emitted events (or lines) and wakes waiters when one matches."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self._changed = asyncio.Event()

    def __call__(self, event: Any) -> None:
        self.events.append(event)
        self._changed.set()

    def codex_types(self) -> list[str]:
        """The `type` of every codex event, in order."""
        return [e["data"]["type"] for e in self.events if e["kind"] == "codex"]

    async def wait_for(self, match: Callable[[Any], bool]) -> Any:
        """The first event that satisfies `match`, waiting (at most 30 s) for it."""
        async with asyncio.timeout(30):
            while True:
                for event in self.events:
                    if match(event):
                        return event
                self._changed.clear()
                await self._changed.wait()


@contextlib.contextmanager
def fifo_signal(path: Path) -> Iterator[asyncio.Event]:
    """An Event set when something writes to the FIFO made at `path`."""
    os.mkfifo(path)
    # Non-blocking, so the open needs no writer; the loop wakes us when one writes.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(fd, event.set)
    try:
        yield event
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def assert_no_process_left(marker: Path) -> None:
    """Nothing started under `marker` (codex, its sandbox, its commands) still runs."""
    assert processes_under([marker]) == {}


async def wait_no_process_left(marker: Path) -> None:
    """Wait (at most WAIT_S) until nothing started under `marker` runs any more."""
    # Nothing to await for processes on the "remote" side: look at /proc every 20 ms.
    deadline = time.monotonic() + WAIT_S
    while processes_under([marker]) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    assert_no_process_left(marker)
