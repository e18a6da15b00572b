#!/usr/bin/env python3
"""Bulk registration with plain boto3, against overair (or AWS): many devices, each
with a key it keeps, registered by one StartThingRegistrationTask.

As a factory would: every device makes its key pair and a certificate signing request
(CSR); one line per device goes into a newline-delimited JSON file in S3; a provisioning
template says what to make of each line (the thing, its attributes and group, a
certificate from the CSR, attached to the thing); a service role lets the registration
read the file. The script then follows the task, reads its RESULTS and ERRORS reports,
and writes each device's certificate and key to --out (DEVICE/device.crt, device.key).

With the administrator's keys (as boto3 finds them) and the endpoint:

    OVERAIR_ENDPOINT=http://127.0.0.1:8080 python examples/bulk_registration_boto3.py --count 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# What each line registers. Ref, Fn::Join and Fn::Sub are the functions overair serves;
# it serves no AWS IoT policies (a device may use its things' topics), so the template
# has no AWS::IoT::Policy resource.
TEMPLATE = {
    "Parameters": {"ThingName": {"Type": "String"}, "SerialNumber": {"Type": "String"},
                   "CSR": {"Type": "String"}},
    "Resources": {
        "thing": {"Type": "AWS::IoT::Thing", "Properties": {
            "ThingName": {"Ref": "ThingName"},
            "AttributePayload": {"serialNumber": {"Ref": "SerialNumber"},
                                 "batch": {"Fn::Join": ["-", ["lot", {"Ref": "SerialNumber"}]]}},
            "ThingGroups": ["bulk-example-fleet"]}},
        "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {
            "CertificateSigningRequest": {"Ref": "CSR"}, "Status": "ACTIVE"}}}}
ROLE = "bulk-example-registration"


def parse_args() -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoint-url", default=env("OVERAIR_ENDPOINT") or env("AWS_ENDPOINT_URL"),
                   help="overair's API (env OVERAIR_ENDPOINT); omit for AWS")
    p.add_argument("--region", default=env("AWS_DEFAULT_REGION") or env("AWS_REGION") or "us-east-1")
    p.add_argument("--count", type=int, default=3, help="devices to register")
    p.add_argument("--prefix", default="bulk-example-", help="thing names are PREFIX<n>")
    p.add_argument("--bucket", default="bulk-example-input")
    p.add_argument("--out", type=Path, default=Path("bulk-devices"))
    return p.parse_args()


def device_key_and_csr() -> tuple[bytes, str]:
    """What a device makes in the factory: a key it keeps and a CSR for it."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device")]))
           .sign(key, hashes.SHA256()))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return pem, csr.public_bytes(serialization.Encoding.PEM).decode()


def registration_role(iam: Any, bucket: str) -> str:
    """A role iot.amazonaws.com may assume, allowed to read the input files."""
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                     "Principal": {"Service": "iot.amazonaws.com"}}]}
    try:
        arn: str = iam.create_role(RoleName=ROLE, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "EntityAlreadyExists":
            raise
        arn = iam.get_role(RoleName=ROLE)["Role"]["Arn"]
    iam.put_role_policy(RoleName=ROLE, PolicyName="read-input", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject",
                                                "Resource": f"arn:aws:s3:::{bucket}/*"}]}))
    return arn


def report(iot: Any, s3: Any, task: str, kind: str) -> list[dict[str, Any]]:
    """A report's lines. overair's links are s3://bucket/key (read with GetObject);
    AWS's are pre-signed HTTPS URLs."""
    lines: list[dict[str, Any]] = []
    for link in iot.list_thing_registration_task_reports(taskId=task, reportType=kind)["resourceLinks"]:
        bucket, _, key = link.removeprefix("s3://").partition("/")
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        lines += [json.loads(line) for line in body.splitlines() if line.strip()]
    return lines


def main() -> int:
    args = parse_args()
    session = boto3.session.Session(region_name=args.region)
    iot, s3, iam = (session.client(name, endpoint_url=args.endpoint_url) for name in ("iot", "s3", "iam"))

    iot.create_thing_group(thingGroupName="bulk-example-fleet")
    try:
        s3.create_bucket(Bucket=args.bucket)
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    role_arn = registration_role(iam, args.bucket)

    keys: dict[str, bytes] = {}
    lines = []
    for n in range(args.count):
        name = f"{args.prefix}{n}"
        keys[name], csr = device_key_and_csr()
        lines.append(json.dumps({"ThingName": name, "SerialNumber": str(n), "CSR": csr}))
    s3.put_object(Bucket=args.bucket, Key="devices.json", Body=("\n".join(lines) + "\n").encode())

    task = iot.start_thing_registration_task(templateBody=json.dumps(TEMPLATE), inputFileBucket=args.bucket,
                                             inputFileKey="devices.json", roleArn=role_arn)["taskId"]
    print(f"task {task} started")
    while (described := iot.describe_thing_registration_task(taskId=task))["status"] in ("InProgress",
                                                                                          "Cancelling"):
        time.sleep(0.5)
    print(f"task {task} {described['status']}: {described['successCount']} registered, "
          f"{described['failureCount']} failed {described.get('message', '')}")

    for line in report(iot, s3, task, "ERRORS"):
        print(f"line {line['referenceId']}: {line['errorCode']}: {line['errorMessage']}")
    for line in report(iot, s3, task, "RESULTS"):
        thing = line["response"]["resourceArns"]["thing"].rpartition("/")[2]
        folder = args.out / thing
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "device.crt").write_text(line["response"]["certificatePem"])
        (folder / "device.key").write_bytes(keys[thing])
        print(f"{thing}: certificate and key in {folder}")
    return 0 if described["status"] == "Completed" and described["failureCount"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
