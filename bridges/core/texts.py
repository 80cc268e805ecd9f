"""The texts the bridge core says, written by each platform in its own format.

The core decides *when* something is said (a request kept for a hub that is away, the
hub's refusal, a cancel, the status of a run); the platform's ``convert`` module says
it in its words and markup. An adapter hands its functions over as one :class:`Texts`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

#: How much of the answer being written a status message shows (its end): within
#: Telegram's 4096 characters a message and Slack's 3000 a section, with the status.
STATUS_ANSWER_CHARS = 2500


def steered_text(run_id: str) -> str:
    """The answer to a message that went into the running turn of ``run_id``."""
    return f"Added to the running turn of run {run_id}: codex takes it into account now."


def steer_failed_text(error: str) -> str:
    """The answer to a message meant for the running turn that runs as a new request."""
    return f"Could not add this to the running turn ({error}), so it runs as a new request."


def status_with_answer(status: str, answer: str) -> str:
    """A status message that shows the end of the answer being written (plain text)."""
    return f"{status}\n\n{tail(answer, STATUS_ANSWER_CHARS)}"


def tail(text: str, limit: int) -> str:
    """The end of ``text``, at most ``limit`` characters (``…`` first when cut)."""
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


@dataclass(frozen=True)
class Texts:
    """The platform's wording of what the core says."""

    #: A request kept because the hub cannot be reached right now.
    kept: Callable[[], str]
    #: Why the hub did not take a request: ``(code, message)``.
    hub_error: Callable[[str, str], str]
    #: The answer to a cancel: the runs being cancelled (none: nothing runs).
    cancel: Callable[[Sequence[str]], str]
    #: A run's status message: ``(state, detail, run_id, position in the queue)``.
    status: Callable[[str, str, str, int | None], str]
    #: The status message with the answer being written: ``(status, answer)``.
    with_answer: Callable[[str, str], str] = status_with_answer
