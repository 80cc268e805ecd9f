"""HubLink's status refs: best effort, sent again after a reconnect, forgotten once answered."""

from __future__ import annotations

import asyncio
from typing import Any

from bridges.hub_link import Frame, HubLink
from hub.app import HubServer
from hub.appkeys import ROUTER
from kernel.settings import NodeSettings
from tests.conftest import NODE_TOKEN, on_a_fixed_port


async def test_a_status_ref_sent_while_the_hub_is_down_reaches_it_after_the_reconnect(
    hub_settings: Any, fake_executor: Any
) -> None:
    """Sending never waits nor fails; the ref is sent again on reconnect, dropped after."""
    settings, url = on_a_fixed_port(hub_settings)
    delivered: asyncio.Queue[Frame] = asyncio.Queue()

    async def on_deliver(frame: Frame) -> None:
        delivered.put_nowait(frame)

    link = HubLink(
        NodeSettings(HUB_URL=url, HUB_TOKEN=NODE_TOKEN),
        "telegram",
        on_deliver=on_deliver,
        node_id="tg-link",
    )
    hub = HubServer(settings)
    await hub.start()
    try:
        async with link, fake_executor(url, token=NODE_TOKEN) as ex:
            async with asyncio.timeout(10):
                await link.client.connected.wait()
            submitted = await link.submit("hello", session_key="42", origin={"chat_id": 42})
            run_id = submitted.run_id
            await ex.wait_type("assign", run_id=run_id)
            await ex.start_run(run_id)
            await hub.close()
            # Nobody hears it (refused while disconnected, or queued on a dead socket):
            # it neither waits nor raises.
            link.status_ref(run_id, "555")

            hub = HubServer(settings)
            await hub.start()
            async with fake_executor(url, token=NODE_TOKEN, active_runs=[run_id]) as ex2:
                async with asyncio.timeout(15):
                    await link.client.connected.wait()
                await link.session_status("telegram:sync")  # frames are applied in order
                assert hub.app[ROUTER].live[run_id].run.origin["status_ref"] == "555"
                await ex2.finish(run_id, "done")
                async with asyncio.timeout(10):
                    deliver = await delivered.get()
                assert deliver["origin"]["status_ref"] == "555"
                await link.session_status("telegram:sync")
                assert link._status_refs == {}
    finally:
        await hub.close()


async def test_with_no_room_to_keep_a_request_made_while_the_hub_is_away_is_refused(
    hub_settings: Any,
) -> None:
    """BRIDGE_PENDING_MAX=0 keeps nothing: the request fails with hub_unreachable, and
    nobody is told it was kept."""
    from bridges.hub_link import HubError
    from bridges.settings import BridgeSettings

    _, url = on_a_fixed_port(hub_settings)  # nobody listens there
    settings = BridgeSettings(HUB_URL=url, HUB_TOKEN=NODE_TOKEN, BRIDGE_PENDING_MAX=0)
    told: list[str] = []

    async def on_kept() -> None:
        told.append("kept")

    async def on_deliver(frame: Frame) -> None:
        raise AssertionError("nothing to deliver")

    link = HubLink(
        settings,
        "telegram",
        on_deliver=on_deliver,
        request_timeout=0.2,
        pending_max=settings.pending_max,
        pending_max_age_s=settings.pending_max_age_s,
    )
    async with link:
        try:
            await link.submit("hello", session_key="42", origin={}, on_kept=on_kept)
        except HubError as exc:
            assert exc.code == "hub_unreachable"
        else:
            raise AssertionError("the submit was not refused")
    assert told == [] and link.pending == 0


async def test_a_request_kept_late_goes_before_those_made_after_it(hub_settings: Any) -> None:
    """A submit whose send failed with the connection is kept after requests made while
    it was failing, yet reaches the hub before them: the order they were made in holds."""
    settings, url = on_a_fixed_port(hub_settings)

    async def on_deliver(frame: Frame) -> None:
        pass

    def submit(prompt: str) -> Frame:
        return {"type": "submit", "prompt": prompt, "session_key": "42", "origin": {}}

    link = HubLink(
        NodeSettings(HUB_URL=url, HUB_TOKEN=NODE_TOKEN), "telegram", on_deliver=on_deliver
    )
    async with link:
        later = asyncio.ensure_future(link._keep(submit("made second"), 2, None))
        earlier = asyncio.ensure_future(link._keep(submit("made first"), 1, None))
        await asyncio.sleep(0)  # both kept (no hub yet), in the order of the calls above
        assert link.pending == 2
        hub = HubServer(settings)
        await hub.start()
        try:
            async with asyncio.timeout(15):
                first, second = await earlier, await later
        finally:
            await hub.close()
    assert (first["position"], second["position"]) == (0, 1)
