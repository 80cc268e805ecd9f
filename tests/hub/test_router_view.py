"""The router's read API (hub.router_view): the counts and runs metrics, the runs API and
readiness read, instead of the router's internals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hub.bus import Bus
from hub.router import Load, Router
from hub.settings import HubSettings
from hub.store import Store
from tests.conftest import NODE_TOKEN
from wire import Hello, LoginState, ResultFrame


class _Link:
    """A node connection that keeps what the router sends it."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.sent: list[dict[str, Any]] = []

    def send(self, frame: dict[str, Any]) -> None:
        self.sent.append(frame)

    def close(self, code: int, reason: str) -> None:
        pass


async def test_load_and_live_run_show_the_queue_the_nodes_and_the_unfinished_runs(
    tmp_path: Path,
) -> None:
    """load() counts queued and running runs, nodes, slots and logged-in executors, and
    live_run() gives a run while it is unfinished and None once it has ended."""
    settings = HubSettings(HUB_PORT=0, HUB_DB=tmp_path / "hub.db", HUB_TOKEN=NODE_TOKEN)
    store = Store(settings.db)
    await store.open()
    router = Router(store, Bus(), settings)
    await router.start()
    try:
        tickets = [await router.submit(f"p{n}", origin={"source": "http"}) for n in range(3)]
        executor = _Link("exec-1")
        router.executor_connected(
            executor,
            Hello(
                type="hello",
                role="executor",
                node_id=executor.node_id,
                capacity=2,
                login=LoginState(logged_in=True),
            ),
        )
        router.bridge_connected(
            _Link("slack-1"),
            Hello(type="hello", role="bridge", node_id="slack-1", platform="slack"),
        )
        load = router.load()
        assert (load.queued, load.running, load.capacity) == (1, 2, 2)
        assert (load.executors, load.bridges, load.logged_in, load.outbox) == (1, 1, 1, 0)
        assert isinstance(load, Load)

        first = tickets[0].run
        assert router.live_run(first.id) is first
        result = ResultFrame(type="result", run_id=first.id, status="succeeded", answer="ok")
        await router.on_executor_frame(executor, result)
        assert router.live_run(first.id) is None
        assert router.load().queued == 0 and router.load().running == 2
    finally:
        await router.close()
        await store.close()
