"""The Telegram bridge while the hub cannot be reached: messages are kept, within bounds."""

from __future__ import annotations

from typing import Any

from hub.app import HubServer
from hub.appkeys import STORE
from testkit.fakes.telegram import FakeTelegram
from tests.bridges.telegram.test_bridge import (
    USER,
    Settings,
    make_settings,
    replied_to,
    reply,
    running,
)

__all__ = ["make_settings"]  # a fixture of test_bridge, used here too

KEPT = "I kept your message"


async def test_messages_sent_while_the_hub_is_down_are_kept_and_answered_in_order(
    hub: Any, start_executor: Any, fake_telegram: FakeTelegram, make_settings: Settings
) -> None:
    """Each message is told at once that it is kept; once the hub is back both are
    submitted in the order they were sent, and both answered after their notes.

    (Two answers that are ready within a millisecond of each other are posted by two
    deliveries at once, so their order in the chat is not asserted.)"""
    fake = fake_telegram
    async with start_executor(), running(make_settings(), fake) as bridge:
        await hub.close()
        first = fake.push_message(USER, "first while away")
        note1 = await reply(fake, first)
        second = fake.push_message(USER, "second while away")
        note2 = await reply(fake, second)
        assert KEPT in (note1.text or "") and KEPT in (note2.text or "")
        assert bridge.link.pending == 2

        settings = hub.settings.model_copy(update={"port": hub.port})
        async with HubServer(settings) as back:
            answer1 = await reply(fake, first, "first while away", timeout=20)
            answer2 = await reply(fake, second, "second while away", timeout=20)
            runs, _ = await back.app[STORE].list_runs()
    sent = fake.calls("sendMessage")
    assert sent.index(note1) < sent.index(note2) < min(sent.index(answer1), sent.index(answer2))
    assert [r.prompt for r in reversed(runs)] == ["first while away", "second while away"]


async def test_a_message_past_the_kept_limit_is_told_it_was_not_kept(
    hub: Any, fake_telegram: FakeTelegram, make_settings: Settings
) -> None:
    """With BRIDGE_PENDING_MAX=1 the second message while the hub is away gets a clear
    refusal at once."""
    fake = fake_telegram
    async with running(make_settings(BRIDGE_PENDING_MAX=1), fake) as bridge:
        await hub.close()
        kept = fake.push_message(USER, "kept one")
        assert KEPT in ((await reply(fake, kept)).text or "")
        refused = fake.push_message(USER, "one too many")
        refusal = await reply(fake, refused)
        assert "too many messages are already waiting" in (refusal.text or "")
        assert "not kept" in (refusal.text or "") and bridge.link.pending == 1
    # Still kept when the bridge stops: its user is told it was not sent.
    stopped = [c for c in fake.calls("sendMessage") if c.ok and "bot stopped" in (c.text or "")]
    assert [replied_to(c) for c in stopped] == [kept.message_id]


async def test_a_message_kept_longer_than_its_age_limit_is_given_up_with_a_reply(
    hub: Any, fake_telegram: FakeTelegram, make_settings: Settings
) -> None:
    """Past BRIDGE_PENDING_MAX_AGE_S the kept message is dropped, and the user is told
    it was never sent."""
    fake = fake_telegram
    async with running(make_settings(BRIDGE_PENDING_MAX_AGE_S=0.5), fake) as bridge:
        await hub.close()
        pushed = fake.push_message(USER, "too late")
        assert KEPT in ((await reply(fake, pushed)).text or "")
        given_up = await fake.wait_for_call(
            "sendMessage", lambda c: c.ok and "did not come back in time" in (c.text or "")
        )
        assert "never sent" in (given_up.text or "") and bridge.link.pending == 0
