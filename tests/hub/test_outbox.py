"""Replies to bridges are re-sent until acknowledged, across bridge and hub restarts."""

from __future__ import annotations

import itertools
import time
from typing import Any

import aiohttp
import pytest

from hub.app import HubServer
from hub.appkeys import ROUTER, STORE
from tests.conftest import NODE_TOKEN, on_a_fixed_port, ws_url


async def submit(bridge: Any, prompt: str, session_key: str = "C1:1.0") -> dict[str, Any]:
    await bridge.send(
        {
            "type": "submit",
            "req_id": prompt,
            "prompt": prompt,
            "session_key": session_key,
            "origin": {"channel": "C1", "thread_ts": "1.0", "user": "U1"},
        }
    )
    return await bridge.wait_type("submitted", req_id=prompt)


async def test_a_bridge_gets_its_reply_again_until_it_acks(
    hub: Any, fake_executor: Any, fake_bridge: Any
) -> None:
    """No ack: the reply comes again after HUB_REDELIVER_S; after the ack, never again."""
    async with (
        fake_executor(ws_url(hub), token=NODE_TOKEN) as ex,
        fake_bridge(ws_url(hub), token=NODE_TOKEN) as br,
    ):
        submitted = await submit(br, "deploy it")
        run_id = submitted["run_id"]
        assert submitted["position"] == 0
        assign = await ex.wait_type("assign", run_id=run_id)
        assert assign["origin"]["channel"] == "C1" and assign["origin"]["source"] == "slack"
        await ex.start_run(run_id)
        progress = await br.wait_type("progress", run_id=run_id, state="running")
        assert progress["origin"]["thread_ts"] == "1.0"
        await ex.finish(run_id, "deployed")
        first = await br.wait_type("deliver", run_id=run_id)
        assert first["answer"] == "deployed" and first["status"] == "succeeded"
        count = len(br.frames)
        again = await br.wait_for(lambda f: f.get("type") == "deliver", after=count)
        assert again["delivery_id"] == first["delivery_id"]
        await br.send({"type": "ack", "delivery_id": first["delivery_id"]})
        await submit(br, "marker")  # answered after the ack was applied
        assert await hub.app[STORE].count_pending_deliveries() == 0


async def test_a_reply_waits_for_the_bridge_to_come_back(
    hub: Any, fake_executor: Any, fake_bridge: Any
) -> None:
    """A run that ends while its bridge is away is delivered when it reconnects."""
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex:
        async with fake_bridge(ws_url(hub), token=NODE_TOKEN) as br:
            run_id = (await submit(br, "while away"))["run_id"]
            await ex.wait_type("assign", run_id=run_id)
        await ex.finish(run_id, "here you go")
        await ex.wait_type("result_ack", run_id=run_id)
        async with fake_bridge(ws_url(hub), token=NODE_TOKEN, node_id="bridge-2") as br2:
            deliver = await br2.wait_type("deliver", run_id=run_id)
            assert deliver["answer"] == "here you go"
            await br2.send({"type": "ack", "delivery_id": deliver["delivery_id"]})
        async with fake_bridge(
            ws_url(hub), token=NODE_TOKEN, node_id="tg", platform="telegram"
        ) as tg:
            await submit(tg, "marker")
            assert tg.of_type("deliver") == []


async def test_a_hub_restart_loses_neither_the_run_nor_the_reply(
    hub_settings: Any, fake_executor: Any, fake_bridge: Any
) -> None:
    """Hub stopped mid-run: the executor reports after the restart, the bridge gets it."""
    settings, url = on_a_fixed_port(hub_settings)
    hub = HubServer(settings)
    await hub.start()
    try:
        async with (
            fake_executor(url, token=NODE_TOKEN) as ex,
            fake_bridge(url, token=NODE_TOKEN) as br,
        ):
            run_id = (await submit(br, "survive this"))["run_id"]
            await ex.wait_type("assign", run_id=run_id)
            await ex.start_run(run_id)
            await ex.event(run_id, 1, kind="codex", data={"step": 1})
        await hub.close()

        hub = HubServer(settings)
        await hub.start()
        async with fake_executor(url, token=NODE_TOKEN, active_runs=[run_id]) as ex:
            await ex.event(run_id, 1, kind="codex", data={"step": 1})
            await ex.event(run_id, 2, kind="codex", data={"step": 2})
            await ex.finish(run_id, "survived", thread_id="t-1")
            await ex.wait_type("result_ack", run_id=run_id)
        async with fake_bridge(url, token=NODE_TOKEN) as br:
            deliver = await br.wait_type("deliver", run_id=run_id)
            assert deliver["answer"] == "survived"
            await br.send({"type": "ack", "delivery_id": deliver["delivery_id"]})
            await submit(br, "marker", session_key="other")
        store = hub.app[STORE]
        run = await store.get_run(run_id)
        assert run.state == "succeeded" and run.thread_id == "t-1"
        steps = [e["data"]["step"] for e in await store.get_events(run_id) if e["kind"] == "codex"]
        assert steps == [1, 2]
        assert await store.count_pending_deliveries() == 0
    finally:
        await hub.close()


