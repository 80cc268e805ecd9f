"""With keys and token set, nothing but /healthz answers without them (issue #8, point 6).

Decision on the monitor page: ``GET /`` and ``GET /static/...`` stay public by design.
They are the page's own static files, the same for everyone; the page shows nothing
until the browser presents a key, and everything it shows comes through the API and the
feed, which check that key. The tests below hold the page to that: no run, prompt, key
or token is in any of its files, whoever asks.

The routes are enumerated from ``app.router.routes()``: an endpoint added without auth
fails here, not in production.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from hub.api_runs import MONITOR_DIR
from hub.app import HubServer
from hub.appkeys import AUTH_FAILURES, ROUTER, STORE
from hub.auth import AuthFailures, client_address
from hub.openapi import document
from hub.settings import HubSettings
from testkit.fakes.nodes import FakeNode, bridge_hello, executor_hello
from tests.abuse.conftest import API_KEY, AUTH, CHAT, assert_serving
from tests.abuse.feed import feed_messages
from tests.conftest import NODE_TOKEN, node_token
from wire import CLOSE_RATE_LIMITED, CLOSE_UNAUTHORIZED

#: Open to anyone: liveness.
PUBLIC = {"/healthz"}
#: Open to anyone by design: the monitor's static page (see the module docstring).
PUBLIC_BY_DESIGN = {"/", "/static"}
#: Websockets that check their own credentials in the first frame (tested below).
SELF_AUTHENTICATED = {"/ws", "/api/feed"}
CLOSE_FEED_UNAUTHORIZED = 4001

WRONG_KEYS = [
    None,
    "",
    "Bearer",
    "Bearer ",
    f"Bearer {API_KEY[:-1]}",
    f"Bearer {API_KEY}x",
    f"Bearer {API_KEY.upper()}",
    f"Basic {API_KEY}",
    API_KEY,
    f"Bearer {NODE_TOKEN}",
    f"Bearer {API_KEY},{API_KEY}",
]


def endpoints(app: Any) -> list[tuple[str, str]]:
    """(METHOD, concrete path) of every route, path parameters filled in."""
    found = set()
    for route in app.router.routes():
        if route.resource is None:
            continue
        info = route.resource.get_info()
        path = info.get("path") or info.get("formatter") or info.get("prefix") or ""
        found.add((route.method, re.sub(r"\{[^}]+\}", "x", path)))
    return sorted(found)


def key_needed(path: str) -> bool:
    return path not in PUBLIC | PUBLIC_BY_DESIGN | SELF_AUTHENTICATED


async def test_every_route_but_healthz_refuses_a_missing_or_wrong_key(
    hub: Any, http: aiohttp.ClientSession
) -> None:
    """Each API route answers 401 to every wrong credential, and not 401 to the key."""
    checked = []
    for method, path in endpoints(hub.app):
        if not key_needed(path):
            continue
        checked.append((method, path))
        for wrong in WRONG_KEYS:
            headers = {} if wrong is None else {"Authorization": wrong}
            async with http.request(method, path, headers=headers, json={}) as resp:
                assert resp.status == 401, (method, path, wrong, resp.status)
                if method != "HEAD":
                    body = await resp.json()
                    assert body["error"]["code"] == "invalid_api_key"
                    assert API_KEY not in json.dumps(body)
        async with http.request(method, path, headers=AUTH, json={}) as resp:
            assert resp.status != 401, (method, path)
    # The list is the application's, so a new endpoint lands in it by itself; every
    # operation of the OpenAPI document but /healthz is among them.
    described = {
        (method.upper(), re.sub(r"\{[^}]+\}", "x", path))
        for path, item in document(hub.settings)["paths"].items()
        for method in item
    }
    assert described - {("GET", "/healthz")} <= set(checked)


async def test_healthz_answers_without_a_key(hub: Any, http: aiohttp.ClientSession) -> None:
    """Liveness needs no key and says nothing but that."""
    async with http.get("/healthz") as resp:
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}


async def test_the_public_monitor_files_hold_no_run_key_or_token(
    hub: Any, http: aiohttp.ClientSession, executor: Any
) -> None:
    """The page and each of its files are public, and carry nothing of the hub's state."""
    prompt = "monitor-secret-prompt-7f3a"
    await assert_serving(http, prompt)
    runs, _ = await hub.app[STORE].list_runs()
    files = ["/"] + [
        "/static/" + p.relative_to(MONITOR_DIR).as_posix()
        for p in MONITOR_DIR.rglob("*")
        if p.is_file()
    ]
    assert len(files) > 2
    for path in files:
        async with http.get(path) as resp:
            assert resp.status == 200, path
            body = await resp.text()
        for leak in (prompt, API_KEY, NODE_TOKEN, *(r.id for r in runs)):
            assert leak not in body, (path, leak)


