"""The operator API the monitor page uses: runs, nodes, the live feed, the page itself."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import struct
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient

from hub import api_runs
from hub.app import HubServer, create_app
from hub.appkeys import BUS, ROUTER, STORE
from hub.auth import principal_for_key
from hub.settings import HubSettings
from hub.store import Run, op_insert_run
from tests.monitor.conftest import API_KEY, NODE_TOKEN, node_url
from tests.monitor.scripted_executor import ScriptedExecutor

AUTH = {"Authorization": f"Bearer {API_KEY}"}
MONITOR_JS = Path(api_runs.MONITOR_DIR)

ClientFactory = Callable[..., Any]


@pytest.fixture
async def client(aiohttp_client: ClientFactory, monitor_settings: HubSettings) -> TestClient:
    """The hub app behind pytest-aiohttp's test client (no executor connected)."""
    return await aiohttp_client(create_app(monitor_settings))


async def start_run(client: TestClient, prompt: str, **body: Any) -> dict[str, Any]:
    response = await client.post("/api/runs", json={"prompt": prompt, **body}, headers=AUTH)
    assert response.status == 202, await response.text()
    return (await response.json())["run"]


async def list_runs(client: TestClient, **params: Any) -> dict[str, Any]:
    response = await client.get("/api/runs", params=params, headers=AUTH)
    assert response.status == 200, await response.text()
    return await response.json()


_pending: dict[int, list[dict[str, Any]]] = {}


async def read_frame(ws: Any) -> dict[str, Any]:
    """The feed's next message; a websocket frame may carry several, as a JSON array."""
    waiting = _pending.setdefault(id(ws), [])
    if not waiting:
        message = await ws.receive(timeout=5)
        assert message.type == WSMsgType.TEXT, message
        data = json.loads(message.data)
        waiting.extend(data if isinstance(data, list) else [data])
    return waiting.pop(0)


# --- keys and the page ----------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not-the-key"}])
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/runs"),
        ("GET", "/api/runs/run_0"),
        ("POST", "/api/runs"),
        ("POST", "/api/runs/run_0/cancel"),
        ("GET", "/api/nodes"),
    ],
)
async def test_the_api_refuses_a_missing_or_wrong_key(
    client: TestClient, method: str, path: str, headers: dict[str, str]
) -> None:
    """Without one of HUB_API_KEYS every API call is a 401 in OpenAI's envelope."""
    response = await client.request(method, path, json={"prompt": "x"}, headers=headers)
    assert response.status == 401
    body = await response.json()
    assert body["error"]["code"] == "invalid_api_key"
    assert API_KEY not in json.dumps(body)


async def test_the_page_and_its_files_are_served_without_a_key(client: TestClient) -> None:
    """The page loads before sign-in; it is locked down to its own files by CSP."""
    page = await client.get("/")
    assert page.status == 200
    assert page.content_type == "text/html"
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    html = await page.text()
    scripts = re.findall(r'src="([^"]+)"', html) + re.findall(r'href="(static/[^"]+)"', html)
    assert "static/js/main.js" in scripts and "static/style.css" in scripts
    for path, kind in [("/static/js/main.js", "javascript"), ("/static/style.css", "css")]:
        response = await client.get(path)
        assert response.status == 200, path
        assert kind in response.content_type
        assert response.headers["Cache-Control"] == "no-cache"
    assert (await client.get("/static/js/nope.js")).status == 404