async def test_bridge_commands_for_a_session(
    hub: Any, fake_executor: Any, fake_bridge: Any
) -> None:
    """Queue position, session status, cancel by session and reset work over the socket."""
    async with (
        fake_executor(ws_url(hub), token=NODE_TOKEN) as ex,
        fake_bridge(ws_url(hub), token=NODE_TOKEN) as br,
    ):
        first = await submit(br, "one")
        second = await submit(br, "two")
        assert (first["position"], second["position"]) == (0, 1)
        await ex.wait_type("assign", run_id=first["run_id"])
        await br.send({"type": "session_status", "req_id": "st", "session_key": "slack:C1:1.0"})
        status = await br.wait_type("session", req_id="st")
        assert status["active"]["id"] == first["run_id"]
        assert [r["id"] for r in status["queued"]] == [second["run_id"]]
        await br.send({"type": "cancel", "req_id": "c", "session_key": "slack:C1:1.0"})
        await ex.wait_type("cancel", run_id=first["run_id"])
        await ex.send({"type": "result", "run_id": first["run_id"], "status": "cancelled"})
        assert (await br.wait_type("cancelled", req_id="c"))["run_ids"] == [first["run_id"]]
        await ex.wait_type("assign", run_id=second["run_id"])
        await br.send({"type": "reset_session", "req_id": "r", "session_key": "slack:C1:1.0"})
        await br.wait_type("ok", req_id="r")


async def test_a_message_submitted_twice_starts_one_run(
    hub: Any, fake_executor: Any, fake_bridge: Any
) -> None:
    """The same dedupe key names the run it started, also after that run ended."""
    frame = {
        "type": "submit",
        "prompt": "once",
        "session_key": "C9:1",
        "origin": {},
        "dedupe_key": "C9:1700000000.1",
    }
    async with (
        fake_executor(ws_url(hub), token=NODE_TOKEN) as ex,
        fake_bridge(ws_url(hub), token=NODE_TOKEN) as br,
    ):
        await br.send({**frame, "req_id": "a"})
        first = await br.wait_type("submitted", req_id="a")
        await br.send({**frame, "req_id": "b"})
        again = await br.wait_type("submitted", req_id="b")
        assert (first["duplicate"], again["duplicate"]) == (False, True)
        assert again["run_id"] == first["run_id"]
        await ex.finish((await ex.wait_type("assign"))["run_id"], "done")
        await br.wait_type("deliver", run_id=first["run_id"])
        await br.send({**frame, "req_id": "c"})
        late = await br.wait_type("submitted", req_id="c")
        assert late["run_id"] == first["run_id"] and late["duplicate"] is True
        assert len(ex.of_type("assign")) == 1


async def test_a_reset_wins_over_the_run_going_at_the_time(
    hub: Any, fake_executor: Any, fake_bridge: Any
) -> None:
    """/new during a run: that run's thread is not written back; the next starts fresh."""
    async with (
        fake_executor(ws_url(hub), token=NODE_TOKEN) as ex,
        fake_bridge(ws_url(hub), token=NODE_TOKEN) as br,
    ):
        first = await submit(br, "first")
        await ex.wait_type("assign", run_id=first["run_id"])
        await br.send({"type": "reset_session", "req_id": "r", "session_key": "slack:C1:1.0"})
        await br.wait_type("ok", req_id="r")
        await ex.finish(first["run_id"], "ok", thread_id="old-thread")
        second = await submit(br, "second")
        assign = await ex.wait_type("assign", run_id=second["run_id"])
        assert assign["thread_id"] is None


