"""Prometheus metrics of the hub, served at ``/metrics``.

Counters and histograms move as runs finish; gauges are read from the router when
scraped (through :class:`hub.router_view.RouterView`: this module does not import the
router), so they are never stale.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from hub.router_view import RouterView
    from hub.store import Run, StoreActivity

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class _RouterGauges(Collector):
    def __init__(self) -> None:
        self.router: RouterView | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        load = self.router.load() if self.router is not None else None
        queue = GaugeMetricFamily("codex_hub_queue_depth", "Runs waiting for an executor")
        queue.add_metric([], load.queued if load else 0)
        yield queue
        nodes = GaugeMetricFamily("codex_hub_nodes", "Connected nodes", labels=["role"])
        nodes.add_metric(["executor"], load.executors if load else 0)
        nodes.add_metric(["bridge"], load.bridges if load else 0)
        yield nodes
        active = GaugeMetricFamily(
            "codex_hub_active_runs", "Runs executing now (one codex process each)"
        )
        active.add_metric([], load.running if load else 0)
        yield active
        capacity = GaugeMetricFamily("codex_hub_executor_capacity", "Executor slots in all")
        capacity.add_metric([], load.capacity if load else 0)
        yield capacity
        outbox = GaugeMetricFamily(
            "codex_hub_outbox_pending", "Replies waiting for a bridge to acknowledge them"
        )
        outbox.add_metric([], load.outbox if load else 0)
        yield outbox
        backlog = GaugeMetricFamily(
            "codex_hub_store_backlog", "Store writes queued and not yet committed"
        )
        backlog.add_metric([], load.store_backlog if load else 0)
        yield backlog
        held = GaugeMetricFamily(
            "codex_hub_store_held",
            "Store writes the disk refused (full), held in memory until it takes them",
        )
        held.add_metric([], load.store_held if load else 0)
        yield held


class _StoreCounters(Collector):
    """The store's writer and readers since it opened (:meth:`hub.store.Store.activity`)."""

    def __init__(self) -> None:
        self.activity: Callable[[], StoreActivity] | None = None

    def collect(self) -> Iterator[CounterMetricFamily]:
        if self.activity is None:
            return
        now = self.activity()
        for name, doc, count in (
            (
                "codex_hub_store_transactions",
                "Transactions of the store's writer (each holds many writes: group commit)",
                now.transactions,
            ),
            (
                "codex_hub_store_transaction_seconds",
                "Time the store's writer spent in its transactions",
                now.transaction_s,
            ),
            (
                "codex_hub_store_reads",
                "Lists, searches and overviews read (in the reader processes)",
                now.reads,
            ),
            (
                "codex_hub_store_read_seconds",
                "Time those reads took, the wait for earlier writes included",
                now.read_s,
            ),
            (
                "codex_hub_store_read_failures",
                "Reads that failed (a reader that died twice, timed out or could not "
                "start): answered 503 store_unavailable",
                now.read_failures,
            ),
        ):
            family = CounterMetricFamily(name, doc)
            family.add_metric([], count)
            yield family


class Metrics:
    """The hub's metric families, in a registry of their own."""

    def __init__(self) -> None:
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.registry = CollectorRegistry()
        self.runs = Counter(
            "codex_hub_runs",
            "Runs that reached a final state, by state and source",
            ["state", "source"],
            registry=self.registry,
        )
        self.submitted = Counter(
            "codex_hub_runs_submitted",
            "Runs received, by source",
            ["source"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "codex_hub_run_duration_seconds",
            "Time from a run's arrival to its end",
            ["state"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "codex_hub_queue_wait_seconds",
            "Time a run waited for an executor",
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self._gauges = _RouterGauges()
        self.registry.register(self._gauges)
        self._store = _StoreCounters()
        self.registry.register(self._store)

    def attach(self, router: RouterView) -> None:
        """Read live gauges from ``router`` (its :meth:`~hub.router_view.RouterView.load`)."""
        self._gauges.router = router

    def watch_store(self, activity: Callable[[], StoreActivity]) -> None:
        """Read the store's counters from ``activity`` (:meth:`hub.store.Store.activity`)."""
        self._store.activity = activity

    def run_submitted(self, run: Run) -> None:
        self._child(self.submitted, run.source).inc()

    def run_assigned(self, run: Run, assigned_at: float) -> None:
        """Time a run spent waiting for an executor."""
        self.queue_wait.observe(max(0.0, assigned_at - run.created_at))

    def run_finished(self, run: Run) -> None:
        """Count a finished run and its duration."""
        self._child(self.runs, run.state, run.source).inc()
        if run.finished_at is not None:
            took = max(0.0, run.finished_at - run.created_at)
            self._child(self.duration, run.state).observe(took)

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once: ``labels()`` is slow, runs are many."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
