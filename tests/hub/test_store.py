"""The SQLite store: durable, paged, idempotent where re-sends happen."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from hub.store import (
    MIGRATIONS,
    SCHEMA,
    Delivery,
    Run,
    RunPage,
    Store,
    op_insert_run,
    op_record,
    op_set_delivery_payload,
    op_set_executor,
    op_set_origin,
)
from hub.store.sql import finish_run, set_session


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
        await store.call(op_insert_run, make_run(1, session_key="s"))
        changed = {"state": "running", "executor": "ex"}
        await store.call(op_record, "run_0001", changed, (1, 1.0, "state", {}, None))
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
            await store.call(op_insert_run, make_run(i, source=source, prompt=f"task {i} 50%_off"))
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


async def test_a_database_of_the_first_release_gains_run_principals_on_open(
    tmp_path: Path,
) -> None:
    """Opening a store written before principals adds the column: its runs keep their
    fields with no principal (operators only), new runs record theirs and list by it,
    and opening again changes nothing."""
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(SCHEMA)  # the first release's schema, before any migration
    old.execute(
        "INSERT INTO runs (id, created_at, updated_at, state, source, origin, prompt) "
        "VALUES ('run_old', 1.0, 1.0, 'succeeded', 'http', '{}', 'from before')"
    )
    old.commit()
    old.close()
    for _ in range(2):
        async with Store(path) as store:
            before = await store.get_run("run_old")
            assert before is not None
            assert (before.prompt, before.principal) == ("from before", None)
            if await store.get_run("run_0001") is None:
                await store.call(op_insert_run, make_run(1, principal="key:aaaaaaaaaaaa"))
                await store.call(op_insert_run, make_run(2, principal="key:bbbbbbbbbbbb"))
            mine, _ = await store.list_runs(principal="key:aaaaaaaaaaaa")
            assert [r.id for r in mine] == ["run_0001"]
            everyone, _ = await store.list_runs()
            assert {r.id for r in everyone} == {"run_old", "run_0001", "run_0002"}
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    check.close()


async def test_a_database_from_a_newer_codex_hub_is_refused(tmp_path: Path) -> None:
    """A schema version beyond what this code knows stops the store with the reason."""
    path = tmp_path / "new.db"
    newer = sqlite3.connect(path)
    newer.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    newer.close()
    with pytest.raises(RuntimeError, match="newer than this codex-hub knows"):
        await Store(path).open()


async def test_events_resent_by_an_executor_are_stored_once(tmp_path: Path) -> None:
    """The same executor sequence number is ignored the second time."""
    async with Store(tmp_path / "a.db") as store:
        await store.call(op_insert_run, make_run(1))
        await store.call(op_record, "run_0001", None, (1, 1.0, "codex", {"a": 1}, 1))
        await store.call(op_record, "run_0001", None, (2, 1.0, "codex", {"a": 1}, 1))
        await store.call(op_record, "run_0001", None, (3, 2.0, "state", {"state": "running"}, None))
        events = await store.get_events("run_0001")
        assert [(e["seq"], e["kind"]) for e in events] == [(1, "codex"), (3, "state")]
        assert await store.event_positions("run_0001") == (3, 1)


async def test_outbox_keeps_a_reply_until_acknowledged(tmp_path: Path) -> None:
    """A delivery stays pending across restarts until acked, once."""
    async with Store(tmp_path / "a.db") as store:
        run = make_run(1, state="succeeded", answer="x")
        await store.call(op_insert_run, run)
        await store.finish_run(run, Delivery("d1", run.id, "slack", {"answer": "x"}, time.time()))
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
        await asyncio.gather(*(store.call(op_insert_run, make_run(i)) for i in range(1000)))
        counts = await store.count_runs()
    assert counts == {("queued", "http"): 1000}


async def test_commits_never_checkpoint_the_checkpointer_does(tmp_path: Path) -> None:
    """A commit never copies the WAL back (an fsync); the checkpointer thread does."""
    async with Store(tmp_path / "a.db") as store:
        auto = await store.call(lambda conn: conn.execute("PRAGMA wal_autocheckpoint").fetchone())
        assert auto[0] == 0
        for i in range(300):
            await store.call(op_insert_run, make_run(i, prompt="x" * 2000))
        frames, copied = store.checkpoint_now()
        assert frames > 0
        assert copied == frames  # passive, and nobody else was writing
    # Everything is in the database file itself, readable without the WAL.
    async with Store(tmp_path / "a.db") as store:
        assert (await store.get_run("run_0299")) is not None


# --- the writer folds the hot path's writes; the result must be the same ---------------


async def _hold(store: Store) -> threading.Event:
    """Stop the writer thread until the event is set: what is queued meanwhile goes
    into one transaction."""
    entered, release = threading.Event(), threading.Event()

    def hold(conn: object) -> None:
        entered.set()
        release.wait(10)

    store.post(hold)
    assert await asyncio.to_thread(entered.wait, 10)
    return release


def _life(i: int) -> list[tuple[Any, tuple[Any, ...]]]:
    """The store operations of one run's life, as the router posts them."""
    fixed: dict[str, Any] = {"session_key": f"s{i % 3}", "created_at": 1.0, "updated_at": 1.0}
    run = make_run(i, **fixed)
    done = make_run(i, **fixed, state="succeeded", answer=f"answer {i}")
    done.executor, done.started_at, done.finished_at = "ex", 2.0, 3.0
    delivery = Delivery(
        id=run.id, run_id=run.id, platform="slack", created_at=3.0, payload={"answer": i}
    )
    return [
        (op_insert_run, (run,)),
        (op_record, (run.id, None, (1, 1.0, "state", {"state": "queued"}, None))),
        (op_record, (run.id, {"executor": "ex"}, (2, 1.1, "assigned", {"e": "ex"}, None))),
        (op_set_executor, (run.id, "ex")),
        (op_record, (run.id, {"state": "running", "started_at": 2.0}, (3, 2.0, "state", {}, None))),
        (op_record, (run.id, None, (4, 2.1, "codex", {"n": i}, 1))),
        (op_record, (run.id, None, (5, 2.2, "codex", {"again": i}, 1))),  # same exec_seq
        (op_set_origin, (run.id, {"source": "http", "status_ref": str(i)})),
        (finish_run, (done, delivery, (f"s{i % 3}", f"t{i}", "ex"), (6, 3.0, "state", {}, None))),
    ]


