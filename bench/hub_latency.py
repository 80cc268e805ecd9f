"""Suite ``hub``: the latency the hub adds to a chat completion, and runs per second.

Topology, as deployed: the hub (``codex-hub serve``, store on, in a temp dir) and one
executor (``codex-hub executor`` with ``EXEC_DRY_RUN=true``, which answers at once with
the prompt) run as separate processes on 127.0.0.1; this process is the HTTP client
(one aiohttp session whose pool holds as many connections as there are workers).

The dry-run engine takes ~0 time, so the round trip of ``POST /v1/chat/completions``
*is* the latency the hub path adds (HTTP -> hub -> executor -> hub -> HTTP), client
included. The same client against :mod:`bench.echo_server` (a trivial aiohttp server
in its own process) measures the client's and the framework's own share; the table
shows both and their difference.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench import profiling
from bench.common import (
    ROOT,
    BenchError,
    LoadResult,
    Summary,
    bench_proc,
    closed_loop,
    cpu_seconds,
    fmt_ms,
    free_port,
    machine_busy_seconds,
    machine_lines,
    open_loop,
    render_table,
    wait_quiet,
    wait_ready,
)
from kernel.credentials import derive
from testkit.procs import Proc, clean_env, codex_hub_argv, rss_kib

NAME = "hub"
TITLE = "Hub: added latency and sustained throughput"
MODEL = "codex"

#: Connections an open loop may use (and requests it may have under way).
OPEN_LOOP_POOL = 64

#: Issue point 10, on this 2-core machine.
GOAL_P50_MS = 2.0
GOAL_P99_MS = 10.0
GOAL_CONCURRENCY = 16
GOAL_RUNS_PER_S = 1000.0


@dataclass(frozen=True)
class Plan:
    """How much load each phase sends."""

    warmup: int = 500
    levels: tuple[tuple[int, int], ...] = ((1, 2000), (16, 5000), (64, 5000))
    stream: tuple[int, int] = (16, 2000)
    #: Open loops: (runs a second on average, Poisson arrivals; how many).
    rates: tuple[tuple[float, int], ...] = ((100.0, 500), (300.0, 1500))
    sustain_concurrency: int = 64
    sustain_s: float = 10.0
    profile_s: float = 8.0


FULL = Plan()
QUICK = Plan(
    warmup=100,
    levels=((1, 200), (16, 500), (64, 500)),
    stream=(16, 200),
    rates=((100.0, 100), (300.0, 300)),
    sustain_s=2.0,
    profile_s=2.0,
)


# --- the client ------------------------------------------------------------------


class ChatClient:
    """Sends chat completions to one server and checks each answer is the prompt."""

    def __init__(self, base_url: str, api_key: str, concurrency: int) -> None:
        self.url = f"{base_url}/v1/chat/completions"
        self.headers = {"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"}
        self.concurrency = concurrency
        self.session: aiohttp.ClientSession | None = None
        #: Prompts start with the tag, so the hub's store can tell the phases apart.
        self.tag = "bench"
        #: prompt -> (wall clock when sent, wall clock when the answer was read).
        self.wall: dict[str, tuple[float, float]] = {}

    async def __aenter__(self) -> ChatClient:
        connector = aiohttp.TCPConnector(limit=self.concurrency, limit_per_host=self.concurrency)
        self.session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=30)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()

    @staticmethod
    def _body(prompt: str, stream: bool) -> bytes:
        payload: dict[str, object] = {
            "model": MODEL,
            "messages": [{"role": "user", "content": prompt}],
        }
        if stream:
            payload["stream"] = True
        return json.dumps(payload).encode()

    async def complete(self, i: int) -> None:
        """One non-streaming completion; raises unless the answer is the prompt."""
        assert self.session is not None
        prompt = f"{self.tag} {i}"
        sent = time.time()
        async with self.session.post(
            self.url, data=self._body(prompt, False), headers=self.headers
        ) as resp:
            raw = await resp.read()
        self.wall[prompt] = (sent, time.time())
        if resp.status != 200:
            raise BenchError(f"HTTP {resp.status}: {raw[:300]!r}")
        answer = json.loads(raw)["choices"][0]["message"]["content"]
        if answer != prompt:
            raise BenchError(f"answer {answer!r} is not the prompt {prompt!r}")

    async def stream(self, i: int) -> None:
        """One streaming completion, read to ``data: [DONE]``; the prompt must be in it."""
        assert self.session is not None
        prompt = f"{self.tag} {i}"
        needle = json.dumps({"content": prompt})[1:-1].replace(" ", "").encode()
        seen = False
        async with self.session.post(
            self.url, data=self._body(prompt, True), headers=self.headers
        ) as resp:
            if resp.status != 200:
                raise BenchError(f"HTTP {resp.status}: {(await resp.read())[:300]!r}")
            async for line in resp.content:
                if line.startswith(b"data: [DONE]"):
                    break
                seen = seen or needle in line.replace(b" ", b"")
        if not seen:
            raise BenchError(f"the stream did not carry the prompt {prompt!r}")


# --- measuring -------------------------------------------------------------------


@dataclass
class Phase:
    """One measured phase: the load's result and the CPU time each part used during it."""

    label: str
    tag: str
    concurrency: int
    load: LoadResult
    #: CPU seconds during the phase: each server process, "client" (this process),
    #: "others" (the rest of the machine), and threads as "<process> main thread".
    cpu: dict[str, float] = field(default_factory=dict)
    #: prompt -> (wall clock when sent, when answered), for the stage breakdown.
    wall: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: How many times the phase was measured (others loaded the machine).
    attempts: int = 1

    @property
    def summary(self) -> Summary:
        return Summary.of(self.load.latencies)

    @property
    def others_cores(self) -> float:
        """Cores kept busy by processes outside the bench, on average, during the phase."""
        return self.cpu.get("others", 0.0) / self.load.elapsed if self.load.elapsed else 0.0

    def cpu_ms_per_request(self, name: str) -> float:
        done = len(self.load.latencies)
        return self.cpu.get(name, 0.0) * 1000.0 / done if done else 0.0


