"""What keeps web pages from driving the hub: Host, Origin and Content-Type checks, and
the headers every answer carries.

Loopback is not a trust boundary: every page a browser shows can send requests to
``127.0.0.1``. A page of another origin can send a "simple" request (a form, or a
``no-cors`` fetch with a ``text/plain`` body) without asking the hub first, open a
websocket to any address, and, through DNS rebinding, make its own name point at the
hub so that its requests count as same-origin. The middleware here refuses all three,
before the API key is checked (a page's request never counts as a failed login):

- ``Host`` must name the hub (403 ``host_not_allowed``): ``localhost``, an IP address
  (rebinding needs a name: a page served from an address is that address's own), the
  ``HUB_HOST`` it is bound to when that is a name, or a name of ``HUB_ALLOWED_HOSTS``
  (``.example.com`` takes its subdomains too, ``*`` takes any name). A request without
  ``Host`` comes from no browser and passes.
- A request that carries ``Origin`` (browsers send it on every POST and every websocket
  upgrade, and on cross-origin fetches) must come from the hub's own origin (the one its
  ``Host`` names) or one of ``HUB_ALLOWED_ORIGINS``, else 403 ``origin_not_allowed``;
  ``Origin: null`` (sandboxed and file pages) is never allowed. Nodes and API clients
  send no ``Origin`` and pass.
- A request that changes state (any method but GET, HEAD and OPTIONS) with a body must
  say ``Content-Type: application/json`` (or ``application/*+json``), else 415
  ``unsupported_media_type``: browsers cannot send that type across origins without a
  preflight, which the hub does not answer. A POST without a body (a cancel) may send
  any type or none: there is nothing in it to read.

Every answer carries ``X-Content-Type-Options: nosniff`` and a ``Server`` header that
names no versions; API answers (all but the monitor's page and files) carry
``Cache-Control: no-store``. The hub adds no CORS headers: ``HUB_ALLOWED_ORIGINS`` is
for a page served under another name (a proxy that rewrites ``Host``), not for scripts
of other sites.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import aiohttp.web_response
from aiohttp import web

from hub.errors import ApiError
from hub.settings import HubSettings

log = logging.getLogger(__name__)

#: The ``Server`` header of every answer: the product, never a version of it or of its
#: libraries (aiohttp's default names Python's and aiohttp's).
SERVER = "codex-hub"
#: Methods that change nothing; every other one is held to the Content-Type rule.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Answers that are the monitor's files, which the browser may keep and revalidate.
PAGE_PATHS = frozenset({"/", "/favicon.ico"})
PAGE_PREFIXES = ("/static/",)

#: How many distinct ``Host`` values :meth:`HostPolicy.check_host` remembers.
HOST_CACHE_SIZE = 256

_HOST = re.compile(r"^(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[^:\[\]/@\s]+))(?::(?P<port>\d{1,5}))?$")


class Forbidden(ApiError):
    status = 403
    type = "invalid_request_error"
    code = "forbidden"


def split_host(value: str) -> tuple[str, int | None] | None:
    """``Host`` as (name or address, port or None), lower case; None when malformed."""
    match = _HOST.match(value.strip().lower())
    if match is None:
        return None
    name = match["v6"] or match["name"].rstrip(".")
    port = int(match["port"]) if match["port"] else None
    return name, port


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostPolicy:
    """Which ``Host`` and ``Origin`` values this hub answers (see the module docstring)."""

    def __init__(self, settings: HubSettings) -> None:
        names = {"localhost"}
        bound = settings.host.lower().rstrip(".")
        if bound and not _is_ip(bound):
            names.add(bound)
        self.any_host = "*" in settings.allowed_hosts
        self.names = frozenset(names | {h for h in settings.allowed_hosts if h[:1] != "."})
        self.suffixes = tuple(h for h in settings.allowed_hosts if h[:1] == ".")
        self.origins = frozenset(settings.allowed_origins)
        self._hosts: dict[str, tuple[str, int | None] | None] = {}

    def host_allowed(self, name: str) -> bool:
        if self.any_host or name in self.names or _is_ip(name):
            return True
        return any(name.endswith(s) or name == s[1:] for s in self.suffixes)

    def check_host(self, raw: str) -> tuple[str, int | None] | None:
        """``raw`` (a ``Host`` header) split, when this hub answers to it; else None.

        Every request carries the same few ``Host`` values: their verdicts are kept
        (the policy never changes), at most ``HOST_CACHE_SIZE`` of them, refusals
        included, so a scanner's made-up names cannot grow it.
        """
        try:
            return self._hosts[raw]
        except KeyError:
            pass
        host = split_host(raw)
        verdict = host if host is not None and self.host_allowed(host[0]) else None
        if len(self._hosts) < HOST_CACHE_SIZE:
            self._hosts[raw] = verdict
        return verdict

    def origin_allowed(self, origin: str, host: tuple[str, int | None] | None) -> bool:
        """True when ``origin`` is the hub's own (the one ``host`` names) or listed."""
        value = origin.strip().lower()
        if value in self.origins:
            return True
        scheme, sep, netloc = value.partition("://")
        if not sep or scheme not in ("http", "https") or host is None:
            return False
        parsed = split_host(netloc)
        if parsed is None:
            return False
        default = 443 if scheme == "https" else 80
        name, port = parsed
        own_name, own_port = host
        return name == own_name and (port or default) == (own_port or default)


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