def _dump(path: Path) -> dict[str, list[Any]]:
    conn = sqlite3.connect(path)
    try:
        runs = conn.execute("SELECT * FROM runs ORDER BY id").fetchall()
        columns = [d[0] for d in conn.execute("SELECT * FROM runs").description]
        skip = {columns.index("n"), columns.index("updated_at")}
        return {
            "runs": [[v for k, v in enumerate(r) if k not in skip] for r in runs],
            "events": conn.execute(
                "SELECT runs.id, seq, ts, kind, data, exec_seq FROM events "
                "JOIN runs ON runs.n = events.run_n ORDER BY runs.id, seq"
            ).fetchall(),
            "sessions": conn.execute("SELECT key, thread_id, executor FROM sessions").fetchall(),
            "outbox": conn.execute("SELECT id, run_id, payload FROM outbox").fetchall(),
        }
    finally:
        conn.close()


def _late(i: int) -> tuple[Any, tuple[Any, ...]]:
    """An event of a run that ended in an earlier transaction (the writer forgot its key)."""
    return (op_record, (f"run_{i:04d}", None, (7, 4.0, "note", {"late": i}, None)))


async def test_folded_writes_leave_what_the_writes_one_by_one_leave(tmp_path: Path) -> None:
    async with Store(tmp_path / "folded.db") as store:
        release = await _hold(store)
        for i in range(40):
            for fn, args in _life(i):
                store.post(fn, *args)
        release.set()
        await store.flush()
        for i in range(0, 40, 3):
            fn, args = _late(i)
            store.post(fn, *args)
        await store.flush()
    async with Store(tmp_path / "single.db") as store:
        for i in range(40):
            for fn, args in _life(i):
                # A wrapper is not foldable: each operation runs on its own.
                await store.call(lambda conn, fn=fn, args=args: fn(conn, *args))
        for i in range(0, 40, 3):
            fn, args = _late(i)
            await store.call(lambda conn, fn=fn, args=args: fn(conn, *args))
    folded, single = _dump(tmp_path / "folded.db"), _dump(tmp_path / "single.db")
    assert folded == single
    assert len(folded["runs"]) == 40 and len(folded["events"]) == 40 * 5 + 14


