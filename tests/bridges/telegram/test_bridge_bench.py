"""The Telegram bench's report: every phase and interval, and the goal judged on the right ones."""

from __future__ import annotations

from bench.telegram_latency import GOAL_MS, QUICK, Phase, Results, Sample, report


def phase(label: str, step_ms: float, *, goal: bool = True) -> Phase:
    """A phase of 10 messages whose every interval takes ``step_ms``."""
    measured = Phase(label, "test load", goal=goal, elapsed=1.0, bridge_cpu_s=0.05)
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


def test_report_meets_the_goal_when_the_measured_phases_do() -> None:
    """The saturated phase is shown but does not decide the goal."""
    results = Results(QUICK, [phase("sequential", 5), phase("saturated", 80, goal=False)])
    text = report(results)
    assert "met: **yes**" in text
    assert "| sequential (test load) | **message -> run started** | 10 | 5.00 |" in text
    assert "| saturated (test load) | **run finished -> reply sent** | 10 | 80.0 |" in text
    assert "| sequential | 10 | 5.00 | 0.00 |" in text  # 10 messages/s, 5 ms CPU each


def test_report_misses_the_goal_when_a_measured_phase_is_slow() -> None:
    """A p99 over the goal in a held phase is a miss."""
    results = Results(QUICK, [phase("paced", GOAL_MS + 1)])
    assert "met: **no**" in report(results)
