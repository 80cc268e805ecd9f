"""A protocol-1 node (its hello has no "protocol"; it takes one frame per message) still
works end to end against a real hub: a bridge submits, an executor runs, the reply is
delivered and acknowledged, and the hub never sends either of them a batch."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from hub.appkeys import ROUTER
from testkit.fakes.nodes import bridge_hello, executor_hello
from tests.conftest import NODE_TOKEN, outbox_drained, ws_url


class _Peer:
    """A raw protocol-1 node: every message it gets must be one JSON object."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def next(self, kind: str) -> dict[str, Any]:
        """The next frame of ``kind`` (others are skipped); each message is one frame."""
        async with asyncio.timeout(10):
            while True:
                message = json.loads(await self.ws.recv())
                assert isinstance(message, dict), f"a batch sent to a protocol-1 node: {message}"
                if message["type"] == kind:
                    return message


async def test_a_protocol_1_bridge_and_executor_run_a_request_end_to_end(hub: Any) -> None:
    async with (
        connect(ws_url(hub)) as ex_ws,
        connect(ws_url(hub)) as br_ws,
    ):
        executor, bridge = _Peer(ex_ws), _Peer(br_ws)
        await executor.send(executor_hello(token=NODE_TOKEN, capacity=4))
        await bridge.send(bridge_hello(token=NODE_TOKEN, platform="slack"))
        assert (await executor.next("welcome"))["node_id"] == "fake-exec"
        await bridge.next("welcome")

        # Several submits at once: the hub queues several frames for each node, and
        # still sends them one per message.
        for n in range(3):
            await bridge.send(
                {
                    "type": "submit",
                    "req_id": f"q{n}",
                    "prompt": f"task {n}",
                    "session_key": f"s{n}",
                    "origin": {"channel": "C1"},
                }
            )
        run_ids = []
        for _ in range(3):
            submitted = await bridge.next("submitted")
            run_ids.append(submitted["run_id"])
        assigned = [(await executor.next("assign"))["run_id"] for _ in range(3)]
        assert sorted(assigned) == sorted(run_ids)

        for run_id in assigned:
            await executor.send({"type": "state", "run_id": run_id, "state": "running"})
            await executor.send(
                {"type": "event", "run_id": run_id, "seq": 1, "event": {"kind": "codex"}}
            )
            await executor.send(
                {"type": "result", "run_id": run_id, "status": "succeeded", "answer": "done"}
            )
        acked = {(await executor.next("result_ack"))["run_id"] for _ in range(3)}
        assert acked == set(run_ids)

        delivered = set()
        for _ in range(3):
            deliver = await bridge.next("deliver")
            assert (deliver["status"], deliver["answer"]) == ("succeeded", "done")
            assert deliver["origin"]["channel"] == "C1"
            delivered.add(deliver["run_id"])
            await bridge.send({"type": "ack", "delivery_id": deliver["delivery_id"]})
        assert delivered == set(run_ids)

        # The acks are applied in order: once this is answered, none is pending.
        await bridge.send({"type": "session_status", "req_id": "probe", "session_key": "s0"})
        assert (await bridge.next("session"))["active"] is None
        await outbox_drained(hub.app[ROUTER].store)
        assert not hub.app[ROUTER].pending
