"""End to end: codex's app-server asks, a person decides over the runs API.

HTTP -> hub -> executor (EXEC_ENGINE=app-server, CODEX_APPROVAL_POLICY=on-request) ->
the real codex app-server -> the stub model, which asks to run a command outside the
sandbox. The run waits in ``awaiting_approval`` until ``POST /api/runs/{id}/approval``
(or APPROVAL_TIMEOUT_S) decides.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hub.app import HubServer
from hub.appkeys import BUS, ROUTER, STORE
from testkit.fakes.model_server import StubModelServer
from tests.conftest import node_token, on_a_fixed_port
from tests.test_e2e_codex import post, real_executor, workdir

pytestmark = pytest.mark.codex

__all__ = ["real_executor", "workdir"]  # fixtures used by name
ASKING = {"EXEC_ENGINE": "app-server", "CODEX_APPROVAL_POLICY": "on-request"}


async def awaiting_approval(hub: Any, sub: Any) -> str:
    """The id of the first run the bus shows in ``awaiting_approval``."""
    async with asyncio.timeout(30):
        async for message in sub:
            run = message.get("run") if message.get("type") == "run" else None
            if run and run.get("state") == "awaiting_approval":
                return str(run["id"])
    raise AssertionError("the bus ended")


async def decide(hub: Any, run_id: str, decision: str, **extra: Any) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{hub.url}/api/runs/{run_id}/approval", json={"decision": decision, **extra}
        ) as resp,
    ):
        return resp.status, await resp.json()


async def get_run(hub: Any, run_id: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(f"{hub.url}/api/runs/{run_id}") as resp:
        assert resp.status == 200
        return dict(await resp.json())


def approval_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["kind"] == "approval"]


@asynccontextmanager
async def asked(
    hub: Any, real_executor: Any, codex_home: Path, model_server: StubModelServer, marker: Path
) -> AsyncIterator[tuple[asyncio.Task[Any], str]]:
    """A run whose codex asks to write ``marker``, waiting for a decision."""
    model_server.reply_escalated_exec(
        f"echo yes > {marker}", "write the marker outside the workspace", "done asking"
    )
    with hub.app[BUS].subscribe() as sub:
        async with real_executor(codex_home, **ASKING):
            call = asyncio.create_task(post(hub, "write the marker"))
            run_id = await awaiting_approval(hub, sub)
            yield call, run_id


async def test_an_approved_command_runs_and_the_decision_is_recorded(
    hub: Any, real_executor: Any, codex_home: Path, model_server: StubModelServer, tmp_path: Path
) -> None:
    """The run shows the pending command; approve over the API runs it and records who."""
    marker = tmp_path / "approved.txt"
    async with asked(hub, real_executor, codex_home, model_server, marker) as (call, run_id):
        shown = await get_run(hub, run_id)
        status, body = await decide(hub, run_id, "approve", reason="looks fine")
        answer = await call
    assert shown["run"]["state"] == "awaiting_approval"
    assert shown["approval"]["state"] == "pending"
    assert str(marker) in shown["approval"]["request"]["command"]
    assert shown["approval"]["request"]["reason"] == "write the marker outside the workspace"
    assert status == 200 and body["approval"]["decision"] == "approve"
    assert body["approval"]["by"] == "anonymous"
    assert answer[0] == 200 and answer[1]["choices"][0]["message"]["content"] == "done asking"
    assert marker.read_text().strip() == "yes"
    events = await hub.app[STORE].get_events(run_id)
    statuses = [e["status"] for e in approval_events(events)]
    assert statuses == ["requested", "decision", "decided"]
    states = [e["state"] for e in events if e["kind"] == "state"]
    assert states[-3:] == ["awaiting_approval", "running", "succeeded"]


async def test_a_denied_command_is_not_run_and_codex_goes_on(
    hub: Any, real_executor: Any, codex_home: Path, model_server: StubModelServer, tmp_path: Path
) -> None:
    """Deny: the command does not run, the model is told it was rejected, the run succeeds."""
    marker = tmp_path / "denied.txt"
    async with asked(hub, real_executor, codex_home, model_server, marker) as (call, run_id):
        status, _ = await decide(hub, run_id, "deny")
        answer = await call
    assert status == 200
    assert answer[0] == 200 and answer[1]["choices"][0]["message"]["content"] == "done asking"
    assert not marker.exists()
    assert "rejected" in model_server.requests[1].text


@pytest.mark.parametrize("hub_overrides", [{"approval_timeout_s": 1.0}])
async def test_no_decision_in_time_denies(
    hub: Any, real_executor: Any, codex_home: Path, model_server: StubModelServer, tmp_path: Path
) -> None:
    """With APPROVAL_TIMEOUT_S passed and nobody deciding, the request is denied."""
    marker = tmp_path / "timeout.txt"
    model_server.reply_escalated_exec(f"echo yes > {marker}", "please", "fine then")
    async with real_executor(codex_home, **ASKING):
        status, _, run_id = await post(hub, "try it")
    events = await hub.app[STORE].get_events(run_id)
    assert status == 200
    assert not marker.exists()
    [decision] = [e for e in approval_events(events) if e["status"] == "decision"]
    assert decision["decision"] == "deny" and decision["by"] == "timeout"
    assert "APPROVAL_TIMEOUT_S" in decision["reason"]


async def test_two_approvers_at_once_make_one_decision(
    hub: Any, real_executor: Any, codex_home: Path, model_server: StubModelServer, tmp_path: Path
) -> None:
    """Two decisions at the same moment: the first wins, the other hears who decided."""
    marker = tmp_path / "race.txt"
    async with asked(hub, real_executor, codex_home, model_server, marker) as (call, run_id):
        first, second = await asyncio.gather(
            decide(hub, run_id, "approve"), decide(hub, run_id, "deny")
        )
        await call
    assert sorted([first[0], second[0]]) == [200, 409]
    loser = first[1] if first[0] == 409 else second[1]
    assert loser["error"]["code"] == "approval_not_pending"
    assert "already decided: approve by anonymous" in loser["error"]["message"]
    events = await hub.app[STORE].get_events(run_id)
    assert len([e for e in approval_events(events) if e["status"] == "decision"]) == 1
    assert marker.exists()


@pytest.mark.parametrize("hub_overrides", [{"approvers": ["slack:U-APPROVER"]}])
async def test_a_stranger_is_refused_and_told_why(
    hub: Any, real_executor: Any, codex_home: Path, model_server: StubModelServer, tmp_path: Path
) -> None:
    """A caller not among APPROVERS gets 403 with the reason; the request stays pending."""
    marker = tmp_path / "stranger.txt"
    async with asked(hub, real_executor, codex_home, model_server, marker) as (call, run_id):
        status, body = await decide(hub, run_id, "approve")
        still = await get_run(hub, run_id)
        hub.app[ROUTER].approvals.decide(run_id, None, "deny", "slack:U-APPROVER")
        await call
    assert status == 403 and body["error"]["code"] == "not_an_approver"
    assert "APPROVERS" in body["error"]["message"]
    assert still["approval"]["state"] == "pending"
    assert not marker.exists()


@pytest.fixture
def hub_overrides() -> dict[str, Any]:
    """Hub settings a test changes (parametrize it by this name)."""
    return {}


@pytest.fixture
def hub_settings(hub_settings: Any, hub_overrides: dict[str, Any]) -> Any:
    """The test hub's settings with the test's overrides."""
    return hub_settings.model_copy(update=hub_overrides)


async def wait_state(sub: Any, run_id: str, state: str) -> None:
    async with asyncio.timeout(30):
        async for message in sub:
            run = message.get("run") if message.get("type") == "run" else None
            if run and run.get("id") == run_id and run.get("state") == state:
                return


async def test_a_pending_approval_survives_a_hub_restart(
    hub_settings: Any,
    start_executor: Any,
    codex_bin: str,
    codex_home: Path,
    model_server: StubModelServer,
    tmp_path: Path,
    workdir: Path,
) -> None:
    """The hub restarts while codex waits: the request is still shown, and approving it
    then runs the command on the executor that kept waiting."""
    del start_executor
    settings, url = on_a_fixed_port(hub_settings)
    marker = tmp_path / "restart.txt"
    model_server.reply_escalated_exec(f"echo yes > {marker}", "after a restart", "still here")
    async with real_node(url, codex_bin, codex_home, workdir):
        async with HubServer(settings) as first:
            with first.app[BUS].subscribe() as sub:
                async with aiohttp.ClientSession() as s:
                    async with s.post(f"{first.url}/api/runs", json={"prompt": "write it"}) as resp:
                        run_id = (await resp.json())["run"]["id"]
                await wait_state(sub, run_id, "awaiting_approval")
        async with HubServer(settings) as second:
            shown = await get_run(second, run_id)
            with second.app[BUS].subscribe(run_id) as sub:
                # Decided before the executor is back, most likely: the hub sends the
                # decision once it reconnects.
                status, _ = await decide(second, run_id, "approve")
                await wait_state(sub, run_id, "succeeded")
            run = await second.app[STORE].get_run(run_id)
    assert shown["run"]["state"] == "awaiting_approval"
    assert shown["approval"]["state"] == "pending"
    assert status == 200
    assert run is not None and run.answer == "still here"
    assert marker.read_text().strip() == "yes"


@asynccontextmanager
async def real_node(url: str, codex_bin: str, home: Path, workdir: Path) -> AsyncIterator[Any]:
    """An executor asking for approvals, connecting to ``url`` (a hub that may restart)."""
    from executor.factory import build_pipeline
    from executor.node import ExecutorNode
    from executor.settings import ExecutorSettings

    settings = ExecutorSettings(
        HUB_URL=url,
        HUB_TOKEN=node_token("executor"),
        EXEC_DRY_RUN=False,
        CODEX_BIN=codex_bin,
        CODEX_HOME=home,
        EXEC_WORKDIR=workdir,
        EXEC_TIMEOUT_S=60,
        **ASKING,
    )
    pipeline, transport = build_pipeline(settings)
    node = ExecutorNode(settings, pipeline)
    try:
        await node.start()
        yield node
    finally:
        await node.close()
        await pipeline.aclose()
        await transport.close()
