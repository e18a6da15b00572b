#!/usr/bin/env python3
"""The FreeRTOS OTA workflow with plain boto3, against overair (or AWS).

Nothing here is overair-specific except where the requests go: point `--endpoint-url`
at `overair serve` and use an overair access key, or drop `--endpoint-url` and the
same script talks to AWS. Two identities take part, as in the seed's workflow:

* an administrator (the keys boto3 finds as usual: AWS_ACCESS_KEY_ID/
  AWS_SECRET_ACCESS_KEY, AWS_PROFILE or AWS_SHARED_CREDENTIALS_FILE) sets up the fleet
  and IAM: the things and their group, the OTA service role, and the OTA operator user
  with the seed's operator policy;
* the OTA operator then does the update with its own keys: a versioned bucket, the
  firmware upload, the code-signing certificate import, a signing profile, and the OTA
  update with a signing job, followed until every device reports SUCCEEDED.

Run `python examples/ota_workflow_boto3.py --help` for the options; examples/README.md
shows a complete run against a local server.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError

# The managed policies overair ships under AWS's names (AWSIoTOTAUpdate is AWS's own).
OTA_OPERATOR_POLICY = "arn:aws:iam::aws:policy/OverairOTAOperator"
OTA_UPDATE_POLICY = "arn:aws:iam::aws:policy/service-role/AWSIoTOTAUpdate"
SIGNING_PLATFORM = "AmazonFreeRTOS-Default"
FAILED_EXECUTION = {"FAILED", "REJECTED", "TIMED_OUT", "CANCELED", "REMOVED"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--endpoint-url", default=env("OVERAIR_ENDPOINT") or env("AWS_ENDPOINT_URL"),
                   help="overair's API (env OVERAIR_ENDPOINT); omit for AWS")
    p.add_argument("--region", default=env("AWS_DEFAULT_REGION") or env("AWS_REGION") or "us-east-1")
    p.add_argument("--things", default=env("OTA_THINGS", "ota-example-1,ota-example-2"),
                   help="comma-separated thing names; created if missing")
    p.add_argument("--group", default=env("OTA_GROUP", "ota-example-fleet"))
    p.add_argument("--bucket", default=env("OTA_BUCKET", "ota-example-firmware"))
    p.add_argument("--firmware", type=Path, default=env("OTA_FIRMWARE"),
                   help="image to send (default: a generated overair test image of --firmware-version)")
    p.add_argument("--firmware-version", default=env("OTA_FIRMWARE_VERSION", "1.1.0"))
    p.add_argument("--certificate", type=Path, default=env("OTA_SIGNING_CERT"),
                   required=not env("OTA_SIGNING_CERT"),
                   help="PEM code-signing certificate to import into acm (env OTA_SIGNING_CERT)")
    p.add_argument("--private-key", type=Path, default=env("OTA_SIGNING_KEY"),
                   required=not env("OTA_SIGNING_KEY"), help="its PEM private key (env OTA_SIGNING_KEY)")
    p.add_argument("--certificate-chain", type=Path, default=env("OTA_SIGNING_CHAIN"),
                   help="PEM intermediates, if any")
    p.add_argument("--profile-name", default=env("OTA_SIGNING_PROFILE", "ota_example_profile"))
    p.add_argument("--cert-path-on-device", default="/certs/ota-example-signer.pem")
    p.add_argument("--file-name-on-device", default="/firmware/app.bin")
    p.add_argument("--operator", default=env("OTA_OPERATOR", "ota-example-operator"), help="IAM user name")
    p.add_argument("--service-role", default=env("OTA_SERVICE_ROLE", "ota-example-service-role"))
    p.add_argument("--ota-id", default=env("OTA_UPDATE_ID") or f"ota-example-{int(time.time())}")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the devices")
    return p.parse_args(argv)


def policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def error_code(exc: ClientError) -> str:
    return str(exc.response["Error"]["Code"])


# --------------------------------------------------------------------- the administrator


def set_up_fleet(iot: Any, things: list[str], group: str) -> None:
    for thing in things:
        try:
            iot.describe_thing(thingName=thing)
            print(f"thing {thing}: exists")
        except iot.exceptions.ResourceNotFoundException:
            iot.create_thing(thingName=thing)
            print(f"thing {thing}: created")
    try:
        iot.describe_thing_group(thingGroupName=group)
    except iot.exceptions.ResourceNotFoundException:
        iot.create_thing_group(thingGroupName=group)
    for thing in things:
        iot.add_thing_to_thing_group(thingGroupName=group, thingName=thing)
    print(f"thing group {group}: {len(things)} thing(s)")


def set_up_service_role(iam: Any, role: str, bucket: str) -> str:
    """The role the OTA service acts as: AWSIoTOTAUpdate, plus reading the firmware and
    writing the signing job's result (as AWS's OTA service role needs)."""
    try:
        arn = iam.get_role(RoleName=role)["Role"]["Arn"]
    except iam.exceptions.NoSuchEntityException:
        trust = policy({"Effect": "Allow", "Principal": {"Service": "iot.amazonaws.com"},
                        "Action": "sts:AssumeRole"})
        arn = iam.create_role(RoleName=role, AssumeRolePolicyDocument=trust,
                              Description="OTA service role (example)")["Role"]["Arn"]
    iam.attach_role_policy(RoleName=role, PolicyArn=OTA_UPDATE_POLICY)
    iam.put_role_policy(RoleName=role, PolicyName="ReadFirmware", PolicyDocument=policy(
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:GetObjectVersion"],
         "Resource": f"arn:aws:s3:::{bucket}/*"},
        {"Effect": "Allow", "Action": "s3:PutObject", "Resource": f"arn:aws:s3:::{bucket}/signed/*"}))
    print(f"service role {role}: {arn}")
    return str(arn)


def set_up_operator(iam: Any, user: str, bucket: str, profile: str) -> dict[str, str]:
    """An IAM user with the seed's OTA operator policy; returns a new access key."""
    with contextlib.suppress(iam.exceptions.EntityAlreadyExistsException):  # a re-run
        iam.create_user(UserName=user)
    iam.attach_user_policy(UserName=user, PolicyArn=OTA_OPERATOR_POLICY)
    # The seed's list leaves out uploading the image and creating the signing profile;
    # this operator does both, so it may do exactly that, for this bucket and profile.
    iam.put_user_policy(UserName=user, PolicyName="PublishFirmware", PolicyDocument=policy(
        {"Effect": "Allow", "Action": "s3:PutObject", "Resource": f"arn:aws:s3:::{bucket}/*"},
        {"Effect": "Allow", "Action": "signer:PutSigningProfile",
         "Resource": f"arn:aws:signer:*:*:/signing-profiles/{profile}"}))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    print(f"operator {user}: access key {key['AccessKeyId']}")
    return {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}


