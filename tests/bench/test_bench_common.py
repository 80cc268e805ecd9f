"""The bench's own arithmetic: percentiles, the report's sections, py-spy's stacks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.common import (
    DOC_TITLE,
    LoadResult,
    Summary,
    percentile,
    render_table,
    replace_section,
    section_markers,
    with_load,
)
from bench.growth import impact, impact_interval
from bench.profiling import Profile


def test_percentile_interpolates_between_closest_ranks() -> None:
    """The median of an even count is the mean of the middle two; ends are min and max."""
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 50) == 2.5
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(list(range(1, 101)), 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0


@pytest.mark.parametrize(("values", "p"), [([], 50), ([1.0], -1), ([1.0], 100.5)])
def test_percentile_refuses_no_values_and_out_of_range(values: list[float], p: float) -> None:
    """No values, or a percentile outside 0..100, is an error, not a guess."""
    with pytest.raises(ValueError):
        percentile(values, p)


@given(
    st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=50),
    st.floats(0, 100),
    st.floats(0, 100),
)
def test_percentile_is_monotonic_and_bounded(values: list[float], p: float, q: float) -> None:
    """A higher percentile is never lower, and every percentile lies within the values."""
    low, high = sorted((p, q))
    assert min(values) <= percentile(values, low) <= percentile(values, high) <= max(values)


def test_summary_reports_milliseconds() -> None:
    """Latencies given in seconds are summarized in milliseconds."""
    summary = Summary.of([0.001, 0.002, 0.003])
    assert (summary.count, summary.p50, summary.max) == (3, pytest.approx(2.0), pytest.approx(3.0))
    assert summary.mean == pytest.approx(2.0)


def test_replace_section_starts_an_empty_document() -> None:
    """An empty report gets the title, then the suite's section between its markers."""
    doc = replace_section("", "hub", "## Hub\n\nfigures")
    begin, end = section_markers("hub")
    assert doc.startswith(DOC_TITLE + "\n")
    assert f"{begin}\n## Hub\n\nfigures\n{end}\n" in doc


def test_replace_section_touches_only_its_own_section() -> None:
    """Replacing one suite's section keeps the other sections and hand-written text."""
    doc = replace_section("", "hub", "old hub")
    doc = replace_section(doc, "slack", "slack figures")
    doc += "\n## Notes\n\nwritten by hand\n"
    updated = replace_section(doc, "hub", "new hub")
    assert "new hub" in updated and "old hub" not in updated
    assert "slack figures" in updated and "written by hand" in updated
    assert updated.index("new hub") < updated.index("slack figures")
    assert replace_section(updated, "hub", "new hub") == updated


def test_replace_section_refuses_a_section_without_its_end() -> None:
    """A begin marker without its end marker is an error, not a truncated report."""
    begin, _ = section_markers("hub")
    with pytest.raises(ValueError, match="no end marker"):
        replace_section(f"# Benchmarks\n\n{begin}\nhalf a section\n", "hub", "body")


def test_render_table_aligns_numbers_right() -> None:
    """Numeric columns are right-aligned, text columns left-aligned."""
    table = render_table(["level", "p50"], [["one", "1.5"], ["many", "1,024"]])
    assert table.splitlines()[1] == "| --- | ---: |"
    with pytest.raises(ValueError):
        render_table(["a", "b"], [["only one cell"]])


def test_profile_parse_reads_py_spy_raw_stacks() -> None:
    """py-spy's collapsed stacks are read with their thread, frames, lines and counts."""
    profile = Profile.parse(
        [
            "thread (0x1): MainThread;run (asyncio/runners.py:118);send (hub/ws_nodes.py:52) 3",
            "thread (0x2): Store:/tmp/hub.db;_worker (hub/store.py:244) 2",
            "not a stack line",
        ]
    )
    assert profile.total == 5
    assert profile.by_thread() == {"MainThread": 3, "Store": 2}
    assert profile.self_by_line()["send (hub/ws_nodes.py:52)"] == 3
    assert profile.self_by_package() == {"hub": 5}
    assert profile.inclusive() == {"send (hub/ws_nodes.py)": 3, "_worker (hub/store.py)": 2}


def test_with_load_puts_the_load_after_the_machine_lines() -> None:
    """A suite's section gains one line with the load before and after, after its date."""
    section = "## Suite (`s`)\n\n- Machine: 2 CPUs\n- Date: today; code at `abc`\n\nbody"
    lines = with_load(section, "0.10 0.20 0.30", "1.50 0.60 0.40").split("\n")
    assert lines[4].startswith("- Load (1, 5, 15 min averages")
    assert "0.10 0.20 0.30 before the suite, 1.50 0.60 0.40 after" in lines[4]
    assert lines[:4] == section.split("\n")[:4] and lines[5:] == ["", "body"]


def _phase(latencies: list[float]) -> LoadResult:
    return LoadResult(latencies=latencies, elapsed=1.0)


def test_impact_is_the_change_of_the_p99() -> None:
    """Searching 20% slower throughout moves the p99 by +20%."""
    alone = [i / 1000 for i in range(1, 1001)]
    assert impact(alone, [x * 1.2 for x in alone]) == pytest.approx(0.2)
    assert impact(alone, alone) == 0


def test_impact_interval_holds_the_impact_and_widens_when_rounds_disagree() -> None:
    """Rounds that agree give a narrow interval at the impact; rounds whose impacts
    differ (searching 10% slower in half of them, not at all in the others) an interval
    around the pooled impact, inside 0..10%; one round gives none."""
    base = [i / 1000 for i in range(1, 1001)]
    alone = [_phase(base) for _ in range(8)]
    searching = [_phase([x * 1.05 for x in base]) for _ in range(8)]
    lo, hi = impact_interval(alone, searching) or (None, None)
    assert lo == pytest.approx(0.05) and hi == pytest.approx(0.05)

    mixed = [_phase([x * (1.1 if r % 2 else 1.0) for x in base]) for r in range(8)]
    pooled = impact(
        [x for p in alone for x in p.latencies], [x for p in mixed for x in p.latencies]
    )
    wide = impact_interval(alone, mixed)
    assert wide is not None
    assert -1e-9 <= wide[0] < pooled < wide[1] <= 0.1 + 1e-9
    assert wide[1] - wide[0] > 0.02

    assert impact_interval(alone[:1], searching[:1]) is None
    with pytest.raises(ValueError):
        impact_interval(alone, searching[:3])
