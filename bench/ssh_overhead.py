"""Suite ``ssh``: what running codex over SSH costs next to running it on this machine.

Topology: the stub Responses-API model (``testkit/fakes/model_server.py``) in this
process; the SSH server (``testkit/fakes/ssh_server.py``: asyncssh, each exec request run
by ``/bin/sh -c`` on this machine, as sshd does) in a process of its own on 127.0.0.1;
and two engines in this process, `executor.engine.CodexEngine` on `LocalTransport` and
on `SshTransport`, with the same settings, the same real codex binary, the same
CODEX_HOME and the same prompt. The SSH connection is opened during the warm-up and
reused afterwards, as an executor does. Runs alternate local / SSH so that drift in the
machine's load hits both alike.

Per run, the engine asks the transport for a temp dir, the codex run, a read of the
``-o`` file and the removal of the temp dir (the login check is cached for a minute):
locally those are a syscall or two and one child process; over SSH three channels on
the critical path (run, ``cat``, ``rm``; the temp dir was made ahead, in the
background, during the previous run) plus the remote helper that starts codex in its
own session and reaps after it (see `executor.transport_ssh`). The bare cost of one
run is measured too (``true`` over both transports).

Goal (issue #6, point 8): median wall time of a run over SSH at most 15 % above the
local median, once the connection is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench.common import (
    ROOT,
    BenchError,
    Summary,
    bench_proc,
    fmt_ms,
    machine_lines,
    render_table,
    wait_quiet,
)
from executor.codex import resolve_codex_bin
from executor.engine import CodexEngine, RunRequest
from executor.settings import ExecutorSettings
from executor.transport import Transport
from executor.transport_local import LocalTransport
from executor.transport_ssh import SshTransport
from testkit.fakes.model_server import StubModelServer, make_codex_home
from testkit.procs import clean_env

NAME = "ssh"
TITLE = "SSH transport: overhead against local"
GOAL_PCT = 15.0
PROMPT = "Say hello; this is the SSH overhead benchmark."


@dataclass(frozen=True)
class Plan:
    """How many runs each phase makes."""

    warmup: int = 3
    runs: int = 30  # codex runs per transport
    bare: int = 100  # `true` runs per transport


FULL = Plan()
QUICK = Plan(warmup=1, runs=6, bare=20)


@dataclass
class Results:
    """Wall times (seconds) per transport and phase, and the conditions of the run."""

    plan: Plan
    codex: dict[str, list[float]] = field(default_factory=lambda: {"local": [], "ssh": []})
    bare: dict[str, list[float]] = field(default_factory=lambda: {"local": [], "ssh": []})
    connections: int = 0
    quiet: float = 0.0
    codex_version: str = ""

    def median_ms(self, phase: dict[str, list[float]], transport: str) -> float:
        """The median of one transport's times in a phase, in ms."""
        return statistics.median(phase[transport]) * 1000.0

    @property
    def overhead_pct(self) -> float:
        """How much longer the median SSH run takes than the median local run, in %."""
        local = self.median_ms(self.codex, "local")
        return (self.median_ms(self.codex, "ssh") / local - 1.0) * 100.0


@contextlib.asynccontextmanager
async def ssh_server(tmp: Path) -> AsyncIterator[tuple[int, Path]]:
    """The test SSH server in its own process: (port, key directory)."""
    keys = tmp / "ssh"
    proc = bench_proc(
        "ssh-server",
        [sys.executable, "-m", "testkit.fakes.ssh_server", str(keys)],
        env=clean_env(PYTHONPATH=str(ROOT)),
        cwd=ROOT,
        log_path=tmp / "ssh-server.log",
    )
    async with proc:
        deadline = time.monotonic() + 30.0
        while True:
            proc.check_alive()
            lines = proc.log_path.read_text().split()
            if lines and lines[0].isdigit() and (keys / "known_hosts").stat().st_size:
                yield int(lines[0]), keys
                return
            if time.monotonic() > deadline:
                raise BenchError(f"the SSH server did not start:\n{proc.tail(30)}")
            await asyncio.sleep(0.05)


