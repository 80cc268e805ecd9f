"""Suite ``router``: the router's work per run as one session queues up, and its memory
over many one-run sessions (issue #19, point 4).

In process, no HTTP: `hub.router.Router` on a real `hub.store.Store` (SQLite in a temp
dir) and `hub.bus.Bus`, one fake executor link that records the frames sent to it, the
results fed back as `ResultFrame`s. CPU is this process's (`time.process_time`: the
event loop and the store's writer thread), RSS this process's VmRSS.

- *Queue depth*: with N runs (1 to 10,000) queued in one session behind one running
  run, M more runs are submitted and M finished (each finish starts the next): the
  CPU per run (a submit and a finish) at each depth. Flat means O(1) / O(log n).
- *Sessions*: S one-run sessions one after another (submit, run, finish with a codex
  thread): RSS and the router's per-session entries at every tenth. Flat means the
  per-session state is released once a session is idle (the store keeps it).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench.common import machine_lines, render_table, wait_quiet
from hub.bus import Bus
from hub.router import Router
from hub.settings import HubSettings
from hub.store import Store
from testkit.procs import rss_kib
from wire import Hello, ResultFrame

NAME = "router"
TITLE = "Router: work per run by queue depth, memory over one-run sessions"
ORIGIN = {"source": "http"}


@dataclass(frozen=True)
class Plan:
    """Depths to measure, runs per depth, and one-run sessions."""

    depths: tuple[int, ...] = (1, 100, 1_000, 10_000)
    runs: int = 1_000
    sessions: int = 1_000_000


FULL = Plan()
QUICK = Plan(depths=(1, 100, 1_000), runs=200, sessions=20_000)


@dataclass
class Results:
    plan: Plan
    #: depth -> CPU ms per run: the whole process, and the event loop's thread alone
    cpu_ms: dict[int, float] = field(default_factory=dict)
    loop_ms: dict[int, float] = field(default_factory=dict)
    #: (sessions done, RSS MiB, router.sessions entries, session_gen entries, seconds)
    rss: list[tuple[int, float, int, int, float]] = field(default_factory=list)
    quiet: float = 0.0


class _Link:
    """The executor's end: keeps the last run assigned to it (only that: a list of them
    would be the bench's own memory growing with the runs)."""

    node_id = "bench-executor"

    def __init__(self) -> None:
        self.assigned = ""

    def send(self, frame: dict[str, Any]) -> None:
        if frame.get("type") == "assign":
            self.assigned = frame["run_id"]

    def close(self, code: int, reason: str) -> None:
        pass


@contextlib.asynccontextmanager
async def _router(tmp: Path, name: str) -> AsyncIterator[tuple[Router, _Link]]:
    settings = HubSettings(  # type: ignore[call-arg]
        HUB_DB=tmp / f"{name}.db", HUB_TOKEN="x" * 32, HUB_AUTH="none", HUB_QUEUE_LIMIT=1_000_000
    )
    store = Store(settings.db)
    await store.open()
    router = Router(store, Bus(), settings)
    await router.start()
    link = _Link()
    try:
        yield router, link
    finally:
        await router.close()
        await store.close()


def _connect(router: Router, link: _Link, capacity: int) -> None:
    hello = Hello(type="hello", role="executor", node_id=link.node_id, capacity=capacity)
    router.executor_connected(link, hello)


async def _finish(router: Router, link: _Link, run_id: str, thread: str | None = None) -> None:
    frame = ResultFrame(
        type="result", run_id=run_id, status="succeeded", answer="ok", thread_id=thread
    )
    await router.on_executor_frame(link, frame)


async def _depth(tmp: Path, depth: int, runs: int) -> tuple[float, float]:
    """CPU ms per run (one submit, one finish) with `depth` runs queued in one session:
    the whole process's, and the event loop thread's (the router, without the store's
    writer thread)."""
    async with _router(tmp, f"depth-{depth}") as (router, link):
        key = "http:deep"
        for n in range(depth):
            await router.submit(f"queued {n}", origin=ORIGIN, session_key=key)
        _connect(router, link, capacity=1)
        await router.store.flush()
        started, loop_started = time.process_time(), time.thread_time()
        for n in range(runs):
            await router.submit(f"more {n}", origin=ORIGIN, session_key=key)
            await _finish(router, link, link.assigned)
        loop_s = time.thread_time() - loop_started
        await router.store.flush()
        return (time.process_time() - started) * 1000.0 / runs, loop_s * 1000.0 / runs


