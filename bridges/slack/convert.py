"""Pure conversions between Slack's wire formats and codex-hub runs; no I/O here.

Everything Slack-specific that can be decided without a network lives here so the tests
can call it directly: mention stripping, access checks, mrkdwn escaping, splitting long
answers into messages without breaking code fences, and the texts the bridge posts.

Access rule (`is_allowed`): lists fail closed (an empty list lets nobody in) and `*`
lets everyone in. In a channel both the user and the channel must be allowed; in a DM
only the user list is consulted, because a DM's channel id is per person and nobody
could list it in advance.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Collection, Mapping
from typing import Any, Literal

#: Slack's recommended size of one message; `split_message` stays at or below it.
MESSAGE_LIMIT = 3900
#: The smallest `limit` `split_message` accepts: room for a label, a reopened fence and text.
MIN_SPLIT_LIMIT = 64

Refusal = Literal["user", "channel"]

FENCE = "```"
# An opening fence line that names a language, e.g. "```python"; the name is reopened.
_FENCE_LANG = re.compile(r"[ \t]*```([\w+#.-]{1,20})[ \t]*$")
_LABEL_WIDTH_EXTRA = len("(/)\n")
_CANCEL_WORDS = frozenset({"cancel", "stop"})
# The hub's run states (hub/protocol.py RunState); anything else is shown by name.
_STATES: Mapping[str, tuple[str, str]] = {
    "queued": (":hourglass_flowing_sand:", "Queued"),
    "optimizing": (":pencil2:", "Sharpening the prompt"),
    "running": (":gear:", "Working"),
    "succeeded": (":white_check_mark:", "Done"),
    "failed": (":x:", "Failed"),
    "cancelled": (":no_entry_sign:", "Cancelled"),
    "timed_out": (":alarm_clock:", "Timed out"),
    "rejected": (":no_entry:", "Rejected"),
}
_ENDINGS: Mapping[str, tuple[str, str]] = {
    "failed": (":x:", "failed"),
    "cancelled": (":no_entry_sign:", "was cancelled"),
    "timed_out": (":alarm_clock:", "timed out"),
    "rejected": (":no_entry:", "was rejected"),
}


def strip_mention(text: str, bot_user_id: str) -> str:
    """Remove every `<@BOT>` / `<@BOT|name>` mention of the bot and trim the ends.

    A colon or comma right after the mention ("<@BOT>: do X") goes with it; mentions
    of other users and the text's inner line breaks are kept.
    """
    if bot_user_id:
        pattern = rf"<@{re.escape(bot_user_id)}(?:\|[^>]*)?>[:,]?[ \t]*"
        text = re.sub(pattern, "", text)
    return text.strip()


def check_access(
    user: str,
    channel: str,
    allowed_users: Collection[str],
    allowed_channels: Collection[str],
    is_dm: bool,
) -> Refusal | None:
    """Return None when the request may run, else which list refused it ("user" first)."""
    if not _listed(user, allowed_users):
        return "user"
    if not is_dm and not _listed(channel, allowed_channels):
        return "channel"
    return None


def is_allowed(
    user: str,
    channel: str,
    allowed_users: Collection[str],
    allowed_channels: Collection[str],
    is_dm: bool,
) -> bool:
    """True when `user` may run work here: channels need both lists, DMs only the user list."""
    return check_access(user, channel, allowed_users, allowed_channels, is_dm) is None


def _listed(value: str, allowed: Collection[str]) -> bool:
    return bool(value) and ("*" in allowed or value in allowed)


def refusal_text(user_id: str, channel_id: str, reason: Refusal) -> str:
    """Tell a refused user their id (or the channel's) and which setting to add it to."""
    if reason == "user":
        return (
            ":lock: Sorry, you are not allowed to run work here. Your Slack user id is "
            f"`{escape_mrkdwn(user_id)}`: ask an admin to add it to `SLACK_ALLOWED_USERS`."
        )
    return (
        ":lock: Sorry, this channel is not allowed to run work. Its id is "
        f"`{escape_mrkdwn(channel_id)}`: ask an admin to add it to `SLACK_ALLOWED_CHANNELS`, "
        "or send me a direct message."
    )


def escape_mrkdwn(text: str) -> str:
    """Escape the three characters mrkdwn treats as control (`&`, `<`, `>`), nothing else."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def is_cancel_command(text: str) -> bool:
    """True when the mention-stripped text is just "cancel" or "stop" (any case, `!`/`.` ok)."""
    return text.strip().rstrip("!.").strip().lower() in _CANCEL_WORDS


def session_key(team_id: str, channel: str, thread_ts_or_ts: str) -> str:
    """The hub session of a Slack thread: `slack:{team}:{channel}:{thread}`."""
    return f"slack:{team_id}:{channel}:{thread_ts_or_ts}"


def thread_ts_of(event: Mapping[str, Any]) -> str:
    """The thread an event belongs to: its `thread_ts`, or its own `ts` when it starts one."""
    return str(event.get("thread_ts") or event.get("ts") or "")


#: `message` subtypes that still carry a person's request; every other subtype
#: (edits, deletions, joins, bot posts, topic changes...) is not one.
_USER_SUBTYPES = frozenset({"", "file_share", "thread_broadcast"})


def is_user_message(event: Mapping[str, Any], bot_user_id: str) -> bool:
    """True when a `message` event is something a person wrote (not an edit, join or bot post)."""
    if event.get("subtype", "") not in _USER_SUBTYPES:
        return False
    if event.get("bot_id") or event.get("bot_profile"):
        return False
    user = event.get("user")
    return bool(user) and user != bot_user_id


# --------------------------------------------------------------------------- texts


def _one_line(text: str, limit: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def status_text(state: str, detail: str, run_id: str, position: int | None = None) -> str:
    """The one-line status message of a run, e.g. ":gear: Working: reading files · run `r1`"."""
    emoji, label = _STATES.get(state, (":hourglass_flowing_sand:", state.replace("_", " ")))
    line = f"{emoji} {label}"
    if position is not None and position > 0:
        line += f" (position {position} in the queue)"
    if detail.strip():
        line += f": {escape_mrkdwn(_one_line(detail, 200))}"
    return f"{line} · run `{escape_mrkdwn(run_id)}`"


def error_message(error: Mapping[str, Any] | str | None) -> str:
    """The readable part of a hub error: its `message` (or `code`), or the string itself."""
    if isinstance(error, Mapping):
        message = error.get("message") or error.get("detail") or error.get("code")
        code = error.get("code")
        if message and code and code != message:
            return f"{message} ({code})"
        return str(message or "")
    return error or ""


def final_text(
    run_id: str,
    status: str,
    *,
    answer: str = "",
    error: Mapping[str, Any] | str | None = None,
    elapsed_s: float | None = None,
) -> str:
    """The closing message of a run: the answer when it succeeded, else what went wrong.

    `status` is the hub's result status ("succeeded", "failed", "cancelled", "timed_out",
    "rejected") and `error` its error (`{"code", "message"}` or text). A success is the
    answer escaped for mrkdwn (send it as `text`); every other status names the run id
    and the error when there is one.
    """
    if status == "succeeded":
        body = answer.strip()
        return escape_mrkdwn(body) if body else "_(codex finished without a written answer)_"
    emoji, what = _ENDINGS.get(status, (":x:", f"ended ({status.replace('_', ' ')})"))
    took = f" after {elapsed_s:.0f} s" if elapsed_s is not None else ""
    line = f"{emoji} Run `{escape_mrkdwn(run_id)}` {what}{took}"
    reason = error_message(error).strip()
    if reason:
        return f"{line}: {escape_mrkdwn(_one_line(reason, 500))}"
    return line + ("." if status == "cancelled" else ": no reason was given.")


def preview(text: str, n: int) -> str:
    """At most `n` characters from the start of `text`, cut at a line or word, marked "…".

    A code fence left open (by the cut or by the text itself) is closed, so the preview
    renders cleanly above the attached file.
    """
    if n < 16:
        raise ValueError("preview needs n >= 16")
    fences = _Fences(text)
    if len(text) <= n and not fences.is_open(len(text)):
        return text
    room = n - len("\n" + FENCE)
    ellipsis = ""
    if len(text) > room:
        ellipsis = "…"
        room -= len(ellipsis)
    cut = min(room, len(text))
    if ellipsis:
        for sep in ("\n", " "):
            at = text.rfind(sep, 0, room + 1)
            if at >= room // 2:
                cut = at
                break
        cut = _safe_cut(fences, 0, cut)
    head = text[:cut].rstrip() if ellipsis else text[:cut]
    closer = ""
    if fences.is_open(cut):
        closer = FENCE if head.endswith("\n") else "\n" + FENCE
    return head + ellipsis + closer


# --------------------------------------------------------------------------- splitting


class _Fences:
    """Where the fences of a text open and close, as `str.count` sees them."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.starts = [m.start() for m in re.finditer(re.escape(FENCE), text)]
        self.ends = [s + len(FENCE) for s in self.starts]

    def is_open(self, pos: int) -> bool:
        """True when `text[:pos]` leaves a fence open."""
        return bisect.bisect_right(self.ends, pos) % 2 == 1

    def opener(self, pos: int) -> str:
        """The line that reopens the fence open at `pos`, language included, with its newline."""
        start = self.starts[bisect.bisect_right(self.ends, pos) - 1]
        line_start = self.text.rfind("\n", 0, start) + 1
        line_end = self.text.find("\n", start)
        line = self.text[line_start : len(self.text) if line_end < 0 else line_end]
        match = _FENCE_LANG.match(line)
        return f"{FENCE}{match.group(1) if match else ''}\n"

    def inside(self, pos: int) -> int | None:
        """The start of the fence marker that `pos` falls strictly inside, if any."""
        i = bisect.bisect_right(self.starts, pos) - 1
        if i >= 0 and self.starts[i] < pos < self.ends[i]:
            return self.starts[i]
        return None


