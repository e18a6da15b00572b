"""What each operation asks of IAM (server/iam/actions.py): action names, resources, and
the strict reading of every ARN member (threat O1)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import botocore.session
import pytest

from overair.core.arn import ArnScope
from overair.server.api.contract import ApiError, Caller
from overair.server.iam.actions import (
    ARN_MEMBERS,
    REFUSED_ARN_MEMBERS,
    SELF_SERVICE_OPERATIONS,
    THING_NAME_HEADER,
    Check,
    needs,
)
from overair.server.iam.arns import Arns
from overair.server.iam.errors import check_name, check_path

ACCOUNT = "123456789012"
REGION = "eu-west-1"
ARNS = Arns(ArnScope("aws", REGION, ACCOUNT))
ALICE = Caller("AKIAALICE", f"arn:aws:iam::{ACCOUNT}:user/alice", "alice", "127.0.0.1")
SESSION = Caller("ASIASESSION", f"arn:aws:sts::{ACCOUNT}:assumed-role/r/s", "r", "127.0.0.1",
                 principal_kind="role")


def _arn(service: str, resource: str) -> str:
    region = "" if service in ("iam", "sts") else REGION
    return f"arn:aws:{service}:{region}:{ACCOUNT}:{resource}"


def _checks(service: str, operation: str, caller: Caller = ALICE, **params: object) -> list[tuple[str, str]]:
    return [(c.action, c.resource) for c in needs(service, operation, dict(params), ARNS, caller).checks]


def _refused(service: str, operation: str, **params: object) -> str:
    with pytest.raises(ApiError) as raised:
        needs(service, operation, dict(params), ARNS, ALICE)
    return raised.value.code


def test_an_operation_without_a_resource_is_checked_against_star() -> None:
    assert _checks("iot", "ListThings") == [("iot:ListThings", "*")]


def test_create_job_needs_the_job_and_every_target() -> None:
    group = _arn("iot", "thinggroup/fleet")
    assert _checks("iot", "CreateJob", jobId="j1", targets=[group]) == [
        ("iot:CreateJob", _arn("iot", "job/j1")), ("iot:CreateJob", group)]


def test_an_operation_naming_a_thing_and_a_group_needs_both() -> None:
    assert _checks("iot", "AddThingToThingGroup", thingName="t", thingGroupName="g") == [
        ("iot:AddThingToThingGroup", _arn("iot", "thinggroup/g")),
        ("iot:AddThingToThingGroup", _arn("iot", "thing/t"))]
    by_arn = _checks("iot", "AddThingToThingGroup", thingArn=_arn("iot", "thing/t"),
                     thingGroupArn=_arn("iot", "thinggroup/g"))
    assert by_arn == [("iot:AddThingToThingGroup", _arn("iot", "thinggroup/g")),
                      ("iot:AddThingToThingGroup", _arn("iot", "thing/t"))]


def test_o2_passing_a_role_to_the_iot_service_needs_pass_role() -> None:
    role = _arn("iam", "role/ota")
    request = {"otaUpdateId": "u", "roleArn": role, "targets": []}
    checks = needs("iot", "CreateOTAUpdate", request, ARNS, ALICE).checks
    assert checks[-1] == Check("iam:PassRole", role, {"iam:PassedToService": "iot.amazonaws.com"})
    job = needs("iot", "CreateJob", {"jobId": "j", "presignedUrlConfig": {"roleArn": role}}, ARNS,
                ALICE).checks
    assert job[-1].action == "iam:PassRole"


def test_service_prefixes_and_resource_forms() -> None:
    assert _checks("signer", "StartSigningJob", profileName="p") == [
        ("signer:StartSigningJob", _arn("signer", "/signing-profiles/p"))]
    policy = "arn:aws:iam::aws:policy/X"
    assert _checks("iam", "AttachUserPolicy", UserName="u", PolicyArn=policy) == [
        ("iam:AttachUserPolicy", _arn("iam", "user/u")), ("iam:AttachUserPolicy", policy)]
    assert _checks("iot-jobs-data", "DescribeJobExecution", jobId="j", thingName="t")[0][0] == \
        "iotjobsdata:DescribeJobExecution"
    acm = _arn("acm", "certificate/0b0b0b0b-1111-4222-8333-444455556666")
    assert _checks("acm", "DeleteCertificate", CertificateArn=acm) == [("acm:DeleteCertificate", acm)]


def test_get_caller_identity_needs_nothing_as_in_aws() -> None:
    assert needs("sts", "GetCallerIdentity", {}, ARNS, ALICE).checks == ()
    role = _arn("iam", "role/r")
    assert _checks("sts", "AssumeRole", RoleArn=role) == [("sts:AssumeRole", role)]


# --- finding 2: every ARN member parsed strictly, the canonical ARN checked --------------

FOREIGN_OR_MALFORMED_THINGS = [
    "arn:aws:iot:eu-west-1:999999999999:thing/victim",  # another account
    "arn:aws:iot:us-east-1:123456789012:thing/victim",  # another region
    "arn:aws-cn:iot:eu-west-1:123456789012:thing/victim",  # another partition
    "not-an-arn:thing/victim",
    "arn:aws:iot:eu-west-1:123456789012:thinggroup/x:thing/victim",  # a group name with a path
    "arn:aws:iot:eu-west-1:123456789012:thing/victim\n",
    "arn:aws:iot:eu-west-1:123456789012:thing/victim/extra",
    "arn:aws:iot:eu-west-1:123456789012:job/victim",  # wrong resource type
    "ARN:aws:iot:eu-west-1:123456789012:thing/victim",
    "arn:aws:iot:eu-west-1:123456789012:thing/vict\u0131m",
    "victim",
]


@pytest.mark.parametrize("target", FOREIGN_OR_MALFORMED_THINGS)
def test_o1_target_arns_that_are_not_this_deployments_canonical_arns_are_refused(target: str) -> None:
    assert _refused("iot", "CreateJob", jobId="j", targets=[target]) == "InvalidRequestException"
    assert _refused("iot", "AddThingToThingGroup", thingGroupName="g", thingArn=target) == \
        "InvalidRequestException"


def test_o1_a_name_and_an_arn_naming_different_resources_are_refused() -> None:
    assert _refused("iot", "AddThingToThingGroup", thingName="decoy", thingGroupName="g",
                    thingArn=_arn("iot", "thing/victim")) == "InvalidRequestException"


def test_o1_arn_members_of_other_services_get_their_own_error_code() -> None:
    assert _refused("sts", "AssumeRole", RoleArn="arn:aws:iam::999999999999:role/r") == "ValidationError"
    assert _refused("iam", "GetPolicy", PolicyArn="arn:aws:iam::123456789012:user/x") == "InvalidInput"
    assert _refused("acm", "DescribeCertificate", CertificateArn="arn:aws:acm:eu-west-1:1:certificate/x") == \
        "InvalidArnException"
    assert _refused("overair", "RevokeCodeSigningCertificate", CertificateArn="x") == "ValidationException"
    assert _refused("iot", "AttachThingPrincipal", thingName="t",
                    principal=_arn("iot", "cert/" + "a" * 63)) == "InvalidRequestException"
    assert _refused("iot", "CreateOTAUpdate", otaUpdateId="u", targets=[_arn("iot", "thing/t")],
                    roleArn="arn:aws:iam::123456789012:role/r\n") == "InvalidRequestException"


def _arn_like_members(shape: Any, path: str = "", depth: int = 0) -> Iterator[str]:
    if depth > 8:
        return
    if shape.type_name == "structure":
        for name, member in shape.members.items():
            here = f"{path}.{name}" if path else name
            if re.search(r"arn$|^principal$|^targets$", name, re.IGNORECASE):
                yield here + ("[]" if member.type_name == "list" else "")
            yield from _arn_like_members(member, here, depth + 1)
    elif shape.type_name == "list":
        yield from _arn_like_members(shape.member, path + "[]", depth + 1)


def test_o1_every_arn_member_of_every_routed_operation_is_parsed(
        routed_operations: list[tuple[str, str]]) -> None:
    """A new routed operation with an ARN member fails here until ARN_MEMBERS says what
    that ARN must be: nothing reaches a handler unparsed."""
    session = botocore.session.get_session()
    listed = {(service, member.path) for service, members in ARN_MEMBERS.items() for member in members}
    missing = []
    for service, operation in routed_operations:
        if service == "overair":
            continue  # not a botocore model; its one ARN member is listed by hand
        model = session.get_service_model(service).operation_model(operation)
        for member in _arn_like_members(model.input_shape) if model.input_shape is not None else ():
            if (service, member) not in listed | REFUSED_ARN_MEMBERS:
                missing.append((service, operation, member))
    assert missing == []


@pytest.fixture(scope="module")
def routed_operations(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str]]:
    from overair.server.app import Server
    from overair.server.bootstrap import initialize
    from overair.server.settings import load_settings

    data = tmp_path_factory.mktemp("routed") / "data"
    initialize(data)
    server = Server(load_settings(data))
    try:
        return server.table.operations()
    finally:
        server.db.close()


# --- finding 3: self-service IAM calls act on, and are checked against, the caller --------


def test_self_service_operations_are_exactly_those_whose_user_name_is_optional() -> None:
    model = botocore.session.get_session().get_service_model("iam")
    optional = {op for op in model.operation_names
                if (shape := model.operation_model(op).input_shape) is not None
                and "UserName" in shape.members and "UserName" not in shape.required_members}
    assert optional == SELF_SERVICE_OPERATIONS


@pytest.mark.parametrize("operation", ["CreateAccessKey", "ListAccessKeys", "GetUser", "UpdateAccessKey",
                                       "DeleteAccessKey"])
def test_o1_self_service_calls_are_checked_against_the_callers_own_user(operation: str) -> None:
    assert _checks("iam", operation) == [(f"iam:{operation}", _arn("iam", "user/alice"))]
    assert _checks("iam", operation, UserName="bob") == [(f"iam:{operation}", _arn("iam", "user/bob"))]
    with pytest.raises(ApiError) as raised:
        needs("iam", operation, {}, ARNS, SESSION)
    assert raised.value.code == "ValidationError"


# --- finding 6: iam:PolicyARN ----------------------------------------------------------------


@pytest.mark.parametrize("operation", ["AttachUserPolicy", "DetachUserPolicy", "AttachGroupPolicy",
                                       "DetachGroupPolicy", "AttachRolePolicy", "DetachRolePolicy"])
def test_o1_attach_and_detach_carry_the_policy_arn_condition_key(operation: str) -> None:
    policy = "arn:aws:iam::aws:policy/AdministratorAccess"
    params = {"UserName": "u", "GroupName": "g", "RoleName": "r", "PolicyArn": policy}
    checks = needs("iam", operation, params, ARNS, ALICE).checks
    assert checks
    assert all(c.context == {"iam:PolicyARN": policy} for c in checks)
    assert needs("iam", "GetPolicy", {"PolicyArn": policy}, ARNS, ALICE).checks[0].context == {}


# --- finding 7: naming a thing for a new certificate is attaching to it -----------------------


def test_n4_minting_a_certificate_for_a_thing_needs_attach_thing_principal_on_it() -> None:
    plain = needs("iot", "CreateKeysAndCertificate", {"setAsActive": True}, ARNS, ALICE, {}).checks
    assert [(c.action, c.resource) for c in plain] == [("iot:CreateKeysAndCertificate", "*")]
    bound = needs("iot", "CreateKeysAndCertificate", {}, ARNS, ALICE, {THING_NAME_HEADER: "sensor-1"}).checks
    assert [(c.action, c.resource) for c in bound] == [
        ("iot:CreateKeysAndCertificate", "*"), ("iot:AttachThingPrincipal", _arn("iot", "thing/sensor-1"))]
    with pytest.raises(ApiError) as raised:
        needs("iot", "CreateKeysAndCertificate", {}, ARNS, ALICE, {THING_NAME_HEADER: "a/../b"})
    assert raised.value.code == "InvalidRequestException"


@pytest.mark.parametrize("name", ["alice\n", "al\u0131ce", "\u00e9", "a b", ""])
def test_o1_iam_names_and_paths_are_matched_in_full_and_in_ascii(name: str) -> None:
    with pytest.raises(ApiError) as raised:
        check_name("userName", name, 64)
    assert raised.value.code == "ValidationError"
    with pytest.raises(ApiError):
        check_path(f"/{name}/" if name else "/a\n/")
    check_name("userName", "alice.o+b=c,d@e_f-g", 64)
    check_path("/division/team/")