# ---------------------------------------------------------------------- the OTA operator


def upload_firmware(s3: Any, bucket: str, key: str, image: bytes) -> str:
    try:
        s3.create_bucket(Bucket=bucket)
    except ClientError as exc:
        if error_code(exc) != "BucketAlreadyOwnedByYou":
            raise
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    version = str(s3.put_object(Bucket=bucket, Key=key, Body=image)["VersionId"])
    print(f"firmware s3://{bucket}/{key}: {len(image)} bytes, version {version}")
    return version


def create_signing_profile(acm: Any, signer: Any, args: argparse.Namespace) -> None:
    material = {"Certificate": args.certificate.read_bytes(), "PrivateKey": args.private_key.read_bytes()}
    if args.certificate_chain:
        material["CertificateChain"] = args.certificate_chain.read_bytes()
    certificate_arn = acm.import_certificate(**material)["CertificateArn"]
    print(f"code-signing certificate: {certificate_arn}")
    signer.put_signing_profile(profileName=args.profile_name, platformId=SIGNING_PLATFORM,
                               signingMaterial={"certificateArn": certificate_arn},
                               signingParameters={"certname": args.cert_path_on_device})
    print(f"signing profile {args.profile_name}")


def find_role_arn(iam: Any, role: str) -> str:
    for page in iam.get_paginator("list_roles").paginate():
        for entry in page["Roles"]:
            if entry["RoleName"] == role:
                return str(entry["Arn"])
    raise SystemExit(f"role {role} not found")


def find_group_arn(iot: Any, group: str) -> str:
    for page in iot.get_paginator("list_thing_groups").paginate(namePrefixFilter=group):
        for entry in page["thingGroups"]:
            if entry["groupName"] == group:
                return str(entry["groupArn"])
    raise SystemExit(f"thing group {group} not found")


