"""Suite ``growth``: the hub's tail, a search's cost and its memory as the store grows.

One hub (``codex-hub serve``) and a dry-run executor run as processes, as in
:mod:`bench.hub_latency`, on one store that grows from empty to 200k runs. Driving
200k runs through the hub would take most of the bench's time, so between steps the
bulk is written straight into the store file (another SQLite connection, while the
hub is idle), with the hub's own schema: the run row, five events, the search indexes.
At each step:

- 64 concurrent chat completions against the hub, then against the floor (a bare
  aiohttp server in its own process, :mod:`bench.echo_server`), back to back: p99 and
  throughput, the hub's as a share of the floor's;
- 16 concurrent chat completions alone, and again while one client, in a process of
  its own (:mod:`bench.searcher`), searches back to back (``GET /api/runs?q=<a word of
  the prompts>``, as an API key that sees only its own runs), in rounds that take
  turns (alone first, then searching first, ...): the chat p99 of each way's requests
  pooled, and each search's latency. The p99 of one phase of 2,000 requests moves by up
  to a third between two identical phases here;
  pooled over rounds that take turns, the machine's drift falls on both sides;
- the hub's resident memory (VmRSS), its reader processes' together, and the store's size.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.common import (
    ROOT,
    BenchError,
    LoadResult,
    Summary,
    closed_loop,
    cpu_seconds,
    fmt_ms,
    machine_busy_seconds,
    machine_lines,
    percentile,
    render_table,
    wait_quiet,
)
from bench.hub_latency import ChatClient, running_echo, running_hub
from hub.auth import principal_for_key
from testkit.procs import children, clean_env, rss_kib

NAME = "growth"
TITLE = "Growth: the store from empty to 200k runs"

#: Issue 19's goals (points 2 and 3).
GOAL_P99_64_MS = 40.0
GOAL_SHARE_OF_FLOOR = 0.40
GOAL_SEARCH_MS = 20.0
GOAL_SEARCH_IMPACT = 0.10


@dataclass(frozen=True)
class Plan:
    """The store sizes measured and the load at each."""

    steps: tuple[int, ...] = (0, 50_000, 100_000, 200_000)
    requests_64: int = 4000
    #: Requests of each 16-concurrent phase, and the rounds of the two phases.
    requests_16: int = 2000
    rounds_16: int = 8
    warmup: int = 300


FULL = Plan()
QUICK = Plan(steps=(0, 5_000), requests_64=400, requests_16=150, rounds_16=2, warmup=100)

#: Words the bulk prompts are made of (and the searches look for).
_VOCABULARY = [
    f"{a}{b}"
    for a in ("deploy", "rotate", "check", "build", "review", "migrate", "index", "trace")
    for b in ("", "s", "ing", "ed", "er", "ment", "able", "ion")
]


@dataclass
class Step:
    """What one store size measured."""

    runs: int
    hub_64: LoadResult
    floor_64: LoadResult
    chat_16: LoadResult
    chat_16_searching: LoadResult
    searches: list[float] = field(default_factory=list)
    rss_kib: int = 0
    #: The hub's reader processes (lists and searches), together.
    readers_rss_kib: int = 0
    db_bytes: int = 0
    others_cores: float = 0.0
    #: CPU time of the hub's process per run at 64 concurrent, in ms.
    hub_cpu_ms: float = 0.0
    bulk_s: float = 0.0
    #: 95% interval of the impact (see :func:`impact_interval`), None with one round.
    impact_ci: tuple[float, float] | None = None


def bulk_insert(db: Path, count: int, principal: str, seed: int) -> None:
    """Write ``count`` finished runs (five events each) into the store at ``db``."""
    # Here, not at the top: the store's internals are this function's business only.
    from hub.store import Run
    from hub.store.sql import RUN_FIELDS, encode, index_new_runs

    rng = random.Random(seed)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=10000")
    try:
        head = f"INSERT INTO runs ({', '.join(RUN_FIELDS)}) VALUES "
        row = "(" + ", ".join("?" * len(RUN_FIELDS)) + ")"
        done = 0
        while done < count:
            chunk = min(2000, count - done)
            now = time.time()
            rows: list[Any] = []
            for _ in range(chunk):
                words = " ".join(rng.choice(_VOCABULARY) for _ in range(8))
                run = Run(
                    id=f"run_{rng.getrandbits(64):016x}",
                    prompt=f"please {words} number {rng.randrange(10**6)}",
                    origin={"source": "http"},
                    source="http",
                    created_at=now,
                    updated_at=now,
                    state="succeeded",
                    session_key=f"api:{principal}:{rng.getrandbits(48):012x}",
                    user=None,
                    executor="bench-executor",
                    answer=f"done: {words}",
                    started_at=now,
                    finished_at=now,
                    principal=principal,
                )
                rows.append([encode(name, getattr(run, name)) for name in RUN_FIELDS])
            conn.execute("BEGIN IMMEDIATE")
            last = int(conn.execute("SELECT COALESCE(MAX(n), 0) FROM runs").fetchone()[0])
            for start in range(0, chunk, 500):
                part = rows[start : start + 500]
                conn.execute(head + ", ".join([row] * len(part)), [v for r in part for v in r])
            index_new_runs(conn, last)
            event = orjson.dumps({"state": "running"}).decode()
            conn.executemany(
                "INSERT INTO events (run_n, seq, ts, kind, data, exec_seq) "
                "VALUES (?, ?, ?, 'state', ?, NULL)",
                [
                    (n, seq, now, event)
                    for n in range(last + 1, last + chunk + 1)
                    for seq in range(1, 6)
                ],
            )
            conn.execute("COMMIT")
            done += chunk
        # Start each step from a WAL copied back, as a hub idle for a while has it.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    # And with the bulk on disk: the kernel writing its pages back would otherwise land
    # in the step's first phase (the hub's commits waiting behind a write-back).
    os.sync()


async def _load(base_url: str, api_key: str, concurrency: int, count: int, tag: str) -> LoadResult:
    async with ChatClient(base_url, api_key, concurrency) as client:
        client.tag = "pool"
        await closed_loop(client.complete, concurrency, count=concurrency * 2)
        client.tag = tag
        return await closed_loop(client.complete, concurrency, count=count)


async def main(options: Any) -> str:
    """Run every step; the markdown section."""
    plan = QUICK if options.quick else FULL
    quiet = await wait_quiet(options.quiet_wait)
    print(f"machine busy before the start: {quiet:.2f} cores", flush=True)
    steps: list[Step] = []
    with tempfile.TemporaryDirectory(prefix="codex-hub-growth-") as tmp_name:
        tmp = Path(tmp_name)
        async with running_echo(tmp) as echo, running_hub(tmp) as hut:
            principal = principal_for_key(hut.api_key)
            await _load(hut.base_url, hut.api_key, 16, plan.warmup, "warmup")
            # The first read starts the hub's reader process (~0.35 s, once).
            await _search_once(hut.base_url, hut.api_key)
            stored = 0
            for target in plan.steps:
                started = time.monotonic()
                if target > stored:
                    await asyncio.to_thread(bulk_insert, hut.db, target - stored, principal, target)
                    stored = target
                bulk_s = time.monotonic() - started
                pids = (hut.hub.pid, hut.executor.pid, *echo.pids.values())
                busy0, t0, ours0 = machine_busy_seconds(), time.monotonic(), _ours(pids)
                hub_cpu0 = cpu_seconds(hut.hub.pid)
                hub_64 = await _load(hut.base_url, hut.api_key, 64, plan.requests_64, "g64")
                # Its warm-up (two requests per client) is in the window too.
                done = len(hub_64.latencies) + 2 * 64
                hub_cpu = (cpu_seconds(hut.hub.pid) - hub_cpu0) / done
                floor_64 = await _load(echo.base_url, "", 64, plan.requests_64, "g64")
                searches: list[float] = []
                searcher_cpu: list[float] = []
                alone: list[LoadResult] = []
                searching: list[LoadResult] = []
                for round_ in range(plan.rounds_16):
                    for search in (False, True) if round_ % 2 == 0 else (True, False):
                        if search:
                            phase = await _load_searching(hut, plan, searches, searcher_cpu)
                            searching.append(phase)
                        else:
                            alone.append(
                                await _load(hut.base_url, hut.api_key, 16, plan.requests_16, "g16")
                            )
                chat_16, chat_16_searching = _pooled(alone), _pooled(searching)
                # What the rest of the machine (others' tests) used meanwhile.
                ours = _ours(pids) - ours0 + sum(searcher_cpu)
                busy = (machine_busy_seconds() - busy0 - ours) / max(1e-9, time.monotonic() - t0)
                step = Step(
                    runs=target,
                    hub_64=hub_64,
                    floor_64=floor_64,
                    chat_16=chat_16,
                    chat_16_searching=chat_16_searching,
                    searches=searches,
                    rss_kib=rss_kib(hut.hub.pid),
                    readers_rss_kib=sum(
                        rss_kib(pid) for pid in children(hut.hub.pid, b"hub.store.readers")
                    ),
                    db_bytes=_db_bytes(hut.db),
                    others_cores=busy,
                    hub_cpu_ms=hub_cpu * 1e3,
                    bulk_s=bulk_s,
                    impact_ci=impact_interval(alone, searching),
                )
                steps.append(step)
                print(_line(step), flush=True)
    return report(plan, steps, quiet)


async def _load_searching(
    hut: Any, plan: Plan, searches: list[float], cpu: list[float]
) -> LoadResult:
    """16 concurrent chat completions while one more client, in a process of its own
    (:mod:`bench.searcher`), searches back to back; its latencies join ``searches``, its
    CPU seconds ``cpu``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.searcher",
        "--url",
        hut.base_url,
        "--key",
        hut.api_key,
        "--words",
        ",".join(_VOCABULARY),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env=clean_env(),
        start_new_session=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        if not (await asyncio.wait_for(proc.stdout.readline(), timeout=60)):
            raise BenchError(f"the searcher exited before its first search ({await proc.wait()})")
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
        result = await _load(hut.base_url, hut.api_key, 16, plan.requests_16, "g16s")
        proc.stdin.write(b"stop\n")
        await proc.stdin.drain()
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
        if not line:
            raise BenchError(f"the searcher failed ({await proc.wait()})")
        report = json.loads(line)
        searches += report["latencies"]
        cpu.append(report["cpu_s"])
        return result
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


