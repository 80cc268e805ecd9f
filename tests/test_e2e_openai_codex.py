"""The OpenAI API's options through the real codex to the stub model: schema, images,
instructions, and a recognised conversation."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from testkit.fakes.model_server import StubModelServer

pytestmark = pytest.mark.codex

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


@pytest.fixture
def real_executor(
    start_executor: Callable[..., AbstractAsyncContextManager[Any]], codex_bin: str, tmp_path: Path
) -> Callable[..., AbstractAsyncContextManager[Any]]:
    """An executor node running the real codex with ``CODEX_HOME=home``."""
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)

    def start(home: Path) -> AbstractAsyncContextManager[Any]:
        return start_executor(
            EXEC_DRY_RUN=False,
            CODEX_BIN=codex_bin,
            CODEX_HOME=home,
            EXEC_WORKDIR=workdir,
            EXEC_TIMEOUT_S=30,
        )

    return start


class Verdict(BaseModel):
    ok: bool
    reason: str


def sdk(hub: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=hub.url + "/v1", api_key="unused", max_retries=2)


async def test_structured_output_reaches_codex_as_its_output_schema(
    hub: Any, real_executor: Any, codex_home: Path, model_server: StubModelServer
) -> None:
    """chat.completions.parse sends the schema to codex (text.format) and parses the answer."""
    model_server.reply_text('{"ok": true, "reason": "fits"}')
    client = sdk(hub)
    async with real_executor(codex_home):
        completion = await client.chat.completions.parse(
            model="codex",
            messages=[{"role": "user", "content": "judge it"}],
            response_format=Verdict,
        )
    await client.close()
    assert completion.choices[0].message.parsed == Verdict(ok=True, reason="fits")
    fmt = model_server.requests[0].body["text"]["format"]
    assert fmt["type"] == "json_schema"
    assert set(fmt["schema"]["properties"]) == {"ok", "reason"}


async def test_an_answer_that_does_not_fit_the_schema_fails_the_run_once(
    hub: Any, real_executor: Any, codex_home: Path, model_server: StubModelServer
) -> None:
    """An answer that is not JSON fitting the schema fails the run and is not retried."""
    model_server.reply_text('{"ok": "maybe"}')
    client = sdk(hub)
    async with real_executor(codex_home):
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.parse(
                model="codex",
                messages=[{"role": "user", "content": "judge it"}],
                response_format=Verdict,
            )
    await client.close()
    assert caught.value.status_code == 502
    assert caught.value.code == "invalid_structured_output"
    assert "does not fit the schema" in caught.value.message
    assert len(model_server.requests) == 1


async def test_an_image_and_instructions_reach_the_model(
    hub: Any, real_executor: Any, codex_home: Path, model_server: StubModelServer
) -> None:
    """A data: URL image goes to codex with -i; the system message is its developer text."""
    model_server.reply_text("a red pixel")
    url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    client = sdk(hub)
    async with real_executor(codex_home):
        completion = await client.chat.completions.create(
            model="codex",
            messages=[
                {"role": "system", "content": "Always answer as a pirate."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is in the picture?"},
                        {"type": "image_url", "image_url": {"url": url}},
                    ],
                },
            ],
        )
    await client.close()
    assert completion.choices[0].message.content == "a red pixel"
    sent = model_server.requests[0].text
    assert "Always answer as a pirate." in sent
    parts = [
        part
        for item in model_server.requests[0].body["input"]
        if isinstance(item.get("content"), list)
        for part in item["content"]
    ]
    assert any(p.get("type") == "input_image" for p in parts)


async def test_a_resent_history_resumes_the_codex_thread(
    hub: Any, real_executor: Any, codex_home: Path, model_server: StubModelServer
) -> None:
    """Sending the history back (no session id) continues codex's own thread."""
    model_server.reply_text("the number is 7")
    model_server.reply_text("14")
    client = sdk(hub)
    history: list[Any] = [{"role": "user", "content": "pick a number, say it"}]
    async with real_executor(codex_home):
        first = await client.chat.completions.create(model="codex", messages=history)
        history += [
            {"role": "assistant", "content": first.choices[0].message.content},
            {"role": "user", "content": "double it"},
        ]
        await client.chat.completions.create(model="codex", messages=history)
    await client.close()
    second = model_server.requests[1]
    # codex itself replays the earlier turn (the thread), and the hub sent no context block.
    assert "pick a number, say it" in second.text
    assert "the number is 7" in second.text
    assert "<conversation>" not in json.dumps(second.body["input"])
