"""The local transport: codex runs on this machine as a child in its own process group.

Every path out of `LocalTransport.run` (exit, timeout, cancellation, a failing callback)
leaves no process behind: codex's process group is signalled, and so are the groups of
the processes it moved into sessions of their own (its sandboxed commands and its shell
snapshot call setsid), found through the process tree and an inherited tag variable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from executor.codex import codex_environment, login_detail
from executor.transport import LoginStatus, ProcessResult, SpawnError, TransportError

log = logging.getLogger(__name__)

#: How much of stderr a result keeps (the end of it, where the error usually is).
STDERR_TAIL_BYTES = 4096
#: A stdout line longer than this is dropped (codex caps command output well below it).
MAX_LINE_BYTES = 64 * 1024 * 1024
#: Time between SIGTERM and SIGKILL; codex exits within ~50 ms of SIGTERM.
KILL_GRACE_S = 2.0
#: `codex login status` answers from a local file, so this is generous.
LOGIN_TIMEOUT_S = 20.0
#: How long output is still read after the process ended.
DRAIN_S = 5.0
#: Every process of a run inherits this variable, with a value unique to the run, so
#: leftovers are found even after codex exited and they were re-parented to init.
TAG_VAR = "CODEX_HUB_PROCESS_TAG"
_CHUNK = 256 * 1024


class _ExitAwareProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """asyncio's subprocess stream protocol, plus an Event set as soon as the child exits.

    `Process.wait()` also waits until every pipe is closed, which a leftover grandchild
    holding stdout can delay for ever; this event does not.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=2**16, loop=loop)
        self.exited = asyncio.Event()

    def process_exited(self) -> None:
        super().process_exited()
        self.exited.set()


class _Child:
    """A started process, its exit event and the tag its whole process tree inherits."""

    def __init__(self, proc: asyncio.subprocess.Process, exited: asyncio.Event, tag: str) -> None:
        self.proc = proc
        self.exited = exited
        self.tag = tag

    @property
    def pid(self) -> int:
        return self.proc.pid


