"""The fake Slack holds up against the real slack-bolt / slack-sdk, so bridge tests can trust it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.app.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from bridges.slack.convert import is_user_message, strip_mention
from bridges.slack.settings import SlackSettings
from testkit.fakes.slack import APP_TOKEN, BOT_TOKEN, BOT_USER_ID, FakeSlack


def make_app(fake: FakeSlack, **client_kwargs: Any) -> AsyncApp:
    """A bolt app whose Web API client points at the fake."""
    client = AsyncWebClient(token=BOT_TOKEN, base_url=fake.api_url, **client_kwargs)
    return AsyncApp(client=client)


@asynccontextmanager
async def socket_mode(
    app: AsyncApp, fake: FakeSlack, ping_interval: float = 10
) -> AsyncIterator[AsyncSocketModeHandler]:
    """Connect `app` over Socket Mode the way the bridge will embed it; always close it."""
    handler = AsyncSocketModeHandler(app, APP_TOKEN, ping_interval=ping_interval)
    try:
        await handler.connect_async()
        await fake.wait_connected()
        yield handler
    finally:
        await handler.close_async()


async def test_mention_is_answered_in_its_thread(fake_slack: FakeSlack) -> None:
    """A mention is acked at once, reacted to, and answered in the thread it started."""
    app = make_app(fake_slack)
    seen: list[str] = []

    @app.event("app_mention")
    async def on_mention(event: dict[str, Any], say: Any, client: AsyncWebClient) -> None:
        seen.append(strip_mention(event["text"], BOT_USER_ID))
        await client.reactions_add(channel=event["channel"], timestamp=event["ts"], name="eyes")
        await say(text="on it", thread_ts=event.get("thread_ts") or event["ts"])

    async with socket_mode(app, fake_slack):
        event = fake_slack.mention("do X", channel="C0DEV")
        envelope = await fake_slack.wait_ack(await fake_slack.send_event(event))
        post = await fake_slack.wait_for_call("chat.postMessage")
        reply = await fake_slack.wait_for_post("C0DEV", thread_ts=event["ts"])

    assert seen == ["do X"]
    assert reply.text == "on it" and reply.user == BOT_USER_ID
    assert post.args["thread_ts"] == event["ts"] and post.token == BOT_TOKEN
    assert fake_slack.reactions("C0DEV", event["ts"]) == ["eyes"]
    assert [c.method for c in fake_slack.calls()] == [
        "apps.connections.open",
        "auth.test",
        "reactions.add",
        "chat.postMessage",
    ]
    assert envelope.acked_at is not None and envelope.acked_at <= post.at
    assert envelope.ack == {"envelope_id": envelope.envelope_id}


async def test_mention_in_existing_thread_replies_there(fake_slack: FakeSlack) -> None:
    """A mention inside a thread carries thread_ts, and the answer goes to that thread."""
    app = make_app(fake_slack)

    @app.event("app_mention")
    async def on_mention(event: dict[str, Any], say: Any) -> None:
        await say(text="here", thread_ts=event.get("thread_ts") or event["ts"])

    async with socket_mode(app, fake_slack):
        parent = fake_slack.next_ts()
        await fake_slack.send_event(fake_slack.mention("again", thread_ts=parent))
        reply = await fake_slack.wait_for_post("C0GENERAL", thread_ts=parent)

    assert reply.thread_ts == parent


async def test_dm_is_answered_and_the_bots_own_echo_is_ignored(fake_slack: FakeSlack) -> None:
    """A DM reaches a `message` listener; Slack's echo of the bot's reply never does."""
    fake_slack.echo_bot_messages = True
    app = make_app(fake_slack)
    senders: list[str] = []

    @app.event("message")
    async def on_message(event: dict[str, Any], say: Any) -> None:
        senders.append(event.get("user", ""))
        await say(text=f"you said {event['text']}")

    async with socket_mode(app, fake_slack):
        dm = fake_slack.dm("hello", channel="D0ALICE")
        await fake_slack.send_event(dm)
        reply = await fake_slack.wait_for_post("D0ALICE")
        echo = await fake_slack.wait_until(
            lambda: [e for e in fake_slack.envelopes.values() if e.event.get("ts") == reply.ts]
        )
        await fake_slack.wait_ack(echo[0].envelope_id)
        # A second DM after the echo was acked: had bolt passed the echo on, it came first.
        await fake_slack.send_event(fake_slack.dm("again", channel="D0ALICE"))
        await fake_slack.wait_for_calls("chat.postMessage", 2)

    assert echo[0].event["channel_type"] == "im" and echo[0].event["bot_id"] == fake_slack.bot_id
    assert senders == ["U0ALICE", "U0ALICE"]
    assert [m.text for m in fake_slack.posted("D0ALICE")] == ["you said hello", "you said again"]


async def test_redelivered_event_reaches_the_listener_twice(fake_slack: FakeSlack) -> None:
    """Slack's retry has the same event_id and a new envelope; bolt does not dedupe it."""
    app = make_app(fake_slack)
    event_ids: list[str] = []

    @app.event("app_mention")
    async def on_mention(body: dict[str, Any], say: Any) -> None:
        event_ids.append(body["event_id"])
        await say(text="ok")

    async with socket_mode(app, fake_slack):
        first = await fake_slack.send_event(fake_slack.mention("once"), event_id="Ev0RETRY")
        second = await fake_slack.redeliver(first)
        await fake_slack.wait_for_calls("chat.postMessage", 2)

    retry = fake_slack.envelopes[second]
    assert second != first and retry.event_id == "Ev0RETRY"
    assert retry.frame["retry_attempt"] == 1 and retry.frame["retry_reason"] == "timeout"
    assert event_ids == ["Ev0RETRY", "Ev0RETRY"]


