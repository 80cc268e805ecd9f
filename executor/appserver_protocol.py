"""codex's app-server protocol, kept free of I/O: JSON-RPC lines, params, events, schema.

`codex app-server` speaks JSON-RPC 2.0 over stdio, one JSON object per line (facts about
codex 0.169.0 in /work/shared/CODEX_APP_SERVER.md). This module builds the lines the
engine writes, parses the lines it reads, and maps the app-server's notifications onto
the event shapes `codex exec --json` emits (``thread.started``, ``item.completed`` with
``agent_message`` / ``command_execution`` items, ``turn.completed`` with usage, ...), so
that `executor.codex.CodexProgress`, the hub and the monitor read a run of either engine
the same way. Everything here is a pure function, or a pure fold (`TurnFold`), that
tests call directly. `executor.engine_appserver` does the I/O.

Events the app-server engine adds to the ``codex`` ones (additive; the hub stores and
forwards any event kind, the monitor shows unknown kinds raw):

- ``{"kind": "answer_delta", "item_id", "delta", "phase"?}``: a piece of the answer as
  the model writes it (``item/agentMessage/delta``, joined over at most `DELTA_FLUSH_S`
  by `DeltaBuffer`); no ``summary``, so no progress line. ``phase`` is the message's,
  when the model says it (``commentary`` is narration between tool calls, not the
  answer).
- ``{"kind": "turn_diff", "turn_id", "diff"}``: the turn's whole unified diff so far
  (``turn/diff/updated``), replacing the previous one.
- ``{"kind": "approval", "status": "requested" | "decided", "request": {...},
  "decision"?, "by"?, "summary"}``: codex asked to run a command or apply a change
  outside the sandbox, and what was decided.
- ``{"kind": "steer", "message", "summary"}``: input added to the running turn.

The schema check. `schema_fingerprint` reduces the JSON schema the binary generates
(``codex app-server generate-json-schema``) to the parts this engine depends on: the
methods it calls, the notifications and server requests it reads, their required
fields, and the enums it matches on. The fingerprint of the codex version this was
tested with is committed (``executor/appserver_schema.json``); `fingerprint_differences`
says what a running binary changed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from executor.codex import describe, truncate_event

#: The fingerprint of the schema of the codex version this engine was tested with.
SCHEMA_FINGERPRINT_PATH = Path(__file__).with_name("appserver_schema.json")
#: The files of ``generate-json-schema`` the fingerprint reads (the answers to approval
#: requests define the decisions).
SCHEMA_FILES = (
    "ClientRequest.json",
    "ServerNotification.json",
    "ServerRequest.json",
    "CommandExecutionRequestApprovalResponse.json",
    "FileChangeRequestApprovalResponse.json",
)

#: Client requests the engine sends.
CLIENT_METHODS = (
    "initialize",
    "thread/start",
    "thread/resume",
    "turn/start",
    "turn/steer",
    "turn/interrupt",
    "thread/fork",
)
#: Notifications the engine reads.
NOTIFICATIONS = (
    "thread/started",
    "turn/started",
    "turn/completed",
    "turn/diff/updated",
    "turn/plan/updated",
    "item/started",
    "item/completed",
    "item/agentMessage/delta",
    "thread/tokenUsage/updated",
    "error",
)
#: Server requests the engine answers.
SERVER_REQUESTS = (
    "item/commandExecution/requestApproval",
    "item/fileChange/requestApproval",
)
#: Definitions whose required fields or enum values the engine relies on.
DEFINITIONS = (
    "Turn",
    "TurnStatus",
    "TurnError",
    "ThreadTokenUsage",
    "TokenUsageBreakdown",
    "SandboxMode",
    "CommandExecutionApprovalDecision",
    "FileChangeApprovalDecision",
)

ApprovalDecision = Literal["approve", "approve_session", "deny", "cancel"]
#: Our decisions as the app-server spells them (the same for commands and file changes).
DECISION_WIRE: dict[str, str] = {
    "approve": "accept",
    "approve_session": "acceptForSession",
    "deny": "decline",
    "cancel": "cancel",
}


class RpcError(Exception):
    """The app-server answered a request with a JSON-RPC error."""

    def __init__(self, method: str, code: int, message: str) -> None:
        super().__init__(f"{method} failed ({code}): {message}")
        self.method = method
        self.code = code
        self.message = message


# --- lines ----------------------------------------------------------------------------


def encode(message: Mapping[str, Any]) -> bytes:
    """One message as the line the app-server reads (compact JSON and a newline)."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def request(request_id: int, method: str, params: Mapping[str, Any] | None = None) -> bytes:
    """A client request line."""
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        message["params"] = dict(params)
    return encode(message)


