"""The app-server engine with the real `codex app-server` and the stub model.

Every test marked `codex` runs the pinned native binary against
testkit/fakes/model_server.py, through the local transport and its run helper.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from executor.appserver_protocol import (
    SCHEMA_FILES,
    ApprovalDecision,
    ApprovalRequest,
    load_expected_fingerprint,
    schema_fingerprint,
)
from executor.codex import TESTED_CODEX_VERSION, CodexProgress
from executor.engine import RunOutcome, RunRequest
from executor.engine_appserver import AppServerEngine, IncompatibleAppServer, SteerError
from executor.factory import build_pipeline
from executor.settings import ExecutorSettings
from executor.transport_local import LocalTransport
from executor.transport_ssh import SshTransport
from testkit.fakes.model_server import STUB_USAGE, StubModelServer
from testkit.fakes.ssh_server import FakeSshServer
from testkit.procs import processes_under
from tests.executor.helpers import Recorder

Settings = Callable[..., ExecutorSettings]
MakeEngine = Callable[..., AppServerEngine]


@pytest.fixture
async def make_engine(
    executor_settings: Settings, codex_home: Path, codex_bin: str
) -> AsyncIterator[MakeEngine]:
    """Build app-server engines on one local transport; all are closed after the test."""
    transport = LocalTransport()
    engines: list[AppServerEngine] = []

    def make(*, engine: dict[str, Any] | None = None, **overrides: Any) -> AppServerEngine:
        values: dict[str, Any] = {"codex_bin": codex_bin, "codex_home": codex_home}
        values.update(overrides)
        settings = executor_settings(exec_engine="app-server", **values)
        made = AppServerEngine(settings, transport, **(engine or {}))
        engines.append(made)
        return made

    try:
        yield make
    finally:
        for made in engines:
            await made.aclose()
        await transport.close()


def codex_data(recorder: Recorder) -> list[dict[str, Any]]:
    """The exec-shaped codex events a run emitted."""
    return [e["data"] for e in recorder.events if e["kind"] == "codex"]


async def start_run(
    engine: AppServerEngine, run_id: str, prompt: str, thread_id: str | None = None
) -> tuple[asyncio.Task[RunOutcome], Recorder]:
    """A run in a task of its own, with the recorder of its events."""
    recorder = Recorder()
    task = asyncio.create_task(engine.run(RunRequest(run_id, prompt, thread_id), recorder))
    return task, recorder


# --- runs ------------------------------------------------------------------------------


@pytest.mark.codex
async def test_a_run_answers_with_the_models_text_and_usage(
    make_engine: MakeEngine, model_server: StubModelServer, codex_home: Path
) -> None:
    """A run succeeds with the model's answer, its usage, and events in exec's shapes."""
    model_server.reply_text("hello from the app-server")
    engine = make_engine()
    recorder = Recorder()

    outcome = await engine.run(RunRequest("r1", "say hello"), recorder)

    assert outcome.status == "succeeded", outcome.error
    assert outcome.answer == "hello from the app-server"
    assert outcome.usage == STUB_USAGE
    assert outcome.thread_id
    types = [d["type"] for d in codex_data(recorder)]
    assert types[0] == "thread.started" and types[-1] == "turn.completed"
    assert "turn.started" in types and "item.completed" in types
    progress = CodexProgress().feed_all(codex_data(recorder))
    assert progress.thread_id == outcome.thread_id
    assert progress.last_message == "hello from the app-server"
    assert progress.usage == STUB_USAGE and progress.turn_completed
    deltas = [e["delta"] for e in recorder.events if e["kind"] == "answer_delta"]
    assert "".join(deltas) == "hello from the app-server"
    request = (await model_server.wait_for_requests(1))[0]
    assert "say hello" in request.text
    assert request.headers.get("originator") == "codex_hub"
    await engine.aclose()
    assert processes_under([codex_home]) == {}


@pytest.mark.codex
async def test_a_failing_event_sink_loses_events_but_not_the_run(
    make_engine: MakeEngine, model_server: StubModelServer
) -> None:
    """An emit that raises costs that event only: the run still ends with its answer."""
    model_server.reply_text("still answered")
    engine = make_engine()
    kept: list[dict[str, Any]] = []

    def emit(event: dict[str, Any]) -> None:
        if event.get("data", {}).get("type") == "turn.completed":
            raise RuntimeError("the sink broke")
        kept.append(event)

    outcome = await engine.run(RunRequest("r1", "hi"), emit)

    assert outcome.status == "succeeded" and outcome.answer == "still answered"
    assert "turn.completed" not in [e.get("data", {}).get("type") for e in kept]


@pytest.mark.codex
async def test_two_runs_at_once_share_one_process(
    make_engine: MakeEngine, model_server: StubModelServer
) -> None:
    """Two runs are in flight together on one app-server process and both succeed."""
    gates = [model_server.reply_gated("together"), model_server.reply_gated("together")]
    engine = make_engine()
    first, _ = await start_run(engine, "r1", "one")
    second, _ = await start_run(engine, "r2", "two")

    await model_server.wait_for_requests(2)  # both turns reached the model at once
    for gate in gates:
        gate.set()
    outcomes = await asyncio.gather(first, second)

    assert [o.status for o in outcomes] == ["succeeded", "succeeded"]
    assert [o.answer for o in outcomes] == ["together", "together"]
    assert outcomes[0].thread_id != outcomes[1].thread_id
    assert engine.processes_started == 1


@pytest.mark.codex
async def test_a_run_continues_the_thread_of_an_earlier_run(
    make_engine: MakeEngine, model_server: StubModelServer
) -> None:
    """A run given an earlier run's thread continues that conversation on the same process."""
    model_server.reply_text("first answer")
    model_server.reply_text("second answer")
    engine = make_engine()
    first = await engine.run(RunRequest("r1", "remember the word kumquat"), Recorder())
    second = await engine.run(RunRequest("r2", "what word?", first.thread_id), Recorder())

    assert [first.status, second.status] == ["succeeded", "succeeded"], second.error
    assert second.thread_id == first.thread_id and second.answer == "second answer"
    requests = await model_server.wait_for_requests(2)
    assert "kumquat" in requests[1].text and "first answer" in requests[1].text
    assert engine.processes_started == 1


