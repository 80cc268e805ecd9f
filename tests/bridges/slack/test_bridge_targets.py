"""Slack and where a run goes (issue #20): ``@label`` at the start of a mention, the
channel's ``target``, and the hub's refusals (an unknown label, a channel's rule) said
in the thread."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from hub.settings import HubSettings
from testkit.fakes.nodes import FakeExecutor
from testkit.fakes.slack import FakeSlack
from tests.conftest import NODE_TOKEN, ws_url

CHANNEL = "C0DEV"
#: A channel HUB_TARGET_RULES limits to the ``dev`` label.
RULED = "C0RULED"


@pytest.fixture
def hub_settings(tmp_path: Path) -> HubSettings:
    """The test hub, with a rule for the RULED channel."""
    return HubSettings(
        HUB_PORT=0,
        HUB_DB=tmp_path / "hub.db",
        HUB_TOKEN=NODE_TOKEN,
        HUB_AUTH="none",
        HUB_EXECUTOR_GRACE_S=2.0,
        HUB_REDELIVER_S=1.0,
        HUB_TARGET_RULES=f"slack:{RULED}=dev",
    )


@asynccontextmanager
async def _two_executors(hub: Any, fake_executor: Any) -> AsyncIterator[tuple[FakeExecutor, ...]]:
    async with (
        fake_executor(
            ws_url(hub), node_id="laptop", token=NODE_TOKEN, labels=["dev"], capacity=8
        ) as laptop,
        fake_executor(ws_url(hub), node_id="gpu-box", token=NODE_TOKEN, labels=["gpu"]) as gpu,
    ):
        yield laptop, gpu


async def _ask(fake: FakeSlack, text: str, channel: str = CHANNEL) -> dict[str, Any]:
    event = fake.mention(text, channel=channel)
    await fake.send_event(event)
    return event


async def _said(fake: FakeSlack, event: dict[str, Any], fragment: str) -> str:
    channel, ts = event["channel"], event["ts"]
    message = await fake.wait_for_post(channel, ts, lambda m: fragment in (m.text or ""))
    return message.text or ""


async def test_a_mention_starting_with_a_label_runs_only_on_that_executor(
    hub: Any, fake_executor: Any, fake_slack: FakeSlack, start_slack_bridge: Any
) -> None:
    """``@gpu train it`` runs ``train it`` on the gpu executor, not the free laptop, and
    the answer comes back in the thread."""
    async with _two_executors(hub, fake_executor) as (laptop, gpu), start_slack_bridge():
        event = await _ask(fake_slack, "@gpu train it")
        frame = await gpu.wait_type("assign", prompt="train it")
        await gpu.finish(frame["run_id"], answer="trained")
        await _said(fake_slack, event, "trained")
        assert laptop.of_type("assign") == []


async def test_the_channels_target_sends_its_runs_there(
    hub: Any, fake_executor: Any, fake_slack: FakeSlack, start_slack_bridge: Any
) -> None:
    """``target @gpu`` sends the channel's next runs to the gpu executor even though the
    laptop has more free slots; ``target -`` lets them go to the laptop again."""
    async with _two_executors(hub, fake_executor) as (laptop, gpu), start_slack_bridge():
        event = await _ask(fake_slack, "target @gpu")
        assert "matching gpu" in await _said(fake_slack, event, "New runs here go only to")
        await _ask(fake_slack, "first")
        await gpu.wait_type("assign", prompt="first")
        assert laptop.of_type("assign") == []
        event = await _ask(fake_slack, "target -")
        await _said(fake_slack, event, "Target cleared")
        await _ask(fake_slack, "second")
        await laptop.wait_type("assign", prompt="second")


async def test_an_unknown_label_is_refused_in_the_thread_with_the_known_ones(
    hub: Any, fake_executor: Any, fake_slack: FakeSlack, start_slack_bridge: Any
) -> None:
    """``@arm64 build`` when no executor announced arm64 is answered with the refusal and
    the known labels; nothing runs."""
    async with _two_executors(hub, fake_executor) as (laptop, gpu), start_slack_bridge():
        event = await _ask(fake_slack, "@arm64 build")
        text = await _said(fake_slack, event, "arm64")
        assert "known labels: dev, gpu; executors: gpu-box, laptop" in text
        assert laptop.of_type("assign") == gpu.of_type("assign") == []


async def test_a_channels_rule_refuses_a_label_outside_it_and_allows_its_own(
    hub: Any, fake_executor: Any, fake_slack: FakeSlack, start_slack_bridge: Any
) -> None:
    """In a channel HUB_TARGET_RULES limits to ``dev``, ``@gpu`` is refused with the
    reason and ``@dev`` runs on the laptop."""
    async with _two_executors(hub, fake_executor) as (laptop, gpu), start_slack_bridge():
        event = await _ask(fake_slack, "@gpu train it", channel=RULED)
        text = await _said(fake_slack, event, "may not use gpu")
        assert "only dev" in text
        await _ask(fake_slack, "@dev lint it", channel=RULED)
        await laptop.wait_type("assign", prompt="lint it")
        assert gpu.of_type("assign") == []
