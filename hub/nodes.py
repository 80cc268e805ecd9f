"""What the router knows of a connected node: its link and its :class:`NodeInfo`.

The registry that connects and forgets them is :mod:`hub.node_registry`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol


class Link(Protocol):
    """A connected node as the router sees it: an id and a way to send it a frame."""

    node_id: str

    def send(self, frame: dict[str, Any]) -> None:
        """Queue ``frame`` (built by :mod:`wire`, dumped by ``FrameModel.dump``)."""

    def close(self, code: int, reason: str) -> None: ...


@dataclass
class NodeInfo:
    """What the router knows about one connected node."""

    link: Link
    role: str
    name: str
    platform: str = ""
    capacity: int = 0
    login: dict[str, Any] | None = None
    busy: set[str] = field(default_factory=set)
    connected_at: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.time)
    assigned_total: int = 0
    #: The credential it presented: its role (executor, slack, ...), or the hub's secret.
    credential: str = ""
    #: Executors: the longest a run takes there, as its hello said (None: not said).
    timeout_s: float | None = None
    #: Executors: as their hello said (EXEC_LABELS, EXEC_ENGINE, `codex --version`).
    labels: list[str] = field(default_factory=list)
    engine: str = ""
    codex_version: str = ""

    @property
    def free(self) -> int:
        return self.capacity - len(self.busy)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.link.node_id,
            "role": self.role,
            "name": self.name,
            "online": True,
            "connected_at": self.connected_at,
            "last_seen": self.last_seen,
        }
        if self.role == "executor":
            data.update(capacity=self.capacity, busy=len(self.busy), login=self.login)
            data.update(
                labels=self.labels,
                engine=self.engine,
                codex_version=self.codex_version,
                runs=sorted(self.busy),
            )
        else:
            data["platform"] = self.platform
        return data
