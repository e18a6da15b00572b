"""Bulk registration at fleet size (issue 20, item 2): N devices, each a line with its own
ECDSA P-256 CSR, registered by one StartThingRegistrationTask (thing, certificate signed
from the CSR and activated, attachment, thing group) with the server's default limits.
The slow suite runs the issue's target, 100,000 devices within 10 minutes on the 2-core
machine; the default run the same scenario with 2,000. Afterwards every device is in the
registry as the template says (counted in the database), and the first and the last
device connect with their certificate and may use their thing's Jobs topics."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func, select

from overair.server.storage.schema import DeviceCertificate, ThingGroupMember, ThingPrincipal
from tests.e2e.test_bulk_registration import _answers_jobs, _bundle, _csr
from tests.server_harness import RunningServer, running_server

BUCKET = "fleet-scale"
GROUP = "fleet-scale"
TARGET_SECONDS = 600.0  # the target for 100,000 devices: the task's deadline here
TEMPLATE = json.dumps({
    "Parameters": {"ThingName": {"Type": "String"}, "CSR": {"Type": "String"}},
    "Resources": {
        "thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "ThingName"},
                                                             "ThingGroups": [GROUP]}},
        "certificate": {"Type": "AWS::IoT::Certificate",
                        "Properties": {"CertificateSigningRequest": {"Ref": "CSR"}, "Status": "ACTIVE"}}}})


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[RunningServer]:
    with running_server(tmp_path / "data") as running:
        yield running


def _role(srv: RunningServer) -> str:
    iam = srv.client("iam")
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                     "Principal": {"Service": "iot.amazonaws.com"}}]}
    arn: str = iam.create_role(RoleName="fleet-scale",
                               AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    iam.put_role_policy(RoleName="fleet-scale", PolicyName="read", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject",
                                                "Resource": f"arn:aws:s3:::{BUCKET}/*"}]}))
    return arn


def _register(srv: RunningServer, tmp_path: Path, count: int) -> None:
    iot, s3 = srv.client("iot"), srv.client("s3")
    iot.create_thing_group(thingGroupName=GROUP)
    s3.create_bucket(Bucket=BUCKET)
    role = _role(srv)
    keys: dict[int, ec.EllipticCurvePrivateKey] = {}
    out = io.StringIO()
    for i in range(count):  # each device's own key and CSR, made in the factory
        key = ec.generate_private_key(ec.SECP256R1())
        if i in (0, count - 1):
            keys[i] = key
        out.write(json.dumps({"ThingName": f"fleet-{i}", "CSR": _csr(key, f"dev-{i}")}) + "\n")
    lines = out.getvalue()
    s3.upload_fileobj(io.BytesIO(lines.encode()), BUCKET, "devices.json")  # multipart past 16 MiB
    del lines
    task = iot.start_thing_registration_task(templateBody=TEMPLATE, inputFileBucket=BUCKET,
                                             inputFileKey="devices.json", roleArn=role)["taskId"]
    deadline = time.monotonic() + TARGET_SECONDS
    while (described := iot.describe_thing_registration_task(taskId=task))["status"] == "InProgress":
        assert time.monotonic() < deadline, f"{described['successCount']} of {count} after {TARGET_SECONDS} s"
        time.sleep(0.5)
    assert (described["status"], described["successCount"], described["failureCount"]) == \
        ("Completed", count, 0), described.get("message")
    with srv.server.db.reading() as s:
        members = s.scalar(select(func.count()).select_from(ThingGroupMember)
                           .where(ThingGroupMember.group_name == GROUP))
        attached = s.scalar(select(func.count()).select_from(ThingPrincipal).join(
            DeviceCertificate, DeviceCertificate.arn == ThingPrincipal.principal)
            .where(DeviceCertificate.status == "ACTIVE"))
    assert (members, attached) == (count, count)
    pems: dict[int, str] = {}
    for link in iot.list_thing_registration_task_reports(taskId=task, reportType="RESULTS")["resourceLinks"]:
        body = s3.get_object(Bucket=BUCKET, Key=link.split("/", 3)[3])["Body"].read()
        for line in body.decode().splitlines():
            result = json.loads(line)
            if int(result["referenceId"]) in keys:
                pems[int(result["referenceId"])] = result["response"]["certificatePem"]
    for i, key in keys.items():
        assert _answers_jobs(srv, _bundle(srv, tmp_path / f"fleet-{i}", key, pems[i]), f"fleet-{i}")


def test_2000_devices_are_registered_by_one_task(srv: RunningServer, tmp_path: Path) -> None:
    _register(srv, tmp_path, 2_000)


@pytest.mark.slow
def test_100000_devices_are_registered_by_one_task_within_10_minutes(srv: RunningServer,
                                                                     tmp_path: Path) -> None:
    _register(srv, tmp_path, 100_000)
