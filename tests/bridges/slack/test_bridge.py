"""The Slack bridge end to end: the real slack-bolt on the fake Slack, a real hub, executors.

`start_executor` is a real dry-run executor (it answers with the prompt);
`fake_executor` is one the test drives frame by frame, for runs that must stay running,
report commands, fail, or hand back a codex thread id.
"""

from __future__ import annotations

import base64
import itertools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from bridges.slack.bridge import SlackBridge, SlackRefused
from bridges.slack.convert import MESSAGE_LIMIT, OPEN_PR_ACTION, REPLY_EVENT_TYPE
from bridges.slack.settings import SlackSettings
from hub.app import HubServer
from hub.appkeys import STORE
from testkit.fakes.slack import APP_TOKEN, BOT_TOKEN, FakeSlack, SlackMessage
from tests.conftest import NODE_TOKEN, ws_url

CHANNEL = "C0DEV"


def answers(fake: FakeSlack, channel: str, thread_ts: str) -> list[SlackMessage]:
    """The bot's answer parts in a thread (the status message and notices left out)."""
    return [
        m
        for m in fake.posted(channel, thread_ts)
        if (m.metadata or {}).get("event_type") == REPLY_EVENT_TYPE or m.files
    ]


def is_answer(args: dict[str, Any]) -> bool:
    """True for the arguments of a `chat.postMessage` that posts (part of) an answer."""
    return (args.get("metadata") or {}).get("event_type") == REPLY_EVENT_TYPE


async def status_message(fake: FakeSlack, channel: str, thread_ts: str) -> SlackMessage:
    """The run's status message: the bot's first post in the thread (waited for)."""
    return await fake.wait_for_post(channel, thread_ts)


async def wait_reactions(fake: FakeSlack, channel: str, ts: str, *names: str) -> None:
    """Wait until the bot's reactions on a message are exactly `names`."""
    await fake.wait_until(
        lambda: fake.reactions(channel, ts) == list(names), what=f"reactions {names} on {ts}"
    )


async def prompts_of_runs(hub: Any) -> list[str]:
    """The prompts of every run the hub has, oldest first."""
    runs, _ = await hub.app[STORE].list_runs(limit=100)
    return [run.prompt for run in reversed(runs)]


# ------------------------------------------------------------------ requests and answers


async def test_mention_is_answered_in_its_thread(
    fake_slack: FakeSlack, start_executor: Any, start_slack_bridge: Any, hub: Any
) -> None:
    """A mention runs without the mention; the answer lands in its thread, then a check mark."""
    # The status waits one interval: 30 s, which no dry run on a loaded machine nears.
    async with start_executor(), start_slack_bridge(SLACK_STATUS_EDIT_INTERVAL_S=30.0):
        event = fake_slack.mention("list the files", channel=CHANNEL)
        await fake_slack.send_event(event)
        answer = await fake_slack.wait_for_post(
            CHANNEL, event["ts"], lambda m: m.text == "list the files"
        )
        await wait_reactions(fake_slack, CHANNEL, event["ts"], "white_check_mark")

    [run] = (await hub.app[STORE].list_runs())[0]
    assert run.prompt == "list the files" and run.state == "succeeded"
    assert run.session_key == f"slack:{fake_slack.team_id}:{CHANNEL}:{event['ts']}"
    assert run.origin["ts"] == event["ts"] and run.origin["thread_ts"] == event["ts"]
    # A run this quick needs no status message: the thread holds just the answer.
    assert fake_slack.posted(CHANNEL, event["ts"]) == [answer]
    assert answer.metadata == {
        "event_type": REPLY_EVENT_TYPE,
        "event_payload": {"run_id": run.id, "part": 1, "parts": 1},
    }
    first, *last = [(c.method, c.args["name"]) for c in fake_slack.calls() if "name" in c.args]
    assert first == ("reactions.add", "eyes")
    assert sorted(last) == [("reactions.add", "white_check_mark"), ("reactions.remove", "eyes")]
    # Its own run's thread is never read: no status message of an earlier process to find.
    assert fake_slack.calls("conversations.replies") == []


async def test_a_direct_message_is_answered_and_the_bots_echo_starts_nothing(
    fake_slack: FakeSlack, start_executor: Any, start_slack_bridge: Any, hub: Any
) -> None:
    """A DM needs no mention; Slack's echo of the bot's own posts never becomes a run."""
    fake_slack.echo_bot_messages = True
    async with start_executor(), start_slack_bridge():
        for text in ("what changed today", "and yesterday"):
            dm = fake_slack.dm(text, channel="D0ALICE")
            await fake_slack.send_event(dm)
            await fake_slack.wait_for_post("D0ALICE", dm["ts"], lambda m, t=text: m.text == t)
            await wait_reactions(fake_slack, "D0ALICE", dm["ts"], "white_check_mark")

    assert await prompts_of_runs(hub) == ["what changed today", "and yesterday"]
    echoes = [e for e in fake_slack.envelopes.values() if e.event.get("bot_id")]
    assert len(echoes) >= 2