@pytest.mark.codex
async def test_a_new_process_resumes_a_thread_from_disk(
    make_engine: MakeEngine, model_server: StubModelServer
) -> None:
    """After the app-server that ran a thread is gone, a new one resumes the thread."""
    model_server.reply_text("first answer")
    model_server.reply_text("resumed answer")
    before = make_engine()
    first = await before.run(RunRequest("r1", "remember the word kumquat"), Recorder())
    await before.aclose()  # an executor restart

    after = make_engine()
    second = await after.run(RunRequest("r2", "what word?", first.thread_id), Recorder())

    assert second.status == "succeeded", second.error
    assert second.thread_id == first.thread_id and second.answer == "resumed answer"
    requests = await model_server.wait_for_requests(2)
    assert "kumquat" in requests[1].text and "first answer" in requests[1].text


@pytest.mark.codex
async def test_a_thread_another_process_holds_continues_as_a_copy(
    make_engine: MakeEngine, model_server: StubModelServer
) -> None:
    """A thread still held by another live app-server is forked, history and all, with a note."""
    model_server.reply_text("first answer")
    model_server.reply_text("forked answer")
    holder = make_engine()
    first = await holder.run(RunRequest("r1", "remember the word kumquat"), Recorder())
    other = make_engine()  # a second executor on the same CODEX_HOME
    recorder = Recorder()

    second = await other.run(RunRequest("r2", "what word?", first.thread_id), recorder)

    assert second.status == "succeeded", second.error
    assert second.thread_id and second.thread_id != first.thread_id
    notes = [e["message"] for e in recorder.events if e["kind"] == "note"]
    assert notes and "held by another codex process" in notes[0]
    requests = await model_server.wait_for_requests(2)
    assert "kumquat" in requests[1].text and "first answer" in requests[1].text


