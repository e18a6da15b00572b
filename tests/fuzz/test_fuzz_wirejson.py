"""Fuzz target: core/wirejson.py, the JSON decoder every boundary uses."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overair.core import wirejson
from overair.core.errors import DecodeError

_JSONISH = st.text(alphabet='[]{}",:0123456789.eE-+ \\ntrufalsNIiy\u00e9\U0001f600', max_size=400)


@given(st.one_of(st.binary(max_size=600), _JSONISH))
def test_fuzz_wirejson_raises_only_decode_error(data: bytes | str) -> None:
    with contextlib.suppress(DecodeError):
        wirejson.loads(data)


@given(st.recursive(st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.text(max_size=20),
                    lambda children: st.lists(children, max_size=4)
                    | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=30))
def test_fuzz_wirejson_round_trips_what_json_writes(value: object) -> None:
    assert wirejson.loads(json.dumps(value)) == value


def test_nesting_past_the_limit_is_refused_before_parsing() -> None:
    deep = "[" * 200_000 + "]" * 200_000
    with pytest.raises(DecodeError) as caught:
        wirejson.loads(deep)
    assert caught.value.code == "InvalidJson"
    assert "deeper" in caught.value.message


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    text = json.dumps({"a": "[" * 500 + "\\\"" + "{" * 500})
    assert wirejson.loads(text) == json.loads(text)


def test_non_finite_and_huge_numbers_are_refused() -> None:
    for text in ("NaN", "-Infinity", "1e400", "9" * 100, '{"stepTimeoutInMinutes": 1e400}'):
        with pytest.raises(DecodeError):
            wirejson.loads(text)
