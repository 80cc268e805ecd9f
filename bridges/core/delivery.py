"""What the bridge core knows of a reply: the ``deliver`` frame read once, and what
one delivery has posted so far.

The delivery engine itself is :meth:`bridges.core.bridge.ChatBridge._on_deliver`: it
posts the parts a delivery still misses, acknowledges a reply the platform refused for
good (:class:`~bridges.core.errors.Undeliverable`) and lets every other failure
defer it (the hub's outbox re-sends it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from bridges.hub_link import Frame


@dataclass(frozen=True)
class Reply:
    """A ``deliver`` frame: the end of a run, to be posted where it was asked."""

    run_id: str
    #: The outbox entry: re-sends of one reply share it (older hubs: the run id).
    delivery_id: str
    origin: dict[str, Any]
    #: The run's outcome: ``succeeded``, ``failed``, ``cancelled``, ...
    status: str
    answer: str
    error: Any
    #: The run's changes as a unified diff, when it made any.
    diff: str | None
    pr_url: str | None
    #: When this bridge took the frame (wall clock): every text of the reply that says
    #: how long the run took counts to this one moment.
    received_at: float = field(default_factory=time.time)

    @classmethod
    def of(cls, frame: Frame) -> Reply:
        """Read a ``deliver`` frame; missing fields take their neutral values."""
        run_id = str(frame.get("run_id") or "")
        origin = frame.get("origin")
        diff = frame.get("diff")
        pr_url = frame.get("pr_url")
        return cls(
            run_id=run_id,
            delivery_id=str(frame.get("delivery_id") or run_id),
            origin=origin if isinstance(origin, dict) else {},
            status=str(frame.get("status") or "failed"),
            answer=str(frame.get("answer") or ""),
            error=frame.get("error"),
            diff=diff if isinstance(diff, str) and diff else None,
            pr_url=str(pr_url) if pr_url else None,
        )


@dataclass
class Sent:
    """What one delivery has done so far: the parts the platform took, and the run's
    status message (as the adapter names it), kept across the hub's re-sends."""

    #: Part index -> what the platform answered for it (a message id, or None).
    parts: dict[int, Any] = field(default_factory=dict)
    status: Any = None
