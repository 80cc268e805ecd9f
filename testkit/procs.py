"""Child processes for the tests and the bench: start, wait until ready, stop, kill.

A :class:`Proc` is one command (mostly ``codex-hub <subcommand>``) run as a child in a
session of its own (so a Ctrl-C meant for pytest is not one for it, and its group can
be ended as one). Its settings come as environment variables (:func:`clean_env` drops
those of the shell) and it runs in a directory of its own, so no developer's ``.env``
is read. Two ways to keep what it prints (stdout and stderr together):

- ``capture=True`` (the tests): a reader task copies each line to the log file (if one
  is named) and keeps it in memory, so a test waits for a log line
  (:meth:`Proc.wait_for`) instead of sleeping;
- ``capture=False`` (the bench): the child writes straight to the log file, and the
  process that measures it spends nothing on reading its output.

:meth:`Proc.stop` is a clean stop (SIGTERM, SIGKILL after a grace period); with
``group=True`` it signals the child's whole process group and, once the child is gone,
SIGKILLs what is left of the group. :meth:`Proc.kill` is a crash (SIGKILL, the child
alone). A Proc can be started again after it ended (:meth:`Proc.restart`).

Each child gets ``PR_SET_PDEATHSIG`` = SIGKILL, so even a test runner that dies without
running its finalizers (pytest-timeout's thread method calls ``os._exit``) takes its
processes with it. :class:`Procs` owns every Proc of a test: at the end it SIGKILLs
those still running and then makes sure that nothing they started outlives them.
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
from types import TracebackType
from typing import IO

#: Settings of the project's processes, and proxies: a child must not inherit them from
#: the shell that runs the tests or the bench (its settings are exactly those given).
SETTING_PREFIXES = (
    "HUB_", "EXEC_", "SSH_", "OPENAI_", "OPENWEBUI_", "LITELLM_", "SLACK_", "TELEGRAM_",
    "OPTIMIZE_", "LOG_", "NODE_NAME", "MODEL", "AVAILABLE_CLIS", "CODEX_", "BRIDGE_",
    "WORKSPACE_", "GIT_DEFAULT_HOST",
    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
)  # fmt: skip

#: How long a test waits for something a process is expected to log.
WAIT_S = 30.0
#: How long a clean stop may take before the process is killed.
STOP_S = 15.0
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


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without any codex-hub setting or proxy, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTING_PREFIXES)}
    env.update(settings)
    return env


def codex_hub_argv(*args: str) -> list[str]:
    """The ``codex-hub`` console script of this interpreter's environment, with `args`."""
    script = Path(sys.executable).with_name("codex-hub")
    if script.is_file():
        return [str(script), *args]
    return [sys.executable, "-m", "codex_hub", *args]


