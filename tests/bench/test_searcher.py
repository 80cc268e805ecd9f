"""The ``growth`` suite's searching client (``python -m bench.searcher``), a process of
its own, against a stand-in for the hub's ``GET /api/runs`` on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from bench.common import ROOT
from testkit.procs import clean_env

KEY = "sk-test-searcher"


@asynccontextmanager
async def _runs_api(
    status: int = 200,
) -> AsyncIterator[tuple[str, list[str], asyncio.Event]]:
    """A server answering ``GET /api/runs`` (with ``status``), the queries it saw, and an
    event set at the fourth."""
    seen: list[str] = []
    fourth = asyncio.Event()

    async def runs(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {KEY}":
            return web.json_response({"error": "who?"}, status=401)
        seen.append(request.query["q"])
        if len(seen) >= 4:
            fourth.set()
        return web.json_response({"runs": [], "next_before": None}, status=status)

    app = web.Application()
    app.router.add_get("/api/runs", runs)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", seen, fourth
    finally:
        await runner.cleanup()


async def _start(url: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.searcher",
        "--url",
        url,
        "--key",
        KEY,
        "--words",
        "alpha,beta",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env=clean_env(),
    )


async def test_searcher_searches_between_go_and_stop_and_reports_each_latency() -> None:
    """Ready after one search; between ``go`` and ``stop`` it searches back to back with
    the key and the given words, and reports a latency per search and its CPU time."""
    async with _runs_api() as (url, seen, fourth):
        proc = await _start(url)
        assert proc.stdin is not None and proc.stdout is not None
        try:
            ready = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert json.loads(ready) == {"ready": True}
            assert len(seen) == 1
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
            await asyncio.wait_for(fourth.wait(), 30)  # three searches after "go"
            proc.stdin.write(b"stop\n")
            await proc.stdin.drain()
            report = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
            assert await asyncio.wait_for(proc.wait(), 30) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    # Every search after "go" is counted, each with a positive latency (the one made
    # before "ready" is not).
    assert len(report["latencies"]) == len(seen) - 1
    assert all(0 < s < 30 for s in report["latencies"])
    assert report["cpu_s"] > 0
    assert set(seen) <= {"alpha", "beta"}


async def test_searcher_that_is_refused_exits_with_the_status() -> None:
    """A search answered with anything but 200 ends the process (exit 1, the status on
    stderr): a bench never counts failed searches as fast ones."""
    async with _runs_api(status=503) as (url, _, _):
        proc = await _start(url)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert stdout == b""
    assert b"HTTP 503" in stderr
