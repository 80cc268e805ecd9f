"""The local transport: codex runs on this machine, through the run helper, in its own group.

Every path out of `LocalTransport.run` (exit, timeout, cancellation, a failing callback)
leaves no process behind, and so does the death of the executor itself, SIGKILL
included. codex is started through `executor.run_helper` (the same POSIX sh script the
SSH transport runs remotely) with a pipe on the helper's stdin whose other end only
this process holds: the helper starts codex in a session of its own with a tag
variable every descendant inherits, and reaps codex's group and every tagged group
(codex's sandboxed commands start sessions of their own) when codex exits, when the
transport closes the pipe to stop the run, and when the kernel closes it because the
executor died. A parent-death signal would not do: it reaches only codex, not the
commands codex moved into sessions of their own, and on Linux it follows the death of
the spawning *thread*.

Should the helper itself fail to finish (it was killed, or outlived its bound), the
transport walks /proc the same way (process tree and tag) and signals what is left.
Where the helper cannot run (no /proc or no ``setsid``, e.g. macOS) codex is started
directly in its own process group and only that in-process clean-up applies: codex
then outlives an executor killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from executor.codex import codex_environment
from executor.run_helper import TAG_VAR, Launch, reap_bound_s, run_words, serve_words
from executor.run_io import (
    DRAIN_S,
    KILL_GRACE_S,
    CleanUps,
    check_started,
    codex_login_status,
    ended_after,
    follow,
    keep_tail,
    pump_lines,
)
from executor.transport import LoginStatus, ProcessResult, SpawnError, TransportError

log = logging.getLogger(__name__)


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


class _Popened:
    """A child started by `subprocess.Popen`, as much of `asyncio.subprocess.Process` as
    this module uses: its pid, exit status and pipes connected to the event loop.

    Popen starts it with vfork, in well under a millisecond; the event loop's own
    subprocess support (uvloop's fork) copies the executor's page tables and then
    takes a copy-on-write fault per page it touches, 5-20 ms on the run's path.
    """

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        stdin: asyncio.StreamWriter | None,
        stdout: asyncio.StreamReader,
        stderr: asyncio.StreamReader,
        pipes: list[asyncio.BaseTransport],
    ) -> None:
        self._popen = popen
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.pipes = pipes

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode


class _Child:
    """A started process, its exit event and the tag its whole process tree inherits.

    With `helper`, the process is the run helper and its stdin the watchdog's pipe.
    """

    def __init__(
        self,
        proc: asyncio.subprocess.Process | _Popened,
        exited: asyncio.Event,
        tag: str,
        *,
        helper: bool,
    ) -> None:
        self.proc = proc
        self.exited = exited
        self.tag = tag
        self.helper = helper

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close_stdin(self) -> None:
        """Close the watchdog's pipe: the helper reaps the run (idempotent)."""
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()

    def close_pipes(self) -> None:
        """Close every pipe to the child (once its run is over; idempotent)."""
        self.close_stdin()
        if isinstance(self.proc, _Popened):
            for pipe in self.proc.pipes:
                pipe.close()


def helper_usable() -> bool:
    """True when the run helper can work here: /proc, /bin/sh and ``setsid`` exist."""
    return (
        os.path.isdir("/proc/self")
        and os.access("/bin/sh", os.X_OK)
        and shutil.which("setsid") is not None
    )


class LocalTransport:
    """Runs codex as a local subprocess and handles its files with the local filesystem.

    `use_helper` None means: through the run helper wherever it can work (see the module
    docstring); False starts codex directly, without the watchdog.
    """

    def __init__(
        self, *, kill_grace_s: float = KILL_GRACE_S, use_helper: bool | None = None
    ) -> None:
        self._kill_grace_s = kill_grace_s
        self._live: set[_Child] = set()
        #: Clean-ups of runs that answered before their processes were all gone.
        self._cleanups = CleanUps("LocalTransport")
        self._closed = False
        if use_helper is None:
            use_helper = helper_usable()
            if not use_helper:
                log.warning(
                    "codex runs without the run helper (no /proc or setsid here): a run's "
                    "processes outlive an executor that is killed"
                )
        self.use_helper = use_helper

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
        answered: asyncio.Event | None = None,
    ) -> ProcessResult:
        """Run `argv` (stdin /dev/null, own process group), streaming stdout line by line.

        On timeout every process of the run is killed and `timed_out` is set; on
        cancellation (or if `on_stdout_line` raises) they are killed and awaited before
        re-raising. Raises SpawnError when `argv[0]` or `cwd` is unusable.

        Through the helper, a run returns as soon as the caller sets `answered` (codex's
        turn end: codex itself still has to exit) or the helper says its program exited
        with status 0: the program's exit and the reap of what it left behind go on in
        the background (the helper does it even if this process dies), in a task `close`
        awaits; a failure there is logged, the result stands.
        """
        if self._closed:
            raise TransportError("transport is closed")
        env = codex_environment(os.environ, env_overrides)
        tag = uuid.uuid4().hex
        launch: Launch | None = None
        early = answered if answered is not None else asyncio.Event()
        if self.use_helper:

            def on_exit(status: int) -> None:
                if status == 0:
                    early.set()

            launch = Launch(on_stdout_line, on_exit)
            words = run_words(argv, {}, cwd, tag=tag, grace_s=self._kill_grace_s)
            child = await _spawn(words, env, None, tag, helper=True)
        else:
            child = await _spawn(argv, {**env, TAG_VAR: tag}, cwd, tag, helper=False)
        proc = child.proc
        assert proc.stdout is not None and proc.stderr is not None
        self._live.add(child)
        later: asyncio.Task[None] | None = None

        def clean_up_later(rest: Coroutine[Any, Any, None]) -> None:
            nonlocal later
            later = self._clean_up(child, rest)

        try:
            timed_out, tail = await follow(
                proc.stdout,
                proc.stderr,
                child.exited.wait(),
                launch.feed if launch is not None else on_stdout_line,
                timeout_s=timeout_s,
                stop=lambda: _stop(child, self._kill_grace_s),
                # After a normal exit too: what codex left behind must not outlive the
                # run (nor hold the pipes open, which would stall the reads).
                stop_after_exit=True,
                name=f"LocalTransport:{child.pid}",
                answered=early,
                clean_up_later=clean_up_later,
                end_bound_s=reap_bound_s(self._kill_grace_s),
            )
        finally:
            if later is None:
                self._live.discard(child)
                child.close_pipes()
        if later is not None:
            if launch is not None and launch.exit_status is not None:
                return ProcessResult(exit_code=launch.exit_status, stderr_tail=tail)

            def exit_status() -> int | None:
                if launch is not None and launch.exit_status is not None:
                    return launch.exit_status
                return proc.returncode

            return ProcessResult(
                exit_code=None, stderr_tail=tail, ended=ended_after(later, exit_status)
            )
        if launch is not None:
            check_started(
                launch,
                argv[0],
                timed_out=timed_out,
                exit_code=proc.returncode,
                stderr_tail=tail,
                starter="the run helper",
            )
        return ProcessResult(exit_code=proc.returncode, stderr_tail=tail, timed_out=timed_out)

    async def start(
        self,
        argv: Sequence[str],
        *,
        env_overrides: Mapping[str, str],
        cwd: str | None,
        on_stdout_line: Callable[[str], None],
    ) -> LocalSession:
        """Start a long-lived `argv` whose stdin is a pipe this side holds (the app-server).

        Through the run helper's ``serve`` mode where it can work: the program gets the
        pipe, exits on its EOF (`LocalSession.close`, or the executor's death), and the
        helper then reaps what it left. Raises SpawnError when `argv[0]` or `cwd` is
        unusable.
        """
        if self._closed:
            raise TransportError("transport is closed")
        env = codex_environment(os.environ, {**env_overrides})
        tag = uuid.uuid4().hex
        if self.use_helper:
            words = serve_words(argv, {}, cwd, tag=tag, grace_s=self._kill_grace_s)
            child = await _spawn(words, env, None, tag, helper=True)
        else:
            child = await _spawn(argv, {**env, TAG_VAR: tag}, cwd, tag, helper=False, pipe=True)
        self._live.add(child)
        session = LocalSession(child, argv[0], on_stdout_line, self._kill_grace_s, self._live)
        try:
            await session.started()
        except BaseException:
            await session.close()
            raise
        return session

    async def read_text(self, path: str) -> str:
        """The file's text, decoded as UTF-8 with invalid bytes replaced."""
        return await asyncio.to_thread(Path(path).read_text, encoding="utf-8", errors="replace")

    async def write_bytes(self, path: str, data: bytes) -> None:
        """Write the file (mode 0600: it sits in a private temp dir)."""
        await asyncio.to_thread(Path(path).write_bytes, data)

    async def make_tempdir(self) -> str:
        """A fresh directory (mode 0700) under the system temp dir."""
        return await asyncio.to_thread(tempfile.mkdtemp, prefix="codex-hub-")

    async def remove_tree(self, path: str) -> None:
        """Remove `path` recursively, ignoring errors."""
        await asyncio.to_thread(shutil.rmtree, path, ignore_errors=True)

    async def login_status(self, codex_bin: str, env_overrides: Mapping[str, str]) -> LoginStatus:
        """Run `codex login status`; the detail keeps its wording, never the masked key."""
        return await codex_login_status(self, codex_bin, env_overrides)

    def _clean_up(self, child: _Child, rest: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Finish a run's clean-up in a task of our own (`close` awaits it); the task."""

        def finish() -> None:
            self._live.discard(child)
            child.close_pipes()

        return self._cleanups.start(rest, finish, str(child.pid))

    async def settled(self) -> None:
        """Return once the clean-ups of runs that already answered are done."""
        await self._cleanups.settled()

    async def close(self) -> None:
        """Finish the clean-ups under way, then kill every process still running; idempotent."""
        self._closed = True
        await self.settled()
        live, self._live = list(self._live), set()
        await asyncio.gather(*(_stop(child, self._kill_grace_s) for child in live))


async def _spawn(
    argv: Sequence[str],
    env: dict[str, str],
    cwd: str | None,
    tag: str,
    *,
    helper: bool,
    pipe: bool = False,
) -> _Child:
    """Start `argv` in a new session with piped stdout/stderr.

    The helper's stdin is the watchdog's pipe (it gives codex /dev/null); codex started
    directly gets /dev/null, or it would read stdin to EOF, unless `pipe` asks for one.
    """
    if _PIDFD:
        return await _popen(argv, env, cwd, tag, helper=helper, pipe=pipe)
    loop = asyncio.get_running_loop()
    try:
        transport, protocol = await loop.subprocess_exec(
            lambda: _ExitAwareProtocol(loop),
            *argv,
            stdin=asyncio.subprocess.PIPE if helper or pipe else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,  # its own process group, killed as one
        )
    except OSError as exc:
        raise SpawnError(argv[0], exc.strerror or str(exc)) from exc
    proc = asyncio.subprocess.Process(transport, protocol, loop)
    return _Child(proc, protocol.exited, tag, helper=helper)


#: Linux (5.3+) can watch a child's exit through a file descriptor: `_popen` needs it.
_PIDFD = hasattr(os, "pidfd_open")


def _reading(reader: asyncio.StreamReader) -> Callable[[], asyncio.StreamReaderProtocol]:
    """A protocol factory feeding `reader`."""
    return lambda: asyncio.StreamReaderProtocol(reader)


def _vfork(
    argv: Sequence[str], env: dict[str, str], cwd: str | None, *, stdin: bool
) -> subprocess.Popen[bytes]:
    """Start `argv` in a new session, stdout and stderr piped, stdin piped or /dev/null
    (Popen's vfork: it returns once the child has exec'd, in well under a millisecond)."""
    try:
        return subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,  # its own process group, killed as one
        )
    except OSError as exc:
        raise SpawnError(argv[0], exc.strerror or str(exc)) from exc


