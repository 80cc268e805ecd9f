"""The bridge core: what every chat bridge does, written once (see bridges/ADAPTERS.md).

:class:`ChatBridge` is the base a platform's bridge (its adapter) builds on; the
modules: :mod:`~bridges.core.bridge` (lifecycle, tasks, submit, cancel, progress,
delivery), :mod:`~bridges.core.status` (the status message and its ticker),
:mod:`~bridges.core.delivery` (a reply and what a delivery posted),
:mod:`~bridges.core.errors` (the error tree), :mod:`~bridges.core.texts` (what the
core says, in the platform's words), :mod:`~bridges.core.lifecycle` (states, memories).
"""

from bridges.core.approval import Approval
from bridges.core.bridge import ChatBridge
from bridges.core.delivery import Reply, Sent
from bridges.core.errors import ReplyDeferred, Undeliverable
from bridges.core.lifecycle import State, remember
from bridges.core.status import NOT_SHOWN, NOT_SHOWN_UNTIL_NEWS, RunStatus, Shown, StatusTiming
from bridges.core.texts import Texts

__all__ = [
    "NOT_SHOWN",
    "NOT_SHOWN_UNTIL_NEWS",
    "Approval",
    "ChatBridge",
    "Reply",
    "ReplyDeferred",
    "RunStatus",
    "Sent",
    "Shown",
    "State",
    "StatusTiming",
    "Texts",
    "Undeliverable",
    "remember",
]