def rss_kib(pid: int) -> int:
    """Resident memory (VmRSS) of process `pid`, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ProcessLookupError(f"no VmRSS for process {pid}")


def children(pid: int, marker: bytes = b"") -> list[int]:
    """The processes whose parent is ``pid`` (and whose command line holds ``marker``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # it ended meanwhile
            continue
        # The command's name, in parentheses, may hold spaces: the fields follow it.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and marker in cmdline:
            found.append(int(entry.name))
    return found


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class ProcExited(AssertionError):
    """A process ended while it was expected to run (or to log something first)."""


class Proc:
    """One child process, restartable, with its output kept; an async context manager."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        log_path: Path | None = None,
        capture: bool = True,
        group: bool = False,
    ) -> None:
        if not capture and log_path is None:
            raise ValueError(f"{name}: without capture the output needs a log_path")
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.cwd = cwd
        self.log_path = log_path
        self.capture = capture
        self.group = group
        #: Every line the process printed, across restarts (when captured).
        self.lines: list[str] = []
        self.starts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._log: IO[bytes] | None = None
        self._reaped = False
        self._changed = asyncio.Event()

    # --- state ---------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """The pid of the running (or last) process."""
        if self._proc is None:
            raise ProcExited(f"{self.name} was never started")
        return self._proc.pid

    @property
    def running(self) -> bool:
        """True while the current process has not exited."""
        return self._proc is not None and self._proc.returncode is None

    @property
    def returncode(self) -> int | None:
        """How the last process ended (None while it runs, or before it started)."""
        return None if self._proc is None else self._proc.returncode

    @property
    def output(self) -> str:
        """Everything the process printed so far (when captured)."""
        return "\n".join(self.lines)

    def check_alive(self) -> None:
        """Raise :class:`ProcExited`, with the end of the log, if the process has ended."""
        if self._proc is not None and self._proc.returncode is not None:
            raise ProcExited(
                f"{self.name} exited with code {self._proc.returncode}:\n{self.tail(60)}"
            )

    def rss_kib(self) -> int:
        """Resident memory (VmRSS) of the process, in KiB."""
        return rss_kib(self.pid)

    # --- start and stop --------------------------------------------------------------

    async def start(self) -> None:
        """Start the process (again, after it ended); its output goes to the log."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self.cwd.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        self._reaped = False
        self._note(f"--- start #{self.starts}: {' '.join(self.argv[-2:])}")
        if self.capture:
            stdout: int | IO[bytes] = asyncio.subprocess.PIPE
        else:
            assert self.log_path is not None
            self._log = stdout = self.log_path.open("ab")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=stdout,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                limit=2**24,
            )
        except BaseException:
            self._close_log()
            raise
        if self.capture:
            self._reader = asyncio.create_task(
                self._read(self._proc), name=f"Proc:{self.name}:reader"
            )

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        log = self.log_path.open("a", encoding="utf-8") if self.log_path else None
        try:
            while line := await proc.stdout.readline():
                text = line.decode("utf-8", errors="replace").rstrip("\n")
                if log is not None:
                    log.write(text + "\n")
                    log.flush()
                self.lines.append(text)
                self._changed.set()
            # The end of the output comes before the exit is known: a waiter woken now
            # must see the process ended, or it would wait for a line that never comes.
            await proc.wait()
        finally:
            if log is not None:
                log.close()
            self._changed.set()

    def _note(self, text: str) -> None:
        """A line of our own in the output (a start, a kill, an exit), when captured: an
        uncaptured log holds the child's output alone, for whoever reads it."""
        if not self.capture:
            return
        if self.log_path is not None:
            with self.log_path.open("a", encoding="utf-8") as log:
                log.write(text + "\n")
        self.lines.append(text)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    async def _reap(self) -> None:
        proc = self._proc
        if proc is None or self._reaped:
            return
        await proc.wait()
        if self._reaped:
            return  # by another caller meanwhile
        self._reaped = True
        if self.group:
            # The leader is gone; what it left in its group goes too.
            _signal_group(proc.pid, signal.SIGKILL)
        if self._reader is not None:
            # The pipe may stay open in a grandchild (never, for codex-hub); bounded.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_S):
                    await asyncio.shield(self._reader)
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None
        self._close_log()
        self._note(f"--- exited with {proc.returncode}")

    def _send(self, sig: int) -> None:
        assert self._proc is not None
        if self.group:
            _signal_group(self._proc.pid, sig)
        else:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(sig)

    async def kill(self) -> None:
        """SIGKILL the process (its group, with ``group``), as a crash would, and reap it."""
        if self.running:
            self._note("--- SIGKILL")
            self._send(signal.SIGKILL)
        await self._reap()

    async def stop(self, timeout: float = STOP_S) -> int | None:
        """SIGTERM (a clean stop), SIGKILL after `timeout`; returns the exit code."""
        if self.running:
            assert self._proc is not None
            self._send(signal.SIGTERM)
            try:
                async with asyncio.timeout(timeout):
                    await self._proc.wait()
            except TimeoutError:
                await self.kill()
        await self._reap()
        return self.returncode

    async def restart(self) -> None:
        """SIGKILL it if it runs, then start it again with the same settings."""
        await self.kill()
        await self.start()

    async def wait(self, timeout: float = WAIT_S) -> int:
        """Wait for the process to end by itself; its exit code."""
        if self._proc is None:
            raise ProcExited(f"{self.name} was never started")
        async with asyncio.timeout(timeout):
            code = await self._proc.wait()
        await self._reap()
        return code

    async def __aenter__(self) -> Proc:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- the output --------------------------------------------------------------------

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
        if not self.capture:
            raise RuntimeError(f"{self.name}: its output is not captured, only logged")
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
        if self.capture:
            return "\n".join(self.lines[-lines:])
        assert self.log_path is not None
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


async def start_hub(cwd: Path, env: Mapping[str, str]) -> tuple[Proc, int]:
    """``codex-hub serve`` on a free port of 127.0.0.1, once it listens; it and its port."""
    hub = Proc(
        "hub",
        codex_hub_argv("serve"),
        env={**env, "HUB_HOST": "127.0.0.1", "HUB_PORT": "0"},
        cwd=cwd,
        group=True,
    )
    await hub.start()
    try:
        line = await hub.wait_line(r"hub listening on http://127\.0\.0\.1:(\d+)")
    except BaseException:
        await hub.stop()
        raise
    match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    assert match is not None
    return hub, int(match.group(1))


# --- what the processes left ------------------------------------------------------------


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
        directory = self.directory / name
        proc = Proc(
            name,
            codex_hub_argv(*args),
            env={**self.base_env, **env},
            cwd=directory,
            log_path=directory / f"{name}.log",
        )
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