async def test_edits_joins_other_bots_and_plain_channel_messages_start_nothing(
    fake_slack: FakeSlack, start_executor: Any, start_slack_bridge: Any, hub: Any
) -> None:
    """Only a person's mention or DM is a request: edits, joins and bot posts are not."""
    async with start_executor(), start_slack_bridge():
        original = fake_slack.dm("first", channel="D0BOB", user="U0BOB")
        for event in (
            fake_slack.message_changed("D0BOB", original["ts"], "edited", user="U0BOB"),
            fake_slack.bot_message("beep <@UBOT>"),
            fake_slack.channel_join("U0CAROL"),
            fake_slack.message("chatting without a mention", channel=CHANNEL),
        ):
            await fake_slack.send_event(event)
        marker = fake_slack.dm("marker", channel="D0BOB", user="U0BOB")
        await fake_slack.send_event(marker)
        await fake_slack.wait_for_post("D0BOB", marker["ts"], lambda m: m.text == "marker")

    assert await prompts_of_runs(hub) == ["marker"]


async def test_a_redelivered_event_starts_no_second_run(
    fake_slack: FakeSlack, start_executor: Any, start_slack_bridge: Any, hub: Any
) -> None:
    """Slack's retry of an event (same event_id, new envelope) is not run again."""
    async with start_executor(), start_slack_bridge():
        event = fake_slack.mention("only once", channel=CHANNEL)
        first = await fake_slack.send_event(event, event_id="Ev0DUPLICATE")
        await fake_slack.wait_for_post(CHANNEL, event["ts"], lambda m: m.text == "only once")
        await fake_slack.redeliver(first)
        await fake_slack.redeliver(first, reason="http_error")
        marker = fake_slack.mention("marker", channel=CHANNEL)
        await fake_slack.send_event(marker)
        await fake_slack.wait_for_post(CHANNEL, marker["ts"], lambda m: m.text == "marker")

    assert await prompts_of_runs(hub) == ["only once", "marker"]
    assert len(answers(fake_slack, CHANNEL, event["ts"])) == 1


async def test_the_optimize_prefix_and_the_origin_reach_the_executor(
    fake_slack: FakeSlack, fake_executor: Any, start_slack_bridge: Any, hub: Any
) -> None:
    """`!raw` turns optimization off for one request; the origin names everything a reply needs."""
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex, start_slack_bridge():
        event = fake_slack.mention("!raw check the disk", channel=CHANNEL, user="U0DAVE")
        await fake_slack.send_event(event)
        assign = await ex.wait_type("assign")

    assert assign["prompt"] == "check the disk" and assign["optimize"] is False
    assert assign["thread_id"] is None
    assert assign["origin"] == {
        "team": fake_slack.team_id,
        "channel": CHANNEL,
        "thread_ts": event["ts"],
        "ts": event["ts"],
        "user": "U0DAVE",
        "source": "slack",
        "platform": "slack",
    }


async def test_an_empty_mention_gets_the_help_text(
    fake_slack: FakeSlack, start_slack_bridge: Any, hub: Any
) -> None:
    """A mention with nothing to do is answered with how to use the bot, and runs nothing."""
    async with start_slack_bridge():
        event = fake_slack.mention("  ", channel=CHANNEL)
        await fake_slack.send_event(event)
        reply = await fake_slack.wait_for_post(CHANNEL, event["ts"])

    assert "cancel" in reply.text and "!raw" in reply.text
    assert await prompts_of_runs(hub) == []


# ------------------------------------------------------------------ access


async def test_an_empty_user_list_refuses_and_names_the_user_id(
    fake_slack: FakeSlack, start_slack_bridge: Any, hub: Any
) -> None:
    """With SLACK_ALLOWED_USERS empty nobody gets in; the reply gives the id and the setting."""
    async with start_slack_bridge(SLACK_ALLOWED_USERS=""):
        event = fake_slack.mention("deploy prod", channel=CHANNEL, user="U0MALLORY")
        await fake_slack.send_event(event)
        reply = await fake_slack.wait_for_post(CHANNEL, event["ts"])
        dm = fake_slack.dm("deploy prod", channel="D0MALLORY", user="U0MALLORY")
        await fake_slack.send_event(dm)
        dm_reply = await fake_slack.wait_for_post("D0MALLORY", dm["ts"])

    for text in (reply.text, dm_reply.text):
        assert "U0MALLORY" in text and "SLACK_ALLOWED_USERS" in text
    assert await prompts_of_runs(hub) == []
    assert fake_slack.calls("reactions.add") == []


async def test_a_channel_must_be_listed_but_a_dm_needs_only_the_user(
    fake_slack: FakeSlack, start_executor: Any, start_slack_bridge: Any, hub: Any
) -> None:
    """A listed user in an unlisted channel is refused with the channel id; their DM runs."""
    async with (
        start_executor(),
        start_slack_bridge(SLACK_ALLOWED_USERS="U0ALICE", SLACK_ALLOWED_CHANNELS=""),
    ):
        event = fake_slack.mention("in the channel", channel="C0RANDOM")
        await fake_slack.send_event(event)
        refusal = await fake_slack.wait_for_post("C0RANDOM", event["ts"])
        dm = fake_slack.dm("in private", channel="D0ALICE")
        await fake_slack.send_event(dm)
        await fake_slack.wait_for_post("D0ALICE", dm["ts"], lambda m: m.text == "in private")

    assert "C0RANDOM" in refusal.text and "SLACK_ALLOWED_CHANNELS" in refusal.text
    assert await prompts_of_runs(hub) == ["in private"]


async def test_a_star_lets_everyone_in(
    fake_slack: FakeSlack, start_executor: Any, start_slack_bridge: Any
) -> None:
    """`*` in both lists lets any user in any channel run work."""
    async with (
        start_executor(),
        start_slack_bridge(SLACK_ALLOWED_USERS="*", SLACK_ALLOWED_CHANNELS="*"),
    ):
        event = fake_slack.mention("hello", channel="C0ANY", user="U0ANYONE")
        await fake_slack.send_event(event)
        await fake_slack.wait_for_post("C0ANY", event["ts"], lambda m: m.text == "hello")