def test_the_page_never_renders_data_as_html() -> None:
    """No module of the page parses strings as HTML: all text goes through textContent.

    (The vendored sanitiser in monitor/vendor/ does, by design: it is pinned, see
    tests/monitor/test_vendor.py.)"""
    sinks = re.compile(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(")
    offenders = [
        f"{path.name}:{number}"
        for path in sorted(MONITOR_JS.rglob("*.js"))
        if "vendor" not in path.relative_to(MONITOR_JS).parts
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if sinks.search(line)
    ]
    assert offenders == []


# --- runs ----------------------------------------------------------------------------


async def test_runs_come_newest_first_in_pages_that_do_not_overlap(client: TestClient) -> None:
    """`limit` and the `before` cursor walk every run exactly once, newest first."""
    created = [(await start_run(client, f"task {i}"))["id"] for i in range(7)]
    seen: list[str] = []
    before: int | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if before is not None:
            params["before"] = before
        page = await list_runs(client, **params)
        pages += 1
        seen += [run["id"] for run in page["runs"]]
        before = page["next_before"]
        if before is None:
            break
    assert pages == 3
    assert seen == created[::-1]
    first = (await list_runs(client, limit=1))["runs"][0]
    assert set(first) >= {"id", "state", "source", "user", "prompt_excerpt", "executor"}
    assert set(first) >= {"created_at", "started_at", "finished_at", "session_key", "error"}


@pytest.mark.parametrize(
    "params", [{"limit": "0"}, {"limit": "501"}, {"limit": "many"}, {"before": "-1"}]
)
async def test_bad_paging_parameters_are_refused(
    client: TestClient, params: dict[str, str]
) -> None:
    """A 400 names the parameter instead of guessing."""
    response = await client.get("/api/runs", params=params, headers=AUTH)
    assert response.status == 400
    assert (await response.json())["error"]["param"] == next(iter(params))


async def test_runs_filter_by_state_source_and_text(client: TestClient) -> None:
    """state and source take comma-separated lists; q searches prompt, user and run id."""
    router = client.app[ROUTER]

    async def submit(prompt: str, source: str, user: str) -> str:
        ticket = await router.submit(prompt, origin={"source": source, "user": user})
        return ticket.run.id

    slack = await submit("deploy the app", "slack", "alice")
    telegram = await submit("rotate the logs", "telegram", "bob")
    http = await submit("100% done? check_this", "http", "carol")
    page = await start_run(client, "look at the logs")
    assert await router.cancel(telegram)

    async def ids(**params: Any) -> set[str]:
        return {run["id"] for run in (await list_runs(client, **params))["runs"]}

    assert await ids(state="cancelled") == {telegram}
    assert await ids(state="queued,cancelled") == {slack, telegram, http, page["id"]}
    assert await ids(source="slack") == {slack}
    assert await ids(source="slack,monitor") == {slack, page["id"]}
    assert await ids(q="logs") == {telegram, page["id"]}
    assert await ids(q="LOGS", source="telegram") == {telegram}
    assert await ids(q="alice") == {slack}
    assert await ids(q=slack) == {slack}
    # LIKE's wildcards are matched literally.
    assert await ids(q="100%") == {http}
    assert await ids(q="check_this") == {http}
    assert await ids(q="check%this") == set()
    assert await ids(q="nothing like it") == set()


async def test_a_run_comes_with_its_events_and_after_skips_those_seen(client: TestClient) -> None:
    """GET /api/runs/{id} has the whole run; `after=SEQ` returns only newer events."""
    run = await start_run(client, "please wait")
    assert (await client.post(f"/api/runs/{run['id']}/cancel", headers=AUTH)).status == 200
    response = await client.get(f"/api/runs/{run['id']}", headers=AUTH)
    body = await response.json()
    assert body["run"]["prompt"] == "please wait"
    assert body["run"]["state"] == "cancelled"
    assert {"effective_prompt", "answer", "usage", "error", "origin"} <= set(body["run"])
    events = body["events"]
    assert [(e["seq"], e["kind"], e["state"]) for e in events] == [
        (1, "state", "queued"),
        (2, "state", "cancelled"),
    ]
    later = await client.get(f"/api/runs/{run['id']}", params={"after": 1}, headers=AUTH)
    assert [e["seq"] for e in (await later.json())["events"]] == [2]
    missing = await client.get("/api/runs/run_nope", headers=AUTH)
    assert missing.status == 404
    assert (await missing.json())["error"]["code"] == "not_found"


async def test_a_run_from_the_page_can_continue_a_conversation(client: TestClient) -> None:
    """Without a session_key a page run starts its own, in its key's namespace; with one
    it joins that session."""
    first = await start_run(client, "first")
    assert first["source"] == "monitor"
    assert first["session_key"] == f"monitor:{principal_for_key(API_KEY)}:{first['id']}"
    second = await start_run(client, "second", session_key=first["session_key"])
    assert second["session_key"] == first["session_key"]
    same = await list_runs(client, session_key=first["session_key"])
    assert [run["id"] for run in same["runs"]] == [second["id"], first["id"]]


@pytest.mark.parametrize(
    "body",
    ['{"prompt": ""}', '{"prompt": 3}', '{"prompt": "x", "session_key": 5}', "not json", "[]"],
)
async def test_a_bad_run_request_is_refused(client: TestClient, body: str) -> None:
    """The page gets a 400 with a message it can show."""
    response = await client.post(
        "/api/runs", data=body, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.status == 400
    assert (await response.json())["error"]["message"]


async def test_cancel_ends_a_queued_run_once(client: TestClient) -> None:
    """The first cancel wins; a second is a 409, an unknown run a 404."""
    run = await start_run(client, "never mind")
    response = await client.post(f"/api/runs/{run['id']}/cancel", headers=AUTH)
    assert response.status == 200
    body = await response.json()
    assert body["cancelled"] is True and body["run"]["state"] == "cancelled"
    again = await client.post(f"/api/runs/{run['id']}/cancel", headers=AUTH)
    assert again.status == 409
    assert (await again.json())["error"]["code"] == "run_finished"
    unknown = await client.post("/api/runs/run_nope/cancel", headers=AUTH)
    assert unknown.status == 404


# --- nodes ---------------------------------------------------------------------------


async def test_nodes_lists_executors_and_bridges(
    monitor_hub: HubServer,
    scripted_executor: Callable[[], AbstractAsyncContextManager[ScriptedExecutor]],
) -> None:
    """Executors show capacity, busy slots and codex login; bridges their platform."""
    hello = {"type": "hello", "role": "bridge", "token": NODE_TOKEN, "node_id": "tg-1"}
    async with (
        scripted_executor(),
        aiohttp.ClientSession(headers=AUTH) as http,
        http.ws_connect(node_url(monitor_hub)) as bridge,
    ):
        await bridge.send_json({**hello, "name": "tg-1", "platform": "telegram"})
        assert (await bridge.receive_json(timeout=5))["type"] == "welcome"
        async with http.get(f"{monitor_hub.url}/api/nodes") as response:
            nodes = (await response.json())["nodes"]
    executor, tg = nodes
    assert executor["role"] == "executor" and executor["name"] == "scripted-exec"
    assert (executor["capacity"], executor["busy"], executor["online"]) == (4, 0, True)
    assert executor["login"]["logged_in"] is True
    assert tg["role"] == "bridge" and tg["platform"] == "telegram" and tg["online"] is True
    assert tg["last_seen"] > 0
    assert NODE_TOKEN not in json.dumps(nodes)


# --- the live feed -------------------------------------------------------------------


@pytest.mark.parametrize(
    "first",
    ['{"type": "auth"}', '{"type": "auth", "key": "wrong"}', "not json", '["auth"]'],
)
async def test_the_feed_refuses_a_missing_or_wrong_key(client: TestClient, first: str) -> None:
    """Without a valid key in the first frame the feed closes with 4001 and sends nothing."""
    async with client.ws_connect("/api/feed") as ws:
        await ws.send_str(first)
        message = await ws.receive(timeout=5)
    assert message.type == WSMsgType.CLOSE
    assert message.data == api_runs.CLOSE_FEED_UNAUTHORIZED


async def test_the_feed_starts_with_ready_the_nodes_and_the_hub_clock(client: TestClient) -> None:
    """`ready` comes first, with the nodes and the hub's time for elapsed-time display."""
    async with client.ws_connect("/api/feed") as ws:
        await ws.send_json({"type": "auth", "key": API_KEY})
        ready = await read_frame(ws)
    assert ready["type"] == "ready"
    assert ready["nodes"] == []
    assert abs(ready["now"] - time.time()) < 5


async def test_the_feed_delivers_a_runs_changes_and_events_in_order(
    monitor_hub: HubServer, dry_executor: Callable[[], AbstractAsyncContextManager[Any]]
) -> None:
    """Every event of a run arrives with increasing seq, the same ones the API stores."""
    async with (
        dry_executor(),
        aiohttp.ClientSession(headers=AUTH) as http,
        http.ws_connect(f"{monitor_hub.url}/api/feed") as ws,
    ):
        await ws.send_json({"type": "auth", "key": API_KEY})
        assert (await read_frame(ws))["type"] == "ready"
        async with http.post(f"{monitor_hub.url}/api/runs", json={"prompt": "echo me"}) as r:
            run_id = (await r.json())["run"]["id"]
        states: list[str] = []
        events: list[dict[str, Any]] = []
        while "succeeded" not in states:
            frame = await read_frame(ws)
            if frame["type"] == "run":
                assert frame["run"]["id"] == run_id
                states.append(frame["run"]["state"])
            elif frame["type"] == "event":
                assert frame["run_id"] == run_id
                events.append(frame["event"])
        async with http.get(f"{monitor_hub.url}/api/runs/{run_id}") as r:
            stored = await r.json()
    # A run's summaries published within one tick reach the browser as the latest one:
    # some states may be skipped, none comes out of order.
    order = ["queued", "running", "succeeded"]
    assert states[-1] == "succeeded"
    assert states == sorted(set(states), key=order.index)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    kinds = [(e["kind"], e.get("state")) for e in events]
    assert kinds[0] == ("state", "queued") and kinds[-1] == ("state", "succeeded")
    assert ("assigned", None) in kinds and ("codex", None) in kinds
    codex = next(e for e in events if e["kind"] == "codex")
    assert codex["data"]["item"] == {"id": "item_0", "type": "agent_message", "text": "echo me"}
    assert [(e["seq"], e["kind"]) for e in stored["events"]] == [
        (e["seq"], e["kind"]) for e in events
    ]
    assert stored["run"]["answer"] == "echo me"


async def test_the_feed_announces_nodes_as_they_come_and_go(
    monitor_hub: HubServer,
    scripted_executor: Callable[[], AbstractAsyncContextManager[ScriptedExecutor]],
) -> None:
    """A `nodes` frame follows every executor that connects or leaves."""
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{monitor_hub.url}/api/feed") as ws,
    ):
        await ws.send_json({"type": "auth", "key": API_KEY})
        assert (await read_frame(ws))["type"] == "ready"
        async with scripted_executor():
            joined = await read_frame(ws)
            assert (await read_frame(ws))["type"] == "queue"  # goes with every `nodes`
        left = await read_frame(ws)
    assert joined["type"] == "nodes"
    assert [n["name"] for n in joined["nodes"]] == ["scripted-exec"]
    assert left == {"type": "nodes", "nodes": []}


def _event(run_id: str, seq: int, **data: Any) -> dict[str, Any]:
    return {
        "type": "event",
        "run_id": run_id,
        "event": {"seq": seq, "ts": 0.0, "kind": "log", **data},
    }


def _run(run_id: str, state: str) -> dict[str, Any]:
    return {"type": "run", "run": {"id": run_id, "state": state}}


async def _signed_in(client: TestClient) -> Any:
    ws = await client.ws_connect("/api/feed")
    await ws.send_json({"type": "auth", "key": API_KEY})
    message = await ws.receive(timeout=5)
    assert json.loads(message.data)["type"] == "ready"
    return ws


async def test_one_tick_goes_out_as_one_frame_with_every_event_and_the_latest_summaries(
    client: TestClient,
) -> None:
    """What is published within a tick reaches every browser as one JSON array: every
    event, in order; of a run's summaries (and of the node lists) only the latest, in
    the place of the latest."""
    bus = client.app[BUS]
    first, second = await _signed_in(client), await _signed_in(client)
    try:
        frames_before = bus.frames_sent
        published = [
            _run("a", "queued"),
            _event("a", 1),
            _run("a", "running"),
            _event("a", 2),
            {"type": "nodes", "nodes": []},
            _run("b", "queued"),
            {"type": "nodes", "nodes": [{"name": "x"}]},
            *(_event("a", seq) for seq in range(3, 303)),
            _run("a", "succeeded"),
        ]
        for message in published:  # no await in between: all in one tick
            bus.publish(message)
        expected = [
            _event("a", 1),
            _event("a", 2),
            _run("b", "queued"),
            {"type": "nodes", "nodes": [{"name": "x"}]},
            *(_event("a", seq) for seq in range(3, 303)),
            _run("a", "succeeded"),
        ]
        for ws in (first, second):
            message = await ws.receive(timeout=5)
            assert message.type == WSMsgType.TEXT
            assert json.loads(message.data) == expected
        assert bus.frames_sent == frames_before + 1  # encoded once for both
    finally:
        await first.close()
        await second.close()


async def test_a_new_browser_gets_nothing_published_before_its_ready(client: TestClient) -> None:
    """Subscribing sends the tick gathered so far to the others first: a browser's
    first frame after `ready` holds only what was published after it."""
    bus = client.app[BUS]
    early = await _signed_in(client)
    try:
        bus.publish(_event("a", 1))
        late = await _signed_in(client)
        try:
            bus.publish(_event("a", 2))
            assert json.loads((await early.receive(timeout=5)).data) == [_event("a", 1)]
            assert json.loads((await early.receive(timeout=5)).data) == [_event("a", 2)]
            assert json.loads((await late.receive(timeout=5)).data) == [_event("a", 2)]
        finally:
            await late.close()
    finally:
        await early.close()


class RawFeed:
    """A feed client on a bare socket with a tiny receive buffer, reading only when told:
    a browser that stops reading, as the hub sees it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> RawFeed:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=2**24)
        writer.write(
            f"GET /api/feed HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    def send(self, opcode: int, payload: bytes) -> None:
        assert len(payload) < 126
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    async def read(self) -> tuple[int, bytes]:
        """The next frame: (opcode, payload)."""
        first, second = await self.reader.readexactly(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return first & 0x0F, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def test_a_browser_that_falls_behind_is_dropped_and_the_others_are_not(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A browser that stops reading is dropped once its socket holds back more than
    FEED_BUFFER_BYTES; it then gets all it was sent, `resync` and close code 4009,
    while the browser that reads misses nothing."""
    monkeypatch.setattr(api_runs, "FEED_BUFFER_BYTES", 16 * 1024)
    bus = client.app[BUS]
    server = client.server
    assert server.host is not None and server.port is not None
    fast = await _signed_in(client)
    slow = await RawFeed.open(server.host, server.port)
    try:
        slow.send(0x1, json.dumps({"type": "auth", "key": API_KEY}).encode())
        assert json.loads((await slow.read())[1])["type"] == "ready"
        subscribers = bus.subscriber_count
        filler = "x" * 8000
        for seq in range(1, 5001):
            bus.publish(_event("r", seq, text=filler))
            bus.flush()  # end the tick now
            got = json.loads((await fast.receive(timeout=5)).data)
            assert [m["event"]["seq"] for m in got] == [seq]
            if bus.subscriber_count < subscribers:
                break
        else:
            pytest.fail("the browser that reads nothing was never dropped")
        dropped_at = seq
        # The slow browser reads again: what it was sent, in order, then resync, close.
        seqs: list[int] = []
        resynced = False
        while True:
            opcode, payload = await asyncio.wait_for(slow.read(), 10)
            if opcode != 0x1:
                break
            data = json.loads(payload)
            if data == {"type": "resync"}:
                resynced = True
                continue
            seqs.extend(m["event"]["seq"] for m in data)
        assert resynced
        assert opcode == 0x8 and struct.unpack("!H", payload[:2])[0] == api_runs.CLOSE_FEED_RESYNC
        slow.send(0x8, payload[:2])
        assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) < dropped_at
        # The hub and the browser that reads go on.
        bus.publish(_event("r", dropped_at + 1))
        got = json.loads((await fast.receive(timeout=5)).data)
        assert [m["event"]["seq"] for m in got] == [dropped_at + 1]
    finally:
        slow.close()
        await fast.close()


async def test_the_feed_closes_as_going_away_when_the_hub_stops(
    monitor_settings: HubSettings,
) -> None:
    """On shutdown the page's socket closes with 1001, and the page reconnects."""
    server = HubServer(monitor_settings)
    await server.start()
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(f"{server.url}/api/feed") as ws,
        ):
            await ws.send_json({"type": "auth", "key": API_KEY})
            assert (await read_frame(ws))["type"] == "ready"
            closing = asyncio.create_task(server.close())
            message = await ws.receive(timeout=10)
            await closing
    finally:
        await server.close()
    assert message.type == WSMsgType.CLOSE
    assert message.data == aiohttp.WSCloseCode.GOING_AWAY


