"""Threat O1 under attack, through unmodified boto3 against the real server: each attack
an adversarial review of 4545424 used to get past IAM, and the defence that stops it.

1. sts:AssumeRole by AWS's rule (trust policy first; account trust delegates; Deny wins)
   and principals bound to unique ids (a re-created user inherits nothing).
2. ARN members parsed strictly once; the canonical ARN is authorized and acted on.
3. Self-service IAM calls authorized against the caller's own user ARN.
4. Signing jobs read and write objects only as their requester may.
6. iam:PolicyARN; the OTA service role and OTA operator policy are least privilege.
7. Minting a certificate bound to a thing needs iot:AttachThingPrincipal on it (N4).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from overair.cli.client import ApiClients
from overair.cli.provisioning import create_keys_and_certificate_for
from overair.core.versions import Version
from overair.server.bootstrap import DEFAULT_OTA_ROLE, DEV_PROFILE, initialize
from overair.server.iam import managed
from overair.server.iam.policies import PolicyStore
from overair.server.settings import load_settings
from overair.server.storage.db import Database
from overair.sim.firmware import make_firmware
from tests.e2e.ota_helpers import BUCKET, FINISHED, wait_for
from tests.server_harness import RunningServer

DENIED = {"AccessDenied", "AccessDeniedException"}


def _policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def _allow(action: str | list[str], resource: str | list[str] = "*", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


def _deny(action: str | list[str], resource: str | list[str] = "*", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Deny", "Action": action, "Resource": resource, **extra}


def _code(call: Callable[[], Any]) -> str:
    try:
        call()
    except ClientError as exc:
        return str(exc.response["Error"]["Code"])
    return "OK"


class World:
    """The server, its account and region, and users made through the admin."""

    def __init__(self, srv: RunningServer) -> None:
        self.srv = srv
        self.account = srv.settings.account_id
        self.region = srv.settings.region
        self.iam = srv.client("iam")
        self.iot = srv.client("iot")

    def arn(self, service: str, resource: str) -> str:
        region = "" if service in ("iam", "sts") else self.region
        return f"arn:aws:{service}:{region}:{self.account}:{resource}"

    def user(self, name: str, *statements: dict[str, Any], managed_arns: tuple[str, ...] = ()) -> ApiClients:
        self.iam.create_user(UserName=name)
        if statements:
            self.iam.put_user_policy(UserName=name, PolicyName="Test", PolicyDocument=_policy(*statements))
        for policy_arn in managed_arns:
            self.iam.attach_user_policy(UserName=name, PolicyArn=policy_arn)
        key = self.iam.create_access_key(UserName=name)["AccessKey"]
        return ApiClients(self.srv.endpoint, key["AccessKeyId"], key["SecretAccessKey"],
                          self.srv.clients.region)

    def delete_user(self, name: str) -> None:
        for key in self.iam.list_access_keys(UserName=name)["AccessKeyMetadata"]:
            self.iam.delete_access_key(UserName=name, AccessKeyId=key["AccessKeyId"])
        for policy_name in self.iam.list_user_policies(UserName=name)["PolicyNames"]:
            self.iam.delete_user_policy(UserName=name, PolicyName=policy_name)
        for attached in self.iam.list_attached_user_policies(UserName=name)["AttachedPolicies"]:
            self.iam.detach_user_policy(UserName=name, PolicyArn=attached["PolicyArn"])
        self.iam.delete_user(UserName=name)

    def role(self, name: str, *trust: dict[str, Any], path: str = "/") -> str:
        document = _policy(*[{"Action": "sts:AssumeRole", **t} for t in trust])
        arn = self.iam.create_role(RoleName=name, Path=path, AssumeRolePolicyDocument=document)["Role"]["Arn"]
        self.iam.attach_role_policy(RoleName=name, PolicyArn=managed.OVERAIR_READ_ONLY.arn)
        return str(arn)


@pytest.fixture(scope="module")
def world(srv: RunningServer) -> World:
    w = World(srv)
    for thing in ("victim", "bystander"):
        w.iot.create_thing(thingName=thing)
    w.iot.create_thing_group(thingGroupName="fleet")
    return w


# --- 1. sts:AssumeRole by AWS's rule ------------------------------------------------------------


def test_o1_an_identity_allow_on_everything_assumes_no_role_that_does_not_trust_the_caller(
        world: World) -> None:
    admin_like = world.user("mallory-admin", managed_arns=(managed.ADMINISTRATOR_ACCESS.arn,)).client("sts")
    world.user("trusted-bob")
    only_bob = world.role("trusts-only-bob",
                          {"Effect": "Allow", "Principal": {"AWS": world.arn("iam", "user/trusted-bob")}})
    ota_role = world.arn("iam", f"role/{DEFAULT_OTA_ROLE}")  # trusted only by iot.amazonaws.com
    for role_arn in (only_bob, ota_role):
        code = _code(partial(admin_like.assume_role, RoleArn=role_arn, RoleSessionName="steal"))
        assert code == "AccessDenied", role_arn


def test_o1_a_trust_policy_naming_the_account_needs_the_callers_identity_policy_too(world: World) -> None:
    role_arn = world.role("trusts-the-account", {"Effect": "Allow", "Principal": {"AWS": world.account}})
    plain = world.user("no-assume-policy").client("sts")
    assert _code(lambda: plain.assume_role(RoleArn=role_arn, RoleSessionName="s1")) == "AccessDenied"
    allowed = world.user("may-assume", _allow("sts:AssumeRole", role_arn)).client("sts")
    assert _code(lambda: allowed.assume_role(RoleArn=role_arn, RoleSessionName="s1")) == "OK"
    elsewhere = world.user("may-assume-others",
                           _allow("sts:AssumeRole", world.arn("iam", "role/other"))).client("sts")
    assert _code(lambda: elsewhere.assume_role(RoleArn=role_arn, RoleSessionName="s1")) == "AccessDenied"


def test_o1_an_explicit_deny_wins_over_a_trust_policy_naming_the_caller(world: World) -> None:
    world.user("denied-carol", _deny("sts:AssumeRole"))
    role_arn = world.role("trusts-carol",
                          {"Effect": "Allow", "Principal": {"AWS": world.arn("iam", "user/denied-carol")}})
    carol = world.iam  # keys come from a second access key, below
    key = carol.create_access_key(UserName="denied-carol")["AccessKey"]
    sts = ApiClients(world.srv.endpoint, key["AccessKeyId"], key["SecretAccessKey"],
                     world.srv.clients.region).client("sts")
    assert _code(lambda: sts.assume_role(RoleArn=role_arn, RoleSessionName="s1")) == "AccessDenied"
    world.iam.delete_user_policy(UserName="denied-carol", PolicyName="Test")
    assert _code(lambda: sts.assume_role(RoleArn=role_arn, RoleSessionName="s1")) == "OK"  # named directly


def test_o1_a_recreated_user_inherits_neither_trust_nor_bucket_grants(world: World) -> None:
    srv = world.srv
    s3 = srv.client("s3")
    s3.create_bucket(Bucket="dave-bucket")
    s3.put_object(Bucket="dave-bucket", Key="secret.bin", Body=b"for the first dave only")
    dave_arn = world.arn("iam", "user/dave")
    first = world.user("dave")
    role_arn = world.role("trusts-dave", {"Effect": "Allow", "Principal": {"AWS": dave_arn}})
    s3.put_bucket_policy(Bucket="dave-bucket", Policy=_policy(
        _allow("s3:GetObject", "arn:aws:s3:::dave-bucket/*", Principal={"AWS": dave_arn})))
    assert _code(lambda: first.client("sts").assume_role(RoleArn=role_arn, RoleSessionName="s1")) == "OK"
    assert _code(lambda: first.client("s3").get_object(Bucket="dave-bucket", Key="secret.bin")) == "OK"
    # While dave exists, the documents show his ARN; stored, they name his unique id.
    shown = world.iam.get_role(RoleName="trusts-dave")["Role"]["AssumeRolePolicyDocument"]
    assert shown["Statement"][0]["Principal"]["AWS"] == dave_arn
    first_id = world.iam.get_user(UserName="dave")["User"]["UserId"]
    assert first_id in srv.server.roles.get_role("trusts-dave").trust_policy

    world.delete_user("dave")
    shown = world.iam.get_role(RoleName="trusts-dave")["Role"]["AssumeRolePolicyDocument"]
    assert shown["Statement"][0]["Principal"]["AWS"] == first_id  # as AWS shows a deleted principal
    second = world.user("dave")  # same name, another principal
    assert world.iam.get_user(UserName="dave")["User"]["UserId"] != first_id
    assert _code(lambda: second.client("sts").assume_role(RoleArn=role_arn, RoleSessionName="s2")) == \
        "AccessDenied"
    assert _code(lambda: second.client("s3").get_object(Bucket="dave-bucket", Key="secret.bin")) in DENIED


def test_o1_a_policy_naming_a_principal_that_does_not_exist_is_refused(world: World) -> None:
    ghost = world.arn("iam", "user/ghost")
    assert _code(lambda: world.iam.create_role(RoleName="trusts-ghost", AssumeRolePolicyDocument=_policy(
        {"Effect": "Allow", "Principal": {"AWS": ghost}, "Action": "sts:AssumeRole"}))) == \
        "MalformedPolicyDocument"
    s3 = world.srv.client("s3")
    s3.create_bucket(Bucket="ghost-bucket")
    assert _code(lambda: s3.put_bucket_policy(Bucket="ghost-bucket", Policy=_policy(
        _allow("s3:GetObject", "arn:aws:s3:::ghost-bucket/*", Principal={"AWS": ghost})))) == \
        "MalformedPolicy"
    foreign = "arn:aws:iam::999999999999:user/someone"
    assert _code(lambda: world.iam.create_role(RoleName="trusts-foreign", AssumeRolePolicyDocument=_policy(
        {"Effect": "Allow", "Principal": {"AWS": foreign}, "Action": "sts:AssumeRole"}))) == \
        "MalformedPolicyDocument"


# --- 2. ARNs: one strict parse, the canonical ARN authorized and acted on ------------------------


def _attack_forms(world: World, kind: str, name: str) -> list[str]:
    canonical = world.arn("iot", f"{kind}/{name}")
    return [
        f"arn:aws:iot:{world.region}:999999999999:{kind}/{name}",  # another account
        f"arn:aws:iot:ap-south-2:{world.account}:{kind}/{name}",  # another region
        f"arn:aws-cn:iot:{world.region}:{world.account}:{kind}/{name}",  # another partition
        f"not-an-arn:{kind}/{name}",
        world.arn("iot", f"thinggroup/x:{kind}/{name}"),
        canonical + "\n",
        canonical + "/x",
        canonical.replace(f":{kind}/", f":{kind.upper()}/"),
    ]


@pytest.fixture(scope="module")
def fenced(world: World) -> Any:
    """An operator allowed all of iot except the victim thing (a Deny on its canonical ARN)."""
    return world.user("fenced", _allow("iot:*"),
                      _deny("iot:*", world.arn("iot", "thing/victim"))).client("iot")


def test_o1_job_targets_in_any_other_form_than_the_canonical_arn_are_refused(
        world: World, fenced: Any) -> None:
    for i, target in enumerate(_attack_forms(world, "thing", "victim")):
        code = _code(partial(fenced.create_job, jobId=f"attack-{i}", targets=[target], document="{}"))
        assert code == "InvalidRequestException", (target, code)
    victim = world.arn("iot", "thing/victim")
    assert _code(lambda: fenced.create_job(jobId="attack-canonical", targets=[victim],
                                           document="{}")) == "AccessDeniedException"
    assert world.iot.list_job_executions_for_thing(thingName="victim")["executionSummaries"] == []
    assert _code(lambda: fenced.create_job(jobId="fair", targets=[world.arn("iot", "thing/bystander")],
                                           document="{}")) == "OK"


def test_o1_ota_update_targets_in_any_other_form_are_refused(world: World, fenced: Any) -> None:
    for i, target in enumerate(_attack_forms(world, "thing", "victim")):
        code = _code(partial(
            fenced.create_ota_update, otaUpdateId=f"attack-{i}", targets=[target],
            roleArn=world.arn("iam", f"role/{DEFAULT_OTA_ROLE}"),
            files=[{"fileName": "f", "fileLocation": {"s3Location": {"bucket": BUCKET, "key": "k"}},
                    "codeSigning": {"startSigningJobParameter": {"signingProfileName": DEV_PROFILE}}}]))
        assert code == "InvalidRequestException", (target, code)
    assert not any(u["otaUpdateId"].startswith("attack-") for u in world.iot.list_ota_updates()["otaUpdates"])


def test_o1_group_membership_by_arn_reaches_only_the_canonical_thing(world: World, fenced: Any) -> None:
    for target in _attack_forms(world, "thing", "victim"):
        for call in (fenced.add_thing_to_thing_group, fenced.remove_thing_from_thing_group):
            code = _code(partial(call, thingGroupName="fleet", thingArn=target))
            assert code == "InvalidRequestException", (call, target, code)
    assert _code(lambda: fenced.add_thing_to_thing_group(
        thingGroupName="fleet", thingArn=world.arn("iot", "thing/victim"))) == "AccessDeniedException"
    assert _code(lambda: fenced.add_thing_to_thing_group(   # a decoy name with the victim's ARN
        thingGroupName="fleet", thingName="bystander", thingArn=world.arn("iot", "thing/victim"))) == \
        "InvalidRequestException"
    assert "victim" not in world.iot.list_things_in_thing_group(thingGroupName="fleet")["things"]
    fenced.add_thing_to_thing_group(thingGroupArn=world.arn("iot", "thinggroup/fleet"),
                                    thingArn=world.arn("iot", "thing/bystander"))
    assert world.iot.list_things_in_thing_group(thingGroupName="fleet")["things"] == ["bystander"]


def test_o1_group_arns_are_parsed_as_strictly(world: World) -> None:
    fence = world.user("group-fenced", _allow("iot:*"),
                       _deny("iot:*", world.arn("iot", "thinggroup/fleet"))).client("iot")
    for target in _attack_forms(world, "thinggroup", "fleet"):
        assert _code(partial(fence.add_thing_to_thing_group, thingGroupArn=target,
                             thingName="bystander")) == "InvalidRequestException"
        assert _code(partial(fence.create_job, jobId="g-attack", targets=[target],
                             document="{}")) == "InvalidRequestException"


def test_o1_certificate_principals_and_other_arn_members_are_parsed_strictly(world: World) -> None:
    cert = world.iot.create_keys_and_certificate(setAsActive=False)
    foreign = cert["certificateArn"].replace(world.account, "999999999999")
    # (AttachThingPrincipal carries the principal in a header: no newline can be sent.)
    for principal in (foreign, "not-an-arn:cert/" + cert["certificateId"], cert["certificateArn"] + "/x",
                      cert["certificateArn"].replace(":cert/", ":thing/")):
        assert _code(partial(world.iot.attach_thing_principal, thingName="bystander",
                             principal=principal)) == "InvalidRequestException"
    sts = world.srv.client("sts")
    assert _code(lambda: sts.assume_role(RoleArn=f"arn:aws:iam::999999999999:role/{DEFAULT_OTA_ROLE}",
                                         RoleSessionName="x1")) == "ValidationError"
    assert _code(lambda: world.iam.attach_user_policy(
        UserName="fenced", PolicyArn="arn:aws:iam::aws:policy/AdministratorAccess:x")) == "InvalidInput"
    acm = world.srv.client("acm")
    assert _code(lambda: acm.describe_certificate(
        CertificateArn="arn:aws:acm:us-east-9:999999999999:certificate/x")) == "InvalidArnException"


# --- 3. Self-service IAM calls act on, and are checked against, the caller ------------------------


def test_o1_a_deny_on_the_callers_own_user_applies_without_user_name(world: World) -> None:
    own = world.arn("iam", "user/self-denied")
    iam = world.user("self-denied", _allow("iam:*"), _deny("iam:*AccessKey*", own)).client("iam")
    for call in (iam.create_access_key, iam.list_access_keys):
        assert _code(call) == "AccessDenied"
    assert _code(lambda: iam.list_access_keys(UserName="self-denied")) == "AccessDenied"
    assert _code(iam.get_user) == "OK"


def test_o1_the_aws_username_self_service_pattern_works(world: World) -> None:
    self_service = _allow(["iam:GetUser", "iam:CreateAccessKey", "iam:ListAccessKeys", "iam:UpdateAccessKey",
                           "iam:DeleteAccessKey"], f"arn:aws:iam::{world.account}:user/${{aws:username}}")
    iam = world.user("self-service", self_service).client("iam")
    assert iam.get_user()["User"]["UserName"] == "self-service"
    key = iam.create_access_key()["AccessKey"]
    assert key["UserName"] == "self-service"
    assert {k["AccessKeyId"] for k in iam.list_access_keys()["AccessKeyMetadata"]} >= {key["AccessKeyId"]}
    iam.update_access_key(AccessKeyId=key["AccessKeyId"], Status="Inactive")
    iam.delete_access_key(AccessKeyId=key["AccessKeyId"])
    assert _code(lambda: iam.list_access_keys(UserName="fenced")) == "AccessDenied"  # nobody else's
    assert _code(lambda: iam.create_access_key(UserName="fenced")) == "AccessDenied"


# --- 4. Signing jobs read and write only as their requester -------------------------------------


def test_o1_a_signing_job_reads_and_writes_objects_only_as_its_requester(world: World) -> None:
    srv = world.srv
    image = make_firmware(Version(3, 0, 0), 4096, seed="signing-o1")
    version = srv.client("s3").put_object(Bucket=BUCKET, Key="signing-o1/fw.bin", Body=image)["VersionId"]
    profile = world.arn("signer", f"/signing-profiles/{DEV_PROFILE}")
    source = {"s3": {"bucketName": BUCKET, "key": "signing-o1/fw.bin", "version": version}}
    destination = {"s3": {"bucketName": BUCKET, "prefix": "signing-o1/out/"}}

    def start(clients: ApiClients) -> str:
        return _code(lambda: clients.client("signer").start_signing_job(
            source=source, destination=destination, profileName=DEV_PROFILE))

    jobs_before = len(srv.client("signer").list_signing_jobs()["jobs"])
    signer_only = world.user("signer-only", _allow("signer:StartSigningJob", profile))
    assert start(signer_only) == "AccessDeniedException"  # may not read the image
    reader = world.user("signer-reader", _allow("signer:StartSigningJob", profile),
                        _allow("s3:GetObjectVersion", f"arn:aws:s3:::{BUCKET}/signing-o1/*"))
    assert start(reader) == "AccessDeniedException"  # may not write the result
    walled = world.user("signer-walled", _allow(["signer:StartSigningJob", "s3:*"]),
                        _deny("s3:PutObject", f"arn:aws:s3:::{BUCKET}/signing-o1/out/*"))
    assert start(walled) == "AccessDeniedException"
    assert len(srv.client("signer").list_signing_jobs()["jobs"]) == jobs_before  # nothing ran
    listed = srv.client("s3").list_objects_v2(Bucket=BUCKET, Prefix="signing-o1/out/")
    assert listed.get("KeyCount", 0) == 0  # nothing written

    writer = world.user("signer-writer", _allow("signer:StartSigningJob", profile),
                        _allow("s3:GetObjectVersion", f"arn:aws:s3:::{BUCKET}/signing-o1/*"),
                        _allow("s3:PutObject", f"arn:aws:s3:::{BUCKET}/signing-o1/out/*"))
    assert start(writer) == "OK"


def test_o1_a_bucket_policy_can_grant_a_signing_jobs_reads_and_writes(world: World) -> None:
    srv = world.srv
    s3 = srv.client("s3")
    s3.create_bucket(Bucket="shared-signing")
    s3.put_bucket_versioning(Bucket="shared-signing", VersioningConfiguration={"Status": "Enabled"})
    version = s3.put_object(Bucket="shared-signing", Key="fw.bin",
                            Body=make_firmware(Version(3, 0, 1), 4096, seed="b"))["VersionId"]
    profile = world.arn("signer", f"/signing-profiles/{DEV_PROFILE}")
    user = world.user("bucket-granted", _allow("signer:StartSigningJob", profile))
    request = {"source": {"s3": {"bucketName": "shared-signing", "key": "fw.bin", "version": version}},
               "destination": {"s3": {"bucketName": "shared-signing", "prefix": "out/"}},
               "profileName": DEV_PROFILE}
    signer = user.client("signer")
    assert _code(lambda: signer.start_signing_job(**request)) == "AccessDeniedException"
    s3.put_bucket_policy(Bucket="shared-signing", Policy=_policy(
        _allow("s3:GetObjectVersion", "arn:aws:s3:::shared-signing/fw.bin",
               Principal={"AWS": world.arn("iam", "user/bucket-granted")}),
        _allow("s3:PutObject", "arn:aws:s3:::shared-signing/out/*",
               Principal={"AWS": world.arn("iam", "user/bucket-granted")})))
    assert _code(lambda: signer.start_signing_job(**request)) == "OK"


# --- 6. iam:PolicyARN and least-privilege defaults ------------------------------------------------


def test_o1_attach_policy_can_be_limited_by_the_policy_arn_condition_key(world: World) -> None:
    world.iam.create_user(UserName="delegate-target")
    delegate = world.user("delegate", _allow(["iam:AttachUserPolicy", "iam:DetachUserPolicy"], Condition={
        "ArnEquals": {"iam:PolicyARN": managed.OVERAIR_READ_ONLY.arn}})).client("iam")
    assert _code(lambda: delegate.attach_user_policy(
        UserName="delegate-target", PolicyArn=managed.ADMINISTRATOR_ACCESS.arn)) == "AccessDenied"
    assert _code(lambda: delegate.attach_user_policy(UserName="delegate-target",
                                                     PolicyArn=managed.OVERAIR_READ_ONLY.arn)) == "OK"
    assert _code(lambda: delegate.detach_user_policy(UserName="delegate-target",
                                                     PolicyArn=managed.OVERAIR_READ_ONLY.arn)) == "OK"


def test_o1_the_ota_operator_may_pass_only_ota_service_roles(world: World) -> None:
    world.iam.create_role(RoleName="fleet-admin", AssumeRolePolicyDocument=_policy(
        {"Effect": "Allow", "Principal": {"Service": "iot.amazonaws.com"}, "Action": "sts:AssumeRole"}))
    world.iam.attach_role_policy(RoleName="fleet-admin", PolicyArn=managed.ADMINISTRATOR_ACCESS.arn)
    operator = world.user("pass-operator", managed_arns=(managed.OVERAIR_OTA_OPERATOR.arn,)).client("iot")
    request = {"otaUpdateId": "pass-admin", "targets": [world.arn("iot", "thing/bystander")],
               "files": [{"fileName": "f", "fileLocation": {"s3Location": {"bucket": BUCKET, "key": "k"}},
                          "codeSigning": {"startSigningJobParameter": {"signingProfileName": DEV_PROFILE}}}]}
    admin_role = world.arn("iam", "role/fleet-admin")
    assert _code(lambda: operator.create_ota_update(roleArn=admin_role, **request)) == "AccessDeniedException"
    assert _code(lambda: world.iot.get_ota_update(otaUpdateId="pass-admin")) == "ResourceNotFoundException"


def _finished(iot: Any, ota_id: str) -> dict[str, Any]:
    return dict(wait_for(lambda: (info := iot.get_ota_update(otaUpdateId=ota_id)["otaUpdateInfo"])[
        "otaUpdateStatus"] in FINISHED and info, what=f"OTA update {ota_id}"))


def test_o1_the_default_ota_role_reads_only_the_firmware_bucket(world: World) -> None:
    srv = world.srv
    s3 = srv.client("s3")
    s3.create_bucket(Bucket="not-firmware")
    s3.put_bucket_versioning(Bucket="not-firmware", VersioningConfiguration={"Status": "Enabled"})
    version = s3.put_object(Bucket="not-firmware", Key="fw.bin",
                            Body=make_firmware(Version(7, 0, 0), 4096, seed="nf"))["VersionId"]
    world.iot.create_ota_update(
        otaUpdateId="other-bucket", targets=[world.arn("iot", "thing/bystander")],
        roleArn=world.arn("iam", f"role/{DEFAULT_OTA_ROLE}"),
        files=[{"fileName": "/fw.bin",
                "fileLocation": {"s3Location": {"bucket": "not-firmware", "key": "fw.bin",
                                                "version": version}},
                "codeSigning": {"startSigningJobParameter": {"signingProfileName": DEV_PROFILE}}}])
    info = _finished(world.iot, "other-bucket")
    assert info["otaUpdateStatus"] == "CREATE_FAILED"
    assert "s3:GetObjectVersion" in info["errorInfo"]["message"]


def test_o1_init_scopes_the_ota_role_to_the_buckets_it_is_told(tmp_path: Path) -> None:
    initialize(tmp_path / "data", firmware_buckets=("fw-a", "fw-b"))
    settings = load_settings(tmp_path / "data")
    db = Database(settings.db_url)
    try:
        document = json.loads(PolicyStore(db, settings, lambda: 0.0).get_inline("role", DEFAULT_OTA_ROLE,
                                                                                  "Firmware"))
    finally:
        db.close()
    resources = {r for st in document["Statement"] for r in st["Resource"]}
    assert resources == {"arn:aws:s3:::fw-a/*", "arn:aws:s3:::fw-b/*", "arn:aws:s3:::fw-a/signed/*",
                         "arn:aws:s3:::fw-b/signed/*"}
    with pytest.raises(Exception, match="not a bucket name"):
        initialize(tmp_path / "other", firmware_buckets=("*",))


# --- 7. A certificate bound to a thing needs permission to attach to that thing (N4) -------------


def test_n4_minting_a_certificate_named_for_a_thing_needs_attach_thing_principal(world: World) -> None:
    minter = world.user("minter", _allow("iot:CreateKeysAndCertificate")).client("iot")
    assert _code(lambda: minter.create_keys_and_certificate(setAsActive=True)) == "OK"
    assert _code(lambda: create_keys_and_certificate_for(minter, "victim")) == "AccessDeniedException"
    attacher = world.user("attacher", _allow("iot:CreateKeysAndCertificate"),
                          _allow("iot:AttachThingPrincipal",
                                 world.arn("iot", "thing/bystander"))).client("iot")
    assert _code(lambda: create_keys_and_certificate_for(attacher, "bystander")) == "OK"
    assert _code(lambda: create_keys_and_certificate_for(attacher, "victim")) == "AccessDeniedException"