# ------------------------------------------------------------------ while a run works


async def test_the_status_message_shows_the_command_at_most_once_per_interval(
    fake_slack: FakeSlack, fake_executor: Any, start_slack_bridge: Any, hub: Any
) -> None:
    """Progress edits the one status message with the command, never faster than the interval."""
    interval = 1.0  # long enough that no stall of a loaded machine splits the burst

    async def command(seq: int, cmd: str) -> None:
        data = {"type": "item.started", "item": {"type": "command_execution"}}
        await ex.event(run_id, seq, kind="codex", data=data, summary=f"running `{cmd}`")

    async with (
        fake_executor(ws_url(hub), token=NODE_TOKEN) as ex,
        start_slack_bridge(SLACK_STATUS_EDIT_INTERVAL_S=interval),
    ):
        event = fake_slack.mention("run the tests", channel=CHANNEL)
        await fake_slack.send_event(event)
        run_id = (await ex.wait_type("assign"))["run_id"]
        status = await status_message(fake_slack, CHANNEL, event["ts"])
        await ex.start_run(run_id)
        await command(1, "git status")
        await fake_slack.wait_until(lambda: "git status" in status.text, what="the first command")
        await command(2, "ls -la")
        await command(3, "make test")
        await fake_slack.wait_until(lambda: "make test" in status.text, what="the last command")
        await ex.finish(run_id, "all green")
        await fake_slack.wait_for_post(CHANNEL, event["ts"], lambda m: m.text == "all green")
        await fake_slack.wait_until(lambda: status.text.startswith(":white_check_mark:"))

    post = next(
        c for c in fake_slack.calls("chat.postMessage") if c.response.get("ts") == status.ts
    )
    edits = [c for c in fake_slack.calls("chat.update") if c.args["ts"] == status.ts]
    shown = [post, *edits[:-1]]  # the closing edit is not held back
    gaps = [b.at - a.at for a, b in itertools.pairwise(shown)]
    assert len(gaps) == 2 and min(gaps) >= interval * 0.9
    assert [c.args["text"].split(" · ")[0] for c in shown] == [
        ":hourglass_flowing_sand: Queued",
        ":gear: Working: running `git status`",
        ":gear: Working: running `make test`",  # `ls -la` came and went within the interval
    ]
    assert status.text.startswith(":white_check_mark: Done") and run_id in status.text
    assert len(fake_slack.posted(CHANNEL, event["ts"])) == 2  # the status and the answer


async def test_a_message_during_a_run_is_queued_and_told_its_position(
    fake_slack: FakeSlack, fake_executor: Any, start_slack_bridge: Any, hub: Any
) -> None:
    """A second request in a busy thread waits; its status says where it stands."""
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex, start_slack_bridge():
        first = fake_slack.mention("first", channel=CHANNEL)
        await fake_slack.send_event(first)
        first_run = (await ex.wait_type("assign", prompt="first"))["run_id"]
        await ex.start_run(first_run)
        second = fake_slack.mention("second", channel=CHANNEL, thread_ts=first["ts"])
        await fake_slack.send_event(second)
        queued = await fake_slack.wait_for_post(
            CHANNEL, first["ts"], lambda m: "position 1" in m.text
        )
        queued_text = queued.text
        assert ex.of_type("assign")[1:] == []
        await ex.finish(first_run, "first done")
        second_run = (await ex.wait_type("assign", prompt="second"))["run_id"]
        await ex.finish(second_run, "second done")
        await fake_slack.wait_for_post(CHANNEL, first["ts"], lambda m: m.text == "second done")
        await wait_reactions(fake_slack, CHANNEL, second["ts"], "white_check_mark")

    assert queued_text.startswith(":hourglass_flowing_sand: Queued (position 1 in the queue)")
    assert f"run `{second_run}`" in queued_text


# ------------------------------------------------------------------ the end of a run


async def test_a_failure_says_what_went_wrong_and_gives_the_run_id(
    fake_slack: FakeSlack, fake_executor: Any, start_slack_bridge: Any, hub: Any
) -> None:
    """A failed run is answered with its error and run id; its status ends failed, with a cross."""
    async with (
        fake_executor(ws_url(hub), token=NODE_TOKEN) as ex,
        start_slack_bridge(SLACK_STATUS_EDIT_INTERVAL_S=0.2),
    ):
        event = fake_slack.mention("break something", channel=CHANNEL)
        await fake_slack.send_event(event)
        run_id = (await ex.wait_type("assign"))["run_id"]
        await ex.start_run(run_id)
        status = await status_message(fake_slack, CHANNEL, event["ts"])
        error = {"code": "codex_failed", "message": "codex exited with status 1"}
        await ex.finish(run_id, "", status="failed", error=error)
        reply = await fake_slack.wait_for_post(CHANNEL, event["ts"], lambda m: "failed" in m.text)
        await wait_reactions(fake_slack, CHANNEL, event["ts"], "x")
        await fake_slack.wait_until(lambda: status.text.startswith(":x: Failed"))

    assert reply.text.startswith(f":x: Run `{run_id}` failed")
    assert "codex exited with status 1 (codex_failed)" in reply.text
    assert f"run `{run_id}`" in status.text
    assert status.metadata == {
        "event_type": "codex_hub_status",
        "event_payload": {"request_ts": event["ts"]},
    }


