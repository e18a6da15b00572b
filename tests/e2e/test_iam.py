"""Operator security against the real server: every operation authorized, least privilege
for the seed's OTA operator, the OTA service role, users/groups/policies/roles through
unmodified boto3, and STS sessions.

Threat ids: O1 (an operator reaches what they were not granted), O2 (privilege misuse
through the service role or policy changes).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.config
import pytest
from botocore import xform_name
from botocore.exceptions import ClientError
from sqlalchemy import select

from overair.cli.client import ApiClients
from overair.core.versions import Version
from overair.server.api.s3 import S3Api
from overair.server.bootstrap import DEFAULT_OTA_ROLE, DEV_PROFILE
from overair.server.iam import managed
from overair.server.iam.actions import ARN_MEMBERS, UNAUTHORIZED_OPERATIONS, ArnMember
from overair.server.iam.arns import Arns
from overair.server.storage.schema import AuditEntry
from overair.sim.firmware import make_firmware
from tests.e2e.ota_helpers import BUCKET, FINISHED, wait_for
from tests.model_params import minimal_input
from tests.server_harness import RunningServer

DENIED = {"AccessDenied", "AccessDeniedException"}


def _policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


class Users:
    """Creates IAM users with keys through the admin, and clients acting as them."""

    def __init__(self, srv: RunningServer) -> None:
        self.srv = srv
        self.iam = srv.client("iam")

    def create(self, name: str, *, managed_arns: tuple[str, ...] = (),
               inline: dict[str, str] | None = None) -> ApiClients:
        self.iam.create_user(UserName=name)
        for arn in managed_arns:
            self.iam.attach_user_policy(UserName=name, PolicyArn=arn)
        for policy_name, document in (inline or {}).items():
            self.iam.put_user_policy(UserName=name, PolicyName=policy_name, PolicyDocument=document)
        key = self.iam.create_access_key(UserName=name)["AccessKey"]
        return ApiClients(self.srv.endpoint, key["AccessKeyId"], key["SecretAccessKey"],
                          self.srv.clients.region)


@pytest.fixture(scope="module")
def users(srv: RunningServer) -> Users:
    return Users(srv)


def _code(call: Any) -> str:
    try:
        call()
    except ClientError as exc:
        return str(exc.response["Error"]["Code"])
    return "OK"


def _role_arn(srv: RunningServer, name: str) -> str:
    return f"arn:aws:iam::{srv.settings.account_id}:role/{name}"


def _upload_image(srv: RunningServer, key: str) -> str:
    data = make_firmware(Version(9, 0, 0), 8 * 1024, seed=key)
    return str(srv.client("s3").put_object(Bucket=BUCKET, Key=key, Body=data)["VersionId"])


def _ota_request(srv: RunningServer, ota_id: str, thing_arn: str, key: str, version: str,
                 role: str = DEFAULT_OTA_ROLE) -> dict[str, Any]:
    return {
        "otaUpdateId": ota_id, "targets": [thing_arn], "protocols": ["MQTT"], "roleArn": _role_arn(srv, role),
        "files": [{"fileName": "/fw.bin",
                   "fileLocation": {"s3Location": {"bucket": BUCKET, "key": key, "version": version}},
                   "codeSigning": {"startSigningJobParameter": {"signingProfileName": DEV_PROFILE}}}],
    }


def _finished(iot: Any, ota_id: str) -> dict[str, Any]:
    return dict(wait_for(lambda: (info := iot.get_ota_update(otaUpdateId=ota_id)["otaUpdateInfo"])[
        "otaUpdateStatus"] in FINISHED and info, what=f"OTA update {ota_id}"))


@pytest.fixture(scope="module")
def target(srv: RunningServer) -> str:
    return str(srv.client("iot").create_thing(thingName="iam-target")["thingArn"])


# --- every routed operation is authorized -------------------------------------------------


def _every_operation(srv: RunningServer) -> Iterator[tuple[str, str]]:
    yield from srv.server.table.operations()
    s3 = S3Api(srv.server.objects, region=srv.settings.region)
    yield from (("s3", op) for op in s3.operations())


def _with_canonical_arns(srv: RunningServer, service: str, params: dict[str, Any]) -> dict[str, Any]:
    """The request with each ARN member (server/iam/actions.py ARN_MEMBERS) holding a
    well-formed ARN of this deployment, so that the call reaches authorization."""
    arns = Arns.of(srv.settings)
    samples = {"thing": "thing/probe", "thinggroup": "thinggroup/probe", "cert": "cert/" + "0" * 64,
               "role": "role/probe", "policy": "policy/probe",
               "certificate": "certificate/00000000-0000-4000-8000-000000000000"}

    def replace(value: Any, steps: list[str], member: ArnMember) -> Any:
        if not steps:
            return arns.arn(member.service, samples[member.types[0]])
        step, rest = steps[0], steps[1:]
        name = step.removesuffix("[]")
        if not isinstance(value, dict) or name not in value:
            return value
        child = value[name]
        if step.endswith("[]") and isinstance(child, list):
            return {**value, name: [replace(item, rest, member) for item in child]}
        return {**value, name: replace(child, rest, member)}

    for member in ARN_MEMBERS.get(service, ()):
        params = replace(params, member.path.split("."), member)
    return dict(params)


def test_o1_principal_without_policies_is_denied_every_routed_operation(
        srv: RunningServer, users: Users) -> None:
    """Authorization is one code path before every handler; this proves no operation
    escapes it, including operations added later (the list comes from the routing table)."""
    nobody = users.create("nobody")
    allowed, wrong = [], []
    operations = sorted(set(_every_operation(srv)))
    assert len(operations) > 100
    for service, operation in operations:
        client = nobody.client(service)
        model = client.meta.service_model.operation_model(operation)
        overrides = {"Bucket": BUCKET, "Key": "probe.bin"} if service == "s3" else {}
        members = model.input_shape.members if model.input_shape is not None else {}
        params = _with_canonical_arns(srv, service, minimal_input(model, {
            k: v for k, v in overrides.items() if k in members}))
        method = getattr(client, xform_name(operation))
        code = _code(lambda method=method, params=params: method(**params))
        if code == "OK":
            allowed.append((service, operation))
        elif code not in DENIED and not (operation.startswith("Head") and code == "403"):  # no body
            wrong.append((service, operation, code))
    assert wrong == [], wrong
    assert set(allowed) == set(UNAUTHORIZED_OPERATIONS)  # only sts:GetCallerIdentity, as in AWS


def test_o1_every_decision_is_in_the_audit_log_with_its_statement(srv: RunningServer, users: Users) -> None:
    clients = users.create("audited", inline={"ListOnly": _policy(
        {"Sid": "ListThings", "Effect": "Allow", "Action": "iot:ListThings", "Resource": "*"},
        {"Sid": "NoGroups", "Effect": "Deny", "Action": "iot:ListThingGroups", "Resource": "*"})})
    iot = clients.client("iot")
    iot.list_things()
    assert _code(iot.list_thing_groups) in DENIED
    assert _code(iot.list_jobs) in DENIED
    arn = f"arn:aws:iam::{srv.settings.account_id}:user/audited"
    with srv.server.db.reading() as s:
        rows = s.scalars(select(AuditEntry).where(AuditEntry.principal == arn)).all()
        seen = {(r.action, r.decision, r.statement) for r in rows}
    assert ("iot:ListThings", "Allow", "user/audited/ListOnly#ListThings") in seen
    assert ("iot:ListThingGroups", "ExplicitDeny", "user/audited/ListOnly#NoGroups") in seen
    assert ("iot:ListJobs", "ImplicitDeny", "") in seen


# --- the seed's OTA operator ---------------------------------------------------------------


def test_o2_seed_ota_operator_runs_the_whole_ota_workflow_and_nothing_else(
        srv: RunningServer, users: Users, target: str) -> None:
    operator = users.create("ota-operator", managed_arns=(managed.OVERAIR_OTA_OPERATOR.arn,))
    key = "operator/fw.bin"
    version = _upload_image(srv, key)  # the admin uploads the firmware
    s3, iot = operator.client("s3"), operator.client("iot")
    signer, acm, iam = operator.client("signer"), operator.client("acm"), operator.client("iam")

    # The workflow, as the seed's operator does it.
    assert BUCKET in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    s3.get_bucket_location(Bucket=BUCKET)
    s3.list_objects_v2(Bucket=BUCKET)
    assert s3.get_object(Bucket=BUCKET, Key=key, VersionId=version)["VersionId"] == version
    acm.list_certificates()
    iot.list_things()
    iot.list_thing_groups()
    assert _role_arn(srv, DEFAULT_OTA_ROLE) in [r["Arn"] for r in iam.list_roles()["Roles"]]
    iot.create_ota_update(**_ota_request(srv, "operator-ota", target, key, version))
    info = _finished(iot, "operator-ota")
    assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info.get("errorInfo")
    job_id = info["awsIotJobId"]
    assert job_id in [j["jobId"] for j in iot.list_jobs()["jobs"]]
    iot.describe_job(jobId=job_id)
    assert "afr_ota" in json.loads(iot.get_job_document(jobId=job_id)["document"])
    iot.list_job_executions_for_job(jobId=job_id)
    jobs = signer.list_signing_jobs()["jobs"]
    signer.describe_signing_job(jobId=jobs[0]["jobId"])

    # An operator who starts a rollout can stop it: list the updates, cancel the OTA job,
    # delete the update; but cancel no other job.
    assert "operator-ota" in [u["otaUpdateId"] for u in iot.list_ota_updates()["otaUpdates"]]
    srv.client("iot").create_job(jobId="admin-job", targets=[target], document="{}")
    assert _code(lambda: iot.cancel_job(jobId="admin-job")) == "AccessDeniedException"
    iot.cancel_job(jobId=job_id)
    assert iot.describe_job(jobId=job_id)["job"]["status"] == "CANCELED"
    iot.delete_ota_update(otaUpdateId="operator-ota")
    assert "operator-ota" not in [u["otaUpdateId"] for u in iot.list_ota_updates()["otaUpdates"]]

    # Nothing else: no direct jobs, no job deletions, no uploads, no IAM changes (which
    # would let the operator grant themselves more), no new signing profiles.
    refused = {
        "iot:CreateJob": lambda: iot.create_job(jobId="by-operator", targets=[target], document="{}"),
        "iot:DeleteJob": lambda: iot.delete_job(jobId="admin-job", force=True),
        "iot:CreateThing": lambda: iot.create_thing(thingName="by-operator"),
        "iot:ListCertificates": iot.list_certificates,
        "s3:PutObject": lambda: s3.put_object(Bucket=BUCKET, Key="by-operator", Body=b"x"),
        "s3:DeleteObject": lambda: s3.delete_object(Bucket=BUCKET, Key=key),
        "iam:CreateUser": lambda: iam.create_user(UserName="by-operator"),
        "iam:AttachUserPolicy": lambda: iam.attach_user_policy(
            UserName="ota-operator", PolicyArn=managed.ADMINISTRATOR_ACCESS.arn),
        "acm:DeleteCertificate": lambda: acm.delete_certificate(
            CertificateArn=f"arn:aws:acm:{srv.settings.region}:{srv.settings.account_id}:"
                           "certificate/00000000-0000-4000-8000-000000000000"),
        "signer:PutSigningProfile": lambda: signer.put_signing_profile(
            profileName="byoperator", platformId="AmazonFreeRTOS-Default"),
    }
    expected = {what: "AccessDenied" if what.startswith(("s3:", "iam:")) else "AccessDeniedException"
                for what in refused}
    assert {what: _code(call) for what, call in refused.items()} == expected


def test_o2_create_ota_update_needs_pass_role_for_the_iot_service(
        srv: RunningServer, users: Users, target: str) -> None:
    everything_but_pass_role = _policy({"Effect": "Allow", "Action": ["iot:*", "s3:*", "signer:*"],
                                        "Resource": "*"})
    version = _upload_image(srv, "passrole/fw.bin")
    no_pass = users.create("no-pass-role", inline={"Work": everything_but_pass_role}).client("iot")
    code = _code(lambda: no_pass.create_ota_update(**_ota_request(srv, "no-pass", target, "passrole/fw.bin",
                                                                  version)))
    assert code == "AccessDeniedException"
    wrong_service = users.create("pass-to-ec2", inline={"Work": everything_but_pass_role, "Pass": _policy(
        {"Effect": "Allow", "Action": "iam:PassRole", "Resource": "*",
         "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}})}).client("iot")
    code = _code(lambda: wrong_service.create_ota_update(
        **_ota_request(srv, "pass-ec2", target, "passrole/fw.bin", version)))
    assert code == "AccessDeniedException"
    with pytest.raises(ClientError):
        srv.client("iot").get_ota_update(otaUpdateId="pass-ec2")  # nothing was created


# --- the OTA service role --------------------------------------------------------------------


def _make_role(srv: RunningServer, name: str, trusted_service: str, *managed_arns: str) -> None:
    iam = srv.client("iam")
    iam.create_role(RoleName=name, AssumeRolePolicyDocument=_policy(
        {"Effect": "Allow", "Principal": {"Service": trusted_service}, "Action": "sts:AssumeRole"}))
    for arn in managed_arns:
        iam.attach_role_policy(RoleName=name, PolicyArn=arn)


def test_o2_service_role_without_read_access_fails_the_update_with_a_clear_reason(
        srv: RunningServer, target: str) -> None:
    _make_role(srv, "ota-no-read", "iot.amazonaws.com", managed.AWS_IOT_OTA_UPDATE.arn)
    iot, s3 = srv.client("iot"), srv.client("s3")
    s3.create_bucket(Bucket="locked-firmware")
    data = make_firmware(Version(9, 0, 0), 8 * 1024, seed="locked")
    s3.put_bucket_versioning(Bucket="locked-firmware", VersioningConfiguration={"Status": "Enabled"})
    version = s3.put_object(Bucket="locked-firmware", Key="fw.bin", Body=data)["VersionId"]
    request = _ota_request(srv, "role-no-read", target, "fw.bin", version, role="ota-no-read")
    request["files"][0]["fileLocation"]["s3Location"]["bucket"] = "locked-firmware"
    iot.create_ota_update(**request)
    info = _finished(iot, "role-no-read")
    assert info["otaUpdateStatus"] == "CREATE_FAILED"
    assert info["errorInfo"]["code"] == "AccessDeniedException"
    assert "s3:GetObjectVersion" in info["errorInfo"]["message"]
    assert "ota-no-read" in info["errorInfo"]["message"]

    # The seed's way: the bucket policy grants the IoT service principal read access, and
    # (as AWS's OTA service role needs) writing the signing job's result.
    s3.put_bucket_policy(Bucket="locked-firmware", Policy=_policy(
        {"Effect": "Allow", "Principal": {"Service": "iot.amazonaws.com"},
         "Action": ["s3:GetObject", "s3:GetObjectVersion"], "Resource": "arn:aws:s3:::locked-firmware/*"}))
    request["otaUpdateId"] = "role-no-write"
    iot.create_ota_update(**request)
    info = _finished(iot, "role-no-write")
    assert info["otaUpdateStatus"] == "CREATE_FAILED"
    assert "s3:PutObject" in info["errorInfo"]["message"]  # the signed result, as the role (O1)
    s3.put_bucket_policy(Bucket="locked-firmware", Policy=_policy(
        {"Effect": "Allow", "Principal": {"Service": "iot.amazonaws.com"},
         "Action": ["s3:GetObject", "s3:GetObjectVersion"], "Resource": "arn:aws:s3:::locked-firmware/*"},
        {"Effect": "Allow", "Principal": {"Service": "iot.amazonaws.com"},
         "Action": "s3:PutObject", "Resource": "arn:aws:s3:::locked-firmware/signed/*"}))
    request["otaUpdateId"] = "role-bucket-grant"
    iot.create_ota_update(**request)
    info = _finished(iot, "role-bucket-grant")
    assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info.get("errorInfo")


def test_o2_role_that_does_not_trust_the_ota_service_cannot_be_used(srv: RunningServer, target: str) -> None:
    _make_role(srv, "ec2-only", "ec2.amazonaws.com", managed.ADMINISTRATOR_ACCESS.arn)
    iot = srv.client("iot")
    version = _upload_image(srv, "trust/fw.bin")
    iot.create_ota_update(**_ota_request(srv, "untrusting-role", target, "trust/fw.bin", version,
                                         role="ec2-only"))
    info = _finished(iot, "untrusting-role")
    assert info["otaUpdateStatus"] == "CREATE_FAILED"
    assert "trust policy" in info["errorInfo"]["message"]
    with pytest.raises(ClientError):
        iot.describe_job(jobId="AFR_OTA-untrusting-role")  # no job was created


# --- users, groups, managed policies -----------------------------------------------------------


def test_o2_group_policies_apply_and_explicit_deny_wins(srv: RunningServer, users: Users) -> None:
    iam = srv.client("iam")
    member = users.create("grouped")
    iot = member.client("iot")
    assert _code(iot.list_things) == "AccessDeniedException"
    iam.create_group(GroupName="viewers")
    iam.attach_group_policy(GroupName="viewers", PolicyArn=managed.OVERAIR_READ_ONLY.arn)
    iam.add_user_to_group(GroupName="viewers", UserName="grouped")
    assert _code(iot.list_things) == "OK"  # effective at once, no cache to wait for
    iam.put_user_policy(UserName="grouped", PolicyName="NoThings", PolicyDocument=_policy(
        {"Effect": "Deny", "Action": "iot:ListThings", "Resource": "*"}))
    assert _code(iot.list_things) == "AccessDeniedException"
    assert _code(iot.list_thing_groups) == "OK"
    assert _code(lambda: iam.delete_group(GroupName="viewers")) == "DeleteConflict"
    iam.remove_user_from_group(GroupName="viewers", UserName="grouped")
    assert _code(iot.list_thing_groups) == "AccessDeniedException"


def test_o2_policy_versions_decide_which_document_applies(srv: RunningServer, users: Users) -> None:
    iam = srv.client("iam")
    arn = iam.create_policy(PolicyName="ThingsReader", PolicyDocument=_policy(
        {"Effect": "Allow", "Action": "iot:ListThings", "Resource": "*"}))["Policy"]["Arn"]
    iot = users.create("versioned", managed_arns=(arn,)).client("iot")
    assert _code(iot.list_things) == "OK"
    v2 = iam.create_policy_version(PolicyArn=arn, SetAsDefault=True, PolicyDocument=_policy(
        {"Effect": "Allow", "Action": "iot:ListJobs", "Resource": "*"}))["PolicyVersion"]
    assert v2["VersionId"] == "v2"
    assert v2["IsDefaultVersion"]
    assert _code(iot.list_things) == "AccessDeniedException"
    assert _code(iot.list_jobs) == "OK"
    iam.set_default_policy_version(PolicyArn=arn, VersionId="v1")
    assert _code(iot.list_things) == "OK"
    versions = iam.list_policy_versions(PolicyArn=arn)["Versions"]
    assert {v["VersionId"]: v["IsDefaultVersion"] for v in versions} == {"v1": True, "v2": False}
    document = iam.get_policy_version(PolicyArn=arn, VersionId="v2")["PolicyVersion"]["Document"]
    assert document["Statement"][0]["Action"] == "iot:ListJobs"  # botocore decoded it: URL-encoded JSON
    assert _code(lambda: iam.delete_policy_version(PolicyArn=arn, VersionId="v1")) == "DeleteConflict"
    assert _code(lambda: iam.delete_policy(PolicyArn=arn)) == "DeleteConflict"  # still attached
    assert _code(lambda: iam.create_policy(PolicyName="Broken", PolicyDocument='{"Statement": []}')) == \
        "MalformedPolicyDocument"


def test_o1_inactive_and_deleted_access_keys_are_refused(srv: RunningServer, users: Users) -> None:
    iam = srv.client("iam")
    clients = users.create("rotating", managed_arns=(managed.OVERAIR_READ_ONLY.arn,))
    iot = clients.client("iot")
    assert _code(iot.list_things) == "OK"
    iam.update_access_key(UserName="rotating", AccessKeyId=clients.access_key_id, Status="Inactive")
    assert _code(iot.list_things) == "InactiveAccessKey"
    iam.delete_access_key(UserName="rotating", AccessKeyId=clients.access_key_id)
    assert _code(iot.list_things) in {"InvalidClientTokenId", "UnrecognizedClientException"}
    assert _code(lambda: iam.delete_user(UserName="rotating")) == "DeleteConflict"  # policy attached
    iam.detach_user_policy(UserName="rotating", PolicyArn=managed.OVERAIR_READ_ONLY.arn)
    iam.delete_user(UserName="rotating")
    assert _code(lambda: iam.get_user(UserName="rotating")) == "NoSuchEntity"


def test_iam_listings_page_with_marker(srv: RunningServer) -> None:
    iam = srv.client("iam")
    for i in range(5):
        iam.create_user(UserName=f"paged-{i}", Path="/paged/")
    paginator = iam.get_paginator("list_users")
    pages = list(paginator.paginate(PathPrefix="/paged/", PaginationConfig={"PageSize": 2}))
    assert [len(p["Users"]) for p in pages] == [2, 2, 1]
    assert [u["UserName"] for p in pages for u in p["Users"]] == [f"paged-{i}" for i in range(5)]
    assert pages[0]["Users"][0]["Arn"].endswith(":user/paged/paged-0")


# --- STS ---------------------------------------------------------------------------------------


def _session_client(srv: RunningServer, service: str, credentials: dict[str, Any]) -> Any:
    return boto3.session.Session(
        aws_access_key_id=credentials["AccessKeyId"], aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"], region_name=srv.clients.region,
    ).client(service, endpoint_url=srv.endpoint, config=botocore.config.Config(retries={"max_attempts": 1}))


def _assumable_role(srv: RunningServer, name: str, trusted_user_arn: str) -> str:
    iam = srv.client("iam")
    trust = _policy({"Effect": "Allow", "Principal": {"AWS": trusted_user_arn}, "Action": "sts:AssumeRole"})
    arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust)["Role"]["Arn"]
    iam.attach_role_policy(RoleName=name, PolicyArn=managed.OVERAIR_READ_ONLY.arn)
    return str(arn)


def test_o1_assumed_role_session_has_the_roles_permissions_and_no_more(
        srv: RunningServer, users: Users) -> None:
    user_arn = f"arn:aws:iam::{srv.settings.account_id}:user/assumer"
    assumer = users.create("assumer")  # no policies: the trust policy names it
    role_arn = _assumable_role(srv, "reader-role", user_arn)
    sts = assumer.client("sts")
    credentials = sts.assume_role(RoleArn=role_arn, RoleSessionName="audit-1")["Credentials"]
    identity = _session_client(srv, "sts", credentials).get_caller_identity()
    assert identity["Arn"] == f"arn:aws:sts::{srv.settings.account_id}:assumed-role/reader-role/audit-1"
    iot = _session_client(srv, "iot", credentials)
    iot.list_things()
    assert _code(lambda: iot.create_thing(thingName="by-session")) == "AccessDeniedException"
    stranger = users.create("stranger")
    assert _code(lambda: stranger.client("sts").assume_role(RoleArn=role_arn, RoleSessionName="x1")) == \
        "AccessDenied"


def test_o1_session_token_is_required_and_checked(srv: RunningServer, users: Users) -> None:
    user_arn = f"arn:aws:iam::{srv.settings.account_id}:user/token-user"
    sts = users.create("token-user").client("sts")  # first: a trust policy names existing users
    role_arn = _assumable_role(srv, "token-role", user_arn)
    credentials = sts.assume_role(RoleArn=role_arn, RoleSessionName="tok")["Credentials"]
    assert _code(_session_client(srv, "iot", credentials).list_things) == "OK"
    forged = {**credentials, "SessionToken": credentials["SessionToken"][:-4] + "AAAA"}
    assert _code(_session_client(srv, "iot", forged).list_things) == "InvalidClientTokenId"
    missing = boto3.session.Session(aws_access_key_id=credentials["AccessKeyId"],
                                    aws_secret_access_key=credentials["SecretAccessKey"],
                                    region_name=srv.clients.region).client("iot", endpoint_url=srv.endpoint)
    assert _code(missing.list_things) == "InvalidClientTokenId"


def test_o1_expired_session_token_is_refused(clocked_srv: RunningServer, clock: Any) -> None:
    srv = clocked_srv
    user_arn = f"arn:aws:iam::{srv.settings.account_id}:user/short-lived"
    clients = Users(srv).create("short-lived")
    role_arn = _assumable_role(srv, "short-role", user_arn)
    credentials = clients.client("sts").assume_role(RoleArn=role_arn, RoleSessionName="short",
                                                    DurationSeconds=900)["Credentials"]
    iot = _session_client(srv, "iot", credentials)
    assert _code(iot.list_things) == "OK"
    clock.offset += 901
    try:
        # The token is checked before the request time, so this is the expiry speaking.
        assert _code(iot.list_things) == "ExpiredToken"
    finally:
        clock.offset -= 901


def test_o2_session_policies_are_refused_not_ignored(srv: RunningServer, users: Users) -> None:
    """Ignoring a session policy would hand the session more than the caller asked for."""
    user_arn = f"arn:aws:iam::{srv.settings.account_id}:user/narrower"
    sts = users.create("narrower").client("sts")
    role_arn = _assumable_role(srv, "narrowed-role", user_arn)
    narrow = _policy({"Effect": "Allow", "Action": "iot:ListThings", "Resource": "*"})
    assert _code(lambda: sts.assume_role(RoleArn=role_arn, RoleSessionName="nn", Policy=narrow)) == \
        "ValidationError"
    missing = role_arn.replace("narrowed-role", "no-such-role")
    assert _code(lambda: sts.assume_role(RoleArn=missing, RoleSessionName="nn")) == "AccessDenied"


def test_o2_trust_policy_can_require_an_external_id(srv: RunningServer, users: Users) -> None:
    user_arn = f"arn:aws:iam::{srv.settings.account_id}:user/with-external-id"
    sts = users.create("with-external-id").client("sts")
    iam = srv.client("iam")
    role_arn = iam.create_role(RoleName="external-id-role", AssumeRolePolicyDocument=_policy(
        {"Effect": "Allow", "Principal": {"AWS": user_arn}, "Action": "sts:AssumeRole",
         "Condition": {"StringEquals": {"sts:ExternalId": "tenant-42"}}}))["Role"]["Arn"]
    assert _code(lambda: sts.assume_role(RoleArn=role_arn, RoleSessionName="xx")) == "AccessDenied"
    assert _code(lambda: sts.assume_role(RoleArn=role_arn, RoleSessionName="xx", ExternalId="tenant-1")) == \
        "AccessDenied"
    assert _code(lambda: sts.assume_role(RoleArn=role_arn, RoleSessionName="xx", ExternalId="tenant-42")) == \
        "OK"