async def _sessions(tmp: Path, plan: Plan, results: Results) -> None:
    async with _router(tmp, "sessions") as (router, link):
        _connect(router, link, capacity=1)
        step = max(1, plan.sessions // 10)
        started = time.monotonic()
        for n in range(1, plan.sessions + 1):
            ticket = await router.submit("hi", origin=ORIGIN, session_key=f"http:one-{n}")
            await _finish(router, link, ticket.run.id, thread=f"thread-{n}")
            if n == 1 or n % step == 0:
                await router.store.flush()
                gc.collect()
                results.rss.append(
                    (
                        n,
                        rss_kib(os.getpid()) / 1024,
                        len(router.sessions),
                        len(router.session_gen),
                        time.monotonic() - started,
                    )
                )
                print(f"  {n:,} sessions: RSS {results.rss[-1][1]:.1f} MiB", flush=True)


async def measure(plan: Plan, *, quiet_wait: float = 20.0) -> Results:
    results = Results(plan)
    results.quiet = await wait_quiet(quiet_wait)
    with tempfile.TemporaryDirectory(prefix="codex-hub-bench-router-") as name:
        tmp = Path(name)
        await _depth(tmp, 0, plan.runs)  # warm-up: code paths, allocator, the store's files
        for depth in plan.depths:
            results.cpu_ms[depth], results.loop_ms[depth] = await _depth(tmp, depth, plan.runs)
            print(
                f"  depth {depth:,}: {results.cpu_ms[depth]:.3f} ms CPU per run "
                f"({results.loop_ms[depth]:.3f} ms in the event loop's thread)",
                flush=True,
            )
        await _sessions(tmp, plan, results)
    return results


def report(results: Results) -> str:
    plan = results.plan
    first = results.cpu_ms[plan.depths[0]]
    loop_first = results.loop_ms[plan.depths[0]]
    depth_rows = [
        [
            f"{depth:,}",
            f"{results.loop_ms[depth]:.3f}",
            f"{results.loop_ms[depth] / loop_first:.2f}",
            f"{ms:.3f}",
            f"{ms / first:.2f}",
        ]
        for depth, ms in results.cpu_ms.items()
    ]
    rss_rows = [
        [f"{n:,}", f"{mib:.1f}", f"{entries:,}", f"{gens:,}", f"{secs:.0f}"]
        for n, mib, entries, gens, secs in results.rss
    ]
    growth = results.rss[-1][1] - results.rss[1][1] if len(results.rss) > 1 else 0.0
    return "\n".join(
        [
            f"## {TITLE} (`{NAME}`)",
            "",
            *machine_lines(),
            "",
            "**Method.** In process, no HTTP: `hub.router.Router` on a real store (SQLite "
            "in a temp dir) and bus, one fake executor connection, results fed back as "
            "`result` frames. *Queue depth*: with N runs queued in one session (its runs "
            f"run one at a time), {plan.runs:,} more are submitted and {plan.runs:,} "
            "finished (each finish starts the next), at capacity 1; CPU is this process's "
            "(`time.process_time`: event loop and store writer thread) per run. "
            f"*Sessions*: {plan.sessions:,} one-run sessions one after another (submit, "
            "finish with a codex thread); RSS (VmRSS, after a `gc.collect()`) and the "
            "router's per-session entries at every tenth. The machine was "
            f"{results.quiet:.2f} cores busy at the start.",
            "",
            "### CPU per run by queue depth (one session)",
            "",
            "The event loop's thread (`time.thread_time`) is the router, the bus and the "
            "hand-off to the store; the whole process adds the store's writer thread, "
            "whose work per run grows with the store itself (issue #19, point 2).",
            "",
            render_table(
                [
                    "runs queued",
                    "event loop CPU ms per run",
                    "vs depth 1",
                    "process CPU ms per run",
                    "vs depth 1",
                ],
                depth_rows,
            ),
            "",
            "### Memory over one-run sessions",
            "",
            f"RSS from the first tenth to the end: {growth:+.1f} MiB.",
            "",
            render_table(
                [
                    "sessions done",
                    "RSS (MiB)",
                    "router.sessions entries",
                    "session_gen entries",
                    "elapsed (s)",
                ],
                rss_rows,
            ),
        ]
    )


class _Options(Protocol):
    quick: bool
    quiet_wait: float


async def main(options: _Options) -> str:
    """``python -m bench router``: measure and return the markdown section."""
    plan = QUICK if options.quick else FULL
    return report(await measure(plan, quiet_wait=options.quiet_wait))


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    print(report(asyncio.run(measure(QUICK if quick else FULL, quiet_wait=5.0))))
