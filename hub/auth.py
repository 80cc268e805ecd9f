"""API keys for the HTTP API and the monitor, and per-key rate limits."""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from hub.errors import RateLimited, Unauthorized

#: Paths open without a key: liveness and the monitor's static page (it shows nothing
#: until the browser presents a key to the API).
PUBLIC_PATHS = frozenset({"/healthz", "/", "/favicon.ico"})
PUBLIC_PREFIXES = ("/static/",)
#: Paths that authenticate themselves (node token, or the feed's first frame).
SELF_AUTH_PATHS = frozenset({"/ws", "/api/feed"})


def key_matches(presented: str, keys: Iterable[str]) -> bool:
    """Constant-time check of ``presented`` against every configured key."""
    # A header's stray bytes arrive as surrogates, and so may a feed frame's key: they
    # must compare unequal, not raise.
    given = presented.encode("utf-8", "surrogatepass")
    found = False
    for key in keys:
        found |= hmac.compare_digest(given, key.encode("utf-8", "surrogatepass"))
    return found and bool(presented)


def bearer(request: web.Request) -> str:
    """The Bearer token of a request, or ''."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


class RateLimiter:
    """A token bucket per key: ``per_min`` requests a minute, bursts up to that."""

    def __init__(self, per_min: int) -> None:
        self.per_min = per_min
        self._buckets: dict[str, tuple[float, float]] = {}

    def check(self, key: str) -> float:
        """0 when allowed, else seconds to wait."""
        if self.per_min <= 0:
            return 0.0
        now = time.monotonic()
        rate = self.per_min / 60.0
        tokens, last = self._buckets.get(key, (float(self.per_min), now))
        tokens = min(float(self.per_min), tokens + (now - last) * rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / rate


def make_auth_middleware(keys: list[str], limiter: RateLimiter) -> Any:
    """Refuse API calls without a valid Bearer key when ``HUB_API_KEYS`` is set."""

    @web.middleware
    async def auth_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        path = request.path
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES) or path in SELF_AUTH_PATHS:
            return await handler(request)
        key = bearer(request)
        if keys and not key_matches(key, keys):
            raise Unauthorized(
                "missing or invalid API key: send 'Authorization: Bearer <key>' "
                "with one of the keys in HUB_API_KEYS"
            )
        wait = limiter.check(key or request.remote or "")
        if wait > 0:
            raise RateLimited(
                f"rate limit of {limiter.per_min} requests a minute reached; retry in {wait:.0f} s",
                headers={"Retry-After": str(max(1, round(wait)))},
            )
        return await handler(request)

    return auth_middleware
