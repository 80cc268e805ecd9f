"""HTTP errors, rendered in one middleware in OpenAI's error envelope.

ApiError                 status, type, code, param
 |- BadRequest           400 invalid_request_error
 |- Unauthorized         401 invalid_api_key
 |- NotFound             404 not_found
 |- RateLimited          429 rate_limit_exceeded / queue_full (+ Retry-After)
 '- Unavailable          503 service_unavailable / store_unavailable (+ Retry-After)

The router's :class:`~hub.router_errors.StoreUnwritable` (the store cannot write: no new run)
is rendered here for every route that starts runs, as 503 ``store_unavailable``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from hub.router_errors import StoreUnwritable
from hub.store import ReadFailed, new_run_id
from wire import ErrorCode

log = logging.getLogger(__name__)

#: Seconds a caller refused for a store that cannot write is asked to wait.
STORE_RETRY_AFTER_S = 30

#: The run id of a request, set as soon as it is known, so errors can carry X-Run-ID.
RUN_ID: web.RequestKey[str] = web.RequestKey("run_id", str)


class ApiError(Exception):
    """An error the caller can act on, with OpenAI's envelope fields.

    ``close_connection`` ends the connection after the answer: for a body the hub will
    not read, whose bytes would otherwise be taken for the next request.
    """

    status = 500
    type = "server_error"
    code: str | None = None
    close_connection = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        status: int | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.code
        self.param = param
        self.status = status if status is not None else self.status
        self.type = type if type is not None else self.type
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return envelope(self.message, self.type, self.code, self.param)


class BadRequest(ApiError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class Unauthorized(ApiError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class NotFound(ApiError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class RateLimited(ApiError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class Unavailable(ApiError):
    status = 503
    type = "server_error"
    code = "service_unavailable"


def envelope(message: str, type: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error body."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(err: ApiError, run_id: str | None = None) -> web.Response:
    """The JSON response for ``err``."""
    headers = dict(err.headers)
    if run_id:
        headers["X-Run-ID"] = run_id
    response = json_response(err.body(), status=err.status, headers=headers)
    if err.close_connection:
        response.force_close()
    return response


_HTTP_CODES = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "forbidden"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
}


#: Every answer of this path carries X-Run-ID, even a refusal before the run existed.
CHAT_PATH = "/v1/chat/completions"


def _run_id(request: web.Request) -> str | None:
    run_id = request.get(RUN_ID)
    if run_id is None and request.path == CHAT_PATH:
        # Refused before the handler named a run (key, rate limit): an id that names
        # no stored run, as the README promises, so every answer can be quoted.
        run_id = request[RUN_ID] = new_run_id()
    return run_id


def make_middleware(*checks: Callable[[web.Request], None]) -> Any:
    """The hub's one middleware: each of ``checks`` in order (each raises to refuse the
    request), then the handler; every error of the API rendered in OpenAI's envelope
    (:func:`error_answer`), never a traceback.

    One middleware rather than one per check: each is another coroutine every request
    passes through, and passes through again whenever its handler resumes.
    """

    @web.middleware
    async def hub_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            for check in checks:
                check(request)
            return await handler(request)
        except Exception as exc:
            return error_answer(request, exc)

    return hub_middleware


def error_answer(request: web.Request, exc: Exception) -> web.StreamResponse:
    """The answer to ``request`` for ``exc``, in OpenAI's envelope; raises ``exc`` again
    when it is not the API's to render (a connection lost, a redirect, a static 404).
    Call it in the ``except`` block that caught ``exc`` (it may log its traceback)."""
    if isinstance(exc, ApiError):
        return error_response(exc, _run_id(request))
    if isinstance(exc, StoreUnwritable):
        full = Unavailable(
            str(exc), code=exc.code, headers={"Retry-After": str(STORE_RETRY_AFTER_S)}
        )
        return error_response(full, _run_id(request))
    if isinstance(exc, ReadFailed):
        log.warning("%s %s: %s", request.method, request.path, exc)
        unread = Unavailable(
            f"the store could not answer this read ({exc}); try again",
            code=ErrorCode.STORE_UNAVAILABLE,
            headers={"Retry-After": "1"},
        )
        return error_response(unread, _run_id(request))
    if isinstance(exc, RequestPayloadError):
        # The body could not be decoded (a Content-Encoding that is not what it says,
        # broken chunks, a body cut short): the client's mistake, not ours.
        detail = " ".join(str(getattr(exc.__cause__, "message", "") or exc).split())
        bad_body = BadRequest(f"the request body could not be read: {detail}", code="invalid_body")
        bad_body.close_connection = True
        return error_response(bad_body, _run_id(request))
    if isinstance(exc, web.HTTPException):
        if exc.status < 400 or (
            request.path.startswith(("/static", "/assets")) and exc.status == 404
        ):
            raise exc
        type_, code = _HTTP_CODES.get(exc.status, ("invalid_request_error", None))
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        if exc.status == 413:
            message = f"request body is too large: {message}"
        http_err = ApiError(message, status=exc.status, type=type_, code=code)
        return error_response(http_err, _run_id(request))
    if isinstance(exc, ConnectionError):
        raise exc
    log.exception("internal error on %s %s", request.method, request.path)
    internal = ApiError("internal error: the hub logged the details", code="internal_error")
    return error_response(internal, _run_id(request))


#: The longest a client may take to send a request body.
BODY_TIMEOUT_S = 60.0


def json_response(
    body: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """``web.json_response``, encoded by orjson (it is on every API answer)."""
    try:
        data = orjson.dumps(body)
    except TypeError:  # a lone surrogate quoted from the request: json escapes it
        data = json.dumps(body).encode()
    return web.Response(body=data, status=status, headers=headers, content_type="application/json")


async def read_json(request: web.Request) -> Any:
    """The request body as JSON (UTF-8, as RFC 8259 says), or :class:`BadRequest`.

    Refuses what the store could not keep: text with lone surrogates (``"\\ud800"``) and
    nesting too deep to walk. The ``charset`` of Content-Type is ignored on purpose. A
    compressed body is refused unread (415): no client of this API needs one, and
    aiohttp 3.14 can wait forever on a deflate body that does not end (it never fails
    the body's stream). A body still arriving after ``BODY_TIMEOUT_S`` is refused (408).
    """
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        refused = ApiError(
            f"Content-Encoding {encoding} is not accepted: send the JSON uncompressed",
            status=415,
            type="invalid_request_error",
            code="unsupported_content_encoding",
        )
        refused.close_connection = True
        raise refused
    try:
        if request.content.is_eof():
            # The whole body is in already (the usual case): nothing to time, and a
            # timer per request is not free.
            raw = await request.read()
        else:
            async with asyncio.timeout(BODY_TIMEOUT_S):
                raw = await request.read()
    except TimeoutError:
        slow = ApiError(
            f"the request body did not arrive within {BODY_TIMEOUT_S:g} s",
            status=408,
            type="invalid_request_error",
            code="request_timeout",
        )
        slow.close_connection = True
        raise slow from None
    try:
        # orjson is strict where the store must be: it refuses invalid UTF-8, lone
        # surrogates ("\ud800"), NaN and Infinity, and nesting past 1024 levels.
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        reason = str(exc)
        if "surrogate" in reason or "UTF-8" in reason:
            raise BadRequest(
                "the body holds text that is not valid Unicode (a lone surrogate or bad UTF-8)",
                code="invalid_json",
            ) from None
        if "depth limit" in reason:
            raise BadRequest("the body is nested too deeply", code="invalid_json") from None
        raise BadRequest(f"the body is not valid JSON: {reason}", code="invalid_json") from None
