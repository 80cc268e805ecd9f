"""A page of another site, in headless Chromium, can neither start nor read anything on a
hub without keys (what ``make run`` serves); nor can a page that rebinds its own name
to the hub's address."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import Browser

from hub.app import HubServer
from hub.appkeys import STORE
from tests.monitor.conftest import NODE_TOKEN, make_settings

pytestmark = pytest.mark.browser

#: The attacker's page: every way a page may reach the hub without asking it first. It
#: resolves ``window.attack`` with what each attempt got back.
ATTACK_PAGE = """<!doctype html>
<html><body>
<iframe name="sink" id="sink"></iframe>
<form id="form" method="post" action="HUB/api/runs" enctype="text/plain" target="sink">
  <input name='{"prompt": "a form says hi", "pad": "' value='"}'>
</form>
<script>
const hub = 'HUB';
function socket(path, first) {
  return new Promise((resolve) => {
    const got = [];
    const ws = new WebSocket(hub.replace('http:', 'ws:') + path);
    ws.onopen = () => ws.send(JSON.stringify(first));
    ws.onmessage = (message) => { got.push(String(message.data)); ws.close(); };
    ws.onclose = (event) => resolve({ code: event.code, got });
  });
}
window.attack = (async () => {
  const out = {};
  await fetch(hub + '/api/runs', {
    method: 'POST', mode: 'no-cors', headers: { 'Content-Type': 'text/plain' },
    body: JSON.stringify({ prompt: 'a no-cors fetch says hi' }),
  }).then(() => { out.nocors = 'sent'; }, (err) => { out.nocors = String(err); });
  await fetch(hub + '/api/runs').then(
    async (response) => { out.read = await response.text(); },
    () => { out.read = null; },
  );
  await new Promise((resolve) => {
    document.getElementById('sink').onload = resolve;
    document.getElementById('form').submit();
  });
  out.feed = await socket('/api/feed', { type: 'auth', key: '' });
  out.node = await socket('/ws', {
    type: 'hello', role: 'executor', token: '', node_id: 'evil', name: 'evil',
    capacity: 5, login: { logged_in: true, detail: '' },
  });
  return out;
})();
</script>
</body></html>
"""


@pytest.fixture
async def open_hub(tmp_path: Path) -> AsyncIterator[HubServer]:
    """The most open hub there is: no API key at all (HUB_AUTH=none), on 127.0.0.1."""
    async with HubServer(
        make_settings(tmp_path, HUB_API_KEYS="", HUB_OPERATOR_KEYS="", HUB_AUTH="none")
    ) as hub:
        yield hub


@pytest.fixture
async def attacker(open_hub: HubServer) -> AsyncIterator[str]:
    """Another origin (127.0.0.1, another port) serving the attack page; its URL."""
    page = ATTACK_PAGE.replace("HUB", open_hub.url)

    async def serve_page(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", serve_page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site.port}/"
    finally:
        await runner.cleanup()


async def runs_of(hub: HubServer) -> list[Any]:
    runs, _ = await hub.app[STORE].list_runs()
    return runs


async def test_a_page_of_another_origin_starts_and_reads_nothing(
    open_hub: HubServer, attacker: str, chromium: Browser, fake_executor: Any
) -> None:
    """The no-cors POST, the form POST and both websockets of a foreign page are refused:
    no run is stored, the connected executor is sent nothing, the page reads nothing."""
    node_url = f"ws://127.0.0.1:{open_hub.port}/ws"
    async with fake_executor(node_url, capacity=4, token=NODE_TOKEN) as executor:
        context = await chromium.new_context()
        try:
            page = await context.new_page()
            await page.goto(attacker)
            out = await page.evaluate("window.attack")
        finally:
            await context.close()

        assert out["read"] is None  # no CORS answer: the page cannot read the list
        assert out["feed"] == {"code": 1006, "got": []}  # the upgrade was refused
        assert out["node"] == {"code": 1006, "got": []}
        assert await runs_of(open_hub) == []
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{open_hub.url}/api/nodes") as resp:
                nodes = (await resp.json())["nodes"]
            assert [n["id"] for n in nodes] == ["fake-exec"]
            # A run from a client that is no page reaches the executor, and is the first.
            body = {"prompt": "from a script"}
            async with http.post(f"{open_hub.url}/api/runs", json=body) as resp:
                assert resp.status == 202, await resp.text()
        assign = await executor.wait_type("assign")
        assert assign["prompt"] == "from a script"
        assert [f["type"] for f in executor.frames] == ["assign"]


async def test_a_rebound_name_is_refused_on_every_route(open_hub: HubServer) -> None:
    """A page whose name was rebound to the hub's address (Host: evil.example, and its
    own origin in Origin) gets 403 on reads, on runs and on both websockets."""
    host = f"evil.example:{open_hub.port}"
    headers = {"Host": host, "Origin": f"http://{host}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{open_hub.url}/api/runs", headers={"Host": host}) as resp:
            assert resp.status == 403
            assert (await resp.json())["error"]["code"] == "host_not_allowed"
        body = json.dumps({"prompt": "rebound"})
        post_headers = {**headers, "Content-Type": "application/json"}
        async with http.post(f"{open_hub.url}/api/runs", data=body, headers=post_headers) as resp:
            assert resp.status == 403
        for path in ("/api/feed", "/ws"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(f"{open_hub.url}{path}", headers=headers)
            assert refused.value.status == 403
    assert await runs_of(open_hub) == []
