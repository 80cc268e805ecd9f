"""The registry of connected nodes: executors and bridges, their hellos and heartbeats.

An executor that connects claims the runs it still has going; one that disconnects has
``HUB_EXECUTOR_GRACE_S`` to come back for its runs, after which they fail with
``executor_lost``. A bridge that connects is sent every reply waiting for its platform.
A node id held by a live connection is not taken by a node with another credential.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from hub.nodes import Link, NodeInfo
from hub.router_errors import NodeIdTaken
from hub.router_state import RouterState
from wire import CLOSE_REPLACED, ErrorCode, Hello, RunState

log = logging.getLogger("hub.router")


class NodeRegistry(RouterState):
    """Connects, replaces, hears and forgets nodes (a job of :class:`hub.router.Router`)."""

    # nodes

    def check_node_id(self, node_id: str, credential: str) -> None:
        """Raise :class:`NodeIdTaken` when a live connection that presented another
        credential holds ``node_id`` (the same credential may replace its own: a node
        that reconnects before its old connection is seen to be gone)."""
        for nodes in (self.executors, self.bridges):
            holder = nodes.get(node_id)
            if holder is not None and holder.credential != credential:
                raise NodeIdTaken(
                    f"node id {node_id[:40]!r} is held by a live {holder.role} with another "
                    "credential; pick another NODE_NAME"
                )

    def executor_connected(self, link: Link, hello: Hello, *, credential: str = "") -> None:
        """Register an executor; it claims the runs it still has going."""
        old = self.executors.get(link.node_id)
        if old is not None and old.link is not link:
            old.link.close(CLOSE_REPLACED, "replaced by a newer connection of this node")
        node = NodeInfo(
            link=link,
            role="executor",
            name=hello.name or link.node_id,
            capacity=hello.capacity,
            login=hello.login.model_dump() if hello.login else None,
            credential=credential,
            timeout_s=hello.timeout_s,
            labels=list(hello.labels),
            engine=hello.engine,
            codex_version=hello.codex_version,
        )
        self.executors[link.node_id] = node
        self.placement.executor_connected(link.node_id, node.name, node.labels)
        claimed = set(hello.active_runs)
        for run_id, live in list(self.live.items()):
            if live.run.executor != link.node_id or live.finishing:
                continue
            if run_id in claimed:
                node.busy.add(run_id)
                self._cancel_timer(run_id)
                if run_id not in self._deadlines:  # recovered by a restarted hub
                    self._arm_deadline(live, node)
            elif live.run.state == RunState.QUEUED:
                # It never reached the executor: give it to whoever is free.
                self._cancel_timer(run_id)
                self._unassign(live)
            else:
                self._cancel_timer(run_id)
                self._spawn(
                    self._finish(
                        live,
                        RunState.FAILED,
                        error={
                            "code": ErrorCode.EXECUTOR_LOST,
                            "message": f"executor {node.name} restarted and lost this run",
                        },
                    ),
                    f"Router:lost:{run_id}",
                )
        log.info("executor %s connected (capacity %d)", node.name, node.capacity)
        self.approvals.executor_connected(link.node_id)
        self._publish_nodes()
        self._dispatch()

    def executor_disconnected(self, link: Link) -> None:
        """Give the executor's runs a grace period to be claimed back, then fail them."""
        node = self.executors.get(link.node_id)
        if node is None or node.link is not link:
            return
        del self.executors[link.node_id]
        self.placement.executor_disconnected(node.name, self.executors, self._conversations_gone)
        for run_id in node.busy:
            self._start_timer(
                run_id,
                self._lose(
                    run_id,
                    link.node_id,
                    self.settings.executor_grace_s,
                    f"executor {node.name} disconnected and did not come back for this run "
                    f"within {self.settings.executor_grace_s:g} s; the run's outcome is unknown",
                ),
                f"Router:grace:{run_id}",
            )
        log.warning("executor %s disconnected with %d runs", node.name, len(node.busy))
        self._publish_nodes()

    async def _lose(self, run_id: str, node_id: str, grace: float, why: str) -> None:
        await asyncio.sleep(grace)
        self._timers.pop(run_id, None)
        live = self.live.get(run_id)
        if live is None or live.finishing or live.run.executor != node_id:
            return
        if node_id in self.executors:
            return
        await self._finish(
            live,
            RunState.FAILED,
            error={"code": ErrorCode.EXECUTOR_LOST, "message": f"executor lost: {why}"},
        )

    def bridge_connected(self, link: Link, hello: Hello, *, credential: str = "") -> None:
        """Register a bridge and send it every reply still waiting for its platform."""
        old = self.bridges.get(link.node_id)
        if old is not None and old.link is not link:
            old.link.close(CLOSE_REPLACED, "replaced by a newer connection of this node")
        self.bridges[link.node_id] = NodeInfo(
            link=link,
            role="bridge",
            name=hello.name or link.node_id,
            platform=hello.platform,
            credential=credential,
        )
        for delivery in list(self.pending.values()):
            if delivery.platform == hello.platform:
                delivery.attempts = 0  # a fresh bridge starts the backoff over
                self._send_delivery(delivery)
        self.approvals.bridge_connected(hello.platform)
        log.info("bridge %s (%s) connected", link.node_id, hello.platform)
        self._publish_nodes()

    def bridge_disconnected(self, link: Link) -> None:
        """Forget a bridge; its replies wait in the outbox."""
        node = self.bridges.get(link.node_id)
        if node is not None and node.link is link:
            del self.bridges[link.node_id]
            self._publish_nodes()

    def heard(self, link: Link) -> None:
        """A node answered a websocket ping or pinged: its ``last_seen`` is now."""
        node = self.executors.get(link.node_id) or self.bridges.get(link.node_id)
        if node is not None and node.link is link:
            node.last_seen = time.time()
            self._live_state_changed()

    def nodes(self) -> list[dict[str, Any]]:
        """Connected nodes, executors first."""
        return [n.to_dict() for n in (*self.executors.values(), *self.bridges.values())]