class Target:
    """A server under load (the hub, or the echo baseline) and its processes' pids."""

    def __init__(
        self,
        name: str,
        base_url: str,
        api_key: str,
        pids: Mapping[str, int],
        noise: Noise | None = None,
    ) -> None:
        self.name = name
        self.base_url = base_url
        self.api_key = api_key
        self.pids = dict(pids)
        self.noise = noise or Noise()

    def _cpu(self) -> tuple[dict[str, float], float]:
        """(CPU seconds of each process and main thread, of the whole machine)."""
        now = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        now["client"] = time.process_time()
        # The main thread's task id is the pid; the others are the store's writer & co.
        threads = {f"{name} main thread": cpu_seconds(pid, pid) for name, pid in self.pids.items()}
        return {**now, **threads}, machine_busy_seconds()

    async def phase(
        self,
        label: str,
        tag: str,
        concurrency: int,
        *,
        stream: bool = False,
        count: int | None = None,
        duration: float | None = None,
        rate: float | None = None,
        during: Callable[[], Awaitable[object]] | None = None,
    ) -> Phase:
        """Measure a loop; again while others loaded the machine (see :class:`Noise`).

        A closed loop of ``concurrency`` workers for ``count`` requests or ``duration``
        seconds; with ``rate``, an open loop of ``count`` requests at that rate on a pool
        of ``concurrency`` connections. Of the attempts, the one measured with the least
        load from others is kept. ``during`` runs alongside the measured loop (the
        profiler); such a phase is measured once.
        """
        attempts: list[Phase] = []
        while True:
            started = time.monotonic()
            if attempts:
                await wait_quiet(self.noise.quiet_wait_s)
            phase = await self._phase_once(
                label,
                f"{tag}.{len(attempts) + 1}",
                concurrency,
                stream=stream,
                count=count,
                duration=duration,
                rate=rate,
                during=during,
            )
            if attempts:  # a retry: its time counts against the budget
                self.noise.spent += time.monotonic() - started
            attempts.append(phase)
            if during is not None or not self.noise.again(phase, len(attempts)):
                break
            print(f"  {'':4} {'':28} others used the machine: measuring again", flush=True)
        best = min(attempts, key=lambda p: p.others_cores)
        best.attempts = len(attempts)
        return best

    async def warm(self, count: int, concurrency: int = 16) -> None:
        """Requests that only warm the server up (caches, the store's pages)."""
        async with ChatClient(self.base_url, self.api_key, concurrency) as client:
            client.tag = "warmup"
            await closed_loop(client.complete, concurrency, count=count)

    async def _phase_once(
        self,
        label: str,
        tag: str,
        concurrency: int,
        *,
        stream: bool,
        count: int | None,
        duration: float | None,
        rate: float | None,
        during: Callable[[], Awaitable[object]] | None,
    ) -> Phase:
        async with ChatClient(self.base_url, self.api_key, concurrency) as client:
            request = client.stream if stream else client.complete
            # Open every connection of the pool before the clock starts.
            client.tag = "pool"
            await closed_loop(request, concurrency, count=concurrency * 4)
            client.tag, client.wall = tag, {}
            before, machine_before = self._cpu()
            if rate is not None and count is not None:
                loop = open_loop(request, rate, count, max_in_flight=concurrency)
            else:
                loop = closed_loop(request, concurrency, count=count, duration=duration)
            if during is None:
                load = await loop
            else:
                load, _ = await asyncio.gather(loop, during())
            after, machine_after = self._cpu()
        cpu = {name: after[name] - before[name] for name in before}
        ours = sum(cpu[name] for name in (*self.pids, "client"))
        # What the machine did besides the bench's own processes (others share it).
        cpu["others"] = max(0.0, machine_after - machine_before - ours)
        phase = Phase(label, tag, concurrency, load, cpu, client.wall)
        print(f"  {self.name:4} {label:28} {_line(phase)}", flush=True)
        return phase


