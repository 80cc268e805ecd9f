"""The real codex works in the conversation's worktree, with either engine.

The stub model makes codex run a command that writes a file; the run's recorded diff
shows it on the conversation's codex/ branch, and the reply says so.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from executor.factory import make_engine
from executor.pipeline import Job, Pipeline
from executor.settings import ExecutorSettings
from executor.transport_local import LocalTransport
from executor.workspace import Workspaces
from testkit.fakes.git_server import GitHttpServer
from testkit.fakes.model_server import StubModelServer

pytestmark = pytest.mark.codex


@pytest.mark.parametrize("engine", ["exec", "app-server"])
async def test_codex_edits_the_conversations_worktree_with_either_engine(
    engine: str,
    executor_settings: Callable[..., ExecutorSettings],
    codex_home: Path,
    codex_bin: str,
    model_server: StubModelServer,
    git_server: GitHttpServer,
    tmp_path: Path,
) -> None:
    """codex runs in the run's worktree (not EXEC_WORKDIR): the file its command wrote
    is in the recorded diff, and the reply names the repository and branch."""
    git_server.make_repo("acme/widgets", {"README.md": "widgets\n"})
    settings = executor_settings(
        codex_bin=codex_bin,
        codex_home=codex_home,
        exec_engine=engine,
        workspace_root=tmp_path / "ws",
        workspace_allow_protocols="http",
    )
    model_server.reply_exec("echo made by codex > made.txt", then="wrote it")
    transport = LocalTransport()
    events: list[dict[str, Any]] = []
    pipeline = Pipeline(
        settings, make_engine(settings, transport), None, Workspaces(settings, transport)
    )
    try:
        result = await pipeline.run(
            Job(
                run_id="r1",
                prompt="write the file",
                session_key="s",
                repo=git_server.url("acme/widgets"),
            ),
            events.append,
            lambda *_: None,
        )
    finally:
        await pipeline.aclose()
        await transport.close()
    assert result.status == "succeeded", result
    (event,) = [e for e in events if e["kind"] == "workspace"]
    assert event["files"] == ["made.txt"]
    assert "+made by codex" in event["diff"]
    assert not (Path(settings.exec_workdir) / "made.txt").exists()
    assert result.answer.startswith("wrote it")
    assert f"branch {event['branch']} (from main): 1 file changed, +1 -0" in result.answer
