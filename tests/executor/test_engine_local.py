"""What only the local transport does, and the engine's behaviour that does not depend
on the transport (the login cache, the dry run, attachments, codex's environment).

Tests marked `codex` run the native codex binary against testkit/fakes/model_server.py;
the transport tests below them use small shell and Python children instead. What every
transport must do runs locally and over SSH in test_transport_contract.py.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shlex
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from executor import transport_local
from executor.engine import CodexEngine, RunOutcome, RunRequest
from executor.run_helper import Launch
from executor.settings import ExecutorSettings
from executor.transport import LoginStatus
from executor.transport_local import LocalTransport
from testkit.fakes.model_server import STUB_API_KEY, StubModelServer
from testkit.procs import processes_under
from tests.executor.helpers import WAIT_S, Recorder, assert_no_process_left

Settings = Callable[..., ExecutorSettings]


# --- helpers ---------------------------------------------------------------------------


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


# --- the real codex --------------------------------------------------------------------


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


# --- the local transport on its own ----------------------------------------------------


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


@pytest.mark.parametrize("pidfd", [True, False], ids=["popen-pidfd", "event-loop"])
async def test_transport_starts_the_helper_either_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pidfd: bool
) -> None:
    """Started through Popen with a pidfd or through the event loop's subprocesses, a run
    streams its lines, keeps stderr, gives its exit status and leaves nothing behind."""
    monkeypatch.setattr(transport_local, "_PIDFD", pidfd)
    lines: list[str] = []
    async with LocalTransport() as local:
        result = await local.run(
            ["sh", "-c", "echo one; echo two; echo oops >&2; exit 5"],
            env_overrides={},
            cwd=str(tmp_path),
            on_stdout_line=lines.append,
            timeout_s=WAIT_S,
        )
    assert lines == ["one", "two"] and result.exit_code == 5 and "oops" in result.stderr_tail
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
        assert processes_under([tmp_path]), "the leftover should still be running"
        await local.settled()
        assert_no_process_left(tmp_path)


async def test_a_failing_clean_up_is_logged_and_the_result_stands(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An error while cleaning up after the answer is logged; the run's result is kept."""

    class BrokenCleanUp(LocalTransport):
        def _clean_up(self, child: Any, rest: Any) -> Any:
            async def broken() -> None:
                await rest
                raise OSError("cannot read /proc")

            return super()._clean_up(child, broken())

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


#: A codex stand-in: logged in; `exec` prints a turn's events, then waits for $FAKE_GO,
#: writes -o and exits 1 (codex writes -o, and could fail, only on its way out).
FAKE_CODEX = r"""#!/bin/sh
[ "$1" = login ] && { echo "Logged in using an API key" >&2; exit 0; }
out=
while [ $# -gt 0 ]; do [ "$1" = -o ] && out=$2; shift; done
echo "$out" > "$FAKE_GO.out"
echo '{"type":"thread.started","thread_id":"t-1"}'
echo '{"type":"turn.started"}'
echo '{"type":"item.completed","item":{"id":"i0","type":"agent_message","text":"from events"}}'
echo '{"type":"turn.completed","usage":{"input_tokens":1,"output_tokens":2}}'
until [ -e "$FAKE_GO" ]; do sleep 0.01; done
printf 'from -o' > "$out"
exit 1
"""


async def test_a_run_answers_at_codexs_turn_end_before_codex_exits(
    executor_settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The engine answers with the events' final message at codex's turn end while codex
    still runs; the -o temp dir goes once codex has exited, and its exit status 1 after
    the turn end is logged, the answer stands."""
    fake = tmp_path / "codex"
    fake.write_text(FAKE_CODEX)
    fake.chmod(0o755)
    go = tmp_path / "go"
    monkeypatch.setenv("FAKE_GO", str(go))
    async with LocalTransport() as local:
        engine = CodexEngine(executor_settings(codex_bin=str(fake)), local)
        async with asyncio.timeout(WAIT_S):
            outcome = await engine.run(RunRequest("r1", "hi"), Recorder())
        assert outcome.status == "succeeded", outcome.error
        assert outcome.answer == "from events" and outcome.thread_id == "t-1"
        output = Path((tmp_path / "go.out").read_text().strip())
        assert processes_under([tmp_path]), "codex should still be running"
        assert output.parent.is_dir()
        go.touch()
        async with asyncio.timeout(WAIT_S):
            await engine.aclose()
        assert not output.parent.exists()
        await local.settled()
    assert_no_process_left(tmp_path)
    assert any("exited with status 1 after its turn end" in r.message for r in caplog.records)


#: A codex stand-in whose first run lingers 0.3 s after its turn end; a `resume` notes
#: whether that first codex was still running when it started.
LINGERING_CODEX = r"""#!/bin/sh
[ "$1" = login ] && { echo "Logged in using an API key" >&2; exit 0; }
case " $* " in
  *" resume "*)
    if kill -0 "$(cat "$FAKE_DIR/first.pid")" 2>/dev/null; then seen=running; else seen=exited; fi
    echo "$seen" > "$FAKE_DIR/seen" ;;
  *) echo $$ > "$FAKE_DIR/first.pid" ;;
esac
echo '{"type":"thread.started","thread_id":"t-1"}'
echo '{"type":"item.completed","item":{"id":"i0","type":"agent_message","text":"ok"}}'
echo '{"type":"turn.completed","usage":{"input_tokens":1,"output_tokens":2}}'
[ -e "$FAKE_DIR/seen" ] || sleep 0.3
"""


async def test_a_resume_waits_for_the_exit_of_the_codex_that_answered_the_turn_before(
    executor_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run continuing a thread whose last codex answered but has not exited yet starts
    its codex only once that one is gone (it may still be writing the session)."""
    fake = tmp_path / "codex"
    fake.write_text(LINGERING_CODEX)
    fake.chmod(0o755)
    monkeypatch.setenv("FAKE_DIR", str(tmp_path))
    async with LocalTransport() as local:
        engine = CodexEngine(executor_settings(codex_bin=str(fake)), local)
        async with asyncio.timeout(WAIT_S):
            first = await engine.run(RunRequest("r1", "hi"), Recorder())
            second = await engine.run(RunRequest("r2", "again", "t-1"), Recorder())
            await engine.aclose()
    assert first.status == second.status == "succeeded" and first.thread_id == "t-1"
    assert (tmp_path / "seen").read_text().strip() == "exited"
    assert_no_process_left(tmp_path)


def test_the_exit_line_ends_the_programs_output() -> None:
    """The helper's exit line gives the status, splits off a last line without newline,
    and nothing after it reaches the caller."""
    lines: list[str] = []
    exits: list[int] = []
    launch = Launch(lines.append, exits.append)
    for line in ["motd", "codex-hub-pid 42", '{"a":1}', '{"b":2}codex-hub-exit 0', "late"]:
        launch.feed(line)
    assert lines == ['{"a":1}', '{"b":2}'] and exits == [0] and launch.exit_status == 0


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
