"""Malformed HTTP requests get a 4xx (or, when valid but odd, a normal answer), never a
5xx; the hub serves a real run after every batch of them (issue #8, point 5).

Requests go through aiohttp's client (well-framed HTTP with hostile bodies, headers,
queries and paths) and through a raw socket (HTTP that is not even well framed). The
crash detector fails the test on any ERROR logged in the process, so an exception
swallowed into a log line counts as a crash too.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st

from hub import errors
from tests.abuse.conftest import API_KEY, AUTH, CHAT, FULL, QUICK, Batches, Crashes
from tests.abuse.strategies import (
    content_encodings,
    content_types,
    header_values,
    json_bodies,
    json_values,
    obj,
    text,
)

pytestmark = pytest.mark.timeout(120)


@dataclass
class Req:
    """One HTTP request to send; ``run_index`` picks a real run id into the path."""

    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    run_index: int | None = None


# --- strategies -----------------------------------------------------------------------

auth = st.one_of(
    st.just(f"Bearer {API_KEY}"),
    st.just(f"Bearer {API_KEY}"),
    st.just(f"Bearer {API_KEY}"),
    st.sampled_from(["", "Bearer", "Bearer ", f"bearer {API_KEY}", f"Basic {API_KEY}", API_KEY]),
    header_values.map(lambda v: f"Bearer {v}"),
)


def request_headers(*, json_body: bool) -> st.SearchStrategy[dict[str, str]]:
    """Headers the hub reads, each maybe hostile, Authorization mostly right."""
    ctype = st.one_of(st.just("application/json"), content_types) if json_body else content_types
    return st.fixed_dictionaries(
        {"Authorization": auth},
        optional={
            "Content-Type": ctype,
            "Content-Encoding": content_encodings,
            "X-Session-Id": header_values,
            "X-Optimize-Prompt": header_values,
            "Idempotency-Key": header_values,
            "User-Agent": header_values,
            "Accept": st.sampled_from(["*/*", "text/event-stream", "application/json", "x/y"]),
        },
    )


part = obj({"type": st.sampled_from(["text", "image_url", ""])}, {"text": text})
content = st.one_of(text, st.none(), st.lists(part, max_size=3))
message = obj(
    {
        "role": st.sampled_from(["user", "user", "system", "assistant", "tool", ""]),
        "content": content,
    }
)
chat_body = obj(
    {
        "model": st.sampled_from(["codex", "codex", "gpt-4o", ""]),
        "messages": st.lists(message, max_size=4),
    },
    {
        "stream": st.booleans(),
        "stream_options": obj({}, {"include_usage": st.booleans()}),
        "user": text,
        "temperature": st.floats(),
        "n": st.integers(),
    },
)

#: Text with something in it that the store can keep (no lone surrogates).
valid_text = st.builds(
    lambda t: f"do {t}", text.filter(lambda t: "\ud800" not in t and "\udfff" not in t)
)
#: Valid but odd: odd text, odd earlier messages, streamed or not, a session or not.
odd_chat = st.builds(
    lambda history, prompt, stream, session: Req(
        "POST",
        CHAT,
        {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
        | ({"X-Session-Id": session} if session else {}),
        body=json.dumps(
            {
                "model": "codex",
                "messages": [*history, {"role": "user", "content": prompt}],
                "stream": stream,
            }
        ).encode(),
    ),
    st.lists(message, max_size=3),
    st.one_of(
        valid_text,
        st.lists(part, min_size=1, max_size=3).map(lambda p: [*p, {"type": "text", "text": "x"}]),
    ),
    st.booleans(),
    st.one_of(st.none(), st.text(alphabet="abc", min_size=1, max_size=3)),
)
chat_requests = st.one_of(
    odd_chat,
    st.builds(
        lambda body, headers: Req("POST", CHAT, headers, body=body),
        json_bodies(chat_body),
        request_headers(json_body=True),
    ),
    st.builds(
        lambda body, headers: Req("POST", CHAT, headers, body=body),
        json_bodies(chat_body),
        request_headers(json_body=True),
    ),
)

run_body = obj(
    {"prompt": text}, {"session_key": st.one_of(text, st.none()), "optimize": st.booleans()}
)
create_requests = st.one_of(
    st.builds(
        lambda prompt, key: Req(
            "POST",
            "/api/runs",
            {"Authorization": f"Bearer {API_KEY}"},
            body=json.dumps({"prompt": prompt, "session_key": key}).encode(),
        ),
        valid_text,
        st.one_of(st.none(), st.text(max_size=20)),
    ),
    st.builds(
        lambda body, headers: Req("POST", "/api/runs", headers, body=body),
        json_bodies(run_body),
        request_headers(json_body=True),
    ),
    st.builds(
        lambda body, headers: Req("POST", "/api/runs", headers, body=body),
        json_bodies(run_body),
        request_headers(json_body=True),
    ),
)

run_ids = st.one_of(
    text.filter(bool).map(lambda s: quote(s.encode("utf-8", "surrogatepass"), safe="")),
    st.sampled_from(["run_0000000000000000", "%2F", "%00", "%ED%A0%80", "%FF", "..", "."]),
)
cancel_requests = st.builds(
    lambda rid, index, body, headers: Req(
        "POST", f"/api/runs/{rid}/cancel", headers, body=body, run_index=index
    ),
    run_ids,
    st.one_of(st.none(), st.integers(min_value=0, max_value=50)),
    st.one_of(st.none(), json_bodies(json_values)),
    request_headers(json_body=False),
)

query_values = st.one_of(
    header_values,
    st.sampled_from(["-1", "0", "501", "2" * 30, "1e3", "0x10", ",,,", "queued," * 2000, "%"]),
)
reads = st.one_of(
    st.builds(
        lambda q, h: Req("GET", "/api/runs", h, query=q),
        st.dictionaries(
            st.sampled_from(["state", "source", "q", "session_key", "before", "limit", "x"]),
            query_values,
            max_size=4,
        ),
        request_headers(json_body=False),
    ),
    st.builds(
        lambda rid, index, after, h: Req(
            "GET",
            f"/api/runs/{rid}",
            h,
            query={"after": after} if after is not None else {},
            run_index=index,
        ),
        run_ids,
        st.one_of(st.none(), st.integers(min_value=0, max_value=50)),
        st.one_of(st.none(), query_values),
        request_headers(json_body=False),
    ),
    st.builds(
        lambda model, h: Req("GET", f"/v1/models/{model}", h),
        run_ids,
        request_headers(json_body=False),
    ),
)

PATHS = [
    "/v1/models",
    CHAT,
    "/api/runs",
    "/api/runs/x",
    "/api/runs/x/cancel",
    "/api/nodes",
    "/api/settings",
    "/api/feed",
    "/ws",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/",
    "/static/app.js",
    "/static/../../etc/passwd",
    "/static/%2e%2e/%2e%2e/etc/passwd",
    "/nope",
    "//",
    "/v1/../api/runs",
]
anything = st.builds(
    lambda method, path, headers, body: Req(method, path, headers, body=body),
    st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "FOO"]),
    st.sampled_from(PATHS),
    request_headers(json_body=False),
    st.one_of(st.none(), json_bodies(json_values)),
)

SURFACES: dict[str, st.SearchStrategy[Req]] = {
    "chat": chat_requests,
    "create-run": create_requests,
    "cancel": cancel_requests,
    "reads": reads,
    "any-route": anything,
}


# --- sending and judging ------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


async def send(http: aiohttp.ClientSession, req: Req, known_runs: list[str]) -> Answer:
    """Send ``req`` as is (aiohttp adds no Content-Type of its own) and read all of it."""
    path = req.path
    if req.run_index is not None and known_runs:
        run_id = known_runs[req.run_index % len(known_runs)]
        path = re.sub(r"^/api/runs/[^/]+", f"/api/runs/{run_id}", path)
    skip = () if "Content-Type" in req.headers else ("Content-Type",)
    try:
        async with http.request(
            req.method,
            path,
            params=req.query or None,
            headers=req.headers,
            data=req.body,
            skip_auto_headers=skip,
            allow_redirects=False,
        ) as resp:
            body = await resp.read()
            return Answer(resp.status, dict(resp.headers), body)
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientResponseError):
        if not encoded(req):
            raise
        # aiohttp (3.14) cannot drain a body it failed to decode: it closes the connection
        # behind its answer (the client may lose that answer), and answers a HEAD's
        # parse error with a body. The hub stays up; the connection is refused.
        event("dropped: undecodable body")
        return Answer(0, {}, b"")


def encoded(req: Req) -> bool:
    """The request claims a Content-Encoding its body may not have."""
    return req.headers.get("Content-Encoding", "").strip().lower() not in ("", "identity")


def parser_refusal(answer: Answer) -> bool:
    """aiohttp's own 400 for bytes it cannot parse, sent before the hub sees a request.

    A body whose Content-Encoding fails only at its end is such a case: the hub's
    middleware never runs, so the answer is aiohttp's plain text, not the envelope.
    """
    return answer.status == 400 and answer.headers.get("Content-Type", "").startswith("text/plain")


def judge(req: Req, answer: Answer) -> None:
    """A 4xx in OpenAI's envelope, or a normal answer; never a 5xx."""
    where = f"{req.method} {req.path} -> {answer.status}: {answer.body[:300]!r}"
    assert answer.status < 500, where
    event(f"{req.method} {answer.status}")
    if parser_refusal(answer) or answer.status == 0:
        return
    api = req.path.startswith(("/v1/", "/api/")) and req.path != "/api/feed"
    if answer.status >= 400 and api and req.method != "HEAD":
        error = json.loads(answer.body)["error"]
        assert isinstance(error["message"], str) and error["message"], where
        assert {"type", "code", "param"} <= set(error), where
    if req.path == CHAT and req.method == "POST":
        assert answer.headers.get("X-Run-ID", "").startswith("run_"), where
        if answer.status == 200:
            if answer.headers["Content-Type"].startswith("text/event-stream"):
                assert answer.body.rstrip().endswith(b"data: [DONE]"), where
            else:
                completion = json.loads(answer.body)
                assert isinstance(completion["choices"][0]["message"]["content"], str), where


