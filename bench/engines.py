"""Suite ``engines``: one run's round trip with a warm app-server, `codex exec`, bare codex.

Topology: the stub Responses-API model (``testkit/fakes/model_server.py``) in this
process, the real codex binary, one CODEX_HOME, one prompt, and three ways to get the
answer, measured in turns so that drift in the machine's load hits all alike:

- ``app-server``: `executor.engine_appserver.AppServerEngine` on `LocalTransport`, its
  `codex app-server` started during the warm-up and kept: each run is a new thread and
  one turn on it (a new conversation, the common case of a chat message);
- ``app-server, follow-up``: the same engine, each run a turn on the thread of the
  previous one (a conversation going on);
- ``exec engine``: `executor.engine.CodexEngine` on `LocalTransport`: login check
  (cached), temp dir, `codex exec` through the run helper, the ``-o`` file;
- ``bare codex exec``: ``codex exec --json`` of the same prompt started directly with
  asyncio, stdout read to the end; no helper, no engine.

Goal (issue #16, point 8, at the engine level): the app-server engine's round trip at
most half of a bare `codex exec` (process start-up is gone).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench.common import (
    BenchError,
    Summary,
    fmt_ms,
    machine_lines,
    render_table,
    wait_quiet,
)
from executor.codex import codex_environment, resolve_codex_bin
from executor.engine import CodexEngine, RunRequest
from executor.engine_appserver import AppServerEngine
from executor.settings import ExecutorSettings
from executor.transport_local import LocalTransport
from testkit.fakes.model_server import StubModelServer, make_codex_home

NAME = "engines"
TITLE = "Engines: a warm app-server against codex exec"
GOAL_RATIO = 0.5
PROMPT = "Say hello; this is the engine benchmark."
WAYS = ("app-server", "app-server, follow-up", "exec engine", "bare codex exec")


@dataclass(frozen=True)
class Plan:
    """How many runs each way makes."""

    warmup: int = 3
    runs: int = 30


FULL = Plan()
QUICK = Plan(warmup=1, runs=5)


@dataclass
class Results:
    """Wall times (seconds) per way, and the conditions of the run."""

    plan: Plan
    times: dict[str, list[float]] = field(default_factory=lambda: {way: [] for way in WAYS})
    processes: int = 0
    quiet: float = 0.0
    codex_version: str = ""

    def median_ms(self, way: str) -> float:
        """The median of one way's times, in ms."""
        return statistics.median(self.times[way]) * 1000.0

    @property
    def ratio(self) -> float:
        """The app-server's median over the bare `codex exec` median."""
        return self.median_ms("app-server") / self.median_ms("bare codex exec")


def _settings(tmp: Path, codex_bin: str, codex_home: Path, engine: str) -> ExecutorSettings:
    values: dict[str, Any] = {
        "codex_bin": codex_bin,
        "codex_home": codex_home,
        "codex_model": "",
        "codex_extra_args": "",
        "exec_workdir": tmp / "work",
        "exec_timeout_s": 120.0,
        "exec_dry_run": False,
        "exec_engine": engine,
        "optimize_prompt": False,
    }
    return ExecutorSettings(_env_file=None, **values)  # type: ignore[call-arg]


async def _timed(run: Awaitable[None]) -> float:
    started = time.perf_counter()
    await run
    return time.perf_counter() - started


async def _bare_exec(codex_bin: str, codex_home: Path, workdir: Path) -> None:
    """``codex exec --json`` of the prompt, directly: no helper, no engine."""
    env = codex_environment(os.environ, {"CODEX_HOME": str(codex_home)})
    argv = [codex_bin, "exec", "--json", "-C", str(workdir), "--skip-git-repo-check"]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        "--",
        PROMPT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
    )
    stdout, _ = await proc.communicate()
    if proc.returncode != 0 or b"turn.completed" not in stdout:
        raise BenchError(f"bare codex exec exited {proc.returncode}")


