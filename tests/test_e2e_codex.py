"""End to end: HTTP -> hub -> executor node -> the real codex -> stub model, and back."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from hub.app import HubServer
from hub.appkeys import STORE
from testkit.fakes.model_server import STUB_USAGE, StubModelServer, make_codex_home
from testkit.fakes.nodes import FakeNode, bridge_hello
from testkit.procs import processes_under
from tests.conftest import NODE_TOKEN, on_a_fixed_port

pytestmark = pytest.mark.codex

CHAT = "/v1/chat/completions"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def real_executor(
    start_executor: Callable[..., AbstractAsyncContextManager[Any]],
    codex_bin: str,
    workdir: Path,
) -> Callable[..., AbstractAsyncContextManager[Any]]:
    """An executor node running the real codex with ``CODEX_HOME=home``."""

    def start(home: Path, **overrides: Any) -> AbstractAsyncContextManager[Any]:
        values = {
            "EXEC_DRY_RUN": False,
            "CODEX_BIN": codex_bin,
            "CODEX_HOME": home,
            "EXEC_WORKDIR": workdir,
            "EXEC_TIMEOUT_S": 30,
        }
        return start_executor(**{**values, **overrides})

    return start


async def post(hub: Any, text: str, **headers: str) -> tuple[int, dict[str, Any], str]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            hub.url + CHAT,
            json={"model": "codex", "messages": [{"role": "user", "content": text}]},
            headers=headers,
        ) as resp,
    ):
        return resp.status, await resp.json(), resp.headers.get("X-Run-ID", "")


async def test_the_official_client_gets_codexs_answer(
    hub: Any, real_executor: Any, codex_home: Path, model_server: StubModelServer
) -> None:
    """Plain and streaming requests come back with the stub model's answer and usage."""
    model_server.reply_text("plain answer")
    model_server.reply_text("streamed answer")
    client = openai.AsyncOpenAI(base_url=hub.url + "/v1", api_key="x", max_retries=0)
    async with real_executor(codex_home):
        reply = await client.chat.completions.create(
            model="codex", messages=[{"role": "user", "content": "say something"}]
        )
        assert reply.choices[0].message.content == "plain answer"
        assert reply.usage is not None
        assert reply.usage.prompt_tokens == STUB_USAGE["input_tokens"]
        stream = await client.chat.completions.create(
            model="codex", messages=[{"role": "user", "content": "stream it"}], stream=True
        )
        chunks = [c async for c in stream]
    await client.close()
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "streamed answer"


async def test_a_tool_call_writes_a_file_in_the_workdir(
    hub: Any, real_executor: Any, codex_home: Path, model_server: StubModelServer, workdir: Path
) -> None:
    """codex runs the command the model asks for, in EXEC_WORKDIR; events are stored."""
    model_server.reply_exec("printf 'from codex' > made.txt", then="I made made.txt")
    async with real_executor(codex_home):
        status, data, run_id = await post(hub, "make a file")
    assert status == 200, data
    assert data["choices"][0]["message"]["content"] == "I made made.txt"
    assert (workdir / "made.txt").read_text() == "from codex"
    events = await hub.app[STORE].get_events(run_id)
    commands = [
        e["data"]["item"]
        for e in events
        if e["kind"] == "codex"
        and e["data"].get("type") == "item.completed"
        and e["data"]["item"].get("type") == "command_execution"
    ]
    assert commands and "made.txt" in commands[0]["command"]
    assert commands[0]["exit_code"] == 0


async def test_a_follow_up_in_the_session_resumes_the_codex_thread(
    hub: Any, real_executor: Any, codex_home: Path, model_server: StubModelServer
) -> None:
    """The second request of a session reaches the model with the first turn in it."""
    model_server.reply_text("the first answer")
    model_server.reply_text("the second answer")
    async with real_executor(codex_home):
        first = await post(hub, "remember the word pelican", **{"X-Session-Id": "s1"})
        second = await post(hub, "what was the word?", **{"X-Session-Id": "s1"})
    assert first[0] == second[0] == 200
    assert second[1]["choices"][0]["message"]["content"] == "the second answer"
    resumed = model_server.requests[1].text
    assert "remember the word pelican" in resumed and "the first answer" in resumed
    store = hub.app[STORE]
    run1, run2 = await store.get_run(first[2]), await store.get_run(second[2])
    assert run1.thread_id and run1.thread_id == run2.thread_id


async def test_not_logged_in_is_a_503_naming_the_fix(
    hub: Any, real_executor: Any, codex_home_logged_out: Path
) -> None:
    """Without a codex login the caller gets 503 codex_not_logged_in; /readyz says why."""
    async with real_executor(codex_home_logged_out):
        status, data, _ = await post(hub, "anything")
        async with aiohttp.ClientSession() as s, s.get(hub.url + "/readyz") as resp:
            ready = (resp.status, await resp.json())
    assert status == 503
    assert data["error"]["code"] == "codex_not_logged_in"
    assert "codex login" in data["error"]["message"]
    assert ready[0] == 503 and "not logged in" in ready[1]["reason"]


