"""Steering and the answer as it is written, end to end with the real codex app-server.

HTTP -> hub -> executor (EXEC_ENGINE=app-server) -> `codex app-server` -> stub model:
a prompt into a working conversation reaches the model inside the running turn (or,
with STEER_MODE=queue, waits as a new run), and the answer streams while the model
writes it, as the official OpenAI client reads it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from hub.appkeys import ROUTER, STORE
from hub.store import Run
from testkit.fakes.model_server import StubModelServer
from tests.hub.test_steering import until_running
from tests.test_e2e_codex import real_executor, workdir

pytestmark = pytest.mark.codex

__all__ = ["real_executor", "workdir"]  # fixtures used by name
APP_SERVER = {"EXEC_ENGINE": "app-server"}


@pytest.fixture
def hub_settings(hub_settings: Any, request: pytest.FixtureRequest) -> Any:
    """The test hub, with ``STEER_MODE`` from the test's parameter (default steer)."""
    return hub_settings.model_copy(update={"steer_mode": getattr(request, "param", "steer")})


async def start_run(s: aiohttp.ClientSession, hub: Any, body: dict[str, Any]) -> dict[str, Any]:
    """POST /api/runs (the monitor's composer); its 202 answer."""
    async with s.post(hub.url + "/api/runs", json=body) as resp:
        assert resp.status == 202, await resp.text()
        answer: dict[str, Any] = await resp.json()
        return answer


async def ended(hub: Any, run_id: str) -> Run:
    """The run once it has ended (at most 30 s)."""
    ticket = await hub.app[ROUTER].join(run_id)
    assert ticket is not None
    async with asyncio.timeout(30):
        return await ticket.done


async def test_a_prompt_into_a_working_conversation_reaches_the_model_in_its_turn(
    hub: Any, real_executor: Any, codex_home: Path, model_server: StubModelServer
) -> None:
    """The composer's second prompt is steered into the running turn: the model sees it."""
    model_server.reply_stall()
    model_server.reply_text("done, with plan B")
    async with real_executor(codex_home, **APP_SERVER), aiohttp.ClientSession() as s:
        first = await start_run(s, hub, {"prompt": "follow plan A"})
        run_id = first["run"]["id"]
        await model_server.wait_for_requests(1)
        await until_running(s, hub, run_id)
        body = {"prompt": "switch to plan B", "session_key": first["run"]["session_key"]}
        steered = await start_run(s, hub, body)
        requests = await model_server.wait_for_requests(2)
        run = await ended(hub, run_id)
    assert steered["steered"] is True and steered["run"]["id"] == run_id
    assert "switch to plan B" in requests[1].text and "follow plan A" in requests[1].text
    assert run.state == "succeeded" and run.answer == "done, with plan B"
    runs, _ = await hub.app[STORE].list_runs()
    assert [r.id for r in runs] == [run_id]
    events = await hub.app[STORE].get_events(run_id)
    assert [e["message"] for e in events if e["kind"] == "steer"] == ["switch to plan B"]


@pytest.mark.parametrize("hub_settings", ["queue"], indirect=True)
async def test_steer_mode_queue_runs_the_prompt_as_the_next_turn(
    hub: Any, real_executor: Any, codex_home: Path, model_server: StubModelServer
) -> None:
    """With STEER_MODE=queue the second prompt waits and runs as its own turn after the first."""
    gate = model_server.reply_gated("plan A is done")
    model_server.reply_text("plan B is done")
    async with real_executor(codex_home, **APP_SERVER), aiohttp.ClientSession() as s:
        first = await start_run(s, hub, {"prompt": "follow plan A"})
        await model_server.wait_for_requests(1)
        await until_running(s, hub, first["run"]["id"])
        body = {"prompt": "then plan B", "session_key": first["run"]["session_key"]}
        second = await start_run(s, hub, body)
        gate.set()
        runs = [await ended(hub, first["run"]["id"]), await ended(hub, second["run"]["id"])]
    assert second["steered"] is False and second["position"] == 1
    assert [r.answer for r in runs] == ["plan A is done", "plan B is done"]
    first_request, second_request = model_server.requests
    assert "then plan B" not in first_request.text and "then plan B" in second_request.text


async def test_the_answer_streams_in_several_content_deltas_that_make_the_answer(
    hub: Any, real_executor: Any, codex_home: Path, model_server: StubModelServer
) -> None:
    """Chat completions (stream=true) sends the answer as codex writes it, in pieces."""
    parts = ["The answer ", "comes in ", "three parts."]
    gates = iter(model_server.reply_paced(parts))
    client = openai.AsyncOpenAI(base_url=hub.url + "/v1", api_key="x", max_retries=0)
    contents: list[str] = []
    async with real_executor(codex_home, **APP_SERVER):
        stream = await client.chat.completions.create(
            model="codex",
            messages=[{"role": "user", "content": "answer slowly"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            content = chunk.choices[0].delta.content if chunk.choices else None
            if content:
                contents.append(content)
                # The model writes its next piece only once this one has come through.
                next(gates, asyncio.Event()).set()
    await client.close()
    assert contents == parts
    assert "".join(contents) == "The answer comes in three parts."


async def test_the_responses_stream_sends_the_answer_as_it_is_written(
    hub: Any, real_executor: Any, codex_home: Path, model_server: StubModelServer
) -> None:
    """/v1/responses (stream=true): text deltas while codex writes, done with the whole text."""
    parts = ["First, ", "then ", "last."]
    gates = iter(model_server.reply_paced(parts))
    client = openai.AsyncOpenAI(base_url=hub.url + "/v1", api_key="x", max_retries=0)
    deltas: list[str] = []
    kinds: list[str] = []
    async with real_executor(codex_home, **APP_SERVER):
        stream = await client.responses.create(model="codex", input="answer slowly", stream=True)
        async for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
                next(gates, asyncio.Event()).set()
            if event.type == "response.completed":
                final = event.response.output_text
    await client.close()
    assert deltas == parts and final == "First, then last."
    assert kinds.index("response.output_item.added") < kinds.index("response.output_text.delta")
    assert kinds[-1] == "response.completed"
