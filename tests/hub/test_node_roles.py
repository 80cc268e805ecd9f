"""A credential per node role: only executors get runs, a bridge speaks only for its own
platform, a live node id stays its holder's, and the hub ends runs that overrun."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from websockets.exceptions import ConnectionClosed

from hub.app import HubServer
from hub.appkeys import ROUTER, STORE
from kernel.credentials import credential_role, derive
from testkit.fakes.nodes import FakeExecutor, FakeNode, bridge_hello, executor_hello
from tests.conftest import NODE_TOKEN, node_token, outbox_drained, ws_url
from tests.hub.test_outbox import submit
from tests.hub.test_router import post_chat, until
from wire import CLOSE_FORBIDDEN, CLOSE_NODE_ID_TAKEN


def test_each_role_has_its_own_credential_derived_from_the_secret() -> None:
    """Credentials differ per role and per secret, name their role, and are recognised
    only for the secret they came from; the secret itself is told apart."""
    creds = {role: derive(NODE_TOKEN, role) for role in ("executor", "slack", "telegram")}
    assert len(set(creds.values())) == 3
    for role, cred in creds.items():
        assert cred.startswith(f"{role}.") and NODE_TOKEN not in cred
        assert credential_role(cred, NODE_TOKEN) == role
        assert credential_role(cred, "another-secret-0123456789") is None
    assert credential_role(NODE_TOKEN, NODE_TOKEN) == "master"
    assert credential_role("", NODE_TOKEN) is None
    assert credential_role("slack." + "0" * 64, NODE_TOKEN) is None


async def refused(url: str, hello: dict[str, Any]) -> tuple[int | None, str]:
    node = FakeNode(url, hello)
    with pytest.raises(ConnectionClosed):
        await node.connect()
    return node.close_code, node.close_reason


async def test_a_rogue_node_with_a_bridge_credential_gets_no_run(
    hub: Any, fake_executor: Any
) -> None:
    """A bridge's credential saying hello as an executor (capacity 10000) is refused with
    4403; the next API caller's run waits for a real executor and gets its answer."""
    url = ws_url(hub)
    for platform in ("slack", "telegram"):
        hello = executor_hello(node_id="rogue", capacity=10_000, token=node_token(platform))
        code, reason = await refused(url, hello)
        assert code == CLOSE_FORBIDDEN and "only `codex-hub token executor` gets runs" in reason
    # Nor may a bridge speak for another platform than its credential's.
    code, _ = await refused(url, bridge_hello("telegram", token=node_token("slack")))
    assert code == CLOSE_FORBIDDEN
    code, _ = await refused(url, bridge_hello("slack", token=node_token("executor")))
    assert code == CLOSE_FORBIDDEN
    router = hub.app[ROUTER]
    assert router.executors == {} and router.bridges == {}
    async with aiohttp.ClientSession() as s:
        call = asyncio.create_task(post_chat(s, hub, "the caller's prompt"))
        await until(hub, lambda: len(router.queue) == 1)
        async with fake_executor(url, token=node_token("executor")) as ex:
            assign = await ex.wait_type("assign")
            assert assign["prompt"] == "the caller's prompt"
            await ex.finish(assign["run_id"], "the real answer")
            status, data, _ = await call
    assert status == 200 and data["choices"][0]["message"]["content"] == "the real answer"


async def finished_run(ex: FakeExecutor, bridge: FakeNode, session: str, answer: str) -> str:
    """Submit from ``bridge``, have ``ex`` answer, and return the run id (its reply waits)."""
    run_id = str((await submit(bridge, answer, session))["run_id"])
    await ex.wait_type("assign", run_id=run_id)
    await ex.finish(run_id, answer)
    await ex.wait_type("result_ack", run_id=run_id)
    return run_id


async def test_a_bridge_cannot_acknowledge_another_platforms_reply(
    hub: Any, fake_executor: Any, fake_bridge: Any
) -> None:
    """A Slack bridge's ack of a Telegram reply is refused with an error and changes
    nothing: the reply stays in the outbox and reaches the Telegram bridge."""
    url = ws_url(hub)
    router, store = hub.app[ROUTER], hub.app[STORE]
    async with (
        fake_executor(url, token=node_token("executor")) as ex,
        fake_bridge(url, platform="slack", node_id="sl", token=node_token("slack")) as slack,
    ):
        async with fake_bridge(
            url, platform="telegram", node_id="tg", token=node_token("telegram")
        ) as tg:
            run_id = await finished_run(ex, tg, "telegram:7:0:0", "for telegram")
            await tg.wait_type("deliver", run_id=run_id)
        await slack.send({"type": "ack", "delivery_id": run_id})
        error = await slack.wait_type("error", code="unknown_delivery")
        assert "slack" in error["message"]
        assert run_id in router.pending and await store.count_pending_deliveries() == 1
        async with fake_bridge(
            url, platform="telegram", node_id="tg", token=node_token("telegram")
        ) as tg:
            delivered = await tg.wait_type("deliver", run_id=run_id)
            await tg.send({"type": "ack", "delivery_id": delivered["delivery_id"]})
            await outbox_drained(store)


