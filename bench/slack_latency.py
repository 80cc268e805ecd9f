"""Suite ``slack``: what the Slack bridge adds, event -> run and run -> reply.

Two topologies on 127.0.0.1, both with the dry-run executor (``EXEC_DRY_RUN=true``,
which answers at once with the prompt):

- *separate*, as deployed on several machines: the hub (``codex-hub serve``), one
  executor (``codex-hub executor``) and the bridge (``codex-hub bridge slack``) in
  processes of their own;
- *embedded*, the default: ``codex-hub up --dry-run``, all three in one process and
  one event loop.

The bridge runs the real slack-bolt / slack-sdk against the fake Slack of the tests
(``tests/fakes/slack.py``: Web API and Socket Mode), which runs in this process: the
bench pushes an ``app_mention`` on the socket, and the fake notes when the bridge's
``chat.postMessage`` with the answer arrives. Every mention starts a thread of its own.

Four clocks, all wall clocks of this one machine: the event pushed (this process), the
run created and started (``runs.created_at`` / ``started_at`` in the hub's store: the
hub accepted the bridge's submit; the executor reported ``running``), the run finished
(``runs.finished_at``) and the answer received by the fake. Hence

- event -> run started: Socket Mode and bolt's dispatch, the bridge's checks and
  submit, the hub's queue, the assign and the executor's state;
- run finished -> reply posted: the hub's durable write and ``deliver``, the bridge's
  rendering and its ``chat.postMessage`` up to the moment the fake received it.

Goal (issue #3, point 9): the median and p99 of each under 20 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp

from bench.common import (
    BenchError,
    Proc,
    Summary,
    clean_env,
    cpu_seconds,
    fmt_ms,
    free_port,
    machine_lines,
    render_table,
    venv_script,
    wait_quiet,
    wait_ready,
)

if TYPE_CHECKING:
    from tests.fakes.slack import FakeSlack, SlackCall

NAME = "slack"
TITLE = "Slack bridge: event to run, run to reply"
GOAL_MS = 20.0
TAG = "slackbench"
#: The longest one mention may take to be answered and marked done.
REQUEST_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Plan:
    """How many mentions each phase sends."""

    warmup: int = 30
    #: One channel, one mention at a time (both topologies).
    sequential: int = 500
    #: (channels, mentions per second in all, mentions): an open loop at a pace a busy
    #: team might reach.
    paced: tuple[int, float, int] = (8, 20.0, 600)
    #: (channels, mentions): each channel sends its next mention as soon as the last
    #: one is answered; far past Slack's own rate limits, so not held to the goal.
    saturated: tuple[int, int] = (8, 800)


FULL = Plan()
QUICK = Plan(warmup=10, sequential=50, paced=(8, 20.0, 100), saturated=(8, 80))


@dataclass
class Sample:
    """One mention's clocks (wall-clock seconds)."""

    pushed: float
    replied: float
    created: float = 0.0
    started: float = 0.0
    finished: float = 0.0


@dataclass
class Phase:
    """One measured phase: its samples by prompt, and the bridge's CPU time."""

    label: str
    load: str
    #: Whether the issue's latency goal applies (not to the saturated phase).
    goal: bool = True
    samples: dict[str, Sample] = field(default_factory=dict)
    elapsed: float = 0.0
    #: CPU seconds of the bridge's process (None when it shares one with the hub).
    bridge_cpu_s: float | None = None

    def summary(self, metric: Callable[[Sample], float]) -> Summary:
        """Latency statistics of ``metric`` (seconds) over the phase."""
        return Summary.of([metric(s) for s in self.samples.values()])


@dataclass
class Results:
    """Everything the report needs."""

    plan: Plan
    phases: list[Phase] = field(default_factory=list)
    quiet: float = 0.0
    startup_s: dict[str, float] = field(default_factory=dict)


# --- the fake's side -------------------------------------------------------------------


class Watch:
    """Answers and check marks as the fake records them, looked up in O(1) per call."""

    def __init__(self, fake: FakeSlack) -> None:
        self._answers: dict[str, asyncio.Future[float]] = {}
        self._done: dict[str, asyncio.Future[None]] = {}
        fake.watchers.append(self._on_call)

    def expect(self, prompt: str, ts: str) -> tuple[asyncio.Future[float], asyncio.Future[None]]:
        """Futures for the answer to ``prompt`` (its arrival time) and ``ts``'s check mark."""
        loop = asyncio.get_running_loop()
        answer, done = loop.create_future(), loop.create_future()
        self._answers[prompt], self._done[ts] = answer, done
        return answer, done

    def _on_call(self, call: SlackCall) -> None:
        if not call.ok:
            return
        if call.method == "chat.postMessage":
            answer = self._answers.pop(str(call.args.get("text")), None)
            if answer is not None and not answer.done():
                answer.set_result(time.time())
        elif call.method == "reactions.add" and call.args.get("name") == "white_check_mark":
            done = self._done.pop(str(call.args.get("timestamp")), None)
            if done is not None and not done.done():
                done.set_result(None)


