"""The Telegram bridge end to end: real python-telegram-bot, fake Bot API, real hub.

Runs come from the dry-run executor (it answers with the prompt), from a FakeExecutor
the test drives frame by frame, or, in one test, from the real codex and the stub model.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from bridges.telegram import bridge as bridge_module
from bridges.telegram.bridge import State, TelegramBridge, TokenRefused
from bridges.telegram.convert import MESSAGE_LIMIT, NEW_SESSION_TEXT, utf16_len
from bridges.telegram.settings import TelegramSettings
from hub.appkeys import ROUTER, STORE
from kernel import logs
from testkit.fakes.model_server import StubModelServer
from testkit.fakes.nodes import FakeExecutor
from testkit.fakes.telegram import FAKE_BOT_USERNAME, Call, FakeTelegram, Pushed
from tests.conftest import NODE_TOKEN, outbox_drained, ws_url

USER = 4242
OTHER = 5151
GROUP = -1001234567890
FORUM = -1009876543210

Settings = Callable[..., TelegramSettings]


@pytest.fixture
def make_settings(hub: Any, fake_telegram: FakeTelegram) -> Settings:
    """Bridge settings pointing at the test hub and the fake Bot API; overrides by env name."""

    def make(**overrides: Any) -> TelegramSettings:
        values: dict[str, Any] = {
            "HUB_URL": ws_url(hub),
            "HUB_TOKEN": NODE_TOKEN,
            "TELEGRAM_BOT_TOKEN": fake_telegram.token,
            "TELEGRAM_API_BASE_URL": fake_telegram.base_url,
            "TELEGRAM_ALLOWED_USERS": "*",
            # No status message unless a test asks for one.
            "TELEGRAM_STATUS_DELAY_S": 60.0,
        }
        values.update(overrides)
        return TelegramSettings(**values)

    return make


@asynccontextmanager
async def running(settings: TelegramSettings, fake: FakeTelegram) -> AsyncIterator[TelegramBridge]:
    """A started bridge, connected to the hub and long-polling the fake."""
    async with TelegramBridge(settings) as bridge:
        async with asyncio.timeout(10):
            await bridge.link.client.connected.wait()
        await fake.wait_until_polling()
        yield bridge


@pytest.fixture
async def executor(hub: Any, fake_executor: Any) -> AsyncIterator[FakeExecutor]:
    """A FakeExecutor connected to the hub: runs progress only when the test says so."""
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex:
        yield ex


def replied_to(call: Call) -> int | None:
    """The message id a sendMessage/sendDocument call replies to."""
    params = call.args.get("reply_parameters")
    return params.get("message_id") if isinstance(params, dict) else None


async def reply(
    fake: FakeTelegram,
    pushed: Pushed,
    text: str | None = None,
    *,
    timeout: float = 10.0,
) -> Call:
    """The first accepted message that replies to ``pushed`` (with ``text`` if given)."""
    chat_id = pushed.message["chat"]["id"]
    return await fake.wait_for_call(
        "sendMessage",
        lambda c: (
            c.ok
            and c.chat_id == chat_id
            and replied_to(c) == pushed.message_id
            and (text is None or c.text == text)
        ),
        timeout=timeout,
    )


async def said(fake: FakeTelegram, chat_id: int, fragment: str, *, since: int = 0) -> Call:
    """The first accepted message to ``chat_id`` whose text contains ``fragment``."""
    return await fake.wait_for_call(
        "sendMessage",
        lambda c: c.ok and c.chat_id == chat_id and fragment in (c.text or ""),
        since=since,
    )


def answers(fake: FakeTelegram, text: str) -> list[Call]:
    """Accepted sendMessage calls carrying exactly ``text``."""
    return [c for c in fake.calls("sendMessage") if c.ok and c.text == text]


async def assign(ex: FakeExecutor, prompt: str) -> str:
    """Wait for the hub to assign the run of ``prompt``; its run id."""
    frame = await ex.wait_type("assign", prompt=prompt)
    return str(frame["run_id"])


# --- private chats and the real codex ---------------------------------------------------


@pytest.mark.codex
async def test_a_private_message_is_answered_by_codex(
    start_executor: Any,
    codex_home: Path,
    codex_bin: str,
    model_server: StubModelServer,
    fake_telegram: FakeTelegram,
    make_settings: Settings,
) -> None:
    """A private message runs the real codex; its answer comes back as a reply."""
    model_server.reply_text("The repository holds one README.")
    async with (
        start_executor(EXEC_DRY_RUN=False, CODEX_HOME=codex_home, CODEX_BIN=codex_bin),
        running(make_settings(), fake_telegram),
    ):
        pushed = fake_telegram.push_message(USER, "What is in this repository?")
        call = await reply(fake_telegram, pushed, timeout=45)
    assert call.text == "The repository holds one README."
    (request,) = model_server.requests
    assert "What is in this repository?" in request.text
    assert fake_telegram.calls("sendChatAction")[0].args["action"] == "typing"


@pytest.mark.codex
async def test_the_status_message_grows_with_the_answer_and_a_message_steers_the_turn(
    start_executor: Any,
    codex_home: Path,
    codex_bin: str,
    model_server: StubModelServer,
    fake_telegram: FakeTelegram,
    make_settings: Settings,
) -> None:
    """App-server engine: the status shows the answer so far; a message mid-run joins the turn."""
    model_server.reply_stall()
    gates = model_server.reply_paced(["Plan B: ", "done."])
    fake = fake_telegram
    settings = make_settings(TELEGRAM_STATUS_DELAY_S=0.05, TELEGRAM_STATUS_EDIT_INTERVAL_S=0.05)
    async with (
        start_executor(
            EXEC_DRY_RUN=False, CODEX_HOME=codex_home, CODEX_BIN=codex_bin, EXEC_ENGINE="app-server"
        ),
        running(settings, fake),
    ):
        first = fake.push_message(USER, "follow plan A")
        await model_server.wait_for_requests(1)
        status = await said(fake, USER, "Working")
        fake.push_message(USER, "switch to plan B")
        told = await said(fake, USER, "Added to the running turn")
        requests = await model_server.wait_for_requests(2)
        await fake.wait_for_call(
            "editMessageText", lambda c: c.ok and (c.text or "").endswith("\n\nPlan B: ")
        )
        gates[0].set()
        await reply(fake, first, "Plan B: done.", timeout=30)
    assert "switch to plan B" in requests[1].text
    assert status.text is not None and told.text is not None
    run_id = status.text.split("run ", 1)[1].split()[0]
    assert run_id in told.text
    edits = [c.text or "" for c in fake.calls("editMessageText") if c.ok]
    assert any(text.startswith("⚙️ Working") and text.endswith("Plan B: ") for text in edits)


async def test_a_fast_run_gets_typing_and_one_reply_only(
    start_executor: Any, fake_telegram: FakeTelegram, make_settings: Settings
) -> None:
    """Every private text is a request; a fast run shows typing and posts no status message."""
    # A delay no dry run on a loaded machine comes near: the run is "fast" by far.
    async with (
        start_executor(),
        running(make_settings(TELEGRAM_STATUS_DELAY_S=30.0), fake_telegram),
    ):
        pushed = fake_telegram.push_message(USER, "list the files")
        call = await reply(fake_telegram, pushed)
    assert call.text == "list the files"
    assert call.args.get("parse_mode") is None and call.args.get("entities") is None
    assert [c.args["action"] for c in fake_telegram.calls("sendChatAction")][:1] == ["typing"]
    assert fake_telegram.sent_texts(USER) == ["list the files"]


async def test_the_optimize_prefix_reaches_the_hub(
    executor: FakeExecutor, fake_telegram: FakeTelegram, make_settings: Settings
) -> None:
    """``!optimize`` and ``!raw`` set the run's optimization and are not part of the prompt."""
    async with running(make_settings(), fake_telegram):
        fake_telegram.push_message(USER, "!optimize tidy up")
        frame = await executor.wait_type("assign", prompt="tidy up")
        assert frame["optimize"] is True
        assert frame["origin"]["chat_id"] == USER and frame["origin"]["source"] == "telegram"


