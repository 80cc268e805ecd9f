"""The hub answers only its own names and pages, takes bodies only as JSON, and every
answer says how it may be kept and sniffed, without naming versions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import ValidationError

from hub.app import HubServer
from hub.settings import HubSettings
from hub.web_guard import HOST_CACHE_SIZE, HostPolicy, split_host
from tests.conftest import NODE_TOKEN

RUNS = "/api/runs"


def settings_for(tmp_path: Path, **values: Any) -> HubSettings:
    """A hub without keys (HUB_AUTH=none): these tests are about pages, not keys."""
    return HubSettings(
        _env_file=None,  # type: ignore[call-arg]
        HUB_PORT=0,
        HUB_DB=tmp_path / "hub.db",
        HUB_TOKEN=NODE_TOKEN,
        **{"HUB_AUTH": "none", **values},
    )


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[HubServer]:
    """A hub without keys that also answers to hub.internal and *.corp.example, and to
    pages of https://hub.example.com."""
    settings = settings_for(
        tmp_path,
        HUB_ALLOWED_HOSTS="hub.internal, .corp.example",
        HUB_ALLOWED_ORIGINS="https://hub.example.com:443/",
    )
    async with HubServer(settings) as hub:
        yield hub


async def status_of(hub: HubServer, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, f"{hub.url}{path}", **kwargs) as resp,
    ):
        body = await resp.json() if resp.content_type == "application/json" else None
        return resp.status, body


@pytest.mark.parametrize(
    "host",
    ["localhost", "LOCALHOST:1", "127.0.0.1", "127.0.0.2:8080", "[::1]:8080", "10.1.2.3:8080",
     "hub.internal", "hub.internal.:99", "corp.example", "a.b.corp.example:8080"],
)  # fmt: skip
async def test_the_hubs_own_names_and_any_address_are_answered(
    guarded: HubServer, host: str
) -> None:
    """Loopback names, IP addresses (a rebound page never has one) and the names of
    HUB_ALLOWED_HOSTS are served."""
    status, _ = await status_of(guarded, "GET", RUNS, headers={"Host": host})
    assert status == 200


@pytest.mark.parametrize(
    "host",
    ["evil.example", "evil.example:8080", "localhost.evil.example", "hub.internal.evil",
     "xcorp.example", "127.0.0.1.nip.io", "a@127.0.0.1", "[zz]", ""],
)  # fmt: skip
async def test_any_other_host_is_refused(guarded: HubServer, host: str) -> None:
    """A name the hub was not given (DNS rebinding's) gets 403 host_not_allowed."""
    status, body = await status_of(guarded, "GET", "/healthz", headers={"Host": host})
    assert status == 403
    assert body["error"]["code"] == "host_not_allowed"


@pytest.mark.parametrize(
    "origin", ["http://evil.example", "http://127.0.0.1", "http://127.0.0.1:1", "null",
               "https://hub.example.com.evil", "file://"],
)  # fmt: skip
async def test_a_foreign_origin_is_refused_on_any_method(guarded: HubServer, origin: str) -> None:
    """A page of another origin gets 403 origin_not_allowed, for a POST and a GET alike."""
    status, body = await status_of(
        guarded, "POST", RUNS, json={"prompt": "x"}, headers={"Origin": origin}
    )
    assert (status, body["error"]["code"]) == (403, "origin_not_allowed")
    status, _ = await status_of(guarded, "GET", RUNS, headers={"Origin": origin})
    assert status == 403


async def test_the_hubs_own_origin_and_the_listed_ones_may_post(guarded: HubServer) -> None:
    """The page's own origin (by the Host it asked for) and HUB_ALLOWED_ORIGINS pass."""
    port = guarded.port
    for host, origin in (
        (f"127.0.0.1:{port}", f"http://127.0.0.1:{port}"),
        (f"localhost:{port}", f"HTTP://LOCALHOST:{port}"),
        ("hub.internal", "http://hub.internal:80"),
        ("hub.internal", "https://hub.example.com"),
    ):
        status, body = await status_of(
            guarded, "POST", RUNS, json={"prompt": "x"}, headers={"Host": host, "Origin": origin}
        )
        assert status == 202, (host, origin, body)


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
     "application/octet-stream", None],
)  # fmt: skip
async def test_a_body_that_is_not_sent_as_json_is_a_415(
    guarded: HubServer, content_type: str | None
) -> None:
    """/api/runs and the chat API take a body only as application/json (it was read
    whatever its type, so a page's form or text/plain fetch started runs)."""
    headers = {"Content-Type": content_type} if content_type else {}
    skip = () if content_type else ("Content-Type",)
    for path, body in (
        (RUNS, b'{"prompt": "x"}'),
        ("/v1/chat/completions", b'{"model":"codex","messages":[{"role":"user","content":"x"}]}'),
    ):
        async with (
            aiohttp.ClientSession(skip_auto_headers=skip) as http,
            http.post(f"{guarded.url}{path}", data=body, headers=headers) as resp,
        ):
            assert resp.status == 415, (path, content_type)
            assert (await resp.json())["error"]["code"] == "unsupported_media_type"


