"""The baseline: a trivial aiohttp server that answers chat completions with the prompt.

It decodes the request and encodes an answer of the hub's shape, the way the hub's
handler does, and nothing else: no store, no router, no executor. The bench client's
round trip against it is the floor (client, loopback, HTTP framework) under the hub's.

Run as ``python -m bench.echo_server PORT``.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from aiohttp import web


def _answer(prompt: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-echo",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "codex",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": prompt},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        "system_fingerprint": None,
    }


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-echo",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": "codex",
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


async def chat(request: web.Request) -> web.StreamResponse:
    """Answer with the last message's content, streamed when asked."""
    body = json.loads(await request.read())
    prompt = body["messages"][-1]["content"]
    if not body.get("stream"):
        return web.json_response(_answer(prompt))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(_chunk({"role": "assistant", "content": ""}))
    await response.write(_chunk({"content": prompt}))
    await response.write(_chunk({}, finish="stop"))
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def ready(request: web.Request) -> web.Response:
    """Always ready."""
    return web.json_response({"ready": True})


def main() -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/readyz", ready)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
