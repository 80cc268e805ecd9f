"""The store's reads in reader processes: off the hub's GIL, without its secrets, and
never lost to a reader that dies."""

from __future__ import annotations

import asyncio
import os
import pickle
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hub.appkeys import STORE
from hub.store import ReadFailed, RunPage, Store, op_insert_run, readers, sql
from hub.store import engine as store_engine
from hub.store.readers import ReaderPool
from tests.hub.test_store import make_run as _run
from wire import RunState


def _pool(store: Store) -> ReaderPool:
    assert store._readers is not None
    return store._readers


async def _busy(pool: ReaderPool) -> None:
    """Return once one of the pool's processes has a read in hand."""
    # The read's task reaches the process within a few turns of the loop; nothing
    # tells when, so look each turn (for 10 s at most: a test must not hang).
    async with asyncio.timeout(10):
        while not any(reader.busy for reader in pool._all):  # noqa: ASYNC110
            await asyncio.sleep(0)


def _proc(pid: int, name: str) -> bytes:
    return Path(f"/proc/{pid}/{name}").read_bytes()


async def test_a_list_is_read_in_a_process_of_its_own_without_the_hubs_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUB_TOKEN", "bridge-token-that-must-stay-home")
    monkeypatch.setenv("HUB_API_KEYS", "sk-key-that-must-stay-home")
    async with Store(tmp_path / "a.db") as store:
        await store.call(op_insert_run, _run(1, prompt="read elsewhere"))
        found, _ = await store.list_runs()
        assert [r.id for r in found] == ["run_0001"]
        [pid] = _pool(store).pids
        assert pid != os.getpid()
        cmdline = _proc(pid, "cmdline")
        assert b"hub.store.readers" in cmdline and b"a.db" not in cmdline
        environ = _proc(pid, "environ")
        assert b"must-stay-home" not in environ and b"HUB_" not in environ
    assert _pool(store).pids == []


async def test_a_reader_killed_in_the_middle_of_a_read_is_replaced_and_the_read_answered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_engine, "READERS", 1)
    async with Store(tmp_path / "a.db") as store:
        await store.call(op_insert_run, _run(1, prompt="still answered"))
        await store.list_runs()  # the process is up
        [first] = _pool(store).pids
        os.kill(first, signal.SIGSTOP)  # it takes the read and never answers
        read = asyncio.ensure_future(store.list_runs(query="answered"))
        await _busy(_pool(store))
        os.kill(first, signal.SIGKILL)
        async with asyncio.timeout(30):
            found, _ = await read
        assert [r.id for r in found] == ["run_0001"]
        assert first not in _pool(store).pids
        # And an idle one that died is replaced too.
        [second] = _pool(store).pids
        os.kill(second, signal.SIGKILL)
        async with asyncio.timeout(30):
            assert [r.id for r in (await store.list_runs())[0]] == ["run_0001"]


async def test_a_read_whose_caller_gave_up_frees_its_process_for_the_next_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer to the abandoned read is dropped, not handed to the read after it."""
    monkeypatch.setattr(store_engine, "READERS", 1)
    async with Store(tmp_path / "a.db") as store:
        await store.call(op_insert_run, _run(1, prompt="apples"))
        await store.call(op_insert_run, _run(2, prompt="pears"))
        await store.list_runs()
        [pid] = _pool(store).pids
        os.kill(pid, signal.SIGSTOP)
        abandoned = asyncio.ensure_future(store.list_runs(query="apples"))
        await _busy(_pool(store))
        abandoned.cancel()
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        os.kill(pid, signal.SIGCONT)
        async with asyncio.timeout(30):
            found, _ = await store.list_runs(query="pears")
        assert [r.id for r in found] == ["run_0002"]
        assert _pool(store).pids == [pid]


async def test_a_reader_that_does_not_answer_is_killed_and_its_read_fails_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stuck read (a lock held for ever, a disk that does not answer) is given up after
    READ_TIMEOUT_S, not tried again; the next read gets a process of its own."""
    monkeypatch.setattr(store_engine, "READERS", 1)
    monkeypatch.setattr(readers, "READ_TIMEOUT_S", 0.5)
    async with Store(tmp_path / "a.db") as store:
        await store.call(op_insert_run, _run(1))
        await store.list_runs()
        [stuck] = _pool(store).pids
        os.kill(stuck, signal.SIGSTOP)
        async with asyncio.timeout(30):
            with pytest.raises(ReadFailed, match="did not answer within"):
                await store.list_runs()
            assert [r.id for r in (await store.list_runs())[0]] == ["run_0001"]
        assert stuck not in _pool(store).pids
        assert _killed(stuck)


