"""A bridge's life (:class:`State`) and its bounded memories."""

from __future__ import annotations

import enum
from collections import OrderedDict
from typing import TypeVar

V = TypeVar("V")


class State(enum.Enum):
    """Where a bridge is in its life."""

    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    CLOSED = "closed"


def remember(memory: OrderedDict[str, V], key: str, value: V, limit: int) -> None:
    """Put ``key`` in ``memory`` as its newest entry; the oldest go past ``limit``."""
    memory[key] = value
    memory.move_to_end(key)
    while len(memory) > limit:
        memory.popitem(last=False)
