"""The IAM policy evaluator: a decision table (the seed's sample policy, AWS documentation
examples, resource policies, wildcard and condition edge cases), the validation errors
with their stable code, and the managed policies overair ships."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overair.core.errors import MisuseError
from overair.server.iam import managed
from overair.server.iam.policy import (
    VERSION_2008,
    Decision,
    MalformedPolicyError,
    NamedPolicy,
    PolicyCache,
    PolicyKind,
    RequestContext,
    compile_policy,
    evaluate,
    evaluate_assume_role,
)
from overair.server.iam.wildcards import PatternSet, glob

ACCOUNT = "123456789012"
ALICE = f"arn:aws:iam::{ACCOUNT}:user/alice"
BOB = f"arn:aws:iam::{ACCOUNT}:user/bob"
ROOT = f"arn:aws:iam::{ACCOUNT}:root"
OTA_ROLE = f"arn:aws:iam::{ACCOUNT}:role/ota-service-role"
OTA_SESSION = f"arn:aws:sts::{ACCOUNT}:assumed-role/ota-service-role/ota-update-1"
JOB = f"arn:aws:iot:us-east-1:{ACCOUNT}:job/fw-1"
# Unique ids, as stored resource and trust policies name users and roles (AWS rewrites an
# ARN to the id; server/iam/principals.py does the same).
ALICE_ID = "AIDAALICE000000000000"
BOB_ID = "AIDABOB00000000000000"
OTA_ROLE_ID = "AROAOTASERVICE0000000"
OTHER_ROLE_ID = "AROAOTHER000000000000"
IDS = {ALICE: ALICE_ID, BOB: BOB_ID, OTA_SESSION: OTA_ROLE_ID,
       f"arn:aws:sts::{ACCOUNT}:assumed-role/other/s": OTHER_ROLE_ID}
THING = f"arn:aws:iot:us-east-1:{ACCOUNT}:thing/sensor-1"

ALLOW, DENY, IMPLICIT = "Allow", "ExplicitDeny", "ImplicitDeny"


def s3(path: str) -> str:
    return f"arn:aws:s3:::{path}"


def stmt(effect: str, **elements: Any) -> dict[str, Any]:
    return {"Effect": effect, **elements}


def allow(action: Any, resource: Any = "*", **elements: Any) -> dict[str, Any]:
    return stmt("Allow", Action=action, Resource=resource, **elements)


def deny(action: Any, resource: Any = "*", **elements: Any) -> dict[str, Any]:
    return stmt("Deny", Action=action, Resource=resource, **elements)


def policy(*statements: dict[str, Any], version: str = "2012-10-17") -> dict[str, Any]:
    return {"Version": version, "Statement": list(statements)}


def when(**operators: dict[str, Any]) -> dict[str, Any]:
    """A Condition element; operator names with a set qualifier use `__` for `:`."""
    return {name.replace("__", ":"): keys for name, keys in operators.items()}


@dataclass(frozen=True)
class Case:
    id: str
    identity: tuple[dict[str, Any], ...]
    action: str
    resource: str
    expected: str
    keys: dict[str, Any] = field(default_factory=dict)
    principal: str = ALICE
    buckets: tuple[dict[str, Any], ...] = ()  # resource (bucket) policies
    statement: str | None = None  # the deciding statement, when checked
    role_arn: str | None = None
    service_principal: str | None = None


CASES: list[Case] = []


def case(id: str, identity: Any, action: str, resource: str, expected: str, **kw: Any) -> None:
    docs = identity if isinstance(identity, tuple) else (identity,) if identity is not None else ()
    CASES.append(Case(id, docs, action, resource, expected, **kw))


# ------------------------------------------------ the seed's sample policy (webinar)

SEED = {
    "Version": "2012-10-17",
    "Statement": [
        {"Sid": "FullAccess", "Effect": "Allow", "Action": ["s3:*"], "Resource": ["*"]},
        {"Sid": "DenyCustomerBucket", "Action": ["s3:*"], "Effect": "Deny",
         "Resource": ["arn:aws:s3:::customer", "arn:aws:s3:::customer/*"]},
    ],
}
case("seed-customer-object-denied", SEED, "s3:GetObject", s3("customer/file.bin"), DENY,
     statement="DenyCustomerBucket")
case("seed-customer-bucket-denied", SEED, "s3:ListBucket", s3("customer"), DENY,
     statement="DenyCustomerBucket")
case("seed-customer-put-denied", SEED, "s3:PutObject", s3("customer/deep/path/x"), DENY)
case("seed-customer-delete-bucket-denied", SEED, "s3:DeleteBucket", s3("customer"), DENY)
case("seed-customer-versioning-denied", SEED, "s3:PutBucketVersioning", s3("customer"), DENY)
case("seed-customer-empty-key-denied", SEED, "s3:GetObject", s3("customer/"), DENY)
case("seed-other-bucket-object-allowed", SEED, "s3:GetObject", s3("firmware/fw.bin"), ALLOW,
     statement="FullAccess")
case("seed-other-bucket-allowed", SEED, "s3:ListBucket", s3("firmware"), ALLOW)
case("seed-other-bucket-put-allowed", SEED, "s3:PutObject", s3("firmware/a/b"), ALLOW)
case("seed-list-all-buckets-allowed", SEED, "s3:ListAllMyBuckets", "*", ALLOW)
case("seed-similar-name-allowed", SEED, "s3:GetObject", s3("customer-archive/x"), ALLOW)
case("seed-longer-bucket-allowed", SEED, "s3:ListBucket", s3("customers"), ALLOW)
case("seed-iot-implicit", SEED, "iot:CreateJob", JOB, IMPLICIT)
case("seed-signer-implicit", SEED, "signer:StartSigningJob", "*", IMPLICIT)
case("seed-iam-implicit", SEED, "iam:CreateUser", f"arn:aws:iam::{ACCOUNT}:user/eve", IMPLICIT)
case("o1-seed-deny-not-evaded-by-action-case", SEED, "S3:GETOBJECT", s3("customer/x"), DENY)
case("seed-arn-case-sensitive", SEED, "s3:GetObject", s3("Customer/x"), ALLOW)

# ------------------------------------------------ action wildcards

case("action-exact", policy(allow("iot:DescribeJob")), "iot:DescribeJob", JOB, ALLOW)
case("action-exact-other", policy(allow("iot:DescribeJob")), "iot:DeleteJob", JOB, IMPLICIT)
case("action-prefix-star", policy(allow("iot:Describe*")), "iot:DescribeJob", JOB, ALLOW)
case("action-prefix-star-miss", policy(allow("iot:Describe*")), "iot:CreateJob", JOB, IMPLICIT)
case("action-suffix-star", policy(allow("iot:*Job")), "iot:CreateJob", JOB, ALLOW)
case("action-suffix-star-full-match", policy(allow("iot:*Job")), "iot:CreateJobTemplate", JOB, IMPLICIT)
case("action-question-mark", policy(allow("iot:?escribeJob")), "iot:DescribeJob", JOB, ALLOW)
case("action-question-mark-one-char", policy(allow("iot:?escribeJob")), "iot:XXescribeJob", JOB, IMPLICIT)
case("action-star-everything", policy(allow("*")), "signer:StartSigningJob", "*", ALLOW)
case("action-service-star", policy(allow("iot:*")), "iot:UpdateCertificate", "*", ALLOW)
case("action-service-star-not-other-service", policy(allow("iot:*")), "iotjobsdata:DescribeJobExecution",
     "*", IMPLICIT)
case("action-wildcard-service", policy(allow("io?:CreateJob")), "iot:CreateJob", JOB, ALLOW)
case("action-any-service", policy(allow("*:CreateJob")), "iot:CreateJob", JOB, ALLOW)
case("action-any-service-miss", policy(allow("*:CreateJob")), "iot:DeleteJob", JOB, IMPLICIT)
case("action-policy-case-insensitive", policy(allow("IOT:createjob")), "iot:CreateJob", JOB, ALLOW)
case("action-request-case-insensitive", policy(allow("iot:CreateJob")), "iot:createjob", JOB, ALLOW)
case("action-middle-star", policy(allow("s3:Get*Version")), "s3:GetObjectVersion", s3("b/k"), ALLOW)
case("action-middle-star-miss", policy(allow("s3:Get*Version")), "s3:GetObject", s3("b/k"), IMPLICIT)
case("action-list-second", policy(allow(["iot:ListJobs", "iot:DescribeJob"])), "iot:DescribeJob", JOB,
     ALLOW)
case("action-other-service-same-name", policy(allow("iot:ListJobs")), "signer:ListJobs", "*", IMPLICIT)

# ------------------------------------------------ resource wildcards

JOBS = f"arn:aws:iot:us-east-1:{ACCOUNT}:job/*"
case("resource-star-spans-colons", policy(allow("iot:DescribeJob", "arn:aws:iot:*")), "iot:DescribeJob",
     JOB, ALLOW)
case("resource-star-spans-slashes", policy(allow("iot:DescribeJob", JOBS)), "iot:DescribeJob",
     f"arn:aws:iot:us-east-1:{ACCOUNT}:job/a/b", ALLOW)
case("resource-type-mismatch", policy(allow("iot:DescribeThing", JOBS)), "iot:DescribeThing", THING,
     IMPLICIT)
case("resource-question-mark", policy(allow("iot:DescribeJob", "arn:aws:iot:us-east-1:*:job/fw-?")),
     "iot:DescribeJob", JOB, ALLOW)
case("resource-question-mark-one-char",
     policy(allow("iot:DescribeJob", "arn:aws:iot:us-east-1:*:job/fw-?")), "iot:DescribeJob", JOB + "0",
     IMPLICIT)
case("resource-extension", policy(allow("s3:GetObject", s3("fw/*.bin"))), "s3:GetObject",
     s3("fw/a/b/img.bin"), ALLOW)
case("resource-extension-full-match", policy(allow("s3:GetObject", s3("fw/*.bin"))), "s3:GetObject",
     s3("fw/img.bin.sig"), IMPLICIT)
case("resource-three-chars", policy(allow("s3:GetObject", s3("fw/???.bin"))), "s3:GetObject",
     s3("fw/abc.bin"), ALLOW)
case("resource-three-chars-miss", policy(allow("s3:GetObject", s3("fw/???.bin"))), "s3:GetObject",
     s3("fw/abcd.bin"), IMPLICIT)
case("resource-case-sensitive", policy(allow("s3:GetObject", s3("Firmware/*"))), "s3:GetObject",
     s3("firmware/x"), IMPLICIT)
case("resource-bucket-pattern-not-star-resource", policy(allow("s3:ListAllMyBuckets", s3("*"))),
     "s3:ListAllMyBuckets", "*", IMPLICIT)
case("resource-star-matches-star", policy(allow("s3:ListAllMyBuckets")), "s3:ListAllMyBuckets", "*",
     ALLOW)
case("resource-several-stars", policy(allow("s3:GetObject", s3("a*b*c"))), "s3:GetObject",
     s3("a-x-b-y-c"), ALLOW)
case("resource-several-stars-miss", policy(allow("s3:GetObject", s3("a*b*c"))), "s3:GetObject",
     s3("a-x-c"), IMPLICIT)
case("resource-list-second", policy(allow("s3:GetObject", [s3("one/*"), s3("two/*")])), "s3:GetObject",
     s3("two/x"), ALLOW)
case("resource-star-middle-spans-segments", policy(allow("iot:DescribeJob", "arn:aws:*:job/fw-1")),
     "iot:DescribeJob", JOB, ALLOW)
case("resource-bucket-not-objects", policy(allow("s3:GetObject", s3("fw"))), "s3:GetObject", s3("fw/x"),
     IMPLICIT)

# ------------------------------------------------ NotAction / NotResource

ONLY_IAM = policy(allow("*"), stmt("Deny", Sid="DenyAllButIam", NotAction="iam:*", Resource="*"))
case("notaction-deny-everything-except-iam-allows-iam", ONLY_IAM, "iam:CreateUser",
     f"arn:aws:iam::{ACCOUNT}:user/eve", ALLOW)
case("notaction-deny-everything-except-iam-denies-s3", ONLY_IAM, "s3:GetObject", s3("b/k"), DENY,
     statement="DenyAllButIam")
case("notaction-deny-everything-except-iam-denies-iot", ONLY_IAM, "iot:CreateJob", JOB, DENY)
NOT_IAM = policy(stmt("Allow", NotAction="iam:*", Resource="*"))
case("notaction-allow-all-but-iam", NOT_IAM, "iot:CreateJob", JOB, ALLOW)
case("notaction-allow-all-but-iam-iam", NOT_IAM, "iam:CreateUser", "*", IMPLICIT)
case("notaction-allow-all-but-iam-case", NOT_IAM, "IAM:CreateUser", "*", IMPLICIT)
NOT_IAM_STS = policy(stmt("Allow", NotAction=["iam:*", "sts:*"], Resource="*"))
case("notaction-list-excludes-sts", NOT_IAM_STS, "sts:AssumeRole", "*", IMPLICIT)
case("notaction-list-allows-other", NOT_IAM_STS, "s3:GetObject", s3("b/k"), ALLOW)
NOT_CUSTOMER = policy(stmt("Allow", Action="s3:*", NotResource=[s3("customer"), s3("customer/*")]))
case("notresource-allow-other", NOT_CUSTOMER, "s3:GetObject", s3("fw/x"), ALLOW)
case("notresource-excluded", NOT_CUSTOMER, "s3:GetObject", s3("customer/x"), IMPLICIT)
case("notresource-excluded-bucket", NOT_CUSTOMER, "s3:ListBucket", s3("customer"), IMPLICIT)
ONLY_FW_BUCKET = policy(allow("*"), stmt("Deny", Sid="OnlyFirmware", Action="s3:*",
                                         NotResource=[s3("fw"), s3("fw/*")]))
case("notresource-deny-outside-allowed", ONLY_FW_BUCKET, "s3:GetObject", s3("other/x"), DENY,
     statement="OnlyFirmware")
case("notresource-deny-inside-allowed", ONLY_FW_BUCKET, "s3:GetObject", s3("fw/x"), ALLOW)
case("notresource-deny-other-service", ONLY_FW_BUCKET, "iot:CreateJob", JOB, ALLOW)
NOT_BOTH = policy(stmt("Allow", NotAction="s3:Delete*", NotResource=s3("locked/*")))
case("notaction-notresource-allowed", NOT_BOTH, "s3:PutObject", s3("fw/x"), ALLOW)
case("notaction-notresource-action-excluded", NOT_BOTH, "s3:DeleteObject", s3("fw/x"), IMPLICIT)
case("notaction-notresource-resource-excluded", NOT_BOTH, "s3:PutObject", s3("locked/x"), IMPLICIT)

# ------------------------------------------------ AWS documentation examples: conditions

SECURE_ONLY = policy(allow("s3:*"), deny("s3:*", Sid="DenyInsecure",
                                         Condition=when(Bool={"aws:SecureTransport": "false"})))
case("doc-securetransport-false-denied", SECURE_ONLY, "s3:GetObject", s3("b/k"), DENY,
     keys={"aws:SecureTransport": "false"}, statement="DenyInsecure")
case("doc-securetransport-true-allowed", SECURE_ONLY, "s3:GetObject", s3("b/k"), ALLOW,
     keys={"aws:SecureTransport": "true"})
case("doc-securetransport-missing-not-denied", SECURE_ONLY, "s3:GetObject", s3("b/k"), ALLOW)
case("doc-securetransport-case-of-value", SECURE_ONLY, "s3:GetObject", s3("b/k"), DENY,
     keys={"aws:SecureTransport": "FALSE"})
SECURE_JSON_BOOL = policy(allow("s3:GetObject", Condition=when(Bool={"aws:SecureTransport": True})))
case("bool-json-true", SECURE_JSON_BOOL, "s3:GetObject", s3("b/k"), ALLOW,
     keys={"aws:SecureTransport": "true"})
case("bool-json-true-false", SECURE_JSON_BOOL, "s3:GetObject", s3("b/k"), IMPLICIT,
     keys={"aws:SecureTransport": "false"})
case("bool-not-a-bool", SECURE_JSON_BOOL, "s3:GetObject", s3("b/k"), IMPLICIT,
     keys={"aws:SecureTransport": "yes"})

IP_ALLOW = policy(allow("iot:*", Condition=when(IpAddress={
    "aws:SourceIp": ["203.0.113.0/24", "2001:DB8:1234:5678::/64"]})))
case("doc-ipaddress-in-range", IP_ALLOW, "iot:ListThings", "*", ALLOW, keys={"aws:SourceIp": "203.0.113.77"})
case("doc-ipaddress-out-of-range", IP_ALLOW, "iot:ListThings", "*", IMPLICIT,
     keys={"aws:SourceIp": "198.51.100.1"})
case("doc-ipaddress-v6-in-range", IP_ALLOW, "iot:ListThings", "*", ALLOW,
     keys={"aws:SourceIp": "2001:db8:1234:5678::1"})
case("doc-ipaddress-v6-out-of-range", IP_ALLOW, "iot:ListThings", "*", IMPLICIT,
     keys={"aws:SourceIp": "2001:db8:1234:5679::1"})
case("doc-ipaddress-missing", IP_ALLOW, "iot:ListThings", "*", IMPLICIT)
case("doc-ipaddress-garbage", IP_ALLOW, "iot:ListThings", "*", IMPLICIT, keys={"aws:SourceIp": "not-an-ip"})
IP_DENY = policy(allow("*"), deny("*", Sid="DenyOutsideOffice", Condition=when(NotIpAddress={
    "aws:SourceIp": ["192.0.2.0/24", "203.0.113.0/24"]})))
case("doc-notipaddress-inside", IP_DENY, "iot:CreateJob", JOB, ALLOW, keys={"aws:SourceIp": "192.0.2.10"})
case("doc-notipaddress-second-range", IP_DENY, "iot:CreateJob", JOB, ALLOW,
     keys={"aws:SourceIp": "203.0.113.9"})
case("doc-notipaddress-outside", IP_DENY, "iot:CreateJob", JOB, DENY, keys={"aws:SourceIp": "10.0.0.1"},
     statement="DenyOutsideOffice")
case("o1-notipaddress-missing-key-denies", IP_DENY, "iot:CreateJob", JOB, DENY)
ONE_HOST = policy(allow("*"), deny("*", Condition=when(NotIpAddress={"aws:SourceIp": "192.0.2.1"})))
case("notipaddress-single-host", ONE_HOST, "iot:CreateJob", JOB, ALLOW, keys={"aws:SourceIp": "192.0.2.1"})

WINDOW = policy(allow("iot:*", Condition=when(
    DateGreaterThan={"aws:CurrentTime": "2026-01-01T00:00:00Z"},
    DateLessThan={"aws:CurrentTime": "2026-12-31T23:59:59Z"},
)))


def now(when: str) -> dict[str, str]:
    return {"aws:CurrentTime": when}


case("doc-date-window-inside", WINDOW, "iot:CreateJob", JOB, ALLOW, keys=now("2026-06-01T12:00:00Z"))
case("doc-date-window-before", WINDOW, "iot:CreateJob", JOB, IMPLICIT, keys=now("2025-12-31T23:59:59Z"))
case("doc-date-window-after", WINDOW, "iot:CreateJob", JOB, IMPLICIT, keys=now("2027-01-01T00:00:00Z"))
case("doc-date-window-missing", WINDOW, "iot:CreateJob", JOB, IMPLICIT)
case("doc-date-window-epoch-context", WINDOW, "iot:CreateJob", JOB, ALLOW, keys=now("1780000000"))
case("doc-date-window-offset", WINDOW, "iot:CreateJob", JOB, ALLOW, keys=now("2026-12-31T23:00:00-00:30"))
case("doc-date-window-offset-outside", WINDOW, "iot:CreateJob", JOB, IMPLICIT,
     keys=now("2026-12-31T23:30:00-01:00"))
case("doc-date-window-not-a-date", WINDOW, "iot:CreateJob", JOB, IMPLICIT, keys=now("tomorrow"))
EPOCH = policy(allow("iot:*", Condition=when(DateLessThan={"aws:EpochTime": 1767225600})))
case("date-epoch-policy-before", EPOCH, "iot:ListJobs", "*", ALLOW, keys={"aws:EpochTime": "1767225599"})
case("date-epoch-policy-equal", EPOCH, "iot:ListJobs", "*", IMPLICIT, keys={"aws:EpochTime": "1767225600"})
case("date-epoch-policy-iso-context", EPOCH, "iot:ListJobs", "*", ALLOW, keys={"aws:EpochTime": "2025-12-31"})
LTE = policy(allow("iot:*", Condition=when(DateLessThanEquals={"aws:CurrentTime": "2026-01-01T00:00:00Z"})))
case("date-less-than-equals-boundary", LTE, "iot:ListJobs", "*", ALLOW, keys=now("2026-01-01T00:00:00Z"))
case("date-less-than-equals-after", LTE, "iot:ListJobs", "*", IMPLICIT, keys=now("2026-01-01T00:00:01Z"))
GTE = policy(allow("iot:*", Condition=when(DateGreaterThanEquals={"aws:CurrentTime": "2026-01-01"})))
case("date-greater-than-equals-date-only", GTE, "iot:ListJobs", "*", ALLOW, keys=now("2026-01-01T00:00:00Z"))
case("date-greater-than-equals-before", GTE, "iot:ListJobs", "*", IMPLICIT, keys=now("2025-12-31T23:59:59Z"))
ISSUED = "2026-03-01T10:00:00Z"
DATE_EQ = policy(allow("iot:*", Condition=when(DateEquals={"aws:TokenIssueTime": ISSUED})))
case("date-equals-other-format", DATE_EQ, "iot:ListJobs", "*", ALLOW,
     keys={"aws:TokenIssueTime": "1772359200"})
case("date-equals-miss", DATE_EQ, "iot:ListJobs", "*", IMPLICIT, keys={"aws:TokenIssueTime": "1772359201"})
DATE_NE = policy(allow("*"), deny("*", Condition=when(DateNotEquals={"aws:TokenIssueTime": ISSUED})))
case("date-not-equals-other", DATE_NE, "iot:ListJobs", "*", DENY,
     keys={"aws:TokenIssueTime": "2026-03-02T10:00:00Z"})
case("date-not-equals-same", DATE_NE, "iot:ListJobs", "*", ALLOW, keys={"aws:TokenIssueTime": ISSUED})

HOME_PREFIX = policy(
    allow("s3:ListBucket", s3("team-bucket"), Sid="ListOwnHome",
          Condition=when(StringLike={"s3:prefix": ["", "home/", "home/${aws:username}/*"]})),
    allow(["s3:GetObject", "s3:PutObject"], s3("team-bucket/home/${aws:username}/*"), Sid="OwnObjects"),
)
TEAM = s3("team-bucket")


def alice_lists(prefix: str) -> dict[str, str]:
    return {"aws:username": "alice", "s3:prefix": prefix}


case("doc-prefix-own-home", HOME_PREFIX, "s3:ListBucket", TEAM, ALLOW, keys=alice_lists("home/alice/docs/"),
     statement="ListOwnHome")
case("doc-prefix-other-home", HOME_PREFIX, "s3:ListBucket", TEAM, IMPLICIT, keys=alice_lists("home/bob/"))
case("doc-prefix-root", HOME_PREFIX, "s3:ListBucket", TEAM, ALLOW, keys=alice_lists(""))
case("doc-prefix-home", HOME_PREFIX, "s3:ListBucket", TEAM, ALLOW, keys=alice_lists("home/"))
case("doc-prefix-missing", HOME_PREFIX, "s3:ListBucket", TEAM, IMPLICIT, keys={"aws:username": "alice"})
case("doc-prefix-no-username", HOME_PREFIX, "s3:ListBucket", TEAM, IMPLICIT,
     keys={"s3:prefix": "home/alice/x"})
case("doc-resource-variable-own", HOME_PREFIX, "s3:GetObject", s3("team-bucket/home/alice/cv.pdf"), ALLOW,
     keys={"aws:username": "alice"}, statement="OwnObjects")
case("doc-resource-variable-other", HOME_PREFIX, "s3:PutObject", s3("team-bucket/home/bob/cv.pdf"),
     IMPLICIT, keys={"aws:username": "alice"})
case("doc-resource-variable-no-username", HOME_PREFIX, "s3:GetObject", s3("team-bucket/home/alice/cv.pdf"),
     IMPLICIT)
case("o1-variable-value-is-literal-not-wildcard", HOME_PREFIX, "s3:GetObject",
     s3("team-bucket/home/bob/cv.pdf"), IMPLICIT, keys={"aws:username": "*"})
case("o1-variable-value-question-mark-literal", HOME_PREFIX, "s3:GetObject",
     s3("team-bucket/home/bob/cv.pdf"), IMPLICIT, keys={"aws:username": "b?b"})
case("o1-multivalued-key-is-no-variable", HOME_PREFIX, "s3:GetObject", s3("team-bucket/home/alice/x"),
     IMPLICIT, keys={"aws:username": ["alice", "bob"]})
DEFAULTED = policy(allow("s3:GetObject", s3("b/home/${aws:username, 'anonymous'}/*")))
case("variable-default-used", DEFAULTED, "s3:GetObject", s3("b/home/anonymous/x"), ALLOW, principal="")
case("variable-default-not-used", DEFAULTED, "s3:GetObject", s3("b/home/anonymous/x"), IMPLICIT,
     keys={"aws:username": "alice"})
OLD_VERSION = policy(allow("s3:GetObject", s3("b/home/${aws:username}/x")), version=VERSION_2008)
case("variable-literal-in-2008-version", OLD_VERSION, "s3:GetObject", s3("b/home/${aws:username}/x"), ALLOW,
     keys={"aws:username": "alice"})
case("variable-not-substituted-in-2008-version", OLD_VERSION, "s3:GetObject", s3("b/home/alice/x"),
     IMPLICIT, keys={"aws:username": "alice"})
ESCAPES = policy(allow("s3:GetObject", [s3("b/literal-${*}"), s3("b/q${?}"), s3("b/cost${$}")]))
case("escape-star-literal", ESCAPES, "s3:GetObject", s3("b/literal-*"), ALLOW)
case("escape-star-not-wildcard", ESCAPES, "s3:GetObject", s3("b/literal-anything"), IMPLICIT)
case("escape-question-literal", ESCAPES, "s3:GetObject", s3("b/q?"), ALLOW)
case("escape-question-not-wildcard", ESCAPES, "s3:GetObject", s3("b/qx"), IMPLICIT)
case("escape-dollar", ESCAPES, "s3:GetObject", s3("b/cost$"), ALLOW)
USERID = policy(allow("iot:*", Condition=when(StringEquals={"iot:thingName": "device-${aws:userid}"})))
case("variable-in-condition-value", USERID, "iot:DescribeThing", THING, ALLOW,
     keys={"aws:userid": "AIDAEXAMPLE", "iot:thingName": "device-AIDAEXAMPLE"})
case("variable-in-condition-value-miss", USERID, "iot:DescribeThing", THING, IMPLICIT,
     keys={"aws:userid": "AIDAEXAMPLE", "iot:thingName": "device-OTHER"})

ADMINS_ONLY = policy(allow("*"), deny("iam:*", Sid="OnlyAdminRoles", Condition=when(
    ArnNotLike={"aws:PrincipalArn": f"arn:aws:iam::{ACCOUNT}:role/admin-*"})))
case("doc-arnlike-admin-role", ADMINS_ONLY, "iam:CreateUser", "*", ALLOW,
     principal=f"arn:aws:iam::{ACCOUNT}:role/admin-ops")
case("doc-arnlike-user-denied", ADMINS_ONLY, "iam:CreateUser", "*", DENY, statement="OnlyAdminRoles")
case("doc-arnlike-other-service-unaffected", ADMINS_ONLY, "iot:ListThings", "*", ALLOW)
OPS_USERS = policy(allow("iot:*", Condition=when(ArnLike={"aws:PrincipalArn": "arn:aws:iam::*:user/ops/*"})))
case("arnlike-any-account", OPS_USERS, "iot:ListThings", "*", ALLOW,
     principal=f"arn:aws:iam::{ACCOUNT}:user/ops/carol")
case("arnlike-wrong-path", OPS_USERS, "iot:ListThings", "*", IMPLICIT)
ROLE_X = policy(allow("iot:*", Condition=when(ArnLike={"aws:SourceArn": "arn:aws:iam::*:role/x"})))
case("o1-arnlike-star-stays-in-its-segment", ROLE_X, "iot:ListThings", "*", IMPLICIT,
     keys={"aws:SourceArn": "arn:aws:iam::1:evil:role/x"})
case("arnlike-star-within-segment", ROLE_X, "iot:ListThings", "*", ALLOW,
     keys={"aws:SourceArn": f"arn:aws:iam::{ACCOUNT}:role/x"})
IS_ALICE = policy(allow("iot:*", Condition=when(ArnEquals={"aws:PrincipalArn": ALICE})))
case("arnequals-exact", IS_ALICE, "iot:ListThings", "*", ALLOW)
case("arnequals-other", IS_ALICE, "iot:ListThings", "*", IMPLICIT, principal=BOB)
case("arnequals-not-an-arn", IS_ALICE, "iot:ListThings", "*", IMPLICIT, keys={"aws:PrincipalArn": "alice"})
NOT_ALICE = policy(allow("*"), deny("*", Condition=when(ArnNotEquals={"aws:PrincipalArn": ALICE})))
case("arnnotequals", NOT_ALICE, "iot:ListThings", "*", DENY, principal=BOB)
OWN_ACCOUNT = policy(allow("iot:*", Condition=when(ArnLike={
    "aws:SourceArn": "arn:aws:iot:*:${aws:PrincipalAccount}:*"})))
case("arnlike-variable", OWN_ACCOUNT, "iot:ListThings", "*", ALLOW,
     keys={"aws:PrincipalAccount": ACCOUNT, "aws:SourceArn": JOB})
case("arnlike-variable-other-account", OWN_ACCOUNT, "iot:ListThings", "*", IMPLICIT,
     keys={"aws:PrincipalAccount": "999999999999", "aws:SourceArn": JOB})

MFA_REQUIRED = policy(allow("*"), deny("*", Sid="RequireMFA",
                                       Condition=when(Null={"aws:MultiFactorAuthAge": "true"})))
case("doc-null-missing-denied", MFA_REQUIRED, "iot:CreateJob", JOB, DENY, statement="RequireMFA")
case("doc-null-present-allowed", MFA_REQUIRED, "iot:CreateJob", JOB, ALLOW,
     keys={"aws:MultiFactorAuthAge": "300"})
case("null-empty-list-is-missing", MFA_REQUIRED, "iot:CreateJob", JOB, DENY,
     keys={"aws:MultiFactorAuthAge": []})
TAGGED = policy(allow("iot:*", Condition=when(Null={"aws:RequestTag/team": False})))
case("null-false-present", TAGGED, "iot:CreateJob", JOB, ALLOW, keys={"aws:RequestTag/team": "ota"})
case("null-false-missing", TAGGED, "iot:CreateJob", JOB, IMPLICIT)

IF_EXISTS = policy(allow("iot:*", Condition=when(
    StringLikeIfExists={"iot:thingGroupName": ["lab-*", "beta"]})))
case("doc-ifexists-missing", IF_EXISTS, "iot:CreateJob", JOB, ALLOW)
case("doc-ifexists-match", IF_EXISTS, "iot:CreateJob", JOB, ALLOW, keys={"iot:thingGroupName": "lab-7"})
case("doc-ifexists-mismatch", IF_EXISTS, "iot:CreateJob", JOB, IMPLICIT, keys={"iot:thingGroupName": "prod"})
DENY_IF_EXISTS = policy(allow("*"), deny("iot:*", Condition=when(
    StringNotEqualsIfExists={"aws:RequestedRegion": "us-east-1"})))
case("ifexists-negated-missing-denies", DENY_IF_EXISTS, "iot:CreateJob", JOB, DENY)
case("ifexists-negated-match-allows", DENY_IF_EXISTS, "iot:CreateJob", JOB, ALLOW,
     keys={"aws:RequestedRegion": "us-east-1"})
case("ifexists-negated-other-denies", DENY_IF_EXISTS, "iot:CreateJob", JOB, DENY,
     keys={"aws:RequestedRegion": "eu-west-1"})
BOOL_IF_EXISTS = policy(allow("*"), deny("*", Condition=when(
    BoolIfExists={"aws:MultiFactorAuthPresent": "false"})))
case("doc-boolifexists-missing-denies", BOOL_IF_EXISTS, "iot:CreateJob", JOB, DENY)
case("doc-boolifexists-true-allows", BOOL_IF_EXISTS, "iot:CreateJob", JOB, ALLOW,
     keys={"aws:MultiFactorAuthPresent": "true"})


def tags(*keys: str) -> dict[str, list[str]]:
    return {"aws:TagKeys": list(keys)}


ALL_TAGS = policy(allow("iot:TagResource", Condition=when(ForAllValues__StringEquals=tags("env", "team"))))
case("doc-forallvalues-subset", ALL_TAGS, "iot:TagResource", THING, ALLOW, keys=tags("env"))
case("doc-forallvalues-all", ALL_TAGS, "iot:TagResource", THING, ALLOW, keys=tags("team", "env"))
case("doc-forallvalues-extra", ALL_TAGS, "iot:TagResource", THING, IMPLICIT, keys=tags("env", "cost"))
case("doc-forallvalues-missing-is-vacuously-true", ALL_TAGS, "iot:TagResource", THING, ALLOW)
case("doc-forallvalues-empty-is-vacuously-true", ALL_TAGS, "iot:TagResource", THING, ALLOW, keys=tags())
ANY_TAG = policy(allow("iot:TagResource", Condition=when(ForAnyValue__StringEquals=tags("env"))))
case("doc-foranyvalue-one", ANY_TAG, "iot:TagResource", THING, ALLOW, keys=tags("x", "env"))
case("doc-foranyvalue-none", ANY_TAG, "iot:TagResource", THING, IMPLICIT, keys=tags("x", "y"))
case("doc-foranyvalue-missing", ANY_TAG, "iot:TagResource", THING, IMPLICIT)
FORBIDDEN_TAGS = policy(allow("*"), deny("iot:TagResource", Condition=when(
    ForAnyValue__StringLike=tags("aws:*", "sys-*"))))
case("foranyvalue-deny-one-forbidden", FORBIDDEN_TAGS, "iot:TagResource", THING, DENY,
     keys=tags("env", "sys-owner"))
case("foranyvalue-deny-none-forbidden", FORBIDDEN_TAGS, "iot:TagResource", THING, ALLOW, keys=tags("env"))
ALL_NOT = policy(allow("iot:TagResource", Condition=when(ForAllValues__StringNotEquals=tags("secret"))))
case("forallvalues-negated-ok", ALL_NOT, "iot:TagResource", THING, ALLOW, keys=tags("env", "team"))
case("forallvalues-negated-one-bad", ALL_NOT, "iot:TagResource", THING, IMPLICIT, keys=tags("env", "secret"))
ANY_NOT = policy(allow("iot:TagResource", Condition=when(ForAnyValue__StringNotEquals=tags("env"))))
case("foranyvalue-negated-some-other", ANY_NOT, "iot:TagResource", THING, ALLOW, keys=tags("env", "x"))
case("foranyvalue-negated-only-listed", ANY_NOT, "iot:TagResource", THING, IMPLICIT, keys=tags("env"))
ANY_IF_EXISTS = policy(allow("iot:TagResource", Condition=when(
    ForAnyValue__StringEqualsIfExists=tags("env"))))
case("foranyvalue-ifexists-missing", ANY_IF_EXISTS, "iot:TagResource", THING, ALLOW)
MULTI_NO_QUALIFIER = policy(allow("iot:*", Condition=when(StringEquals={"aws:TagKeys": "env"})))
case("multivalued-without-qualifier-any", MULTI_NO_QUALIFIER, "iot:TagResource", THING, ALLOW,
     keys=tags("x", "env"))


def dept(value: str) -> dict[str, str]:
    return {"aws:PrincipalTag/dept": value}


DEPT = policy(allow("iot:*", Condition=when(StringEquals={"aws:PrincipalTag/dept": ["ops", "security"]})))
case("string-equals-values-or", DEPT, "iot:ListThings", "*", ALLOW, keys=dept("security"))
case("string-equals-values-none", DEPT, "iot:ListThings", "*", IMPLICIT, keys=dept("dev"))
case("string-equals-case-sensitive", DEPT, "iot:ListThings", "*", IMPLICIT, keys=dept("Ops"))
case("string-equals-missing", DEPT, "iot:ListThings", "*", IMPLICIT)
NOT_DEPT = policy(allow("*"), deny("*", Condition=when(
    StringNotEquals={"aws:PrincipalTag/dept": ["ops", "security"]})))
case("string-not-equals-listed", NOT_DEPT, "iot:ListThings", "*", ALLOW, keys=dept("ops"))
case("string-not-equals-nor", NOT_DEPT, "iot:ListThings", "*", DENY, keys=dept("dev"))
case("o1-string-not-equals-missing-denies", NOT_DEPT, "iot:ListThings", "*", DENY)
KEYS_AND = policy(allow("iot:*", Condition=when(StringEquals={
    "aws:PrincipalTag/dept": "ops", "aws:RequestedRegion": "us-east-1"})))
case("condition-keys-and-both", KEYS_AND, "iot:ListThings", "*", ALLOW,
     keys={**dept("ops"), "aws:RequestedRegion": "us-east-1"})
case("condition-keys-and-one", KEYS_AND, "iot:ListThings", "*", IMPLICIT, keys=dept("ops"))
OPS_AND = policy(allow("iot:*", Condition=when(StringEquals=dept("ops"),
                                               IpAddress={"aws:SourceIp": "10.0.0.0/8"})))
case("condition-operators-and-both", OPS_AND, "iot:ListThings", "*", ALLOW,
     keys={**dept("ops"), "aws:SourceIp": "10.1.2.3"})
case("condition-operators-and-one", OPS_AND, "iot:ListThings", "*", IMPLICIT,
     keys={**dept("ops"), "aws:SourceIp": "192.168.1.1"})
KEY_CASE = policy(allow("iot:*", Condition=when(IpAddress={"AWS:SourceIP": "10.0.0.0/8"})))
case("condition-key-case-insensitive", KEY_CASE, "iot:ListThings", "*", ALLOW,
     keys={"aws:sourceip": "10.9.9.9"})
IGNORE_CASE = policy(allow("iot:*", Condition=when(StringEqualsIgnoreCase=dept("OPS"))))
case("string-equals-ignore-case", IGNORE_CASE, "iot:ListThings", "*", ALLOW, keys=dept("oPs"))
case("string-equals-ignore-case-miss", IGNORE_CASE, "iot:ListThings", "*", IMPLICIT, keys=dept("ops2"))
NOT_IGNORE_CASE = policy(allow("*"), deny("*", Condition=when(StringNotEqualsIgnoreCase=dept("ops"))))
case("string-not-equals-ignore-case-same", NOT_IGNORE_CASE, "iot:ListThings", "*", ALLOW, keys=dept("OPS"))
case("string-not-equals-ignore-case-other", NOT_IGNORE_CASE, "iot:ListThings", "*", DENY, keys=dept("dev"))


def thing_name(value: str) -> dict[str, str]:
    return {"iot:thingName": value}


LIKE = policy(allow("iot:*", Condition=when(StringLike=thing_name("sensor-??-*"))))
case("string-like-match", LIKE, "iot:DescribeThing", THING, ALLOW, keys=thing_name("sensor-01-east"))
case("string-like-miss", LIKE, "iot:DescribeThing", THING, IMPLICIT, keys=thing_name("sensor-1-east"))
case("string-like-case-sensitive", LIKE, "iot:DescribeThing", THING, IMPLICIT, keys=thing_name("SENSOR-01-x"))
NOT_LIKE = policy(allow("*"), deny("*", Condition=when(StringNotLike={"iot:thingName": ["lab-*", "dev-*"]})))
case("string-not-like-listed", NOT_LIKE, "iot:DescribeThing", THING, ALLOW, keys=thing_name("dev-9"))
case("string-not-like-other", NOT_LIKE, "iot:DescribeThing", THING, DENY, keys=thing_name("prod-1"))
PASS_TO_IOT = policy(allow("iam:PassRole", "arn:aws:iam::*:role/*", Condition=when(
    StringEquals={"iam:PassedToService": "iot.amazonaws.com"})))
case("passrole-to-iot", PASS_TO_IOT, "iam:PassRole", OTA_ROLE, ALLOW,
     keys={"iam:PassedToService": "iot.amazonaws.com"})
case("passrole-to-other-service", PASS_TO_IOT, "iam:PassRole", OTA_ROLE, IMPLICIT,
     keys={"iam:PassedToService": "ec2.amazonaws.com"})
case("passrole-without-service", PASS_TO_IOT, "iam:PassRole", OTA_ROLE, IMPLICIT)


def mfa_age(value: str) -> dict[str, str]:
    return {"aws:MultiFactorAuthAge": value}


def count(value: str) -> dict[str, str]:
    return {"iot:count": value}


MFA_AGE = policy(allow("iot:*", Condition=when(NumericLessThan={"aws:MultiFactorAuthAge": 3600})))
case("numeric-less-than", MFA_AGE, "iot:CreateJob", JOB, ALLOW, keys=mfa_age("100"))
case("numeric-less-than-equal", MFA_AGE, "iot:CreateJob", JOB, IMPLICIT, keys=mfa_age("3600"))
case("numeric-less-than-over", MFA_AGE, "iot:CreateJob", JOB, IMPLICIT, keys=mfa_age("7200"))
case("numeric-not-a-number", MFA_AGE, "iot:CreateJob", JOB, IMPLICIT, keys=mfa_age("soon"))
case("numeric-decimal", MFA_AGE, "iot:CreateJob", JOB, ALLOW, keys=mfa_age("3599.5"))
NUMERIC_LTE = policy(allow("iot:*", Condition=when(NumericLessThanEquals={"s3:max-keys": "10"})))
case("numeric-less-than-equals", NUMERIC_LTE, "iot:ListThings", "*", ALLOW, keys={"s3:max-keys": "10"})
NUMERIC_GT = policy(allow("iot:*", Condition=when(NumericGreaterThan=count("5"))))
case("numeric-greater-than", NUMERIC_GT, "iot:ListThings", "*", ALLOW, keys=count("6"))
case("numeric-greater-than-equal", NUMERIC_GT, "iot:ListThings", "*", IMPLICIT, keys=count("5"))
NUMERIC_GTE = policy(allow("iot:*", Condition=when(NumericGreaterThanEquals=count("5"))))
case("numeric-greater-than-equals", NUMERIC_GTE, "iot:ListThings", "*", ALLOW, keys=count("5.0"))
NUMERIC_EQ = policy(allow("iot:*", Condition=when(NumericEquals={"iot:count": ["1", "2"]})))
case("numeric-equals-second", NUMERIC_EQ, "iot:ListThings", "*", ALLOW, keys=count("2"))
case("numeric-equals-none", NUMERIC_EQ, "iot:ListThings", "*", IMPLICIT, keys=count("3"))
BIG = policy(allow("iot:*", Condition=when(NumericEquals=count("9007199254740993"))))
case("numeric-equals-big-integers-exact", BIG, "iot:ListThings", "*", IMPLICIT,
     keys=count("9007199254740992"))
NUMERIC_NE = policy(allow("*"), deny("*", Condition=when(NumericNotEquals={"iot:count": ["1", "2"]})))
case("numeric-not-equals-nor", NUMERIC_NE, "iot:ListThings", "*", DENY, keys=count("3"))
case("numeric-not-equals-listed", NUMERIC_NE, "iot:ListThings", "*", ALLOW, keys=count("1"))
BINARY = policy(allow("iot:*", Condition=when(BinaryEquals={"iot:blob": "QmluYXJ5VmFsdWU="})))
case("binary-equals", BINARY, "iot:ListThings", "*", ALLOW, keys={"iot:blob": "QmluYXJ5VmFsdWU="})
case("binary-equals-miss", BINARY, "iot:ListThings", "*", IMPLICIT, keys={"iot:blob": "T3RoZXI="})
PRINCIPAL_ARN_DEFAULT = policy(allow("iot:*", Condition=when(StringEquals={"aws:PrincipalArn": ALICE})))
case("principal-arn-key-defaults-to-principal", PRINCIPAL_ARN_DEFAULT, "iot:ListThings", "*", ALLOW)
case("principal-arn-key-other-principal", PRINCIPAL_ARN_DEFAULT, "iot:ListThings", "*", IMPLICIT,
     principal=BOB)

# ------------------------------------------------ resource (bucket) policies

ALICE_READS = policy(allow("s3:GetObject", s3("fw/*"), Sid="AliceReads", Principal={"AWS": ALICE_ID}))
case("bucket-allows-named-user", None, "s3:GetObject", s3("fw/img.bin"), ALLOW, buckets=(ALICE_READS,),
     statement="AliceReads")
case("bucket-other-user-implicit", None, "s3:GetObject", s3("fw/img.bin"), IMPLICIT, buckets=(ALICE_READS,),
     principal=BOB)
case("bucket-other-action-implicit", None, "s3:PutObject", s3("fw/img.bin"), IMPLICIT, buckets=(ALICE_READS,))
case("bucket-other-bucket-implicit", None, "s3:GetObject", s3("other/img.bin"), IMPLICIT,
     buckets=(ALICE_READS,))
BOTH_READ = policy(allow("s3:GetObject", s3("fw/*"), Principal={"AWS": [ALICE_ID, BOB_ID]}))
case("bucket-principal-list", None, "s3:GetObject", s3("fw/x"), ALLOW, principal=BOB, buckets=(BOTH_READ,))
PUBLIC = policy(allow("s3:GetObject", s3("public/*"), Principal="*"))
case("bucket-public-anonymous", None, "s3:GetObject", s3("public/x"), ALLOW, principal="", buckets=(PUBLIC,))
case("bucket-public-any-user", None, "s3:GetObject", s3("public/x"), ALLOW, principal=BOB, buckets=(PUBLIC,))
ANY_AWS = policy(allow("s3:GetObject", s3("fw/*"), Principal={"AWS": "*"}))
case("bucket-aws-star", None, "s3:GetObject", s3("fw/x"), ALLOW, principal=BOB, buckets=(ANY_AWS,))
ACCOUNT_GRANT = policy(allow("s3:GetObject", s3("fw/*"), Principal={"AWS": ACCOUNT}))
case("bucket-account-grant-delegates", None, "s3:GetObject", s3("fw/x"), IMPLICIT, buckets=(ACCOUNT_GRANT,))
case("bucket-account-grant-root", None, "s3:GetObject", s3("fw/x"), ALLOW, principal=ROOT,
     buckets=(ACCOUNT_GRANT,))
case("bucket-account-grant-plus-identity", policy(allow("s3:GetObject")), "s3:GetObject", s3("fw/x"), ALLOW,
     buckets=(ACCOUNT_GRANT,))
ACCOUNT_DENY = policy(deny("s3:DeleteObject", s3("fw/*"), Sid="NoDeletes", Principal={"AWS": ROOT}))
case("o1-bucket-account-deny-covers-users", policy(allow("*")), "s3:DeleteObject", s3("fw/x"), DENY,
     buckets=(ACCOUNT_DENY,), statement="NoDeletes")
case("bucket-account-deny-other-account", policy(allow("*")), "s3:DeleteObject", s3("fw/x"), ALLOW,
     buckets=(ACCOUNT_DENY,), principal="arn:aws:iam::999999999999:user/mallory")
SERVICE_READS = policy(allow(["s3:GetObject", "s3:GetObjectVersion"], s3("fw/*"),
                             Principal={"Service": "iot.amazonaws.com"}))
case("bucket-service-principal", None, "s3:GetObjectVersion", s3("fw/x"), ALLOW, principal="",
     service_principal="iot.amazonaws.com", buckets=(SERVICE_READS,))
case("bucket-other-service-principal", None, "s3:GetObject", s3("fw/x"), IMPLICIT, principal="",
     service_principal="ec2.amazonaws.com", buckets=(SERVICE_READS,))
case("bucket-service-grant-not-to-users", None, "s3:GetObject", s3("fw/x"), IMPLICIT,
     buckets=(SERVICE_READS,))
ROLE_READS = policy(allow("s3:GetObject", s3("fw/*"), Principal={"AWS": OTA_ROLE_ID}))
case("bucket-role-grant-service-acting-through-role", None, "s3:GetObject", s3("fw/x"), ALLOW,
     principal=OTA_SESSION, role_arn=OTA_ROLE, service_principal="iot.amazonaws.com", buckets=(ROLE_READS,))
case("bucket-service-grant-service-acting-through-role", None, "s3:GetObjectVersion", s3("fw/x"), ALLOW,
     principal=OTA_SESSION, role_arn=OTA_ROLE, service_principal="iot.amazonaws.com",
     buckets=(SERVICE_READS,))
ROLE_DENIED = policy(deny("s3:GetObject", s3("fw/*"), Sid="NotThisRole", Principal={"AWS": OTA_ROLE_ID}))
case("o1-bucket-deny-on-role-applies-through-the-service", policy(allow("s3:*")), "s3:GetObject", s3("fw/x"),
     DENY, principal=OTA_SESSION, role_arn=OTA_ROLE, service_principal="iot.amazonaws.com",
     buckets=(ROLE_DENIED, SERVICE_READS), statement="NotThisRole")
case("bucket-aws-star-not-a-bare-service", None, "s3:GetObject", s3("fw/x"), IMPLICIT,
     principal="iot.amazonaws.com", service_principal="iot.amazonaws.com", buckets=(ANY_AWS,))
case("bucket-role-session", None, "s3:GetObject", s3("fw/x"), ALLOW, principal=OTA_SESSION,
     role_arn=OTA_ROLE, buckets=(ROLE_READS,))
case("bucket-other-role-session", None, "s3:GetObject", s3("fw/x"), IMPLICIT,
     principal=f"arn:aws:sts::{ACCOUNT}:assumed-role/other/s", role_arn=f"arn:aws:iam::{ACCOUNT}:role/other",
     buckets=(ROLE_READS,))
NO_DELETE = policy(deny("s3:DeleteBucket", s3("fw"), Sid="KeepBucket", Principal="*"))
case("o1-bucket-deny-beats-identity-allow", policy(allow("*")), "s3:DeleteBucket", s3("fw"), DENY,
     buckets=(NO_DELETE,), statement="KeepBucket")
case("o1-identity-deny-beats-bucket-allow", policy(deny("s3:GetObject", s3("fw/*"), Sid="NoFirmware")),
     "s3:GetObject", s3("fw/x"), DENY, buckets=(ALICE_READS,), statement="NoFirmware")
ONLY_ALICE = policy(
    allow("s3:*", [s3("fw"), s3("fw/*")], Principal={"AWS": [ALICE_ID, BOB_ID]}),
    deny("s3:*", [s3("fw"), s3("fw/*")], Sid="OnlyAlice", NotPrincipal={"AWS": ALICE_ID}),
)
case("bucket-notprincipal-deny-others", None, "s3:GetObject", s3("fw/x"), DENY, principal=BOB,
     buckets=(ONLY_ALICE,), statement="OnlyAlice")
case("bucket-notprincipal-named-allowed", None, "s3:GetObject", s3("fw/x"), ALLOW, buckets=(ONLY_ALICE,))
TLS_BUCKET = policy(
    allow("s3:GetObject", s3("fw/*"), Principal={"AWS": ALICE_ID}),
    deny("s3:*", [s3("fw"), s3("fw/*")], Sid="TlsOnly", Principal="*",
         Condition=when(Bool={"aws:SecureTransport": "false"})),
)
case("doc-bucket-deny-insecure", None, "s3:GetObject", s3("fw/x"), DENY, buckets=(TLS_BUCKET,),
     keys={"aws:SecureTransport": "false"}, statement="TlsOnly")
case("doc-bucket-secure-allowed", None, "s3:GetObject", s3("fw/x"), ALLOW, buckets=(TLS_BUCKET,),
     keys={"aws:SecureTransport": "true"})
LIST_FW = policy(allow("s3:ListBucket", s3("fw"), Principal={"AWS": ALICE_ID}))
case("bucket-list-on-bucket-arn", None, "s3:ListBucket", s3("fw"), ALLOW, buckets=(LIST_FW,))
case("bucket-and-identity-both-allow-identity-reported", policy(allow("s3:GetObject", Sid="Mine")),
     "s3:GetObject", s3("fw/x"), ALLOW, buckets=(ALICE_READS,), statement="Mine")

# ------------------------------------------------ precedence and bookkeeping

case("no-policies-implicit", None, "iot:CreateJob", JOB, IMPLICIT)
case("no-matching-statement-implicit", policy(allow("iot:ListJobs")), "iot:CreateJob", JOB, IMPLICIT)
case("o1-deny-in-second-policy-wins", (policy(allow("*")), policy(deny("iot:CreateJob", Sid="NoJobs"))),
     "iot:CreateJob", JOB, DENY, statement="NoJobs")
case("o1-deny-in-first-policy-wins", (policy(deny("iot:*", Sid="NoIot")), policy(allow("iot:CreateJob"))),
     "iot:CreateJob", JOB, DENY, statement="NoIot")
case("o1-deny-after-allow-in-same-policy", policy(allow("iot:*", Sid="A"), deny("iot:CreateJob", Sid="D")),
     "iot:CreateJob", JOB, DENY, statement="D")
case("first-allow-reported", (policy(allow("iot:*", Sid="First")), policy(allow("*", Sid="Second"))),
     "iot:CreateJob", JOB, ALLOW, statement="First")
UNMET_DENY = policy(allow("*"), deny("*", Condition=when(StringEquals={"aws:PrincipalTag/blocked": "yes"})))
case("deny-with-unmet-condition-ignored", UNMET_DENY, "iot:CreateJob", JOB, ALLOW)
case("deny-only-policy-nonmatching-implicit", policy(deny("s3:*")), "iot:CreateJob", JOB, IMPLICIT)
case("deny-only-policy-matching", policy(deny("iot:*")), "iot:CreateJob", JOB, DENY, statement="Statement[0]")
case("statement-without-sid-labelled-by-index", policy(allow("s3:*"), allow("iot:*")), "iot:CreateJob", JOB,
     ALLOW, statement="Statement[1]")
case("administrator-access", policy(allow("*")), "iam:DeleteRole", OTA_ROLE, ALLOW)
case("single-statement-object", {"Version": "2012-10-17", "Statement": allow("iot:CreateJob")},
     "iot:CreateJob", JOB, ALLOW)
case("version-defaults-to-2008", {"Statement": [allow("iot:CreateJob")]}, "iot:CreateJob", JOB, ALLOW)
WILD_SERVICES = policy(allow("*:Describe*"), deny("io?:DescribeJob"))
case("wildcard-service-statement-and-deny", WILD_SERVICES, "iot:DescribeJob", JOB, DENY)
case("wildcard-service-statement-other-service", WILD_SERVICES, "signer:DescribeSigningJob", "*", ALLOW)


def decide(c: Case) -> Decision:
    identity = [NamedPolicy(f"identity-{i}", compile_policy(json.dumps(d)))
                for i, d in enumerate(c.identity)]
    buckets = [NamedPolicy(f"bucket-{i}", compile_policy(d, PolicyKind.RESOURCE))
               for i, d in enumerate(c.buckets)]
    ctx = RequestContext(c.principal, c.action, c.resource, c.keys, role_arn=c.role_arn,
                         service_principal=c.service_principal, principal_id=IDS.get(c.principal))
    return evaluate(ctx, identity, buckets)


def test_o1_policy_table_is_large_and_ids_are_unique() -> None:
    assert len(CASES) >= 150
    assert len({c.id for c in CASES}) == len(CASES)
    assert {c.expected for c in CASES} == {ALLOW, DENY, IMPLICIT}


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_o1_policy_decision(c: Case) -> None:
    decision = decide(c)
    assert decision.outcome == c.expected
    assert decision.allowed == (c.expected == ALLOW)
    if c.statement is not None:
        assert decision.statement == c.statement
    if c.expected == IMPLICIT:
        assert (decision.policy, decision.statement) == (None, None)


def test_decision_names_the_policy_and_says_where_it_came_from() -> None:
    seed = NamedPolicy("arn:aws:iam::123456789012:policy/seed", compile_policy(SEED))
    bucket = NamedPolicy("bucket:fw", compile_policy(NO_DELETE, PolicyKind.RESOURCE))
    denied = evaluate(RequestContext(ALICE, "s3:GetObject", s3("customer/x")), [seed])
    assert (denied.policy, denied.statement, denied.explicit, denied.resource_policy) == (
        seed.name, "DenyCustomerBucket", True, False)
    assert denied.describe() == f"explicitly denied by {seed.name} statement DenyCustomerBucket"
    by_bucket = evaluate(RequestContext(ALICE, "s3:DeleteBucket", s3("fw")), [seed], [bucket])
    assert (by_bucket.policy, by_bucket.resource_policy, by_bucket.outcome) == ("bucket:fw", True, DENY)
    nothing = evaluate(RequestContext(ALICE, "iot:CreateJob", JOB), [seed])
    assert (nothing.explicit, nothing.describe()) == (False, "implicitly denied: no statement allows it")


def test_policy_kinds_cannot_be_mixed_up() -> None:
    identity = NamedPolicy("identity", compile_policy(SEED))
    bucket = NamedPolicy("bucket", compile_policy(ALICE_READS, PolicyKind.RESOURCE))
    ctx = RequestContext(ALICE, "s3:GetObject", s3("fw/x"))
    with pytest.raises(MisuseError):
        evaluate(ctx, [bucket])
    with pytest.raises(MisuseError):
        evaluate(ctx, [], [identity])


def _trust(*statements: dict[str, Any]) -> NamedPolicy:
    return NamedPolicy("role trust policy", compile_policy(policy(*statements), PolicyKind.TRUST))


def _assume(trust: NamedPolicy | None, principal: str = ALICE, *identity: dict[str, Any],
            service: str | None = None, keys: dict[str, str] | None = None) -> Decision:
    ctx = RequestContext(principal, "sts:AssumeRole", OTA_ROLE, keys or {}, service_principal=service,
                         principal_id=IDS.get(principal))
    named = [NamedPolicy(f"identity-{i}", compile_policy(d)) for i, d in enumerate(identity)]
    return evaluate_assume_role(ctx, named, trust)


EVERYTHING = policy(allow("*"))
TRUSTS_IOT = stmt("Allow", Sid="OtaService", Principal={"Service": "iot.amazonaws.com"},
                  Action="sts:AssumeRole")


def test_o1_trust_policy_decides_who_may_assume_the_role() -> None:
    trust = _trust(TRUSTS_IOT,
                   stmt("Allow", Sid="Alice", Principal={"AWS": ALICE_ID}, Action="sts:AssumeRole"))
    assert _assume(trust, "iot.amazonaws.com", service="iot.amazonaws.com").statement == "OtaService"
    assert not _assume(trust, "ec2.amazonaws.com", service="ec2.amazonaws.com").allowed
    assert _assume(trust).statement == "Alice"  # named directly: no identity policy needed
    assert _assume(trust, BOB).outcome == IMPLICIT
    with pytest.raises(MalformedPolicyError):
        compile_policy(policy(stmt("Allow", Action="sts:AssumeRole")), PolicyKind.TRUST)


def test_o1_an_identity_allow_alone_never_assumes_a_role() -> None:
    """Finding 1: a user whose policies allow `*` cannot assume a role trusted only by a
    service or only by another user."""
    only_iot = _trust(TRUSTS_IOT)
    only_bob = _trust(stmt("Allow", Principal={"AWS": BOB_ID}, Action="sts:AssumeRole"))
    assert _assume(only_iot, ALICE, EVERYTHING).outcome == IMPLICIT
    assert _assume(only_bob, ALICE, EVERYTHING).outcome == IMPLICIT
    assert _assume(None, ALICE, EVERYTHING).outcome == IMPLICIT  # no such role
    assert _assume(only_bob, BOB).allowed


def test_o1_a_trust_policy_naming_the_account_delegates_to_identity_policies() -> None:
    for account in (ACCOUNT, ROOT):
        trust = _trust(stmt("Allow", Principal={"AWS": account}, Action="sts:AssumeRole"))
        assert _assume(trust, ALICE).outcome == IMPLICIT  # the account trusts; alice's policies do not
        may_assume = policy(allow("sts:AssumeRole", OTA_ROLE, Sid="MayAssume"))
        decided = _assume(trust, ALICE, may_assume)
        assert (decided.outcome, decided.statement) == (ALLOW, "MayAssume")
        other_role = policy(allow("sts:AssumeRole", f"arn:aws:iam::{ACCOUNT}:role/other"))
        assert _assume(trust, ALICE, other_role).outcome == IMPLICIT
        assert _assume(trust, "arn:aws:iam::999999999999:user/mallory", EVERYTHING).outcome == IMPLICIT


def test_o1_an_explicit_deny_anywhere_wins_over_trust() -> None:
    trust = _trust(stmt("Allow", Principal={"AWS": ALICE_ID}, Action="sts:AssumeRole"))
    no_roles = policy(deny("sts:AssumeRole", Sid="NoRoles"))
    denied = _assume(trust, ALICE, no_roles)
    assert (denied.outcome, denied.statement) == (DENY, "NoRoles")
    denying = _trust(stmt("Allow", Principal={"AWS": ACCOUNT}, Action="sts:AssumeRole"),
                     stmt("Deny", Sid="NotAlice", Principal={"AWS": ALICE_ID}, Action="sts:AssumeRole"))
    assert _assume(denying, ALICE, EVERYTHING).statement == "NotAlice"
    assert _assume(denying, BOB, EVERYTHING).allowed
    with pytest.raises(MalformedPolicyError, match="NotPrincipal is not allowed"):
        compile_policy(policy(stmt("Allow", NotPrincipal={"AWS": ALICE_ID}, Action="sts:AssumeRole")),
                       PolicyKind.TRUST)


def test_o1_trust_conditions_apply() -> None:
    trust = _trust(stmt("Allow", Principal={"AWS": ALICE_ID}, Action="sts:AssumeRole",
                        Condition=when(StringEquals={"sts:ExternalId": "tenant-42"})))
    assert _assume(trust, ALICE).outcome == IMPLICIT
    assert _assume(trust, ALICE, keys={"sts:ExternalId": "tenant-42"}).allowed


def test_o1_a_principal_is_its_unique_id_not_its_name() -> None:
    """A user deleted and re-created under the same name has another unique id: what was
    granted to the old one is not granted to the new one. An ARN left unbound in a stored
    document grants nothing, and still takes away (Deny, NotPrincipal)."""
    trust = _trust(stmt("Allow", Principal={"AWS": ALICE_ID}, Action="sts:AssumeRole"))
    new_alice = RequestContext(ALICE, "sts:AssumeRole", OTA_ROLE, principal_id="AIDAALICE2ND000000000")
    assert evaluate_assume_role(new_alice, [], trust).outcome == IMPLICIT
    by_name = NamedPolicy("bucket", compile_policy(
        policy(allow("s3:GetObject", s3("fw/*"), Principal={"AWS": ALICE})), PolicyKind.RESOURCE))
    alice = RequestContext(ALICE, "s3:GetObject", s3("fw/x"), principal_id=ALICE_ID)
    assert evaluate(alice, [], [by_name]).outcome == IMPLICIT
    denied_by_name = NamedPolicy("bucket", compile_policy(policy(
        allow("s3:GetObject", s3("fw/*"), Principal="*"),
        deny("s3:GetObject", s3("fw/*"), Principal={"AWS": ALICE})), PolicyKind.RESOURCE))
    assert evaluate(alice, [], [denied_by_name]).outcome == DENY
    assert evaluate(RequestContext(BOB, "s3:GetObject", s3("fw/x"), principal_id=BOB_ID), [],
                    [denied_by_name]).outcome == ALLOW
    spared_by_name = NamedPolicy("bucket", compile_policy(policy(
        allow("s3:GetObject", s3("fw/*"), Principal="*"),
        deny("s3:GetObject", s3("fw/*"), NotPrincipal={"AWS": ALICE})), PolicyKind.RESOURCE))
    assert evaluate(alice, [], [spared_by_name]).outcome == DENY  # an unbound name spares no one


# ------------------------------------------------ validation errors


def _doc(*statements: dict[str, Any], **top: Any) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements), **top})


OK = {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}
ID, RES = PolicyKind.IDENTITY, PolicyKind.RESOURCE


def _cond(condition: Any) -> str:
    return _doc({**OK, "Condition": condition})


INVALID: list[tuple[str, str | bytes, PolicyKind, str]] = [
    ("bad-json", '{"Version": "2012-10-17", "Statement": [', ID, "not valid JSON"),
    ("not-utf8", b'{"Statement": "\xff"}', ID, "not UTF-8"),
    ("not-an-object", '["Statement"]', ID, "must be a JSON object"),
    ("nan-constant", '{"Statement": [], "Id": NaN}', ID, "NaN"),
    ("deep-nesting", "[" * 100_000 + "]" * 100_000, ID, "exceeds the limit"),
    ("duplicate-json-key",
     '{"Statement": {"Effect": "Allow", "Effect": "Deny", "Action": "*", "Resource": "*"}}',
     ID, "duplicate key 'Effect'"),
    ("bad-version", json.dumps({"Version": "2013-01-01", "Statement": [OK]}), ID, "Version: must be"),
    ("version-not-string", json.dumps({"Version": 2012, "Statement": [OK]}), ID, "Version: must be"),
    ("id-not-string", _doc(OK, Id=5), ID, "Id: must be a string"),
    ("unknown-top-level", _doc(OK, Statements=[]), ID, "unknown top-level element"),
    ("no-statement", json.dumps({"Version": "2012-10-17"}), ID, "no Statement"),
    ("empty-statement", _doc(), ID, "Statement: must not be empty"),
    ("statement-not-object", json.dumps({"Statement": ["x"]}), ID, "Statement[0]: must be an object"),
    ("missing-effect", _doc({"Action": "s3:*", "Resource": "*"}), ID, "Statement[0]: Effect must be"),
    ("lowercase-effect", _doc({**OK, "Effect": "allow"}), ID, "Effect must be"),
    ("missing-effect-named-by-sid", _doc(OK, {"Sid": "Broken", "Action": "s3:*", "Resource": "*"}), ID,
     "Statement[1] (Sid 'Broken'): Effect must be"),
    ("action-and-notaction", _doc({**OK, "NotAction": "iam:*"}), ID, "has both Action and NotAction"),
    ("no-action", _doc({"Effect": "Allow", "Resource": "*"}), ID, "must have Action or NotAction"),
    ("empty-action-list", _doc({**OK, "Action": []}), ID, "Action: must not be empty"),
    ("action-not-string", _doc({**OK, "Action": 7}), ID, "Action: must be a non-empty"),
    ("action-without-service", _doc({**OK, "Action": "CreateJob"}), ID, "must have the form service:Action"),
    ("action-with-space", _doc({**OK, "Action": "iot: CreateJob"}), ID, "must have the form service:Action"),
    ("resource-and-notresource", _doc({**OK, "NotResource": "*"}), ID, "has both Resource and NotResource"),
    ("no-resource", _doc({"Effect": "Allow", "Action": "s3:*"}), ID, "must have Resource or NotResource"),
    ("resource-not-arn", _doc({**OK, "Resource": "bucket/key"}), ID, "must be an ARN or"),
    ("unknown-statement-element", _doc({**OK, "Effects": "Allow"}), ID, "unknown element 'Effects'"),
    ("sid-not-string", _doc({**OK, "Sid": 3}), ID, "Sid must be a string"),
    ("duplicate-sid", _doc({**OK, "Sid": "A"}, {**OK, "Sid": "A"}), ID, "Sid 'A' is used by more than one"),
    ("principal-in-identity-policy", _doc({**OK, "Principal": "*"}), ID,
     "Principal is not allowed in an identity-based policy"),
    ("missing-principal-in-bucket-policy", _doc(OK), RES, "must have Principal or"),
    ("principal-and-notprincipal", _doc({**OK, "Principal": "*", "NotPrincipal": {"AWS": ALICE}}), RES,
     "has both Principal and NotPrincipal"),
    ("principal-wildcard-in-arn", _doc({**OK, "Principal": {"AWS": "arn:aws:iam::*:user/x"}}), RES,
     "wildcards are not allowed in principals"),
    ("principal-unknown-type", _doc({**OK, "Principal": {"Users": ALICE}}), RES,
     "unknown principal type 'Users'"),
    ("principal-not-arn", _doc({**OK, "Principal": {"AWS": "alice"}}), RES, "AWS principal must be an ARN"),
    ("principal-service-star", _doc({**OK, "Principal": {"Service": "*"}}), RES,
     '"*" is only accepted for AWS principals'),
    ("principal-bad-shape", _doc({**OK, "Principal": ["*"]}), RES, 'must be "*" or'),
    ("unknown-operator", _cond({"StringEqualz": {"aws:username": "a"}}), ID,
     "operator 'StringEqualz' is not supported"),
    ("unknown-qualifier", _cond({"ForSomeValues:StringEquals": {"aws:TagKeys": "a"}}), ID,
     "unknown set qualifier"),
    ("null-if-exists", _cond({"NullIfExists": {"aws:username": "true"}}), ID, "Null takes no modifiers"),
    ("condition-not-object", _cond(["x"]), ID, "Condition must be an object"),
    ("condition-operator-not-object", _cond({"StringEquals": "x"}), ID, "must map condition keys to values"),
    ("condition-key-without-prefix", _cond({"StringEquals": {"username": "a"}}), ID,
     "condition keys have the form prefix:name"),
    ("condition-no-values", _cond({"StringEquals": {"aws:username": []}}), ID, "no values given"),
    ("condition-nested-value", _cond({"StringEquals": {"aws:username": {"a": 1}}}), ID,
     "must be strings, numbers or booleans"),
    ("numeric-not-number", _cond({"NumericLessThan": {"aws:MultiFactorAuthAge": "x"}}), ID, "not a number"),
    ("date-not-date", _cond({"DateLessThan": {"aws:CurrentTime": "next week"}}), ID,
     "not an ISO 8601 date"),
    ("ip-not-cidr", _cond({"IpAddress": {"aws:SourceIp": "10.0.0.0/33"}}), ID,
     "not an IP address or CIDR block"),
    ("bool-not-bool", _cond({"Bool": {"aws:SecureTransport": "yes"}}), ID,
     "Bool values must be true or false"),
    ("null-not-bool", _cond({"Null": {"aws:username": "maybe"}}), ID, "Null values must be true or false"),
    ("unterminated-variable", _doc({**OK, "Resource": "arn:aws:s3:::b/${aws:username"}), ID,
     "unterminated policy variable"),
    ("unquoted-variable-default", _doc({**OK, "Resource": "arn:aws:s3:::b/${aws:username, anon}"}), ID,
     "default must be quoted"),
    ("empty-variable", _cond({"StringEquals": {"aws:username": "${}"}}), ID, "invalid policy variable"),
]


@pytest.mark.parametrize(("document", "kind", "fragment"), [i[1:] for i in INVALID],
                         ids=[i[0] for i in INVALID])
def test_malformed_policy_is_refused_with_stable_code(document: str | bytes, kind: PolicyKind,
                                                      fragment: str) -> None:
    with pytest.raises(MalformedPolicyError) as exc:
        compile_policy(document, kind)
    assert exc.value.code == "MalformedPolicyDocument"
    assert fragment in str(exc.value)


# Hostile JSON and numbers: the bounded decoder (core/wirejson.py) and ASCII-only numbers.
HOSTILE: list[tuple[str, str, str]] = [
    ("deep-nesting-within-size", "[" * 10_000 + "]" * 10_000, "nested deeper than"),
    ("huge-integer", '{"Statement": [], "Id": ' + "9" * 5000 + "}", "out of range"),
    ("unicode-digits-are-not-a-number", _cond({"NumericEquals": {"s3:max-keys": "\u0661\u0662"}}),
     "not a number"),
    ("unicode-digits-are-not-an-epoch", _cond({"DateLessThan": {"aws:EpochTime": "\u0661\u0662"}}),
     "not an ISO 8601 date"),
    ("duplicate-keys", '{"Statement": {"Effect": "Deny", "Effect": "Allow", "Action": "*", "Resource": "*"}}',
     "duplicate key"),
]


@pytest.mark.parametrize(("document", "fragment"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_o1_hostile_policy_json_is_refused_as_malformed(document: str, fragment: str) -> None:
    with pytest.raises(MalformedPolicyError) as exc:
        compile_policy(document)
    assert exc.value.code == "MalformedPolicyDocument"
    assert fragment in str(exc.value)


def test_valid_edge_documents_compile() -> None:
    unnamed = compile_policy(_doc({**OK, "Sid": ""}, {**OK, "Sid": ""}))
    assert unnamed.statements[1].label == "Statement[1]"
    unterminated = {**OK, "Resource": "arn:aws:s3:::b/${aws:username"}
    old = json.dumps({"Version": VERSION_2008, "Statement": [unterminated]})
    assert compile_policy(old).version == VERSION_2008
    principals = {"AWS": ACCOUNT, "Service": ["iot.amazonaws.com"],
                  "Federated": "cognito-identity.amazonaws.com"}
    assert compile_policy(_doc({**OK, "Principal": principals}), RES).kind is RES


# ------------------------------------------------ wildcards


def _reference_glob(pattern: str, text: str) -> bool:
    """Plain dynamic programming over the text positions each pattern prefix can reach."""
    reachable = {0}
    for ch in pattern:
        if ch == "*":
            start = min(reachable) if reachable else len(text) + 1
            reachable = set(range(start, len(text) + 1))
        else:
            reachable = {i + 1 for i in reachable if i < len(text) and (ch == "?" or text[i] == ch)}
    return len(text) in reachable


@given(st.text(alphabet="ab*?:/", max_size=12), st.text(alphabet="ab:/", max_size=14))
def test_glob_agrees_with_reference(pattern: str, text: str) -> None:
    expected = _reference_glob(pattern, text)
    assert (glob(pattern).fullmatch(text) is not None) == expected
    assert PatternSet([pattern]).matches(text) == expected


@given(st.lists(st.text(alphabet="ab*?", max_size=6), min_size=1, max_size=4),
       st.text(alphabet="ab", max_size=8))
def test_pattern_set_is_any_of_its_patterns(patterns: list[str], text: str) -> None:
    assert PatternSet(patterns).matches(text) == any(_reference_glob(p, text) for p in patterns)


def test_regex_metacharacters_are_literal() -> None:
    assert glob("arn:aws:s3:::a.b(c)+[d]").fullmatch("arn:aws:s3:::a.b(c)+[d]")
    assert not glob("arn:aws:s3:::a.b").fullmatch("arn:aws:s3:::axb")
    assert glob("x\ny*").fullmatch("x\ny\nz")


@pytest.mark.timeout(20)
def test_pathological_patterns_do_not_backtrack_exponentially() -> None:
    # A naive `.*a.*a...` translation does not finish on these inputs; this one returns at once.
    pattern = "arn:aws:s3:::" + "*a" * 25 + "*b"
    text = "arn:aws:s3:::" + "a" * 5000
    assert glob(pattern).fullmatch(text) is None
    assert PatternSet([pattern, "*a*a*a*a*a*a*a*a*c"]).matches(text) is False
    ctx = RequestContext(ALICE, "s3:GetObject", text, {"s3:prefix": "a" * 5000})
    on_resource = NamedPolicy("p", compile_policy(policy(allow("s3:GetObject", pattern))))
    assert evaluate(ctx, [on_resource]).outcome == IMPLICIT
    like = policy(allow("s3:*", Condition=when(StringLike={"s3:prefix": "*a" * 25 + "*b"})))
    assert evaluate(ctx, [NamedPolicy("p", compile_policy(like))]).outcome == IMPLICIT


# ------------------------------------------------ cache and immutability


def test_policy_cache_compiles_once_per_document_and_kind() -> None:
    cache = PolicyCache(max_entries=2)
    text = json.dumps(SEED)
    first = cache.get(text)
    assert cache.get(text) is first
    assert cache.get(text.encode()) is first
    assert cache.get(json.dumps(ALICE_READS), RES).kind is RES
    assert len(cache) == 2
    cache.get(json.dumps(policy(allow("iot:*"))))
    assert len(cache) == 2
    assert cache.get(text) is not first  # the least recently used entry was evicted
    with pytest.raises(MalformedPolicyError):
        cache.get("{")
    assert len(cache) == 2


def test_compiled_policy_and_context_are_immutable() -> None:
    compiled = compile_policy(SEED)
    with pytest.raises(AttributeError):
        compiled.statements = ()  # type: ignore[misc]
    ctx = RequestContext(ALICE, "iot:CreateJob", JOB)
    with pytest.raises(AttributeError):
        ctx.action = "iot:DeleteJob"  # type: ignore[misc]


# ------------------------------------------------ managed policies


def _allowed(p: managed.ManagedPolicy, action: str, resource: str = "*", **keys: str) -> bool:
    ctx = RequestContext(ALICE, action, resource, {k.replace("__", ":"): v for k, v in keys.items()})
    return evaluate(ctx, [p.named()]).allowed


@pytest.mark.parametrize("action", managed.OTA_OPERATOR_ACTIONS)
def test_o1_ota_operator_policy_allows_each_seed_action(action: str) -> None:
    assert _allowed(managed.OVERAIR_OTA_OPERATOR, action)


OPERATOR_MUST_NOT = [
    "iot:CreateJob", "iot:DeleteThing", "iot:CreateThing", "iot:UpdateCertificate",
    "iot:DeleteStream", "iot:AttachPolicy", "s3:PutObject", "s3:DeleteObject",
    "s3:PutBucketPolicy", "s3:GetObject", "iam:CreateUser", "iam:CreateAccessKey", "iam:AttachUserPolicy",
    "iam:PutRolePolicy", "signer:PutSigningProfile", "signer:RevokeSignature", "acm:DeleteCertificate",
    "sts:AssumeRole",
]


@pytest.mark.parametrize("action", OPERATOR_MUST_NOT)
def test_o1_ota_operator_policy_denies_everything_else(action: str) -> None:
    assert not _allowed(managed.OVERAIR_OTA_OPERATOR, action)


def test_o1_ota_operator_policy_is_exactly_the_seed_list() -> None:
    statements = managed.OVERAIR_OTA_OPERATOR.document["Statement"]
    workflow = next(s for s in statements if s["Sid"] == "OTAWorkflow")
    assert workflow["Action"] == list(managed.OTA_OPERATOR_ACTIONS)
    assert len(managed.OTA_OPERATOR_ACTIONS) == 21 == len(set(managed.OTA_OPERATOR_ACTIONS))
    assert not any("*" in a or "?" in a for a in managed.OTA_OPERATOR_ACTIONS)
    assert {s["Sid"] for s in statements} == {"OTAWorkflow", "PassOTAServiceRole", "ListOTAUpdates",
                                              "DeleteOTAUpdates", "CancelOTAJobs", "HealthGatedRollouts"}


def test_o1_ota_operator_may_pass_only_ota_service_roles_only_to_iot() -> None:
    p = managed.OVERAIR_OTA_OPERATOR
    ota_roles = [f"arn:aws:iam::{ACCOUNT}:role/overair-ota", f"arn:aws:iam::{ACCOUNT}:role/ota-service-role"]
    for role in ota_roles:
        assert _allowed(p, "iam:PassRole", role, iam__PassedToService="iot.amazonaws.com")
        assert not _allowed(p, "iam:PassRole", role, iam__PassedToService="ec2.amazonaws.com")
        assert not _allowed(p, "iam:PassRole", role)
    for other in ("admin", "overair-ota-admin", "my-ota-role", "service-role/admin"):
        assert not _allowed(p, "iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/{other}",
                            iam__PassedToService="iot.amazonaws.com"), other
    assert not _allowed(p, "iam:PassRole", ALICE, iam__PassedToService="iot.amazonaws.com")


def test_o1_ota_operator_can_stop_what_it_started_and_nothing_else() -> None:
    p = managed.OVERAIR_OTA_OPERATOR
    ota_job = f"arn:aws:iot:us-east-1:{ACCOUNT}:job/AFR_OTA-rollout-1"
    assert _allowed(p, "iot:CancelJob", ota_job)
    assert _allowed(p, "iot:DeleteOTAUpdate", f"arn:aws:iot:us-east-1:{ACCOUNT}:otaupdate/rollout-1")
    assert _allowed(p, "iot:ListOTAUpdates")
    assert not _allowed(p, "iot:CancelJob", JOB)  # a job someone created directly
    assert not _allowed(p, "iot:DeleteJob", ota_job)
    assert not _allowed(p, "iot:DeleteOTAUpdate", ota_job)


def test_o1_ota_service_role_policy() -> None:
    p = managed.AWS_IOT_OTA_UPDATE
    assert p.arn == "arn:aws:iam::aws:policy/service-role/AWSIoTOTAUpdate"
    for action in ("iot:CreateJob", "signer:DescribeSigningJob", "iot:CreateStream", "iot:DescribeStream",
                   "signer:StartSigningJob"):
        assert _allowed(p, action), action
    for action in ("iot:CreateOTAUpdate", "iot:DeleteJob", "iam:PassRole", "s3:PutObject", "iot:DeleteThing"):
        assert not _allowed(p, action), action


READS = ["iot:DescribeJob", "iot:ListThings", "iot:GetOTAUpdate", "iot:GetJobDocument",
         "signer:DescribeSigningJob", "signer:ListSigningJobs", "signer:GetSigningProfile",
         "acm:ListCertificates", "acm:DescribeCertificate", "iam:ListRoles", "iam:GetUser", "s3:GetObject",
         "s3:ListBucket", "s3:ListAllMyBuckets", "sts:GetCallerIdentity"]
WRITES = ["iot:CreateThing", "iot:DeleteThing", "iot:UpdateCertificate", "iot:CreateJob", "iot:CancelJob",
          "iot:CreateOTAUpdate", "iot:DeleteOTAUpdate", "iot:CreateStream", "iot:AttachPolicy",
          "iot:AddThingToThingGroup", "iot:TagResource", "s3:PutObject", "s3:DeleteObject",
          "s3:CreateBucket", "s3:PutBucketPolicy", "s3:PutBucketVersioning", "signer:StartSigningJob",
          "signer:PutSigningProfile",
          "signer:CancelSigningProfile", "signer:RevokeSignature", "acm:ImportCertificate",
          "acm:DeleteCertificate", "iam:CreateUser", "iam:CreateAccessKey", "iam:PassRole",
          "iam:AttachUserPolicy", "iam:PutUserPolicy", "iam:DeletePolicy", "sts:AssumeRole",
          "sts:GetSessionToken"]


@pytest.mark.parametrize("action", READS)
def test_read_only_policy_allows_reads(action: str) -> None:
    assert _allowed(managed.OVERAIR_READ_ONLY, action)


@pytest.mark.parametrize("action", WRITES)
def test_o1_read_only_policy_denies_every_write(action: str) -> None:
    assert not _allowed(managed.OVERAIR_READ_ONLY, action)


def test_administrator_access_allows_anything() -> None:
    for action in [*READS, *WRITES]:
        assert _allowed(managed.ADMINISTRATOR_ACCESS, action, "arn:aws:iot:us-east-1:1:thing/x")


def test_builtin_policies_are_listed_by_arn() -> None:
    assert set(managed.BUILTIN) == {
        "arn:aws:iam::aws:policy/service-role/AWSIoTOTAUpdate",
        "arn:aws:iam::aws:policy/OverairOTAOperator",
        "arn:aws:iam::aws:policy/OverairReadOnly",
        "arn:aws:iam::aws:policy/AdministratorAccess",
    }
    for arn, p in managed.BUILTIN.items():
        assert p.arn == arn
        assert p.named().name == arn
        assert re.fullmatch(r"ANPA[A-Z2-7]{17}", p.policy_id)
        assert len(compile_policy(json.dumps(p.document)).statements) == len(p.compiled.statements) > 0
        p.document["Statement"] = []  # a caller's copy; the policy itself must not change
        assert p.document["Statement"]


def test_o1_an_account_id_is_twelve_ascii_digits() -> None:
    """`str.isdigit` takes any Unicode digit: an account id must be 12 ASCII digits."""
    unicode_digits = "\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669\u0660\u0661\u0662"
    with pytest.raises(MalformedPolicyError, match="AWS principal must be"):
        compile_policy(_doc({**OK, "Principal": {"AWS": unicode_digits}}), RES)
    principals = compile_policy(_doc({**OK, "Principal": {"AWS": ACCOUNT}}), RES).statements[0].principals
    assert principals is not None
    assert principals.accounts == {ACCOUNT}