def _killed(pid: int) -> bool:
    """The process has ended (reaped, or a zombie not reaped yet)."""
    try:
        return _proc(pid, "stat").rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except FileNotFoundError:
        return True


async def test_the_api_answers_503_when_the_store_cannot_serve_a_list(
    hub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readers, "READ_TIMEOUT_S", 0.5)
    store = hub.app[STORE]
    async with aiohttp.ClientSession() as s:
        async with s.get(hub.url + "/api/runs") as resp:
            assert resp.status == 200
        for pid in store.reader_pids:
            os.kill(pid, signal.SIGSTOP)
        async with s.get(hub.url + "/api/runs") as resp:
            body = await resp.json()
            assert resp.status == 503, body
            assert resp.headers["Retry-After"] == "1"
        assert body["error"]["code"] == "store_unavailable"
        assert "did not answer" in body["error"]["message"]
        async with s.get(hub.url + "/api/runs") as resp:
            assert resp.status == 200


async def test_an_error_in_a_read_is_raised_to_its_caller_and_only_served_reads_go(
    tmp_path: Path,
) -> None:
    async with Store(tmp_path / "a.db") as store:
        with pytest.raises(TypeError):
            await store.run_summaries(RunPage(limit="fifty"))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="get_run is not a read"):
            await store.read(sql.get_run, "run_0001")
        assert (await store.run_summaries(RunPage()))[0] == []


_HUB = """
import asyncio, sys
from hub.store import Store

async def main():
    async with Store(sys.argv[1]) as store:
        await store.list_runs()
        print(*store._readers.pids, flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


def test_a_hub_killed_with_sigkill_leaves_no_reader_process_behind(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    hub = subprocess.Popen(
        [sys.executable, "-c", _HUB, str(tmp_path / "a.db")],
        stdout=subprocess.PIPE,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        assert hub.stdout is not None
        pids = [int(pid) for pid in hub.stdout.readline().split()]
        assert pids
        watched = [os.pidfd_open(pid) for pid in pids]
    finally:
        hub.kill()
        hub.wait()
    try:
        for pidfd in watched:  # readable once that process has exited
            ready, _, _ = select.select([pidfd], [], [], 30)
            assert ready == [pidfd]
    finally:
        for pidfd in watched:
            os.close(pidfd)


async def test_a_reader_starts_and_stops_without_a_word_on_stderr(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Its stderr is the hub's: a warning there at every start (runpy's, for a module
    run with -m that its package imports) would land in the hub's log."""
    async with Store(tmp_path / "a.db") as store:
        await store.list_runs()
        assert _pool(store).pids
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("python", ["/nonexistent/python3", "/bin/false"], ids=["missing", "dies"])
async def test_a_reader_that_cannot_start_fails_the_read_clearly_and_the_next_one_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, python: str
) -> None:
    """No process to be had (a process limit, a broken install): the read fails with
    ReadFailed (the API's 503), not an OSError (a 500) or a hang; runs are untouched."""
    async with Store(tmp_path / "a.db") as store:
        await store.call(op_insert_run, _run(1))
        monkeypatch.setattr(readers, "PYTHON", python)
        async with asyncio.timeout(30):
            with pytest.raises(ReadFailed):
                await store.list_runs()
        monkeypatch.setattr(readers, "PYTHON", sys.executable)
        assert [r.id for r in (await store.list_runs())[0]] == ["run_0001"]