@dataclass
class Noise:
    """When a phase is measured again: others used more than ``max_others`` cores.

    A phase is tried at most ``attempts`` times, and retries stop once they have taken
    ``budget_s`` seconds in all, so a busy machine makes the bench a little slower,
    never endless.
    """

    max_others: float = 0.3
    attempts: int = 3
    budget_s: float = 45.0
    quiet_wait_s: float = 5.0
    #: Seconds the retries have taken so far.
    spent: float = 0.0

    def again(self, phase: Phase, tried: int) -> bool:
        """Whether to measure ``phase`` once more after ``tried`` attempts."""
        return (
            phase.others_cores > self.max_others
            and tried < self.attempts
            and self.spent < self.budget_s
        )


def _line(phase: Phase) -> str:
    s = phase.summary
    return (
        f"n={s.count:6d} p50={fmt_ms(s.p50):>6} p90={fmt_ms(s.p90):>6} "
        f"p99={fmt_ms(s.p99):>6} max={fmt_ms(s.max):>6} ms  {phase.load.rate:7.0f}/s  "
        f"others busy {phase.others_cores:.2f} cores"
        + (f"  ({phase.load.stopped})" if phase.load.stopped else "")
    )


@dataclass
class Results:
    """Everything the suite measured, for the report."""

    plan: Plan
    quiet: float = 0.0
    quiet_wait: float = 0.0
    echo: dict[str, Phase] = field(default_factory=dict)
    hub: dict[str, Phase] = field(default_factory=dict)
    stages: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    rss: dict[str, tuple[int, int]] = field(default_factory=dict)
    db_bytes: int = 0
    profiles: dict[str, profiling.Profile] = field(default_factory=dict)
    profile_phase: Phase | None = None
    profile_note: str = ""
    #: Retries for the hub's phases, and (a smaller budget) for the baseline's.
    noise: Noise = field(default_factory=Noise)
    echo_noise: Noise = field(default_factory=lambda: Noise(budget_s=15.0))


async def _measure(target: Target, plan: Plan, results: dict[str, Phase]) -> None:
    await target.warm(plan.warmup)
    for concurrency, count in plan.levels:
        key = f"c{concurrency}"
        results[key] = await target.phase(
            f"{concurrency} concurrent", key, concurrency, count=count
        )
    for rate, count in plan.rates:
        key = f"r{rate:g}"
        results[key] = await target.phase(
            f"open loop {rate:g}/s", key, OPEN_LOOP_POOL, count=count, rate=rate
        )
    concurrency, count = plan.stream
    results["stream"] = await target.phase(
        f"{concurrency} concurrent, streaming", "stream", concurrency, stream=True, count=count
    )
    results["sustain"] = await target.phase(
        f"sustained {plan.sustain_s:g} s",
        "sustain",
        plan.sustain_concurrency,
        duration=plan.sustain_s,
    )


