"""The Slack bench's report: every phase and interval, the goal judged on the held phases."""

from __future__ import annotations

from bench.slack_latency import GOAL_MS, QUICK, Phase, Results, Sample, report


def phase(label: str, step_ms: float, *, goal: bool = True, cpu: float | None = 0.05) -> Phase:
    """A phase of 10 mentions whose every interval takes ``step_ms``."""
    measured = Phase(label, "test load", goal=goal, elapsed=1.0, bridge_cpu_s=cpu)
    step = step_ms / 1000.0
    for i in range(10):
        pushed = 100.0 + i
        measured.samples[f"m{i}"] = Sample(
            pushed=pushed,
            created=pushed + step / 2,
            started=pushed + step,
            finished=pushed + 2 * step,
            replied=pushed + 3 * step,
        )
    return measured


def test_report_meets_the_goal_when_the_held_phases_do() -> None:
    """The saturated phase is shown but does not decide the goal."""
    results = Results(QUICK, [phase("sequential", 5), phase("saturated", 80, goal=False)])
    text = report(results)
    assert "met: **yes**" in text
    assert "| sequential (test load) | **event -> run started** | 10 | 5.00 |" in text
    assert "| saturated (test load) | **run finished -> reply posted** | 10 | 80.0 |" in text
    assert "| sequential | 10 | 5.00 |" in text  # 10 mentions/s, 5 ms of bridge CPU each


def test_report_misses_the_goal_when_a_held_phase_is_slow() -> None:
    """A p99 over the goal in a held phase is a miss."""
    results = Results(QUICK, [phase("paced", GOAL_MS + 1)])
    assert "met: **no**" in report(results)


def test_an_embedded_bridge_has_no_cpu_figure_of_its_own() -> None:
    """When the bridge shares the hub's process its CPU time cannot be told apart."""
    text = report(Results(QUICK, [phase("embedded sequential", 3, cpu=None)]))
    assert "| embedded sequential | 10 | - |" in text
