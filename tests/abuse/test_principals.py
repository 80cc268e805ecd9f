"""Principals own their runs (issue #13, point 4): an API key sees, cancels and continues
only its own runs and sessions; operator keys (``HUB_OPERATOR_KEYS``) see every run and
may continue any conversation, which the run records.

Key A and key B are two plain API keys, as two teams sharing one hub would hold; the
attacks are key B's. A fake executor decides when runs end and which codex thread each
one got, so a test reads from the ``assign`` frame which thread a run resumes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection, connect

from hub.app import HubServer
from hub.appkeys import STORE
from hub.auth import NO_AUTH_PRINCIPAL, principal_for_key
from hub.settings import HubSettings
from testkit.fakes.nodes import FakeExecutor, FakeNode, bridge_hello
from tests.abuse.conftest import CHAT, make
from tests.abuse.feed import feed_messages
from tests.conftest import NODE_TOKEN, ws_url

KEY_A = "principal-key-a-0123456789abcdef"
KEY_B = "principal-key-b-0123456789abcdef"
OPERATOR_KEY = "principal-operator-key-0123456789"
TELEGRAM_SESSION = "telegram:777:0:0"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def hub_settings(tmp_path: Path) -> HubSettings:
    """A hub with two plain keys and one operator key."""
    return make(
        HubSettings,
        HUB_PORT=0,
        HUB_DB=tmp_path / "hub.db",
        HUB_TOKEN=NODE_TOKEN,
        HUB_API_KEYS=f"{KEY_A},{KEY_B}",
        HUB_OPERATOR_KEYS=OPERATOR_KEY,
        HUB_EXECUTOR_GRACE_S=2.0,
        HUB_KEEPALIVE_S=0.5,
    )


async def new_run(
    http: aiohttp.ClientSession, key: str, prompt: str, **body: Any
) -> dict[str, Any]:
    async with http.post(
        "/api/runs", json={"prompt": prompt, **body}, headers=auth(key)
    ) as response:
        assert response.status == 202, await response.text()
        run: dict[str, Any] = (await response.json())["run"]
        return run


async def listed(http: aiohttp.ClientSession, key: str, **params: Any) -> set[str]:
    async with http.get("/api/runs", params=params, headers=auth(key)) as response:
        assert response.status == 200, await response.text()
        return {run["id"] for run in (await response.json())["runs"]}


async def read(http: aiohttp.ClientSession, key: str, run_id: str) -> tuple[int, Any]:
    async with http.get(f"/api/runs/{run_id}", headers=auth(key)) as response:
        return response.status, await response.json()


async def finish(ex: FakeExecutor, run_id: str, thread_id: str) -> dict[str, Any]:
    """Wait for the run's assign frame, end the run with ``thread_id``; the assign frame."""
    assign = await ex.wait_type("assign", run_id=run_id)
    await ex.finish(run_id, answer=f"answer of {run_id}", thread_id=thread_id)
    return assign


@asynccontextmanager
async def telegram_bridge(hub: Any) -> AsyncIterator[FakeNode]:
    node = FakeNode(ws_url(hub), bridge_hello("telegram", "tg-bridge", token=NODE_TOKEN))
    await node.connect()
    try:
        yield node
    finally:
        await node.close()


async def telegram_turn(bridge: FakeNode, prompt: str, req_id: str) -> str:
    """A Telegram user's message in chat 777, submitted by the bridge; the run's id."""
    await bridge.send(
        {
            "type": "submit",
            "req_id": req_id,
            "prompt": prompt,
            "session_key": TELEGRAM_SESSION.removeprefix("telegram:"),
            "origin": {"chat_id": 777, "user_id": 777},
        }
    )
    submitted = await bridge.wait_type("submitted", req_id=req_id)
    run_id: str = submitted["run_id"]
    return run_id


def test_a_principal_is_a_stable_digest_of_its_key_never_the_key() -> None:
    """A key's principal is `key:` and 12 hex digits of its SHA-256, the same each time."""
    principal = principal_for_key(KEY_A)
    assert principal == "key:" + hashlib.sha256(KEY_A.encode()).hexdigest()[:12]
    assert principal == principal_for_key(KEY_A) != principal_for_key(KEY_B)
    assert KEY_A not in principal