# --- node token ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "token", ["", "wrong-token", API_KEY, NODE_TOKEN.upper(), NODE_TOKEN + " "]
)
@pytest.mark.parametrize("hello", [executor_hello, bridge_hello])
async def test_a_node_without_the_token_is_refused(hub: Any, token: str, hello: Any) -> None:
    """Executors and bridges with a wrong token, or the API key, get 4001 and nothing else."""
    node = FakeNode(f"ws://127.0.0.1:{hub.port}/ws", hello(token=token))
    with pytest.raises(ConnectionClosed):
        await node.connect()
    assert node.close_code == CLOSE_UNAUTHORIZED
    assert not hub.app[ROUTER].executors and not hub.app[ROUTER].bridges


async def test_the_api_key_works_as_node_token_only_when_they_are_equal(
    hub_settings: HubSettings,
) -> None:
    """A hub whose HUB_TOKEN is its API key welcomes that value; nothing else does."""
    same = hub_settings.model_copy(update={"token": SecretStr(API_KEY)})
    async with HubServer(same) as server:
        url = f"ws://127.0.0.1:{server.port}/ws"
        node = FakeNode(url, executor_hello(token=API_KEY))
        assert (await node.connect())["type"] == "welcome"
        await node.close()
        refused = FakeNode(url, executor_hello(token=NODE_TOKEN))
        with pytest.raises(ConnectionClosed):
            await refused.connect()
        assert refused.close_code == CLOSE_UNAUTHORIZED


# --- the monitor's feed -----------------------------------------------------------------


@pytest.mark.parametrize(
    "first",
    [
        "",
        "not json",
        json.dumps({"type": "auth"}),
        json.dumps({"type": "auth", "key": API_KEY[:-1]}),
        json.dumps({"type": "auth", "key": NODE_TOKEN}),
        json.dumps({"type": "auth", "key": [API_KEY]}),
        json.dumps({"type": "hello", "role": "executor", "token": NODE_TOKEN, "node_id": "x"}),
    ],
)
async def test_the_feed_refuses_a_missing_or_wrong_key(hub: Any, first: str) -> None:
    """Without the API key in the first frame the feed closes 4001 before saying anything."""
    async with connect(f"ws://127.0.0.1:{hub.port}/api/feed") as ws:
        await ws.send(first)
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == CLOSE_FEED_UNAUTHORIZED


