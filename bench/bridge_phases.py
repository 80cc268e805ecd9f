"""What the chat-bridge suites (``slack``, ``telegram``) share: phases, clocks, the report.

Both suites send requests through a real bridge to a dry-run executor and read four
clocks per request: the request pushed by the bench, the run created / started /
finished in the hub's store, and the reply received by the fake platform. A
:class:`Phase` holds one load's :class:`Sample` s; :func:`closed_phase` and
:func:`paced_phase` drive the load through a suite's ``one(sender, i)``;
:class:`CpuMeter` charges each phase with the bridge's CPU and the load others put on
the machine; :func:`latency_table` and :func:`cpu_table` render the report's tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from bench.common import (
    BenchError,
    Summary,
    closed_loop,
    cpu_seconds,
    fmt_ms,
    machine_busy_seconds,
    render_table,
)
from testkit.procs import Proc

S = TypeVar("S")

#: The goal of issues #3 and #4, point 9: median and p99 of each held interval.
GOAL_MS = 20.0


@dataclass
class Sample:
    """One request's clocks (wall-clock seconds)."""

    pushed: float
    replied: float
    created: float = 0.0
    started: float = 0.0
    finished: float = 0.0


@dataclass
class Phase:
    """One measured phase: its samples by prompt, the bridge's CPU, others' load."""

    label: str
    load: str
    #: Whether the issue's latency goal applies (not to the saturated phase).
    goal: bool = True
    samples: dict[str, Sample] = field(default_factory=dict)
    elapsed: float = 0.0
    #: CPU seconds of the bridge's process (None when it shares one with the hub).
    bridge_cpu_s: float | None = None
    #: Cores that processes outside the bench kept busy meanwhile (others share the machine).
    others_cores: float = 0.0

    def summary(self, metric: Callable[[Sample], float]) -> Summary:
        """Latency statistics of ``metric`` (seconds) over the phase."""
        return Summary.of([metric(s) for s in self.samples.values()])


#: A reported interval: its name (``**bold**`` when the goal applies to it) and its clock.
Metric = tuple[str, Callable[[Sample], float]]


def metrics(request: str, reply: str) -> list[Metric]:
    """The four intervals of a bridge suite, ``request`` and ``reply`` as the platform says."""
    return [
        (f"{request} -> run created (hub accepted the submit)", lambda s: s.created - s.pushed),
        (f"**{request} -> run started**", lambda s: s.started - s.pushed),
        (f"**run finished -> {reply}**", lambda s: s.replied - s.finished),
        (f"{request} -> reply (whole path, dry run)", lambda s: s.replied - s.pushed),
    ]


# --- the load --------------------------------------------------------------------------


class CpuMeter:
    """CPU seconds over a phase: the bridge's, the bench's own processes', the machine's."""

    def __init__(self, procs: Sequence[Proc], bridge: Proc | None) -> None:
        self.procs = list(procs)
        #: None when the bridge shares its process with the hub: no figure of its own.
        self.bridge = bridge

    def read(self) -> dict[str, float]:
        ours = sum(cpu_seconds(p.pid) for p in self.procs) + cpu_seconds(os.getpid())
        now = {"machine": machine_busy_seconds(), "ours": ours}
        if self.bridge is not None:
            now["bridge"] = cpu_seconds(self.bridge.pid)
        return now

    def account(self, phase: Phase, before: dict[str, float], elapsed: float) -> None:
        """Record the phase's duration, the bridge's CPU and the load others put on the machine."""
        after = self.read()
        phase.elapsed = elapsed
        if "bridge" in before:
            phase.bridge_cpu_s = after["bridge"] - before["bridge"]
        others = (after["machine"] - before["machine"]) - (after["ours"] - before["ours"])
        phase.others_cores = max(0.0, others / elapsed) if elapsed > 0 else 0.0


async def closed_phase(
    phase: Phase,
    meter: CpuMeter,
    senders: Sequence[S],
    count: int,
    one: Callable[[S, int], Awaitable[None]],
    unit: str,
) -> Phase:
    """``count`` requests, one at a time from each sender, each waiting for its reply."""
    free = asyncio.Queue[S]()
    for sender in senders:
        free.put_nowait(sender)

    async def request(i: int) -> None:
        sender = await free.get()
        try:
            await one(sender, i)
        finally:
            free.put_nowait(sender)

    before = meter.read()
    load = await closed_loop(request, len(senders), count=count)
    meter.account(phase, before, load.elapsed)
    if load.errors:
        raise BenchError(f"{len(load.errors)} {unit}s failed; first: {load.errors[0]}")
    return phase


