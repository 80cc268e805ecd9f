"""What every chat bridge shares: the prompt-optimization prefix and the start-up helpers.

A chat message that starts with ``!optimize`` asks for prompt optimization for that
request only; ``!raw`` turns it off for that request; without a prefix the executor's
setting (``OPTIMIZE_PROMPT``) decides.

A bridge whose platform is unreachable at start-up keeps trying in the background
(:func:`retry_startup`); once it is up it hands the objects of its start-up to
:func:`freeze_startup_heap`, so that the cyclic garbage collector stops walking them.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

# Re-exported: each bridge calls it once it is up (also when embedded in `codex-hub up`).
from kernel.process import freeze_startup_heap as freeze_startup_heap

log = logging.getLogger(__name__)


class BridgeError(Exception):
    """Root of every bridge's errors; its message is fit to show a person as it is."""


OPTIMIZE_PREFIX = "!optimize"
RAW_PREFIX = "!raw"

#: Retrying a start-up connection that failed: first and longest wait (full jitter).
STARTUP_BACKOFF_MIN_S = 0.5
STARTUP_BACKOFF_MAX_S = 60.0


def split_optimize_prefix(text: str) -> tuple[bool | None, str]:
    """``(optimize, rest)``: True/False when the text starts with a prefix, else None."""
    stripped = text.lstrip()
    for prefix, value in ((OPTIMIZE_PREFIX, True), (RAW_PREFIX, False)):
        if stripped.lower().startswith(prefix):
            rest = stripped[len(prefix) :]
            if not rest or rest[0].isspace():
                return value, rest.strip()
    return None, text.strip()


async def retry_startup(
    connect: Callable[[], Awaitable[None]],
    *,
    platform: str,
    refused: tuple[type[BaseException], ...],
    backoff_min: float = STARTUP_BACKOFF_MIN_S,
    backoff_max: float = STARTUP_BACKOFF_MAX_S,
) -> bool:
    """Call ``connect`` until it returns, waiting ever longer before each try.

    The waits double from ``backoff_min`` up to ``backoff_max``, each drawn from its
    upper half (jitter: bridges restarted together do not retry in step). Returns True
    once ``connect`` returned; False when it raised one of ``refused`` (a token the
    platform refuses: trying again cannot help). Every failure is logged here, as
    nobody awaits the task this usually runs in.
    """
    attempt = 0
    while True:
        attempt += 1
        delay = min(backoff_max, backoff_min * 2 ** min(attempt, 10))
        await asyncio.sleep(random.uniform(delay / 2, delay))
        try:
            await connect()
        except refused as exc:
            log.error("%s; the %s bridge stays down", exc, platform)
            return False
        except Exception as exc:
            log.warning("%s still not reachable (%s); retrying", platform, exc)
            continue
        return True


#: The words of the repository command: Telegram's ``/repo``, Slack's ``repo``.
REPO_COMMAND = "repo"
_REPO_CLEAR = ("-", "none", "off", "clear")


class RepoDefaults:
    """The repository a chat or channel works on unless a message names another.

    Set per place (a Telegram chat, a Slack channel) with ``repo owner/name`` and read
    by every new conversation there; ``BRIDGE_REPOS`` gives the defaults at start. A
    setting made in the chat lives as long as the bridge process (the executor keeps
    each conversation's repository itself once its first run named one).
    """

    def __init__(self, configured: str = "") -> None:
        self.repos: dict[str, str] = parse_repo_defaults(configured)

    def get(self, place: str) -> str | None:
        """The place's repository, or None."""
        return self.repos.get(place)

    def command(self, place: str, argument: str) -> str:
        """Apply ``repo <argument>`` in ``place``; the text to answer with."""
        argument = argument.strip()
        if not argument:
            current = self.repos.get(place)
            return (
                f"Runs here work on {current}. Change it with `repo owner/name`, clear it "
                "with `repo -`."
                if current
                else "No repository is set here: runs work in a scratch directory unless a "
                "message names one. Set one with `repo owner/name` (or owner/name@branch)."
            )
        if argument.lower() in _REPO_CLEAR:
            self.repos.pop(place, None)
            return "Repository cleared: new conversations here name their own."
        if len(argument) > 500 or any(c.isspace() or ord(c) < 32 for c in argument):
            return "A repository is one word: owner/name, owner/name@branch or a git URL."
        self.repos[place] = argument
        return (
            f"New conversations here work on {argument} (the executor checks it when a "
            "run starts; conversations already going keep theirs)."
        )


def repo_command(text: str) -> str | None:
    """The argument of a ``repo`` command written as a plain message (Slack), or None
    when the text is a request that merely starts with the word ("repo is broken")."""
    words = text.split()
    if not words or words[0].lower() != REPO_COMMAND or len(words) > 2:
        return None
    if len(words) == 1:
        return ""
    argument = words[1]
    return argument if "/" in argument or argument.lower() in _REPO_CLEAR else None


def parse_repo_defaults(text: str) -> dict[str, str]:
    """``BRIDGE_REPOS`` (``place=owner/name`` pairs, comma-separated) as a dict."""
    repos: dict[str, str] = {}
    for pair in text.split(","):
        place, sep, repo = pair.partition("=")
        if not pair.strip():
            continue
        if not sep or not place.strip() or not repo.strip():
            raise ValueError(f"BRIDGE_REPOS: {pair.strip()!r} is not place=owner/name")
        repos[place.strip()] = repo.strip()
    return repos


def repo_line(repo: str | None) -> str:
    """The line /status shows about the place's repository."""
    return f"Repository: {repo}" if repo else "Repository: none (scratch directory)"


