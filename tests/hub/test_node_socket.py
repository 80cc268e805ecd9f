"""Nodes connect at /ws with a hello and HUB_TOKEN; anything else is refused clearly."""

from __future__ import annotations

import json
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from testkit.fakes.nodes import FakeNode, executor_hello
from tests.conftest import NODE_TOKEN, ws_url
from wire import CLOSE_BAD_HELLO, CLOSE_UNAUTHORIZED


@pytest.mark.parametrize("token", ["", "wrong-token"])
async def test_a_wrong_or_missing_token_is_refused_with_a_reason(hub: Any, token: str) -> None:
    """The hub closes with 4001 and says which setting is wrong."""
    node = FakeNode(ws_url(hub), executor_hello(token=token))
    with pytest.raises(ConnectionClosed):
        await node.connect()
    assert node.close_code == CLOSE_UNAUTHORIZED
    assert "HUB_TOKEN" in node.close_reason


@pytest.mark.parametrize(
    "hello",
    [
        "not json",
        json.dumps({"type": "hello", "role": "monitor", "node_id": "x"}),
        json.dumps({"type": "submit", "prompt": "x"}),
        json.dumps({"type": "hello", "role": "executor", "node_id": ""}),
    ],
)
async def test_a_malformed_hello_is_refused(hub: Any, hello: str) -> None:
    """Bad first frames, and roles that are not nodes, get 4002 and the reason."""
    async with connect(ws_url(hub)) as ws:
        await ws.send(hello)
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == CLOSE_BAD_HELLO
    assert info.value.rcvd.reason.startswith("bad hello")


async def test_a_good_hello_is_welcomed_and_the_node_listed(hub: Any, fake_executor: Any) -> None:
    """With the right token the executor is welcomed and shows in /api/nodes."""
    from hub.appkeys import ROUTER

    async with fake_executor(ws_url(hub), token=NODE_TOKEN, capacity=3) as ex:
        assert ex.frames == [] or ex.frames[0]["type"] != "error"
        nodes = hub.app[ROUTER].nodes()
        described = [(n["id"], n["role"], n["capacity"]) for n in nodes]
        assert described == [("fake-exec", "executor", 3)]


async def test_a_bad_frame_gets_an_error_frame_and_the_connection_stays(
    hub: Any, fake_executor: Any
) -> None:
    """A frame the hub cannot use is answered with an error, not a disconnect."""
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex:
        await ex.send({"type": "event", "run_id": "r", "seq": 0, "event": {}})
        error = await ex.wait_type("error")
        assert error["code"] == "bad_frame" and "seq" in error["message"]
        from hub.appkeys import ROUTER

        await ex.send({"type": "status", "capacity": 5})
        # Frames are applied in order: once this one is answered, the status is in.
        await ex.send({"type": "nonsense"})
        await ex.wait_for(lambda f: f.get("type") == "error", after=1)
        assert ex.close_code is None
        assert hub.app[ROUTER].executors["fake-exec"].capacity == 5