# --- groups -----------------------------------------------------------------------------


async def test_groups_answer_mentions_replies_and_ask_only(
    start_executor: Any, fake_telegram: FakeTelegram, make_settings: Settings
) -> None:
    """In groups only a mention, a reply to the bot or /ask is a request, and it is cleaned."""
    fake = fake_telegram
    async with start_executor(), running(make_settings(), fake):
        fake.push_message(GROUP, "just chatting among humans", user_id=USER)
        fake.push_message(GROUP, "/ask@someone_elses_bot not for us", user_id=USER)
        mention = fake.push_mention(GROUP, "with a mention", user_id=USER)
        first = await reply(fake, mention, "with a mention")
        ask = fake.push_command(GROUP, "ask", "with ask", user_id=OTHER)
        await reply(fake, ask, "with ask")
        addressed = fake.push_command(GROUP, "ask", "addressed ask", user_id=USER, addressed=True)
        await reply(fake, addressed, "addressed ask")
        answer_id = first.result["message_id"]
        to_bot = fake.push_reply(GROUP, answer_id, "as a reply", user_id=OTHER)
        await reply(fake, to_bot, "as a reply")
        bare = fake.push_mention(GROUP, "", user_id=USER)
        help_call = await reply(fake, bare)
    assert "/ask" in (help_call.text or "")
    assert sorted(fake.sent_texts(GROUP)[:-1]) == sorted(
        ["with a mention", "with ask", "addressed ask", "as a reply"]
    )


async def test_a_forum_topic_is_its_own_conversation(
    start_executor: Any, fake_telegram: FakeTelegram, make_settings: Settings
) -> None:
    """Replying only to a topic's creation does not address the bot; answers stay in the topic."""
    fake = fake_telegram
    topic = fake.create_topic(FORUM, "Deploys", creator_id=fake.bot_id)
    async with start_executor(), running(make_settings(), fake):
        fake.push_topic_message(FORUM, topic, "humans talking in the topic", user_id=USER)
        pushed = fake.push_topic_message(
            FORUM, topic, f"@{FAKE_BOT_USERNAME} deploy it", user_id=USER
        )
        call = await reply(fake, pushed, "deploy it")
    assert call.args["message_thread_id"] == topic
    assert [c.text for c in fake.calls("sendMessage")] == ["deploy it"]


# --- access -------------------------------------------------------------------------------


async def test_empty_allowlists_let_nobody_in_and_tell_the_ids(
    hub: Any, fake_telegram: FakeTelegram, make_settings: Settings
) -> None:
    """With both lists empty every request is refused with the ids an admin needs."""
    settings = make_settings(TELEGRAM_ALLOWED_USERS="", TELEGRAM_ALLOWED_CHATS="")
    async with running(settings, fake_telegram):
        private = fake_telegram.push_message(USER, "let me in")
        refusal = await reply(fake_telegram, private)
        group = fake_telegram.push_mention(GROUP, "and here?", user_id=OTHER)
        group_refusal = await reply(fake_telegram, group)
        fake_telegram.push_command(USER, "help")
        help_refusal = await said(fake_telegram, USER, "only answer", since=fake_telegram.mark())
    assert f"Your user id is {USER}" in (refusal.text or "")
    assert "TELEGRAM_ALLOWED_USERS" in (refusal.text or "")
    assert f"This chat's id is {GROUP}" in (group_refusal.text or "")
    assert f"Your user id is {OTHER}" in (group_refusal.text or "")
    assert "TELEGRAM_ALLOWED_CHATS" in (group_refusal.text or "")
    assert str(USER) in (help_refusal.text or "")
    assert hub.app[ROUTER].live == {}
    runs, _ = await hub.app[STORE].list_runs()
    assert runs == []


async def test_allowlists_open_a_chat_or_a_person(
    start_executor: Any, fake_telegram: FakeTelegram, make_settings: Settings
) -> None:
    """An allowed chat admits all its members; an allowed user is admitted anywhere."""
    fake = fake_telegram
    settings = make_settings(TELEGRAM_ALLOWED_USERS=str(USER), TELEGRAM_ALLOWED_CHATS=str(GROUP))
    async with start_executor(), running(settings, fake):
        anyone_here = fake.push_mention(GROUP, "member request", user_id=OTHER)
        await reply(fake, anyone_here, "member request")
        me_elsewhere = fake.push_mention(-1005555, "my request", user_id=USER)
        await reply(fake, me_elsewhere, "my request")
        stranger = fake.push_message(OTHER, "stranger request")
        refusal = await reply(fake, stranger)
    assert f"Your user id is {OTHER}" in (refusal.text or "")
    assert not answers(fake, "stranger request")


