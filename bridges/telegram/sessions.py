"""The answers of the Telegram bridge's ``/new`` and ``/status``: requests to the hub.

The command handlers are the adapter's (:mod:`bridges.telegram.bridge`); these ask the
hub about the conversation's session and return what to answer (a refusal of the hub
is raised as :class:`~bridges.hub_link.HubError`).
"""

from __future__ import annotations

import logging
import time

from bridges.common import RepoDefaults, repo_line
from bridges.hub_link import HubLink
from bridges.telegram import convert

log = logging.getLogger(__name__)


async def new_session(link: HubLink, key: str, chat_id: int) -> str:
    """``/new``: reset the conversation's hub session, unless a run is in flight there."""
    status = await link.session_status(key)
    busy = status.get("active") or next(iter(status.get("queued") or []), None)
    if busy:
        # A run in flight would save its thread back into the session after the
        # reset: refuse rather than pretend the conversation starts over.
        return convert.busy_text(str(busy.get("id")))
    await link.reset_session(key)
    log.info("chat %s started a fresh session", chat_id)
    return convert.NEW_SESSION_TEXT


async def session_status(link: HubLink, key: str, repos: RepoDefaults, place: str) -> str:
    """``/status``: the conversation's run and what waits behind it; the chat's repository."""
    status = await link.session_status(key)
    text = convert.session_text(status.get("active"), status.get("queued") or [], time.time())
    return f"{text}\n{repo_line(repos.get(place))}"
