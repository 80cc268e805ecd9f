"""The OpenAPI 3.1 document of the hub's HTTP API, built in code, served at
``GET /openapi.json``.

It describes what :mod:`hub.api_openai` and :mod:`hub.api_runs` answer, status by
status, so a client generator or a fuzzer (the tests run schemathesis against it) can
hold the hub to it. It is built from the hub's settings: the model name it serves and
whether API keys are required. The two websockets (``/ws`` for nodes, ``/api/feed`` for
the monitor) and the monitor's static page are not HTTP operations; the document's
description points to where they are specified.

A test compares the document with the routes the application really has, so an
endpoint added without being described here fails the suite.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from aiohttp import web

from hub.appkeys import SETTINGS
from hub.settings import HubSettings
from wire import DECISIONS, LABEL_PATTERN
from wire import RUN_STATES as WIRE_RUN_STATES

routes = web.RouteTableDef()

Schema = dict[str, Any]

#: Paths the hub serves that are not HTTP operations of this document.
NOT_OPERATIONS = {
    "/ws": "websocket for executors and bridges (wire/protocol.py)",
    "/api/feed": "websocket of the monitor's live feed (hub/api_runs.py)",
    "/": "the monitor page (public: it shows nothing without a key)",
    "/static": "the monitor page's files (public)",
    "/v1/{tail}": "any other path under /v1: 404 (405 for a served path) naming the endpoints",
}

#: The run states, from the wire contract (wire.RunState).
RUN_STATES = list(WIRE_RUN_STATES)


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    if "type" in schema and isinstance(schema["type"], str):
        return {**schema, "type": [schema["type"], "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def _object(
    properties: dict[str, Schema], *, extra: bool = True, optional: tuple[str, ...] = ()
) -> Schema:
    """An object whose every property is required unless named in ``optional``."""
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
        "additionalProperties": extra,
    }


STRING: Schema = {"type": "string"}
NUMBER: Schema = {"type": "number"}
INTEGER: Schema = {"type": "integer"}
BOOLEAN: Schema = {"type": "boolean"}
CURSOR: Schema = {"type": "integer", "minimum": 0, "maximum": 2**62}
#: Who started a run (hub.auth): ``key:`` and 12 hex digits, or ``anonymous`` on a hub
#: without keys; null for a chat bridge's run.
PRINCIPAL: Schema = {"type": "string", "description": "The API key's principal id."}


NON_BLANK: Schema = {"type": "string", "pattern": r"\S"}
#: A user message with text: the instruction a chat completion needs.
USER_TEXT: Schema = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"const": "user"},
        "content": {
            "anyOf": [
                NON_BLANK,
                {
                    "type": "array",
                    "contains": {
                        "type": "object",
                        "required": ["type", "text"],
                        "properties": {"type": {"const": "text"}, "text": NON_BLANK},
                    },
                },
            ]
        },
    },
}


def _schemas(model_name: str) -> dict[str, Schema]:
    error_map = {"type": "object", "additionalProperties": STRING}
    return {
        "Error": _object(
            {
                "error": _object(
                    {
                        "message": STRING,
                        "type": STRING,
                        "param": _nullable(STRING),
                        "code": _nullable(STRING),
                    }
                )
            }
        ),
        "Model": _object(
            {
                "id": {"type": "string", "examples": [model_name]},
                "object": {"const": "model"},
                "created": INTEGER,
                "owned_by": STRING,
            }
        ),
        "ModelList": _object(
            {"object": {"const": "list"}, "data": {"type": "array", "items": _ref("Model")}}
        ),
        "ContentPart": _object(
            {"type": {"type": "string", "examples": ["text"]}, "text": _nullable(STRING)},
            optional=("text",),
        ),
        "ChatMessage": _object(
            {
                "role": {"type": "string", "examples": ["user", "system", "assistant"]},
                "content": {
                    "anyOf": [
                        STRING,
                        {"type": "array", "items": _ref("ContentPart")},
                        {"type": "null"},
                    ]
                },
            },
            optional=("content",),
        ),
        "ChatCompletionRequest": _object(
            {
                "model": {"const": model_name},
                "messages": {
                    "type": "array",
                    "items": _ref("ChatMessage"),
                    "minItems": 1,
                    # The instruction: the last user message with text.
                    "contains": USER_TEXT,
                },
                "stream": _nullable(BOOLEAN),
                "stream_options": _nullable(
                    _object({"include_usage": BOOLEAN}, optional=("include_usage",))
                ),
                "user": _nullable(STRING),
            },
            optional=("stream", "stream_options", "user"),
        ),
        "ResponseRequest": _object(
            {
                "model": {"const": model_name},
                "input": {
                    "anyOf": [
                        NON_BLANK,
                        {"type": "array", "items": {"type": "object"}, "minItems": 1},
                    ]
                },
                "instructions": _nullable(STRING),
                "previous_response_id": _nullable(STRING),
                "stream": _nullable(BOOLEAN),
                "text": {
                    "type": "object",
                    "description": "`format`: text, json_object, json_schema",
                },
                "user": _nullable(STRING),
            },
            optional=("instructions", "previous_response_id", "stream", "text", "user"),
        ),
        "Response": _object(
            {
                "id": STRING,
                "object": {"const": "response"},
                "created_at": INTEGER,
                "status": {"enum": ["queued", "in_progress", "completed", "failed", "cancelled"]},
                "model": STRING,
                "output": {"type": "array", "items": {"type": "object"}},
                "output_text": STRING,
                "error": _nullable({"type": "object"}),
                "usage": _nullable({"type": "object"}),
            }
        ),
        "Usage": _object(
            {
                "prompt_tokens": INTEGER,
                "completion_tokens": INTEGER,
                "total_tokens": INTEGER,
                "prompt_tokens_details": _object({"cached_tokens": INTEGER}),
            }
        ),
        "ChatCompletion": _object(
            {
                "id": STRING,
                "object": {"const": "chat.completion"},
                "created": INTEGER,
                "model": STRING,
                "choices": {
                    "type": "array",
                    "items": _object(
                        {
                            "index": INTEGER,
                            "message": _object({"role": {"const": "assistant"}, "content": STRING}),
                            "logprobs": {"type": "null"},
                            "finish_reason": STRING,
                        }
                    ),
                },
                "usage": _ref("Usage"),
                "system_fingerprint": {"type": "null"},
            }
        ),
        "RunSummary": _object(
            {
                "id": STRING,
                "state": {"enum": RUN_STATES},
                "source": STRING,
                "user": _nullable(STRING),
                "session_key": _nullable(STRING),
                "prompt_excerpt": STRING,
                "executor": _nullable(STRING),
                "created_at": NUMBER,
                "started_at": _nullable(NUMBER),
                "finished_at": _nullable(NUMBER),
                "error": _nullable(error_map),
                "principal": _nullable(PRINCIPAL),
                "target": _nullable(TARGET_TEXT),
            }
        ),
        "Run": _object(
            {
                "id": STRING,
                "prompt": STRING,
                "origin": {"type": "object"},
                "source": STRING,
                "created_at": NUMBER,
                "state": {"enum": RUN_STATES},
                "session_key": _nullable(STRING),
                "user": _nullable(STRING),
                "effective_prompt": _nullable(STRING),
                "optimize": _nullable(BOOLEAN),
                "executor": _nullable(STRING),
                "thread_id": _nullable(STRING),
                "answer": _nullable(STRING),
                "usage": _nullable({"type": "object", "additionalProperties": INTEGER}),
                "error": _nullable(error_map),
                "started_at": _nullable(NUMBER),
                "finished_at": _nullable(NUMBER),
                "updated_at": NUMBER,
                "dedupe_key": _nullable(STRING),
                "principal": _nullable(PRINCIPAL),
                "target": _nullable(TARGET_TEXT),
            }
        ),
        "Event": _object({"seq": {"type": "integer", "minimum": 1}, "ts": NUMBER, "kind": STRING}),
        "Approval": _object(
            {
                "approval_id": STRING,
                "state": {"enum": ["pending", "decided"]},
                "request": {
                    "type": "object",
                    "description": "What codex asks: kind (command | file_change), reason, "
                    "and command and cwd, or changes (paths and diffs).",
                },
                "summary": STRING,
                "requested_at": NUMBER,
                "expires_at": {
                    "type": "number",
                    "description": "When no decision denies it (APPROVAL_TIMEOUT_S).",
                },
                "choices": {"type": "array", "items": {"enum": list(DECISIONS)}},
                "decision": STRING,
                "by": {
                    "type": "string",
                    "description": "Who decided: slack:<user>, telegram:<user>, an API "
                    "principal, or timeout.",
                },
                "decided_at": NUMBER,
                "reason": STRING,
            },
            optional=("decision", "by", "decided_at", "reason"),
        ),
        "Node": _object(
            {
                "id": STRING,
                "role": {"enum": ["executor", "bridge"]},
                "name": STRING,
                "online": BOOLEAN,
                "connected_at": NUMBER,
                "last_seen": NUMBER,
                "capacity": INTEGER,
                "busy": INTEGER,
                "login": _nullable({"type": "object"}),
                "platform": STRING,
                "labels": {
                    "type": "array",
                    "items": {"type": "string", "pattern": LABEL_PATTERN},
                    "description": "What the executor announced (EXEC_LABELS).",
                },
                "engine": {"type": "string", "description": "EXEC_ENGINE; empty: not said."},
                "codex_version": {
                    "type": "string",
                    "description": "`codex --version` on the executor; empty: unknown.",
                },
                "runs": {
                    "type": "array",
                    "items": STRING,
                    "description": "Ids of the runs on the executor now.",
                },
            },
            optional=(
                "capacity",
                "busy",
                "login",
                "platform",
                "labels",
                "engine",
                "codex_version",
                "runs",
            ),
        ),
        "Setting": _object(
            {
                "env": STRING,
                "value": {
                    "description": 'The value the hub uses; for a secret only "set" or "not set".'
                },
                "secret": BOOLEAN,
                "default": {
                    "type": "boolean",
                    "description": "Not given: the default (or a generated credential).",
                },
            }
        ),
        "CreateRun": _object(
            {
                "prompt": NON_BLANK,
                "session_key": _nullable({"type": "string", "maxLength": 500}),
                "optimize": _nullable(BOOLEAN),
                "repo": {"type": "string", "minLength": 1, "maxLength": 500, "pattern": r"^\S+$"},
                "open_pr": BOOLEAN,
                "target": _nullable(TARGET),
            },
            optional=("session_key", "optimize", "repo", "open_pr", "target"),
        ),
    }


#: Why each error status is answered, for the document's reader.
ERRORS = {
    "400": "The request is malformed: body, parameter or header (OpenAI's envelope).",
    "401": "Missing or wrong API key (HUB_API_KEYS, HUB_OPERATOR_KEYS, or the generated one).",
    "403": (
        "A Host that is not the hub's (HUB_ALLOWED_HOSTS), or an Origin that is not its "
        "own (HUB_ALLOWED_ORIGINS): the request comes from a page of another site; or "
        "a target HUB_TARGET_RULES does not let the key use (`target_not_allowed`)."
    ),
    "404": "No such model or run (another key's run is answered so too).",
    "408": "The body did not arrive in time.",
    "409": "The run was cancelled, or had already ended; or the executor holding the "
    "conversation is gone, or does not fit the target (`conversation_elsewhere`).",
    "413": "The body is larger than HUB_MAX_BODY_BYTES.",
    "415": "The body is not sent as application/json, or is compressed (Content-Encoding).",
    "422": "The prompt optimizer judged the request not executable.",
    "429": (
        "The queue is full (HUB_QUEUE_LIMIT), the key's rate limit is reached, or the "
        "address sent too many wrong keys (HUB_AUTH_FAILURE_LIMIT); see Retry-After."
    ),
    "502": "codex or the executor failed.",
    "503": "codex is not logged in, no executor can take runs, the hub is shutting down, "
    "or its store cannot write (`store_unavailable`).",
    "504": "The run timed out.",
}
#: Where a run may go (hub.targets), as a request names it.
TARGET: Schema = {
    "description": "Where the run may go: labels all required, or an executor's name "
    "(`gpu,prod`, `@host-1`, or a list of them); the executor holding a conversation "
    "keeps it. A label or name no executor ever announced is refused (`unknown_target`, "
    "listing the known ones; GET /api/targets), one HUB_TARGET_RULES does not allow the "
    "key is 403 `target_not_allowed`. With no matching executor free, the run waits.",
    "anyOf": [
        {"type": "string", "maxLength": 2000},
        {"type": "array", "items": {"type": "string", "maxLength": 200}, "maxItems": 16},
    ],
}
#: A run's target as it records it: its terms sorted and comma-joined.
TARGET_TEXT: Schema = {"type": "string", "description": "Where the run may go: `gpu,prod`."}
RUN_ID_HEADER = {"X-Run-ID": {"description": "The run this answer belongs to.", "schema": STRING}}


def _errors(*statuses: int, run_id: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status in statuses:
        response: dict[str, Any] = {
            "description": ERRORS[str(status)],
            "content": {"application/json": {"schema": _ref("Error")}},
        }
        if status == 429:
            response["headers"] = {"Retry-After": {"schema": INTEGER}}
        if run_id:
            response["headers"] = {**response.get("headers", {}), **RUN_ID_HEADER}
        out[str(status)] = response
    return out


def _json(description: str, schema: Schema, **extra: Any) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
        **extra,
    }


def _query(name: str, schema: Schema, description: str) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _header(name: str, schema: Schema, description: str) -> Schema:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "schema": schema,
        "description": description,
    }


#: One server-sent event of a streamed completion; ``: keepalive`` comments are not events.
SSE_EVENT: Schema = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {
            "type": "string",
            "description": "A chat.completion.chunk as JSON, an error envelope, or [DONE].",
        },
        "event": STRING,
        "id": STRING,
    },
}
RUN_ID_PARAM = {"name": "run_id", "in": "path", "required": True, "schema": STRING}
RUN_LINKS = {
    "GetRun": {"operationId": "getRun", "parameters": {"run_id": "$response.body#/run/id"}},
    "CancelRun": {"operationId": "cancelRun", "parameters": {"run_id": "$response.body#/run/id"}},
}


def _paths(keyed: tuple[int, ...]) -> dict[str, Any]:
    """Every operation; ``keyed`` is (401, 403, 429) when API keys are required, else
    (403, 429)."""
    return {
        "/v1/models": {
            "get": {
                "operationId": "listModels",
                "summary": "The one model this hub serves (HUB_MODEL_NAME).",
                "responses": {
                    "200": _json("The model list.", _ref("ModelList")),
                    **_errors(*keyed),
                },
            }
        },
        "/v1/models/{model}": {
            "get": {
                "operationId": "getModel",
                "summary": "One model, by id.",
                "parameters": [{"name": "model", "in": "path", "required": True, "schema": STRING}],
                "responses": {"200": _json("The model.", _ref("Model")), **_errors(*keyed, 404)},
            }
        },
        "/v1/chat/completions": {
            "post": {
                "operationId": "createChatCompletion",
                "summary": "Run codex on the last user message; answer like OpenAI.",
                "description": (
                    "With `stream: true` the answer is SSE: `data: {chunk}` lines, "
                    "`: keepalive` comments while codex works, progress as "
                    "`reasoning_content`, then `data: [DONE]`."
                ),
                "parameters": [
                    _header(
                        "X-Session-Id",
                        {"type": "string", "maxLength": 200},
                        "Continue this conversation (codex resumes its thread); the id is "
                        "the key's own: another key's same id is another conversation.",
                    ),
                    _header(
                        "X-Target",
                        {"type": "string", "maxLength": 2000},
                        "Where the run may go: labels all required or an executor's name "
                        "(`gpu,prod`, `@host-1`); see CreateRun's `target`.",
                    ),
                    _header(
                        "X-Repo",
                        {"type": "string", "maxLength": 500, "pattern": r"^\S*$"},
                        "Work on this repository (owner/repo, owner/repo@branch or a git "
                        "URL) in a worktree of the conversation's own; also metadata.repo.",
                    ),
                    _header(
                        "X-Open-PR",
                        {"enum": ["true", "false", "1", "0", "yes", "no", "on", "off"]},
                        "Commit, push the run's branch and open a pull request after the run.",
                    ),
                    _header(
                        "X-Optimize-Prompt",
                        {"enum": ["true", "false", "1", "0", "yes", "no", "on", "off"]},
                        "Override OPTIMIZE_PROMPT for this request.",
                    ),
                    _header(
                        "Idempotency-Key",
                        {"type": "string", "maxLength": 200},
                        "A key seen before (from the same API key) names the run it "
                        "started instead of a new one.",
                    ),
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("ChatCompletionRequest")}},
                },
                "responses": {
                    "200": {
                        "description": "codex's answer (JSON, or SSE when streaming).",
                        "headers": RUN_ID_HEADER,
                        "content": {
                            "application/json": {"schema": _ref("ChatCompletion")},
                            # Before OpenAPI 3.2 this schema describes each event.
                            "text/event-stream": {"schema": SSE_EVENT},
                        },
                        "links": {
                            "GetRun": {
                                "operationId": "getRun",
                                "parameters": {"run_id": "$response.header.X-Run-ID"},
                            }
                        },
                    },
                    **_errors(
                        400, *keyed, 403, 404, 408, 409, 413, 415, 422, 502, 503, 504, run_id=True
                    ),
                },
            }
        },
        "/v1/responses": {
            "post": {
                "operationId": "createResponse",
                "summary": "Run codex on the input; answer with a Response (the Responses API).",
                "description": (
                    "`instructions` and system/developer items reach codex as instructions; "
                    "`previous_response_id` resumes that response's codex thread; "
                    "`text.format` json_schema is codex's output schema. With `stream: true` "
                    "the answer is SSE with the Responses API's events."
                ),
                "parameters": [
                    _header(
                        "X-Session-Id",
                        {"type": "string", "maxLength": 200},
                        "Continue this conversation (codex resumes its thread).",
                    ),
                    _header(
                        "X-Target",
                        {"type": "string", "maxLength": 2000},
                        "Where the run may go: labels all required or an executor's name "
                        "(`gpu,prod`, `@host-1`); see CreateRun's `target`.",
                    ),
                    _header(
                        "Idempotency-Key",
                        {"type": "string", "maxLength": 200},
                        "A key seen before names the run it started instead of a new one.",
                    ),
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("ResponseRequest")}},
                },
                "responses": {
                    "200": {
                        "description": "The response (JSON, or SSE events when streaming).",
                        "headers": RUN_ID_HEADER,
                        "content": {
                            "application/json": {"schema": _ref("Response")},
                            "text/event-stream": {"schema": SSE_EVENT},
                        },
                    },
                    **_errors(400, *keyed, 403, 404, 408, 409, 413, 415, 422, 502, 503, 504),
                },
            }
        },
        "/v1/responses/{id}": {
            "get": {
                "operationId": "getResponse",
                "summary": "A response this caller made, finished or not.",
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": STRING}],
                "responses": {
                    "200": _json("The response.", _ref("Response")),
                    **_errors(*keyed, 404),
                },
            }
        },
        "/api/runs": {
            "get": {
                "operationId": "listRuns",
                "summary": "Newest runs first, filtered and paged.",
                "description": (
                    "The caller's own runs only; an operator key (HUB_OPERATOR_KEYS) "
                    "sees every run, the chat bridges' too."
                ),
                "parameters": [
                    _query("state", STRING, "Comma-separated run states."),
                    _query(
                        "source", STRING, "Comma-separated sources (http, monitor, slack, ...)."
                    ),
                    _query(
                        "q",
                        STRING,
                        "Text in the prompt, user or answer, from the start of a word, "
                        "or a run id.",
                    ),
                    _query("session_key", STRING, "Runs of this session only."),
                    _query("before", CURSOR, "The `next_before` of the previous page."),
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 500},
                        "Runs per page (50).",
                    ),
                ],
                "responses": {
                    "200": _json(
                        "A page of runs.",
                        _object(
                            {
                                "runs": {"type": "array", "items": _ref("RunSummary")},
                                "next_before": _nullable(INTEGER),
                            }
                        ),
                    ),
                    **_errors(400, *keyed),
                },
            },
            "post": {
                "operationId": "createRun",
                "summary": "Start a run (the monitor's composer).",
                "description": (
                    "`session_key` continues a conversation of the caller's own (a "
                    "`session_key` of one of its runs); any other names a new one of "
                    "its own. Only an operator key may continue another key's or a chat "
                    "platform's conversation, and the run records it (`origin.operator`). "
                    "With `STEER_MODE=steer`, a prompt into a conversation whose run is "
                    "working (on an app-server executor) goes into that run's running "
                    "turn: `steered` is true and `run` is that run; a steer that failed "
                    "queues the prompt as a new run and `steer_error` says why."
                ),
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("CreateRun")}},
                },
                "responses": {
                    "202": _json(
                        "The run, queued (or the running run the prompt steered).",
                        _object(
                            {
                                "run": _ref("RunSummary"),
                                "position": INTEGER,
                                # The chat platform the answer also goes to (a conversation
                                # that began there), else null.
                                "reply_to": _nullable(STRING),
                                # The prompt went into the running turn of `run`.
                                "steered": BOOLEAN,
                                "message": STRING,
                                "steer_error": STRING,
                            },
                            optional=("message", "steer_error"),
                        ),
                        headers=RUN_ID_HEADER,
                        links=RUN_LINKS,
                    ),
                    **_errors(400, *keyed, 403, 408, 409, 413, 415, 503),
                },
            },
        },
        "/api/runs/{run_id}": {
            "get": {
                "operationId": "getRun",
                "summary": "One run with its events (those after `after`).",
                "parameters": [
                    RUN_ID_PARAM,
                    _query("after", CURSOR, "Only events after this seq."),
                ],
                "responses": {
                    "200": _json(
                        "The run and its events.",
                        _object(
                            {
                                "run": _ref("Run"),
                                "events": {"type": "array", "items": _ref("Event")},
                                "approval": _nullable(_ref("Approval")),
                            },
                            optional=("approval",),
                        ),
                    ),
                    **_errors(400, *keyed, 404),
                },
            }
        },
        "/api/runs/{run_id}/approval": {
            "post": {
                "operationId": "decideApproval",
                "summary": "Decide the run's pending approval request (APPROVERS, else the "
                "person who asked; the first decision wins).",
                "parameters": [RUN_ID_PARAM],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": _object(
                                {
                                    "decision": {"enum": list(DECISIONS)},
                                    "reason": {"type": "string", "maxLength": 500},
                                    "approval_id": {"type": "string", "minLength": 1},
                                },
                                optional=("reason", "approval_id"),
                            )
                        }
                    },
                },
                "responses": {
                    "200": _json(
                        "The request, decided.",
                        _object({"run_id": STRING, "approval": _ref("Approval")}),
                        headers=RUN_ID_HEADER,
                    ),
                    **_errors(400, *keyed, 404, 415),
                    "403": {
                        "description": "The key is not an approver (APPROVERS), or (no "
                        "APPROVERS) not the one that asked; or a Host or Origin refused.",
                        "content": {"application/json": {"schema": _ref("Error")}},
                    },
                    "409": {
                        "description": "Nothing is pending: no request, or already decided "
                        "(the message says by whom and when).",
                        "content": {"application/json": {"schema": _ref("Error")}},
                    },
                },
            }
        },
        "/api/runs/{run_id}/diff": {
            "get": {
                "operationId": "getRunDiff",
                "summary": "What a run changed in its repository (its diff and its "
                "conversation's, against the branch's base).",
                "description": (
                    "Until the run's workspace reports (or when it names no repository), "
                    "a run of the app-server engine answers with its codex turn's diff "
                    "as it stands now, updated while the run works: `diff`, `turn_id` "
                    "and `live: true`."
                ),
                "parameters": [RUN_ID_PARAM],
                "responses": {
                    "200": _json("The run's repository, branch and diffs.", {"type": "object"}),
                    **_errors(*keyed, 404),
                },
            }
        },
        "/api/runs/{run_id}/cancel": {
            "post": {
                "operationId": "cancelRun",
                "summary": "Cancel a queued or running run.",
                "parameters": [RUN_ID_PARAM],
                "responses": {
                    "200": _json(
                        "The run, being cancelled.",
                        _object({"run": _ref("RunSummary"), "cancelled": {"const": True}}),
                        headers=RUN_ID_HEADER,
                    ),
                    **_errors(*keyed, 404, 409, 415),
                },
            }
        },
        "/api/targets": {
            "get": {
                "operationId": "listTargets",
                "summary": "Every label and executor name ever announced: what a run may target.",
                "responses": {
                    "200": _json(
                        "The known labels and names.",
                        _object(
                            {
                                "labels": {"type": "array", "items": STRING},
                                "names": {"type": "array", "items": STRING},
                            }
                        ),
                    ),
                    **_errors(*keyed),
                },
            }
        },
        "/api/nodes": {
            "get": {
                "operationId": "listNodes",
                "summary": "Connected executors and bridges.",
                "responses": {
                    "200": _json(
                        "The nodes.", _object({"nodes": {"type": "array", "items": _ref("Node")}})
                    ),
                    **_errors(*keyed),
                },
            }
        },
        "/api/settings": {
            "get": {
                "operationId": "getSettings",
                "summary": "The hub's effective settings, read-only; secrets only as set / "
                "not set. Operators only (HUB_OPERATOR_KEYS).",
                "responses": {
                    "200": _json(
                        "Every setting of the hub.",
                        _object({"settings": {"type": "array", "items": _ref("Setting")}}),
                    ),
                    **_errors(*keyed),
                    "403": _json(
                        "The key is not an operator's (`operator_only`), or "
                        + ERRORS["403"][0].lower()
                        + ERRORS["403"][1:],
                        _ref("Error"),
                    ),
                },
            }
        },
        "/api/overview": {
            "get": {
                "operationId": "overview",
                "summary": "Running and queued now, failed in the last hour, runs since `since`.",
                "parameters": [
                    {
                        "name": "since",
                        "in": "query",
                        "required": False,
                        "description": "Where the day starts for the reader (epoch seconds).",
                        "schema": NUMBER,
                    }
                ],
                "responses": {
                    "200": _json(
                        "The overview.",
                        _object(
                            {
                                "since": NUMBER,
                                "now": NUMBER,
                                "runs": INTEGER,
                                "input_tokens": INTEGER,
                                "output_tokens": INTEGER,
                                "median_duration_s": _nullable(NUMBER),
                                "failed_last_hour": INTEGER,
                                "running": INTEGER,
                                "queued": INTEGER,
                                "capacity": INTEGER,
                            }
                        ),
                    ),
                    **_errors(400, *keyed),
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "The process is alive (no key needed).",
                "security": [],
                "responses": {
                    "200": _json("Alive.", _object({"status": {"const": "ok"}})),
                    **_errors(403),
                },
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Ready when an executor is connected, codex is logged in there "
                "and the store can write.",
                "responses": {
                    "200": _json("Ready.", _ref("Readiness")),
                    "503": _json("Not ready; `reason` says why.", _ref("Readiness")),
                    **_errors(*keyed),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus text format.",
                "responses": {
                    "200": {
                        "description": "The metrics.",
                        "content": {"text/plain": {"schema": STRING}},
                    },
                    **_errors(*keyed),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "responses": {
                    "200": _json("The OpenAPI document.", {"type": "object"}),
                    **_errors(*keyed),
                },
            }
        },
    }


def _version() -> str:
    try:
        return metadata.version("codex-hub")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def document(settings: HubSettings) -> dict[str, Any]:
    """The OpenAPI 3.1 document of a hub with these settings."""
    keyed = bool(settings.all_api_keys)
    schemas = _schemas(settings.model_name)
    schemas["Readiness"] = _object(
        {
            "ready": BOOLEAN,
            "executors": INTEGER,
            "logged_in": INTEGER,
            "store": {"type": "string", "enum": ["writable", "unwritable"]},
            "reason": STRING,
        },
        optional=("reason",),
    )
    others = "\n".join(f"- `{path}`: {what}" for path, what in NOT_OPERATIONS.items())
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "codex-hub",
            "version": _version(),
            "description": (
                "Hand work to the Codex CLI over HTTP. Errors use OpenAI's envelope "
                '`{"error": {"message", "type", "param", "code"}}`.\n\n'
                f"Served besides these operations:\n{others}"
            ),
        },
        "paths": _paths((401, 403, 429) if keyed else (403, 429)),
        "components": {"schemas": schemas},
    }
    if keyed:
        doc["components"]["securitySchemes"] = {
            "apiKey": {
                "type": "http",
                "scheme": "bearer",
                "description": (
                    "A key of HUB_API_KEYS or HUB_OPERATOR_KEYS, or the api_key the hub "
                    "generated (an operator's)."
                ),
            }
        }
        doc["security"] = [{"apiKey": []}]
    return doc


@routes.get("/openapi.json")
async def openapi_json(request: web.Request) -> web.Response:
    """This hub's OpenAPI document."""
    return web.json_response(document(request.app[SETTINGS]))
