"""Suite ``slack``: what the Slack bridge adds, event -> run and run -> reply.

Two topologies on 127.0.0.1, both with the dry-run executor (``EXEC_DRY_RUN=true``,
which answers at once with the prompt):

- *separate*, as deployed on several machines: the hub (``codex-hub serve``), one
  executor (``codex-hub executor``) and the bridge (``codex-hub bridge slack``) in
  processes of their own;
- *embedded*, the default: ``codex-hub up --dry-run``, all three in one process and
  one event loop.

The bridge runs the real slack-bolt / slack-sdk against the fake Slack of the tests
(``testkit/fakes/slack.py``: Web API and Socket Mode), which runs in this process: the
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
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp

from bench.bridge_phases import (
    GOAL_MS,
    CpuMeter,
    Phase,
    Sample,
    closed_phase,
    cpu_table,
    goal_met,
    latency_table,
    metrics,
    paced_phase,
    read_store,
    wait_bridge,
    yes,
)
from bench.common import (
    BenchError,
    bench_proc,
    free_port,
    machine_lines,
    wait_quiet,
    wait_ready,
)
from kernel.credentials import derive
from testkit.procs import Proc, clean_env, codex_hub_argv

if TYPE_CHECKING:
    from testkit.fakes.slack import FakeSlack, SlackCall

NAME = "slack"
TITLE = "Slack bridge: event to run, run to reply"
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
    # A directory of its own: `codex-hub up` refuses a workdir that holds the store.
    work = tmp / "work"
    work.mkdir(exist_ok=True)
    executor_env = {"EXEC_DRY_RUN": "true", "EXEC_CONCURRENCY": "64", "EXEC_WORKDIR": str(work)}

    def proc(name: str, argv: list[str], **env: str) -> Proc:
        # cwd is tmp: no .env there, the settings are exactly these.
        return bench_proc(name, argv, env=clean_env(**env), cwd=tmp, log_path=tmp / f"{name}.log")

    if embedded:
        up = proc("up", codex_hub_argv("up"), **hub_env, **executor_env, **_slack_env(fake))
        system = System([up], up, f"http://127.0.0.1:{port}", db, embedded=True)
    else:
        node = {"HUB_URL": hub_url}
        hub = proc("hub", codex_hub_argv("serve"), **hub_env)
        executor = proc(
            "executor",
            codex_hub_argv("executor"),
            **node,
            HUB_TOKEN=derive(token, "executor"),
            **executor_env,
        )
        bridge = proc(
            "bridge",
            codex_hub_argv("bridge", "slack"),
            **node,
            HUB_TOKEN=derive(token, "slack"),
            **_slack_env(fake),
        )
        system = System([hub, executor, bridge], bridge, f"http://127.0.0.1:{port}", db, False)
    async with contextlib.AsyncExitStack() as stack:
        for part in system.procs:
            await stack.enter_async_context(part)
        headers = {"Authorization": f"Bearer {api_key}"}
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, f"{system.base}/readyz", procs=system.procs, headers=headers)
            await wait_bridge(session, system.base, headers, system.procs, system.bridge, "slack")
        await fake.wait_connected(timeout=30)
        yield system
        for part in system.procs:
            part.check_alive()
        # The bridge's last calls on the way out go to the fake, which runs on this loop:
        # Proc.stop awaits the exit without blocking the loop, or it is killed mid-stop.
        code = await system.bridge.stop()
        if code != 0:
            raise BenchError(f"the bridge exited with {code}:\n{system.bridge.tail(30)}")


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


def _meter(system: System) -> CpuMeter:
    return CpuMeter(system.procs, None if system.embedded else system.bridge)


def _channels(count: int) -> list[str]:
    return [f"C0BENCH{n:02d}" for n in range(count)]


async def _topology(
    fake: FakeSlack, tmp: Path, plan: Plan, results: Results, *, embedded: bool
) -> None:
    watch = Watch(fake)
    name = "embedded" if embedded else "separate"
    started = time.monotonic()
    async with running_system(tmp, fake, embedded=embedded) as system:
        results.startup_s[name] = time.monotonic() - started
        print(f"slack: {name}: hub + executor (dry run) + bridge, fake Slack", flush=True)
        meter = _meter(system)

        def sender(phase: Phase) -> Callable[[str, int], Coroutine[Any, Any, None]]:
            return lambda channel, i: _one(fake, watch, phase, channel, i)

        async def closed(phase: Phase, channels: int, count: int) -> Phase:
            one = sender(phase)
            return await closed_phase(phase, meter, _channels(channels), count, one, "mention")

        try:
            await closed(Phase(f"{name}-warmup", ""), 1, plan.warmup)
            phases = [
                await closed(
                    Phase(f"{name} sequential", "1 channel, 1 at a time"), 1, plan.sequential
                )
            ]
            if not embedded:
                channels, rate, paced = plan.paced
                burst, saturated = plan.saturated
                phase = Phase("separate paced", f"{channels} channels, {rate:g}/s")
                one = sender(phase)
                phases.append(
                    await paced_phase(
                        phase, meter, _channels(channels), rate, paced, one, "mention"
                    )
                )
                phase = Phase("separate saturated", f"{burst} channels, closed loop", goal=False)
                phases.append(await closed(phase, burst, saturated))
            for phase in phases:
                read_store(system.db, TAG, phase)
                results.phases.append(phase)
                print(f"slack: {phase.label} done", flush=True)
        except BenchError as exc:
            raise BenchError(f"{exc}\n--- bridge log ---\n{system.bridge.tail(30)}") from exc


async def measure(plan: Plan, *, quiet_wait: float = 20.0) -> Results:
    """Start each topology, send every phase's mentions, stop everything; the figures."""
    # The fake (testkit, shared with the tests) needs pytest, which `make install` provides.
    from testkit.fakes.slack import FakeSlack

    results = Results(plan)
    results.quiet = await wait_quiet(quiet_wait)
    for embedded in (False, True):
        with tempfile.TemporaryDirectory(prefix="codex-hub-bench-slack-") as tmp_name:
            async with FakeSlack() as fake:
                await _topology(fake, Path(tmp_name), plan, results, embedded=embedded)
    return results


