"""Suite ``telegram``: what the Telegram bridge adds, message -> run and run -> reply.

Topology, as deployed: the hub (``codex-hub serve``), one executor (``codex-hub
executor`` with ``EXEC_DRY_RUN=true``, which answers at once with the prompt) and the
bridge (``codex-hub bridge telegram``) run as separate processes on 127.0.0.1. The
bridge long-polls a fake Bot API server (``tests/fakes/telegram.py``) that runs in this
process: the bench "sends" a private message by queueing an update there, and the fake
records when the bridge's ``sendMessage`` with the answer arrives.

Four clocks, all wall clocks of this one machine: the message queued (this process),
the run created and started (``runs.created_at`` / ``started_at`` in the hub's store:
the hub accepted the bridge's submit; the executor reported ``running``), the run
finished (``runs.finished_at``) and the reply received by the fake. Hence

- message -> run started: python-telegram-bot's long poll and update dispatch, the
  bridge's handler and submit, the hub's queue, the assign and the executor's state;
- run finished -> reply sent: the hub's delivery, the bridge's rendering and its
  ``sendMessage`` up to the moment the Bot API server received it.

Goal (issue #4, point 9): the median and p99 of each under 20 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import aiohttp

from bench.common import (
    BenchError,
    Proc,
    Summary,
    clean_env,
    closed_loop,
    cpu_seconds,
    fmt_ms,
    free_port,
    machine_busy_seconds,
    machine_lines,
    render_table,
    venv_script,
    wait_quiet,
    wait_ready,
)

if TYPE_CHECKING:
    from tests.fakes.telegram import FakeTelegram

NAME = "telegram"
TITLE = "Telegram bridge: message to run, run to reply"
GOAL_MS = 20.0
#: Private chats (one per concurrent worker) start at this user id.
FIRST_CHAT = 10_000
TAG = "tgbench"


@dataclass(frozen=True)
class Plan:
    """How many messages each phase sends."""

    warmup: int = 30
    #: One chat, one message at a time.
    sequential: int = 500
    #: (chats, messages per second in all, messages): an open loop at a pace Telegram
    #: allows (it caps a bot at about 30 messages a second overall).
    paced: tuple[int, float, int] = (8, 20.0, 600)
    #: (chats, messages): each chat sends its next message as soon as it has a reply;
    #: past Telegram's own limits, to show the bridge's capacity on this machine.
    saturated: tuple[int, int] = (8, 800)


FULL = Plan()
QUICK = Plan(warmup=10, sequential=50, paced=(8, 20.0, 100), saturated=(8, 80))


@dataclass
class Sample:
    """One message's clocks (wall-clock seconds)."""

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
    bridge_cpu_s: float = 0.0
    #: Cores that processes outside the bench kept busy meanwhile (others share the machine).
    others_cores: float = 0.0

    def summary(self, metric: Callable[[Sample], float]) -> Summary:
        """Latency statistics of ``metric`` (seconds) over the phase."""
        return Summary.of([metric(s) for s in self.samples.values()])


@dataclass
class Results:
    """Everything the report needs."""

    plan: Plan
    phases: list[Phase] = field(default_factory=list)
    quiet: float = 0.0
    startup_s: float = 0.0


# --- the processes -------------------------------------------------------------------


@dataclass
class System:
    """The three processes and what the bench needs to talk to them."""

    hub: Proc
    executor: Proc
    bridge: Proc
    base: str
    api_key: str
    db: Path

    @property
    def procs(self) -> list[Proc]:
        return [self.hub, self.executor, self.bridge]


@contextlib.asynccontextmanager
async def running_system(tmp: Path, fake: FakeTelegram) -> AsyncIterator[System]:
    """Hub, dry-run executor and Telegram bridge in ``tmp``, ended on the way out."""
    codex_hub = venv_script("codex-hub")
    token = secrets.token_hex(16)
    api_key = "bench-" + secrets.token_hex(8)
    port = free_port()
    hub_url = f"ws://127.0.0.1:{port}/ws"
    db = tmp / "hub.db"

    def proc(name: str, argv: list[str], **env: str) -> Proc:
        # cwd is tmp: no .env there, the settings are exactly these.
        return Proc(name, argv, env=clean_env(**env), cwd=tmp, log_path=tmp / f"{name}.log")

    hub = proc(
        "hub",
        [codex_hub, "serve"],
        HUB_HOST="127.0.0.1",
        HUB_PORT=str(port),
        HUB_DB=str(db),
        HUB_TOKEN=token,
        HUB_API_KEYS=api_key,
    )
    executor = proc(
        "executor",
        [codex_hub, "executor"],
        HUB_URL=hub_url,
        HUB_TOKEN=token,
        EXEC_DRY_RUN="true",
        EXEC_CONCURRENCY="64",
        EXEC_WORKDIR=str(tmp),
        NODE_NAME="bench-executor",
    )
    bridge = proc(
        "bridge",
        [codex_hub, "bridge", "telegram"],
        HUB_URL=hub_url,
        HUB_TOKEN=token,
        TELEGRAM_BOT_TOKEN=fake.token,
        TELEGRAM_API_BASE_URL=fake.base_url,
        TELEGRAM_ALLOWED_USERS="*",
        NODE_NAME="bench-bridge",
    )
    system = System(hub, executor, bridge, f"http://127.0.0.1:{port}", api_key, db)
    with contextlib.ExitStack() as stack:
        for part in system.procs:
            stack.enter_context(part)
        headers = {"Authorization": f"Bearer {api_key}"}
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, f"{system.base}/readyz", procs=system.procs, headers=headers)
            await _wait_bridge(session, system, headers)
        await fake.wait_until_polling(timeout=30)
        yield system
        for part in system.procs:
            part.check_alive()
        # The bridge's last call on the way out goes to the fake, which runs on this loop:
        # wait for it in a thread (Proc.stop blocks), or the bridge is killed mid-stop.
        code = await asyncio.to_thread(bridge.stop)
        if code != 0:
            raise BenchError(f"the bridge exited with {code}:\n{bridge.log_tail()}")


