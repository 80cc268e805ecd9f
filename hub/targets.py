"""Where a run may go: targets, what executors have announced, and who may target what.

Pure: no I/O, no clock. The router's side of it (the store, timers, the queue) is in
:mod:`hub.placement`.

Targets
-------
A *target* is a set of terms an executor must all satisfy; a term is satisfied by one
of the executor's labels (``EXEC_LABELS``) or by its name. So ``gpu,prod`` asks for an
executor labelled both ``gpu`` and ``prod``, ``@host-1`` for the executor named
``host-1``, and ``@host-1,gpu`` for host-1 as long as it is labelled gpu. A leading
``@`` is allowed on each term (the chat form); its text form (:attr:`Target.text`) is
the terms sorted and comma-joined, which is what a run records.

Known targets
-------------
:class:`KnownTargets` holds every label and name an executor has ever announced (the
store keeps them, so a restarted hub still knows them). A target with a term nobody
ever announced is refused at once (``unknown_target``), listing what is known: a typo
would otherwise wait in the queue for ever.

Rules (``HUB_TARGET_RULES``)
----------------------------
``scope=term,term;scope=term`` where a scope is an API principal (``key:`` and 12 hex
digits, as the runs list shows it), ``slack:<channel id>`` or ``telegram:<chat id>``.
A run from a scope with a rule must name a target, and every term of it must be among
the rule's (a label, or an executor's name); else it is refused (``target_not_allowed``)
with the reason. Fail closed: a run without a target from such a scope is refused too,
or it could land on any executor, the very thing the rule is there to prevent. Scopes
without a rule are not restricted. Empty: no rules.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from wire import ErrorCode

#: The most terms one target may name.
MAX_TERMS = 16
#: A term: a label (lowercase letters, digits, ``-``, ``_``) or an executor's name (no
#: spaces, commas, ``@`` or control characters; at most 200 characters, as a hello's).
_TERM = re.compile(r"[^\s,@\x00-\x1f\x7f]{1,200}")
#: A rule's scope: an API principal, a Slack channel, a Telegram chat.
_SCOPE = re.compile(r"(key:[0-9a-f]{12}|slack:[A-Za-z0-9]{1,40}|telegram:-?[0-9]{1,20})")
#: The prefix of a queue group that pins runs to one executor (a conversation's holder).
_NODE_GROUP = "node:"
_TARGET_GROUP = "target:"


class TargetRefused(Exception):
    """Root of the refusals of a run's placement; the message is fit for a person.

    ``code`` is the machine-readable reason (an :class:`~wire.ErrorCode`), ``status``
    the HTTP status the API answers with.
    """

    code: str = ErrorCode.INVALID_TARGET
    status: int = 400


class InvalidTarget(TargetRefused):
    """The target is not one (a bad term, too many terms, not a string or list)."""


class UnknownTarget(TargetRefused):
    """The target names a label or executor that no executor has ever announced."""

    code = ErrorCode.UNKNOWN_TARGET


class TargetNotAllowed(TargetRefused):
    """A rule (``HUB_TARGET_RULES``) does not let this caller or place use the target."""

    code = ErrorCode.TARGET_NOT_ALLOWED
    status = 403


class ConversationElsewhere(TargetRefused):
    """The conversation's executor is gone past the grace, or does not fit the target."""

    code = ErrorCode.CONVERSATION_ELSEWHERE
    status = 409


@dataclass(frozen=True)
class Target:
    """Terms an executor must all satisfy, each with a label or its name."""

    terms: frozenset[str]

    @property
    def text(self) -> str:
        """The target as a run records it: ``gpu,prod``."""
        return ",".join(sorted(self.terms))

    def matches(self, labels: Collection[str], name: str) -> bool:
        """True when every term is one of ``labels`` or is ``name``."""
        return all(term == name or term in labels for term in self.terms)


def parse_target(value: Any, *, what: str = "target") -> Target | None:
    """A target from its text (``"gpu,prod"``, ``"@host-1"``) or a list of terms; None
    when it is empty. :class:`InvalidTarget` says what is wrong."""
    if value is None:
        return None
    if isinstance(value, str):
        parts = value.split(",")
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        parts = [part for item in value for part in item.split(",")]
    else:
        raise InvalidTarget(f"{what} must be a string such as 'gpu,prod' or a list of labels")
    terms = [part.strip().removeprefix("@") for part in parts]
    terms = [term for term in terms if term]
    if not terms:
        return None
    if len(terms) > MAX_TERMS:
        raise InvalidTarget(f"{what} names {len(terms)} labels; at most {MAX_TERMS}")
    for term in terms:
        if not _TERM.fullmatch(term):
            shown = term[:40] + ("…" if len(term) > 40 else "")
            raise InvalidTarget(
                f"{what}: {shown!r} is not a label or an executor name (no spaces, commas "
                "or control characters)"
            )
    return Target(frozenset(terms))


