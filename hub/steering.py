"""Steering: a message to a conversation whose run is working goes into its running turn.

With ``STEER_MODE=steer`` (the default), a chat message (a bridge's ``submit``) or a
monitor prompt (``POST /api/runs``) into a conversation whose run is working on an
executor of the app-server engine is not queued as a new run: the hub sends that
executor ``steer`` {run_id, steer_id, text}, the executor adds the text to codex's
running turn (``turn/steer``) and answers ``steered`` {ok, error}; the running run
records it in its events (kind ``steer``). A steer that fails (the turn ended
meanwhile, the executor did not answer within :data:`STEER_ANSWER_S`) falls back to
queueing the message as a new run, whose first note says why. ``STEER_MODE=queue``,
a run on an executor of the exec engine, a run not yet working (queued, optimizing) or
a message with attachments, asking for a pull request or naming a target (``@label``):
queued, as before. Requests over ``/v1`` are always queued (each is its own turn with
its own answer).

A chat platform that sends a message again (a bridge restarted before it was
acknowledged) is not steered twice: the dedupe keys of the messages steered lately are
remembered (:data:`STEERED_MEMORY`, in memory: a hub restart forgets them).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from wire import SteeredFrame, SteerFrame

log = logging.getLogger(__name__)

#: How long the hub waits for an executor's ``steered`` (the executor gives up first,
#: and a bridge waits 10 s for its ``submitted``: the fallback must reach it in time).
STEER_ANSWER_S = 6.0
#: The run states a steer goes into: codex's turn is under way.
STEERABLE_STATES = frozenset({"running", "awaiting_approval"})
#: The engine that can steer a running turn.
STEERING_ENGINE = "app-server"
#: Dedupe keys of steered messages remembered, so a re-sent message is not steered twice.
STEERED_MEMORY = 1000


@dataclass(frozen=True)
class Steered:
    """How a steer went: ``run_id`` is the running run; ``error`` None when it took."""

    run_id: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def note(self) -> str:
        """The note the new run records when the steer failed."""
        return (
            f"This message was meant for the running turn of run {self.run_id}, but it "
            f"could not be added ({self.error}), so it runs as a new request."
        )


class Steering:
    """Sends ``steer`` frames and matches the executors' ``steered`` answers."""

    def __init__(self, router: Any) -> None:
        # The hub.router.Router that owns this (not imported: it imports this module).
        self.router = router
        #: steer id -> (the answer awaited, the executor asked, the run).
        self._waiting: dict[str, tuple[asyncio.Future[SteeredFrame], str, str]] = {}
        self._steered: OrderedDict[str, str] = OrderedDict()

    def target(self, session_key: str | None) -> str | None:
        """The run a message to ``session_key`` would steer now (None: queue it)."""
        router = self.router
        if router.settings.steer_mode != "steer" or not session_key:
            return None
        run_id = router.session_active.get(session_key)
        live = router.live.get(run_id) if run_id else None
        if live is None or live.finishing or live.cancel_requested:
            return None
        run = live.run
        if run.state not in STEERABLE_STATES or run.executor is None:
            return None
        node = router.executors.get(run.executor)
        if node is None or node.engine != STEERING_ENGINE:
            return None
        return run.id

    def already(self, dedupe_key: str | None) -> str | None:
        """The run a message with ``dedupe_key`` was steered into lately, if it was."""
        return self._steered.get(dedupe_key) if dedupe_key else None

    async def steer(
        self, session_key: str | None, text: str, *, dedupe_key: str | None = None
    ) -> Steered | None:
        """Add ``text`` to the running turn of the session's run; None when it is not
        for steering (see the module docstring), else how it went."""
        run_id = self.target(session_key)
        if run_id is None:
            return None
        if dedupe_key is not None and await self.router._by_dedupe_key(dedupe_key, False):
            return None  # this message started a run already: it is no steer
        run_id = self.target(session_key)  # asked again: the store was awaited
        live = self.router.live.get(run_id) if run_id else None
        node = self.router.executors.get(live.run.executor or "") if live else None
        if live is None or node is None:
            return None
        steer_id = f"steer_{secrets.token_hex(8)}"
        future: asyncio.Future[SteeredFrame] = asyncio.get_running_loop().create_future()
        self._waiting[steer_id] = (future, node.link.node_id, live.run.id)
        run_id = live.run.id
        try:
            node.link.send(SteerFrame(run_id=run_id, steer_id=steer_id, text=text).dump())
            async with asyncio.timeout(STEER_ANSWER_S):
                answer = await future
        except TimeoutError:
            result = Steered(run_id, f"the executor did not answer within {STEER_ANSWER_S:g} s")
        else:
            result = Steered(run_id, None if answer.ok else answer.error or "refused")
        finally:
            self._waiting.pop(steer_id, None)
        if result.ok and dedupe_key is not None:
            self._steered[dedupe_key] = run_id
            while len(self._steered) > STEERED_MEMORY:
                self._steered.popitem(last=False)
        log.info(
            "run %s: a message %s",
            run_id,
            "was added to its running turn" if result.ok else f"could not steer: {result.error}",
            extra={"run_id": run_id},
        )
        return result

    def answered(self, node_id: str, frame: SteeredFrame) -> None:
        """An executor's ``steered``: wakes the steer waiting for it, when it is the
        answer of the executor asked, about that run (late or stray ones are dropped)."""
        waiting = self._waiting.get(frame.steer_id)
        if waiting is None:
            return
        future, asked, run_id = waiting
        if asked == node_id and run_id == frame.run_id and not future.done():
            future.set_result(frame)

    def close(self) -> None:
        """Give up every steer still waiting (the hub stops): each falls back as if refused."""
        for steer_id, (future, _, run_id) in self._waiting.items():
            if not future.done():
                stopping = "the hub is shutting down"
                future.set_result(
                    SteeredFrame(run_id=run_id, steer_id=steer_id, ok=False, error=stopping)
                )
        self._waiting.clear()
