"""An executor killed (SIGKILL) in the middle of a run (issue #8, point 2).

The run ends ``failed`` with "executor lost" within ``HUB_EXECUTOR_GRACE_S``, the user
who asked is told, naming the run, and no process of the run outlives its executor:
the run helper's watchdog (executor/run_helper.py) reaps codex and its commands when
the pipe from the executor closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import pytest

from testkit.procs import LEFTOVER_S, Proc, processes_under, wait_until_gone
from tests.faults.model import Gate, KeyedModel, new_key
from tests.faults.stack import BOTH_ENGINES, Stack

CHAT = 4201
GRACE_S = 1.5

# A process tree like codex's: a child in its group, a grandchild in a session of its own.
_SPAWNER = """
import subprocess, sys, time
subprocess.Popen(["sleep", "41"])
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(42)"], start_new_session=True)
print("started", flush=True)
time.sleep(60)
"""
# An executor reduced to its transport: runs the spawner and relays its lines.
_RUNNER = """
import asyncio, sys
from executor.transport_local import LocalTransport

async def main() -> None:
    async with LocalTransport(use_helper=sys.argv[1] == "helper") as local:
        await local.run(
            [sys.executable, "-c", sys.argv[2]],
            env_overrides={},
            cwd=".",
            on_stdout_line=lambda line: print(line, flush=True),
            timeout_s=120,
        )

asyncio.run(main())
"""


async def kill_transport_mid_run(tmp_path: Path, mode: str) -> dict[int, str]:
    """SIGKILL a process whose local transport runs a tree; what is left after LEFTOVER_S."""
    runner = Proc(
        "runner", [sys.executable, "-c", _RUNNER, mode, _SPAWNER], env=os.environ, cwd=tmp_path
    )
    await runner.start()
    try:
        await runner.wait_for(r"^started$", timeout=20)
        assert len(processes_under([tmp_path], exclude=[runner.pid])) >= 3
    finally:
        await runner.kill()
    # Without the helper nothing is left that could reap them: no point in waiting.
    return await wait_until_gone([tmp_path], timeout=LEFTOVER_S if mode == "helper" else 0)


def assert_engine_seen(stack: Stack, processes: dict[int, str]) -> None:
    """The run's codex is among `processes`, so the leftover check covers it.

    With the app-server engine that is the executor's long-lived ``codex app-server``.
    """
    wanted = "app-server" if stack.engine == "app-server" else " exec "
    assert any(wanted in found for found in processes.values()), processes


@pytest.fixture
async def scratch(tmp_path: Path) -> AsyncIterator[Path]:
    """tmp_path; whatever still runs there when the test ends is killed."""
    yield tmp_path
    for pid in processes_under([tmp_path]):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def test_a_killed_executor_leaves_no_process_of_its_run(scratch: Path) -> None:
    """SIGKILL of the transport's process: the helper reaps its group and tagged sessions."""
    assert await kill_transport_mid_run(scratch, "helper") == {}


async def test_without_the_helper_a_killed_executor_leaves_orphans(scratch: Path) -> None:
    """The control: started directly, a run outlives its killed executor (what the helper fixes)."""
    assert len(await kill_transport_mid_run(scratch, "direct")) >= 2


@pytest.mark.codex
@BOTH_ENGINES
async def test_a_killed_executor_fails_its_run_and_the_user_is_told(
    stack: Stack, keyed_model: KeyedModel, faults_home: Path, codex_bin: str
) -> None:
    """SIGKILL of the executor while codex runs a command: failed, said, nothing left."""
    work = stack.workdir("a")
    await stack.start_hub(HUB_EXECUTOR_GRACE_S=str(GRACE_S))
    executor, bridge = await asyncio.gather(
        stack.start_executor(workdir=work, codex_bin=codex_bin, codex_home=faults_home),
        stack.start_telegram(),
    )
    key = new_key()
    # The command also leaves a process in a session of its own, as a daemon would.
    gate = Gate(work, key, before="setsid sleep 300 </dev/null >/dev/null 2>&1 & ")
    keyed_model.command(key, gate.command, then="never sent")
    try:
        run_id = await stack.ask(bridge, CHAT, f"please do {key}")
        await gate.wait_ready()
        # codex, the command, the daemon (the executor mentions the workdir too: not it)
        before = processes_under([work], exclude=stack.procs.live_pids())
        assert len(before) >= 3
        assert_engine_seen(stack, before)

        loop = asyncio.get_running_loop()
        killed_at = loop.time()
        await executor.kill()
        reply = await stack.wait_reply(CHAT, f"(run {run_id})", timeout=GRACE_S + 10)
        told_after = loop.time() - killed_at
    finally:
        gate.close()

    assert await wait_until_gone([work], timeout=LEFTOVER_S) == {}
    assert told_after < GRACE_S + 5, f"the user was told {told_after:.1f} s after the kill"
    assert reply.text is not None and "failed" in reply.text and "executor lost" in reply.text
    run = (await stack.api.run(run_id))["run"]
    assert run["state"] == "failed"
    assert run["error"]["code"] == "executor_lost"
    assert "executor lost" in run["error"]["message"]
    await stack.api.wait_outbox_empty()
    assert len(stack.replies(CHAT, f"(run {run_id})")) == 1