def _render(fences: _Fences, start: int, end: int) -> str:
    """`text[start:end]` with a fence open at `start` reopened and one open at `end` closed."""
    text = fences.text
    head = fences.opener(start) if start > 0 and fences.is_open(start) else ""
    body = text[start:end]
    tail = ""
    if fences.is_open(end):
        tail = FENCE if body.endswith("\n") else "\n" + FENCE
    return head + body + tail


def _rendered_len(fences: _Fences, start: int, end: int) -> int:
    """`len(_render(fences, start, end))`, without building the string."""
    head = len(fences.opener(start)) if start > 0 and fences.is_open(start) else 0
    tail = 0
    if fences.is_open(end):
        tail = len(FENCE) + (0 if fences.text[end - 1] == "\n" else 1)
    return head + (end - start) + tail


def _split_bodies(text: str, budget: int) -> list[str]:
    """Greedy split of `text` into rendered pieces of at most `budget` characters."""
    fences = _Fences(text)
    line_ends = [m.end() for m in re.finditer("\n", text)]
    if not line_ends or line_ends[-1] != len(text):
        line_ends.append(len(text))
    pieces: list[str] = []
    start = 0
    while start < len(text):
        # The furthest line boundary whose rendered piece still fits. The rendered length
        # never shrinks from one line boundary to the next (closing a fence takes a line
        # at least as long as the closer it saves), so a binary search finds it.
        first = bisect.bisect_right(line_ends, start)
        fit = bisect.bisect_right(
            line_ends, budget, lo=first, key=lambda end: _rendered_len(fences, start, end)
        )
        end = line_ends[fit - 1] if fit > first else _hard_cut(fences, start, budget)
        pieces.append(_render(fences, start, end))
        start = end
    return pieces


