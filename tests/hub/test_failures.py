"""The hub when its own parts fail: a store that raises, a frame whose handling raises.

A failure costs what it touched and nothing more: the caller and the bridge are still
answered, the run's slot and session move on, the connection that sent the frame stays,
and each failure is logged once, with the run's id.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest

from hub.appkeys import ROUTER, STORE
from hub.store import Delivery
from tests.conftest import NODE_TOKEN, ws_url
from tests.hub.test_router import post_chat, until

#: A bridge's request for a run.
SUBMIT = {"type": "submit", "prompt": "deploy", "session_key": "C1:1", "origin": {}}


class DiskOnFire(OSError):
    """What the injected store failure raises."""


def failing() -> Callable[[Any], Any]:
    """A replacement for a store method: raises the first call, then delegates."""

    def wrap(method: Any) -> Any:
        calls = {"n": 0}

        async def fail_then_work(*args: Any, **kwargs: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 1:
                raise DiskOnFire("disk on fire (injected)")
            return await method(*args, **kwargs)

        return fail_then_work

    return wrap


class Outage:
    """A store method that raises until :meth:`end` (the hub's own retries fail too)."""

    def __init__(self) -> None:
        self.over = False

    def wrap(self, method: Any) -> Any:
        async def fail_until_over(*args: Any, **kwargs: Any) -> Any:
            if not self.over:
                raise DiskOnFire("disk on fire (injected)")
            return await method(*args, **kwargs)

        return fail_until_over

    def end(self) -> None:
        self.over = True


@pytest.fixture
def errors(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[], list[logging.LogRecord]]]:
    """ERROR records of the test; after it, none may say a task's exception was lost."""
    caplog.set_level(logging.INFO)
    yield lambda: [r for r in caplog.records if r.levelno >= logging.ERROR]
    gc.collect()  # a lost task exception is reported when the task is collected
    lost = [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert not lost, lost


async def sync(node: Any) -> None:
    """Return once the hub has answered everything queued for `node` before this call."""
    count = len(node.frames)
    await node.send({"type": "nonsense"})  # answered in order with a bad_frame error
    await node.wait_for(lambda f: f.get("code") == "bad_frame", after=count)


# --- 1. the store fails while a run ends ---------------------------------------------


async def test_a_store_failing_at_the_end_of_a_run_answers_and_releases_it(
    hub: Any, fake_executor: Any, errors: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller gets the answer, the slot and the session move on, the failure is
    logged once with the run id, and the result stays unacknowledged until it is stored."""
    store, router = hub.app[STORE], hub.app[ROUTER]
    monkeypatch.setattr(store, "finish_run", failing()(store.finish_run))
    session = {"X-Session-Id": "conv-store"}
    async with (
        fake_executor(ws_url(hub), token=NODE_TOKEN, capacity=1) as ex,
        aiohttp.ClientSession() as s,
    ):
        first = asyncio.create_task(post_chat(s, hub, "first", session))
        a1 = await ex.wait_type("assign", prompt="first")
        second = asyncio.create_task(post_chat(s, hub, "second", session))
        await until(hub, lambda: len(router.queue) == 1)
        await ex.finish(a1["run_id"], "answer one")
        status, data, _ = await first
        assert status == 200 and data["choices"][0]["message"]["content"] == "answer one"
        # The slot and the session's queue moved on: the second run is assigned.
        a2 = await ex.wait_type("assign", prompt="second")
        assert a1["run_id"] not in router.live
        await sync(ex)
        assert not ex.of_type("result_ack"), "acknowledged a result that is not on disk"
        logged = [r for r in errors() if a1["run_id"] in r.getMessage()]
        assert len(logged) == 1 and "store could not record" in logged[0].getMessage()
        assert isinstance(logged[0].exc_info[1], DiskOnFire)
        # The executor sends the result again (as after a reconnect): now it is stored.
        await ex.finish(a1["run_id"], "answer one")
        await ex.wait_type("result_ack", run_id=a1["run_id"])
        assert (await store.get_run(a1["run_id"])).state == "succeeded"
        await ex.finish(a2["run_id"], "answer two")
        assert (await second)[0] == 200
        await ex.wait_type("result_ack", run_id=a2["run_id"])
    assert len(errors()) == 1, [r.getMessage() for r in errors()]
    assert not router.live and not router.session_active and not router._unstored


async def test_a_store_failing_at_the_end_still_delivers_the_reply_to_the_bridge(
    hub: Any, fake_executor: Any, fake_bridge: Any, errors: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outbox write failed with the run's end: the bridge gets the reply all the same,
    and it is re-sent until the bridge acknowledges it."""
    store, router = hub.app[STORE], hub.app[ROUTER]
    monkeypatch.setattr(store, "finish_run", failing()(store.finish_run))
    async with (
        fake_executor(ws_url(hub), token=NODE_TOKEN) as ex,
        fake_bridge(ws_url(hub), token=NODE_TOKEN) as br,
    ):
        await br.send({**SUBMIT, "req_id": "s"})
        run_id = (await br.wait_type("submitted", req_id="s"))["run_id"]
        await ex.wait_type("assign", run_id=run_id)
        await ex.finish(run_id, "deployed")
        first = await br.wait_type("deliver", run_id=run_id)
        assert first["answer"] == "deployed" and first["status"] == "succeeded"
        again = await br.wait_for(lambda f: f.get("type") == "deliver", after=len(br.frames))
        assert again["delivery_id"] == first["delivery_id"]
        await br.send({"type": "ack", "delivery_id": first["delivery_id"]})
        await sync(br)
        assert run_id not in router.pending and run_id not in router.live
    assert [r for r in errors() if run_id in r.getMessage()], "the failure was not logged"


async def test_a_store_failing_when_a_queued_run_is_cancelled_still_answers(
    hub: Any, errors: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelling fails to store the end: the caller still hears 409, nothing stays."""
    store, router = hub.app[STORE], hub.app[ROUTER]
    # Failing until the test ends it: the hub's background retry cannot write the end
    # before the test has seen that it was not written.
    outage = Outage()
    monkeypatch.setattr(store, "finish_run", outage.wrap(store.finish_run))
    async with aiohttp.ClientSession() as s:
        call = asyncio.create_task(post_chat(s, hub, "never mind"))
        await until(hub, lambda: len(router.queue) == 1)
        run_id = router.queue[0]
        async with s.post(f"{hub.url}/api/runs/{run_id}/cancel") as resp:
            assert resp.status == 200
        status, data, _ = await call
    assert status == 409 and data["error"]["code"] == "cancelled"
    assert not router.live and not router.queue
    assert len([r for r in errors() if run_id in r.getMessage()]) == 1
    # Its end is kept and written once the store works again: else the store would
    # still say "queued", and a restarted hub would run what its caller cancelled.
    assert (await store.get_run(run_id)).state == "queued"  # type: ignore[union-attr]
    assert run_id in router._unstored
    outage.end()
    await router.retry_unstored()
    assert (await store.get_run(run_id)).state == "cancelled"  # type: ignore[union-attr]
    assert not router._unstored


async def test_an_unrecorded_end_is_retried_quietly_until_it_is_recorded(
    hub: Any, errors: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the store keeps failing, the retries add no error lines; then one line says
    the end is recorded."""
    store, router = hub.app[STORE], hub.app[ROUTER]
    outage = Outage()  # the hub's background retries fail too until it ends
    monkeypatch.setattr(store, "finish_run", outage.wrap(store.finish_run))
    ticket = await router.submit("never mind", origin={"source": "http"})
    assert await router.cancel(ticket.run.id)
    await router.retry_unstored()
    await router.retry_unstored()
    assert ticket.run.id in router._unstored
    assert len(errors()) == 1
    outage.end()
    await router.retry_unstored()
    assert not router._unstored
    assert (await store.get_run(ticket.run.id)).state == "cancelled"  # type: ignore[union-attr]


async def test_a_submit_the_store_cannot_keep_is_refused_and_not_run(
    hub: Any, fake_bridge: Any, errors: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bridge is told the store failed, and the run it would not hear of never runs."""
    store, router = hub.app[STORE], hub.app[ROUTER]
    monkeypatch.setattr(store, "flush", failing()(store.flush))
    async with fake_bridge(ws_url(hub), token=NODE_TOKEN) as br:
        await br.send({**SUBMIT, "req_id": "a"})
        refused = await br.wait_type("error", req_id="a")
        assert refused["code"] == "store_error" and "try again" in refused["message"]
        assert not router.live and not router.queue
        await br.send({**SUBMIT, "req_id": "b"})
        assert (await br.wait_type("submitted", req_id="b"))["position"] == 0
        assert br.close_code is None


# --- 2. handling one frame raises -----------------------------------------------------


async def test_a_bridge_frame_that_raises_costs_only_that_frame(
    hub: Any, fake_bridge: Any, errors: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bridge hears an error for that frame (by req_id), and the connection stays."""
    store, router = hub.app[STORE], hub.app[ROUTER]
    monkeypatch.setattr(store, "get_session", failing()(store.get_session))
    monkeypatch.setattr(store, "ack_delivery", failing()(store.ack_delivery))
    async with fake_bridge(ws_url(hub), token=NODE_TOKEN) as br:
        await br.send({**SUBMIT, "req_id": "a"})
        error = await br.wait_type("error", req_id="a")
        assert error["code"] == "internal_error" and "submit" in error["message"]
        assert "disk on fire" not in error["message"]  # the details stay in the hub's log
        # An ack has no req_id: the error comes without one.
        router.pending["run_x"] = Delivery("run_x", "run_x", "slack", {}, 0.0)
        await br.send({"type": "ack", "delivery_id": "run_x"})
        await br.wait_for(lambda f: f.get("code") == "internal_error" and "req_id" not in f)
        await br.send({**SUBMIT, "req_id": "b"})
        await br.wait_type("submitted", req_id="b")
        assert br.close_code is None and "fake-bridge" in router.bridges
    logged = [r.getMessage() for r in errors()]
    assert len(logged) == 2 and all("fake-bridge" in m for m in logged), logged


async def test_an_executor_frame_that_raises_costs_only_that_frame(
    hub: Any, fake_executor: Any, errors: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event and a result whose handling raises are answered with an error; the
    executor stays connected and its run ends normally afterwards."""
    router = hub.app[ROUTER]
    on_event, on_result = router._on_event, router._on_result
    broken = {"event", "result"}

    def event_once(*args: Any) -> None:
        if "event" in broken:
            broken.discard("event")
            raise RuntimeError("_on_event broke (injected)")
        on_event(*args)

    async def result_once(*args: Any) -> None:
        if "result" in broken:
            broken.discard("result")
            raise RuntimeError("_on_result broke (injected)")
        await on_result(*args)

    monkeypatch.setattr(router, "_on_event", event_once)
    monkeypatch.setattr(router, "_on_result", result_once)
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex, aiohttp.ClientSession() as s:
        call = asyncio.create_task(post_chat(s, hub, "job"))
        run_id = (await ex.wait_type("assign"))["run_id"]
        await ex.start_run(run_id)
        await ex.event(run_id, 1, kind="codex", data={})
        error = await ex.wait_type("error", code="internal_error")
        assert "event frame" in error["message"]
        count = len(ex.frames)
        await ex.finish(run_id, "done")
        error = await ex.wait_for(lambda f: f.get("code") == "internal_error", after=count)
        assert "result frame" in error["message"]
        await ex.finish(run_id, "done")  # as the executor does after a reconnect
        status, data, _ = await call
        assert status == 200 and data["choices"][0]["message"]["content"] == "done"
        await ex.wait_type("result_ack", run_id=run_id)
        assert ex.close_code is None and "fake-exec" in router.executors
    logged = [r.getMessage() for r in errors()]
    assert len(logged) == 2 and all(run_id in m for m in logged), logged


async def test_a_new_run_is_stored_as_submitted_whatever_changes_before_the_write(
    hub: Any, errors: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The insert is written after submit returns: a change meanwhile (here a cancel whose
    own write failed) must not ride along with it, or the store would show an end it never
    recorded."""
    store, router = hub.app[STORE], hub.app[ROUTER]
    outage = Outage()
    monkeypatch.setattr(store, "finish_run", outage.wrap(store.finish_run))
    entered, release = threading.Event(), threading.Event()

    def hold(conn: object) -> None:
        entered.set()
        release.wait(10)

    store.post(hold)  # the writer is busy: the insert waits in its queue
    assert await asyncio.to_thread(entered.wait, 10)
    try:
        ticket = await router.submit("never mind", origin={"source": "http"})
        assert await router.cancel(ticket.run.id)
        assert ticket.run.state == "cancelled"
    finally:
        release.set()
    assert (await store.get_run(ticket.run.id)).state == "queued"  # type: ignore[union-attr]
    outage.end()
    await router.retry_unstored()
    assert (await store.get_run(ticket.run.id)).state == "cancelled"  # type: ignore[union-attr]


# --- 3. the disk is full ----------------------------------------------------------------
#
# A real SQLITE_FULL: the store's connection is capped at the pages the database has
# (PRAGMA max_page_count), so a write that needs one more page fails as on a full disk;
# lifting the cap is the space coming back.

#: Text that needs new pages wherever it is written.
BIG = "x" * 20_000


async def fill(store: Any) -> None:
    """Cap the store at the pages it has now."""
    pages = await store.call(lambda conn: conn.execute("PRAGMA page_count").fetchone()[0])
    await store.set_max_pages(pages)


async def make_room(store: Any) -> None:
    """Lift the cap and wait until the store has written what it held."""
    await store.set_max_pages(1 << 30)
    async with asyncio.timeout(10):
        await store.wait_writable()


async def readyz(session: aiohttp.ClientSession, hub: Any) -> tuple[int, dict[str, Any]]:
    async with session.get(f"{hub.url}/readyz") as resp:
        return resp.status, await resp.json()


async def test_a_full_disk_refuses_new_runs_everywhere_and_readyz_says_why(
    hub: Any, fake_executor: Any, fake_bridge: Any, errors: Any
) -> None:
    """A run whose start cannot be stored is refused, not answered; then /readyz is 503
    with the reason, and /v1, /api/runs and bridges hear 503 store_unavailable until
    there is room again."""
    store, router = hub.app[STORE], hub.app[ROUTER]
    async with (
        fake_executor(ws_url(hub), token=NODE_TOKEN) as ex,
        fake_bridge(ws_url(hub), token=NODE_TOKEN) as br,
        aiohttp.ClientSession() as s,
    ):
        assert (await readyz(s, hub))[0] == 200
        await fill(store)
        status, data, headers = await post_chat(s, hub, BIG)
        assert status == 503 and data["error"]["code"] == "store_unavailable", data
        refused = headers["X-Run-ID"]
        await ex.wait_type("cancel", run_id=refused)  # it had been assigned: stopped

        status, body = await readyz(s, hub)
        assert status == 503 and body["ready"] is False and body["store"] == "unwritable"
        assert "store cannot write" in body["reason"] and "full" in body["reason"]
        assigned = len(ex.of_type("assign"))
        status, data, headers = await post_chat(s, hub, "small")
        assert status == 503 and headers["Retry-After"] == "30"
        assert data["error"]["code"] == "store_unavailable"
        assert data["error"]["type"] == "server_error"
        async with s.post(f"{hub.url}/api/runs", json={"prompt": "from the page"}) as resp:
            assert resp.status == 503
            assert (await resp.json())["error"]["code"] == "store_unavailable"
        await br.send({**SUBMIT, "req_id": "full"})
        assert (await br.wait_type("error", req_id="full"))["code"] == "store_unavailable"
        await sync(ex)
        assert len(ex.of_type("assign")) == assigned and not router.queue

        await make_room(store)
        await ex.wait_type("result_ack", run_id=refused)  # its end is on disk now
        assert (await readyz(s, hub))[0] == 200
        call = asyncio.create_task(post_chat(s, hub, "after"))
        await ex.finish((await ex.wait_type("assign", prompt="after"))["run_id"], "fine")
        assert (await call)[0] == 200
    run = await store.get_run(refused)
    assert run is not None and run.prompt == BIG and run.state == "failed"
    assert run.error["code"] == "store_unavailable"  # type: ignore[index]


async def test_runs_going_when_the_disk_fills_are_answered_and_all_stored_once_there_is_room(
    hub: Any, hub_settings: Any, fake_executor: Any, fake_bridge: Any, errors: Any
) -> None:
    """Their callers and the bridge get the answers at once; each result is acknowledged
    only once its end is on disk; afterwards, and after a restart, the store holds every
    run with its answer and events."""
    from hub.store import Store, StoreUnavailable

    store, router = hub.app[STORE], hub.app[ROUTER]
    async with (
        fake_executor(ws_url(hub), token=NODE_TOKEN, capacity=3) as ex,
        fake_bridge(ws_url(hub), token=NODE_TOKEN) as br,
        aiohttp.ClientSession() as s,
    ):
        calls = [asyncio.create_task(post_chat(s, hub, f"job {i}")) for i in range(2)]
        run_ids = [(await ex.wait_type("assign", prompt=f"job {i}"))["run_id"] for i in range(2)]
        await br.send({**SUBMIT, "req_id": "b"})
        run_ids.append((await br.wait_type("submitted", req_id="b"))["run_id"])
        for run_id in run_ids:
            await ex.wait_type("assign", run_id=run_id)
            await ex.start_run(run_id)
        await sync(ex)
        await store.flush()
        await fill(store)
        for run_id in run_ids:
            await ex.event(run_id, 1, kind="codex", data={"output": BIG})
        await sync(ex)
        with pytest.raises(StoreUnavailable):
            await store.flush()
        for run_id in run_ids:
            await ex.finish(run_id, f"answer of {run_id}")
        for i, call in enumerate(calls):
            status, data, _ = await call
            assert status == 200
            assert data["choices"][0]["message"]["content"] == f"answer of {run_ids[i]}"
        deliver = await br.wait_type("deliver", run_id=run_ids[2])
        assert deliver["answer"] == f"answer of {run_ids[2]}"
        await br.send({"type": "ack", "delivery_id": deliver["delivery_id"]})
        await sync(br)
        await sync(ex)
        assert not ex.of_type("result_ack"), "acknowledged a result that is not on disk"
        assert set(router._unstored) == set(run_ids)
        assert (await readyz(s, hub))[0] == 503
        async with s.get(f"{hub.url}/metrics") as resp:
            held = [
                line
                for line in (await resp.text()).splitlines()
                if line.startswith("codex_hub_store_held ")
            ]
        assert held and float(held[0].split()[1]) >= len(run_ids)

        await make_room(store)
        for run_id in run_ids:
            await ex.wait_type("result_ack", run_id=run_id)
        assert not router._unstored and store.held == 0

    async def check(store: Store) -> None:
        for run_id in run_ids:
            run = await store.get_run(run_id)
            assert run is not None and run.state == "succeeded"
            assert run.answer == f"answer of {run_id}"
            events = await store.get_events(run_id)
            assert [e["kind"] for e in events][-2:] == ["codex", "state"]
            assert events[-2]["data"] == {"output": BIG}
        assert await store.pending_deliveries() == []  # the held ack was written too

    await check(store)
    await hub.close()
    async with Store(hub_settings.db) as reopened:
        await check(reopened)


async def test_an_end_held_when_the_hub_stops_is_recorded_from_the_executors_resend(
    hub_settings: Any, fake_executor: Any, errors: Any
) -> None:
    """The held end dies with the hub, but the executor still has the result it was
    never acknowledged: it sends it to the next hub, which records it."""
    from hub.app import HubServer
    from hub.store import StoreUnavailable
    from tests.conftest import on_a_fixed_port

    settings, url = on_a_fixed_port(hub_settings)
    hub = HubServer(settings)
    await hub.start()
    try:
        store = hub.app[STORE]
        async with fake_executor(url, token=NODE_TOKEN) as ex, aiohttp.ClientSession() as s:
            call = asyncio.create_task(post_chat(s, hub, "job"))
            run_id = (await ex.wait_type("assign"))["run_id"]
            await ex.start_run(run_id)
            await sync(ex)
            await store.flush()
            await fill(store)
            await ex.finish(run_id, BIG)
            status, data, _ = await call
            assert status == 200 and data["choices"][0]["message"]["content"] == BIG
            await sync(ex)
            with pytest.raises(StoreUnavailable):
                await store.flush()
            assert not ex.of_type("result_ack")
            await hub.close()  # still full: what it held is lost with it

        hub = HubServer(settings)
        await hub.start()
        async with fake_executor(url, token=NODE_TOKEN, active_runs=[run_id]) as ex:
            await ex.finish(run_id, BIG)  # what an executor does after each reconnect
            await ex.wait_type("result_ack", run_id=run_id)
        run = await hub.app[STORE].get_run(run_id)
        assert run is not None and run.state == "succeeded" and run.answer == BIG
    finally:
        await hub.close()
