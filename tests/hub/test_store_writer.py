"""The store's writer: search indexed in batches off the hot path, a WAL that stays small."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import pytest

from hub.store import RunPage, Store, op_insert_run, op_record, op_set_executor
from hub.store import engine as store_engine
from hub.store.sql import MIGRATIONS, SCHEMA, finish_run, pieces
from tests.hub.test_store import _hold
from tests.hub.test_store import make_run as _run


def _indexed(path: Path, word: str) -> list[int]:
    """The runs (their keys) the FTS index itself finds for ``word``."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT rowid FROM runs_fts WHERE runs_fts MATCH ?", (word,))
        return sorted({rowid >> 1 for (rowid,) in rows})
    finally:
        conn.close()


def _backlog(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM search_backlog").fetchone()[0])
    finally:
        conn.close()


async def test_a_finished_run_is_searchable_at_once_and_indexed_in_a_later_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The transactions that write a run and its answer leave the FTS index alone;
    a search finds the run anyway, and the writer's next batch puts it in the index."""
    monkeypatch.setattr(store_engine, "SEARCH_LAG_S", 3600.0)
    monkeypatch.setattr(store_engine, "SEARCH_BATCH_ROWS", 10**9)
    path = tmp_path / "a.db"
    async with Store(path) as store:
        await store.call(op_insert_run, _run(1, prompt="rotate the zeppelin logs"))
        done = _run(1, prompt="rotate the zeppelin logs", state="succeeded")
        done.answer = "the archives were rotated"
        await store.call(finish_run, done, None, None, None)
        assert _indexed(path, "zeppelin") == [] and _indexed(path, "archives") == []
        assert _backlog(path) == 2  # the prompt's row and the answer's
        for query in ("zeppelin", "zepp", "archives"):
            found, _ = await store.list_runs(query=query)
            assert [r.id for r in found] == ["run_0001"], query
        # Pages of runs not yet indexed: newest first, each run once.
        for i in range(2, 27):
            store.post(op_insert_run, _run(i, prompt=f"zeppelin number {i}"))
        pages, before = [], None
        while True:
            page, before = await store.list_runs(query="zeppelin", limit=10, before=before)
            pages.append([r.id for r in page])
            if before is None:
                break
        assert [len(page) for page in pages] == [10, 10, 6]
        assert [run for page in pages for run in page] == [f"run_{i:04d}" for i in range(26, 0, -1)]
        assert _indexed(path, "zeppelin") == []
        # The batch is due now: after the next commit the writer indexes it.
        monkeypatch.setattr(store_engine, "SEARCH_LAG_S", 0.0)
        await store.flush()
        await store.flush()  # the writer took this one after it had indexed
        assert _indexed(path, "zeppelin") == list(range(1, 27))
        assert _indexed(path, "archives") == [1]
        assert _backlog(path) == 0
        found, _ = await store.list_runs(query="archives")
        assert [r.id for r in found] == ["run_0001"]
        found, _ = await store.list_runs(query="zepp", limit=100)
        assert len(found) == 26


async def test_runs_not_yet_indexed_when_the_hub_stopped_are_indexed_after_it_starts_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Search's backlog is on disk: what a crash left unindexed is indexed by the next
    writer, soon after it opens the store."""
    path = tmp_path / "a.db"
    with monkeypatch.context() as crashed:
        crashed.setattr(store_engine.Engine, "_maybe_index", lambda *_: None)
        async with Store(path) as store:
            for i in range(30):
                store.post(op_insert_run, _run(i, prompt=f"deploy the gateway {i}"))
            await store.flush()
    assert _backlog(path) == 30 and _indexed(path, "gateway") == []
    monkeypatch.setattr(store_engine, "SEARCH_LAG_S", 0.0)
    async with Store(path) as store:
        await store.flush()
        await store.flush()
        assert _indexed(path, "gateway") == list(range(1, 31))
        assert _backlog(path) == 0
        found, _ = await store.list_runs(query="gateway", limit=100)
        assert len(found) == 30


async def test_a_writer_that_never_pauses_reuses_a_small_wal_instead_of_growing_and_cutting_it(
    tmp_path: Path,
) -> None:
    """Under writes queued back to back (the writer never idle), the writer finishes a
    checkpoint each time the WAL holds its limit: the WAL file stays near that size,
    and it is reused, never cut while the writes go on (cutting a large file held the
    commits)."""
    path = tmp_path / "a.db"
    wal = f"{path}-wal"
    sizes: list[int] = []

    def probe(conn: sqlite3.Connection) -> None:
        sizes.append(os.stat(wal).st_size)

    prompt = "x" * 16_000
    async with Store(path) as store:
        for group in range(400):  # 20 runs a commit, about 130 MB of WAL in all
            for i in range(group * 20, group * 20 + 20):
                store.post(op_insert_run, _run(i, prompt=prompt))
            store.post(probe)
            await store.flush()
        catch_ups = len(store.catch_up_s)
    limit = store_engine.CHECKPOINT_CATCH_UP_BYTES
    assert catch_ups >= 2, "the writer never finished a checkpoint"
    # The limit, plus what comes in between two passes of the checkpointer.
    assert max(sizes) <= 3 * limit
    assert sizes == sorted(sizes), "the WAL file was cut while the writes went on"


async def test_writes_that_come_in_while_the_writer_waits_its_turn_share_one_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under load (the last transaction held many writes) the writer starts a transaction
    at most every GROUP_COMMIT_S: writes arriving one by one meanwhile are committed
    together, not one transaction each."""
    monkeypatch.setattr(store_engine, "GROUP_COMMIT_S", 2.0)
    async with Store(tmp_path / "a.db") as store:
        for i in range(store_engine.GROUP_COMMIT_MIN_WRITES):
            store.post(op_insert_run, _run(100 + i))
        await store.flush()  # a busy transaction now: the next may start 2 s later
        before = store._commits
        for i in range(5):  # arriving 20 ms apart, well inside the 2 s
            store.post(op_insert_run, _run(i))
            await asyncio.sleep(0.02)
        await store.flush()
        assert store._commits - before == 1
        assert len((await store.list_runs())[0]) == 5 + store_engine.GROUP_COMMIT_MIN_WRITES


async def test_a_caller_awaiting_each_write_in_turn_is_not_paced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One caller that awaits each write before the next (a conversation's first turn:
    its session read, then its run) gets each committed at once, not a group-commit
    pause per write."""
    monkeypatch.setattr(store_engine, "GROUP_COMMIT_S", 30.0)
    async with Store(tmp_path / "a.db") as store:
        async with asyncio.timeout(10):  # paced, three writes would take a minute
            for i in range(3):
                store.post(op_insert_run, _run(i))
                await store.flush()
        assert len((await store.list_runs())[0]) == 3


async def test_a_read_waiting_for_queued_writes_cuts_the_group_commit_pause_short(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A list or search made while the writer waits its group-commit turn gets the writes
    queued before it committed at once: it neither waits the pause out nor gives up and
    misses them."""
    monkeypatch.setattr(store_engine, "GROUP_COMMIT_S", 30.0)
    async with Store(tmp_path / "a.db") as store:
        for i in range(store_engine.GROUP_COMMIT_MIN_WRITES):
            store.post(op_insert_run, _run(100 + i))
        await store.flush()  # a busy transaction now: the next would start 30 s later
        store.post(op_insert_run, _run(1, prompt="queued just before the search"))
        async with asyncio.timeout(10):
            found, _ = await store.list_runs(query="queued just before")
            summaries, _ = await store.run_summaries(RunPage())
        assert [r.id for r in found] == ["run_0001"]
        assert summaries[0]["id"] == "run_0001"


async def test_a_column_null_in_every_folded_row_binds_no_value_and_is_still_written_null(
    tmp_path: Path,
) -> None:
    """Binding a NULL is the dearest value for Python: a column NULL in every row of a
    folded statement is left out of its values (the statement writes NULL there), a
    padding row binds one NULL, and the runs read back as written one by one."""
    rows: list[list[object]] = [["a", None, 1, None], ["b", None, None, None], ["c", None, 3, None]]
    [piece] = list(pieces(rows))
    assert piece.bound == (True, False, True, False) and piece.size == 8
    assert piece.values == ["a", 1, "b", None, "c", 3, *[None, 0] * 5]
    async with Store(tmp_path / "a.db") as store:
        for i in range(3):
            await store.call(op_insert_run, _run(i, executor="ex", user=f"u{i}"))
        release = await _hold(store)
        for i in range(3):  # one update shape, its only field NULL in every row
            store.post(op_set_executor, f"run_{i:04d}", None)
        store.post(op_record, "run_0001", {"state": "running", "user": None}, (1, 1.0, "s", {}, 7))
        store.post(
            op_record, "run_0002", {"state": "running", "user": "v"}, (1, 1.0, "s", {}, None)
        )
        release.set()
        await store.flush()
        runs = {r.id: r for r in (await store.list_runs())[0]}
    assert [runs[f"run_{i:04d}"].executor for i in range(3)] == [None, None, None]
    assert [(runs[f"run_{i:04d}"].state, runs[f"run_{i:04d}"].user) for i in range(3)] == [
        ("queued", "u0"),
        ("running", None),
        ("running", "v"),
    ]


async def test_a_transaction_of_folded_writes_alone_sets_no_savepoint(tmp_path: Path) -> None:
    """Folded writes that come first in their transaction are undone, if they fail, by
    rolling it back: no SAVEPOINT and RELEASE, two statements fewer per transaction."""
    statements: list[str] = []
    async with Store(tmp_path / "a.db") as store:
        release = await _hold(store)
        store.post(lambda conn: conn.set_trace_callback(statements.append))
        release.set()
        await store.flush()
        release = await _hold(store)
        for i in range(3):
            store.post(op_insert_run, _run(i))
            store.post(op_record, f"run_{i:04d}", {"state": "running"}, (1, 1.0, "s", {}, None))
        release.set()
        await store.flush()
        assert len((await store.list_runs())[0]) == 3
    assert statements and not [s for s in statements if "SAVEPOINT" in s or "RELEASE" in s]


async def test_a_version_4_store_keeps_its_runs_and_indexes_only_the_runs_with_a_session(
    tmp_path: Path,
) -> None:
    """Opening a store of schema version 4 narrows its session index to the runs that
    have a session (a run without one writes no entry), and a list by session still
    finds them through it."""
    path = tmp_path / "v4.db"
    old = sqlite3.connect(path)
    old.executescript(SCHEMA)
    for statements in MIGRATIONS[:4]:
        for statement in statements:
            old.execute(statement)
    old.execute("PRAGMA user_version = 4")
    for i in range(4):
        old.execute(
            "INSERT INTO runs (id, created_at, updated_at, state, source, origin, prompt, "
            "session_key) VALUES (?, 1, 1, 'succeeded', 'http', '{}', 'p', ?)",
            (f"run_{i:04d}", "s1" if i % 2 else None),
        )
    old.commit()
    old.close()
    async with Store(path) as store:
        await store.call(op_insert_run, _run(9, session_key="s1"))
        await store.call(op_insert_run, _run(10))
        found, _ = await store.list_runs(session_key="s1")
        assert [r.id for r in found] == ["run_0009", "run_0003", "run_0001"]
        assert len((await store.list_runs())[0]) == 6
    check = sqlite3.connect(path)
    try:
        assert check.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) >= 5
        plan = check.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM runs WHERE runs.session_key = ? "
            "ORDER BY n DESC LIMIT 51",
            ("s1",),
        ).fetchall()
        assert "runs_session" in " ".join(row[3] for row in plan)
        # A partial index: one entry per run with a session.
        (entries,) = check.execute(
            "SELECT COUNT(*) FROM runs INDEXED BY runs_session WHERE session_key IS NOT NULL"
        ).fetchone()
        (sql_text,) = check.execute(
            "SELECT sql FROM sqlite_schema WHERE name = 'runs_session'"
        ).fetchone()
        assert entries == 3 and "WHERE session_key IS NOT NULL" in sql_text
    finally:
        check.close()


