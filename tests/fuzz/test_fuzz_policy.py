"""Fuzz target: server/iam/policy.py, the IAM policy parser and evaluator (threat O1).

Policies come from operators over the network (identity policies, trust policies, bucket
policies). `compile_policy` may raise only `MalformedPolicyError`, on arbitrary text and
on structurally valid but hostile documents; a compiled policy never makes evaluation
raise, whatever the request carries."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from overair.server.iam.policy import (
    CompiledPolicy,
    MalformedPolicyError,
    NamedPolicy,
    PolicyKind,
    RequestContext,
    compile_policy,
    evaluate,
    evaluate_assume_role,
)

_KINDS = st.sampled_from(list(PolicyKind))
_HOSTILE_TEXT = st.sampled_from([
    "", "*", "?", "${", "${aws:username}", "${*}", "${?}", "${$}", "${aws:username", "}", "$",
    "\u0661\u0662", "\u00b2", "1e400", "9" * 400, "-0", "NaN", "2024-02-30T25:61:61Z", "0001-01-01T00:00:00",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59+14:00", "10.0.0.0/33", "::1/129", "1.2.3.4", "fe80::1%eth0", "true", "TRUE", "\x00",
    "\n", "arn:aws:iam::123456789012:user/alice", "AIDAALICE000000000000", "123456789012",
    "arn:aws:iam::123456789012:root", "arn:*:iot:*:*:thing/*", "iot:*", "*:*", "iot:Create*", ":", "a:b:c",
])
_TEXT = st.one_of(_HOSTILE_TEXT, st.text(max_size=30))
_OPERATORS = st.sampled_from([
    "StringEquals", "StringNotEquals", "StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase", "StringLike",
    "StringNotLike", "ArnEquals", "ArnLike", "ArnNotEquals", "ArnNotLike", "NumericEquals",
    "NumericNotEquals", "NumericLessThan", "NumericLessThanEquals", "NumericGreaterThan",
    "NumericGreaterThanEquals", "DateEquals", "DateNotEquals", "DateLessThan", "DateLessThanEquals",
    "DateGreaterThan", "DateGreaterThanEquals", "Bool", "IpAddress", "NotIpAddress", "BinaryEquals", "Null",
    "StringEqualsIfExists", "ForAnyValue:StringLike", "ForAllValues:NumericLessThan", "Bogus",
])
_KEYS = st.sampled_from(["aws:SourceIp", "aws:CurrentTime", "aws:EpochTime", "aws:SecureTransport",
                         "aws:username", "aws:PrincipalArn", "iam:PassedToService", "s3:prefix",
                         "sts:ExternalId", "aws:PrincipalTag/dept", "iam:PolicyARN", "x"])
_SCALAR: st.SearchStrategy[Any] = st.one_of(_TEXT, st.integers(-(10**30), 10**30), st.booleans(), st.none(),
                                            st.floats(allow_nan=False, allow_infinity=False))
_VALUE: st.SearchStrategy[Any] = st.one_of(_SCALAR, st.lists(_SCALAR, max_size=4), st.dictionaries(
    _TEXT, _SCALAR, max_size=2))
_CONDITION = st.dictionaries(_OPERATORS, st.dictionaries(_KEYS, _VALUE, max_size=3), max_size=3)
_PRINCIPAL = st.one_of(st.just("*"), _TEXT, st.dictionaries(
    st.sampled_from(["AWS", "Service", "Federated", "CanonicalUser", "Nope"]),
    st.one_of(_TEXT, st.lists(_TEXT, max_size=3)), max_size=3))


@st.composite
def _statement(draw: st.DrawFn) -> dict[str, Any]:
    stmt: dict[str, Any] = {"Effect": draw(st.sampled_from(["Allow", "Deny", "allow", "", 1]))}
    stmt[draw(st.sampled_from(["Action", "NotAction"]))] = draw(st.one_of(_TEXT, st.lists(_TEXT, max_size=4)))
    if draw(st.booleans()):
        stmt[draw(st.sampled_from(["Resource", "NotResource"]))] = draw(
            st.one_of(_TEXT, st.lists(_TEXT, max_size=4)))
    if draw(st.booleans()):
        stmt[draw(st.sampled_from(["Principal", "NotPrincipal"]))] = draw(_PRINCIPAL)
    if draw(st.booleans()):
        stmt["Condition"] = draw(st.one_of(_CONDITION, _VALUE))
    if draw(st.booleans()):
        stmt["Sid"] = draw(st.one_of(_TEXT, st.integers()))
    return stmt


@st.composite
def _document(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {"Statement": draw(st.one_of(_statement(), st.lists(_statement(), max_size=4)))}
    if draw(st.booleans()):
        doc["Version"] = draw(st.sampled_from(["2012-10-17", "2008-10-17", "2020-01-01", 5]))
    return doc


_ACTIONS = st.sampled_from(["*", "iot:*", "iot:CreateJob", "s3:Get*", "*:Describe*", "io?:List*",
                            "sts:AssumeRole", "S3:GETOBJECT"])
_RESOURCES = st.one_of(st.sampled_from([
    "*", "arn:aws:s3:::fw/*", "arn:aws:s3:::${aws:username}/*", "arn:aws:iot:*:*:thing/${aws:username}",
    "arn:aws:s3:::${*}${?}${$}", "arn:aws:iot:us-east-1:123456789012:thing/t", "arn:*:*",
    "arn:aws:s3:::${aws:PrincipalTag/dept, 'x'}/*",
]), st.builds(lambda t: "arn:aws:s3:::" + t, _TEXT))
_OPERATOR_NAMES = _OPERATORS.filter(lambda name: name != "Bogus")
_STRICT_VALUES = st.one_of(_HOSTILE_TEXT, st.lists(_HOSTILE_TEXT, min_size=1, max_size=3),
                           st.integers(-(10**20), 10**20), st.booleans())


@st.composite
def _valid_statement(draw: st.DrawFn, kind: PolicyKind) -> dict[str, Any]:
    """Grammatically valid statements with hostile content: what reaches evaluation."""
    stmt: dict[str, Any] = {"Effect": draw(st.sampled_from(["Allow", "Deny"])),
                            "Action": draw(st.lists(_ACTIONS, min_size=1, max_size=3))}
    if kind is not PolicyKind.TRUST or draw(st.booleans()):
        stmt[draw(st.sampled_from(["Resource", "NotResource"]))] = draw(st.lists(_RESOURCES, min_size=1,
                                                                                 max_size=3))
    if kind is not PolicyKind.IDENTITY:
        stmt["Principal"] = draw(st.one_of(st.just("*"), st.fixed_dictionaries({"AWS": st.sampled_from([
            "*", "123456789012", "arn:aws:iam::123456789012:root", "AIDAALICE000000000000",
            "arn:aws:iam::123456789012:user/alice", "arn:aws:sts::123456789012:assumed-role/r/s"])}),
            st.fixed_dictionaries({"Service": st.sampled_from(["iot.amazonaws.com", "x"])})))
    if draw(st.booleans()):
        stmt["Condition"] = draw(st.dictionaries(_OPERATOR_NAMES, st.dictionaries(
            _KEYS, _STRICT_VALUES, min_size=1, max_size=2), min_size=1, max_size=2))
    return stmt


_CONTEXT_KEYS = st.dictionaries(_KEYS, st.one_of(_TEXT, st.lists(_TEXT, max_size=3)), max_size=5)


@st.composite
def _context(draw: st.DrawFn) -> RequestContext:
    return RequestContext(
        principal_arn=draw(st.one_of(st.sampled_from(["arn:aws:iam::123456789012:user/alice",
                                                      "arn:aws:sts::123456789012:assumed-role/r/s",
                                                      "iot.amazonaws.com", ""]), _TEXT)),
        action=draw(st.one_of(st.sampled_from(["iot:CreateJob", "s3:GetObject", "sts:AssumeRole"]), _TEXT)),
        resource=draw(st.one_of(st.sampled_from(["*", "arn:aws:s3:::fw/x",
                                                 "arn:aws:iot:us-east-1:123456789012:thing/t"]), _TEXT)),
        keys=draw(_CONTEXT_KEYS),
        role_arn=draw(st.one_of(st.none(), _TEXT)),
        service_principal=draw(st.one_of(st.none(), st.just("iot.amazonaws.com"), _TEXT)),
        principal_id=draw(st.one_of(st.none(), st.just("AIDAALICE000000000000"), _TEXT)),
    )


def _compiled(document: str | bytes, kind: PolicyKind) -> CompiledPolicy | None:
    try:
        return compile_policy(document, kind)
    except MalformedPolicyError:
        return None


@given(st.one_of(st.binary(max_size=500), st.text(max_size=500)), _KINDS)
def test_fuzz_policy_any_text_raises_only_malformed_policy(text: str | bytes, kind: PolicyKind) -> None:
    _compiled(text, kind)


@given(_document(), _KINDS)
def test_fuzz_policy_malformed_documents_raise_only_malformed_policy(
        document: dict[str, Any], kind: PolicyKind) -> None:
    _compiled(json.dumps(document), kind)


@given(st.data(), _KINDS, st.lists(_context(), min_size=1, max_size=3))
def test_fuzz_policy_hostile_valid_documents_never_break_evaluation(
        data: st.DataObject, kind: PolicyKind, contexts: list[RequestContext]) -> None:
    statements = data.draw(st.lists(_valid_statement(kind), min_size=1, max_size=3))
    compiled = _compiled(json.dumps({"Version": "2012-10-17", "Statement": statements}), kind)
    if compiled is None:  # a hostile condition value may be refused: that is the only way out
        return
    named = NamedPolicy("fuzzed", compiled)
    for ctx in contexts:
        if kind is PolicyKind.IDENTITY:
            evaluate(ctx, [named])
        elif kind is PolicyKind.RESOURCE:
            evaluate(ctx, [], [named])
        else:
            evaluate_assume_role(ctx, [], named)