async def _profile(target: Target, plan: Plan, tmp: Path, results: Results) -> None:
    if profiling.py_spy() is None:
        results.profile_note = (
            "py-spy is not installed in the venv, so no profile was taken "
            "(`.venv/bin/pip install py-spy`, then run again)."
        )
        return
    outs = {name: tmp / f"{name}.pyspy.txt" for name in ("hub", "executor")}

    async def sample() -> None:
        await asyncio.sleep(0.5)  # past the loop's first requests
        await asyncio.gather(
            *(
                profiling.record(target.pids[name], plan.profile_s, out)
                for name, out in outs.items()
            )
        )

    try:
        results.profile_phase = await target.phase(
            "profiled (py-spy)",
            "profile",
            plan.sustain_concurrency,
            duration=plan.profile_s + 1.5,
            during=sample,
        )
    except (OSError, RuntimeError) as exc:
        results.profile_note = f"py-spy could not profile: {exc}"
        return
    results.profiles = {name: profiling.Profile.load(out) for name, out in outs.items()}


#: Stages of a run's round trip, from the client's clock and the times the hub stored.
STAGES = (
    ("http_in", "client sends -> hub creates the run (HTTP, auth, JSON, validation)"),
    ("insert", "run created -> `queued` (awaits `store.insert_run`'s commit)"),
    ("dispatch", "`queued` -> `assigned` (router picks the executor, sends `assign`)"),
    ("executor_in", "`assigned` -> hub has the `running` frame (websocket round trip)"),
    ("executor_out", "`running` -> hub has the result (event + result frames)"),
    ("finish", "result -> client has the answer (`store.finish_run` commit, response)"),
)


def stage_times(
    db: Path, tag: str, wall: Mapping[str, tuple[float, float]]
) -> dict[str, list[float]]:
    """Each stage's duration (s) for every run of phase ``tag``, from the hub's store.

    The hub stamps ``created_at``, each event's ``ts`` and ``finished_at`` with the
    same wall clock the client reads, so the stages add up to the round trip.
    """
    stages: dict[str, list[float]] = {name: [] for name, _ in STAGES}
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        runs = conn.execute(
            "SELECT id, prompt, created_at, finished_at FROM runs WHERE prompt LIKE ?",
            (f"{tag} %",),
        ).fetchall()
        marks: dict[str, dict[str, float]] = {}
        for run_id, kind, data, ts in conn.execute(
            "SELECT r.id, e.kind, e.data, e.ts FROM events e JOIN runs r ON r.n = e.run_n"
            " WHERE r.prompt LIKE ?",
            (f"{tag} %",),
        ):
            name = json.loads(data).get("state", "") if kind == "state" else kind
            marks.setdefault(run_id, {}).setdefault(name, ts)
    for run_id, prompt, created, finished in runs:
        if prompt not in wall or finished is None:
            continue
        sent, received = wall[prompt]
        m = marks.get(run_id, {})
        points = [sent, created, m.get("queued"), m.get("assigned"), m.get("running"), finished]
        points.append(received)
        if any(p is None for p in points):
            continue
        for (name, _), start, end in zip(STAGES, points, points[1:], strict=False):
            stages[name].append(end - start)
    return stages


def _read_store(db: Path, results: Results) -> None:
    results.db_bytes = sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))
    for key, phase in results.hub.items():
        if phase.wall:
            results.stages[key] = stage_times(db, phase.tag, phase.wall)


@dataclass
class HubUnderTest:
    """A running hub and executor: their processes, URL, key and store."""

    hub: Proc
    executor: Proc
    base_url: str
    api_key: str
    db: Path

    def target(self, noise: Noise | None = None) -> Target:
        pids = {"hub": self.hub.pid, "executor": self.executor.pid}
        return Target("hub", self.base_url, self.api_key, pids, noise)


