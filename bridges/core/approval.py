"""codex's approval requests in chat, the platform-independent part (pure functions).

The hub sends an ``approval`` frame (see :mod:`wire.protocol`): ``pending`` asks the
bridge to show the request with three buttons where the run came from, ``decided`` to
change every copy of them (``refs``) to say who decided and when. A press becomes an
``approval_decide`` frame with the presser's platform user id; the hub decides who may
(APPROVERS) and answers with the outcome, which the adapter shows to the presser only.

The buttons carry everything a press needs (:func:`button_data`: the run id, the
approval id and the choice, within Telegram's 64 bytes of callback data), so a bridge
keeps no state for them and a restarted one takes a press on an older message.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Every approval button's data starts with this.
BUTTON_PREFIX = "ap:"
#: The choices: (decision, label, the letter in the button's data).
CHOICES: tuple[tuple[str, str, str], ...] = (
    ("approve", "Approve", "a"),
    ("approve_session", "Approve for this conversation", "s"),
    ("deny", "Deny", "d"),
)
_BY_LETTER = {letter: decision for decision, _, letter in CHOICES}
_LETTER = {decision: letter for decision, _, letter in CHOICES}
#: What a decision reads as once made.
DECIDED_WORDS = {
    "approve": "Approved",
    "approve_session": "Approved for this conversation",
    "deny": "Denied",
    "expired": "No longer waiting",
}
#: The longest command or diff shown with the buttons (the run's events keep it whole).
SHOWN_CHARS = 2_500


@dataclass(frozen=True)
class Approval:
    """An ``approval`` frame as the bridge reads it."""

    run_id: str
    approval_id: str
    origin: dict[str, Any]
    request: dict[str, Any]
    summary: str
    expires_at: float
    state: str
    decision: str | None = None
    by: str | None = None
    decided_at: float | None = None
    refs: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, frame: Mapping[str, Any]) -> Approval:
        """The approval a frame (``ApprovalFrame.dump()``) carries."""
        decided_at = frame.get("decided_at")
        return cls(
            run_id=str(frame.get("run_id") or ""),
            approval_id=str(frame.get("approval_id") or ""),
            origin=dict(frame.get("origin") or {}),
            request=dict(frame.get("request") or {}),
            summary=str(frame.get("summary") or ""),
            expires_at=float(frame.get("expires_at") or 0),
            state=str(frame.get("state") or "pending"),
            decision=frame.get("decision"),
            by=frame.get("by"),
            decided_at=float(decided_at) if decided_at is not None else None,
            refs=[str(r) for r in frame.get("refs") or []],
        )


def button_data(run_id: str, approval_id: str, decision: str) -> str:
    """What a button carries: ``ap:<run id>:<approval id>:<a|s|d>``."""
    return f"{BUTTON_PREFIX}{run_id}:{approval_id}:{_LETTER[decision]}"


def parse_button(data: str) -> tuple[str, str, str] | None:
    """(run id, approval id, decision) of a button's data; None when it is not one."""
    if not data.startswith(BUTTON_PREFIX):
        return None
    parts = data.removeprefix(BUTTON_PREFIX).split(":")
    if len(parts) != 3 or not parts[0] or not parts[1] or parts[2] not in _BY_LETTER:
        return None
    return parts[0], parts[1], _BY_LETTER[parts[2]]


def _cut(text: str, limit: int = SHOWN_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def when(ts: float | None) -> str:
    """A moment as the chat shows it (UTC, to the second)."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts or 0))


def request_lines(approval: Approval) -> tuple[str, str, str]:
    """(headline, what: the command or the diff, why) of a request, in plain text."""
    request = approval.request
    if request.get("kind") == "file_change":
        headline = "codex asks to change files"
        changes = request.get("changes") or []
        what = "\n".join(
            str(c.get("diff") or c.get("path") or "") for c in changes if isinstance(c, dict)
        )
    else:
        headline = "codex asks to run a command"
        what = str(request.get("command") or "")
    why = str(request.get("reason") or "")
    return headline, _cut(what), why


def decided_line(approval: Approval, name: Callable[[str], str] = str) -> str:
    """The buttons' message once decided; ``name``
    writes a decider the platform's way (a Slack mention, say)."""
    word = DECIDED_WORDS.get(str(approval.decision), str(approval.decision))
    by = approval.by or "nobody"
    if by == "timeout":
        return f"{word}: nobody decided in time (at {when(approval.decided_at)})."
    if ":" in by and by.split(":", 1)[0] in ("slack", "telegram"):
        who = name(by.split(":", 1)[1])
    else:
        who = by
    return f"{word} by {who} at {when(approval.decided_at)}."
