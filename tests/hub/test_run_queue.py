"""The router's queue: same order as a full walk, flat work per run, no memory per idle session."""

from __future__ import annotations

import contextlib
import random
import sys
import tracemalloc
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import FrameType
from typing import Any

import hub.finishing
import hub.node_frames
import hub.node_registry
import hub.outbox
import hub.placement
import hub.router
import hub.router_state
import hub.run_queue
import hub.scheduler
from hub.bus import Bus
from hub.router import Router
from hub.run_queue import RunQueue
from hub.scheduler import QUEUE_SHOWN
from hub.settings import HubSettings
from hub.store import Store
from tests.conftest import NODE_TOKEN
from wire import Hello, ResultFrame


class _Link:
    """An executor connection that keeps what the router sends it."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.sent: list[dict[str, Any]] = []

    def send(self, frame: dict[str, Any]) -> None:
        self.sent.append(frame)

    def close(self, code: int, reason: str) -> None:
        pass


def _walk(order: list[str], session: dict[str, str | None], busy: set[str]) -> str | None:
    """The old dispatch: the first queued run whose session is free and has none before."""
    seen: set[str] = set()
    for run_id in order:
        key = session[run_id]
        if key is None:
            return run_id
        if key not in busy and key not in seen:
            return run_id
        seen.add(key)
    return None


def test_the_queue_offers_runs_in_the_order_a_full_walk_would() -> None:
    """Over random submits, cancels, starts, ends and runs taken back, the next run to
    start is always the one walking the whole queue would pick."""
    rng = random.Random(19)
    busy: dict[str, str] = {}
    queue = RunQueue(busy)
    order: list[str] = []
    session: dict[str, str | None] = {}
    running: list[str] = []
    for step in range(4000):
        op = rng.random()
        if op < 0.45:
            run_id = f"r{step}"
            key = rng.choice([None, "a", "b", "c", "d"])
            session[run_id] = key
            order.append(run_id)
            queue.add(run_id, key)
        elif op < 0.55 and order:
            run_id = rng.choice(order)
            order.remove(run_id)
            queue.discard(run_id)
        elif op < 0.8:
            run_id = queue.peek_ready()
            assert run_id == _walk(order, session, set(busy))
            if run_id is not None:
                key = session[run_id]
                if key is not None:
                    busy[key] = run_id
                queue.discard(run_id)
                order.remove(run_id)
                running.append(run_id)
        elif running:
            run_id = running.pop(rng.randrange(len(running)))
            key = session[run_id]
            if key is not None:
                del busy[key]
            if rng.random() < 0.2:  # taken back from a lost executor: to the front
                order.insert(0, run_id)
                queue.add(run_id, key, front=True)
            elif key is not None:
                queue.session_freed(key)
        assert list(queue) == order
    assert queue.peek_ready() == _walk(order, session, set(busy))


class _LineCounter:
    """Counts the lines the router (all its job modules) and its queue execute (work, not
    wall-clock time)."""

    def __init__(self) -> None:
        modules = (
            hub.router,
            hub.router_state,
            hub.scheduler,
            hub.node_registry,
            hub.node_frames,
            hub.outbox,
            hub.finishing,
            hub.run_queue,
            hub.placement,
        )
        self.files = {module.__file__ for module in modules}
        self.lines = 0

    def _local(self, frame: FrameType, event: str, arg: Any) -> Callable[..., Any]:
        if event == "line":
            self.lines += 1
        return self._local

    def _global(self, frame: FrameType, event: str, arg: Any) -> Callable[..., Any] | None:
        return self._local if frame.f_code.co_filename in self.files else None

    def __enter__(self) -> _LineCounter:
        sys.settrace(self._global)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.settrace(None)


@contextlib.asynccontextmanager
async def _router(db: Path) -> AsyncIterator[Router]:
    settings = HubSettings(
        HUB_PORT=0, HUB_DB=db, HUB_TOKEN=NODE_TOKEN, HUB_AUTH="none", HUB_QUEUE_LIMIT=100_000
    )
    store = Store(settings.db)
    await store.open()
    router = Router(store, Bus(), settings)
    await router.start()
    try:
        yield router
    finally:
        await router.close()
        await store.close()


def _connect(router: Router, capacity: int) -> _Link:
    link = _Link("exec-1")
    hello = Hello(type="hello", role="executor", node_id=link.node_id, capacity=capacity)
    router.executor_connected(link, hello)
    return link


async def _finish(router: Router, link: _Link, run_id: str, thread: str | None = None) -> None:
    frame = ResultFrame(
        type="result", run_id=run_id, status="succeeded", answer="ok", thread_id=thread
    )
    await router.on_executor_frame(link, frame)


async def _lines_per_run(router: Router, queued: int, measured: int) -> tuple[float, float]:
    """Lines run per submit and per finish with `queued` runs waiting in one session."""
    session = f"http:s{queued}"
    for n in range(queued):
        await router.submit(f"p{n}", origin={"source": "http"}, session_key=session)
    with _LineCounter() as submits:
        for n in range(measured):
            await router.submit(f"q{n}", origin={"source": "http"}, session_key=session)
    link = _connect(router, capacity=1)
    with _LineCounter() as finishes:
        for _ in range(measured):
            assign = next(f for f in reversed(link.sent) if f["type"] == "assign")
            await _finish(router, link, assign["run_id"])
    return submits.lines / measured, finishes.lines / measured


async def test_router_work_per_run_stays_flat_as_one_session_queues_up(tmp_path: Path) -> None:
    """Submitting to, and finishing runs of, a session with 5,000 runs queued costs the
    router no more lines of work per run than with 50 queued."""
    async with _router(tmp_path / "small.db") as router:
        small = await _lines_per_run(router, 50, 50)
    async with _router(tmp_path / "large.db") as router:
        large = await _lines_per_run(router, 5000, 50)
    assert large[0] < small[0] * 1.5, (small, large)
    assert large[1] < small[1] * 1.5, (small, large)


async def _queue_info_allocated(router: Router, queued: int) -> tuple[int, dict[str, Any]]:
    """Peak bytes allocated by one ``queue_info`` (the monitor's queue message, published
    on every submit and finish) with `queued` runs waiting in one session, and the message."""
    for n in range(queued):
        await router.submit(f"p{n}", origin={"source": "http"}, session_key="http:deep")
    # tracemalloc counts every thread: the store's writer, still writing those runs,
    # must be done first (its allocations made the peak 20 KB one run, 39 KB the next),
    # and what it may still do after (search indexing) only adds: the least of three.
    await router.store.flush()
    peaks = []
    for _ in range(3):
        tracemalloc.start()
        try:
            info = router.queue_info()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        peaks.append(peak)
    return min(peaks), info


async def test_the_queue_message_costs_the_same_however_many_runs_wait(tmp_path: Path) -> None:
    """The queue message shows the first runs in order and, with 5,000 runs queued, takes
    no more memory to build than with 200 (it reads the head, not a copy of the queue)."""
    async with _router(tmp_path / "small.db") as router:
        small, _ = await _queue_info_allocated(router, 200)
    async with _router(tmp_path / "large.db") as router:
        large, info = await _queue_info_allocated(router, 5000)
        order = list(router.queue.head(5000))
    assert info["total"] == 5000 and len(order) == 5000
    assert [r["id"] for r in info["runs"]] == order[:QUEUE_SHOWN]
    assert [r["position"] for r in info["runs"]] == list(range(1, QUEUE_SHOWN + 1))
    assert large < small * 1.5, (small, large)


async def test_idle_sessions_leave_nothing_in_the_router(tmp_path: Path) -> None:
    """Once every run of many sessions has ended (and is on disk), the router keeps no
    per-session state; a session's next run still continues its codex thread."""
    async with _router(tmp_path / "hub.db") as router:
        await _idle_sessions(router)


