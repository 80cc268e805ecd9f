"""The hub's aiohttp application: wiring of store, router, API, node socket and feed.

Components start in ``cleanup_ctx`` order (store, then router) and stop in reverse;
live websockets close with GOING_AWAY on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from urllib.parse import quote

from aiohttp import WSCloseCode, web

from hub import (
    api_approvals,
    api_openai,
    api_responses,
    api_runs,
    api_settings,
    openapi,
    web_guard,
)
from hub.appkeys import (
    AUTH_FAILURES,
    BUS,
    CREDENTIALS,
    LIMITER,
    METRICS,
    ROUTER,
    SETTINGS,
    SOCKETS,
    STORE,
)
from hub.approvals import approvers_of
from hub.auth import AuthFailures, RateLimiter, make_auth_check, principal_for_key
from hub.bus import Bus
from hub.connections import ConnectionLimits, LimitedSite
from hub.credentials import resolve
from hub.errors import make_middleware
from hub.metrics import Metrics
from hub.router import Router
from hub.settings import HubSettings, parse_networks
from hub.store import Store
from hub.ws_nodes import node_socket
from kernel.process import share_the_gil

log = logging.getLogger(__name__)


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    store = Store(app[SETTINGS].db)
    await store.open()
    app[STORE] = store
    yield
    await store.close()


async def _router_ctx(app: web.Application) -> AsyncIterator[None]:
    router = Router(app[STORE], app[BUS], app[SETTINGS], metrics=app[METRICS])
    # An API key written in APPROVERS counts as its principal (hub.auth's id of it).
    router.approvals.approvers = approvers_of(app[SETTINGS], principal_for_key)
    app[METRICS].attach(router)
    app[METRICS].watch_store(app[STORE].activity)
    app[ROUTER] = router
    await router.start()
    yield
    await router.close()


async def _close_sockets(app: web.Application) -> None:
    app[ROUTER].closing = True
    sockets = [*app[SOCKETS], *app[api_runs.SOCKETS_FEED]]
    await asyncio.gather(
        *(ws.close(code=WSCloseCode.GOING_AWAY, message=b"hub shutting down") for ws in sockets),
        return_exceptions=True,
    )


def create_app(settings: HubSettings) -> web.Application:
    """The hub as an aiohttp application; run it with :func:`serve` or a test client.

    An empty ``HUB_TOKEN`` or ``HUB_API_KEYS`` is filled from the credentials file
    (:func:`hub.credentials.resolve`): ``app[SETTINGS]`` holds the effective ones.
    """
    settings, credentials = resolve(settings)
    limiter = RateLimiter(settings.rate_limit_per_min)
    failures = AuthFailures(
        settings.auth_failure_limit,
        settings.auth_failure_window_s,
        trusted_proxies=parse_networks(settings.trusted_proxies),
    )
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        # The web guard refuses what pages of other sites send before any key is checked
        # (their requests never count as failed logins); its refusals are rendered like
        # every other error. One middleware for the three: each costs every request.
        middlewares=[
            make_middleware(
                web_guard.make_guard(settings),
                make_auth_check(settings.api_keys, limiter, failures, settings.operator_keys),
            )
        ],
    )
    web_guard.setup(app)
    app[SETTINGS] = settings
    app[CREDENTIALS] = credentials
    app[BUS] = Bus()
    app[METRICS] = Metrics()
    app[LIMITER] = limiter
    app[AUTH_FAILURES] = failures
    app[SOCKETS] = set()
    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(_router_ctx)
    app.on_shutdown.append(_close_sockets)
    app.router.add_get("/ws", node_socket)
    app.router.add_routes(openapi.routes)
    api_openai.setup(app, api_responses.routes)
    api_runs.setup(app)
    api_approvals.setup(app)
    app.router.add_routes(api_settings.routes)
    return app


class HubServer:
    """The hub listening on ``HUB_HOST:HUB_PORT``, as an async context manager."""

    def __init__(self, settings: HubSettings) -> None:
        self.app = create_app(settings)
        #: The effective settings: an empty HUB_TOKEN or HUB_API_KEYS filled in.
        self.settings = self.app[SETTINGS]
        #: What the hub generated (or found in its credentials file), else None.
        self.credentials = self.app[CREDENTIALS]
        self.runner = web.AppRunner(
            self.app,
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=5,
            # Runs from the moment a connection opens: it also ends one whose headers
            # never finish (hub/connections.py).
            keepalive_timeout=settings.idle_timeout_s,
        )
        self.port: int | None = None
        self.limits: ConnectionLimits | None = None

    async def start(self) -> None:
        """Listen; with ``HUB_PORT=0`` the port chosen is in :attr:`port`.

        The event loop shares the GIL with the store's writer thread: waits for it are
        kept short (:func:`kernel.process.share_the_gil`).
        """
        share_the_gil()
        await self.runner.setup()
        self.limits = ConnectionLimits.from_settings(self.settings)
        site = LimitedSite(self.runner, self.settings.host, self.settings.port, self.limits)
        await site.start()
        self.port = site.port
        log.info("hub listening on http://%s:%s", self.settings.host, self.port)

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    @property
    def signin_url(self) -> str | None:
        """The monitor's address with the generated API key in its fragment (the browser
        never sends a fragment to the server), or None when the key was not generated."""
        creds = self.credentials
        if creds is None or creds.api_key not in self.settings.operator_keys:
            return None
        host = self.settings.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/#key={quote(creds.api_key, safe='')}"

    async def close(self) -> None:
        """Stop listening and shut every component down. Idempotent."""
        await self.runner.cleanup()

    async def __aenter__(self) -> HubServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