@contextlib.asynccontextmanager
async def running_hub(
    tmp: Path,
    *,
    command: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[HubUnderTest]:
    """``codex-hub serve`` and a dry-run ``codex-hub executor`` in ``tmp``, until exit.

    ``command`` runs codex-hub (default: the venv's console script); ``env`` adds
    settings to both processes (and may replace the executor's, e.g. ``EXEC_DRY_RUN``).
    Both process groups are ended on the way out.
    """
    argv = list(command or codex_hub_argv())
    token = secrets.token_hex(16)
    api_key = "bench-" + secrets.token_hex(8)
    port = free_port()
    db = tmp / "hub.db"
    extra = dict(env or {})
    hub = bench_proc(
        "hub",
        [*argv, "serve"],
        env=clean_env(
            HUB_HOST="127.0.0.1",
            HUB_PORT=str(port),
            HUB_DB=str(db),
            HUB_TOKEN=token,
            HUB_API_KEYS=api_key,
            HUB_MODEL_NAME=MODEL,
            # Every load generator connects from 127.0.0.1: the per-client cap (meant
            # for one hostile neighbour) would count them all as one client.
            HUB_MAX_CONNECTIONS_PER_CLIENT="0",
            **extra,
        ),
        cwd=tmp,  # no .env there: the settings are exactly these
        log_path=tmp / "hub.log",
    )
    executor = bench_proc(
        "executor",
        [*argv, "executor"],
        env=clean_env(
            **{
                "HUB_URL": f"ws://127.0.0.1:{port}/ws",
                "HUB_TOKEN": derive(token, "executor"),
                "EXEC_DRY_RUN": "true",
                "EXEC_CONCURRENCY": "128",
                "EXEC_WORKDIR": str(tmp),
                "NODE_NAME": "bench-executor",
                **extra,  # may override the above (a real codex instead of the dry run)
            }
        ),
        cwd=tmp,
        log_path=tmp / "executor.log",
    )
    async with hub, executor:
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            await wait_ready(
                session,
                f"{base}/readyz",
                procs=[hub, executor],
                headers={"Authorization": f"Bearer {api_key}"},
            )
        try:
            yield HubUnderTest(hub, executor, base, api_key, db)
        except BenchError as exc:
            raise BenchError(f"{exc}\n--- hub log ---\n{hub.tail(30)}") from exc
        hub.check_alive()
        executor.check_alive()


@contextlib.asynccontextmanager
async def running_echo(tmp: Path, noise: Noise | None = None) -> AsyncIterator[Target]:
    """The baseline server (:mod:`bench.echo_server`) in its own process, until exit."""
    port = free_port()
    echo = bench_proc(
        "echo server",
        [sys.executable, "-m", "bench.echo_server", str(port)],
        env=clean_env(PYTHONPATH=str(ROOT)),
        cwd=tmp,
        log_path=tmp / "echo.log",
    )
    async with echo:
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, f"{base}/readyz", procs=[echo])
        yield Target("echo", base, "", {"server": echo.pid}, noise)


async def measure(plan: Plan, *, profile: bool = True, quiet_wait: float = 20.0) -> Results:
    """Start the processes, run every phase, stop everything; the figures."""
    results = Results(plan, quiet_wait=quiet_wait)
    with tempfile.TemporaryDirectory(prefix="codex-hub-bench-") as tmp_name:
        tmp = Path(tmp_name)
        results.quiet = await wait_quiet(quiet_wait)
        print(f"machine busy before the start: {results.quiet:.2f} cores", flush=True)
        # The baseline first, alone on the machine.
        async with running_echo(tmp, results.echo_noise) as echo:
            print("baseline: echo server", flush=True)
            await _measure(echo, plan, results.echo)
        async with running_hub(tmp) as hut:
            print("hub: codex-hub serve + codex-hub executor (dry run)", flush=True)
            target = hut.target(results.noise)
            rss_before = {name: rss_kib(pid) for name, pid in target.pids.items()}
            await _measure(target, plan, results.hub)
            results.rss = {n: (rss_before[n], rss_kib(pid)) for n, pid in target.pids.items()}
            _read_store(hut.db, results)
            if profile:
                await _profile(target, plan, tmp, results)
    return results


# --- the report ------------------------------------------------------------------


def _yes(ok: bool) -> str:
    return "**yes**" if ok else "**no**"


def _latency_table(results: Results) -> str:
    rows = []
    keys = [(f"c{c}", f"{c} concurrent") for c, _ in results.plan.levels]
    keys.append(("stream", f"{results.plan.stream[0]} concurrent, streaming"))
    keys += [(f"r{r:g}", f"open loop, {r:g}/s") for r, _ in results.plan.rates]
    for key, label in keys:
        hub, echo = results.hub[key].summary, results.echo[key].summary
        behind = [
            n for n, r in (("hub", results.hub), ("baseline", results.echo)) if r[key].load.stopped
        ]
        if behind:
            label += f" ({' and '.join(behind)} fell behind: stopped at {OPEN_LOOP_POOL} under way)"
        rows.append(
            [
                label,
                f"{hub.count:,}",
                fmt_ms(hub.p50),
                fmt_ms(hub.p90),
                fmt_ms(hub.p99),
                fmt_ms(hub.max),
                fmt_ms(echo.p50),
                fmt_ms(echo.p99),
                fmt_ms(hub.p50 - echo.p50),
                fmt_ms(hub.p99 - echo.p99),
                f"{results.hub[key].load.rate:,.0f}",
                f"{results.hub[key].others_cores:.2f}",
            ]
        )
    headers = ["load", "requests", "hub p50", "hub p90", "hub p99", "hub max"]
    headers += ["floor p50", "floor p99", "added (hub - floor) p50", "added (hub - floor) p99"]
    headers += ["hub req/s", "others' load (cores)"]
    return render_table(headers, rows)


