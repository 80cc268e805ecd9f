"""Prometheus metrics of the hub, served at ``/metrics``.

Counters and histograms move as runs finish; gauges are read from the router when
scraped (through :class:`hub.router_view.RouterView`: this module does not import the
router), so they are never stale.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from hub.router_view import RouterView
    from hub.store import Run

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


class _Histogram:
    """One histogram's counts (per bucket, not cumulative), sum, and creation time."""

    __slots__ = ("counts", "created", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(_BUCKETS) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        self.counts[bisect_left(_BUCKETS, value)] += 1  # the first bound >= value
        self.sum += value

    def add_to(self, family: HistogramMetricFamily, labels: dict[str, str]) -> None:
        buckets, total = [], 0
        for bound, count in zip((*_BUCKETS, math.inf), self.counts, strict=True):
            total += count
            buckets.append((floatToGoString(bound), float(total)))
        family.add_metric(list(labels.values()), buckets, self.sum)
        family.samples.append(Sample(family.name + "_created", labels, self.created))


class _RunCounters(Collector):
    """The counters and histograms of runs, as plain numbers the event loop moves.

    What ``prometheus_client``'s Counter and Histogram would render, samples and
    ``_created`` included, without a lock taken and a label looked up on every move:
    those cost the event loop 3-4 us of each run. Only the event loop moves them, and
    /metrics reads them there.
    """

    def __init__(self) -> None:
        #: source -> [runs received, created]
        self.submitted: dict[str, list[float]] = {}
        #: (state, source) -> [runs ended so, created]
        self.finished: dict[tuple[str, str], list[float]] = {}
        self.duration: dict[str, _Histogram] = {}
        self.queue_wait = _Histogram()

    def collect(self) -> Iterator[Metric]:
        runs = CounterMetricFamily(
            "codex_hub_runs",
            "Runs that reached a final state, by state and source",
            labels=["state", "source"],
        )
        for (state, source), (count, created) in self.finished.items():
            runs.add_metric([state, source], count, created=created)
        yield runs
        submitted = CounterMetricFamily(
            "codex_hub_runs_submitted", "Runs received, by source", labels=["source"]
        )
        for source, (count, created) in self.submitted.items():
            submitted.add_metric([source], count, created=created)
        yield submitted
        duration = HistogramMetricFamily(
            "codex_hub_run_duration_seconds",
            "Time from a run's arrival to its end",
            labels=["state"],
        )
        for state, histogram in self.duration.items():
            histogram.add_to(duration, {"state": state})
        yield duration
        wait = HistogramMetricFamily(
            "codex_hub_queue_wait_seconds", "Time a run waited for an executor"
        )
        self.queue_wait.add_to(wait, {})
        yield wait


class Metrics:
    """The hub's metric families, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._runs = _RunCounters()
        self.registry.register(self._runs)
        self._gauges = _RouterGauges()
        self.registry.register(self._gauges)

    def attach(self, router: RouterView) -> None:
        """Read live gauges from ``router`` (its :meth:`~hub.router_view.RouterView.load`)."""
        self._gauges.router = router

    def run_submitted(self, run: Run) -> None:
        counter = self._runs.submitted.get(run.source)
        if counter is None:
            self._runs.submitted[run.source] = [1.0, time.time()]
        else:
            counter[0] += 1

    def run_assigned(self, run: Run, assigned_at: float) -> None:
        """Time a run spent waiting for an executor."""
        self._runs.queue_wait.observe(max(0.0, assigned_at - run.created_at))

    def run_finished(self, run: Run) -> None:
        """Count a finished run and its duration."""
        runs = self._runs
        key = (str(run.state), run.source)
        counter = runs.finished.get(key)
        if counter is None:
            runs.finished[key] = [1.0, time.time()]
        else:
            counter[0] += 1
        if run.finished_at is not None:
            histogram = runs.duration.get(key[0])
            if histogram is None:
                histogram = runs.duration[key[0]] = _Histogram()
            histogram.observe(max(0.0, run.finished_at - run.created_at))

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