# --- commands -----------------------------------------------------------------------------


async def test_start_and_help_show_usage_and_ids(
    fake_telegram: FakeTelegram, make_settings: Settings
) -> None:
    """/start and /help explain the bot and show the user's and the chat's ids."""
    async with running(make_settings(), fake_telegram):
        start = fake_telegram.push_command(USER, "start")
        start_reply = await reply(fake_telegram, start)
        group_help = fake_telegram.push_command(GROUP, "help", user_id=OTHER, addressed=True)
        help_reply = await reply(fake_telegram, group_help)
    assert f"Your user id: {USER}. This chat's id: {USER}." in (start_reply.text or "")
    assert "/new" in (start_reply.text or "") and "/cancel" in (start_reply.text or "")
    assert f"Your user id: {OTHER}. This chat's id: {GROUP}." in (help_reply.text or "")
    names = [c["command"] for c in fake_telegram.commands]
    assert names == ["ask", "new", "cancel", "status", "repo", "target", "help"]


async def test_follow_ups_resume_the_thread_and_new_starts_over(
    executor: FakeExecutor, fake_telegram: FakeTelegram, make_settings: Settings
) -> None:
    """A follow-up continues codex's thread; /new makes the next run start a fresh one."""
    fake = fake_telegram
    async with running(make_settings(), fake):
        first = fake.push_message(USER, "first question")
        frame = await executor.wait_type("assign", prompt="first question")
        assert frame["thread_id"] is None
        await executor.start_run(frame["run_id"])
        await executor.finish(frame["run_id"], "first answer", thread_id="thread-1")
        await reply(fake, first, "first answer")

        second = fake.push_message(USER, "and a follow-up")
        frame = await executor.wait_type("assign", prompt="and a follow-up")
        assert frame["thread_id"] == "thread-1"
        await executor.finish(frame["run_id"], "second answer", thread_id="thread-1")
        await reply(fake, second, "second answer")

        new = fake.push_command(USER, "new")
        await reply(fake, new, NEW_SESSION_TEXT)
        fake.push_message(USER, "unrelated")
        frame = await executor.wait_type("assign", prompt="unrelated")
        assert frame["thread_id"] is None


async def test_a_topic_does_not_share_the_chats_thread(
    executor: FakeExecutor, fake_telegram: FakeTelegram, make_settings: Settings
) -> None:
    """Two forum topics are two sessions: each resumes only its own codex thread."""
    fake = fake_telegram
    one, two = fake.create_topic(FORUM, "one"), fake.create_topic(FORUM, "two")
    async with running(make_settings(), fake):
        fake.push_topic_message(FORUM, one, f"@{FAKE_BOT_USERNAME} in one", user_id=USER)
        run_id = await assign(executor, "in one")
        await executor.finish(run_id, "done one", thread_id="thread-one")
        fake.push_topic_message(FORUM, two, f"@{FAKE_BOT_USERNAME} in two", user_id=USER)
        frame = await executor.wait_type("assign", prompt="in two")
        assert frame["thread_id"] is None
        await executor.finish(frame["run_id"], "done two", thread_id="thread-two")
        fake.push_topic_message(FORUM, one, f"@{FAKE_BOT_USERNAME} again in one", user_id=USER)
        frame = await executor.wait_type("assign", prompt="again in one")
        assert frame["thread_id"] == "thread-one"


async def test_a_message_during_a_run_is_queued_with_its_position(
    executor: FakeExecutor, fake_telegram: FakeTelegram, make_settings: Settings
) -> None:
    """A second message waits behind the active run, is told so, and runs after it."""
    fake = fake_telegram
    async with running(make_settings(), fake):
        first = fake.push_message(USER, "long job")
        run_id = await assign(executor, "long job")
        await executor.start_run(run_id)
        second = fake.push_message(USER, "next job")
        notice = await reply(fake, second)
        assert "1 run ahead" in (notice.text or "")

        fake.push_command(USER, "status")
        status = await said(fake, USER, f"Run {run_id}: running")
        assert "1 more waiting" in (status.text or "")

        fake.push_command(USER, "new")
        busy = await said(fake, USER, "still working")
        assert run_id in (busy.text or "")

        await executor.finish(run_id, "long job done")
        await reply(fake, first, "long job done")
        next_id = await assign(executor, "next job")
        await executor.finish(next_id, "next job done")
        await reply(fake, second, "next job done")


async def test_cancel_stops_the_active_run(
    executor: FakeExecutor, fake_telegram: FakeTelegram, make_settings: Settings
) -> None:
    """/cancel cancels the conversation's active run; its reply then says it was cancelled."""
    fake = fake_telegram
    async with running(make_settings(), fake):
        pushed = fake.push_message(USER, "never mind this")
        run_id = await assign(executor, "never mind this")
        await executor.start_run(run_id)
        fake.push_command(USER, "cancel")
        await executor.wait_type("cancel", run_id=run_id)
        notice = await said(fake, USER, "Cancelling run")
        assert run_id in (notice.text or "")
        await executor.finish(run_id, "", status="cancelled")
        final = await reply(fake, pushed)
        assert (final.text or "").startswith("🛑 Cancelled.")
        fake.push_command(USER, "cancel")
        await said(fake, USER, "Nothing is running", since=fake.mark())


# --- while a run works --------------------------------------------------------------------


