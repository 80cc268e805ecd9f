"""Pure conversions between Slack's wire formats and codex-hub runs; no I/O here.

Everything Slack-specific that can be decided without a network lives here so the tests
can call it directly: mention stripping, access checks, mrkdwn escaping, splitting long
answers into messages without breaking code fences, and the texts the bridge posts;
and for the bridge: where a request's replies go (`Target`, carried in the run's
origin), what to post for a finished run (`reply_parts`), the message metadata that
lets a restarted bridge find its status message and the parts it already posted
(`find_status`, `already_posted`), and which Slack errors are worth another try
(`may_succeed_later`).

Access rule (`is_allowed`): lists fail closed (an empty list lets nobody in) and `*`
lets everyone in. In a channel both the user and the channel must be allowed; in a DM
only the user list is consulted, because a DM's channel id is per person and nobody
could list it in advance.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from bridges.core.approval import CHOICES, Approval, button_data, decided_line, request_lines
from bridges.core.texts import STATUS_ANSWER_CHARS, tail
from wire import RunState

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
# The hub's run states (wire.RunState); anything else is shown by name.
_STATES: Mapping[str, tuple[str, str]] = {
    RunState.QUEUED: (":hourglass_flowing_sand:", "Queued"),
    RunState.OPTIMIZING: (":pencil2:", "Sharpening the prompt"),
    RunState.RUNNING: (":gear:", "Working"),
    RunState.AWAITING_APPROVAL: (":raised_hand:", "Waiting for an approval"),
    RunState.SUCCEEDED: (":white_check_mark:", "Done"),
    RunState.FAILED: (":x:", "Failed"),
    RunState.CANCELLED: (":no_entry_sign:", "Cancelled"),
    RunState.TIMED_OUT: (":alarm_clock:", "Timed out"),
    RunState.REJECTED: (":no_entry:", "Rejected"),
}
_ENDINGS: Mapping[str, tuple[str, str]] = {
    RunState.FAILED: (":x:", "failed"),
    RunState.CANCELLED: (":no_entry_sign:", "was cancelled"),
    RunState.TIMED_OUT: (":alarm_clock:", "timed out"),
    RunState.REJECTED: (":no_entry:", "was rejected"),
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


def status_with_answer(status: str, answer: str) -> str:
    """The status message with the end of the answer being written, escaped for mrkdwn."""
    return f"{status}\n\n{escape_mrkdwn(tail(answer, STATUS_ANSWER_CHARS))}"


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


# --------------------------------------------------------------------------- replies

#: Characters of the answer shown above the file that carries a long answer.
PREVIEW_CHARS = 1500
#: `event_type` of the metadata every answer part carries, so a restarted bridge can
#: tell which parts of a reply are already in the thread.
REPLY_EVENT_TYPE = "codex_hub_reply"
#: `event_type` of the status message's metadata, which names the request it is about.
STATUS_EVENT_TYPE = "codex_hub_status"
#: Reactions on the request: while the run works, and at its end.
WORKING_REACTION = "eyes"
SUCCESS_REACTION = "white_check_mark"
FAILURE_REACTION = "x"

# Errors after which the same call may succeed later: Slack's own trouble, and
# credentials an admin can fix (a reply waits in the hub's outbox meanwhile).
_RETRYABLE_ERRORS = frozenset(
    {
        "ratelimited",
        "rate_limited",
        "internal_error",
        "fatal_error",
        "service_unavailable",
        "request_timeout",
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
    }
)


@dataclass(frozen=True)
class Target:
    """Where a request came from and where its replies go.

    It travels in the run's `origin` (`to_origin` / `from_origin`), so whichever bridge
    process gets the reply, even one started after the request, can post it. The
    status message is not in it (it is posted while the run is submitted, so as not
    to delay it): `find_status` finds it in the thread by its metadata.
    """

    team: str
    channel: str
    #: The thread replies go to (and the session): the request's own ts if it started one.
    thread_ts: str
    #: The request message, which gets the reactions.
    ts: str
    user: str = ""

    @classmethod
    def of_event(cls, event: Mapping[str, Any], team: str = "") -> Target:
        """The target of a `message` or `app_mention` event."""
        return cls(
            team=team or str(event.get("team") or ""),
            channel=str(event.get("channel") or ""),
            thread_ts=thread_ts_of(event),
            ts=str(event.get("ts") or ""),
            user=str(event.get("user") or ""),
        )

    @classmethod
    def of_press(cls, body: Mapping[str, Any], team_id: str | None = None) -> Target | None:
        """The target of a button press: the button's message, the presser as ``user``;
        None when the press names no message."""
        message = body.get("message") or {}
        channel = str((body.get("channel") or {}).get("id") or "")
        user = str((body.get("user") or {}).get("id") or "")
        ts = str(message.get("ts") or "")
        if not channel or not ts:
            return None
        team = str((body.get("team") or {}).get("id") or team_id or "")
        return cls(team, channel, str(message.get("thread_ts") or ts), ts, user)

    @classmethod
    def from_origin(cls, origin: Mapping[str, Any]) -> Target | None:
        """The target a run's origin names; None when it names no Slack message."""
        channel = str(origin.get("channel") or "")
        ts = str(origin.get("ts") or "")
        thread_ts = str(origin.get("thread_ts") or ts)
        if not channel or not thread_ts:
            return None
        return cls(
            team=str(origin.get("team") or ""),
            channel=channel,
            thread_ts=thread_ts,
            ts=ts,
            user=str(origin.get("user") or ""),
        )

    def to_origin(self) -> dict[str, Any]:
        """The run's `origin`: plain JSON, everything a reply needs."""
        return {
            "team": self.team,
            "channel": self.channel,
            "thread_ts": self.thread_ts,
            "ts": self.ts,
            "user": self.user,
        }

    @property
    def session_key(self) -> str:
        """The hub session of the thread (see `session_key`)."""
        return session_key(self.team, self.channel, self.thread_ts)