async def test_a_long_answer_is_split_into_labelled_parts_with_whole_fences(
    fake_slack: FakeSlack, fake_executor: Any, start_slack_bridge: Any, hub: Any
) -> None:
    """An answer over one message is posted as (1/n)...(n/n), each within the limit."""
    lines = [f"line {i:04d}: " + "x" * 60 for i in range(130)]
    answer = "Here is the log:\n```text\n" + "\n".join(lines) + "\n```\nThat is all."
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex, start_slack_bridge():
        event = fake_slack.mention("show the log", channel=CHANNEL)
        await fake_slack.send_event(event)
        run_id = (await ex.wait_type("assign"))["run_id"]
        await ex.finish(run_id, answer)
        await wait_reactions(fake_slack, CHANNEL, event["ts"], "white_check_mark")

    parts = answers(fake_slack, CHANNEL, event["ts"])
    count = len(parts)
    assert count == 3
    for i, part in enumerate(parts, 1):
        assert part.text.startswith(f"({i}/{count})\n") and len(part.text) <= MESSAGE_LIMIT
        assert part.text.count("```") % 2 == 0
        assert part.metadata == {
            "event_type": REPLY_EVENT_TYPE,
            "event_payload": {"run_id": run_id, "part": i, "parts": count},
        }
    joined = "\n".join(p.text for p in parts)
    assert all(line in joined for line in lines) and joined.endswith("That is all.")


async def test_a_very_long_answer_is_uploaded_as_a_file_with_a_preview(
    fake_slack: FakeSlack, fake_executor: Any, start_slack_bridge: Any, hub: Any
) -> None:
    """Above SLACK_FILE_THRESHOLD_CHARS the whole answer goes up as a file, a preview above it."""
    answer = "# Report\n" + "\n".join(f"finding {i}: all fine & dandy" for i in range(600))
    assert len(answer) > 12_000
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex, start_slack_bridge():
        event = fake_slack.mention("write the report", channel=CHANNEL)
        await fake_slack.send_event(event)
        run_id = (await ex.wait_type("assign"))["run_id"]
        await ex.finish(run_id, answer)
        await wait_reactions(fake_slack, CHANNEL, event["ts"], "white_check_mark")

    [upload] = fake_slack.uploaded_files(CHANNEL, event["ts"])
    assert upload.text == answer + "\n" and upload.filename == f"codex-answer-{run_id}.md"
    [share] = answers(fake_slack, CHANNEL, event["ts"])
    assert share.files and share.text.startswith("# Report\nfinding 0: all fine &amp; dandy")
    assert len(share.text) < 2000 and f"{len(answer):,} characters" in share.text


async def test_a_429_is_waited_out_and_the_answer_posted_once(
    fake_slack: FakeSlack, fake_executor: Any, start_slack_bridge: Any, hub: Any
) -> None:
    """Slack's 429 on the answer is retried after Retry-After; the answer appears once."""
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex, start_slack_bridge():
        event = fake_slack.mention("be patient", channel=CHANNEL)
        await fake_slack.send_event(event)
        run_id = (await ex.wait_type("assign"))["run_id"]
        fake_slack.fail_next("chat.postMessage", status=429, retry_after=1, match=is_answer)
        await ex.finish(run_id, "worth the wait")
        answer = await fake_slack.wait_for_post(
            CHANNEL, event["ts"], lambda m: m.text == "worth the wait"
        )
        await wait_reactions(fake_slack, CHANNEL, event["ts"], "white_check_mark")

    attempts = [c for c in fake_slack.calls("chat.postMessage") if is_answer(c.args)]
    assert [c.status for c in attempts] == [429, 200]
    assert attempts[1].at - attempts[0].at >= 1.0
    assert answers(fake_slack, CHANNEL, event["ts"]) == [answer]


async def test_a_reply_sent_again_after_a_partial_failure_posts_only_the_missing_parts(
    fake_slack: FakeSlack, fake_executor: Any, start_slack_bridge: Any, hub: Any
) -> None:
    """Part 2 fails with a 500: the hub re-sends the reply and parts 2 and 3 follow, once each."""
    answer = "\n".join(f"row {i}: " + "y" * 70 for i in range(140))
    async with (
        fake_executor(ws_url(hub), token=NODE_TOKEN) as ex,
        start_slack_bridge(SLACK_STATUS_EDIT_INTERVAL_S=0.2),
    ):
        event = fake_slack.mention("dump the table", channel=CHANNEL)
        await fake_slack.send_event(event)
        run_id = (await ex.wait_type("assign"))["run_id"]
        status = await status_message(fake_slack, CHANNEL, event["ts"])
        fake_slack.fail_next(
            "chat.postMessage", status=500, match=lambda a: str(a.get("text")).startswith("(2/3)")
        )
        await ex.finish(run_id, answer)
        await wait_reactions(fake_slack, CHANNEL, event["ts"], "white_check_mark")
        # The attempt that finished the reply also closed the status message.
        await fake_slack.wait_until(lambda: status.text.startswith(":white_check_mark: Done"))
        # Submitted after the ack went out on the same socket: the hub has applied it.
        await fake_slack.send_event(fake_slack.mention("marker", channel=CHANNEL))
        await ex.wait_type("assign", prompt="marker")

    labels = [p.text.split("\n", 1)[0] for p in answers(fake_slack, CHANNEL, event["ts"])]
    assert labels == ["(1/3)", "(2/3)", "(3/3)"]
    failed = [c for c in fake_slack.calls("chat.postMessage") if c.status == 500]
    assert len(failed) == 1
    pending = await hub.app[STORE].pending_deliveries()
    assert run_id not in [d.run_id for d in pending]


