"""What the monitor is told about the hub's live state: executor load, the queue, heartbeats,
and why a run ended when nobody cancelled it."""

from __future__ import annotations

import asyncio
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hub.appkeys import BUS, ROUTER, STORE
from hub.bus import Subscription
from tests.conftest import NODE_TOKEN, ws_url

Message = dict[str, Any]


async def next_message(
    sub: Subscription, kind: str, check: Callable[[Message], bool], timeout: float = 5.0
) -> Message:
    """The first message of ``kind`` on the bus for which ``check`` holds."""
    async with asyncio.timeout(timeout):
        while True:
            message = await sub.get()
            if message.get("type") == kind and check(message):
                return message


def busy_of(message: Message, name: str) -> int | None:
    for node in message["nodes"]:
        if node["name"] == name:
            return int(node["busy"])
    return None


async def create(session: aiohttp.ClientSession, hub: Any, prompt: str, **extra: Any) -> str:
    async with session.post(f"{hub.url}/api/runs", json={"prompt": prompt, **extra}) as resp:
        assert resp.status == 202, await resp.text()
        return str((await resp.json())["run"]["id"])


async def test_executor_load_is_published_when_a_run_is_assigned_and_when_it_ends(
    hub: Any, fake_executor: Any
) -> None:
    """The nodes message follows the executor's busy slots as runs come and go."""
    async with (
        fake_executor(ws_url(hub), token=NODE_TOKEN, capacity=2) as ex,
        aiohttp.ClientSession() as s,
    ):
        with hub.app[BUS].subscribe() as sub:
            await create(s, hub, "one")
            assign = await ex.wait_type("assign")
            await next_message(sub, "nodes", lambda m: busy_of(m, "fake-exec") == 1)
            await ex.start_run(assign["run_id"])
            await ex.finish(assign["run_id"], "done")
            await next_message(sub, "nodes", lambda m: busy_of(m, "fake-exec") == 0)


async def test_queued_runs_are_published_with_their_position_and_why_they_wait(
    hub: Any, fake_executor: Any
) -> None:
    """No executor, then a full one, then a conversation's earlier run: each reason shows."""
    async with aiohttp.ClientSession() as s:
        with hub.app[BUS].subscribe() as sub:
            first = await create(s, hub, "one", session_key="chat-1")
            queue = await next_message(sub, "queue", lambda m: m["total"] == 1)
            assert queue["runs"] == [{"id": first, "position": 1, "reason": "no_executor"}]
            async with fake_executor(ws_url(hub), token=NODE_TOKEN, capacity=1) as ex:
                await ex.wait_type("assign")
                second = await create(s, hub, "two", session_key="chat-1")
                third = await create(s, hub, "three")
                queue = await next_message(sub, "queue", lambda m: m["total"] == 2)
                assert queue["runs"] == [
                    {"id": second, "position": 1, "reason": "conversation"},
                    {"id": third, "position": 2, "reason": "all_busy"},
                ]
                assert hub.app[ROUTER].queue_info() == {k: queue[k] for k in queue if k != "type"}


async def test_a_ping_from_a_bridge_is_its_last_seen(hub: Any, fake_bridge: Any) -> None:
    """A bridge that sends no frame but answers heartbeats is seen when it pings."""
    async with fake_bridge(ws_url(hub), token=NODE_TOKEN) as bridge:
        router = hub.app[ROUTER]
        node = next(iter(router.bridges.values()))
        before = node.last_seen
        with hub.app[BUS].subscribe() as sub:
            pong = await bridge.ws.ping()
            await asyncio.wait_for(pong, 5)
            message = await next_message(
                sub, "nodes", lambda m: any(n["last_seen"] > before for n in m["nodes"])
            )
        assert [n["role"] for n in message["nodes"]] == ["bridge"]


async def test_a_lost_executor_is_named_in_the_run_error(hub: Any, fake_executor: Any) -> None:
    """A run whose executor never comes back says which one left, by name."""
    async with (
        fake_executor(ws_url(hub), token=NODE_TOKEN, name="build-box") as ex,
        aiohttp.ClientSession() as s,
    ):
        run_id = await create(s, hub, "doomed")
        await ex.wait_type("assign")
        await ex.start_run(run_id)
        with hub.app[BUS].subscribe() as sub:
            await ex.drop()
            await next_message(sub, "run", lambda m: m["run"]["state"] == "failed", timeout=10)
    run = await hub.app[STORE].get_run(run_id)
    assert run.error["code"] == "executor_lost"
    assert "executor build-box disconnected" in run.error["message"]


@pytest.fixture(autouse=True)
def _short_grace(hub_settings: Any) -> None:
    assert hub_settings.executor_grace_s <= 2.0


def _turn_started(message: Message, run_id: str) -> bool:
    event = message["event"]
    return bool(
        message["run_id"] == run_id
        and event.get("kind") == "codex"
        and (event.get("data") or {}).get("type") == "turn.started"
    )


def sleeping_codex(tmp_path: Path) -> Path:
    """A codex stand-in that is logged in, starts a turn and then works for a while."""
    script = tmp_path / "sleeping-codex"
    script.write_text(
        f"""#!{sys.executable}
import json, sys, time
if sys.argv[1:3] == ["login", "status"]:
    print("Logged in using an API key", file=sys.stderr)
    sys.exit(0)
print(json.dumps({{"type": "thread.started", "thread_id": "thread-sleep"}}), flush=True)
print(json.dumps({{"type": "turn.started"}}), flush=True)
time.sleep(4)  # long enough to be stopped mid-run; short if a kill is missed
"""
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


async def test_a_run_stopped_by_its_executor_shutting_down_says_so_not_cancelled(
    hub: Any, start_executor: Any, tmp_path: Path
) -> None:
    """An executor that stops mid-run reports executor_stopped, never a user's cancel."""
    codex = sleeping_codex(tmp_path)
    async with aiohttp.ClientSession() as s:
        with hub.app[BUS].subscribe() as sub:
            async with start_executor(EXEC_DRY_RUN=False, CODEX_BIN=str(codex)):
                run_id = await create(s, hub, "work for a while")
                # Stopped once codex is up: a stop while it is being spawned is another
                # story (asyncio may wait for ever for a process it could not watch yet).
                await next_message(sub, "event", lambda m: _turn_started(m, run_id))
            ended = await next_message(
                sub, "event", lambda m: m["run_id"] == run_id and m["event"].get("error")
            )
    final = ended["event"]
    assert final["state"] == "failed"
    assert final["error"]["code"] == "executor_stopped"
    assert "cancel" not in final["error"]["message"]