async def paced_phase(
    phase: Phase,
    meter: CpuMeter,
    senders: Sequence[S],
    rate: float,
    count: int,
    one: Callable[[S, int], Coroutine[Any, Any, None]],
    unit: str,
) -> Phase:
    """``count`` requests at ``rate`` per second (open loop), round-robin over ``senders``."""
    loop = asyncio.get_running_loop()
    before = meter.read()
    start = loop.time()
    tasks: list[asyncio.Task[None]] = []
    for i in range(count):
        await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
        sender = senders[i % len(senders)]
        tasks.append(asyncio.create_task(one(sender, i), name=f"bench:{phase.label}:{i}"))
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    meter.account(phase, before, loop.time() - start)
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    if errors:
        raise BenchError(f"{len(errors)} {unit}s failed; first: {errors[0]!r}")
    return phase


def read_store(db: Path, tag: str, phase: Phase) -> None:
    """Fill in each sample's run clocks from the hub's store (prompts start with ``tag``)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        rows = conn.execute(
            "SELECT prompt, created_at, started_at, finished_at FROM runs WHERE prompt LIKE ?",
            (f"{tag} {phase.label} %",),
        ).fetchall()
    for prompt, created, started, finished in rows:
        sample = phase.samples.get(prompt)
        if sample is not None:
            sample.created, sample.started, sample.finished = created, started, finished
    missing = [p for p, s in phase.samples.items() if not (s.started and s.finished)]
    if missing:
        raise BenchError(f"{len(missing)} runs missing from the store, e.g. {missing[0]!r}")


async def wait_bridge(
    session: aiohttp.ClientSession,
    base: str,
    headers: dict[str, str],
    procs: Sequence[Proc],
    bridge: Proc,
    platform: str,
) -> None:
    """Until the hub at ``base`` lists a bridge of ``platform`` among its nodes."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for part in procs:
            part.check_alive()
        async with session.get(f"{base}/api/nodes", headers=headers) as resp:
            nodes = (await resp.json()).get("nodes", [])
        if any(n.get("platform") == platform for n in nodes):
            return
        await asyncio.sleep(0.05)
    raise BenchError(f"the {platform} bridge never reached the hub:\n{bridge.tail(30)}")


# --- the report --------------------------------------------------------------------------


def latency_table(phases: Sequence[Phase], measured: Sequence[Metric], unit: str) -> str:
    """Every phase's every interval: count, p50, p90, p99 and max in ms."""
    rows = []
    for phase in phases:
        for name, metric in measured:
            summary = phase.summary(metric)
            rows.append(
                [
                    f"{phase.label} ({phase.load})",
                    name,
                    f"{summary.count:,}",
                    fmt_ms(summary.p50),
                    fmt_ms(summary.p90),
                    fmt_ms(summary.p99),
                    fmt_ms(summary.max),
                ]
            )
    headers = ["phase", "interval", f"{unit}s", "p50 ms", "p90 ms", "p99 ms", "max ms"]
    return render_table(headers, rows)


def goal_met(phases: Sequence[Phase], measured: Sequence[Metric]) -> bool:
    """True when every held phase keeps the median and p99 of each bold interval in goal."""
    for phase in phases:
        if not phase.goal:
            continue
        for name, metric in measured:
            if name.startswith("**"):
                summary = phase.summary(metric)
                if summary.p50 > GOAL_MS or summary.p99 > GOAL_MS:
                    return False
    return True


def cpu_table(phases: Sequence[Phase], unit: str) -> str:
    """Per phase: the rate, the bridge's CPU per request, and others' load on the machine."""
    rows = [
        [
            phase.label,
            f"{len(phase.samples) / phase.elapsed:,.0f}" if phase.elapsed else "-",
            "-"
            if phase.bridge_cpu_s is None
            else f"{1000.0 * phase.bridge_cpu_s / max(1, len(phase.samples)):.2f}",
            f"{phase.others_cores:.2f}",
        ]
        for phase in phases
    ]
    headers = [
        "phase",
        f"{unit}s/s",
        f"bridge CPU ms per {unit}",
        "others' load (cores)",
    ]
    return render_table(headers, rows)


def yes(ok: bool) -> str:
    """The goal's verdict, in bold."""
    return "**yes**" if ok else "**no**"