# --- the processes -------------------------------------------------------------------


@dataclass
class System:
    """The processes under test and what the bench needs to talk to them."""

    procs: list[Proc]
    bridge: Proc
    base: str
    db: Path
    #: Whether the bridge shares its process with the hub and executor.
    embedded: bool


def _slack_env(fake: FakeSlack) -> dict[str, str]:
    return {
        "SLACK_BOT_TOKEN": fake.bot_token,
        "SLACK_APP_TOKEN": fake.app_token,
        "SLACK_API_BASE_URL": fake.api_url,
        "SLACK_ALLOWED_USERS": "*",
        "SLACK_ALLOWED_CHANNELS": "*",
    }


@contextlib.asynccontextmanager
async def running_system(tmp: Path, fake: FakeSlack, *, embedded: bool) -> AsyncIterator[System]:
    """The hub, a dry-run executor and the Slack bridge in ``tmp``, ended on the way out."""
    codex_hub = venv_script("codex-hub")
    token = secrets.token_hex(16)
    api_key = "bench-" + secrets.token_hex(8)
    port = free_port()
    hub_url = f"ws://127.0.0.1:{port}/ws"
    db = tmp / "hub.db"
    hub_env = {
        "HUB_HOST": "127.0.0.1",
        "HUB_PORT": str(port),
        "HUB_DB": str(db),
        "HUB_TOKEN": token,
        "HUB_API_KEYS": api_key,
    }
    executor_env = {"EXEC_DRY_RUN": "true", "EXEC_CONCURRENCY": "64", "EXEC_WORKDIR": str(tmp)}

    def proc(name: str, argv: list[str], **env: str) -> Proc:
        # cwd is tmp: no .env there, the settings are exactly these.
        return Proc(name, argv, env=clean_env(**env), cwd=tmp, log_path=tmp / f"{name}.log")

    if embedded:
        up = proc("up", [codex_hub, "up"], **hub_env, **executor_env, **_slack_env(fake))
        system = System([up], up, f"http://127.0.0.1:{port}", db, embedded=True)
    else:
        node = {"HUB_URL": hub_url, "HUB_TOKEN": token}
        hub = proc("hub", [codex_hub, "serve"], **hub_env)
        executor = proc("executor", [codex_hub, "executor"], **node, **executor_env)
        bridge = proc("bridge", [codex_hub, "bridge", "slack"], **node, **_slack_env(fake))
        system = System([hub, executor, bridge], bridge, f"http://127.0.0.1:{port}", db, False)
    with contextlib.ExitStack() as stack:
        for part in system.procs:
            stack.enter_context(part)
        headers = {"Authorization": f"Bearer {api_key}"}
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, f"{system.base}/readyz", procs=system.procs, headers=headers)
            await _wait_bridge(session, system, headers)
        await fake.wait_connected(timeout=30)
        yield system
        for part in system.procs:
            part.check_alive()
        # The bridge's last calls on the way out go to the fake, which runs on this loop:
        # stop it from a thread (Proc.stop blocks), or it is killed mid-stop.
        code = await asyncio.to_thread(system.bridge.stop)
        if code != 0:
            raise BenchError(f"the bridge exited with {code}:\n{system.bridge.log_tail()}")


