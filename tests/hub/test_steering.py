"""Steering and the answer as it is written, through the hub: a fake executor of the
app-server engine, a fake bridge and the HTTP API (the real codex: tests/test_e2e_steer.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from hub.appkeys import STORE
from testkit.fakes.nodes import FakeExecutor, FakeNode
from tests.conftest import NODE_TOKEN, ws_url

APP_SERVER = {"engine": "app-server"}


@pytest.fixture
def hub_settings(hub_settings: Any, request: pytest.FixtureRequest) -> Any:
    """The test hub, with ``STEER_MODE`` from the test's parameter (default steer)."""
    return hub_settings.model_copy(update={"steer_mode": getattr(request, "param", "steer")})


@asynccontextmanager
async def working_run(
    hub: Any, fake_executor: Any, fake_bridge: Any, **hello: Any
) -> AsyncIterator[tuple[FakeExecutor, FakeNode, str]]:
    """An executor, a Slack bridge and a run of the bridge's conversation that is working."""
    async with (
        fake_executor(ws_url(hub), token=NODE_TOKEN, **hello) as ex,
        fake_bridge(ws_url(hub), token=NODE_TOKEN) as br,
    ):
        await submit(br, "r1", "fix the build")
        run_id = (await ex.wait_type("assign"))["run_id"]
        await ex.start_run(run_id)
        await br.wait_for(lambda f: f.get("type") == "progress" and f.get("state") == "running")
        yield ex, br, run_id


async def submit(br: FakeNode, req_id: str, prompt: str, **extra: Any) -> dict[str, Any]:
    """A chat message into the conversation C1/t1; the hub's answer to it."""
    frame = {"type": "submit", "req_id": req_id, "prompt": prompt, "session_key": "C1/t1"}
    await br.send({**frame, "origin": {"channel": "C1"}, **extra})
    return await br.wait_for(lambda f: f.get("req_id") == req_id)


