"""codex's approval requests in Telegram: an inline keyboard under the request, pressed
(``callback_query``), decided by the hub, edited to say who decided and when."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from testkit.fakes.model_server import StubModelServer
from testkit.fakes.nodes import FakeExecutor
from testkit.fakes.telegram import Call, FakeTelegram
from tests.bridges.telegram.test_bridge import (
    USER,
    Settings,
    assign,
    executor,
    make_settings,
    running,
)

__all__ = ["executor", "make_settings"]  # fixtures used by name
OTHER = 5151


async def ask(ex: FakeExecutor, run_id: str) -> None:
    """The fake executor's codex asks, as the app-server engine reports it."""
    await ex.start_run(run_id)
    await ex.event(
        run_id,
        1,
        kind="approval",
        status="requested",
        approval_id="ap_1",
        request={"kind": "command", "command": "kubectl delete pod web-1", "reason": "restart"},
        summary="codex asks to run `kubectl delete pod web-1`",
    )


async def keyboard(fake: FakeTelegram) -> Call:
    return await fake.wait_for_call(
        "sendMessage",
        lambda c: c.ok and "reply_markup" in c.args and "kubectl" in (c.text or ""),
        timeout=10,
    )


def button(call: Call, label: str) -> str:
    rows = call.args["reply_markup"]["inline_keyboard"]
    return str(next(b["callback_data"] for row in rows for b in row if b["text"] == label))


async def test_the_asker_approves_from_the_keyboard_and_the_message_says_who_and_when(
    executor: FakeExecutor, fake_telegram: FakeTelegram, make_settings: Settings
) -> None:
    """The request shows the command, why and three buttons; the asker's press reaches
    the executor, the presser gets a notice, and the keyboard becomes who decided."""
    fake = fake_telegram
    async with running(make_settings(), fake):
        fake.push_message(USER, "restart web")
        run_id = await assign(executor, "restart web")
        await ask(executor, run_id)
        shown = await keyboard(fake)
        labels = [b["text"] for row in shown.args["reply_markup"]["inline_keyboard"] for b in row]
        fake.push_callback_query(
            USER, shown.result["message_id"], button(shown, "Approve"), user_id=USER
        )
        decision = await executor.wait_type("approval_decision", run_id=run_id)
        told = await fake.wait_for_call("answerCallbackQuery", lambda c: c.ok)
        edited = await fake.wait_for_call(
            "editMessageText", lambda c: c.ok and "Approved by" in (c.text or "")
        )
    assert "restart" in (shown.text or "")
    assert labels == ["Approve", "Approve for this conversation", "Deny"]
    assert all(len(button(shown, label).encode()) <= 64 for label in labels)
    assert decision["decision"] == "approve" and decision["by"] == f"telegram:{USER}"
    assert told.args["text"].startswith("Approved")
    assert f"Approved by {USER} at " in (edited.text or "")
    assert "reply_markup" not in fake.message(USER, shown.result["message_id"])


async def test_a_stranger_is_refused_with_an_alert_and_the_keyboard_stays(
    executor: FakeExecutor, fake_telegram: FakeTelegram, make_settings: Settings, hub: Any
) -> None:
    """Without APPROVERS only the asker decides: another user's press is refused with an
    alert saying why, and nothing is decided."""
    fake = fake_telegram
    async with running(make_settings(), fake):
        fake.push_message(USER, "restart web")
        run_id = await assign(executor, "restart web")
        await ask(executor, run_id)
        shown = await keyboard(fake)
        fake.push_callback_query(
            USER, shown.result["message_id"], button(shown, "Approve"), user_id=OTHER
        )
        told = await fake.wait_for_call("answerCallbackQuery", lambda c: c.ok)
    assert told.args["show_alert"] is True and "person who asked" in told.args["text"]
    assert not executor.of_type("approval_decision")
    assert "reply_markup" in fake.message(USER, shown.result["message_id"])


@pytest.mark.codex
async def test_a_telegram_button_denies_what_the_real_codex_asks_and_codex_goes_on(
    start_executor: Any,
    codex_home: Path,
    codex_bin: str,
    model_server: StubModelServer,
    fake_telegram: FakeTelegram,
    make_settings: Settings,
    tmp_path: Path,
) -> None:
    """The real codex app-server asks to run a command; the asker's Deny in Telegram
    keeps it from running, codex hears it was rejected, and its answer comes back."""
    fake = fake_telegram
    marker = tmp_path / "from-telegram.txt"
    model_server.reply_escalated_exec(f"echo yes > {marker}", "write the marker", "not run")
    async with (
        start_executor(
            EXEC_DRY_RUN=False,
            CODEX_HOME=codex_home,
            CODEX_BIN=codex_bin,
            EXEC_ENGINE="app-server",
            CODEX_APPROVAL_POLICY="on-request",
            EXEC_TIMEOUT_S=60,
        ),
        running(make_settings(), fake),
    ):
        fake.push_message(USER, "write the marker")
        shown = await fake.wait_for_call(
            "sendMessage", lambda c: c.ok and "reply_markup" in c.args, timeout=30
        )
        fake.push_callback_query(
            USER, shown.result["message_id"], button(shown, "Deny"), user_id=USER
        )
        await fake.wait_for_call("sendMessage", lambda c: c.ok and c.text == "not run", timeout=30)
        edited = await fake.wait_for_call(
            "editMessageText", lambda c: c.ok and "Denied by" in (c.text or "")
        )
    assert str(marker) in (shown.text or "")
    assert not marker.exists()
    assert "rejected" in model_server.requests[1].text
    assert f"Denied by {USER}" in (edited.text or "")