def _settings(tmp: Path, codex_bin: str, codex_home: Path, **ssh: Any) -> ExecutorSettings:
    values: dict[str, Any] = {
        "codex_bin": codex_bin,
        "codex_home": codex_home,
        "codex_model": "",
        "codex_extra_args": "",
        "exec_workdir": tmp / "work",
        "exec_timeout_s": 120.0,
        "exec_dry_run": False,
        "optimize_prompt": False,
        **ssh,
    }
    return ExecutorSettings(_env_file=None, **values)  # type: ignore[call-arg]


async def _timed(run: Awaitable[None]) -> float:
    """The wall time of awaiting `run`, in seconds."""
    started = time.perf_counter()
    await run
    return time.perf_counter() - started


async def measure(plan: Plan, *, quiet_wait: float = 20.0) -> Results:
    """Run the plan and return the wall times."""
    try:
        codex_bin = resolve_codex_bin(os.environ.get("CODEX_BIN", ""))
    except FileNotFoundError as exc:
        raise BenchError(f"{exc} (run `make install`)") from None
    results = Results(plan)
    with tempfile.TemporaryDirectory(prefix="codex-hub-bench-ssh-") as name:
        tmp = Path(name)
        (tmp / "work").mkdir()
        model = StubModelServer(default_text="Hello from the stub.")
        await model.start()
        try:
            home = make_codex_home(tmp / "codex-home", model.base_url, codex_bin, logged_in=True)
            async with ssh_server(tmp) as (port, keys):
                local_settings = _settings(tmp, codex_bin, home)
                ssh_settings = _settings(
                    tmp,
                    codex_bin,
                    home,
                    exec_transport="ssh",
                    ssh_host="127.0.0.1",
                    ssh_port=port,
                    ssh_key_path=keys / "id_ed25519",
                    ssh_known_hosts=keys / "known_hosts",
                )
                async with (
                    LocalTransport() as local,
                    SshTransport.from_settings(ssh_settings) as ssh,
                ):
                    await _measure(
                        plan,
                        results,
                        local,
                        ssh,
                        local_settings,
                        ssh_settings,
                        codex_bin,
                        quiet_wait,
                    )
                    results.connections = ssh.connections_opened
        finally:
            await model.close()
    return results


async def _measure(
    plan: Plan,
    results: Results,
    local: LocalTransport,
    ssh: SshTransport,
    local_settings: ExecutorSettings,
    ssh_settings: ExecutorSettings,
    codex_bin: str,
    quiet_wait: float,
) -> None:
    engines: dict[str, tuple[Transport, CodexEngine]] = {
        "local": (local, CodexEngine(local_settings, local, codex_bin=codex_bin)),
        "ssh": (ssh, CodexEngine(ssh_settings, ssh, codex_bin=codex_bin)),
    }
    version: list[str] = []
    await local.run(
        [codex_bin, "--version"],
        env_overrides={},
        cwd=None,
        on_stdout_line=version.append,
        timeout_s=30,
    )
    results.codex_version = " ".join(version).strip()

    async def codex_run(name: str, i: int) -> None:
        outcome = await engines[name][1].run(RunRequest(f"{name}-{i}", PROMPT), lambda e: None)
        if outcome.status != "succeeded":
            raise BenchError(f"{name} run {i} {outcome.status}: {outcome.error}")

    async def bare_run(name: str) -> None:
        result = await engines[name][0].run(
            ["true"], env_overrides={}, cwd=None, on_stdout_line=lambda line: None, timeout_s=30
        )
        if result.exit_code != 0:
            raise BenchError(f"`true` over {name} exited {result.exit_code}")

    # Warm-up: the SSH connection opens, codex's files are in the page cache.
    for i in range(plan.warmup):
        for name in engines:
            await codex_run(name, -1 - i)
    results.quiet = await wait_quiet(quiet_wait)
    for i in range(plan.runs):
        order = ("local", "ssh") if i % 2 == 0 else ("ssh", "local")
        for name in order:
            results.codex[name].append(await _timed(codex_run(name, i)))
    for i in range(plan.bare):
        order = ("local", "ssh") if i % 2 == 0 else ("ssh", "local")
        for name in order:
            results.bare[name].append(await _timed(bare_run(name)))