# --- where a run goes (the hub's targets, issue 20) --------------------------------------

#: The words of the target command: Telegram's ``/target``, Slack's ``target``.
TARGET_COMMAND = "target"
#: A target as a message may start with it: ``@gpu``, ``@gpu,prod``, ``@host-1``.
_TARGET_WORD = re.compile(r"@([^\s,@\x00-\x1f]{1,200}(?:,@?[^\s,@\x00-\x1f]{1,200}){0,15})")


def split_target_prefix(text: str) -> tuple[str | None, str]:
    """``(target, rest)`` of a message that starts with ``@label`` or ``@name`` (several
    comma-joined: ``@gpu,prod``), else ``(None, text)``; the hub checks the target."""
    stripped = text.lstrip()
    match = _TARGET_WORD.match(stripped)
    if match is None or (len(stripped) > match.end() and not stripped[match.end()].isspace()):
        return None, text
    return match.group(1), stripped[match.end() :].strip()


class TargetDefaults:
    """Where runs of a chat or channel go unless a message says (``@gpu``): set per place
    with ``target @gpu,prod`` (``target -`` clears it); lives as long as the bridge
    process, as the repository default does."""

    def __init__(self) -> None:
        self.targets: dict[str, str] = {}

    def get(self, place: str) -> str | None:
        """The place's target, or None (any executor)."""
        return self.targets.get(place)

    def command(self, place: str, argument: str) -> str:
        """Apply ``target <argument>`` in ``place``; the text to answer with."""
        argument = argument.strip()
        if not argument:
            current = self.targets.get(place)
            return (
                f"Runs here go to executors matching {current}. Change it with "
                "`target @label`, clear it with `target -`."
                if current
                else "Runs here go to any executor. Send them to some with `target @label` "
                "(labels all required, or an executor's name), or start one message with "
                "`@label`."
            )
        if argument.lower() in _REPO_CLEAR:
            self.targets.pop(place, None)
            return "Target cleared: runs here go to any executor."
        spec = argument if argument.startswith("@") else f"@{argument}"
        found, rest = split_target_prefix(spec)
        if found is None or rest:
            return (
                "A target is one word: labels joined by commas (`@gpu,prod`) or an "
                "executor's name (`@host-1`)."
            )
        self.targets[place] = found
        return (
            f"New runs here go only to executors matching {found} (the hub refuses a label "
            "no executor has announced; a conversation stays on its executor)."
        )


def target_command(text: str) -> str | None:
    """The argument of a ``target`` command written as a plain message (Slack), or None
    when the text is a request that merely starts with the word ("target the tests")."""
    words = text.split()
    if not words or words[0].lower() != TARGET_COMMAND or len(words) > 2:
        return None
    if len(words) == 1:
        return ""
    argument = words[1]
    return argument if argument.startswith("@") or argument.lower() in _REPO_CLEAR else None


# --- attachments -----------------------------------------------------------------------

#: The default of BRIDGE_ATTACHMENT_MAX_BYTES.
ATTACHMENT_MAX_BYTES = 2_000_000
#: The default of BRIDGE_ATTACHMENT_TYPES.
ATTACHMENT_TYPES = (
    "image/png,image/jpeg,image/gif,image/webp,text/*,application/pdf,application/json"
)
#: Images codex takes as images (``codex exec -i``); other attachments are files.
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
#: The prompt of a message that is only an attachment.
ATTACHMENT_ONLY_PROMPT = "Look at the attached file."


class AttachmentRefused(Exception):
    """A file that may not be attached; the message is the reply to its sender (each
    platform's download raises its subclass)."""


@dataclass(frozen=True)
class Attachment:
    """A file a user attached: its name, MIME type and bytes."""

    name: str
    mime: str
    data: bytes


def type_allowed(mime: str, patterns: str) -> bool:
    """True when ``mime`` matches one of the comma-separated ``patterns`` (``type/*``)."""
    mime = mime.split(";", 1)[0].strip().lower()
    for pattern in (p.strip().lower() for p in patterns.split(",")):
        if pattern and (
            pattern == mime or (pattern.endswith("/*") and mime.startswith(pattern[:-1]))
        ):
            return True
    return False


def attachment_refusal(
    name: str, mime: str, size: int | None, max_bytes: int, types: str, *, total: int = 0
) -> str | None:
    """Why the file may not be attached (a reply for the user), or None when it may.

    ``total`` is what the message's other attachments already take."""
    if max_bytes == 0:
        return (
            f"{name} was not used: attachments are turned off here (BRIDGE_ATTACHMENT_MAX_BYTES=0)."
        )
    if not type_allowed(mime, types):
        return (
            f"{name} was not used: files of type {mime} are not accepted here "
            f"(BRIDGE_ATTACHMENT_TYPES={types})."
        )
    if size is not None and size + total > max_bytes:
        return (
            f"{name} was not used: it is {size:,} bytes, over the limit of {max_bytes:,} "
            "bytes (BRIDGE_ATTACHMENT_MAX_BYTES)."
        )
    return None


def attachment_options(files: Iterable[Attachment]) -> dict[str, list[dict[str, str]]]:
    """The ``attachments`` of a submit: images for codex's ``-i``, the rest as files."""
    images: list[dict[str, str]] = []
    others: list[dict[str, str]] = []
    for file in files:
        encoded = base64.b64encode(file.data).decode()
        mime = file.mime.split(";", 1)[0].strip().lower()
        if mime in IMAGE_TYPES:
            images.append({"mime": mime, "data": encoded})
        else:
            others.append({"name": file.name, "data": encoded})
    return {k: v for k, v in (("images", images), ("files", others)) if v}