def is_direct(event: Mapping[str, Any]) -> bool:
    """True for an event in a direct message with the bot (`im`; DM channel ids start with D)."""
    return event.get("channel_type") == "im" or str(event.get("channel") or "").startswith("D")


@dataclass(frozen=True)
class TextPart:
    """One message of a reply."""

    text: str


@dataclass(frozen=True)
class FilePart:
    """A reply too long for messages: the whole answer as a file, a preview as its comment."""

    content: str
    filename: str
    title: str
    comment: str


@dataclass(frozen=True)
class ButtonPart:
    """A message with one button (Block Kit); its press comes back with ``value``."""

    text: str
    label: str
    action_id: str
    value: str

    def blocks(self) -> list[dict[str, Any]]:
        """The message's blocks: the text, then the button."""
        return [
            {"type": "section", "text": {"type": "mrkdwn", "text": self.text}},
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": self.label},
                        "action_id": self.action_id,
                        "value": self.value,
                    }
                ],
            },
        ]


ReplyPart = TextPart | FilePart | ButtonPart

#: The action id of the "Open PR" button; its value is the run's id.
OPEN_PR_ACTION = "codex_hub_open_pr"
#: What a press of the button asks for: the same as a user's ``!pr`` message.
OPEN_PR_PROMPT = "!pr"


def open_pr_offer(run_id: str) -> ButtonPart:
    """The "Open PR" button under an answer whose conversation changed its repository."""
    return ButtonPart(
        "These changes are not in a pull request yet.", "Open PR", OPEN_PR_ACTION, run_id
    )


def open_pr_pressed(user_id: str) -> str:
    """The button's message once pressed: the button goes, this says who pressed it."""
    return f"Pull request requested by <@{escape_mrkdwn(user_id)}>."


def diff_file(diff: str, run_id: str) -> FilePart:
    """The conversation's changes as a ``.diff`` file after the answer."""
    return FilePart(diff, f"{run_id}.diff", f"Changes of {run_id}", "The changes so far (git diff)")


def answer_filename(run_id: str) -> str:
    """The name of the file that carries a long answer (unique per run)."""
    return f"codex-answer-{run_id}.md"