@dataclass
class KnownTargets:
    """Every label and executor name ever announced (see the module docstring)."""

    labels: set[str] = field(default_factory=set)
    names: set[str] = field(default_factory=set)

    def learn(self, labels: Iterable[str], name: str) -> list[tuple[str, str]]:
        """Remember an executor's labels and name; the ``(kind, value)`` pairs that were
        new (``kind``: ``label`` or ``name``), for the store."""
        new = [("label", label) for label in labels if label not in self.labels]
        if name and name not in self.names:
            new.append(("name", name))
        for kind, value in new:
            (self.labels if kind == "label" else self.names).add(value)
        return new

    def unknown(self, target: Target) -> list[str]:
        """The terms of ``target`` no executor has announced, sorted."""
        return sorted(t for t in target.terms if t not in self.labels and t not in self.names)

    def listing(self) -> str:
        """What is known, for a refusal: ``known labels: gpu, prod; executors: host-1``."""
        if not self.labels and not self.names:
            return "no executor has announced a label or a name yet"
        labels = ", ".join(sorted(self.labels)) or "none"
        names = ", ".join(sorted(self.names)) or "none"
        return f"known labels: {labels}; executors: {names}"

    def check(self, target: Target) -> None:
        """Raise :class:`UnknownTarget` when a term of ``target`` was never announced."""
        unknown = self.unknown(target)
        if unknown:
            raise UnknownTarget(
                f"no executor has ever announced {', '.join(unknown)} (as a label or a "
                f"name), so the run could never start; {self.listing()}"
            )

    def describe(self, target: Target) -> str:
        """The executor a target asks for, in words: ``an executor with labels gpu``,
        ``the executor host-1``, ``the executor host-1 with labels gpu``."""
        names = sorted(t for t in target.terms if t in self.names and t not in self.labels)
        labels = sorted(target.terms - set(names))
        with_labels = f"with labels {', '.join(labels)}" if labels else ""
        if names:
            return " ".join(filter(None, [f"the executor {', '.join(names)}", with_labels]))
        return f"an executor {with_labels}"


# --- rules -----------------------------------------------------------------------------


def parse_rules(text: str) -> dict[str, frozenset[str]]:
    """``HUB_TARGET_RULES`` as ``{scope: allowed terms}``; ValueError says what is wrong."""
    rules: dict[str, frozenset[str]] = {}
    for entry in text.split(";"):
        entry = entry.strip()
        if not entry:
            continue
        scope, sep, allowed = entry.partition("=")
        scope = scope.strip()
        if not sep or not _SCOPE.fullmatch(scope):
            raise ValueError(
                f"HUB_TARGET_RULES: {entry[:80]!r} is not scope=labels, where scope is "
                "key:<12 hex digits of the principal>, slack:<channel id> or "
                "telegram:<chat id> (e.g. key:0123456789ab=staging,dev;slack:C123=prod)"
            )
        if scope in rules:
            raise ValueError(f"HUB_TARGET_RULES: {scope} has two rules; merge them into one")
        try:
            target = parse_target(allowed, what=f"HUB_TARGET_RULES {scope}")
        except InvalidTarget as exc:
            raise ValueError(str(exc)) from None
        if target is None:
            raise ValueError(f"HUB_TARGET_RULES: {scope} allows no label; name at least one")
        rules[scope] = target.terms
    return rules


def scope_of(principal: str | None, origin: Mapping[str, Any]) -> str | None:
    """The rule scope a run comes from: its chat (Slack channel, Telegram chat) for a
    bridge's run, else its API principal."""
    platform = origin.get("platform")
    if platform == "slack" and origin.get("channel"):
        return f"slack:{origin['channel']}"
    if platform == "telegram" and origin.get("chat_id") is not None:
        return f"telegram:{origin['chat_id']}"
    return principal


def check_rules(
    rules: Mapping[str, frozenset[str]], scope: str | None, target: Target | None
) -> None:
    """Raise :class:`TargetNotAllowed` when ``scope``'s rule does not allow ``target``."""
    allowed = rules.get(scope) if scope else None
    if allowed is None:
        return
    listed = ", ".join(sorted(allowed))
    if target is None:
        raise TargetNotAllowed(
            f"{scope} may only run on executors it names from {listed} (HUB_TARGET_RULES); "
            "name one as the target (target, X-Target, or @label at the start of a message)"
        )
    outside = sorted(target.terms - allowed)
    if outside:
        raise TargetNotAllowed(
            f"{scope} may not use {', '.join(outside)}: HUB_TARGET_RULES lets it use only {listed}"
        )


# --- queue groups: runs that wait for the same kind of executor ------------------------


def group_of(target: str | None, holder: str | None) -> str | None:
    """The queue group of a run: pinned to its conversation's executor (by name), else
    its target's text; None for a run any executor may take."""
    if holder:
        return _NODE_GROUP + holder
    if target:
        return _TARGET_GROUP + target
    return None


def group_matches(group: str, name: str, labels: Collection[str]) -> bool:
    """True when the executor (``name``, ``labels``) may take a run of ``group``."""
    if group.startswith(_NODE_GROUP):
        return group[len(_NODE_GROUP) :] == name
    target = target_of(group[len(_TARGET_GROUP) :])
    return target is None or target.matches(labels, name)


@functools.lru_cache(maxsize=1024)
def target_of(text: str) -> Target | None:
    """The target a run recorded (its text form), parsed once per distinct text."""
    return parse_target(text)
