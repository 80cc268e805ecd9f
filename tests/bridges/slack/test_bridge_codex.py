"""A Slack mention answered by the real codex binary, through the hub and an executor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from testkit.fakes.model_server import StubModelServer
from testkit.fakes.slack import FakeSlack


@pytest.mark.codex
async def test_a_mention_is_answered_in_its_thread_by_the_real_codex(
    fake_slack: FakeSlack,
    start_executor: Any,
    start_slack_bridge: Any,
    model_server: StubModelServer,
    codex_home: Path,
    codex_bin: str,
) -> None:
    """codex's final answer (from the stub model) is posted in the mention's thread.

    The stub first has codex run a command, so the run lasts long enough for a status
    message (the edit interval is short here).
    """
    model_server.reply_exec("echo checked", then="The repository has 3 open pull requests.")
    executor = start_executor(EXEC_DRY_RUN=False, CODEX_BIN=codex_bin, CODEX_HOME=codex_home)
    async with executor, start_slack_bridge(SLACK_STATUS_EDIT_INTERVAL_S=0.1):
        event = fake_slack.mention("how many PRs are open?", channel="C0DEV")
        await fake_slack.send_event(event)
        answer = await fake_slack.wait_for_post(
            "C0DEV",
            event["ts"],
            lambda m: m.text == "The repository has 3 open pull requests.",
            timeout=45,
        )
        await fake_slack.wait_until(
            lambda: fake_slack.reactions("C0DEV", event["ts"]) == ["white_check_mark"]
        )

    requests = await model_server.wait_for_requests(2)
    assert "how many PRs are open?" in requests[0].text and "<@" not in requests[0].text
    status, *rest = fake_slack.posted("C0DEV", event["ts"])
    assert rest == [answer]
    assert status.text.startswith(":white_check_mark: Done")
    # What it showed while codex worked depends on timing; that it worked does not.
    assert any(text.startswith(":gear: Working") for text in status.history)