async def test_message_subtypes_arrive_and_only_the_person_counts(fake_slack: FakeSlack) -> None:
    """Edits, joins and other bots' posts reach bolt as `message` events; the filter drops them."""
    app = make_app(fake_slack)
    events: list[dict[str, Any]] = []

    @app.event("message")
    async def on_message(event: dict[str, Any]) -> None:
        events.append(event)

    async with socket_mode(app, fake_slack):
        original = fake_slack.dm("first", channel="D0BOB", user="U0BOB")
        for event in (
            fake_slack.message_changed("D0BOB", original["ts"], "edited", user="U0BOB"),
            fake_slack.bot_message("beep"),
            fake_slack.channel_join("U0CAROL"),
            original,
        ):
            await fake_slack.send_event(event)
        await fake_slack.wait_until(lambda: len(events) == 4)

    kinds = sorted(e.get("subtype", "") for e in events)
    assert kinds == ["", "bot_message", "channel_join", "message_changed"]
    assert [e["text"] for e in events if is_user_message(e, BOT_USER_ID)] == ["first"]


async def test_files_upload_v2_roundtrip(fake_slack: FakeSlack) -> None:
    """files_upload_v2 gets an upload URL, posts the bytes there and shares them in the thread."""
    client = AsyncWebClient(token=BOT_TOKEN, base_url=fake_slack.api_url)
    content = "# answer\n" + "line\n" * 5000
    result = await client.files_upload_v2(
        channel="C0DEV",
        thread_ts="1700000000.000100",
        content=content,
        filename="answer.md",
        title="Full answer",
        initial_comment="too long for a message",
    )

    [uploaded] = fake_slack.uploaded_files("C0DEV", "1700000000.000100")
    assert uploaded.text == content and uploaded.length == len(content.encode())
    assert result["file"]["id"] == uploaded.file_id and result["file"]["title"] == "Full answer"
    assert [c.method for c in fake_slack.calls()] == [
        "files.getUploadURLExternal",
        "upload",
        "files.completeUploadExternal",
    ]
    [share] = fake_slack.posted("C0DEV", "1700000000.000100")
    assert share.text == "too long for a message" and share.files[0]["name"] == "answer.md"


async def test_429_is_retried_by_the_rate_limit_handler(fake_slack: FakeSlack) -> None:
    """A ratelimited postMessage is retried after Retry-After when the handler is installed."""
    app = make_app(fake_slack, retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=2)])

    @app.event("app_mention")
    async def on_mention(event: dict[str, Any], say: Any) -> None:
        await say(text="eventually", thread_ts=event["ts"])

    fake_slack.fail_next("chat.postMessage", status=429, retry_after=0)
    async with socket_mode(app, fake_slack):
        event = fake_slack.mention("go")
        await fake_slack.send_event(event)
        reply = await fake_slack.wait_for_post(thread_ts=event["ts"])

    attempts = fake_slack.calls("chat.postMessage")
    assert [c.status for c in attempts] == [429, 200]
    assert attempts[0].response == {"ok": False, "error": "ratelimited"}
    assert reply.text == "eventually"


