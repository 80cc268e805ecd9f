"""A NUL in a prompt is refused on every surface that takes one, and a message nested a
thousand levels deep is refused without ending the connection that sent it."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from hub.app import HubServer
from hub.appkeys import STORE
from hub.settings import HubSettings
from hub.ws_nodes import TOO_DEEP
from kernel.node_client import NodeClient
from tests.conftest import NODE_TOKEN

NUL_PROMPT = "list the files\u0000 and then delete everything"
DEEP = 1000


def nested(depth: int) -> str:
    """A JSON object nested ``depth`` levels (written by hand: json and orjson refuse)."""
    return '{"a":' * depth + "1" + "}" * depth


async def no_runs(hub: HubServer) -> bool:
    runs, _ = await hub.app[STORE].list_runs()
    return runs == []


async def test_a_nul_in_a_prompt_is_a_400_over_http(hub: HubServer) -> None:
    """The chat API and POST /api/runs refuse the prompt (it was cut at the NUL and run)."""
    chat = {"model": "codex", "messages": [{"role": "user", "content": NUL_PROMPT}]}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        for path, body in (("/v1/chat/completions", chat), ("/api/runs", {"prompt": NUL_PROMPT})):
            async with http.post(f"{hub.url}{path}", json=body) as resp:
                assert resp.status == 400, path
                error = (await resp.json())["error"]
            assert error["code"] == "invalid_prompt"
            assert "NUL" in error["message"]
    assert await no_runs(hub)


async def test_a_nul_in_a_bridge_submit_is_refused_with_a_reason(
    hub: HubServer, fake_bridge: Any
) -> None:
    """A bridge's submit with a NUL is answered with an error it can show the user."""
    async with fake_bridge(f"ws://127.0.0.1:{hub.port}/ws", token=NODE_TOKEN) as bridge:
        frame = {"type": "submit", "req_id": "r1", "prompt": NUL_PROMPT, "session_key": "s"}
        await bridge.send(frame)
        error = await bridge.wait_type("error", req_id="r1")
    assert error["code"] == "bad_frame"
    assert "NUL character" in error["message"]
    assert await no_runs(hub)


async def test_a_frame_nested_a_thousand_deep_is_refused_and_the_node_stays(
    hub: HubServer, fake_executor: Any
) -> None:
    """Alone or in a batch, a too-deep message gets an error (it raised RecursionError
    and dropped the node); the executor then still gets runs."""
    async with fake_executor(f"ws://127.0.0.1:{hub.port}/ws", token=NODE_TOKEN) as executor:
        deep_event = f'{{"type":"event","run_id":"r","seq":1,"event":{nested(DEEP)}}}'
        await executor.ws.send(deep_event)
        await executor.ws.send(f'[{{"type":"status","capacity":2}},{deep_event}]')
        await executor.ws.send("[" * DEEP + "]" * DEEP)
        for after in range(3):
            error = await executor.wait_for(lambda f: f.get("type") == "error", after=after)
            assert error == {"type": "error", "code": "bad_frame", "message": TOO_DEEP}
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{hub.url}/api/runs", json={"prompt": "still here"}) as resp,
        ):
            assert resp.status == 202
        assert (await executor.wait_type("assign"))["prompt"] == "still here"


async def test_a_deep_first_frame_on_the_feed_is_a_wrong_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The monitor's feed closes with 4001 on an auth frame nested 1,000 deep; nothing
    fails in the hub (it raised RecursionError in the handler)."""
    settings = HubSettings(
        _env_file=None,  # type: ignore[call-arg]
        HUB_PORT=0,
        HUB_DB=tmp_path / "hub.db",
        HUB_TOKEN=NODE_TOKEN,
        HUB_API_KEYS="the-key-0123456789",
    )
    async with HubServer(settings) as server, aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{server.url}/api/feed") as ws:
            await ws.send_str("[" * DEEP + "]" * DEEP)
            message = await ws.receive(timeout=5)
        assert message.type == WSMsgType.CLOSE
        assert ws.close_code == 4001
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.fixture
async def rogue_hub() -> AsyncIterator[str]:
    """A hub that welcomes a node, then sends a message nested 2,000 deep, one that holds
    no frames, and a real frame; the URL of its websocket."""

    async def serve(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()  # the hello
        await ws.send_str(json.dumps({"type": "welcome", "node_id": "n", "protocol": 2}))
        await ws.send_str("[" * 2000 + "]" * 2000)
        await ws.send_str("[1, 2]")
        await ws.send_str(json.dumps({"type": "cancel", "run_id": "r1"}))
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/ws", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"ws://127.0.0.1:{site.port}/ws"
    finally:
        await runner.cleanup()


async def test_a_node_skips_a_message_it_cannot_use_and_stays_connected(rogue_hub: str) -> None:
    """A node client logs and skips what is too deep or holds no frames (it dropped the
    connection and reconnected), and takes the next frame on the same connection."""
    got: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_frame(frame: dict[str, Any]) -> None:
        await got.put(frame)

    client = NodeClient(rogue_hub, hello=lambda: {"type": "hello"}, on_frame=on_frame)
    async with client:
        async with asyncio.timeout(5):
            frame = await got.get()
        assert frame == {"type": "cancel", "run_id": "r1"}
        assert client.connections == 1 and client.is_connected


async def test_a_deep_frame_behind_a_lone_surrogate_is_a_bad_frame(
    hub: HubServer, fake_bridge: Any
) -> None:
    """A frame that stops the strict parser at a lone surrogate, then nests 1,000 deep, is
    answered with bad_frame and the connection stays."""
    async with fake_bridge(f"ws://127.0.0.1:{hub.port}/ws", token=NODE_TOKEN) as bridge:
        await bridge.ws.send('{"type": "submit", "req_id": "\\ud800", "x": ' + nested(DEEP) + "}")
        error = await bridge.wait_type("error")
        assert error["code"] == "bad_frame"
        await bridge.send({"type": "session_status", "req_id": "probe", "session_key": "k"})
        assert (await bridge.wait_type("session", req_id="probe"))["active"] is None
