"""API keys for the HTTP API and the monitor, per-key rate limits, and a limit on failed
authentications per client address (for the API, the feed and the node socket alike).

Principals
----------
Every API key is a *principal*: it sees, cancels and continues only its own runs and
sessions. Its id (:func:`principal_for_key`) is ``key:`` and the first 12 hex digits of
the key's SHA-256: stable across restarts, and never the key itself. The keys of
``HUB_OPERATOR_KEYS`` are *operators*: they see every run (those of other keys and of the
chat bridges) and may continue any conversation. Without any key configured everyone
is one principal (:data:`NO_AUTH_PRINCIPAL`) and an operator. Runs from chat bridges
belong to no API principal (their ``principal`` is null): only operators see them.

The key check (:func:`make_auth_check`, in the hub's middleware) sets
``request[PRINCIPAL]`` and ``request[OPERATOR]`` on every request it checks (typed
request keys named ``principal`` and ``operator``: aiohttp warns on plain string keys);
handlers read them with :func:`principal_of`, :func:`is_operator` and :func:`can_see`.
A session id an HTTP caller names is put in its principal's namespace with
:func:`session_key`, so it can never name another principal's session.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import math
import time
from collections import deque
from collections.abc import Callable, Iterable

from aiohttp import web

from hub.errors import RateLimited, Unauthorized
from hub.settings import Network

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


#: Where the key check leaves a request's principal, and whether it is an operator.
PRINCIPAL: web.RequestKey[str] = web.RequestKey("principal", str)
OPERATOR: web.RequestKey[bool] = web.RequestKey("operator", bool)
#: The one principal of a hub that has no API key at all (everyone is an operator then).
NO_AUTH_PRINCIPAL = "anonymous"
#: Surfaces whose session keys are namespaced by principal (``<surface>:<principal>:<id>``).
API_SURFACES = ("http", "monitor")


@functools.lru_cache(maxsize=256)
def principal_for_key(key: str) -> str:
    """The principal id of an API key: ``key:`` + 12 hex digits of its SHA-256.

    Cached (a hash on every request otherwise): it depends on the key alone, and the
    middleware asks only for keys it has just checked, so a key removed from the hub's
    keys is refused before it gets here.
    """
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return f"key:{digest[:12]}"


def principal_of(request: web.Request) -> str:
    """The principal the key check found for ``request``.

    Raises :class:`~hub.errors.Unauthorized` on a path the middleware did not check,
    rather than guess: a handler that needs a principal must be behind a key.
    """
    principal = request.get(PRINCIPAL)
    if not principal:
        raise Unauthorized("this request carries no checked API key")
    return principal


def is_operator(request: web.Request) -> bool:
    """True when ``request`` came with an operator key (or the hub has no key at all)."""
    return request.get(OPERATOR) is True


def can_see(request: web.Request, owner: str | None) -> bool:
    """Whether ``request``'s principal may see (read, cancel) a run owned by ``owner``.

    ``owner`` None is a run of a chat bridge (or from before principals): operators only.
    """
    return is_operator(request) or (owner is not None and owner == principal_of(request))


def session_key(surface: str, principal: str, session_id: str) -> str:
    """The session key of ``session_id``, named by ``principal`` on ``surface``."""
    return f"{surface}:{principal}:{session_id}"


def owns_session(principal: str, key: str) -> bool:
    """Whether ``key`` is a session in ``principal``'s namespace (of any API surface)."""
    surface, _, rest = key.partition(":")
    return surface in API_SURFACES and rest.startswith(f"{principal}:")


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


def client_address(request: web.Request, trusted_proxies: tuple[Network, ...] = ()) -> str:
    """Who a request comes from, for :class:`AuthFailures`: its client's IP address.

    That is the TCP peer's, unless the peer is one of ``trusted_proxies``
    (``HUB_TRUSTED_PROXIES``): then it is the rightmost address in ``X-Forwarded-For``
    that is not a trusted proxy. Entries to its left are the client's own to write and
    are never believed; an entry that is not an address stops the walk at the proxy
    that passed it on. An IPv6 client counts as its /64 network (one host usually holds
    all of it); an IPv4-mapped address as the IPv4 one.
    """
    peer = request.remote or ""
    if trusted_proxies and _within(peer, trusted_proxies):
        hops = [
            h.strip() for v in request.headers.getall("X-Forwarded-For", ()) for h in v.split(",")
        ]
        for hop in reversed(hops):
            if _ip(hop) is None:
                break
            peer = hop
            if not _within(hop, trusted_proxies):
                break
    return _client_of(peer)


@functools.lru_cache(maxsize=4096)
def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def _within(text: str, networks: tuple[Network, ...]) -> bool:
    ip = _ip(text)
    if ip is None:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in networks)