async def test_a_monitor_cannot_act_as_an_executor_or_a_bridge(
    hub: Any, http: aiohttp.ClientSession, fake_executor: Any
) -> None:
    """Hello, submit, result and ack frames on the feed change nothing; the feed goes on."""
    router = hub.app[ROUTER]
    async with fake_executor(f"ws://127.0.0.1:{hub.port}/ws", token=NODE_TOKEN) as ex:
        async with connect(f"ws://127.0.0.1:{hub.port}/api/feed") as feed:
            await feed.send(json.dumps({"type": "auth", "key": API_KEY}))
            assert json.loads(await feed.recv())["type"] == "ready"
            async with http.post("/api/runs", json={"prompt": "held"}, headers=AUTH) as resp:
                run_id = (await resp.json())["run"]["id"]
            await ex.wait_type("assign", run_id=run_id)
            await ex.start_run(run_id)
            forged = [
                executor_hello(node_id="monitor-exec", token=NODE_TOKEN),
                bridge_hello(node_id="monitor-bridge", token=NODE_TOKEN),
                {"type": "submit", "req_id": "r", "prompt": "from the feed"},
                {"type": "result", "run_id": run_id, "status": "succeeded", "answer": "forged"},
                {"type": "cancel", "req_id": "c", "run_id": run_id},
                {"type": "ack", "delivery_id": run_id},
            ]
            for frame in forged:
                await feed.send(json.dumps(frame))
            await ex.finish(run_id, answer="real")
            # The feed reports the real end; the frames before it were read and dropped.
            async with asyncio.timeout(10):
                ended = False
                while not ended:
                    for message in feed_messages(await feed.recv()):
                        assert message["type"] in ("run", "event", "nodes", "queue"), message
                        run = message.get("run") or {}
                        ended = ended or run.get("state") == "succeeded"
            assert sorted(router.executors) == ["fake-exec"] and not router.bridges
            assert not ex.of_type("cancel")
    run = await hub.app[STORE].get_run(run_id)
    assert run is not None and run.answer == "real"
    runs, _ = await hub.app[STORE].list_runs()
    assert [r.prompt for r in runs] == ["held"]


# --- rate limits --------------------------------------------------------------------

LIMIT = 5
OTHER_KEY = "abuse-other-key-0123456789"


@pytest.fixture
def limited_settings(hub_settings: HubSettings) -> HubSettings:
    """The test hub with two keys and a limit of LIMIT requests a minute per key."""
    return hub_settings.model_copy(
        update={"api_keys": [API_KEY, OTHER_KEY], "rate_limit_per_min": LIMIT}
    )


async def test_a_key_over_its_rate_limit_gets_429_with_retry_after(
    limited_settings: HubSettings,
) -> None:
    """The request past HUB_RATE_LIMIT_PER_MIN is refused 429 with Retry-After; other keys
    and /healthz are not held back."""
    async with (
        HubServer(limited_settings) as server,
        aiohttp.ClientSession(server.url) as http,
    ):
        for _ in range(LIMIT):
            async with http.get("/api/nodes", headers=AUTH) as resp:
                assert resp.status == 200
        async with http.get("/api/nodes", headers=AUTH) as resp:
            assert resp.status == 429
            retry_after = int(resp.headers["Retry-After"])
            body = await resp.json()
        assert 1 <= retry_after <= 60
        assert body["error"]["code"] == "rate_limit_exceeded"
        async with http.post(CHAT, json={}, headers=AUTH) as resp:
            assert resp.status == 429 and resp.headers["X-Run-ID"].startswith("run_")
        async with http.get("/api/nodes", headers={"Authorization": f"Bearer {OTHER_KEY}"}) as resp:
            assert resp.status == 200
        for _ in range(LIMIT * 2):
            async with http.get("/healthz") as resp:
                assert resp.status == 200


# --- failed authentications per address -------------------------------------------------

#: Another client address: Linux routes all of 127.0.0.0/8 to the loopback interface.
OTHER_ADDRESS = "127.0.0.2"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def guarded_settings(hub_settings: HubSettings) -> HubSettings:
    """The test hub with the default limit on failed authentications per address."""
    defaults = HubSettings.model_fields
    return hub_settings.model_copy(
        update={
            "auth_failure_limit": defaults["auth_failure_limit"].default,
            "auth_failure_window_s": defaults["auth_failure_window_s"].default,
        }
    )


async def hello_close(url: str, token: str, local: str = "127.0.0.1") -> tuple[int | None, str]:
    """Say hello with `token` from address `local`: (close code, reason), or (None, welcome)."""
    async with connect(url, local_addr=(local, 0)) as ws:
        await ws.send(json.dumps(executor_hello(node_id=f"n-{local}", token=token)))
        try:
            return None, json.loads(await ws.recv())["type"]
        except ConnectionClosed as exc:
            assert exc.rcvd is not None
            return exc.rcvd.code, exc.rcvd.reason


