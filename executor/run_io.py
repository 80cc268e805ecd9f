"""Driving a run once it is started: what the local and the SSH transport share.

Both start codex through the run helper (`executor.run_helper`) and then do the same:
stream stdout line by line (the helper's marker line first, see `Launch`), keep the
tail of stderr, wait for the end or the timeout, stop every process of the run on every
path out, still read what was written before the end (bounded), and say why codex did
not start when the helper could not start it. How a run is started and stopped (a local
process group, a remote command over SSH) stays with each transport: `follow` gets the
run's streams, what to await for its end, and how to stop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, Protocol

from executor.codex import login_detail
from executor.run_helper import Launch
from executor.transport import LoginStatus, SpawnError, Transport

log = logging.getLogger(__name__)

#: How much of stderr a result keeps (the end of it, where the error usually is).
STDERR_TAIL_BYTES = 4096
#: A stdout line longer than this is dropped (codex caps command output well below it).
MAX_LINE_BYTES = 64 * 1024 * 1024
#: Time between SIGTERM and SIGKILL; codex exits within ~50 ms of SIGTERM.
KILL_GRACE_S = 2.0
#: `codex login status` answers from a local file, so this is generous.
LOGIN_TIMEOUT_S = 20.0
#: How long output is still read after the run ended.
DRAIN_S = 5.0
#: How much is read at once from a run's output.
CHUNK_BYTES = 256 * 1024


class Reader(Protocol):
    """A run's stdout or stderr: an asyncio stream, or an SSH channel's."""

    async def read(self, n: int = -1) -> bytes: ...


async def pump_lines(reader: Reader, on_line: Callable[[str], None]) -> None:
    """Call `on_line` for every line until EOF, dropping lines over MAX_LINE_BYTES
    (without StreamReader's 64 KiB line limit)."""
    buf = bytearray()
    discarding = False
    while chunk := await reader.read(CHUNK_BYTES):
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


async def keep_tail(reader: Reader, tail: bytearray) -> None:
    """Read `reader` to EOF, keeping only its last STDERR_TAIL_BYTES in `tail`."""
    while chunk := await reader.read(CHUNK_BYTES):
        tail += chunk
        if len(tail) > STDERR_TAIL_BYTES:
            del tail[:-STDERR_TAIL_BYTES]


async def follow(
    stdout: Reader,
    stderr: Reader,
    end: Awaitable[Any],
    on_line: Callable[[str], None],
    *,
    timeout_s: float,
    stop: Callable[[], Awaitable[None]],
    stop_after_exit: bool,
    name: str,
    answered: asyncio.Event | None = None,
    clean_up_later: Callable[[Coroutine[Any, Any, None]], None] | None = None,
    end_bound_s: float = DRAIN_S,
) -> tuple[bool, str]:
    """Follow a started run to its end: (timed out, the tail of stderr).

    `end` completes when the run is over (the process exited, the channel closed). On
    timeout `stop()` ends the run, and also after a normal end with `stop_after_exit`
    (what codex left behind must not outlive the run). On cancellation, or if
    `on_line` or a read raises, the run is stopped before the error propagates.

    `answered` set before the end (the caller saw codex's turn end, or the helper said
    codex exited with status 0, see `Launch`) returns at once, with the stderr read so
    far: the rest (awaiting `end` for up to `end_bound_s`, then `stop()` if it did not
    come or `stop_after_exit`, draining the output) is handed, as a coroutine, to
    `clean_up_later`, whose owner awaits it. The caller is answered without waiting
    for codex's exit or for what codex left behind.
    """
    tail = bytearray()
    stdout_task = asyncio.create_task(pump_lines(stdout, on_line), name=f"{name}:stdout")
    stderr_task = asyncio.create_task(keep_tail(stderr, tail), name=f"{name}:stderr")
    end_task = asyncio.ensure_future(end)
    tasks: tuple[asyncio.Future[Any], ...] = (stdout_task, stderr_task, end_task)
    early = answered is not None and clean_up_later is not None
    answered_task = asyncio.ensure_future(answered.wait()) if early and answered else None
    timed_out = False
    try:
        try:
            async with asyncio.timeout(timeout_s):
                # Wake on the end, early if `on_line` raised, or at codex's own exit.
                wake = {stdout_task, end_task}
                if answered_task is not None:
                    wake.add(answered_task)
                await asyncio.wait(wake, return_when=asyncio.FIRST_COMPLETED)
                if stdout_task.done():
                    stdout_task.result()
                if answered_task is not None and answered_task.done() and not end_task.done():
                    assert clean_up_later is not None
                    clean_up_later(_after_answer(tasks, stop, stop_after_exit, end_bound_s, name))
                    tasks = ()  # theirs now
                    return False, tail.decode("utf-8", errors="replace")
                await end_task
        except TimeoutError:
            timed_out = True
        if timed_out or stop_after_exit:
            await stop()
        # Output written before the end is still read; bounded, because a process
        # outside the run could still hold a pipe open.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_S):
                await asyncio.gather(asyncio.shield(stdout_task), asyncio.shield(stderr_task))
    except BaseException:
        await stop()
        raise
    finally:
        if answered_task is not None:
            answered_task.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return timed_out, tail.decode("utf-8", errors="replace")


async def _after_answer(
    tasks: tuple[asyncio.Future[Any], ...],
    stop: Callable[[], Awaitable[None]],
    stop_after_exit: bool,
    end_bound_s: float,
    name: str,
) -> None:
    """What `follow` leaves for later once codex has answered: the end, the clean-up."""
    stdout_task, stderr_task, end_task = tasks
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(end_bound_s):
                await asyncio.shield(end_task)
        if stop_after_exit or not end_task.done():
            await stop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_S):
                await asyncio.gather(
                    asyncio.shield(stdout_task), asyncio.shield(stderr_task), return_exceptions=True
                )
    except BaseException:
        await stop()
        raise
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        log.debug("%s: cleaned up after the answer", name)