def notification(method: str, params: Mapping[str, Any] | None = None) -> bytes:
    """A client notification line (no id, no answer)."""
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = dict(params)
    return encode(message)


def response(request_id: Any, result: Mapping[str, Any]) -> bytes:
    """The answer to a server request."""
    return encode({"jsonrpc": "2.0", "id": request_id, "result": dict(result)})


def error_response(request_id: Any, code: int, message: str) -> bytes:
    """A JSON-RPC error answer to a server request this engine does not handle."""
    return encode({"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}})


@dataclass(frozen=True)
class Response:
    """The answer to one of our requests: `result`, or `error` ({"code", "message"})."""

    id: int
    result: dict[str, Any] | None
    error: dict[str, Any] | None


@dataclass(frozen=True)
class Notification:
    """A notification from the app-server."""

    method: str
    params: dict[str, Any]


@dataclass(frozen=True)
class ServerRequest:
    """A request from the app-server that expects an answer with the same id."""

    id: Any
    method: str
    params: dict[str, Any]


Message = Response | Notification | ServerRequest


def parse_line(line: str | bytes) -> Message | None:
    """The message on one stdout line; None for blank lines and anything else."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    params = value.get("params")
    params = params if isinstance(params, dict) else {}
    method = value.get("method")
    if isinstance(method, str):
        if "id" in value and value["id"] is not None:
            return ServerRequest(value["id"], method, params)
        return Notification(method, params)
    if isinstance(value.get("id"), int):
        result = value.get("result")
        error = value.get("error")
        return Response(
            value["id"],
            result if isinstance(result, dict) else ({} if error is None else None),
            error if isinstance(error, dict) else None,
        )
    return None


# --- params -----------------------------------------------------------------------------


def initialize_params(client_version: str) -> dict[str, Any]:
    """`initialize`: the model requests carry ``originator: codex_hub``."""
    return {"clientInfo": {"name": "codex_hub", "title": "codex-hub", "version": client_version}}


def thread_params(
    *,
    cwd: str,
    sandbox: str,
    approval_policy: str,
    model: str = "",
    network_access: bool = False,
    thread_id: str | None = None,
) -> dict[str, Any]:
    """`thread/start` (or, with `thread_id`, `thread/resume`) with everything explicit.

    The app-server's defaults differ from `codex exec`'s (sandbox read-only, approval
    on-request), so the sandbox and the approval policy are always sent.
    """
    params: dict[str, Any] = {"cwd": cwd, "sandbox": sandbox, "approvalPolicy": approval_policy}
    if thread_id is not None:
        params["threadId"] = thread_id
    if model:
        params["model"] = model
    if sandbox == "workspace-write" and network_access:
        # workspace-write blocks the network of the commands codex runs (gh, aws, ...).
        params["config"] = {"sandbox_workspace_write.network_access": True}
    return params


def text_input(text: str) -> list[dict[str, Any]]:
    """A user input of one text part."""
    return [{"type": "text", "text": text}]


def turn_start_params(thread_id: str, prompt: str) -> dict[str, Any]:
    """`turn/start`: the prompt as one text input, never through a shell."""
    return {"threadId": thread_id, "input": text_input(prompt)}


def turn_steer_params(thread_id: str, turn_id: str, text: str) -> dict[str, Any]:
    """`turn/steer`: `text` appended to the running turn `turn_id`."""
    return {"threadId": thread_id, "expectedTurnId": turn_id, "input": text_input(text)}


def turn_interrupt_params(thread_id: str, turn_id: str) -> dict[str, Any]:
    """`turn/interrupt`."""
    return {"threadId": thread_id, "turnId": turn_id}


_VERSION_RE = re.compile(r"/(\d+\.\d+\.\d+[^\s()]*)")


def user_agent_version(user_agent: str) -> str | None:
    """codex's version from `initialize`'s userAgent ("codex_hub/0.169.0 (Linux ...)")."""
    match = _VERSION_RE.search(user_agent)
    return match.group(1) if match else None


# --- approvals -----------------------------------------------------------------------


@dataclass(frozen=True)
class ApprovalRequest:
    """codex asks to run a command (`kind` "command") or apply a change ("file_change").

    `reason` is the model's justification; `command` and `cwd` are set for a command,
    `changes` (paths and diffs, when codex sent them) for a file change.
    """

    run_id: str
    kind: Literal["command", "file_change"]
    thread_id: str
    turn_id: str
    item_id: str
    reason: str
    command: str = ""
    cwd: str = ""
    changes: list[dict[str, Any]] = field(default_factory=list)
    available_decisions: list[Any] = field(default_factory=list)
    #: The request's id in the run's events and the hub's decision (set by the engine).
    approval_id: str = ""

    def public(self) -> dict[str, Any]:
        """The request as an event carries it."""
        data: dict[str, Any] = {"kind": self.kind, "reason": self.reason, "item_id": self.item_id}
        if self.kind == "command":
            data.update(command=self.command, cwd=self.cwd)
        else:
            data["changes"] = self.changes
        return data


def approval_request(
    run_id: str,
    method: str,
    params: Mapping[str, Any],
    item: Mapping[str, Any] | None = None,
) -> ApprovalRequest | None:
    """An `ApprovalRequest` of a server request; None when `method` is not an approval.

    `item` is the thread item the request is about, as ``item/started`` announced it:
    a file change request does not repeat the changes (paths, diffs), its item has them.
    """
    kind: Literal["command", "file_change"]
    if method == "item/commandExecution/requestApproval":
        kind = "command"
    elif method == "item/fileChange/requestApproval":
        kind = "file_change"
    else:
        return None
    changes = params.get("changes")
    if not changes and item is not None:
        changes = [
            {
                "path": c.get("path", ""),
                "kind": _change_kind(c.get("kind")),
                "diff": c.get("diff", ""),
            }
            for c in item.get("changes") or []
            if isinstance(c, dict)
        ]
    decisions = params.get("availableDecisions")
    return ApprovalRequest(
        run_id=run_id,
        kind=kind,
        thread_id=str(params.get("threadId", "")),
        turn_id=str(params.get("turnId", "")),
        item_id=str(params.get("itemId", "")),
        reason=str(params.get("reason") or ""),
        command=str(params.get("command") or ""),
        cwd=str(params.get("cwd") or ""),
        changes=[c for c in changes if isinstance(c, dict)] if isinstance(changes, list) else [],
        available_decisions=list(decisions) if isinstance(decisions, list) else [],
    )


def approval_result(decision: ApprovalDecision) -> dict[str, Any]:
    """The answer to an approval request."""
    return {"decision": DECISION_WIRE[decision]}


def describe_approval(req: ApprovalRequest) -> str:
    """A one-line text of what codex asks for."""
    what = f"`{_short(req.command)}`" if req.kind == "command" else _changes_text(req.changes)
    why = f" ({_short(req.reason)})" if req.reason else ""
    return (
        f"codex asks to run {what}{why}" if req.kind == "command" else f"codex asks to {what}{why}"
    )


def _changes_text(changes: list[dict[str, Any]]) -> str:
    paths = [str(c.get("path")) for c in changes if c.get("path")]
    if len(paths) == 1:
        return f"change {paths[0]}"
    return f"change {len(paths)} files" if paths else "change files"


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- notifications -> exec events ------------------------------------------------------

_ITEM_TYPES = {
    "agentMessage": "agent_message",
    "commandExecution": "command_execution",
    "fileChange": "file_change",
    "mcpToolCall": "mcp_tool_call",
    "webSearch": "web_search",
    "reasoning": "reasoning",
}
_STATUSES = {"inProgress": "in_progress"}
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def _snake(name: str) -> str:
    return _CAMEL.sub("_", name).lower()


def exec_item(item: Mapping[str, Any]) -> dict[str, Any] | None:
    """An app-server thread item in `codex exec --json`'s item shape; None for items
    `codex exec` does not report (the user's own message)."""
    kind = str(item.get("type", ""))
    if kind in ("userMessage", "hookPrompt"):
        return None
    out: dict[str, Any] = {
        "id": str(item.get("id", "")),
        "type": _ITEM_TYPES.get(kind, _snake(kind)),
    }
    status = item.get("status")
    if isinstance(status, str):
        out["status"] = _STATUSES.get(status, status)
    if kind == "agentMessage":
        out["text"] = str(item.get("text") or "")
    elif kind == "commandExecution":
        out["command"] = str(item.get("command") or "")
        out["aggregated_output"] = str(item.get("aggregatedOutput") or "")
        out["exit_code"] = item.get("exitCode")
    elif kind == "fileChange":
        out["changes"] = [
            {"path": str(c.get("path", "")), "kind": _change_kind(c.get("kind"))}
            for c in item.get("changes") or []
            if isinstance(c, dict)
        ]
    elif kind == "reasoning":
        parts = [*(item.get("summary") or []), *(item.get("content") or [])]
        out["text"] = "\n".join(str(p) for p in parts if p)
    elif kind == "mcpToolCall":
        out.update(server=item.get("server", ""), tool=item.get("tool", ""))
    elif kind == "webSearch":
        out["query"] = str(item.get("query") or "")
    else:
        for key, value in item.items():
            if key not in ("id", "type", "status"):
                out[_snake(key)] = value
    return out


def _change_kind(kind: Any) -> str:
    if isinstance(kind, dict):
        return str(kind.get("type", ""))
    return str(kind or "")


def _usage_of(breakdown: Any) -> dict[str, int]:
    raw = breakdown if isinstance(breakdown, dict) else {}
    return {
        "input_tokens": int(raw.get("inputTokens") or 0),
        "cached_input_tokens": int(raw.get("cachedInputTokens") or 0),
        "output_tokens": int(raw.get("outputTokens") or 0),
    }


def codex_event(data: dict[str, Any], summary: str | None = None) -> dict[str, Any]:
    """An exec-shaped codex event as the engine emits it (truncated, with its summary)."""
    return {
        "kind": "codex",
        "data": truncate_event(data),
        "summary": summary if summary is not None else describe(data),
    }


@dataclass
class TurnFold:
    """One turn's notifications folded into exec-shaped events and the turn's end.

    Feed it every notification of its thread (`feed` returns the events to emit). The
    turn's usage is the sum of `last` over its ``thread/tokenUsage/updated``
    notifications: one per model request, as `codex exec` sums them in
    ``turn.completed``.
    """

    thread_id: str
    turn_id: str | None = None
    usage: dict[str, int] = field(
        default_factory=lambda: {"input_tokens": 0, "cached_input_tokens": 0, "output_tokens": 0}
    )
    status: str | None = None  # "completed" | "failed" | "interrupted" once ended
    error_message: str | None = None
    last_message: str | None = None
    diff: str | None = None
    #: Agent messages' phases (commentary, final_answer, ...) by item id, when given.
    phases: dict[str, str] = field(default_factory=dict)

    @property
    def ended(self) -> bool:
        """True once ``turn/completed`` for this turn arrived."""
        return self.status is not None

    def _ours(self, params: Mapping[str, Any]) -> bool:
        turn = params.get("turnId")
        if turn is None and isinstance(params.get("turn"), dict):
            turn = params["turn"].get("id")
        return self.turn_id is None or turn is None or turn == self.turn_id

    def feed(self, method: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The events to emit for one notification of this thread."""
        if not self._ours(params):
            return []
        if method == "turn/started":
            turn = params.get("turn")
            if self.turn_id is None and isinstance(turn, dict) and turn.get("id"):
                self.turn_id = str(turn["id"])
            return [codex_event({"type": "turn.started"})]
        if method in ("item/started", "item/completed"):
            raw = params.get("item")
            item = exec_item(raw) if isinstance(raw, dict) else None
            if item is None:
                return []
            if isinstance(raw, dict) and isinstance(raw.get("phase"), str):
                self.phases[str(raw.get("id"))] = raw["phase"]
            if method == "item/completed" and item["type"] == "agent_message":
                self.last_message = item["text"]
            kind = "item.started" if method == "item/started" else "item.completed"
            return [codex_event({"type": kind, "item": item})]
        if method == "item/agentMessage/delta":
            item_id = str(params.get("itemId", ""))
            delta = {
                "kind": "answer_delta",
                "item_id": item_id,
                "delta": str(params.get("delta", "")),
            }
            if item_id in self.phases:
                delta["phase"] = self.phases[item_id]
            return [delta]
        if method == "turn/plan/updated":
            steps = [
                {"text": str(step.get("step", "")), "completed": step.get("status") == "completed"}
                for step in params.get("plan") or []
                if isinstance(step, dict)
            ]
            item = {"id": f"plan-{self.turn_id}", "type": "todo_list", "items": steps}
            data = {"type": "item.updated", "item": item}
            done = sum(1 for step in steps if step["completed"])
            return [codex_event(data, f"plan: {done}/{len(steps)} steps done")]
        if method == "turn/diff/updated":
            self.diff = str(params.get("diff", ""))
            return [
                truncate_event({"kind": "turn_diff", "turn_id": self.turn_id, "diff": self.diff})
            ]
        if method == "thread/tokenUsage/updated":
            usage = params.get("tokenUsage")
            last = _usage_of(usage.get("last") if isinstance(usage, dict) else None)
            for key, value in last.items():
                self.usage[key] += value
            return []
        if method == "error":
            error = params.get("error")
            message = str(error.get("message", "")) if isinstance(error, dict) else str(error or "")
            self.error_message = message or "codex reported an error"
            return [codex_event({"type": "error", "message": self.error_message})]
        if method == "turn/completed":
            return self._completed(params)
        return []

    def _completed(self, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        turn = params.get("turn")
        turn = turn if isinstance(turn, dict) else {}
        self.status = str(turn.get("status") or "completed")
        error = turn.get("error")
        if isinstance(error, dict) and error.get("message"):
            self.error_message = str(error["message"])
        if self.status == "completed":
            return [codex_event({"type": "turn.completed", "usage": dict(self.usage)})]
        if self.status == "interrupted":
            return [codex_event({"type": "turn.interrupted"}, "turn interrupted")]
        message = self.error_message or f"turn ended {self.status}"
        return [codex_event({"type": "turn.failed", "error": {"message": message}})]


class DeltaBuffer:
    """Joins a run's ``answer_delta`` events, so that a token stream is not one event each.

    `add` takes an event about to be emitted and returns the events to emit now: a delta
    is held (and joined with the next ones of the same item); anything else first
    releases what is held, so the order is kept. The engine calls `flush` on a timer
    (every `DELTA_FLUSH_S`) and at the end of the turn.
    """

    def __init__(self) -> None:
        self._item: str | None = None
        self._phase: Any = None
        self._parts: list[str] = []

    @property
    def holding(self) -> bool:
        """True while some delta waits to be emitted."""
        return bool(self._parts)

    def add(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        if event.get("kind") != "answer_delta":
            return [*self.flush(), event]
        out = self.flush() if event.get("item_id") != self._item else []
        self._item = event.get("item_id")
        self._phase = event.get("phase")
        self._parts.append(str(event.get("delta", "")))
        return out

    def flush(self) -> list[dict[str, Any]]:
        if not self._parts:
            return []
        delta, self._parts = "".join(self._parts), []
        joined = {"kind": "answer_delta", "item_id": self._item, "delta": delta}
        if self._phase is not None:
            joined["phase"] = self._phase
        return [joined]


#: How long answer deltas are held to be joined into one event: at most four a second,
#: each stored by the hub and sent to every reader of the run.
DELTA_FLUSH_S = 0.25


# --- the schema fingerprint ---------------------------------------------------------------


def _methods(schema: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """method name -> the definition of its params (resolved), from a oneOf schema."""
    definitions = schema.get("definitions") or {}
    found: dict[str, dict[str, Any]] = {}
    for variant in schema.get("oneOf") or []:
        props = variant.get("properties") or {}
        names = (props.get("method") or {}).get("enum") or []
        ref = (props.get("params") or {}).get("$ref", "")
        params = definitions.get(ref.rsplit("/", 1)[-1], {}) if ref else {}
        for name in names:
            found[name] = params
    return found


def _shape(definition: Mapping[str, Any]) -> dict[str, Any]:
    """What the engine relies on in a definition: its required fields, or its enum."""
    if "enum" in definition:
        return {"enum": sorted(map(str, definition["enum"]))}
    if "oneOf" in definition:
        values: list[str] = []
        for variant in definition["oneOf"]:
            values += [str(v) for v in variant.get("enum") or []]
            values += sorted(variant.get("required") or [])
        return {"oneOf": sorted(values)}
    return {"required": sorted(definition.get("required") or [])}


def schema_fingerprint(schemas: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The parts of the generated schema this engine depends on.

    `schemas` maps the file names of `SCHEMA_FILES` to their parsed JSON. A method or
    definition missing from the schema is recorded as None.
    """
    client = _methods(schemas["ClientRequest.json"])
    notes = _methods(schemas["ServerNotification.json"])
    server = _methods(schemas["ServerRequest.json"])
    definitions: dict[str, Any] = {}
    for name in SCHEMA_FILES:
        definitions.update(schemas[name].get("definitions") or {})

    def pick(found: dict[str, dict[str, Any]], names: tuple[str, ...]) -> dict[str, Any]:
        return {name: (_shape(found[name]) if name in found else None) for name in names}

    return {
        "client_requests": pick(client, CLIENT_METHODS),
        "notifications": pick(notes, NOTIFICATIONS),
        "server_requests": pick(server, SERVER_REQUESTS),
        "definitions": {
            name: (_shape(definitions[name]) if name in definitions else None)
            for name in DEFINITIONS
        },
    }


def fingerprint_differences(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    """What `actual` changed in the parts `expected` records ("turn/steer: missing")."""
    differences = []
    for section, names in expected.items():
        if section == "codex_version" or not isinstance(names, dict):
            continue
        seen = actual.get(section) or {}
        for name, shape in names.items():
            now = seen.get(name)
            if now is None and shape is not None:
                differences.append(f"{name}: missing")
            elif now != shape:
                differences.append(f"{name}: was {json.dumps(shape)}, is {json.dumps(now)}")
    return differences


def load_expected_fingerprint(path: Path = SCHEMA_FINGERPRINT_PATH) -> dict[str, Any]:
    """The committed fingerprint (with the ``codex_version`` it was generated from)."""
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data
