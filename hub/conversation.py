"""What an OpenAI-shaped request asks codex, kept free of I/O.

Both endpoints (``/v1/chat/completions`` messages, ``/v1/responses`` input items) are
turned into :class:`Turn` lists, and a turn list into what codex gets:

- ``system`` and ``developer`` turns become codex's *instructions* (its
  ``developer_instructions``), wherever they stand;
- the turns after the last ``assistant`` turn are the new message, the prompt;
- the turns before it are the history. When the history ends in an answer this hub
  gave (:func:`history_key` matches what :func:`answer_key` recorded then), the run
  resumes the codex thread that produced it and the history is not sent again;
  otherwise it goes into the prompt as clearly delimited context
  (:func:`prompt_with_context`).

Keys hash the caller's principal too, so one caller never continues another's thread.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson


class ConversationError(ValueError):
    """The request's conversation cannot be run; ``param`` and ``code`` say where and why."""

    def __init__(self, message: str, *, param: str, code: str) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


@dataclass(frozen=True)
class Turn:
    """One message: its role, its text and the image URLs it carries."""

    role: str
    text: str
    images: tuple[str, ...] = ()


@dataclass
class Ask:
    """What codex is asked: prompt, instructions, images, and the history's key."""

    prompt: str
    instructions: str
    images: list[str] = field(default_factory=list)
    #: The key of the history before the new message (None: there is none).
    history_key: str | None = None
    #: The history, for a prompt that must carry it as context.
    history: list[Turn] = field(default_factory=list)
    #: Every turn of the request, to key the answer with once it is known.
    turns: list[Turn] = field(default_factory=list)


INSTRUCTION_ROLES = ("system", "developer")
TEXT_PARTS = ("text", "input_text", "output_text", "refusal")
IMAGE_PARTS = ("image_url", "input_image")


def _part_image(part: dict[str, Any]) -> str | None:
    url = part.get("image_url")
    if isinstance(url, dict):
        url = url.get("url")
    return url if isinstance(url, str) and url else None


def turn_of(role: str, content: Any, where: str) -> Turn:
    """A turn from a message's ``content``: a string, or a list of text and image parts."""
    if content is None:
        return Turn(role, "")
    if isinstance(content, str):
        return Turn(role, content)
    if not isinstance(content, list):
        raise ConversationError(
            f"{where}.content must be a string or a list of parts",
            param=f"{where}.content",
            code="invalid_value",
        )
    texts: list[str] = []
    images: list[str] = []
    for index, part in enumerate(content):
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind in TEXT_PARTS and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind in IMAGE_PARTS:
            url = _part_image(part)
            if url is None:
                raise ConversationError(
                    f"{where}.content[{index}] has no image URL",
                    param=f"{where}.content[{index}]",
                    code="invalid_value",
                )
            images.append(url)
        elif kind in ("input_file", "file", "input_audio"):
            raise ConversationError(
                f"{where}.content[{index}] is a {kind} part: codex takes text and images only",
                param=f"{where}.content[{index}]",
                code="unsupported_content",
            )
    return Turn(role, "\n".join(t for t in texts if t), tuple(images))


def chat_turns(messages: list[dict[str, Any]]) -> list[Turn]:
    """The turns of a chat completions request's ``messages``."""
    turns = []
    for index, message in enumerate(messages):
        role = str(message.get("role", ""))
        if role == "function":
            role = "tool"
        turns.append(turn_of(role, message.get("content"), f"messages[{index}]"))
    return turns


def response_turns(items: str | list[Any]) -> list[Turn]:
    """The turns of a Responses request's ``input`` (a string, or a list of items)."""
    if isinstance(items, str):
        return [Turn("user", items)]
    turns = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ConversationError(
                f"input[{index}] must be an object", param=f"input[{index}]", code="invalid_value"
            )
        kind = item.get("type", "message")
        if kind == "message":
            turns.append(
                turn_of(str(item.get("role", "user")), item.get("content"), f"input[{index}]")
            )
        elif kind in ("function_call_output", "custom_tool_call_output"):
            turns.append(Turn("tool", str(item.get("output", ""))))
        elif kind in ("function_call", "custom_tool_call"):
            turns.append(Turn("assistant", f"(called {item.get('name', 'a tool')})"))
        elif kind == "reasoning":
            continue
        else:
            raise ConversationError(
                f"input[{index}] is an item of type {kind!r}, which this hub does not take",
                param=f"input[{index}].type",
                code="unsupported_item",
            )
    return turns


