"""OpenAI-compatible API: models, chat completions, and what every endpoint shares.

Shaped exactly like OpenAI's so the official clients work unchanged (the Responses
API is in :mod:`hub.api_responses`). How a request becomes a run:

- The conversation (:mod:`hub.conversation`): system and developer messages reach codex
  as its instructions; the new user message is the prompt; earlier turns either resume
  the codex thread that gave the history's last answer, or travel as delimited context.
- A retry never runs codex twice. A request with the ``Idempotency-Key`` of an earlier
  one, or one the SDKs mark as a retry (``x-stainless-retry-count`` above 0) with the
  same body, joins the earlier run or gets its recorded outcome. Answers for runs that
  failed, were cancelled or timed out carry ``x-should-retry: false``. A client that
  drops a non-streamed request leaves the run ``HUB_REATTACH_GRACE_S`` for a retry to
  re-attach before it is cancelled; a dropped stream cancels its run at once.
- Everything is scoped by the caller's principal (:func:`hub.auth.principal_of`, set by the
  auth middleware): one caller never joins, reads or continues another's run.
- Errors carry one or two lines (the codex error line, never a server path); the full
  detail stays in the run's events for the monitor.

Streaming chat is SSE with ``: keepalive`` comments while codex works and progress as
``reasoning_content`` deltas, never mixed into ``content``. The answer streams as
``content`` deltas while codex writes it (an executor of the app-server engine sends
it so; :mod:`hub.answer_stream`), and the content a client puts together is the
run's answer; with the exec engine, or with ``stop`` (which cuts the answer), it comes
in one piece at the end.

``X-Session-Id`` and ``Idempotency-Key`` are the caller's own: they are namespaced by
the key's principal (:mod:`hub.auth`), so another key sending the same values gets a
conversation and runs of its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hub.answer_stream import AnswerStream
from hub.appkeys import ROUTER, SETTINGS
from hub.auth import principal_of, session_key
from hub.bus import Dropped
from hub.conversation import (
    Ask,
    ConversationError,
    Threads,
    answer_key,
    apply_stop,
    ask,
    chat_turns,
    prompt_with_context,
)
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
from hub.images import ImageFetcher, describe
from hub.router import HubClosing, QueueFull, Router, Ticket, new_run_id
from hub.settings import HubSettings, parse_networks
from hub.store import Run
from hub.targets import ConversationElsewhere, TargetRefused
from kernel.logs import bind
from wire import NUL_IN_PROMPT, repo_problem

log = logging.getLogger(__name__)

routes = web.RouteTableDef()

#: The endpoints this hub serves under /v1, named by the answer to any other path.
ENDPOINTS = (
    "GET /v1/models",
    "GET /v1/models/{model}",
    "POST /v1/chat/completions",
    "POST /v1/responses",
    "GET /v1/responses/{id}",
)
#: Requests remembered for recognising a retry (by body), and for how long.
RETRY_MEMORY = 10_000
RETRY_MEMORY_S = 3600.0


class Calls:
    """The API's memory between requests: retries, codex threads, runs left by clients."""

    def __init__(self, settings: HubSettings) -> None:
        self.settings = settings
        #: When this hub started serving its model: the ``created`` of /v1/models.
        self.created = int(time.time())
        self.threads = Threads()
        self.images = ImageFetcher(
            max_bytes=settings.image_max_bytes,
            timeout_s=settings.image_fetch_timeout_s,
            allowed=parse_networks(settings.image_allowed_networks),
        )
        self._requests: OrderedDict[str, tuple[str, float]] = OrderedDict()
        #: Retries that joined the run of an earlier request, since the start.
        self.rejoined = 0
        self._waiters: dict[str, int] = {}
        self._orphans: dict[str, asyncio.Task[None]] = {}
        #: Handlers waiting for their runs, and their requests (see :meth:`watch`).
        self._watched: dict[asyncio.Task[Any], web.Request] = {}
        self._look_handle: asyncio.TimerHandle | None = None

    async def close(self) -> None:
        if self._look_handle is not None:
            self._look_handle.cancel()
            self._look_handle = None
        tasks = list(self._orphans.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._orphans.clear()
        await self.images.close()

    def remember(self, fingerprint: str, run_id: str) -> None:
        """A request's body (fingerprint) started ``run_id``."""
        self._requests[fingerprint] = (run_id, time.monotonic())
        self._requests.move_to_end(fingerprint)
        while len(self._requests) > RETRY_MEMORY:
            self._requests.popitem(last=False)

    def earlier(self, fingerprint: str) -> str | None:
        """The run an earlier request with the same body started, lately."""
        found = self._requests.get(fingerprint)
        if found is None or time.monotonic() - found[1] > RETRY_MEMORY_S:
            return None
        return found[0]

    def watch(self, task: asyncio.Task[Any], request: web.Request, tick: float) -> None:
        """Cancel ``task`` (a handler waiting for its run) once ``request``'s connection
        is gone, looking every ``tick`` s; until :meth:`unwatch`.

        One timer looks at every waiting request, rather than a timer for each: a timer
        made and cancelled on every run is not free.
        """
        self._watched[task] = request
        if self._look_handle is None:
            self._look_handle = asyncio.get_running_loop().call_later(tick, self._look, tick)

    def unwatch(self, task: asyncio.Task[Any]) -> None:
        """``task`` no longer waits (see :meth:`watch`)."""
        self._watched.pop(task, None)

    def _look(self, tick: float) -> None:
        self._look_handle = None
        for task, request in list(self._watched.items()):
            if _gone(request):
                task.cancel()
        if self._watched:
            self._look_handle = asyncio.get_running_loop().call_later(tick, self._look, tick)

    def attach(self, run_id: str) -> None:
        """A client waits for the run: a pending cancel for a dropped one is called off."""
        self._waiters[run_id] = self._waiters.get(run_id, 0) + 1
        orphan = self._orphans.pop(run_id, None)
        if orphan is not None:
            orphan.cancel()

    def release(self, run_id: str, router: Router, *, dropped: bool) -> None:
        """A client stops waiting; the last one to drop it leaves the run a grace period."""
        left = self._waiters.get(run_id, 1) - 1
        if left > 0:
            self._waiters[run_id] = left
            return
        self._waiters.pop(run_id, None)
        if dropped and router.live_run(run_id) is not None and run_id not in self._orphans:
            self._orphans[run_id] = asyncio.create_task(
                self._cancel_later(run_id, router), name=f"Calls:orphan:{run_id}"
            )

    async def _cancel_later(self, run_id: str, router: Router) -> None:
        grace = self.settings.reattach_grace_s
        try:
            await asyncio.sleep(grace)
        finally:
            if self._orphans.get(run_id) is asyncio.current_task():
                del self._orphans[run_id]
        reason = "the HTTP client disconnected"
        if grace:
            reason += f" and no retry re-attached within {grace:g} s"
        try:
            await router.cancel(run_id, reason)
        except Exception:
            log.exception("cancelling run %s after a disconnect failed", run_id)


CALLS: web.AppKey[Calls] = web.AppKey("openai_calls", Calls)


def setup(app: web.Application, *more: web.RouteTableDef) -> None:
    """Add the OpenAI API to ``app``: models, chat, ``more`` (the Responses API), and an
    answer for every other path under /v1."""
    app[CALLS] = Calls(app[SETTINGS])

    async def close(app: web.Application) -> None:
        await app[CALLS].close()

    app.on_cleanup.append(close)
    app.router.add_routes(routes)
    for table in more:
        app.router.add_routes(table)
    # Each method by name, not "*": a route table read by tools names real methods.
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        app.router.add_route(method, "/v1/{tail:.*}", unknown_endpoint)


async def unknown_endpoint(request: web.Request) -> web.Response:
    """Any other path under /v1: OpenAI's envelope, naming what this hub serves."""
    supported = "; ".join(ENDPOINTS)
    known = {e.split(" ", 1)[1] for e in ENDPOINTS}
    if request.path in known:
        raise ApiError(
            f"{request.method} is not allowed on {request.path}; this hub serves {supported}",
            status=405,
            code="method_not_allowed",
            type="invalid_request_error",
        )
    raise NotFound(
        f"{request.method} {request.path} is not an endpoint of this hub (an OpenAI-compatible "
        f"gateway to codex); it serves {supported}",
        code="unknown_url",
    )


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
    "executor_stopped": (502, "server_error", "executor_stopped"),
    "timeout": (504, "server_error", "timeout"),
    "store_unavailable": (503, "server_error", "store_unavailable"),
}
#: A run's outcome is final: a client retrying it would only run codex again.
NO_RETRY = {"x-should-retry": "false"}