@pytest.mark.codex
async def test_an_idle_process_with_many_threads_is_replaced_and_threads_resume(
    make_engine: MakeEngine, model_server: StubModelServer
) -> None:
    """Past recycle_after_threads an idle app-server is replaced; its threads resume."""
    model_server.reply_text("first answer")
    model_server.reply_text("second answer")
    engine = make_engine(engine={"recycle_after_threads": 1})
    first = await engine.run(RunRequest("r1", "remember the word kumquat"), Recorder())
    second = await engine.run(RunRequest("r2", "what word?", first.thread_id), Recorder())

    assert second.status == "succeeded", second.error
    assert second.thread_id == first.thread_id
    assert engine.processes_started == 2
    requests = await model_server.wait_for_requests(2)
    assert "kumquat" in requests[1].text


@pytest.mark.codex
async def test_an_unknown_thread_runs_as_a_new_conversation_with_a_note(
    make_engine: MakeEngine, model_server: StubModelServer
) -> None:
    """A thread codex has no rollout for is replaced by a new one, and a note says so."""
    model_server.reply_text("fresh")
    engine = make_engine()
    recorder = Recorder()
    missing = "019a0000-0000-7000-8000-000000000000"

    outcome = await engine.run(RunRequest("r1", "hi", missing), recorder)

    assert outcome.status == "succeeded" and outcome.answer == "fresh"
    assert outcome.thread_id != missing
    notes = [e["message"] for e in recorder.events if e["kind"] == "note"]
    assert notes and missing in notes[0]


@pytest.mark.codex
async def test_cancel_interrupts_the_turn_and_the_thread_stays_usable(
    make_engine: MakeEngine, model_server: StubModelServer
) -> None:
    """Cancelling a run interrupts its turn; the process lives and the thread goes on."""
    model_server.reply_hang()
    model_server.reply_text("after the interrupt")
    engine = make_engine()
    task, recorder = await start_run(engine, "r1", "take your time")
    await model_server.wait_for_requests(1)
    started = await recorder.wait_for(lambda e: e.get("data", {}).get("type") == "thread.started")

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "turn.interrupted" in [d["type"] for d in codex_data(recorder)]

    thread_id = started["data"]["thread_id"]
    outcome = await engine.run(RunRequest("r2", "go on", thread_id), Recorder())
    assert outcome.status == "succeeded" and outcome.answer == "after the interrupt"
    assert engine.processes_started == 1
    requests = await model_server.wait_for_requests(2)
    assert "turn_aborted" in requests[1].text


@pytest.mark.codex
async def test_a_turn_not_ended_within_the_grace_period_gets_the_process_killed(
    make_engine: MakeEngine, model_server: StubModelServer
) -> None:
    """When codex has not ended the turn within the grace period, the process is killed."""
    model_server.reply_hang()
    model_server.reply_text("on a new process")
    engine = make_engine(engine={"interrupt_grace_s": 0.001})
    task, _ = await start_run(engine, "r1", "take your time")
    await model_server.wait_for_requests(1)
    server = engine._server

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert server is not None and server.dead is not None and "did not stop" in server.dead
    after = await engine.run(RunRequest("r2", "hello?"), Recorder())
    assert after.status == "succeeded" and after.answer == "on a new process"
    assert engine.processes_started == 2


@pytest.mark.codex
async def test_a_timeout_interrupts_the_turn_and_reports_timed_out(
    make_engine: MakeEngine, model_server: StubModelServer
) -> None:
    """A run past EXEC_TIMEOUT_S ends timed_out; its thread still answers the next run."""
    model_server.reply_hang()
    model_server.reply_text("still here")
    engine = make_engine(exec_timeout_s=1.5)

    outcome = await engine.run(RunRequest("r1", "never answered"), Recorder())

    assert outcome.status == "timed_out"
    assert outcome.error == {"code": "timeout", "message": "codex did not finish within 1.5 s"}
    after = await engine.run(RunRequest("r2", "again", outcome.thread_id), Recorder())
    assert after.status == "succeeded" and after.answer == "still here"
    assert engine.processes_started == 1