@pytest.mark.codex
@pytest.mark.slow
@BOTH_ENGINES
@pytest.mark.timeout(180)
async def test_a_killed_executor_loses_only_its_own_run(
    stack: Stack, keyed_model: KeyedModel, faults_home: Path, codex_bin: str
) -> None:
    """Two executors, one killed: its run fails, the other's finishes, the chat carries on."""
    work_a, work_b = stack.workdir("a"), stack.workdir("b")
    await stack.start_hub(HUB_EXECUTOR_GRACE_S=str(GRACE_S))

    def one_slot(name: str, work: Path) -> Awaitable[Proc]:
        return stack.start_executor(
            name, workdir=work, codex_bin=codex_bin, codex_home=faults_home, EXEC_CONCURRENCY="1"
        )

    executor_a, bridge = await asyncio.gather(one_slot("exec-a", work_a), stack.start_telegram())
    lost, kept, after = new_key(), new_key(), new_key()
    gate_lost = Gate(work_a, lost, before="setsid sleep 300 </dev/null >/dev/null 2>&1 & ")
    gate_kept = Gate(work_b, kept)
    keyed_model.command(lost, gate_lost.command, then="never sent")
    keyed_model.command(kept, gate_kept.command, then=f"the answer of {kept}")
    keyed_model.answer(after, f"the answer of {after}")
    chat_a, chat_b = CHAT, CHAT + 1
    try:
        lost_run = await stack.ask(bridge, chat_a, f"please do {lost}")
        await gate_lost.wait_ready()
        assert_engine_seen(stack, processes_under([work_a], exclude=stack.procs.live_pids()))
        # exec-a is full now, so the next run goes to exec-b.
        await one_slot("exec-b", work_b)
        kept_run = await stack.ask(bridge, chat_b, f"please do {kept}")
        await gate_kept.wait_ready()

        loop = asyncio.get_running_loop()
        killed_at = loop.time()
        await executor_a.kill()
        reply = await stack.wait_reply(chat_a, f"(run {lost_run})", timeout=GRACE_S + 10)
        told_after = loop.time() - killed_at
        assert await wait_until_gone([work_a], timeout=LEFTOVER_S) == {}
        still = processes_under([work_b], exclude=stack.procs.live_pids())
        assert len(still) >= 2, "exec-b's run must not be touched"

        gate_kept.open()
        await stack.wait_reply(chat_b, f"the answer of {kept}")
    finally:
        gate_lost.close()
        gate_kept.close()
    # The chat whose run was lost carries on, on the executor that is left.
    after_run = await stack.ask(bridge, chat_a, f"try again {after}")
    await stack.wait_reply(chat_a, f"the answer of {after}")
    # A restarted exec-a is a new node: it takes new work, never the lost run.
    mark = stack.hub.mark()
    await one_slot("exec-a", work_a)
    await stack.api.wait_outbox_empty()

    assert told_after < GRACE_S + 5, f"the user was told {told_after:.1f} s after the kill"
    assert reply.text is not None and "executor lost" in reply.text
    runs = {run: (await stack.api.run(run))["run"] for run in (lost_run, kept_run, after_run)}
    assert runs[lost_run]["state"] == "failed"
    assert runs[lost_run]["error"]["code"] == "executor_lost"
    assert runs[kept_run]["state"] == runs[after_run]["state"] == "succeeded"
    assert runs[kept_run]["executor"].startswith("exec-b")
    assert runs[after_run]["executor"].startswith("exec-b")
    assert not stack.hub.matches(rf"run {lost_run} ended", since=mark)
    for chat, needle in ((chat_a, f"(run {lost_run})"), (chat_b, kept), (chat_a, after)):
        assert len(stack.replies(chat, needle)) == 1, needle
