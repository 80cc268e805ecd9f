"""``status_ref``: a bridge tells the hub where a run's status message is.

The hub keeps it in the run's ``origin`` (durably: a restarted hub still has it) and
hands it back in the run's later ``progress`` and ``deliver`` frames, so a restarted
bridge finds the message. Only the run's own platform may set it.
"""

from __future__ import annotations

from typing import Any

from hub.app import HubServer
from hub.appkeys import ROUTER, STORE
from tests.conftest import NODE_TOKEN, on_a_fixed_port, ws_url


async def submit(bridge: Any, prompt: str, session_key: str = "42") -> str:
    """Submit ``prompt`` from a Telegram-like bridge; the run's id."""
    await bridge.send(
        {
            "type": "submit",
            "req_id": prompt,
            "prompt": prompt,
            "session_key": session_key,
            "origin": {"chat_id": 42, "message_id": 7},
        }
    )
    return str((await bridge.wait_type("submitted", req_id=prompt))["run_id"])


async def settled(bridge: Any, probe: str) -> None:
    """Return once the hub applied every frame ``bridge`` sent before (they go in order)."""
    await bridge.send({"type": "session_status", "req_id": probe, "session_key": "probe"})
    await bridge.wait_type("session", req_id=probe)


async def test_a_status_ref_is_kept_across_a_hub_restart_and_sent_with_the_run(
    hub_settings: Any, fake_executor: Any, fake_bridge: Any
) -> None:
    """Taken without an answer, stored with the run, in every later progress and deliver."""
    settings, url = on_a_fixed_port(hub_settings)
    hub = HubServer(settings)
    await hub.start()
    try:
        async with (
            fake_executor(url, token=NODE_TOKEN) as ex,
            fake_bridge(url, token=NODE_TOKEN, platform="telegram") as br,
        ):
            run_id = await submit(br, "keep my status")
            await ex.wait_type("assign", run_id=run_id)
            await ex.start_run(run_id)
            first = await br.wait_type("progress", run_id=run_id, state="running")
            assert "status_ref" not in first["origin"]
            await br.send({"type": "status_ref", "run_id": run_id, "ref": "1001"})
            await settled(br, "p1")
            assert [f for f in br.frames if f.get("type") == "error"] == []  # not answered
            await ex.event(run_id, 1, kind="codex", summary="running `ls`")
            progress = await br.wait_type("progress", run_id=run_id, detail="running `ls`")
            assert progress["origin"]["status_ref"] == "1001"
            assert progress["origin"]["chat_id"] == 42  # the rest of the origin is kept
            stored = await hub.app[STORE].get_run(run_id)
            assert stored is not None and stored.origin["status_ref"] == "1001"
        await hub.close()

        hub = HubServer(settings)
        await hub.start()
        assert hub.app[ROUTER].live[run_id].run.origin["status_ref"] == "1001"
        async with (
            fake_bridge(url, token=NODE_TOKEN, platform="telegram") as br,
            fake_executor(url, token=NODE_TOKEN, active_runs=[run_id]) as ex,
        ):
            await ex.event(run_id, 2, kind="codex", summary="running `df`")
            progress = await br.wait_type("progress", run_id=run_id, detail="running `df`")
            assert progress["origin"]["status_ref"] == "1001"
            await ex.finish(run_id, "kept")
            deliver = await br.wait_type("deliver", run_id=run_id)
            assert deliver["answer"] == "kept"
            assert deliver["origin"]["status_ref"] == "1001"
            await br.send({"type": "ack", "delivery_id": deliver["delivery_id"]})
            await settled(br, "p2")
        run = await hub.app[STORE].get_run(run_id)
        assert run is not None and run.origin["status_ref"] == "1001"
        assert run.state == "succeeded"
    finally:
        await hub.close()