def impact(alone: list[float], searching: list[float]) -> float:
    """How much searching moved the chats' p99: p99(searching) / p99(alone) - 1."""
    return percentile(searching, 99) / percentile(alone, 99) - 1


def impact_interval(
    alone: list[LoadResult], searching: list[LoadResult], resamples: int = 400, seed: int = 19
) -> tuple[float, float] | None:
    """A 95% interval of :func:`impact` over the pooled rounds, by bootstrap: rounds
    drawn with replacement, each round's two phases kept together (they share the
    machine's drift), the impact of the pooled draws; its 2.5th and 97.5th percentiles.
    None with fewer than two rounds."""
    if len(alone) != len(searching):
        raise ValueError("each round has both phases")
    if len(alone) < 2:
        return None
    rng = random.Random(seed)
    rounds = range(len(alone))
    draws = []
    for _ in range(resamples):
        picked = [rng.choice(rounds) for _ in rounds]
        draws.append(
            impact(
                [x for i in picked for x in alone[i].latencies],
                [x for i in picked for x in searching[i].latencies],
            )
        )
    return percentile(draws, 2.5), percentile(draws, 97.5)


def _pooled(results: list[LoadResult]) -> LoadResult:
    """The phases' requests as one result: their latencies, their overall rate."""
    return LoadResult(
        latencies=[x for r in results for x in r.latencies],
        errors=[e for r in results for e in r.errors],
        elapsed=sum(r.elapsed for r in results),
    )


