"""Routing through the real hub: capacity, queueing, sessions, lost executors, cancel."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from hub.appkeys import BUS, ROUTER, STORE
from tests.conftest import NODE_TOKEN, ws_url

CHAT = "/v1/chat/completions"


def body(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "codex", "messages": [{"role": "user", "content": text}], **extra}


async def post_chat(
    session: aiohttp.ClientSession, hub: Any, text: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], Any]:
    async with session.post(hub.url + CHAT, json=body(text), headers=headers or {}) as resp:
        return resp.status, await resp.json(), resp.headers


async def test_a_run_goes_to_the_executor_and_its_answer_comes_back(
    hub: Any, fake_executor: Any
) -> None:
    """The executor gets an assign; its result is the HTTP answer."""
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex, aiohttp.ClientSession() as s:
        call = asyncio.create_task(post_chat(s, hub, "list the pods"))
        assign = await ex.wait_type("assign")
        assert assign["prompt"] == "list the pods" and assign["thread_id"] is None
        await ex.start_run(assign["run_id"])
        await ex.event(assign["run_id"], 1, kind="codex", data={"type": "turn.started"})
        await ex.finish(assign["run_id"], "3 pods", usage={"input_tokens": 5, "output_tokens": 2})
        status, data, headers = await call
        assert status == 200
        assert data["choices"][0]["message"]["content"] == "3 pods"
        assert data["usage"]["total_tokens"] == 7
        assert headers["X-Run-ID"] == assign["run_id"]
        await ex.wait_type("result_ack", run_id=assign["run_id"])
        run = await hub.app[STORE].get_run(assign["run_id"])
        assert run.state == "succeeded" and run.executor == "fake-exec"
        events = await hub.app[STORE].get_events(run.id)
        kinds = [e["kind"] for e in events]
        assert kinds[0] == "state" and "codex" in kinds and events[-1]["state"] == "succeeded"


async def test_runs_wait_in_the_queue_while_every_slot_is_busy(
    hub: Any, fake_executor: Any
) -> None:
    """With one slot, the second run is assigned only when the first ends."""
    async with (
        fake_executor(ws_url(hub), token=NODE_TOKEN, capacity=1) as ex,
        aiohttp.ClientSession() as s,
    ):
        first = asyncio.create_task(post_chat(s, hub, "one"))
        a1 = await ex.wait_type("assign")
        second = asyncio.create_task(post_chat(s, hub, "two"))
        await until(hub, lambda: len(hub.app[ROUTER].queue) == 1)
        assert len(ex.of_type("assign")) == 1
        await ex.finish(a1["run_id"], "1")
        a2 = await ex.wait_type("assign", prompt="two")
        await ex.finish(a2["run_id"], "2")
        assert (await first)[0] == (await second)[0] == 200


async def test_past_the_queue_limit_the_caller_gets_429(
    hub_settings: Any, fake_executor: Any
) -> None:
    """A full queue answers 429 with a clear message and Retry-After."""
    from hub.app import HubServer

    settings = hub_settings.model_copy(update={"queue_limit": 1})
    async with HubServer(settings) as hub, aiohttp.ClientSession() as s:
        waiting = asyncio.create_task(post_chat(s, hub, "queued"))
        await until(hub, lambda: len(hub.app[ROUTER].queue) == 1)
        status, data, headers = await post_chat(s, hub, "one too many")
        assert status == 429
        assert data["error"]["code"] == "queue_full"
        assert "HUB_QUEUE_LIMIT" in data["error"]["message"]
        assert headers["Retry-After"]
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)


async def test_two_executors_share_the_load(hub: Any, fake_executor: Any) -> None:
    """Two concurrent runs go to two executors with one free slot each."""
    async with (
        fake_executor(ws_url(hub), token=NODE_TOKEN, node_id="a", capacity=1) as a,
        fake_executor(ws_url(hub), token=NODE_TOKEN, node_id="b", capacity=1) as b,
        aiohttp.ClientSession() as s,
    ):
        calls = [asyncio.create_task(post_chat(s, hub, f"job {i}")) for i in range(2)]
        ra = await a.wait_type("assign")
        rb = await b.wait_type("assign")
        await a.finish(ra["run_id"], "from a")
        await b.finish(rb["run_id"], "from b")
        answers = {(await c)[1]["choices"][0]["message"]["content"] for c in calls}
        assert answers == {"from a", "from b"}


async def test_runs_of_one_session_run_in_order_and_resume_the_thread(
    hub: Any, fake_executor: Any
) -> None:
    """A session's second run waits for the first and resumes its codex thread."""
    headers = {"X-Session-Id": "conv-1"}
    async with (
        fake_executor(ws_url(hub), token=NODE_TOKEN, capacity=4) as ex,
        aiohttp.ClientSession() as s,
    ):
        first = asyncio.create_task(post_chat(s, hub, "first", headers))
        a1 = await ex.wait_type("assign")
        second = asyncio.create_task(post_chat(s, hub, "second", headers))
        other = asyncio.create_task(post_chat(s, hub, "unrelated"))
        await ex.wait_type("assign", prompt="unrelated")
        assert [f["prompt"] for f in ex.of_type("assign")] == ["first", "unrelated"]
        await ex.finish(a1["run_id"], "ok", thread_id="thread-123")
        a2 = await ex.wait_type("assign", prompt="second")
        assert a2["thread_id"] == "thread-123"
        await ex.finish(a2["run_id"], "ok again", thread_id="thread-123")
        unrelated = next(f for f in ex.of_type("assign") if f["prompt"] == "unrelated")
        await ex.finish(unrelated["run_id"], "x")
        for call in (first, second, other):
            assert (await call)[0] == 200