async def test_wrong_keys_from_one_address_are_refused_until_the_window_passes(
    guarded_settings: HubSettings,
) -> None:
    """Past HUB_AUTH_FAILURE_LIMIT wrong keys, the address's wrong keys get 429 with
    Retry-After on every way in, while the right key still gets in everywhere; another
    address is not affected; once the window has passed, wrong keys get 401 again."""
    limit = guarded_settings.auth_failure_limit
    window = guarded_settings.auth_failure_window_s
    assert limit > 0 and window > 0
    wrong = {"Authorization": f"Bearer {API_KEY}x"}
    clock = Clock()
    async with (
        HubServer(guarded_settings) as server,
        aiohttp.ClientSession(server.url) as http,
        aiohttp.ClientSession(
            server.url, connector=aiohttp.TCPConnector(local_addr=(OTHER_ADDRESS, 0))
        ) as other,
    ):
        server.app[AUTH_FAILURES].clock = clock
        for _ in range(limit):
            async with http.get("/api/nodes", headers=AUTH) as resp:  # successes do not count
                assert resp.status == 200
            async with http.get("/api/nodes", headers=wrong) as resp:
                assert resp.status == 401
        async with http.get("/api/nodes", headers=wrong) as resp:
            assert resp.status == 429
            assert resp.headers["Retry-After"] == str(round(window))
            body = await resp.json()
        assert body["error"]["code"] == "too_many_auth_failures"
        assert "retry in" in body["error"]["message"] and API_KEY not in json.dumps(body)
        async with http.get("/api/nodes", headers=AUTH) as resp:
            assert resp.status == 200
        async with http.get("/healthz") as resp:
            assert resp.status == 200
        # The node socket and the feed refuse the address's wrong credentials too...
        ws_url = f"ws://127.0.0.1:{server.port}/ws"
        code, reason = await hello_close(ws_url, "guess")
        assert code == CLOSE_RATE_LIMITED and "retry in" in reason
        async with connect(f"ws://127.0.0.1:{server.port}/api/feed") as feed:
            await feed.send(json.dumps({"type": "auth", "key": "guess"}))
            with pytest.raises(ConnectionClosed) as closed:
                await feed.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == CLOSE_RATE_LIMITED
        # ...and let its right ones in.
        assert await hello_close(ws_url, NODE_TOKEN) == (None, "welcome")
        async with connect(f"ws://127.0.0.1:{server.port}/api/feed") as feed:
            await feed.send(json.dumps({"type": "auth", "key": API_KEY}))
            assert json.loads(await feed.recv())["type"] == "ready"
        # Another address is not held back.
        async with other.get("/api/nodes", headers=wrong) as resp:
            assert resp.status == 401
        # Just before the window ends, still refused; at its end, checked again.
        clock.now += window - 1
        async with http.get("/api/nodes", headers=wrong) as resp:
            assert resp.status == 429 and resp.headers["Retry-After"] == "1"
        clock.now += 1
        async with http.get("/api/nodes", headers=wrong) as resp:
            assert resp.status == 401