async def _popen(
    argv: Sequence[str], env: dict[str, str], cwd: str | None, tag: str, *, helper: bool, pipe: bool
) -> _Child:
    """`_spawn` through `subprocess.Popen` (see `_Popened`); its exit is watched through
    a pidfd, and reaped here (nobody else waits for a pid they did not start)."""
    loop = asyncio.get_running_loop()
    popen = _vfork(argv, env, cwd, stdin=helper or pipe)
    exited = asyncio.Event()
    pidfd = os.pidfd_open(popen.pid)  # a zombie's too: nobody else reaps it

    def reap() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        try:
            _, status = os.waitpid(popen.pid, os.WNOHANG)
            popen.returncode = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            log.warning("pid %d was reaped by someone else; its exit status is lost", popen.pid)
            popen.returncode = 255
        exited.set()

    loop.add_reader(pidfd, reap)
    assert popen.stdout is not None and popen.stderr is not None
    pipes: list[asyncio.BaseTransport] = []
    readers: list[asyncio.StreamReader] = []
    for source in (popen.stdout, popen.stderr):
        reader = asyncio.StreamReader(limit=2**16, loop=loop)
        read_pipe, _ = await loop.connect_read_pipe(_reading(reader), source)
        pipes.append(read_pipe)
        readers.append(reader)
    writer = None
    if popen.stdin is not None:
        write_pipe, protocol = await loop.connect_write_pipe(
            lambda: asyncio.streams.FlowControlMixin(loop=loop), popen.stdin
        )
        pipes.append(write_pipe)
        writer = asyncio.StreamWriter(write_pipe, protocol, None, loop)
    proc = _Popened(popen, writer, readers[0], readers[1], pipes)
    return _Child(proc, exited, tag, helper=helper)


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


