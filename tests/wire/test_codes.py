"""The codes both ends agree on: every error code documented once, in wire.codes, and
the ones the hub and the executor use are among them."""

from __future__ import annotations

import re

import pytest

import executor.engine
import executor.workspace
import hub.router
import wire
import wire.codes
from hub.openapi import RUN_STATES as OPENAPI_STATES
from wire import RESULT_STATUSES, RUN_STATES, TERMINAL_STATES, ErrorCode, RunState


@pytest.mark.parametrize("code", list(ErrorCode), ids=str)
def test_every_error_code_is_documented(code: ErrorCode) -> None:
    """wire.codes says what each code means, in a ``- ``code``: meaning`` line."""
    doc = wire.codes.__doc__ or ""
    assert re.search(rf"^- ``{code.value}``: \S", doc, re.MULTILINE), code.value


def test_the_documented_codes_are_the_enum() -> None:
    """No code is documented that the enum lacks."""
    documented = set(re.findall(r"^- ``(\w+)``:", wire.codes.__doc__ or "", re.MULTILINE))
    assert documented == {code.value for code in ErrorCode}


def test_the_router_refusals_carry_error_codes() -> None:
    refusals = [hub.router.RouterError, *hub.router.RouterError.__subclasses__()]
    assert {cls.code for cls in refusals} <= set(ErrorCode)


def test_the_codes_the_executor_documents_are_error_codes() -> None:
    """The engine's and the workspace's docstrings name their codes; all are ErrorCodes."""
    for module in (executor.engine, executor.workspace):
        named = set(re.findall(r"``?(\w+_\w+|timeout)``?", module.__doc__ or ""))
        codes = {name for name in named if name.islower()}
        assert codes and codes <= set(ErrorCode), codes - set(ErrorCode)


def test_close_codes_are_one_set_importable_from_wire() -> None:
    names = [
        name for name in dir(wire.codes) if name.startswith("CLOSE_") and name != "CLOSE_REFUSED"
    ]
    values = [getattr(wire.codes, name) for name in names]
    assert len(set(values)) == len(values) and all(4000 <= v <= 4999 for v in values)
    assert all(getattr(wire, name) == getattr(wire.codes, name) for name in names)
    assert wire.CLOSE_REFUSED <= set(values)


def test_run_states_come_from_one_place() -> None:
    """The OpenAPI enum, the result statuses and the terminal states are wire's."""
    assert OPENAPI_STATES == list(RUN_STATES) == [state.value for state in RunState]
    assert set(RESULT_STATUSES) == TERMINAL_STATES < set(RUN_STATES)
