"""executor.pipeline.Result.frame: the result frame is what wire's ResultFrame gives."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from executor.pipeline import Result
from wire import RESULT_STATUSES, ErrorCode, ResultFrame

text = st.text(max_size=8)
odd = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), text)
statuses = st.one_of(st.sampled_from(RESULT_STATUSES), text, st.just(ErrorCode.CANCELLED))
usages = st.one_of(
    st.none(),
    st.dictionaries(text, st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=3),
    st.dictionaries(text, odd, max_size=3),
)
errors = st.one_of(
    st.none(),
    st.dictionaries(text, text, max_size=3),
    st.dictionaries(text, st.one_of(odd, st.just(ErrorCode.CANCELLED)), max_size=3),
    st.dictionaries(st.just("code"), st.sampled_from(list(ErrorCode)), max_size=1),
)


def by_model(result: Result, run_id: Any) -> dict[str, Any]:
    return ResultFrame(
        run_id=run_id,
        status=result.status,  # type: ignore[arg-type]
        answer=result.answer,
        thread_id=result.thread_id,
        usage=result.usage,
        error=result.error,
        effective_prompt=result.effective_prompt,
    ).dump()


@settings(max_examples=500, deadline=None)
@given(
    run_id=st.one_of(text, st.integers()),
    status=statuses,
    answer=st.one_of(text, st.integers()),
    thread_id=st.one_of(st.none(), text, st.integers()),
    usage=usages,
    error=errors,
    effective_prompt=st.one_of(st.none(), text),
)
def test_the_result_frame_is_the_models_dump_or_its_error(
    run_id: Any,
    status: Any,
    answer: Any,
    thread_id: Any,
    usage: Any,
    error: Any,
    effective_prompt: Any,
) -> None:
    """For any values, Result.frame gives what ResultFrame(...).dump() gives, the same
    keys in the same order, or fails as the model does."""
    result = Result(status, answer, thread_id, usage, error, effective_prompt)
    try:
        expected = by_model(result, run_id)
    except ValidationError:
        with pytest.raises(ValidationError):
            result.frame(run_id)
        return
    got = result.frame(run_id)
    assert got == expected and list(got) == list(expected)
    assert [type(v) for v in got.values()] == [type(v) for v in expected.values()]


def test_a_plain_result_frame_shares_no_dict_with_the_result() -> None:
    """The frame's usage and error are copies: a later change to the result's does not
    reach a frame kept for re-sending."""
    result = Result("failed", usage={"input_tokens": 1}, error={"code": "x", "message": "m"})
    frame = result.frame("r")
    assert result.usage is not None and result.error is not None
    result.usage["input_tokens"] = 2
    result.error["message"] = "changed"
    assert frame["usage"] == {"input_tokens": 1} and frame["error"]["message"] == "m"
