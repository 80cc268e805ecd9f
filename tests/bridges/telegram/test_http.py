"""PTB's requests over aiohttp: what PTB's callers expect of a request, failures included."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from telegram import InputFile
from telegram.error import NetworkError, TimedOut
from telegram.request import RequestData
from telegram.request._requestparameter import RequestParameter

from bridges.telegram.http import AiohttpRequest
from tests.conftest import free_port


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[web.Request], asyncio.Event]]:
    """A Bot API stand-in on 127.0.0.1: records requests; ``/slow`` waits until released."""
    seen: list[web.Request] = []
    release = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        seen.append(request)
        if request.path.endswith("/slow"):
            await release.wait()
        fields = {k: (v.filename if isinstance(v, web.FileField) else v) for k, v in
                  (await request.post()).items()}  # fmt: skip
        return web.json_response({"ok": True, "result": fields})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/botTOKEN", seen, release
    finally:
        release.set()
        await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[AiohttpRequest]:
    """An initialized request, shut down after the test."""
    made = AiohttpRequest()
    await made.initialize()
    try:
        yield made
    finally:
        await made.shutdown()


def params(**values: object) -> RequestData:
    return RequestData([RequestParameter.from_input(k, v) for k, v in values.items()])


async def test_a_call_is_a_form_with_ptbs_user_agent(
    server: tuple[str, list[web.Request], asyncio.Event], http: AiohttpRequest
) -> None:
    """Parameters go as a form, JSON-encoded as PTB encodes them; the status and body return."""
    url, seen, _ = server
    status, body = await http.do_request(
        f"{url}/sendMessage", "POST", params(chat_id=7, text="hi", entities=[])
    )
    assert status == 200
    assert b'"chat_id": "7"' in body and b'"text": "hi"' in body
    assert seen[0].headers["User-Agent"] == http.USER_AGENT
    assert seen[0].content_type == "application/x-www-form-urlencoded"


async def test_a_file_goes_as_multipart(
    server: tuple[str, list[web.Request], asyncio.Event], http: AiohttpRequest
) -> None:
    """A call with a file is multipart: the file and the other parameters side by side."""
    url, seen, _ = server
    document = InputFile(b"all fine", filename="report.txt")
    status, body = await http.do_request(
        f"{url}/sendDocument", "POST", params(chat_id=7, document=document)
    )
    assert status == 200 and b'"document": "report.txt"' in body and b'"chat_id": "7"' in body
    assert seen[0].content_type == "multipart/form-data"


async def test_a_slow_answer_is_timed_out_and_a_closed_port_is_a_network_error(
    server: tuple[str, list[web.Request], asyncio.Event], http: AiohttpRequest
) -> None:
    """PTB's callers handle TimedOut and NetworkError; aiohttp's own errors never leak out."""
    url, _, _ = server
    with pytest.raises(TimedOut):
        await http.do_request(f"{url}/slow", "POST", read_timeout=0.05)
    with pytest.raises(NetworkError):
        await http.do_request(f"http://127.0.0.1:{free_port()}/bot1/getMe", "POST")


async def test_only_an_initialized_request_is_sent_and_shutdown_is_idempotent() -> None:
    """As with PTB's own request: initialize first; shutdown may come twice, or before."""
    made = AiohttpRequest()
    await made.shutdown()
    with pytest.raises(RuntimeError):
        await made.do_request("http://127.0.0.1:9/bot1/getMe", "POST")
    await made.initialize()
    await made.initialize()
    await made.shutdown()
    await made.shutdown()
