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


@pytest.mark.codex
async def test_the_status_message_grows_with_the_answer_as_codex_writes_it(
    fake_slack: FakeSlack,
    start_executor: Any,
    start_slack_bridge: Any,
    model_server: StubModelServer,
    codex_home: Path,
    codex_bin: str,
) -> None:
    """With the app-server engine the status message shows the answer so far, edit by edit."""
    gates = model_server.reply_paced(["Checking the ", "pull requests: ", "3 are open."])
    executor = start_executor(
        EXEC_DRY_RUN=False, CODEX_BIN=codex_bin, CODEX_HOME=codex_home, EXEC_ENGINE="app-server"
    )
    async with executor, start_slack_bridge(SLACK_STATUS_EDIT_INTERVAL_S=0.1):
        event = fake_slack.mention("how many PRs are open?", channel="C0DEV")
        await fake_slack.send_event(event)
        status = await fake_slack.wait_for_post("C0DEV", event["ts"], timeout=30)
        await fake_slack.wait_until(lambda: status.text.endswith("Checking the "))
        gates[0].set()
        await fake_slack.wait_until(lambda: status.text.endswith("Checking the pull requests: "))
        gates[1].set()
        answer = await fake_slack.wait_for_post(
            "C0DEV", event["ts"], lambda m: m.text == "Checking the pull requests: 3 are open."
        )
        await fake_slack.wait_until(lambda: status.text.startswith(":white_check_mark: Done"))

    grown = [text.split("\n\n", 1)[1] for text in status.history if "\n\n" in text]
    assert grown[:2] == ["Checking the ", "Checking the pull requests: "]
    assert fake_slack.posted("C0DEV", event["ts"]) == [status, answer]


@pytest.mark.codex
async def test_a_message_in_a_working_thread_goes_into_the_running_turn(
    fake_slack: FakeSlack,
    start_executor: Any,
    start_slack_bridge: Any,
    model_server: StubModelServer,
    codex_home: Path,
    codex_bin: str,
) -> None:
    """A second mention while codex works is added to its turn, and the thread is told so."""
    model_server.reply_stall()
    model_server.reply_text("Switched to plan B.")
    executor = start_executor(
        EXEC_DRY_RUN=False, CODEX_BIN=codex_bin, CODEX_HOME=codex_home, EXEC_ENGINE="app-server"
    )
    async with executor, start_slack_bridge(SLACK_STATUS_EDIT_INTERVAL_S=0.1):
        first = fake_slack.mention("follow plan A", channel="C0DEV")
        await fake_slack.send_event(first)
        status = await fake_slack.wait_for_post("C0DEV", first["ts"], timeout=30)
        await model_server.wait_for_requests(1)
        await fake_slack.wait_until(lambda: status.text.startswith(":gear: Working"))
        second = fake_slack.mention("switch to plan B", channel="C0DEV", thread_ts=first["ts"])
        await fake_slack.send_event(second)
        told = await fake_slack.wait_for_post(
            "C0DEV", first["ts"], lambda m: "Added to the running turn" in m.text
        )
        requests = await model_server.wait_for_requests(2)
        await fake_slack.wait_for_post(
            "C0DEV", first["ts"], lambda m: m.text == "Switched to plan B.", timeout=30
        )

    assert "switch to plan B" in requests[1].text and "follow plan A" in requests[1].text
    run_id = status.text.rsplit("run `", 1)[1].rstrip("`")
    assert run_id in told.text
