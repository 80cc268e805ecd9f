"""Where the router puts a run: the targets (hub.targets) applied to the live fleet.

The router owns one :class:`Placement`. It

- learns every executor's labels and name as it connects and keeps the new ones in the
  store (so a restarted hub still knows them), and remembers when each executor left;
- admits a new run (:meth:`Placement.admit`): its target is one, every term was
  announced by some executor, ``HUB_TARGET_RULES`` allow it, and its conversation's
  executor is still there or within its grace;
- chooses an executor for a ready run (:meth:`Placement.choose`): only one its target
  fits, and for a conversation only the executor holding its workspace and codex
  thread; with none free, the run's queue group, to park it (hub.run_queue);
- wakes the parked groups a free executor fits (:meth:`Placement.wake`);
- says in words why a parked run waits (:meth:`Placement.waiting`).

Conversations stay on their executor. The store names it by node id, which is new in
each executor process (executor/node.py: ``<NODE_NAME>-<pid>-<random>``); its workspace
and codex thread are on the machine, so an executor of the same *name* (the same
executor restarted) holds them too. If no executor of that name is connected, the
conversation's runs wait for one up to ``HUB_EXECUTOR_GRACE_S`` (after a hub restart,
as long as the router gives executors to claim their runs); past that, a new run is
refused and the queued ones fail (``conversation_elsewhere``), saying which executor
holds the conversation: starting fresh elsewhere would silently lose the conversation's
workspace and thread. (Two executors given the same NODE_NAME count as one here.)
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any, Protocol

from hub.run_queue import RunQueue
from hub.settings import HubSettings
from hub.store import Run, Store, op_learn_targets
from hub.targets import (
    ConversationElsewhere,
    KnownTargets,
    Target,
    check_rules,
    group_matches,
    group_of,
    parse_rules,
    parse_target,
    scope_of,
    target_of,
)
from wire import RECONNECT_MAX_S

log = logging.getLogger(__name__)

#: An executor's node id: its name, its process id and a random part (executor/node.py).
_NODE_ID = re.compile(r"(?P<name>.+)-[0-9]+-[0-9a-f]{6}")


class Executor(Protocol):
    """What placement reads of a connected executor (the router's NodeInfo)."""

    name: str
    labels: list[str]
    assigned_total: int

    @property
    def free(self) -> int: ...


class Placement:
    """Targets, known labels and names, rules and conversations' executors; see above."""

    def __init__(self, settings: HubSettings, store: Store) -> None:
        self.store = store
        self.known = KnownTargets()
        self.rules = parse_rules(settings.target_rules)
        self.grace = settings.executor_grace_s
        #: Executors reconnect to a restarted hub with jittered backoff: as long as the
        #: router gives them to claim their runs.
        self.restart_grace = max(settings.executor_grace_s, RECONNECT_MAX_S + 5.0)
        self._started = time.monotonic()
        #: When each executor (by name) left, monotonic; each node id's name.
        self._left: dict[str, float] = {}
        self._names: dict[str, str] = {}
        #: Per executor name: the end of its conversations' wait for it.
        self._timers: dict[str, asyncio.TimerHandle] = {}

    async def load(self) -> None:
        """Read the labels and names executors announced before this start."""
        for kind, value in await self.store.known_targets():
            (self.known.labels if kind == "label" else self.known.names).add(value)

    def close(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()

    # the fleet

    def executor_connected(self, node_id: str, name: str, labels: Collection[str]) -> None:
        """Learn an executor's labels and name (new ones go to the store)."""
        self._names[node_id] = name
        self._left.pop(name, None)
        handle = self._timers.pop(name, None)
        if handle is not None:
            handle.cancel()
        new = self.known.learn(labels, name)
        if new:
            self.store.post(op_learn_targets, new)

    def executor_disconnected(
        self, name: str, executors: Mapping[str, Executor], expire: Callable[[str], None]
    ) -> None:
        """Remember when the last executor named ``name`` left; ``expire(name)`` is called
        once its grace is over (unless one of that name is back)."""
        if any(node.name == name for node in executors.values()):
            return
        self._left[name] = time.monotonic()
        self.watch(name, self.grace, expire)

    def watch(self, name: str, delay: float, expire: Callable[[str], None]) -> None:
        """Call ``expire(name)`` in ``delay`` seconds unless an executor of that name
        connects first."""
        old = self._timers.pop(name, None)
        if old is not None:
            old.cancel()
        self._timers[name] = asyncio.get_running_loop().call_later(
            delay, self._expired, name, expire
        )

    def _expired(self, name: str, expire: Callable[[str], None]) -> None:
        self._timers.pop(name, None)
        expire(name)

    def name_of(self, node_id: str) -> str:
        """The name of the executor with ``node_id`` (seen since this start, or as its id
        says it)."""
        name = self._names.get(node_id)
        if name is None:
            match = _NODE_ID.fullmatch(node_id)
            name = match.group("name") if match else node_id
        return name

    def holder_node(self, holder: str, executors: Mapping[str, Executor]) -> Any:
        """The connected executor holding a conversation: the node ``holder`` itself, or
        one of its name (a free one first); None when none is connected."""
        node = executors.get(holder)
        if node is not None:
            return node
        name = self.name_of(holder)
        named = [n for n in executors.values() if n.name == name]
        return max(named, key=lambda n: n.free, default=None)

    def grace_left(self, name: str) -> float:
        """Seconds until a gone executor's conversations stop waiting for it (0: over).

        An executor not seen since this hub started counts from the start."""
        left = self._left.get(name)
        if left is None:
            return max(0.0, self._started + self.restart_grace - time.monotonic())
        return max(0.0, left + self.grace - time.monotonic())

    def gone_text(self, name: str) -> str:
        return (
            f"the executor holding this conversation, {name}, is not connected; start a "
            "new conversation or wait for it to come back"
        )

    # admitting a run

    def admit(
        self,
        value: Any,
        *,
        principal: str | None,
        origin: Mapping[str, Any],
        holder: str | None,
        executors: Mapping[str, Executor],
        expire: Callable[[str], None],
    ) -> Target | None:
        """The target of a new run, checked; raises a :class:`~hub.targets.TargetRefused`.

        ``holder`` is the node id of the executor holding its conversation, if any; if
        it is away (within its grace), ``expire(name)`` is called once the grace is over
        (already so when it left while this hub ran)."""
        target = parse_target(value)
        if target is not None:
            self.known.check(target)
        check_rules(self.rules, scope_of(principal, origin), target)
        if holder:
            node = self.holder_node(holder, executors)
            name = self.name_of(holder)
            if node is None:
                left = self.grace_left(name)
                if left <= 0:
                    raise ConversationElsewhere(self.gone_text(name))
                if name not in self._timers:  # not seen since this hub started
                    self.watch(name, left, expire)
            if (
                node is not None
                and target is not None
                and not target.matches(node.labels, node.name)
            ):
                raise ConversationElsewhere(
                    f"this conversation is held by the executor {node.name}, which is not "
                    f"{self.known.describe(target)}; start a new conversation to use another"
                )
        return target

    # choosing an executor

    def choose(
        self, run: Run, holder: str | None, executors: Mapping[str, Executor]
    ) -> tuple[Any, str | None]:
        """(the executor to take ``run``, its queue group); the executor is None when
        none free fits: park the run in the group (None: nothing is free at all)."""
        group = group_of(run.target, self.name_of(holder) if holder else None)
        if holder:
            node = self.holder_node(holder, executors)
            return (node if node is not None and node.free > 0 else None), group
        target = target_of(run.target) if run.target else None
        best: Executor | None = None
        for node in executors.values():
            if node.free <= 0 or (
                target is not None and not target.matches(node.labels, node.name)
            ):
                continue
            if best is None or (node.free, -node.assigned_total) > (
                best.free,
                -best.assigned_total,
            ):
                best = node
        return best, group

    def wake(self, queue: RunQueue, executors: Mapping[str, Executor]) -> None:
        """Give each parked group a free executor fits its oldest run back."""
        for group in queue.parked_groups():
            for node in executors.values():
                if node.free > 0 and group_matches(group, node.name, node.labels):
                    queue.unpark_one(group)
                    break

    def unplaceable(self, run: Run, holder: str | None, executors: Mapping[str, Executor]) -> bool:
        """True when no connected executor, busy or not, may take ``run``."""
        if holder:
            return self.holder_node(holder, executors) is None
        target = target_of(run.target) if run.target else None
        return target is not None and not any(
            target.matches(n.labels, n.name) for n in executors.values()
        )

    def waiting(self, run: Run, holder: str | None, executors: Mapping[str, Executor]) -> str:
        """Why a parked run waits, in words (its progress, the queue's ``detail``)."""
        if holder:
            name = self.name_of(holder)
            if self.holder_node(holder, executors) is not None:
                return f"waiting for a free slot on {name}, the executor holding this conversation"
            return (
                f"waiting for the executor holding this conversation, {name}, to come back "
                f"(not connected; the run fails if it is not back within "
                f"{self.grace_left(name):.0f} s)"
            )
        target = target_of(run.target) if run.target else None
        if target is None:  # pragma: no cover - a run without target or holder never parks
            return "waiting for a free executor"
        wanted = self.known.describe(target)
        if any(target.matches(n.labels, n.name) for n in executors.values()):
            return f"waiting for a free slot on {wanted}"
        return f"waiting for {wanted} (none is connected)"
