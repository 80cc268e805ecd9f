"""The hub's side of workspaces: the repository travels to the executor, the diff back.

``repo`` and ``open_pr`` on ``POST /api/runs`` and ``X-Repo`` / ``metadata.repo`` /
``X-Open-PR`` on the chat API reach the executor in the ``assign`` frame, with the
conversation's session key; ``GET /api/runs/{id}/diff`` serves the ``workspace`` event
to the run's own key only.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hub.settings import HubSettings
from testkit.fakes.nodes import FakeExecutor, executor_hello
from tests.conftest import NODE_TOKEN, ws_url

KEY_A = "workspace-key-a-0123456789abcdef"
KEY_B = "workspace-key-b-0123456789abcdef"
DIFF = (
    "diff --git a/a.txt b/a.txt\nnew file mode 100644\n"
    "--- /dev/null\n+++ b/a.txt\n@@ -0,0 +1 @@\n+hi\n"
)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def hub_settings(tmp_path: Path) -> HubSettings:
    """A hub with two API keys (two principals)."""
    return HubSettings(  # type: ignore[call-arg]
        _env_file=None,
        HUB_PORT=0,
        HUB_DB=tmp_path / "hub.db",
        HUB_TOKEN=NODE_TOKEN,
        HUB_API_KEYS=f"{KEY_A},{KEY_B}",
        HUB_EXECUTOR_GRACE_S=2.0,
        HUB_KEEPALIVE_S=0.5,
    )


@pytest.fixture
async def executor(hub: Any) -> AsyncIterator[FakeExecutor]:
    node = FakeExecutor(ws_url(hub), executor_hello(token=NODE_TOKEN))
    await node.connect()
    try:
        yield node
    finally:
        await node.close()


@pytest.fixture
async def http(hub: Any) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(hub.url) as session:
        yield session


async def test_the_repository_reaches_the_executor_and_the_diff_only_its_own_key(
    http: aiohttp.ClientSession, executor: FakeExecutor
) -> None:
    """repo and open_pr of POST /api/runs arrive in the assign frame with the session
    key; the run's workspace event is served at /diff to its key, 404 to another's."""
    async with http.post(
        "/api/runs",
        json={"prompt": "fix it", "repo": "acme/widgets@dev", "open_pr": True},
        headers=auth(KEY_A),
    ) as response:
        assert response.status == 202, await response.text()
        run = (await response.json())["run"]
    assign = await executor.wait_type("assign", run_id=run["id"])
    assert assign["repo"] == "acme/widgets@dev" and assign["open_pr"] is True
    assert assign["session_key"] == run["session_key"]
    await executor.event(
        run["id"],
        1,
        kind="workspace",
        summary="github.com/acme/widgets codex/fix-it-123456: 1 file changed, +1 -0",
        repo="github.com/acme/widgets",
        branch="codex/fix-it-123456",
        base_branch="dev",
        base="abc",
        changes="1 file changed, +1 -0",
        run_changes="1 file changed, +1 -0",
        files=["a.txt"],
        diff=DIFF,
        run_diff=DIFF,
        truncated=False,
        pushed=None,
        pr_url="https://github.example/acme/widgets/pull/1",
        push_error=None,
    )
    await executor.finish(run["id"])
    await executor.wait_type("result_ack", run_id=run["id"])

    async with http.get(f"/api/runs/{run['id']}/diff", headers=auth(KEY_A)) as response:
        assert response.status == 200, await response.text()
        body = await response.json()
    assert body["diff"] == body["run_diff"] == DIFF
    assert body["branch"] == "codex/fix-it-123456" and body["changes"] == "1 file changed, +1 -0"
    assert body["pr_url"] == "https://github.example/acme/widgets/pull/1"

    async with http.get(f"/api/runs/{run['id']}/diff", headers=auth(KEY_B)) as response:
        assert response.status == 404
        assert "a.txt" not in await response.text()


async def test_a_run_without_a_workspace_has_no_diff(
    http: aiohttp.ClientSession, executor: FakeExecutor
) -> None:
    """A run that recorded no workspace is answered 404 no_diff at /diff."""
    async with http.post("/api/runs", json={"prompt": "hello"}, headers=auth(KEY_A)) as response:
        run = (await response.json())["run"]
    assign = await executor.wait_type("assign", run_id=run["id"])
    assert assign["repo"] is None and assign["open_pr"] is False
    await executor.finish(run["id"])
    await executor.wait_type("result_ack", run_id=run["id"])
    async with http.get(f"/api/runs/{run['id']}/diff", headers=auth(KEY_A)) as response:
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "no_diff"


async def test_the_chat_api_names_the_repository_by_header_or_metadata(
    http: aiohttp.ClientSession, executor: FakeExecutor
) -> None:
    """X-Repo (else metadata.repo) and X-Open-PR reach the executor; a repo of two words
    is refused with invalid_repo."""

    async def ask(prompt: str, headers: dict[str, str], **extra: Any) -> dict[str, Any]:
        body = {"model": "codex", "messages": [{"role": "user", "content": prompt}], **extra}
        call = asyncio.create_task(
            http.post("/v1/chat/completions", json=body, headers={**auth(KEY_A), **headers})
        )
        assign = await executor.wait_type("assign", prompt=prompt)
        await executor.finish(assign["run_id"])
        async with await call as response:
            assert response.status == 200, await response.text()
        return assign

    assign = await ask("one", {"X-Open-PR": "true"}, metadata={"repo": "acme/meta"})
    assert assign["repo"] == "acme/meta" and assign["open_pr"] is True
    assign = await ask("two", {"X-Repo": "acme/header"})
    assert assign["repo"] == "acme/header" and assign["open_pr"] is False
    async with http.post(
        "/api/runs", json={"prompt": "x", "repo": "acme/a b"}, headers=auth(KEY_A)
    ) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "invalid_repo"
