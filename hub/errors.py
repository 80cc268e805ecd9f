"""HTTP errors, rendered in one middleware in OpenAI's error envelope.

ApiError                 status, type, code, param
 |- BadRequest           400 invalid_request_error
 |- Unauthorized         401 invalid_api_key
 |- NotFound             404 not_found
 |- RateLimited          429 rate_limit_exceeded / queue_full (+ Retry-After)
 '- Unavailable          503 service_unavailable
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

#: The run id of a request, set as soon as it is known, so errors can carry X-Run-ID.
RUN_ID: web.RequestKey[str] = web.RequestKey("run_id", str)


class ApiError(Exception):
    """An error the caller can act on, with OpenAI's envelope fields."""

    status = 500
    type = "server_error"
    code: str | None = None

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
    return web.json_response(err.body(), status=err.status, headers=headers)


_HTTP_CODES = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "forbidden"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
}


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Render every error of the API in OpenAI's envelope; never leak a traceback."""
    try:
        return await handler(request)
    except ApiError as err:
        return error_response(err, request.get(RUN_ID))
    except web.HTTPException as exc:
        if exc.status < 400 or (
            request.path.startswith(("/static", "/assets")) and exc.status == 404
        ):
            raise
        type_, code = _HTTP_CODES.get(exc.status, ("invalid_request_error", None))
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        if exc.status == 413:
            message = f"request body is too large: {message}"
        http_err = ApiError(message, status=exc.status, type=type_, code=code)
        return error_response(http_err, request.get(RUN_ID))
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        internal = ApiError("internal error: the hub logged the details", code="internal_error")
        return error_response(internal, request.get(RUN_ID))