async def _wait_bridge(
    session: aiohttp.ClientSession, system: System, headers: dict[str, str]
) -> None:
    """Until the hub lists the Slack bridge among its nodes."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for part in system.procs:
            part.check_alive()
        async with session.get(f"{system.base}/api/nodes", headers=headers) as resp:
            nodes = (await resp.json()).get("nodes", [])
        if any(n.get("platform") == "slack" for n in nodes):
            return
        await asyncio.sleep(0.05)
    raise BenchError(f"the Slack bridge never reached the hub:\n{system.bridge.log_tail()}")


# --- the load --------------------------------------------------------------------------


async def _one(fake: FakeSlack, watch: Watch, phase: Phase, channel: str, i: int) -> None:
    """Mention the bot in ``channel`` (a new thread); wait for the answer and the check mark."""
    prompt = f"{TAG} {phase.label} {i}"
    event = fake.mention(prompt, channel=channel)
    answer, done = watch.expect(prompt, event["ts"])
    pushed = time.time()
    await fake.send_event(event, wait_ack=False)
    async with asyncio.timeout(REQUEST_TIMEOUT_S):
        replied = await answer
        await done
    phase.samples[prompt] = Sample(pushed=pushed, replied=replied)


def _cpu(system: System) -> float | None:
    return None if system.embedded else cpu_seconds(system.bridge.pid)


async def _closed(
    fake: FakeSlack, watch: Watch, system: System, phase: Phase, channels: int, count: int
) -> Phase:
    """``count`` mentions over ``channels`` channels, each waiting for its answer."""
    free = asyncio.Queue[str]()
    for n in range(channels):
        free.put_nowait(f"C0BENCH{n:02d}")
    issued = 0

    async def worker() -> None:
        nonlocal issued
        while issued < count:
            i = issued
            issued += 1
            channel = await free.get()
            try:
                await _one(fake, watch, phase, channel, i)
            finally:
                free.put_nowait(channel)

    cpu_before = _cpu(system)
    start = time.monotonic()
    try:
        async with asyncio.TaskGroup() as group:
            for n in range(channels):
                group.create_task(worker(), name=f"bench:slack:{n}")
    except* TimeoutError as errors:
        raise BenchError(f"{len(errors.exceptions)} mentions were not answered in time") from None
    phase.elapsed = time.monotonic() - start
    cpu_after = _cpu(system)
    if cpu_before is not None and cpu_after is not None:
        phase.bridge_cpu_s = cpu_after - cpu_before
    return phase


async def _paced(
    fake: FakeSlack,
    watch: Watch,
    system: System,
    phase: Phase,
    channels: int,
    rate: float,
    count: int,
) -> Phase:
    """``count`` mentions at ``rate`` per second, round-robin over ``channels`` channels."""
    loop = asyncio.get_running_loop()
    cpu_before = _cpu(system)
    start = loop.time()
    tasks = []
    for i in range(count):
        await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
        channel = f"C0BENCH{i % channels:02d}"
        one = _one(fake, watch, phase, channel, i)
        tasks.append(asyncio.create_task(one, name=f"bench:slack:{i}"))
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    phase.elapsed = loop.time() - start
    cpu_after = _cpu(system)
    if cpu_before is not None and cpu_after is not None:
        phase.bridge_cpu_s = cpu_after - cpu_before
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    if errors:
        raise BenchError(f"{len(errors)} mentions failed; first: {errors[0]!r}")
    return phase


def _read_store(db: Path, phase: Phase) -> None:
    """Fill in each sample's run clocks from the hub's store."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        rows = conn.execute(
            "SELECT prompt, created_at, started_at, finished_at FROM runs WHERE prompt LIKE ?",
            (f"{TAG} {phase.label} %",),
        ).fetchall()
    for prompt, created, started, finished in rows:
        sample = phase.samples.get(prompt)
        if sample is not None:
            sample.created, sample.started, sample.finished = created, started, finished
    missing = [p for p, s in phase.samples.items() if not (s.started and s.finished)]
    if missing:
        raise BenchError(f"{len(missing)} runs missing from the store, e.g. {missing[0]!r}")


async def _topology(
    fake: FakeSlack, tmp: Path, plan: Plan, results: Results, *, embedded: bool
) -> None:
    watch = Watch(fake)
    name = "embedded" if embedded else "separate"
    started = time.monotonic()
    async with running_system(tmp, fake, embedded=embedded) as system:
        results.startup_s[name] = time.monotonic() - started
        print(f"slack: {name}: hub + executor (dry run) + bridge, fake Slack", flush=True)
        try:
            await _closed(fake, watch, system, Phase(f"{name}-warmup", ""), 1, plan.warmup)
            phases = [Phase(f"{name} sequential", "1 channel, 1 at a time")]
            if not embedded:
                channels, rate, paced = plan.paced
                burst, saturated = plan.saturated
                phases += [
                    Phase("separate paced", f"{channels} channels, {rate:g}/s"),
                    Phase("separate saturated", f"{burst} channels, closed loop", goal=False),
                ]
            for phase in phases:
                if phase.label.endswith("sequential"):
                    await _closed(fake, watch, system, phase, 1, plan.sequential)
                elif phase.label.endswith("paced"):
                    await _paced(fake, watch, system, phase, channels, rate, paced)
                else:
                    await _closed(fake, watch, system, phase, burst, saturated)
                _read_store(system.db, phase)
                results.phases.append(phase)
                print(f"slack: {phase.label} done", flush=True)
        except BenchError as exc:
            raise BenchError(f"{exc}\n--- bridge log ---\n{system.bridge.log_tail()}") from exc


async def measure(plan: Plan, *, quiet_wait: float = 20.0) -> Results:
    """Start each topology, send every phase's mentions, stop everything; the figures."""
    # The fake lives in the test tree; it needs pytest, which `make install` provides.
    from tests.fakes.slack import FakeSlack

    results = Results(plan)
    results.quiet = await wait_quiet(quiet_wait)
    for embedded in (False, True):
        with tempfile.TemporaryDirectory(prefix="codex-hub-bench-slack-") as tmp_name:
            async with FakeSlack() as fake:
                await _topology(fake, Path(tmp_name), plan, results, embedded=embedded)
    return results


