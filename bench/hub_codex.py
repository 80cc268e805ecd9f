"""Suite ``hub-codex``: one real codex run through the hub against a bare `codex exec`.

Topology: the stub Responses-API model (``testkit/fakes/model_server.py``) in the bench
process, the real codex binary, one CODEX_HOME, one prompt; `codex-hub serve` and
`codex-hub executor` (``EXEC_ENGINE=exec``, not a dry run) as separate processes, as
in suite ``hub``. Two ways to get the same answer, taking turns so that drift in the
machine's load hits both alike:

- ``through the hub``: ``POST /v1/chat/completions`` with an API key, the answer
  checked: HTTP, the router and its store, the executor, the run helper, `codex exec`,
  and back;
- ``bare codex exec``: the same `codex exec` command line the executor builds (its
  sandbox and ``-o`` options included) started directly with asyncio, stdout read to
  the end: codex alone, the reference;
- ``bare codex exec, defaults``: ``codex exec --json`` with codex's default options, for
  what the executor's options themselves cost;
- ``bare codex exec, to its turn end``: the same command line as the reference, timed
  until its stdout shows ``turn.completed`` (where the hub answers; codex then takes
  ~20 ms more to exit, awaited untimed): what the hub path itself adds to codex.

Goal (issue #19, point 1): through the hub at most 1.05x the bare median. The run ends
at codex's turn end; codex's own exit and the reap of what it left behind happen after.
That clean-up is not timed, but it costs CPU: after each run through the hub the bench
waits (untimed) until the executor has no child process left, so it never lands in the
next way's time.
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

import aiohttp

from bench.common import BenchError, Summary, fmt_ms, machine_lines, render_table, wait_quiet
from bench.hub_latency import MODEL, running_hub
from executor.codex import build_exec_argv, codex_environment, resolve_codex_bin
from executor.settings import ExecutorSettings
from testkit.fakes.model_server import StubModelServer, make_codex_home

NAME = "hub-codex"
TITLE = "Real codex through the hub against a bare codex exec"
GOAL_RATIO = 1.05
PROMPT = "Say hello; this is the hub benchmark."
ANSWER = "Hello from the stub."
TURN_END = "bare codex exec, to its turn end"
WAYS = ("through the hub", "bare codex exec", "bare codex exec, defaults", TURN_END)


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
    quiet: float = 0.0

    def median_ms(self, way: str) -> float:
        """The median of one way's times, in ms."""
        return statistics.median(self.times[way]) * 1000.0

    @property
    def ratio(self) -> float:
        """Through the hub's median over the bare `codex exec` median."""
        return self.median_ms("through the hub") / self.median_ms("bare codex exec")


def executor_argv(
    codex_bin: str, codex_home: Path, workdir: Path, output: Path, prompt: str = PROMPT
) -> list[str]:
    """The `codex exec` argv the executor runs for ``prompt`` (its default settings)."""
    values: dict[str, Any] = {
        "codex_bin": codex_bin,
        "codex_home": codex_home,
        "codex_model": "",
        "codex_extra_args": "",
        "exec_workdir": workdir,
    }
    settings = ExecutorSettings(_env_file=None, **values)  # type: ignore[call-arg]
    return build_exec_argv(
        settings, prompt, codex_bin=codex_bin, workdir=str(workdir), output_file=str(output)
    )


async def bare_exec(argv: list[str], codex_home: Path) -> None:
    """`argv` (a `codex exec` of the prompt), directly: no hub, no helper, no engine."""
    env = codex_environment(os.environ, {"CODEX_HOME": str(codex_home)})
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
    )
    stdout, _ = await proc.communicate()
    if proc.returncode != 0 or b"turn.completed" not in stdout:
        raise BenchError(f"bare codex exec exited {proc.returncode}")


def _children(pid: int) -> list[int]:
    """The live child processes of `pid`, from /proc."""
    kids: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[1]) == pid and fields[0] != b"Z":
            kids.append(int(entry))
    return kids


async def settle(pid: int, within: float = 30.0) -> None:
    """Wait until process `pid` (the executor) has no child left: a run's clean-up
    (codex's exit, the helper's reap) is over and costs the next way nothing."""
    deadline = time.monotonic() + within
    while _children(pid):
        if time.monotonic() > deadline:
            raise BenchError(f"the executor still has child processes after {within:g} s")
        await asyncio.sleep(0.005)


async def bare_to_turn_end(argv: list[str], codex_home: Path) -> float:
    """`argv` directly, as `bare_exec`; the seconds until codex printed ``turn.completed``
    (its exit is awaited too, after that, untimed)."""
    env = codex_environment(os.environ, {"CODEX_HOME": str(codex_home)})
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
    )
    assert proc.stdout is not None
    took = None
    while line := await proc.stdout.readline():
        if took is None and b'"turn.completed"' in line:
            took = time.perf_counter() - started
    if await proc.wait() != 0 or took is None:
        raise BenchError(f"bare codex exec exited {proc.returncode} (turn completed: {took})")
    return took


