"""The texts the bridge core says, written by each platform in its own format.

The core decides *when* something is said (a request kept for a hub that is away, the
hub's refusal, a cancel, the status of a run); the platform's ``convert`` module says
it in its words and markup. An adapter hands its functions over as one :class:`Texts`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


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
