"""Real codex-hub processes for the fault tests: start, wait until ready, SIGKILL, restart.

A :class:`Proc` is one ``codex-hub <subcommand>`` child: its settings come as environment
variables, it runs in a fresh directory of its own (so no developer's ``.env`` is read),
and everything it prints (``LOG_LEVEL=DEBUG``, stderr and stdout) is copied line by line
to a log file under the test's tmp_path and kept in memory, so a test waits for a log
line (:meth:`Proc.wait_for`) instead of sleeping. :class:`Procs` owns every Proc of a
test: at the end it SIGKILLs those still running and then makes sure that nothing they
started outlives them (see :meth:`Procs.close`).

Each child gets ``PR_SET_PDEATHSIG`` = SIGKILL, so even a test runner that dies without
running its finalizers (pytest-timeout's thread method calls ``os._exit``) takes its
codex-hub processes with it; an executor's codex then goes with the executor, through
the run helper's watchdog.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import signal
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

#: How long a test waits for something a process is expected to log.
WAIT_S = 30.0
#: How long stopping a process may take before it is killed.
STOP_S = 10.0
#: How long the processes a dead executor started may take to go (its helper's reap:
#: SIGTERM, at most two grace periods of 2 s, SIGKILL).
LEFTOVER_S = 10.0
#: Lines of each log shown when a test fails.
TAIL_LINES = 400

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL me when the process that started me dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def codex_hub_argv(*args: str) -> list[str]:
    """The ``codex-hub`` console script of this interpreter's environment, with `args`."""
    script = Path(sys.executable).with_name("codex-hub")
    if script.is_file():
        return [str(script), *args]
    return [sys.executable, "-m", "codex_hub", *args]


class ProcExited(AssertionError):
    """A process ended while a test waited for it to log something."""


class Proc:
    """One codex-hub process, restartable, with its output kept and waitable."""

    def __init__(
        self, name: str, args: Sequence[str], env: Mapping[str, str], directory: Path
    ) -> None:
        self.name = name
        self.args = list(args)
        self.env = dict(env)
        self.directory = directory
        self.log_path = directory / f"{name}.log"
        self.lines: list[str] = []
        self.starts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    @property
    def pid(self) -> int:
        """The pid of the running process."""
        assert self._proc is not None, f"{self.name} was never started"
        return self._proc.pid

    @property
    def running(self) -> bool:
        """True while the current process has not exited."""
        return self._proc is not None and self._proc.returncode is None

    @property
    def returncode(self) -> int | None:
        """How the last process ended (None while it runs)."""
        return None if self._proc is None else self._proc.returncode

    async def start(self) -> None:
        """Start the process (again, after it ended); its output goes to the log."""
        assert not self.running, f"{self.name} is already running"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        self._note(f"--- start #{self.starts}: {' '.join(self.args[-2:])}")
        self._proc = await asyncio.create_subprocess_exec(
            *self.args,
            cwd=self.directory,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C meant for pytest is not one for them
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            limit=2**24,
        )
        assert self._proc.stdout is not None
        self._reader = asyncio.create_task(
            self._read(self._proc.stdout), name=f"Proc:{self.name}:reader"
        )

    async def _read(self, stream: asyncio.StreamReader) -> None:
        with self.log_path.open("a", encoding="utf-8") as log:
            while line := await stream.readline():
                text = line.decode("utf-8", errors="replace").rstrip("\n")
                log.write(text + "\n")
                log.flush()
                self.lines.append(text)
                self._changed.set()
        self._changed.set()

    def _note(self, text: str) -> None:
        with self.log_path.open("a", encoding="utf-8") as log:
            log.write(text + "\n")
        self.lines.append(text)

    async def _reap(self) -> None:
        proc = self._proc
        if proc is None:
            return
        await proc.wait()
        if self._reader is None:
            return  # reaped before
        # The pipe may stay open in a grandchild (never, for codex-hub); bounded.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_S):
                await asyncio.shield(self._reader)
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        self._reader = None
        self._note(f"--- exited with {proc.returncode}")

    async def kill(self) -> None:
        """SIGKILL the process, as a crash would, and reap it."""
        if self.running:
            assert self._proc is not None
            self._note("--- SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGKILL)
        await self._reap()

    async def stop(self) -> int | None:
        """SIGTERM (a clean stop), SIGKILL after STOP_S; returns the exit code."""
        if self.running:
            assert self._proc is not None
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(STOP_S):
                    await self._proc.wait()
            except TimeoutError:
                await self.kill()
        await self._reap()
        return self.returncode

    async def restart(self) -> None:
        """SIGKILL it if it runs, then start it again with the same settings."""
        await self.kill()
        await self.start()

    def mark(self) -> int:
        """A position in the output, to pass as ``since`` and ignore earlier lines."""
        return len(self.lines)

    def matches(self, pattern: str, *, since: int = 0) -> list[re.Match[str]]:
        """Every line at or after ``since`` that matches the regular expression."""
        regex = re.compile(pattern)
        return [m for line in self.lines[since:] if (m := regex.search(line))]

    async def wait_for(
        self, pattern: str, *, since: int = 0, count: int = 1, timeout: float = WAIT_S
    ) -> list[re.Match[str]]:
        """Wait until ``count`` lines at or after ``since`` match; returns the matches.

        Fails at once, with the end of the log, if the process ends first.
        """
        regex = re.compile(pattern)
        found: list[re.Match[str]] = []
        checked = since
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._changed.clear()
                    lines, checked = self.lines[checked:], len(self.lines)
                    found += [m for line in lines if (m := regex.search(line))]
                    if len(found) >= count:
                        return found
                    if not self.running and (self._reader is None or self._reader.done()):
                        raise ProcExited(
                            f"{self.name} exited ({self.returncode}) before logging "
                            f"{pattern!r}:\n{self.tail(60)}"
                        )
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"{self.name} did not log {pattern!r} {count}x within {timeout} s:\n{self.tail(60)}"
            ) from None

    async def wait_line(self, pattern: str, *, since: int = 0, timeout: float = WAIT_S) -> str:
        """The first line at or after ``since`` that matches, waiting for it."""
        return (await self.wait_for(pattern, since=since, timeout=timeout))[0].string

    def tail(self, lines: int = TAIL_LINES) -> str:
        """The last ``lines`` lines of the output, across restarts."""
        return "\n".join(self.lines[-lines:])