class Fuzz:
    """What a fuzz test keeps between examples: the client, the batches, real run ids."""

    def __init__(self, batches: Batches) -> None:
        self.batches = batches
        self.runs: list[str] = []

    async def exercise(self, req: Req) -> None:
        answer = await send(self.batches.http, req, self.runs)
        judge(req, answer)
        run_id = answer.headers.get("X-Run-ID")
        if answer.status in (200, 202) and run_id and run_id not in self.runs:
            self.runs.append(run_id)
            del self.runs[:-50]
        await self.batches.example_done()


@pytest.fixture
def fuzz(batches: Batches) -> Fuzz:
    """A fuzz context on the keyed hub with a dry-run executor."""
    return Fuzz(batches)


@pytest.mark.parametrize("surface", SURFACES)
@QUICK
@given(data=st.data())
async def test_malformed_http_requests_get_a_4xx_never_a_5xx(
    surface: str, data: st.DataObject, fuzz: Fuzz
) -> None:
    """Hostile bodies, headers, queries and paths are refused or answered, never a 5xx."""
    await fuzz.exercise(data.draw(SURFACES[surface], label="request"))


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("surface", SURFACES)
@FULL
@given(data=st.data())
async def test_thousands_of_malformed_http_requests_get_a_4xx_never_a_5xx(
    surface: str, data: st.DataObject, fuzz: Fuzz
) -> None:
    """The big run of the same property: thousands of requests per surface."""
    await fuzz.exercise(data.draw(SURFACES[surface], label="request"))


