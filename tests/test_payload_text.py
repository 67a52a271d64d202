"""decode_json_object: msgspec first, the standard library deciding whatever msgspec refuses. The
two must give the same answer: the same value where msgspec accepts, the standard library's own
value or refusal otherwise."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from healer.sources.payload_text import PayloadRejected, _decode_slowly, decode_json_object

LIMIT = 1 << 20


def _answer(decode: Any, data: bytes) -> tuple[str, Any]:
    try:
        return "ok", decode(data)
    except PayloadRejected as exc:
        return exc.reason, str(exc)


def _same(data: bytes) -> None:
    fast = _answer(lambda d: decode_json_object(d, LIMIT, what="body"), data)
    slow = _answer(lambda d: _decode_slowly(d, what="body"), data)
    # repr: 0 and 0.0, -0.0 and 0.0, int and float all told apart
    assert repr(fast) == repr(slow), data


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text(), json_values, max_size=5))
def test_documents_decode_to_what_the_standard_library_gives(doc: dict[str, Any]) -> None:
    for text in (json.dumps(doc), json.dumps(doc, ensure_ascii=False), json.dumps(doc, indent=1)):
        _same(text.encode("utf-8", "surrogatepass"))


@pytest.mark.parametrize(
    "data",
    [
        b'{"a": 1, "a": 2}',  # the last one wins, in both
        b'{"big": 123456789012345678901234567890}',  # an int past 64 bits stays an int
        b'{"neg": -9223372036854775809}',
        b'{"x": -0, "y": -0.0, "z": 1E2, "w": 2.4703282292062327e-324}',
        b'{"huge": 1e400}',  # inf: msgspec refuses, the standard library takes it
        b'{"s": "\\ud800"}',  # an escaped lone surrogate: likewise
        b'{"s": "\xed\xa0\x80"}',  # an encoded one is not UTF-8: refused by both
        b'{"n": NaN}',
        b'{"n": -Infinity}',
        b"\xef\xbb\xbf{}",  # a byte-order mark
        b'{"a": "\x01"}',  # a raw control character in a string
        b'{"a": 1}x',
        b"[1, 2]",
        b'"text"',
        b"",
        b"\xff",
        b"[" * 2000 + b"]" * 2000,
        b'{"a":' * 2000 + b"1" + b"}" * 2000,
        b'{"digits": ' + b"1" * 5000 + b"}",  # past Python's integer string limit
    ],
)
def test_edge_cases_get_the_standard_librarys_answer(data: bytes) -> None:
    _same(data)


def test_random_bytes_get_the_standard_librarys_answer() -> None:
    rnd = random.Random(7)
    alphabet = b'{}[]",:0123456789.eE+-tfnrulsaN \\/\x00\x7f\xff\xc3\xa9'
    for _ in range(20_000):
        _same(b"{" + bytes(rnd.choice(alphabet) for _ in range(rnd.randint(0, 16))))


def test_an_accepted_infinity_is_still_the_standard_librarys() -> None:
    assert math.isinf(decode_json_object(b'{"a": 1e400}', LIMIT, what="body")["a"])
