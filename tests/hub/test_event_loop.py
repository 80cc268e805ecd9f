"""What the hub's event loop does per run stays small: one deadline timer for all runs,
few frames, a GIL handed over quickly (issue 19: CPU per run and the tail)."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import aiohttp
import pytest

from hub.app import HubServer, create_app
from hub.appkeys import ROUTER
from hub.store import Run
from kernel.credentials import derive
from kernel.process import SWITCH_INTERVAL_S
from tests.conftest import NODE_TOKEN, ws_url


def node_token(role: str) -> str:
    return derive(NODE_TOKEN, role)


async def test_a_listening_hub_hands_the_gil_over_within_a_millisecond(hub: Any) -> None:
    """The hub lowers the interval after which a thread waiting for the GIL (its loop, or
    the store's writer) gets it, from Python's 5 ms to at most SWITCH_INTERVAL_S."""
    assert SWITCH_INTERVAL_S <= 0.001
    assert sys.getswitchinterval() <= SWITCH_INTERVAL_S


@pytest.fixture
async def timers(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The callbacks of every timer the running loop is asked for from now on."""
    loop = asyncio.get_running_loop()
    made: list[Any] = []
    call_at, call_later = loop.call_at, loop.call_later

    def counting_call_at(when: float, callback: Any, *args: Any, **kw: Any) -> Any:
        made.append(callback)
        return call_at(when, callback, *args, **kw)

    def counting_call_later(delay: float, callback: Any, *args: Any, **kw: Any) -> Any:
        made.append(callback)
        return call_later(delay, callback, *args, **kw)

    monkeypatch.setattr(loop, "call_at", counting_call_at)
    monkeypatch.setattr(loop, "call_later", counting_call_later)
    return made


async def test_runs_share_one_deadline_timer_and_each_still_times_out_on_time(
    hub_settings: Any, fake_executor: Any, timers: list[Any]
) -> None:
    """Ten runs assigned on an executor with a long timeout arm one timer between them;
    a run assigned after them on an executor with a short timeout, whose deadline comes
    first, still ends timed_out at its own deadline while the ten go on."""
    settings = hub_settings.model_copy(update={"run_grace_s": 0.2})
    async with HubServer(settings) as hub:
        router = hub.app[ROUTER]
        token = node_token("executor")
        async with fake_executor(
            ws_url(hub), node_id="slow", token=token, capacity=10, timeout_s=60
        ) as slow:
            tickets = [
                await router.submit(f"long {i}", origin={"source": "test"}) for i in range(10)
            ]
            for ticket in tickets:
                await slow.wait_type("assign", run_id=ticket.run.id)
            deadline_timers = [cb for cb in timers if getattr(cb, "__self__", None) is router]
            assert len(deadline_timers) == 1
            async with fake_executor(
                ws_url(hub), node_id="quick", token=token, capacity=1, timeout_s=0.2
            ) as quick:
                short = await router.submit("short", origin={"source": "test"})
                await quick.wait_type("assign", run_id=short.run.id)
                run = await asyncio.wait_for(short.done, 10)
                assert run.state == "timed_out" and run.error["code"] == "hub_deadline"
                assert all(not t.done.done() for t in tickets)
                for ticket in tickets:
                    await slow.finish(ticket.run.id, "done")
                for ticket in tickets:
                    assert (await asyncio.wait_for(ticket.done, 10)).state == "succeeded"
        assert router._deadlines == {}


def test_a_request_passes_one_middleware_for_the_guard_the_key_and_the_errors(
    hub_settings: Any,
) -> None:
    """The web guard, the key check and the error rendering are one middleware: each
    middleware is another coroutine on every request (their behaviour: tests/abuse)."""
    assert len(create_app(hub_settings).middlewares) == 1


async def test_a_waiting_chat_caller_is_woken_with_its_runs_end_without_a_shield(
    hub: Any, fake_executor: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The handler waits on a future of its own that the run's end resolves directly: no
    asyncio.shield around the run's outcome (one more loop turn on every run)."""
    shielded: list[Any] = []
    shield = asyncio.shield

    def counting_shield(arg: Any) -> Any:
        if isinstance(arg, asyncio.Future):
            shielded.append(arg)
        return shield(arg)

    monkeypatch.setattr(asyncio, "shield", counting_shield)
    async with (
        fake_executor(ws_url(hub), token=node_token("executor")) as ex,
        aiohttp.ClientSession() as session,
    ):
        body = {"model": "codex", "messages": [{"role": "user", "content": "hello"}]}
        posted = asyncio.ensure_future(session.post(hub.url + "/v1/chat/completions", json=body))
        assign = await ex.wait_type("assign")
        await ex.finish(assign["run_id"], "hi there")
        async with await posted as resp:
            assert resp.status == 200
            answer = await resp.json()
    assert answer["choices"][0]["message"]["content"] == "hi there"
    outcomes = [f for f in shielded if f.done() and not f.cancelled()]
    assert [f for f in outcomes if isinstance(f.result(), Run)] == []
