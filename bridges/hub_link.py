"""A bridge's side of the hub: submit runs, hear progress, deliver replies exactly once.

Bridges hold no routing logic; this is all they know of the hub. A reply is
acknowledged only after the platform accepted it (``on_deliver`` returned without
raising), so a crash or an outage of the platform loses no reply: the hub re-sends it.
A reply that arrives again while it is being posted, or after it was posted, is not
posted twice.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from hub.credentials import node_token
from hub.node_client import NodeClient, NotConnected
from hub.settings import NodeSettings

log = logging.getLogger(__name__)

Frame = dict[str, Any]

#: Status message refs kept for re-sending after a reconnect (the newest runs').
STATUS_REF_MEMORY = 1000
#: ``req_id`` prefix of a ``status_ref`` frame: the hub's error about one names it.
_STATUS_REF_REQ = "status_ref:"


class HubError(Exception):
    """The hub refused a request; ``code`` says why (e.g. ``queue_full``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Submitted:
    """A run the hub accepted, and how many runs are ahead of it in its session."""

    run_id: str
    position: int
    duplicate: bool = False


class HubLink:
    """The bridge node's connection to the hub; an async context manager."""

    def __init__(
        self,
        settings: NodeSettings,
        platform: str,
        *,
        on_deliver: Callable[[Frame], Awaitable[None]],
        on_progress: Callable[[Frame], Awaitable[None]] | None = None,
        node_id: str | None = None,
        request_timeout: float = 30.0,
    ) -> None:
        self.platform = platform
        self.settings = settings
        self._on_deliver = on_deliver
        self._on_progress = on_progress
        self._timeout = request_timeout
        name = settings.node_name or socket.gethostname()
        # Stable per platform and host: a restarted bridge replaces its old connection.
        self.node_id = node_id or f"{platform}-bridge-{name}"
        self._inflight: set[str] = set()
        self._done: OrderedDict[str, None] = OrderedDict()
        #: run id -> status message ref, until the run's reply is posted.
        self._status_refs: OrderedDict[str, str] = OrderedDict()
        self.client = NodeClient(
            settings.hub_url,
            hello=self._hello,
            on_frame=self._on_frame,
            on_connect=self._on_connect,
            name=f"{platform} bridge",
        )

    def _hello(self) -> Frame:
        return {
            "type": "hello",
            "role": "bridge",
            "token": node_token(
                self.settings.hub_token.get_secret_value(), self.settings.hub_db, self.platform
            ),
            "node_id": self.node_id,
            "name": self.node_id,
            "platform": self.platform,
        }

    async def start(self) -> None:
        """Connect in the background (reconnecting with backoff)."""
        await self.client.start()

    async def close(self) -> None:
        """Disconnect. Idempotent."""
        await self.client.close()

    async def __aenter__(self) -> HubLink:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # requests

    async def _request(self, frame: Frame) -> Frame:
        try:
            reply = await self.client.request(frame, timeout=self._timeout)
        except (TimeoutError, NotConnected) as exc:
            raise HubError("hub_unreachable", f"the hub is not reachable: {exc}") from exc
        if reply.get("type") == "error":
            raise HubError(str(reply.get("code")), str(reply.get("message")))
        return reply

    async def submit(
        self,
        prompt: str,
        *,
        session_key: str,
        origin: dict[str, Any],
        optimize: bool | None = None,
        dedupe_key: str | None = None,
    ) -> Submitted:
        """Ask the hub for a run; raises :class:`HubError` when it refuses.

        ``dedupe_key`` (the platform's id of the message) makes a re-sent message name
        the run it already started instead of starting another.
        """
        reply = await self._request(
            {
                "type": "submit",
                "prompt": prompt,
                "session_key": session_key,
                "origin": origin,
                "optimize": optimize,
                "dedupe_key": dedupe_key,
            }
        )
        return Submitted(
            run_id=str(reply["run_id"]),
            position=int(reply.get("position") or 0),
            duplicate=bool(reply.get("duplicate")),
        )

    async def cancel(
        self, *, session_key: str | None = None, run_id: str | None = None
    ) -> list[str]:
        """Cancel a run, or the active run of a session; returns what was cancelled."""
        reply = await self._request(
            {"type": "cancel", "session_key": session_key, "run_id": run_id}
        )
        return [str(r) for r in reply.get("run_ids", [])]

    async def reset_session(self, session_key: str) -> None:
        """Make the session's next run start a fresh codex conversation."""
        await self._request({"type": "reset_session", "session_key": session_key})

    async def session_status(self, session_key: str) -> Frame:
        """``{"active": run | None, "queued": [run, ...]}`` for a session."""
        return await self._request({"type": "session_status", "session_key": session_key})

    def status_ref(self, run_id: str, ref: str) -> None:
        """Tell the hub where a run's status message is; never waits, never raises.

        The hub keeps it with the run and puts it in the run's later ``progress`` and
        ``deliver`` frames, so a restarted bridge finds the message. Kept here until the
        run's reply is posted, and sent again after every reconnect: a hub that was away
        when it was first sent hears of it all the same.
        """
        self._status_refs[run_id] = ref
        self._status_refs.move_to_end(run_id)
        while len(self._status_refs) > STATUS_REF_MEMORY:
            self._status_refs.popitem(last=False)
        self._send_status_ref(run_id, ref)

    def _send_status_ref(self, run_id: str, ref: str) -> None:
        frame = {
            "type": "status_ref",
            "req_id": f"{_STATUS_REF_REQ}{run_id}",
            "run_id": run_id,
            "ref": ref,
        }
        try:
            self.client.send(frame)
        except Exception:  # best effort: the reply never depends on it
            log.warning("%s bridge: could not send a status ref", self.platform, exc_info=True)

    async def _on_connect(self) -> None:
        for run_id, ref in list(self._status_refs.items()):
            self._send_status_ref(run_id, ref)

    # frames from the hub

    async def _on_frame(self, frame: Frame) -> None:
        kind = frame.get("type")
        if kind == "deliver":
            await self._deliver(frame)
        elif kind == "progress" and self._on_progress is not None:
            await self._on_progress(frame)
        elif kind == "error":
            req_id = str(frame.get("req_id") or "")
            if req_id.startswith(_STATUS_REF_REQ):
                # The run is over and answered (or unknown): nothing left to tell.
                self._status_refs.pop(req_id.removeprefix(_STATUS_REF_REQ), None)
                log.info("%s bridge: status ref not kept: %s", self.platform, frame.get("message"))
            else:
                log.warning("%s bridge: hub reported %s", self.platform, frame.get("message"))

    async def _deliver(self, frame: Frame) -> None:
        delivery_id = str(frame.get("delivery_id"))
        if delivery_id in self._done:
            self.client.send({"type": "ack", "delivery_id": delivery_id})
            return
        if delivery_id in self._inflight:
            return
        self._inflight.add(delivery_id)
        try:
            await self._on_deliver(frame)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Not acknowledged: the hub re-sends it after HUB_REDELIVER_S.
            log.warning(
                "%s bridge: posting the reply of run %s failed (%s: %s); the hub re-sends it",
                self.platform,
                frame.get("run_id"),
                type(exc).__name__,
                exc,
            )
            log.debug("posting failed", exc_info=True)
            return
        finally:
            self._inflight.discard(delivery_id)
        self._done[delivery_id] = None
        while len(self._done) > 10_000:
            self._done.popitem(last=False)
        self._status_refs.pop(str(frame.get("run_id")), None)
        self.client.send({"type": "ack", "delivery_id": delivery_id})