async def _through_hub(session: aiohttp.ClientSession, base_url: str, api_key: str) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]}
    headers = {"Authorization": f"Bearer {api_key}"}
    async with session.post(f"{base_url}/v1/chat/completions", json=body, headers=headers) as r:
        data = await r.json()
    if r.status != 200 or data["choices"][0]["message"]["content"] != ANSWER:
        raise BenchError(f"the hub answered {r.status}: {str(data)[:300]}")


async def measure(plan: Plan, *, quiet_wait: float = 20.0) -> Results:
    """Start the model, the hub and an executor running codex; time both ways in turns."""
    try:
        codex_bin = resolve_codex_bin(os.environ.get("CODEX_BIN", ""))
    except FileNotFoundError as exc:
        raise BenchError(f"{exc} (run `make install`)") from None
    results = Results(plan)
    with tempfile.TemporaryDirectory(prefix="codex-hub-bench-hub-codex-") as name:
        tmp = Path(name)
        work = tmp / "work"
        work.mkdir()
        model = StubModelServer(default_text=ANSWER)
        await model.start()
        try:
            home = make_codex_home(tmp / "codex-home", model.base_url, codex_bin, logged_in=True)
            env = {
                "EXEC_DRY_RUN": "false",
                "EXEC_ENGINE": "exec",
                "CODEX_BIN": codex_bin,
                "CODEX_HOME": str(home),
                "EXEC_WORKDIR": str(work),
                "OPTIMIZE_PROMPT": "false",
            }
            async with (
                running_hub(tmp, env=env) as hut,
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session,
            ):
                same = executor_argv(codex_bin, home, work, tmp / "bare-last-message.txt")
                defaults = [codex_bin, "exec", "--json", "-C", str(work)]
                defaults += ["--skip-git-repo-check", "--", PROMPT]
                # A way that returns a time took that long; the others are timed here.
                ways: dict[str, Callable[[], Awaitable[float | None]]] = {
                    "through the hub": lambda: _through_hub(session, hut.base_url, hut.api_key),
                    "bare codex exec": lambda: bare_exec(same, home),
                    "bare codex exec, defaults": lambda: bare_exec(defaults, home),
                    TURN_END: lambda: bare_to_turn_end(same, home),
                }
                # Warm-up: codex's files in the page cache, the login check cached.
                for _ in range(plan.warmup):
                    for way in WAYS:
                        await ways[way]()
                results.quiet = await wait_quiet(quiet_wait)
                for i in range(plan.runs):
                    shift = i % len(WAYS)
                    for way in WAYS[shift:] + WAYS[:shift]:
                        started = time.perf_counter()
                        took = await ways[way]()
                        results.times[way].append(
                            time.perf_counter() - started if took is None else took
                        )
                        if way == "through the hub":
                            await settle(hut.executor.pid)
        finally:
            await model.close()
    return results


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
    hub_ms, bare_ms = results.median_ms("through the hub"), results.median_ms("bare codex exec")
    turn_ms = results.median_ms(TURN_END)
    return "\n".join(
        [
            f"## {TITLE} (`{NAME}`)",
            "",
            *machine_lines(),
            "",
            "**Method.** The same prompt, answered by the stub Responses-API model of "
            "`testkit/fakes/model_server.py` (in the bench process, a one-line answer), four "
            "ways: `POST /v1/chat/completions` to `codex-hub serve` with one "
            "`codex-hub executor` (`EXEC_ENGINE=exec`: `codex exec` through the run helper "
            "for every run), both separate processes on 127.0.0.1 as in suite `hub`, the "
            "answer checked; the same `codex exec` command line the executor builds "
            "(`-s workspace-write`, `-o FILE`, ...) started directly with asyncio (*bare "
            "codex exec*, the reference); `codex exec --json` with codex's defaults; and "
            "the reference's command line timed only until its stdout shows `turn.completed` "
            "(*to its turn end*: where the hub answers, codex then still has to exit). "
            f"{plan.warmup} warm-up runs per way, then {plan.runs} measured runs per way, "
            "one at a time, the ways taking turns (rotating which goes first); after each "
            "run through the hub, untimed, the bench waits until the executor has no child "
            "process left (codex exits and is reaped after the answer), so that clean-up "
            "never lands in the next way's time. The "
            f"machine was {results.quiet:.2f} cores busy before the measured runs.",
            "",
            f"**Goal (issue #19, point 1: through the hub at most {GOAL_RATIO:.2f}x a bare "
            f"`codex exec`, medians) met: {_yes(ratio <= GOAL_RATIO)}: {ratio:.3f}x** "
            f"({fmt_ms(hub_ms)} ms against {fmt_ms(bare_ms)} ms; the hub answers at codex's "
            f"turn end, {fmt_ms(turn_ms)} ms bare: the hub path adds "
            f"{fmt_ms(hub_ms - turn_ms)} ms to that).",
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
    """``python -m bench hub-codex``: measure and return the markdown section."""
    plan = QUICK if options.quick else FULL
    return report(await measure(plan, quiet_wait=options.quiet_wait))


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    print(report(asyncio.run(measure(QUICK if quick else FULL, quiet_wait=5.0))))
