"""What the rest of the hub may read of the router: counts and lists, no internals.

:mod:`hub.metrics` (gauges), :mod:`hub.api_runs` (runs, overview, feed, readiness) read
the router only through :class:`RouterView`; neither imports :mod:`hub.router`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from hub.store import Run


@dataclass(frozen=True, slots=True)
class Load:
    """The router's load at one moment."""

    #: Runs waiting for an executor.
    queued: int
    #: Connected executors and bridges.
    executors: int
    bridges: int
    #: Executors where codex is logged in.
    logged_in: int
    #: Runs executing now (one codex process each), and executor slots in all.
    running: int
    capacity: int
    #: Replies waiting for a bridge to acknowledge them.
    outbox: int
    #: Store writes queued and not yet committed; writes the disk refused (full).
    store_backlog: int
    store_held: int


class RouterView(Protocol):
    """The router as its readers see it (:class:`hub.router.Router` is one)."""

    def load(self) -> Load:
        """Counts of queue, nodes, slots, outbox and store writes, now."""
        ...

    def live_run(self, run_id: str) -> Run | None:
        """The run as the router has it while it is unfinished, else None."""
        ...

    def nodes(self) -> list[dict[str, Any]]:
        """Connected nodes, executors first (the ``nodes`` message)."""
        ...

    def queue_info(self) -> dict[str, Any]:
        """The queue's length and head, with why each run waits (the ``queue`` message)."""
        ...

    def nodes_seen_by(self, viewer: str | None) -> list[dict[str, Any]]:
        """:meth:`nodes` as ``viewer`` may see them: an executor's runs only its own
        (None: an operator, every run)."""
        ...

    def queue_seen_by(self, viewer: str | None) -> dict[str, Any]:
        """:meth:`queue_info` as ``viewer`` may see it: the length, and its own runs of
        the head with their positions (None: an operator, every run)."""
        ...