async def _wait_bridge(
    session: aiohttp.ClientSession, system: System, headers: dict[str, str]
) -> None:
    """Until the hub lists the Telegram bridge among its nodes."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for part in system.procs:
            part.check_alive()
        async with session.get(f"{system.base}/api/nodes", headers=headers) as resp:
            nodes = (await resp.json()).get("nodes", [])
        if any(n.get("platform") == "telegram" for n in nodes):
            return
        await asyncio.sleep(0.05)
    raise BenchError(f"the Telegram bridge never reached the hub:\n{system.bridge.log_tail()}")


# --- the load --------------------------------------------------------------------------


def _cpu(system: System) -> dict[str, float]:
    """CPU seconds so far: the machine's (not idle), the bridge's, and all of ours."""
    ours = sum(cpu_seconds(p.pid) for p in system.procs) + cpu_seconds(os.getpid())
    return {
        "machine": machine_busy_seconds(),
        "bridge": cpu_seconds(system.bridge.pid),
        "ours": ours,
    }


def _account(phase: Phase, system: System, before: dict[str, float], elapsed: float) -> None:
    """Record the phase's duration, the bridge's CPU, and the load others put on the machine."""
    after = _cpu(system)
    phase.elapsed = elapsed
    phase.bridge_cpu_s = after["bridge"] - before["bridge"]
    others = (after["machine"] - before["machine"]) - (after["ours"] - before["ours"])
    phase.others_cores = max(0.0, others / elapsed) if elapsed > 0 else 0.0


async def _one(fake: FakeTelegram, phase: Phase, chat: int, i: int) -> None:
    """Send message ``i`` from ``chat`` and wait for its reply."""
    prompt = f"{TAG} {phase.label} {i}"
    since = fake.mark()
    pushed = time.time()
    fake.push_message(chat, prompt)
    call = await fake.wait_for_call(
        "sendMessage",
        lambda c: c.ok and c.chat_id == chat and c.text == prompt,
        since=since,
        timeout=10,
    )
    phase.samples[prompt] = Sample(pushed=pushed, replied=call.at)


async def _closed(
    fake: FakeTelegram, system: System, phase: Phase, chats: int, count: int
) -> Phase:
    """``count`` messages from ``chats`` private chats, each waiting for its reply."""
    free = asyncio.Queue[int]()
    for n in range(chats):
        free.put_nowait(FIRST_CHAT + n)

    async def one(i: int) -> None:
        chat = await free.get()
        try:
            await _one(fake, phase, chat, i)
        finally:
            free.put_nowait(chat)

    before = _cpu(system)
    load = await closed_loop(one, chats, count=count)
    _account(phase, system, before, load.elapsed)
    if load.errors:
        raise BenchError(f"{len(load.errors)} messages failed; first: {load.errors[0]}")
    return phase


async def _paced(
    fake: FakeTelegram, system: System, phase: Phase, chats: int, rate: float, count: int
) -> Phase:
    """``count`` messages at ``rate`` per second, round-robin over ``chats`` chats."""
    loop = asyncio.get_running_loop()
    before = _cpu(system)
    start = loop.time()
    tasks = []
    for i in range(count):
        await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
        chat = FIRST_CHAT + i % chats
        tasks.append(asyncio.create_task(_one(fake, phase, chat, i), name=f"bench:tg:{i}"))
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    _account(phase, system, before, loop.time() - start)
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    if errors:
        raise BenchError(f"{len(errors)} messages failed; first: {errors[0]!r}")
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


async def measure(plan: Plan, *, quiet_wait: float = 20.0) -> Results:
    """Start the processes, send every phase's messages, stop everything; the figures."""
    # The fake lives in the test tree; it needs pytest, which `make install` provides.
    from tests.fakes.telegram import FakeTelegram

    results = Results(plan)
    with tempfile.TemporaryDirectory(prefix="codex-hub-bench-tg-") as tmp_name:
        tmp = Path(tmp_name)
        results.quiet = await wait_quiet(quiet_wait)
        async with FakeTelegram() as fake:
            started = time.monotonic()
            async with running_system(tmp, fake) as system:
                results.startup_s = time.monotonic() - started
                print("telegram: hub + executor (dry run) + bridge, fake Bot API", flush=True)
                chats, rate, paced = plan.paced
                burst, saturated = plan.saturated
                try:
                    await _closed(fake, system, Phase("warmup", ""), 1, plan.warmup)
                    for phase in (
                        await _closed(
                            fake, system, Phase("sequential", "1 chat, 1 at a time"), 1,
                            plan.sequential,
                        ),
                        await _paced(
                            fake, system, Phase("paced", f"{chats} chats, {rate:g}/s"), chats,
                            rate, paced,
                        ),
                        await _closed(
                            fake, system,
                            Phase("saturated", f"{burst} chats, closed loop", goal=False),
                            burst, saturated,
                        ),
                    ):  # fmt: skip
                        _read_store(system.db, phase)
                        results.phases.append(phase)
                        print(f"telegram: {phase.label} done", flush=True)
                except BenchError as exc:
                    raise BenchError(
                        f"{exc}\n--- bridge log ---\n{system.bridge.log_tail()}"
                    ) from exc
    return results


