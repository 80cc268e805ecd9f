"""The codex engine over the local transport, with the real codex and the stub model.

Tests marked `codex` run the native codex binary against testkit/fakes/model_server.py;
the transport tests below them use small shell and Python children instead.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shlex
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from executor.engine import CodexEngine, RunOutcome, RunRequest
from executor.run_helper import Launch
from executor.run_io import STDERR_TAIL_BYTES
from executor.settings import ExecutorSettings
from executor.transport import LoginStatus
from executor.transport_local import LocalTransport
from testkit.fakes.model_server import STUB_API_KEY, STUB_USAGE, StubModelServer

Settings = Callable[..., ExecutorSettings]


# --- helpers ---------------------------------------------------------------------------


def processes_under(marker: Path) -> list[int]:
    """Live pids whose cwd, command line or environment mentions `marker`."""
    needle = os.fsencode(marker)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                if fh.read().rsplit(b")", 1)[-1].split()[0] == b"Z":
                    continue  # a zombie has exited; its parent just has not reaped it yet
            cwd = os.fsencode(os.readlink(f"/proc/{entry}/cwd"))
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read()
            with open(f"/proc/{entry}/environ", "rb") as fh:
                environ = fh.read()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if cwd.startswith(needle) or needle in cmdline or needle in environ:
            found.append(int(entry))
    return found


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


class Recorder:
    """Collects emitted events and wakes waiters when one matches."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._changed = asyncio.Event()

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self._changed.set()

    def codex_types(self) -> list[str]:
        """The `type` of every codex event, in order."""
        return [e["data"]["type"] for e in self.events if e["kind"] == "codex"]

    async def wait_for(self, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first event that satisfies `match`, waiting for it if need be."""
        async with asyncio.timeout(30):
            while True:
                for event in self.events:
                    if match(event):
                        return event
                self._changed.clear()
                await self._changed.wait()


class CountingTransport(LocalTransport):
    """A LocalTransport that counts `codex login status` calls."""

    login_calls = 0

    async def login_status(self, codex_bin: str, env_overrides: Any) -> LoginStatus:
        self.login_calls += 1
        return await super().login_status(codex_bin, env_overrides)


@pytest.fixture
async def transport() -> AsyncIterator[CountingTransport]:
    """A local transport, closed after the test."""
    async with CountingTransport() as local:
        yield local


@pytest.fixture
def engine_for(
    executor_settings: Settings, transport: CountingTransport, codex_bin: str
) -> Callable[..., CodexEngine]:
    """Build a CodexEngine on the local transport from settings overrides."""

    def make(**overrides: Any) -> CodexEngine:
        return CodexEngine(executor_settings(codex_bin=codex_bin, **overrides), transport)

    return make


def assert_no_process_left(tmp_path: Path) -> None:
    """Nothing started for this test (codex, its sandbox, its commands) still runs."""
    left = {pid: describe_process(pid) for pid in processes_under(tmp_path)}
    assert left == {}


def describe_process(pid: int) -> str:
    """The stat line and command line of `pid`, for a failure message."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode(errors="replace")
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError as exc:
        return f"gone ({exc})"
    return f"{stat.strip()} :: {cmdline[:300]}"


# --- the real codex --------------------------------------------------------------------


@pytest.mark.codex
async def test_plain_answer(
    engine_for: Callable[..., CodexEngine],
    codex_home: Path,
    model_server: StubModelServer,
    tmp_path: Path,
    transport: CountingTransport,
) -> None:
    """codex's final message is the answer, with its thread id, usage and events."""
    model_server.reply_text("Hello from the stub.\nSecond line.")
    events = Recorder()
    prompt = "--version is not a flag here"
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
    transport: CountingTransport,
) -> None:
    """A command the model asks for runs in the workdir, inside the workspace-write sandbox."""
    model_server.reply_exec("printf 'made by codex' > note.txt", then="I wrote note.txt.")
    events = Recorder()
    engine = engine_for(codex_home=codex_home)
    outcome = await engine.run(RunRequest("r1", "write a note"), events)

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
async def test_codex_commands_never_see_codex_hubs_secrets(
    engine_for: Callable[..., CodexEngine],
    codex_home: Path,
    model_server: StubModelServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    transport: CountingTransport,
) -> None:
    """A command codex runs sees neither the hub's tokens nor the optimizer's upstream."""
    secrets = {
        "HUB_TOKEN": "hub-token-canary",
        "SLACK_BOT_TOKEN": "xoxb-canary",
        "OPENAI_API_KEY": "sk-canary-canary-canary",
        "OPENAI_BASE_URL": "http://canary.invalid/v1",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    model_server.reply_exec("env > seen.env", then="done")
    outcome = await engine_for(codex_home=codex_home).run(RunRequest("r1", "env"), Recorder())

    assert outcome.status == "succeeded", outcome.error
    seen = (tmp_path / "work" / "seen.env").read_text()
    assert "PATH=" in seen
    for value in secrets.values():
        assert value not in seen
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
    """Without a login the run fails at once, naming the fix, and never reaches the model."""
    engine = engine_for(codex_home=codex_home_logged_out)
    outcome = await engine.run(RunRequest("r1", "hi"), Recorder())

    assert outcome.status == "failed"
    assert outcome.error is not None and outcome.error["code"] == "codex_not_logged_in"
    assert "codex login --with-api-key" in outcome.error["message"]
    assert str(codex_home_logged_out) in outcome.error["message"]
    assert model_server.requests == []


@pytest.mark.codex
async def test_login_status_is_cached_only_when_logged_in(
    engine_for: Callable[..., CodexEngine],
    codex_home: Path,
    codex_home_logged_out: Path,
    transport: CountingTransport,
) -> None:
    """A logged-in answer is reused; a logged-out one is asked again every time."""
    engine = engine_for(codex_home=codex_home)
    status = await engine.login_status()
    assert status == LoginStatus(True, "API key configured")
    assert STUB_API_KEY[-4:] not in status.detail
    await engine.login_status()
    assert transport.login_calls == 1
    await engine.login_status(force=True)
    assert transport.login_calls == 2

    logged_out = engine_for(codex_home=codex_home_logged_out)
    assert (await logged_out.login_status()).logged_in is False
    await logged_out.login_status()
    assert transport.login_calls == 4


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
    """codex waits forever on a closed port; the timeout kills it and its whole group."""
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
    assert processes_under(tmp_path), "codex should be running now"

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
    """Cancelling during a sandboxed command kills the command too, not only codex."""
    # The command tells the test it runs by writing to a FIFO, then becomes `sleep`.
    model_server.reply_exec("echo ready > ready.fifo && exec sleep 45", then="never sent")
    engine = engine_for(codex_home=codex_home)
    with fifo_signal(tmp_path / "work" / "ready.fifo") as command_started:
        run = asyncio.create_task(engine.run(RunRequest("r1", "wait"), Recorder()))
        async with asyncio.timeout(30):
            await command_started.wait()
    assert processes_under(tmp_path / "work"), "the command should be running now"

    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert_no_process_left(tmp_path)


async def test_dry_run_echoes_without_codex(executor_settings: Settings) -> None:
    """EXEC_DRY_RUN answers with the prompt at once, without codex or a login."""
    settings = executor_settings(exec_dry_run=True, codex_bin="/nonexistent/codex")
    engine = CodexEngine(settings, LocalTransport())
    events = Recorder()
    outcome = await engine.run(RunRequest("r1", "echo me", "t-1"), events)

    assert outcome == RunOutcome(
        "succeeded",
        "echo me",
        "t-1",
        {"input_tokens": 0, "cached_input_tokens": 0, "output_tokens": 0},
    )
    (event,) = events.events
    assert event["kind"] == "codex" and event["data"]["item"]["text"] == "echo me"


async def test_missing_binary_fails_cleanly(executor_settings: Settings) -> None:
    """A CODEX_BIN that does not exist fails the run with codex_not_found."""
    settings = executor_settings(codex_bin="/nonexistent/codex")
    async with LocalTransport() as local:
        outcome = await CodexEngine(settings, local).run(RunRequest("r1", "hi"), Recorder())
    assert outcome.status == "failed"
    assert outcome.error is not None and outcome.error["code"] == "codex_not_found"
    assert "/nonexistent/codex" in outcome.error["message"]


# --- the local transport on its own ----------------------------------------------------


async def test_transport_streams_long_lines_and_keeps_stderr_tail(tmp_path: Path) -> None:
    """Lines far beyond 64 KiB arrive whole; only the end of stderr is kept."""
    script = (
        "import sys\n"
        "print('a' * 300_000)\n"
        "print('short', flush=True)\n"
        "sys.stderr.write('e' * 10_000 + 'THE END')\n"
        "sys.exit(3)\n"
    )
    lines: list[str] = []
    async with LocalTransport() as local:
        result = await local.run(
            [sys.executable, "-c", script],
            env_overrides={"MARK": str(tmp_path)},
            cwd=str(tmp_path),
            on_stdout_line=lines.append,
            timeout_s=30,
        )
    assert lines == ["a" * 300_000, "short"]
    assert result.exit_code == 3 and not result.timed_out
    assert result.stderr_tail.endswith("THE END")
    assert len(result.stderr_tail) == STDERR_TAIL_BYTES


async def test_transport_passes_env_overrides(tmp_path: Path) -> None:
    """The child sees the inherited environment plus the overrides."""
    lines: list[str] = []
    async with LocalTransport() as local:
        await local.run(
            ["sh", "-c", 'echo "$CODEX_HUB_TEST_VAR:$PATH"'],
            env_overrides={"CODEX_HUB_TEST_VAR": "yes"},
            cwd=str(tmp_path),
            on_stdout_line=lines.append,
            timeout_s=30,
        )
    assert lines == [f"yes:{os.environ['PATH']}"]


# A child that leaves a grandchild in its group and a great-grandchild in a new session.
_SPAWNER = """
import os, subprocess, sys, time
subprocess.Popen(["sleep", "41"])
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(42)"], start_new_session=True)
print("started", flush=True)
time.sleep(float(sys.argv[1]))
"""


async def test_transport_timeout_kills_group_and_setsid_children(tmp_path: Path) -> None:
    """On timeout every descendant dies, also one that left the process group."""
    async with LocalTransport() as local:
        result = await local.run(
            [sys.executable, "-c", _SPAWNER, "60"],
            env_overrides={},
            cwd=str(tmp_path),
            on_stdout_line=lambda line: None,
            timeout_s=1.0,
        )
    assert result.timed_out
    assert_no_process_left(tmp_path)


async def test_transport_exit_kills_leftovers(tmp_path: Path) -> None:
    """A normal exit returns at once and kills what the child left, in any session."""
    lines: list[str] = []
    async with LocalTransport() as local:
        result = await local.run(
            [sys.executable, "-c", _SPAWNER, "0"],
            env_overrides={},
            cwd=str(tmp_path),
            on_stdout_line=lines.append,
            timeout_s=20,
        )
    assert result.exit_code == 0 and not result.timed_out and lines == ["started"]
    assert_no_process_left(tmp_path)


async def test_transport_answers_before_the_leftovers_are_reaped(tmp_path: Path) -> None:
    """A run returns at its program's exit while a leftover that ignores SIGTERM still
    runs; the transport reaps it afterwards, and nothing is left once that is done."""
    script = "trap '' TERM; touch ready; exec sleep 43"
    parent = f"sh -c {shlex.quote(script)} & until [ -e ready ]; do sleep 0.01; done; echo out"
    lines: list[str] = []
    async with LocalTransport(kill_grace_s=0.3) as local:
        result = await local.run(
            ["sh", "-c", parent],
            env_overrides={},
            cwd=str(tmp_path),
            on_stdout_line=lines.append,
            timeout_s=20,
        )
        assert result.exit_code == 0 and not result.timed_out and lines == ["out"]
        assert processes_under(tmp_path), "the leftover should still be running"
        await local.settled()
        assert_no_process_left(tmp_path)


async def test_a_failing_clean_up_is_logged_and_the_result_stands(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An error while cleaning up after the answer is logged; the run's result is kept."""

    class BrokenCleanUp(LocalTransport):
        def _clean_up(self, child: Any, rest: Any) -> None:
            async def broken() -> None:
                await rest
                raise OSError("cannot read /proc")

            super()._clean_up(child, broken())

    async with BrokenCleanUp() as local:
        result = await local.run(
            ["sh", "-c", "echo answer"],
            env_overrides={},
            cwd=str(tmp_path),
            on_stdout_line=lambda line: None,
            timeout_s=20,
        )
        await local.settled()
    assert result.exit_code == 0 and not result.timed_out
    failures = [r for r in caplog.records if "cleaning up after a run failed" in r.message]
    assert failures and "cannot read /proc" in str(failures[0].exc_info)


def test_the_exit_line_ends_the_programs_output() -> None:
    """The helper's exit line gives the status, splits off a last line without newline,
    and nothing after it reaches the caller."""
    lines: list[str] = []
    exits: list[int] = []
    launch = Launch(lines.append, exits.append)
    for line in ["motd", "codex-hub-pid 42", '{"a":1}', '{"b":2}codex-hub-exit 0', "late"]:
        launch.feed(line)
    assert lines == ['{"a":1}', '{"b":2}'] and exits == [0] and launch.exit_status == 0


async def test_transport_leftovers_get_sigterm_first(tmp_path: Path) -> None:
    """Leftovers are asked to stop first, so shell EXIT traps (lock cleanup) still run."""
    script = "trap 'echo bye > trapped.txt' EXIT; touch ready; sleep 44"
    # The parent exits only once the trap is set, or the test would race its setup.
    parent = f"setsid bash -c {shlex.quote(script)} & until [ -e ready ]; do sleep 0.01; done"
    async with LocalTransport() as local:
        result = await local.run(
            ["sh", "-c", parent],
            env_overrides={},
            cwd=str(tmp_path),
            on_stdout_line=lambda line: None,
            timeout_s=20,
        )
    assert result.exit_code == 0 and not result.timed_out
    assert_no_process_left(tmp_path)
    assert (tmp_path / "trapped.txt").read_text() == "bye\n"


async def test_transport_cancel_kills_and_reraises(tmp_path: Path) -> None:
    """Cancelling the caller kills the child's group, waits for it, and re-raises."""
    started = asyncio.Event()
    async with LocalTransport() as local:
        run = asyncio.create_task(
            local.run(
                [sys.executable, "-c", _SPAWNER, "60"],
                env_overrides={},
                cwd=str(tmp_path),
                on_stdout_line=lambda line: started.set(),
                timeout_s=30,
            )
        )
        await started.wait()
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
    assert_no_process_left(tmp_path)


async def test_transport_callback_error_kills_child(tmp_path: Path) -> None:
    """If the line callback raises, the child is killed and the error propagates."""

    def explode(line: str) -> None:
        raise RuntimeError("consumer broke")

    async with LocalTransport() as local:
        with pytest.raises(RuntimeError, match="consumer broke"):
            await local.run(
                [sys.executable, "-c", _SPAWNER, "60"],
                env_overrides={},
                cwd=str(tmp_path),
                on_stdout_line=explode,
                timeout_s=30,
            )
    assert_no_process_left(tmp_path)


async def test_transport_files(tmp_path: Path) -> None:
    """Temp dirs are created and removed; text is read back."""
    async with LocalTransport() as local:
        directory = Path(await local.make_tempdir())
        (directory / "f.txt").write_bytes(b"caf\xc3\xa9 \xff")
        assert await local.read_text(str(directory / "f.txt")) == "café \ufffd"
        await local.remove_tree(str(directory))
        assert not directory.exists()  # noqa: ASYNC240
        await local.remove_tree(str(directory))


async def test_attached_files_are_written_under_attachments_with_safe_names(
    executor_settings: Settings, tmp_path: Path
) -> None:
    """Files in an assign frame's options land in the workdir's attachments/ directory
    under sanitised, unique names, and the prompt names each path."""
    settings = executor_settings(exec_dry_run=True, codex_bin="/nonexistent/codex")
    files = [
        {"name": "../../etc/passwd", "data": base64.b64encode(b"one").decode()},
        {"name": "notes v2.txt", "data": base64.b64encode(b"two").decode()},
        {"name": "passwd", "data": base64.b64encode(b"three").decode()},
    ]
    request = RunRequest.with_options(
        "r1", "read them", None, {"files": files}, workdir=str(tmp_path)
    )
    async with LocalTransport() as transport:
        await CodexEngine(settings, transport).write_attachments(request)
    folder = tmp_path / "attachments"
    assert sorted(p.name for p in folder.iterdir()) == ["notes_v2.txt", "passwd", "passwd-2"]
    assert (folder / "passwd").read_bytes() == b"one"
    assert (folder / "passwd-2").read_bytes() == b"three"
    assert request.prompt.startswith("read them\n\n")
    for name in ("attachments/passwd", "attachments/notes_v2.txt", "attachments/passwd-2"):
        assert f"- {name}" in request.prompt
