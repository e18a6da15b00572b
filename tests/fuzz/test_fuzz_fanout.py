"""Fuzz target: the fan-out message parser (server/jobs/fanout.py `decode`), which reads
payloads other server processes sent through PostgreSQL NOTIFY. Whatever the text,
it returns (origin, kind, names) with a known kind and string names, or raises
DecodeError; what `encode` makes always decodes back, in payloads PostgreSQL accepts."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from overair.core.errors import DecodeError
from overair.server.jobs.fanout import KINDS, decode, encode

JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12)


@given(st.one_of(st.text(), JSONISH.map(json.dumps),
                 st.fixed_dictionaries({"from": st.text(), "kind": st.sampled_from([*KINDS, "x"]),
                                        "names": JSONISH}).map(json.dumps)))
def test_decode_accepts_only_well_formed_messages(payload: str) -> None:
    try:
        origin, kind, names = decode(payload)
    except DecodeError:
        return
    assert isinstance(origin, str)
    assert kind in KINDS
    assert all(isinstance(name, str) for name in names)


@given(st.sampled_from(KINDS), st.lists(st.text(min_size=1, max_size=300), max_size=200))
def test_what_is_encoded_decodes_back_in_bounded_payloads(kind: str, names: list[str]) -> None:
    payloads = encode("origin", kind, names)
    assert all(len(p.encode()) < 8000 for p in payloads)  # PostgreSQL's NOTIFY limit
    decoded = [decode(p) for p in payloads]
    assert [name for _, _, batch in decoded for name in batch] == names
    assert {(origin, k) for origin, k, _ in decoded} <= {("origin", kind)}
