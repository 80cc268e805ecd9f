"""Who may decide an approval request over the API, and how the hub keeps a decision
until the executor has it (hub/approvals.py, hub/api_approvals.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hub.app import HubServer
from hub.appkeys import BUS, ROUTER, STORE
from hub.approvals import approvers_of, asker_of
from hub.auth import principal_for_key
from hub.settings import HubSettings
from hub.store import Run, Store, op_insert_run, op_record
from testkit.fakes.nodes import FakeExecutor
from tests.conftest import NODE_TOKEN, ws_url

KEY_A = "approvals-key-a-0123456789abcdef"
KEY_B = "approvals-key-b-0123456789abcdef"
OPERATOR_KEY = "approvals-operator-key-0123456789"


def auth(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def keyed(tmp_path: Path, **extra: Any) -> HubSettings:
    return HubSettings(
        HUB_PORT=0,
        HUB_DB=tmp_path / "hub.db",
        HUB_TOKEN=NODE_TOKEN,
        HUB_API_KEYS=f"{KEY_A},{KEY_B}",
        HUB_OPERATOR_KEYS=OPERATOR_KEY,
        HUB_EXECUTOR_GRACE_S=5.0,
        **extra,
    )


async def asking_run(hub: HubServer, ex: FakeExecutor, key: str) -> str:
    """A run started with ``key`` whose (fake) codex asks for approval ap_1."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{hub.url}/api/runs", json={"prompt": "deploy"}, headers=auth(key)) as resp,
    ):
        run_id = str((await resp.json())["run"]["id"])
    await ex.wait_type("assign", run_id=run_id)
    await ex.start_run(run_id)
    with hub.app[BUS].subscribe(run_id) as sub:
        await ex.event(
            run_id,
            1,
            kind="approval",
            status="requested",
            approval_id="ap_1",
            request={"kind": "command", "command": "make deploy", "reason": "ship"},
            summary="codex asks to run `make deploy`",
        )
        async for message in sub:
            if message.get("type") == "run" and message["run"]["state"] == "awaiting_approval":
                break
    return run_id


async def decide(hub: HubServer, key: str | None, run_id: str, **body: Any) -> tuple[int, Any]:
    headers = auth(key)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{hub.url}/api/runs/{run_id}/approval",
            json={"decision": "approve", **body},
            headers=headers,
        ) as resp,
    ):
        return resp.status, await resp.json()


async def test_without_approvers_only_the_key_that_asked_decides(
    tmp_path: Path, fake_executor: Any
) -> None:
    """APPROVERS empty: an operator that did not start the run gets 403 and the reason, a
    plain key that cannot see it 404, and the key that started it decides."""
    async with HubServer(keyed(tmp_path)) as hub:
        async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex:
            run_id = await asking_run(hub, ex, KEY_A)
            operator = await decide(hub, OPERATOR_KEY, run_id)
            other = await decide(hub, KEY_B, run_id)
            asker = await decide(hub, KEY_A, run_id, decision="deny", reason="not today")
            frame = await ex.wait_type("approval_decision", run_id=run_id)
    assert operator[0] == 403 and operator[1]["error"]["code"] == "not_an_approver"
    assert "only the person who asked" in operator[1]["error"]["message"]
    assert other[0] == 404
    assert asker[0] == 200 and asker[1]["approval"]["by"] == principal_for_key(KEY_A)
    assert asker[1]["approval"]["reason"] == "not today"
    assert frame["decision"] == "deny" and frame["by"] == principal_for_key(KEY_A)


async def test_an_api_key_in_approvers_decides_another_keys_run(
    tmp_path: Path, fake_executor: Any
) -> None:
    """An API key written in APPROVERS counts as its principal: it decides a run another
    key started, which that other key then may not (409 says who decided)."""
    settings = keyed(tmp_path, APPROVERS=f"{KEY_B},{principal_for_key(KEY_A)}")
    async with HubServer(settings) as hub:
        async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex:
            run_id = await asking_run(hub, ex, OPERATOR_KEY)
            first = await decide(hub, KEY_B, run_id)
            second = await decide(hub, KEY_A, run_id)
            stranger = await decide(hub, OPERATOR_KEY, run_id)
    assert first[0] == 200
    assert second[0] == 409 and second[1]["error"]["code"] == "approval_not_pending"
    assert f"by {principal_for_key(KEY_B)} at" in second[1]["error"]["message"]
    assert stranger[0] == 403


