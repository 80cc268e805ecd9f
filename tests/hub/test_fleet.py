"""The fleet as /api/nodes shows it: each executor's labels, engine, codex version and
the runs on it (issue #20)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from executor.codex import TESTED_CODEX_VERSION
from hub.appkeys import ROUTER
from testkit.fakes.nodes import executor_hello
from tests.conftest import NODE_TOKEN, node_token, ws_url
from wire import CLOSE_BAD_HELLO


async def _nodes(hub: Any) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(f"{hub.url}/api/nodes") as resp:
        assert resp.status == 200
        return (await resp.json())["nodes"]


async def test_two_executors_show_their_own_labels_engine_and_version(
    hub: Any, fake_executor: Any
) -> None:
    """Each executor in /api/nodes carries the labels, engine and codex version of its hello."""
    async with (
        fake_executor(
            ws_url(hub),
            node_id="gpu-box",
            token=NODE_TOKEN,
            labels=["gpu", "prod"],
            engine="app-server",
            codex_version="0.169.0",
        ),
        fake_executor(ws_url(hub), node_id="laptop", token=NODE_TOKEN, labels=["dev"]),
    ):
        by_name = {n["name"]: n for n in await _nodes(hub) if n["role"] == "executor"}
    assert by_name["gpu-box"]["labels"] == ["gpu", "prod"]
    assert by_name["gpu-box"]["engine"] == "app-server"
    assert by_name["gpu-box"]["codex_version"] == "0.169.0"
    assert by_name["laptop"]["labels"] == ["dev"]
    assert (by_name["laptop"]["engine"], by_name["laptop"]["codex_version"]) == ("", "")


async def test_an_executor_lists_the_runs_it_holds_until_they_end(
    hub: Any, fake_executor: Any
) -> None:
    """A run assigned to an executor is in its ``runs`` until its result is in."""
    async with fake_executor(ws_url(hub), token=NODE_TOKEN, capacity=1) as ex:
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{hub.url}/api/runs", json={"prompt": "hold on"}) as resp,
        ):
            assert resp.status == 202, await resp.text()
            run_id = (await resp.json())["run"]["id"]
        await ex.wait_type("assign", run_id=run_id)
        [node] = await _nodes(hub)
        assert (node["runs"], node["busy"]) == ([run_id], 1)
        await ex.finish(run_id)
        await ex.wait_type("result_ack", run_id=run_id)
        [node] = await _nodes(hub)
        assert (node["runs"], node["busy"]) == ([], 0)


@pytest.mark.parametrize("label", ["GPU", "has space", "a,b", "x" * 65, ""])
async def test_a_hello_with_a_label_that_is_not_one_is_refused(hub: Any, label: str) -> None:
    """A label outside lowercase letters, digits, '-' and '_' closes the socket as a bad
    hello naming the labels, and no executor is registered."""
    async with connect(ws_url(hub)) as ws:
        await ws.send(json.dumps(executor_hello(token=NODE_TOKEN, labels=["ok", label])))
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == CLOSE_BAD_HELLO
    assert "labels" in info.value.rcvd.reason
    assert hub.app[ROUTER].executors == {}


async def test_a_real_executor_announces_its_labels_and_engine(
    hub: Any, start_executor: Any
) -> None:
    """EXEC_LABELS and EXEC_ENGINE of a real (dry-run) executor reach /api/nodes."""
    async with start_executor(
        HUB_TOKEN=node_token("executor"),
        NODE_NAME="k8s-runner",
        EXEC_LABELS="prod, k8s,gpu,prod",
        EXEC_ENGINE="exec",
    ):
        [node] = await _nodes(hub)
    assert node["name"] == "k8s-runner"
    assert node["labels"] == ["prod", "k8s", "gpu"]
    assert node["engine"] == "exec"


async def test_a_real_executor_announces_the_version_of_its_codex(
    hub: Any, start_executor: Any, codex_bin: str, tmp_path: Path
) -> None:
    """An executor that runs codex tells the hub the version `codex --version` prints."""
    home = tmp_path / "codex-home"
    home.mkdir()
    async with start_executor(EXEC_DRY_RUN=False, CODEX_BIN=codex_bin, CODEX_HOME=home):
        [node] = await _nodes(hub)
    assert node["codex_version"] == TESTED_CODEX_VERSION