async def test_a_read_after_folded_writes_sees_them(tmp_path: Path) -> None:
    async with Store(tmp_path / "a.db") as store:
        release = await _hold(store)
        for fn, args in _life(7)[:5]:
            store.post(fn, *args)
        read = asyncio.ensure_future(store.get_run("run_0007"))
        events = asyncio.ensure_future(store.get_events("run_0007"))
        release.set()
        run = await read
        assert run is not None and (run.state, run.executor) == ("running", "ex")
        assert [e["seq"] for e in await events] == [1, 2, 3]


@pytest.mark.parametrize("unfolded_first", [False, True])
async def test_one_bad_write_among_folded_ones_fails_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, unfolded_first: bool
) -> None:
    """The folded writes that fail are undone and run one by one, whether they came
    first in their transaction (rolled back) or after a write that is kept (undone to a
    savepoint)."""
    async with Store(tmp_path / "a.db") as store:
        await store.call(op_insert_run, make_run(1))
        release = await _hold(store)
        if unfolded_first:
            store.post(set_session, "kept", "t", "ex")  # not folded: runs on its own
        store.post(op_insert_run, make_run(1))  # already there: UNIQUE fails
        for fn, args in _life(2):
            store.post(fn, *args)
        finished = asyncio.ensure_future(store.finish_run(*_life(3)[-1][1]))
        release.set()
        await finished
        await store.flush()
        assert (await store.get_run("run_0002")).state == "succeeded"  # type: ignore[union-attr]
        assert len(await store.get_events("run_0002")) == 5
        if unfolded_first:
            assert await store.get_session("kept") == ("t", "ex")
    assert "store write op_insert_run failed" in caplog.text


async def test_a_status_ref_is_written_with_the_run_and_its_waiting_reply(tmp_path: Path) -> None:
    """op_set_origin, folded with the run's insert or not, and op_set_delivery_payload."""
    async with Store(tmp_path / "a.db") as store:
        release = await _hold(store)
        run = make_run(1)
        store.post(op_insert_run, run)
        store.post(op_set_origin, run.id, {"source": "http", "status_ref": "5"})
        release.set()
        await store.flush()
        stored = await store.get_run(run.id)
        assert stored is not None and stored.origin == {"source": "http", "status_ref": "5"}
        delivery = Delivery(
            id=run.id, run_id=run.id, platform="telegram", created_at=1.0, payload={"a": 1}
        )
        await store.finish_run(run, delivery)
        store.post(op_set_origin, run.id, {"source": "http", "status_ref": "6"})
        store.post(op_set_delivery_payload, run.id, {"a": 1, "origin": {"status_ref": "6"}})
        await store.flush()
    async with Store(tmp_path / "a.db") as store:
        stored = await store.get_run(run.id)
        assert stored is not None and stored.origin["status_ref"] == "6"
        (pending,) = await store.pending_deliveries()
        assert pending.payload == {"a": 1, "origin": {"status_ref": "6"}}
        await store.ack_delivery(run.id)
        await store.call(op_set_delivery_payload, run.id, {"changed": True})
        assert await store.pending_deliveries() == []