# An absolute path (two or more parts), not the path of a URL.
_PATH_RE = re.compile(r"(?<![\w:/.~-])(?:~|/)(?:[\w.@+-]+/)+[\w.@+-]*")
CLIENT_MESSAGE_CHARS = 300


def client_message(message: str) -> str:
    """The first line of an error, without server paths, at most a few hundred chars."""
    first = next((line.strip() for line in message.splitlines() if line.strip()), "")
    first = _PATH_RE.sub("<path>", first)
    if len(first) > CLIENT_MESSAGE_CHARS:
        first = first[: CLIENT_MESSAGE_CHARS - 1] + "…"
    return first


def run_error(run: Run) -> ApiError:
    """The API error for a run that ended in anything but ``succeeded``."""
    error = run.error or {}
    code = error.get("code") or run.state
    message = client_message(error.get("message") or "") or f"the run ended {run.state}"
    message = f"{message} (run {run.id}; details in its events)"
    headers = dict(NO_RETRY)
    if run.state == "timed_out":
        return ApiError(message, status=504, type="server_error", code="timeout", headers=headers)
    if run.state == "cancelled":
        return ApiError(
            message, status=409, type="invalid_request_error", code="cancelled", headers=headers
        )
    if run.state == "rejected":
        return ApiError(
            message, status=422, type="invalid_request_error", code="rejected", headers=headers
        )
    status, type_, code = FAILURES.get(code, (502, "server_error", code))
    return ApiError(message, status=status, type=type_, code=code, headers=headers)


