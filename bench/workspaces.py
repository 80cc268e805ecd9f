"""Suite ``workspaces``: time from "run assigned" to "codex starts" in a workspace.

Topology: a bare repository of 10,000 commits and 5,000 files (made with ``git
fast-import``), served by git's own ``http-backend`` behind the aiohttp wrapper of
``testkit/fakes/git_server.py`` on 127.0.0.1, in this process; `executor.workspace.
Workspaces` on `LocalTransport` makes the run's workspace, exactly as the pipeline does
before it starts codex. Three cases:

- cold: an empty ``WORKSPACE_ROOT``: the mirror is cloned (init, fetch of the whole
  history), then the conversation's worktree and branch are made;
- warm: the mirror exists; a new conversation: a fetch with nothing new, a worktree;
- follow-up: the conversation's worktree exists: a fetch and a snapshot of the worktree
  (where the run starts, for its diff).

Goal (issue 15, point 10): a warm start under 1 s for that repository.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from bench.common import Summary, fmt_ms, machine_lines, render_table, wait_quiet
from executor.settings import ExecutorSettings
from executor.transport_local import LocalTransport
from executor.workspace import Workspaces
from testkit.fakes.git_server import GIT_ENV, GitHttpServer

NAME = "workspaces"
TITLE = "Workspaces: from assigned to codex start"
GOAL_S = 1.0
FILES = 5_000
COMMITS = 10_000


def make_big_repo(bare: Path, files: int = FILES, commits: int = COMMITS) -> None:
    """A bare repository whose ``main`` has ``commits`` commits touching ``files`` files."""
    subprocess.run(
        ["git", "init", "--quiet", "--bare", "--initial-branch=main", str(bare)], check=True
    )
    subprocess.run(["git", "-C", str(bare), "config", "http.receivepack", "true"], check=True)
    lines: list[bytes] = []
    when = 1_700_000_000
    for n in range(commits):
        lines.append(b"commit refs/heads/main\n")
        lines.append(f"committer bench <bench@example.invalid> {when + n} +0000\n".encode())
        message = f"commit {n}\n".encode()
        lines.append(f"data {len(message)}\n".encode() + message)
        touched = range(files) if n == 0 else [n % files]
        for f in touched:
            body = f"file {f} version {n}\n".encode()
            path = f"src/d{f // 100:02d}/f{f:04d}.txt"
            lines.append(f"M 100644 inline {path}\ndata {len(body)}\n".encode() + body)
        lines.append(b"\n")
    subprocess.run(
        ["git", "-C", str(bare), "fast-import", "--quiet"],
        input=b"".join(lines),
        check=True,
        env={**os.environ, **GIT_ENV},
    )


class _Options(Protocol):
    quick: bool
    quiet_wait: float


async def measure(quick: bool, quiet_wait: float) -> tuple[dict[str, list[float]], float]:
    """Seconds per case, and how busy the machine was before."""
    files, commits = (500, 1_000) if quick else (FILES, COMMITS)
    rounds = 2 if quick else 5
    times: dict[str, list[float]] = {"cold": [], "warm": [], "follow-up": []}
    with tempfile.TemporaryDirectory(prefix="bench-ws-") as tmp_name:
        tmp = Path(tmp_name)
        forge = tmp / "forge"
        (forge / "acme").mkdir(parents=True)
        make_big_repo(forge / "acme" / "big.git", files, commits)
        server = GitHttpServer(forge)
        await server.start()
        transport = LocalTransport()
        try:
            quiet = await wait_quiet(quiet_wait)
            url = server.url("acme/big")
            for cold in range(rounds):
                settings = ExecutorSettings(  # type: ignore[call-arg]
                    _env_file=None,
                    WORKSPACE_ROOT=tmp / f"ws{cold}",
                    WORKSPACE_ALLOW_PROTOCOLS="http",
                    HUB_DB=tmp / "hub.db",
                )
                ws = Workspaces(settings, transport)
                ref = ws.resolve(url)

                async def timed(conversation: str) -> float:
                    start = time.perf_counter()
                    made = await ws.prepare(conversation, ref, "benchmark the start")  # noqa: B023
                    ws.release(made.key)  # noqa: B023
                    return time.perf_counter() - start

                times["cold"].append(await timed(f"c{cold}-0"))
                for n in range(1, 4):
                    times["warm"].append(await timed(f"c{cold}-{n}"))
                    times["follow-up"].append(await timed(f"c{cold}-{n}"))
        finally:
            await transport.close()
            await server.close()
    return times, quiet


def report(times: dict[str, list[float]], quiet: float, quick: bool) -> str:
    rows = []
    for case, values in times.items():
        s = Summary.of(values)
        rows.append([case, f"{s.count}", fmt_ms(s.p50), fmt_ms(s.p90), fmt_ms(s.max)])
    warm = Summary.of(times["warm"]).p50 / 1000
    files, commits = (500, 1_000) if quick else (FILES, COMMITS)
    met = "yes" if warm < GOAL_S else "no"
    return "\n".join(
        [
            f"## {TITLE} (`{NAME}`)",
            "",
            *machine_lines(),
            "",
            f"**Method.** A bare repository of {commits:,} commits and {files:,} files, "
            "served by `git http-backend` (aiohttp CGI wrapper, 127.0.0.1, this process). "
            "`Workspaces.prepare` on `LocalTransport`, the step the pipeline takes between "
            "the run's assignment and codex's start: cold (empty `WORKSPACE_ROOT`: the "
            "mirror is cloned), warm (the mirror exists; a new conversation's worktree and "
            "branch) and follow-up (the conversation's worktree exists: fetch and snapshot). "
            f"The machine was {quiet:.2f} cores busy before.",
            "",
            f"**Goal (issue 15, point 10: warm start under {GOAL_S:g} s) met: {met}** "
            f"(p50 {fmt_ms(warm * 1000)} ms).",
            "",
            render_table(["case", "runs", "p50 ms", "p90 ms", "max ms"], rows),
        ]
    )


async def main(options: _Options) -> str:
    """``python -m bench workspaces``: measure and return the markdown section."""
    times, quiet = await measure(options.quick, options.quiet_wait)
    return report(times, quiet, options.quick)


async def run(report_section: Callable[[str], None] | None = None, *, quick: bool = False) -> None:
    """Measure and hand the section to `report_section` (default: print it)."""
    times, quiet = await measure(quick, 5.0)
    (report_section or print)(report(times, quiet, quick))


if __name__ == "__main__":
    asyncio.run(run(quick="--quick" in sys.argv))