class _Gadget:
    """What a crafted message would carry: a call made while it unpickles."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (subprocess.call, (["touch", str(self.marker)],))


def test_a_message_unpickles_only_what_a_read_takes_or_gives(tmp_path: Path) -> None:
    """Requests and answers (runs, pages, plain values, Python's and sqlite3's errors)
    read back; a message that would call something (written into a reader's pipe by
    another process of the user) is refused before anything runs."""
    message = (
        True,
        (
            [_run(1, state=RunState.RUNNING), _run(2)],
            RunPage(states=("failed",), query="deploy", principal="key:p"),
            {"runs": [{"id": "run_1", "n": 1.5, "tags": {"a", "b"}}], "next": None},
            sqlite3.OperationalError("database is locked"),
            ValueError("'limit' must be a whole number"),
        ),
    )
    ok, (runs, page, plain, locked, invalid) = readers.loads(
        pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    )
    assert ok and (runs, page, plain) == message[1][:3]
    assert runs[0].state is RunState.RUNNING
    assert type(locked) is sqlite3.OperationalError and str(locked) == "database is locked"
    assert type(invalid) is ValueError and "whole number" in str(invalid)
    marker = tmp_path / "ran"
    for crafted in (_Gadget(marker), (False, _Gadget(marker)), [os.system]):
        with pytest.raises(pickle.UnpicklingError, match="not part of a reader's messages"):
            readers.loads(pickle.dumps(crafted, pickle.HIGHEST_PROTOCOL))
    assert not marker.exists()


def test_an_error_no_message_may_carry_reaches_the_caller_in_words() -> None:
    """An exception the hub would not unpickle (not Python's or sqlite3's) comes back
    as a RuntimeError naming it, not as a reader that failed."""
    payload = readers._answer(False, readers.ReaderDied("from a read"))
    ok, error = readers.loads(payload[readers._LENGTH.size :])
    assert not ok and isinstance(error, RuntimeError)
    assert str(error) == "hub.store.readers.ReaderDied: from a read"


_HUB_LISTING = """
import asyncio, sys
from hub.store import Store, op_insert_run
from tests.hub.test_store import make_run

async def main():
    async with Store(sys.argv[1]) as store:
        await store.call(op_insert_run, make_run(1, prompt="only mine"))
        await store.list_runs()
        print(*store._readers.pids, flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        found, _ = await store.list_runs(query="mine")
        print(*[run.id for run in found], flush=True)

asyncio.run(main())
"""


def test_a_reader_is_closed_to_other_processes_of_its_user(tmp_path: Path) -> None:
    """A reader is not dumpable, like the hub: a process of the same user (codex's
    commands) can neither read its environment nor open its pipes through /proc to write
    into the hub's or its own; reads go on. Run as root, every process here drops its
    capabilities (as in tests/abuse), or root would pass every check."""
    root = Path(__file__).resolve().parents[2]
    drop = ["setpriv", "--bounding-set", "-all", "--inh-caps", "-all", "--"]
    prefix = drop if os.geteuid() == 0 else []
    if prefix and shutil.which("setpriv") is None:
        pytest.fail("running as root needs setpriv (util-linux) to drop capabilities")
    hub = subprocess.Popen(
        [*prefix, sys.executable, "-c", _HUB_LISTING, str(tmp_path / "a.db")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        assert hub.stdin is not None and hub.stdout is not None
        [pid] = [int(pid) for pid in hub.stdout.readline().split()]
        for cmd in (
            ["sh", "-c", f"printf 'junk' > /proc/{pid}/fd/1"],
            ["sh", "-c", f"printf 'junk' > /proc/{pid}/fd/0"],
            ["cat", f"/proc/{pid}/environ"],
        ):
            done = subprocess.run([*prefix, *cmd], capture_output=True, timeout=30)
            assert done.returncode != 0, (cmd, done.stdout)
            assert b"Permission denied" in done.stderr, (cmd, done.stderr)
        hub.stdin.write(b"go\n")
        hub.stdin.flush()
        assert hub.stdout.readline().split() == [b"run_0001"]
        assert hub.wait(timeout=30) == 0
    finally:
        if hub.poll() is None:
            hub.kill()
            hub.wait()
