"""The feed suite's monitor-page measurement runs end to end (it failed at its first
step once API keys saw only their own runs: its key saw none of the seeded runs)."""

from __future__ import annotations

import shutil

import pytest

from bench import monitor_page


async def test_the_page_measurement_shows_the_seeded_runs_and_the_burst(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if shutil.which(monitor_page.CHROMIUM) is None:
        pytest.skip(f"{monitor_page.CHROMIUM} is absent: install Debian's chromium (make browser)")
    monkeypatch.setattr(monitor_page, "STORED", 300)
    monkeypatch.setattr(monitor_page, "BURST", 50)
    result = await monitor_page.measure()
    assert result is not None
    assert result.rows > 0
    assert result.dom_after > 0
    assert 0 < result.burst_shown_s < 30
    assert "headless Chromium, 300 runs stored, then 50" in monitor_page.report(result)
