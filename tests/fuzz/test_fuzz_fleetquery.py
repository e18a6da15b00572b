"""Fuzz target: SearchIndex's queryString (core/fleetquery.py). `parse` raises only
InvalidQuery; what it accepts matches any document without raising."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from overair.core.fleetquery import InvalidQuery, matches, parse
from tests.fuzz.device_strategies import HOSTILE_TEXT

PIECES = st.sampled_from(["thingName", ":", "(", ")", "[", "]", "{", "}", " TO ", " AND ", " OR ", " NOT ",
                          "-", "*", '"', "<", ">=", "a", "1.5", "attributes.x", " ", "@", "$package"])
QUERIES = st.lists(PIECES, max_size=30).map("".join) | HOSTILE_TEXT
DOCS = st.dictionaries(st.sampled_from(["thingName", "attributes.x", "a"]),
                       st.lists(HOSTILE_TEXT | st.sampled_from(["1", "1.5", "nan", "inf", "a"]), max_size=3))


@given(QUERIES, DOCS)
def test_fuzz_queries_parse_or_refuse_and_match_without_raising(text: str, doc: dict[str, list[str]]) -> None:
    try:
        query = parse(text)
    except InvalidQuery:
        return
    assert matches(query, doc) in (True, False)
