"""The fake Telegram holds up against the real python-telegram-bot, so bridge tests can trust it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
import telegramify_markdown
from telegram import Bot, Message, Update
from telegram.error import BadRequest, Conflict, InvalidToken
from telegram.ext import AIORateLimiter, Application, ContextTypes, MessageHandler, filters

from bridges.telegram.convert import BOT_COMMANDS, render_message, should_handle
from testkit.fakes.telegram import (
    CONFLICT,
    FAKE_BOT_ID,
    FAKE_BOT_USERNAME,
    FakeTelegram,
    check_markdown_v2,
)

GROUP = -1001234567890
USER = 4242
Reply = Callable[[Update, ContextTypes.DEFAULT_TYPE], Coroutine[Any, Any, None]]


def build_app(
    fake: FakeTelegram, token: str | None = None
) -> Application[Any, Any, Any, Any, Any, Any]:
    """A PTB Application pointed at the fake, built the way the bridge will build it."""
    return (
        Application.builder()
        .token(token or fake.token)
        .base_url(fake.base_url)
        .base_file_url(fake.base_file_url)
        .concurrent_updates(True)
        .rate_limiter(AIORateLimiter(max_retries=3))
        .build()
    )


@asynccontextmanager
async def polling(
    fake: FakeTelegram, on_text: Reply | None = None
) -> AsyncIterator[Application[Any, Any, Any, Any, Any, Any]]:
    """Start an app embedded in the running loop (no ``run_polling``); always shut it down."""
    app = build_app(fake)
    if on_text is not None:
        app.add_handler(MessageHandler(filters.TEXT, on_text))
    await app.initialize()
    try:
        await app.updater.start_polling(timeout=5)  # type: ignore[union-attr]
        await app.start()
        yield app
    finally:
        if app.updater is not None and app.updater.running:
            await app.updater.stop()
        if app.running:
            await app.stop()
        await app.shutdown()


@asynccontextmanager
async def bot(fake: FakeTelegram, token: str | None = None) -> AsyncIterator[Bot]:
    """A bare initialised Bot on the fake, for calls outside an Application."""
    async with Bot(
        token or fake.token, base_url=fake.base_url, base_file_url=fake.base_file_url
    ) as b:
        yield b


async def echo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Reply to a text message with its text."""
    assert update.message is not None
    await update.message.reply_text(f"echo: {update.message.text}")


async def test_group_message_is_answered_as_a_reply(fake_telegram: FakeTelegram) -> None:
    """A group message reaches the handler and its reply_text quotes it via reply_parameters."""
    async with polling(fake_telegram, echo):
        pushed = fake_telegram.push_message(GROUP, "hello", user_id=USER)
        call = await fake_telegram.wait_for_call("sendMessage")

    assert call.ok
    assert call.args["chat_id"] == GROUP
    assert call.args["text"] == "echo: hello"
    assert call.args["reply_parameters"] == {"message_id": pushed.message_id}
    [sent] = fake_telegram.sent_messages(GROUP)
    assert sent["reply_to_message"]["message_id"] == pushed.message_id
    assert sent["from"]["id"] == FAKE_BOT_ID
    assert fake_telegram.pending_updates == []  # confirmed by the offset on the way out


async def test_startup_calls_and_shutdown_confirmation(fake_telegram: FakeTelegram) -> None:
    """PTB calls getMe, deleteWebhook, then long-polls; stopping confirms fetched updates."""
    async with polling(fake_telegram, echo):
        await fake_telegram.wait_until_polling()
        fake_telegram.push_message(USER, "hi")
        await fake_telegram.wait_for_call("sendMessage")
    methods = [c.method for c in fake_telegram.calls()]
    assert methods[:3] == ["getMe", "deleteWebhook", "getUpdates"]
    last_poll = fake_telegram.calls("getUpdates")[-1]
    assert last_poll.args["timeout"] == 0  # PTB's confirming call on stop
    assert last_poll.args["offset"] > 0
    assert not fake_telegram.polling


