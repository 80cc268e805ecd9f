"""codex's approval requests in Slack: Block Kit buttons in the thread, pressed over
Socket Mode (``block_actions``), decided by the hub, changed to say who decided."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from bridges.slack.convert import APPROVAL_ACTION
from hub.app import HubServer
from hub.appkeys import ROUTER
from testkit.fakes.model_server import StubModelServer
from testkit.fakes.slack import FakeSlack, SlackMessage
from tests.conftest import NODE_TOKEN, on_a_fixed_port, ws_url

CHANNEL = "C0DEV"
REQUEST = {
    "kind": "command",
    "command": "/bin/bash -c 'rm -rf build'",
    "cwd": "/work",
    "reason": "clean the build directory",
}


def approve(decision: str = "approve") -> str:
    return f"{APPROVAL_ACTION}_{decision}"


async def ask(ex: Any, run_id: str, approval_id: str = "ap_1", seq: int = 1) -> None:
    """The fake executor's codex asks, as the app-server engine reports it."""
    await ex.event(
        run_id,
        seq,
        kind="approval",
        status="requested",
        approval_id=approval_id,
        request=REQUEST,
        summary="codex asks to run `rm -rf build`",
    )


async def buttons(fake_slack: FakeSlack, thread_ts: str) -> SlackMessage:
    return await fake_slack.wait_for_post(
        CHANNEL,
        thread_ts,
        lambda m: any(b.get("type") == "actions" for b in m.blocks or []),
        timeout=10,
    )


def decided(message: SlackMessage) -> bool:
    return not any(b.get("type") == "actions" for b in message.blocks or [])


@pytest.fixture
def hub_overrides() -> dict[str, Any]:
    """Hub settings a test changes (parametrize it by this name)."""
    return {}


@pytest.fixture
def hub_settings(hub_settings: Any, hub_overrides: dict[str, Any]) -> Any:
    return hub_settings.model_copy(update=hub_overrides)


async def test_the_asker_approves_with_a_button_and_every_copy_says_who_and_when(
    fake_slack: FakeSlack, fake_executor: Any, start_slack_bridge: Any, hub: Any
) -> None:
    """The request shows the command, why, and three buttons in the thread; the asker's
    press reaches the executor, the presser is told, and the buttons become who decided."""
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex, start_slack_bridge():
        event = fake_slack.mention("clean up", channel=CHANNEL, user="U0ALICE")
        await fake_slack.send_event(event)
        run_id = (await ex.wait_type("assign"))["run_id"]
        await ex.start_run(run_id)
        await ask(ex, run_id)
        shown = await buttons(fake_slack, event["ts"])
        labels = [e["text"]["text"] for b in shown.blocks or [] for e in b.get("elements") or []]
        await fake_slack.press_button(CHANNEL, shown.ts, approve(), user="U0ALICE")
        decision = await ex.wait_type("approval_decision", run_id=run_id)
        await fake_slack.wait_until(lambda: decided(shown), what="the buttons replaced")
        await fake_slack.wait_until(lambda: fake_slack.ephemeral, what="the presser told")
    assert "rm -rf build" in shown.text and "clean the build directory" in shown.text
    assert labels == ["Approve", "Approve for this conversation", "Deny"]
    assert decision["approval_id"] == "ap_1" and decision["decision"] == "approve"
    assert decision["by"] == "slack:U0ALICE"
    assert "Approved by <@U0ALICE> at " in shown.text and "UTC" in shown.text
    [told] = fake_slack.ephemeral
    assert told["user"] == "U0ALICE" and told["text"].startswith("Approved")


async def test_a_stranger_is_refused_and_the_buttons_stay(
    fake_slack: FakeSlack, fake_executor: Any, start_slack_bridge: Any, hub: Any
) -> None:
    """Without APPROVERS only the asker decides: another user's press is refused, told
    why (to them alone), and nothing is decided."""
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex, start_slack_bridge():
        event = fake_slack.mention("clean up", channel=CHANNEL, user="U0ALICE")
        await fake_slack.send_event(event)
        run_id = (await ex.wait_type("assign"))["run_id"]
        await ex.start_run(run_id)
        await ask(ex, run_id)
        shown = await buttons(fake_slack, event["ts"])
        await fake_slack.press_button(CHANNEL, shown.ts, approve(), user="U0MALLORY")
        await fake_slack.wait_until(lambda: fake_slack.ephemeral, what="the refusal")
    [told] = fake_slack.ephemeral
    assert told["user"] == "U0MALLORY"
    assert told["text"].startswith("Not allowed") and "person who asked" in told["text"]
    assert not ex.of_type("approval_decision")
    assert not decided(shown)