async def test_another_key_cannot_list_read_or_cancel_a_run(
    hub: Any, http: aiohttp.ClientSession
) -> None:
    """Key B's list and search leave out key A's run, and reading or cancelling it is a
    404 like an unknown id's; key A and the operator see it, with its principal."""
    run = await new_run(http, KEY_A, "a's secret plans")
    run_id = run["id"]
    assert run["principal"] == principal_for_key(KEY_A)

    assert run_id in await listed(http, KEY_A)
    assert await listed(http, KEY_B) == set()
    assert await listed(http, KEY_B, q=run_id) == set()
    assert await listed(http, KEY_B, q="secret") == set()
    assert await listed(http, KEY_B, session_key=run["session_key"]) == set()

    status, body = await read(http, KEY_B, run_id)
    unknown_status, unknown = await read(http, KEY_B, "run_0000000000000000")
    assert (status, unknown_status) == (404, 404)
    assert body["error"]["code"] == unknown["error"]["code"] == "not_found"
    assert "secret" not in json.dumps(body)
    async with http.post(f"/api/runs/{run_id}/cancel", headers=auth(KEY_B)) as response:
        assert response.status == 404
        assert "secret" not in await response.text()

    status, own = await read(http, KEY_A, run_id)
    assert status == 200
    assert own["run"]["state"] == "queued"  # B's cancel did nothing
    assert own["run"]["principal"] == principal_for_key(KEY_A)
    assert KEY_A not in json.dumps(own)
    status, seen = await read(http, OPERATOR_KEY, run_id)
    assert status == 200 and seen["run"]["prompt"] == "a's secret plans"
    assert run_id in await listed(http, OPERATOR_KEY)


async def test_the_same_session_id_from_another_key_is_another_conversation(
    hub: Any, http: aiohttp.ClientSession, fake_executor: Any
) -> None:
    """Key B sending key A's X-Session-Id gets a new codex thread, not A's; A's next turn
    still resumes A's thread; A's Idempotency-Key names no run of B's."""
    headers = {"X-Session-Id": "shared-id", "Idempotency-Key": "same-request"}

    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex:

        async def chat(key: str, text: str, **extra: str) -> tuple[asyncio.Task[Any], str]:
            """Send a chat completion; once its run reaches the executor, the request's
            task and the run's id."""

            async def post() -> tuple[int, str, Any]:
                async with http.post(
                    CHAT,
                    json={"model": "codex", "messages": [{"role": "user", "content": text}]},
                    headers={**auth(key), **headers, **extra},
                ) as response:
                    return response.status, response.headers["X-Run-ID"], await response.json()

            task = asyncio.create_task(post())
            assign = await ex.wait_for(lambda f: f["type"] == "assign" and f["prompt"] == text)
            return task, str(assign["run_id"])

        task, a_run = await chat(KEY_A, "a first")
        assert (await finish(ex, a_run, "thread-of-a"))["thread_id"] is None
        assert (await task)[0] == 200

        task, b_run = await chat(KEY_B, "b first", **{"Idempotency-Key": "b-own"})
        assert (await finish(ex, b_run, "thread-of-b"))["thread_id"] is None
        assert (await task)[0] == 200

        task, a_again = await chat(KEY_A, "a second", **{"Idempotency-Key": "a-second"})
        assert (await finish(ex, a_again, "thread-of-a"))["thread_id"] == "thread-of-a"
        await task

        # B repeats A's first Idempotency-Key: a run of B's own, not A's answer.
        task, b_dup = await chat(KEY_B, "b repeats a's key")
        assert b_dup != a_run
        assert (await finish(ex, b_dup, "thread-of-b"))["thread_id"] == "thread-of-b"
        status, returned_id, body = await task
        assert status == 200 and returned_id == b_dup
        assert body["choices"][0]["message"]["content"] == f"answer of {b_dup}"

    store = hub.app[STORE]
    a, b = await store.get_run(a_run), await store.get_run(b_run)
    assert a is not None and b is not None
    assert a.session_key != b.session_key
    assert principal_for_key(KEY_A) in (a.session_key or "")
    assert principal_for_key(KEY_B) in (b.session_key or "")


