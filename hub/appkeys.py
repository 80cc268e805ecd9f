"""Typed keys for what the hub keeps on its aiohttp application."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from hub.auth import AuthFailures, RateLimiter
    from hub.bus import Bus
    from hub.metrics import Metrics
    from hub.router import Router
    from hub.settings import HubSettings
    from hub.store import Store
    from kernel.credentials import Credentials

SETTINGS: web.AppKey[HubSettings] = web.AppKey("settings")
STORE: web.AppKey[Store] = web.AppKey("store")
BUS: web.AppKey[Bus] = web.AppKey("bus")
ROUTER: web.AppKey[Router] = web.AppKey("router")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
LIMITER: web.AppKey[RateLimiter] = web.AppKey("limiter")
AUTH_FAILURES: web.AppKey[AuthFailures] = web.AppKey("auth_failures")
#: What the hub generated because HUB_TOKEN or HUB_API_KEYS was empty, else None.
CREDENTIALS: web.AppKey[Credentials | None] = web.AppKey("credentials")
SOCKETS: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("sockets")
