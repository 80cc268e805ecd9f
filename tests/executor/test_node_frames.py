"""What the executor node sends the hub for a run, and what a run costs it in tasks.

The node builds a run's frames as plain dicts and encodes each once (issue #19): the hub
must get, frame for frame and byte for byte, what the wire models give, with every
registered secret masked (a dry run echoes the prompt, which may hold one).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from websockets.asyncio.server import serve

from executor.factory import build_pipeline
from executor.node import ExecutorNode
from executor.pipeline import Job, Result
from executor.settings import ExecutorSettings
from kernel import logs
from tests.kernel.test_node_client import Hub, tasks_started
from wire import (
    AssignFrame,
    EventFrame,
    LoginState,
    ResultAckFrame,
    ResultFrame,
    StateFrame,
    encode_frame,
)

SECRET = "canary-exec-secret-8d7c6b5a"
GITHUB = "ghp_" + "a1B2" * 9
USAGE = {"input_tokens": 0, "cached_input_tokens": 0, "output_tokens": 0}


class SentTexts:
    """Stands in for the node's hub connection: keeps each frame as the hub would read it."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def send(self, frame: Any) -> bool:
        self.texts.append(frame if isinstance(frame, str) else encode_frame(frame))
        return True

    @property
    def frames(self) -> list[dict[str, Any]]:
        """What was sent, decoded."""
        return [json.loads(text) for text in self.texts]


@pytest.fixture(autouse=True)
def no_secrets() -> Iterator[None]:
    """Secrets registered by a test are forgotten after it."""
    logs.forget_secrets()
    yield
    logs.forget_secrets()


def settings_of(
    tmp_path: Path, hub_url: str = "ws://127.0.0.1:9/ws", **env: Any
) -> ExecutorSettings:
    return ExecutorSettings(
        _env_file=None,  # type: ignore[call-arg]
        HUB_URL=hub_url,
        EXEC_WORKDIR=tmp_path,
        EXEC_DRY_RUN=True,
        **env,
    )


@asynccontextmanager
async def offline_node(tmp_path: Path, **env: Any) -> AsyncIterator[tuple[ExecutorNode, SentTexts]]:
    """A dry-run node (with settings ``env``) whose hub connection is a :class:`SentTexts`."""
    pipeline, transport = build_pipeline(settings_of(tmp_path, **env))
    node = ExecutorNode(pipeline.settings, pipeline)
    sent = SentTexts()
    node.client = sent  # type: ignore[assignment]
    try:
        yield node, sent
    finally:
        await pipeline.aclose()
        await transport.close()


async def dry_run(node: ExecutorNode, run_id: str, prompt: str) -> None:
    """Hand the node an assign frame and wait for the run to end."""
    node._on_frame(AssignFrame(run_id=run_id, prompt=prompt))
    task = node.runs[run_id].task
    assert task is not None
    await task


def expected_frames(run_id: str, prompt: str, event_prompt: str | None = None) -> list[str]:
    """A dry run's frames as the wire models give them, encoded as the wire does."""
    item = {"id": "item_0", "type": "agent_message", "text": event_prompt or prompt}
    event = {
        "kind": "codex",
        "data": {"type": "item.completed", "item": item},
        "summary": "answered (dry run)",
    }
    frames = [
        StateFrame(run_id=run_id, state="running", effective_prompt=prompt),
        EventFrame(run_id=run_id, seq=1, event=event),
        ResultFrame(
            run_id=run_id,
            status="succeeded",
            answer=prompt,
            thread_id=None,
            usage=USAGE,
            error=None,
            effective_prompt=prompt,
        ),
    ]
    return [encode_frame(frame.dump()) for frame in frames]


async def test_a_dry_run_sends_what_the_wire_models_give_byte_for_byte(tmp_path: Path) -> None:
    """A dry run's state, event and result frames are, in that order, the encoded dump()
    of their wire models, and a reconnect re-sends exactly those texts."""
    prompt = 'say "hi" \\ ünïcode \u2028 and 12:30'
    async with offline_node(tmp_path) as (node, sent):
        await dry_run(node, "r-1", prompt)
        assert sent.texts == expected_frames("r-1", prompt)
        first = list(sent.texts)
        sent.texts.clear()
        await node._on_connect()  # the hub came back before it acknowledged the result
        assert sent.texts == first
        node._on_frame(ResultAckFrame(run_id="r-1"))
        assert node.runs == {}