async def test_a_long_run_shows_a_status_message_then_removes_it(
    executor: FakeExecutor, fake_telegram: FakeTelegram, make_settings: Settings
) -> None:
    """Past the delay one status message shows the state and codex's command, edited in place."""
    fake = fake_telegram
    settings = make_settings(TELEGRAM_STATUS_DELAY_S=0.05, TELEGRAM_STATUS_EDIT_INTERVAL_S=0.05)
    async with running(settings, fake):
        pushed = fake.push_message(USER, "inspect the disk")
        run_id = await assign(executor, "inspect the disk")
        await executor.start_run(run_id)
        status = await said(fake, USER, f"run {run_id}")
        assert replied_to(status) == pushed.message_id
        assert status.args.get("disable_notification") is True
        await executor.event(run_id, 1, kind="codex", data={}, summary="running `df -h`")
        edit = await fake.wait_for_call(
            "editMessageText", lambda c: c.ok and "running `df -h`" in (c.text or "")
        )
        assert edit.args["message_id"] == status.result["message_id"]
        await executor.finish(run_id, "the disk is fine")
        await reply(fake, pushed, "the disk is fine")
        await fake.wait_for_call(
            "deleteMessage", lambda c: c.ok and c.args["message_id"] == status.result["message_id"]
        )
    assert [m["text"] for m in fake.sent_messages(USER)] == ["the disk is fine"]
    assert len(fake.calls("sendMessage")) == 2


async def test_the_status_delay_counts_from_when_a_run_starts_working(
    executor: FakeExecutor, fake_telegram: FakeTelegram, make_settings: Settings
) -> None:
    """A run that waited in the queue and then finishes fast gets no status message."""
    fake = fake_telegram
    settings = make_settings(TELEGRAM_STATUS_DELAY_S=1.0, TELEGRAM_STATUS_EDIT_INTERVAL_S=0.05)
    async with running(settings, fake):
        first = fake.push_message(USER, "slow one")
        run_id = await assign(executor, "slow one")
        await executor.start_run(run_id)
        second = fake.push_message(USER, "quick one")
        await reply(fake, second)  # the queue notice
        status = await said(fake, USER, f"run {run_id}")
        assert replied_to(status) == first.message_id
        await executor.finish(run_id, "slow done")
        next_id = await assign(executor, "quick one")
        await executor.start_run(next_id)
        await executor.finish(next_id, "quick done")
        await reply(fake, second, "quick done")
    assert not [c for c in fake.calls("sendMessage") if f"run {next_id}" in (c.text or "")]


