"""A run's status message and its ticker: one owned task per run, for every platform.

A run still going is shown in its chat by the bridge: a status message (posted once
the run has worked a while, then edited with its state, the command codex runs and,
with the app-server engine, the end of the answer as codex writes it)
and, on platforms that have one, a keep-alive activity ("typing…"). The bridge core
creates one :class:`RunStatus` per run and feeds it every ``progress`` frame; the
platform's adapter makes the calls (see :class:`StatusCalls`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from kernel.logs import bound

log = logging.getLogger(__name__)

#: How long :meth:`RunStatus.close` lets a call under way finish.
CLOSE_WAIT_S = 60.0


@dataclass(frozen=True)
class Shown:
    """How one post or edit of a status message went (the adapter's answer).

    ``ok``: the text is on the message now (or will never be: do not try it again).
    ``hold``: seconds to wait, at least, before the next try (flood control).
    ``ref``: the message a post created. ``gone``: the message was deleted by someone;
    a new one is posted. ``stop``: this run gets no status message any more.
    ``until_news``: not shown, and tried again only once new progress comes.
    """

    ok: bool = True
    hold: float = 0.0
    ref: Any = None
    gone: bool = False
    stop: bool = False
    until_news: bool = False


#: A status post or edit that did not happen; try again after the edit interval.
NOT_SHOWN = Shown(ok=False)
#: A status edit that did not happen; try again with the next progress (Slack).
NOT_SHOWN_UNTIL_NEWS = Shown(ok=False, until_news=True)


class StatusCalls(Protocol):
    """The platform calls a :class:`RunStatus` makes; each is best effort (never raises)."""

    async def post_status(self, run_id: str, target: Any, text: str) -> Shown: ...

    async def edit_status(self, target: Any, ref: Any, text: str) -> Shown: ...


@dataclass(frozen=True)
class StatusTiming:
    """When a run's status message appears and how often it changes.

    ``delay``: how long a run works before it gets a status message (a quick answer
    comes without one). ``interval``: the least time between two edits.
    ``while_waiting``: a run waiting behind others in its conversation gets its status
    message at once, naming its place (Slack); otherwise nothing is shown until it
    works (Telegram, which answers the submit with its place instead).
    """

    delay: float
    interval: float
    while_waiting: bool = False


class RunStatus:
    """A run still going, as its chat sees it: a status message and a keep-alive.

    One task per run (``<Bridge>:<name>:<run>``) does the platform's side: it renews
    the keep-alive while the run works (``keep_alive`` returns the seconds until the
    next one), posts the status message once the run has worked ``timing.delay`` (at
    once for a waiting run when ``timing.while_waiting``), or first looks for one an
    earlier bridge process posted (``find``, once) or uses the one the hub names
    (:meth:`adopt`), then edits it with the newest text, never more often than
    ``timing.interval``. :meth:`close` lets a call under way finish first (a post, so
    that its message is known and gets the closing touch; a keep-alive, so that it does
    not land after the answer), then ends the task: a late edit never follows the reply.
    """

    def __init__(
        self,
        run_id: str,
        target: Any,
        *,
        task_name: str,
        timing: StatusTiming,
        calls: StatusCalls,
        text: Callable[[str, str, str, int | None], str],
        keep_alive: Callable[[Any], Awaitable[float]] | None = None,
        find: Callable[[], Awaitable[tuple[Any, str] | None]] | None = None,
        with_answer: Callable[[str, str], str] | None = None,
    ) -> None:
        self.run_id = run_id
        self.target = target
        self.timing = timing
        self._calls = calls
        self._text = text
        self._keep_alive = keep_alive
        self._find = find
        self._with_answer = with_answer
        self.state = "queued"
        self.detail = ""
        #: The end of the answer codex is writing (app-server engine); "" until then.
        self.answer = ""
        self.position: int | None = None
        #: The status message once posted, found or adopted; None while there is none.
        self.ref: Any = None
        #: The text the status message shows now.
        self.shown: str | None = None
        #: When the run could first be shown (loop time): the delay counts from here.
        self.since: float | None = None
        self.urgent = False
        self._adopted = False
        self._given_up = False
        self._stalled = False
        self._stopping = False
        self._busy = False
        self._wake = asyncio.Event()
        self.task = asyncio.create_task(self._watch(), name=f"{task_name}:{run_id}")

    def update(
        self,
        state: str | None,
        detail: str | None,
        position: int | None,
        answer: str | None = None,
    ) -> None:
        """Take the latest progress (None keeps what is known); shown when it may be.

        ``answer``: the end of the answer being written; the status message grows with
        it, edited no more often than ``timing.interval`` (the platform's edit limit).
        """
        if answer:
            self.answer = answer
        if state is not None:
            self.state = state
        if detail:
            self.detail = detail
        if position is not None:
            self.position = position
        self._stalled = False
        if self.waiting and self.timing.while_waiting:
            self.urgent = True  # its place in the queue is news: shown at once
        if self.since is None and self.showable:
            # A run that waited in the queue and then finishes fast needs no status
            # message either: the delay counts from when it could be shown.
            self.since = asyncio.get_running_loop().time()
        self._wake.set()

    def adopt(self, ref: Any) -> None:
        """Use ``ref`` as the status message when this run has none (once).

        The hub names the status message an earlier process of this bridge posted; it
        is edited from now on instead of a second one being posted. Once only: if it
        turns out deleted, a new one is posted rather than that one tried again.
        """
        if ref is None or self._adopted or self.ref is not None:
            return
        self._adopted = True
        self.ref = ref
        self._wake.set()

    @property
    def waiting(self) -> bool:
        """True while the run waits behind other runs of its conversation."""
        return self.state == "queued" and bool(self.position)

    @property
    def working(self) -> bool:
        """True when this run is the one working (or next) in its conversation."""
        return not self.waiting

    @property
    def showable(self) -> bool:
        """True when the status message may show this run now."""
        return self.working or self.timing.while_waiting

    def text(self) -> str:
        """The status message as it should read now."""
        position = self.position if self.state == "queued" else None
        status = self._text(self.state, self.detail, self.run_id, position)
        if self.answer and self._with_answer is not None:
            return self._with_answer(status, self.answer)
        return status

    async def close(self, *, wait: bool = True) -> Any:
        """Stop; the status message (its ref), if there is one. Idempotent.

        With ``wait``, a call under way may finish first (each is time-boxed).
        """
        self._stopping = True
        self._wake.set()
        if wait and self._busy:
            await asyncio.wait({self.task}, timeout=CLOSE_WAIT_S)
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        return self.ref

    async def _watch(self) -> None:
        with bound(run_id=self.run_id):
            try:
                await self._tick()
            except Exception:
                # A bug here must not go unnoticed, nor take the reply down with it.
                log.exception("the status message stopped updating")

    def _pending(self) -> bool:
        if self._given_up or self._stalled or not self.showable:
            return False
        return self.text() != self.shown

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        timing = self.timing
        next_alive = loop.time()
        next_show = 0.0
        while not self._stopping:
            self._wake.clear()
            now = loop.time()
            if self._keep_alive is not None and self.working and now >= next_alive:
                self._busy = True
                try:
                    next_alive = now + await self._keep_alive(self.target)
                finally:
                    self._busy = False
            if self.ref is None and self.since is not None:
                # The delay is for posting one; one already there (adopted) is edited.
                due = now if self.urgent else self.since + timing.delay
                next_show = max(next_show, due)
            if self._pending() and now >= next_show:
                if self.ref is None and self._find is not None:
                    # Looked for only once a status message is due: a quick run never
                    # costs a look.
                    find, self._find = self._find, None
                    found = await find()
                    if found is not None:
                        self.ref, self.shown = found
                        self._adopted = True
                text = self.text()
                if text != self.shown:
                    self._busy = True
                    try:
                        shown = await self._show(text)
                    finally:
                        self._busy = False
                    next_show = loop.time() + max(timing.interval, shown.hold)
            wake = math.inf
            if self._keep_alive is not None and self.working:
                wake = next_alive
            if self._pending():
                wake = min(wake, next_show)
            timeout = None if wake == math.inf else max(0.0, wake - loop.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def _show(self, text: str) -> Shown:
        if self.ref is None:
            shown = await self._calls.post_status(self.run_id, self.target, text)
            if shown.ref is not None:
                self.ref = shown.ref
                self._adopted = True  # this process's own from now on: adopt no other
        else:
            shown = await self._calls.edit_status(self.target, self.ref, text)
        if shown.stop:
            self._given_up = True
        elif shown.until_news:
            self._stalled = True
        elif shown.gone:
            self.ref = None
        elif shown.ok:
            self.shown = text
        return shown