def reply_parts(
    run_id: str,
    status: str,
    answer: str = "",
    error: Mapping[str, Any] | str | None = None,
    *,
    elapsed_s: float | None = None,
    file_threshold: int = 12_000,
    limit: int = MESSAGE_LIMIT,
    preview_chars: int = PREVIEW_CHARS,
) -> list[ReplyPart]:
    """What to post for a finished run, in order.

    A successful answer longer than `file_threshold` characters becomes one file with a
    preview; anything else is `final_text` split into labelled messages of at most
    `limit` characters (whitespace-only pieces dropped).
    """
    body = answer.strip()
    if status == "succeeded" and len(body) > file_threshold:
        head = preview(escape_mrkdwn(body), preview_chars)
        comment = f"{head}\n_The whole answer ({len(body):,} characters) is in the file._"
        return [
            FilePart(
                content=body + "\n",
                filename=answer_filename(run_id),
                title=f"codex answer, run {run_id}",
                comment=comment,
            )
        ]
    text = final_text(run_id, status, answer=answer, error=error, elapsed_s=elapsed_s)
    return [TextPart(chunk) for chunk in split_message(text, limit) if chunk.strip()]


def reply_metadata(run_id: str, index: int, count: int) -> dict[str, Any]:
    """The message metadata of part `index` (0-based) of `count`: finds it again later."""
    return {
        "event_type": REPLY_EVENT_TYPE,
        "event_payload": {"run_id": run_id, "part": index + 1, "parts": count},
    }


def already_posted(
    messages: Iterable[Mapping[str, Any]], run_id: str, parts: list[ReplyPart]
) -> set[int]:
    """Indexes of `parts` that `messages` (a thread, read with its metadata) already hold.

    Text parts are recognised by their metadata (`reply_metadata`), a file by its name.
    Parts of a reply that was split differently (another part count) do not count.
    """
    found: set[int] = set()
    filename = answer_filename(run_id)
    for message in messages:
        part = _part_number(message.get("metadata"), run_id, len(parts))
        if part is not None and isinstance(parts[part - 1], (TextPart, ButtonPart)):
            found.add(part - 1)
        for file in message.get("files") or []:
            if isinstance(file, Mapping) and file.get("name") == filename:
                found.update(i for i, p in enumerate(parts) if isinstance(p, FilePart))
    return found


def _part_number(meta: Any, run_id: str, count: int) -> int | None:
    """The 1-based part number `reply_metadata` put in `meta`, if it is one of this reply."""
    if not isinstance(meta, Mapping) or meta.get("event_type") != REPLY_EVENT_TYPE:
        return None
    payload = meta.get("event_payload")
    if not isinstance(payload, Mapping):
        return None
    if payload.get("run_id") != run_id or payload.get("parts") != count:
        return None
    part = payload.get("part")
    return part if isinstance(part, int) and 1 <= part <= count else None


def status_metadata(request_ts: str) -> dict[str, Any]:
    """The metadata of the status message about the request posted at `request_ts`."""
    return {"event_type": STATUS_EVENT_TYPE, "event_payload": {"request_ts": request_ts}}


def find_status(messages: Iterable[Mapping[str, Any]], request_ts: str) -> tuple[str, str] | None:
    """`(ts, text)` of the status message about request `request_ts` in a thread, if any."""
    for message in messages:
        meta = message.get("metadata")
        if not isinstance(meta, Mapping) or meta.get("event_type") != STATUS_EVENT_TYPE:
            continue
        payload = meta.get("event_payload")
        ts = message.get("ts")
        if isinstance(payload, Mapping) and payload.get("request_ts") == request_ts and ts:
            return str(ts), str(message.get("text") or "")
    return None


def may_succeed_later(error: str, http_status: int = 200) -> bool:
    """True when a call Slack refused may succeed if made again later.

    Rate limits, Slack's own failures (5xx) and credentials an admin can fix are worth
    another try; everything else (an unknown channel, an archived one, a bad argument)
    will be refused again.
    """
    return http_status == 429 or http_status >= 500 or error in _RETRYABLE_ERRORS


def elapsed_since(ts: str, now: float) -> float | None:
    """Seconds from a Slack message timestamp to `now`; None when `ts` is not one."""
    try:
        elapsed = now - float(ts)
    except (TypeError, ValueError):
        return None
    return elapsed if elapsed >= 0 else None


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


def closing_status_text(status: str, run_id: str, elapsed_s: float | None = None) -> str:
    """The status message once the run ended, e.g. ":white_check_mark: Done in 4.2 s · run `r1`"."""
    emoji, label = _STATES.get(status, (":x:", status.replace("_", " ")))
    took = ""
    if elapsed_s is not None:
        took = f" {'in' if status == 'succeeded' else 'after'} {_duration(elapsed_s)}"
    return f"{emoji} {label}{took} · run `{escape_mrkdwn(run_id)}`"