async def test_429_without_a_retry_handler_raises(fake_slack: FakeSlack) -> None:
    """Without a retry handler the 429 surfaces as SlackApiError carrying Retry-After."""
    client = AsyncWebClient(token=BOT_TOKEN, base_url=fake_slack.api_url)
    fake_slack.fail_next("chat.postMessage", status=429, retry_after=7)
    with pytest.raises(SlackApiError) as raised:
        await client.chat_postMessage(channel="C0DEV", text="x")
    assert raised.value.response.status_code == 429
    assert raised.value.response["error"] == "ratelimited"
    assert raised.value.response.headers["Retry-After"] == "7"
    assert (await client.chat_postMessage(channel="C0DEV", text="x"))["ok"]


async def test_5xx_then_success_with_server_error_handler(fake_slack: FakeSlack) -> None:
    """A 503 is answered as Slack's internal error and retried by the server-error handler."""
    client = AsyncWebClient(
        token=BOT_TOKEN,
        base_url=fake_slack.api_url,
        retry_handlers=[AsyncServerErrorRetryHandler(max_retry_count=1)],
    )
    fake_slack.fail_next("reactions.add", status=503)
    posted = await client.chat_postMessage(channel="C0DEV", text="x")
    await client.reactions_add(channel="C0DEV", timestamp=posted["ts"], name="eyes")
    assert [c.status for c in fake_slack.calls("reactions.add")] == [503, 200]


async def test_disconnect_frame_makes_the_client_reconnect(fake_slack: FakeSlack) -> None:
    """After a `disconnect` frame the client opens a fresh URL and events flow on the new socket."""
    app = make_app(fake_slack)

    @app.event("app_mention")
    async def on_mention(say: Any) -> None:
        await say(text="still here")

    async with socket_mode(app, fake_slack):
        await fake_slack.send_disconnect()
        second = await fake_slack.wait_connected(count=2)
        await fake_slack.wait_until(lambda: not fake_slack.connections[0].open)
        envelope = await fake_slack.wait_ack(await fake_slack.send_event(fake_slack.mention("hi")))
        await fake_slack.wait_for_post()

    assert envelope.connection == second.number == 2
    assert len(fake_slack.calls("apps.connections.open")) == 2


async def test_client_reconnects_after_the_server_was_offline(fake_slack: FakeSlack) -> None:
    """While offline connections are refused; back on the same port the client reconnects."""
    app = make_app(fake_slack)

    @app.event("app_mention")
    async def on_mention(say: Any) -> None:
        await say(text="back")

    port = fake_slack.port
    async with socket_mode(app, fake_slack, ping_interval=0.5):
        async with fake_slack.offline():
            assert fake_slack.open_connections == 0
            with pytest.raises(aiohttp.ClientConnectionError):
                async with aiohttp.ClientSession() as session:
                    await session.post(fake_slack.api_url + "auth.test")
        await fake_slack.wait_connected(count=2, timeout=10)
        await fake_slack.send_event(fake_slack.mention("hi"))
        await fake_slack.wait_for_post()

    assert fake_slack.port == port


async def test_web_api_checks_tokens_and_methods(fake_slack: FakeSlack) -> None:
    """Wrong or missing tokens and unknown methods get Slack's errors, not a crash."""
    good = AsyncWebClient(token=BOT_TOKEN, base_url=fake_slack.api_url)
    cases = {
        "invalid_auth": AsyncWebClient(token="xoxb-wrong", base_url=fake_slack.api_url).auth_test(),
        "not_allowed_token_type": good.apps_connections_open(app_token=BOT_TOKEN),
        "unknown_method": good.api_call("conversations.frobnicate"),
        "method_deprecated": good.api_call("files.upload", data={"content": "x"}),
        "message_not_found": good.chat_update(channel="C0DEV", ts="1.000001", text="x"),
    }
    for error, call in cases.items():
        with pytest.raises(SlackApiError) as raised:
            await call
        assert raised.value.response["error"] == error
    assert (await good.auth_test())["user_id"] == BOT_USER_ID


