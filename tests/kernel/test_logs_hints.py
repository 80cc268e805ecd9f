"""kernel.logs: the quick search that proves text clean never misses what masking changes."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel import logs

SECRETS = ("canary-hint-secret-1f2e3d", "sh0rt", 'q"uote\\d-secret-99')

#: Pieces the masking changes: secrets and credential shapes, strict and loose.
SHAPES = (
    *SECRETS,
    "ghp_" + "Ab1" * 12,
    "github_pat_" + "x" * 22,
    "glpat-" + "y" * 20,
    "sk-" + "z" * 16,
    "xoxb-1-2",
    "xapp-1",
    "AKIA" + "A" * 16,
    "ASIA" + "7" * 16,
    "aws_secret_access_key=" + "k" * 40,
    "AWS_SECRET_ACCESS_KEY: '" + "K" * 40 + "'",
    "aws_\u017fecret_access_\u212aey=" + "k" * 40,  # a long s and a Kelvin sign fold to s, k
    "-----BEGIN RSA PRIVATE KEY-----\nMIIE",
    "123456789:" + "A" * 35,
    "12345:" + "b" * 30,
    "\u0661\u0662\u0663\u0664\u0665:" + "c" * 35,  # Arabic-Indic digits: digits to re
    "bot42:abc",
    "bot\u0664\u0662:abc",
    "Bearer abcdefgh1234",
)
#: Near misses: pieces of the shapes that the masking leaves alone.
NEAR = ("1234:" + "d" * 40, "Bearer", "_secret_access_key", "sh0rtened", "ghp_short")
NEEDLES = (*SHAPES, *NEAR)


@pytest.fixture(autouse=True)
def registered() -> Iterator[None]:
    logs.forget_secrets()
    for secret in SECRETS:
        logs.register_secret(secret)
    yield
    logs.forget_secrets()


def masked(text: str, shapes: bool) -> str:
    """What :func:`kernel.logs.redact` makes of ``text`` without its quick search."""
    secrets_re = logs._secrets_re
    if secrets_re is not None:
        text = secrets_re.sub(logs.MASK, text)
    for pattern, replacement in logs._CREDENTIALS:
        text = pattern.sub(replacement, text)
    if shapes:
        for pattern, replacement in logs._LOOSE:
            text = pattern.sub(replacement, text)
    return text


def test_each_set_of_hints_is_one_search() -> None:
    """Every hint starts with a fixed character, so each set of hints (text or JSON,
    with or without the loose shapes) is one alternation: one search per frame."""
    hints = logs._hints
    for patterns in (hints.text_secrets, hints.text_all, hints.json_secrets, hints.json_all):
        assert len(patterns) == 1


texts = st.one_of(
    st.text(max_size=30),
    st.builds(
        lambda a, needle, b: a + needle + b,
        st.text(max_size=6),
        st.sampled_from(NEEDLES),
        st.text(max_size=6),
    ),
)


@settings(max_examples=600, deadline=None)
@given(text=texts, shapes=st.booleans())
def test_a_text_the_masking_changes_is_always_hinted(text: str, shapes: bool) -> None:
    """Whenever masking would change a text, its quick search says so, on the text and
    on its JSON encoding alike (what clean_json searches)."""
    if masked(text, shapes) == text:
        return
    hints = logs._hints
    assert logs._hinted(hints.text_all if shapes else hints.text_secrets, text)
    try:
        encoded = orjson.dumps({"k": [text]})
    except TypeError:  # a lone surrogate: orjson refuses it, redact_json walks instead
        return
    assert not logs.clean_json(encoded, shapes=shapes)


@pytest.mark.parametrize("shape", SHAPES)
def test_each_shape_is_masked_in_text_and_in_json(shape: str) -> None:
    """Each secret and credential shape is masked by redact and by redact_json (whose
    quick search runs on the JSON bytes), in a text of its own and inside a longer one."""
    for text in (shape, f"x {shape} y"):
        expected = masked(text, True)
        assert expected != text
        assert logs.redact(text) == expected
        assert logs.redact_json({"a": [text]}) == {"a": [expected]}


def test_clean_json_says_clean_only_of_a_value_with_nothing_to_mask() -> None:
    """clean_json is True for an ordinary frame, False when a secret or a credential is
    in it (keys included), and looks for loose shapes only when asked."""
    frame = {"type": "event", "run_id": "r-1", "seq": 1, "event": {"text": "ls -la 12:30"}}
    assert logs.clean_json(orjson.dumps(frame))
    assert not logs.clean_json(orjson.dumps({**frame, SECRETS[0]: 1}))
    assert not logs.clean_json(orjson.dumps({"text": NEEDLES[3]}), shapes=False)
    bearer = orjson.dumps({"text": "Bearer abcdefgh1234"})
    assert not logs.clean_json(bearer) and logs.clean_json(bearer, shapes=False)