def _yes(ok: bool) -> str:
    return "**yes**" if ok else "**no**"


def report(results: Results) -> str:
    """The suite's section of docs/benchmarks.md, in markdown."""
    rows = []
    for label, phase in (
        ("codex run (engine)", results.codex),
        ("`true` (transport)", results.bare),
    ):
        local = Summary.of(phase["local"])
        remote = Summary.of(phase["ssh"])
        for name, summary in (("local", local), ("ssh", remote)):
            rows.append(
                [
                    label,
                    name,
                    f"{summary.count:,}",
                    fmt_ms(summary.p50),
                    fmt_ms(summary.p90),
                    fmt_ms(summary.mean),
                    fmt_ms(summary.max),
                ]
            )
        rows.append(
            [
                label,
                "**ssh - local**",
                "",
                f"**{fmt_ms(remote.p50 - local.p50)}**",
                fmt_ms(remote.p90 - local.p90),
                fmt_ms(remote.mean - local.mean),
                "",
            ]
        )
    overhead = results.overhead_pct
    plan = results.plan
    return "\n".join(
        [
            f"## {TITLE} (`{NAME}`)",
            "",
            *machine_lines(),
            f"- codex: `{results.codex_version or 'unknown'}` (native binary)",
            "",
            "**Method.** The same `codex exec` run (real codex, the stub Responses-API "
            "model of `testkit/fakes/model_server.py` in the bench process, a one-line answer) "
            "through `CodexEngine` on `LocalTransport` and on `SshTransport`, alternating. "
            "The SSH server is asyncssh's (`testkit/fakes/ssh_server.py`) in a process of its "
            "own on 127.0.0.1, running each exec request with `/bin/sh -c` on this machine; "
            "a C sshd would cost less per channel, so the figure is on the high side. The "
            "connection is opened during the warm-up and reused "
            f"({results.connections} connection(s) opened in all). {plan.warmup} warm-up "
            f"runs per transport, then {plan.runs} measured runs per transport and "
            f"{plan.bare} runs of `true` per transport (one SSH channel with the remote "
            f"helper, against one local child). The machine was {results.quiet:.2f} cores "
            "busy before the measured runs.",
            "",
            f"**Goal (issue #6, point 8: median SSH run at most {GOAL_PCT:g} % above local, "
            f"connection open) met: {_yes(overhead <= GOAL_PCT)}: +{overhead:.1f} %** "
            f"({fmt_ms(results.median_ms(results.codex, 'ssh'))} ms against "
            f"{fmt_ms(results.median_ms(results.codex, 'local'))} ms).",
            "",
            render_table(
                ["what", "transport", "runs", "p50 ms", "p90 ms", "mean ms", "max ms"], rows
            ),
        ]
    )


# --- entry points ---------------------------------------------------------------------------


class _Options(Protocol):
    quick: bool
    quiet_wait: float


async def main(options: _Options) -> str:
    """``python -m bench ssh``: measure and return the markdown section."""
    plan = QUICK if options.quick else FULL
    return report(await measure(plan, quiet_wait=options.quiet_wait))


async def run(report_section: Callable[[str], None] | None = None, *, quick: bool = False) -> None:
    """Measure and hand the section to `report_section` (default: print it)."""
    section = report(await measure(QUICK if quick else FULL, quiet_wait=5.0 if quick else 20.0))
    (report_section or print)(section)


if __name__ == "__main__":
    asyncio.run(run(quick="--quick" in sys.argv))
