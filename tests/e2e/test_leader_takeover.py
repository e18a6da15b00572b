"""Work a killed server process left half done is taken over by the new scheduler leader
(server/jobs/claims.py), without anyone restarting: an OTA update it was creating is
created, a registration task it was running is Failed (as a restart fails it).

Both are caught in the middle deterministically: the object store (SeaweedFS) is paused
with SIGSTOP while the first process reads from it, so its work is held there when it is
SIGKILLed; the store resumes once the second process leads."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from overair.core.versions import Version
from overair.server.bootstrap import DEV_PROFILE
from overair.server.jobs.claims import AdvisoryClaims, LocalClaims, claim_key
from overair.server.jobs.leader import LOCK_KEY, postgres_conninfo
from overair.sim.firmware import make_firmware
from tests.e2e.conftest import BUCKET
from tests.e2e.ota_helpers import wait_for
from tests.e2e.test_s3_backend import s3_settings
from tests.multi_server import ServerProcess, server_cluster
from tests.postgres_harness import PostgresCluster
from tests.seaweedfs_harness import SeaweedS3


@contextmanager
def paused(seaweedfs: SeaweedS3) -> Iterator[None]:
    os.kill(seaweedfs.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(seaweedfs.process.pid, signal.SIGCONT)


@pytest.fixture
def cluster(tmp_path: Path, postgres: PostgresCluster, seaweedfs: SeaweedS3) -> Iterator[list[ServerProcess]]:
    toml = s3_settings(seaweedfs, seaweedfs.new_bucket(), tmp_path / "s3.secret")
    with server_cluster(tmp_path, postgres.new_database(), toml) as servers:
        s3 = servers[0].client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        yield servers


def _leads(server: ServerProcess) -> bool:
    return "scheduler leadership taken" in server.log.read_text(errors="replace")


def test_claims_are_exclusive_and_end_with_their_holder(postgres: PostgresCluster) -> None:
    conninfo = postgres_conninfo(postgres.new_database())
    assert conninfo is not None
    first, second = AdvisoryClaims(conninfo), AdvisoryClaims(conninfo)
    held = first.take("ota", "u1")
    assert held is not None
    assert second.take("ota", "u1") is None  # another session (process) holds it
    other = second.take("ota", "u2")
    assert other is not None
    held.release()  # the session ends: as when its process dies
    again = second.take("ota", "u1")
    assert again is not None
    for claim in (other, again):
        claim.release()
    local = LocalClaims()
    one = local.take("registration", "t")
    assert one is not None
    assert local.take("registration", "t") is None
    one.release()
    assert local.take("registration", "t") is not None
    assert claim_key("ota", "u1") != claim_key("registration", "u1")
    assert LOCK_KEY not in {
        claim_key("ota", "u1"), claim_key("registration", "u1")}


def test_an_ota_update_a_killed_process_was_creating_is_created_by_the_new_leader(
        cluster: list[ServerProcess], seaweedfs: SeaweedS3) -> None:
    first, second = cluster
    assert _leads(first)
    assert not _leads(second)
    iot = second.client("iot")
    things = [iot.create_thing(thingName=f"takeover-{i}")["thingArn"] for i in range(3)]
    image = make_firmware(Version(2, 0, 0), 50_000, seed="takeover")
    version = second.client("s3").put_object(Bucket=BUCKET, Key="takeover.bin", Body=image)["VersionId"]
    with paused(seaweedfs):
        first.client("iot").create_ota_update(
            otaUpdateId="takeover", targets=things, protocols=["MQTT"],
            roleArn=f"arn:aws:iam::{first.settings.account_id}:role/overair-ota",
            files=[{"fileName": "/fw.bin",
                    "fileLocation": {"s3Location": {"bucket": BUCKET, "key": "takeover.bin",
                                                    "version": version}},
                    "codeSigning": {"startSigningJobParameter": {"signingProfileName": DEV_PROFILE}}}])

        def status() -> str:
            return str(iot.get_ota_update(otaUpdateId="takeover")["otaUpdateInfo"]["otaUpdateStatus"])

        # The first process works on it (and waits for the paused store): the second,
        # not leading, leaves it alone.
        wait_for(lambda: status() == "CREATE_IN_PROGRESS", 30, "the first process to start creating it")
        first.kill()
        wait_for(lambda: _leads(second), 30, "the second process to lead")
        assert status() == "CREATE_IN_PROGRESS"
    wait_for(lambda: status() == "CREATE_COMPLETE", 60, "the new leader to create the update")
    executions = iot.list_job_executions_for_job(jobId="AFR_OTA-takeover")["executionSummaries"]
    assert sorted(e["thingArn"] for e in executions) == sorted(things)
    assert {e["jobExecutionSummary"]["status"] for e in executions} == {"QUEUED"}
    log = second.log.read_text(errors="replace")
    assert log.count("OTA update takeover created") == 1


def _csr_lines(count: int) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "factory")]))
           .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())
    return "\n".join(json.dumps({"ThingName": f"bulk-{i}", "CSR": csr}) for i in range(count)).encode()


TEMPLATE = json.dumps({
    "Parameters": {"ThingName": {"Type": "String"}, "CSR": {"Type": "String"}},
    "Resources": {"thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "ThingName"}}},
                  "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {
                      "CertificateSigningRequest": {"Ref": "CSR"}, "Status": "Active"}}}})


def test_a_registration_task_a_killed_process_was_running_is_failed_by_the_new_leader(
        cluster: list[ServerProcess], seaweedfs: SeaweedS3) -> None:
    first, second = cluster
    iam = first.client("iam")
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                     "Principal": {"Service": "iot.amazonaws.com"}}]}
    role = iam.create_role(RoleName="bulk", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    iam.put_role_policy(RoleName="bulk", PolicyName="read", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject",
                                                "Resource": f"arn:aws:s3:::{BUCKET}/*"}]}))
    first.client("s3").put_object(Bucket=BUCKET, Key="bulk.json", Body=_csr_lines(200))
    iot = second.client("iot")
    task = first.client("iot").start_thing_registration_task(
        templateBody=TEMPLATE, inputFileBucket=BUCKET, inputFileKey="bulk.json", roleArn=role)["taskId"]
    with paused(seaweedfs):
        # Held by the paused store: reading the input or writing the reports (both before
        # the task's end is recorded).
        assert iot.describe_thing_registration_task(taskId=task)["status"] == "InProgress"
        first.kill()
        wait_for(lambda: _leads(second), 30, "the second process to lead")
        described = wait_for(
            lambda: (d := iot.describe_thing_registration_task(taskId=task))["status"] != "InProgress" and d,
            30, "the new leader to end the task")
    assert described["status"] == "Failed"
    assert "interrupted by a server restart" in described["message"]
