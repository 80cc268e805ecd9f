"""The bridge core's contract, on a small in-memory adapter (see bridges/ADAPTERS.md).

`ToyBridge` is the least a platform's adapter writes; `ToyChat` is its platform, kept in
memory so that each test can see every post, edit and "typing…" and make a post fail.
The hub and the executor are the tests' own (the `hub` fixture, a `FakeExecutor`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from bridges.common import ATTACHMENT_ONLY_PROMPT, Attachment, AttachmentRefused
from bridges.core import (
    ChatBridge,
    Reply,
    Sent,
    Shown,
    StatusTiming,
    Texts,
    Undeliverable,
)
from bridges.hub_link import HubError
from bridges.settings import BridgeSettings
from hub.appkeys import STORE
from testkit.fakes.nodes import FakeExecutor
from tests.conftest import NODE_TOKEN, outbox_drained, ws_url

ROOM = "lobby"


@dataclass(frozen=True)
class Spot:
    """Where a conversation is on the toy platform: a room, and the request's message."""

    room: str
    message: str

    @classmethod
    def from_origin(cls, origin: dict[str, Any]) -> Spot | None:
        if origin.get("platform") != "toy":
            return None
        return cls(str(origin.get("room")), str(origin.get("message")))

    def to_origin(self) -> dict[str, Any]:
        return {"platform": "toy", "room": self.room, "message": self.message}


@dataclass
class Post:
    """One message the bot posted, and the texts it was edited to."""

    id: int
    room: str
    text: str
    edits: list[str] = field(default_factory=list)


class ToyDown(Exception):
    """The toy platform is down for now."""


class ToyUndeliverable(Undeliverable):
    """The toy platform refuses a message for good."""