# --- HTTP that is not well framed ----------------------------------------------------

token = st.sampled_from([b"GET", b"POST", b"POST", b"PUT", b"get", b"G\x00T", b"", b"POST POST"])
target = st.one_of(
    st.sampled_from([p.encode() for p in PATHS]),
    st.sampled_from([p.encode() for p in PATHS]).map(lambda p: p + b"?q=\xff"),
    st.binary(max_size=40),
    st.sampled_from([b"*", b"http://127.0.0.1/api/runs", b"/api/runs?\xff=\xfe", b"/" * 9000]),
)
version = st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/9", b""])
header_line = st.one_of(
    st.tuples(
        st.sampled_from([b"X-Session-Id", b"Idempotency-Key", b"User-Agent", b"X-Optimize-Prompt"]),
        st.binary(max_size=30).map(lambda v: v.replace(b"\r", b"").replace(b"\n", b"")),
    ),
    st.tuples(st.just(b"Authorization"), st.sampled_from([b"Bearer \xff\xfe", b"Bearer"])),
    st.tuples(
        st.just(b"Content-Length"), st.sampled_from([b"-1", b"99999999999999999999", b"1, 2", b"x"])
    ),
    st.tuples(
        st.just(b"Transfer-Encoding"),
        st.sampled_from([b"chunked", b"gzip, chunked", b"chunked, gzip", b"x"]),
    ),
    st.tuples(st.just(b"Content-Encoding"), st.sampled_from([b"gzip", b"deflate", b"br"])),
    st.tuples(
        st.just(b"Content-Type"),
        st.sampled_from([b"application/json", b"application/json; charset=\xff", b"text/x"]),
    ),
    st.tuples(st.binary(min_size=1, max_size=10), st.binary(max_size=10)),
    st.tuples(st.just(b"Upgrade"), st.sampled_from([b"websocket", b"h2c"])),
)
raw_bodies = st.one_of(
    json_bodies(json_values),
    st.sampled_from(
        [
            b'{"prompt":"x"}',
            b'{"model":"codex","messages":[{"role":"user","content":"raw"}]}',
            b"5\r\nhello\r\n0\r\n\r\n",
            b"zz\r\nab",
        ]
    ),
)