async def test_json_with_a_charset_and_a_cancel_without_body_pass(guarded: HubServer) -> None:
    """application/json; charset=utf-8 is JSON; a POST with no body needs no type."""
    status, body = await status_of(
        guarded,
        "POST",
        RUNS,
        data=b'{"prompt": "x"}',
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert status == 202, body
    status, _ = await status_of(guarded, "POST", f"{RUNS}/{body['run']['id']}/cancel")
    assert status == 200


async def test_every_answer_carries_the_security_headers(guarded: HubServer) -> None:
    """API answers (errors included) are no-store and nosniff; the monitor's files may be
    revalidated; no Server header names a version."""
    async with aiohttp.ClientSession() as http:
        for path, cache in (
            (RUNS, "no-store"),
            ("/healthz", "no-store"),
            ("/api/runs/nope", "no-store"),
            ("/no/such/path", "no-store"),
            ("/", "no-cache"),
            ("/static/js/main.js", "no-cache"),
        ):
            async with http.get(f"{guarded.url}{path}") as resp:
                assert resp.headers["Cache-Control"] == cache, path
                assert resp.headers["X-Content-Type-Options"] == "nosniff", path
                assert resp.headers["Server"] == "codex-hub", path


async def test_an_answer_to_a_broken_request_names_no_version(guarded: HubServer) -> None:
    """Even aiohttp's own 400 to a request it cannot parse says only codex-hub."""
    reader, writer = await asyncio.open_connection("127.0.0.1", guarded.port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header\r\n\r\n")
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()
        await asyncio.gather(writer.wait_closed(), return_exceptions=True)
    assert head.split(b" ", 2)[1] == b"400"
    assert b"\r\nServer: codex-hub\r\n" in head
    assert b"aiohttp" not in head and b"Python" not in head


def test_host_headers_are_split_into_name_and_port() -> None:
    """IPv6 in brackets, a trailing dot, upper case and ports are understood."""
    assert split_host("[::1]:8080") == ("::1", 8080)
    assert split_host("Hub.Internal.") == ("hub.internal", None)
    assert split_host("a:b:c") is None
    assert split_host("user@host") is None


def test_settings_refuse_what_is_no_origin_or_no_host_name(tmp_path: Path) -> None:
    """HUB_ALLOWED_ORIGINS takes scheme://host[:port]; HUB_ALLOWED_HOSTS takes names."""
    for bad in ("hub.example.com", "ftp://hub.example.com", "https://hub.example.com/app"):
        with pytest.raises(ValidationError, match="is not an origin"):
            settings_for(tmp_path, HUB_ALLOWED_ORIGINS=bad)
    with pytest.raises(ValidationError, match="is not a host name"):
        settings_for(tmp_path, HUB_ALLOWED_HOSTS="hub.internal:8080")
    ok = settings_for(tmp_path, HUB_ALLOWED_ORIGINS="HTTPS://Hub.Example.com:443/,http://x:80")
    assert ok.allowed_origins == ["https://hub.example.com", "http://x"]


def test_a_host_verdict_comes_the_same_from_the_cache_and_it_stays_bounded(
    tmp_path: Path,
) -> None:
    """A Host header asked again gets the verdict it got the first time (allowed or
    refused), and made-up names past HOST_CACHE_SIZE are judged without being kept."""
    policy = HostPolicy(settings_for(tmp_path, HUB_ALLOWED_HOSTS="hub.internal"))
    for _ in range(2):
        assert policy.check_host("hub.internal:8080") == ("hub.internal", 8080)
        assert policy.check_host("127.0.0.1") == ("127.0.0.1", None)
        assert policy.check_host("evil.example") is None
        assert policy.check_host("hub.internal/x") is None
    for i in range(HOST_CACHE_SIZE * 2):
        assert policy.check_host(f"scanner{i}.example") is None
    assert policy.check_host("hub.internal:8080") == ("hub.internal", 8080)
    assert policy.check_host(f"scanner{HOST_CACHE_SIZE * 2}.example") is None
    assert len(policy._hosts) == HOST_CACHE_SIZE