async def test_wrong_node_tokens_count_against_the_address_but_never_refuse_the_right_one(
    guarded_settings: HubSettings,
) -> None:
    """Wrong node credentials in hellos trip the same limit: then wrong ones get 4029 with
    a reason and wrong API keys 429, while a second executor with the right credential
    connects and the right API key is served during the lockout."""
    limit = guarded_settings.auth_failure_limit
    async with (
        HubServer(guarded_settings) as server,
        aiohttp.ClientSession(server.url) as http,
    ):
        server.app[AUTH_FAILURES].clock = Clock()
        url = f"ws://127.0.0.1:{server.port}/ws"
        assert await hello_close(url, node_token("executor")) == (None, "welcome")
        for _ in range(limit):
            assert (await hello_close(url, "guess"))[0] == CLOSE_UNAUTHORIZED
        code, reason = await hello_close(url, "guess")
        assert code == CLOSE_RATE_LIMITED
        assert reason.startswith("too many failed authentications from 127.0.0.1")
        async with http.get("/api/nodes", headers={"Authorization": "Bearer guess"}) as resp:
            assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
        async with connect(url) as ws:
            hello = executor_hello(node_id="second-exec", token=node_token("executor"))
            await ws.send(json.dumps(hello))
            assert json.loads(await ws.recv())["type"] == "welcome"
            assert "second-exec" in server.app[ROUTER].executors
        async with http.get("/api/nodes", headers=AUTH) as resp:
            assert resp.status == 200


async def test_keyless_requests_never_lock_the_right_key_out(
    guarded_settings: HubSettings,
) -> None:
    """Twelve requests with no credential at all (what any web page can send), on the API,
    the feed and the node socket, are refused without counting: the right key and the
    right node credential still get in, and a wrong key still gets 401, not 429."""
    async with (
        HubServer(guarded_settings) as server,
        aiohttp.ClientSession(server.url) as http,
    ):
        assert guarded_settings.auth_failure_limit < 12
        url = f"ws://127.0.0.1:{server.port}/ws"
        for _ in range(12):
            async with http.get("/api/nodes") as resp:
                assert resp.status == 401
            async with http.post(CHAT, json={"messages": []}) as resp:
                assert resp.status == 401
            assert (await hello_close(url, ""))[0] == CLOSE_UNAUTHORIZED
            async with connect(f"ws://127.0.0.1:{server.port}/api/feed") as feed:
                await feed.send(json.dumps({"type": "auth", "key": ""}))
                with pytest.raises(ConnectionClosed) as closed:
                    await feed.recv()
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == CLOSE_FEED_UNAUTHORIZED
        assert server.app[AUTH_FAILURES].retry_after("127.0.0.1") == 0.0
        async with http.get("/api/nodes", headers=AUTH) as resp:
            assert resp.status == 200
        async with http.get("/api/nodes", headers={"Authorization": "Bearer guess"}) as resp:
            assert resp.status == 401
        assert await hello_close(url, node_token("executor")) == (None, "welcome")


def test_addresses_are_counted_by_host_and_bounded() -> None:
    """An IPv6 client counts as its /64, a mapped IPv4 as the IPv4 address; the table of
    addresses never grows past its bound; limit 0 turns the guard off."""
    from unittest import mock

    from aiohttp.test_utils import make_mocked_request

    def address(peer: str) -> str:
        transport = mock.Mock()
        transport.get_extra_info.side_effect = lambda name, default=None: (
            (peer, 1234) if name == "peername" else default
        )
        return client_address(make_mocked_request("GET", "/", transport=transport))

    assert (
        address("2001:db8:1:2:3:4:5:6") == address("2001:db8:1:2:ffff::1") == ("2001:db8:1:2::/64")
    )
    assert address("::ffff:192.0.2.7") == "192.0.2.7"
    assert address("192.0.2.7") == "192.0.2.7"

    clock = Clock()
    guard = AuthFailures(2, 60.0, clock=clock, max_clients=3)
    for n in range(10):
        guard.failed(f"10.0.0.{n}")
        guard.failed(f"10.0.0.{n}")
    assert len(guard._failures) == 3
    assert guard.retry_after("10.0.0.9") == 60.0 and guard.retry_after("10.0.0.0") == 0.0
    off = AuthFailures(0, 60.0, clock=clock)
    for _ in range(5):
        off.failed("10.0.0.1")
    assert off.refusal("10.0.0.1") is None


# --- behind a proxy: HUB_TRUSTED_PROXIES --------------------------------------------


