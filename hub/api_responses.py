"""OpenAI's Responses API: ``POST /v1/responses`` and ``GET /v1/responses/{id}``.

A response is a run: ``resp_<hex>`` names ``run_<hex>``. ``instructions`` and system or
developer input items reach codex as its instructions; ``input`` is a string or a list
of items (messages with text and image parts; a trailing tool output is refused);
``previous_response_id`` resumes the codex thread of that response; ``text.format``
json_schema (or json_object) becomes codex's output schema. Streaming sends the
Responses API's events: ``response.created``, ``response.in_progress``,
``response.output_item.added``, ``response.content_part.added``,
``response.output_text.delta``, ``response.output_text.done``,
``response.content_part.done``, ``response.output_item.done``, then
``response.completed`` (or ``response.failed``), with ``: keepalive`` comments while
codex works. The text deltas come while codex writes the answer (app-server engine, see
:mod:`hub.answer_stream`), the message's item opened at the first of them; their
concatenation is the answer, which ``response.output_text.done`` repeats whole.
Retries, principals and errors work as in :mod:`hub.api_openai`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from pydantic import Field

from hub.answer_stream import AnswerStream
from hub.api_openai import (
    CALLS,
    Plan,
    _bool_header,
    _cancel_for_disconnect,
    _Model,
    _NoEvents,
    _text_header,
    check_model,
    conversation_error,
    output_format,
    parse_body,
    principal_of,
    refuse_tool_choice,
    run_error,
    start,
    unsupported,
    wait,
)
from hub.appkeys import ROUTER, SETTINGS, STORE
from hub.bus import Dropped
from hub.conversation import ConversationError, Turn, ask, response_turns
from hub.errors import RUN_ID, BadRequest, NotFound, json_response
from hub.router import Router, new_run_id
from hub.store import Run
from kernel.logs import bind

routes = web.RouteTableDef()


class ResponsesRequest(_Model):
    model: str
    input: str | list[Any] = Field(min_length=1)
    instructions: str | None = None
    previous_response_id: str | None = None
    stream: bool | None = False
    user: str | None = None


STATUS = {
    "queued": "queued",
    "succeeded": "completed",
    "failed": "failed",
    "timed_out": "failed",
    "rejected": "failed",
    "cancelled": "cancelled",
}


def response_id(run_id: str) -> str:
    return "resp_" + run_id.removeprefix("run_")


def run_id_of(resp_id: str) -> str | None:
    hexpart = resp_id.removeprefix("resp_")
    if hexpart == resp_id or not hexpart.isalnum() or len(hexpart) > 64:
        return None
    return "run_" + hexpart


def _usage(usage: dict[str, int] | None) -> dict[str, Any]:
    usage = usage or {}
    prompt = int(usage.get("input_tokens", 0))
    completion = int(usage.get("output_tokens", 0))
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": int(usage.get("cached_input_tokens", 0))},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def _message(run: Run, text: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {
        "type": "message",
        "id": "msg_" + run.id.removeprefix("run_"),
        "status": status,
        "role": "assistant",
        "content": content if status in ("completed", "incomplete") else [],
    }


def body_of(run: Run, model: str, final: bool = True) -> dict[str, Any]:
    """The Response object for ``run`` (in progress while ``final`` is False)."""
    asked = run.origin.get("responses") or {}
    status = STATUS.get(run.state, "in_progress") if final else "in_progress"
    if status == "queued" and not final:
        status = "in_progress"
    error = None
    if status in ("failed", "cancelled"):
        err = run_error(run)
        error = {"code": err.code, "message": err.message}
    output = [_message(run, run.answer or "")] if status == "completed" else []
    text_format = asked.get("format") or {"type": "text"}
    return {
        "id": response_id(run.id),
        "object": "response",
        "created_at": int(run.created_at),
        "status": status,
        "model": model,
        "output": output,
        "output_text": (run.answer or "") if status == "completed" else "",
        "error": error,
        "incomplete_details": None,
        "instructions": asked.get("instructions"),
        "previous_response_id": asked.get("previous_response_id"),
        "metadata": asked.get("metadata") or {},
        "parallel_tool_calls": True,
        "temperature": None,
        "top_p": None,
        "tool_choice": "auto",
        "tools": [],
        "text": {"format": text_format},
        "truncation": "disabled",
        "store": True,
        "background": False,
        "reasoning": {"effort": None, "summary": None},
        "usage": _usage(run.usage) if status == "completed" else None,
        "user": run.user,
    }


async def _find(request: web.Request, resp_id: str, param: str) -> Run:
    """The run of a response this caller made; 404 for any other id."""
    run_id = run_id_of(resp_id)
    run = None
    if run_id is not None:
        live = request.app[ROUTER].live.get(run_id)
        run = live.run if live is not None else await request.app[STORE].get_run(run_id)
    if (
        run is None
        or run.origin.get("api") != "responses"
        or run.origin.get("principal", "") != principal_of(request)
    ):
        raise NotFound(f"no response with id '{resp_id}'", param=param, code="response_not_found")
    return run


def refuse_response_params(extra: dict[str, Any]) -> None:
    if extra.get("background"):
        raise unsupported("background", "wait for the answer, or stream it")
    refuse_tool_choice(extra.get("tool_choice"))
    if extra.get("top_logprobs") is not None:
        raise unsupported("top_logprobs", "codex reports no token probabilities")


@routes.post("/v1/responses")
async def create_response(request: web.Request) -> web.StreamResponse:
    """Run codex on the input and answer with a Response object (or its events)."""
    settings = request.app[SETTINGS]
    run_id = new_run_id()
    request[RUN_ID] = run_id
    bind(run_id=run_id)
    req, body = await parse_body(request, ResponsesRequest)
    check_model(request, req.model)
    extra = req.model_extra or {}
    refuse_response_params(extra)
    text = extra.get("text")
    text_format = text.get("format") if isinstance(text, dict) else None
    schema, json_object = output_format(text_format, "text.format")
    principal = principal_of(request)
    resume = None
    if req.previous_response_id:
        previous = await _find(request, req.previous_response_id, "previous_response_id")
        if previous.state != "succeeded" or not previous.thread_id:
            raise BadRequest(
                f"response '{req.previous_response_id}' cannot be continued: it is "
                f"{STATUS.get(previous.state, 'in_progress')}",
                param="previous_response_id",
                code="invalid_previous_response",
            )
        resume = (previous.thread_id, previous.executor)
    try:
        turns = response_turns(body["input"])
        if req.instructions:
            turns = [Turn("developer", req.instructions), *turns]
        asked = ask(principal, turns, "input")
    except ConversationError as exc:
        raise conversation_error(exc) from None
    session = _text_header(request, "X-Session-Id")
    optimize = _bool_header(request, "X-Optimize-Prompt")
    metadata = extra.get("metadata") if isinstance(extra.get("metadata"), dict) else None

    async def plan() -> Plan:
        found = resume or (None if session else request.app[CALLS].threads.find(asked.history_key))
        return Plan(
            ask=asked,
            origin={
                "source": "http",
                "api": "responses",
                "user": req.user or None,
                "client": request.headers.get("User-Agent", "")[:200],
                "responses": {
                    "instructions": req.instructions,
                    "previous_response_id": req.previous_response_id,
                    "format": text_format,
                    "metadata": metadata,
                },
            },
            session=session,
            optimize=optimize,
            resume=found,
            resume_is_shortcut=resume is None,
            output_schema=schema,
            json_object=json_object,
        )

    ticket = await start(request, plan, watch=bool(req.stream))
    request[RUN_ID] = ticket.run.id
    if req.stream:
        return await _stream(
            request, ticket.run, ticket.done, settings.keepalive_s, ticket.events or _NoEvents()
        )
    run = await wait(request, ticket)
    if run.state != "succeeded":
        raise run_error(run)
    return json_response(body_of(run, settings.model_name), headers={"X-Run-ID": run.id})


@routes.get("/v1/responses/{id}")
async def get_response(request: web.Request) -> web.Response:
    """A response this caller made, finished or not."""
    run = await _find(request, request.match_info["id"], "id")
    return json_response(
        body_of(run, request.app[SETTINGS].model_name), headers={"X-Run-ID": run.id}
    )


class _Events:
    """Numbers the stream's events as the Responses API does (``sequence_number``)."""

    def __init__(self, response: web.StreamResponse) -> None:
        self.response = response
        self.seq = 0

    async def send(self, kind: str, **data: Any) -> None:
        payload = {"type": kind, "sequence_number": self.seq, **data}
        self.seq += 1
        frame = f"event: {kind}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n"
        await self.response.write(frame.encode())


