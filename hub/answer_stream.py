"""The answer as codex writes it: ``answer_delta`` events folded for the hub's readers.

An executor of the app-server engine sends the answer while the model writes it, as
``answer_delta`` events ({"item_id", "delta", "phase"?}, joined by the executor into at
most a few a second; see ``executor.appserver_protocol``). A turn may hold several agent
messages: narration between tool calls, then the answer, which is the last one (the
run's ``answer``). A message whose ``phase`` is ``commentary`` is narration for sure;
others are taken for the answer until another message follows them.

Two pure folds, no I/O, that the hub's surfaces feed:

- :class:`AnswerSoFar`: the message being written, for a chat's status message (the
  ``answer`` of a ``progress`` frame, its end only).
- :class:`AnswerStream`: what a streaming HTTP response sends as content, so that the
  content a client puts together equals the run's final answer: each delta as it comes,
  then at the end only what the deltas lacked (:meth:`AnswerStream.rest`). A message
  that turns out not to be the last (another follows it) stays sent; the next one is
  set off from it by a blank line, and the client's text then holds both.
"""

from __future__ import annotations

from typing import Any

ANSWER_DELTA = "answer_delta"
#: Messages of this phase are narration, not the answer.
COMMENTARY = "commentary"


def answer_delta(event: dict[str, Any]) -> tuple[str, str] | None:
    """(item id, text) of an ``answer_delta`` event of the answer; None for any other."""
    if event.get("kind") != ANSWER_DELTA or event.get("phase") == COMMENTARY:
        return None
    delta = event.get("delta")
    if not isinstance(delta, str) or not delta:
        return None
    return str(event.get("item_id") or ""), delta


class AnswerSoFar:
    """The agent message codex is writing now (a new message starts it over)."""

    def __init__(self) -> None:
        self.item: str | None = None
        self.text = ""

    def feed(self, event: dict[str, Any]) -> bool:
        """Take one event; True when the text changed."""
        found = answer_delta(event)
        if found is None:
            return False
        item, delta = found
        if item != self.item:
            self.item, self.text = item, ""
        self.text += delta
        return True

    def tail(self, limit: int) -> str:
        """The text's end, at most ``limit`` characters (``…`` first when cut)."""
        if len(self.text) <= limit:
            return self.text
        return "…" + self.text[-(limit - 1) :]


class AnswerStream:
    """What a streaming response sends as content (see the module docstring)."""

    def __init__(self) -> None:
        self.item: str | None = None
        #: The text of the message being streamed.
        self.current = ""
        #: Everything sent as content so far.
        self.sent = ""

    def feed(self, event: dict[str, Any]) -> str:
        """The content to send now for one event ("" for none)."""
        found = answer_delta(event)
        if found is None:
            return ""
        item, delta = found
        out = delta
        if item != self.item:
            if self.current:
                out = "\n\n" + delta  # the earlier message was not the last one
            self.item, self.current = item, ""
        self.current += delta
        self.sent += out
        return out

    def rest(self, answer: str) -> str:
        """What is left to send once the run has ``answer``: what the deltas lacked."""
        if not self.sent:
            return answer
        if answer.startswith(self.current):
            return answer[len(self.current) :]
        # Not the message streamed (an answer without deltas, rewritten): all of it.
        return "\n\n" + answer
