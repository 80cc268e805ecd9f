"""What every bench suite shares: processes, load loops, statistics, the markdown report.

- :func:`bench_proc` makes a :class:`testkit.procs.Proc` (the process helper the tests
  use too) as the bench needs one: its output straight to a log file, its process group
  ended (SIGTERM, then SIGKILL) when the ``async with`` block is left, whatever happens;
  :func:`wait_ready` polls a readiness URL, bounded, and fails early if one dies.
- :func:`closed_loop` drives ``concurrency`` workers that each send one request after
  another, for a count or a duration; :func:`open_loop` starts requests at Poisson
  arrivals. Both return every latency.
- :func:`cpu_seconds` reads a process's CPU time from /proc (its memory:
  :func:`testkit.procs.rss_kib`);
  :func:`machine_busy_seconds` and :func:`wait_quiet` tell whether others are using
  the machine (a shared one makes figures mean less).
- :func:`percentile` and :class:`Summary` turn latencies into p50/p90/p99/max.
- :func:`render_table` draws a markdown table; :func:`replace_section` swaps one
  suite's section of ``docs/benchmarks.md`` and leaves the others as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import math
import os
import platform
import random
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from testkit.procs import Proc

ROOT = Path(__file__).resolve().parent.parent
DOC_PATH = ROOT / "docs" / "benchmarks.md"
DOC_TITLE = "# Benchmarks"
DOC_PREAMBLE = (
    "Written by `make bench` (`python -m bench [suite ...]`); each suite rewrites only "
    "its own section, between its `bench:` markers. Do not edit inside the markers by "
    "hand: the next run replaces it.\n"
)


class BenchError(RuntimeError):
    """A benchmark could not run (a process did not start, a request failed)."""


# --- statistics ------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100) by linear interpolation between closest ranks.

    The same definition as numpy's default: rank ``p/100 * (n - 1)`` in sorted order.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} is outside 0..100")
    ordered = sorted(values)
    rank = p / 100 * (len(ordered) - 1)
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Summary:
    """Latency statistics of one measurement, in milliseconds."""

    count: int
    p50: float
    p90: float
    p99: float
    max: float
    mean: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Summary:
        """Summarize latencies given in seconds."""
        ms = sorted(s * 1000.0 for s in seconds)
        return cls(
            count=len(ms),
            p50=percentile(ms, 50),
            p90=percentile(ms, 90),
            p99=percentile(ms, 99),
            max=ms[-1],
            mean=sum(ms) / len(ms),
        )


def fmt_ms(value: float) -> str:
    """A latency in ms, with the precision that matters at its size."""
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


# --- load ------------------------------------------------------------------------


@dataclass
class LoadResult:
    """What a closed loop measured: each latency (s), the errors, the wall time (s)."""

    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    #: Why the loop stopped early, if it did (an open loop the target fell behind).
    stopped: str = ""

    @property
    def rate(self) -> float:
        """Completed requests per second of wall time."""
        return len(self.latencies) / self.elapsed if self.elapsed > 0 else 0.0


async def closed_loop(
    request: Callable[[int], Awaitable[None]],
    concurrency: int,
    *,
    count: int | None = None,
    duration: float | None = None,
    max_errors: int = 20,
) -> LoadResult:
    """Run ``request(i)`` from ``concurrency`` workers, each one after the other.

    Stops after ``count`` requests in all or after ``duration`` seconds, whichever is
    given (a request under way then still completes and counts). A request that raises
    is an error; after ``max_errors`` the loop gives up with :class:`BenchError`.
    """
    if (count is None) == (duration is None):
        raise ValueError("give exactly one of count and duration")
    result = LoadResult()
    issued = 0
    clock = time.perf_counter
    with client_gc_paused():
        start = clock()
        deadline = start + duration if duration is not None else math.inf

        async def worker() -> None:
            nonlocal issued
            while True:
                if count is not None and issued >= count:
                    return
                if clock() >= deadline:
                    return
                i = issued
                issued += 1
                t0 = clock()
                try:
                    await request(i)
                except Exception as exc:
                    result.errors.append(f"{type(exc).__name__}: {exc}")
                    if len(result.errors) >= max_errors:
                        raise BenchError(
                            f"{len(result.errors)} requests failed; first: {result.errors[0]}"
                        ) from exc
                    continue
                result.latencies.append(clock() - t0)

        with _first_error():
            async with asyncio.TaskGroup() as group:
                for n in range(concurrency):
                    group.create_task(worker(), name=f"bench:worker:{n}")
        result.elapsed = clock() - start
    return result


@contextlib.contextmanager
def client_gc_paused() -> Iterator[None]:
    """The load's own process without its cyclic garbage collector while it measures.

    A full collection of the bench process took 50-60 ms here (the objects of its
    imports and of the growth suite's bulk inserts): one that fell inside a phase was
    measured as the target's latency (a 64-concurrent p99 of 80 ms at one store size in
    two growth runs, and the floor's own spikes to 45-68 ms). What is alive before the
    phase is collected and frozen first, outside the clock; the collector runs again
    between phases.
    """
    enabled = gc.isenabled()
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextlib.contextmanager
def _first_error() -> Iterator[None]:
    """Raise a task group's first error itself, not an ExceptionGroup around it."""
    try:
        yield
    except BaseExceptionGroup as group:
        raise group.exceptions[0] from None


async def open_loop(
    request: Callable[[int], Awaitable[None]],
    rate: float,
    count: int,
    *,
    max_in_flight: int = 256,
    seed: int = 10,
    max_errors: int = 20,
) -> LoadResult:
    """Start ``count`` requests at Poisson arrivals, ``rate`` a second on average.

    Each latency runs from the request's *scheduled* start, so a client that falls
    behind shows as latency instead of hiding it (no coordinated omission). When
    ``max_in_flight`` requests are under way at once the target cannot keep up: no more
    are started, and :attr:`LoadResult.stopped` says so.
    """
    rng = random.Random(seed)
    result = LoadResult()
    clock = time.perf_counter
    in_flight = 0

    async def one(i: int, scheduled: float) -> None:
        nonlocal in_flight
        try:
            await request(i)
        except Exception as exc:
            result.errors.append(f"{type(exc).__name__}: {exc}")
        else:
            result.latencies.append(clock() - scheduled)
        finally:
            in_flight -= 1

    with client_gc_paused():
        start = clock()
        at = start
        with _first_error():
            async with asyncio.TaskGroup() as group:
                for i in range(count):
                    at += rng.expovariate(rate)
                    delay = at - clock()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    if len(result.errors) >= max_errors:
                        raise BenchError(
                            f"{len(result.errors)} requests failed; first: {result.errors[0]}"
                        )
                    if in_flight >= max_in_flight:
                        result.stopped = (
                            f"fell behind {rate:g}/s: {in_flight} under way after {i:,} started"
                        )
                        break
                    in_flight += 1
                    group.create_task(one(i, at), name=f"bench:open:{i}")
        result.elapsed = clock() - start
    return result


# --- processes -------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU time of a process (or of its thread ``tid``) so far, in seconds."""
    where = f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat"
    stat = Path(where).read_text()
    # The command name may hold spaces; fields after it are fixed.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds all cores of the machine have spent not idle since boot (/proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _CLK_TCK


async def wait_quiet(max_wait: float = 20.0, below: float = 0.2, window: float = 1.0) -> float:
    """Wait (at most ``max_wait`` s) until the machine is busy less than ``below`` cores.

    Others may share the machine; the figures mean more on a quiet one. Returns how
    many cores were busy in the last ``window``.
    """
    deadline = time.monotonic() + max_wait
    while True:
        before = machine_busy_seconds()
        await asyncio.sleep(window)
        busy = (machine_busy_seconds() - before) / window
        if busy < below or time.monotonic() >= deadline:
            return busy


def bench_proc(
    name: str, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, log_path: Path
) -> Proc:
    """A process as the bench runs one: its output straight to ``log_path`` (the bench
    reads none of it while it measures), its whole group ended on the way out."""
    return Proc(name, argv, env=env, cwd=cwd, log_path=log_path, capture=False, group=True)


async def wait_ready(
    session: aiohttp.ClientSession,
    url: str,
    *,
    procs: Iterable[Proc] = (),
    headers: Mapping[str, str] | None = None,
    within: float = 30.0,
    interval: float = 0.05,
) -> dict[str, Any]:
    """Poll ``url`` until it answers 200; fail early if one of ``procs`` has died."""
    last = "no answer yet"
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for proc in procs:
            proc.check_alive()
        try:
            async with session.get(
                url, headers=headers, timeout=aiohttp.ClientTimeout(total=2)
            ) as resp:
                body = await resp.json(content_type=None)
                if resp.status == 200:
                    return dict(body) if isinstance(body, dict) else {}
                last = f"HTTP {resp.status}: {body}"
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        await asyncio.sleep(interval)
    raise BenchError(f"{url} not ready within {within:g} s ({last})")


# --- the machine -----------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def git_revision() -> str:
    """The checked-out commit, with ``+changes`` when the work tree differs from it."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{rev}+changes" if dirty else rev


def machine_lines() -> list[str]:
    """Markdown bullet lines that say where and when a suite ran."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [
        f"- Machine: {os.cpu_count()} CPUs (`nproc`), {cpu_model()}, "
        f"{platform.system()} {platform.release()}",
        f"- Python {platform.python_version()} ({platform.python_implementation()}), "
        f"aiohttp {aiohttp.__version__}",
        f"- Date: {now}; code at `{git_revision()}`",
    ]


