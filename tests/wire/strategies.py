"""Hypothesis strategies for the frames of :mod:`wire`: any valid frame of any kind."""

from __future__ import annotations

import types
import typing
from typing import Any

from hypothesis import assume
from hypothesis import strategies as st
from pydantic import ValidationError

from wire import FrameModel, LoginState, ToBridgeFrame, ToExecutorFrame
from wire.protocol import BridgeFrame, ExecutorFrame

#: JSON values as the store keeps them (integers of 64 bits, finite floats).
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
keys = st.text(max_size=8)


def _for(annotation: Any) -> st.SearchStrategy[Any]:
    """A strategy for values of one field's annotation."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return json_values
    if annotation is str:
        return st.text(max_size=30)
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        return st.integers(min_value=0, max_value=10_000)
    if annotation is float:
        return st.floats(min_value=0.001, max_value=1e6)
    if annotation is type(None):
        return st.none()
    if annotation is LoginState:
        return st.builds(
            LoginState, logged_in=st.none() | st.booleans(), detail=st.text(max_size=20)
        )
    if origin is typing.Annotated:
        pattern = next(
            (getattr(m, "pattern", None) for m in args[1:] if getattr(m, "pattern", None)), None
        )
        if pattern is not None:
            return st.from_regex(pattern, fullmatch=True)
        return _for(args[0])
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(_for(arg) for arg in args))
    if origin is list:
        return st.lists(_for(args[0]), max_size=3)
    if origin is dict:
        return st.dictionaries(keys, _for(args[1]), max_size=3)
    raise AssertionError(f"no strategy for {annotation!r}")


@st.composite
def frames_of(draw: st.DrawFn, model: type[FrameModel]) -> FrameModel:
    """A valid ``model``, with each optional field given or left out."""
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if name == "type":
            if info.is_required():  # the hello: its builder names it
                fields["type"] = typing.get_args(info.annotation)[0]
            continue
        if info.is_required() or draw(st.booleans()):
            fields[name] = draw(_for(info.annotation))
    try:
        return model(**fields)
    except ValidationError:
        assume(False)
        raise


def _members(union: Any) -> tuple[type[FrameModel], ...]:
    return typing.get_args(typing.get_args(union)[0])


#: Per direction (who sends, to or from which role): the frame models it carries.
DIRECTIONS: dict[tuple[str, str], tuple[type[FrameModel], ...]] = {
    ("node", "executor"): _members(ExecutorFrame),
    ("node", "bridge"): _members(BridgeFrame),
    ("hub", "executor"): _members(ToExecutorFrame),
    ("hub", "bridge"): _members(ToBridgeFrame),
}


def frames(sender: str, role: str) -> st.SearchStrategy[FrameModel]:
    """Any frame that ``sender`` sends to (or, from a node, as) ``role``."""
    return st.one_of(*(frames_of(model) for model in DIRECTIONS[(sender, role)]))