async def test_private_reply_text_does_not_quote_unless_asked(
    fake_telegram: FakeTelegram,
) -> None:
    """In a private chat PTB's reply_text sends no reply_parameters unless do_quote=True."""

    async def both(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.message is not None
        await update.message.reply_text("plain")
        await update.message.reply_text("quoted", do_quote=True)

    async with polling(fake_telegram, both):
        pushed = fake_telegram.push_message(USER, "hi")
        plain, quoted = await fake_telegram.wait_for_calls("sendMessage", 2)
    assert "reply_parameters" not in plain.args
    assert quoted.args["reply_parameters"] == {"message_id": pushed.message_id}


async def test_updates_are_handled_concurrently(fake_telegram: FakeTelegram) -> None:
    """With concurrent_updates(True) a handler that blocks does not hold up another chat."""
    release = asyncio.Event()

    async def slow_then_fast(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.message is not None
        if update.message.text == "slow":
            await release.wait()
        await update.message.reply_text(f"done {update.message.text}")

    async with polling(fake_telegram, slow_then_fast):
        fake_telegram.push_message(USER, "slow")
        fake_telegram.push_message(USER + 1, "fast")
        first = await fake_telegram.wait_for_call("sendMessage")
        release.set()
        await fake_telegram.wait_for_calls("sendMessage", 2)
    assert first.args["text"] == "done fast"


async def test_long_poll_returns_as_soon_as_an_update_arrives(fake_telegram: FakeTelegram) -> None:
    """A pending getUpdates answers when an update is pushed, and an offset confirms it."""
    async with bot(fake_telegram) as b:
        poll = asyncio.create_task(b.get_updates(timeout=30))
        await fake_telegram.wait_until_polling()
        started = time.monotonic()
        pushed = fake_telegram.push_message(USER, "ping")
        [update] = await asyncio.wait_for(poll, 5)
        assert time.monotonic() - started < 1.0
        assert update.update_id == pushed.update_id
        assert update.message is not None and update.message.text == "ping"
        assert await b.get_updates(offset=update.update_id + 1, timeout=0) == ()
    assert fake_telegram.pending_updates == []


async def test_second_poller_gets_conflict(fake_telegram: FakeTelegram) -> None:
    """While one app polls, another getUpdates with the same token is answered 409."""
    async with polling(fake_telegram, echo):
        await fake_telegram.wait_until_polling()
        async with bot(fake_telegram) as other:
            with pytest.raises(Conflict) as caught:
                await other.get_updates(timeout=1)
        assert "terminated by other getUpdates request" in caught.value.message
        fake_telegram.push_message(USER, "still there?")
        await fake_telegram.wait_for_call("sendMessage")
    conflict = fake_telegram.calls("getUpdates")
    assert any(c.status == 409 and c.description == CONFLICT for c in conflict)


async def test_flood_control_is_retried_by_the_rate_limiter(fake_telegram: FakeTelegram) -> None:
    """A 429 with retry_after is waited out and retried by AIORateLimiter, then succeeds."""
    fake_telegram.fail_next("sendMessage", 1, status=429, retry_after=1)
    async with polling(fake_telegram, echo):
        fake_telegram.push_message(USER, "busy?")
        sent = await fake_telegram.wait_for_call("sendMessage", lambda c: c.ok, timeout=10)
    statuses = [c.status for c in fake_telegram.calls("sendMessage")]
    assert statuses == [429, 200]
    assert sent.args["text"] == "echo: busy?"


async def test_server_errors_surface_as_network_errors(fake_telegram: FakeTelegram) -> None:
    """A 5xx is answered in Telegram's envelope and PTB raises NetworkError (not retried)."""
    from telegram.error import NetworkError

    fake_telegram.add_chat(USER)
    fake_telegram.fail_next("sendMessage", 1, status=502)
    async with bot(fake_telegram) as b:
        with pytest.raises(NetworkError, match="Bad Gateway"):
            await b.send_message(USER, "x")
        message = await b.send_message(USER, "y")
    assert message.text == "y"


async def test_markdown_v2_errors_use_telegrams_text(fake_telegram: FakeTelegram) -> None:
    """Unescaped reserved characters are refused with Telegram's description; escaped ones pass."""
    fake_telegram.add_chat(USER)
    async with bot(fake_telegram) as b:
        with pytest.raises(BadRequest) as caught:
            await b.send_message(USER, "Done. All good!", parse_mode="MarkdownV2")
        ok = await b.send_message(USER, "Done\\. *All* good\\!", parse_mode="MarkdownV2")
    # PTB strips "Bad Request: " and lower-cases the rest of Telegram's description.
    assert caught.value.message == (
        "Can't parse entities: character '.' is reserved and must be escaped with the "
        "preceding '\\'"
    )
    refused = fake_telegram.calls("sendMessage")[0]
    assert refused.status == 400
    assert refused.description == (
        "Bad Request: can't parse entities: Character '.' is reserved and must be escaped "
        "with the preceding '\\'"
    )
    assert ok.text == "Done. All good!"


async def test_too_long_and_empty_texts_are_refused(fake_telegram: FakeTelegram) -> None:
    """Over 4096 UTF-16 units is 'message is too long'; whitespace is 'message text is empty'."""
    fake_telegram.add_chat(USER)
    async with bot(fake_telegram) as b:
        with pytest.raises(BadRequest, match="Message is too long"):
            await b.send_message(USER, "x" * 4097)
        with pytest.raises(BadRequest, match="Message is too long"):
            await b.send_message(USER, "😀" * 2049)  # 4098 UTF-16 units
        with pytest.raises(BadRequest, match="Message text is empty"):
            await b.send_message(USER, "   ")
        assert (await b.send_message(USER, "x" * 4096)).text == "x" * 4096
        with pytest.raises(BadRequest, match="Chat not found"):
            await b.send_message(999, "who?")


async def test_rendered_chunks_are_accepted(fake_telegram: FakeTelegram) -> None:
    """render_message output (text plus entities) is accepted chunk by chunk, labels included."""
    fake_telegram.add_chat(USER)
    answer = "# Result\n\n" + "\n".join(f"- item_{n}: **ok** (1.0)!" for n in range(400))
    chunks = render_message(answer, "MarkdownV2")
    assert len(chunks) > 1
    async with bot(fake_telegram) as b:
        for chunk in chunks:
            await b.send_message(USER, chunk.text, entities=chunk.entities)
    sent = fake_telegram.calls("sendMessage")
    assert all(c.ok and "parse_mode" not in c.args for c in sent)
    assert sent[0].args["entities"][0]["type"] in ("bold", "underline")


async def test_edit_that_changes_nothing_is_refused(fake_telegram: FakeTelegram) -> None:
    """editMessageText with the same text answers 'message is not modified'."""
    fake_telegram.add_chat(USER)
    async with bot(fake_telegram) as b:
        status = await b.send_message(USER, "⏳ Queued…")
        with pytest.raises(BadRequest, match="Message is not modified"):
            await b.edit_message_text("⏳ Queued…", chat_id=USER, message_id=status.message_id)
        edited = await b.edit_message_text("⚙️ Working…", chat_id=USER, message_id=status.message_id)
        assert isinstance(edited, Message)
        assert await b.delete_message(USER, status.message_id)
        with pytest.raises(BadRequest, match="Message to delete not found"):
            await b.delete_message(USER, status.message_id)
    assert fake_telegram.sent_messages(USER) == []
    assert [c.args["text"] for c in fake_telegram.calls("editMessageText")] == [
        "⏳ Queued…",
        "⚙️ Working…",
    ]


async def test_document_roundtrip(fake_telegram: FakeTelegram) -> None:
    """sendDocument uploads the bytes (multipart); getFile and the file URL give them back."""
    content = ("# Answer\n\n" + "très long " * 2000).encode()

    async def send_file(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.message is not None
        await update.message.reply_document(
            document=content, filename="answer.md", caption="The full answer"
        )

    async with polling(fake_telegram, send_file):
        pushed = fake_telegram.push_message(GROUP, "long please", user_id=USER)
        call = await fake_telegram.wait_for_call("sendDocument")
        [stored] = fake_telegram.documents(GROUP)
        async with bot(fake_telegram) as b:
            file = await b.get_file(stored.file_id)
            downloaded = await file.download_as_bytearray()

    assert call.ok and call.files["document"].filename == "answer.md"
    assert call.args["caption"] == "The full answer"
    assert call.args["reply_parameters"] == {"message_id": pushed.message_id}
    assert stored.content == content and stored.file_name == "answer.md"
    assert bytes(downloaded) == content


async def test_forum_topic_reply_stays_in_the_topic(fake_telegram: FakeTelegram) -> None:
    """A reply to a topic message carries message_thread_id; the topic start is reply_to."""
    seen: list[Message] = []

    async def record(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.message is not None
        seen.append(update.message)
        await update.message.reply_text("in topic")

    async with polling(fake_telegram, record):
        thread = fake_telegram.create_topic(GROUP, "Builds", creator_id=FAKE_BOT_ID)
        pushed = fake_telegram.push_topic_message(GROUP, thread, "@x status?", user_id=USER)
        call = await fake_telegram.wait_for_call("sendMessage")

    assert call.args["message_thread_id"] == thread
    assert call.args["reply_parameters"] == {"message_id": pushed.message_id}
    [message] = seen
    assert message.is_topic_message and message.message_thread_id == thread
    # Every message in a topic "replies" to its creation message, here sent by the bot.
    assert message.reply_to_message is not None
    assert message.reply_to_message.forum_topic_created is not None
    assert message.reply_to_message.from_user is not None
    assert message.reply_to_message.from_user.id == FAKE_BOT_ID


async def test_commands_mentions_and_replies_reach_should_handle(
    fake_telegram: FakeTelegram,
) -> None:
    """Entities built by the fake and parsed by PTB drive should_handle as Telegram's would."""
    results: dict[str, tuple[bool, str]] = {}
    all_seen = asyncio.Event()

    async def classify(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.message
        assert message is not None and message.text is not None
        reply = message.reply_to_message
        to_bot = bool(
            reply is not None
            and reply.from_user is not None
            and reply.from_user.id == context.bot.id
            and reply.forum_topic_created is None
        )
        results[message.text] = should_handle(
            message.text, message.chat.type, context.bot.username, to_bot, message.entities
        )
        if len(results) == 5:
            all_seen.set()

    fake_telegram.add_chat(GROUP)
    async with bot(fake_telegram) as b:
        mine = await b.send_message(GROUP, "an earlier answer")
    async with polling(fake_telegram, classify):
        fake_telegram.push_mention(GROUP, "fix the build 🙂", user_id=USER)
        fake_telegram.push_command(GROUP, "ask", "what now?", addressed=True, user_id=USER)
        fake_telegram.push_message(GROUP, "just chatting", user_id=USER)
        fake_telegram.push_reply(GROUP, mine.message_id, "and then?", user_id=USER)
        fake_telegram.push_command(GROUP, "start", user_id=USER)
        await asyncio.wait_for(all_seen.wait(), 5)
    assert results == {
        f"@{FAKE_BOT_USERNAME} fix the build 🙂": (True, "fix the build 🙂"),
        f"/ask@{FAKE_BOT_USERNAME} what now?": (True, "what now?"),
        "just chatting": (False, ""),
        "and then?": (True, "and then?"),
        "/start": (False, ""),
    }


async def test_outage_then_recovery_on_the_same_port(fake_telegram: FakeTelegram) -> None:
    """With the listener down polling fails; once back on the same port, updates flow again."""
    async with polling(fake_telegram, echo):
        await fake_telegram.wait_until_polling()
        port = fake_telegram.port
        await fake_telegram.stop_listening()
        assert not fake_telegram.polling and not fake_telegram.listening
        fake_telegram.push_message(USER, "anyone?")
        await fake_telegram.start_listening()
        assert fake_telegram.port == port
        reply = await fake_telegram.wait_for_call("sendMessage", timeout=15)
    assert reply.args["text"] == "echo: anyone?"


async def test_wrong_token_unknown_method_and_json_bodies(fake_telegram: FakeTelegram) -> None:
    """A wrong token is 401, an unknown method 404, and JSON bodies work like form posts."""
    with pytest.raises(InvalidToken):
        async with bot(fake_telegram, token="123:wrong-token"):
            pass
    fake_telegram.add_chat(USER)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{fake_telegram.base_url}123:nope/getMe") as response:
            assert response.status == 401
            assert await response.json() == {
                "ok": False,
                "error_code": 401,
                "description": "Unauthorized",
            }
        url = f"{fake_telegram.base_url}{fake_telegram.token}"
        async with http.post(f"{url}/frobnicate") as response:
            assert response.status == 404
            assert (await response.json())["error_code"] == 404
        payload = {
            "chat_id": USER,
            "text": "123",
            "reply_parameters": {"message_id": 999, "allow_sending_without_reply": True},
        }
        async with http.post(f"{url}/sendMessage", json=payload) as response:
            body = await response.json()
            assert body["ok"] and body["result"]["text"] == "123"
        async with http.post(f"{url}/sendMessage", data={"chat_id": str(USER), "text": "7"}) as r:
            assert (await r.json())["result"]["text"] == "7"  # a string stays a string
    sent = fake_telegram.calls("sendMessage")
    assert [c.args["text"] for c in sent] == ["123", "7"]


async def test_chat_actions_and_commands(fake_telegram: FakeTelegram) -> None:
    """sendChatAction accepts Telegram's actions only; setMyCommands stores the menu."""
    fake_telegram.add_chat(USER)
    async with bot(fake_telegram) as b:
        assert await b.send_chat_action(USER, "typing")
        with pytest.raises(BadRequest):
            await b.send_chat_action(USER, "dancing")
        assert await b.set_my_commands(list(BOT_COMMANDS))
        assert [c.command for c in await b.get_my_commands()] == [n for n, _ in BOT_COMMANDS]
        with pytest.raises(BadRequest, match="Bot_command_invalid"):
            await b.set_my_commands([("Not-Valid", "x")])
    assert fake_telegram.commands[0] == {"command": "ask", "description": BOT_COMMANDS[0][1]}


def test_markdown_v2_check_matches_telegram_rules() -> None:
    """The fake's MarkdownV2 parser refuses what Telegram refuses and unescapes the rest."""
    assert check_markdown_v2("a\\.b *bold* _it_ `x.y` [l\\!](http://e.com/a\\)b)") == (
        "a.b bold it x.y l!",
        None,
    )
    assert check_markdown_v2("```py\nprint('a.b')\n```")[1] is None
    assert check_markdown_v2("x - y")[1] == (
        "Bad Request: can't parse entities: Character '-' is reserved and must be escaped "
        "with the preceding '\\'"
    )
    assert check_markdown_v2("é *open")[1] == (
        "Bad Request: can't parse entities: Can't find end of Bold entity at byte offset 3"
    )
    assert "Pre entity" in str(check_markdown_v2("```\nno end")[1])


@pytest.mark.parametrize(
    "markdown",
    [
        "Plain. With (parens) and 1+1=2!",
        "# Title\n\n**bold** _it_ `code` ~~gone~~ [link](https://example.com/a_(b))",
        "- a.b\n- c-d\n\n1. one\n2. two",
        "> quoted > text\n\n```python\nprint('x')  # 100%\n```",
        "| a | b |\n|---|---|\n| 1.5 | -2 |",
    ],
)
def test_telegramify_markdown_v2_passes_the_check(markdown: str) -> None:
    """MarkdownV2 written by telegramify-markdown is accepted by the fake's parser."""
    assert check_markdown_v2(telegramify_markdown.markdownify(markdown))[1] is None