async def test_nothing_pending_is_a_409_and_a_bad_decision_a_400(
    hub: Any, fake_executor: Any
) -> None:
    """A run that asked nothing answers 409; a decision not among the choices, 400."""
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex:
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{hub.url}/api/runs", json={"prompt": "hello"}) as resp,
        ):
            run_id = str((await resp.json())["run"]["id"])
        await ex.wait_type("assign", run_id=run_id)
        nothing = await decide(hub, None, run_id)
        bad = await decide(hub, None, run_id, decision="maybe")
    assert nothing[0] == 409 and "no approval request waiting" in nothing[1]["error"]["message"]
    assert bad[0] == 400 and bad[1]["error"]["param"] == "decision"


async def test_a_decision_made_while_the_executor_is_away_reaches_it_when_it_is_back(
    hub: Any, fake_executor: Any
) -> None:
    """The executor drops while codex waits; the decision made meanwhile is recorded and
    sent once it reconnects with the run, and the run goes back to running when the
    executor confirms it."""
    async with fake_executor(ws_url(hub), token=NODE_TOKEN, node_id="exec-a") as ex:
        run_id = await asking_run(hub, ex, "")
        await ex.drop()
    status, _ = await decide(hub, None, run_id)
    async with fake_executor(
        ws_url(hub), token=NODE_TOKEN, node_id="exec-a", active_runs=[run_id]
    ) as back:
        frame = await back.wait_type("approval_decision", run_id=run_id)
        with hub.app[BUS].subscribe(run_id) as sub:
            await back.event(run_id, 2, kind="approval", status="decided", approval_id="ap_1")
            async for message in sub:
                if message.get("type") == "run" and message["run"]["state"] == "running":
                    break
        await back.finish(run_id, "deployed")
    events = await hub.app[STORE].get_events(run_id)
    assert status == 200 and frame["decision"] == "approve"
    statuses = [e["status"] for e in events if e["kind"] == "approval"]
    assert statuses == ["requested", "decision", "decided"]


@pytest.mark.parametrize(
    ("origin", "principal", "asker"),
    [
        ({"platform": "slack", "user": "U1"}, None, "slack:U1"),
        ({"platform": "telegram", "user_id": 42}, None, "telegram:42"),
        ({"via": "monitor"}, "key:abc", "key:abc"),
        ({"platform": "slack"}, None, None),
    ],
)
def test_the_asker_of_a_run_is_its_chat_user_or_its_api_principal(
    origin: dict[str, Any], principal: str | None, asker: str | None
) -> None:
    """A chat run's asker is its platform user; an API run's, the key's principal."""
    run = Run(id="r", prompt="p", origin=origin, source="x", created_at=0.0, principal=principal)
    assert asker_of(run) == asker


def test_approvers_turn_api_keys_into_principals_and_keep_the_rest(tmp_path: Path) -> None:
    """A configured API key in APPROVERS becomes its principal; user ids stay as written."""
    settings = keyed(tmp_path, APPROVERS=f"U1,telegram:42,{KEY_A}")
    assert approvers_of(settings, principal_for_key) == {
        "U1",
        "telegram:42",
        principal_for_key(KEY_A),
    }
    assert KEY_A not in approvers_of(settings, principal_for_key)


async def test_a_request_stored_without_its_state_is_pending_after_a_restart(
    hub_settings: Any,
) -> None:
    """The hub stopped after storing codex's request but before the run's new state: the
    restarted hub shows the request pending and the run awaiting approval, with the time
    that was left."""
    now = time.time()
    async with Store(hub_settings.db) as store:
        run = Run(
            id="run_cut",
            prompt="deploy",
            origin={"via": "monitor"},
            source="monitor",
            created_at=now - 10,
            state="running",
            executor="exec-gone",
            principal="anonymous",
        )
        await store.call(op_insert_run, run)
        event = {
            "status": "requested",
            "approval_id": "ap_cut",
            "request": {"kind": "command", "command": "make deploy", "reason": "ship"},
            "summary": "codex asks to run `make deploy`",
        }
        await store.call(op_record, run.id, None, (1, now - 5, "approval", event, 1))
    async with HubServer(hub_settings) as hub:
        router = hub.app[ROUTER]
        pending = router.approvals.current("run_cut")
        state = router.live["run_cut"].run.state
    assert pending is not None and pending.state == "pending"
    assert pending.request["command"] == "make deploy"
    assert pending.expires_at == pytest.approx(now - 5 + hub_settings.approval_timeout_s)
    assert state == "awaiting_approval"