def _stage_keys(results: Results) -> list[tuple[str, str]]:
    keys = [(f"c{c}", f"{c} conc.") for c, _ in results.plan.levels]
    keys += [(f"r{r:g}", f"{r:g}/s") for r, _ in results.plan.rates]
    return [(key, label) for key, label in keys if results.stages.get(key)]


def _stage_table(results: Results) -> str:
    keys = _stage_keys(results)
    headers = ["stage"]
    for _, label in keys:
        headers += [f"{label} mean", f"{label} p99"]
    rows = []
    for name, label in STAGES:
        row = [label]
        for key, _ in keys:
            values = results.stages[key][name]
            if not values:
                row += ["-", "-"]
                continue
            s = Summary.of(values)
            row += [fmt_ms(s.mean), fmt_ms(s.p99)]
        rows.append(row)
    totals = ["**round trip**"]
    for key, _ in keys:
        per_run = [sum(v) for v in zip(*results.stages[key].values(), strict=True)]
        s = Summary.of(per_run)
        totals += [fmt_ms(s.mean), fmt_ms(s.p99)]
    rows.append(totals)
    return render_table(headers, rows)


def _matched(results: Results) -> str:
    parts = []
    for key, stages in results.stages.items():
        matched = len(next(iter(stages.values()), []))
        parts.append(f"{matched:,} of {len(results.hub[key].load.latencies):,} ({key})")
    return ", ".join(parts)


def _sustain_table(results: Results) -> str:
    rows = []
    for name, phase in (
        ("hub (runs)", results.hub["sustain"]),
        ("baseline (requests)", results.echo["sustain"]),
    ):
        rows.append(
            [
                name,
                str(phase.concurrency),
                f"{phase.load.elapsed:.1f}",
                f"{len(phase.load.latencies):,}",
                f"{phase.load.rate:,.0f}",
                str(len(phase.load.errors)),
                fmt_ms(phase.summary.p50),
                fmt_ms(phase.summary.p99),
                f"{phase.others_cores:.2f}",
            ]
        )
    headers = ["target", "concurrent", "seconds", "completed", "per second", "errors"]
    headers += ["p50 ms", "p99 ms", "others' load (cores)"]
    return render_table(headers, rows)


def _cpu_table(results: Results) -> str:
    rows = []
    keys = [f"c{c}" for c, _ in results.plan.levels]
    keys += ["stream", *(f"r{r:g}" for r, _ in results.plan.rates), "sustain"]
    for key in keys:
        phase, echo = results.hub[key], results.echo[key]
        rows.append(
            [
                phase.label,
                f"{phase.cpu_ms_per_request('hub'):.2f}",
                f"{phase.cpu_ms_per_request('hub main thread'):.2f}",
                f"{phase.cpu_ms_per_request('executor'):.2f}",
                f"{phase.cpu_ms_per_request('client'):.2f}",
                f"{echo.cpu_ms_per_request('server'):.2f}",
                f"{echo.cpu_ms_per_request('client'):.2f}",
            ]
        )
    headers = ["phase", "hub", "hub: event loop thread", "executor", "client (bench)"]
    headers += ["baseline server", "baseline client"]
    return render_table(headers, rows)


def _share_table(
    counts: Counter[str], total: int, cpu_us: float, n: int, what: str = "where"
) -> str:
    total = total or 1
    rows = [
        [f"`{key}`", f"{100.0 * value / total:.1f}%", f"{cpu_us * value / total:.0f}"]
        for key, value in counts.most_common(n)
    ]
    return render_table([what, "share of CPU samples", "µs per run"], rows)