async def test_runs_ending_in_one_transaction_are_updated_by_one_statement_whatever_came_first(
    tmp_path: Path,
) -> None:
    """A run whose ``running`` is folded with its end, and a run whose end comes alone,
    set the same fields in another order: one UPDATE writes both, as one by one."""
    statements: list[str] = []
    async with Store(tmp_path / "a.db") as store:
        for i in range(2):
            await store.call(op_insert_run, _run(i))
        await store.call(op_record, "run_0001", {"state": "running", "started_at": 2.0}, _EVT)
        release = await _hold(store)
        store.post(lambda conn: conn.set_trace_callback(statements.append))
        store.post(op_record, "run_0000", {"state": "running", "started_at": 1.0}, _EVT)
        for i in range(2):
            done = _run(i, state="succeeded", answer=f"answer {i}", executor="ex")
            done.started_at, done.finished_at = float(i + 1), 3.0
            store.post(finish_run, done, None, None, None)
        release.set()
        await store.flush()
        runs = {r.id: r for r in (await store.list_runs())[0]}
    assert len([s for s in statements if s.startswith("UPDATE runs")]) == 1
    assert [
        (runs[f"run_{i:04d}"].state, runs[f"run_{i:04d}"].started_at, runs[f"run_{i:04d}"].answer)
        for i in range(2)
    ] == [("succeeded", 1.0, "answer 0"), ("succeeded", 2.0, "answer 1")]


