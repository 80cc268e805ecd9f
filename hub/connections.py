"""How many connections the hub holds, and for how long.

Every connection costs a file descriptor. Without limits, idle sockets (1,100 were
enough) used up the process's descriptors: then ``accept`` failed for everyone,
``/healthz`` included, and nothing said why. Two limits hold now:

- Time: aiohttp closes a connection that has no complete request for
  ``HUB_IDLE_TIMEOUT_S`` (its ``keepalive_timeout``, which runs from the moment the
  connection opens): an idle keep-alive socket, one that never sends a byte, and one
  that sends its headers a byte at a time (slowloris) alike. A body that stops arriving
  is refused by :func:`hub.errors.read_json` (408); a websocket that does not
  authenticate within 10 s is closed by its handler.
- Count: at most ``HUB_MAX_CONNECTIONS`` in all, and ``HUB_MAX_CONNECTIONS_PER_CLIENT``
  from one client address (an IPv6 client counts as its /64; ``HUB_TRUSTED_PROXIES``
  are held to the total only, as they carry many clients). A connection past a limit is
  closed as soon as it opens, before aiohttp sees it, with a log line (at most one every
  10 s per limit, counting those left out). The total never exceeds the process's soft
  ``RLIMIT_NOFILE`` less :data:`RESERVED_FDS`, kept for the store, logs and the
  processes an embedded executor starts.

:class:`LimitedSite` is an aiohttp site (like ``web.TCPSite``) whose protocol factory
wraps aiohttp's with :class:`_Admission`, the one place that counts.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import resource
import time
from typing import Any

from aiohttp import web

from hub.settings import HubSettings, Network, parse_networks

log = logging.getLogger(__name__)

#: Descriptors the total limit leaves free for everything else the process opens.
RESERVED_FDS = 100
#: One log line per limit at most this often.
LOG_EVERY_S = 10.0


def descriptor_room() -> int:
    """The soft limit on open files, less :data:`RESERVED_FDS` (at least 16)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    return max(16, soft - RESERVED_FDS)


@functools.lru_cache(maxsize=4096)
def client_key(address: str) -> str:
    """Whose connection this is: the IPv4 address, or the /64 of an IPv6 one (one host
    usually holds all of it)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def _exempt(address: str, networks: tuple[Network, ...]) -> bool:
    if not networks:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in networks)


class ConnectionLimits:
    """Counts open connections in all and per client address; refuses past the limits.

    ``per_client`` 0 turns the per-address limit off.
    """

    def __init__(self, total: int, per_client: int, *, exempt: tuple[Network, ...] = ()) -> None:
        self.total = total
        self.per_client = per_client
        self.exempt = exempt
        self.open = 0
        self.by_client: dict[str, int] = {}
        self.refused = 0
        self._log: dict[str, tuple[float, int]] = {}

    @classmethod
    def from_settings(cls, settings: HubSettings) -> ConnectionLimits:
        room = descriptor_room()
        total = min(settings.max_connections, room)
        if total < settings.max_connections:
            log.warning(
                "HUB_MAX_CONNECTIONS=%d is more than the open-file limit allows: holding at "
                "most %d connections (raise `ulimit -n` for more)",
                settings.max_connections,
                total,
            )
        return cls(
            total,
            settings.max_connections_per_client,
            exempt=parse_networks(settings.trusted_proxies),
        )

    def admit(self, address: str) -> str | None:
        """The client key to :meth:`release` later, or None: refused (and logged)."""
        client = client_key(address)
        if self.open >= self.total:
            self._refuse(
                "total",
                "refused a connection from %s: the hub holds HUB_MAX_CONNECTIONS=%d already",
                client,
                self.total,
            )
            return None
        held = self.by_client.get(client, 0)
        if self.per_client and held >= self.per_client and not _exempt(address, self.exempt):
            self._refuse(
                "client",
                "refused a connection from %s: it holds HUB_MAX_CONNECTIONS_PER_CLIENT=%d already",
                client,
                self.per_client,
            )
            return None
        self.open += 1
        self.by_client[client] = held + 1
        return client

    def release(self, client: str) -> None:
        """One connection of ``client`` closed."""
        self.open -= 1
        held = self.by_client.get(client, 0) - 1
        if held > 0:
            self.by_client[client] = held
        else:
            self.by_client.pop(client, None)

    def _refuse(self, kind: str, message: str, *args: Any) -> None:
        self.refused += 1
        now = time.monotonic()
        last, skipped = self._log.get(kind, (float("-inf"), 0))
        if now - last < LOG_EVERY_S:
            self._log[kind] = (last, skipped + 1)
            return
        self._log[kind] = (now, 0)
        suffix = f" ({skipped} more refused since the last line)" if skipped else ""
        log.warning(message + suffix, *args)


class _Admission(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind a check of the limits.

    A refused connection is closed before aiohttp ever sees it; an admitted one is
    handed every call as it comes.
    """

    __slots__ = ("_client", "_inner", "_limits")

    def __init__(self, inner: asyncio.Protocol, limits: ConnectionLimits) -> None:
        self._inner = inner
        self._limits = limits
        self._client: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        client = self._limits.admit(address)
        if client is None:
            transport.abort()  # type: ignore[attr-defined]
            return
        self._client = client
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        self._limits.release(client)
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class LimitedSite(web.BaseSite):
    """``web.TCPSite`` for plain HTTP, with every connection held to ``limits``."""

    __slots__ = ("_host", "_port", "limits", "port")

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, limits: ConnectionLimits
    ) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self.limits = limits
        #: The port listened on (the one chosen, with port 0), once started.
        self.port = port

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self.port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        limits = self.limits
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Admission(server(), limits), self._host, self._port, backlog=self._backlog
        )
        sockets = self._server.sockets
        if sockets:
            self.port = sockets[0].getsockname()[1]