@pytest.mark.codex
async def test_a_killed_app_server_fails_the_run_and_the_next_run_restarts_it(
    make_engine: MakeEngine, model_server: StubModelServer
) -> None:
    """The app-server killed mid-run fails that run with the reason; the next run works."""
    model_server.reply_hang()
    model_server.reply_text("back again")
    engine = make_engine()
    task, _ = await start_run(engine, "r1", "doomed")
    await model_server.wait_for_requests(1)
    server = engine._server
    assert server is not None and server.session is not None and server.session.pid

    os.kill(server.session.pid, signal.SIGKILL)
    outcome = await task

    assert outcome.status == "failed"
    assert outcome.error is not None and outcome.error["code"] == "codex_failed"
    assert "app-server stopped during the run" in outcome.error["message"]
    assert "exit code" in outcome.error["message"]
    after = await engine.run(RunRequest("r2", "hello?"), Recorder())
    assert after.status == "succeeded" and after.answer == "back again"
    assert engine.processes_started == 2


# --- approvals ---------------------------------------------------------------------------


class Approver:
    """An approval callback that records each request and answers with `decision`."""

    def __init__(self, decision: ApprovalDecision) -> None:
        self.decision = decision
        self.requests: list[ApprovalRequest] = []

    async def __call__(self, request: ApprovalRequest) -> ApprovalDecision:
        self.requests.append(request)
        return self.decision


@pytest.mark.codex
async def test_an_approved_escalated_command_runs(
    make_engine: MakeEngine, model_server: StubModelServer, tmp_path: Path
) -> None:
    """An escalated command reaches the approval callback; approved, it runs."""
    marker = tmp_path / "approved.txt"
    model_server.reply_escalated_exec(f"echo yes > {marker}", "needs to write outside", "ran it")
    approver = Approver("approve")
    engine = make_engine(engine={"approve": approver})
    recorder = Recorder()

    outcome = await engine.run(RunRequest("r1", "write the marker"), recorder)

    assert outcome.status == "succeeded" and outcome.answer == "ran it"
    [asked] = approver.requests
    assert asked.kind == "command" and asked.run_id == "r1"
    assert str(marker) in asked.command and asked.reason == "needs to write outside"
    assert marker.read_text().strip() == "yes"
    decided = [e for e in recorder.events if e["kind"] == "approval"]
    assert [e["status"] for e in decided] == ["requested", "decided"]
    assert decided[1]["decision"] == "approve"


@pytest.mark.codex
async def test_a_denied_command_is_not_run_and_the_model_is_told(
    make_engine: MakeEngine, model_server: StubModelServer, tmp_path: Path
) -> None:
    """Deny keeps the command from running; the model hears so and the run goes on."""
    marker = tmp_path / "denied.txt"
    model_server.reply_escalated_exec(f"echo yes > {marker}", "please", "understood")
    approver = Approver("deny")
    engine = make_engine(engine={"approve": approver})

    outcome = await engine.run(RunRequest("r1", "try it"), Recorder())

    assert outcome.status == "succeeded" and outcome.answer == "understood"
    assert len(approver.requests) == 1
    assert not marker.exists()
    requests = await model_server.wait_for_requests(2)
    assert "rejected" in requests[1].text


@pytest.mark.codex
async def test_without_an_approver_codex_is_declined_and_an_event_says_so(
    make_engine: MakeEngine, model_server: StubModelServer, tmp_path: Path
) -> None:
    """With no approval callback the request is declined (fail closed) and recorded."""
    marker = tmp_path / "nobody.txt"
    model_server.reply_escalated_exec(f"echo yes > {marker}", "please", "fine")
    engine = make_engine()
    recorder = Recorder()

    outcome = await engine.run(RunRequest("r1", "try it"), recorder)

    assert outcome.status == "succeeded"
    assert not marker.exists()
    decided = [e for e in recorder.events if e.get("status") == "decided"]
    assert decided and decided[0]["decision"] == "deny" and decided[0]["by"] == "default"
    assert "no approver" in decided[0]["summary"]