@st.composite
def raw_requests(draw: st.DrawFn) -> bytes:
    """A request as bytes: broken line, headers or framing, usually with a right key."""
    eol = draw(st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"]))
    line = draw(token) + b" " + draw(target) + b" " + draw(version)
    body = draw(raw_bodies)
    headers = [(b"Host", b"127.0.0.1")]
    if draw(st.integers(0, 3)):
        headers.append((b"Authorization", f"Bearer {API_KEY}".encode()))
    headers += draw(st.lists(header_line, max_size=4))
    framing = draw(st.sampled_from(["length", "length", "none", "short", "long"]))
    size = {"length": len(body), "short": len(body) // 2, "long": len(body) + 10}.get(framing)
    if size is not None:
        headers.append((b"Content-Length", str(size).encode()))
    head = b"".join(name + b": " + value + eol for name, value in headers)
    return line + eol + head + eol + body


STATUS_LINE = re.compile(rb"^HTTP/\d\.\d (\d{3}) ")
#: The hub answers within this; a request still unanswered then waits for more bytes.
ANSWER_S = 2.0


async def send_raw(port: int, data: bytes) -> bytes:
    """Write ``data`` and read the first answer's head ('' if the hub waits or closes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(ANSWER_S):
            return await reader.readuntil(b"\r\n\r\n")
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionResetError):
        # Waiting for the rest of a body it was promised, or closing on garbage: both fine.
        return b""
    finally:
        writer.close()
        await asyncio.gather(writer.wait_closed(), return_exceptions=True)


def judge_raw(data: bytes, answer: bytes) -> None:
    """The answer, if any, is a status line below 500."""
    if not answer:
        return
    match = STATUS_LINE.match(answer)
    assert match, (data[:200], answer[:200])
    assert int(match.group(1)) < 500, (data[:300], answer[:500])


KEY = f"Bearer {API_KEY}".encode()
CHAT_BODY = b'{"model":"codex","messages":[{"role":"user","content":"raw"}]}'


def raw_chat(extra: bytes) -> bytes:
    """A well-framed chat request with one extra header line."""
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: " + KEY + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: " + str(len(CHAT_BODY)).encode()
        + b"\r\n" + extra + b"\r\n" + CHAT_BODY
    )  # fmt: skip


@QUICK
@example(data=raw_chat(b"X-Session-Id: \xff\xfe\r\n"))
@example(data=raw_chat(b"Idempotency-Key: \xed\xa0\x80\r\n"))
@example(data=raw_chat(b"Content-Encoding: gzip\r\n"))
@example(data=raw_chat(b"").replace(b"Content-Length: 62", b"Content-Length: 30"))
@given(data=raw_requests())
async def test_http_that_is_not_well_framed_gets_a_4xx_or_a_close(
    data: bytes, hub: Any, batches: Batches
) -> None:
    """Broken request lines, lengths, chunks, encodings and header bytes: never a 5xx."""
    judge_raw(data, await send_raw(hub.port, data))
    await batches.example_done()


@pytest.mark.slow
@pytest.mark.timeout(1800)
@FULL
@given(data=raw_requests())
async def test_thousands_of_unframed_requests_get_a_4xx_or_a_close(
    data: bytes, hub: Any, batches: Batches
) -> None:
    """The big run of the same property on the raw socket."""
    judge_raw(data, await send_raw(hub.port, data))
    await batches.example_done()


# --- what the fuzzers found, kept as plain regressions ----------------------------------


async def test_a_streamed_retry_with_the_same_idempotency_key_gets_the_first_answer(
    http: aiohttp.ClientSession, executor: Any, crashes: Crashes
) -> None:
    """Retrying a streaming request with its Idempotency-Key streams the first run's
    answer again, once it has ended (it was a 500)."""
    body = {"model": "codex", "messages": [{"role": "user", "content": "once"}], "stream": True}
    headers = {**AUTH, "Idempotency-Key": "retry-1"}
    run_ids = []
    for _ in range(2):
        async with http.post(CHAT, json=body, headers=headers) as resp:
            assert resp.status == 200
            run_ids.append(resp.headers["X-Run-ID"])
            text = await resp.text()
        assert '"content":"once"' in text and text.rstrip().endswith("data: [DONE]")
    assert run_ids[0] == run_ids[1]
    assert not crashes.records, crashes.report()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (CHAT, b'{"model": "codex", "messages": [{"role": "user", "content": "\\ud800"}]}'),
        ("/api/runs", b'{"prompt": "\\udfff"}'),
    ],
)
async def test_a_lone_surrogate_in_a_body_is_a_400(
    http: aiohttp.ClientSession, crashes: Crashes, path: str, body: bytes
) -> None:
    """JSON text the store cannot encode is refused as a bad body (it was a 500)."""
    headers = {**AUTH, "Content-Type": "application/json"}
    async with http.post(path, data=body, headers=headers) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "invalid_json"
    assert not crashes.records, crashes.report()


async def test_a_compressed_body_is_refused_unread(
    http: aiohttp.ClientSession, crashes: Crashes
) -> None:
    """A body with a Content-Encoding is refused with 415 at once, whatever it holds (a
    broken one was a 500; a deflate one that never ends hung aiohttp for good)."""
    for encoding, body in (("gzip", b"\x1f\x8b not gzip at all"), ("deflate", b"[" * 200_000)):
        headers = {**AUTH, "Content-Type": "application/json", "Content-Encoding": encoding}
        for path in (CHAT, "/api/runs"):
            async with http.post(path, data=body, headers=headers) as resp:
                assert resp.status == 415
                assert (await resp.json())["error"]["code"] == "unsupported_content_encoding"
    assert not crashes.records, crashes.report()


async def test_a_body_that_stops_arriving_is_refused_in_time(
    hub: Any, crashes: Crashes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body that never completes gets 408 after the body time limit (aiohttp would wait
    for ever, also on a broken chunk that arrives after the request started)."""
    monkeypatch.setattr(errors, "BODY_TIMEOUT_S", 0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    try:
        writer.write(
            b"POST /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: " + KEY + b"\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"
        )
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()
        await asyncio.gather(writer.wait_closed(), return_exceptions=True)
    assert head.startswith(b"HTTP/1.1 408 ")
    assert not crashes.records, crashes.report()


async def test_a_key_with_bytes_that_are_not_utf8_is_a_401(hub: Any, crashes: Crashes) -> None:
    """An Authorization header with stray bytes is a wrong key, not a 500."""
    answer = await send_raw(hub.port, raw_chat(b"").replace(KEY, b"Bearer \xff\xfe"))
    assert answer.startswith(b"HTTP/1.1 401 "), answer
    assert not crashes.records, crashes.report()