async def test_a_locked_database_runs_the_transaction_again_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock met past busy_timeout (another process on the file) rolls the whole
    transaction back and runs it again: every write lands once, every caller hears OK."""
    from hub.store import engine

    monkeypatch.setattr(engine, "_backoff", lambda s: None)
    locked = iter([True, True, False])

    def sometimes_locked(conn: sqlite3.Connection) -> str:
        if next(locked):
            raise sqlite3.OperationalError("database is locked")
        return "written"

    async with Store(tmp_path / "a.db") as store:
        release = await _hold(store)
        for fn, args in _life(1):
            store.post(fn, *args)
        answer = asyncio.ensure_future(store.call(sometimes_locked))
        for fn, args in _life(2):
            store.post(fn, *args)
        release.set()
        assert await answer == "written"
        await store.flush()
    dump = _dump(tmp_path / "a.db")
    assert [run[0] for run in dump["runs"]] == ["run_0001", "run_0002"]
    assert len(dump["events"]) == 10 and len(dump["outbox"]) == 2


async def test_a_database_locked_for_good_fails_the_callers_instead_of_hanging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hub.store import engine

    monkeypatch.setattr(engine, "_backoff", lambda s: None)

    def always_locked(conn: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("database is locked")

    async with Store(tmp_path / "a.db") as store:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            await store.call(always_locked)
        await store.call(op_insert_run, make_run(1))  # the store goes on
        assert await store.get_run("run_0001") is not None


# --- a full disk ----------------------------------------------------------------------


async def _fill(store: Store) -> None:
    """Cap the database at the pages it has: a write that needs one more fails with
    SQLITE_FULL, as on a full disk."""
    pages = await store.call(lambda conn: conn.execute("PRAGMA page_count").fetchone()[0])
    assert await store.set_max_pages(pages) == pages


def _big_life(i: int) -> list[tuple[Any, tuple[Any, ...]]]:
    """A run's life whose insert needs new pages (a 20 kB prompt)."""
    life = _life(i)
    run = life[0][1][0]
    run.prompt = "p" * 20_000
    life[-1][1][0].prompt = run.prompt
    return life


async def test_a_full_disk_holds_every_write_and_writes_them_in_order_once_there_is_room(
    tmp_path: Path,
) -> None:
    """Nothing is lost to SQLITE_FULL: reads go on, a caller hears StoreUnavailable, and
    once there is room the database holds what the writes one by one would have left."""
    from hub.store import StoreUnavailable

    lives = [*_life(1), *_big_life(2), *_life(3)]
    async with Store(tmp_path / "plain.db") as plain:
        for fn, args in lives:
            await plain.call(fn, *args)
    async with Store(tmp_path / "full.db") as store:
        await store.call(op_insert_run, make_run(0))
        await _fill(store)
        for fn, args in lives:  # run 2's prompt needs pages the "disk" does not have
            store.post(fn, *args)
        with pytest.raises(StoreUnavailable, match="disk is full"):
            await store.flush()
        assert store.unwritable is not None and "full" in store.unwritable
        with pytest.raises(StoreUnavailable):  # held all the same, and written later
            await store.finish_run(make_run(0, state="cancelled"))
        assert (await store.get_run("run_0000")).state == "queued"  # type: ignore[union-attr]
        assert await store.get_run("run_0002") is None
        assert await store.get_run("run_0003") is None  # it would fit, but comes after
        assert not store._writable.is_set()

        await store.set_max_pages(1 << 30)  # the disk has room again
        async with asyncio.timeout(10):
            await store.wait_writable()
        await store.flush()
        assert store.unwritable is None and store.held == 0
        assert (await store.get_run("run_0000")).state == "cancelled"  # type: ignore[union-attr]
    full = _dump(tmp_path / "full.db")
    full["runs"] = [r for r in full["runs"] if r[0] != "run_0000"]
    assert full == _dump(tmp_path / "plain.db")


async def test_writes_held_for_a_full_disk_survive_a_restart_once_written(
    tmp_path: Path,
) -> None:
    """Writes held while the disk was full are on disk after the store is reopened."""
    async with Store(tmp_path / "a.db") as store:
        await _fill(store)
        for fn, args in _big_life(7):
            store.post(fn, *args)
        with pytest.raises(Exception, match="disk is full"):
            await store.flush()
        await store.set_max_pages(1 << 30)
        async with asyncio.timeout(10):
            await store.wait_writable()
    async with Store(tmp_path / "a.db") as store:
        run = await store.get_run("run_0007")
        assert run is not None and run.state == "succeeded" and run.answer == "answer 7"
        assert len(await store.get_events("run_0007")) == 5