#: /tmp and $TMPDIR are writable in codex's workspace-write sandbox unless excluded;
#: excluded, a file under the test's tmp_path (outside the workdir) needs an approval.
NO_TMP = (
    "-c sandbox_workspace_write.exclude_slash_tmp=true "
    "-c sandbox_workspace_write.exclude_tmpdir_env_var=true"
)


@pytest.mark.parametrize("decision", ["approve", "deny"])
@pytest.mark.codex
async def test_a_file_change_outside_the_sandbox_asks_with_its_diff(
    make_engine: MakeEngine,
    model_server: StubModelServer,
    tmp_path: Path,
    decision: ApprovalDecision,
) -> None:
    """A change outside the writable roots reaches the callback with path and diff."""
    target = tmp_path / "outside" / "new.txt"
    target.parent.mkdir()
    patch = f"*** Begin Patch\n*** Add File: {target}\n+hello\n*** End Patch\n"
    model_server.reply_patch(patch, "patched")
    approver = Approver(decision)
    engine = make_engine(codex_extra_args=NO_TMP, engine={"approve": approver})

    outcome = await engine.run(RunRequest("r1", "add the file"), Recorder())

    assert outcome.status == "succeeded" and outcome.answer == "patched"
    [asked] = approver.requests
    assert asked.kind == "file_change"
    assert [c["path"] for c in asked.changes] == [str(target)]
    assert "hello" in asked.changes[0]["diff"]
    assert target.exists() is (decision == "approve")


# --- steering ----------------------------------------------------------------------------


@pytest.mark.codex
async def test_steering_a_running_turn_reaches_the_model(
    make_engine: MakeEngine, model_server: StubModelServer
) -> None:
    """`steer` adds input to the running turn: the model is asked again with it."""
    model_server.reply_stall()
    model_server.reply_text("steered answer")
    engine = make_engine()
    task, recorder = await start_run(engine, "r1", "start working")
    await model_server.wait_for_requests(1)

    turn_id = await engine.steer("r1", "also mention bananas")
    outcome = await task

    assert turn_id
    assert outcome.status == "succeeded" and outcome.answer == "steered answer"
    requests = await model_server.wait_for_requests(2)
    assert "also mention bananas" in requests[1].text
    assert any(e["kind"] == "steer" for e in recorder.events)


async def test_steering_a_run_that_is_not_running_is_refused(
    executor_settings: Settings,
) -> None:
    """`steer` on a run this engine is not running raises SteerError."""
    engine = AppServerEngine(executor_settings(exec_engine="app-server"), LocalTransport())
    with pytest.raises(SteerError, match="no running turn"):
        await engine.steer("nope", "hello")


# --- the protocol check ------------------------------------------------------------------