@pytest.mark.parametrize("hub_overrides", [{"approvers": ["U0ALICE", "slack:U0BOB"]}])
async def test_two_approvers_pressing_at_once_make_one_decision(
    fake_slack: FakeSlack, fake_executor: Any, start_slack_bridge: Any, hub: Any
) -> None:
    """Two approvers press at the same moment: one decision reaches the executor, the
    other presser hears who decided first."""
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex, start_slack_bridge():
        event = fake_slack.mention("clean up", channel=CHANNEL, user="U0CAROL")
        await fake_slack.send_event(event)
        run_id = (await ex.wait_type("assign"))["run_id"]
        await ex.start_run(run_id)
        await ask(ex, run_id)
        shown = await buttons(fake_slack, event["ts"])
        await asyncio.gather(
            fake_slack.press_button(CHANNEL, shown.ts, approve(), user="U0ALICE"),
            fake_slack.press_button(CHANNEL, shown.ts, approve("deny"), user="U0BOB"),
        )
        await fake_slack.wait_until(lambda: len(fake_slack.ephemeral) == 2, what="both told")
        await ex.wait_type("approval_decision", run_id=run_id)
        await fake_slack.wait_until(lambda: decided(shown), what="the buttons replaced")
        await ex.finish(run_id, "done")
        await fake_slack.wait_for_post(CHANNEL, event["ts"], lambda m: m.text == "done")
    assert len(ex.of_type("approval_decision")) == 1
    texts = sorted(e["text"] for e in fake_slack.ephemeral)
    assert any(t.startswith("Already decided") for t in texts)
    assert any(t.startswith(("Approved", "Denied")) for t in texts)


async def test_buttons_reach_a_bridge_that_was_down_and_work_after_its_restart(
    fake_slack: FakeSlack, fake_executor: Any, start_slack_bridge: Any, hub: Any
) -> None:
    """A request made while the bridge is away is shown once it is back; a restarted
    bridge takes a press on those buttons (they carry the run and the request)."""
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex:
        async with start_slack_bridge():
            event = fake_slack.mention("clean up", channel=CHANNEL, user="U0ALICE")
            await fake_slack.send_event(event)
            run_id = (await ex.wait_type("assign"))["run_id"]
            await ex.start_run(run_id)
        await ask(ex, run_id)
        async with start_slack_bridge():
            shown = await buttons(fake_slack, event["ts"])
        async with start_slack_bridge():
            await fake_slack.press_button(CHANNEL, shown.ts, approve("deny"), user="U0ALICE")
            decision = await ex.wait_type("approval_decision", run_id=run_id)
            await fake_slack.wait_until(lambda: decided(shown), what="the buttons replaced")
    assert decision["decision"] == "deny"
    assert "Denied by <@U0ALICE>" in shown.text
    assert len([m for m in fake_slack.posted(CHANNEL, event["ts"]) if m.blocks]) == 1


@pytest.mark.codex
async def test_a_slack_button_approves_what_the_real_codex_asks_and_the_command_runs(
    fake_slack: FakeSlack,
    start_executor: Any,
    start_slack_bridge: Any,
    codex_home: Path,
    codex_bin: str,
    model_server: StubModelServer,
    tmp_path: Path,
) -> None:
    """The real codex app-server asks to run a command outside the sandbox; the asker's
    Approve in the Slack thread lets it run, and the answer follows in the thread."""
    marker = tmp_path / "from-slack.txt"
    model_server.reply_escalated_exec(f"echo yes > {marker}", "write the marker", "it ran")
    async with (
        start_executor(
            EXEC_DRY_RUN=False,
            CODEX_HOME=codex_home,
            CODEX_BIN=codex_bin,
            EXEC_ENGINE="app-server",
            CODEX_APPROVAL_POLICY="on-request",
            EXEC_TIMEOUT_S=60,
        ),
        start_slack_bridge(),
    ):
        event = fake_slack.mention("write the marker", channel=CHANNEL, user="U0ALICE")
        await fake_slack.send_event(event)
        shown = await buttons(fake_slack, event["ts"])
        await fake_slack.press_button(CHANNEL, shown.ts, approve(), user="U0ALICE")
        await fake_slack.wait_for_post(
            CHANNEL, event["ts"], lambda m: m.text == "it ran", timeout=30
        )
        await fake_slack.wait_until(lambda: decided(shown), what="the buttons replaced")
    assert str(marker) in shown.text and "write the marker" in shown.text
    assert marker.read_text().strip() == "yes"
    assert "Approved by <@U0ALICE>" in shown.text


