"""The wire codec: frames to websocket messages and back, pure (no I/O, no queue).

Both ends use it: the hub (``hub.ws_nodes``) and the node client
(``kernel.node_client``). A writer drains its own queue and hands the frames it found to
:func:`batch` (or :func:`encode`); a reader hands each message to :func:`decode`.

A message holds one frame, or (protocol 2) a batch: a JSON array of frames. A batch
holds at most ``BATCH_MAX_FRAMES`` frames and ``BATCH_MAX_BYTES`` bytes; a frame too big
to share a message goes alone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from pydantic import TypeAdapter, ValidationError
from pydantic_core import from_json

from wire.codes import BATCH_MAX_BYTES, BATCH_MAX_FRAMES, MAX_NESTING, ErrorCode
from wire.protocol import (
    BRIDGE_BATCH,
    BRIDGE_FRAME,
    EXECUTOR_BATCH,
    EXECUTOR_FRAME,
    TO_BRIDGE_BATCH,
    TO_BRIDGE_FRAME,
    TO_EXECUTOR_BATCH,
    TO_EXECUTOR_FRAME,
    ErrorFrame,
    FrameModel,
    error_frame,
)

#: A node's role: whose frames a message holds (sent by that node, or sent to it).
Role = Literal["executor", "bridge"]
#: Who sent the message being decoded: a node (the hub reads it) or the hub (a node does).
Sender = Literal["node", "hub"]

TOO_DEEP = f"the message is nested deeper than {MAX_NESTING} levels"
#: The store writes JSON with orjson, which holds integers of 64 bits at most.
UNSTORABLE = "a number in the frame does not fit in 64 bits"
_INT_RANGE = range(-(2**63), 2**64)
#: Runs of at most 18 digits, and what is not a digit, taken without backtracking: where
#: a match of it stops short of the end, 19 digits follow (enough for an integer past 64
#: bits; JSON cannot spell such a number shorter). Several times faster than searching
#: for ``[0-9]{19}``, which tries again at every digit, on every message a node sends.
_SHORT_NUMBERS = re.compile(r"(?:[^0-9]++|[0-9]{1,18}+(?![0-9]))*+")


def _long_number(text: str) -> bool:
    """True when ``text`` holds a run of 19 or more ASCII digits."""
    match = _SHORT_NUMBERS.match(text)
    return match is not None and match.end() != len(text)


_ADAPTERS: dict[tuple[Sender, Role], tuple[TypeAdapter[Any], TypeAdapter[list[Any]]]] = {
    ("node", "executor"): (EXECUTOR_FRAME, EXECUTOR_BATCH),
    ("node", "bridge"): (BRIDGE_FRAME, BRIDGE_BATCH),
    ("hub", "executor"): (TO_EXECUTOR_FRAME, TO_EXECUTOR_BATCH),
    ("hub", "bridge"): (TO_BRIDGE_FRAME, TO_BRIDGE_BATCH),
}


def dump(frame: FrameModel | Mapping[str, Any]) -> dict[str, Any]:
    """A frame model as the dict that goes on the wire (a dict is taken as it is)."""
    if isinstance(frame, FrameModel):
        return frame.dump()
    return dict(frame)


def encode_frame(frame: FrameModel | Mapping[str, Any]) -> str:
    """One frame as the text of a message."""
    data = dump(frame)
    try:
        return orjson.dumps(data).decode()
    except TypeError:  # a lone surrogate, quoted from a peer's bad frame in an error
        return json.dumps(data, separators=(",", ":"))


def batch(encoded: Iterable[str]) -> Iterator[str]:
    """Frames already encoded (:func:`encode_frame`), as few messages as fit the limits:
    a lone frame goes as it is, several as a JSON array."""
    parts: list[str] = []
    size = 0
    for data in encoded:
        if parts and (len(parts) >= BATCH_MAX_FRAMES or size + len(data) > BATCH_MAX_BYTES):
            yield _join(parts)
            parts, size = [], 0
        parts.append(data)
        size += len(data) + 1
    if parts:
        yield _join(parts)


def encode(frames: Iterable[FrameModel | Mapping[str, Any]]) -> list[str]:
    """``frames``, in order, as the messages to send a peer that takes batches."""
    return list(batch(encode_frame(frame) for frame in frames))


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else "[" + ",".join(parts) + "]"


@dataclass
class Decoded:
    """What one message held: the usable frames, in order, and an ``error`` frame for
    each one that was not (the hub sends those back; a node logs them)."""

    frames: list[Any] = field(default_factory=list)
    errors: list[ErrorFrame] = field(default_factory=list)


def decode(message: str | bytes, role: Role, sender: Sender = "node") -> Decoded:
    """The frames of one message between the hub and a node of ``role``.

    ``sender`` "node": frames the node sent (the hub reads them); "hub": frames the hub
    sent it. Each frame that is malformed, of an unknown kind, or (from a node) holds a
    number the store cannot write is left out with an ``error`` (``bad_frame``, with its
    ``req_id`` when it has one); the rest of a batch is kept all the same. A message
    nested deeper than ``MAX_NESTING`` is refused before it is walked.
    """
    adapter, batch_adapter = _ADAPTERS[(sender, role)]
    data = message.decode(errors="replace") if isinstance(message, bytes) else message
    check_numbers = sender == "node"
    out = Decoded()
    if data[:1] != "[":
        try:
            frame = adapter.validate_json(data)
        except ValidationError as exc:
            if _too_deep(exc):
                out.errors.append(error_frame(ErrorCode.BAD_FRAME, TOO_DEEP))
            else:
                out.errors.append(
                    error_frame(ErrorCode.BAD_FRAME, _first_error(exc), _req_id(data))
                )
            return out
        if check_numbers and not _storable(frame, data):
            out.errors.append(
                error_frame(ErrorCode.BAD_FRAME, UNSTORABLE, getattr(frame, "req_id", None))
            )
            return out
        out.frames.append(frame)
        return out
    long_numbers = check_numbers and _long_number(data)
    if not long_numbers:
        try:
            out.frames = batch_adapter.validate_json(data)
            return out
        except ValidationError:
            pass  # find the bad ones below, one by one
    try:
        # jiter, as above: the same depth limit, and integers of any size.
        items = from_json(data)
    except ValueError as exc:
        problem = TOO_DEEP if _too_deep(exc) else f"the batch is not valid JSON: {exc}"
        out.errors.append(error_frame(ErrorCode.BAD_FRAME, problem))
        return out
    if not isinstance(items, list):
        out.errors.append(error_frame(ErrorCode.BAD_FRAME, "the message is not a frame"))
        return out
    for item in items:
        req_id = item.get("req_id") if isinstance(item, dict) else None
        req_id = req_id if isinstance(req_id, str) else None
        try:
            frame = adapter.validate_python(item)
        except ValidationError as exc:
            out.errors.append(error_frame(ErrorCode.BAD_FRAME, _first_error(exc), req_id))
            continue
        if long_numbers and not _storable(frame):
            out.errors.append(error_frame(ErrorCode.BAD_FRAME, UNSTORABLE, req_id))
            continue
        out.frames.append(frame)
    return out


def decode_objects(message: str | bytes) -> list[dict[str, Any]] | str:
    """The JSON objects of one message (one, or a batch of them), unchecked beyond that;
    or why there are none (not JSON, too deep, or not objects)."""
    try:
        data = from_json(message)
    except ValueError as exc:
        return TOO_DEEP if _too_deep(exc) else f"not JSON: {exc}"
    frames = data if isinstance(data, list) else [data]
    if not all(isinstance(frame, dict) for frame in frames):
        return "the message holds no frames"
    return frames


def first_error(exc: ValidationError) -> str:
    """The first problem of a validation error, as ``where: what``."""
    return _first_error(exc)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "frame"
    return f"{where}: {err.get('msg', 'invalid')}"


def _storable(frame: Any, raw: str | None = None) -> bool:
    """True when the store can write every value of ``frame`` (free-form dicts included).

    ``raw`` is the frame's JSON text: without 19 digits in a row it holds no integer
    that could be too big, and the walk is skipped.
    """
    if raw is not None and not _long_number(raw):
        return True
    stack: list[Any] = [frame.model_dump()]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list | tuple):
            stack.extend(value)
        elif isinstance(value, int) and not isinstance(value, bool) and value not in _INT_RANGE:
            return False
    return True


def _too_deep(exc: ValueError) -> bool:
    return "recursion limit exceeded" in str(exc)


def _req_id(data: str) -> str | None:
    # json, which takes the lone surrogates jiter refuses (an error quotes them back);
    # a message too deep for it comes here only past a surrogate that stopped jiter.
    try:
        value = json.loads(data).get("req_id")
    except (ValueError, AttributeError, RecursionError):
        return None
    return value if isinstance(value, str) else None
