"""What each operation asks of IAM (server/iam/actions.py): action names and resources."""

from __future__ import annotations

from overair.server.iam.actions import Check, needs


def _arn(service: str, resource: str) -> str:
    region = "" if service in ("iam", "sts") else "eu-west-1"
    return f"arn:aws:{service}:{region}:123456789012:{resource}"


def _checks(service: str, operation: str, **params: object) -> list[tuple[str, str]]:
    return [(c.action, c.resource) for c in needs(service, operation, dict(params), _arn).checks]


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


def test_o2_passing_a_role_to_the_iot_service_needs_pass_role() -> None:
    role = _arn("iam", "role/ota")
    request = {"otaUpdateId": "u", "roleArn": role, "targets": []}
    checks = needs("iot", "CreateOTAUpdate", request, _arn).checks
    assert checks[-1] == Check("iam:PassRole", role, {"iam:PassedToService": "iot.amazonaws.com"})
    job = needs("iot", "CreateJob", {"jobId": "j", "presignedUrlConfig": {"roleArn": role}}, _arn).checks
    assert job[-1].action == "iam:PassRole"


def test_service_prefixes_and_resource_forms() -> None:
    assert _checks("signer", "StartSigningJob", profileName="p") == [
        ("signer:StartSigningJob", _arn("signer", "/signing-profiles/p"))]
    policy = "arn:aws:iam::aws:policy/X"
    assert _checks("iam", "AttachUserPolicy", UserName="u", PolicyArn=policy) == [
        ("iam:AttachUserPolicy", _arn("iam", "user/u")), ("iam:AttachUserPolicy", policy)]
    assert _checks("iot-jobs-data", "DescribeJobExecution", jobId="j", thingName="t")[0][0] == \
        "iotjobsdata:DescribeJobExecution"
    acm = "arn:aws:acm:eu-west-1:123456789012:certificate/c"
    assert _checks("acm", "DeleteCertificate", CertificateArn=acm) == [("acm:DeleteCertificate", acm)]


def test_get_caller_identity_needs_nothing_as_in_aws() -> None:
    assert needs("sts", "GetCallerIdentity", {}, _arn).checks == ()
    assert _checks("sts", "AssumeRole", RoleArn="arn:aws:iam::123456789012:role/r") == [
        ("sts:AssumeRole", "arn:aws:iam::123456789012:role/r")]