async def test_a_bridge_cannot_read_cancel_or_reset_another_platforms_or_an_http_session(
    hub: Any, fake_executor: Any, fake_bridge: Any
) -> None:
    """A Slack bridge naming a Telegram session or an HTTP caller's, by key or by run id,
    reads nothing, cancels nothing and resets nothing; its own session it can."""
    url = ws_url(hub)
    router = hub.app[ROUTER]
    async with (
        fake_executor(url, token=node_token("executor"), capacity=4) as ex,
        fake_bridge(url, platform="slack", node_id="sl", token=node_token("slack")) as slack,
        fake_bridge(url, platform="telegram", node_id="tg", token=node_token("telegram")) as tg,
        aiohttp.ClientSession() as s,
    ):
        tg_run = (await submit(tg, "telegram work", "telegram:7:0:0"))["run_id"]
        call = asyncio.create_task(post_chat(s, hub, "http work", headers={"X-Session-Id": "s1"}))
        own_run = (await submit(slack, "slack work", "T1:C1:1.0"))["run_id"]
        await until(hub, lambda: len(router.session_active) == 3)
        http_key = next(k for k in router.session_active if k.startswith("http:"))
        router.sessions["telegram:7:0:0"] = ("thread-of-telegram-user", "fake-exec")

        for n, key in enumerate(("telegram:7:0:0", http_key)):
            await slack.send({"type": "session_status", "req_id": f"st{n}", "session_key": key})
            status = await slack.wait_type("session", req_id=f"st{n}")
            assert status["active"] is None and status["queued"] == []
            await slack.send({"type": "cancel", "req_id": f"c{n}", "session_key": key})
            assert (await slack.wait_type("cancelled", req_id=f"c{n}"))["run_ids"] == []
            await slack.send({"type": "reset_session", "req_id": f"r{n}", "session_key": key})
            await slack.wait_type("ok", req_id=f"r{n}")
        await slack.send({"type": "cancel", "req_id": "by-id", "run_id": tg_run})
        assert (await slack.wait_type("cancelled", req_id="by-id"))["run_ids"] == []
        assert router.sessions["telegram:7:0:0"] == ("thread-of-telegram-user", "fake-exec")
        assert not router.live[tg_run].cancel_requested
        assert not ex.of_type("cancel")

        await slack.send({"type": "session_status", "req_id": "own", "session_key": "T1:C1:1.0"})
        assert (await slack.wait_type("session", req_id="own"))["active"]["id"] == own_run
        await slack.send({"type": "cancel", "req_id": "own-c", "session_key": "T1:C1:1.0"})
        assert (await slack.wait_type("cancelled", req_id="own-c"))["run_ids"] == [own_run]
        for assign in ex.of_type("assign"):
            await ex.finish(assign["run_id"], "done")
        assert (await call)[0] == 200


async def test_a_live_node_id_cannot_be_taken_by_another_credential(
    hub: Any, fake_executor: Any
) -> None:
    """A node id held by a live executor is refused (4409) to a connection with another
    credential, executor or bridge, and the holder stays connected and keeps its runs;
    the holder's own credential may still replace its connection."""
    url = ws_url(hub)
    router = hub.app[ROUTER]
    async with fake_executor(url, node_id="exec-1", token=node_token("executor")) as ex:
        link = router.executors["exec-1"].link
        for hello in (
            executor_hello(node_id="exec-1", token=NODE_TOKEN),
            bridge_hello("slack", node_id="exec-1", token=node_token("slack")),
        ):
            code, reason = await refused(url, hello)
            assert code == CLOSE_NODE_ID_TAKEN and "exec-1" in reason
        assert router.executors["exec-1"].link is link and ex.close_code is None
        async with fake_executor(url, node_id="exec-1", token=node_token("executor")):
            await until(hub, lambda: router.executors["exec-1"].link is not link)


@pytest.fixture
def limited_hub_settings(hub_settings: Any) -> Any:
    """The test hub with a short grace past an executor's timeout, and small event caps."""
    return hub_settings.model_copy(
        update={"run_grace_s": 0.3, "run_max_events": 5, "run_max_event_bytes": 4096}
    )