async def test_an_answer_slack_refuses_for_good_is_dropped_and_the_user_told(
    fake_slack: FakeSlack, fake_executor: Any, start_slack_bridge: Any, hub: Any
) -> None:
    """A permanent refusal is not retried forever: the reply is acknowledged, the user told."""
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex, start_slack_bridge():
        event = fake_slack.mention("say something odd", channel=CHANNEL)
        await fake_slack.send_event(event)
        run_id = (await ex.wait_type("assign"))["run_id"]
        fake_slack.fail_next("chat.postMessage", status=200, error="msg_blocked", match=is_answer)
        await ex.finish(run_id, "an answer Slack will not take")
        notice = await fake_slack.wait_for_post(
            CHANNEL, event["ts"], lambda m: "refused the answer" in m.text
        )
        await wait_reactions(fake_slack, CHANNEL, event["ts"], "x")
        await fake_slack.send_event(fake_slack.mention("marker", channel=CHANNEL))
        await ex.wait_type("assign", prompt="marker")

    assert f"`{run_id}`" in notice.text and "msg_blocked" in notice.text
    assert answers(fake_slack, CHANNEL, event["ts"]) == []
    attempts = [c for c in fake_slack.calls("chat.postMessage") if is_answer(c.args)]
    assert len(attempts) == 1
    pending = await hub.app[STORE].pending_deliveries()
    assert run_id not in [d.run_id for d in pending]


# ------------------------------------------------------------------ threads and sessions


async def test_a_follow_up_in_the_thread_resumes_the_codex_thread(
    fake_slack: FakeSlack, fake_executor: Any, start_slack_bridge: Any, hub: Any
) -> None:
    """The thread is the session: the second request carries the codex thread the first made."""
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex, start_slack_bridge():
        first = fake_slack.mention("look at the repo", channel=CHANNEL)
        await fake_slack.send_event(first)
        assign = await ex.wait_type("assign", prompt="look at the repo")
        await ex.finish(assign["run_id"], "a Python project", thread_id="codex-thread-7")
        await fake_slack.wait_for_post(CHANNEL, first["ts"], lambda m: m.text == "a Python project")
        follow_up = fake_slack.mention("now its tests", channel=CHANNEL, thread_ts=first["ts"])
        await fake_slack.send_event(follow_up)
        second = await ex.wait_type("assign", prompt="now its tests")
        await ex.finish(second["run_id"], "42 tests", thread_id="codex-thread-7")
        await fake_slack.wait_for_post(CHANNEL, first["ts"], lambda m: m.text == "42 tests")
        other = fake_slack.mention("unrelated", channel=CHANNEL)
        await fake_slack.send_event(other)
        third = await ex.wait_type("assign", prompt="unrelated")

    assert assign["thread_id"] is None and second["thread_id"] == "codex-thread-7"
    assert third["thread_id"] is None
    assert second["origin"]["thread_ts"] == first["ts"]
    assert second["origin"]["ts"] == follow_up["ts"]
    await wait_reactions(fake_slack, CHANNEL, follow_up["ts"], "white_check_mark")


async def test_cancel_in_the_thread_cancels_the_active_run(
    fake_slack: FakeSlack, fake_executor: Any, start_slack_bridge: Any, hub: Any
) -> None:
    """`cancel` in a thread stops its running run; the run ends as cancelled with a cross."""
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex, start_slack_bridge():
        event = fake_slack.mention("a long job", channel=CHANNEL)
        await fake_slack.send_event(event)
        run_id = (await ex.wait_type("assign"))["run_id"]
        await ex.start_run(run_id)
        await fake_slack.send_event(
            fake_slack.mention("cancel", channel=CHANNEL, thread_ts=event["ts"])
        )
        await ex.wait_type("cancel", run_id=run_id)
        notice = await fake_slack.wait_for_post(
            CHANNEL, event["ts"], lambda m: "Cancelling" in m.text
        )
        await ex.finish(run_id, "", status="cancelled")
        ended = await fake_slack.wait_for_post(
            CHANNEL, event["ts"], lambda m: "was cancelled" in m.text
        )
        await wait_reactions(fake_slack, CHANNEL, event["ts"], "x")
        dm = fake_slack.dm("stop", channel="D0ALICE")
        await fake_slack.send_event(dm)
        idle = await fake_slack.wait_for_post("D0ALICE", dm["ts"])

    assert f"`{run_id}`" in notice.text and f"`{run_id}`" in ended.text
    assert "Nothing is running" in idle.text
    assert len(ex.of_type("assign")) == 1


# ------------------------------------------------------------------ restarts and outages


