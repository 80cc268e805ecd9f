"""``python -m bench [SUITE ...]``: run benchmark suites and rewrite their sections.

With no suite named, every suite runs. Each section says where it ran (cores, CPU
model, commit: `bench.common.machine_lines`) and the machine's load averages before and
after the suite (added here). Each suite's section of ``docs/benchmarks.md``
is replaced as soon as that suite finishes; the other sections stay as they are.

Adding a suite: write ``bench/<name>.py`` that measures and renders its markdown
section (see :mod:`bench.hub_latency`, built on :mod:`bench.common`), then add a
:class:`Suite` to :data:`SUITES` whose ``main(options)`` coroutine returns that section.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import (
    engines,
    feed_fanout,
    growth,
    hub_codex,
    hub_engines,
    hub_latency,
    router_scale,
    slack_latency,
    ssh_overhead,
    store_writer,
    telegram_latency,
    workspaces,
)
from bench.common import DOC_PATH, BenchError, load_average, with_load, write_section
from kernel.process import loop_factory
from testkit.procs import ProcExited


@dataclass(frozen=True)
class Options:
    """What the command line asks of every suite."""

    quick: bool
    profile: bool
    quiet_wait: float


@dataclass(frozen=True)
class Suite:
    """A benchmark suite: its name on the command line and what it runs."""

    name: str
    title: str
    main: Callable[[Options], Coroutine[Any, Any, str]]


async def _hub(options: Options) -> str:
    plan = hub_latency.QUICK if options.quick else hub_latency.FULL
    results = await hub_latency.measure(
        plan, profile=options.profile, quiet_wait=options.quiet_wait
    )
    return hub_latency.report(results)


#: Every suite, in the order ``python -m bench`` runs them.
SUITES: dict[str, Suite] = {
    suite.name: suite
    for suite in [
        Suite(hub_latency.NAME, hub_latency.TITLE, _hub),
        Suite(feed_fanout.NAME, feed_fanout.TITLE, feed_fanout.main),
        Suite(slack_latency.NAME, slack_latency.TITLE, slack_latency.main),
        Suite(telegram_latency.NAME, telegram_latency.TITLE, telegram_latency.main),
        Suite(ssh_overhead.NAME, ssh_overhead.TITLE, ssh_overhead.main),
        Suite(engines.NAME, engines.TITLE, engines.main),
        Suite(workspaces.NAME, workspaces.TITLE, workspaces.main),
        Suite(growth.NAME, growth.TITLE, growth.main),
        Suite(hub_codex.NAME, hub_codex.TITLE, hub_codex.main),
        Suite(hub_engines.NAME, hub_engines.TITLE, hub_engines.main),
        Suite(router_scale.NAME, router_scale.TITLE, router_scale.main),
        Suite(store_writer.NAME, store_writer.TITLE, store_writer.main),
    ]
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run codex-hub's benchmarks and write docs/benchmarks.md.",
    )
    parser.add_argument(
        "suites",
        nargs="*",
        metavar="SUITE",
        help=f"suites to run (default: all): {', '.join(SUITES)}",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a tenth of the load, to check the harness; prints, never writes the doc",
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile phase")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=20.0,
        metavar="S",
        help="wait up to S seconds for the machine to be idle before a suite (default 20)",
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print the sections, leave the doc alone"
    )
    parser.add_argument(
        "--doc", type=Path, default=DOC_PATH, help=f"the report to rewrite ({DOC_PATH.name})"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    unknown = [name for name in args.suites if name not in SUITES]
    if unknown:
        known = ", ".join(SUITES)
        print(f"bench: unknown suite {', '.join(unknown)}; known: {known}", file=sys.stderr)
        return 2
    options = Options(quick=args.quick, profile=not args.no_profile, quiet_wait=args.quiet_wait)
    write = not (args.no_write or args.quick)
    for name in args.suites or list(SUITES):
        suite = SUITES[name]
        print(f"== {suite.name}: {suite.title}", flush=True)
        started = time.monotonic()
        load_before = load_average()
        try:
            # The load generator runs on the same loop as the processes it measures.
            with asyncio.Runner(loop_factory=loop_factory()) as runner:
                section = runner.run(suite.main(options))
        except (BenchError, ProcExited) as exc:
            print(f"bench: suite {name} failed: {exc}", file=sys.stderr)
            return 1
        print(f"== {suite.name} took {time.monotonic() - started:.0f} s", flush=True)
        # Every suite says how loaded the (often shared) machine was while it ran.
        section = with_load(section, load_before, load_average())
        if write:
            write_section(suite.name, section, args.doc)
            print(f"== wrote section {suite.name!r} of {args.doc}", flush=True)
        else:
            print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
