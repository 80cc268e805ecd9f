"""End to end with EXEC_ENGINE=app-server: HTTP -> hub -> executor -> codex app-server.

Seen from the hub a run of the app-server engine behaves as one of the exec engine:
the same answers, usage, stored events, session threads and cancel.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from executor.codex import TESTED_CODEX_VERSION
from hub.appkeys import STORE
from testkit.fakes.model_server import STUB_USAGE, StubModelServer
from testkit.procs import processes_under
from tests.test_e2e_codex import post, real_executor, workdir

pytestmark = pytest.mark.codex

__all__ = ["real_executor", "workdir"]  # fixtures used by name
APP_SERVER = {"EXEC_ENGINE": "app-server"}


async def test_the_official_client_gets_the_answer_through_the_app_server(
    hub: Any, real_executor: Any, codex_home: Path, model_server: StubModelServer
) -> None:
    """Plain and streaming requests come back with the model's answer, usage and events."""
    model_server.reply_text("plain answer")
    model_server.reply_text("streamed answer")
    client = openai.AsyncOpenAI(base_url=hub.url + "/v1", api_key="x", max_retries=0)
    async with real_executor(codex_home, **APP_SERVER) as node:
        reply = await client.chat.completions.create(
            model="codex", messages=[{"role": "user", "content": "say something"}]
        )
        stream = await client.chat.completions.create(
            model="codex", messages=[{"role": "user", "content": "stream it"}], stream=True
        )
        chunks = [c async for c in stream]
        assert node.pipeline.engine.processes_started == 1
    await client.close()
    assert reply.choices[0].message.content == "plain answer"
    assert reply.usage is not None and reply.usage.prompt_tokens == STUB_USAGE["input_tokens"]
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "streamed answer"
    runs, _ = await hub.app[STORE].list_runs()
    events = await hub.app[STORE].get_events(runs[0].id)
    kinds = {e["data"]["type"] for e in events if e["kind"] == "codex"}
    assert {"thread.started", "turn.started", "item.completed", "turn.completed"} <= kinds
    assert any(e["kind"] == "answer_delta" for e in events)


async def test_a_cancelled_run_leaves_its_conversation_usable(
    hub: Any, real_executor: Any, codex_home: Path, model_server: StubModelServer, tmp_path: Path
) -> None:
    """Cancel interrupts the turn: the run ends cancelled, the conversation goes on with it."""
    model_server.reply_text("first answer")
    model_server.reply_hang()
    model_server.reply_text("after the cancel")
    session = {"X-Session-Id": "s1"}
    async with real_executor(codex_home, **APP_SERVER) as node, aiohttp.ClientSession() as s:
        first = await post(hub, "remember the word kiwi", **session)
        call = asyncio.create_task(post(hub, "wait for me", **session))
        await model_server.wait_for_requests(2)
        runs, _ = await hub.app[STORE].list_runs()
        [cancelled] = [run for run in runs if run.id != first[2]]
        async with s.post(f"{hub.url}/api/runs/{cancelled.id}/cancel") as resp:
            assert resp.status == 200
        status, data, _ = await call
        again = await post(hub, "go on", **session)
        assert node.pipeline.engine.processes_started == 1
    assert first[0] == 200
    assert status == 409 and data["error"]["code"] == "cancelled"
    assert again[0] == 200 and again[1]["choices"][0]["message"]["content"] == "after the cancel"
    follow_up = model_server.requests[2].text
    assert "kiwi" in follow_up and "first answer" in follow_up
    assert "wait for me" in follow_up and "turn_aborted" in follow_up
    # The hub's own store readers are not what the run left behind.
    assert processes_under([tmp_path], exclude=hub.app[STORE].reader_pids) == {}


async def test_an_executor_with_another_protocol_says_so_at_start(
    hub: Any, real_executor: Any, codex_home: Path, tmp_path: Path
) -> None:
    """A codex whose app-server protocol is not the tested one: the executor says so at start."""
    fake = tmp_path / "codex"
    fake.write_text("#!/bin/sh\necho 'no app-server here' >&2\nexit 2\n")
    fake.chmod(0o755)
    async with (
        real_executor(codex_home, CODEX_BIN=str(fake), **APP_SERVER),
        aiohttp.ClientSession() as s,
    ):
        async with s.get(hub.url + "/readyz") as resp:
            ready = resp.status
        async with s.get(hub.url + "/api/nodes") as resp:
            nodes = (await resp.json())["nodes"]
    [executor] = [node for node in nodes if node.get("login")]
    assert ready == 503 and executor["login"]["logged_in"] is False
    assert "EXEC_ENGINE=app-server refused" in executor["login"]["detail"]
    assert f"codex {TESTED_CODEX_VERSION}" in executor["login"]["detail"]


async def test_codex_hub_exec_answers_through_the_app_server(
    codex_bin: str, codex_home: Path, model_server: StubModelServer, tmp_path: Path
) -> None:
    """`codex-hub exec` with EXEC_ENGINE=app-server prints the answer and leaves no process."""
    model_server.reply_text("answer from the app-server")
    work = tmp_path / "cli-work"
    work.mkdir()
    env = {
        **os.environ,
        "EXEC_ENGINE": "app-server",
        "CODEX_BIN": codex_bin,
        "CODEX_HOME": str(codex_home),
        "EXEC_WORKDIR": str(work),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "codex_hub",
        "exec",
        "say it",
        cwd=work,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    assert stdout.decode() == "answer from the app-server\n"
    assert processes_under([codex_home]) == {}