async def test_a_bridge_restarted_mid_run_posts_the_reply_exactly_once(
    fake_slack: FakeSlack, fake_executor: Any, start_slack_bridge: Any, hub: Any
) -> None:
    """A run that ends while its bridge is down is answered once by the next bridge process."""
    fast = {"SLACK_STATUS_EDIT_INTERVAL_S": 0.2}
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex:
        async with start_slack_bridge(**fast):
            event = fake_slack.mention("survive a restart", channel=CHANNEL)
            await fake_slack.send_event(event)
            run_id = (await ex.wait_type("assign"))["run_id"]
            await ex.start_run(run_id)
            status = await status_message(fake_slack, CHANNEL, event["ts"])
        await ex.finish(run_id, "still here")
        await ex.wait_type("result_ack", run_id=run_id)
        async with start_slack_bridge(**fast):
            await fake_slack.wait_for_post(CHANNEL, event["ts"], lambda m: m.text == "still here")
            await wait_reactions(fake_slack, CHANNEL, event["ts"], "white_check_mark")
            await fake_slack.wait_until(lambda: status.text.startswith(":white_check_mark:"))
            marker = fake_slack.mention("marker", channel=CHANNEL)
            await fake_slack.send_event(marker)
            marker_run = (await ex.wait_type("assign", prompt="marker"))["run_id"]
            await ex.finish(marker_run, "marker done")
            await fake_slack.wait_for_post(CHANNEL, marker["ts"], lambda m: m.text == "marker done")

    assert [m.text for m in answers(fake_slack, CHANNEL, event["ts"])] == ["still here"]
    assert len(fake_slack.posted(CHANNEL, event["ts"])) == 2  # the status and the answer
    assert status.text.startswith(":white_check_mark: Done") and run_id in status.text
    pending = await hub.app[STORE].pending_deliveries()
    assert run_id not in [d.run_id for d in pending]


async def test_a_restarted_bridge_keeps_editing_the_status_of_a_run_in_flight(
    fake_slack: FakeSlack, fake_executor: Any, start_slack_bridge: Any, hub: Any
) -> None:
    """The next bridge process finds the status message in the thread and edits it on."""
    fast = {"SLACK_STATUS_EDIT_INTERVAL_S": 0.2}
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex:
        async with start_slack_bridge(**fast):
            event = fake_slack.mention("deploy it", channel=CHANNEL)
            await fake_slack.send_event(event)
            run_id = (await ex.wait_type("assign"))["run_id"]
            status = await status_message(fake_slack, CHANNEL, event["ts"])
            await wait_reactions(fake_slack, CHANNEL, event["ts"], "eyes")
        async with start_slack_bridge(**fast):
            await ex.start_run(run_id)
            data = {"type": "item.started", "item": {"type": "command_execution"}}
            await ex.event(run_id, 1, kind="codex", data=data, summary="running `kubectl apply`")
            await fake_slack.wait_until(lambda: "kubectl apply" in status.text, timeout=10)
            await ex.finish(run_id, "deployed")
            await fake_slack.wait_for_post(CHANNEL, event["ts"], lambda m: m.text == "deployed")
            await wait_reactions(fake_slack, CHANNEL, event["ts"], "white_check_mark")
            await fake_slack.wait_until(lambda: status.text.startswith(":white_check_mark:"))

    assert len(fake_slack.posted(CHANNEL, event["ts"])) == 2  # one status message, one answer


async def test_a_restart_between_parts_does_not_post_the_earlier_parts_again(
    fake_slack: FakeSlack, fake_executor: Any, start_slack_bridge: Any, hub: Any
) -> None:
    """Part 1 posted, part 2 refused, bridge restarted: the new process posts parts 2 and 3."""
    answer = "\n".join(f"row {i}: " + "z" * 70 for i in range(140))
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex:
        async with start_slack_bridge():
            event = fake_slack.mention("dump it", channel=CHANNEL)
            await fake_slack.send_event(event)
            run_id = (await ex.wait_type("assign"))["run_id"]
            fake_slack.fail_next(
                "chat.postMessage",
                times=1000,
                status=503,
                match=lambda a: str(a.get("text")).startswith("(2/3)"),
            )
            await ex.finish(run_id, answer)
            await fake_slack.wait_for_call("chat.postMessage", lambda c: c.status == 503, ok=None)
        fake_slack.clear_failures()
        async with start_slack_bridge():
            await wait_reactions(fake_slack, CHANNEL, event["ts"], "white_check_mark")

    labels = [p.text.split("\n", 1)[0] for p in answers(fake_slack, CHANNEL, event["ts"])]
    assert labels == ["(1/3)", "(2/3)", "(3/3)"]
    assert fake_slack.calls("conversations.replies")[0].args["include_all_metadata"] in (
        "1",
        "true",
        True,
    )


async def test_a_mention_while_the_hub_restarts_is_answered_once_it_is_back(
    fake_slack: FakeSlack, start_executor: Any, start_slack_bridge: Any, hub: Any
) -> None:
    """The bridge reconnects to a restarted hub by itself; a request made meanwhile waits."""
    async with start_executor(), start_slack_bridge() as bridge:
        await hub.close()
        event = fake_slack.mention("while the hub is away", channel=CHANNEL)
        await fake_slack.send_event(event)
        settings = hub.settings.model_copy(update={"port": hub.port})
        async with HubServer(settings):
            answer = await fake_slack.wait_for_post(
                CHANNEL, event["ts"], lambda m: m.text == "while the hub is away", timeout=15
            )
            await wait_reactions(fake_slack, CHANNEL, event["ts"], "white_check_mark")

    assert bridge.link.client.connections == 2
    assert answers(fake_slack, CHANNEL, event["ts"]) == [answer]