class _Throttle:
    """At most one log line per kind of refusal every ``every_s`` seconds, with a count of
    those left out: a page (or a scanner) that retries must not flood the log."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s = every_s
        self._last: dict[str, tuple[float, int]] = {}

    def warn(self, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        last, skipped = self._last.get(kind, (float("-inf"), 0))
        if now - last < self.every_s:
            self._last[kind] = (last, skipped + 1)
            return
        self._last[kind] = (now, 0)
        suffix = f" ({skipped} more like it not logged)" if skipped else ""
        log.warning(message + suffix, *args)


def make_guard(settings: HubSettings) -> Callable[[web.Request], None]:
    """The check of this module, for ``settings``: raises an :class:`ApiError` (403, 415)
    for a request it refuses. It goes before the key check, inside the error rendering
    (:func:`hub.errors.make_middleware`)."""
    policy = HostPolicy(settings)
    throttle = _Throttle()

    def web_guard(request: web.Request) -> None:
        raw_host = request.headers.get("Host")
        host = policy.check_host(raw_host) if raw_host is not None else None
        if raw_host is not None and host is None:
            throttle.warn("host", "refused a request for Host %r: not a name of this hub", raw_host)
            raise Forbidden(
                f"this hub does not answer to Host {raw_host[:100]!r}: add the name to "
                "HUB_ALLOWED_HOSTS if it is the hub's",
                code="host_not_allowed",
            )
        origin = request.headers.get("Origin")
        if origin is not None and not policy.origin_allowed(origin, host):
            throttle.warn("origin", "refused a request from a page of %r", origin[:100])
            raise Forbidden(
                f"pages of {origin[:100]!r} may not use this hub: only its own pages and "
                "those of HUB_ALLOWED_ORIGINS may",
                code="origin_not_allowed",
            )
        if (
            request.method not in SAFE_METHODS
            and request.body_exists
            and not _is_json(request.content_type)
        ):
            refused = ApiError(
                f"Content-Type must be application/json, not {request.content_type}",
                status=415,
                type="invalid_request_error",
                code="unsupported_media_type",
            )
            refused.close_connection = True  # its body stays unread
            raise refused

    return web_guard


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    headers["Server"] = SERVER
    headers["X-Content-Type-Options"] = "nosniff"
    path = request.path
    if path not in PAGE_PATHS and not path.startswith(PAGE_PREFIXES):
        headers["Cache-Control"] = "no-store"


def setup(app: web.Application) -> None:
    """Give every answer of ``app`` the headers of this module."""
    # Answers aiohttp writes by itself (to a request line it cannot parse) pass no
    # middleware and no signal: they take this default, which otherwise names versions.
    aiohttp.web_response.SERVER_SOFTWARE = SERVER
    app.on_response_prepare.append(_security_headers)