def _profile_section(results: Results) -> list[str]:
    out = ["### Where the hub's and the executor's CPU time goes (py-spy)", ""]
    phase = results.profile_phase
    if phase is None or not results.profiles:
        out += [results.profile_note or "No profile was taken (`--no-profile`).", ""]
        return out
    out += [
        f"A separate closed loop at {phase.concurrency} concurrent "
        f"({len(phase.load.latencies):,} runs, {phase.load.rate:,.0f} runs/s while sampled), "
        f"py-spy sampling the hub and the executor at 250 Hz for {results.plan.profile_s:g} s "
        "(`--nonblocking`; samples of threads on the CPU only). *µs per run* is a share "
        "times the process's CPU time per run in that loop (from /proc). Time inside a C "
        "function (sqlite3, zlib, json, pydantic-core) is charged to the Python line that "
        "calls it.",
        "",
    ]
    for name in ("hub", "executor"):
        profile = results.profiles[name]
        total = profile.total
        cpu_us = phase.cpu_ms_per_request(name) * 1000.0
        threads = ", ".join(
            f"{thread} {100.0 * count / (total or 1):.0f}%"
            for thread, count in profile.by_thread().most_common()
        )
        main = profile.select(lambda s: s.thread == "MainThread")
        out += [
            f"**{name}**: {cpu_us:.0f} µs CPU per run; {total:,} samples; by thread: {threads}.",
            "",
            "By package of the innermost frame, all threads:",
            "",
            _share_table(profile.self_by_package(), total, cpu_us, 12, "package"),
            "",
            "<details><summary>Innermost lines (self time), and the project's functions "
            "anywhere on the stack (inclusive time)</summary>",
            "",
            _share_table(profile.self_by_line(), total, cpu_us, 25, "innermost line"),
            "",
            _share_table(main.inclusive(), total, cpu_us, 25, "function (main thread)"),
            "",
            "</details>",
            "",
        ]
    return out


def _noise_note(results: Results, noise: Noise) -> str:
    phases = [*results.echo.values(), *results.hub.values()]
    retried = [p for p in phases if p.attempts > 1]
    noisy = [p for p in phases if p.others_cores > noise.max_others]
    note = ""
    if retried:
        note += " Measured again: " + ", ".join(
            f"{_owner(results, p)} {p.label} ({p.attempts} attempts)" for p in retried
        )
        note += "."
    if noisy:
        note += (
            f" **Caution: others used more than {noise.max_others:g} cores during "
            + ", ".join(f"{_owner(results, p)} {p.label} ({p.others_cores:.2f})" for p in noisy)
            + "; those figures overstate the latency and understate the rate.**"
        )
    return note


def _owner(results: Results, phase: Phase) -> str:
    return "hub" if any(p is phase for p in results.hub.values()) else "baseline"