async def test_the_overview_counts_today_the_last_hour_and_the_median_duration(
    client: TestClient,
) -> None:
    """Runs and tokens since `since`, failures of the last hour, the median duration."""
    store = client.app[STORE]
    now = time.time()
    durations = [2.0, 10.0, 4.0]
    for i, took in enumerate(durations):
        await store.call(
            op_insert_run,
            Run(
                id=f"run_done{i}",
                prompt="x",
                origin={"source": "http"},
                source="http",
                created_at=now - 600,
                finished_at=now - 600 + took,
                state="failed" if i == 1 else "succeeded",
                usage={"input_tokens": 100, "output_tokens": 7},
            ),
        )
    await store.call(
        op_insert_run,
        Run(id="run_old", prompt="x", origin={}, source="http", created_at=now - 90000),
    )
    await start_run(client, "queued now")
    response = await client.get("/api/overview", params={"since": now - 3600}, headers=AUTH)
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["runs"] == 4 and body["queued"] == 1 and body["running"] == 0
    assert body["input_tokens"] == 300 and body["output_tokens"] == 21
    assert body["median_duration_s"] == pytest.approx(4.0)
    assert body["failed_last_hour"] == 1
    bad = await client.get("/api/overview", params={"since": "soon"}, headers=AUTH)
    assert bad.status == 400