async def _search_once(base_url: str, api_key: str) -> None:
    """One search (the first starts the hub's reader process)."""
    headers = {"Authorization": f"Bearer {api_key}"}
    async with aiohttp.ClientSession(base_url) as http:
        async with http.get("/api/runs", params={"q": _VOCABULARY[0]}, headers=headers) as resp:
            body = await resp.read()
    if resp.status != 200:
        raise BenchError(f"search: HTTP {resp.status}: {body[:300]!r}")


def _ours(pids: tuple[int, ...]) -> float:
    """CPU seconds of the bench's processes (and of this one, the clients) so far."""
    return sum(cpu_seconds(pid) for pid in pids) + time.process_time()


def _db_bytes(db: Path) -> int:
    return sum(os.path.getsize(p) for p in (db, Path(f"{db}-wal")) if os.path.exists(p))


def _line(step: Step) -> str:
    h, f = Summary.of(step.hub_64.latencies), Summary.of(step.floor_64.latencies)
    c, s = Summary.of(step.chat_16.latencies), Summary.of(step.chat_16_searching.latencies)
    q = Summary.of(step.searches) if step.searches else None
    return (
        f"  {step.runs:>7} runs: 64c p99 {fmt_ms(h.p99)} ms {step.hub_64.rate:.0f}/s "
        f"hub CPU {step.hub_cpu_ms:.3f} ms/run "
        f"(floor {fmt_ms(f.p99)} ms {step.floor_64.rate:.0f}/s); 16c p99 {fmt_ms(c.p99)} -> "
        f"{fmt_ms(s.p99)} ms searching ({_impact_text(step)}); "
        f"search p50 {fmt_ms(q.p50) if q else '-'} "
        f"p99 {fmt_ms(q.p99) if q else '-'} ms ({len(step.searches)}); "
        f"RSS {step.rss_kib // 1024} MiB (readers {step.readers_rss_kib // 1024}); "
        f"others busy {step.others_cores:.2f} cores"
    )