async def parse_body(request: web.Request, model: type[BaseModel]) -> tuple[Any, dict[str, Any]]:
    """The JSON body, validated by ``model``, and as the raw dict."""
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
        return model.model_validate(body), body
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


def check_model(request: web.Request, model: str) -> None:
    name = request.app[SETTINGS].model_name
    if model != name:
        raise NotFound(
            f"the model '{model}' does not exist; this hub serves '{name}'",
            code="model_not_found",
            param="model",
        )


def _model_body(request: web.Request) -> dict[str, Any]:
    return {
        "id": request.app[SETTINGS].model_name,
        "object": "model",
        "created": request.app[CALLS].created,
        "owned_by": "codex-hub",
    }


@routes.get("/v1/models")
async def list_models(request: web.Request) -> web.Response:
    """The one model this hub serves."""
    return json_response({"object": "list", "data": [_model_body(request)]})


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
    return json_response(_model_body(request))


def unsupported(param: str, why: str) -> BadRequest:
    return BadRequest(
        f"'{param}' is not supported: {why}", param=param, code="unsupported_parameter"
    )


CODEX_TOOLS = "codex runs its own tools (shell, file edits) and never calls a client's"


def refuse_tool_choice(value: Any, param: str = "tool_choice") -> None:
    """``tool_choice`` that would make the answer a call of a client's tool: a 400."""
    if value is None or value in ("auto", "none"):
        return
    raise unsupported(param, f"{CODEX_TOOLS}; only 'auto' and 'none' are accepted")


