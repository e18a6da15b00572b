"""Fuzz target: pre-signed URL placeholders in job documents (core/placeholders.py).
Only `PlaceholderError` may escape `find` and `parse_s3_url`; `substitute` never fails
on what `find` accepted."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from overair.core import placeholders
from tests.fuzz.hostile import hostile_text

url = st.one_of(
    hostile_text,
    st.tuples(st.sampled_from(["https://", "http://", "", "s3://", "https://["]),
              st.sampled_from(["s3.amazonaws.com", "s3.eu-west-1.amazonaws.com", "b.s3.amazonaws.com",
                               "[", ""]),
              hostile_text).map(lambda parts: f"{parts[0]}{parts[1]}/{parts[2]}"),
)
placeholder = st.tuples(st.sampled_from(["${aws:iot:s3-presigned-url:", "${aws:iot:s3-presigned-url-v2:",
                                         "${aws:iot:s3-presigned-url"]), url,
                        st.sampled_from(["}", "", "}}"])).map("".join)
document: st.SearchStrategy[Any] = st.recursive(
    st.one_of(st.none(), st.integers(), hostile_text, placeholder,
              st.tuples(hostile_text, placeholder).map("".join)),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.one_of(hostile_text, placeholder),
                                                                      children, max_size=3),
    max_leaves=10)


@given(url)
def test_fuzz_s3_urls_raise_only_placeholder_errors(text: str) -> None:
    try:
        reference = placeholders.parse_s3_url(text)
    except placeholders.PlaceholderError:
        return
    assert reference.bucket
    assert reference.key


@given(document)
def test_fuzz_documents_raise_only_placeholder_errors(value: Any) -> None:
    try:
        found = placeholders.find(value)
    except placeholders.PlaceholderError:
        return
    placeholders.substitute(value, {text: "https://example/x" for text in found})