def load_average() -> str:
    """The machine's load averages over 1, 5 and 15 minutes (/proc/loadavg)."""
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "unknown"


def with_load(section: str, before: str, after: str) -> str:
    """`section` with a line saying the machine's load before and after the suite ran.

    It goes after the machine lines (the ``- Date:`` line), else after the title.
    """
    lines = section.split("\n")
    line = (
        f"- Load (1, 5, 15 min averages, /proc/loadavg; {os.cpu_count()} cores): "
        f"{before} before the suite, {after} after"
    )
    at = next((n + 1 for n, text in enumerate(lines) if text.startswith("- Date:")), 1)
    return "\n".join([*lines[:at], line, *lines[at:]])


# --- the report ------------------------------------------------------------------


def render_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A markdown table; numbers are right-aligned."""
    body = [list(map(str, row)) for row in rows]
    for row in body:
        if len(row) != len(headers):
            raise ValueError(f"row {row} has {len(row)} cells, not {len(headers)}")
    numeric = [
        all(_looks_numeric(row[i]) for row in body) and bool(body) for i in range(len(headers))
    ]
    lines = [
        "| " + " | ".join(headers) + " |",
        "| " + " | ".join("---:" if num else "---" for num in numeric) + " |",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _looks_numeric(cell: str) -> bool:
    try:
        float(cell.replace(",", "").rstrip("%"))
    except ValueError:
        return False
    return True


def section_markers(name: str) -> tuple[str, str]:
    """The comment lines that enclose suite ``name``'s section."""
    return f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"


def replace_section(document: str, name: str, body: str) -> str:
    """``document`` with suite ``name``'s section set to ``body``; the rest untouched.

    A section not yet in the document is appended at its end; an empty document gets
    the title and preamble first.
    """
    begin, end = section_markers(name)
    block = f"{begin}\n{body.strip()}\n{end}"
    start = document.find(begin)
    if start >= 0:
        stop = document.find(end, start)
        if stop < 0:
            raise ValueError(f"section {name!r} has a begin marker and no end marker")
        return document[:start] + block + document[stop + len(end) :]
    if not document.strip():
        document = f"{DOC_TITLE}\n\n{DOC_PREAMBLE}"
    return document.rstrip("\n") + "\n\n" + block + "\n"


def write_section(name: str, body: str, path: Path = DOC_PATH) -> None:
    """Replace suite ``name``'s section of the report at ``path``."""
    document = path.read_text() if path.exists() else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(replace_section(document, name, body))