async def _idle_sessions(router: Router) -> None:
    link = _connect(router, capacity=4)
    for n in range(200):
        ticket = await router.submit("hi", origin={"source": "http"}, session_key=f"http:{n}")
        await _finish(router, link, ticket.run.id, thread=f"thread-{n}")
    await router.reset_session("http:7")
    assert router.sessions == {}
    assert router.session_gen == {}
    assert not router.session_active and not router.queue and router.queue.sessions() == 0
    await router.submit("again", origin={"source": "http"}, session_key="http:3")
    assert link.sent[-1]["type"] == "assign" and link.sent[-1]["thread_id"] == "thread-3"
    await router.submit("fresh", origin={"source": "http"}, session_key="http:7")
    assert link.sent[-1]["type"] == "assign" and link.sent[-1]["thread_id"] is None


def _connect_labelled(router: Router, node_id: str, capacity: int, labels: list[str]) -> _Link:
    link = _Link(node_id)
    hello = Hello(type="hello", role="executor", node_id=node_id, capacity=capacity, labels=labels)
    router.executor_connected(link, hello)
    return link


def _assigned(link: _Link) -> list[str]:
    return [f["run_id"] for f in link.sent if f["type"] == "assign"]


async def test_a_run_no_free_executor_fits_does_not_hold_up_the_runs_behind_it(
    tmp_path: Path,
) -> None:
    """Runs for ``gpu`` queued first, with the gpu executor full, wait; the untargeted runs
    behind them go to the free executor at once, and the gpu runs go to the gpu
    executor, oldest first, as its slots free."""
    async with _router(tmp_path / "hub.db") as router:
        gpu = _connect_labelled(router, "gpu-box", 1, ["gpu"])
        plain = _connect_labelled(router, "plain", 3, [])
        gpu_runs = [
            (await router.submit(f"g{n}", origin={"source": "http"}, target="gpu")).run.id
            for n in range(4)
        ]
        others = [
            (await router.submit(f"p{n}", origin={"source": "http"})).run.id for n in range(3)
        ]
        assert _assigned(gpu) == gpu_runs[:1]
        assert _assigned(plain) == others
        for n in range(3):
            await _finish(router, gpu, gpu_runs[n])
            assert _assigned(gpu) == gpu_runs[: n + 2]
        assert _assigned(plain) == others


async def _lines_per_untargeted_run(router: Router, parked: int, measured: int) -> float:
    """Lines run per untargeted submit and its finish with `parked` gpu runs waiting."""
    gpu = _connect_labelled(router, "gpu-box", 1, ["gpu"])
    plain = _connect_labelled(router, "plain", 1, [])
    for n in range(parked):
        await router.submit(f"g{n}", origin={"source": "http"}, target="gpu")
    with _LineCounter() as work:
        for n in range(measured):
            ticket = await router.submit(f"p{n}", origin={"source": "http"})
            assert _assigned(plain)[-1] == ticket.run.id
            await _finish(router, plain, ticket.run.id)
    assert len(_assigned(gpu)) == 1
    return work.lines / measured


async def test_router_work_per_run_stays_flat_however_many_targeted_runs_wait(
    tmp_path: Path,
) -> None:
    """With 5,000 runs waiting for a busy gpu executor, starting and ending an untargeted
    run costs the router no more lines of work than with 200 waiting (both more than the
    queue message names: QUEUE_SHOWN)."""
    async with _router(tmp_path / "small.db") as router:
        small = await _lines_per_untargeted_run(router, 200, 50)
    async with _router(tmp_path / "large.db") as router:
        large = await _lines_per_untargeted_run(router, 5000, 50)
    assert large < small * 1.5, (small, large)
