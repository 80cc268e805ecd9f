"""Suite ``hub-engines``: a warm app-server against `codex exec`, through the hub and chat.

Topology: the stub Responses-API model (``testkit/fakes/model_server.py``) and the fake
Bot API (``testkit/fakes/telegram.py``) in the bench process; the real codex binary,
one CODEX_HOME, one prompt; as separate processes on 127.0.0.1, `codex-hub serve`, two
`codex-hub executor` (``EXEC_ENGINE=app-server`` labelled ``app-server``, and
``EXEC_ENGINE=exec`` labelled ``exec``; not dry runs) and `codex-hub bridge telegram`.
Each run names its executor by label: the ``X-Target`` header over HTTP, a leading
``@label`` in a chat message. Five ways to get the same answer, taking turns so that
drift in the machine's load hits all alike:

- ``HTTP, app-server`` / ``HTTP, exec``: ``POST /v1/chat/completions`` with an API key
  (a new conversation each), the answer checked;
- ``Telegram, app-server`` / ``Telegram, exec``: a private message queued at the fake
  Bot API (a new chat each, so a new conversation), until the bridge's ``sendMessage``
  with the answer reaches the fake: the bridge's long poll, its submit, the hub, the
  executor, codex, and the reply;
- ``bare codex exec``: the `codex exec` command line the exec engine builds for the
  same prompt, started directly with asyncio, stdout read to the end: the reference.

The app-server executor starts its `codex app-server` during the warm-up and keeps it.

Goal (issue #16, point 8): the app-server engine's round trip, through the hub and as a
chat message, at most half of a bare `codex exec` (process start-up is gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp

from bench.bridge_phases import wait_bridge
from bench.common import (
    BenchError,
    Summary,
    bench_proc,
    fmt_ms,
    free_port,
    machine_lines,
    render_table,
    wait_quiet,
    wait_ready,
)
from bench.hub_codex import bare_exec, executor_argv
from bench.hub_latency import MODEL
from executor.codex import resolve_codex_bin
from kernel.credentials import derive
from testkit.procs import Proc, clean_env, codex_hub_argv

if TYPE_CHECKING:
    from testkit.fakes.telegram import FakeTelegram

NAME = "hub-engines"
TITLE = "Engines through the hub and Telegram: a warm app-server against codex exec"
GOAL_RATIO = 0.5
PROMPT = "Say hello; this is the hub engines benchmark."
ANSWER = "Hello from the stub"
#: The executors' labels, which are also their engines (EXEC_ENGINE).
ENGINES = ("app-server", "exec")
HTTP_APP, HTTP_EXEC = "HTTP, app-server", "HTTP, exec"
CHAT_APP, CHAT_EXEC = "Telegram, app-server", "Telegram, exec"
BARE = "bare codex exec"
WAYS = (HTTP_APP, HTTP_EXEC, CHAT_APP, CHAT_EXEC, BARE)
#: Each chat message comes from a new private chat; their ids start here.
FIRST_CHAT = 20_000
#: The longest one round trip may take before the bench gives up.
ROUND_TRIP_S = 120.0


@dataclass(frozen=True)
class Plan:
    """How many runs each way makes."""

    warmup: int = 3
    runs: int = 20


FULL = Plan()
QUICK = Plan(warmup=1, runs=5)


@dataclass
class Results:
    """Wall times (seconds) per way, and the conditions of the run."""

    plan: Plan
    times: dict[str, list[float]] = field(default_factory=lambda: {way: [] for way in WAYS})
    #: What each executor announced to the hub: label -> (engine, codex version).
    executors: dict[str, tuple[str, str]] = field(default_factory=dict)
    quiet: float = 0.0
    startup_s: float = 0.0

    def median_ms(self, way: str) -> float:
        """The median of one way's times, in ms."""
        return statistics.median(self.times[way]) * 1000.0

    def ratio(self, way: str) -> float:
        """One way's median over the bare `codex exec` median."""
        return self.median_ms(way) / self.median_ms(BARE)

    @property
    def goal_met(self) -> bool:
        """Both app-server ways at most GOAL_RATIO of a bare `codex exec` (medians)."""
        return all(self.ratio(way) <= GOAL_RATIO for way in (HTTP_APP, CHAT_APP))