async def test_slack_down_at_start_is_retried_until_it_answers(
    fake_slack: FakeSlack, start_executor: Any, hub: Any
) -> None:
    """An unreachable Slack at start-up does not stop the bridge; it connects when Slack is back."""
    settings = SlackSettings(
        _env_file=None,  # type: ignore[call-arg]
        SLACK_BOT_TOKEN=SecretStr(BOT_TOKEN),
        SLACK_APP_TOKEN=SecretStr(APP_TOKEN),
        SLACK_API_BASE_URL=fake_slack.api_url,
        SLACK_ALLOWED_USERS=["*"],
        SLACK_ALLOWED_CHANNELS=["*"],
        HUB_URL=ws_url(hub),
        HUB_TOKEN=NODE_TOKEN,
    )
    async with start_executor():
        await fake_slack.go_offline()
        async with SlackBridge(settings) as bridge:
            assert not bridge.connected.is_set()
            await fake_slack.go_online()
            await fake_slack.wait_connected()
            event = fake_slack.mention("are you there", channel=CHANNEL)
            await fake_slack.send_event(event)
            await fake_slack.wait_for_post(
                CHANNEL, event["ts"], lambda m: m.text == "are you there"
            )


async def test_the_socket_is_replaced_when_slack_asks(
    fake_slack: FakeSlack, start_executor: Any, start_slack_bridge: Any
) -> None:
    """After Slack's `disconnect` frame the bridge reconnects and keeps answering."""
    async with start_executor(), start_slack_bridge():
        await fake_slack.send_disconnect()
        await fake_slack.wait_connected(count=2)
        event = fake_slack.mention("after the refresh", channel=CHANNEL)
        await fake_slack.send_event(event)
        await fake_slack.wait_for_post(
            CHANNEL, event["ts"], lambda m: m.text == "after the refresh"
        )


@pytest.mark.parametrize(
    ("setting", "bot_token", "app_token"),
    [
        ("SLACK_BOT_TOKEN", "xoxb-not-the-right-one", APP_TOKEN),
        ("SLACK_APP_TOKEN", BOT_TOKEN, "xapp-not-the-right-one"),
    ],
)
async def test_a_refused_token_stops_the_start_and_names_the_setting(
    fake_slack: FakeSlack, hub: Any, setting: str, bot_token: str, app_token: str
) -> None:
    """Slack refusing a token is not retried: start fails and says which setting to fix."""
    settings = SlackSettings(
        _env_file=None,  # type: ignore[call-arg]
        SLACK_BOT_TOKEN=SecretStr(bot_token),
        SLACK_APP_TOKEN=SecretStr(app_token),
        SLACK_API_BASE_URL=fake_slack.api_url,
        HUB_URL=ws_url(hub),
        HUB_TOKEN=NODE_TOKEN,
    )
    bridge = SlackBridge(settings)
    with pytest.raises(SlackRefused) as refused:
        await bridge.start()
    assert refused.value.setting == setting and "invalid_auth" in str(refused.value)
    assert "not-the-right-one" not in str(refused.value)
    await bridge.close()


