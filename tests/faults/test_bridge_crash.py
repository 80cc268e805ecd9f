"""A bridge killed (SIGKILL) while its run works (issue #8, point 3).

The run finishes while the bridge is down; its reply waits in the hub's outbox and is
delivered, exactly once, when the bridge process is back.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from testkit.fakes.slack import SlackCall
from tests.faults.model import Gate, KeyedModel, new_key
from tests.faults.stack import Stack

pytestmark = pytest.mark.codex

CHAT = 4301


async def test_a_reply_waits_for_a_killed_bridge_and_arrives_once(
    stack: Stack, keyed_model: KeyedModel, faults_home: Path, codex_bin: str
) -> None:
    """SIGKILL of the Telegram bridge mid-run: restarted, it posts the answer once."""
    work = stack.workdir("a")
    await stack.start_hub()
    _, bridge = await asyncio.gather(
        stack.start_executor(workdir=work, codex_bin=codex_bin, codex_home=faults_home),
        stack.start_telegram(),
    )
    key = new_key()
    gate = Gate(work, key)
    answer = f"the answer of {key}"
    keyed_model.command(key, gate.command, then=answer)
    try:
        run_id = await stack.ask(bridge, CHAT, f"please do {key}")
        await gate.wait_ready()
        await bridge.kill()

        mark = stack.hub.mark()
        gate.open()
        await stack.hub.wait_for(rf"run {run_id} ended succeeded", since=mark)
    finally:
        gate.close()
    assert await stack.api.outbox_pending() == 1
    assert stack.replies(CHAT, answer) == []

    await stack.start_telegram()
    await stack.wait_reply(CHAT, answer)
    await stack.api.wait_outbox_empty()
    assert len(stack.replies(CHAT, answer)) == 1
    assert bridge.starts == 2


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_replies_of_runs_ended_while_the_bridge_was_down_arrive_once(
    stack: Stack, keyed_model: KeyedModel, faults_home: Path, codex_bin: str
) -> None:
    """A short answer, a two-part answer and a failure, all ended while the bridge was dead."""
    work = stack.workdir("a")
    await stack.start_hub()
    _, bridge = await asyncio.gather(
        stack.start_executor(workdir=work, codex_bin=codex_bin, codex_home=faults_home),
        stack.start_telegram(),
    )
    short, long, failing = new_key(), new_key(), new_key()
    chats = {short: CHAT, long: CHAT + 1, failing: CHAT + 2}
    gates = {key: Gate(work, key) for key in chats}
    # Over Telegram's 4096 characters: two messages, every line in exactly one of them.
    lines = [f"{long} line {n:03d} " + "x" * 60 for n in range(90)]
    keyed_model.command(short, gates[short].command, then=f"the answer of {short}")
    keyed_model.command(long, gates[long].command, then="\n".join(lines))
    keyed_model.command(failing, gates[failing].command)
    keyed_model.fail(failing, 500)
    try:
        runs = {
            key: await stack.ask(bridge, chat, f"please do {key}") for key, chat in chats.items()
        }
        await asyncio.gather(*(gate.wait_ready() for gate in gates.values()))
        await bridge.kill()

        mark = stack.hub.mark()
        for gate in gates.values():
            gate.open()
        for key, state in ((short, "succeeded"), (long, "succeeded"), (failing, "failed")):
            await stack.hub.wait_for(rf"run {runs[key]} ended {state}", since=mark)
    finally:
        for gate in gates.values():
            gate.close()
    assert await stack.api.outbox_pending() == 3

    await stack.start_telegram()
    await stack.wait_reply(chats[short], f"the answer of {short}")
    await stack.wait_reply(chats[long], "(2/2)")
    await stack.wait_reply(chats[failing], f"(run {runs[failing]})")
    await stack.api.wait_outbox_empty()

    assert len(stack.replies(chats[short], f"the answer of {short}")) == 1
    for line in lines:
        assert len(stack.replies(chats[long], line)) == 1, line
    assert len(stack.replies(chats[long], f"{long} line")) == 2
    (failure,) = stack.replies(chats[failing], f"(run {runs[failing]})")
    assert failure.text is not None and "failed" in failure.text


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_killed_slack_bridge_posts_the_reply_once_when_back(
    stack: Stack, keyed_model: KeyedModel, faults_home: Path, codex_bin: str
) -> None:
    """SIGKILL of the Slack bridge mid-run: restarted, it answers in the thread once."""
    work = stack.workdir("a")
    await stack.start_hub()
    _, bridge = await asyncio.gather(
        stack.start_executor(workdir=work, codex_bin=codex_bin, codex_home=faults_home),
        stack.start_slack(),
    )
    key = new_key()
    gate = Gate(work, key)
    answer = f"the answer of {key}"
    keyed_model.command(key, gate.command, then=answer)
    try:
        run_id = await stack.mention(bridge, f"please do {key}")
        await gate.wait_ready()
        await bridge.kill()
        mark = stack.hub.mark()
        gate.open()
        await stack.hub.wait_for(rf"run {run_id} ended succeeded", since=mark)
    finally:
        gate.close()
    assert await stack.api.outbox_pending() == 1

    await stack.start_slack()
    await stack.wait_slack_post(answer)
    await stack.api.wait_outbox_empty()
    assert len(stack.slack_posts(answer)) == 1


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_slack_bridge_killed_after_posting_does_not_post_again(
    stack: Stack, keyed_model: KeyedModel, faults_home: Path, codex_bin: str
) -> None:
    """Killed after Slack took the reply but before the hub heard of it: no second post."""
    assert stack.slack is not None
    work = stack.workdir("a")
    await stack.start_hub()
    _, bridge = await asyncio.gather(
        stack.start_executor(workdir=work, codex_bin=codex_bin, codex_home=faults_home),
        stack.start_slack(),
    )
    key = new_key()
    answer = f"the answer of {key}"
    keyed_model.answer(key, answer)

    def freeze_on_the_reply(call: SlackCall) -> None:
        # Called before the fake answers: the bridge never learns that Slack took it.
        if call.method == "chat.postMessage" and call.ok and answer in str(call.args.get("text")):
            os.kill(bridge.pid, signal.SIGSTOP)

    stack.slack.watchers.append(freeze_on_the_reply)
    run_id = await stack.mention(bridge, f"please do {key}")
    await stack.wait_slack_post(answer)
    await bridge.kill()
    stack.slack.watchers.remove(freeze_on_the_reply)
    assert await stack.api.outbox_pending() == 1

    mark = bridge.mark()
    await stack.start_slack()
    await stack.api.wait_outbox_empty()
    assert len(stack.slack_posts(answer)) == 1
    assert bridge.matches(
        rf"parts \[0\] were posted before; skipping them run_id={run_id}", since=mark
    )
