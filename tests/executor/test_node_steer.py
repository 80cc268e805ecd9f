"""The executor node's side of a ``steer``: it always answers ``steered``, saying why not."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from executor.node import ExecutorNode, _RunState
from executor.pipeline import Job
from tests.executor.test_node_frames import SentTexts, offline_node
from wire import SteerFrame


async def steered(node: ExecutorNode, sent: SentTexts, run_id: str) -> dict[str, Any]:
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
    async with offline_node(tmp_path, EXEC_ENGINE="exec") as (node, sent):
        running(node, "run_1")
        answer = await steered(node, sent, "run_1")
    assert answer["type"] == "steered" and answer["ok"] is False
    assert answer["steer_id"] == "st1" and "exec" in answer["error"]


async def test_a_steer_of_a_run_the_executor_does_not_have_answers_that_it_ended(
    tmp_path: Path,
) -> None:
    """A run that has ended (or never came) here: not ok, the hub queues the text instead."""
    async with offline_node(tmp_path, EXEC_ENGINE="app-server") as (node, sent):
        answer = await steered(node, sent, "run_gone")
    assert answer["ok"] is False and "ended" in answer["error"]


async def test_a_run_without_a_turn_yet_is_not_steered_and_says_why(tmp_path: Path) -> None:
    """The engine has no turn of that run: its refusal is the answer's error."""
    async with offline_node(tmp_path, EXEC_ENGINE="app-server") as (node, sent):
        running(node, "run_1")
        answer = await steered(node, sent, "run_1")
    assert answer["ok"] is False and "no running turn" in answer["error"]
