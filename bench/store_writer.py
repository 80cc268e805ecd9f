"""Suite ``store``: the store's CPU per run, with the run ids the hub makes against random
ones, on an empty store and on one of 200k runs.

In process, no HTTP: a real `hub.store.Store` (SQLite in a temp dir) written the way the
router writes a run (its insert, two state changes and a codex event posted, its end
awaited), 64 runs at a time. CPU is this process's (`time.process_time`: the event
loop, the store's writer and its checkpointer); the two kinds of ids take turns, each
on a fresh copy of the same store file. The 200k runs are written first with random
ids (as a store made before ids grew with time holds them).
"""

from __future__ import annotations

import asyncio
import random
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import machine_lines, render_table, wait_quiet
from bench.growth import bulk_insert
from hub.store import Run, Store, new_run_id, op_insert_run, op_record
from hub.store.sql import finish_run

NAME = "store"
TITLE = "Store: CPU per run by kind of run id and store size"

BATCH = 64


@dataclass(frozen=True)
class Plan:
    sizes: tuple[int, ...] = (0, 200_000)
    runs: int = 12_800
    rounds: int = 2


FULL = Plan()
QUICK = Plan(sizes=(0, 5_000), runs=640, rounds=1)


@dataclass
class Measure:
    size: int
    ids: str
    runs: int
    seconds: float
    cpu: float

    @property
    def cpu_us(self) -> float:
        return self.cpu / self.runs * 1e6


def _random_ids() -> Callable[[], str]:
    rng = random.Random(secrets.randbits(64))
    return lambda: f"run_{rng.getrandbits(64):016x}"


IDS: dict[str, Callable[[], Callable[[], str]]] = {
    "time-ordered (the hub's)": lambda: new_run_id,
    "random (before)": _random_ids,
}


async def _write(db: Path, runs: int, make_id: Callable[[], str]) -> tuple[float, float]:
    """Write ``runs`` runs as the router does; (seconds, CPU seconds) after a warm-up."""
    rng = random.Random(3)
    async with Store(db) as store:

        async def one() -> None:
            now = time.time()
            run = Run(
                id=make_id(),
                prompt=f"please deploy the service number {rng.randrange(10**6)}",
                origin={"source": "http"},
                source="http",
                created_at=now,
                updated_at=now,
                principal="bench",
            )
            store.post(op_insert_run, run)
            assigned = {"state": "assigned", "executor": "ex"}
            store.post(op_record, run.id, assigned, (1, now, "state", assigned, None))
            running = {"state": "running", "started_at": now}
            store.post(op_record, run.id, running, (2, now, "state", running, 1))
            item = {"type": "item.completed", "text": "done"}
            store.post(op_record, run.id, None, (3, now, "codex", item, 2))
            run.state, run.answer, run.finished_at = "succeeded", "done", time.time()
            final = (4, now, "state", {"state": "succeeded"}, None)
            await store.call(finish_run, run, None, None, final)

        for _ in range(5):
            await asyncio.gather(*(one() for _ in range(BATCH)))
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(runs // BATCH):
            await asyncio.gather(*(one() for _ in range(BATCH)))
        return time.perf_counter() - t0, time.process_time() - c0


def _fresh_copy(base: Path, db: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copy(base, db)


async def main(options: Any) -> str:
    plan = QUICK if options.quick else FULL
    quiet = await wait_quiet(options.quiet_wait)
    measures: list[Measure] = []
    with tempfile.TemporaryDirectory(prefix="codex-hub-store-") as tmp_name:
        tmp = Path(tmp_name)
        for size in plan.sizes:
            base = tmp / f"base-{size}.db"
            async with Store(base):
                pass  # the schema
            if size:
                await asyncio.to_thread(bulk_insert, base, size, "bench", size)
            for round_ in range(plan.rounds):
                kinds = list(IDS) if round_ % 2 == 0 else list(reversed(IDS))
                for kind in kinds:
                    db = tmp / "run.db"
                    await asyncio.to_thread(_fresh_copy, base, db)
                    seconds, cpu = await _write(db, plan.runs, IDS[kind]())
                    measure = Measure(size, kind, plan.runs // BATCH * BATCH, seconds, cpu)
                    measures.append(measure)
                    print(
                        f"  {size:>7} runs stored, {kind}: {measure.runs / seconds:,.0f} "
                        f"runs/s, {measure.cpu_us:.1f} µs CPU per run",
                        flush=True,
                    )
    return report(plan, measures, quiet)


def report(plan: Plan, measures: list[Measure], quiet: float) -> str:
    rows = []
    for size in plan.sizes:
        for kind in IDS:
            mine = [m for m in measures if m.size == size and m.ids == kind]
            cpu = [f"{m.cpu_us:.1f}" for m in mine]
            rate = [f"{m.runs / m.seconds:,.0f}" for m in mine]
            rows.append([f"{size:,}", kind, ", ".join(rate), ", ".join(cpu)])
    table = render_table(
        ["runs stored", "run ids", "runs/s (each round)", "CPU µs per run (each round)"], rows
    )
    return "\n".join(
        [
            f"## {TITLE} (`{NAME}`)",
            "",
            *machine_lines(),
            f"- Machine busy before the start: {quiet:.2f} cores",
            "",
            "Method: in process, a `hub.store.Store` written as the router writes a run "
            "(its insert, two state changes and a codex event posted, its end awaited), "
            f"{BATCH} runs at a time, {plan.runs:,} runs per measurement after 320 of "
            "warm-up, each on a fresh copy of the same store file; the two kinds of ids "
            f"take turns ({plan.rounds} rounds). CPU is the process's: the event loop, "
            "the writer and the checkpointer. The stored runs were written first with "
            "random ids, as a store made before run ids grew with time holds them.",
            "",
            table,
        ]
    )