# --- the processes -------------------------------------------------------------------


@dataclass
class System:
    """The hub, both executors and the bridge, and what the bench needs to reach them."""

    hub: Proc
    executors: list[Proc]
    bridge: Proc
    base: str
    api_key: str

    @property
    def procs(self) -> list[Proc]:
        return [self.hub, *self.executors, self.bridge]

    def logs(self, lines: int = 20) -> str:
        """The tail of every process's log, for a failure's message."""
        return "\n".join(f"--- {p.name} log ---\n{p.tail(lines)}" for p in self.procs)


@contextlib.asynccontextmanager
async def running_system(
    tmp: Path, fake: FakeTelegram, codex_bin: str, codex_home: Path
) -> AsyncIterator[System]:
    """Hub, an executor per engine (real codex) and the Telegram bridge, ended on exit."""
    token = secrets.token_hex(16)
    api_key = "bench-" + secrets.token_hex(8)
    port = free_port()
    hub_url = f"ws://127.0.0.1:{port}/ws"

    def proc(name: str, argv: list[str], **env: str) -> Proc:
        # cwd is tmp: no .env there, the settings are exactly these.
        return bench_proc(name, argv, env=clean_env(**env), cwd=tmp, log_path=tmp / f"{name}.log")

    hub = proc(
        "hub",
        codex_hub_argv("serve"),
        HUB_HOST="127.0.0.1",
        HUB_PORT=str(port),
        HUB_DB=str(tmp / "hub.db"),
        HUB_TOKEN=token,
        HUB_API_KEYS=api_key,
        HUB_MODEL_NAME=MODEL,
        OPTIMIZE_PROMPT="false",
    )
    executors = []
    for engine in ENGINES:
        work = tmp / f"work-{engine}"
        work.mkdir()
        executors.append(
            proc(
                f"executor-{engine}",
                codex_hub_argv("executor"),
                HUB_URL=hub_url,
                HUB_TOKEN=derive(token, "executor"),
                EXEC_DRY_RUN="false",
                EXEC_ENGINE=engine,
                EXEC_LABELS=engine,
                CODEX_BIN=codex_bin,
                CODEX_HOME=str(codex_home),
                EXEC_WORKDIR=str(work),
                OPTIMIZE_PROMPT="false",
                NODE_NAME=f"bench-{engine}",
            )
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
    system = System(hub, executors, bridge, f"http://127.0.0.1:{port}", api_key)
    async with contextlib.AsyncExitStack() as stack:
        for part in system.procs:
            await stack.enter_async_context(part)
        headers = {"Authorization": f"Bearer {api_key}"}
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, f"{system.base}/readyz", procs=system.procs, headers=headers)
            await wait_bridge(session, system.base, headers, system.procs, bridge, "telegram")
            await _wait_executors(session, system, headers)
        await fake.wait_until_polling(timeout=30)
        try:
            yield system
        except BenchError as exc:
            raise BenchError(f"{exc}\n{system.logs()}") from exc
        for part in system.procs:
            part.check_alive()
        # The bridge's last call on the way out goes to the fake, which runs on this loop:
        # Proc.stop awaits the exit without blocking the loop, or it is killed mid-stop.
        code = await bridge.stop()
        if code != 0:
            raise BenchError(f"the bridge exited with {code}:\n{bridge.tail(30)}")


async def _wait_executors(
    session: aiohttp.ClientSession, system: System, headers: dict[str, str]
) -> None:
    """Until the hub lists an executor for every engine's label (else runs are refused)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for part in system.procs:
            part.check_alive()
        async with session.get(f"{system.base}/api/nodes", headers=headers) as resp:
            nodes = (await resp.json()).get("nodes", [])
        labels = {label for n in nodes for label in n.get("labels") or []}
        if labels >= set(ENGINES):
            return
        await asyncio.sleep(0.05)
    raise BenchError(f"the executors never reached the hub:\n{system.logs()}")


async def announced(session: aiohttp.ClientSession, system: System) -> dict[str, tuple[str, str]]:
    """label -> (engine, codex version), as each executor's hello told the hub."""
    headers = {"Authorization": f"Bearer {system.api_key}"}
    async with session.get(f"{system.base}/api/nodes", headers=headers) as resp:
        nodes = (await resp.json()).get("nodes", [])
    return {
        label: (str(n.get("engine") or "?"), str(n.get("codex_version") or "?"))
        for n in nodes
        for label in n.get("labels") or []
    }


