"""The SQLite store: durable, paged, idempotent where re-sends happen."""

from __future__ import annotations

import time
from pathlib import Path

from hub.store import Delivery, Run, Store


def make_run(i: int, **fields: object) -> Run:
    now = time.time()
    values: dict[str, object] = {
        "id": f"run_{i:04d}",
        "prompt": f"prompt {i}",
        "origin": {"source": "http"},
        "source": "http",
        "created_at": now,
        "updated_at": now,
    }
    values.update(fields)
    return Run(**values)  # type: ignore[arg-type]


async def test_a_run_survives_reopening_the_store(tmp_path: Path) -> None:
    """What was written is there after the store is closed and opened again."""
    async with Store(tmp_path / "a.db") as store:
        await store.insert_run(make_run(1, session_key="s"))
        await store.update_run("run_0001", state="running", executor="ex")
    async with Store(tmp_path / "a.db") as store:
        run = await store.get_run("run_0001")
    assert run is not None
    assert (run.state, run.executor, run.session_key) == ("running", "ex", "s")
    assert run.origin == {"source": "http"}


async def test_list_runs_pages_newest_first_with_filters(tmp_path: Path) -> None:
    """Pages follow the cursor without overlap; filters combine."""
    async with Store(tmp_path / "a.db") as store:
        for i in range(25):
            source = "slack" if i % 2 else "http"
            await store.insert_run(make_run(i, source=source, prompt=f"task {i} 50%_off"))
        page1, cursor = await store.list_runs(limit=10)
        page2, cursor2 = await store.list_runs(limit=10, before=cursor)
        page3, cursor3 = await store.list_runs(limit=10, before=cursor2)
        assert [r.id for r in page1][:2] == ["run_0024", "run_0023"]
        ids = [r.id for r in page1 + page2 + page3]
        assert len(ids) == len(set(ids)) == 25
        assert cursor3 is None
        slack, _ = await store.list_runs(sources=["slack"], limit=100)
        assert len(slack) == 12 and all(r.source == "slack" for r in slack)
        found, _ = await store.list_runs(query="task 7 50%_", limit=100)
        assert [r.id for r in found] == ["run_0007"]
        none, _ = await store.list_runs(query="%", states=["failed"], limit=100)
        assert none == []


async def test_events_resent_by_an_executor_are_stored_once(tmp_path: Path) -> None:
    """The same executor sequence number is ignored the second time."""
    async with Store(tmp_path / "a.db") as store:
        await store.insert_run(make_run(1))
        await store.add_events("run_0001", [(1, 1.0, "codex", {"a": 1}, 1)])
        await store.add_events("run_0001", [(2, 1.0, "codex", {"a": 1}, 1)])
        await store.add_events("run_0001", [(3, 2.0, "state", {"state": "running"}, None)])
        events = await store.get_events("run_0001")
        assert [(e["seq"], e["kind"]) for e in events] == [(1, "codex"), (3, "state")]
        assert await store.event_positions("run_0001") == (3, 1)


async def test_outbox_keeps_a_reply_until_acknowledged(tmp_path: Path) -> None:
    """A delivery stays pending across restarts until acked, once."""
    async with Store(tmp_path / "a.db") as store:
        await store.add_delivery(Delivery("d1", "run_1", "slack", {"answer": "x"}, time.time()))
    async with Store(tmp_path / "a.db") as store:
        pending = await store.pending_deliveries("slack")
        assert [d.id for d in pending] == ["d1"] and pending[0].payload == {"answer": "x"}
        assert await store.pending_deliveries("telegram") == []
        assert await store.ack_delivery("d1") is True
        assert await store.ack_delivery("d1") is False
        assert await store.count_pending_deliveries() == 0


async def test_many_concurrent_writes_commit_in_groups(tmp_path: Path) -> None:
    """A thousand concurrent inserts all land (they share transactions)."""
    import asyncio

    async with Store(tmp_path / "a.db") as store:
        await asyncio.gather(*(store.insert_run(make_run(i)) for i in range(1000)))
        counts = await store.count_runs()
    assert counts == {("queued", "http"): 1000}


async def test_commits_never_checkpoint_the_checkpointer_does(tmp_path: Path) -> None:
    """A commit never copies the WAL back (an fsync); the checkpointer thread does."""
    async with Store(tmp_path / "a.db") as store:
        auto = await store.call(lambda conn: conn.execute("PRAGMA wal_autocheckpoint").fetchone())
        assert auto[0] == 0
        for i in range(300):
            await store.insert_run(make_run(i, prompt="x" * 2000))
        frames, copied = store.checkpoint_now()
        assert frames > 0
        assert copied == frames  # passive, and nobody else was writing
    # Everything is in the database file itself, readable without the WAL.
    async with Store(tmp_path / "a.db") as store:
        assert (await store.get_run("run_0299")) is not None
