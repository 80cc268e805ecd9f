"""Suite ``feed``: the monitor's live feed with many browsers watching a busy hub.

Topology: ``codex-hub serve`` and a dry-run ``codex-hub executor`` as processes of their
own (:func:`bench.hub_latency.running_hub`), N feed subscribers (websockets on
``/api/feed``, each signed in with the API key) and an open-loop HTTP load in this
process. Every event the hub publishes carries the hub's wall-clock ``ts``; a
subscriber stamps each event it receives with the same clock, so the difference is the
delivery latency (publish -> browser), queueing in the hub and in this process
included. The hub's memory (VmRSS) is sampled all along.

Goal (issue #5, point 9): with 500 subscribers while 50 runs/s flow, event delivery
p99 under 100 ms and the hub under 250 MB.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import aiohttp

from bench.common import (
    Summary,
    fmt_ms,
    machine_lines,
    open_loop,
    render_table,
    rss_kib,
    wait_quiet,
)
from bench.hub_latency import MODEL, running_hub

NAME = "feed"
TITLE = "Monitor feed: fan-out to many subscribers"
GOAL_P99_MS = 100.0
GOAL_RSS_MB = 250.0


@dataclass(frozen=True)
class Plan:
    subscribers: int
    rate: float  # runs per second
    seconds: float


FULL = Plan(subscribers=500, rate=50.0, seconds=20.0)
QUICK = Plan(subscribers=50, rate=20.0, seconds=5.0)


@dataclass
class Results:
    plan: Plan
    latencies: list[float] = field(default_factory=list)
    delivered: int = 0
    resyncs: int = 0
    runs_ok: int = 0
    runs_failed: int = 0
    rss_idle_kib: int = 0
    rss_subscribed_kib: int = 0
    rss_peak_kib: int = 0
    rss_after_kib: int = 0
    busy_before: float = 0.0
    connect_s: float = 0.0


async def _subscriber(
    session: aiohttp.ClientSession, url: str, key: str, ready: asyncio.Event, results: Results
) -> None:
    async with session.ws_connect(url, max_msg_size=0) as ws:
        await ws.send_str(json.dumps({"type": "auth", "key": key}))
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            now = time.time()
            data = json.loads(msg.data)
            for frame in data if isinstance(data, list) else [data]:
                kind = frame.get("type")
                if kind == "ready":
                    ready.set()
                elif kind == "event":
                    results.latencies.append(now - frame["event"]["ts"])
                    results.delivered += 1
                elif kind == "resync":
                    results.resyncs += 1


async def measure(plan: Plan, *, quiet_wait: float = 20.0) -> Results:
    """Run the phase and return what was measured."""
    results = Results(plan)
    results.busy_before = await wait_quiet(quiet_wait)
    with tempfile.TemporaryDirectory(prefix="bench-feed-") as tmp:
        async with running_hub(Path(tmp)) as target:
            pid = target.hub.pid
            results.rss_idle_kib = rss_kib(pid)
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as session:
                feed_url = target.base_url.replace("http", "ws", 1) + "/api/feed"
                started = time.perf_counter()
                readies = [asyncio.Event() for _ in range(plan.subscribers)]
                subs = [
                    asyncio.create_task(
                        _subscriber(session, feed_url, target.api_key, ready, results)
                    )
                    for ready in readies
                ]
                try:
                    async with asyncio.timeout(60):
                        await asyncio.gather(*(r.wait() for r in readies))
                    results.connect_s = time.perf_counter() - started
                    results.rss_subscribed_kib = rss_kib(pid)
                    stop = asyncio.Event()
                    sampler = asyncio.create_task(_sample_rss(pid, stop, results))
                    headers = {"Authorization": f"Bearer {target.api_key}"}
                    body = {"model": MODEL, "messages": [{"role": "user", "content": "feed"}]}

                    async def one(_: int) -> None:
                        async with session.post(
                            target.base_url + "/v1/chat/completions", json=body, headers=headers
                        ) as resp:
                            await resp.read()
                            if resp.status == 200:
                                results.runs_ok += 1
                            else:
                                results.runs_failed += 1

                    await open_loop(one, rate=plan.rate, count=int(plan.rate * plan.seconds))
                    # Let the last events reach every subscriber.
                    await asyncio.sleep(1.0)
                    stop.set()
                    await sampler
                finally:
                    for task in subs:
                        task.cancel()
                    await asyncio.gather(*subs, return_exceptions=True)
            results.rss_after_kib = rss_kib(pid)
            target.hub.check_alive()
    return results


async def _sample_rss(pid: int, stop: asyncio.Event, results: Results) -> None:
    while not stop.is_set():
        results.rss_peak_kib = max(results.rss_peak_kib, rss_kib(pid))
        try:
            await asyncio.wait_for(stop.wait(), timeout=0.25)
        except TimeoutError:
            pass


def report(results: Results) -> str:
    """The markdown section."""
    plan = results.plan
    summary = Summary.of(results.latencies) if results.latencies else None
    p99 = summary.p99 if summary else float("inf")
    peak_mb = max(results.rss_peak_kib, results.rss_after_kib) / 1024
    met_latency = p99 < GOAL_P99_MS
    met_memory = peak_mb < GOAL_RSS_MB
    runs = results.runs_ok + results.runs_failed
    rows = [
        [
            "event delivery (publish -> subscriber)",
            f"{results.delivered:,}",
            fmt_ms(summary.p50) if summary else "-",
            fmt_ms(summary.p90) if summary else "-",
            fmt_ms(p99) if summary else "-",
            fmt_ms(summary.max) if summary else "-",
        ]
    ]
    memory = [
        ["hub idle", f"{results.rss_idle_kib / 1024:.1f}"],
        [f"hub with {plan.subscribers} subscribers", f"{results.rss_subscribed_kib / 1024:.1f}"],
        ["hub peak during the load", f"{results.rss_peak_kib / 1024:.1f}"],
        ["hub after the load", f"{results.rss_after_kib / 1024:.1f}"],
    ]
    return "\n".join(
        [
            f"## {TITLE} (`{NAME}`)",
            "",
            *machine_lines(),
            "",
            f"**Method.** `codex-hub serve` and a dry-run `codex-hub executor` run as "
            f"processes of their own; this process opens {plan.subscribers} feed websockets "
            f"(`/api/feed`, signed in with the API key; connected in {results.connect_s:.1f} s) "
            f"and sends `POST /v1/chat/completions` at {plan.rate:g} runs/s (Poisson arrivals) "
            f"for {plan.seconds:g} s. Each run publishes about six events (queued, assigned, "
            "running, codex's message, the end) and three run updates to every subscriber. "
            "Delivery latency is the subscriber's wall clock minus the event's `ts` stamped "
            "by the hub when it published it; the subscribers all live in this one process, "
            "so its own backlog is part of the figure. "
            f"The machine was {results.busy_before:.2f} cores busy before the start.",
            "",
            f"**Goals (issue #5, point 9): delivery p99 under {GOAL_P99_MS:g} ms: "
            f"{'met' if met_latency else '**not met**'} ({fmt_ms(p99)} ms); hub under "
            f"{GOAL_RSS_MB:g} MB: {'met' if met_memory else '**not met**'} "
            f"(peak {peak_mb:.1f} MB).** Runs started: {runs:,} of "
            f"{int(plan.rate * plan.seconds):,} planned (the load stops early when 256 are "
            f"in flight: the hub, or this process, could not keep up); {results.runs_ok:,} "
            "answered 200; "
            f"subscribers dropped for falling behind (resync): {results.resyncs}.",
            "",
            render_table(["what", "events", "p50 ms", "p90 ms", "p99 ms", "max ms"], rows),
            "",
            render_table(["hub memory", "RSS MiB"], memory),
        ]
    )


class _Options(Protocol):
    quick: bool
    quiet_wait: float


async def main(options: _Options) -> str:
    """``python -m bench feed``: measure and return the markdown section."""
    return report(await measure(QUICK if options.quick else FULL, quiet_wait=options.quiet_wait))


if __name__ == "__main__":
    import sys

    quick = "--quick" in sys.argv
    print(report(asyncio.run(measure(QUICK if quick else FULL, quiet_wait=5.0))))