async def test_a_transaction_that_breaks_as_a_whole_holds_its_writes_and_the_writer_lives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not one operation but the transaction fails (SQLite rolled it back under a full
    disk, say): its writes are held and written on the next try, and the store goes on."""
    from hub.store import engine

    apply_all = engine.apply_all
    breaks = iter([True])

    def breaks_once(conn: sqlite3.Connection, items: list[Any], *rest: Any) -> Any:
        if next(breaks, False):
            conn.execute("BEGIN")
            conn.execute("ROLLBACK")
            raise sqlite3.OperationalError("no such savepoint: folded")
        return apply_all(conn, items, *rest)

    monkeypatch.setattr(engine, "apply_all", breaks_once)
    async with Store(tmp_path / "a.db") as store:
        for fn, args in _life(1):
            store.post(fn, *args)
        with pytest.raises(engine.StoreUnavailable, match="savepoint"):
            await store.flush()
        assert await store.get_run("run_0001") is None
        async with asyncio.timeout(10):
            await store.wait_writable()
        await store.flush()
        run = await store.get_run("run_0001")
        assert run is not None and run.state == "succeeded"
        await store.call(op_insert_run, make_run(2))
        assert await store.get_run("run_0002") is not None


# --- issue 19: keys that append, search by index, reads off the writer ------------------


def _version_1_database(path: Path) -> None:
    """A store as the release with principals (schema version 1) left it."""
    old = sqlite3.connect(path)
    old.executescript(SCHEMA)
    for statement in MIGRATIONS[0]:
        old.execute(statement)
    old.execute("PRAGMA user_version = 1")
    for i in range(1, 4):
        old.execute(
            "INSERT INTO runs (id, created_at, updated_at, state, source, origin, prompt, "
            "user, session_key, answer, principal) "
            "VALUES (?, ?, ?, 'succeeded', 'slack', '{}', ?, ?, ?, ?, ?)",
            (
                f"run_v1_{i}",
                float(i),
                float(i),
                f"rotate the logs {i}",
                f"alice{i}",
                f"slack:T:C{i}",
                f"rotated {i} archives",
                "key:aaaaaaaaaaaa" if i == 1 else None,
            ),
        )
        for seq in range(1, 4):
            old.execute(
                "INSERT INTO events (run_id, seq, ts, kind, data, exec_seq) "
                "VALUES (?, ?, ?, 'codex', ?, ?)",
                (f"run_v1_{i}", seq, float(seq), f'{{"n": {seq}}}', seq),
            )
        old.execute(
            "INSERT INTO sessions (key, thread_id, executor, updated_at) VALUES (?, ?, 'ex', 1)",
            (f"slack:T:C{i}", f"thread{i}"),
        )
        old.execute(
            "INSERT INTO outbox (id, run_id, platform, payload, created_at) "
            "VALUES (?, ?, 'slack', '{\"answer\": 1}', 1)",
            (f"d{i}", f"run_v1_{i}"),
        )
    old.commit()
    old.close()


async def test_a_version_1_database_keeps_every_run_event_session_and_delivery(
    tmp_path: Path,
) -> None:
    """Opening a store of the current layout converts it (events keyed by the run's
    integer key, a search index over what is there) and loses nothing."""
    path = tmp_path / "v1.db"
    _version_1_database(path)
    for again in (False, True):  # and opening again changes nothing
        async with Store(path) as store:
            for i in range(1, 4):
                run = await store.get_run(f"run_v1_{i}")
                assert run is not None
                assert (run.prompt, run.user, run.answer) == (
                    f"rotate the logs {i}",
                    f"alice{i}",
                    f"rotated {i} archives",
                )
                events = await store.get_events(f"run_v1_{i}")
                assert [(e["seq"], e.get("n")) for e in events[:3]] == [(1, 1), (2, 2), (3, 3)]
                assert (await store.event_positions(f"run_v1_{i}"))[1] == 3
                assert await store.get_session(f"slack:T:C{i}") == (f"thread{i}", "ex")
            pending = await store.pending_deliveries("slack")
            assert sorted(d.id for d in pending) == ["d1", "d2", "d3"]
            # The old runs are in the search index: by prompt, user and answer.
            for query in ("logs", "alice2", "archives"):
                found, _ = await store.list_runs(query=query)
                expected = {"alice2": {"run_v1_2"}}.get(query, {f"run_v1_{i}" for i in (1, 2, 3)})
                assert {r.id for r in found} == expected, query
            mine, _ = await store.list_runs(principal="key:aaaaaaaaaaaa", query="rotate")
            assert [r.id for r in mine] == ["run_v1_1"]
            # New events of an old run join its own.
            if not again:
                await store.call(op_record, "run_v1_1", None, (4, 4.0, "state", {"s": 1}, None))
            assert [e["seq"] for e in await store.get_events("run_v1_1", 2)] == [3, 4]
    check = sqlite3.connect(path)
    try:
        assert check.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        columns = [row[1] for row in check.execute("PRAGMA table_info(events)")]
        assert columns[:2] == ["run_n", "seq"]
        assert check.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 10
    finally:
        check.close()


_WORDS = ["deploy", "deployment", "rotate", "logs", "café", "Build", "review", "x"]


async def test_search_by_the_index_finds_what_like_found_for_ordinary_words(
    tmp_path: Path,
) -> None:
    """For every word a user types (whole or its start), the search finds exactly the
    runs whose prompt or user contains it as the old LIKE scan did, plus runs whose
    answer contains it."""
    import random

    rng = random.Random(5)
    async with Store(tmp_path / "a.db") as store:
        for i in range(300):
            words = " ".join(rng.choice(_WORDS) for _ in range(4))
            await store.call(
                op_insert_run, make_run(i, prompt=f"{words}: {i}", user=rng.choice(_WORDS))
            )
        await store.finish_run(make_run(299, state="succeeded", answer="the zeppelin landed"))
        conn = sqlite3.connect(tmp_path / "a.db")
        try:
            for query in ["deploy", "deploym", "ROTATE", "logs", "café", "build review", "rev"]:
                like = f"%{query}%"
                expected = {
                    row[0]
                    for row in conn.execute(
                        "SELECT id FROM runs WHERE prompt LIKE ? OR user LIKE ?", (like, like)
                    )
                }
                found, _ = await store.list_runs(query=query, limit=500)
                assert {r.id for r in found} == expected, query
                assert expected, query
        finally:
            conn.close()
        answered, _ = await store.list_runs(query="zeppelin")
        assert [r.id for r in answered] == ["run_0299"]


async def test_a_page_of_summaries_is_each_runs_summary_in_the_lists_order(
    tmp_path: Path,
) -> None:
    """The summaries SQLite builds for a list or a search are exactly each run's
    ``Run.summary()`` (times to the last bit, a long prompt cut where Python cuts it,
    the error as an object, nulls), in the order and with the cursor of ``list_runs``."""
    import random

    rng = random.Random(11)
    async with Store(tmp_path / "a.db") as store:
        for i in range(40):
            t = time.time() + rng.uniform(-1e6, 1e6)
            fields: dict[str, object] = {
                "prompt": f"deploy ünïcode {'é' * rng.randrange(150, 260)} {i}",
                "created_at": t,
                "updated_at": t + rng.random(),
                "user": None if i % 3 else f"user {i}",
                "source": "slack" if i % 2 else "http",
            }
            if i % 4 == 0:
                fields |= {"started_at": t + rng.random(), "finished_at": t + 1 + rng.random()}
            if i % 5 == 0:
                fields |= {"state": "failed", "error": {"code": "boom", "message": 'it\'s "x"'}}
            await store.call(op_insert_run, make_run(i, **fields))
        for query in ("", "deploy", "ünïcode"):
            for before in (None, 30):
                kwargs: dict[str, Any] = {"query": query, "before": before, "limit": 7}
                runs, cursor = await store.list_runs(**kwargs)
                summaries, summaries_cursor = await store.run_summaries(RunPage(**kwargs))
                assert summaries == [r.summary() for r in runs], (query, before)
                assert summaries_cursor == cursor and len(summaries) == 7
        slack, _ = await store.run_summaries(RunPage(sources=("slack",), limit=100))
        assert len(slack) == 20 and all(s["source"] == "slack" for s in slack)


async def test_a_list_during_a_long_write_transaction_does_not_wait_for_it(
    tmp_path: Path,
) -> None:
    """While the writer thread is stuck in a transaction, lists and searches still
    answer, from what is committed."""
    async with Store(tmp_path / "a.db") as store:
        await store.call(op_insert_run, make_run(1, prompt="committed before"))
        release = await _hold(store)
        try:
            store.post(op_insert_run, make_run(2, prompt="queued behind the writer"))
            listed, _ = await asyncio.wait_for(store.list_runs(), 2)
            found, _ = await asyncio.wait_for(store.list_runs(query="committed"), 2)
            assert not release.is_set()  # the writer is still held
        finally:
            release.set()
        assert [r.id for r in listed] == ["run_0001"]
        assert [r.id for r in found] == ["run_0001"]
        await store.flush()
        after, _ = await store.list_runs()
        assert [r.id for r in after] == ["run_0002", "run_0001"]


CHECKPOINT_TEST_LIMIT = 2 << 20


async def test_a_writer_that_never_pauses_keeps_the_wal_bounded_without_a_truncating_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under writes with no idle moment, the writer finishes a checkpoint between two
    transactions, so the WAL starts over (cut to its limit) instead of growing."""
    from hub.store import engine

    monkeypatch.setattr(engine, "WAL_SIZE_LIMIT_BYTES", 256 << 10)
    monkeypatch.setattr(engine, "CHECKPOINT_TRUNCATE_BYTES", CHECKPOINT_TEST_LIMIT // 2)
    monkeypatch.setattr(engine, "CHECKPOINT_CATCH_UP_BYTES", CHECKPOINT_TEST_LIMIT // 2)
    monkeypatch.setattr(engine, "CHECKPOINT_BEHIND_S", 0.01)
    monkeypatch.setattr(engine, "CHECKPOINT_EVERY_S", 0.02)
    monkeypatch.setattr(engine, "CHECKPOINT_IDLE_S", 3600.0)  # never idle here
    wal = Path(f"{tmp_path / 'a.db'}-wal")
    async with Store(tmp_path / "a.db") as store:
        written = largest = 0
        while written < 6000:  # without checkpoints their WAL would pass 35 MB
            await asyncio.gather(
                *(
                    store.call(op_insert_run, make_run(written + i, prompt="x" * 2000))
                    for i in range(50)
                )
            )
            written += 50
            largest = max(largest, wal.stat().st_size)  # noqa: ASYNC240 (a stat)
        assert len(store.catch_up_s) >= 2, "the writer never finished a checkpoint"
        # The WAL started over again and again instead of holding it all.
        assert largest <= 8 * CHECKPOINT_TEST_LIMIT


def test_run_ids_grow_with_time_and_never_repeat_even_when_the_clock_steps_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ids that grow land next to each other in the store's id index (random ones put
    every new run on an index page of its own); the format is the one ids always had."""
    from types import SimpleNamespace

    from hub.store import records

    clock = [1_800_000_000_000 * 1_000_000]  # ns
    monkeypatch.setattr(records, "time", SimpleNamespace(time_ns=lambda: clock[0]))
    ids = []
    for step_ms in (0, 0, 0, 1, 5, -1000, -1000, 0, 2000):  # back by two seconds, twice
        clock[0] += step_ms * 1_000_000
        ids.append(records.new_run_id())
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(len(i) == 20 and i.startswith("run_") and int(i[4:], 16) for i in ids)
    # Back in time the count went on from the last id; it carries the latest ms seen.
    assert int(ids[-1][4:], 16) >> records._SEQ_BITS == 1_800_000_000_006
