"""A burst of HTTP runs and chat messages completes with no error and no lost reply, and
the hub's memory comes back near where it was (issue #8, point 8).

The hub, a dry-run executor and both chat bridges run as real processes (``codex-hub
serve``, ``executor``, ``bridge telegram``, ``bridge slack``); the fake Bot API and the
fake Slack run in the test. The hub's memory is its VmRSS from ``/proc``.

"Near its starting point" is defined as: after a warm-up burst of the same size (which
lets Python's allocator and aiohttp's buffers reach their working size), the hub's RSS
once a second burst has completed and settled is within ``RSS_SLACK_MIB`` of its RSS
after the warm-up. Memory that grows with every burst fails that; memory CPython keeps
in its arenas after the first burst does not. The figures are printed (``-rP``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from testkit.fakes.slack import FakeSlack, SlackMessage
from testkit.fakes.telegram import Call, FakeTelegram
from testkit.procs import Proc, clean_env, codex_hub_argv, start_hub
from tests.abuse.conftest import API_KEY, AUTH, CHAT
from tests.abuse.feed import wait_for_nodes
from tests.conftest import NODE_TOKEN

#: How far above its post-warm-up RSS the hub may be once a burst has settled.
RSS_SLACK_MIB = 30
FIRST_USER = 910_000


@dataclass(frozen=True)
class Plan:
    """How big a burst is: concurrent HTTP runs and chat messages per platform."""

    runs: int
    messages: int
    timeout_s: float


QUICK = Plan(runs=50, messages=20, timeout_s=60)
FULL = Plan(runs=500, messages=200, timeout_s=300)


@dataclass
class System:
    """The processes and fakes of one load test."""

    hub: Proc
    port: int
    procs: list[Proc]
    telegram: FakeTelegram
    slack: FakeSlack
    http: aiohttp.ClientSession


async def start_system(tmp_path: Path, stack: AsyncExitStack) -> System:
    """Hub, dry-run executor and both bridges as processes, all connected."""
    telegram = await stack.enter_async_context(FakeTelegram())
    slack = await stack.enter_async_context(FakeSlack())
    quiet = {"LOG_LEVEL": "INFO"}
    hub, port = await start_hub(
        tmp_path,
        clean_env(
            HUB_TOKEN=NODE_TOKEN,
            HUB_API_KEYS=API_KEY,
            HUB_DB=str(tmp_path / "hub.db"),
            # Every client of the burst comes from 127.0.0.1: the per-address cap would
            # hold the burst to it (the total cap still holds).
            HUB_MAX_CONNECTIONS_PER_CLIENT="0",
            **quiet,
        ),
    )
    stack.push_async_callback(hub.stop)
    node = {"HUB_URL": f"ws://127.0.0.1:{port}/ws", "HUB_TOKEN": NODE_TOKEN, **quiet}
    procs = [hub]
    for name, args, env in (
        (
            "executor",
            ["executor"],
            {"EXEC_DRY_RUN": "true", "EXEC_CONCURRENCY": "256", "EXEC_WORKDIR": str(tmp_path)},
        ),
        (
            "telegram",
            ["bridge", "telegram"],
            {
                "TELEGRAM_BOT_TOKEN": telegram.token,
                "TELEGRAM_API_BASE_URL": telegram.base_url,
                "TELEGRAM_ALLOWED_USERS": "*",
                "TELEGRAM_STATUS_DELAY_S": "600",
            },
        ),
        (
            "slack",
            ["bridge", "slack"],
            {
                "SLACK_BOT_TOKEN": slack.bot_token,
                "SLACK_APP_TOKEN": slack.app_token,
                "SLACK_API_BASE_URL": slack.api_url,
                "SLACK_ALLOWED_USERS": "*",
                "SLACK_ALLOWED_CHANNELS": "*",
                "SLACK_STATUS_EDIT_INTERVAL_S": "600",
            },
        ),
    ):
        proc = Proc(
            name,
            codex_hub_argv(*args),
            env=clean_env(**node, **env),
            cwd=tmp_path,
            group=True,
        )
        await proc.start()
        stack.push_async_callback(proc.stop)
        procs.append(proc)
    await wait_for_nodes(port, API_KEY, 1, {"telegram", "slack"})
    await telegram.wait_until_polling(timeout=20)
    connector = aiohttp.TCPConnector(limit=0)
    http = await stack.enter_async_context(
        aiohttp.ClientSession(
            f"http://127.0.0.1:{port}", connector=connector, timeout=aiohttp.ClientTimeout(300)
        )
    )
    return System(hub, port, procs, telegram, slack, http)


def has_text(text: str, message: SlackMessage) -> bool:
    return bool(message.text == text)


def replied_to(call: Call) -> int | None:
    params = call.args.get("reply_parameters")
    return params.get("message_id") if isinstance(params, dict) else None


async def burst(system: System, plan: Plan, tag: str) -> dict[str, float]:
    """``plan.runs`` HTTP runs and ``plan.messages`` messages per platform, all at once;
    every one answered exactly once, with its own text. Returns timings."""
    started = time.monotonic()
    telegram_mark = system.telegram.mark()
    pushed: dict[tuple[Any, Any], int] = {
        (
            FIRST_USER + i,
            system.telegram.push_message(FIRST_USER + i, f"{tag} telegram {i}").message_id,
        ): i
        for i in range(plan.messages)
    }
    dms = [
        system.slack.dm(f"{tag} slack {i}", user=f"U{tag}{i}", channel=f"D{tag}{i}")
        for i in range(plan.messages)
    ]

    async def run(i: int) -> None:
        prompt = f"{tag} http {i}"
        body = {"model": "codex", "messages": [{"role": "user", "content": prompt}]}
        async with system.http.post(CHAT, json=body, headers=AUTH) as resp:
            text = await resp.text()
            assert resp.status == 200, text
            assert (await resp.json())["choices"][0]["message"]["content"] == prompt

    async def slack_events() -> None:
        # All pushed before any is acknowledged: a burst, as Slack would send it.
        envelopes = [await system.slack.send_event(dm, wait_ack=False) for dm in dms]
        for envelope in envelopes:
            await system.slack.wait_ack(envelope, timeout=plan.timeout_s)

    async with asyncio.timeout(plan.timeout_s):
        await asyncio.gather(slack_events(), *(run(i) for i in range(plan.runs)))
        http_done = time.monotonic()

        def telegram_reply(c: Call) -> bool:
            i = pushed.get((c.chat_id, replied_to(c)))
            return i is not None and c.ok and c.text == f"{tag} telegram {i}"

        replies = await system.telegram.wait_for_calls(
            "sendMessage",
            plan.messages,
            telegram_reply,
            timeout=plan.timeout_s,
            since=telegram_mark,
        )
        assert len({(c.chat_id, replied_to(c)) for c in replies}) == plan.messages
        for i, dm in enumerate(dms):
            text = f"{tag} slack {i}"
            await system.slack.wait_for_post(
                dm["channel"], dm["ts"], partial(has_text, text), timeout=plan.timeout_s
            )
    finished = time.monotonic()
    await settle(system)
    # Exactly one answer each: nothing lost, nothing posted twice.
    answers = system.telegram.calls()[telegram_mark:]
    extra = [c for c in answers if c.method == "sendMessage" and telegram_reply(c)]
    assert len(extra) == plan.messages
    for i, dm in enumerate(dms):
        posts = system.slack.posted(dm["channel"], dm["ts"])
        posts = [m for m in posts if m.text == f"{tag} slack {i}"]
        assert len(posts) == 1, (dm["channel"], posts)
    return {"http_s": http_done - started, "all_s": finished - started}


async def settle(system: System) -> None:
    """No run is left unfinished: every answer above came after its run ended."""
    params = {"state": "queued,optimizing,running", "limit": "1"}
    async with system.http.get("/api/runs", params=params, headers=AUTH) as resp:
        assert (await resp.json())["runs"] == []


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[System]:
    """The processes and fakes, stopped after the test."""
    async with AsyncExitStack() as stack:
        yield await start_system(tmp_path, stack)


def mib(kib: int) -> float:
    return kib / 1024


@pytest.mark.parametrize(
    "plan",
    [
        pytest.param(QUICK, id="50-runs-20-messages"),
        pytest.param(
            FULL, id="500-runs-200-messages", marks=[pytest.mark.slow, pytest.mark.timeout(1200)]
        ),
    ],
)
@pytest.mark.timeout(180)
async def test_a_burst_completes_without_loss_and_the_hubs_memory_returns(
    system: System, plan: Plan
) -> None:
    """Every run and message is answered once; the hub's RSS settles near its warm size."""
    rss = {"started": system.hub.rss_kib()}
    timings = {"warm-up": await burst(system, plan, "w")}
    rss["after warm-up"] = system.hub.rss_kib()
    timings["burst"] = await burst(system, plan, "b")
    rss["after burst"] = system.hub.rss_kib()
    timings["again"] = await burst(system, plan, "a")
    rss["after second burst"] = system.hub.rss_kib()
    print(f"\nhub RSS (MiB), {plan.runs} runs + {plan.messages} messages per platform a burst:")
    for name, kib in rss.items():
        print(f"  {name:>20}: {mib(kib):7.1f}")
    for name, t in timings.items():
        print(f"  {name:>20}: runs done in {t['http_s']:.2f} s, all replies in {t['all_s']:.2f} s")
    growth = mib(max(rss["after burst"], rss["after second burst"]) - rss["after warm-up"])
    assert growth <= RSS_SLACK_MIB, rss
    for proc in system.procs:
        assert " ERROR " not in proc.output, (proc.name, proc.output[-3000:])
