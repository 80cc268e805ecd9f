"""Chat completions as real clients send them: histories, instructions, limits, errors, images."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from hub.api_openai import client_message
from hub.app import HubServer
from hub.appkeys import STORE
from tests.conftest import NODE_TOKEN, ws_url

CHAT = "/v1/chat/completions"
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def body(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": "codex", "messages": list(messages), **extra}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


async def ask_fake(
    hub: Any, ex: Any, payload: dict[str, Any], answer: str = "done", **result: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Send ``payload``, let the fake executor answer it; (assign frame, response body)."""
    seen = len(ex.frames)
    async with aiohttp.ClientSession() as s:
        call = asyncio.create_task(s.post(hub.url + CHAT, json=payload))
        assign = await ex.wait_for(lambda f: f.get("type") == "assign", after=seen)
        await ex.finish(assign["run_id"], answer, **result)
        resp = await call
        data = await resp.json()
        resp.release()
    return assign, data


async def test_a_history_that_ends_in_a_hub_answer_resumes_its_codex_thread(
    hub: Any, fake_executor: Any
) -> None:
    """The whole history sent back continues the thread that gave its last answer; only the
    new message reaches codex."""
    system = {"role": "system", "content": "be brief"}
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex:
        first, _ = await ask_fake(
            hub, ex, body(system, user("pick a number")), "7", thread_id="thread-a"
        )
        second, data = await ask_fake(
            hub,
            ex,
            body(
                system,
                user("pick a number"),
                {"role": "assistant", "content": "7"},
                user("double it"),
            ),
            "14",
            thread_id="thread-a",
        )
    assert first["thread_id"] is None
    assert second["thread_id"] == "thread-a"
    assert second["prompt"] == "double it"
    assert second["options"]["instructions"] == "be brief"
    assert data["choices"][0]["message"]["content"] == "14"


async def test_a_history_the_hub_did_not_answer_goes_to_codex_as_context(
    hub: Any, fake_executor: Any
) -> None:
    """An edited history starts a fresh thread with the earlier turns in delimited blocks."""
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex:
        await ask_fake(hub, ex, body(user("pick a number")), "7", thread_id="thread-a")
        assign, _ = await ask_fake(
            hub,
            ex,
            body(
                {"role": "developer", "content": "use French"},
                user("pick a number"),
                {"role": "assistant", "content": "8"},  # not what the hub answered
                user("double it"),
            ),
        )
    assert assign["thread_id"] is None
    assert assign["prompt"] == (
        "The conversation so far, for context (earlier turns, not new instructions):\n"
        "<conversation>\n<user>\npick a number\n</user>\n<assistant>\n8\n</assistant>\n"
        "</conversation>\n\nThe new message, to answer now:\ndouble it"
    )
    assert assign["options"]["instructions"] == "use French"


async def test_a_history_whose_thread_executor_is_gone_is_answered_fresh_with_its_context(
    hub: Any, fake_executor: Any
) -> None:
    """The executor holding the thread left: the whole history the client sent is answered
    at once by another executor, as context, not refused nor kept waiting for the first."""
    history = body(user("pick a number"), {"role": "assistant", "content": "7"}, user("double it"))
    async with fake_executor(ws_url(hub), node_id="first", token=NODE_TOKEN) as first:
        await ask_fake(hub, first, body(user("pick a number")), "7", thread_id="thread-a")
    async with fake_executor(ws_url(hub), node_id="second", token=NODE_TOKEN) as second:
        assign, data = await ask_fake(hub, second, history, "14")
    assert assign["thread_id"] is None
    assert "<assistant>\n7\n</assistant>" in assign["prompt"]
    assert assign["prompt"].endswith("double it")
    assert data["choices"][0]["message"]["content"] == "14"


KEYS = {"alice": "alice-key-3c9e7f1a2b4d", "bob": "bob-key-8e2d6a0c5f1b"}


def two_keys(settings: Any, **update: Any) -> Any:
    """The fixture's hub with two API keys, alice's and bob's: two principals."""
    return settings.model_copy(update={"auth": "keys", "api_keys": list(KEYS.values()), **update})


def as_(who: str) -> dict[str, str]:
    """The headers of a request sent with ``who``'s key."""
    return {"Authorization": f"Bearer {KEYS[who]}"}


async def test_a_conversation_is_recognised_only_for_the_same_principal(
    hub_settings: Any, fake_executor: Any
) -> None:
    """Another caller sending the same history does not continue the first caller's thread."""

    server = HubServer(two_keys(hub_settings))
    history = [user("q"), {"role": "assistant", "content": "a"}, user("next")]
    async with server as hub, fake_executor(ws_url(hub), token=NODE_TOKEN) as ex:
        seen = []
        for who, payload, answer in (
            ("alice", body(user("q")), "a"),
            ("bob", body(*history), "b"),
            ("alice", body(*history), "c"),
        ):
            mark = len(ex.frames)
            async with aiohttp.ClientSession() as s:
                call = asyncio.create_task(s.post(hub.url + CHAT, json=payload, headers=as_(who)))
                assign = await ex.wait_for(lambda f: f.get("type") == "assign", after=mark)
                await ex.finish(assign["run_id"], answer, thread_id=f"thread-{who}")
                (await call).release()
            seen.append(assign["thread_id"])
    assert seen == [None, None, "thread-alice"]


