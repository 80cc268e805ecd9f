"""The ``growth`` suite's searching client, in a process of its own (``python -m bench.searcher``).

It is another user of the hub, so it must not share the chat clients' event loop: in
the bench process its responses (20-30 KB each, back to back) were read on the same loop
as the 16 chat clients' answers and delayed them, and that delay was measured as the
hub's.

Protocol with the parent, one line each way:

- the process searches once (``GET /api/runs?q=<word>`` with ``--key``; the hub starts
  its reader then) and prints ``{"ready": true}``;
- on ``go`` on its stdin it searches back to back, a word of ``--words`` at a time, and
  keeps each search's latency;
- on ``stop`` it finishes the search under way and prints ``{"latencies": [...]}``
  (seconds) and its CPU time, then exits.

A search answered with anything but 200 ends the process with the status on stderr and
exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import sys
import time

import aiohttp

from kernel.process import loop_factory


async def _search(http: aiohttp.ClientSession, headers: dict[str, str], word: str) -> float:
    t0 = time.perf_counter()
    async with http.get("/api/runs", params={"q": word}, headers=headers) as resp:
        body = await resp.read()
    if resp.status != 200:
        raise RuntimeError(f"search: HTTP {resp.status}: {body[:300]!r}")
    return time.perf_counter() - t0


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.searcher")
    parser.add_argument("--url", required=True, help="the hub's base URL")
    parser.add_argument("--key", required=True, help="an API key of the hub")
    parser.add_argument("--words", required=True, help="comma-separated words to look for")
    args = parser.parse_args(argv)
    words = args.words.split(",")
    headers = {"Authorization": f"Bearer {args.key}"}
    rng = random.Random(7)
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    async with aiohttp.ClientSession(args.url) as http:
        await _search(http, headers, rng.choice(words))
        # The instrument must not pause: see bench.common.client_gc_paused.
        gc.collect()
        gc.freeze()
        gc.disable()
        print(json.dumps({"ready": True}), flush=True)
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if line.strip() != "go":
            raise RuntimeError(f"expected 'go', got {line!r}")
        stop = loop.run_in_executor(None, sys.stdin.readline)
        while not stop.done():
            latencies.append(await _search(http, headers, rng.choice(words)))
        if (await stop).strip() != "stop":
            raise RuntimeError("expected 'stop'")
    times = os.times()
    print(json.dumps({"latencies": latencies, "cpu_s": times.user + times.system}), flush=True)
    return 0


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=loop_factory()) as runner:  # uvloop where installed
        sys.exit(runner.run(main()))
