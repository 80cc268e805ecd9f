"""The store's facade: :class:`Store`, the engine with the hub's reads and writes named.

The hub writes a run's life with :meth:`Engine.post` and the ``op_*`` operations of
:mod:`hub.store.sql` (folded by the writer, see :mod:`hub.store.folding`), waits for
them with :meth:`Engine.flush`, and ends a run with :meth:`Store.finish_run`; the rest
are the reads and the few writes it awaits.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hub.store import sql
from hub.store.engine import Engine
from hub.store.records import Delivery, EventRow, Run, RunPage, SessionRow


class Store(Engine):
    """The run store: runs, their events, sessions and the reply outbox, in SQLite."""

    # runs

    async def get_run(self, run_id: str) -> Run | None:
        """One run, or None."""
        return await self.call(sql.get_run, run_id)

    async def list_runs(
        self,
        *,
        states: Iterable[str] = (),
        sources: Iterable[str] = (),
        query: str = "",
        session_key: str | None = None,
        before: int | None = None,
        limit: int = 50,
        principal: str | None = None,
    ) -> tuple[list[Run], int | None]:
        """Newest runs first, filtered; returns the page and the cursor of the next one.

        ``principal`` keeps only that principal's runs (None: everyone's).
        """
        page = RunPage(tuple(states), tuple(sources), query, session_key, before, limit, principal)
        return await self.read(sql.list_runs, page)

    async def run_summaries(self, page: RunPage) -> tuple[list[dict[str, Any]], int | None]:
        """A page of runs as each one's :meth:`Run.summary` (cheaper to read than
        :meth:`list_runs`' runs), and the cursor of the next page."""
        return await self.read(sql.run_summaries, page)

    async def run_by_dedupe_key(self, key: str) -> Run | None:
        """The run submitted with this idempotency key, if any."""
        return await self.call(sql.run_by_dedupe_key, key)

    async def unfinished_runs(self) -> list[Run]:
        """Runs not yet in a terminal state, oldest first (for recovery at start-up)."""
        return await self.call(sql.unfinished_runs)

    async def count_runs(self) -> dict[tuple[str, str], int]:
        """Number of runs by (state, source)."""
        return await self.call(sql.count_runs)

    async def overview(self, since: float, failed_since: float) -> dict[str, Any]:
        """Runs and tokens since ``since``, the median duration of those that finished,
        and the runs that failed since ``failed_since`` (the monitor's overview strip)."""
        return await self.read(sql.overview, since, failed_since)

    # events

    async def event_positions(self, run_id: str) -> tuple[int, int]:
        """(last seq, last executor seq) stored for a run, 0 when none."""
        return await self.call(sql.event_positions, run_id)

    async def finish_run(
        self,
        run: Run,
        delivery: Delivery | None = None,
        session: SessionRow | None = None,
        event: EventRow | None = None,
    ) -> None:
        """Store a run's final fields, last event, reply and session in one transaction."""
        await self.call(sql.finish_run, run, delivery, session, event)

    async def get_events(self, run_id: str, after: int = 0) -> list[dict[str, Any]]:
        """A run's events in order, those after ``after``."""
        return await self.call(sql.get_events, run_id, after)

    # sessions

    async def get_session(self, key: str) -> tuple[str | None, str | None]:
        """(thread_id, executor) remembered for a session, or (None, None)."""
        return await self.call(sql.get_session, key)

    async def set_session(self, key: str, thread_id: str | None, executor: str | None) -> None:
        """Remember a session's codex thread and the executor that holds it."""
        await self.call(sql.set_session, key, thread_id, executor)

    # targets

    async def known_targets(self) -> list[tuple[str, str]]:
        """Every label and name executors announced, as (``label``|``name``, value)."""
        return await self.call(sql.known_targets)

    # outbox

    async def pending_deliveries(self, platform: str | None = None) -> list[Delivery]:
        """Replies not yet acknowledged, oldest first."""
        return await self.call(sql.pending_deliveries, platform)

    async def ack_delivery(self, delivery_id: str) -> bool:
        """Mark a reply delivered; False when it was unknown or already acknowledged."""
        return await self.call(sql.ack_delivery, delivery_id)

    async def count_pending_deliveries(self) -> int:
        """How many replies wait in the outbox."""
        return await self.call(sql.count_pending)