def json_instruction(instructions: str) -> str:
    note = "Answer with one JSON object and nothing else."
    return f"{instructions}\n\n{note}" if instructions else note


def output_format(value: Any, param: str) -> tuple[dict[str, Any] | None, bool]:
    """(output schema, json object wanted) for ``response_format`` or ``text.format``."""
    if value is None:
        return None, False
    if not isinstance(value, dict):
        raise BadRequest(f"'{param}' must be an object", param=param, code="invalid_value")
    kind = value.get("type")
    if kind in (None, "text"):
        return None, False
    if kind == "json_object":
        return None, True
    if kind == "json_schema":
        inner = value.get("json_schema", value)  # chat nests it, responses does not
        schema = inner.get("schema") if isinstance(inner, dict) else None
        if not isinstance(schema, dict):
            raise BadRequest(
                f"'{param}' of type json_schema needs a 'schema' object",
                param=f"{param}.schema",
                code="invalid_value",
            )
        return schema, False
    raise BadRequest(
        f"'{param}.type' must be text, json_object or json_schema, not {kind!r}",
        param=f"{param}.type",
        code="invalid_value",
    )


@dataclass
class Plan:
    """A request, decided: what codex is asked and how the run is filed."""

    ask: Ask
    origin: dict[str, Any]
    session: str = ""
    optimize: bool | None = None
    resume: tuple[str, str | None] | None = None
    #: The resume is only a shortcut (the request carries the whole conversation): when
    #: the executor that holds the thread is gone, the run starts fresh with the history.
    resume_is_shortcut: bool = False
    output_schema: dict[str, Any] | None = None
    json_object: bool = False
    #: How the answer is cut before it reaches the client (``stop``).
    finish: Callable[[str], str] = field(default=lambda answer: answer)


def _is_retry(request: web.Request) -> bool:
    try:
        return int(request.headers.get("x-stainless-retry-count", "0")) > 0
    except ValueError:
        return False


async def start(
    request: web.Request, plan_of: Callable[[], Awaitable[Plan]], *, watch: bool
) -> Ticket:
    """Join the run this request retries, or plan and submit a new one."""
    app = request.app  # a property that walks the match info: once
    calls = app[CALLS]
    router = app[ROUTER]
    principal = principal_of(request)
    body = await request.read()  # read before, and kept by aiohttp
    fingerprint = hashlib.sha256(
        b"\0".join([principal.encode(), request.path.encode(), body])
    ).hexdigest()
    if _is_retry(request):
        earlier = calls.earlier(fingerprint)
        ticket = await router.join(earlier, watch) if earlier else None
        if ticket is not None:
            calls.rejoined += 1
            log.info("run %s: a retry of its request joins it", ticket.run.id)
            return ticket
    idempotency = _text_header(request, "Idempotency-Key")
    target = _text_header(request, "X-Target", 2000)  # checked by the router (hub.targets)
    plan = await plan_of()
    options: dict[str, Any] = {}
    instructions = plan.ask.instructions
    if plan.json_object:
        instructions = json_instruction(instructions)
        options["json_object"] = True
    if instructions:
        options["instructions"] = instructions
    if plan.output_schema is not None:
        options["output_schema"] = plan.output_schema
    if plan.ask.images:
        images = await calls.images.load_all(plan.ask.images)
        options["images"] = [image.option() for image in images]
    origin = {**plan.origin, "principal": principal}
    if options:
        origin["options"] = describe(options)

    async def submit(resume: tuple[str, str | None] | None) -> Ticket:
        if plan.session or resume:
            prompt = plan.ask.prompt
        else:
            prompt = prompt_with_context(plan.ask.history, plan.ask.prompt)
        if not prompt.strip():
            prompt = "Look at the attached image(s)."
        if "\x00" in prompt or "\x00" in (instructions or ""):
            raise BadRequest(NUL_IN_PROMPT, param="messages", code="invalid_prompt")
        return await router.submit(
            prompt,
            origin=origin,
            # Both ids live in the caller's own namespace: another key sending the same
            # ones gets a conversation (and runs) of its own, never this caller's.
            session_key=session_key("http", principal, plan.session) if plan.session else None,
            optimize=plan.optimize,
            watch=watch,
            run_id=request[RUN_ID],
            dedupe_key=session_key("http", principal, idempotency) if idempotency else None,
            resume=resume,
            options=options,
            principal=principal,
            target=target,
        )

    resume = plan.resume
    if resume and plan.resume_is_shortcut and not router.holder_connected(resume[1]):
        # The client sent the whole conversation: without the executor that holds its
        # thread, answer it fresh on any executor, as OpenAI would, rather than wait.
        resume = None
    try:
        try:
            ticket = await submit(resume)
        except ConversationElsewhere:
            if not (resume and plan.resume_is_shortcut):
                raise
            # The thread's executor does not fit the target: start fresh, as above.
            log.info("run %s: the thread's executor is gone; starting fresh", request[RUN_ID])
            ticket = await submit(None)
    except TargetRefused as exc:
        raise ApiError(
            str(exc),
            status=exc.status,
            type="invalid_request_error",
            code=exc.code,
            param="X-Target",
        ) from None
    except QueueFull as exc:
        raise RateLimited(str(exc), code="queue_full", headers={"Retry-After": "5"}) from None
    except HubClosing as exc:
        raise Unavailable(str(exc), code="hub_closing") from None
    calls.remember(fingerprint, ticket.run.id)
    if not ticket.duplicate:
        turns, finish, threads = plan.ask.turns, plan.finish, calls.threads

        def learn(done: asyncio.Future[Run]) -> None:
            # The next request of this conversation carries this answer: it resumes here.
            if done.cancelled() or done.exception() is not None:
                return
            run = done.result()
            if run.state == "succeeded" and run.thread_id:
                key = answer_key(principal, turns, finish(run.answer or ""))
                threads.remember(key, run.thread_id, run.executor)

        ticket.done.add_done_callback(learn)
    return ticket