async def test_unacknowledged_replies_are_resent_with_growing_gaps(
    hub_settings: Any, fake_executor: Any, fake_bridge: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Re-sends back off exponentially (with jitter) while the bridge does not ack."""
    settings = hub_settings.model_copy(update={"redeliver_s": 0.2})
    async with HubServer(settings) as hub:
        router = hub.app[ROUTER]
        sends: list[tuple[float, float]] = []  # (sent at, next send due) on the hub's clock
        send = router._send_delivery

        def recording(delivery: Any) -> None:
            sent_at, attempts = time.monotonic(), delivery.attempts
            send(delivery)
            if delivery.attempts > attempts:  # a bridge was there to send it to
                sends.append((sent_at, router._next_send[delivery.id]))

        monkeypatch.setattr(router, "_send_delivery", recording)
        url = ws_url(hub)
        async with (
            fake_executor(url, token=NODE_TOKEN) as ex,
            fake_bridge(url, token=NODE_TOKEN) as br,
        ):
            run_id = (await submit(br, "unacked"))["run_id"]
            await ex.finish((await ex.wait_type("assign"))["run_id"], "x")
            for count in range(1, 5):
                await br.wait_for(
                    lambda f: f.get("type") == "deliver" and f["run_id"] == run_id,
                    after=len(br.frames) if count > 1 else 0,
                )
    # The n-th wait is 0.2 s doubled n-1 times, jittered to 50-100 % of it...
    for n, (sent_at, due) in enumerate(sends[:3]):
        assert 0.5 * 0.2 * 2**n <= due - sent_at <= 0.2 * 2**n + 0.05, sends
    # ...and no re-send comes before it is due.
    for (_, due), (next_sent_at, _) in itertools.pairwise(sends[:4]):
        assert next_sent_at >= due, sends


async def test_a_chat_conversation_continued_from_the_monitor_answers_in_the_thread_too(
    hub: Any, fake_executor: Any, fake_bridge: Any
) -> None:
    """The page's run in a Slack conversation is delivered to that thread, saying so."""
    async with (
        fake_executor(ws_url(hub), token=NODE_TOKEN) as ex,
        fake_bridge(ws_url(hub), token=NODE_TOKEN) as br,
        aiohttp.ClientSession() as http,
    ):
        first = await submit(br, "deploy it")
        await ex.wait_type("assign", run_id=first["run_id"])
        await br.send({"type": "status_ref", "run_id": first["run_id"], "ref": "42.0"})
        await ex.finish(first["run_id"], "deployed")
        delivered = await br.wait_type("deliver", run_id=first["run_id"])
        await br.send({"type": "ack", "delivery_id": delivered["delivery_id"]})
        run = await hub.app[STORE].get_run(first["run_id"])
        body = {"prompt": "and roll back\nstaging", "session_key": run.session_key}
        async with http.post(f"{hub.url}/api/runs", json=body) as resp:
            assert resp.status == 202, await resp.text()
            created = await resp.json()
        assert created["reply_to"] == "slack"
        run_id = created["run"]["id"]
        assign = await ex.wait_type("assign", run_id=run_id)
        assert assign["origin"]["source"] == "monitor"
        await ex.finish(run_id, "rolled back")
        reply = await br.wait_type("deliver", run_id=run_id)
    assert reply["answer"] == "(Asked from the monitor: and roll back staging)\n\nrolled back"
    origin = reply["origin"]
    assert (origin["channel"], origin["thread_ts"], origin["via"]) == ("C1", "1.0", "monitor")
    assert "status_ref" not in origin  # the first run's status message is not this one's


async def test_a_page_conversation_is_answered_on_the_page_only(hub: Any) -> None:
    """A run in a conversation that began on the page goes to no chat."""
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{hub.url}/api/runs", json={"prompt": "one"}) as resp:
            first = await resp.json()
        body = {"prompt": "two", "session_key": first["run"]["session_key"]}
        async with http.post(f"{hub.url}/api/runs", json=body) as resp:
            assert (await resp.json())["reply_to"] is None