def _hard_cut(fences: _Fences, start: int, budget: int) -> int:
    """Where to cut a line too long for a piece: after a nearby space, never inside a fence."""
    text = fences.text
    head = len(fences.opener(start)) if start > 0 and fences.is_open(start) else 0
    room = budget - head - len("\n" + FENCE)
    cut = start + room
    space = max(text.rfind(" ", start, cut), text.rfind("\t", start, cut))
    if space >= start + room // 2:
        cut = space + 1
    return _safe_cut(fences, start, cut)


_ENTITY = re.compile(r"&(?:amp|lt|gt);")


def _safe_cut(fences: _Fences, start: int, cut: int) -> int:
    """Move `cut` left out of a fence marker or an `&amp;`-style entity, staying past `start`."""
    text = fences.text
    inside = fences.inside(cut)
    if inside is not None and inside > start:
        cut = inside
    amp = text.rfind("&", max(start + 1, cut - 4), cut)
    entity = _ENTITY.match(text, amp) if amp >= 0 else None
    if entity is not None and entity.end() > cut:
        cut = amp
    return cut


def split_message(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """Split `text` into messages of at most `limit` characters, labels included.

    Cuts fall on line boundaries; a line longer than a message is cut (after a space
    when one is near). A ``` fence open at a cut is closed at the end of the message
    and reopened, with its language, at the start of the next; a fence the text leaves
    open is closed. Messages are labelled "(1/3)\\n"... only when there are several.
    """
    if limit < MIN_SPLIT_LIMIT:
        raise ValueError(f"split_message needs limit >= {MIN_SPLIT_LIMIT}")
    whole = _split_bodies(text, limit)
    if len(whole) <= 1:
        return whole or [text]
    digits = 1
    while True:
        pieces = _split_bodies(text, limit - (2 * digits + _LABEL_WIDTH_EXTRA))
        if len(str(len(pieces))) <= digits:
            total = len(pieces)
            return [f"({i}/{total})\n{piece}" for i, piece in enumerate(pieces, 1)]
        digits = len(str(len(pieces)))
