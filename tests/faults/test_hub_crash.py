"""The hub killed (SIGKILL) in the middle of a run, then restarted (issue #8, point 1).

The executor finishes the run, reconnects and delivers the result; the run's record is
complete; the Telegram user who asked gets the answer exactly once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from testkit.fakes.telegram import Call
from testkit.procs import Proc
from tests.faults.model import Gate, KeyedModel, new_key
from tests.faults.stack import BOTH_ENGINES, Stack

pytestmark = [pytest.mark.codex, BOTH_ENGINES]

CHAT = 4101


async def start(stack: Stack, work: Path, codex_bin: str, home: Path) -> tuple[Proc, Proc]:
    """Hub, one executor with the real codex, one Telegram bridge; all registered."""
    await stack.start_hub()
    return await asyncio.gather(
        stack.start_executor(workdir=work, codex_bin=codex_bin, codex_home=home),
        stack.start_telegram(),
    )


def holding_any(texts: list[str]) -> Callable[[Call], bool]:
    """A predicate for accepted messages holding one of `texts`."""
    return lambda call: call.ok and any(text in (call.text or "") for text in texts)


async def assert_complete(stack: Stack, run_id: str, answer: str) -> dict[str, Any]:
    """The stored run ended well, with everything a run records."""
    data = await stack.api.run(run_id)
    run = data["run"]
    assert run["state"] == "succeeded", run
    assert run["answer"] == answer
    assert run["executor"] and run["thread_id"]
    assert run["usage"] and run["usage"]["output_tokens"] > 0
    assert run["started_at"] and run["finished_at"] >= run["started_at"]
    assert run["error"] is None
    kinds = [event["kind"] for event in data["events"]]
    assert "codex" in kinds and kinds[-1] == "state"
    assert [event["seq"] for event in data["events"]] == list(range(1, len(kinds) + 1))
    return data


async def test_a_hub_killed_mid_run_still_answers_once(
    stack: Stack, keyed_model: KeyedModel, faults_home: Path, codex_bin: str
) -> None:
    """SIGKILL of the hub while codex works: once it is back the user gets the answer once."""
    work = stack.workdir("a")
    executor, bridge = await start(stack, work, codex_bin, faults_home)
    key = new_key()
    gate = Gate(work, key)
    answer = f"the answer of {key}"
    keyed_model.command(key, gate.command, then=answer)
    try:
        run_id = await stack.ask(bridge, CHAT, f"please do {key}")
        await gate.wait_ready()

        await stack.restart_hub()
        gate.open()
        await stack.wait_reply(CHAT, answer)
        await stack.api.wait_outbox_empty()
    finally:
        gate.close()

    assert len(stack.replies(CHAT, answer)) == 1
    await assert_complete(stack, run_id, answer)
    follow_up = (await keyed_model.wait_for_requests(key, 2))[1]
    assert gate.released in follow_up.text  # codex was in the middle of the run
    assert stack.hub.starts == 2 and executor.running and bridge.running


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_two_hub_crashes_lose_no_run_and_no_reply(
    stack: Stack, keyed_model: KeyedModel, faults_home: Path, codex_bin: str
) -> None:
    """Killed twice: a result made while it was down, a queued run, a resumed thread survive."""
    work = stack.workdir("a")
    # The second message must wait for its turn: the app-server engine would otherwise
    # steer it into the running one (STEER_MODE=steer, see tests/test_e2e_steer.py).
    stack.hub_env["STEER_MODE"] = "queue"
    executor, bridge = await start(stack, work, codex_bin, faults_home)
    first, second, other = new_key(), new_key(), new_key()
    gates = {first: Gate(work, first), other: Gate(work, other)}
    answers = {key: f"the answer of {key}" for key in (first, second, other)}
    keyed_model.command(first, gates[first].command, then=answers[first])
    keyed_model.answer(second, answers[second])
    keyed_model.command(other, gates[other].command, then=answers[other])
    chat_a, chat_b = CHAT, CHAT + 1
    try:
        runs = {
            first: await stack.ask(bridge, chat_a, f"please do {first}"),
            other: await stack.ask(bridge, chat_b, f"please do {other}"),
        }
        await asyncio.gather(*(gate.wait_ready() for gate in gates.values()))
        # Queued behind the first run: one run at a time in a conversation.
        runs[second] = await stack.ask(bridge, chat_a, f"and then {second}")

        # Crash 1: the first run ends while the hub is down; the executor keeps the result.
        await stack.hub.kill()
        mark = executor.mark()
        gates[first].open()
        kept = rf"run {runs[first]} ended succeeded; kept until the hub is back"
        await executor.wait_for(kept, since=mark)
        await stack.start_hub()
        await stack.wait_reply(chat_a, answers[first])
        await stack.wait_reply(chat_a, answers[second])

        # Crash 2: the other run is still at its gate.
        await stack.restart_hub()
        gates[other].open()
        await stack.wait_reply(chat_b, answers[other])
        await stack.api.wait_outbox_empty()
    finally:
        for gate in gates.values():
            gate.close()

    assert len(stack.replies(chat_a, answers[first])) == 1
    assert len(stack.replies(chat_a, answers[second])) == 1
    assert len(stack.replies(chat_b, answers[other])) == 1
    records = {key: await assert_complete(stack, run, answers[key]) for key, run in runs.items()}
    # The queued run continued the first run's codex conversation.
    assert records[second]["run"]["thread_id"] == records[first]["run"]["thread_id"]
    assert answers[first] in keyed_model.requests_for(second)[0].text
    for key, gate in gates.items():
        assert gate.released in keyed_model.requests_for(key)[1].text
    assert stack.hub.starts == 3 and executor.starts == 1 and bridge.starts == 1


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_a_hub_killed_after_every_reply_loses_nothing(
    stack: Stack, keyed_model: KeyedModel, faults_home: Path, codex_bin: str
) -> None:
    """Eight runs in four chats, the hub killed each time a reply lands: each answers once."""
    telegram = stack.telegram
    assert telegram is not None
    work = stack.workdir("a")
    _, bridge = await start(stack, work, codex_bin, faults_home)
    keys = [new_key() for _ in range(8)]
    chats = {key: CHAT + 10 + n % 4 for n, key in enumerate(keys)}  # two runs per chat
    answers = {key: f"the answer of {key}" for key in keys}
    for n, key in enumerate(keys):
        if n % 2:
            keyed_model.answer(key, answers[key])
        else:  # a turn with a command: the run lasts a little longer
            keyed_model.command(key, "sleep 1", then=answers[key])
    runs = {key: await stack.ask(bridge, chats[key], f"please do {key}") for key in keys}

    answered: set[str] = set()
    while len(answered) < len(keys):
        waiting = [answers[k] for k in keys if k not in answered]
        call = await telegram.wait_for_call("sendMessage", holding_any(waiting), timeout=60)
        answered |= {k for k in keys if answers[k] in (call.text or "")}
        await stack.restart_hub()
    await stack.api.wait_outbox_empty()

    for key in keys:
        assert len(stack.replies(chats[key], answers[key])) == 1, key
        await assert_complete(stack, runs[key], answers[key])
    assert stack.hub.starts == len(keys) + 1
