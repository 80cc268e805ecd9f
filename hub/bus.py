"""In-process fan-out of run changes and events to live subscribers.

Two kinds of subscriber:

- :meth:`Bus.subscribe`: a bounded queue of messages, one at a time, as soon as they
  are published (a streaming chat completion follows its run this way). A subscriber
  that falls behind is dropped (its iterator ends with :class:`Dropped`) and resyncs
  from the store.
- :meth:`Bus.subscribe_frames`: the monitor's feed. Messages are gathered for one
  *tick* (:attr:`Bus.tick_s`, counted from the first message after a quiet spell),
  then encoded once into one :class:`Frame`, a JSON array, that every such subscriber
  is handed: one send per browser per tick, however many browsers and messages there
  are. Within a tick only the latest of a run's summaries (``type: run``), of the
  node lists (``type: nodes``) and of the queue's head (``type: queue``) is kept, in
  the place of the latest; events are never merged or dropped. A frame subscriber's
  sink says whether it can take the frame; when it cannot (its browser fell behind),
  the subscriber is dropped.

A run's messages (published with its ``run_id``) carry the run's ``owner``, its
principal (:mod:`hub.auth`): a frame subscriber that is not an operator gets only its
own runs' messages, and those published for no run (the node lists). Subscribers who
see the same are handed the same frame, so a tick is encoded once per principal with
browsers open (once in all when only operators watch).

Either way a slow subscriber never slows the publisher or the other subscribers.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

Message = dict[str, Any]

log = logging.getLogger(__name__)

#: How long messages gather before they go out together to the frame subscribers.
TICK_S = 0.025


class _Shared(dict[str, Any]):
    """A published message: one object for every subscriber, its JSON made once.

    ``private`` when it is a run's (only the run's ``owner`` and operators see it);
    ``view``, when set, gives what a principal that is not an operator sees of it (a
    broadcast that names runs of several principals: the nodes, the queue).
    """

    __slots__ = ("_json", "owner", "private", "view")

    owner: str | None
    private: bool
    view: Callable[[str], Message] | None

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


def websocket_text_frame(payload: bytes) -> bytes:
    """``payload`` (UTF-8 text) as one unfragmented, unmasked websocket text frame.

    A server's frames are never masked (RFC 6455, 5.1), so this one sequence of bytes
    is the same for every browser it goes to.
    """
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x81, n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x81, 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 127, n)
    return header + payload


class Frame:
    """The messages of one tick, encoded once for every frame subscriber."""

    __slots__ = ("_websocket", "count", "payload")

    def __init__(self, payload: bytes, count: int) -> None:
        #: A JSON array of the messages, UTF-8.
        self.payload = payload
        #: How many messages it holds.
        self.count = count
        self._websocket: bytes | None = None

    def websocket(self) -> bytes:
        """The payload as a websocket text frame, built once (see :func:`websocket_text_frame`)."""
        if self._websocket is None:
            self._websocket = websocket_text_frame(self.payload)
        return self._websocket


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


#: Takes one tick's frame; returns False when it cannot (it fell behind).
FrameSink = Callable[[Frame], bool]


class FrameSubscription:
    """Hands every tick's :class:`Frame` to a sink, until closed or dropped.

    ``principal`` None sees every run's messages (an operator); otherwise only that
    principal's runs' and those of no run.
    """

    def __init__(self, bus: Bus, sink: FrameSink, principal: str | None) -> None:
        self._bus = bus
        self.sink = sink
        self.principal = principal
        self.dropped = False
        self.closed = False
        self._ended = asyncio.get_running_loop().create_future()

    async def wait_dropped(self) -> None:
        """Return once the subscriber is dropped (it never returns after a plain close)."""
        await asyncio.shield(self._ended)

    def _drop(self) -> None:
        self.dropped = True
        self.close()
        if not self._ended.done():
            self._ended.set_result(None)

    def close(self) -> None:
        """Stop receiving frames. Idempotent."""
        if not self.closed:
            self.closed = True
            self._bus._frame_subs.pop(self, None)

    def __enter__(self) -> FrameSubscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _private(message: Message) -> bool:
    # Fail closed: a message that is somehow not a _Shared counts as a run's.
    return getattr(message, "private", True) is not False


def _owner(message: Message) -> str | None:
    return getattr(message, "owner", None)


def _viewed(message: Message, principal: str) -> Message:
    view = getattr(message, "view", None)
    return message if view is None else view(principal)


def _coalesce_key(message: Message) -> str | None:
    kind = message.get("type")
    if kind == "run":
        run = message.get("run")
        return f"run:{run.get('id')}" if isinstance(run, dict) else None
    if kind in ("nodes", "queue"):
        return kind
    return None


class Bus:
    """Publish run messages to every subscriber, or to those of one run."""

    def __init__(self, tick_s: float = TICK_S) -> None:
        #: Messages gather this long before a frame goes out (0: at the next loop turn).
        self.tick_s = tick_s
        self._all: set[Subscription] = set()
        self._by_run: dict[str, set[Subscription]] = {}
        # A dict, not a set: frames go out in the order the subscribers came.
        self._frame_subs: dict[FrameSubscription, None] = {}
        self._batch: list[Message | None] = []
        self._latest: dict[str, int] = {}
        self._flush_handle: asyncio.Handle | None = None
        #: Frames handed out so far (one per tick that had messages and subscribers).
        self.frames_sent = 0

    def subscribe(self, run_id: str | None = None, maxsize: int = 1000) -> Subscription:
        """Receive every message (``run_id=None``) or only those of one run."""
        sub = Subscription(self, run_id, maxsize)
        if run_id is None:
            self._all.add(sub)
        else:
            self._by_run.setdefault(run_id, set()).add(sub)
        return sub

    def subscribe_frames(self, sink: FrameSink, *, principal: str | None) -> FrameSubscription:
        """Hand ``sink`` one :class:`Frame` per tick, from the next message on.

        ``principal`` is whose runs it sees; None: everyone's (an operator's feed). A
        tick with nothing for it sends it nothing. What is already gathered goes out
        first, to the others only: a new subscriber never gets a message published
        before it subscribed.
        """
        self.flush()
        sub = FrameSubscription(self, sink, principal)
        self._frame_subs[sub] = None
        return sub

    def publish(
        self,
        message: Message,
        run_id: str | None = None,
        *,
        owner: str | None = None,
        view: Callable[[str], Message] | None = None,
    ) -> None:
        """Hand ``message`` to the subscribers; never waits.

        A message with a ``run_id`` is that run's: frame subscribers see it only if they
        are ``owner`` (the run's principal; None for a chat bridge's run) or operators.
        A message with a ``view`` is sent to a principal's frame subscribers as
        ``view(principal)`` (operators get ``message``).
        """
        if not self.wanted(run_id):
            return
        message = _Shared(message)
        message.private = run_id is not None
        message.owner = owner
        message.view = view
        for sub in tuple(self._all):
            sub._offer(message)
        if run_id is not None:
            for sub in tuple(self._by_run.get(run_id, ())):
                sub._offer(message)
        if self._frame_subs:
            self._gather(message)

    def wanted(self, run_id: str | None = None) -> bool:
        """Whether a message (of run ``run_id``) would reach any subscriber now: when
        not, a publisher may skip building it (nobody is told of a message published
        before they subscribed)."""
        if self._all or self._frame_subs:
            return True
        return run_id is not None and run_id in self._by_run

    def _gather(self, message: Message) -> None:
        key = _coalesce_key(message)
        if key is not None:
            earlier = self._latest.get(key)
            if earlier is not None:
                self._batch[earlier] = None
            self._latest[key] = len(self._batch)
        self._batch.append(message)
        if self._flush_handle is None:
            loop = asyncio.get_running_loop()
            if self.tick_s > 0:
                self._flush_handle = loop.call_later(self.tick_s, self.flush)
            else:
                self._flush_handle = loop.call_soon(self.flush)

    def flush(self) -> None:
        """Send what the current tick gathered now (the tick's timer calls this)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        batch = [m for m in self._batch if m is not None]
        self._batch = []
        self._latest = {}
        if not batch or not self._frame_subs:
            return
        # One frame per view: every message for operators, a principal's own for it.
        frames: dict[str | None, Frame | None] = {}
        for sub in tuple(self._frame_subs):
            view = sub.principal
            if view not in frames:
                frames[view] = self._frame_for(batch, view)
            frame = frames[view]
            if frame is None:
                continue  # nothing this tick that it may see
            try:
                took = sub.sink(frame)
            except Exception:
                log.exception("a feed subscriber failed to take a frame; dropped")
                took = False
            if not took:
                sub._drop()

    def _frame_for(self, batch: list[Message], principal: str | None) -> Frame | None:
        if principal is not None:
            batch = [
                _viewed(m, principal) for m in batch if not _private(m) or _owner(m) == principal
            ]
            if not batch:
                return None
        self.frames_sent += 1
        return Frame(orjson.dumps(batch), len(batch))

    @property
    def subscriber_count(self) -> int:
        """How many subscriptions are open."""
        return len(self._all) + sum(len(s) for s in self._by_run.values()) + len(self._frame_subs)

    def _remove(self, sub: Subscription) -> None:
        if sub.run_id is None:
            self._all.discard(sub)
        else:
            subs = self._by_run.get(sub.run_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_run[sub.run_id]