# --- the report --------------------------------------------------------------------------

METRICS = metrics("event", "reply posted")


def report(results: Results) -> str:
    """The suite's section of docs/benchmarks.md, in markdown."""
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
            "(`testkit/fakes/slack.py`, Web API and Socket Mode) in the bench process, which "
            "pushes each `app_mention` (a new thread each time) on the socket and notes when "
            "the answer's `chat.postMessage` arrives; the next mention in a channel waits for "
            "the previous one's check mark. Clocks: event pushed (bench), run created / "
            "started / finished (the hub's store: submit accepted, executor reported "
            "`running`, result stored), answer received (the fake). Per mention the bridge "
            "makes four Web API calls: :eyes: (once the hub took the run, so not in the way "
            "of its start), the answer (acknowledged to the hub as soon as Slack took it), "
            "and the swap of :eyes: for :white_check_mark:; the dry run ends long before a "
            "status message is due (one edit interval, 2 s), so the thread is never read. "
            f"{plan.warmup} warm-up mentions per topology, then **sequential**, "
            f"{plan.sequential:,} mentions one after the other (both topologies); "
            f"**paced**, {plan.paced[2]:,} mentions at {plan.paced[1]:g} a second (open "
            f"loop) round-robin over {plan.paced[0]} channels; **saturated**, "
            f"{plan.saturated[1]:,} mentions from {plan.saturated[0]} channels, each sending "
            "its next as soon as it has its answer: far beyond Slack's rate limits, it shows "
            "the capacity of this machine and is not held to the goal. "
            f"Start-up until the bridge is connected: {startup}. Others may share this "
            f"machine: it was {results.quiet:.2f} cores busy before the start, and each phase "
            "records the CPU that processes outside the bench used meanwhile (\"others' "
            'load", in cores, from /proc/stat); on a 2-core machine that load shows in the '
            "tail latencies.",
            "",
            f"**Goal (issue #3, point 9: median and p99 of event -> run started and of run "
            f"finished -> reply posted, each under {GOAL_MS:g} ms, sequential and paced) met: "
            f"{yes(goal_met(results.phases, METRICS))}.**",
            "",
            latency_table(results.phases, METRICS, "mention"),
            "",
            cpu_table(results.phases, "mention"),
        ]
    )


# --- entry points ---------------------------------------------------------------------------


class _Options(Protocol):
    quick: bool


async def main(options: _Options) -> str:
    """``python -m bench slack``: measure and return the markdown section."""
    plan = QUICK if options.quick else FULL
    return report(await measure(plan, quiet_wait=getattr(options, "quiet_wait", 20.0)))
