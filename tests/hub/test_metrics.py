"""/metrics, /healthz and /readyz as an operator scrapes them."""

from __future__ import annotations

import os
import signal
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hub.appkeys import STORE
from hub.store import op_insert_run, readers
from tests.conftest import NODE_TOKEN, ws_url
from tests.hub.test_store import make_run

Samples = dict[tuple[str, tuple[Any, ...]], float]


async def scrape(session: aiohttp.ClientSession, hub: Any) -> Samples:
    async with session.get(hub.url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_every_family_is_present_and_moves_with_a_run(
    hub: Any, fake_executor: Any, fake_bridge: Any
) -> None:
    """Runs, durations, queue wait and depth, nodes, active runs and the outbox all move."""
    async with aiohttp.ClientSession() as s:
        before = await scrape(s, hub)
        for name in (
            "codex_hub_queue_depth",
            "codex_hub_active_runs",
            "codex_hub_outbox_pending",
            "codex_hub_executor_capacity",
            "codex_hub_store_backlog",
        ):
            assert (name, ()) in before, name
        assert value(before, "codex_hub_nodes", role="executor") == 0
        async with (
            fake_executor(ws_url(hub), token=NODE_TOKEN, capacity=1) as ex,
            fake_bridge(ws_url(hub), token=NODE_TOKEN) as br,
        ):
            await br.send(
                {"type": "submit", "req_id": "1", "prompt": "a", "session_key": "k", "origin": {}}
            )
            await br.send(
                {"type": "submit", "req_id": "2", "prompt": "b", "session_key": "j", "origin": {}}
            )
            first = await ex.wait_type("assign")
            await br.wait_type("submitted", req_id="2")
            during = await scrape(s, hub)
            assert value(during, "codex_hub_nodes", role="executor") == 1
            assert value(during, "codex_hub_nodes", role="bridge") == 1
            assert value(during, "codex_hub_active_runs") == 1
            assert value(during, "codex_hub_queue_depth") == 1
            assert value(during, "codex_hub_runs_submitted_total", source="slack") == 2
            await ex.finish(first["run_id"], "done")
            await br.wait_type("deliver", run_id=first["run_id"])
            second = await ex.wait_type("assign", prompt="b")
            after = await scrape(s, hub)
            assert value(after, "codex_hub_runs_total", state="succeeded", source="slack") == 1
            assert value(after, "codex_hub_run_duration_seconds_count", state="succeeded") == 1
            assert value(after, "codex_hub_queue_wait_seconds_count") == 2
            assert value(after, "codex_hub_outbox_pending") == 1
            assert value(after, "codex_hub_queue_depth") == 0
            await ex.finish(second["run_id"], "done")
            await br.wait_type("deliver", run_id=second["run_id"])


async def test_readyz_needs_a_logged_in_executor(hub: Any, fake_executor: Any) -> None:
    """503 with the reason until an executor with codex logged in is connected."""
    async with aiohttp.ClientSession() as s:
        async with s.get(hub.url + "/healthz") as resp:
            assert resp.status == 200
        async with s.get(hub.url + "/readyz") as resp:
            assert resp.status == 503
            assert (await resp.json())["reason"] == "no executor is connected"
        async with fake_executor(
            ws_url(hub), token=NODE_TOKEN, login={"logged_in": False, "detail": "Not logged in"}
        ):
            async with s.get(hub.url + "/readyz") as resp:
                assert resp.status == 503
                assert "codex login" in (await resp.json())["reason"]
        async with fake_executor(ws_url(hub), token=NODE_TOKEN, node_id="ok"):
            async with s.get(hub.url + "/readyz") as resp:
                assert resp.status == 200
                assert (await resp.json())["ready"] is True


async def test_the_stores_counters_move_with_writes_reads_and_a_failed_read(
    hub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Transactions and their time move with writes, reads with a list, and a read the
    readers cannot answer (here: the only reader stopped, past the read timeout) counts
    as a failure as well as a read; what the operator sees when lists answer 503."""
    monkeypatch.setattr(readers, "READ_TIMEOUT_S", 0.5)
    store = hub.app[STORE]
    async with aiohttp.ClientSession() as s:
        before = await scrape(s, hub)
        await store.call(op_insert_run, make_run(1))
        await store.flush()
        async with s.get(hub.url + "/api/runs") as resp:
            assert resp.status == 200
        after = await scrape(s, hub)
        assert (
            value(after, "codex_hub_store_transactions_total")
            >= value(before, "codex_hub_store_transactions_total") + 2
        )  # the insert, the flush
        assert value(after, "codex_hub_store_transaction_seconds_total") > value(
            before, "codex_hub_store_transaction_seconds_total"
        )
        assert (
            value(after, "codex_hub_store_reads_total")
            == value(before, "codex_hub_store_reads_total") + 1
        )
        assert value(after, "codex_hub_store_read_seconds_total") > value(
            before, "codex_hub_store_read_seconds_total"
        )
        assert value(after, "codex_hub_store_read_failures_total") == 0

        (pid,) = store.reader_pids
        os.kill(pid, signal.SIGSTOP)
        async with s.get(hub.url + "/api/runs") as resp:
            assert resp.status == 503
        failed = await scrape(s, hub)
        assert value(failed, "codex_hub_store_read_failures_total") == 1
        assert (
            value(failed, "codex_hub_store_reads_total")
            == value(after, "codex_hub_store_reads_total") + 1
        )
