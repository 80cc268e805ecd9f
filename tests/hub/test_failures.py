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