async def shown_to_hub(hub: Any, run_id: str) -> None:
    """Wait until the hub has heard where the run's buttons are (approval_shown)."""
    approvals = hub.app[ROUTER].approvals
    async with asyncio.timeout(10):
        # The hub says nothing when it hears it: asked every 20 ms.
        while not (a := approvals.current(run_id)) or not a.refs:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def test_a_button_still_works_after_the_hub_restarts(
    fake_slack: FakeSlack, fake_executor: Any, start_slack_bridge: Any, hub_settings: Any
) -> None:
    """The hub restarts with a request pending: the buttons posted before still decide
    it, the executor (back with its run) hears the decision, and the buttons change."""
    settings, url = on_a_fixed_port(hub_settings)
    first = HubServer(settings)
    await first.start()
    try:
        async with start_slack_bridge(HUB_URL=url) as bridge:
            async with fake_executor(url, token=NODE_TOKEN, node_id="exec-1") as ex:
                event = fake_slack.mention("clean up", channel=CHANNEL, user="U0ALICE")
                await fake_slack.send_event(event)
                run_id = (await ex.wait_type("assign"))["run_id"]
                await ex.start_run(run_id)
                await ask(ex, run_id)
                shown = await buttons(fake_slack, event["ts"])
                await shown_to_hub(first, run_id)
                await first.close()
                await ex.drop()
            async with (
                HubServer(settings) as second,
                fake_executor(
                    url, token=NODE_TOKEN, node_id="exec-1", active_runs=[run_id]
                ) as back,
            ):
                pending = second.app[ROUTER].approvals.current(run_id)
                rebuilt = (pending.state, list(pending.refs)) if pending else None
                async with asyncio.timeout(10):
                    await bridge.link.client.connected.wait()
                await fake_slack.press_button(CHANNEL, shown.ts, approve(), user="U0ALICE")
                decision = await back.wait_type("approval_decision", run_id=run_id, timeout=10)
                await fake_slack.wait_until(lambda: decided(shown), what="the buttons replaced")
    finally:
        await first.close()
    assert rebuilt == ("pending", [shown.ts])
    assert decision["decision"] == "approve" and decision["by"] == "slack:U0ALICE"
    assert "Approved by <@U0ALICE>" in shown.text


@pytest.mark.parametrize(
    ("failure", "changed"),
    [({"status": 500}, True), ({"status": 200, "error": "message_not_found"}, False)],
)
async def test_a_failed_update_of_the_buttons_is_sent_again_unless_it_cannot_pass(
    fake_slack: FakeSlack,
    fake_executor: Any,
    start_slack_bridge: Any,
    hub: Any,
    failure: dict[str, Any],
    changed: bool,
) -> None:
    """Slack failing the change of the buttons (5xx): the hub sends it again and it is
    made; a message that is gone: the bridge gives it up and the hub stops sending."""
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex, start_slack_bridge():
        event = fake_slack.mention("clean up", channel=CHANNEL, user="U0ALICE")
        await fake_slack.send_event(event)
        run_id = (await ex.wait_type("assign"))["run_id"]
        await ex.start_run(run_id)
        await ask(ex, run_id)
        shown = await buttons(fake_slack, event["ts"])
        fake_slack.fail_next("chat.update", match=lambda a: a.get("ts") == shown.ts, **failure)
        await fake_slack.press_button(CHANNEL, shown.ts, approve(), user="U0ALICE")
        approval = hub.app[ROUTER].approvals.current(run_id)
        async with asyncio.timeout(10):
            # The hub says nothing when the bridge confirms: asked every 20 ms.
            while "decided" not in approval.shown:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    updates = [c for c in fake_slack.calls("chat.update") if c.args.get("ts") == shown.ts]
    assert len(updates) == 2 if changed else len(updates) == 1
    assert decided(shown) is changed