async def measure(plan: Plan, *, quiet_wait: float = 20.0) -> Results:
    """Run the plan and return the wall times."""
    try:
        codex_bin = resolve_codex_bin(os.environ.get("CODEX_BIN", ""))
    except FileNotFoundError as exc:
        raise BenchError(f"{exc} (run `make install`)") from None
    results = Results(plan)
    with tempfile.TemporaryDirectory(prefix="codex-hub-bench-engines-") as name:
        tmp = Path(name)
        (tmp / "work").mkdir()
        model = StubModelServer(default_text="Hello from the stub.")
        await model.start()
        try:
            home = make_codex_home(tmp / "codex-home", model.base_url, codex_bin, logged_in=True)
            async with LocalTransport() as local:
                app = AppServerEngine(_settings(tmp, codex_bin, home, "app-server"), local)
                exe = CodexEngine(_settings(tmp, codex_bin, home, "exec"), local)
                try:
                    await _measure(plan, results, app, exe, codex_bin, home, tmp, quiet_wait)
                finally:
                    results.processes = app.processes_started
                    await app.aclose()
                version: list[str] = []
                await local.run(
                    [codex_bin, "--version"],
                    env_overrides={},
                    cwd=None,
                    on_stdout_line=version.append,
                    timeout_s=30,
                )
                results.codex_version = " ".join(version).strip()
        finally:
            await model.close()
    return results


async def _measure(
    plan: Plan,
    results: Results,
    app: AppServerEngine,
    exe: CodexEngine,
    codex_bin: str,
    home: Path,
    tmp: Path,
    quiet_wait: float,
) -> None:
    thread: list[str | None] = [None]

    async def engine_run(engine: CodexEngine, run_id: str, follow_up: bool = False) -> None:
        request = RunRequest(run_id, PROMPT, thread[0] if follow_up else None)
        outcome = await engine.run(request, lambda e: None)
        if outcome.status != "succeeded":
            raise BenchError(f"run {run_id} {outcome.status}: {outcome.error}")
        if follow_up:
            thread[0] = outcome.thread_id

    ways: dict[str, Callable[[int], Awaitable[None]]] = {
        "app-server": lambda i: engine_run(app, f"app-{i}"),
        "app-server, follow-up": lambda i: engine_run(app, f"follow-{i}", follow_up=True),
        "exec engine": lambda i: engine_run(exe, f"exec-{i}"),
        "bare codex exec": lambda i: _bare_exec(codex_bin, home, tmp / "work"),
    }
    # Warm-up: the app-server starts, codex's files are in the page cache.
    for i in range(plan.warmup):
        for way in WAYS:
            await ways[way](-1 - i)
    results.quiet = await wait_quiet(quiet_wait)
    for i in range(plan.runs):
        shift = i % len(WAYS)
        for way in WAYS[shift:] + WAYS[:shift]:
            results.times[way].append(await _timed(ways[way](i)))


def _yes(ok: bool) -> str:
    return "**yes**" if ok else "**no**"


def report(results: Results) -> str:
    """The suite's section of docs/benchmarks.md, in markdown."""
    bare = Summary.of(results.times["bare codex exec"])
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
    ratio = results.ratio
    return "\n".join(
        [
            f"## {TITLE} (`{NAME}`)",
            "",
            *machine_lines(),
            f"- codex: `{results.codex_version or 'unknown'}` (native binary)",
            "",
            "**Method.** The same prompt, answered by the stub Responses-API model of "
            "`testkit/fakes/model_server.py` (in the bench process, a one-line answer), four "
            "ways: `AppServerEngine` on `LocalTransport` with its `codex app-server` kept "
            "warm (a new thread per run; and a follow-up turn on the previous run's "
            "thread), `CodexEngine` (`codex exec` through the run helper, login check "
            "cached), and a bare `codex exec --json` started directly with asyncio. "
            f"{plan.warmup} warm-up runs per way, then {plan.runs} measured runs per way, "
            "the ways taking turns. "
            f"{results.processes} app-server process(es) were started in all. The machine "
            f"was {results.quiet:.2f} cores busy before the measured runs. Engine level "
            "only: the hub, the websocket and a chat platform add the same to every way.",
            "",
            f"**Goal (issue #16, point 8: the app-server's round trip at most "
            f"{GOAL_RATIO:.0%} of a bare `codex exec`) met: {_yes(ratio <= GOAL_RATIO)}: "
            f"{ratio:.2f}** ({fmt_ms(results.median_ms('app-server'))} ms against "
            f"{fmt_ms(results.median_ms('bare codex exec'))} ms).",
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
    """``python -m bench engines``: measure and return the markdown section."""
    plan = QUICK if options.quick else FULL
    return report(await measure(plan, quiet_wait=options.quiet_wait))


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    print(report(asyncio.run(measure(QUICK if quick else FULL, quiet_wait=5.0))))
