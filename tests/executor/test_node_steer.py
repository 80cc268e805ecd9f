"""The executor node's side of a ``steer``: it always answers ``steered``, saying why not."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from executor.factory import build_pipeline
from executor.node import ExecutorNode, _RunState
from executor.pipeline import Job
from executor.settings import ExecutorSettings
from wire import SteerFrame


class SentFrames:
    """Stands in for the node's hub connection: keeps what the node sends."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []

    def send(self, frame: Any) -> bool:
        self.frames.append(frame if isinstance(frame, dict) else frame.dump())
        return True


@asynccontextmanager
async def node_of(tmp_path: Path, **env: Any) -> AsyncIterator[tuple[ExecutorNode, SentFrames]]:
    settings = ExecutorSettings(
        _env_file=None,  # type: ignore[call-arg]
        HUB_URL="ws://127.0.0.1:9/ws",
        EXEC_WORKDIR=tmp_path,
        EXEC_DRY_RUN=True,
        **env,
    )
    pipeline, transport = build_pipeline(settings)
    node = ExecutorNode(settings, pipeline)
    sent = SentFrames()
    node.client = sent  # type: ignore[assignment]
    try:
        yield node, sent
    finally:
        await pipeline.aclose()
        await transport.close()


async def steered(node: ExecutorNode, sent: SentFrames, run_id: str) -> dict[str, Any]:
    """Hand the node a steer of ``run_id``; its answer."""
    node._on_frame(SteerFrame(run_id=run_id, steer_id="st1", text="also this"))
    await asyncio.gather(*node._steers)
    [answer] = sent.frames
    return answer


def running(node: ExecutorNode, run_id: str) -> None:
    """The node holds ``run_id`` as a run it was given and has not ended."""
    node.runs[run_id] = _RunState(Job(run_id=run_id, prompt="p"))


async def test_an_engine_that_cannot_steer_answers_so(tmp_path: Path) -> None:
    """The exec engine has no running turn to add to: the answer says which engine it is."""
    async with node_of(tmp_path, EXEC_ENGINE="exec") as (node, sent):
        running(node, "run_1")
        answer = await steered(node, sent, "run_1")
    assert answer["type"] == "steered" and answer["ok"] is False
    assert answer["steer_id"] == "st1" and "exec" in answer["error"]


async def test_a_steer_of_a_run_the_executor_does_not_have_answers_that_it_ended(
    tmp_path: Path,
) -> None:
    """A run that has ended (or never came) here: not ok, the hub queues the text instead."""
    async with node_of(tmp_path, EXEC_ENGINE="app-server") as (node, sent):
        answer = await steered(node, sent, "run_gone")
    assert answer["ok"] is False and "ended" in answer["error"]


async def test_a_run_without_a_turn_yet_is_not_steered_and_says_why(tmp_path: Path) -> None:
    """The engine has no turn of that run: its refusal is the answer's error."""
    async with node_of(tmp_path, EXEC_ENGINE="app-server") as (node, sent):
        running(node, "run_1")
        answer = await steered(node, sent, "run_1")
    assert answer["ok"] is False and "no running turn" in answer["error"]