def test_python_dash_m_runs_the_bridge_command(tmp_path: Path) -> None:
    """`python -m bridges.slack` is `codex-hub bridge slack`: without tokens it says what to set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLACK_")}
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    done = subprocess.run(
        [sys.executable, "-m", "bridges.slack", "--env-file", str(env_file)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "SLACK_BOT_TOKEN" in done.stderr and "SLACK_APP_TOKEN" in done.stderr


async def test_repo_sets_the_channels_repository_for_new_runs(
    fake_slack: FakeSlack, fake_executor: Any, start_slack_bridge: Any, hub: Any
) -> None:
    """`repo owner/name` in a channel makes its next runs name that repository."""
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex, start_slack_bridge():
        command = fake_slack.mention("repo acme/widgets", channel=CHANNEL)
        await fake_slack.send_event(command)
        answer = await fake_slack.wait_for_post(CHANNEL, command["ts"])
        event = fake_slack.mention("fix the build", channel=CHANNEL)
        await fake_slack.send_event(event)
        frame = await ex.wait_type("assign", prompt="fix the build")
        await ex.finish(frame["run_id"], "done")
    assert "acme/widgets" in answer.text
    assert frame["repo"] == "acme/widgets"


async def test_a_run_that_changed_a_repository_uploads_its_diff(
    fake_slack: FakeSlack, fake_executor: Any, start_slack_bridge: Any, hub: Any
) -> None:
    """The conversation's diff from the run's workspace event goes up as a .diff file."""
    diff = "diff --git a/a.txt b/a.txt\n+new line\n"
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex, start_slack_bridge():
        event = fake_slack.mention("change it", channel=CHANNEL)
        await fake_slack.send_event(event)
        run_id = (await ex.wait_type("assign"))["run_id"]
        await ex.event(run_id, 1, kind="workspace", summary="1 file", diff=diff)
        await ex.finish(run_id, "changed")
        await wait_reactions(fake_slack, CHANNEL, event["ts"], "white_check_mark")
    [upload] = fake_slack.uploaded_files(CHANNEL, event["ts"])
    assert upload.filename == f"{run_id}.diff" and upload.text.startswith(diff)


async def test_the_open_pr_button_under_changes_sends_a_pr_follow_up_and_says_who_pressed_it(
    fake_slack: FakeSlack, fake_executor: Any, start_slack_bridge: Any, hub: Any
) -> None:
    """An answer whose conversation changed its repository carries an "Open PR" button;
    a press by an allowed user runs ``!pr`` in the same thread, replies with the pull
    request link and turns the button into who pressed it."""
    diff = "diff --git a/a.txt b/a.txt\n+new line\n"
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex, start_slack_bridge():
        event = fake_slack.mention("change it", channel=CHANNEL)
        await fake_slack.send_event(event)
        first = await ex.wait_type("assign")
        await ex.event(first["run_id"], 1, kind="workspace", summary="1 file", diff=diff)
        await ex.finish(first["run_id"], "changed")
        offer = await fake_slack.wait_for_post(CHANNEL, event["ts"], lambda m: bool(m.blocks))
        await fake_slack.press_button(CHANNEL, offer.ts, OPEN_PR_ACTION, user="U0BOB")
        follow = await ex.wait_type("assign", prompt="!pr")
        assert follow["session_key"] == first["session_key"]
        await fake_slack.wait_until(lambda: offer.blocks is None, what="the button removed")
        await ex.event(follow["run_id"], 1, kind="workspace", diff=diff, pr_url="https://f/pr/1")
        await ex.finish(follow["run_id"], "Pull request: https://f/pr/1")
        await fake_slack.wait_for_post(CHANNEL, event["ts"], lambda m: "https://f/pr/1" in m.text)
    assert offer.text == "Pull request requested by <@U0BOB>."
    # The answer that opened the PR offers no second button.
    assert len([m for m in fake_slack.posted(CHANNEL) if m.blocks]) == 0


async def test_the_open_pr_button_refuses_someone_not_allowed(
    fake_slack: FakeSlack, fake_executor: Any, start_slack_bridge: Any, hub: Any
) -> None:
    """A press of the "Open PR" button by a user outside SLACK_ALLOWED_USERS starts no
    run, keeps the button and tells only that user why, with their id."""
    diff = "diff --git a/a.txt b/a.txt\n+new line\n"
    async with (
        fake_executor(ws_url(hub), token=NODE_TOKEN) as ex,
        start_slack_bridge(SLACK_ALLOWED_USERS="U0ALICE"),
    ):
        event = fake_slack.mention("change it", channel=CHANNEL)
        await fake_slack.send_event(event)
        first = await ex.wait_type("assign")
        await ex.event(first["run_id"], 1, kind="workspace", summary="1 file", diff=diff)
        await ex.finish(first["run_id"], "changed")
        offer = await fake_slack.wait_for_post(CHANNEL, event["ts"], lambda m: bool(m.blocks))
        await fake_slack.press_button(CHANNEL, offer.ts, OPEN_PR_ACTION, user="U0MALLORY")
        await fake_slack.wait_until(lambda: fake_slack.ephemeral, what="the refusal")
    (refusal,) = fake_slack.ephemeral
    assert refusal["user"] == "U0MALLORY" and "U0MALLORY" in refusal["text"]
    assert not [f for f in ex.frames if f.get("prompt") == "!pr"]
    assert offer.blocks is not None


# --- attachments -------------------------------------------------------------------------

PNG_BYTES = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


async def test_shared_files_reach_the_executor_as_an_image_and_a_file(
    fake_slack: FakeSlack, fake_executor: Any, start_slack_bridge: Any, hub: Any
) -> None:
    """Files shared with a DM are downloaded from url_private with the bot token; the
    image reaches the executor as an image, the text file as a file, the text as prompt."""
    image = fake_slack.user_file("shot.png", "image/png", PNG_BYTES)
    notes = fake_slack.user_file("notes.md", "text/markdown", b"# notes\n")
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex, start_slack_bridge():
        await fake_slack.send_event(fake_slack.file_share("compare these", [image, notes]))
        frame = await ex.wait_type("assign", prompt="compare these")
    assert frame["options"] == {
        "images": [{"mime": "image/png", "data": base64.b64encode(PNG_BYTES).decode()}],
        "files": [{"name": "notes.md", "data": base64.b64encode(b"# notes\n").decode()}],
    }
    assert {auth for _, auth in fake_slack.downloads} == {f"Bearer {fake_slack.bot_token}"}


async def test_a_shared_file_over_the_limit_is_refused_with_a_reply_and_starts_no_run(
    fake_slack: FakeSlack, fake_executor: Any, start_slack_bridge: Any, hub: Any
) -> None:
    """A shared file larger than BRIDGE_ATTACHMENT_MAX_BYTES is answered with why, is
    not downloaded, and no run starts."""
    big = fake_slack.user_file("big.txt", "text/plain", b"x" * 101)
    async with (
        fake_executor(ws_url(hub), token=NODE_TOKEN) as ex,
        start_slack_bridge(BRIDGE_ATTACHMENT_MAX_BYTES=100),
    ):
        event = fake_slack.file_share("read it", [big])
        await fake_slack.send_event(event)
        refusal = await fake_slack.wait_for_post("D0ALICE", event["ts"])
    assert "big.txt was not used" in refusal.text and "over the limit of 100" in refusal.text
    assert fake_slack.downloads == []
    assert not [f for f in ex.frames if f.get("type") == "assign"]


async def test_a_shared_file_url_off_slack_never_gets_the_bot_token(
    fake_slack: FakeSlack, fake_executor: Any, start_slack_bridge: Any, hub: Any
) -> None:
    """A file whose url_private is not on Slack (nor the configured API host) is refused
    without being fetched, so the bot token goes nowhere else."""
    odd = fake_slack.user_file("a.txt", "text/plain", b"hello")
    odd["url_private"] = odd["url_private_download"] = "https://evil.example/a.txt"
    async with (
        fake_executor(ws_url(hub), token=NODE_TOKEN) as ex,
        start_slack_bridge(),
    ):
        event = fake_slack.file_share("read it", [odd])
        await fake_slack.send_event(event)
        refusal = await fake_slack.wait_for_post("D0ALICE", event["ts"])
    assert "a.txt was not used: it is not a file on Slack." == refusal.text
    assert not [f for f in ex.frames if f.get("type") == "assign"]
