"""The outbox: replies to chat bridges, sent until a bridge acknowledges them.

Replies for runs that came from a bridge go through the store's outbox (written with
the run's end) and are re-sent, with exponential backoff and jitter, to a bridge of
that platform until it acknowledges them (``ack``); a bridge that connects gets every
reply waiting for its platform.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from hub.nodes import Link
from hub.router_state import Live, RouterState
from hub.store import Delivery, Run, StoreUnavailable
from wire import AckFrame, DeliverFrame, ErrorCode, FrameModel, RunState, error_frame

log = logging.getLogger("hub.router")

#: Longest wait between two sends of an unacknowledged reply.
REDELIVER_MAX_S = 300.0


def _reply_text(run: Run) -> str:
    """The answer as the chat gets it; a run asked from the monitor in a chat's
    conversation says so first, or the thread would show an answer to no question."""
    answer = run.answer or ""
    if run.origin.get("via") != "monitor":
        return answer
    asked = " ".join(run.prompt.split())
    if len(asked) > 200:
        asked = asked[:200] + "…"
    return f"(Asked from the monitor: {asked})\n\n{answer}"


class Outbox(RouterState):
    """Sends, re-sends and settles replies (a job of :class:`hub.router.Router`)."""

    # deliveries

    def _send_delivery(self, delivery: Delivery) -> None:
        for node in self.bridges.values():
            if node.platform == delivery.platform:
                deliver = DeliverFrame(delivery_id=delivery.id, **delivery.payload)
                node.link.send(deliver.dump())
                delivery.attempts += 1
                # Exponential backoff with jitter: a platform that is down for long is
                # not hammered, and many replies do not retry in step.
                wait = min(
                    REDELIVER_MAX_S, self.settings.redeliver_s * 2 ** (delivery.attempts - 1)
                )
                self._next_send[delivery.id] = time.monotonic() + wait * random.uniform(0.5, 1.0)
                return

    def _reply(self, live: Live, status: RunState, now: float) -> Delivery | None:
        """The reply to a run from a chat bridge, as the outbox keeps it (None: no bridge)."""
        run = live.run
        platform = run.origin.get("platform")
        if not platform:
            return None
        return Delivery(
            id=run.id,
            run_id=run.id,
            platform=str(platform),
            created_at=now,
            payload={
                "run_id": run.id,
                "origin": run.origin,
                "status": status,
                "answer": _reply_text(run),
                "error": run.error,
                "usage": run.usage,
                # The run's workspace changes, attached in full by the bridge.
                **({"diff": live.diff} if live.diff else {}),
                **({"pr_url": live.pr_url} if live.pr_url else {}),
            },
        )

    async def _redeliver_loop(self) -> None:
        last_retry = time.monotonic()
        while True:
            await asyncio.sleep(min(1.0, self.settings.redeliver_s / 2))
            now = time.monotonic()
            for delivery in list(self.pending.values()):
                if now >= self._next_send.get(delivery.id, 0.0):
                    self._send_delivery(delivery)
            if self._unstored and now - last_retry >= self.settings.redeliver_s:
                last_retry = now
                try:
                    await self.retry_unstored()
                except Exception:  # never let this loop die: replies depend on it
                    log.exception("retrying unrecorded run ends failed")

    async def _on_ack(self, link: Link, platform: str, frame: AckFrame) -> FrameModel | None:
        """A bridge of ``platform`` acknowledged a reply: it leaves the outbox."""
        delivery = self.pending.get(frame.delivery_id)
        if delivery is None:
            return None  # acknowledged already
        if delivery.platform != platform:
            log.warning(
                "bridge %s (%s) acknowledged a %s reply; ignored",
                link.node_id,
                platform,
                delivery.platform,
            )
            return error_frame(
                ErrorCode.UNKNOWN_DELIVERY,
                f"no {platform} reply {frame.delivery_id} is waiting",
            )
        self.pending.pop(frame.delivery_id, None)
        self._next_send.pop(frame.delivery_id, None)
        try:
            await self.store.ack_delivery(frame.delivery_id)
        except StoreUnavailable:
            pass  # held by the store (disk full): written once it has room
        return None