_EVT = (1, 1.0, "state", {}, None)


async def test_a_read_sees_the_writes_queued_before_it_while_the_writer_is_slow(
    tmp_path: Path,
) -> None:
    """A run posted just before a list is in it even when the writer is busy for a while
    (here 0.3 s; the cap was 50 ms, and a client that listed right after its answer on
    a loaded machine saw no run)."""
    async with Store(tmp_path / "a.db") as store:
        release = await _hold(store)
        store.post(op_insert_run, _run(1, prompt="posted just before"))
        listing = asyncio.ensure_future(store.list_runs())
        async with asyncio.timeout(10):
            while not store._read_waiters:  # noqa: ASYNC110 - the read is waiting
                await asyncio.sleep(0)
        asyncio.get_running_loop().call_later(0.3, release.set)  # a writer 0.3 s slow
        async with asyncio.timeout(10):
            found, _ = await listing
        assert [r.id for r in found] == ["run_0001"]


async def test_a_read_is_not_held_by_a_writer_stuck_past_its_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer stuck for longer than READ_WAIT_S does not hold the read: it answers with
    what is committed, and the write lands once the writer goes on."""
    monkeypatch.setattr(store_engine, "READ_WAIT_S", 0.2)
    async with Store(tmp_path / "a.db") as store:
        release = await _hold(store)
        try:
            store.post(op_insert_run, _run(1))
            async with asyncio.timeout(5):
                found, _ = await store.list_runs()
            assert found == []
        finally:
            release.set()
        await store.flush()
        assert [r.id for r in (await store.list_runs())[0]] == ["run_0001"]
