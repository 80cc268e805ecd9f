"""What every transport must do, run over the local and the SSH transport alike.

Each test here runs twice, ``[local]`` and ``[ssh]``: the SSH transport reaches a real
SSH server on 127.0.0.1 (testkit/fakes/ssh_server.py) that runs each command with
/bin/sh on this machine, so the "remote" processes are visible in /proc and every test
that stops a run checks that none of them is left. Tests marked `codex` run the real
codex binary against the stub model (testkit/fakes/model_server.py) through
`CodexEngine`. What only one transport has (the local run helper's internals, SSH's
host keys, dropped connections and command quoting) stays in test_engine_local.py and
test_transport_ssh.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from executor.engine import CodexEngine, RunRequest
from executor.run_io import STDERR_TAIL_BYTES
from executor.settings import ExecutorSettings
from executor.transport import SpawnError
from executor.transport_local import LocalTransport
from executor.transport_ssh import SshTransport
from testkit.fakes.model_server import STUB_API_KEY, STUB_USAGE, StubModelServer
from testkit.procs import processes_under
from tests.executor.helpers import (
    NASTY,
    SPAWNER,
    WAIT_S,
    Recorder,
    assert_no_process_left,
    fifo_signal,
    run_lines,
    wait_no_process_left,
)

Settings = Callable[..., ExecutorSettings]
AnyTransport = LocalTransport | SshTransport


@pytest.fixture(params=["local", "ssh"])
def transport_kind(request: pytest.FixtureRequest) -> str:
    """Which transport the test runs over."""
    return str(request.param)


@pytest.fixture
def settings_for(
    transport_kind: str, executor_settings: Settings, request: pytest.FixtureRequest
) -> Settings:
    """ExecutorSettings for the transport under test (for SSH: the test's SSH server)."""
    ssh: dict[str, Any] = {}
    if transport_kind == "ssh":
        ssh = request.getfixturevalue("ssh_settings")

    def make(**overrides: Any) -> ExecutorSettings:
        return executor_settings(**{**ssh, **overrides})

    return make


@pytest.fixture
async def transport(transport_kind: str, settings_for: Settings) -> AsyncIterator[AnyTransport]:
    """The transport under test, closed after the test."""
    made: AnyTransport
    if transport_kind == "ssh":
        made = SshTransport.from_settings(settings_for())
    else:
        made = LocalTransport()
    async with made:
        yield made


@pytest.fixture
def engine_for(
    settings_for: Settings,
    transport: AnyTransport,
    transport_kind: str,
    request: pytest.FixtureRequest,
) -> Callable[..., CodexEngine]:
    """Build a CodexEngine on the transport under test from settings overrides.

    CODEX_BIN is the test's codex binary unless overridden; over SSH it is the "remote"
    path, passed as such (locally the engine resolves it on first use).
    """

    def make(**overrides: Any) -> CodexEngine:
        if "codex_bin" not in overrides:
            overrides["codex_bin"] = request.getfixturevalue("codex_bin")
        settings = settings_for(**overrides)
        remote = settings.codex_bin if transport_kind == "ssh" else None
        return CodexEngine(settings, transport, codex_bin=remote)

    return make


# --- running a program ------------------------------------------------------------------


async def test_words_env_and_cwd_arrive_intact(transport: AnyTransport, tmp_path: Path) -> None:
    """argv, env values and the cwd reach the process exactly, and nothing runs twice."""
    workdir = tmp_path / "it's a -dir"
    workdir.mkdir()
    script = (
        "import json, os, sys; print(json.dumps([sys.argv[1:], os.environ['X_Y'], os.getcwd()]))"
    )
    value = "$HOME `id` 'q' \"d\"\nnext"
    lines, result = await run_lines(
        transport, [sys.executable, "-c", script, *NASTY], env={"X_Y": value}, cwd=str(workdir)
    )
    assert result.exit_code == 0, result.stderr_tail
    assert json.loads(lines[0]) == [NASTY, value, str(workdir)]
    assert not (workdir / "pwned").exists()
    assert not Path("pwned").exists()  # noqa: ASYNC240


async def test_streams_long_lines_and_keeps_stderr_tail(transport: AnyTransport) -> None:
    """Lines far beyond 64 KiB arrive whole; only the end of stderr is kept; the code too."""
    script = (
        "import sys\n"
        "print('a' * 300_000)\n"
        "print('short', flush=True)\n"
        "sys.stderr.write('e' * 10_000 + 'THE END')\n"
        "sys.exit(3)\n"
    )
    lines, result = await run_lines(transport, [sys.executable, "-c", script])
    assert lines == ["a" * 300_000, "short"]
    assert result.exit_code == 3 and not result.timed_out
    assert result.stderr_tail.endswith("THE END")
    assert len(result.stderr_tail) == STDERR_TAIL_BYTES


async def test_lines_stream_before_the_end(transport: AnyTransport, tmp_path: Path) -> None:
    """A line arrives while the process still runs."""
    gate = tmp_path / "gate.fifo"
    os.mkfifo(gate)
    lines = Recorder()
    run = asyncio.create_task(
        transport.run(
            ["sh", "-c", f"echo first; cat {gate}; echo second"],
            env_overrides={},
            cwd=None,
            on_stdout_line=lines,
            timeout_s=20,
        )
    )
    await lines.wait_for(lambda line: line == "first")
    assert not run.done()
    await asyncio.to_thread(gate.write_text, "")
    result = await run
    assert result.exit_code == 0 and lines.events == ["first", "second"]


async def test_a_missing_program_or_cwd_is_a_spawn_error(
    transport: AnyTransport, tmp_path: Path
) -> None:
    """A missing executable or working directory is a SpawnError naming the program."""
    with pytest.raises(SpawnError) as info:
        await run_lines(transport, ["/nonexistent/codex", "exec"])
    assert info.value.program == "/nonexistent/codex"
    with pytest.raises(SpawnError):
        await run_lines(transport, ["true"], cwd=str(tmp_path / "missing"))


# --- stopping what a program started ------------------------------------------------------


async def test_timeout_kills_the_group_and_setsid_children(
    transport: AnyTransport, tmp_path: Path
) -> None:
    """On timeout every descendant dies, also one that left the process group."""
    started = time.monotonic()
    _, result = await run_lines(
        transport, [sys.executable, "-c", SPAWNER, "60"], cwd=str(tmp_path), timeout_s=1.0
    )
    assert result.timed_out
    assert time.monotonic() - started < 1.0 + 20.0  # long before the child's 60 s
    assert_no_process_left(tmp_path)


async def test_normal_exit_kills_leftovers(transport: AnyTransport, tmp_path: Path) -> None:
    """A normal exit returns, and its clean-up kills what the child left, in any session."""
    lines, result = await run_lines(
        transport, [sys.executable, "-c", SPAWNER, "0"], cwd=str(tmp_path)
    )
    assert result.exit_code == 0 and not result.timed_out and lines == ["started"]
    await transport.settled()
    assert_no_process_left(tmp_path)


async def test_leftovers_get_sigterm_first(transport: AnyTransport, tmp_path: Path) -> None:
    """Leftovers are asked to stop first, so shell EXIT traps (lock cleanup) still run."""
    script = "trap 'echo bye > trapped.txt' EXIT; touch ready; sleep 44"
    # The parent exits only once the trap is set, or the test would race its setup.
    parent = f"setsid bash -c {shlex.quote(script)} & until [ -e ready ]; do sleep 0.01; done"
    _, result = await run_lines(transport, ["sh", "-c", parent], cwd=str(tmp_path))
    assert result.exit_code == 0 and not result.timed_out
    await transport.settled()
    assert_no_process_left(tmp_path)
    assert (tmp_path / "trapped.txt").read_text() == "bye\n"


async def test_cancel_kills_and_reraises(transport: AnyTransport, tmp_path: Path) -> None:
    """Cancelling the caller kills every process of the run, then re-raises."""
    lines = Recorder()
    run = asyncio.create_task(
        transport.run(
            [sys.executable, "-c", SPAWNER, "60"],
            env_overrides={},
            cwd=str(tmp_path),
            on_stdout_line=lines,
            timeout_s=30,
        )
    )
    await lines.wait_for(lambda line: line == "started")
    assert processes_under([tmp_path]), "the spawner should be running now"
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert_no_process_left(tmp_path)


async def test_callback_error_kills_the_run(transport: AnyTransport, tmp_path: Path) -> None:
    """If the line callback raises, the processes are killed and the error propagates."""

    def explode(line: str) -> None:
        raise RuntimeError("consumer broke")

    with pytest.raises(RuntimeError, match="consumer broke"):
        await transport.run(
            [sys.executable, "-c", SPAWNER, "60"],
            env_overrides={},
            cwd=str(tmp_path),
            on_stdout_line=explode,
            timeout_s=30,
        )
    assert_no_process_left(tmp_path)


# --- files --------------------------------------------------------------------------------


async def test_files(transport: AnyTransport) -> None:
    """Temp dirs are made (0700) and removed; text is read back; errors are OSError."""
    directory = Path(await transport.make_tempdir())
    assert directory.name.startswith("codex-hub-")
    assert directory.stat().st_mode & 0o777 == 0o700  # noqa: ASYNC240
    (directory / "f.txt").write_bytes(b"caf\xc3\xa9 \xff")
    assert await transport.read_text(str(directory / "f.txt")) == "café \ufffd"
    with pytest.raises(OSError):
        await transport.read_text(str(directory / "missing.txt"))
    await transport.remove_tree(str(directory))
    assert not directory.exists()  # noqa: ASYNC240
    await transport.remove_tree(str(directory))


async def test_bytes_are_written_whole(transport: AnyTransport) -> None:
    """write_bytes puts a file (an output schema, an image) whole in a temp dir; a missing
    directory is an OSError."""
    directory = Path(await transport.make_tempdir())
    data = bytes(range(256)) * 4000
    await transport.write_bytes(str(directory / "image-0.png"), data)
    assert (directory / "image-0.png").read_bytes() == data
    with pytest.raises(OSError):
        await transport.write_bytes(str(directory / "missing" / "x.json"), b"{}")
    await transport.remove_tree(str(directory))


# --- the real codex -----------------------------------------------------------------------


@pytest.mark.codex
async def test_plain_answer(
    engine_for: Callable[..., CodexEngine],
    codex_home: Path,
    model_server: StubModelServer,
    tmp_path: Path,
    transport: AnyTransport,
) -> None:
    """codex's final message is the answer, with its thread id, usage and events; the
    prompt reaches the model exactly."""
    model_server.reply_text("Hello from the stub.\nSecond line.")
    events = Recorder()
    prompt = "--version is not a flag here; it's $(no expansion), `none` either, * no glob"
    outcome = await engine_for(codex_home=codex_home).run(RunRequest("r1", prompt), events)

    assert outcome.status == "succeeded", outcome.error
    assert outcome.answer == "Hello from the stub.\nSecond line."
    assert outcome.thread_id and outcome.error is None
    assert outcome.usage == STUB_USAGE
    assert events.codex_types()[0] == "thread.started"
    assert "turn.completed" in events.codex_types()
    assert all(set(e) == {"kind", "data", "summary"} for e in events.events)
    (request,) = model_server.requests
    assert request.headers["Authorization"] == f"Bearer {STUB_API_KEY}"
    assert request.headers["thread-id"] == outcome.thread_id
    assert prompt in request.text
    await transport.settled()  # what codex left is reaped after the answer
    assert_no_process_left(tmp_path)


@pytest.mark.codex
async def test_tool_call_writes_a_file(
    engine_for: Callable[..., CodexEngine],
    codex_home: Path,
    model_server: StubModelServer,
    tmp_path: Path,
    transport: AnyTransport,
) -> None:
    """A command the model asks for runs in the workdir, inside the workspace-write sandbox."""
    model_server.reply_exec("printf 'made by codex' > note.txt", then="I wrote note.txt.")
    events = Recorder()
    outcome = await engine_for(codex_home=codex_home).run(RunRequest("r1", "write a note"), events)

    assert outcome.status == "succeeded", outcome.error
    assert outcome.answer == "I wrote note.txt."
    assert (tmp_path / "work" / "note.txt").read_text() == "made by codex"
    summaries = [e["summary"] for e in events.events if e["summary"]]
    assert any(s.startswith("running `") and "note.txt" in s for s in summaries)
    assert len(model_server.requests) == 2
    assert "function_call_output" in model_server.requests[1].text
    await transport.settled()  # what codex left is reaped after the answer
    assert_no_process_left(tmp_path)


@pytest.mark.codex
async def test_codex_events_stream_before_the_end(
    engine_for: Callable[..., CodexEngine],
    codex_home: Path,
    model_server: StubModelServer,
    tmp_path: Path,
    transport: AnyTransport,
) -> None:
    """Events arrive while codex still works: a command codex runs is seen before it ends."""
    gate = tmp_path / "work" / "go.fifo"
    engine = engine_for(codex_home=codex_home)
    model_server.reply_exec("echo ready > ready.fifo && cat go.fifo", then="All done.")
    os.mkfifo(gate)
    events = Recorder()
    with fifo_signal(tmp_path / "work" / "ready.fifo") as command_started:
        run = asyncio.create_task(engine.run(RunRequest("r1", "run it"), events))
        async with asyncio.timeout(WAIT_S):
            await command_started.wait()
        await events.wait_for(
            lambda e: (
                e["kind"] == "codex"
                and e["data"]["type"] == "item.started"
                and e["data"]["item"]["type"] == "command_execution"
            )
        )
        assert "thread.started" in events.codex_types()
        assert not run.done()
        async with asyncio.timeout(WAIT_S):
            await asyncio.to_thread(gate.write_text, "go\n")
        outcome = await run
    assert outcome.status == "succeeded", outcome.error
    assert outcome.answer == "All done."
    await transport.settled()  # what codex left is reaped after the answer
    assert_no_process_left(tmp_path)


@pytest.mark.codex
async def test_follow_up_resumes_the_thread(
    engine_for: Callable[..., CodexEngine], codex_home: Path, model_server: StubModelServer
) -> None:
    """A follow-up with the thread id sends the earlier turn to the model again."""
    engine = engine_for(codex_home=codex_home)
    model_server.reply_text("The answer is 41.")
    first = await engine.run(RunRequest("r1", "what is the answer?"), Recorder())
    assert first.status == "succeeded" and first.thread_id

    model_server.reply_text("Then it is 42.")
    second = await engine.run(RunRequest("r2", "add one", first.thread_id), Recorder())

    assert second.status == "succeeded", second.error
    assert second.answer == "Then it is 42."
    assert second.thread_id == first.thread_id
    follow_up = model_server.requests[1]
    assert "The answer is 41." in follow_up.text
    assert "what is the answer?" in follow_up.text and "add one" in follow_up.text


@pytest.mark.codex
async def test_unknown_thread_starts_afresh_with_a_note(
    engine_for: Callable[..., CodexEngine], codex_home: Path, model_server: StubModelServer
) -> None:
    """A thread codex cannot resume is retried once as a new thread, and the user told."""
    model_server.reply_text("fresh start")
    events = Recorder()
    missing = str(uuid.uuid4())
    outcome = await engine_for(codex_home=codex_home).run(
        RunRequest("r1", "continue", missing), events
    )

    assert outcome.status == "succeeded", outcome.error
    assert outcome.answer == "fresh start"
    assert outcome.thread_id and outcome.thread_id != missing
    notes = [e for e in events.events if e["kind"] == "note"]
    assert len(notes) == 1 and "could not be resumed" in notes[0]["summary"]


@pytest.mark.codex
async def test_not_logged_in(
    engine_for: Callable[..., CodexEngine],
    codex_home_logged_out: Path,
    model_server: StubModelServer,
) -> None:
    """Without a login (`codex login status` run with CODEX_HOME where codex runs) the run
    fails at once, naming the fix, and never reaches the model."""
    engine = engine_for(codex_home=codex_home_logged_out)
    outcome = await engine.run(RunRequest("r1", "hi"), Recorder())

    assert outcome.status == "failed"
    assert outcome.error is not None and outcome.error["code"] == "codex_not_logged_in"
    assert "codex login --with-api-key" in outcome.error["message"]
    assert str(codex_home_logged_out) in outcome.error["message"]
    assert model_server.requests == []


@pytest.mark.codex
async def test_model_error_fails_with_message(
    engine_for: Callable[..., CodexEngine], codex_home: Path, model_server: StubModelServer
) -> None:
    """An HTTP 500 from the model fails the run with codex's exit code and error text."""
    model_server.reply_status(500)
    outcome = await engine_for(codex_home=codex_home).run(RunRequest("r1", "hi"), Recorder())

    assert outcome.status == "failed"
    assert outcome.error is not None and outcome.error["code"] == "codex_failed"
    assert outcome.error["message"].startswith("codex exited with code 1: ")
    assert len(outcome.error["message"]) > len("codex exited with code 1: ")
    assert outcome.answer == ""


@pytest.mark.codex
async def test_codex_error_quotes_stderr(
    engine_for: Callable[..., CodexEngine], codex_home: Path, model_server: StubModelServer
) -> None:
    """When codex refuses to start, the error carries the tail of its stderr."""
    engine = engine_for(
        codex_home=codex_home, codex_extra_args="-c model_providers.stub.wire_api=chat"
    )
    outcome = await engine.run(RunRequest("r1", "hi"), Recorder())

    assert outcome.status == "failed"
    assert outcome.error is not None and outcome.error["code"] == "codex_failed"
    assert "wire_api" in outcome.error["message"]
    # TMPDIR points away from CODEX_HOME, so codex's temp-dir warning stays away.
    assert "WARNING" not in outcome.error["message"]
    assert model_server.requests == []


@pytest.mark.codex
async def test_unreachable_model_times_out_and_leaves_nothing(
    engine_for: Callable[..., CodexEngine],
    codex_home: Path,
    unreachable_port: int,
    tmp_path: Path,
) -> None:
    """codex waits forever on a closed port; the timeout kills it and all it started."""
    engine = engine_for(
        codex_home=codex_home,
        exec_timeout_s=3.0,
        codex_extra_args=(
            f'-c model_providers.stub.base_url="http://127.0.0.1:{unreachable_port}/v1"'
        ),
    )
    started = time.monotonic()
    outcome = await engine.run(RunRequest("r1", "hi"), Recorder())

    assert outcome.status == "timed_out"
    assert outcome.error == {"code": "timeout", "message": "codex did not finish within 3 s"}
    assert time.monotonic() - started < 3.0 + 20.0  # stopped, not hung (room for a slow box)
    assert_no_process_left(tmp_path)


@pytest.mark.codex
async def test_cancel_while_waiting_for_the_model(
    engine_for: Callable[..., CodexEngine],
    codex_home: Path,
    model_server: StubModelServer,
    tmp_path: Path,
) -> None:
    """Cancelling a run kills codex, then CancelledError reaches the caller."""
    model_server.reply_hang()
    run = asyncio.create_task(
        engine_for(codex_home=codex_home).run(RunRequest("r1", "hi"), Recorder())
    )
    await model_server.wait_for_requests(1)
    assert processes_under([tmp_path]), "codex should be running now"

    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert_no_process_left(tmp_path)


@pytest.mark.codex
async def test_cancel_while_a_command_runs(
    engine_for: Callable[..., CodexEngine],
    codex_home: Path,
    model_server: StubModelServer,
    tmp_path: Path,
) -> None:
    """Cancelling during a sandboxed command kills the command (in its own session) too,
    not only codex."""
    # The command tells the test it runs by writing to a FIFO, then becomes `sleep`.
    model_server.reply_exec("echo ready > ready.fifo && exec sleep 45", then="never sent")
    engine = engine_for(codex_home=codex_home)
    with fifo_signal(tmp_path / "work" / "ready.fifo") as command_started:
        run = asyncio.create_task(engine.run(RunRequest("r1", "wait"), Recorder()))
        async with asyncio.timeout(WAIT_S):
            await command_started.wait()
    assert processes_under([tmp_path / "work"]), "the command should be running now"

    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert_no_process_left(tmp_path)


async def test_missing_codex_is_codex_not_found(engine_for: Callable[..., CodexEngine]) -> None:
    """A CODEX_BIN that does not exist (where codex runs) fails the run with codex_not_found."""
    outcome = await engine_for(codex_bin="/nonexistent/codex").run(
        RunRequest("r1", "hi"), Recorder()
    )
    assert outcome.status == "failed"
    assert outcome.error is not None and outcome.error["code"] == "codex_not_found"
    assert "/nonexistent/codex" in outcome.error["message"]


async def test_a_run_returns_when_the_caller_has_its_answer(
    transport: AnyTransport, tmp_path: Path
) -> None:
    """A run returns as soon as the caller sets `answered`, while its program still runs;
    the program's exit and the clean-up follow, `ended` gives its status, nothing is left."""
    go = tmp_path / "go"
    script = f"echo answer; until [ -e {shlex.quote(str(go))} ]; do sleep 0.01; done; exit 3"
    answered = asyncio.Event()
    lines: list[str] = []

    def on_line(line: str) -> None:
        lines.append(line)
        if line == "answer":
            answered.set()

    result = await transport.run(
        ["sh", "-c", script],
        env_overrides={},
        cwd=str(tmp_path),
        on_stdout_line=on_line,
        timeout_s=WAIT_S,
        answered=answered,
    )
    assert lines == ["answer"] and result.exit_code is None and not result.timed_out
    assert result.ended is not None and not result.ended.done()
    assert processes_under([tmp_path]), "the program should still be running"
    go.touch()
    async with asyncio.timeout(WAIT_S):
        assert await result.ended == 3
    await transport.settled()
    assert_no_process_left(tmp_path)


async def test_a_process_that_dropped_the_tag_is_reaped_with_codexs_group(
    transport: AnyTransport, tmp_path: Path
) -> None:
    """A process left in codex's own process group without the run's tag (its environment
    cleared) is still ended once the run is over."""
    lines, result = await run_lines(
        transport, ["sh", "-c", "env -i sleep 43 & echo out"], cwd=str(tmp_path)
    )
    assert lines == ["out"] and result.exit_code == 0
    await transport.settled()
    await wait_no_process_left(tmp_path)