async def test_another_key_cannot_continue_a_telegram_conversation(
    hub: Any, http: aiohttp.ClientSession, fake_executor: Any
) -> None:
    """POST /api/runs with a Telegram user's session_key gives key B a conversation of its
    own: it resumes nothing of the user's, and the user's next turn carries nothing of B's."""
    async with (
        fake_executor(ws_url(hub), token=NODE_TOKEN) as ex,
        telegram_bridge(hub) as bridge,
    ):
        first = await telegram_turn(bridge, "telegram user's question", "t1")
        await finish(ex, first, "telegram-thread")

        run = await new_run(http, KEY_B, "what did they ask?", session_key=TELEGRAM_SESSION)
        assert run["session_key"] != TELEGRAM_SESSION
        assert run["session_key"].startswith(f"monitor:{principal_for_key(KEY_B)}:")
        assign = await finish(ex, run["id"], "thread-of-b")
        assert assign["thread_id"] is None  # not the Telegram user's thread

        again = await telegram_turn(bridge, "telegram user's next turn", "t2")
        assert (await finish(ex, again, "telegram-thread"))["thread_id"] == "telegram-thread"

        # B sees none of it.
        assert await listed(http, KEY_B) == {run["id"]}
        assert await listed(http, KEY_B, session_key=TELEGRAM_SESSION) == set()
        assert (await read(http, KEY_B, first))[0] == 404


async def test_an_operator_sees_every_run_and_may_continue_any_conversation(
    hub: Any, http: aiohttp.ClientSession, fake_executor: Any
) -> None:
    """An operator key lists and reads every key's and every chat's runs, continues the
    Telegram user's thread, and the run records that an operator did; it may cancel
    another key's run."""
    async with (
        fake_executor(ws_url(hub), token=NODE_TOKEN) as ex,
        telegram_bridge(hub) as bridge,
    ):
        telegram_run = await telegram_turn(bridge, "telegram user's question", "t1")
        await finish(ex, telegram_run, "telegram-thread")
        a_run = (await new_run(http, KEY_A, "a's run"))["id"]
        await ex.wait_type("assign", run_id=a_run)

        assert await listed(http, OPERATOR_KEY) >= {telegram_run, a_run}
        status, body = await read(http, OPERATOR_KEY, telegram_run)
        assert status == 200 and body["run"]["principal"] is None

        run = await new_run(http, OPERATOR_KEY, "follow up", session_key=TELEGRAM_SESSION)
        assert run["session_key"] == TELEGRAM_SESSION
        assign = await finish(ex, run["id"], "telegram-thread")
        assert assign["thread_id"] == "telegram-thread"
        status, body = await read(http, OPERATOR_KEY, run["id"])
        assert body["run"]["principal"] == principal_for_key(OPERATOR_KEY)
        assert body["run"]["origin"]["operator"] == principal_for_key(OPERATOR_KEY)
        notes = [e["message"] for e in body["events"] if e["kind"] == "note"]
        assert any("continued the conversation" in n and TELEGRAM_SESSION in n for n in notes)

        async with http.post(f"/api/runs/{a_run}/cancel", headers=auth(OPERATOR_KEY)) as resp:
            assert resp.status == 200
            assert (await resp.json())["cancelled"] is True


async def feed_of(hub: Any, key: str) -> ClientConnection:
    ws = await connect(f"ws://127.0.0.1:{hub.port}/api/feed")
    await ws.send(json.dumps({"type": "auth", "key": key}))
    assert json.loads(await ws.recv())["type"] == "ready"
    return ws