async def _post(s: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    async with s.post(url, json=body) as resp:
        return resp.status, await resp.json()


async def until_running(s: aiohttp.ClientSession, hub: Any, run_id: str) -> None:
    """Wait until the hub has the run working (the live feed says so, or it did before)."""
    await until_run(s, hub, lambda run: run["id"] == run_id and run["state"] == "running")


async def until_run(s: aiohttp.ClientSession, hub: Any, match: Callable[[Any], bool]) -> None:
    """Wait until the hub has a run that ``match``es (a summary, from the list or the feed)."""
    async with s.ws_connect(hub.url.replace("http", "ws", 1) + "/api/feed") as ws:
        await ws.send_json({"type": "auth", "key": ""})
        async with asyncio.timeout(5):
            await ws.receive_json()  # ready: from here on, every change comes
            async with s.get(f"{hub.url}/api/runs") as resp:
                if any(match(run) for run in (await resp.json())["runs"]):
                    return
            async for message in ws:
                if any(match(m["run"]) for m in message.json() if m.get("type") == "run"):
                    return


async def answer_steer(ex: FakeExecutor, ok: bool = True, error: str | None = None) -> Any:
    """Wait for the hub's ``steer`` and answer it; the steer frame."""
    steer = await ex.wait_type("steer")
    steered = {"type": "steered", "run_id": steer["run_id"], "steer_id": steer["steer_id"]}
    await ex.send({**steered, "ok": ok, **({"error": error} if error else {})})
    return steer


async def test_a_chat_message_into_a_working_conversation_goes_into_its_running_turn(
    hub: Any, fake_executor: Any, fake_bridge: Any
) -> None:
    """The executor is asked to steer the run; the bridge hears so, and no new run is made."""
    async with working_run(hub, fake_executor, fake_bridge, **APP_SERVER) as (ex, br, run_id):
        await br.send(
            {
                "type": "submit",
                "req_id": "r2",
                "prompt": "use python 3.12",
                "session_key": "C1/t1",
                "origin": {"channel": "C1"},
            }
        )
        steer = await answer_steer(ex)
        answer = await br.wait_for(lambda f: f.get("req_id") == "r2")
    assert steer["run_id"] == run_id and steer["text"] == "use python 3.12"
    assert answer["type"] == "submitted" and answer["steered"] is True
    assert answer["run_id"] == run_id
    runs, _ = await hub.app[STORE].list_runs()
    assert [run.id for run in runs] == [run_id]


async def test_a_steer_that_fails_queues_the_message_as_a_new_run_and_says_why(
    hub: Any, fake_executor: Any, fake_bridge: Any
) -> None:
    """The turn ended meanwhile: the message becomes the conversation's next run, with a note."""
    async with working_run(hub, fake_executor, fake_bridge, **APP_SERVER) as (ex, br, run_id):
        await br.send(
            {
                "type": "submit",
                "req_id": "r2",
                "prompt": "and the docs",
                "session_key": "C1/t1",
                "origin": {"channel": "C1"},
            }
        )
        await answer_steer(ex, ok=False, error="the turn has ended")
        answer = await br.wait_for(lambda f: f.get("req_id") == "r2")
        await ex.finish(run_id, "built")
        assign = await ex.wait_type("assign", prompt="and the docs")
    assert answer["type"] == "submitted" and not answer.get("steered")
    assert answer["steer_error"] == "the turn has ended"
    assert answer["run_id"] == assign["run_id"] != run_id
    events = await hub.app[STORE].get_events(assign["run_id"])
    notes = [e["message"] for e in events if e["kind"] == "note"]
    assert notes and run_id in notes[0] and "the turn has ended" in notes[0]


async def test_an_exec_engine_run_is_not_steered_the_message_waits(
    hub: Any, fake_executor: Any, fake_bridge: Any
) -> None:
    """An executor of the exec engine cannot steer: the message is queued behind the run."""
    async with working_run(hub, fake_executor, fake_bridge, engine="exec") as (ex, br, _):
        answer = await submit(br, "r2", "and the docs")
    assert answer["type"] == "submitted" and answer["position"] == 1
    assert not answer.get("steered") and ex.of_type("steer") == []


@pytest.mark.parametrize("hub_settings", ["queue"], indirect=True)
async def test_steer_mode_queue_keeps_the_message_waiting_for_the_run(
    hub: Any, fake_executor: Any, fake_bridge: Any
) -> None:
    """With STEER_MODE=queue a message into a working conversation is queued, as before."""
    async with working_run(hub, fake_executor, fake_bridge, **APP_SERVER) as (ex, br, _):
        answer = await submit(br, "r2", "and the docs")
    assert answer["type"] == "submitted" and answer["position"] == 1
    assert not answer.get("steered") and ex.of_type("steer") == []


async def test_a_message_sent_again_is_not_steered_twice(
    hub: Any, fake_executor: Any, fake_bridge: Any
) -> None:
    """The platform re-sends a steered message (same dedupe key): the same answer, no 2nd steer."""
    async with working_run(hub, fake_executor, fake_bridge, **APP_SERVER) as (ex, br, run_id):
        frame = {
            "type": "submit",
            "prompt": "use python 3.12",
            "session_key": "C1/t1",
            "origin": {"channel": "C1"},
            "dedupe_key": "C1:1700000000.000200",
        }
        await br.send({**frame, "req_id": "r2"})
        await answer_steer(ex)
        first = await br.wait_for(lambda f: f.get("req_id") == "r2")
        again = await submit(br, "r3", "use python 3.12", dedupe_key="C1:1700000000.000200")
    assert first["steered"] is True and again["steered"] is True
    assert again["run_id"] == run_id and len(ex.of_type("steer")) == 1


async def test_the_monitor_composer_steers_a_working_conversation(
    hub: Any, fake_executor: Any
) -> None:
    """POST /api/runs into the conversation of a working run: steered, and the reply says so."""
    async with (
        fake_executor(ws_url(hub), token=NODE_TOKEN, **APP_SERVER) as ex,
        aiohttp.ClientSession() as s,
    ):
        async with s.post(hub.url + "/api/runs", json={"prompt": "fix the build"}) as resp:
            first = await resp.json()
        run_id = first["run"]["id"]
        await ex.wait_type("assign")
        await ex.start_run(run_id)
        body = {"prompt": "and the docs", "session_key": first["run"]["session_key"]}
        await until_running(s, hub, run_id)
        posted = asyncio.create_task(_post(s, hub.url + "/api/runs", body))
        steer = await answer_steer(ex)
        status, second = await posted
    assert first["steered"] is False
    assert status == 202 and second["steered"] is True
    assert second["run"]["id"] == run_id == steer["run_id"]
    assert "added to the running turn" in second["message"]


async def test_answer_deltas_grow_the_progress_and_the_turn_diff_is_the_live_diff(
    hub: Any, fake_executor: Any, fake_bridge: Any
) -> None:
    """Each answer delta sends progress with the answer so far; the diff follows the turn's."""
    async with (
        working_run(hub, fake_executor, fake_bridge, **APP_SERVER) as (ex, br, run_id),
        aiohttp.ClientSession() as s,
    ):
        await ex.event(run_id, 1, kind="answer_delta", item_id="m1", delta="The build ")
        await br.wait_for(lambda f: f.get("answer") == "The build ")
        await ex.event(run_id, 2, kind="answer_delta", item_id="m1", delta="is fixed.")
        await br.wait_for(lambda f: f.get("answer") == "The build is fixed.")
        diff = "diff --git a/x b/x\n+fixed\n"
        await ex.event(run_id, 3, kind="turn_diff", turn_id="t1", diff=diff)
        await ex.event(run_id, 4, kind="note", message="synced", summary="synced")
        await br.wait_for(lambda f: f.get("detail") == "synced")
        async with s.get(f"{hub.url}/api/runs/{run_id}/diff") as resp:
            live = await resp.json()
    assert live == {"run_id": run_id, "diff": diff, "turn_id": "t1", "live": True}


async def test_an_openai_request_into_a_working_session_is_queued_not_steered(
    hub: Any, fake_executor: Any
) -> None:
    """Over /v1 each request is its own turn with its own answer: it waits for the run."""

    async def chat(s: aiohttp.ClientSession, text: str) -> Any:
        body = {"model": "codex", "messages": [{"role": "user", "content": text}]}
        headers = {"X-Session-Id": "s1"}
        async with s.post(hub.url + "/v1/chat/completions", json=body, headers=headers) as resp:
            return (await resp.json())["choices"][0]["message"]["content"]

    async with (
        fake_executor(ws_url(hub), token=NODE_TOKEN, **APP_SERVER) as ex,
        aiohttp.ClientSession() as s,
    ):
        first = asyncio.create_task(chat(s, "fix the build"))
        run_id = (await ex.wait_type("assign"))["run_id"]
        await ex.start_run(run_id)
        await until_running(s, hub, run_id)
        second = asyncio.create_task(chat(s, "and the docs"))
        await until_run(s, hub, lambda run: run["id"] != run_id and run["state"] == "queued")
        await ex.finish(run_id, "built")
        next_id = (await ex.wait_type("assign", prompt="and the docs"))["run_id"]
        await ex.finish(next_id, "documented")
        answers = [await first, await second]
    assert answers == ["built", "documented"] and ex.of_type("steer") == []