async def test_arguments_merge_query_form_and_json(fake_slack: FakeSlack) -> None:
    """Query string, form and JSON arguments all reach the method; Bearer carries the token."""
    headers = {"Authorization": f"Bearer {BOT_TOKEN}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        url = fake_slack.api_url + "chat.postMessage?channel=C0Q"
        async with session.post(url, data={"text": "from form"}) as resp:
            form_reply = await resp.json()
        async with session.post(url, json={"text": "from json", "thread_ts": "1.5"}) as resp:
            json_reply = await resp.json()
        async with session.post(fake_slack.api_url + "auth.test") as resp:
            assert (await resp.json())["bot_id"] == fake_slack.bot_id

    assert form_reply["ok"] and json_reply["ok"]
    assert [m.text for m in fake_slack.posted("C0Q")] == ["from form", "from json"]
    assert fake_slack.posted("C0Q", thread_ts="1.5")[0].text == "from json"


async def test_update_keeps_history_and_reactions_toggle(fake_slack: FakeSlack) -> None:
    """chat.update edits the bot's message in place; reactions add, refuse twice, and remove."""
    client = AsyncWebClient(token=BOT_TOKEN, base_url=fake_slack.api_url)
    posted = await client.chat_postMessage(channel="C0DEV", text="working")
    await client.chat_update(channel="C0DEV", ts=posted["ts"], text="done")
    await client.reactions_add(channel="C0DEV", timestamp=posted["ts"], name="white_check_mark")
    with pytest.raises(SlackApiError, match="already_reacted"):
        await client.reactions_add(channel="C0DEV", timestamp=posted["ts"], name="white_check_mark")
    with pytest.raises(SlackApiError, match="invalid_name"):
        await client.reactions_add(channel="C0DEV", timestamp=posted["ts"], name=":eyes:")
    assert fake_slack.reactions("C0DEV", posted["ts"]) == ["white_check_mark"]
    await client.reactions_remove(channel="C0DEV", timestamp=posted["ts"], name="white_check_mark")

    message = fake_slack.get_message("C0DEV", posted["ts"])
    assert (message.text, message.history) == ("done", ["working"])
    assert fake_slack.reactions("C0DEV", posted["ts"]) == []


async def test_long_text_is_cut_like_slack(fake_slack: FakeSlack) -> None:
    """Text above 40,000 characters is cut, as Slack does; the call keeps what was sent."""
    client = AsyncWebClient(token=BOT_TOKEN, base_url=fake_slack.api_url)
    await client.chat_postMessage(channel="C0DEV", text="x" * 45_000)
    assert len(fake_slack.posted("C0DEV")[0].text) == 40_000
    assert len(fake_slack.calls("chat.postMessage")[0].args["text"]) == 45_000


async def test_upload_url_failure_is_reported(fake_slack: FakeSlack) -> None:
    """A failing upload URL makes files_upload_v2 raise instead of completing the upload."""
    client = AsyncWebClient(token=BOT_TOKEN, base_url=fake_slack.api_url)
    fake_slack.fail_next("upload", status=500)
    with pytest.raises(Exception, match="Failed to upload a file"):
        await client.files_upload_v2(channel="C0DEV", content="data", filename="a.txt")
    assert fake_slack.uploaded_files() == [] and not fake_slack.calls(
        "files.completeUploadExternal"
    )


async def test_wait_for_call_times_out_with_what_it_saw(fake_slack: FakeSlack) -> None:
    """A wait that is never satisfied fails fast and names the calls that did happen."""
    client = AsyncWebClient(token=BOT_TOKEN, base_url=fake_slack.api_url)
    await client.auth_test()
    with pytest.raises(TimeoutError, match=r"auth\.test:200"):
        await fake_slack.wait_for_call("chat.postMessage", timeout=0.05)


async def test_fake_closes_cleanly_with_a_connected_client() -> None:
    """Closing the fake under a live socket closes it with GOING_AWAY and is idempotent."""
    async with FakeSlack() as fake:
        app = make_app(fake)
        async with socket_mode(app, fake):
            await fake.close()
            assert not fake.online and fake.open_connections == 0
            await fake.close()


async def test_slack_settings_fixture_points_at_the_fake(
    fake_slack: FakeSlack, slack_settings: SlackSettings
) -> None:
    """The slack_settings fixture carries the fake's tokens and URL."""
    assert slack_settings.configured
    assert slack_settings.api_base_url == fake_slack.api_url
    assert slack_settings.bot_token.get_secret_value() == BOT_TOKEN
    client = AsyncWebClient(
        token=slack_settings.bot_token.get_secret_value(), base_url=slack_settings.api_base_url
    )
    assert (await client.auth_test())["team_id"] == fake_slack.team_id
