"""The approval buttons' data and texts (bridges/core/approval.py): pure functions."""

from __future__ import annotations

import pytest

from bridges.core.approval import CHOICES, Approval, button_data, decided_line, parse_button


@pytest.mark.parametrize("decision", [c[0] for c in CHOICES])
def test_a_button_carries_its_run_request_and_choice_within_telegrams_64_bytes(
    decision: str,
) -> None:
    """The data names the run, the request and the choice, and reads back the same."""
    run_id, approval_id = "run_0123456789abcdef", "ap_0123456789abcdef"
    data = button_data(run_id, approval_id, decision)
    assert parse_button(data) == (run_id, approval_id, decision)
    assert len(data.encode()) <= 64


@pytest.mark.parametrize("data", ["", "pr:run_1", "ap:run_1:ap_1", "ap:run_1:ap_1:x", "ap::ap_1:a"])
def test_other_data_is_not_an_approval_button(data: str) -> None:
    """Data of another button, or a malformed one, is not taken for an approval."""
    assert parse_button(data) is None


def test_the_decided_line_names_who_decided_the_platforms_way_and_when() -> None:
    """A chat user is written by the adapter; a timeout says nobody decided in time."""
    frame = {"run_id": "r", "approval_id": "a", "state": "decided", "decision": "approve"}
    by_user = Approval.of({**frame, "by": "slack:U1", "decided_at": 0})
    by_clock = Approval.of({**frame, "decision": "deny", "by": "timeout", "decided_at": 60})
    assert decided_line(by_user, lambda u: f"<@{u}>") == (
        "Approved by <@U1> at 1970-01-01 00:00:00 UTC."
    )
    assert decided_line(by_clock) == "Denied: nobody decided in time (at 1970-01-01 00:01:00 UTC)."