# --- the ways ----------------------------------------------------------------------------


async def _http(session: aiohttp.ClientSession, system: System, engine: str) -> None:
    """One request through the hub to the executor labelled ``engine``, answer checked."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]}
    headers = {"Authorization": f"Bearer {system.api_key}", "X-Target": engine}
    url = f"{system.base}/v1/chat/completions"
    async with session.post(url, json=body, headers=headers) as resp:
        data = await resp.json(content_type=None)
    answer = data.get("choices", [{}])[0].get("message", {}).get("content")
    if resp.status != 200 or answer != ANSWER:
        raise BenchError(f"the hub answered {resp.status} via {engine}: {str(data)[:300]}")


class _Chats:
    """A new private chat for every message: each one a new conversation."""

    def __init__(self) -> None:
        self.next = FIRST_CHAT

    def take(self) -> int:
        self.next += 1
        return self.next


async def _chat(fake: FakeTelegram, chats: _Chats, engine: str) -> float:
    """Send the prompt for ``engine`` from a new chat; seconds until the reply arrived."""
    chat = chats.take()
    since = fake.mark()
    pushed = time.time()
    fake.push_message(chat, f"@{engine} {PROMPT}")
    try:
        call = await fake.wait_for_call(
            "sendMessage",
            lambda c: c.ok and c.chat_id == chat and _reply_text(c.result) == ANSWER,
            since=since,
            timeout=ROUND_TRIP_S,
        )
    except AssertionError as exc:  # the fake's way to say it timed out
        raise BenchError(f"no answer in chat {chat} via {engine}: {exc}") from None
    return call.at - pushed


def _reply_text(result: Any) -> str | None:
    """The text of the message a ``sendMessage`` stored (as Telegram shows it)."""
    return result.get("text") if isinstance(result, dict) else None


async def _timed(run: Awaitable[None]) -> float:
    started = time.perf_counter()
    await run
    return time.perf_counter() - started


async def measure(plan: Plan, *, quiet_wait: float = 20.0) -> Results:
    """Start the model, the fake Bot API and the processes; time every way in turns."""
    # The fakes (testkit, shared with the tests) need pytest, which `make install` provides.
    from testkit.fakes.model_server import StubModelServer, make_codex_home
    from testkit.fakes.telegram import FakeTelegram

    try:
        codex_bin = resolve_codex_bin(os.environ.get("CODEX_BIN", ""))
    except FileNotFoundError as exc:
        raise BenchError(f"{exc} (run `make install`)") from None
    results = Results(plan)
    with tempfile.TemporaryDirectory(prefix="codex-hub-bench-hub-engines-") as name:
        tmp = Path(name)
        model = StubModelServer(default_text=ANSWER)
        await model.start()
        try:
            home = make_codex_home(tmp / "codex-home", model.base_url, codex_bin, logged_in=True)
            bare_work = tmp / "work-bare"
            bare_work.mkdir()
            bare_argv = executor_argv(codex_bin, home, bare_work, tmp / "bare-last.txt", PROMPT)
            chats = _Chats()
            started = time.monotonic()
            async with (
                FakeTelegram() as fake,
                running_system(tmp, fake, codex_bin, home) as system,
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=ROUND_TRIP_S)) as session,
            ):
                results.startup_s = time.monotonic() - started
                ways: dict[str, Callable[[], Awaitable[float]]] = {
                    HTTP_APP: lambda: _timed(_http(session, system, "app-server")),
                    HTTP_EXEC: lambda: _timed(_http(session, system, "exec")),
                    CHAT_APP: lambda: _chat(fake, chats, "app-server"),
                    CHAT_EXEC: lambda: _chat(fake, chats, "exec"),
                    BARE: lambda: _timed(bare_exec(bare_argv, home)),
                }
                # Warm-up: the app-server starts, codex's files are in the page cache.
                for _ in range(plan.warmup):
                    for way in WAYS:
                        await ways[way]()
                results.executors = await announced(session, system)
                results.quiet = await wait_quiet(quiet_wait)
                for i in range(plan.runs):
                    shift = i % len(WAYS)
                    for way in WAYS[shift:] + WAYS[:shift]:
                        results.times[way].append(await ways[way]())
        finally:
            await model.close()
    return results


# --- the report ----------------------------------------------------------------------------


def _yes(ok: bool) -> str:
    return "**yes**" if ok else "**no**"


def _executor_lines(results: Results) -> list[str]:
    return [
        f"- Executor `{label}`: `EXEC_ENGINE={engine}`, codex `{version}`"
        for label, (engine, version) in sorted(results.executors.items())
    ]


def report(results: Results) -> str:
    """The suite's section of docs/benchmarks.md, in markdown."""
    bare = Summary.of(results.times[BARE])
    rows = []
    for way in WAYS:
        summary = Summary.of(results.times[way])
        rows.append(
            [
                way,
                f"{summary.count:,}",
                fmt_ms(summary.p50),
                fmt_ms(summary.p90),
                fmt_ms(summary.mean),
                fmt_ms(summary.max),
                f"{summary.p50 / bare.p50:.2f}",
            ]
        )
    plan = results.plan
    bare_ms = results.median_ms(BARE)
    ratios = ", ".join(
        f"{label} {results.ratio(way):.2f} ({fmt_ms(results.median_ms(way))} ms)"
        for label, way in (("through the hub", HTTP_APP), ("as a chat message", CHAT_APP))
    )
    return "\n".join(
        [
            f"## {TITLE} (`{NAME}`)",
            "",
            *machine_lines(),
            *_executor_lines(results),
            "",
            "**Method.** The same prompt, answered by the stub Responses-API model of "
            "`testkit/fakes/model_server.py` (in the bench process, a one-line answer). "
            "`codex-hub serve`, two `codex-hub executor` with the real codex "
            "(`EXEC_ENGINE=app-server`, its `codex app-server` kept warm, labelled "
            "`app-server`; `EXEC_ENGINE=exec`, a `codex exec` per run, labelled `exec`) "
            "and `codex-hub bridge telegram` run as separate processes on 127.0.0.1; "
            "each run names its executor by label. Five ways: `POST /v1/chat/completions` "
            "with `X-Target: app-server` or `X-Target: exec` (a new conversation each, the "
            "answer checked); a private message `@app-server <prompt>` or `@exec <prompt>` "
            "queued at the fake Bot API of `testkit/fakes/telegram.py` (a new chat each, "
            "so a new conversation), timed until the bridge's `sendMessage` with the "
            "answer reaches the fake; and the `codex exec` command line the exec engine "
            "builds for the same prompt started directly with asyncio (*bare codex exec*, "
            f"the reference). {plan.warmup} warm-up runs per way, then {plan.runs} "
            "measured runs per way, one at a time, the ways taking turns (rotating which "
            f"goes first). Start-up (four processes until the bridge polls): "
            f"{results.startup_s:.1f} s. The machine was {results.quiet:.2f} cores busy "
            "before the measured runs.",
            "",
            f"**Goal** (issue #16, point 8: the app-server engine's round trip, through the "
            f"hub and as a chat message, at most {GOAL_RATIO:.2f}x a bare `codex exec`, "
            f"medians) met: {_yes(results.goal_met)}: {ratios}, against "
            f"{fmt_ms(bare_ms)} ms for a bare `codex exec`.",
            "",
            render_table(
                ["way", "runs", "p50 ms", "p90 ms", "mean ms", "max ms", "p50 / bare"], rows
            ),
        ]
    )


class _Options(Protocol):
    quick: bool
    quiet_wait: float


async def main(options: _Options) -> str:
    """``python -m bench hub-engines``: measure and return the markdown section."""
    plan = QUICK if options.quick else FULL
    return report(await measure(plan, quiet_wait=options.quiet_wait))


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    print(report(asyncio.run(measure(QUICK if quick else FULL, quiet_wait=5.0))))