def conversation_error(exc: ConversationError) -> BadRequest:
    return BadRequest(str(exc), param=exc.param, code=exc.code)


def _stop_of(value: Any) -> str | list[str] | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(s, str) for s in value) and len(value) <= 4:
        return value
    raise BadRequest(
        "'stop' must be a string or a list of up to 4 strings", param="stop", code="invalid_value"
    )


def refuse_chat_params(extra: dict[str, Any]) -> None:
    """What a chat request asks that codex cannot do: a 400 that says why."""
    n = extra.get("n")
    if n is not None and n != 1:
        raise unsupported("n", "codex gives one answer per run; send n=1 or leave it out")
    if extra.get("logprobs") or extra.get("top_logprobs") is not None:
        param = "logprobs" if extra.get("logprobs") else "top_logprobs"
        raise unsupported(param, "codex reports no token probabilities")
    refuse_tool_choice(extra.get("tool_choice"))
    if isinstance(extra.get("function_call"), dict):
        raise unsupported("function_call", CODEX_TOOLS)


@routes.post("/v1/chat/completions")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    """Run codex on the conversation and answer like OpenAI would."""
    app = request.app  # a property that walks the match info: once
    settings = app[SETTINGS]
    router = app[ROUTER]
    run_id = new_run_id()
    request[RUN_ID] = run_id
    bind(run_id=run_id)
    chat, body = await parse_body(request, ChatRequest)
    check_model(request, chat.model)
    extra = chat.model_extra or {}
    refuse_chat_params(extra)
    stop = _stop_of(extra.get("stop"))
    schema, json_object = output_format(extra.get("response_format"), "response_format")
    try:
        asked = ask(principal_of(request), chat_turns(body["messages"]))
    except ConversationError as exc:
        raise conversation_error(exc) from None
    session = _text_header(request, "X-Session-Id")
    optimize = _bool_header(request, "X-Optimize-Prompt")
    origin: dict[str, Any] = {
        "source": "http",
        "api": "chat",
        "user": chat.user or None,
        "client": request.headers.get("User-Agent", "")[:200],
    }
    # The repository to work on (issue 15): X-Repo, else metadata.repo; the executor
    # checks it. X-Open-PR asks for commit, push and a pull request after the run.
    metadata = extra.get("metadata")
    repo = _text_header(request, "X-Repo", 500) or (
        metadata.get("repo") if isinstance(metadata, dict) else None
    )
    if repo:
        if problem := repo_problem(repo):
            raise BadRequest(problem, param="X-Repo", code="invalid_repo")
        origin["repo"] = repo
    if _bool_header(request, "X-Open-PR"):
        origin["open_pr"] = "true"

    async def plan() -> Plan:
        return Plan(
            ask=asked,
            origin=origin,
            session=session,
            optimize=optimize,
            resume=None if session else app[CALLS].threads.find(asked.history_key),
            resume_is_shortcut=True,
            output_schema=schema,
            json_object=json_object,
            finish=lambda answer: apply_stop(answer, stop),
        )

    ticket = await start(request, plan, watch=bool(chat.stream))
    request[RUN_ID] = ticket.run.id

    def answer_of(run: Run) -> str:
        return apply_stop(run.answer or "", stop)

    if chat.stream:
        include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
        return await _stream(
            request,
            router,
            ticket.run,
            ticket.done,
            # A joined run may be watched by nobody here: no progress then.
            ticket.events or _NoEvents(),
            include_usage,
            settings.keepalive_s,
            answer_of,
            live_answer=stop is None,
        )
    run = await wait(request, ticket)
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
                "message": {"role": "assistant", "content": answer_of(run), "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": openai_usage(run.usage),
        "system_fingerprint": None,
    }
    return json_response(body, headers={"X-Run-ID": run.id})


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


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def wait(request: web.Request, ticket: Ticket) -> Run:
    """Wait for the run; a caller that goes away leaves it a grace period (see Calls).

    aiohttp cancels this handler when the connection drops; a look every
    ``HUB_KEEPALIVE_S`` is the second line (:meth:`Calls.watch`: one timer for every
    waiting request, not ``wait_for`` or a timer each: it is on every run).
    """
    done = ticket.done
    if done.done():
        return done.result()
    app = request.app
    calls = app[CALLS]
    router = app[ROUTER]
    task = asyncio.current_task()
    if task is not None:
        calls.watch(task, request, app[SETTINGS].keepalive_s)
    calls.attach(ticket.run.id)
    # A future of this caller's own, resolved with ``done`` in the same step: awaiting
    # ``done`` through asyncio.shield would take the loop one more turn on every run.
    # Its cancellation (the caller went away) leaves ``done`` alone.
    waiter = router.waiter(ticket.run.id, done)
    dropped = False
    try:
        return await (asyncio.shield(done) if waiter is None else waiter)
    except asyncio.CancelledError:
        dropped = True
        raise
    finally:
        if task is not None:
            calls.unwatch(task)
        calls.release(ticket.run.id, router, dropped=dropped)


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


def _is_event(message: dict[str, Any] | None) -> bool:
    return message is not None and message.get("type") == "event"


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
    answer_of: Callable[[Run], str],
    *,
    live_answer: bool = True,
) -> web.StreamResponse:
    model = request.app[SETTINGS].model_name
    # The answer as codex writes it, as content deltas: not when the end may cut it.
    answer = AnswerStream() if live_answer else None
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
                written = answer.feed(message["event"]) if answer and _is_event(message) else ""
                if written:
                    await response.write(_chunk(run, model, {"content": written}))
            elif not finished:
                await response.write(b": keepalive\n\n")
        final = done.result()
        if final.state == "succeeded":
            content = answer_of(final)
            rest = answer.rest(content) if answer is not None else content
            if rest or not (answer and answer.sent):
                await response.write(_chunk(run, model, {"content": rest}))
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
