"""The hub's aiohttp application: wiring of store, router, API, node socket and feed.

Components start in ``cleanup_ctx`` order (store, then router) and stop in reverse;
live websockets close with GOING_AWAY on shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import WSCloseCode, web

from hub import api_openai, api_responses, api_runs, openapi
from hub.appkeys import AUTH_FAILURES, BUS, LIMITER, METRICS, ROUTER, SETTINGS, SOCKETS, STORE
from hub.auth import AuthFailures, RateLimiter, make_auth_middleware
from hub.bus import Bus
from hub.errors import error_middleware
from hub.metrics import Metrics
from hub.router import Router
from hub.settings import HubSettings, parse_networks
from hub.store import Store
from hub.ws_nodes import node_socket

log = logging.getLogger(__name__)


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    store = Store(app[SETTINGS].db)
    await store.open()
    app[STORE] = store
    yield
    await store.close()


async def _router_ctx(app: web.Application) -> AsyncIterator[None]:
    router = Router(app[STORE], app[BUS], app[SETTINGS], metrics=app[METRICS])
    app[METRICS].attach(router)
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
    """The hub as an aiohttp application; run it with :func:`serve` or a test client."""
    limiter = RateLimiter(settings.rate_limit_per_min)
    failures = AuthFailures(
        settings.auth_failure_limit,
        settings.auth_failure_window_s,
        trusted_proxies=parse_networks(settings.trusted_proxies),
    )
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[error_middleware, make_auth_middleware(settings.api_keys, limiter, failures)],
    )
    app[SETTINGS] = settings
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
    return app


class HubServer:
    """The hub listening on ``HUB_HOST:HUB_PORT``, as an async context manager."""

    def __init__(self, settings: HubSettings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self.runner = web.AppRunner(
            self.app, handler_cancellation=True, access_log=None, shutdown_timeout=5
        )
        self.port: int | None = None

    async def start(self) -> None:
        """Listen; with ``HUB_PORT=0`` the port chosen is in :attr:`port`."""
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.settings.host, self.settings.port)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.settings.port
        log.info("hub listening on http://%s:%s", self.settings.host, self.port)

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    async def close(self) -> None:
        """Stop listening and shut every component down. Idempotent."""
        await self.runner.cleanup()

    async def __aenter__(self) -> HubServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
