"""The Slack bridge while the hub cannot be reached: requests are kept, within bounds."""

from __future__ import annotations

from typing import Any

from hub.app import HubServer
from hub.appkeys import STORE
from testkit.fakes.slack import FakeSlack
from tests.bridges.slack.test_bridge import CHANNEL, answers, wait_reactions


def is_kept_note(message: Any) -> bool:
    return "your request is kept" in message.text


async def test_requests_made_while_the_hub_is_down_are_kept_and_answered_in_order(
    fake_slack: FakeSlack, start_executor: Any, start_slack_bridge: Any, hub: Any
) -> None:
    """Each request is told at once that it is kept; once the hub is back both are
    submitted in the order they were asked and answered in the thread.

    (Two answers ready within a millisecond of each other are posted by two deliveries
    at once, so their order in the thread is not asserted.)"""
    async with start_executor(), start_slack_bridge() as bridge:
        await hub.close()
        first = fake_slack.mention("first while away", channel=CHANNEL)
        await fake_slack.send_event(first)
        thread = first["ts"]
        await fake_slack.wait_for_post(CHANNEL, thread, is_kept_note)
        second = fake_slack.mention("second while away", channel=CHANNEL, thread_ts=thread)
        await fake_slack.send_event(second)
        await fake_slack.wait_until(
            lambda: len([m for m in fake_slack.posted(CHANNEL, thread) if is_kept_note(m)]) == 2
        )
        assert bridge.link.pending == 2 and not answers(fake_slack, CHANNEL, thread)

        settings = hub.settings.model_copy(update={"port": hub.port})
        async with HubServer(settings) as back:
            for text in ("first while away", "second while away"):
                await fake_slack.wait_for_post(
                    CHANNEL, thread, lambda m, text=text: m.text == text, timeout=20
                )
            await wait_reactions(fake_slack, CHANNEL, second["ts"], "white_check_mark")
            runs, _ = await back.app[STORE].list_runs()
    assert sorted(m.text for m in answers(fake_slack, CHANNEL, thread)) == [
        "first while away",
        "second while away",
    ]
    notes = [i for i, m in enumerate(fake_slack.posted(CHANNEL, thread)) if is_kept_note(m)]
    assert notes == [0, 1]  # the notes came first
    assert [r.prompt for r in reversed(runs)] == ["first while away", "second while away"]
    assert bridge.link.pending == 0


async def test_a_request_past_the_kept_limit_is_told_it_was_not_kept(
    fake_slack: FakeSlack, start_executor: Any, start_slack_bridge: Any, hub: Any
) -> None:
    """With BRIDGE_PENDING_MAX=1 the second request while the hub is away is refused with
    a clear reply (and an :x:); the first is still answered when the hub is back."""
    async with start_executor(), start_slack_bridge(BRIDGE_PENDING_MAX=1) as bridge:
        await hub.close()
        kept = fake_slack.mention("kept one", channel=CHANNEL)
        await fake_slack.send_event(kept)
        await fake_slack.wait_for_post(CHANNEL, kept["ts"], is_kept_note)
        refused = fake_slack.mention("one too many", channel=CHANNEL)
        await fake_slack.send_event(refused)
        refusal = await fake_slack.wait_for_post(CHANNEL, refused["ts"])
        await wait_reactions(fake_slack, CHANNEL, refused["ts"], "x")
        assert "too many requests are already waiting" in refusal.text
        assert "not kept" in refusal.text and bridge.link.pending == 1

        settings = hub.settings.model_copy(update={"port": hub.port})
        async with HubServer(settings) as back:
            await fake_slack.wait_for_post(
                CHANNEL, kept["ts"], lambda m: m.text == "kept one", timeout=20
            )
            runs, _ = await back.app[STORE].list_runs()
    assert [r.prompt for r in runs] == ["kept one"]
    assert len(fake_slack.posted(CHANNEL, refused["ts"])) == 1