async def test_an_executor_that_vanishes_fails_its_runs_as_lost(
    hub: Any, fake_executor: Any
) -> None:
    """After the grace period the caller gets executor_lost, not a hang."""
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex, aiohttp.ClientSession() as s:
        call = asyncio.create_task(post_chat(s, hub, "doomed"))
        assign = await ex.wait_type("assign")
        await ex.start_run(assign["run_id"])
        await ex.drop()
        status, data, _ = await call
    assert status == 502
    assert data["error"]["code"] == "executor_lost"
    assert "executor lost" in data["error"]["message"]
    run = await hub.app[STORE].get_run(assign["run_id"])
    assert run.state == "failed" and run.error["code"] == "executor_lost"


async def test_an_executor_that_reconnects_in_time_reports_its_run(
    hub: Any, fake_executor: Any
) -> None:
    """A run survives its executor's reconnect: events and result arrive once."""
    async with aiohttp.ClientSession() as s:
        async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex:
            call = asyncio.create_task(post_chat(s, hub, "long job"))
            assign = await ex.wait_type("assign")
            run_id = assign["run_id"]
            await ex.start_run(run_id)
            await ex.event(run_id, 1, kind="codex", data={"n": 1})
            await ex.drop()
        async with fake_executor(ws_url(hub), token=NODE_TOKEN, active_runs=[run_id]) as again:
            # Re-sent from the start, as a real executor does after a reconnect.
            await again.start_run(run_id)
            await again.event(run_id, 1, kind="codex", data={"n": 1})
            await again.event(run_id, 2, kind="codex", data={"n": 2})
            await again.finish(run_id, "made it")
            status, data, _ = await call
            await again.wait_type("result_ack", run_id=run_id)
    assert status == 200 and data["choices"][0]["message"]["content"] == "made it"
    events = await hub.app[STORE].get_events(run_id)
    assert [e["data"]["n"] for e in events if e["kind"] == "codex"] == [1, 2]


async def test_a_queued_run_is_cancelled_at_once(hub: Any) -> None:
    """Cancelling a run nobody has started ends it cancelled; the caller hears 409."""
    async with aiohttp.ClientSession() as s:
        call = asyncio.create_task(post_chat(s, hub, "never mind"))
        await until(hub, lambda: len(hub.app[ROUTER].queue) == 1)
        run_id = hub.app[ROUTER].queue[0]
        async with s.post(f"{hub.url}/api/runs/{run_id}/cancel") as resp:
            assert resp.status == 200
            assert (await resp.json())["cancelled"] is True
        status, data, _ = await call
        assert status == 409 and data["error"]["code"] == "cancelled"
        async with s.post(f"{hub.url}/api/runs/{run_id}/cancel") as resp:
            assert resp.status == 409
        async with s.post(f"{hub.url}/api/runs/run_nope/cancel") as resp:
            assert resp.status == 404


async def test_cancelling_a_running_run_asks_its_executor(hub: Any, fake_executor: Any) -> None:
    """The executor is told to cancel, and its confirmation ends the run cancelled."""
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex, aiohttp.ClientSession() as s:
        call = asyncio.create_task(post_chat(s, hub, "slow"))
        assign = await ex.wait_type("assign")
        await ex.start_run(assign["run_id"])
        async with s.post(f"{hub.url}/api/runs/{assign['run_id']}/cancel") as resp:
            assert resp.status == 200
        await ex.wait_type("cancel", run_id=assign["run_id"])
        await ex.send({"type": "result", "run_id": assign["run_id"], "status": "cancelled"})
        status, data, _ = await call
        assert status == 409 and data["error"]["code"] == "cancelled"


async def until(hub: Any, predicate: Any, timeout: float = 5.0) -> None:
    """Wait for a condition of the hub's state, re-checked at every bus message."""
    with hub.app[BUS].subscribe() as sub:
        async with asyncio.timeout(timeout):
            while not predicate():
                await sub.get()


@pytest.fixture(autouse=True)
def _short_grace(hub_settings: Any) -> None:
    assert hub_settings.executor_grace_s <= 2.0


async def test_a_store_far_behind_makes_new_runs_wait_until_it_caught_up(
    hub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes never pile up without bound: past the limit, submit waits for the commit."""
    import threading

    from hub import scheduler as router_module

    router = hub.app[ROUTER]
    store = hub.app[STORE]
    monkeypatch.setattr(router_module, "STORE_BACKLOG_LIMIT", 3)
    entered, release = threading.Event(), threading.Event()

    def hold(conn: object) -> None:
        entered.set()
        release.wait(10)

    store.post(hold)  # holds the writer thread
    assert await asyncio.to_thread(entered.wait, 10)
    for _ in range(5):
        store.post(lambda conn: None)
    assert store.backlog == 5
    submit = asyncio.create_task(router.submit("held", origin={"source": "http"}))
    for _ in range(20):  # turns of the loop: every chance to get through; it must not
        await asyncio.sleep(0)
    assert not submit.done()
    release.set()
    ticket = await asyncio.wait_for(submit, 10)
    assert ticket.run.prompt == "held"
    assert store.backlog <= 3
