"""Choosing where a run goes (issue #20): targets from /api/runs and /v1, the labels and
names executors announced, HUB_TARGET_RULES, and conversations that stay on their executor."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hub.app import HubServer
from hub.appkeys import ROUTER, STORE
from hub.auth import principal_for_key
from hub.settings import HubSettings
from hub.targets import (
    InvalidTarget,
    KnownTargets,
    Target,
    TargetNotAllowed,
    check_rules,
    parse_rules,
    parse_target,
    scope_of,
)
from tests.conftest import NODE_TOKEN, ws_url

#: An API key for the rules tests (long: the hub refuses weak keys).
CI_KEY = "ci-key-for-target-rules-tests-5b0e9d27c4a1"


# --- the pure part ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "terms"),
    [
        ("gpu,prod", {"gpu", "prod"}),
        ("@host-1", {"host-1"}),
        ("@gpu, @prod", {"gpu", "prod"}),
        (["gpu", "@prod"], {"gpu", "prod"}),
        ("", None),
        (None, None),
    ],
)
def test_a_target_is_parsed_from_text_or_a_list(value: Any, terms: set[str] | None) -> None:
    """``gpu,prod``, ``@host-1`` and a list of labels give their terms; empty gives none."""
    target = parse_target(value)
    assert (target.terms if target else None) == terms


@pytest.mark.parametrize(
    "value", ["has space", "a\x00b", 7, ["ok", 3], [f"l{n}" for n in range(17)]]
)
def test_what_is_not_a_target_is_refused_with_the_reason(value: Any) -> None:
    """A term with a space or control character, a non-string, or 17 terms is refused."""
    with pytest.raises(InvalidTarget):
        parse_target(value)


def test_a_target_matches_an_executor_with_every_label_or_by_its_name() -> None:
    """Every term must be a label of the executor or its name."""
    target = Target(frozenset({"gpu", "prod"}))
    assert target.matches({"gpu", "prod", "k8s"}, "box")
    assert not target.matches({"gpu"}, "box")
    assert Target(frozenset({"box"})).matches(set(), "box")
    assert Target(frozenset({"box", "gpu"})).matches({"gpu"}, "box")


def test_known_targets_refuse_what_nobody_announced_and_list_what_is_known() -> None:
    """A term no executor announced is refused, naming it and the known labels and names."""
    known = KnownTargets()
    assert known.learn(["gpu", "prod"], "host-1") == [
        ("label", "gpu"),
        ("label", "prod"),
        ("name", "host-1"),
    ]
    assert known.learn(["gpu"], "host-1") == []
    known.check(Target(frozenset({"gpu", "host-1"})))
    with pytest.raises(Exception, match=r"arm64.*known labels: gpu, prod; executors: host-1"):
        known.check(Target(frozenset({"arm64"})))


def test_rules_are_parsed_and_what_is_not_one_fails_at_start() -> None:
    """HUB_TARGET_RULES reads key, Slack and Telegram scopes; a malformed entry is a
    settings error naming it."""
    rules = parse_rules("key:0123456789ab=staging,dev; slack:C123=prod;telegram:-100=gpu")
    assert rules == {
        "key:0123456789ab": {"staging", "dev"},
        "slack:C123": {"prod"},
        "telegram:-100": {"gpu"},
    }
    assert parse_rules("") == {}
    for bad in ("ci=dev", "slack:C1", "slack:C1=", "slack:C1=a;slack:C1=b", "key:zz=dev"):
        with pytest.raises(ValueError, match="HUB_TARGET_RULES"):
            parse_rules(bad)
    with pytest.raises(ValueError, match="HUB_TARGET_RULES"):
        HubSettings(HUB_TARGET_RULES="nonsense")


def test_a_rule_refuses_a_target_outside_its_labels_and_a_run_without_one() -> None:
    """A scope with a rule may use only its labels and must name one; others are free."""
    rules = parse_rules("slack:C123=prod;key:0123456789ab=dev")
    slack = scope_of(None, {"platform": "slack", "channel": "C123"})
    check_rules(rules, slack, Target(frozenset({"prod"})))
    with pytest.raises(TargetNotAllowed, match=r"may not use gpu.*only prod"):
        check_rules(rules, slack, Target(frozenset({"gpu"})))
    with pytest.raises(TargetNotAllowed, match="name one"):
        check_rules(rules, "key:0123456789ab", None)
    check_rules(rules, "key:ffffffffffff", Target(frozenset({"gpu"})))
    check_rules(rules, scope_of(None, {"platform": "telegram", "chat_id": -5}), None)


# --- through the hub -------------------------------------------------------------------


async def _post_run(hub: Any, body: dict[str, Any], key: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{hub.url}/api/runs", json=body, headers=headers) as resp,
    ):
        return resp.status, await resp.json()


async def test_a_targeted_run_from_the_runs_api_lands_only_on_the_matching_executor(
    hub: Any, fake_executor: Any
) -> None:
    """With a labelled and an unlabelled executor both free, runs naming ``gpu`` (or the
    gpu box by name) go to the gpu box, every time, and record their target."""
    async with (
        fake_executor(ws_url(hub), node_id="laptop", token=NODE_TOKEN, labels=["dev"], capacity=8),
        fake_executor(ws_url(hub), node_id="gpu-box", token=NODE_TOKEN, labels=["gpu"]) as gpu,
    ):
        for n, target in enumerate(["gpu", "@gpu-box", ["gpu"], "@gpu,@gpu-box"]):
            status, body = await _post_run(hub, {"prompt": f"train {n}", "target": target})
            assert status == 202, body
            run_id = body["run"]["id"]
            assign = await gpu.wait_type("assign", run_id=run_id)
            assert assign["prompt"] == f"train {n}"
            await gpu.finish(run_id)
            await gpu.wait_type("result_ack", run_id=run_id)
        runs, _ = await hub.app[STORE].list_runs()
        assert {r.executor for r in runs} == {"gpu-box"}
        assert {r.target for r in runs} == {"gpu", "gpu-box", "gpu,gpu-box"}


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses"])
async def test_x_target_sends_an_openai_request_to_the_matching_executor(
    hub: Any, fake_executor: Any, path: str
) -> None:
    """An OpenAI request with ``X-Target: prod`` runs on the prod executor, not the free
    unlabelled one, and answers with its result."""
    body: dict[str, Any] = (
        {"model": "codex", "messages": [{"role": "user", "content": "deploy"}]}
        if path == "/v1/chat/completions"
        else {"model": "codex", "input": "deploy"}
    )
    async with (
        fake_executor(ws_url(hub), node_id="plain", token=NODE_TOKEN, capacity=8) as plain,
        fake_executor(ws_url(hub), node_id="prod-box", token=NODE_TOKEN, labels=["prod"]) as prod,
        aiohttp.ClientSession() as http,
    ):
        call = asyncio.create_task(
            http.post(f"{hub.url}{path}", json=body, headers={"X-Target": "prod"})
        )
        assign = await prod.wait_type("assign")
        await prod.finish(assign["run_id"], answer="deployed")
        async with await call as resp:
            assert resp.status == 200, await resp.text()
            assert "deployed" in await resp.text()
        assert plain.of_type("assign") == []


async def test_an_unknown_label_is_refused_at_once_listing_the_known_ones(
    hub: Any, fake_executor: Any
) -> None:
    """A target no executor ever announced is a 400 ``unknown_target`` naming the known
    labels and executors, from /api/runs and from X-Target; nothing is queued."""
    async with fake_executor(ws_url(hub), node_id="gpu-box", token=NODE_TOKEN, labels=["gpu"]):
        status, body = await _post_run(hub, {"prompt": "x", "target": "gpu,arm64"})
        assert status == 400
        assert body["error"]["code"] == "unknown_target"
        assert "arm64" in body["error"]["message"]
        assert "known labels: gpu; executors: gpu-box" in body["error"]["message"]
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{hub.url}/v1/chat/completions",
                json={"model": "codex", "messages": [{"role": "user", "content": "x"}]},
                headers={"X-Target": "@nowhere"},
            ) as resp,
        ):
            assert resp.status == 400
            error = (await resp.json())["error"]
            assert (error["code"], error["param"]) == ("unknown_target", "X-Target")
        status, body = await _post_run(hub, {"prompt": "x", "target": "two words"})
        assert (status, body["error"]["code"]) == (400, "invalid_target")
    assert not hub.app[ROUTER].queue


async def test_the_known_labels_are_listed_and_survive_a_restart(
    hub_settings: HubSettings, fake_executor: Any
) -> None:
    """/api/targets lists what executors announced; a restarted hub with no executor
    connected still knows it, so such a target waits instead of being refused."""
    first = HubServer(hub_settings)
    await first.start()
    try:
        async with fake_executor(
            ws_url(first), node_id="gpu-box", token=NODE_TOKEN, labels=["gpu", "prod"]
        ):
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"{first.url}/api/targets") as resp,
            ):
                assert await resp.json() == {"labels": ["gpu", "prod"], "names": ["gpu-box"]}
    finally:
        await first.close()
    second = HubServer(hub_settings)
    await second.start()
    try:
        status, body = await _post_run(second, {"prompt": "later", "target": "prod"})
        assert status == 202, body
        assert body["run"]["target"] == "prod"
    finally:
        await second.close()


async def test_a_queued_targeted_run_keeps_its_target_over_a_restart(
    hub_settings: HubSettings, fake_executor: Any
) -> None:
    """A run waiting for a gpu executor when the hub restarts still goes only to one."""
    first = HubServer(hub_settings)
    await first.start()
    try:
        async with fake_executor(
            ws_url(first), node_id="gpu-box", token=NODE_TOKEN, labels=["gpu"]
        ):
            pass
        status, body = await _post_run(first, {"prompt": "needs gpu", "target": "gpu"})
        assert status == 202, body
        run_id = body["run"]["id"]
    finally:
        await first.close()
    second = HubServer(hub_settings)
    await second.start()
    try:
        async with fake_executor(ws_url(second), node_id="plain", token=NODE_TOKEN) as plain:
            async with fake_executor(
                ws_url(second), node_id="gpu-box", token=NODE_TOKEN, labels=["gpu"]
            ) as gpu:
                await gpu.wait_type("assign", run_id=run_id)
            assert plain.of_type("assign") == []
    finally:
        await second.close()


async def test_a_waiting_targeted_run_says_why_and_does_not_block_the_runs_behind_it(
    hub: Any, fake_executor: Any
) -> None:
    """A run for ``gpu`` while the gpu box is away waits, its queue entry and events saying
    for what, while an untargeted run submitted after it starts at once; once the gpu box
    connects the waiting run goes there."""
    async with fake_executor(ws_url(hub), node_id="gpu-box", token=NODE_TOKEN, labels=["gpu"]):
        pass  # announced once: the label is known
    router = hub.app[ROUTER]
    async with fake_executor(ws_url(hub), node_id="plain", token=NODE_TOKEN) as plain:
        _, first = await _post_run(hub, {"prompt": "needs gpu", "target": "gpu"})
        _, second = await _post_run(hub, {"prompt": "anything"})
        await plain.wait_type("assign", run_id=second["run"]["id"])
        [waiting] = router.queue_info()["runs"]
        assert waiting["id"] == first["run"]["id"]
        assert waiting["reason"] == "target"
        assert waiting["detail"] == "waiting for an executor with labels gpu (none is connected)"
        events = await hub.app[STORE].get_events(first["run"]["id"])
        assert any(
            e["kind"] == "note" and "waiting for an executor with labels gpu" in e["message"]
            for e in events
        )
        async with fake_executor(
            ws_url(hub), node_id="gpu-box", token=NODE_TOKEN, labels=["gpu"]
        ) as gpu:
            await gpu.wait_type("assign", run_id=first["run"]["id"])
        assert [f["run_id"] for f in plain.of_type("assign")] == [second["run"]["id"]]


async def test_a_bridges_targeted_run_tells_the_chat_what_it_waits_for(
    hub: Any, fake_executor: Any, fake_bridge: Any
) -> None:
    """A chat's run for ``gpu`` while no gpu executor is connected gets a progress frame
    saying it waits for one, and refusals come back as error frames with their code."""
    async with fake_executor(ws_url(hub), node_id="gpu-box", token=NODE_TOKEN, labels=["gpu"]):
        pass
    async with fake_bridge(ws_url(hub), platform="slack", token=NODE_TOKEN) as bridge:
        origin = {"channel": "C1", "ts": "1.0", "thread_ts": "1.0"}
        await bridge.send(
            {"type": "submit", "req_id": "r1", "prompt": "train", "origin": origin, "target": "gpu"}
        )
        submitted = await bridge.wait_type("submitted", req_id="r1")
        progress = await bridge.wait_for(
            lambda f: (
                f.get("type") == "progress"
                and f.get("run_id") == submitted["run_id"]
                and bool(f.get("detail"))
            )
        )
        assert progress["detail"] == "waiting for an executor with labels gpu (none is connected)"
        await bridge.send(
            {"type": "submit", "req_id": "r2", "prompt": "x", "origin": origin, "target": "tpu"}
        )
        refused = await bridge.wait_type("error", req_id="r2")
        assert refused["code"] == "unknown_target" and "known labels: gpu" in refused["message"]


async def test_a_conversation_stays_on_the_executor_that_holds_its_thread(
    hub: Any, fake_executor: Any
) -> None:
    """The next run of a conversation waits for its executor's free slot rather than go
    to another executor with room, and resumes its codex thread there."""
    async with fake_executor(ws_url(hub), node_id="holder", token=NODE_TOKEN, capacity=1) as holder:
        _, body = await _post_run(hub, {"prompt": "start", "session_key": "chat"})
        run_id = body["run"]["id"]
        await holder.wait_type("assign", run_id=run_id)
        await holder.finish(run_id, thread_id="thread-1")
        await holder.wait_type("result_ack", run_id=run_id)
        async with fake_executor(
            ws_url(hub), node_id="roomy", token=NODE_TOKEN, capacity=8
        ) as roomy:
            # Another run fills the holder; the conversation's next run must wait for it.
            _, busy = await _post_run(hub, {"prompt": "filler", "target": "@holder"})
            await holder.wait_type("assign", run_id=busy["run"]["id"])
            _, nxt = await _post_run(hub, {"prompt": "continue", "session_key": "chat"})
            [entry] = hub.app[ROUTER].queue_info()["runs"]
            assert entry["detail"] == (
                "waiting for a free slot on holder, the executor holding this conversation"
            )
            await holder.finish(busy["run"]["id"])
            assign = await holder.wait_type("assign", run_id=nxt["run"]["id"])
            assert assign["thread_id"] == "thread-1"
            assert roomy.of_type("assign") == []


async def test_a_conversation_whose_executor_is_gone_says_so_instead_of_starting_fresh(
    hub: Any, fake_executor: Any
) -> None:
    """After the executor holding a conversation left, the next run waits for it within
    the grace and then fails naming it; a run after the grace is refused at once (409);
    another executor never gets them."""
    async with fake_executor(ws_url(hub), node_id="holder", token=NODE_TOKEN) as holder:
        _, first = await _post_run(hub, {"prompt": "start", "session_key": "c"})
        run_id = first["run"]["id"]
        await holder.wait_type("assign", run_id=run_id)
        await holder.finish(run_id, thread_id="t-1")
        await holder.wait_type("result_ack", run_id=run_id)
    router = hub.app[ROUTER]
    async with fake_executor(ws_url(hub), node_id="other", token=NODE_TOKEN) as other:
        _, nxt = await _post_run(hub, {"prompt": "again", "session_key": "c"})
        ticket = await router.join(nxt["run"]["id"])
        assert ticket is not None
        [entry] = router.queue_info()["runs"]
        assert "the executor holding this conversation, holder, to come back" in entry["detail"]
        run = await asyncio.wait_for(ticket.done, 10)
        assert run.state == "failed"
        assert run.error is not None and run.error["code"] == "conversation_elsewhere"
        assert "holder, is not connected; start a new conversation" in run.error["message"]
        status, body = await _post_run(hub, {"prompt": "and again", "session_key": "c"})
        assert status == 409
        assert body["error"]["code"] == "conversation_elsewhere"
        assert other.of_type("assign") == []


async def test_a_conversation_follows_its_executor_restarted_under_a_new_node_id(
    hub: Any, fake_executor: Any
) -> None:
    """An executor restarted (a new node id, the same name) still holds its conversations:
    their next run goes there and resumes the thread, not to another executor."""
    async with fake_executor(
        ws_url(hub), node_id="box-101-aaaaaa", name="box", token=NODE_TOKEN
    ) as box:
        _, first = await _post_run(hub, {"prompt": "start", "session_key": "c"})
        run_id = first["run"]["id"]
        await box.wait_type("assign", run_id=run_id)
        await box.finish(run_id, thread_id="t-1")
        await box.wait_type("result_ack", run_id=run_id)
    async with fake_executor(ws_url(hub), node_id="roomy", token=NODE_TOKEN, capacity=8) as roomy:
        _, nxt = await _post_run(hub, {"prompt": "again", "session_key": "c"})
        async with fake_executor(
            ws_url(hub), node_id="box-202-bbbbbb", name="box", token=NODE_TOKEN
        ) as again:
            assign = await again.wait_type("assign", run_id=nxt["run"]["id"])
            assert assign["thread_id"] == "t-1"
        assert roomy.of_type("assign") == []


@pytest.fixture
async def ruled_hub(tmp_path: Path) -> AsyncIterator[HubServer]:
    """A hub with an API key that HUB_TARGET_RULES limits to the ``dev`` label."""
    settings = HubSettings(
        HUB_PORT=0,
        HUB_DB=tmp_path / "hub.db",
        HUB_TOKEN=NODE_TOKEN,
        HUB_API_KEYS=CI_KEY,
        HUB_EXECUTOR_GRACE_S=2.0,
        HUB_TARGET_RULES=f"{principal_for_key(CI_KEY)}=dev",
    )
    server = HubServer(settings)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def test_a_rule_refuses_a_key_a_target_outside_its_labels(
    ruled_hub: HubServer, fake_executor: Any
) -> None:
    """A key HUB_TARGET_RULES limits to ``dev`` is refused ``prod`` (403
    ``target_not_allowed`` with the reason) and a run without a target, and may use
    ``dev``."""
    hub = ruled_hub
    async with (
        fake_executor(ws_url(hub), node_id="prod-box", token=NODE_TOKEN, labels=["prod"]),
        fake_executor(ws_url(hub), node_id="dev-box", token=NODE_TOKEN, labels=["dev"]) as dev,
    ):
        status, body = await _post_run(hub, {"prompt": "x", "target": "prod"}, CI_KEY)
        assert status == 403
        assert body["error"]["code"] == "target_not_allowed"
        assert "may not use prod" in body["error"]["message"]
        assert "only dev" in body["error"]["message"]
        status, body = await _post_run(hub, {"prompt": "x"}, CI_KEY)
        assert (status, body["error"]["code"]) == (403, "target_not_allowed")
        status, body = await _post_run(hub, {"prompt": "x", "target": "dev"}, CI_KEY)
        assert status == 202, body
        await dev.wait_type("assign", run_id=body["run"]["id"])