class LocalTransport:
    """Runs codex as a local subprocess and handles its files with the local filesystem."""

    def __init__(self, *, kill_grace_s: float = KILL_GRACE_S) -> None:
        self._kill_grace_s = kill_grace_s
        self._live: set[_Child] = set()
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def run(
        self,
        argv: Sequence[str],
        *,
        env_overrides: Mapping[str, str],
        cwd: str | None,
        on_stdout_line: Callable[[str], None],
        timeout_s: float,
    ) -> ProcessResult:
        """Run `argv` (stdin /dev/null, own process group), streaming stdout line by line.

        On timeout the group is killed and `timed_out` is set; on cancellation (or if
        `on_stdout_line` raises) the group is killed and awaited before re-raising.
        """
        if self._closed:
            raise TransportError("transport is closed")
        child = await _spawn(
            argv, codex_environment(os.environ, env_overrides), cwd, uuid.uuid4().hex
        )
        proc = child.proc
        assert proc.stdout is not None and proc.stderr is not None
        self._live.add(child)
        tail = bytearray()
        name = f"LocalTransport:{child.pid}"
        stdout_task = asyncio.create_task(
            _pump_lines(proc.stdout, on_stdout_line), name=f"{name}:stdout"
        )
        stderr_task = asyncio.create_task(_keep_tail(proc.stderr, tail), name=f"{name}:stderr")
        exit_task = asyncio.create_task(child.exited.wait(), name=f"{name}:exit")
        tasks = (stdout_task, stderr_task, exit_task)
        timed_out = False
        try:
            try:
                async with asyncio.timeout(timeout_s):
                    # Wake on the exit, or early if `on_stdout_line` raised.
                    await asyncio.wait(
                        (stdout_task, exit_task), return_when=asyncio.FIRST_COMPLETED
                    )
                    if stdout_task.done():
                        stdout_task.result()
                    await exit_task
            except TimeoutError:
                timed_out = True
            # After a normal exit too: what codex left behind must not outlive the run
            # (nor hold the pipes open, which would stall the reads below).
            await _terminate(child, self._kill_grace_s)
            # Output written before the end is still read; bounded, because a process
            # outside the group could still hold a pipe open.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DRAIN_S):
                    await asyncio.gather(asyncio.shield(stdout_task), asyncio.shield(stderr_task))
        except BaseException:
            await _terminate(child, self._kill_grace_s)
            raise
        finally:
            self._live.discard(child)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return ProcessResult(
            exit_code=proc.returncode,
            stderr_tail=tail.decode("utf-8", errors="replace"),
            timed_out=timed_out,
        )

    async def read_text(self, path: str) -> str:
        """The file's text, decoded as UTF-8 with invalid bytes replaced."""
        return await asyncio.to_thread(Path(path).read_text, encoding="utf-8", errors="replace")

    async def make_tempdir(self) -> str:
        """A fresh directory (mode 0700) under the system temp dir."""
        return await asyncio.to_thread(tempfile.mkdtemp, prefix="codex-hub-")

    async def remove_tree(self, path: str) -> None:
        """Remove `path` recursively, ignoring errors."""
        await asyncio.to_thread(shutil.rmtree, path, ignore_errors=True)

    async def login_status(self, codex_bin: str, env_overrides: Mapping[str, str]) -> LoginStatus:
        """Run `codex login status`; the detail keeps its wording, never the masked key."""
        lines: list[str] = []
        result = await self.run(
            [codex_bin, "login", "status"],
            env_overrides=env_overrides,
            cwd=None,
            on_stdout_line=lines.append,
            timeout_s=LOGIN_TIMEOUT_S,
        )
        if result.timed_out:
            return LoginStatus(False, f"`codex login status` timed out after {LOGIN_TIMEOUT_S:g} s")
        logged_in = result.exit_code == 0
        # codex prints the status on stderr; stdout is read too in case that changes.
        output = "\n".join([*lines, result.stderr_tail])
        return LoginStatus(logged_in, login_detail(output, logged_in, result.exit_code))

    async def close(self) -> None:
        """Kill every process still running; idempotent."""
        self._closed = True
        live, self._live = list(self._live), set()
        await asyncio.gather(*(_terminate(child, self._kill_grace_s) for child in live))


async def _spawn(argv: Sequence[str], env: dict[str, str], cwd: str | None, tag: str) -> _Child:
    """Start `argv` in a new session with stdin from /dev/null and piped stdout/stderr."""
    env = {**env, TAG_VAR: tag}
    loop = asyncio.get_running_loop()
    try:
        transport, protocol = await loop.subprocess_exec(
            lambda: _ExitAwareProtocol(loop),
            *argv,
            stdin=asyncio.subprocess.DEVNULL,  # codex reads stdin to EOF otherwise
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,  # its own process group, killed as one
        )
    except OSError as exc:
        raise SpawnError(argv[0], exc.strerror or str(exc)) from exc
    return _Child(asyncio.subprocess.Process(transport, protocol, loop), protocol.exited, tag)


async def _pump_lines(reader: asyncio.StreamReader, on_line: Callable[[str], None]) -> None:
    """Call `on_line` for every line until EOF, without StreamReader's 64 KiB line limit."""
    buf = bytearray()
    discarding = False
    while chunk := await reader.read(_CHUNK):
        buf += chunk
        while (newline := buf.find(b"\n")) != -1:
            line = bytes(buf[:newline])
            del buf[: newline + 1]
            if discarding:
                discarding = False
                continue
            on_line(line.decode("utf-8", errors="replace").rstrip("\r"))
        if len(buf) > MAX_LINE_BYTES:
            log.warning("dropping a stdout line longer than %d bytes", MAX_LINE_BYTES)
            buf.clear()
            discarding = True
    if buf and not discarding:
        on_line(buf.decode("utf-8", errors="replace").rstrip("\r"))