def _digest(principal: str, turns: Iterable[Turn]) -> str:
    canonical = [principal] + [[t.role, t.text.strip(), list(t.images)] for t in turns]
    try:
        # Every run that answers computes one (its answer's key): orjson, not json. The
        # keys live in this process only (Threads), so only their equality matters.
        data = orjson.dumps(canonical)
    except TypeError:  # a lone surrogate, which orjson refuses
        text = json.dumps(canonical, ensure_ascii=False, separators=(",", ":"))
        data = text.encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()


def answer_key(principal: str, turns: list[Turn], answer: str) -> str:
    """The key under which a run's answer continues: its request's turns plus the answer."""
    return _digest(principal, [*turns, Turn("assistant", answer)])


def _conversational(turns: Iterable[Turn]) -> list[Turn]:
    return [t for t in turns if t.role not in INSTRUCTION_ROLES]


def ask(principal: str, turns: list[Turn], where: str = "messages") -> Ask:
    """What codex is asked for ``turns``; raises :class:`ConversationError` if nothing."""
    instructions = "\n\n".join(
        t.text.strip() for t in turns if t.role in INSTRUCTION_ROLES and t.text.strip()
    )
    last_user = max((i for i, t in enumerate(turns) if t.role == "user"), default=-1)
    last_answer = max((i for i, t in enumerate(turns) if t.role == "assistant"), default=-1)
    trailing = [t for t in turns[max(last_user, last_answer) + 1 :] if t.role == "tool"]
    if trailing or (turns and turns[-1].role == "tool"):
        raise ConversationError(
            "the conversation ends with a tool result: codex runs its own tools and never "
            "calls a client's, so there is no tool call to answer",
            param=where,
            code="unsupported_tool_result",
        )
    new = [t for t in turns[last_answer + 1 :] if t.role == "user"]
    text = "\n\n".join(t.text for t in new if t.text.strip())
    images = [url for t in new for url in t.images]
    if not text.strip() and not images:
        raise ConversationError(
            f"no instruction: the {where} hold no user message with text after the last "
            "assistant message",
            param=where,
            code="no_user_message",
        )
    history = turns[: last_answer + 1] if last_answer >= 0 else []
    return Ask(
        prompt=text,
        instructions=instructions,
        images=images,
        history_key=_digest(principal, history) if history else None,
        history=_conversational(history),
        turns=list(turns),
    )


CONTEXT_HEAD = (
    "The conversation so far, for context (earlier turns, not new instructions):\n<conversation>"
)
CONTEXT_TAIL = "</conversation>\n\nThe new message, to answer now:\n"


def prompt_with_context(history: list[Turn], prompt: str) -> str:
    """``prompt`` after the earlier turns, each in a ``<role>`` block inside ``<conversation>``."""
    if not history:
        return prompt
    blocks = []
    for turn in history:
        images = "".join(f"\n[image: {_image_label(url)}]" for url in turn.images)
        blocks.append(f"<{turn.role}>\n{turn.text.strip()}{images}\n</{turn.role}>")
    return "\n".join([CONTEXT_HEAD, *blocks, CONTEXT_TAIL]) + prompt


def _image_label(url: str) -> str:
    return "inline image" if url.startswith("data:") else url[:200]


class Threads:
    """Which codex thread (and executor) produced an answer, by :func:`answer_key`.

    Bounded and in memory: a conversation the hub no longer knows (after a restart, or
    beyond ``limit`` answers) is sent to codex as context instead.
    """

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._threads: OrderedDict[str, tuple[str, str | None]] = OrderedDict()

    def remember(self, key: str, thread_id: str, executor: str | None) -> None:
        self._threads[key] = (thread_id, executor)
        self._threads.move_to_end(key)
        while len(self._threads) > self.limit:
            self._threads.popitem(last=False)

    def find(self, key: str | None) -> tuple[str, str | None] | None:
        if key is None:
            return None
        found = self._threads.get(key)
        if found is not None:
            self._threads.move_to_end(key)
        return found


def apply_stop(answer: str, stop: str | list[str] | None) -> str:
    """``answer`` cut before the first of the ``stop`` sequences, as OpenAI does."""
    if not stop:
        return answer
    sequences = [stop] if isinstance(stop, str) else [s for s in stop if s]
    cut = min((answer.find(s) for s in sequences if s in answer), default=-1)
    return answer if cut < 0 else answer[:cut]
