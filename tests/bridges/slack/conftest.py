"""The Slack bridge tests' fixture: a SlackBridge on the fake Slack and the test's hub."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

import pytest

from testkit.fakes.slack import FakeSlack
from tests.conftest import NODE_TOKEN, ws_url

if TYPE_CHECKING:
    from bridges.slack.bridge import SlackBridge


@pytest.fixture
def start_slack_bridge(
    fake_slack: FakeSlack, hub: Any
) -> Callable[..., AbstractAsyncContextManager[SlackBridge]]:
    """``async with start_slack_bridge(**settings) as bridge``: a SlackBridge on the fake.

    It talks to `fake_slack` and to the test's `hub`, lets everyone in unless told
    otherwise, and is connected to both when the block starts; closed when it ends.
    """
    from bridges.slack.bridge import SlackBridge
    from bridges.slack.settings import SlackSettings

    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[SlackBridge]:
        values: dict[str, Any] = {
            "SLACK_BOT_TOKEN": fake_slack.bot_token,
            "SLACK_APP_TOKEN": fake_slack.app_token,
            "SLACK_API_BASE_URL": fake_slack.api_url,
            "SLACK_ALLOWED_USERS": ["*"],
            "SLACK_ALLOWED_CHANNELS": ["*"],
            "HUB_URL": ws_url(hub),
            "HUB_TOKEN": NODE_TOKEN,
        }
        values.update(overrides)
        settings = SlackSettings(_env_file=None, **values)  # type: ignore[call-arg]
        bridge = SlackBridge(settings, node_id="slack-bridge-test")
        try:
            await bridge.start()
            async with asyncio.timeout(10):
                await bridge.connected.wait()
                await bridge.link.client.connected.wait()
            yield bridge
        finally:
            await bridge.close()

    return start