async def test_a_run_whose_executor_goes_silent_past_its_deadline_times_out(
    limited_hub_settings: Any, fake_executor: Any
) -> None:
    """An executor that said its timeout (0.2 s) and then says nothing: the hub cancels the
    run there and ends it timed_out with code hub_deadline, a reason, and a free slot."""
    async with HubServer(limited_hub_settings) as hub:
        router = hub.app[ROUTER]
        async with fake_executor(
            ws_url(hub), token=node_token("executor"), capacity=1, timeout_s=0.2
        ) as ex:
            ticket = await router.submit("hang", origin={"source": "test"})
            await ex.wait_type("assign", run_id=ticket.run.id)
            await ex.start_run(ticket.run.id)
            run = await asyncio.wait_for(ticket.done, 10)
            assert run.state == "timed_out"
            assert run.error is not None and run.error["code"] == "hub_deadline"
            assert "0.2 s" in run.error["message"] and "HUB_RUN_GRACE_S" in run.error["message"]
            await ex.wait_type("cancel", run_id=ticket.run.id)
            assert router.executors["fake-exec"].free == 1
            stored = await hub.app[STORE].get_run(ticket.run.id)
            assert stored is not None and stored.state == "timed_out"


async def test_an_executor_that_tells_no_timeout_gets_the_hubs(
    limited_hub_settings: Any, fake_executor: Any
) -> None:
    """Without timeout_s in the hello, HUB_RUN_TIMEOUT_S (plus the grace) is the deadline."""
    settings = limited_hub_settings.model_copy(update={"run_timeout_s": 0.2})
    async with HubServer(settings) as hub:
        async with fake_executor(ws_url(hub), token=node_token("executor")) as ex:
            ticket = await hub.app[ROUTER].submit("hang", origin={"source": "test"})
            await ex.wait_type("assign", run_id=ticket.run.id)
            run = await asyncio.wait_for(ticket.done, 10)
            assert run.state == "timed_out" and run.error["code"] == "hub_deadline"


async def test_answer_deltas_do_not_count_toward_the_event_cap(
    limited_hub_settings: Any, fake_executor: Any
) -> None:
    """A long answer streamed as many answer deltas is not cut by HUB_RUN_MAX_EVENTS."""
    async with HubServer(limited_hub_settings) as hub:
        router = hub.app[ROUTER]
        async with fake_executor(ws_url(hub), token=node_token("executor")) as ex:
            ticket = await router.submit("write a lot", origin={"source": "test"})
            run_id = ticket.run.id
            await ex.wait_type("assign", run_id=run_id)
            await ex.start_run(run_id)
            cap = limited_hub_settings.run_max_events
            for seq in range(1, 2 * cap + 1):
                await ex.event(run_id, seq, kind="answer_delta", item_id="m1", delta="word ")
            await ex.finish(run_id, "word " * (2 * cap))
            run = await asyncio.wait_for(ticket.done, 10)
    assert run.state == "succeeded", run.error


#: What each case sends after its first state; what is stored of it all (that state
#: included) is the cap of 5 events, or what came before the 4096 bytes were passed.
@pytest.mark.parametrize(
    ("events", "code", "kept"),
    [
        ([{"kind": "codex", "n": n} for n in range(6)], "too_many_events", 5),
        ([{"kind": "codex", "data": "x" * 1500} for _ in range(3)], "too_many_event_bytes", 3),
        ([{"state": "running"} for _ in range(5)], "too_many_events", 5),
    ],
    ids=["count", "bytes", "states"],
)
async def test_a_run_past_its_event_caps_fails_clearly(
    limited_hub_settings: Any,
    fake_executor: Any,
    events: list[dict[str, Any]],
    code: str,
    kept: int,
) -> None:
    """Past HUB_RUN_MAX_EVENTS events (states included) or HUB_RUN_MAX_EVENT_BYTES bytes,
    the run is cancelled on its executor and fails with a code naming the cap; nothing
    past the cap is stored, and the executor's late result changes nothing."""
    async with HubServer(limited_hub_settings) as hub:
        router, store = hub.app[ROUTER], hub.app[STORE]
        async with fake_executor(ws_url(hub), token=node_token("executor")) as ex:
            ticket = await router.submit("flood", origin={"source": "test"})
            run_id = ticket.run.id
            await ex.wait_type("assign", run_id=run_id)
            await ex.start_run(run_id)
            for seq, event in enumerate(events, 1):
                if "state" in event:
                    await ex.start_run(run_id, effective_prompt="p")
                else:
                    await ex.event(run_id, seq, **event)
            await ex.event(run_id, len(events) + 1, kind="codex", n="after the cap")
            run = await asyncio.wait_for(ticket.done, 10)
            assert run.state == "failed" and run.error is not None
            assert run.error["code"] == code
            setting = "HUB_RUN_MAX_EVENTS" if code == "too_many_events" else "_BYTES"
            assert setting in run.error["message"]
            await ex.wait_type("cancel", run_id=run_id)
            await ex.finish(run_id, "forged late answer")
            await ex.wait_type("result_ack", run_id=run_id)
            stored = await store.get_run(run_id)
            assert (
                stored is not None
                and stored.state == "failed"
                and stored.answer != "forged late answer"
            )
            stored_events = await store.get_events(run_id)
            codex_events = [e for e in stored_events if e["kind"] == "codex"]
            states = [e for e in stored_events if e.get("state") == "running"]
            assert len(codex_events) + len(states) == kept
