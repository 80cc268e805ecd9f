"""A retry never runs codex twice: x-should-retry, joined retries, a grace to re-attach."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import openai
import pytest

from hub.appkeys import ROUTER, STORE
from tests.conftest import NODE_TOKEN, ws_url

CHAT = "/v1/chat/completions"


def chat(text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": "codex", "messages": [{"role": "user", "content": text}], **extra}


async def fail_every_run(ex: Any, code: str = "executor_lost") -> None:
    """Answer each assign the fake executor gets with a failure."""
    seen = 0
    while True:
        assign = await ex.wait_for(lambda f: f.get("type") == "assign", 30.0, after=seen)
        seen = ex.frames.index(assign) + 1
        await ex.send(
            {
                "type": "result",
                "run_id": assign["run_id"],
                "status": "failed",
                "error": {"code": code, "message": "boom"},
            }
        )


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        ("failed", {"code": "codex_failed", "message": "codex exited with code 1"}, 502),
        ("failed", {"code": "executor_lost", "message": "lost"}, 502),
        ("timed_out", {"code": "timeout", "message": "codex did not finish"}, 504),
        ("cancelled", {"code": "cancelled", "message": "cancelled on request"}, 409),
    ],
)
async def test_an_answer_for_a_run_that_did_not_succeed_says_do_not_retry(
    hub: Any, fake_executor: Any, status: str, error: dict[str, str], expected: int
) -> None:
    """Failed, timed-out and cancelled runs answer with their status and x-should-retry: false."""
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex, aiohttp.ClientSession() as s:
        call = asyncio.create_task(s.post(hub.url + CHAT, json=chat("x")))
        assign = await ex.wait_type("assign")
        await ex.send(
            {"type": "result", "run_id": assign["run_id"], "status": status, "error": error}
        )
        resp = await call
        body = await resp.json()
        resp.release()
    assert resp.status == expected
    assert resp.headers["x-should-retry"] == "false"
    assert body["error"]["message"].startswith(error["message"])


async def test_the_sdk_retrying_a_failing_run_makes_one_run(hub: Any, fake_executor: Any) -> None:
    """openai with its default retries gets the failure once; codex ran once."""
    client = openai.AsyncOpenAI(base_url=hub.url + "/v1", api_key="unused", max_retries=2)
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex:
        failing = asyncio.create_task(fail_every_run(ex))
        try:
            with pytest.raises(openai.InternalServerError) as caught:
                await client.chat.completions.create(
                    model="codex", messages=[{"role": "user", "content": "fails"}]
                )
        finally:
            failing.cancel()
            await asyncio.gather(failing, return_exceptions=True)
        assigns = ex.of_type("assign")
    await client.close()
    assert caught.value.status_code == 502
    assert len(assigns) == 1
    runs, _ = await hub.app[STORE].list_runs()
    assert len(runs) == 1


async def test_a_run_cancelled_through_the_api_is_not_sent_again(
    hub: Any, fake_executor: Any
) -> None:
    """A cancel answers the SDK 409 without a retry, so the cancelled work never runs again."""
    client = openai.AsyncOpenAI(base_url=hub.url + "/v1", api_key="unused", max_retries=2)
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex:
        call = asyncio.create_task(
            client.chat.completions.create(
                model="codex", messages=[{"role": "user", "content": "stop me"}]
            )
        )
        assign = await ex.wait_type("assign")
        await hub.app[ROUTER].cancel(assign["run_id"], "cancelled on request")
        await ex.wait_type("cancel", run_id=assign["run_id"])
        await ex.send({"type": "result", "run_id": assign["run_id"], "status": "cancelled"})
        with pytest.raises(openai.ConflictError):
            await call
        assert len(ex.of_type("assign")) == 1
    await client.close()


async def test_a_retry_after_a_client_timeout_joins_the_run(hub: Any, fake_executor: Any) -> None:
    """The SDK's retry after its own timeout gets the first run's answer; codex ran once."""
    client = openai.AsyncOpenAI(
        base_url=hub.url + "/v1", api_key="unused", max_retries=1, timeout=0.5
    )
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex:
        call = asyncio.create_task(
            client.chat.completions.with_raw_response.create(
                model="codex", messages=[{"role": "user", "content": "slow work"}]
            )
        )
        assign = await ex.wait_type("assign")
        await _rejoined(hub)  # the first attempt timed out and its retry waits
        await ex.finish(assign["run_id"], "finished once")
        reply = await call
    await client.close()
    assert reply.parse().choices[0].message.content == "finished once"
    assert reply.headers["x-run-id"] == assign["run_id"]
    assert len(ex.of_type("assign")) == 1
    assert not ex.of_type("cancel")


async def _rejoined(hub: Any, count: int = 1) -> None:
    """Wait until ``count`` retries joined an earlier run (the hub says so in no event)."""
    from hub.api_openai import CALLS

    async with asyncio.timeout(10):
        while hub.app[CALLS].rejoined < count:  # noqa: ASYNC110 - no event to await
            await asyncio.sleep(0.02)


async def test_a_retry_with_the_same_body_rejoins_a_dropped_request(
    hub: Any, fake_executor: Any
) -> None:
    """A dropped request's run waits for a retry (x-stainless-retry-count) and is not cancelled."""
    body = chat("keep going")
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex:
        first = aiohttp.ClientSession()
        call = asyncio.create_task(
            first.post(hub.url + CHAT, json=body, headers={"x-stainless-retry-count": "0"})
        )
        assign = await ex.wait_type("assign")
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)
        await first.close()
        async with aiohttp.ClientSession() as s:
            retry = asyncio.create_task(
                s.post(hub.url + CHAT, json=body, headers={"x-stainless-retry-count": "1"})
            )
            await _rejoined(hub)
            await ex.finish(assign["run_id"], "one run")
            resp = await retry
            data = await resp.json()
            resp.release()
    assert resp.headers["X-Run-ID"] == assign["run_id"]
    assert data["choices"][0]["message"]["content"] == "one run"
    assert not ex.of_type("cancel")
    assert len(ex.of_type("assign")) == 1


async def test_a_retry_of_a_finished_run_gets_its_recorded_outcome(
    hub: Any, start_executor: Any
) -> None:
    """A retry that comes after the run ended gets that answer, from the store; the same
    body sent again without a retry header is a new run."""
    body = chat("done before")
    async with start_executor(), aiohttp.ClientSession() as s:
        async with s.post(hub.url + CHAT, json=body) as resp:
            first = resp.headers["X-Run-ID"]
        async with s.post(
            hub.url + CHAT, json=body, headers={"x-stainless-retry-count": "2"}
        ) as resp:
            second = resp.headers["X-Run-ID"]
            data = await resp.json()
        async with s.post(hub.url + CHAT, json=body) as resp:
            third = resp.headers["X-Run-ID"]
    assert first == second
    assert data["choices"][0]["message"]["content"] == "done before"
    assert third != first
    runs, _ = await hub.app[STORE].list_runs()
    assert len(runs) == 2