@pytest.mark.parametrize(
    ("extra", "messages", "param", "code"),
    [
        ({"n": 2}, None, "n", "unsupported_parameter"),
        ({"logprobs": True}, None, "logprobs", "unsupported_parameter"),
        ({"top_logprobs": 2}, None, "top_logprobs", "unsupported_parameter"),
        ({"tool_choice": "required"}, None, "tool_choice", "unsupported_parameter"),
        (
            {"tool_choice": {"type": "function", "function": {"name": "f"}}},
            None,
            "tool_choice",
            "unsupported_parameter",
        ),
        (
            {},
            [
                user("weather?"),
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "w", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            ],
            "messages",
            "unsupported_tool_result",
        ),
        ({"response_format": {"type": "json_schema"}}, None, "response_format", "invalid_value"),
    ],
)
async def test_what_codex_cannot_do_gets_a_400_that_says_why(
    hub: Any, extra: dict[str, Any], messages: list[dict[str, Any]] | None, param: str, code: str
) -> None:
    """n>1, logprobs, forced tool calls and a trailing tool result are refused; no run."""
    payload = body(*(messages or [user("hi")]), **extra)
    async with aiohttp.ClientSession() as s, s.post(hub.url + CHAT, json=payload) as resp:
        data = await resp.json()
    assert resp.status == 400, data
    assert data["error"]["code"] == code
    assert (data["error"]["param"] or "").startswith(param)
    runs, _ = await hub.app[STORE].list_runs()
    assert runs == []


async def test_stop_cuts_the_answer_and_tools_and_sampling_are_accepted(
    hub: Any, start_executor: Any
) -> None:
    """The answer ends before the first stop sequence, plain and streamed; tools with
    tool_choice auto, temperature, top_p, seed and max_tokens are accepted alongside."""
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    accepted = {
        "tools": [tool],
        "tool_choice": "auto",
        "temperature": 0.2,
        "top_p": 0.5,
        "seed": 1,
        "max_tokens": 10,
        "n": 1,
    }
    async with start_executor(), aiohttp.ClientSession() as s:
        async with s.post(
            hub.url + CHAT, json=body(user("one. two. END three"), stop=["END", "x"], **accepted)
        ) as resp:
            plain = (await resp.json())["choices"][0]["message"]["content"]
        async with s.post(
            hub.url + CHAT, json=body(user("alpha|beta"), stop="|", stream=True)
        ) as resp:
            raw = (await resp.content.read()).decode()
    chunks = [json.loads(line[6:]) for line in raw.split("\n") if line.startswith("data: {")]
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert plain == "one. two. "
    assert streamed == "alpha"


def test_a_client_error_message_is_one_line_without_server_paths() -> None:
    """codex's stderr is cut to its first line and paths on the server are hidden."""
    raw = (
        "codex exited with code 1: failed to read /home/svc/.codex/config.toml: denied\n"
        "  at /opt/codex/bin/codex:12\nStack backtrace: ..."
    )
    message = client_message(raw)
    assert message == "codex exited with code 1: failed to read <path>: denied"
    assert client_message("see https://example.com/a/b/c for help") == (
        "see https://example.com/a/b/c for help"
    )


async def test_a_failed_runs_error_reaches_the_client_clean_and_the_monitor_whole(
    hub: Any, fake_executor: Any
) -> None:
    """The client gets the codex error line; the run keeps the whole stderr for the monitor."""
    stderr = "codex exited with code 1: stream error\n/srv/codex-home/sessions/x.jsonl: gone"
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex, aiohttp.ClientSession() as s:
        call = asyncio.create_task(s.post(hub.url + CHAT, json=body(user("x"))))
        assign = await ex.wait_type("assign")
        await ex.send(
            {
                "type": "result",
                "run_id": assign["run_id"],
                "status": "failed",
                "error": {"code": "codex_failed", "message": stderr},
            }
        )
        resp = await call
        data = await resp.json()
        resp.release()
    message = data["error"]["message"]
    assert message.startswith("codex exited with code 1: stream error (run ")
    assert "/srv" not in message and "\n" not in message
    run = await hub.app[STORE].get_run(assign["run_id"])
    assert run.error["message"] == stderr


async def test_models_have_a_real_created_time_and_can_be_fetched_one_by_one(hub: Any) -> None:
    """/v1/models and /v1/models/{id} give the model with the hub's start time as created."""
    async with aiohttp.ClientSession() as s:
        async with s.get(hub.url + "/v1/models") as resp:
            listed = (await resp.json())["data"][0]
        async with s.get(hub.url + "/v1/models/codex") as resp:
            one = await resp.json()
        async with s.get(hub.url + "/v1/models/gpt-x") as resp:
            missing = resp.status
    assert listed == one
    assert one["created"] > 1_700_000_000
    assert missing == 404


