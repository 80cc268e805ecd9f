"""The report of suite ``hub-engines`` (its measuring needs the real codex: ``make bench``)."""

from __future__ import annotations

from bench.hub_engines import (
    BARE,
    CHAT_APP,
    CHAT_EXEC,
    HTTP_APP,
    HTTP_EXEC,
    NAME,
    QUICK,
    WAYS,
    Results,
    report,
)


def _results(medians_ms: dict[str, float]) -> Results:
    results = Results(QUICK, executors={"app-server": ("app-server", "0.1.0")})
    for way, ms in medians_ms.items():
        results.times[way] = [ms / 1000.0 * f for f in (0.9, 1.0, 1.1)]
    return results


FAST = {HTTP_APP: 90.0, HTTP_EXEC: 330.0, CHAT_APP: 100.0, CHAT_EXEC: 340.0, BARE: 300.0}


def test_report_says_the_goal_is_met_when_both_app_server_ways_take_at_most_half() -> None:
    text = report(_results(FAST))
    assert f"(`{NAME}`)" in text
    assert "met: **yes**: through the hub 0.30 (90.0 ms), as a chat message 0.33 (100.0 ms)" in (
        text
    )
    assert "- Executor `app-server`: `EXEC_ENGINE=app-server`, codex `0.1.0`" in text


def test_report_says_the_goal_is_missed_when_the_chat_message_takes_more_than_half() -> None:
    text = report(_results({**FAST, CHAT_APP: 151.0}))
    assert "met: **no**: through the hub 0.30 (90.0 ms), as a chat message 0.50 (151.0 ms)" in (
        text
    )


def test_report_has_a_row_per_way_with_its_median_over_the_bare_one() -> None:
    lines = report(_results(FAST)).splitlines()
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in lines if line[:2] == "| "}
    assert all(way in rows for way in WAYS)
    assert rows[HTTP_EXEC] == "| HTTP, exec | 3 | 330.0 | 356.4 | 330.0 | 363.0 | 1.10 |"
    assert rows[BARE].endswith("| 1.00 |")