async def test_a_dry_run_masks_a_registered_secret_the_prompt_holds_in_every_frame(
    tmp_path: Path,
) -> None:
    """The prompt echoed by a dry run has the process's secrets and well-known credentials
    masked in every frame; a Bearer word is masked in the event only (codex's output),
    not in the prompt and answer (someone's text)."""
    logs.register_secret(SECRET)
    prompt = f"use {SECRET} and {GITHUB} with Bearer abcdefghijkl"
    in_text = "use *** and ghp_*** with Bearer abcdefghijkl"
    in_event = "use *** and ghp_*** with Bearer ***"
    async with offline_node(tmp_path) as (node, sent):
        await dry_run(node, "r-2", prompt)
        assert sent.texts == expected_frames("r-2", in_text, event_prompt=in_event)
        await node._on_connect()
    assert len(sent.texts) == 6
    assert not [text for text in sent.texts if SECRET in text or GITHUB in text]


async def test_a_secret_escaped_in_json_is_masked_too(tmp_path: Path) -> None:
    """A registered secret holding characters JSON escapes is found in the encoded frame
    and masked."""
    odd = 'odd"secret\\with-quotes-42'
    logs.register_secret(odd)
    async with offline_node(tmp_path) as (node, sent):
        await dry_run(node, "r-3", f"key={odd}!")
    assert sent.texts == expected_frames("r-3", "key=***!")


# --- tasks per run, against a hub on a socket ------------------------------------------


class FakeHub(Hub):
    """A hub on 127.0.0.1 that welcomes one executor, sends it what the test says and
    reads the frames of its messages one by one."""

    def __init__(self) -> None:
        super().__init__()
        self._frames: list[dict[str, Any]] = []

    async def send(self, *frames: dict[str, Any]) -> None:
        """Send ``frames`` in one message (a batch)."""
        await super().send(list(frames))

    async def frames(self, kind: str, count: int) -> list[dict[str, Any]]:
        """The next ``count`` frames of type ``kind`` (others are skipped)."""
        out: list[dict[str, Any]] = []
        async with asyncio.timeout(10):
            while len(out) < count:
                if not self._frames:
                    data = json.loads(await self.got.get())
                    self._frames = data if isinstance(data, list) else [data]
                frame = self._frames.pop(0)
                if frame["type"] == kind:
                    out.append(frame)
        return out


@asynccontextmanager
async def fake_hub() -> AsyncIterator[FakeHub]:
    hub = FakeHub()
    async with serve(hub._serve, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        hub.url = f"ws://127.0.0.1:{port}/ws"
        yield hub


async def test_a_run_costs_the_executor_one_task_and_its_frames_from_the_hub_none(
    tmp_path: Path,
) -> None:
    """Each assigned run gets one task on the executor; the frames the hub sends (assign,
    result_ack) are handled as they come, without a task each, in order."""
    async with fake_hub() as hub:
        pipeline, transport = build_pipeline(settings_of(tmp_path, hub.url))
        try:
            async with ExecutorNode(pipeline.settings, pipeline) as node:
                async with asyncio.timeout(10):
                    await hub.joined.wait()
                    await node.client.connected.wait()
                runs = [f"r-{i}" for i in range(5)]
                with tasks_started() as started:
                    await hub.send(*(AssignFrame(run_id=r, prompt=f"p {r}").dump() for r in runs))
                    results = await hub.frames("result", len(runs))
                    # The acks, then a steer of a run that ended: its answer comes after
                    # the acks were handled.
                    acks = [ResultAckFrame(run_id=r).dump() for r in runs]
                    steer = {"type": "steer", "run_id": "r-0", "steer_id": "s", "text": "t"}
                    await hub.send(*acks, steer)
                    [steered] = await hub.frames("steered", 1)
                assert [r["run_id"] for r in results] == runs
                assert steered["ok"] is False and node.runs == {}
                assert started == ["ExecutorNode._execute"] * len(runs) + ["ExecutorNode._steer"]
        finally:
            await pipeline.aclose()
            await transport.close()


async def test_events_orjson_cannot_write_as_they_are_go_through_the_model_as_before(
    tmp_path: Path,
) -> None:
    """An event that is a mapping but not a dict, or holds a model, is sent as
    EventFrame's dump() makes it, as when every frame went through the model."""
    login = LoginState(logged_in=True, detail="ok")
    events: list[Any] = [MappingProxyType({"kind": "note", "n": 1}), {"kind": "x", "m": login}]

    async def run(job: Job, emit: Any, set_state: Any) -> Result:
        set_state("running", job.prompt)
        for event in events:
            emit(event)
        return Result(status="succeeded", answer="a", effective_prompt=job.prompt)

    async with offline_node(tmp_path) as (node, sent):
        node.pipeline.run = run  # type: ignore[method-assign]
        await dry_run(node, "r-4", "p")
    expected = [
        encode_frame(EventFrame(run_id="r-4", seq=seq, event=event).dump())
        for seq, event in enumerate(events, start=1)
    ]
    assert sent.texts[1:3] == expected
    assert json.loads(sent.texts[2])["event"]["m"] == {"logged_in": True, "detail": "ok"}
