"""The Responses API: create, stream, retrieve, previous_response_id, instructions, format."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import openai
import pytest

from tests.conftest import NODE_TOKEN, ws_url

RESPONSES = "/v1/responses"
#: A streamed response's events up to its end, for a message with text in one delta.
MESSAGE_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]


def client(hub: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=hub.url + "/v1", api_key="unused", max_retries=0)


async def test_the_sdk_creates_and_retrieves_a_response(hub: Any, start_executor: Any) -> None:
    """responses.create answers with output_text; responses.retrieve finds it again."""
    sdk = client(hub)
    async with start_executor():
        response = await sdk.responses.create(model="codex", input="say hi")
        again = await sdk.responses.retrieve(response.id)
    await sdk.close()
    assert response.id.startswith("resp_") and response.status == "completed"
    assert response.output_text == "say hi"
    assert response.usage is not None and response.usage.total_tokens == 0
    assert again.id == response.id and again.output_text == "say hi"


async def test_streaming_sends_the_responses_event_sequence(hub: Any, start_executor: Any) -> None:
    """A streamed response sends created, in_progress, the item and text events, completed."""
    sdk = client(hub)
    async with start_executor():
        stream = await sdk.responses.create(model="codex", input="stream it", stream=True)
        events = [event async for event in stream]
    await sdk.close()
    assert [e.type for e in events] == [*MESSAGE_EVENTS, "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[4].delta == "stream it"
    assert events[-1].response.output_text == "stream it"


async def test_a_stream_that_fails_after_text_closes_its_item_as_incomplete(
    hub: Any, fake_executor: Any
) -> None:
    """A run failing after some text streamed ends the item (incomplete), then response.failed."""
    sdk = client(hub)
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex:
        stream = await sdk.responses.create(model="codex", input="try it", stream=True)
        assign = await ex.wait_type("assign")
        run_id = assign["run_id"]
        await ex.start_run(run_id)
        await ex.event(run_id, 1, kind="answer_delta", item_id="m1", delta="Half an ")
        events: list[Any] = []
        async for event in stream:  # until the text has reached the client
            events.append(event)
            if event.type == "response.output_text.delta":
                break
        await ex.send(
            {
                "type": "result",
                "run_id": run_id,
                "status": "failed",
                "error": {"code": "codex_failed", "message": "the model went away"},
            }
        )
        events += [event async for event in stream]
    await sdk.close()
    assert [e.type for e in events] == [*MESSAGE_EVENTS, "response.failed"]
    done = next(e for e in events if e.type == "response.output_item.done")
    assert done.item.status == "incomplete"
    assert done.item.content[0].text == "Half an "
    failed = events[-1]
    assert failed.response.status == "failed"
    assert failed.response.error is not None and "went away" in failed.response.error.message


async def test_previous_response_id_resumes_the_codex_thread(hub: Any, fake_executor: Any) -> None:
    """A follow-up names the earlier response: codex resumes its thread with the new input only."""
    sdk = client(hub)
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex:
        first = asyncio.create_task(sdk.responses.create(model="codex", input="remember 7"))
        assign = await ex.wait_type("assign")
        await ex.finish(assign["run_id"], "ok", thread_id="thread-1")
        earlier = await first
        second = asyncio.create_task(
            sdk.responses.create(
                model="codex",
                input=[{"role": "user", "content": "which number?"}],
                previous_response_id=earlier.id,
                instructions="answer in one word",
            )
        )
        follow = await ex.wait_for(
            lambda f: f.get("type") == "assign" and f["run_id"] != assign["run_id"]
        )
        await ex.finish(follow["run_id"], "seven", thread_id="thread-1")
        later = await second
    await sdk.close()
    assert follow["thread_id"] == "thread-1"
    assert follow["prompt"] == "which number?"
    assert follow["options"]["instructions"] == "answer in one word"
    assert later.previous_response_id == earlier.id and later.output_text == "seven"


async def test_text_format_json_schema_reaches_the_executor(hub: Any, fake_executor: Any) -> None:
    """text.format json_schema is sent to the executor as the run's output schema."""
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    sdk = client(hub)
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex:
        call = asyncio.create_task(
            sdk.responses.create(
                model="codex",
                input="a number",
                text={"format": {"type": "json_schema", "name": "num", "schema": schema}},
            )
        )
        assign = await ex.wait_type("assign")
        await ex.finish(assign["run_id"], '{"n": 3}')
        response = await call
    await sdk.close()
    assert assign["options"]["output_schema"] == schema
    assert json.loads(response.output_text) == {"n": 3}


async def test_a_response_of_another_id_is_not_found(hub: Any) -> None:
    """GET /v1/responses/{id} for an unknown id answers 404 in OpenAI's envelope."""
    async with aiohttp.ClientSession() as s, s.get(hub.url + RESPONSES + "/resp_0123") as resp:
        body = await resp.json()
    assert resp.status == 404
    assert body["error"]["code"] == "response_not_found"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/v1/completions", 404),
        ("GET", "/v1/assistants", 404),
        ("POST", "/v1/embeddings", 404),
        ("GET", "/v1/chat/completions", 405),
    ],
)
async def test_an_unknown_path_under_v1_names_the_supported_endpoints(
    hub: Any, method: str, path: str, status: int
) -> None:
    """Any other /v1 path answers in OpenAI's envelope and lists what the hub serves."""
    async with aiohttp.ClientSession() as s, s.request(method, hub.url + path, json={}) as resp:
        body = await resp.json()
    assert resp.status == status
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert "POST /v1/responses" in body["error"]["message"]
    assert "POST /v1/chat/completions" in body["error"]["message"]
