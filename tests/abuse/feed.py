"""The hub's live feed, read by the abuse tests: its frames and who is connected."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import connect


async def wait_for_nodes(
    port: int, key: str, executors: int, platforms: set[str], timeout: float = 30.0
) -> list[dict[str, Any]]:
    """Wait, on the hub's live feed, until these executors and bridges are connected."""
    url = f"ws://127.0.0.1:{port}/api/feed"
    async with asyncio.timeout(timeout), connect(url) as ws:
        await ws.send(json.dumps({"type": "auth", "key": key}))
        async for raw in ws:
            for message in feed_messages(raw):
                nodes = message.get("nodes")
                if nodes is None:
                    continue
                roles = [n["role"] for n in nodes]
                found = {n.get("platform") for n in nodes if n["role"] == "bridge"}
                if roles.count("executor") >= executors and platforms <= found:
                    return list(nodes)
    raise AssertionError("the feed closed before the nodes connected")


def feed_messages(raw: str | bytes) -> list[dict[str, Any]]:
    """The messages of one feed frame: one object, or a batch of them in an array."""
    parsed = json.loads(raw)
    return [dict(m) for m in parsed] if isinstance(parsed, list) else [dict(parsed)]