async def test_a_status_ref_for_another_platforms_run_or_no_run_is_refused(
    hub: Any, fake_executor: Any, fake_bridge: Any
) -> None:
    """An error frame (with the req_id), nothing stored; the connection stays."""
    async with (
        fake_executor(ws_url(hub), token=NODE_TOKEN) as ex,
        fake_bridge(ws_url(hub), token=NODE_TOKEN, platform="telegram") as tg,
        fake_bridge(ws_url(hub), token=NODE_TOKEN, platform="slack", node_id="sl") as sl,
    ):
        run_id = await submit(tg, "mine")
        await ex.wait_type("assign", run_id=run_id)
        await sl.send({"type": "status_ref", "req_id": "r1", "run_id": run_id, "ref": "1"})
        error = await sl.wait_type("error", req_id="r1")
        assert error["code"] == "unknown_run"
        await sl.send({"type": "status_ref", "req_id": "r2", "run_id": "run_nope", "ref": "2"})
        assert (await sl.wait_type("error", req_id="r2"))["code"] == "unknown_run"
        await tg.send({"type": "status_ref", "req_id": "r3", "run_id": "run_nope", "ref": "3"})
        assert (await tg.wait_type("error", req_id="r3"))["code"] == "unknown_run"
        too_long = {"type": "status_ref", "req_id": "r4", "run_id": run_id, "ref": "9" * 201}
        await tg.send(too_long)
        assert (await tg.wait_type("error", req_id="r4"))["code"] == "bad_frame"
        await tg.send({"type": "status_ref", "req_id": "r5", "run_id": run_id, "ref": ""})
        assert (await tg.wait_type("error", req_id="r5"))["code"] == "bad_frame"
        # Both connections still serve.
        await settled(sl, "p-sl")
        await settled(tg, "p-tg")
        assert "status_ref" not in hub.app[ROUTER].live[run_id].run.origin
        await ex.finish(run_id, "done")
        deliver = await tg.wait_type("deliver", run_id=run_id)
        assert "status_ref" not in deliver["origin"]
        await tg.send({"type": "ack", "delivery_id": deliver["delivery_id"]})
        await settled(tg, "p-ack")
        # Answered and acknowledged: nothing is left to point at the message.
        await tg.send({"type": "status_ref", "req_id": "r6", "run_id": run_id, "ref": "6"})
        assert (await tg.wait_type("error", req_id="r6"))["code"] == "unknown_run"
    run = await hub.app[STORE].get_run(run_id)
    assert run is not None and "status_ref" not in run.origin


async def test_a_status_ref_for_a_reply_not_yet_acknowledged_goes_with_its_resends(
    hub: Any, fake_executor: Any, fake_bridge: Any
) -> None:
    """The run ended first: the reply waiting in the outbox takes the ref, on disk too."""
    async with (
        fake_executor(ws_url(hub), token=NODE_TOKEN) as ex,
        fake_bridge(ws_url(hub), token=NODE_TOKEN, platform="telegram") as tg,
    ):
        run_id = await submit(tg, "ended first")
        await ex.wait_type("assign", run_id=run_id)
        await ex.finish(run_id, "the answer")
        await ex.wait_type("result_ack", run_id=run_id)
        first = await tg.wait_type("deliver", run_id=run_id)
        assert "status_ref" not in first["origin"]
        await tg.send({"type": "status_ref", "run_id": run_id, "ref": "77"})
        await settled(tg, "p1")
        count = len(tg.frames)
        again = await tg.wait_for(lambda f: f.get("type") == "deliver", after=count)
        assert again["delivery_id"] == first["delivery_id"]
        assert again["origin"]["status_ref"] == "77"
        (pending,) = await hub.app[STORE].pending_deliveries()
        assert pending.payload["origin"]["status_ref"] == "77"
        run = await hub.app[STORE].get_run(run_id)
        assert run is not None and run.origin["status_ref"] == "77"
        await tg.send({"type": "ack", "delivery_id": first["delivery_id"]})
        await settled(tg, "p2")
    assert [f for f in tg.frames if f.get("type") == "error"] == []
