"""Fuzz target: core/arn.py, the one ARN parser (threat O1).

Only `ArnError` may escape, and whatever is accepted is canonical: `str(parse(text)) ==
text`, the property that makes the ARN IAM checks the resource a handler acts on."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from overair.core.arn import ArnError, ArnScope, parse_arn

SCOPE = ArnScope("aws", "eu-west-1", "123456789012")

_PIECES = st.sampled_from([
    "arn", "aws", "aws-cn", "iot", "iam", "sts", "signer", "acm", "s3", "eu-west-1", "us-east-1", "",
    "123456789012", "999999999999", "aws", "thing", "thinggroup", "job", "cert", "role", "user", "policy",
    "root", "assumed-role", "/signing-profiles", "/signing-jobs", "certificate", "victim", "a:b", "x/y",
    "service-role/", "AFR_OTA-1", "ab" * 32, "0b0b0b0b-1111-4222-8333-444455556666", "\n", " ", "*",
    "\u0131", "\u00e9", "\U0001f600", "\x00", "%2F", "..", "/",
])
_SEPARATORS = st.sampled_from([":", "/", ":", "/", ""])


@st.composite
def _arn_shaped(draw: st.DrawFn) -> str:
    """Text built from ARN pieces and separators: mostly near-misses of real ARNs."""
    parts = draw(st.lists(st.tuples(_PIECES, _SEPARATORS), min_size=1, max_size=9))
    return "".join(piece + sep for piece, sep in parts)


def _check(text: str) -> None:
    try:
        arn = parse_arn(text)
    except ArnError:
        return
    assert str(arn) == text
    try:
        scoped = SCOPE.require(text, arn.service, (arn.resource_type,), allow_aws_account=True)
    except ArnError:
        return
    assert scoped == arn


@given(st.text(max_size=300))
def test_fuzz_arn_any_text_raises_only_arn_error(text: str) -> None:
    _check(text)


@given(_arn_shaped())
def test_fuzz_arn_near_misses_are_refused_or_canonical(text: str) -> None:
    _check(text)


@given(st.sampled_from(["thing", "thinggroup", "job", "stream", "otaupdate"]),
       st.text(alphabet=st.characters(codec="utf-8"), min_size=0, max_size=140))
def test_fuzz_arn_names_are_matched_in_full(kind: str, name: str) -> None:
    text = f"arn:aws:iot:eu-west-1:123456789012:{kind}/{name}"
    try:
        arn = parse_arn(text)
    except ArnError:
        return
    assert arn.resource_name == name
    assert name.isascii()
    assert "/" not in name
    assert "\n" not in name
