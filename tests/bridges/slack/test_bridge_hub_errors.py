"""What the Slack bridge says when the hub will not take a request."""

from __future__ import annotations

from typing import Any

import pytest

from testkit.fakes.slack import FakeSlack


@pytest.fixture
def hub_settings(hub_settings: Any) -> Any:
    """A hub that holds one waiting run at most."""
    return hub_settings.model_copy(update={"queue_limit": 1})


async def test_a_full_queue_is_told_in_the_thread(
    fake_slack: FakeSlack, start_slack_bridge: Any
) -> None:
    """With no executor and the queue full, the next request is told to try later."""
    async with start_slack_bridge(SLACK_STATUS_EDIT_INTERVAL_S=0.2):
        first = fake_slack.mention("first", channel="C0DEV")
        await fake_slack.send_event(first)
        waiting = await fake_slack.wait_for_post("C0DEV", first["ts"])
        second = fake_slack.mention("second", channel="C0DEV")
        await fake_slack.send_event(second)
        refusal = await fake_slack.wait_for_post("C0DEV", second["ts"])
        await fake_slack.wait_until(lambda: fake_slack.reactions("C0DEV", second["ts"]) == ["x"])

    assert waiting.text.startswith(":hourglass_flowing_sand: Queued")
    assert refusal.text.startswith(":warning: Too much work is waiting")
    assert "eyes" not in fake_slack.reactions("C0DEV", second["ts"])