def processes_under(markers: Iterable[Path], *, exclude: Iterable[int] = ()) -> dict[int, str]:
    """Live processes (not zombies) whose cwd, argv or environment mentions a marker path.

    Returns pid -> a description (stat and command line) for failure messages.
    """
    needles = [os.fsencode(m) for m in markers]
    skip = {os.getpid(), *exclude}
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in skip:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
            if stat.rsplit(b")", 1)[-1].split()[0] == b"Z":
                continue  # exited; its parent has not reaped it yet
            cwd = os.fsencode(os.readlink(f"/proc/{entry}/cwd"))
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read()
            with open(f"/proc/{entry}/environ", "rb") as fh:
                environ = fh.read()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if any(cwd.startswith(n) or n in cmdline or n in environ for n in needles):
            command = cmdline.replace(b"\0", b" ").decode(errors="replace")[:300]
            found[int(entry)] = f"{stat.decode(errors='replace').strip()} :: {command}"
    return found


async def wait_until_gone(
    markers: Iterable[Path], *, exclude: Callable[[], Iterable[int]] = tuple, timeout: float
) -> dict[int, str]:
    """Wait until no process mentions the markers; returns those still there at `timeout`.

    The processes are not our children (a dead executor's helper reaps them), so there
    is no exit to await: /proc is looked at every 50 ms, for at most `timeout`.
    """
    markers = list(markers)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        left = processes_under(markers, exclude=exclude())
        if not left or loop.time() >= deadline:
            return left
        await asyncio.sleep(0.05)


class Procs:
    """Every codex-hub process of one test; :meth:`close` leaves none behind."""

    def __init__(self, directory: Path, base_env: Mapping[str, str]) -> None:
        self.directory = directory
        self.base_env = dict(base_env)
        self.all: dict[str, Proc] = {}
        #: Paths that only the processes of this test mention (its workdirs).
        self.markers: list[Path] = []

    def add(self, name: str, args: Sequence[str], env: Mapping[str, str]) -> Proc:
        """A new (not yet started) process named `name` running ``codex-hub ARGS``."""
        assert name not in self.all, f"two processes named {name}"
        proc = Proc(name, codex_hub_argv(*args), {**self.base_env, **env}, self.directory / name)
        self.all[name] = proc
        return proc

    async def start(self, name: str, args: Sequence[str], env: Mapping[str, str]) -> Proc:
        """Add and start a process."""
        proc = self.add(name, args, env)
        await proc.start()
        return proc

    def live_pids(self) -> set[int]:
        """Pids of the codex-hub processes still running."""
        return {p.pid for p in self.all.values() if p.running}

    async def close(self) -> dict[int, str]:
        """SIGKILL every process still running, then wait for what they left to go.

        Returns the processes that outlived LEFTOVER_S (after SIGKILLing them too), so the
        caller can fail the test: a dead executor must take its codex with it.
        """
        await asyncio.gather(*(p.kill() for p in self.all.values()))
        left = await wait_until_gone(self.markers, timeout=LEFTOVER_S)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return left

    def report(self) -> str:
        """The end of every process's log, for a failed test."""
        parts = []
        for proc in self.all.values():
            parts.append(f"===== {proc.name} ({proc.log_path}) =====\n{proc.tail()}")
        return "\n".join(parts)