async def test_typing_is_kept_alive_while_the_run_works_and_stops_after(
    executor: FakeExecutor,
    fake_telegram: FakeTelegram,
    make_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The typing action is renewed while codex works; the watcher task ends with the run."""
    monkeypatch.setattr(bridge_module, "TYPING_EVERY_S", 0.05)
    fake = fake_telegram
    async with running(make_settings(), fake) as bridge:
        pushed = fake.push_message(USER, "think hard")
        run_id = await assign(executor, "think hard")
        await executor.start_run(run_id)
        await fake.wait_for_calls("sendChatAction", 4)
        await executor.finish(run_id, "thought")
        await reply(fake, pushed, "thought")
        assert bridge._runs == {}
        names = [t.get_name() for t in asyncio.all_tasks()]
        assert not [n for n in names if n.startswith("TelegramBridge:run:")]


# --- long answers and formatting ------------------------------------------------------------


async def test_a_long_answer_is_split_into_labelled_replies(
    executor: FakeExecutor, fake_telegram: FakeTelegram, make_settings: Settings
) -> None:
    """An answer over 4,096 characters goes as (1/3)...(3/3), each a reply that fits."""
    fake = fake_telegram
    answer = "```python\n" + "\n".join(f"print({i})  # " + "x" * 60 for i in range(120)) + "\n```"
    async with running(make_settings(), fake):
        pushed = fake.push_message(USER, "print a lot")
        run_id = await assign(executor, "print a lot")
        await executor.finish(run_id, answer)
        calls = await fake.wait_for_calls(
            "sendMessage", 3, lambda c: c.ok and replied_to(c) == pushed.message_id
        )
    texts = [c.text or "" for c in calls]
    assert [t.split("\n", 1)[0] for t in texts] == ["(1/3)", "(2/3)", "(3/3)"]
    assert all(utf16_len(t) <= MESSAGE_LIMIT for t in texts)
    assert all(t.count("```") == 2 for t in texts)  # every part's code block is closed
    assert "print(0)" in texts[0] and "print(119)" in texts[2]


async def test_a_very_long_answer_goes_as_a_document(
    executor: FakeExecutor, fake_telegram: FakeTelegram, make_settings: Settings
) -> None:
    """Past the document threshold the answer is a file with a preview caption."""
    fake = fake_telegram
    answer = "Summary first.\n" + "detail line\n" * 2000
    async with running(make_settings(TELEGRAM_DOCUMENT_THRESHOLD_CHARS=10_000), fake):
        pushed = fake.push_message(USER, "write a report")
        run_id = await assign(executor, "write a report")
        await executor.finish(run_id, answer)
        call = await fake.wait_for_call("sendDocument", lambda c: c.ok)
    assert replied_to(call) == pushed.message_id
    assert (call.text or "").startswith("Summary first. detail line")
    (stored,) = fake.documents(USER)
    assert stored.content == answer.strip().encode()
    assert stored.file_name.endswith(".md")
    assert fake.calls("sendMessage") == []


async def test_markdown_is_sent_as_entities(
    executor: FakeExecutor, fake_telegram: FakeTelegram, make_settings: Settings
) -> None:
    """With TELEGRAM_PARSE_MODE the answer's Markdown arrives as entities, not markup."""
    fake = fake_telegram
    async with running(make_settings(TELEGRAM_PARSE_MODE="MarkdownV2"), fake):
        pushed = fake.push_message(USER, "format it")
        run_id = await assign(executor, "format it")
        await executor.finish(run_id, "**Done.** Run `make test` (it passes!)")
        call = await reply(fake, pushed)
    assert call.args.get("parse_mode") is None
    assert "**" not in (call.text or "") and "Done." in (call.text or "")
    kinds = {e["type"] for e in call.args["entities"]}
    assert {"bold", "code"} <= kinds


async def test_a_rejected_formatted_message_is_resent_as_plain_text(
    executor: FakeExecutor, fake_telegram: FakeTelegram, make_settings: Settings
) -> None:
    """When Telegram refuses the formatting, the same part goes again as plain Markdown text."""
    fake = fake_telegram
    async with running(make_settings(TELEGRAM_PARSE_MODE="MarkdownV2"), fake):
        pushed = fake.push_message(USER, "format it")
        run_id = await assign(executor, "format it")
        fake.fail_next(
            "sendMessage",
            status=400,
            description="Bad Request: can't parse entities: Can't find end of Bold entity",
        )
        await executor.finish(run_id, "**Done.** all good")
        call = await reply(fake, pushed, "**Done.** all good")
    assert call.args.get("entities") is None
    failed, sent = fake.calls("sendMessage")
    assert failed.status == 400 and failed.args.get("entities")
    assert sent is call
    assert fake.sent_texts(USER) == ["**Done.** all good"]


# --- delivery guarantees ----------------------------------------------------------------------


async def test_flood_control_is_waited_out(
    executor: FakeExecutor, fake_telegram: FakeTelegram, make_settings: Settings
) -> None:
    """A 429 is retried after retry_after, and the reply is posted once."""
    fake = fake_telegram
    async with running(make_settings(), fake):
        pushed = fake.push_message(USER, "busy chat")
        run_id = await assign(executor, "busy chat")
        fake.fail_next("sendMessage", status=429, retry_after=1)
        await executor.finish(run_id, "posted after the wait")
        call = await reply(fake, pushed, "posted after the wait")
    refused, accepted = fake.calls("sendMessage")
    assert refused.status == 429 and accepted is call
    assert accepted.at - refused.at >= 0.99
    assert fake.sent_texts(USER) == ["posted after the wait"]


async def test_a_failed_post_is_not_acknowledged_and_comes_again(
    hub: Any, executor: FakeExecutor, fake_telegram: FakeTelegram, make_settings: Settings
) -> None:
    """Telegram failing (502) leaves the reply in the hub's outbox; the re-sent one is posted."""
    fake = fake_telegram
    async with running(make_settings(), fake):
        pushed = fake.push_message(USER, "flaky telegram")
        run_id = await assign(executor, "flaky telegram")
        fake.fail_next("sendMessage", status=502)
        await executor.finish(run_id, "made it")
        await reply(fake, pushed, "made it")
        fake.push_command(USER, "status")
        await said(fake, USER, "Nothing is running")
    statuses = [c.status for c in fake.calls("sendMessage") if replied_to(c) == pushed.message_id]
    assert statuses[:2] == [502, 200]
    assert len(answers(fake, "made it")) == 1
    await outbox_drained(hub.app[STORE])


async def test_a_reply_telegram_refuses_for_good_is_dropped(
    hub: Any, executor: FakeExecutor, fake_telegram: FakeTelegram, make_settings: Settings
) -> None:
    """A blocked bot (403) cannot post: the reply is acknowledged, not re-sent forever."""
    fake = fake_telegram
    async with running(make_settings(), fake):
        pushed = fake.push_message(USER, "then block the bot")
        run_id = await assign(executor, "then block the bot")
        fake.fail_next("sendMessage", status=403)
        await executor.finish(run_id, "nobody will read this")
        refused = await fake.wait_for_call("sendMessage", lambda c: c.status == 403)
        assert replied_to(refused) == pushed.message_id
        fake.push_command(USER, "status")
        await said(fake, USER, "Nothing is running")
    await outbox_drained(hub.app[STORE])
    assert answers(fake, "nobody will read this") == []


async def test_a_reply_survives_a_telegram_outage(
    hub: Any, executor: FakeExecutor, fake_telegram: FakeTelegram, make_settings: Settings
) -> None:
    """A run that ends while Telegram is down is posted once Telegram is back, exactly once."""
    fake = fake_telegram
    async with running(make_settings(), fake):
        pushed = fake.push_message(USER, "during the outage")
        run_id = await assign(executor, "during the outage")
        await fake.stop_listening()
        await executor.finish(run_id, "after the outage")
        await executor.wait_type("result_ack", run_id=run_id)
        await fake.start_listening()
        await reply(fake, pushed, "after the outage")
        fake.push_command(USER, "status")
        await said(fake, USER, "Nothing is running", since=fake.mark())
    assert len(answers(fake, "after the outage")) == 1
    await outbox_drained(hub.app[STORE])


async def test_a_partly_posted_reply_is_completed_without_repeats(
    hub: Any, executor: FakeExecutor, fake_telegram: FakeTelegram, make_settings: Settings
) -> None:
    """Part 2 of 3 failing: the re-sent reply posts parts 2 and 3, never part 1 again."""
    fake = fake_telegram
    answer = "\n".join(f"line {i:04d} " + "y" * 60 for i in range(130))
    async with running(make_settings(), fake):
        pushed = fake.push_message(USER, "three parts")
        run_id = await assign(executor, "three parts")
        fake.fail_next(
            "sendMessage", status=500, match=lambda args: args.get("text", "").startswith("(2/3)")
        )
        await executor.finish(run_id, answer)
        await fake.wait_for_call(
            "sendMessage", lambda c: c.ok and (c.text or "").startswith("(3/3)")
        )
        fake.push_command(USER, "status")
        await said(fake, USER, "Nothing is running", since=fake.mark())
    parts = [c for c in fake.calls("sendMessage") if c.ok and replied_to(c) == pushed.message_id]
    assert [(c.text or "")[:5] for c in parts] == ["(1/3)", "(2/3)", "(3/3)"]
    failed = [c for c in fake.calls("sendMessage") if c.status == 500]
    assert len(failed) == 1 and (failed[0].text or "").startswith("(2/3)")
    await outbox_drained(hub.app[STORE])


async def test_a_restarted_bridge_replies_exactly_once_for_a_run_in_flight(
    hub: Any, executor: FakeExecutor, fake_telegram: FakeTelegram, make_settings: Settings
) -> None:
    """Bridge stopped mid-run, run finished, new bridge started: one reply, from the origin."""
    fake = fake_telegram
    settings = make_settings()
    async with running(settings, fake):
        pushed = fake.push_message(USER, "survive a restart")
        run_id = await assign(executor, "survive a restart")
        await executor.start_run(run_id)
    await executor.finish(run_id, "answer after the restart")
    await executor.wait_type("result_ack", run_id=run_id)
    async with running(settings, fake):
        call = await reply(fake, pushed, "answer after the restart")
        fake.push_command(USER, "status")
        await said(fake, USER, "Nothing is running", since=fake.mark())
    assert answers(fake, "answer after the restart") == [call]
    assert len(executor.of_type("assign")) == 1  # the message itself was not taken twice
    await outbox_drained(hub.app[STORE])


async def a_run_with_a_status_message(
    hub: Any, executor: FakeExecutor, fake: FakeTelegram, bridge: TelegramBridge, prompt: str
) -> tuple[Pushed, str, Call]:
    """A running run whose status message is posted and known to the hub.

    Returns the user's message, the run id and the status message's sendMessage call.
    """
    told: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
    tell = bridge.status_posted

    def spy(run_id: str, message_id: int) -> None:
        tell(run_id, message_id)
        told.put_nowait((run_id, message_id))

    bridge.status_posted = spy  # type: ignore[method-assign]
    pushed = fake.push_message(USER, prompt)
    run_id = await assign(executor, prompt)
    await executor.start_run(run_id)
    status = await said(fake, USER, f"run {run_id}")
    async with asyncio.timeout(10):
        assert await told.get() == (run_id, status.result["message_id"])
    # The hub applies a bridge's frames in order: once this is answered, the ref is in.
    await bridge.link.session_status("telegram:sync")
    assert hub.app[ROUTER].live[run_id].run.origin["status_ref"] == str(status.result["message_id"])
    return pushed, run_id, status


async def test_a_restarted_bridge_edits_and_removes_the_status_message_of_before(
    hub: Any, executor: FakeExecutor, fake_telegram: FakeTelegram, make_settings: Settings
) -> None:
    """Restarted mid-run: the old status message is edited, then removed; no second one."""
    fake = fake_telegram
    settings = make_settings(TELEGRAM_STATUS_DELAY_S=0.05, TELEGRAM_STATUS_EDIT_INTERVAL_S=0.05)
    async with running(settings, fake) as bridge:
        pushed, run_id, status = await a_run_with_a_status_message(
            hub, executor, fake, bridge, "survive with a status"
        )
    status_id = status.result["message_id"]
    mark = fake.mark()
    async with running(settings, fake):
        await executor.event(run_id, 1, kind="codex", data={}, summary="running `du -sh`")
        edit = await fake.wait_for_call(
            "editMessageText", lambda c: c.ok and "du -sh" in (c.text or ""), since=mark
        )
        assert edit.args["message_id"] == status_id
        await executor.finish(run_id, "answer after the restart")
        call = await reply(fake, pushed, "answer after the restart")
        await fake.wait_for_call(
            "deleteMessage", lambda c: c.ok and c.args["message_id"] == status_id
        )
        fake.push_command(USER, "status")
        await said(fake, USER, "Nothing is running", since=fake.mark())
    assert [c for c in fake.calls("sendMessage") if f"run {run_id}" in (c.text or "")] == [status]
    assert answers(fake, "answer after the restart") == [call]
    with pytest.raises(KeyError):
        fake.message(USER, status_id)
    await outbox_drained(hub.app[STORE])


@pytest.mark.parametrize("delete_fails", [False, True], ids=["deleted", "delete-refused"])
async def test_a_restarted_bridge_removes_the_status_message_of_a_run_ended_meanwhile(
    hub: Any,
    executor: FakeExecutor,
    fake_telegram: FakeTelegram,
    make_settings: Settings,
    delete_fails: bool,
) -> None:
    """The run ended while the bridge was down: the reply names the old status message.

    It is removed after the reply is posted, like a bridge that never restarted does;
    Telegram refusing that (message too old, already gone) costs nothing but the removal.
    """
    fake = fake_telegram
    settings = make_settings(TELEGRAM_STATUS_DELAY_S=0.05, TELEGRAM_STATUS_EDIT_INTERVAL_S=0.05)
    async with running(settings, fake) as bridge:
        pushed, run_id, status = await a_run_with_a_status_message(
            hub, executor, fake, bridge, "end while I am away"
        )
    status_id = status.result["message_id"]
    await executor.finish(run_id, "ended while away")
    await executor.wait_type("result_ack", run_id=run_id)
    if delete_fails:
        fake.fail_next(
            "deleteMessage", status=400, description="Bad Request: message can't be deleted"
        )
    async with running(settings, fake):
        call = await reply(fake, pushed, "ended while away")
        await fake.wait_for_call("deleteMessage", lambda c: c.args["message_id"] == status_id)
        fake.push_command(USER, "status")
        await said(fake, USER, "Nothing is running", since=fake.mark())
    assert answers(fake, "ended while away") == [call]
    assert [c for c in fake.calls("sendMessage") if f"run {run_id}" in (c.text or "")] == [status]
    assert len(fake.calls("deleteMessage")) == 1
    if delete_fails:
        assert fake.message(USER, status_id)["text"] == status.text
    else:
        with pytest.raises(KeyError):
            fake.message(USER, status_id)
    await outbox_drained(hub.app[STORE])


# --- lifecycle and hygiene ---------------------------------------------------------------------


async def test_telegram_down_at_start_is_retried_in_the_background(
    start_executor: Any, fake_telegram: FakeTelegram, make_settings: Settings
) -> None:
    """The bridge starts while Telegram is unreachable and serves once it is back."""
    fake = fake_telegram
    await fake.stop_listening()
    async with start_executor(), TelegramBridge(make_settings()) as bridge:
        assert bridge.state is State.STARTING
        await fake.start_listening()
        await fake.wait_until_polling(timeout=15)
        pushed = fake.push_message(USER, "hello again")
        await reply(fake, pushed, "hello again")
        assert bridge.state is State.RUNNING
    assert bridge.state is State.CLOSED


async def test_a_refused_token_stops_the_start(
    fake_telegram: FakeTelegram, make_settings: Settings
) -> None:
    """Telegram refusing the token is an error at start that does not quote the token."""
    token = "123456:WrongButWellFormedToken"
    bridge = TelegramBridge(make_settings(TELEGRAM_BOT_TOKEN=token))
    with pytest.raises(TokenRefused) as caught:
        await bridge.start()
    assert "WrongButWellFormedToken" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert bridge.state is State.CLOSED
    await bridge.close()
    assert fake_telegram.calls("getUpdates") == []


@pytest.fixture
def debug_log() -> Iterator[io.StringIO]:
    """Everything logged at DEBUG, through the project's handler; logging restored after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    factory = logging.getLogRecordFactory()
    chatty = {name: logging.getLogger(name).level for name in ("httpx", "httpcore")}
    out = io.StringIO()
    logs.configure_logging("DEBUG", "text", stream=out)
    yield out
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    logging.setLogRecordFactory(factory)
    for name, value in chatty.items():
        logging.getLogger(name).setLevel(value)
    logs.forget_secrets()


async def test_the_bot_token_never_reaches_the_logs(
    debug_log: io.StringIO,
    start_executor: Any,
    fake_telegram: FakeTelegram,
    make_settings: Settings,
) -> None:
    """Even at DEBUG, with PTB logging every call, the token is masked; run ids are bound."""
    async with start_executor(), running(make_settings(), fake_telegram):
        pushed = fake_telegram.push_message(USER, "log this")
        await reply(fake_telegram, pushed, "log this")
    text = debug_log.getvalue()
    secret = fake_telegram.token.split(":", 1)[1]
    assert "getUpdates" in text  # the calls were logged
    assert secret not in text and fake_telegram.token not in text
    assert "replied in chat" in text and "run_id=run_" in text


async def test_python_dash_m_is_the_cli() -> None:
    """``python -m bridges.telegram`` is ``codex-hub bridge telegram``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridges.telegram",
        "--help",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    assert "codex-hub bridge" in out.decode()


async def test_a_message_delivered_twice_starts_one_run(
    make_settings: Settings, fake_telegram: FakeTelegram, executor: FakeExecutor
) -> None:
    """An update Telegram sends again (never confirmed by a crashed bridge) runs once."""
    async with running(make_settings(), fake_telegram):
        pushed = fake_telegram.push_message(USER, "do it once", user_id=USER)
        first = await executor.wait_type("assign")
        fake_telegram.push_update({"message": pushed.message})
        # Another chat (another session): its run is assigned once both updates were read.
        marker = fake_telegram.push_message(OTHER, "marker", user_id=OTHER)
        await executor.wait_type("assign", prompt="marker")
        assert [a["prompt"] for a in executor.of_type("assign")].count("do it once") == 1
        await executor.finish(first["run_id"], "done once")
        await fake_telegram.wait_for_call(
            "sendMessage", lambda c: c.text == "done once" and replied_to(c) == pushed.message_id
        )
        answers = [c for c in fake_telegram.calls("sendMessage") if c.text == "done once"]
        assert len(answers) == 1
        assert marker.message_id == 1  # ids count per chat: the dedupe key names the chat too


async def test_repo_sets_the_chats_repository_for_its_runs_and_status_shows_it(
    executor: FakeExecutor, fake_telegram: FakeTelegram, make_settings: Settings
) -> None:
    """/repo owner/name makes the chat's next runs name that repository; /status shows
    it; BRIDGE_REPOS gives another chat its default."""
    fake = fake_telegram
    async with running(make_settings(BRIDGE_REPOS=f"{OTHER}=acme/preset"), fake):
        fake.push_command(USER, "repo", "acme/widgets@dev")
        await said(fake, USER, "work on acme/widgets@dev")
        fake.push_message(USER, "fix the tests")
        frame = await executor.wait_type("assign", prompt="fix the tests")
        assert frame["repo"] == "acme/widgets@dev"
        assert frame["origin"]["repo"] == "acme/widgets@dev"
        await executor.finish(str(frame["run_id"]), "fixed")
        await said(fake, USER, "fixed")
        fake.push_command(USER, "status")
        await said(fake, USER, "Repository: acme/widgets@dev")
        fake.push_message(OTHER, "other chat")
        other = await executor.wait_type("assign", prompt="other chat")
        assert other["repo"] == "acme/preset"


async def test_a_run_that_changed_a_repository_attaches_its_diff(
    executor: FakeExecutor, fake_telegram: FakeTelegram, make_settings: Settings
) -> None:
    """The conversation's diff from the run's workspace event follows the answer as a
    .diff document."""
    fake = fake_telegram
    diff = "diff --git a/a.txt b/a.txt\n+new line\n"
    async with running(make_settings(), fake):
        fake.push_message(USER, "change it")
        run_id = await assign(executor, "change it")
        await executor.event(run_id, 1, kind="workspace", summary="1 file", diff=diff)
        await executor.finish(run_id, "changed")
        await said(fake, USER, "changed")
        await fake.wait_for_call("sendDocument", lambda c: c.ok)
    (stored,) = fake.documents(USER)
    assert stored.content == diff.encode() and stored.file_name == f"{run_id}.diff"


async def test_the_open_pr_button_under_changes_sends_a_pr_follow_up_and_says_who_pressed_it(
    executor: FakeExecutor, fake_telegram: FakeTelegram, make_settings: Settings
) -> None:
    """An answer whose conversation changed its repository carries an "Open PR" button;
    a press by an allowed user runs ``!pr`` in the same conversation, replies with the
    pull request link and turns the button into who pressed it."""
    fake = fake_telegram
    diff = "diff --git a/a.txt b/a.txt\n+new line\n"
    async with running(make_settings(), fake):
        fake.push_message(USER, "change it")
        run_id = await assign(executor, "change it")
        await executor.event(run_id, 1, kind="workspace", summary="1 file", diff=diff)
        await executor.finish(run_id, "changed")
        offer = await fake.wait_for_call(
            "sendMessage", lambda c: c.ok and "reply_markup" in c.args and c.chat_id == USER
        )
        (row,) = offer.args["reply_markup"]["inline_keyboard"]
        assert row[0]["text"] == "Open PR"
        button_id = offer.result["message_id"]
        fake.push_callback_query(USER, button_id, row[0]["callback_data"], user_id=USER)
        follow = await executor.wait_type("assign", prompt="!pr")
        assert (
            follow["session_key"]
            == (await executor.wait_type("assign", prompt="change it"))["session_key"]
        )
        await fake.wait_for_call("answerCallbackQuery", lambda c: c.ok)
        await fake.wait_for_call(
            "editMessageText", lambda c: c.ok and "requested by" in (c.text or "")
        )
        await executor.event(
            follow["run_id"], 1, kind="workspace", diff=diff, pr_url="https://forge/pr/1"
        )
        await executor.finish(follow["run_id"], "Pull request: https://forge/pr/1")
        await said(fake, USER, "https://forge/pr/1")
    edited = fake.message(USER, button_id)
    assert edited["text"] == f"Pull request requested by @user{USER}."
    assert "reply_markup" not in edited
    # The answer that opened the PR offers no second button.
    assert len([c for c in fake.calls("sendMessage") if "reply_markup" in c.args]) == 1


async def test_the_open_pr_button_refuses_someone_not_allowed_in_the_chat(
    executor: FakeExecutor, fake_telegram: FakeTelegram, make_settings: Settings
) -> None:
    """A press of the "Open PR" button by a user outside the allowlists starts no run and
    is answered with a refusal naming their id."""
    fake = fake_telegram
    diff = "diff --git a/a.txt b/a.txt\n+new line\n"
    fake.add_chat(GROUP, "supergroup")
    async with running(make_settings(TELEGRAM_ALLOWED_USERS=str(USER)), fake):
        fake.push_mention(GROUP, "change it", user_id=USER)
        run_id = await assign(executor, "change it")
        await executor.event(run_id, 1, kind="workspace", summary="1 file", diff=diff)
        await executor.finish(run_id, "changed")
        offer = await fake.wait_for_call("sendMessage", lambda c: c.ok and "reply_markup" in c.args)
        data = offer.args["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
        fake.push_callback_query(GROUP, offer.result["message_id"], data, user_id=OTHER)
        refused = await fake.wait_for_call("answerCallbackQuery", lambda c: c.ok)
    assert str(OTHER) in refused.args["text"] and refused.args["show_alert"] is True
    assert not [f for f in executor.frames if f.get("prompt") == "!pr"]
    assert "reply_markup" in fake.message(GROUP, offer.result["message_id"])


# --- attachments -------------------------------------------------------------------------

PNG_BYTES = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


async def test_a_photo_reaches_the_executor_as_an_image_with_its_caption_as_prompt(
    executor: FakeExecutor, fake_telegram: FakeTelegram, make_settings: Settings
) -> None:
    """A photo sent in a private chat is downloaded through getFile and the file path
    and reaches the executor as an image in the assign frame, its caption the prompt."""
    fake = fake_telegram
    async with running(make_settings(), fake):
        fake.push_photo(USER, PNG_BYTES, caption="what is in this picture?")
        frame = await executor.wait_type("assign", prompt="what is in this picture?")
    assert frame["options"]["images"] == [
        {"mime": "image/jpeg", "data": base64.b64encode(PNG_BYTES).decode()}
    ]
    assert "files" not in frame["options"]


async def test_a_document_reaches_the_executor_as_a_file_and_alone_gets_a_prompt(
    executor: FakeExecutor, fake_telegram: FakeTelegram, make_settings: Settings
) -> None:
    """A text document sent without a caption becomes a file of the run, named as sent,
    with a prompt asking to look at it."""
    fake = fake_telegram
    async with running(make_settings(), fake):
        fake.push_document(USER, b"a,b\n1,2\n", "data.csv", "text/csv")
        frame = await executor.wait_type("assign", prompt="Look at the attached file.")
    assert frame["options"]["files"] == [
        {"name": "data.csv", "data": base64.b64encode(b"a,b\n1,2\n").decode()}
    ]


@pytest.mark.parametrize(
    ("content", "mime", "expected"),
    [
        (b"x" * 101, "text/plain", "over the limit of 100 bytes"),
        (b"MZ", "application/x-msdownload", "files of type application/x-msdownload"),
    ],
)
async def test_a_file_over_the_limits_is_refused_with_a_reply_and_starts_no_run(
    executor: FakeExecutor,
    fake_telegram: FakeTelegram,
    make_settings: Settings,
    content: bytes,
    mime: str,
    expected: str,
) -> None:
    """A document larger than BRIDGE_ATTACHMENT_MAX_BYTES, or of a type outside
    BRIDGE_ATTACHMENT_TYPES, is answered with why, and no run starts."""
    fake = fake_telegram
    settings = make_settings(BRIDGE_ATTACHMENT_MAX_BYTES=100)
    async with running(settings, fake):
        pushed = fake.push_document(USER, content, "thing.bin", mime, caption="use it")
        refusal = await reply(fake, pushed)
    assert "thing.bin was not used" in (refusal.text or "") and expected in (refusal.text or "")
    assert not [f for f in executor.frames if f.get("type") == "assign"]


# A 1x1 PNG: codex reads the image's bytes, whatever the name says.
PIXEL = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


@pytest.mark.codex
async def test_a_photo_reaches_the_model_as_an_image_through_codex(
    start_executor: Any,
    codex_home: Path,
    codex_bin: str,
    model_server: StubModelServer,
    fake_telegram: FakeTelegram,
    make_settings: Settings,
) -> None:
    """A photo sent to the bot reaches the model, through the real codex, as an image
    next to its caption."""
    model_server.reply_text("a single pixel")
    async with (
        start_executor(EXEC_DRY_RUN=False, CODEX_HOME=codex_home, CODEX_BIN=codex_bin),
        running(make_settings(), fake_telegram),
    ):
        pushed = fake_telegram.push_photo(USER, PIXEL, caption="what is in this picture?")
        call = await reply(fake_telegram, pushed, timeout=45)
    assert call.text == "a single pixel"
    (request,) = model_server.requests
    parts = [
        part
        for item in request.body["input"]
        if isinstance(item.get("content"), list)
        for part in item["content"]
    ]
    assert any(p.get("type") == "input_image" for p in parts)
    assert "what is in this picture?" in request.text


async def test_a_document_lands_in_the_runs_workdir_and_the_prompt_names_its_path(
    start_executor: Any, fake_telegram: FakeTelegram, make_settings: Settings, tmp_path: Path
) -> None:
    """A document sent to the bot is written by the executor under attachments/ in the
    run's working directory, and the prompt codex gets names that path."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    async with start_executor(EXEC_WORKDIR=workdir), running(make_settings(), fake_telegram):
        pushed = fake_telegram.push_document(
            USER, b"a,b\n1,2\n", "my data.csv", "text/csv", caption="sum it"
        )
        call = await reply(fake_telegram, pushed)
    assert (call.text or "").startswith("sum it")
    assert "- attachments/my_data.csv" in (call.text or "")
    assert (workdir / "attachments" / "my_data.csv").read_bytes() == b"a,b\n1,2\n"
