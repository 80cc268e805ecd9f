"""Idle, slow and surplus connections are closed, so they cannot use up the hub's file
descriptors: /healthz answers through an attack of thousands of idle sockets."""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from hub.app import HubServer
from hub.connections import ConnectionLimits
from hub.settings import HubSettings, parse_networks
from tests.conftest import NODE_TOKEN

IDLE_S = 1.0
ATTACK = 2000


@pytest.fixture
def many_files() -> Iterator[None]:
    """Room for the attack's sockets at both ends, in this one process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 3 * ATTACK
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the hard open-file limit ({hard}) is below {wanted}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def limited_settings(tmp_path: Path, **values: Any) -> HubSettings:
    values = {"HUB_IDLE_TIMEOUT_S": IDLE_S, **values}
    return HubSettings(
        _env_file=None,  # type: ignore[call-arg]
        HUB_PORT=0,
        HUB_DB=tmp_path / "hub.db",
        HUB_TOKEN=NODE_TOKEN,
        **values,
    )


@pytest.fixture
async def hub(tmp_path: Path, many_files: None) -> AsyncIterator[HubServer]:
    """A hub that closes connections idle for a second; default connection caps."""
    async with HubServer(limited_settings(tmp_path)) as server:
        yield server


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def open_idle(port: int, count: int) -> list[Conn]:
    """``count`` connections that send nothing, opened fewer at a time than the listen
    backlog holds (past it the kernel drops SYNs, and each retry waits a second)."""
    conns: list[Conn] = []
    while len(conns) < count:
        batch = min(100, count - len(conns))
        conns += await asyncio.gather(
            *(asyncio.open_connection("127.0.0.1", port) for _ in range(batch))
        )
    return conns


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    """True once the hub has closed this connection (end of stream or reset)."""
    try:
        return await reader.read(1) == b""
    except ConnectionError:
        return True


async def close_all(conns: list[Conn]) -> None:
    for _, writer in conns:
        writer.close()
    await asyncio.gather(*(w.wait_closed() for _, w in conns), return_exceptions=True)


async def healthz(port: int, source: str = "127.0.0.1") -> bytes:
    """The status line of GET /healthz, sent from ``source``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(5):
            return await reader.readline()
    finally:
        writer.close()
        await asyncio.gather(writer.wait_closed(), return_exceptions=True)


async def test_two_thousand_idle_sockets_are_closed_and_healthz_answers(
    hub: HubServer, caplog: pytest.LogCaptureFixture
) -> None:
    """An address past its cap is refused at once (and logged), the rest are closed when
    idle; /healthz answers from another address meanwhile and from this one after."""
    assert hub.port is not None
    conns = await open_idle(hub.port, ATTACK)
    try:
        assert (await healthz(hub.port, source="127.0.0.2")).startswith(b"HTTP/1.1 200 ")
        async with asyncio.timeout(10 * IDLE_S + 10):
            closed = await asyncio.gather(*(closed_by_peer(r) for r, _ in conns))
        assert all(closed)
    finally:
        await close_all(conns)
    assert (await healthz(hub.port)).startswith(b"HTTP/1.1 200 ")
    refusals = [r.getMessage() for r in caplog.records if "refused a connection" in r.message]
    assert refusals and "HUB_MAX_CONNECTIONS_PER_CLIENT=100" in refusals[0]


async def test_headers_sent_a_byte_at_a_time_are_cut_off(hub: HubServer) -> None:
    """A request whose headers never finish (slowloris) is closed after the idle time,
    however busy it keeps the connection."""
    assert hub.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    started = time.monotonic()
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        closed = asyncio.ensure_future(closed_by_peer(reader))
        async with asyncio.timeout(IDLE_S + 10):
            while not closed.done():
                writer.write(b"X")  # the attack's pace, not a wait for the hub
                await asyncio.wait({closed}, timeout=IDLE_S / 10)
        assert closed.result()
    finally:
        writer.close()
        await asyncio.gather(writer.wait_closed(), return_exceptions=True)
    assert time.monotonic() - started < IDLE_S + 5


async def test_past_the_total_cap_a_connection_is_closed_until_one_leaves(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """HUB_MAX_CONNECTIONS holds for every address together; a freed slot is taken."""
    settings = limited_settings(
        tmp_path, HUB_MAX_CONNECTIONS=3, HUB_MAX_CONNECTIONS_PER_CLIENT=0, HUB_IDLE_TIMEOUT_S=60
    )
    async with HubServer(settings) as server:
        assert server.port is not None
        held = await open_idle(server.port, 3)
        try:
            try:
                answer = await healthz(server.port, source="127.0.0.3")
            except ConnectionError:
                answer = b""
            assert answer == b""  # closed unanswered
            assert any("HUB_MAX_CONNECTIONS=3" in r.getMessage() for r in caplog.records)
            # One held connection asks for its close; once it has read to the end, the
            # hub has let its slot go, and a new connection is served.
            reader, writer = held[0]
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            async with asyncio.timeout(5):
                assert (await reader.read()).startswith(b"HTTP/1.1 200 ")
            assert (await healthz(server.port)).startswith(b"HTTP/1.1 200 ")
        finally:
            await close_all(held)


def test_a_trusted_proxy_is_held_to_the_total_only() -> None:
    """A proxy carries many clients: the per-address cap skips HUB_TRUSTED_PROXIES, and an
    IPv6 client counts as its /64."""
    limits = ConnectionLimits(10, 2, exempt=parse_networks(["10.0.0.0/8"]))
    assert [limits.admit("10.1.1.1") for _ in range(3)] == ["10.1.1.1"] * 3
    assert limits.admit("2001:db8::1") == "2001:db8::/64"
    assert limits.admit("2001:db8::2") == "2001:db8::/64"
    assert limits.admit("2001:db8::3") is None
    limits.release("2001:db8::/64")
    assert limits.admit("2001:db8::4") == "2001:db8::/64"
    assert limits.open == 5


def test_the_total_cap_stays_below_the_open_file_limit(tmp_path: Path) -> None:
    """HUB_MAX_CONNECTIONS above what the process may open is lowered, with a warning."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        pytest.skip("no open-file limit")
    settings = limited_settings(tmp_path, HUB_MAX_CONNECTIONS=soft + 1000)
    assert ConnectionLimits.from_settings(settings).total < soft