async def _stream(
    request: web.Request,
    run: Run,
    done: asyncio.Future[Run],
    keepalive_s: float,
    watched: Any,
) -> web.StreamResponse:
    model = request.app[SETTINGS].model_name
    router: Router = request.app[ROUTER]
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Run-ID": run.id,
            "X-Accel-Buffering": "no",
        }
    )
    answer = AnswerStream()
    item_id = "msg_" + run.id.removeprefix("run_")
    place = {"item_id": item_id, "output_index": 0, "content_index": 0}
    getter: asyncio.Future[Any] | None = None
    try:
        await response.prepare(request)
        events = _Events(response)
        await events.send("response.created", response=body_of(run, model, final=False))
        await events.send("response.in_progress", response=body_of(run, model, final=False))

        async def opened() -> None:
            """The message's item and its text part, announced once, before any text."""
            await events.send(
                "response.output_item.added",
                output_index=0,
                item=_message(run, "", status="in_progress"),
            )
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            await events.send("response.content_part.added", **place, part=part)

        while not done.done():
            if getter is None:
                getter = asyncio.ensure_future(watched.get())
            finished, _ = await asyncio.wait(
                {getter, done}, timeout=keepalive_s, return_when=asyncio.FIRST_COMPLETED
            )
            if getter in finished:
                try:
                    message = getter.result()
                except Dropped:
                    message = None
                    watched = _NoEvents()
                getter = None
                was_open = bool(answer.sent)
                text = answer.feed(message["event"]) if message and "event" in message else ""
                if text:
                    if not was_open:
                        await opened()
                    await events.send(
                        "response.output_text.delta", **place, delta=text, logprobs=[]
                    )
            elif not finished:
                await response.write(b": keepalive\n\n")
        final = done.result()
        if final.state == "succeeded":
            text = final.answer or ""
            if not answer.sent:
                await opened()
            rest = answer.rest(text)
            if rest or not answer.sent:
                await events.send("response.output_text.delta", **place, delta=rest, logprobs=[])
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            await events.send("response.output_text.done", **place, text=text, logprobs=[])
            await events.send("response.content_part.done", **place, part=part)
            await events.send(
                "response.output_item.done", output_index=0, item=_message(final, text)
            )
            await events.send("response.completed", response=body_of(final, model))
        else:
            if answer.sent:
                # Text already went out: close its part and item (as incomplete) so a
                # client that assembles items sees them end, then say the response failed.
                text = answer.sent
                part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
                await events.send("response.output_text.done", **place, text=text, logprobs=[])
                await events.send("response.content_part.done", **place, part=part)
                item = _message(final, text, status="incomplete")
                await events.send("response.output_item.done", output_index=0, item=item)
            await events.send("response.failed", response=body_of(final, model))
        await response.write_eof()
        return response
    except (asyncio.CancelledError, ConnectionError):
        await _cancel_for_disconnect(router, run.id)
        raise
    finally:
        if getter is not None:
            getter.cancel()
        watched.close()