async def _keep_tail(reader: asyncio.StreamReader, tail: bytearray) -> None:
    """Read `reader` to EOF, keeping only its last STDERR_TAIL_BYTES in `tail`."""
    while chunk := await reader.read(_CHUNK):
        tail += chunk
        if len(tail) > STDERR_TAIL_BYTES:
            del tail[:-STDERR_TAIL_BYTES]


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@dataclass(frozen=True)
class _Proc:
    ppid: int
    pgid: int
    zombie: bool
    tagged: bool


def _process_table(tag: str) -> dict[int, _Proc]:
    """Every process this user can see, read from /proc, marked when it carries `tag`."""
    needle = f"\0{TAG_VAR}={tag}\0".encode()
    table: dict[int, _Proc] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return table  # no /proc: only the process group can be signalled
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue  # gone meanwhile
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                environ = b"\0" + fh.read()
        except OSError:
            environ = b""  # a kernel thread, or another user's process
        # The fields after the command name, which may itself hold spaces and parens.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2:
            table[int(entry)] = _Proc(
                int(fields[1]), int(fields[2]), fields[0] == b"Z", needle in environ
            )
    return table


def _groups_of(child: _Child) -> set[int]:
    """The process groups of the child, of its live descendants and of tagged processes."""
    table = _process_table(child.tag)
    children: dict[int, list[int]] = {}
    for pid, proc in table.items():
        children.setdefault(proc.ppid, []).append(pid)
    groups = {child.pid} | {proc.pgid for proc in table.values() if proc.tagged}
    seen, stack = {child.pid}, [child.pid]
    while stack:
        for pid in children.get(stack.pop(), []):
            if pid not in seen:
                seen.add(pid)
                stack.append(pid)
                groups.add(table[pid].pgid)
    groups.discard(os.getpgrp())  # never our own group, whatever happens
    return groups


def _groups_alive(child: _Child, groups: set[int]) -> bool:
    """True while a process that is not a zombie is still in one of `groups`."""
    return any(
        proc.pgid in groups and not proc.zombie for proc in _process_table(child.tag).values()
    )


async def _wait_gone(child: _Child, groups: set[int], timeout_s: float) -> bool:
    """Wait until no live process is left in `groups`; False if some still are."""
    # Not our children, so there is no exit event to await: look at /proc every 10 ms.
    deadline = asyncio.get_running_loop().time() + timeout_s
    while _groups_alive(child, groups):
        if asyncio.get_running_loop().time() >= deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def _terminate(child: _Child, grace_s: float) -> None:
    """SIGTERM the child and every group its processes are in; SIGKILL after `grace_s`.

    Groups rather than pids: codex's sandboxed commands and its shell snapshot run in
    sessions of their own, and a dying shell script may still fork (pyenv's rehash does
    `sleep 0.1 || sleep 1`); a fork stays in its parent's group, where killpg finds it.
    SIGTERM comes first because shells run their EXIT traps on it (pyenv's lock file
    would otherwise stay behind and stall every later login shell for a minute).
    """
    # Collect first: once codex dies its children are re-parented and lost to the walk.
    groups = _groups_of(child)
    for pgid in groups:
        _signal_group(pgid, signal.SIGTERM)
    try:
        async with asyncio.timeout(grace_s):
            await child.exited.wait()
            # Tagged processes may have started new sessions until codex died. Only
            # those get a SIGTERM now: a second one would cut a shell's EXIT trap short.
            late = _groups_of(child) - groups
            for pgid in late:
                _signal_group(pgid, signal.SIGTERM)
            groups |= late
            await _wait_gone(child, groups, grace_s)
    except TimeoutError:
        pass
    finally:
        # Also on a second cancellation: nothing may outlive the run.
        for pgid in groups:
            _signal_group(pgid, signal.SIGKILL)
    await child.exited.wait()
    # SIGKILL takes effect asynchronously; callers must see no survivor once we return.
    if not await _wait_gone(child, groups, 1.0):
        log.warning("processes of pid %d outlived SIGKILL for 1 s", child.pid)