def _leftovers(child: _Child) -> bool:
    """True while a live process is in the child's own group or carries its tag."""
    return any(
        not proc.zombie and (proc.tagged or proc.pgid == child.pid)
        for proc in _process_table(child.tag).values()
    )


async def _stop(child: _Child, grace_s: float) -> None:
    """End every process of the run; return once none is left (also after a normal exit).

    Through the helper: close its stdin, the watchdog's pipe, and wait (bounded) until
    it has reaped and exited, as it also does by itself once codex exits. What a helper
    leaves (it was killed, or missed its bound), and any run started without the
    helper, `_terminate` ends from here.
    """
    if child.helper:
        child.close_stdin()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(reap_bound_s(grace_s)):
                await child.exited.wait()
        if child.exited.is_set() and not _leftovers(child):
            return
        log.warning("the run helper (pid %d) left processes behind; killing them", child.pid)
    await _terminate(child, grace_s)


class LocalSession:
    """A long-lived local process started by `LocalTransport.start`.

    A task reads its stdout line by line (the helper's marker line first) and another
    keeps the tail of its stderr, until both end.
    """

    def __init__(
        self,
        child: _Child,
        program: str,
        on_line: Callable[[str], None],
        grace_s: float,
        live: set[_Child],
    ) -> None:
        self._child = child
        self._program = program
        self._grace_s = grace_s
        self._live = live
        self._tail = bytearray()
        self._marked = asyncio.Event()
        self._launch: Launch | None = None
        feed = on_line
        if child.helper:
            launch = self._launch = Launch(on_line)

            def feed(line: str) -> None:
                launch.feed(line)
                if launch.pid is not None or launch.error is not None:
                    self._marked.set()

        else:
            self._marked.set()
        proc = child.proc
        assert proc.stdout is not None and proc.stderr is not None
        name = f"LocalSession:{child.pid}"
        self._stdout = asyncio.create_task(pump_lines(proc.stdout, feed), name=f"{name}:stdout")
        self._stderr = asyncio.create_task(
            keep_tail(proc.stderr, self._tail), name=f"{name}:stderr"
        )
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The program's pid (the helper's child when started through it)."""
        if self._launch is not None:
            return self._launch.pid
        return self._child.pid

    async def started(self) -> None:
        """Return once the program runs; SpawnError when the helper could not start it."""
        marked = asyncio.ensure_future(self._marked.wait())
        exited = asyncio.ensure_future(self._child.exited.wait())
        try:
            await asyncio.wait((marked, exited), return_when=asyncio.FIRST_COMPLETED)
        finally:
            marked.cancel()
            exited.cancel()
        if self._launch is not None and (self._launch.pid is None or self._launch.error):
            result = await self.wait()
            check_started(
                self._launch,
                self._program,
                timed_out=False,
                exit_code=result.exit_code,
                stderr_tail=result.stderr_tail,
                starter="the run helper",
            )

    async def send(self, data: bytes) -> None:
        """Write to its stdin; TransportError once the pipe is closed or broken."""
        stdin = self._child.proc.stdin
        if stdin is None or stdin.is_closing():
            raise TransportError(f"{self._program} is not running")
        try:
            stdin.write(data)
            await stdin.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise TransportError(f"{self._program} is not running: {exc}") from None

    async def wait(self) -> ProcessResult:
        """Wait for the exit and (bounded) the rest of its output."""
        await self._child.exited.wait()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_S):
                await asyncio.gather(
                    asyncio.shield(self._stdout),
                    asyncio.shield(self._stderr),
                    return_exceptions=True,
                )
        tail = self._tail.decode("utf-8", errors="replace")
        return ProcessResult(exit_code=self._child.proc.returncode, stderr_tail=tail)

    async def close(self) -> None:
        """Close its stdin; end every process of it that is left. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._child.close_stdin()
            if not self._child.helper:
                # It exits on EOF; the group is signalled only if it does not.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._grace_s):
                        await self._child.exited.wait()
            await _stop(self._child, self._grace_s)
        finally:
            self._live.discard(self._child)
            for task in (self._stdout, self._stderr):
                task.cancel()
            await asyncio.gather(self._stdout, self._stderr, return_exceptions=True)
            self._child.close_pipes()
