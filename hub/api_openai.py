"""OpenAI-compatible API: ``GET /v1/models`` and ``POST /v1/chat/completions``.

Shaped exactly like OpenAI's so the official client works unchanged. The instruction is
the last non-empty ``user`` message; the answer is codex's raw final message. Streaming
is SSE with ``: keepalive`` comments while codex works and progress as
``reasoning_content`` deltas, never mixed into ``content``.

``X-Session-Id`` and ``Idempotency-Key`` are the caller's own: they are namespaced by
the key's principal (:mod:`hub.auth`), so another key sending the same values gets a
conversation and runs of its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hub.appkeys import ROUTER, SETTINGS
from hub.auth import principal_of, session_key
from hub.bus import Dropped
from hub.errors import (
    RUN_ID,
    ApiError,
    BadRequest,
    NotFound,
    RateLimited,
    Unavailable,
    json_response,
    read_json,
)
from hub.logs import bind
from hub.protocol import NUL_IN_PROMPT, repo_problem
from hub.router import HubClosing, QueueFull, Router, new_run_id
from hub.store import Run

log = logging.getLogger(__name__)

routes = web.RouteTableDef()


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class ContentPart(_Model):
    type: str
    text: str | None = None


class Message(_Model):
    role: str
    content: str | list[ContentPart] | None = None


class StreamOptions(_Model):
    include_usage: bool = False


class ChatRequest(_Model):
    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None


def instruction(messages: list[Message]) -> str:
    """The text of the last ``user`` message that has any."""
    for message in reversed(messages):
        if message.role != "user" or message.content is None:
            continue
        if isinstance(message.content, str):
            text = message.content
        else:
            text = "\n".join(p.text for p in message.content if p.type == "text" and p.text)
        if text.strip():
            return text
    return ""


def openai_usage(usage: dict[str, int] | None) -> dict[str, Any]:
    """codex's token counts in OpenAI's ``usage`` shape."""
    usage = usage or {}
    prompt = int(usage.get("input_tokens", 0))
    completion = int(usage.get("output_tokens", 0))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": int(usage.get("cached_input_tokens", 0))},
    }


#: How a run that did not succeed is told to an HTTP caller.
FAILURES: dict[str, tuple[int, str, str]] = {
    "codex_not_logged_in": (503, "server_error", "codex_not_logged_in"),
    "executor_lost": (502, "server_error", "executor_lost"),
    "timeout": (504, "server_error", "timeout"),
    "store_unavailable": (503, "server_error", "store_unavailable"),
}


def run_error(run: Run) -> ApiError:
    """The API error for a run that ended in anything but ``succeeded``."""
    error = run.error or {}
    code = error.get("code") or run.state
    message = error.get("message") or f"the run ended {run.state}"
    message = f"{message} (run {run.id})"
    if run.state == "timed_out":
        return ApiError(message, status=504, type="server_error", code="timeout")
    if run.state == "cancelled":
        return ApiError(message, status=409, type="invalid_request_error", code="cancelled")
    if run.state == "rejected":
        return ApiError(message, status=422, type="invalid_request_error", code="rejected")
    status, type_, code = FAILURES.get(code, (502, "server_error", code))
    return ApiError(message, status=status, type=type_, code=code)


async def _parse(request: web.Request) -> ChatRequest:
    if request.content_type not in ("application/json", "") and not request.content_type.endswith(
        "+json"
    ):
        raise ApiError(
            f"Content-Type must be application/json, not {request.content_type}",
            status=415,
            type="invalid_request_error",
            code="unsupported_media_type",
        )
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_json")
    try:
        return ChatRequest.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = err.get("loc", ())
        param = "".join(
            f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p))
            for i, p in enumerate(loc)
        )
        if err.get("type") == "missing":
            message = f"missing required parameter: '{param}'"
        else:
            message = f"invalid value for '{param}': {err.get('msg')}"
        raise BadRequest(message, param=param or None, code="invalid_value") from None


@routes.get("/v1/models")
async def list_models(request: web.Request) -> web.Response:
    """The one model this hub serves."""
    name = request.app[SETTINGS].model_name
    return json_response(
        {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": 0, "owned_by": "codex-hub"}],
        }
    )


@routes.get("/v1/models/{model}")
async def get_model(request: web.Request) -> web.Response:
    """One model, by id."""
    name = request.app[SETTINGS].model_name
    if request.match_info["model"] != name:
        raise NotFound(
            f"the model '{request.match_info['model']}' does not exist",
            code="model_not_found",
            param="model",
        )
    return json_response({"id": name, "object": "model", "created": 0, "owned_by": "codex-hub"})


def _text_header(request: web.Request, name: str, limit: int = 200) -> str:
    """A header that names something the store keeps: at most ``limit`` chars of UTF-8."""
    value = request.headers.get(name, "").strip()
    if len(value) > limit:
        raise BadRequest(f"{name} is longer than {limit} characters", param=name)
    try:
        # aiohttp hands other bytes over as surrogates, which the store cannot write.
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{name} is not valid UTF-8", param=name) from None
    return value


def _bool_header(request: web.Request, name: str) -> bool | None:
    value = request.headers.get(name)
    if value is None or value == "":
        return None
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise BadRequest(f"header {name} must be true or false, not {value!r}", param=name)


@routes.post("/v1/chat/completions")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    """Run codex on the last user message and answer like OpenAI would."""
    settings = request.app[SETTINGS]
    router = request.app[ROUTER]
    run_id = new_run_id()
    request[RUN_ID] = run_id
    bind(run_id=run_id)
    chat = await _parse(request)
    if chat.model != settings.model_name:
        raise NotFound(
            f"the model '{chat.model}' does not exist; this hub serves '{settings.model_name}'",
            code="model_not_found",
            param="model",
        )
    prompt = instruction(chat.messages)
    if not prompt:
        raise BadRequest(
            "no instruction: the messages hold no user message with text",
            param="messages",
            code="no_user_message",
        )
    if "\x00" in prompt:
        raise BadRequest(NUL_IN_PROMPT, param="messages", code="invalid_prompt")
    session = _text_header(request, "X-Session-Id")
    optimize = _bool_header(request, "X-Optimize-Prompt")
    idempotency = _text_header(request, "Idempotency-Key")
    origin = {
        "source": "http",
        "user": chat.user or None,
        "client": request.headers.get("User-Agent", "")[:200],
    }
    # The repository to work on (issue 15): X-Repo, else metadata.repo; the executor
    # checks it. X-Open-PR asks for commit, push and a pull request after the run.
    metadata = (chat.model_extra or {}).get("metadata")
    repo = _text_header(request, "X-Repo", 500) or (
        metadata.get("repo") if isinstance(metadata, dict) else None
    )
    if repo:
        if problem := repo_problem(repo):
            raise BadRequest(problem, param="X-Repo", code="invalid_repo")
        origin["repo"] = repo
    if _bool_header(request, "X-Open-PR"):
        origin["open_pr"] = "true"
    # Both ids live in the caller's own namespace: another key sending the same ones
    # gets a conversation (and runs) of its own, never this caller's.
    principal = principal_of(request)
    try:
        ticket = await router.submit(
            prompt,
            origin=origin,
            session_key=session_key("http", principal, session) if session else None,
            optimize=optimize,
            watch=bool(chat.stream),
            run_id=run_id,
            dedupe_key=session_key("http", principal, idempotency) if idempotency else None,
            principal=principal,
        )
    except QueueFull as exc:
        raise RateLimited(str(exc), code="queue_full", headers={"Retry-After": "5"}) from None
    except HubClosing as exc:
        raise Unavailable(str(exc), code="hub_closing") from None
    request[RUN_ID] = ticket.run.id
    if chat.stream:
        include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
        return await _stream(
            request,
            router,
            ticket.run,
            ticket.done,
            # A repeated Idempotency-Key names a run watched by nobody: no progress then.
            ticket.events or _NoEvents(),
            include_usage,
            settings.keepalive_s,
        )
    run = await _wait(request, router, ticket.run, ticket.done, settings.keepalive_s)
    if run.state != "succeeded":
        raise run_error(run)
    body = {
        "id": f"chatcmpl-{run.id}",
        "object": "chat.completion",
        "created": int(run.created_at),
        "model": settings.model_name,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": run.answer or ""},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": openai_usage(run.usage),
        "system_fingerprint": None,
    }
    return json_response(body, headers={"X-Run-ID": run.id})


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _wait(
    request: web.Request, router: Router, run: Run, done: asyncio.Future[Run], tick: float
) -> Run:
    """Wait for the run; a caller that goes away cancels it.

    aiohttp cancels this handler when the connection drops; a timer that looks every
    ``tick`` seconds is the second line (a timer, not ``wait_for``: it is on every run).
    """
    if done.done():
        return done.result()
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    handle: asyncio.TimerHandle | None = None

    def look() -> None:
        nonlocal handle
        if _gone(request) and task is not None:
            task.cancel()
        else:
            handle = loop.call_later(tick, look)

    handle = loop.call_later(tick, look)
    try:
        return await asyncio.shield(done)
    except asyncio.CancelledError:
        await _cancel_for_disconnect(router, run.id)
        raise
    finally:
        handle.cancel()


async def _cancel_for_disconnect(router: Router, run_id: str) -> None:
    try:
        await asyncio.shield(router.cancel(run_id, "the HTTP client disconnected"))
    except Exception:
        log.exception("cancelling run %s after a disconnect failed", run_id)


def _chunk(run: Run, model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {
        "id": f"chatcmpl-{run.id}",
        "object": "chat.completion.chunk",
        "created": int(run.created_at),
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def _progress_text(message: dict[str, Any]) -> str | None:
    if message.get("type") != "event":
        return None
    event = message["event"]
    summary = event.get("summary")
    if summary:
        return f"{summary}\n"
    if event.get("kind") == "state" and event.get("state") in ("optimizing", "running"):
        return f"{event['state']}...\n"
    if event.get("kind") in ("note", "optimizer") and event.get("message"):
        return f"{event['message']}\n"
    return None


async def _stream(
    request: web.Request,
    router: Router,
    run: Run,
    done: asyncio.Future[Run],
    events: Any,
    include_usage: bool,
    keepalive_s: float,
) -> web.StreamResponse:
    model = request.app[SETTINGS].model_name
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Run-ID": run.id,
            "X-Accel-Buffering": "no",
        }
    )
    getter: asyncio.Future[Any] | None = None
    try:
        await response.prepare(request)
        await response.write(_chunk(run, model, {"role": "assistant", "content": ""}))
        while not done.done():
            if getter is None:
                getter = asyncio.ensure_future(events.get())
            finished, _ = await asyncio.wait(
                {getter, done}, timeout=keepalive_s, return_when=asyncio.FIRST_COMPLETED
            )
            if getter in finished:
                try:
                    message = getter.result()
                except Dropped:
                    message = None
                    events = _NoEvents()
                getter = None
                text = _progress_text(message) if message else None
                if text:
                    await response.write(_chunk(run, model, {"reasoning_content": text}))
            elif not finished:
                await response.write(b": keepalive\n\n")
        final = done.result()
        if final.state == "succeeded":
            await response.write(_chunk(run, model, {"content": final.answer or ""}))
            await response.write(_chunk(run, model, {}, finish="stop"))
            if include_usage:
                usage_chunk = {
                    "id": f"chatcmpl-{run.id}",
                    "object": "chat.completion.chunk",
                    "created": int(run.created_at),
                    "model": model,
                    "system_fingerprint": None,
                    "choices": [],
                    "usage": openai_usage(final.usage),
                }
                await response.write(b"data: " + json.dumps(usage_chunk).encode() + b"\n\n")
        else:
            err = run_error(final)
            await response.write(b"data: " + json.dumps(err.body()).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
    except (asyncio.CancelledError, ConnectionError):
        await _cancel_for_disconnect(router, run.id)
        raise
    finally:
        if getter is not None:
            getter.cancel()
        events.close()


class _NoEvents:
    """Stands in for a dropped subscription: progress stops, the answer still comes."""

    async def get(self) -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    def close(self) -> None:
        pass
