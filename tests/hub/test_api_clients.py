"""Real OpenAI clients against a real hub: LangChain's ChatOpenAI, litellm, the Node SDK."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from hub.appkeys import STORE
from tests.conftest import NODE_TOKEN, ws_url

ROOT = Path(__file__).resolve().parents[2]
NODE_SCRIPT = ROOT / "tests" / "hub" / "node_client.mjs"


class Verdict(BaseModel):
    ok: bool
    reason: str


def chat_openai(hub: Any, **extra: Any) -> Any:
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(model="codex", base_url=hub.url + "/v1", api_key="unused", **extra)


async def test_langchain_chat_openai_with_its_defaults_gets_the_answer(
    hub: Any, start_executor: Any
) -> None:
    """ChatOpenAI(model="codex") sends a model named *codex* to /v1/responses: it works."""
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    llm = chat_openai(hub)
    async with start_executor():
        first = await llm.ainvoke([SystemMessage("be brief"), HumanMessage("hello there")])
        second = await llm.ainvoke(
            [HumanMessage("hello there"), AIMessage(first.text), HumanMessage("and again")]
        )
    assert first.text == "hello there"
    assert second.text.endswith("and again")
    runs, _ = await hub.app[STORE].list_runs()
    assert {run.origin["api"] for run in runs} == {"responses"}


async def test_langchain_with_structured_output_parses_codexs_json(
    hub: Any, fake_executor: Any
) -> None:
    """with_structured_output(Model) sends the schema and parses the answer into the model."""
    llm = chat_openai(hub).with_structured_output(Verdict)
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex:
        call = asyncio.create_task(llm.ainvoke("is it fine?"))
        assign = await ex.wait_type("assign")
        await ex.finish(assign["run_id"], json.dumps({"ok": True, "reason": "it is"}))
        verdict = await call
    assert verdict == Verdict(ok=True, reason="it is")
    assert set(assign["options"]["output_schema"]["properties"]) == {"ok", "reason"}


async def test_litellm_as_a_library_keeps_the_conversation_plain_and_streamed(
    hub: Any, start_executor: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """litellm.acompletion with an openai/ model on the hub's base URL works both ways, and
    the earlier turns reach codex (the dry run echoes its prompt)."""
    # litellm fetches its price list from the internet at import unless told not to.
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    history = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "my name is Ada"},
        {"role": "assistant", "content": "hello Ada"},
        {"role": "user", "content": "what is my name?"},
    ]
    where = {"model": "openai/codex", "api_base": hub.url + "/v1", "api_key": "unused"}
    async with start_executor():
        reply = await litellm.acompletion(messages=history, **where)
        stream = await litellm.acompletion(
            messages=[{"role": "user", "content": "streamed litellm"}], stream=True, **where
        )
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream])
    answer = reply.choices[0].message.content
    assert "<user>\nmy name is Ada\n</user>\n<assistant>\nhello Ada\n</assistant>" in answer
    assert answer.endswith("what is my name?")
    assert text == "streamed litellm"


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
async def test_the_node_sdk_chats_streams_and_uses_responses(hub: Any, start_executor: Any) -> None:
    """The official openai Node SDK (tools/node_modules) gets answers on every endpoint."""
    env = {
        **os.environ,
        "HUB_URL": hub.url + "/v1",
        "NODE_PATH": str(ROOT / "tools" / "node_modules"),
    }
    async with start_executor():
        process = await asyncio.create_subprocess_exec(
            "node",
            str(NODE_SCRIPT),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT / "tools",
        )
        async with asyncio.timeout(40):
            stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    result = json.loads(stdout)
    assert result == {
        "chat": "node chat",
        "stream": "node stream",
        "usage": True,
        "response": "node responses",
        "retrieved": "node responses",
        "models": ["codex"],
    }
