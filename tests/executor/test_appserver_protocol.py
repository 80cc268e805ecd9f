"""The app-server protocol's pure parts: lines, params, notifications mapped to events."""

from __future__ import annotations

import copy
import json

from executor.appserver_protocol import (
    DeltaBuffer,
    Notification,
    Response,
    ServerRequest,
    TurnFold,
    approval_request,
    approval_result,
    describe_approval,
    exec_item,
    fingerprint_differences,
    load_expected_fingerprint,
    parse_line,
    request,
    thread_params,
    turn_start_params,
    user_agent_version,
)
from executor.codex import CodexProgress


def test_a_request_is_one_json_line_with_the_prompt_as_one_text_input() -> None:
    """A request is compact JSON on one line; the prompt travels verbatim as one text part."""
    prompt = 'line one\nline two; $(not a shell) "quoted"'
    line = request(3, "turn/start", turn_start_params("t1", prompt))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "turn/start",
        "params": {"threadId": "t1", "input": [{"type": "text", "text": prompt}]},
    }


def test_lines_parse_into_responses_notifications_and_server_requests() -> None:
    """Each kind of line the app-server writes parses into its message type."""
    assert parse_line('{"id":1,"result":{"ok":true}}') == Response(1, {"ok": True}, None)
    error = parse_line('{"id":2,"error":{"code":-32600,"message":"thread not found"}}')
    assert isinstance(error, Response) and error.error == {
        "code": -32600,
        "message": "thread not found",
    }
    assert parse_line('{"method":"turn/started","params":{"threadId":"t"}}') == Notification(
        "turn/started", {"threadId": "t"}
    )
    assert parse_line('{"id":0,"method":"item/fileChange/requestApproval","params":{}}') == (
        ServerRequest(0, "item/fileChange/requestApproval", {})
    )
    for junk in ("", "not json", "[1,2]", '{"id": "x"}', "{broken"):
        assert parse_line(junk) is None


def test_thread_params_always_name_the_sandbox_and_the_approval_policy() -> None:
    """thread/start carries sandbox and approval explicitly, and the network setting."""
    params = thread_params(
        cwd="/w", sandbox="workspace-write", approval_policy="on-request", network_access=True
    )
    assert params == {
        "cwd": "/w",
        "sandbox": "workspace-write",
        "approvalPolicy": "on-request",
        "config": {"sandbox_workspace_write.network_access": True},
    }
    resumed = thread_params(
        cwd="/w", sandbox="read-only", approval_policy="never", model="m", thread_id="t9"
    )
    assert resumed["threadId"] == "t9" and resumed["model"] == "m" and "config" not in resumed


def test_items_take_the_shapes_of_codex_exec() -> None:
    """App-server items become exec's items; the user's own message is dropped."""
    assert exec_item({"type": "userMessage", "id": "u", "content": []}) is None
    command = exec_item(
        {
            "type": "commandExecution",
            "id": "c1",
            "command": "ls",
            "aggregatedOutput": "a\n",
            "exitCode": 0,
            "status": "completed",
            "cwd": "/w",
            "commandActions": [],
        }
    )
    assert command == {
        "id": "c1",
        "type": "command_execution",
        "status": "completed",
        "command": "ls",
        "aggregated_output": "a\n",
        "exit_code": 0,
    }
    change = exec_item(
        {
            "type": "fileChange",
            "id": "f1",
            "status": "inProgress",
            "changes": [{"path": "a.py", "kind": {"type": "add"}, "diff": "+x"}],
        }
    )
    assert change == {
        "id": "f1",
        "type": "file_change",
        "status": "in_progress",
        "changes": [{"path": "a.py", "kind": "add"}],
    }
    reasoning = exec_item({"type": "reasoning", "id": "r", "summary": ["plan"], "content": []})
    assert reasoning == {"id": "r", "type": "reasoning", "text": "plan"}


def test_a_turns_notifications_fold_into_exec_events_and_summed_usage() -> None:
    """A turn's notifications give exec's events; usage sums every model request's last."""
    fold = TurnFold("t1")
    usage = {"inputTokens": 10, "cachedInputTokens": 2, "outputTokens": 3}
    breakdown = {**usage, "reasoningOutputTokens": 0, "totalTokens": 13}
    t, u = {"threadId": "t1"}, {"threadId": "t1", "turnId": "u1"}
    token_usage = {"tokenUsage": {"last": breakdown, "total": breakdown}}
    message = {"type": "agentMessage", "id": "m", "text": "hi"}
    notes = [
        ("turn/started", {**t, "turn": {"id": "u1", "status": "inProgress"}}),
        ("item/agentMessage/delta", {**u, "itemId": "m", "delta": "hi"}),
        ("thread/tokenUsage/updated", {**u, **token_usage}),
        ("thread/tokenUsage/updated", {**u, **token_usage}),
        ("turn/diff/updated", {**u, "diff": "--- a\n+++ b\n"}),
        ("item/completed", {**u, "item": message}),
        ("item/completed", {**t, "turnId": "other", "item": {**message, "text": "not ours"}}),
        ("turn/completed", {**t, "turn": {"id": "u1", "status": "completed", "items": []}}),
    ]
    events = [event for method, params in notes for event in fold.feed(method, params)]

    kinds = [e["kind"] for e in events]
    assert kinds == ["codex", "answer_delta", "turn_diff", "codex", "codex"]
    assert events[1] == {"kind": "answer_delta", "item_id": "m", "delta": "hi"}
    assert events[2]["diff"] == "--- a\n+++ b\n" and events[2]["turn_id"] == "u1"
    assert fold.ended and fold.status == "completed" and fold.last_message == "hi"
    summed = {"input_tokens": 20, "cached_input_tokens": 4, "output_tokens": 6}
    assert fold.usage == summed
    progress = CodexProgress().feed_all(e["data"] for e in events if e["kind"] == "codex")
    assert progress.turn_completed and progress.usage == summed and progress.last_message == "hi"