def _impact_text(step: Step) -> str:
    moved = impact(step.chat_16.latencies, step.chat_16_searching.latencies)
    ci = step.impact_ci
    return f"{moved:+.0%}" + (f", 95% {ci[0]:+.0%} .. {ci[1]:+.0%}" if ci else "")


def report(plan: Plan, steps: list[Step], quiet: float) -> str:
    """The suite's section of docs/benchmarks.md."""
    rows = []
    for step in steps:
        h, f = Summary.of(step.hub_64.latencies), Summary.of(step.floor_64.latencies)
        c, s = Summary.of(step.chat_16.latencies), Summary.of(step.chat_16_searching.latencies)
        q = Summary.of(step.searches) if step.searches else None
        share = step.hub_64.rate / step.floor_64.rate if step.floor_64.rate else 0.0
        ci = step.impact_ci
        rows.append(
            [
                f"{step.runs:,}",
                fmt_ms(h.p99),
                fmt_ms(f.p99),
                f"{step.hub_64.rate:,.0f}",
                f"{step.floor_64.rate:,.0f}",
                f"{share:.0%}",
                f"{step.hub_cpu_ms:.2f}",
                fmt_ms(c.p99),
                fmt_ms(s.p99),
                f"{impact(step.chat_16.latencies, step.chat_16_searching.latencies):+.0%}",
                f"{ci[0]:+.0%} .. {ci[1]:+.0%}" if ci else "-",
                fmt_ms(q.p50) if q else "-",
                fmt_ms(q.p99) if q else "-",
                str(len(step.searches)),
                f"{step.rss_kib / 1024:.0f}",
                f"{step.readers_rss_kib / 1024:.0f}",
                f"{step.db_bytes / 2**20:.0f}",
                f"{step.others_cores:.2f}",
            ]
        )
    table = render_table(
        [
            "runs stored",
            "64c p99 ms",
            "floor 64c p99 ms",
            "hub req/s",
            "floor req/s",
            "hub/floor",
            "hub CPU ms/run",
            "16c p99 ms",
            "16c p99 ms, searching",
            "impact",
            "impact, 95% interval",
            "search p50 ms",
            "search p99 ms",
            "searches",
            "hub RSS MiB",
            "readers RSS MiB",
            "store MiB",
            "others busy (cores)",
        ],
        rows,
    )
    return "\n".join(
        [
            f"## {TITLE}",
            "",
            *machine_lines(),
            f"- Machine busy before the start: {quiet:.2f} cores (2 cores shared with "
            "other engineers' tests; the last column is what the machine did besides "
            "the bench's processes during the step's measurements)",
            "",
            "Method: one `codex-hub serve` and one dry-run `codex-hub executor`, as "
            "processes, on one store. Between steps the bulk of the runs is written "
            "straight into the store file (another SQLite connection while the hub is "
            "idle: a finished run with five events, indexed for search, as the hub "
            "writes them), because driving 200k runs through the hub takes too long; "
            "the WAL is then checkpointed. The bench process's garbage collector is "
            "paused while a phase runs (collected and frozen before it). At each step: "
            f"{plan.requests_64} chat completions from 64 concurrent clients against the "
            "hub, then as many against the floor (a bare aiohttp server in its own "
            f"process); {plan.rounds_16} rounds of {plan.requests_16} from 16 concurrent "
            "clients alone and as many while one more client, a process of its own "
            "(`bench/searcher.py`: another user, not the chat clients' event loop), "
            "searches back to back (`GET /api/runs?q=<a word of the prompts>`, as an API "
            "key that sees only its own runs: every stored run is its), the two taking "
            "turns to go first; the 16c p99s are those of each way's requests pooled. "
            "*Impact*: how much searching moved that p99; its *95% interval* comes from "
            "a bootstrap over the rounds (each round's two phases drawn together). "
            "*Hub CPU ms/run*: the hub process's CPU time (/proc) over the 64-concurrent "
            "phase, per request. "
            "Goals (issue 19): 64c p99 <= "
            f"{GOAL_P99_64_MS:.0f} ms and >= {GOAL_SHARE_OF_FLOOR:.0%} of the floor's "
            f"throughput; a search under {GOAL_SEARCH_MS:.0f} ms moving the 16c p99 by "
            f"under {GOAL_SEARCH_IMPACT:.0%}.",
            "",
            table,
        ]
    )
