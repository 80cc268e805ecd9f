"""The hub serves an OpenAPI 3.1 document of its HTTP API that names every route it has,
and the hub holds to it under schemathesis (issue #8, point 5).

Schemathesis runs as its own process (its CLI) against the hub on 127.0.0.1 with a
dry-run executor connected, with the checks not_a_server_error,
status_code_conformance, content_type_conformance and response_schema_conformance, in
all its phases (examples, coverage, fuzzing, stateful), with a fixed seed. CI runs a
few examples per operation; ``make faults`` runs many.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from hub.app import create_app
from hub.openapi import NOT_OPERATIONS, document
from hub.settings import HubSettings
from tests.abuse.conftest import API_KEY, AUTH, Crashes, make

CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance"
)


def routes_of(app: web.Application) -> set[tuple[str, str]]:
    """(METHOD, path) of every route the application has; HEAD twins of GETs left out."""
    found = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter") or info.get("prefix") or ""
        found.add((route.method, path))
    return found


def operations_of(doc: dict[str, Any]) -> set[tuple[str, str]]:
    """(METHOD, path) of every operation the document describes."""
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item}


def test_the_document_names_every_route_and_only_routes(hub_settings: HubSettings) -> None:
    """A route added without an OpenAPI description (or the reverse) fails here."""
    app = create_app(hub_settings)
    routes = routes_of(app)
    described = operations_of(document(hub_settings))
    undocumented = {(m, p) for m, p in routes - described if p not in NOT_OPERATIONS}
    assert not undocumented, f"routes missing from hub/openapi.py: {sorted(undocumented)}"
    assert described <= routes, f"described but not served: {sorted(described - routes)}"


def test_the_document_follows_the_settings(tmp_path: Path) -> None:
    """The served model is the only one the schema accepts; keys make every operation
    but /healthz require a Bearer key."""
    keyed = document(
        make(HubSettings, HUB_DB=tmp_path / "a.db", HUB_API_KEYS="k", HUB_MODEL_NAME="m")
    )
    request = keyed["components"]["schemas"]["ChatCompletionRequest"]
    assert request["properties"]["model"] == {"const": "m"}
    assert keyed["security"] == [{"apiKey": []}]
    for path, item in keyed["paths"].items():
        for operation in item.values():
            refused = "401" in operation["responses"]
            assert refused == (path != "/healthz"), path
    open_doc = document(make(HubSettings, HUB_DB=tmp_path / "b.db"))
    assert "security" not in open_doc
    assert all(
        "401" not in op["responses"] for i in open_doc["paths"].values() for op in i.values()
    )


async def test_the_document_is_served_with_the_key(hub: Any, http: aiohttp.ClientSession) -> None:
    """GET /openapi.json answers the document, and like every API route needs a key."""
    async with http.get("/openapi.json") as resp:
        assert resp.status == 401
    async with http.get("/openapi.json", headers=AUTH) as resp:
        assert resp.status == 200
        doc = await resp.json()
    assert doc["openapi"] == "3.1.0"
    assert doc == document(hub.settings)


async def schemathesis(hub: Any, cwd: Path, *args: str) -> tuple[int, str]:
    """Run schemathesis's CLI against the hub; (exit code, its output)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{hub.url}/openapi.json",
        "--checks",
        CHECKS,
        "--header",
        f"Authorization: Bearer {API_KEY}",
        "--seed",
        "20260101",
        "--workers",
        "1",
        "--no-color",
        *args,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


@pytest.mark.timeout(180)
async def test_schemathesis_finds_nothing_with_a_few_examples(
    hub: Any, executor: Any, crashes: Crashes, tmp_path: Path
) -> None:
    """Every phase, five examples per operation: no 5xx, no undocumented status,
    content type or body."""
    code, out = await schemathesis(hub, tmp_path, "--max-examples", "5")
    assert code == 0, out[-6000:]
    assert "passed" in out, out[-2000:]
    assert not crashes.records, crashes.report()


@pytest.mark.slow
@pytest.mark.timeout(1800)
async def test_schemathesis_finds_nothing_with_many_examples(
    hub: Any, executor: Any, crashes: Crashes, tmp_path: Path
) -> None:
    """The full run: two hundred examples per operation in every phase."""
    code, out = await schemathesis(hub, tmp_path, "--max-examples", "200")
    assert code == 0, out[-6000:]
    assert not crashes.records, crashes.report()