async def test_a_model_server_error_fails_the_run_with_the_reason(
    hub: Any, real_executor: Any, codex_home: Path, model_server: StubModelServer
) -> None:
    """HTTP 500 from the model: 502 codex_failed, with codex's message in the error."""
    model_server.reply_status(500, "the stub is broken")
    async with real_executor(codex_home):
        status, data, run_id = await post(hub, "fail please")
    assert status == 502
    assert data["error"]["code"] == "codex_failed"
    assert run_id in data["error"]["message"]
    run = await hub.app[STORE].get_run(run_id)
    assert run.state == "failed"


async def test_an_unreachable_model_times_out_and_leaves_no_process(
    hub: Any,
    real_executor: Any,
    codex_bin: str,
    unreachable_port: int,
    tmp_path: Path,
    codex_tmpdir: Path,
) -> None:
    """codex hangs on a closed port; EXEC_TIMEOUT_S ends the run timed_out, nothing left."""
    home = make_codex_home(
        tmp_path / "home-unreachable",
        f"http://127.0.0.1:{unreachable_port}/v1",
        codex_bin,
        logged_in=True,
    )
    async with real_executor(home, EXEC_TIMEOUT_S=3):
        status, data, run_id = await post(hub, "hang forever")
    assert status == 504
    assert data["error"]["code"] == "timeout"
    assert (await hub.app[STORE].get_run(run_id)).state == "timed_out"
    # The hub's own store readers are not what the run left behind.
    assert processes_under([tmp_path], exclude=hub.app[STORE].reader_pids) == {}


async def test_cancel_kills_codex_and_ends_the_run_cancelled(
    hub: Any, real_executor: Any, codex_home: Path, model_server: StubModelServer, tmp_path: Path
) -> None:
    """POST /api/runs/{id}/cancel mid-run: 409 for the caller, no codex process left."""
    model_server.reply_hang()
    async with real_executor(codex_home), aiohttp.ClientSession() as s:
        call = asyncio.create_task(post(hub, "wait for me"))
        await model_server.wait_for_requests(1)
        runs, _ = await hub.app[STORE].list_runs()  # the only one (its state may lag)
        assert len(runs) == 1
        async with s.post(f"{hub.url}/api/runs/{runs[0].id}/cancel") as resp:
            assert resp.status == 200
        status, data, _ = await call
    assert status == 409 and data["error"]["code"] == "cancelled"
    assert (await hub.app[STORE].get_run(runs[0].id)).state == "cancelled"
    # The hub's own store readers are not what the run left behind.
    assert processes_under([tmp_path], exclude=hub.app[STORE].reader_pids) == {}


async def test_two_executors_share_the_load(
    hub: Any, real_executor: Any, codex_home: Path, model_server: StubModelServer
) -> None:
    """Two concurrent runs on two one-slot executors run on both of them."""
    model_server.reply_text("one")
    model_server.reply_text("two")
    async with (
        real_executor(codex_home, EXEC_CONCURRENCY=1, NODE_NAME="a"),
        real_executor(codex_home, EXEC_CONCURRENCY=1, NODE_NAME="b"),
    ):
        results = await asyncio.gather(post(hub, "first job"), post(hub, "second job"))
    assert [r[0] for r in results] == [200, 200]
    store = hub.app[STORE]
    executors = {(await store.get_run(r[2])).executor for r in results}
    assert len(executors) == 2


@asynccontextmanager
async def _bridge(url: str) -> AsyncIterator[FakeNode]:
    node = FakeNode(url, bridge_hello(token=NODE_TOKEN))
    await node.connect()
    try:
        yield node
    finally:
        await node.close()


async def test_a_hub_restart_mid_run_loses_nothing(
    hub_settings: Any,
    real_executor: Any,
    codex_home: Path,
    model_server: StubModelServer,
    workdir: Path,
) -> None:
    """The hub stops while codex works; after its restart the bridge gets the answer."""
    settings, url = on_a_fixed_port(hub_settings)
    gate = workdir / "gate.fifo"
    os.mkfifo(gate)
    model_server.reply_exec("cat gate.fifo > /dev/null", then="finished after the restart")
    hub = HubServer(settings)
    await hub.start()
    try:
        async with real_executor(codex_home, HUB_URL=url) as node:
            async with _bridge(url) as bridge:
                await bridge.send(
                    {
                        "type": "submit",
                        "req_id": "1",
                        "prompt": "wait at the gate",
                        "session_key": "C1:1",
                        "origin": {"channel": "C1"},
                    }
                )
                run_id = (await bridge.wait_type("submitted"))["run_id"]
                await model_server.wait_for_requests(1)
            await hub.close()
            hub = HubServer(settings)
            await hub.start()
            # Opening the FIFO for writing waits for codex's `cat`; a thread keeps the loop free.
            await asyncio.to_thread(gate.write_text, "go\n")
            async with _bridge(url) as bridge:
                deliver = await bridge.wait_type("deliver", timeout=30, run_id=run_id)
                await bridge.send({"type": "ack", "delivery_id": deliver["delivery_id"]})
            assert node.client.connections >= 2
        assert deliver["answer"] == "finished after the restart"
        run = await hub.app[STORE].get_run(run_id)
        assert run.state == "succeeded" and run.answer == "finished after the restart"
        kinds = {e["kind"] for e in await hub.app[STORE].get_events(run_id)}
        assert {"state", "assigned", "codex"} <= kinds
    finally:
        await hub.close()