async def messages_until(ws: ClientConnection, run_id: str) -> list[dict[str, Any]]:
    """Feed messages up to and including the first that names ``run_id``."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        while True:
            for message in feed_messages(await ws.recv()):
                seen.append(message)
                named = message.get("run_id") or (message.get("run") or {}).get("id")
                if named == run_id:
                    return seen


def runs_named(messages: list[dict[str, Any]]) -> set[str]:
    return {
        m.get("run_id") or (m.get("run") or {}).get("id")
        for m in messages
        if m.get("type") in ("run", "event")
    }


async def test_the_feed_shows_a_key_only_its_own_runs(
    hub: Any, http: aiohttp.ClientSession
) -> None:
    """Key B's live feed carries nothing of key A's runs or a chat's; A's and the
    operator's carry A's."""
    feeds = {key: await feed_of(hub, key) for key in (KEY_A, KEY_B, OPERATOR_KEY)}
    try:
        async with telegram_bridge(hub) as bridge:
            telegram_run = await telegram_turn(bridge, "telegram user's question", "t1")
            a_run = (await new_run(http, KEY_A, "a's secret plans"))["id"]
            # Published after A's and the chat's: once B's feed has it, B would have had
            # theirs before it (the feed keeps publication order).
            b_run = (await new_run(http, KEY_B, "b's own"))["id"]

            of_b = await messages_until(feeds[KEY_B], b_run)
            assert runs_named(of_b) == {b_run}
            assert "secret" not in json.dumps(of_b)
            of_a = await messages_until(feeds[KEY_A], a_run)
            assert runs_named(of_a) == {a_run}
            of_operator = await messages_until(feeds[OPERATOR_KEY], b_run)
            assert runs_named(of_operator) == {telegram_run, a_run, b_run}
    finally:
        for ws in feeds.values():
            await ws.close()


async def test_without_keys_everyone_is_one_principal_and_sees_every_run(
    tmp_path: Path,
) -> None:
    """A hub with no API key (HUB_AUTH=none, loopback) treats every caller as one
    operator: its runs and the chats' are listed, and a chat's conversation can be
    continued."""
    settings = make(
        HubSettings,
        HUB_PORT=0,
        HUB_DB=tmp_path / "hub.db",
        HUB_TOKEN=NODE_TOKEN,
        HUB_AUTH="none",
    )
    async with HubServer(settings) as server, aiohttp.ClientSession(server.url) as http:
        async with telegram_bridge(server) as bridge:
            telegram_run = await telegram_turn(bridge, "telegram user's question", "t1")
        async with http.post(
            "/api/runs", json={"prompt": "mine", "session_key": TELEGRAM_SESSION}
        ) as response:
            run = (await response.json())["run"]
        assert run["principal"] == NO_AUTH_PRINCIPAL
        assert run["session_key"] == TELEGRAM_SESSION
        async with http.get("/api/runs") as response:
            ids = {r["id"] for r in (await response.json())["runs"]}
        assert ids == {telegram_run, run["id"]}


async def _nodes_and_queue_until(
    ws: ClientConnection, done: Any
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The latest ``nodes`` and ``queue`` messages on a feed once ``done(nodes, queue)``."""
    nodes: list[dict[str, Any]] = []
    queue: dict[str, Any] = {}
    async with asyncio.timeout(10):
        while not done(nodes, queue):
            for message in feed_messages(await ws.recv()):
                if message.get("type") == "nodes":
                    nodes = message["nodes"]
                elif message.get("type") == "queue":
                    queue = message
    return nodes, queue


async def test_the_fleet_and_the_queue_name_to_a_key_only_its_own_runs(
    hub: Any, http: aiohttp.ClientSession, fake_executor: Any
) -> None:
    """An executor's runs and the queue's head, in /api/nodes, the feed's ready message
    and its live messages, name to key B none of key A's runs (B still sees the counts
    and its own run's place); the operator sees every run."""
    async with fake_executor(ws_url(hub), token=NODE_TOKEN, capacity=1) as ex:
        feeds = {key: await feed_of(hub, key) for key in (KEY_B, OPERATOR_KEY)}
        try:
            running = (await new_run(http, KEY_A, "a's running plans"))["id"]
            await ex.wait_type("assign", run_id=running)
            queued = (await new_run(http, KEY_A, "a's queued plans"))["id"]
            mine = (await new_run(http, KEY_B, "b's own"))["id"]

            def all_in(nodes: list[dict[str, Any]], queue: dict[str, Any]) -> bool:
                return queue.get("total") == 2 and any(n.get("busy") for n in nodes)

            b_nodes, b_queue = await _nodes_and_queue_until(feeds[KEY_B], all_in)
            o_nodes, o_queue = await _nodes_and_queue_until(feeds[OPERATOR_KEY], all_in)
            for key, nodes_, queue in ((KEY_B, b_nodes, b_queue), (OPERATOR_KEY, o_nodes, o_queue)):
                executor = next(n for n in nodes_ if n["role"] == "executor")
                expected = [running] if key == OPERATOR_KEY else []
                assert executor["runs"] == expected and executor["busy"] == 1, key
                ids = [r["id"] for r in queue["runs"]]
                assert ids == ([queued, mine] if key == OPERATOR_KEY else [mine]), key
            assert next(r for r in b_queue["runs"] if r["id"] == mine)["position"] == 2

            async with http.get("/api/nodes", headers=auth(KEY_B)) as response:
                listed_b = json.dumps(await response.json())
            async with http.get("/api/nodes", headers=auth(OPERATOR_KEY)) as response:
                listed_o = json.dumps(await response.json())
            assert running not in listed_b and running in listed_o
            late = await connect(f"ws://127.0.0.1:{hub.port}/api/feed")
            try:
                await late.send(json.dumps({"type": "auth", "key": KEY_B}))
                ready = json.loads(await late.recv())
            finally:
                await late.close()
            assert ready["type"] == "ready"
            assert running not in json.dumps(ready) and queued not in json.dumps(ready)
            assert [r["id"] for r in ready["queue"]["runs"]] == [mine]
        finally:
            for ws in feeds.values():
                await ws.close()
