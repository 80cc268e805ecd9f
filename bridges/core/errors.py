"""The error tree every bridge shares; each platform's errors subclass these.

- :class:`~bridges.common.BridgeError`: the root; its message is fit to show a person.
- :class:`Undeliverable`: the platform refused a reply for good; it is acknowledged
  (logged, said in the chat when possible) so it does not come back forever.
- :class:`ReplyDeferred`: the platform did not take a reply now; the hub re-sends it.
"""

from __future__ import annotations

from bridges.common import BridgeError


class Undeliverable(BridgeError):
    """The platform refused a reply for good (unknown chat, blocked bot, bad request)."""


class ReplyDeferred(BridgeError):
    """The platform did not take a reply now (rate limit, outage); the hub re-sends it."""