class ToyChat:
    """The toy platform: everything the bot did, in order, and failures to inject."""

    def __init__(self) -> None:
        self.posts: list[Post] = []
        #: ("post" | "edit" | "typing" | "closed", post id or 0), in the order they happened.
        self.log: list[tuple[str, int]] = []
        #: Raised by the next part posts, one each.
        self.failures: list[Exception] = []
        self._changed = asyncio.Event()

    def post(self, room: str, text: str) -> Post:
        post = Post(len(self.posts) + 1, room, text)
        self.posts.append(post)
        self._note("post", post.id)
        return post

    def edit(self, post_id: int, text: str) -> None:
        self.posts[post_id - 1].edits.append(text)
        self._note("edit", post_id)

    def typing(self) -> None:
        self._note("typing", 0)

    def closed(self) -> None:
        self._note("closed", 0)

    def texts(self) -> list[str]:
        return [p.text for p in self.posts]

    def _note(self, what: str, post_id: int) -> None:
        self.log.append((what, post_id))
        self._changed.set()

    async def wait_until(self, done: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                self._changed.clear()
                await self._changed.wait()


class ToyBridge(ChatBridge[Spot]):
    """The least an adapter writes: its API calls, its formats, its targets."""

    PLATFORM = "toy"
    PLATFORM_NAME = "Toy"
    REFUSED = (PermissionError,)
    CALL_ERRORS = (ToyDown,)
    KEEP_ALIVE = True
    texts = Texts(
        kept=lambda: "kept for later",
        hub_error=lambda code, message: f"the hub refused: {code}",
        cancel=lambda runs: f"cancelling {', '.join(runs) or 'nothing'}",
        status=lambda state, detail, run_id, position: f"{state} {detail} #{position} {run_id}",
    )

    def __init__(self, settings: BridgeSettings, chat: ToyChat, timing: StatusTiming) -> None:
        super().__init__(settings, node_id="toy-bridge", status=timing)
        self.chat = chat
        #: (status message id, answered) of every request closed after its reply.
        self.closed: list[tuple[Any, bool]] = []
        self.refused: list[Spot] = []

    async def connect(self) -> None:
        return None

    def target_of(self, origin: dict[str, Any]) -> Spot | None:
        return Spot.from_origin(origin)

    def session_key(self, target: Spot) -> str:
        return f"toy:{target.room}"

    def place(self, target: Spot) -> str:
        return target.room

    def where(self, target: Spot) -> str:
        return f"room {target.room}"

    async def send_notice(self, target: Spot, text: str) -> None:
        self.chat.post(target.room, text)

    async def post_status(self, run_id: str, target: Spot, text: str) -> Shown:
        return Shown(ref=self.chat.post(target.room, text).id)

    async def edit_status(self, target: Spot, ref: Any, text: str) -> Shown:
        self.chat.edit(ref, text)
        return Shown()

    async def keep_alive(self, target: Spot) -> float:
        self.chat.typing()
        return 0.05

    def reply_parts(self, reply: Reply, target: Spot) -> list[Any]:
        return reply.answer.split("|")

    def diff_part(self, diff: str, run_id: str) -> Any:
        return f"diff of {run_id}: {diff}"

    def open_pr_part(self, run_id: str) -> Any:
        return f"open a pull request for {run_id}?"

    async def post_part(self, target: Spot, run_id: str, part: Any, index: int, count: int) -> Any:
        if self.chat.failures:
            raise self.chat.failures.pop(0)
        return self.chat.post(target.room, str(part)).id

    async def undeliverable(self, target: Spot, reply: Reply, exc: Undeliverable) -> None:
        await self.say(target, f"refused for good: {exc}")

    async def close_request(self, target: Spot, reply: Reply, sent: Sent, answered: bool) -> None:
        self.closed.append((sent.status, answered))
        self.chat.closed()

    async def on_refused(self, target: Spot) -> None:
        self.refused.append(target)


@pytest.fixture
async def executor(hub: Any, fake_executor: Any) -> AsyncIterator[FakeExecutor]:
    """A FakeExecutor connected to the hub: runs progress only when the test says so."""
    async with fake_executor(ws_url(hub), token=NODE_TOKEN) as ex:
        yield ex


@asynccontextmanager
async def toy_bridge(
    hub_url: str, chat: ToyChat, *, delay: float = 60.0, while_waiting: bool = False, **env: Any
) -> AsyncIterator[ToyBridge]:
    """A started ToyBridge on the toy chat, joined to the hub at ``hub_url``."""
    settings = BridgeSettings(_env_file=None, HUB_URL=hub_url, HUB_TOKEN=NODE_TOKEN, **env)  # type: ignore[call-arg, arg-type]
    timing = StatusTiming(delay=delay, interval=0.05, while_waiting=while_waiting)
    async with ToyBridge(settings, chat, timing) as bridge:
        yield bridge


async def ask(bridge: ToyBridge, prompt: str, message: str = "m1") -> str:
    """Start a run in the lobby; its run id."""
    submitted = await bridge.start_run(
        Spot(ROOM, message),
        prompt,
        origin=Spot(ROOM, message).to_origin(),
        optimize=None,
        dedupe_key=None,
    )
    assert submitted is not None
    return submitted.run_id


async def test_a_reply_is_posted_part_by_part_with_its_diff_then_acknowledged(
    hub: Any, executor: FakeExecutor
) -> None:
    """The answer's parts, the diff and the pull-request offer are posted in order; the
    hub's outbox is then empty and the request closed as answered."""
    chat = ToyChat()
    async with toy_bridge(f"ws://127.0.0.1:{hub.port}/ws", chat) as bridge:
        await bridge.link.client.connected.wait()
        run_id = await ask(bridge, "show me")
        await executor.wait_type("assign", prompt="show me")
        await executor.event(run_id, 1, kind="workspace", summary="1 file", diff="+x")
        await executor.finish(run_id, "one|two")
        await chat.wait_until(lambda: len(chat.posts) == 4)
        await outbox_drained(hub.app[STORE])
        await chat.wait_until(lambda: bool(bridge.closed))
    assert chat.texts() == [
        "one",
        "two",
        f"diff of {run_id}: +x",
        f"open a pull request for {run_id}?",
    ]
    assert bridge.closed == [(None, True)]


async def test_a_part_that_fails_for_now_is_posted_when_the_hub_sends_the_reply_again(
    hub: Any, executor: FakeExecutor
) -> None:
    """A part the platform does not take now leaves the reply unacknowledged; the re-sent
    reply posts only the parts still missing."""
    chat = ToyChat()
    async with toy_bridge(f"ws://127.0.0.1:{hub.port}/ws", chat) as bridge:
        await bridge.link.client.connected.wait()
        run_id = await ask(bridge, "three parts")
        await executor.wait_type("assign", prompt="three parts")
        chat.failures = [ToyDown("down for a moment")]
        await executor.finish(run_id, "a|b|c")
        await chat.wait_until(lambda: len(chat.posts) == 3, timeout=30)
        await outbox_drained(hub.app[STORE], timeout=30)
    assert chat.texts() == ["a", "b", "c"]


async def test_a_reply_refused_for_good_is_said_and_acknowledged(
    hub: Any, executor: FakeExecutor
) -> None:
    """An Undeliverable part ends the delivery: the chat is told, the hub's outbox empties,
    and the request is closed as not answered."""
    chat = ToyChat()
    async with toy_bridge(f"ws://127.0.0.1:{hub.port}/ws", chat) as bridge:
        await bridge.link.client.connected.wait()
        run_id = await ask(bridge, "odd one")
        await executor.wait_type("assign", prompt="odd one")
        chat.failures = [ToyUndeliverable("no such room")]
        await executor.finish(run_id, "never shown")
        await chat.wait_until(lambda: bool(bridge.closed))
        await outbox_drained(hub.app[STORE])
    assert chat.texts() == ["refused for good: no such room"]
    assert bridge.closed == [(None, False)]


async def test_the_status_message_follows_progress_and_is_closed_before_the_reply(
    hub: Any, executor: FakeExecutor
) -> None:
    """A working run gets "typing…" and, after the delay, a status message edited with its
    progress; nothing touches it once the reply is being posted."""
    chat = ToyChat()
    async with toy_bridge(f"ws://127.0.0.1:{hub.port}/ws", chat, delay=0.1) as bridge:
        await bridge.link.client.connected.wait()
        run_id = await ask(bridge, "work a while")
        await executor.wait_type("assign", prompt="work a while")
        await executor.start_run(run_id)
        await chat.wait_until(lambda: any(p.text.startswith("running") for p in chat.posts))
        [status] = chat.posts
        await executor.event(run_id, 1, summary="reading files")
        await chat.wait_until(lambda: any("reading files" in e for e in status.edits))
        await executor.finish(run_id, "done")
        await chat.wait_until(lambda: bool(bridge.closed))
    assert ("typing", 0) in chat.log
    assert chat.texts() == [status.text, "done"]
    assert bridge.closed == [(status.id, True)]
    answer_at = chat.log.index(("post", 2))
    assert ("edit", status.id) not in chat.log[answer_at:]


async def test_a_quick_run_is_answered_without_a_status_message(
    hub: Any, executor: FakeExecutor
) -> None:
    """A run answered within the status delay never gets a status message."""
    chat = ToyChat()
    async with toy_bridge(f"ws://127.0.0.1:{hub.port}/ws", chat, delay=60.0) as bridge:
        await bridge.link.client.connected.wait()
        run_id = await ask(bridge, "quick")
        await executor.wait_type("assign", prompt="quick")
        await executor.start_run(run_id)
        await executor.finish(run_id, "fast")
        await chat.wait_until(lambda: bool(bridge.closed))
    assert chat.texts() == ["fast"]
    assert bridge.closed == [(None, True)]


async def test_a_run_waiting_behind_another_shows_its_place_at_once_when_the_platform_wants(
    hub: Any, executor: FakeExecutor
) -> None:
    """With ``while_waiting`` a queued run's status message names its place in the queue
    at once, without waiting for the status delay."""
    chat = ToyChat()
    async with toy_bridge(
        f"ws://127.0.0.1:{hub.port}/ws", chat, delay=60.0, while_waiting=True
    ) as bridge:
        await bridge.link.client.connected.wait()
        first = await ask(bridge, "first", "m1")
        await executor.wait_type("assign", prompt="first")
        second = await ask(bridge, "second", "m2")
        await chat.wait_until(lambda: any(second in p.text for p in chat.posts))
        [waiting] = [p for p in chat.posts if second in p.text]
        assert waiting.text == f"queued  #1 {second}"
        await executor.finish(first, "first done")
        await chat.wait_until(lambda: "first done" in chat.texts())


async def test_a_request_the_hub_refuses_is_explained_in_the_chat(unreachable_port: int) -> None:
    """A request neither taken nor kept (the hub is away, nothing may be kept) is answered
    with the hub's reason, marked refused, and gets no status."""
    chat = ToyChat()
    url = f"ws://127.0.0.1:{unreachable_port}/ws"
    async with toy_bridge(url, chat, BRIDGE_PENDING_MAX=0) as bridge:
        submitted = await bridge.start_run(
            Spot(ROOM, "m1"),
            "hello",
            origin=Spot(ROOM, "m1").to_origin(),
            optimize=None,
            dedupe_key=None,
        )
        assert submitted is None
        assert bridge.refused == [Spot(ROOM, "m1")]
        assert bridge._runs == {}
    assert chat.texts() == ["the hub refused: hub_unreachable"]


async def test_a_message_s_files_become_attachments_and_a_refused_one_is_said(
    unreachable_port: int,
) -> None:
    """A message's files become the submit's attachments (files alone ask about
    themselves); a file that may not be attached is said in the chat instead."""

    async def files() -> list[Attachment]:
        return [Attachment("notes.txt", "text/plain", b"hi")]

    async def refused() -> list[Attachment]:
        raise AttachmentRefused("notes.txt was not used: it is too big.")

    chat = ToyChat()
    spot = Spot(ROOM, "m1")
    async with toy_bridge(f"ws://127.0.0.1:{unreachable_port}/ws", chat) as bridge:
        attached = {"files": [{"name": "notes.txt", "data": "aGk="}]}
        assert await bridge.attach(spot, "", files()) == (ATTACHMENT_ONLY_PROMPT, attached)
        assert await bridge.attach(spot, "read it", files()) == ("read it", attached)
        assert await bridge.attach(spot, "read it", refused()) is None
    assert chat.texts() == ["notes.txt was not used: it is too big."]


async def test_a_hub_answer_is_said_its_refusal_explained_and_place_settings_answered(
    unreachable_port: int,
) -> None:
    """What a hub request answers is said, the hub's refusal explained instead, and the
    ``repo`` and ``target`` commands set the place's repository and target."""

    async def answered() -> str:
        return "fresh start"

    async def refused() -> str:
        raise HubError("busy", "not now")

    chat = ToyChat()
    spot = Spot(ROOM, "m1")
    async with toy_bridge(f"ws://127.0.0.1:{unreachable_port}/ws", chat) as bridge:
        await bridge.answer(spot, answered())
        await bridge.answer(spot, refused())
        await bridge.set_repo(spot, "acme/widgets")
        await bridge.set_run_target(spot, "@gpu")
        assert bridge.repos.get(ROOM) == "acme/widgets"
        assert bridge.run_targets.get(ROOM) == "gpu"
    texts = chat.texts()
    assert texts[:2] == ["fresh start", "the hub refused: busy"]
    assert "acme/widgets" in texts[2] and "gpu" in texts[3]


async def test_cancel_says_which_run_it_cancelled(hub: Any, executor: FakeExecutor) -> None:
    """Cancelling a conversation names its active run in the chat."""
    chat = ToyChat()
    async with toy_bridge(f"ws://127.0.0.1:{hub.port}/ws", chat) as bridge:
        await bridge.link.client.connected.wait()
        run_id = await ask(bridge, "long job")
        await executor.wait_type("assign", prompt="long job")
        await executor.start_run(run_id)
        await bridge.cancel(Spot(ROOM, "m9"))
    assert f"cancelling {run_id}" in chat.texts()


async def test_a_steered_message_is_said_once_and_the_status_grows_with_the_answer(
    hub: Any, fake_executor: Any
) -> None:
    """A message into the working conversation is said to join its turn (no new run or
    status); answer deltas grow the run's status message."""
    chat = ToyChat()
    async with (
        fake_executor(ws_url(hub), token=NODE_TOKEN, engine="app-server") as executor,
        toy_bridge(f"ws://127.0.0.1:{hub.port}/ws", chat, delay=0.05) as bridge,
    ):
        await bridge.link.client.connected.wait()
        run_id = await ask(bridge, "work a while")
        await executor.wait_type("assign", prompt="work a while")
        await executor.start_run(run_id)
        await chat.wait_until(lambda: any(p.text.startswith("running") for p in chat.posts))
        [status] = chat.posts
        steering = asyncio.create_task(ask(bridge, "and the docs", "m2"))
        steer = await executor.wait_type("steer")
        await executor.send(
            {"type": "steered", "run_id": run_id, "steer_id": steer["steer_id"], "ok": True}
        )
        assert await steering == run_id
        await executor.event(run_id, 1, kind="answer_delta", item_id="i1", delta="Half way")
        await chat.wait_until(lambda: any(e.endswith("\n\nHalf way") for e in status.edits))
        await executor.finish(run_id, "done")
        await chat.wait_until(lambda: bool(bridge.closed))
    assert steer["text"] == "and the docs"
    assert chat.texts() == [
        status.text,
        f"Added to the running turn of run {run_id}: codex takes it into account now.",
        "done",
    ]