def closing_reaction(status: str) -> str:
    """The reaction a finished request gets: a check mark for success, a cross otherwise."""
    return SUCCESS_REACTION if status == "succeeded" else FAILURE_REACTION


def help_text() -> str:
    """What the bot says to an empty mention."""
    return (
        ":wave: Tell me what to do and I hand it to codex, e.g. `@codex list the open "
        "pull requests` (in a direct message, just write it). Reply in the thread to "
        "continue the same conversation; `cancel` or `stop` in the thread stops the "
        "running request. Start with `!optimize` or `!raw` to turn prompt rewriting on "
        "or off for one request; start with `@label` (or an executor's name) to send it "
        "to those executors, or set the channel's with `target @label`."
    )


def undeliverable_text(run_id: str, reason: str) -> str:
    """Said when Slack refused the answer itself for good (the run's result is in the hub)."""
    return (
        f":x: Slack refused the answer of run `{escape_mrkdwn(run_id)}` "
        f"({escape_mrkdwn(_one_line(reason, 200))}); it is kept in the hub's run history."
    )


def cancel_text(run_ids: Collection[str]) -> str:
    """The answer to `cancel`: which run is being cancelled, or that none is running."""
    if not run_ids:
        return ":information_source: Nothing is running in this thread."
    names = ", ".join(f"`{escape_mrkdwn(r)}`" for r in run_ids)
    return f":octagonal_sign: Cancelling run {names}."


def kept_text() -> str:
    """Said when a request is kept because the hub cannot be reached right now."""
    return (
        ":hourglass_flowing_sand: I cannot reach the codex hub right now; your request is "
        "kept and will be sent as soon as the hub is back."
    )


def hub_error_text(code: str, message: str) -> str:
    """Why a request could not start, from the hub's error code and message."""
    if code == "queue_full":
        return ":warning: Too much work is waiting right now; try again in a little while."
    if code == "hub_unreachable":
        return ":warning: I cannot reach the codex hub right now; try again in a minute."
    if code == "hub_closing":
        return ":warning: The codex hub is restarting; try again in a minute."
    if code == "pending_full":
        return (
            ":warning: I cannot reach the codex hub, and too many requests are already "
            "waiting for it: this one was not kept. Send it again once the hub is back."
        )
    if code == "pending_expired":
        return (
            ":warning: The codex hub did not come back in time: this request was never sent. "
            "Send it again once the hub is back."
        )
    if code == "bridge_stopping":
        return ":warning: The bot stopped before the codex hub was back: this request was not sent."
    if code == "store_unavailable":
        return (
            ":warning: The codex hub cannot save new work right now (its disk is full); "
            "try again later."
        )
    reason = escape_mrkdwn(_one_line(message or code, 300))
    return f":warning: The codex hub did not take the request: {reason}"


# --- approvals (bridges/core/approval.py) -------------------------------------------

#: The action ids of the approval buttons start with this (then the decision).
APPROVAL_ACTION = "codex_hub_approval"


def approval_text(approval: Approval) -> str:
    """The request in mrkdwn: what codex asks to run (or change) and why."""
    headline, what, why = request_lines(approval)
    text = f":raised_hand: *{headline}* (run `{approval.run_id}`)"
    if what:
        text += f"\n```{escape_mrkdwn(what)}```"
    if why:
        text += f"\n*Why:* {escape_mrkdwn(why)}"
    return text


def approval_blocks(approval: Approval) -> list[dict[str, Any]]:
    """The request and its three buttons (each carries the run, the request, the choice)."""
    styles = {"approve": "primary", "deny": "danger"}
    buttons = []
    for decision, label, _ in CHOICES:
        button: dict[str, Any] = {
            "type": "button",
            "text": {"type": "plain_text", "text": label},
            "action_id": f"{APPROVAL_ACTION}_{decision}",
            "value": button_data(approval.run_id, approval.approval_id, decision),
        }
        if decision in styles:
            button["style"] = styles[decision]
        buttons.append(button)
    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": approval_text(approval)}},
        {"type": "actions", "elements": buttons},
    ]


def approval_decided_text(approval: Approval) -> str:
    """The buttons' message once decided: the request, then who decided and when."""
    line = decided_line(approval, lambda user: f"<@{escape_mrkdwn(user)}>")
    return f"{approval_text(approval)}\n{line}"
