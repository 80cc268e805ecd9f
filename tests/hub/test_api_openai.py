"""The OpenAI-compatible API: shapes, streaming, errors, keys, disconnects."""

from __future__ import annotations

import asyncio
import gc
import io
import json
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from hub.api_openai import Calls
from hub.app import HubServer
from hub.appkeys import STORE
from hub.settings import HubSettings
from tests.conftest import NODE_TOKEN, ws_url

CHAT = "/v1/chat/completions"


def chat(text: Any = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": "codex", "messages": [{"role": "user", "content": text}], **extra}


def sse_lines(raw: str) -> list[str]:
    return [line for line in raw.split("\n") if line]


async def test_models_lists_the_configured_model(hub: Any) -> None:
    """GET /v1/models serves HUB_MODEL_NAME in OpenAI's list shape."""
    async with aiohttp.ClientSession() as s, s.get(hub.url + "/v1/models") as resp:
        data = await resp.json()
    assert data["object"] == "list"
    assert [m["id"] for m in data["data"]] == ["codex"]


async def test_the_official_client_gets_the_answer(hub: Any, start_executor: Any) -> None:
    """openai.AsyncOpenAI works unchanged, plain and streaming (dry-run engine)."""
    client = openai.AsyncOpenAI(base_url=hub.url + "/v1", api_key="unused", max_retries=0)
    async with start_executor():
        reply = await client.chat.completions.with_raw_response.create(
            model="codex",
            messages=[
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": [{"type": "text", "text": "echo me"}]},
            ],
        )
        completion = reply.parse()
        # The dry run echoes the prompt: the earlier turns came as delimited context.
        content = completion.choices[0].message.content
        assert content.endswith("\n</conversation>\n\nThe new message, to answer now:\necho me")
        assert "<user>\nfirst\n</user>\n<assistant>\nok\n</assistant>" in content
        assert "be brief" not in content  # the system message went as instructions
        assert completion.choices[0].finish_reason == "stop"
        assert reply.headers["x-run-id"].startswith("run_")

        stream = await client.chat.completions.create(
            model="codex",
            messages=[{"role": "user", "content": "stream me"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "stream me"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    await client.close()


async def test_streaming_sends_keepalives_and_progress_apart_from_content(
    hub: Any, fake_executor: Any
) -> None:
    """While codex works the stream carries ': keepalive' and reasoning_content only."""
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex, aiohttp.ClientSession() as s:
        async with s.post(hub.url + CHAT, json=chat("work", stream=True)) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            run_id = resp.headers["X-Run-ID"]
            assign = await ex.wait_type("assign", run_id=run_id)
            await ex.start_run(run_id)
            await ex.event(run_id, 1, kind="codex", data={}, summary="running `git status`")
            raw = ""
            while ": keepalive" not in raw:  # HUB_KEEPALIVE_S is 0.5 s in tests
                raw += (await resp.content.readline()).decode()
            await ex.finish(assign["run_id"], "clean tree")
            raw += (await resp.content.read()).decode()
    lines = sse_lines(raw)
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert any("git status" in d.get("reasoning_content", "") for d in deltas)
    assert [d["content"] for d in deltas if d.get("content")] == ["clean tree"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert "usage" not in chunks[-1]


async def test_a_failed_run_streams_an_error_then_done(hub: Any, fake_executor: Any) -> None:
    """A failure mid-stream arrives as an OpenAI error object before [DONE]."""
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex, aiohttp.ClientSession() as s:
        async with s.post(hub.url + CHAT, json=chat("x", stream=True)) as resp:
            run_id = resp.headers["X-Run-ID"]
            await ex.wait_type("assign", run_id=run_id)
            await ex.send(
                {
                    "type": "result",
                    "run_id": run_id,
                    "status": "failed",
                    "error": {"code": "codex_failed", "message": "codex exited 1: boom"},
                }
            )
            lines = sse_lines((await resp.content.read()).decode())
    error = json.loads(lines[-2][6:])
    assert error["error"]["code"] == "codex_failed" and "boom" in error["error"]["message"]
    assert lines[-1] == "data: [DONE]"


@pytest.mark.parametrize(
    ("payload", "status", "code", "param"),
    [
        (b"{not json", 400, "invalid_json", None),
        (b"[1, 2]", 400, "invalid_json", None),
        (json.dumps({"model": "codex"}).encode(), 400, "invalid_value", "messages"),
        (json.dumps({"model": "codex", "messages": []}).encode(), 400, "invalid_value", "messages"),
        (json.dumps(chat(42)).encode(), 400, "invalid_value", None),
        (json.dumps(chat("hi", stream="yes")).encode(), 400, "invalid_value", "stream"),
        (json.dumps(chat("   ")).encode(), 400, "no_user_message", "messages"),
        (
            json.dumps(
                {"model": "codex", "messages": [{"role": "system", "content": "x"}]}
            ).encode(),
            400,
            "no_user_message",
            "messages",
        ),
        (json.dumps(chat("hi", model="gpt-9")).encode(), 404, "model_not_found", "model"),
        (b"x" * 2_000_000, 413, "request_too_large", None),
    ],
)
async def test_bad_requests_get_the_fitting_4xx_in_openai_envelope(
    hub: Any, payload: bytes, status: int, code: str, param: str | None
) -> None:
    """Each kind of bad body is refused with its own status and code; no run is made."""
    headers = {"Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as s,
        s.post(hub.url + CHAT, data=io.BytesIO(payload), headers=headers) as resp,
    ):
        data = await resp.json()
        assert resp.status == status, data
        assert "X-Run-ID" in resp.headers
    error = data["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["message"]
    if param is not None:
        assert (error["param"] or "").startswith(param)
    runs, _ = await hub.app[STORE].list_runs()
    assert runs == []


async def test_api_keys_are_required_when_configured(hub_settings: Any) -> None:
    """With HUB_API_KEYS set, a missing or wrong Bearer key gets 401; /healthz stays open."""
    settings = hub_settings.model_copy(update={"api_keys": ["k-right"]})
    async with HubServer(settings) as hub, aiohttp.ClientSession() as s:
        for headers in ({}, {"Authorization": "Bearer k-wrong"}, {"Authorization": "k-right"}):
            async with s.post(hub.url + CHAT, json=chat(), headers=headers) as resp:
                assert resp.status == 401
                assert (await resp.json())["error"]["code"] == "invalid_api_key"
            async with s.get(hub.url + "/api/runs", headers=headers) as resp:
                assert resp.status == 401
        async with s.get(
            hub.url + "/v1/models", headers={"Authorization": "Bearer k-right"}
        ) as resp:
            assert resp.status == 200
        async with s.get(hub.url + "/healthz") as resp:
            assert resp.status == 200


@pytest.mark.parametrize("stream", [False, True])
async def test_a_client_that_disconnects_cancels_its_run(
    hub: Any, fake_executor: Any, stream: bool
) -> None:
    """Closing the HTTP connection mid-run sends cancel to the executor."""
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex:
        session = aiohttp.ClientSession()
        call = asyncio.create_task(session.post(hub.url + CHAT, json=chat("bye", stream=stream)))
        assign = await ex.wait_type("assign", prompt="bye")
        await ex.start_run(assign["run_id"])
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)
        await session.close()
        await ex.wait_type("cancel", run_id=assign["run_id"])
        await ex.send({"type": "result", "run_id": assign["run_id"], "status": "cancelled"})
        run = await _final(hub, assign["run_id"])
    assert run.state == "cancelled"
    notes = [e for e in await hub.app[STORE].get_events(run.id) if e["kind"] == "note"]
    assert "disconnected" in notes[0]["message"]


async def _final(hub: Any, run_id: str) -> Any:
    from hub.appkeys import ROUTER

    live = hub.app[ROUTER].live.get(run_id)
    if live is not None:
        return await live.done
    return await hub.app[STORE].get_run(run_id)


async def test_an_idempotency_key_returns_the_same_run(hub: Any, start_executor: Any) -> None:
    """A retried request with the same Idempotency-Key gets the first run's answer."""
    headers = {"Idempotency-Key": "retry-me"}
    async with start_executor(), aiohttp.ClientSession() as s:
        async with s.post(hub.url + CHAT, json=chat("first"), headers=headers) as resp:
            first = (resp.headers["X-Run-ID"], await resp.json())
        async with s.post(hub.url + CHAT, json=chat("second"), headers=headers) as resp:
            second = (resp.headers["X-Run-ID"], await resp.json())
    assert first[0] == second[0]
    assert second[1]["choices"][0]["message"]["content"] == "first"


async def test_an_answered_completion_leaves_its_request_to_reference_counting(
    hub: Any, start_executor: Any
) -> None:
    """Once answered, a chat completion's request is in no reference cycle: the garbage
    collector finds none of the hub's requests to free."""
    async with start_executor(), aiohttp.ClientSession() as s:
        async with s.post(hub.url + CHAT, json=chat("warm up")) as resp:
            assert resp.status == 200
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for i in range(3):
                async with s.post(hub.url + CHAT, json=chat(f"cycle {i}")) as resp:
                    assert (await resp.json())["choices"][0]["message"]["content"] == f"cycle {i}"
            gc.collect()
            requests = [o for o in gc.garbage if isinstance(o, web.Request)]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
    assert requests == []


class _Transport:
    def __init__(self) -> None:
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing


class _Request:
    """What the watch reads of a request: its transport."""

    def __init__(self) -> None:
        self.transport = _Transport()


async def test_one_look_cancels_the_handlers_whose_clients_are_gone_and_only_those(
    tmp_path: Any,
) -> None:
    """Calls.watch: a waiting handler whose connection closed is cancelled at the next
    look, one still connected is not, and the looking stops once nobody waits."""
    settings = HubSettings(
        _env_file=None,  # type: ignore[call-arg]
        HUB_PORT=0,
        HUB_DB=tmp_path / "hub.db",
        HUB_TOKEN=NODE_TOKEN,
        HUB_AUTH="none",
    )
    calls = Calls(settings)
    forever = asyncio.get_running_loop().create_future()
    gone, staying = _Request(), _Request()

    async def waiting() -> None:
        await asyncio.shield(forever)

    dropped = asyncio.create_task(waiting())
    kept = asyncio.create_task(waiting())
    calls.watch(dropped, gone, 0.01)  # type: ignore[arg-type]
    calls.watch(kept, staying, 0.01)  # type: ignore[arg-type]
    gone.transport.closing = True
    with pytest.raises(asyncio.CancelledError):
        await dropped
    assert not kept.done()
    calls.unwatch(dropped)
    calls.unwatch(kept)
    kept.cancel()
    # The look already scheduled finds nobody and schedules no other: once a timer set
    # just after it has fired (the loop runs timers in time order), no look is pending.
    pending = calls._look_handle
    assert pending is not None
    looked = asyncio.Event()
    asyncio.get_running_loop().call_at(pending.when() + 0.001, looked.set)
    await looked.wait()
    assert calls._look_handle is None
    await calls.close()
