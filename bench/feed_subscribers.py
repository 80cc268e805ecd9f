"""One process of feed subscribers for the ``feed`` suite (``python -m bench.feed_subscribers``).

``bench.feed_fanout`` starts several of these so that the subscribers' own work (reading
websockets, parsing JSON) is spread over processes, each with its own event loop (uvloop
when it is installed), instead of one process that saturates and shows its backlog as
the hub's latency.

Protocol with the parent, one line each way:

- the process opens ``--count`` websockets on ``--url`` (``/api/feed``), signs each in
  with ``--key`` and, once every one has had its ``ready``, prints
  ``{"ready": <seconds it took>}``;
- it then records, for every ``event`` message, the delivery latency: the wall clock
  (``time.time()``, CLOCK_REALTIME, one clock for every process of the machine) when
  the websocket frame carrying it was read, minus the event's ``ts`` (the hub's
  ``time.time()`` when it published the event);
- on ``stop`` on its stdin it closes the sockets, writes every latency (seconds, as
  native doubles) to ``--out`` and prints its counts as one JSON line.

Per subscriber it checks the order of each run's events: a seq not above the last one
seen counts as a duplicate, a seq more than one above it as a gap.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import time
from array import array
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from kernel.process import loop_factory


@dataclass
class Counts:
    """What one process's subscribers received, summed over them."""

    subscribers: int = 0
    frames: int = 0
    messages: int = 0
    events: int = 0
    runs: int = 0
    duplicates: int = 0
    gaps: int = 0
    resyncs: int = 0
    closed_early: int = 0
    cpu_s: float = 0.0


class Subscriber:
    """One feed websocket and what it saw."""

    def __init__(self, latencies: array[float], counts: Counts) -> None:
        self.latencies = latencies
        self.counts = counts
        self.ready = asyncio.Event()
        self.last_seq: dict[str, int] = {}
        self.stopping = False

    async def run(self, session: aiohttp.ClientSession, url: str, key: str) -> None:
        counts = self.counts
        latencies = self.latencies
        last_seq = self.last_seq
        clock = time.time
        loads = orjson.loads
        async with session.ws_connect(url, max_msg_size=0, autoping=True) as ws:
            await ws.send_str(json.dumps({"type": "auth", "key": key}))
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                now = clock()
                counts.frames += 1
                data = loads(msg.data)
                for frame in data if isinstance(data, list) else (data,):
                    counts.messages += 1
                    kind = frame.get("type")
                    if kind == "event":
                        event = frame["event"]
                        latencies.append(now - event["ts"])
                        counts.events += 1
                        run_id = frame["run_id"]
                        seq = event["seq"]
                        last = last_seq.get(run_id, 0)
                        if seq <= last:
                            counts.duplicates += 1
                        else:
                            if seq > last + 1 and last:
                                counts.gaps += 1
                            last_seq[run_id] = seq
                    elif kind == "run":
                        counts.runs += 1
                    elif kind == "ready":
                        self.ready.set()
                    elif kind == "resync":
                        counts.resyncs += 1
        if not self.stopping:
            counts.closed_early += 1


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.feed_subscribers")
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    loop = asyncio.get_running_loop()
    latencies: array[float] = array("d")
    counts = Counts(subscribers=args.count)
    subs = [Subscriber(latencies, counts) for _ in range(args.count)]
    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [asyncio.create_task(s.run(session, args.url, args.key)) for s in subs]
        waits = [asyncio.create_task(s.ready.wait()) for s in subs]
        try:
            async with asyncio.timeout(60):
                watched: set[asyncio.Future[Any]] = {asyncio.gather(*waits), *tasks}
                done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                if task in done:
                    task.result()  # a subscriber that ended before ready: say why
                    raise RuntimeError("a subscriber's socket closed before ready")
            # The measuring instrument must not pause: its own garbage (parsed frames) is
            # freed by reference counting; the cyclic collector would stop this process
            # for milliseconds at a time, which would show as delivery latency.
            gc.collect()
            gc.freeze()
            gc.disable()
            print(json.dumps({"ready": time.perf_counter() - started}), flush=True)
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if line.strip() != "stop":
                raise RuntimeError(f"expected 'stop', got {line!r}")
        finally:
            for s in subs:
                s.stopping = True
            everything: list[asyncio.Future[Any]] = [*tasks, *waits]
            for future in everything:
                future.cancel()
            await asyncio.gather(*tasks, *waits, return_exceptions=True)
    times = os.times()
    counts.cpu_s = times.user + times.system
    args.out.write_bytes(latencies.tobytes())
    print(json.dumps(asdict(counts)), flush=True)
    return 0


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=loop_factory()) as runner:  # uvloop where installed
        sys.exit(runner.run(main()))
