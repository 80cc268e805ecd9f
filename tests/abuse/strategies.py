"""Hypothesis strategies for malformed input: JSON that is almost right, bytes that are not
JSON at all, text the store cannot encode, header values a client can still send.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

#: Strings that have broken parsers before: lone surrogates, NUL, overlong, bidi, JSON-ish.
NASTY_TEXT = [
    "",
    " ",
    "\x00",
    "\ud800",
    "a\udfffb",
    "\u202e\u2066",
    "\ufeff{}",
    "null",
    "[]",
    "{}",
    "__proto__",
    "../../etc/passwd",
    "%00",
    "%ff%fe",
    "Bearer ",
    "'; DROP TABLE runs; --",
    "\U0001f600" * 50,
]

text = st.one_of(
    st.text(max_size=60),
    st.sampled_from(NASTY_TEXT),
    st.integers(min_value=1000, max_value=5000).map(lambda n: "x" * n),
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63 - 2, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    text,
)
#: Any JSON value (NaN and Infinity included: Python's parser accepts them).
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=12), inner, max_size=4),
    ),
    max_leaves=12,
)


def maybe(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly ``valid`` (four times in five), else any JSON value in its place."""
    return st.one_of(valid, valid, valid, valid, json_values)


def obj(
    required: dict[str, st.SearchStrategy[Any]],
    optional: dict[str, st.SearchStrategy[Any]] | None = None,
) -> st.SearchStrategy[dict[str, Any]]:
    """A JSON object with these fields (each possibly wrong), sometimes missing some."""
    fields = {k: maybe(v) for k, v in required.items()}
    extra = {k: maybe(v) for k, v in (optional or {}).items()}
    extras = st.dictionaries(st.text(max_size=10), json_values, max_size=2)
    whole = st.fixed_dictionaries(fields, optional=extra)
    partial = st.fixed_dictionaries({}, optional={**fields, **extra})
    extras = st.one_of(st.just({}), st.just({}), extras)
    return st.builds(lambda a, b: {**b, **a}, st.one_of(whole, whole, whole, partial), extras)


def encode(value: Any, style: str) -> bytes:
    """``value`` as JSON bytes: plain, with raw (invalid) UTF-8 surrogates, or cut short."""
    if style == "ascii":
        return json.dumps(value).encode()
    raw = json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
    if style == "truncated":
        return raw[: max(0, len(raw) // 2)]
    return raw


def json_bodies(values: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """Bodies made of ``values``, or deep nesting, or bytes that are not JSON at all."""
    encoded = st.builds(encode, values, st.sampled_from(["ascii", "utf8", "truncated"]))
    deep = st.integers(min_value=100, max_value=200_000).map(lambda n: b"[" * n + b"]" * n)
    junk = st.one_of(
        st.binary(max_size=200),
        st.sampled_from([b"", b"null", b"NaN", b"\xef\xbb\xbf{}", b"{" * 10, b'{"a":1}{"b":2}']),
        deep,
    )
    return st.one_of(encoded, encoded, encoded, junk)


#: Header values an HTTP client can send: printable ASCII, and a few known troublemakers.
header_values = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80),
    st.sampled_from(["", " ", "true", "false", "TRUE", "2", "x" * 300, "\t", "null"]),
)

content_types = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/json; charset=latin-1",
        "application/json; charset=no-such-charset",
        "application/vnd.api+json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/octet-stream",
        "",
        ";;;",
        "json",
    ]
)

content_encodings = st.sampled_from(["gzip", "deflate", "br", "zstd", "identity", "x-nope", ""])
