"""Fuzz target: core/presign.py, the pre-signed download URL and Range header as the
device download endpoint parses them before any authentication (issue 12, finding 10:
a non-ASCII `signature=` and a 5,000-digit Range answered 500).

`verify` and `parse_range` raise only `UrlRefused`; a range they accept lies inside the
file.
"""

from __future__ import annotations

import contextlib

from hypothesis import given
from hypothesis import strategies as st

from overair.core import presign
from tests.fuzz.device_strategies import HOSTILE_TEXT

SECRET = b"s" * 32
GRANT = presign.Grant("firmware", "fw.bin", "v1", "dev-1", 2_000_000_000)
VALID = dict(
    part.split("=", 1) for part in presign.sign(SECRET, "https://h", GRANT).split("?", 1)[1].split("&")
)
FIELDS = ["version", "thing", "expires", "signature"]


@given(
    st.dictionaries(st.sampled_from(FIELDS) | HOSTILE_TEXT, HOSTILE_TEXT, max_size=5),
    st.booleans(),
    HOSTILE_TEXT,
    HOSTILE_TEXT,
)
def test_fuzz_presigned_query_raises_only_url_refused(
    changes: dict[str, str], start_valid: bool, bucket: str, key: str
) -> None:
    query = {**(VALID if start_valid else {}), **changes}
    for b, k in (("firmware", "fw.bin"), (bucket, key)):
        with contextlib.suppress(presign.UrlRefused):
            assert presign.verify(SECRET, b, k, query, now=0) == GRANT


@given(st.lists(st.tuples(st.sampled_from(FIELDS) | HOSTILE_TEXT, HOSTILE_TEXT), max_size=6), st.booleans())
def test_fuzz_raw_query_raises_only_url_refused_and_keeps_one_reading(pairs: list[tuple[str, str]],
                                                                     start_valid: bool) -> None:
    # Whatever the device sends, `parse_query` either refuses it or yields the one reading
    # nginx's first-match `$arg_` would give (so the front and overair agree).
    given_pairs = (list(VALID.items()) if start_valid else []) + pairs
    raw = "&".join(f"{k}={v}" for k, v in given_pairs)
    with contextlib.suppress(presign.UrlRefused):
        fields = presign.parse_query(raw)
        names = [part.partition("=")[0] for part in raw.split("&")]
        assert sorted(names) == sorted(FIELDS) == sorted(fields)


_RANGE_TEXT = st.text(alphabet="bytes=0123456789-, \u0661\u00b2+_x", max_size=30)


@given(
    st.one_of(
        _RANGE_TEXT,
        HOSTILE_TEXT,
        st.integers(0, 10**30).map(lambda n: f"bytes={n}-"),
        st.tuples(st.integers(-5, 10**20), st.integers(-5, 10**20)).map(lambda p: f"bytes={p[0]}-{p[1]}"),
    ),
    st.integers(0, 10**6),
)
def test_fuzz_range_raises_only_url_refused(header: str, size: int) -> None:
    code: str | None = None
    try:
        span = presign.parse_range(header, size)
    except presign.UrlRefused as exc:
        span, code = None, exc.code
    if span is None:
        assert code == "InvalidRange"
        return
    first, last = span
    assert 0 <= first <= last < size