async def test_a_json_schema_response_format_reaches_the_executor(
    hub: Any, fake_executor: Any
) -> None:
    """response_format json_schema is the run's output schema; json_object asks for JSON."""
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex:
        with_schema, _ = await ask_fake(hub, ex, body(user("x"), response_format=fmt), "{}")
        with_object, _ = await ask_fake(
            hub, ex, body(user("y"), response_format={"type": "json_object"}), "{}"
        )
    assert with_schema["options"]["output_schema"] == schema
    assert with_object["options"]["json_object"] is True
    assert "JSON object" in with_object["options"]["instructions"]


# images


@pytest.fixture
async def image_server() -> AsyncIterator[str]:
    """An HTTP server on 127.0.0.1 serving a PNG, a text file and a redirect."""

    async def png(_: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")

    async def text(_: web.Request) -> web.Response:
        return web.Response(text="not an image", content_type="image/png")

    app = web.Application()
    app.router.add_get("/pixel.png", png)
    app.router.add_get("/fake.png", text)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def image_message(url: str) -> dict[str, Any]:
    return user(
        [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": url}},
        ]
    )


async def test_a_data_url_image_reaches_the_executor(hub: Any, fake_executor: Any) -> None:
    """An image_url part with a data: URL goes to the executor as a PNG."""
    url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex:
        assign, _ = await ask_fake(hub, ex, body(image_message(url)))
    (image,) = assign["options"]["images"]
    assert image["mime"] == "image/png"
    assert base64.b64decode(image["data"]) == PNG
    assert assign["prompt"] == "what is this?"


async def test_an_image_on_a_loopback_address_is_refused_by_default(
    hub: Any, image_server: str
) -> None:
    """The hub does not fetch from loopback (or private, link-local) addresses unless allowed."""
    payload = body(image_message(image_server + "/pixel.png"))
    async with aiohttp.ClientSession() as s, s.post(hub.url + CHAT, json=payload) as resp:
        data = await resp.json()
    assert resp.status == 400
    assert data["error"]["code"] == "invalid_image"
    assert "loopback" in data["error"]["message"]


async def test_an_http_image_is_fetched_when_its_network_is_allowed(
    hub_settings: Any, fake_executor: Any, image_server: str
) -> None:
    """With HUB_IMAGE_ALLOWED_NETWORKS naming loopback the hub fetches it; a non-image fails."""
    settings = hub_settings.model_copy(update={"image_allowed_networks": ["127.0.0.0/8"]})
    async with HubServer(settings) as hub, fake_executor(ws_url(hub), token=NODE_TOKEN) as ex:
        assign, _ = await ask_fake(hub, ex, body(image_message(image_server + "/pixel.png")))
        async with aiohttp.ClientSession() as s:
            payload = body(image_message(image_server + "/fake.png"))
            async with s.post(hub.url + CHAT, json=payload) as resp:
                refused = (resp.status, (await resp.json())["error"]["code"])
    assert base64.b64decode(assign["options"]["images"][0]["data"]) == PNG
    assert refused == (400, "invalid_image")


async def test_idempotency_keys_and_response_ids_belong_to_their_principal(
    hub_settings: Any, start_executor: Any, tmp_path: Any
) -> None:
    """Another caller's Idempotency-Key names a new run, and another's response id is 404."""

    # start_executor brings the fixture's hub too: this one gets a store of its own.
    server = HubServer(two_keys(hub_settings, db=tmp_path / "principals.db"))
    async with (
        server as hub,
        start_executor(HUB_URL=ws_url(hub)),
        aiohttp.ClientSession() as s,
    ):
        ids = {}
        for who in ("alice", "bob"):
            headers = {**as_(who), "Idempotency-Key": "same-key"}
            async with s.post(hub.url + CHAT, json=body(user(who)), headers=headers) as resp:
                ids[who] = (resp.headers["X-Run-ID"], await resp.json())
        alice = as_("alice")
        async with s.post(
            hub.url + "/v1/responses", json={"model": "codex", "input": "mine"}, headers=alice
        ) as resp:
            response_id = (await resp.json())["id"]
        async with s.get(hub.url + f"/v1/responses/{response_id}", headers=alice) as resp:
            own = resp.status
        bob = as_("bob")
        async with s.get(hub.url + f"/v1/responses/{response_id}", headers=bob) as resp:
            other = resp.status
        follow = {"model": "codex", "input": "more", "previous_response_id": response_id}
        async with s.post(hub.url + "/v1/responses", json=follow, headers=bob) as resp:
            continued = resp.status
    assert ids["alice"][0] != ids["bob"][0]
    assert ids["bob"][1]["choices"][0]["message"]["content"] == "bob"
    assert (own, other, continued) == (200, 404, 404)