@functools.lru_cache(maxsize=4096)
def _client_of(remote: str) -> str:
    # Cached: parsing an address costs more than the rest of the key check.
    try:
        ip = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return remote or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class AuthFailures:
    """Failed authentications per client address, in a sliding window.

    Only wrong credentials count, never a missing one. An address with ``limit``
    failures in the last ``window_s`` seconds has its further wrong ones refused (429,
    close 4029) until the oldest leaves the window; a right credential from it is still
    let in (a neighbour's wrong guesses must not lock the owner out), and refused
    attempts do not count. ``limit`` 0 turns it off. ``clock`` is injectable for tests;
    at most ``max_clients`` addresses are remembered (the stalest are forgotten first).
    """

    def __init__(
        self,
        limit: int,
        window_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 10_000,
        trusted_proxies: tuple[Network, ...] = (),
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.trusted_proxies = trusted_proxies
        self.clock = clock
        self.max_clients = max_clients
        self._failures: dict[str, deque[float]] = {}

    def client(self, request: web.Request) -> str:
        """The address ``request`` is counted against (see :func:`client_address`)."""
        return client_address(request, self.trusted_proxies)

    def retry_after(self, client: str) -> float:
        """0 when ``client`` may try, else the seconds until it may."""
        failures = self._failures.get(client)
        if self.limit <= 0 or failures is None:
            return 0.0
        now = self.clock()
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        if not failures:
            del self._failures[client]
            return 0.0
        if len(failures) < self.limit:
            return 0.0
        return failures[0] + self.window_s - now

    def failed(self, client: str) -> None:
        """Count a failed authentication of ``client``."""
        if self.limit <= 0:
            return
        failures = self._failures.pop(client, None) or deque(maxlen=self.limit)
        failures.append(self.clock())
        self._failures[client] = failures  # last in the dict: the most recently failed
        if len(self._failures) > self.max_clients:
            del self._failures[next(iter(self._failures))]

    def refusal(self, client: str) -> tuple[str, int] | None:
        """None when ``client`` may try; else why not, and the whole seconds to wait."""
        wait = self.retry_after(client)
        if wait <= 0:
            return None
        seconds = max(1, math.ceil(wait))
        return (
            f"too many failed authentications from {client} ({self.limit} in "
            f"{self.window_s:g} s); retry in {seconds} s",
            seconds,
        )


def make_auth_check(
    keys: list[str],
    limiter: RateLimiter,
    failures: AuthFailures,
    operator_keys: list[str] | None = None,
) -> Callable[[web.Request], None]:
    """Refuse API calls without a valid Bearer key when any key is configured.

    ``keys`` are the plain API keys (the effective ones: the generated key included),
    ``operator_keys`` the operators' (valid API keys too). A valid key is always let in,
    whatever the limit on failures says; a wrong one is counted against its address,
    and refused with 429 once the address has too many. A request with no key at all is
    refused (401) without being counted: any web page can send those, and they must not
    lock the right key out. A request let through carries ``request[PRINCIPAL]`` and
    ``request[OPERATOR]``. The check raises to refuse; the error rendering is around
    it (:func:`hub.errors.make_middleware`).
    """
    operator_keys = list(operator_keys or ())
    every_key = [*keys, *operator_keys]

    def auth_check(request: web.Request) -> None:
        path = request.path
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES) or path in SELF_AUTH_PATHS:
            return
        key = bearer(request)
        if every_key:
            if not key_matches(key, every_key):
                if key:
                    check_wrong_credential(failures, failures.client(request))
                raise Unauthorized(
                    "missing or invalid API key: send 'Authorization: Bearer <key>' with "
                    "one of the hub's API keys (HUB_API_KEYS, or the api_key in the hub's "
                    "credentials file)"
                )
            request[PRINCIPAL] = principal_for_key(key)
            request[OPERATOR] = key_matches(key, operator_keys)
        else:
            request[PRINCIPAL] = NO_AUTH_PRINCIPAL
            request[OPERATOR] = True
        wait = limiter.check(key or request.remote or "")
        if wait > 0:
            raise RateLimited(
                f"rate limit of {limiter.per_min} requests a minute reached; retry in {wait:.0f} s",
                headers={"Retry-After": str(max(1, round(wait)))},
            )

    return auth_check


def check_wrong_credential(failures: AuthFailures, client: str) -> None:
    """Count a wrong API key from ``client``; raise 429 instead when it has too many."""
    refused = failures.refusal(client)
    if refused is not None:
        reason, seconds = refused
        raise RateLimited(
            reason, code="too_many_auth_failures", headers={"Retry-After": str(seconds)}
        )
    failures.failed(client)