class CleanUps:
    """The clean-ups of runs that already answered, each in a task of its own.

    A transport hands over what is left of a run (the reap, the drain, the channel's
    end) once its answer is out; :meth:`settled` waits for all of it (the transport's
    ``close`` does), and a clean-up that fails is logged: the run's result stands.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._tasks: set[asyncio.Task[None]] = set()

    def start(
        self, rest: Coroutine[Any, Any, None], finish: Callable[[], None], label: str
    ) -> asyncio.Task[None]:
        """Run ``rest`` in a task of its own, then ``finish()`` whatever happened; the task."""

        async def clean_up() -> None:
            try:
                await rest
            finally:
                finish()

        task = asyncio.create_task(clean_up(), name=f"{self._name}:{label}:clean-up")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("cleaning up after a run failed (its result stands)", exc_info=exc)

    async def settled(self) -> None:
        """Return once every clean-up started so far (and any they started) is done."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def ended_after(
    task: asyncio.Task[None], exit_status: Callable[[], int | None]
) -> asyncio.Future[int | None]:
    """A future of a run's exit status (`exit_status()` then), resolved once `task`, its
    clean-up, is done however it ended: `ProcessResult.ended`."""
    ended: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()

    def done(_task: asyncio.Task[None]) -> None:
        if not ended.done():
            ended.set_result(exit_status())

    task.add_done_callback(done)
    return ended


def check_started(
    launch: Launch,
    program: str,
    *,
    timed_out: bool,
    exit_code: int | None,
    stderr_tail: str,
    starter: str,
) -> None:
    """Raise SpawnError when the helper said, or showed, that `program` never started.

    `starter` names what exited early in the message ("the run helper", "the remote
    shell on host:22").
    """
    if launch.error is not None:
        raise SpawnError(program, launch.error)
    if launch.pid is None and not timed_out:
        reason = stderr_tail.strip()[-500:]
        raise SpawnError(
            program,
            f"{starter} exited with code {exit_code} before starting it: {reason or 'no output'}",
        )


async def codex_login_status(
    transport: Transport, codex_bin: str, env_overrides: Mapping[str, str]
) -> LoginStatus:
    """Run `codex login status` on `transport`; the detail never holds the masked key."""
    lines: list[str] = []
    result = await transport.run(
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