def pinned_fingerprint(codex_bin: str, out: Path) -> dict[str, Any]:
    """The fingerprint of the schema the pinned binary generates."""
    import subprocess

    subprocess.run(
        [codex_bin, "app-server", "generate-json-schema", "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    schemas = {name: json.loads((out / name).read_text()) for name in SCHEMA_FILES}
    return schema_fingerprint(schemas)


@pytest.mark.codex
def test_the_committed_fingerprint_is_the_pinned_binarys(codex_bin: str, tmp_path: Path) -> None:
    """executor/appserver_schema.json matches the schema of the pinned codex."""
    expected = load_expected_fingerprint()
    assert expected.pop("codex_version") == TESTED_CODEX_VERSION
    assert pinned_fingerprint(codex_bin, tmp_path / "schema") == expected


@pytest.mark.codex
async def test_a_binary_with_another_protocol_is_refused_naming_the_tested_version(
    make_engine: MakeEngine, model_server: StubModelServer
) -> None:
    """A schema that differs from the tested one refuses the engine before any process."""
    expected = copy.deepcopy(load_expected_fingerprint())
    expected["client_requests"]["turn/steer"] = {"required": ["expectedTurnId", "somethingNew"]}
    engine = make_engine(engine={"expected_schema": expected})

    outcome = await engine.run(RunRequest("r1", "hi"), Recorder())

    assert outcome.status == "failed" and outcome.error is not None
    assert outcome.error["code"] == "codex_incompatible"
    assert f"codex {TESTED_CODEX_VERSION}" in outcome.error["message"]
    assert "turn/steer" in outcome.error["message"]
    assert engine.processes_started == 0
    assert model_server.requests == []
    with pytest.raises(IncompatibleAppServer, match=f"codex {TESTED_CODEX_VERSION}"):
        await engine.login_status(force=True)  # what the executor asks at start


# --- wiring ------------------------------------------------------------------------------


async def test_exec_engine_app_server_builds_the_app_server_engine(
    executor_settings: Settings,
) -> None:
    """EXEC_ENGINE=app-server selects the app-server engine; exec stays the default."""
    pipeline, transport = build_pipeline(executor_settings(exec_engine="app-server"))
    default, other = build_pipeline(executor_settings())
    try:
        assert isinstance(pipeline.engine, AppServerEngine)
        assert not isinstance(default.engine, AppServerEngine)
    finally:
        for p, t in ((pipeline, transport), (default, other)):
            await p.aclose()
            await t.close()


async def test_a_dry_run_echoes_the_prompt_without_codex(executor_settings: Settings) -> None:
    """EXEC_DRY_RUN answers with the prompt and starts no app-server."""
    settings = executor_settings(exec_engine="app-server", exec_dry_run=True, codex_bin="/nope")
    engine = AppServerEngine(settings, LocalTransport())
    outcome = await engine.run(RunRequest("r1", "echo me"), Recorder())
    assert outcome.status == "succeeded" and outcome.answer == "echo me"
    assert engine.processes_started == 0


# --- over SSH ----------------------------------------------------------------------------


@pytest.fixture
async def ssh_appserver(
    executor_settings: Settings,
    ssh_settings: dict[str, Any],
    codex_home: Path,
    codex_bin: str,
) -> AsyncIterator[AppServerEngine]:
    """An app-server engine whose codex runs over SSH (the test's server, this machine)."""
    settings = executor_settings(
        **ssh_settings, codex_bin=codex_bin, codex_home=codex_home, exec_engine="app-server"
    )
    async with SshTransport.from_settings(settings) as transport:
        engine = AppServerEngine(settings, transport, codex_bin=codex_bin)
        try:
            yield engine
        finally:
            await engine.aclose()


@pytest.mark.codex
async def test_the_app_server_runs_over_ssh(
    ssh_appserver: AppServerEngine, model_server: StubModelServer, ssh_server: FakeSshServer
) -> None:
    """Over SSH the app-server answers runs like a local one, on one channel."""
    model_server.reply_text("hello over ssh")
    model_server.reply_text("and again")

    first = await ssh_appserver.run(RunRequest("r1", "hi"), Recorder())
    second = await ssh_appserver.run(RunRequest("r2", "more", first.thread_id), Recorder())

    assert first.status == "succeeded" and first.answer == "hello over ssh"
    assert first.usage == STUB_USAGE
    assert second.status == "succeeded" and second.answer == "and again"
    assert ssh_appserver.processes_started == 1
    assert any(" serve " in command for command in ssh_server.commands)


@pytest.mark.codex
async def test_a_dropped_ssh_connection_fails_the_run_and_the_next_one_reconnects(
    ssh_appserver: AppServerEngine, model_server: StubModelServer, ssh_server: FakeSshServer
) -> None:
    """A connection lost mid-run fails the run with the reason; the next run starts anew."""
    model_server.reply_hang()
    model_server.reply_text("reconnected")
    task = asyncio.create_task(ssh_appserver.run(RunRequest("r1", "doomed"), Recorder()))
    await model_server.wait_for_requests(1)

    assert await ssh_server.drop_connections() >= 1
    outcome = await task

    assert outcome.status == "failed" and outcome.error is not None
    assert "app-server stopped during the run" in outcome.error["message"]
    after = await ssh_appserver.run(RunRequest("r2", "hello?"), Recorder())
    assert after.status == "succeeded" and after.answer == "reconnected"
    assert ssh_appserver.processes_started == 2
