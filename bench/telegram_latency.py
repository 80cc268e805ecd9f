"""Suite ``telegram``: what the Telegram bridge adds, message -> run and run -> reply.

Topology, as deployed: the hub (``codex-hub serve``), one executor (``codex-hub
executor`` with ``EXEC_DRY_RUN=true``, which answers at once with the prompt) and the
bridge (``codex-hub bridge telegram``) run as separate processes on 127.0.0.1. The
bridge long-polls a fake Bot API server (``testkit/fakes/telegram.py``) that runs in this
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
    from testkit.fakes.telegram import FakeTelegram

NAME = "telegram"
TITLE = "Telegram bridge: message to run, run to reply"
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
    token = secrets.token_hex(16)
    api_key = "bench-" + secrets.token_hex(8)
    port = free_port()
    hub_url = f"ws://127.0.0.1:{port}/ws"
    db = tmp / "hub.db"

    def proc(name: str, argv: list[str], **env: str) -> Proc:
        # cwd is tmp: no .env there, the settings are exactly these.
        return bench_proc(name, argv, env=clean_env(**env), cwd=tmp, log_path=tmp / f"{name}.log")

    hub = proc(
        "hub",
        codex_hub_argv("serve"),
        HUB_HOST="127.0.0.1",
        HUB_PORT=str(port),
        HUB_DB=str(db),
        HUB_TOKEN=token,
        HUB_API_KEYS=api_key,
    )
    executor = proc(
        "executor",
        codex_hub_argv("executor"),
        HUB_URL=hub_url,
        HUB_TOKEN=derive(token, "executor"),
        EXEC_DRY_RUN="true",
        EXEC_CONCURRENCY="64",
        EXEC_WORKDIR=str(tmp),
        NODE_NAME="bench-executor",
    )
    bridge = proc(
        "bridge",
        codex_hub_argv("bridge", "telegram"),
        HUB_URL=hub_url,
        HUB_TOKEN=derive(token, "telegram"),
        TELEGRAM_BOT_TOKEN=fake.token,
        TELEGRAM_API_BASE_URL=fake.base_url,
        TELEGRAM_ALLOWED_USERS="*",
        NODE_NAME="bench-bridge",
    )
    system = System(hub, executor, bridge, f"http://127.0.0.1:{port}", api_key, db)
    async with contextlib.AsyncExitStack() as stack:
        for part in system.procs:
            await stack.enter_async_context(part)
        headers = {"Authorization": f"Bearer {api_key}"}
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, f"{system.base}/readyz", procs=system.procs, headers=headers)
            await wait_bridge(session, system.base, headers, system.procs, bridge, "telegram")
        await fake.wait_until_polling(timeout=30)
        yield system
        for part in system.procs:
            part.check_alive()
        # The bridge's last call on the way out goes to the fake, which runs on this loop:
        # Proc.stop awaits the exit without blocking the loop, or it is killed mid-stop.
        code = await bridge.stop()
        if code != 0:
            raise BenchError(f"the bridge exited with {code}:\n{bridge.tail(30)}")


# --- the load --------------------------------------------------------------------------


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


def _chats(count: int) -> list[int]:
    return [FIRST_CHAT + n for n in range(count)]


async def measure(plan: Plan, *, quiet_wait: float = 20.0) -> Results:
    """Start the processes, send every phase's messages, stop everything; the figures."""
    # The fake (testkit, shared with the tests) needs pytest, which `make install` provides.
    from testkit.fakes.telegram import FakeTelegram

    results = Results(plan)
    with tempfile.TemporaryDirectory(prefix="codex-hub-bench-tg-") as tmp_name:
        tmp = Path(tmp_name)
        results.quiet = await wait_quiet(quiet_wait)
        async with FakeTelegram() as fake:
            started = time.monotonic()
            async with running_system(tmp, fake) as system:
                results.startup_s = time.monotonic() - started
                print("telegram: hub + executor (dry run) + bridge, fake Bot API", flush=True)
                meter = CpuMeter(system.procs, system.bridge)

                def sender(phase: Phase) -> Callable[[int, int], Coroutine[Any, Any, None]]:
                    return lambda chat, i: _one(fake, phase, chat, i)

                async def closed(phase: Phase, chats: int, count: int) -> Phase:
                    one = sender(phase)
                    return await closed_phase(phase, meter, _chats(chats), count, one, "message")

                chats, rate, paced = plan.paced
                burst, saturated = plan.saturated
                try:
                    await closed(Phase("warmup", ""), 1, plan.warmup)
                    phases = [
                        await closed(Phase("sequential", "1 chat, 1 at a time"), 1, plan.sequential)
                    ]
                    phase = Phase("paced", f"{chats} chats, {rate:g}/s")
                    one = sender(phase)
                    phases.append(
                        await paced_phase(phase, meter, _chats(chats), rate, paced, one, "message")
                    )
                    phase = Phase("saturated", f"{burst} chats, closed loop", goal=False)
                    phases.append(await closed(phase, burst, saturated))
                    for phase in phases:
                        read_store(system.db, TAG, phase)
                        results.phases.append(phase)
                        print(f"telegram: {phase.label} done", flush=True)
                except BenchError as exc:
                    raise BenchError(
                        f"{exc}\n--- bridge log ---\n{system.bridge.tail(30)}"
                    ) from exc
    return results


# --- the report --------------------------------------------------------------------------

METRICS = metrics("message", "reply sent")


def report(results: Results) -> str:
    """The suite's section of docs/benchmarks.md, in markdown."""
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
            "(`testkit/fakes/telegram.py`) in the bench process, which queues each private "
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
            f"{yes(goal_met(results.phases, METRICS))}.**",
            "",
            latency_table(results.phases, METRICS, "message"),
            "",
            cpu_table(results.phases, "message"),
        ]
    )


# --- entry points ---------------------------------------------------------------------------


class _Options(Protocol):
    quick: bool


async def main(options: _Options) -> str:
    """``python -m bench telegram``: measure and return the markdown section."""
    plan = QUICK if options.quick else FULL
    return report(await measure(plan, quiet_wait=getattr(options, "quiet_wait", 20.0)))
