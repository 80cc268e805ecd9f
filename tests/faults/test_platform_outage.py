"""Slack or Telegram failing for a while (issue #8, point 4).

Runs finish while the platform refuses connections, answers 5xx or throttles (429);
their replies are retried (the bridge waits out a 429, the hub's outbox re-sends the
rest every ``HUB_REDELIVER_S``) and every one arrives exactly once when the platform
is back.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.faults.model import Gate, KeyedModel, new_key
from tests.faults.stack import Stack

CHATS = (4401, 4402, 4403)


def failing_for(marker: str) -> Any:
    """A `fail_next` match for messages holding `marker` (replies, not other calls)."""
    return lambda args: marker in str(args.get("text", ""))


async def test_telegram_down_then_failing_every_reply_arrives_once(stack: Stack) -> None:
    """Refused connections, then 502 and 429: three replies, each posted exactly once."""
    marker = new_key("outage")
    work = stack.workdir("a")
    await stack.start_hub()
    bridge = await stack.start_telegram()
    # No executor yet: the runs wait in the hub's queue until Telegram is down.
    prompts = {chat: f"{marker} echo for chat {chat}" for chat in CHATS}
    runs = [await stack.ask(bridge, chat, prompt) for chat, prompt in prompts.items()]

    assert stack.telegram is not None
    await stack.telegram.stop_listening()
    hub_mark, bridge_mark = stack.hub.mark(), bridge.mark()
    await stack.start_executor(workdir=work)  # the dry-run engine answers with the prompt
    await asyncio.gather(
        *(stack.hub.wait_for(rf"run {run} ended succeeded", since=hub_mark) for run in runs)
    )
    await bridge.wait_for(r"posting the reply of run \S+ failed", since=bridge_mark, count=3)
    assert await stack.api.outbox_pending() == len(runs)

    match = failing_for(marker)
    stack.telegram.fail_next("sendMessage", len(runs), status=502, match=match)
    stack.telegram.fail_next("sendMessage", len(runs), status=429, retry_after=1, match=match)
    await stack.telegram.start_listening()
    for chat, prompt in prompts.items():
        await stack.wait_reply(chat, prompt, timeout=30)
    await stack.api.wait_outbox_empty()

    for chat, prompt in prompts.items():
        assert len(stack.replies(chat, prompt)) == 1, chat
    statuses = [call.status for call in stack.telegram.calls("sendMessage")]
    assert statuses.count(502) == statuses.count(429) == len(runs)


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_slack_down_then_failing_every_reply_arrives_once(stack: Stack) -> None:
    """Slack refusing connections, then 500 and 429: three replies, each posted exactly once."""
    assert stack.slack is not None
    marker = new_key("outage")
    await stack.start_hub()
    bridge = await stack.start_slack()
    # No executor yet: the runs wait in the hub's queue until Slack is down.
    prompts = [f"{marker} echo number {n}" for n in range(3)]
    runs = [await stack.mention(bridge, prompt) for prompt in prompts]

    await stack.slack.go_offline()
    hub_mark, bridge_mark = stack.hub.mark(), bridge.mark()
    await stack.start_executor(workdir=stack.workdir("a"))
    await asyncio.gather(
        *(stack.hub.wait_for(rf"run {run} ended succeeded", since=hub_mark) for run in runs)
    )
    await bridge.wait_for(r"posting the reply of run \S+ failed", since=bridge_mark, count=3)
    assert await stack.api.outbox_pending() == len(runs)

    match = failing_for(marker)
    stack.slack.fail_next("chat.postMessage", len(runs), status=500, match=match)
    stack.slack.fail_next("chat.postMessage", len(runs), status=429, retry_after=1, match=match)
    await stack.slack.go_online()
    for prompt in prompts:
        await stack.wait_slack_post(prompt)
    await stack.api.wait_outbox_empty()

    for prompt in prompts:
        assert len(stack.slack_posts(prompt)) == 1, prompt
    statuses = [call.status for call in stack.slack.calls("chat.postMessage")]
    assert statuses.count(500) == statuses.count(429) == len(runs)


@pytest.mark.codex
@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_runs_ending_through_a_long_telegram_outage_lose_no_reply(
    stack: Stack, keyed_model: KeyedModel, faults_home: Path, codex_bin: str
) -> None:
    """Four runs end one by one while Telegram refuses, then 503s, then throttles: all once."""
    assert stack.telegram is not None
    work = stack.workdir("a")
    await stack.start_hub()
    _, bridge = await asyncio.gather(
        stack.start_executor(workdir=work, codex_bin=codex_bin, codex_home=faults_home),
        stack.start_telegram(),
    )
    keys = [new_key() for _ in range(4)]
    chats = dict(zip(keys, range(4411, 4415), strict=True))
    answers = {key: f"the answer of {key}" for key in keys}
    gates = {key: Gate(work, key) for key in keys}
    for key in keys:
        keyed_model.command(key, gates[key].command, then=answers[key])
    try:
        runs = {key: await stack.ask(bridge, chats[key], f"please do {key}") for key in keys}
        await asyncio.gather(*(gate.wait_ready() for gate in gates.values()))

        await stack.telegram.stop_listening()
        for key in keys:  # one after another, each reply failing before the next run ends
            hub_mark, bridge_mark = stack.hub.mark(), bridge.mark()
            gates[key].open()
            await stack.hub.wait_for(rf"run {runs[key]} ended succeeded", since=hub_mark)
            failed = rf"posting the reply of run {runs[key]} failed"
            await bridge.wait_for(failed, since=bridge_mark)
    finally:
        for gate in gates.values():
            gate.close()
    # Every reply is re-sent, and fails, a few more times.
    for key in keys:
        await bridge.wait_for(rf"posting the reply of run {runs[key]} failed", count=3)
    assert await stack.api.outbox_pending() == len(keys)

    match = failing_for("the answer of")
    stack.telegram.fail_next("sendMessage", 2 * len(keys), status=503, match=match)
    stack.telegram.fail_next("sendMessage", len(keys), status=429, retry_after=2, match=match)
    await stack.telegram.start_listening()
    for key in keys:
        await stack.wait_reply(chats[key], answers[key], timeout=60)
    await stack.api.wait_outbox_empty()

    for key in keys:
        assert len(stack.replies(chats[key], answers[key])) == 1, key
        assert (await stack.api.run(runs[key]))["run"]["state"] == "succeeded"
    statuses = [call.status for call in stack.telegram.calls("sendMessage")]
    assert statuses.count(503) == 2 * len(keys) and statuses.count(429) == len(keys)
