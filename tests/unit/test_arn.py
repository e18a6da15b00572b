"""The one ARN parser (core/arn.py): strict, canonical, and scoped to the deployment.

Threat O1: a target ARN was resolved by its last segment while IAM checked the literal
text, so `arn:aws:iot:eu-west-1:OTHER:thing/victim`, `not-an-arn:thing/victim` and
`...:thinggroup/x:thing/victim` all reached `victim` past a Deny on it."""

from __future__ import annotations

import pytest

from overair.core.arn import Arn, ArnError, ArnScope, parse_arn

ACCOUNT = "123456789012"
SCOPE = ArnScope("aws", "eu-west-1", ACCOUNT)
CERT = "ab" * 32

ACCEPTED = [
    ("arn:aws:iot:eu-west-1:123456789012:thing/victim", ("iot", "thing", "victim")),
    ("arn:aws:iot:eu-west-1:123456789012:thing/a:b_c-9", ("iot", "thing", "a:b_c-9")),
    ("arn:aws:iot:eu-west-1:123456789012:thinggroup/fleet", ("iot", "thinggroup", "fleet")),
    ("arn:aws:iot:eu-west-1:123456789012:job/AFR_OTA-1", ("iot", "job", "AFR_OTA-1")),
    (f"arn:aws:iot:eu-west-1:123456789012:cert/{CERT}", ("iot", "cert", CERT)),
    ("arn:aws:iam::123456789012:role/ota", ("iam", "role", "ota")),
    ("arn:aws:iam::123456789012:role/service-role/ota", ("iam", "role", "service-role/ota")),
    ("arn:aws:iam::123456789012:user/a/b/carol", ("iam", "user", "a/b/carol")),
    ("arn:aws:iam::aws:policy/service-role/AWSIoTOTAUpdate",
     ("iam", "policy", "service-role/AWSIoTOTAUpdate")),
    ("arn:aws:iam::123456789012:root", ("iam", "root", "")),
    ("arn:aws:sts::123456789012:assumed-role/r/session-1", ("sts", "assumed-role", "r/session-1")),
    ("arn:aws:signer:eu-west-1:123456789012:/signing-profiles/dev_1",
     ("signer", "signing-profiles", "dev_1")),
    ("arn:aws:acm:eu-west-1:123456789012:certificate/0b0b0b0b-1111-4222-8333-444455556666",
     ("acm", "certificate", "0b0b0b0b-1111-4222-8333-444455556666")),
]


@pytest.mark.parametrize(("text", "fields"), ACCEPTED, ids=[a for a, _ in ACCEPTED])
def test_o1_an_accepted_arn_is_canonical(text: str, fields: tuple[str, str, str]) -> None:
    arn = parse_arn(text)
    assert (arn.service, arn.resource_type, arn.resource_name) == fields
    assert str(arn) == text


REFUSED = [
    "not-an-arn:thing/victim",
    "arn:aws:iot:eu-west-1:123456789012:thinggroup/x:thing/victim",
    "arn:aws:iot:eu-west-1:123456789012:thing/victim\n",
    "arn:aws:iot:eu-west-1:123456789012:thing/victim/x",
    "arn:aws:iot:eu-west-1:123456789012:thing/",
    "arn:aws:iot:eu-west-1:123456789012:thing",
    "arn:aws:iot:eu-west-1:123456789012:/thing/victim",
    "arn:aws:iot:eu-west-1:123456789012:Thing/victim",
    "arn:aws:iot::123456789012:thing/victim",  # iot is regional
    "arn:aws:iam:eu-west-1:123456789012:role/r",  # iam is not
    "arn:aws:iot:eu-west-1::thing/victim",
    "arn:aws:iot:eu-west-1:12345678901:thing/victim",
    "arn:aws:iot:eu-west-1:aws:thing/victim",  # only managed policies live in "aws"
    "arn:aws:iot:eu-west-1:123456789012:widget/victim",
    "arn:aws:ec2:eu-west-1:123456789012:thing/victim",
    "arn:aws:signer:eu-west-1:123456789012:signing-profiles/p1",
    "arn:aws:iam::123456789012:role/r\u00e9le",
    "arn:aws:iam::123456789012:role/a\u00a0b",
    "arn:aws:iot:eu-west-1:123456789012:thing/vict\u0131m",
    " arn:aws:iot:eu-west-1:123456789012:thing/victim",
    "arn:aws:iot:eu-west-1:123456789012:thing/victim ",
    "arn:aws:iot:eu-west-1:123456789012:cert/" + "AB" * 32,
    "",
    "arn:aws:iot:eu-west-1:123456789012:thing/" + "a" * 3000,
]


@pytest.mark.parametrize("text", REFUSED)
def test_o1_anything_else_is_refused_with_one_error(text: str) -> None:
    with pytest.raises(ArnError) as raised:
        parse_arn(text)
    assert raised.value.code == "InvalidArn"


@pytest.mark.parametrize("text", [
    "arn:aws:iot:eu-west-1:999999999999:thing/victim",
    "arn:aws:iot:us-east-1:123456789012:thing/victim",
    "arn:aws-cn:iot:eu-west-1:123456789012:thing/victim",
    "arn:aws:iot:eu-west-1:123456789012:thinggroup/victim",
    "arn:aws:iot:eu-west-1:123456789012:job/victim",
])
def test_o1_the_scope_refuses_other_deployments_and_other_types(text: str) -> None:
    parse_arn(text)  # well formed ...
    with pytest.raises(ArnError):
        SCOPE.require(text, "iot", ("thing",))  # ... but not a thing of this deployment


def test_the_scope_builds_and_accepts_its_own_arns() -> None:
    thing = SCOPE.build("iot", "thing", "sensor-1")
    assert str(thing) == "arn:aws:iot:eu-west-1:123456789012:thing/sensor-1"
    assert SCOPE.require(str(thing), "iot", ("thing", "thinggroup")) == thing
    profile = SCOPE.build("signer", "signing-profiles", "dev")
    assert str(profile) == "arn:aws:signer:eu-west-1:123456789012:/signing-profiles/dev"
    managed = "arn:aws:iam::aws:policy/AdministratorAccess"
    with pytest.raises(ArnError):
        SCOPE.require(managed, "iam", ("policy",))
    assert SCOPE.require(managed, "iam", ("policy",), allow_aws_account=True).account == "aws"
    with pytest.raises(ArnError):
        SCOPE.build("iot", "thing", "a/b")


def test_an_iam_entity_is_named_by_its_leaf() -> None:
    arn = parse_arn("arn:aws:iam::123456789012:role/service-role/ota")
    assert arn.leaf == "ota"
    assert Arn("aws", "iot", "eu-west-1", ACCOUNT, "thing", "t").leaf == "t"


def test_error_messages_show_hostile_text_safely() -> None:
    with pytest.raises(ArnError) as raised:
        parse_arn("arn:\x1b[31m" + "x" * 5000)
    assert "\x1b" not in raised.value.message
    assert len(raised.value.message) < 400