def test_a_failed_turn_becomes_turn_failed_with_codexs_message() -> None:
    """turn/completed with status failed maps to exec's turn.failed and its message."""
    fold = TurnFold("t1", turn_id="u1")
    turn = {"id": "u1", "status": "failed", "items": [], "error": {"message": "quota exceeded"}}
    [event] = fold.feed("turn/completed", {"threadId": "t1", "turn": turn})
    assert event["data"] == {"type": "turn.failed", "error": {"message": "quota exceeded"}}
    assert event["summary"] == "failed: quota exceeded"
    assert CodexProgress().feed_all([event["data"]]).failed


def test_approval_requests_read_commands_and_file_changes() -> None:
    """Both approval requests parse; decisions take the app-server's spelling."""
    command = approval_request(
        "r1",
        "item/commandExecution/requestApproval",
        {
            "threadId": "t",
            "turnId": "u",
            "itemId": "i",
            "command": "rm -rf x",
            "cwd": "/w",
            "reason": "clean",
        },
    )
    assert command is not None and command.kind == "command" and command.command == "rm -rf x"
    assert describe_approval(command) == "codex asks to run `rm -rf x` (clean)"
    change = approval_request(
        "r1",
        "item/fileChange/requestApproval",
        {
            "threadId": "t",
            "turnId": "u",
            "itemId": "i",
            "changes": [{"path": "/etc/x", "diff": "+"}],
        },
    )
    assert change is not None and change.kind == "file_change"
    assert change.public()["changes"] == [{"path": "/etc/x", "diff": "+"}]
    assert describe_approval(change) == "codex asks to change /etc/x"
    item = {"id": "i", "changes": [{"path": "/etc/y", "kind": {"type": "add"}, "diff": "+y"}]}
    from_item = approval_request(
        "r1", "item/fileChange/requestApproval", {"threadId": "t", "itemId": "i"}, item
    )
    assert from_item is not None
    assert from_item.changes == [{"path": "/etc/y", "kind": "add", "diff": "+y"}]
    assert approval_request("r1", "item/tool/requestUserInput", {}) is None
    assert approval_result("approve") == {"decision": "accept"}
    assert approval_result("approve_session") == {"decision": "acceptForSession"}
    assert approval_result("deny") == {"decision": "decline"}


def test_fingerprint_differences_name_what_changed() -> None:
    """A missing method or a changed required field is reported by name; equal is silent."""
    expected = load_expected_fingerprint()
    assert fingerprint_differences(expected, expected) == []
    actual = copy.deepcopy(expected)
    actual["client_requests"]["turn/steer"] = None
    actual["notifications"]["turn/completed"] = {"required": ["threadId"]}
    differences = fingerprint_differences(expected, actual)
    assert differences[0] == "turn/steer: missing"
    assert differences[1].startswith("turn/completed: was")


def test_the_user_agent_names_codexs_version() -> None:
    """initialize's userAgent yields codex's version."""
    assert user_agent_version("codex_hub/0.169.0 (Ubuntu 24.4.0; x86_64) xterm") == "0.169.0"
    assert user_agent_version("weird") is None


def test_answer_deltas_are_joined_until_another_event_or_a_flush() -> None:
    """Deltas of one item are held and joined; any other event releases them first."""
    buffer = DeltaBuffer()
    delta = {"kind": "answer_delta", "item_id": "m1"}
    assert buffer.add({**delta, "delta": "Hel"}) == []
    assert buffer.add({**delta, "delta": "lo"}) == []
    other = {"kind": "codex", "data": {"type": "item.completed"}}
    assert buffer.add(other) == [{**delta, "delta": "Hello"}, other]
    assert buffer.add({**delta, "delta": "a"}) == []
    assert buffer.add({"kind": "answer_delta", "item_id": "m2", "delta": "b"}) == [
        {**delta, "delta": "a"}
    ]
    assert buffer.holding
    assert buffer.flush() == [{"kind": "answer_delta", "item_id": "m2", "delta": "b"}]
    assert buffer.flush() == [] and not buffer.holding


def test_a_plan_update_becomes_a_todo_list_item() -> None:
    """turn/plan/updated maps onto exec's todo_list item, which the monitor draws."""
    fold = TurnFold("t1", turn_id="u1")
    plan = [{"step": "read", "status": "completed"}, {"step": "write", "status": "inProgress"}]
    [event] = fold.feed("turn/plan/updated", {"threadId": "t1", "turnId": "u1", "plan": plan})
    assert event["data"]["item"] == {
        "id": "plan-u1",
        "type": "todo_list",
        "items": [{"text": "read", "completed": True}, {"text": "write", "completed": False}],
    }
    assert event["summary"] == "plan: 1/2 steps done"
