"""The router's refusals, each with its machine-readable ``code`` (:class:`wire.ErrorCode`).

Their own module, so that :mod:`hub.errors` renders them without importing the router.
"""

from __future__ import annotations

from wire import ErrorCode


class RouterError(Exception):
    """Root of the router's errors; ``code`` is the machine-readable reason."""

    code: str = ErrorCode.ROUTER_ERROR


class QueueFull(RouterError):
    """The queue holds ``HUB_QUEUE_LIMIT`` runs already."""

    code = ErrorCode.QUEUE_FULL


class HubClosing(RouterError):
    """The hub is shutting down and takes no new runs."""

    code = ErrorCode.HUB_CLOSING


class StoreUnwritable(RouterError):
    """The store cannot write (disk full): no new run until it can."""

    code = ErrorCode.STORE_UNAVAILABLE

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"the hub cannot write to its store ({reason}), so it takes no new run until "
            "it can; try again later"
        )
        self.reason = reason


class NodeIdTaken(RouterError):
    """A live connection with another credential holds the node id a node asked for."""

    code = ErrorCode.NODE_ID_TAKEN