# --- the report --------------------------------------------------------------------------

METRICS: list[tuple[str, Callable[[Sample], float]]] = [
    ("message -> run created (hub accepted the submit)", lambda s: s.created - s.pushed),
    ("**message -> run started**", lambda s: s.started - s.pushed),
    ("**run finished -> reply sent**", lambda s: s.replied - s.finished),
    ("message -> reply (whole path, dry run)", lambda s: s.replied - s.pushed),
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
            f"{1000.0 * phase.bridge_cpu_s / max(1, len(phase.samples)):.2f}",
            f"{phase.others_cores:.2f}",
        ]
        for phase in results.phases
    ]
    plan = results.plan
    return "\n".join(
        [
            f"## {TITLE} (`{NAME}`)",
            "",
            *machine_lines(),
            "",
            "**Method.** The hub (`codex-hub serve`), one executor (`codex-hub executor`, "
            "`EXEC_DRY_RUN=true`: it answers at once with the prompt) and the bridge "
            "(`codex-hub bridge telegram`, default settings, `LOG_LEVEL=INFO`) run as "
            "separate processes on 127.0.0.1. The bridge long-polls a fake Bot API server "
            "(`tests/fakes/telegram.py`) in the bench process, which queues each private "
            "message as an update and waits for the bridge's `sendMessage` with the answer "
            "(closed loop). Clocks: message queued (bench), run created / started / finished "
            "(the hub's store: submit accepted, executor reported `running`, result stored), "
            "reply received (the fake, on arrival of the request). The dry run finishes in "
            "well under a millisecond, so a status message (posted only after "
            "`TELEGRAM_STATUS_DELAY_S`, 2 s) never appears; the typing action goes out with "
            f"every message. {plan.warmup} warm-up messages, then three phases: "
            f"**sequential**, {plan.sequential:,} messages one after the other from one "
            f"chat; **paced**, {plan.paced[2]:,} messages at {plan.paced[1]:g} a second "
            f"(open loop) round-robin over {plan.paced[0]} chats, a pace Telegram allows "
            "(it caps a bot at about 30 messages a second); **saturated**, "
            f"{plan.saturated[1]:,} messages from {plan.saturated[0]} chats, each sending its "
            "next as soon as it has its reply: beyond what Telegram would let through, it "
            "shows the capacity of this machine and is not held to the goal. "
            f"Start-up (three processes until the bridge polls): {results.startup_s:.1f} s. "
            "Others may share this machine: the bench waits for it to be quiet before the "
            f"start ({results.quiet:.2f} cores were busy then), and each phase records the "
            'CPU that processes outside the bench used meanwhile ("others\' load", in cores, '
            "from /proc/stat); on a 2-core machine that load shows in the tail latencies.",
            "",
            f"**Goal (issue #4, point 9: median and p99 of message -> run started and of run "
            f"finished -> reply sent, each under {GOAL_MS:g} ms, sequential and paced) met: "
            f"{_yes(met)}.**",
            "",
            render_table(
                ["phase", "interval", "messages", "p50 ms", "p90 ms", "p99 ms", "max ms"], rows
            ),
            "",
            render_table(
                ["phase", "messages/s", "bridge CPU ms per message", "others' load (cores)"],
                cpu_rows,
            ),
        ]
    )


# --- entry points ---------------------------------------------------------------------------


class _Options(Protocol):
    quick: bool


async def main(options: _Options) -> str:
    """``python -m bench telegram``: measure and return the markdown section."""
    plan = QUICK if options.quick else FULL
    return report(await measure(plan, quiet_wait=getattr(options, "quiet_wait", 20.0)))


async def run(report_section: Callable[[str], None] | None = None, *, quick: bool = False) -> None:
    """Measure and hand the section to ``report_section`` (default: print it)."""
    section = report(await measure(QUICK if quick else FULL))
    (report_section or print)(section)


if __name__ == "__main__":
    asyncio.run(run(quick=True))
