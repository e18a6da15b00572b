"""Shared hypothesis strategies for hostile text: what the fuzz targets feed every parser.

The alphabet is chosen from the inputs that broke parsers before: Unicode digits that
`str.isdigit()` accepts and `int()` refuses (or the other way round), brackets of IPv6
literals and JSON, line breaks that `re.match` with `$` lets through, NUL, separators
of every wire format here (`,;=&/:#?%`), and some non-ASCII letters.
"""

from __future__ import annotations

from hypothesis import strategies as st

HOSTILE_CHARS = ("0123456789abcdefxyzABCZ-_.,;:=&/?#%+*@ \t\r\n\x00[]{}()\"'\\<>!$~"
                 "\u00b2\u00b9\u0661\u0665\u06f3\u0967\uff11\u2460\u00e9\u00df\u0130\u212a\U0001f600")

hostile_text = st.text(alphabet=HOSTILE_CHARS, max_size=40)
digits_or_not = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.text(alphabet="0123456789\u00b2\u00b9\u0661\u0665\uff11_+- ", min_size=1, max_size=12),
    st.just("9" * 5000),
    hostile_text,
)
hostile_bytes = st.one_of(st.binary(max_size=300), hostile_text.map(lambda t: t.encode("utf-8")))
