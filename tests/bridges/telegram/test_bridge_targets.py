"""Telegram and where a run goes (issue #20): ``@label`` at the start of a message, the
chat's ``/target``, and the hub's refusal of a label nobody announced, said in the chat."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from bridges.telegram.bridge import TelegramBridge
from bridges.telegram.settings import TelegramSettings
from testkit.fakes.nodes import FakeExecutor
from testkit.fakes.telegram import FakeTelegram
from tests.conftest import NODE_TOKEN, ws_url

USER = 4343


@asynccontextmanager
async def _bridge(hub: Any, fake: FakeTelegram) -> AsyncIterator[TelegramBridge]:
    settings = TelegramSettings(
        HUB_URL=ws_url(hub),
        HUB_TOKEN=NODE_TOKEN,
        TELEGRAM_BOT_TOKEN=fake.token,
        TELEGRAM_API_BASE_URL=fake.base_url,
        TELEGRAM_ALLOWED_USERS="*",
        TELEGRAM_STATUS_DELAY_S=60.0,
    )
    async with TelegramBridge(settings) as bridge:
        async with asyncio.timeout(10):
            await bridge.link.client.connected.wait()
        await fake.wait_until_polling()
        yield bridge


@asynccontextmanager
async def _two_executors(hub: Any, fake_executor: Any) -> AsyncIterator[tuple[FakeExecutor, ...]]:
    async with (
        fake_executor(
            ws_url(hub), node_id="laptop", token=NODE_TOKEN, labels=["dev"], capacity=8
        ) as laptop,
        fake_executor(ws_url(hub), node_id="gpu-box", token=NODE_TOKEN, labels=["gpu"]) as gpu,
    ):
        yield laptop, gpu


async def _said(fake: FakeTelegram, fragment: str) -> str:
    call = await fake.wait_for_call(
        "sendMessage", lambda c: c.ok and c.chat_id == USER and fragment in (c.text or "")
    )
    return call.text or ""


async def test_a_message_starting_with_a_label_runs_only_on_that_executor(
    hub: Any, fake_executor: Any, fake_telegram: FakeTelegram
) -> None:
    """``@gpu train it`` runs ``train it`` on the gpu executor, not the free laptop."""
    async with _two_executors(hub, fake_executor) as (laptop, gpu), _bridge(hub, fake_telegram):
        fake_telegram.push_message(USER, "@gpu train it")
        frame = await gpu.wait_type("assign", prompt="train it")
        await gpu.finish(frame["run_id"])
        await _said(fake_telegram, "done")
        assert laptop.of_type("assign") == []


async def test_the_chats_target_sends_its_runs_there_until_cleared(
    hub: Any, fake_executor: Any, fake_telegram: FakeTelegram
) -> None:
    """``/target @gpu`` sends the chat's next runs to the gpu executor even though the
    laptop has more free slots; after ``/target -`` they go to the laptop again."""
    async with _two_executors(hub, fake_executor) as (laptop, gpu), _bridge(hub, fake_telegram):
        fake_telegram.push_message(USER, "/target @gpu")
        assert "matching gpu" in await _said(fake_telegram, "New runs here go only to")
        fake_telegram.push_message(USER, "first")
        frame = await gpu.wait_type("assign", prompt="first")
        await gpu.finish(frame["run_id"], answer="first done")
        await _said(fake_telegram, "first done")
        assert laptop.of_type("assign") == []
        fake_telegram.push_message(USER, "/target -")
        await _said(fake_telegram, "Target cleared")
        fake_telegram.push_message(USER, "second")
        # Anywhere again: the laptop, which has the most free slots.
        await laptop.wait_type("assign", prompt="second")


async def test_an_unknown_label_is_refused_in_the_chat_with_the_known_ones(
    hub: Any, fake_executor: Any, fake_telegram: FakeTelegram
) -> None:
    """``@arm64 build`` when no executor ever announced arm64 is answered with the refusal
    and the known labels; nothing runs."""
    async with _two_executors(hub, fake_executor) as (laptop, gpu), _bridge(hub, fake_telegram):
        fake_telegram.push_message(USER, "@arm64 build")
        text = await _said(fake_telegram, "arm64")
        assert "known labels: dev, gpu; executors: gpu-box, laptop" in text
        assert laptop.of_type("assign") == gpu.of_type("assign") == []