def create_ota_update(iot: Any, args: argparse.Namespace, *, group_arn: str, role_arn: str,
                      key: str, version: str) -> str:
    iot.create_ota_update(
        otaUpdateId=args.ota_id,
        description=f"firmware {args.firmware_version}",
        targets=[group_arn],
        targetSelection="SNAPSHOT",
        protocols=["MQTT"],
        roleArn=role_arn,
        files=[{
            "fileName": args.file_name_on_device,
            "fileVersion": args.firmware_version,
            "fileLocation": {"s3Location": {"bucket": args.bucket, "key": key, "version": version}},
            "codeSigning": {"startSigningJobParameter": {
                "signingProfileName": args.profile_name,
                "destination": {"s3Destination": {"bucket": args.bucket, "prefix": "signed/"}},
            }},
        }],
    )
    print(f"OTA update {args.ota_id}: requested")
    deadline = time.monotonic() + 120
    while True:
        info = iot.get_ota_update(otaUpdateId=args.ota_id)["otaUpdateInfo"]
        status = info["otaUpdateStatus"]
        if status == "CREATE_COMPLETE":
            print(f"OTA update {args.ota_id}: {status}, job {info['awsIotJobId']}")
            return str(info["awsIotJobId"])
        if status == "CREATE_FAILED":
            raise SystemExit(f"OTA update failed: {info.get('errorInfo')}")
        if time.monotonic() > deadline:
            raise SystemExit(f"OTA update still {status} after 120 s")
        time.sleep(1)


def follow_job(iot: Any, job_id: str, things: list[str], timeout: float) -> None:
    """Poll the job's executions until every thing SUCCEEDED (or one failed, or time is up)."""
    deadline = time.monotonic() + timeout
    shown: dict[str, str] = {}
    while True:
        statuses: dict[str, str] = {}
        for page in iot.get_paginator("list_job_executions_for_job").paginate(jobId=job_id):
            for entry in page["executionSummaries"]:
                statuses[entry["thingArn"].rpartition("/")[2]] = entry["jobExecutionSummary"]["status"]
        if statuses != shown:
            print("  " + ", ".join(f"{t}={statuses.get(t, '-')}" for t in things), flush=True)
            shown = statuses
        failed = {t: s for t, s in statuses.items() if s in FAILED_EXECUTION}
        if failed:
            raise SystemExit(f"devices did not update: {failed}")
        if all(statuses.get(t) == "SUCCEEDED" for t in things):
            print(f"all {len(things)} device(s) SUCCEEDED")
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s: {statuses}")
        time.sleep(1)


def firmware_image(args: argparse.Namespace) -> bytes:
    if args.firmware:
        return bytes(args.firmware.read_bytes())
    from overair.core.versions import Version  # only for the generated test image
    from overair.sim.firmware import make_firmware

    return make_firmware(Version.parse(args.firmware_version), 64 * 1024, seed=args.ota_id)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    things = [t.strip() for t in args.things.split(",") if t.strip()]
    admin = boto3.Session(region_name=args.region)

    def client(session: boto3.Session, service: str) -> Any:
        return session.client(service, endpoint_url=args.endpoint_url)

    iam = client(admin, "iam")
    set_up_fleet(client(admin, "iot"), things, args.group)
    set_up_service_role(iam, args.service_role, args.bucket)
    keys = set_up_operator(iam, args.operator, args.bucket, args.profile_name)
    try:
        operator = boto3.Session(region_name=args.region, **keys)
        iot = client(operator, "iot")
        key = f"firmware/{args.ota_id}.bin"
        version = upload_firmware(client(operator, "s3"), args.bucket, key, firmware_image(args))
        create_signing_profile(client(operator, "acm"), client(operator, "signer"), args)
        job_id = create_ota_update(iot, args, group_arn=find_group_arn(iot, args.group),
                                   role_arn=find_role_arn(client(operator, "iam"), args.service_role),
                                   key=key, version=version)
        follow_job(iot, job_id, things, args.timeout)
    finally:
        # Keys are credentials: this run's key goes away with the run.
        iam.delete_access_key(UserName=args.operator, AccessKeyId=keys["aws_access_key_id"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