def report(results: Results) -> str:
    """The suite's section of docs/benchmarks.md, in markdown."""
    plan = results.plan
    noise = results.noise
    c16 = results.hub[f"c{GOAL_CONCURRENCY}"].summary
    floor16 = results.echo[f"c{GOAL_CONCURRENCY}"].summary
    sustain = results.hub["sustain"]
    p50_ok = c16.p50 <= GOAL_P50_MS
    p99_ok = c16.p99 <= GOAL_P99_MS
    rate_ok = sustain.load.rate >= GOAL_RUNS_PER_S
    levels = ", ".join(f"{count:,} at {c}" for c, count in plan.levels)
    rates = ", ".join(f"{count:,} requests at {r:g}/s" for r, count in plan.rates)
    goals = render_table(
        ["goal (issue point 10)", "target", "measured", "met"],
        [
            [
                f"round trip p50 at {GOAL_CONCURRENCY} concurrent (raw: the floor included)",
                f"<= {GOAL_P50_MS:g} ms",
                f"{fmt_ms(c16.p50)} ms",
                _yes(p50_ok),
            ],
            [
                f"round trip p99 at {GOAL_CONCURRENCY} concurrent (raw: the floor included)",
                f"<= {GOAL_P99_MS:g} ms",
                f"{fmt_ms(c16.p99)} ms",
                _yes(p99_ok),
            ],
            [
                f"added latency p50 at {GOAL_CONCURRENCY} concurrent (hub - floor)",
                "(for reading)",
                f"{fmt_ms(c16.p50 - floor16.p50)} ms",
                "-",
            ],
            [
                f"added latency p99 at {GOAL_CONCURRENCY} concurrent (hub - floor)",
                "(for reading)",
                f"{fmt_ms(c16.p99 - floor16.p99)} ms",
                "-",
            ],
            [
                f"sustained runs/s (closed loop at {plan.sustain_concurrency})",
                f">= {GOAL_RUNS_PER_S:,.0f}",
                f"{sustain.load.rate:,.0f}",
                _yes(rate_ok),
            ],
        ],
    )
    lines = [
        f"## {TITLE} (`{NAME}`)",
        "",
        *machine_lines(),
        "",
        "**Method.** The hub (`codex-hub serve`, store on: SQLite in a temp dir, "
        "`HUB_API_KEYS` set) and one executor (`codex-hub executor`, `EXEC_DRY_RUN=true`, "
        "`EXEC_CONCURRENCY=128`) run as separate processes on 127.0.0.1, `HUB_TOKEN` set "
        "on both, default `LOG_LEVEL=INFO` (to a file). The load comes from the bench "
        "process (on uvloop, like the hub's processes): one aiohttp `ClientSession` whose "
        "pool holds one connection per worker, "
        "each worker sending `POST /v1/chat/completions` one after the other (closed loop) "
        "and checking that the answer is its prompt. The dry-run engine answers at once, so "
        "the round trip is the whole path (HTTP -> hub -> executor -> hub -> HTTP), the "
        "client's own cost included. The **baseline** is the same client "
        "against a trivial aiohttp server in its own process (`bench/echo_server.py`: "
        "decode the request, encode an answer of the same shape), the *floor*; *added "
        "latency* is hub minus floor, the difference of the percentiles (the round trip "
        "itself includes the floor: client, loopback, HTTP framework). All processes "
        "share the machine's "
        f"{os.cpu_count()} cores. Per target: {plan.warmup:,} warm-up requests, then "
        f"{levels} concurrent, {plan.stream[1]:,} streaming at {plan.stream[0]} (read to "
        f"`data: [DONE]`), open loops of {rates} (Poisson arrivals, latency from each "
        "request's scheduled start, so a client that falls behind shows), and a closed "
        f"loop at {plan.sustain_concurrency} for {plan.sustain_s:g} s for the sustained "
        "rate. Each pool is opened before its clock starts, and the bench process's "
        "garbage collector is paused while a phase runs (what is alive is collected and "
        "frozen before it: a full collection of the client's own took 50-60 ms and was "
        "measured as the target's latency). A closed loop keeps N "
        "requests in flight, so its latency is N / throughput (Little's law): it measures "
        "the capacity more than the cost of one request; the open loops and the single "
        "client show the latency below saturation.",
        "",
        "Others may share this machine: before the start the bench waits (at most "
        f"{results.quiet_wait:g} s) for it to be quiet, and each phase records the CPU "
        "that processes outside the bench used meanwhile (*others' load*, in cores, from "
        f"/proc/stat). A phase during which others used more than {noise.max_others:g} "
        f"cores is measured again (at most {noise.attempts} times; retries stop after "
        f"{noise.budget_s:g} s in all for the hub, {results.echo_noise.budget_s:g} s for the "
        "baseline) and the attempt with the least load is kept. At the "
        f"start {results.quiet:.2f} cores were busy.{_noise_note(results, noise)}",
        "",
        f"**Goals met: {'yes' if p50_ok and p99_ok and rate_ok else 'no'}.**",
        "",
        goals,
        "",
        "### Round trip of `POST /v1/chat/completions`, in ms",
        "",
        _latency_table(results),
        "",
        "### Where a run's time goes, in ms (mean and p99 by load)",
        "",
        "Read back from the hub's store after the phases: the hub stamps `created_at`, "
        "each event and `finished_at` with the wall clock, and the client stamps sending "
        "and receiving with the same clock, so the stages of a run add up to its round "
        "trip. Means add up across stages; percentiles do not. Runs matched: "
        f"{_matched(results)}.",
        "",
        _stage_table(results),
        "",
        "### Sustained throughput",
        "",
        _sustain_table(results),
        "",
        "### CPU time per request, in ms (from /proc/PID/stat)",
        "",
        _cpu_table(results),
        "",
        "### Memory",
        "",
        render_table(
            ["process", "RSS when ready (MiB)", "RSS after the measured phases (MiB)"],
            [
                [name, f"{before / 1024:.1f}", f"{after / 1024:.1f}"]
                for name, (before, after) in results.rss.items()
            ],
        ),
        "",
        f"The store (`hub.db` with its WAL) held {results.db_bytes / 2**20:.1f} MiB after "
        f"the phases above ({_total_runs(results):,} measured runs, plus warm-ups).",
        "",
        *_profile_section(results),
    ]
    return "\n".join(lines)


def _total_runs(results: Results) -> int:
    return sum(len(p.load.latencies) for p in results.hub.values())