def _address(peer: str, forwarded: list[str], trusted: str) -> str:
    from unittest import mock

    from aiohttp.test_utils import make_mocked_request
    from multidict import CIMultiDict

    from hub.settings import parse_networks

    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        (peer, 1234) if name == "peername" else default
    )
    headers = CIMultiDict(("X-Forwarded-For", value) for value in forwarded)
    request = make_mocked_request("GET", "/", headers=headers, transport=transport)
    return client_address(request, parse_networks(trusted.split(",") if trusted else []))


def test_the_client_behind_a_trusted_proxy_is_the_rightmost_untrusted_forwarded_address() -> None:
    proxies = "10.0.0.0/8,192.0.2.1"
    # The peer is not a proxy: what it claims is not believed.
    assert _address("203.0.113.9", ["198.51.100.7"], proxies) == "203.0.113.9"
    # No proxy configured: the header is ignored.
    assert _address("10.1.2.3", ["198.51.100.7"], "") == "10.1.2.3"
    # Through one proxy, and through two (one header or several).
    assert _address("10.1.2.3", ["198.51.100.7"], proxies) == "198.51.100.7"
    assert _address("192.0.2.1", ["198.51.100.7, 10.9.9.9"], proxies) == "198.51.100.7"
    assert _address("192.0.2.1", ["198.51.100.7", "10.9.9.9"], proxies) == "198.51.100.7"
    # What the client wrote itself, left of what the proxy added, is not believed.
    assert _address("10.1.2.3", ["1.2.3.4, 198.51.100.7"], proxies) == "198.51.100.7"
    # A hop that is not an address stops the walk at the proxy that passed it on.
    assert _address("10.1.2.3", ["198.51.100.7, junk"], proxies) == "10.1.2.3"
    # Only proxies: the leftmost of them.
    assert _address("10.1.2.3", ["10.4.4.4, 10.5.5.5"], proxies) == "10.4.4.4"
    assert _address("10.1.2.3", [], proxies) == "10.1.2.3"
    # IPv6 clients still count by /64.
    assert _address("10.1.2.3", ["2001:db8:1:2::77"], proxies) == "2001:db8:1:2::/64"


def test_a_trusted_proxy_that_is_not_an_address_is_refused() -> None:
    from pydantic import ValidationError

    refused = re.escape("'proxy.local' is not an IP address or network")
    with pytest.raises(ValidationError, match=refused):
        HubSettings(HUB_TRUSTED_PROXIES="10.0.0.0/8,proxy.local")


@pytest.mark.parametrize("trusted", ["", "127.0.0.1"])
async def test_behind_a_trusted_proxy_one_clients_wrong_keys_hold_back_only_that_client(
    guarded_settings: HubSettings, trusted: str
) -> None:
    """With the proxy trusted, the limit counts the forwarded client, so the others
    behind the same proxy are not held back; without it, forged headers change nothing."""
    settings = guarded_settings.model_copy(update={"trusted_proxies": [trusted] if trusted else []})
    wrong = {"Authorization": f"Bearer {API_KEY}x"}
    async with HubServer(settings) as server, aiohttp.ClientSession(server.url) as http:
        server.app[AUTH_FAILURES].clock = Clock()
        for n in range(settings.auth_failure_limit):
            # A guesser behind the proxy; without a trusted proxy it tries to look like
            # a new client every time.
            forged = "198.51.100.7" if trusted else f"198.51.100.{n + 10}"
            async with http.get("/api/nodes", headers={**wrong, "X-Forwarded-For": forged}) as resp:
                assert resp.status == 401
        guesser = {**wrong, "X-Forwarded-For": "198.51.100.7"}
        async with http.get("/api/nodes", headers=guesser) as resp:
            assert resp.status == 429
        # Wrong keys tell whose count they go to (a right key gets in whoever sends it).
        someone_else = {**wrong, "X-Forwarded-For": "198.51.100.8"}
        async with http.get("/api/nodes", headers=someone_else) as resp:
            assert resp.status == (401 if trusted else 429)
