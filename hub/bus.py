"""In-process fan-out of run changes and events to live subscribers.

Every subscriber has its own bounded queue, filled without waiting. A subscriber that
falls behind is dropped (its iterator ends with :class:`Dropped`) and resyncs from the
store; it never slows the publisher or the other subscribers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson

Message = dict[str, Any]


class _Shared(dict[str, Any]):
    """A published message: one object for every subscriber, its JSON made once."""

    __slots__ = ("_json",)

    def json(self) -> str:
        try:
            return self._json
        except AttributeError:
            self._json: str = orjson.dumps(self).decode()
            return self._json


def encode(message: Message) -> str:
    """The message as JSON text, encoded once however many subscribers send it."""
    if isinstance(message, _Shared):
        return message.json()
    return orjson.dumps(message).decode()


class Dropped(Exception):
    """The subscriber fell behind and was dropped; it should reload and resubscribe."""


class Subscription:
    """A bounded queue of bus messages; iterate it, close it when done."""

    def __init__(self, bus: Bus, run_id: str | None, maxsize: int) -> None:
        self._bus = bus
        self.run_id = run_id
        self._queue: asyncio.Queue[Message | None] = asyncio.Queue(maxsize)
        self.dropped = False
        self.closed = False

    def _offer(self, message: Message) -> None:
        if self.closed:
            return
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            self.dropped = True
            self.close()
            # Make room for the wake-up so a waiting reader sees the drop at once.
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(None)

    async def get(self) -> Message:
        """The next message; raises :class:`Dropped` once dropped or closed."""
        if self.closed and self._queue.empty():
            raise Dropped
        message = await self._queue.get()
        if message is None:
            raise Dropped
        return message

    def get_nowait(self) -> Message | None:
        """The next message if one is waiting."""
        try:
            message = self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None
        if message is None:
            raise Dropped
        return message

    def close(self) -> None:
        """Stop receiving messages. Idempotent."""
        if not self.closed:
            self.closed = True
            self._bus._remove(self)

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        try:
            while True:
                yield await self.get()
        except Dropped:
            return

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Bus:
    """Publish run messages to every subscriber, or to those of one run."""

    def __init__(self) -> None:
        self._all: set[Subscription] = set()
        self._by_run: dict[str, set[Subscription]] = {}

    def subscribe(self, run_id: str | None = None, maxsize: int = 1000) -> Subscription:
        """Receive every message (``run_id=None``) or only those of one run."""
        sub = Subscription(self, run_id, maxsize)
        if run_id is None:
            self._all.add(sub)
        else:
            self._by_run.setdefault(run_id, set()).add(sub)
        return sub

    def publish(self, message: Message, run_id: str | None = None) -> None:
        """Hand ``message`` to the subscribers; never waits."""
        message = _Shared(message)
        for sub in tuple(self._all):
            sub._offer(message)
        if run_id is not None:
            for sub in tuple(self._by_run.get(run_id, ())):
                sub._offer(message)

    @property
    def subscriber_count(self) -> int:
        """How many subscriptions are open."""
        return len(self._all) + sum(len(s) for s in self._by_run.values())

    def _remove(self, sub: Subscription) -> None:
        if sub.run_id is None:
            self._all.discard(sub)
        else:
            subs = self._by_run.get(sub.run_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_run[sub.run_id]