# --- the report --------------------------------------------------------------------------

METRICS: list[tuple[str, Callable[[Sample], float]]] = [
    ("event -> run created (hub accepted the submit)", lambda s: s.created - s.pushed),
    ("**event -> run started**", lambda s: s.started - s.pushed),
    ("**run finished -> reply posted**", lambda s: s.replied - s.finished),
    ("event -> reply (whole path, dry run)", lambda s: s.replied - s.pushed),
]


def _yes(ok: bool) -> str:
    return "**yes**" if ok else "**no**"


def report(results: Results) -> str:
    """The suite's section of docs/benchmarks.md, in markdown."""
    rows = []
    met = True
    for phase in results.phases:
        for name, metric in METRICS:
            summary = phase.summary(metric)
            if phase.goal and name.startswith("**"):
                met = met and summary.p50 <= GOAL_MS and summary.p99 <= GOAL_MS
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
    cpu_rows = [
        [
            phase.label,
            f"{len(phase.samples) / phase.elapsed:,.0f}" if phase.elapsed else "-",
            "-"
            if phase.bridge_cpu_s is None
            else f"{1000.0 * phase.bridge_cpu_s / max(1, len(phase.samples)):.2f}",
        ]
        for phase in results.phases
    ]
    plan = results.plan
    startup = ", ".join(f"{name} {s:.1f} s" for name, s in results.startup_s.items())
    return "\n".join(
        [
            f"## {TITLE} (`{NAME}`)",
            "",
            *machine_lines(),
            "",
            "**Method.** Dry-run executor (`EXEC_DRY_RUN=true`: it answers at once with the "
            "prompt). *Separate*: the hub (`codex-hub serve`), one executor (`codex-hub "
            "executor`) and the bridge (`codex-hub bridge slack`, default settings) as "
            "separate processes; *embedded*: `codex-hub up`, all in one process. The bridge "
            "runs the real slack-bolt / slack-sdk against the fake Slack of the tests "
            "(`tests/fakes/slack.py`, Web API and Socket Mode) in the bench process, which "
            "pushes each `app_mention` (a new thread each time) on the socket and notes when "
            "the answer's `chat.postMessage` arrives; the next mention in a channel waits for "
            "the previous one's check mark. Clocks: event pushed (bench), run created / "
            "started / finished (the hub's store: submit accepted, executor reported "
            "`running`, result stored), answer received (the fake). Per mention the bridge "
            "makes four Web API calls: :eyes: (once the hub took the run, so not in the way "
            "of its start), the answer, and the swap of :eyes: for :white_check_mark:; the "
            "dry run ends long before a status message is due (one edit interval, 2 s). "
            f"{plan.warmup} warm-up mentions per topology, then **sequential**, "
            f"{plan.sequential:,} mentions one after the other (both topologies); "
            f"**paced**, {plan.paced[2]:,} mentions at {plan.paced[1]:g} a second (open "
            f"loop) round-robin over {plan.paced[0]} channels; **saturated**, "
            f"{plan.saturated[1]:,} mentions from {plan.saturated[0]} channels, each sending "
            "its next as soon as it has its answer: far beyond Slack's rate limits, it shows "
            "the capacity of this machine and is not held to the goal. "
            f"Start-up until the bridge is connected: {startup}; the machine was "
            f"{results.quiet:.2f} cores busy before the start.",
            "",
            f"**Goal (issue #3, point 9: median and p99 of event -> run started and of run "
            f"finished -> reply posted, each under {GOAL_MS:g} ms, sequential and paced) met: "
            f"{_yes(met)}.**",
            "",
            render_table(
                ["phase", "interval", "mentions", "p50 ms", "p90 ms", "p99 ms", "max ms"], rows
            ),
            "",
            render_table(["phase", "mentions/s", "bridge CPU ms per mention"], cpu_rows),
        ]
    )


# --- entry points ---------------------------------------------------------------------------


class _Options(Protocol):
    quick: bool


async def main(options: _Options) -> str:
    """``python -m bench slack``: measure and return the markdown section."""
    plan = QUICK if options.quick else FULL
    return report(await measure(plan, quiet_wait=getattr(options, "quiet_wait", 20.0)))


async def run(report_section: Callable[[str], Any] | None = None, *, quick: bool = False) -> None:
    """Measure and hand the section to ``report_section`` (default: print it)."""
    section = report(await measure(QUICK if quick else FULL))
    (report_section or print)(section)


if __name__ == "__main__":
    asyncio.run(run(quick=True))
