"""The Jobs data-plane API over HTTPS for devices that poll (iot-jobs-data), called with
unmodified boto3 exactly as against AWS IoT: no SigV4, the device's X.509 certificate
(mutual TLS), the fleet CA as the trust anchor. Threat ids: N4 unauthorized device."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pytest
from botocore import UNSIGNED
from botocore.exceptions import ClientError, ConnectionClosedError, SSLError
from sqlalchemy import select

from overair.server.storage.schema import AuditEntry
from tests.device_https import device_request
from tests.e2e.conftest import ShiftableClock
from tests.pki_helpers import issue, make_ca
from tests.server_harness import RunningServer


def _jobs_client(srv: RunningServer, bundle: Path | None) -> Any:
    config = botocore.config.Config(
        signature_version=UNSIGNED,
        retries={"max_attempts": 1},
        client_cert=(str(bundle / "device.crt"), str(bundle / "device.key")) if bundle is not None else None,
    )
    return boto3.session.Session(region_name=srv.clients.region).client(
        "iot-jobs-data",
        endpoint_url=f"https://localhost:{srv.settings.download_port}",
        verify=str(srv.settings.paths.fleet_ca_cert),
        config=config,
    )


@pytest.fixture
def polling_device(srv: RunningServer, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[str, Path]:
    name = "poll-" + "".join(c if c.isalnum() else "-" for c in request.node.name)[-30:].strip("-")
    return name, srv.provision(name, tmp_path / name)


def test_device_polls_starts_and_finishes_a_job_over_https(
    srv: RunningServer, polling_device: tuple[str, Path]
) -> None:
    name, bundle = polling_device
    iot = srv.client("iot")
    iot.create_job(
        jobId=f"{name}-job",
        targets=[iot.describe_thing(thingName=name)["thingArn"]],
        document=json.dumps({"operation": "reboot"}),
    )
    jobs = _jobs_client(srv, bundle)
    pending = jobs.get_pending_job_executions(thingName=name)
    assert [j["jobId"] for j in pending["queuedJobs"]] == [f"{name}-job"]
    started = jobs.start_next_pending_job_execution(thingName=name, statusDetails={"step": "1"})["execution"]
    assert started["status"] == "IN_PROGRESS"
    assert json.loads(started["jobDocument"]) == {"operation": "reboot"}
    version = started["versionNumber"]
    updated = jobs.update_job_execution(
        thingName=name,
        jobId=f"{name}-job",
        status="SUCCEEDED",
        statusDetails={"result": "ok"},
        expectedVersion=version,
        includeJobExecutionState=True,
    )
    assert updated["executionState"]["status"] == "SUCCEEDED"
    with pytest.raises(ClientError) as stale:
        jobs.update_job_execution(
            thingName=name, jobId=f"{name}-job", status="FAILED", expectedVersion=version
        )
    # AWS: an update of an ended execution is an invalid state transition (UpdateJobExecution
    # has no TerminalStateException in the iot-jobs-data model); the version is checked first.
    assert stale.value.response["Error"]["Code"] == "InvalidStateTransitionException"
    described = jobs.describe_job_execution(thingName=name, jobId=f"{name}-job")["execution"]
    assert described["statusDetails"] == {"result": "ok"}
    # Polling devices are audited like MQTT ones: the update that ended the execution,
    # and the one refused after it.
    with srv.server.db.reading() as s:
        audited = [(e.decision, e.detail.get("status") or e.detail.get("code")) for e in s.scalars(
            select(AuditEntry).where(AuditEntry.principal == f"thing/{name}",
                                     AuditEntry.action == "iot:UpdateJobExecution"))]
    assert audited[0] == ("Accepted", "SUCCEEDED")
    assert audited[1][0] == "Rejected"
    assert (
        iot.describe_job_execution(jobId=f"{name}-job", thingName=name)["execution"]["status"] == "SUCCEEDED"
    )


def test_n4_jobs_api_needs_the_things_own_certificate(
    srv: RunningServer, polling_device: tuple[str, Path], tmp_path: Path
) -> None:
    name, _bundle = polling_device
    other = srv.provision(f"{name}-b", tmp_path / "other")
    with pytest.raises(ClientError) as anonymous:
        _jobs_client(srv, None).get_pending_job_executions(thingName=name)
    assert anonymous.value.response["Error"]["Code"] == "CertificateValidationException"
    with pytest.raises(ClientError) as foreign:
        _jobs_client(srv, other).get_pending_job_executions(thingName=name)
    assert foreign.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_n4_revoked_certificate_gets_nothing(srv: RunningServer, polling_device: tuple[str, Path]) -> None:
    name, bundle = polling_device
    iot = srv.client("iot")
    (principal,) = iot.list_thing_principals(thingName=name)["principals"]
    iot.update_certificate(certificateId=principal.rpartition("/")[2], newStatus="REVOKED")
    with pytest.raises(ClientError) as refused:
        _jobs_client(srv, bundle).get_pending_job_executions(thingName=name)
    assert refused.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_n4_certificate_from_another_ca_is_refused_by_tls(srv: RunningServer, tmp_path: Path) -> None:
    rogue = issue(make_ca("rogue fleet CA"), "rogue-device", client=True)
    rogue.write(tmp_path / "device.crt", tmp_path / "device.key")
    # The handshake fails (the server closes the connection): no HTTP answer at all.
    with pytest.raises((SSLError, ConnectionClosedError)):
        _jobs_client(srv, tmp_path).get_pending_job_executions(thingName="rogue-device")


def test_no_500_hostile_request_bodies_get_invalid_request(srv: RunningServer,
                                                           polling_device: tuple[str, Path]) -> None:
    """Issue 12, finding 10: bodies that answered 500 (JSON nested 1,000 deep, a step
    timeout of 10^400, `null`) are 400 InvalidRequestException; the device is served after."""
    name, bundle = polling_device
    iot = srv.client("iot")
    iot.create_job(jobId=f"{name}-job", targets=[iot.describe_thing(thingName=name)["thingArn"]],
                   document=json.dumps({"operation": "reboot"}))
    update = f"/things/{name}/jobs/{name}-job"
    deep = b"[" * 1000 + b"]" * 1000
    for method, path, body in [
        ("POST", update, deep),
        ("POST", update, b'{"status": "IN_PROGRESS", "statusDetails": {"a": ' + deep + b"}}"),
        ("POST", update, b'{"status": "IN_PROGRESS", "stepTimeoutInMinutes": 1' + b"0" * 400 + b"}"),
        ("POST", update, b'{"status": "IN_PROGRESS", "stepTimeoutInMinutes": 1e400}'),
        ("POST", update, b'{"status": "IN_PROGRESS", "stepTimeoutInMinutes": 99999999}'),
        ("POST", update, b'{"status": "IN_PROGRESS", "statusDetails": {"k": "\\ud800"}}'),
        ("POST", update, b"null"),
        ("PUT", f"/things/{name}/jobs/$next", b'{"statusDetails": {"bad key!": "v"}}'),
        ("PUT", f"/things/{name}/jobs/$next", b'{"statusDetails": ' + b'{"k": "v", ' * 50 + b"}"),
    ]:
        status, error = device_request(srv, bundle, method, path, body)
        assert (status, error.get("code")) == (400, "InvalidRequestException"), (body[:80], status, error)
    assert _jobs_client(srv, bundle).describe_job_execution(thingName=name, jobId=f"{name}-job")[
        "execution"]["status"] == "QUEUED"


def test_execution_number_and_include_job_document_over_https(srv: RunningServer,
                                                              polling_device: tuple[str, Path]) -> None:
    """Issue 13, items 6 and 8, on the HTTPS API: after a retry, DescribeJobExecution
    with executionNumber 1 returns #1 and without it the latest; includeJobDocument=false
    leaves the document out; UpdateJobExecution with executionNumber addresses that
    execution (#1 has ended: InvalidStateTransitionException; #5 does not exist:
    ResourceNotFoundException)."""
    name, bundle = polling_device
    iot = srv.client("iot")
    job = f"{name}-job"
    retry = {"criteriaList": [{"failureType": "FAILED", "numberOfRetries": 1}]}
    iot.create_job(jobId=job, targets=[iot.describe_thing(thingName=name)["thingArn"]],
                   document=json.dumps({"operation": "reboot"}), jobExecutionsRetryConfig=retry)
    jobs = _jobs_client(srv, bundle)
    jobs.start_next_pending_job_execution(thingName=name)
    jobs.update_job_execution(thingName=name, jobId=job, status="FAILED", statusDetails={"reason": "disk"})
    first = jobs.describe_job_execution(thingName=name, jobId=job, executionNumber=1)["execution"]
    assert (first["executionNumber"], first["status"]) == (1, "FAILED")
    assert first["statusDetails"] == {"reason": "disk"}
    latest = jobs.describe_job_execution(thingName=name, jobId=job)["execution"]
    assert (latest["executionNumber"], latest["status"]) == (2, "QUEUED")
    assert json.loads(latest["jobDocument"]) == {"operation": "reboot"}
    bare = jobs.describe_job_execution(thingName=name, jobId=job, includeJobDocument=False)["execution"]
    assert "jobDocument" not in bare
    for number, code in ((1, "InvalidStateTransitionException"), (5, "ResourceNotFoundException")):
        with pytest.raises(ClientError) as refused:
            jobs.update_job_execution(thingName=name, jobId=job, status="IN_PROGRESS", executionNumber=number)
        assert refused.value.response["Error"]["Code"] == code
    with pytest.raises(ClientError) as missing:
        jobs.describe_job_execution(thingName=name, jobId=job, executionNumber=5)
    assert missing.value.response["Error"]["Code"] == "ResourceNotFoundException"
    # The operator's DescribeJobExecution addresses executions the same way.
    asked: dict[str, int]
    for asked, number, status in (({"executionNumber": 1}, 1, "FAILED"),
                                  ({"executionNumber": 2}, 2, "QUEUED"), ({}, 2, "QUEUED")):
        seen = iot.describe_job_execution(jobId=job, thingName=name, **asked)["execution"]
        assert (seen["executionNumber"], seen["status"]) == (number, status)
    with pytest.raises(ClientError) as missing:
        iot.describe_job_execution(jobId=job, thingName=name, executionNumber=5)
    assert missing.value.response["Error"]["Code"] == "ResourceNotFoundException"
    done = jobs.update_job_execution(thingName=name, jobId=job, status="SUCCEEDED", executionNumber=2,
                                     includeJobExecutionState=True)
    assert done["executionState"]["status"] == "SUCCEEDED"


def test_start_next_step_timeout_times_the_execution_out_over_https(
        clocked_srv: RunningServer, clock: ShiftableClock, tmp_path: Path) -> None:
    """Issue 13, item 5, on the HTTPS API: StartNextPendingJobExecution's
    stepTimeoutInMinutes starts the step timer; not updated in time, the execution is
    TIMED_OUT (AWS's iot-jobs-data model)."""
    name = "poll-step-timeout"
    bundle = clocked_srv.provision(name, tmp_path / name)
    iot = clocked_srv.client("iot")
    iot.create_job(jobId=f"{name}-job", targets=[iot.describe_thing(thingName=name)["thingArn"]],
                   document=json.dumps({"operation": "reboot"}))
    jobs = _jobs_client(clocked_srv, bundle)
    started = jobs.start_next_pending_job_execution(thingName=name, stepTimeoutInMinutes=1)["execution"]
    assert started["status"] == "IN_PROGRESS"
    try:
        clock.offset += 61
        deadline = time.monotonic() + 10
        while jobs.describe_job_execution(thingName=name,
                                          jobId=f"{name}-job")["execution"]["status"] != "TIMED_OUT":
            assert time.monotonic() < deadline, "the step timer did not time the execution out"
            time.sleep(0.1)
    finally:
        clock.offset = 0.0


def test_an_execution_ended_over_https_notifies_the_device_mqtt_session(
    srv: RunningServer, polling_device: tuple[str, Path]
) -> None:
    """A device that ends its execution over HTTPS and listens on MQTT hears of its next
    job on notify-next, as when it ends it over MQTT."""
    from tests.e2e.test_server_security import Device  # the module's MQTT test device

    name, bundle = polling_device
    iot = srv.client("iot")
    arn = iot.describe_thing(thingName=name)["thingArn"]
    for job in ("first", "second"):
        iot.create_job(jobId=f"{name}-{job}", targets=[arn], document=json.dumps({"step": job}))
    device = Device(srv, bundle, name)
    try:
        assert device.connect()
        device.subscribe(f"$aws/things/{name}/jobs/notify-next")
        time.sleep(0.3)
        jobs = _jobs_client(srv, bundle)
        assert jobs.start_next_pending_job_execution(thingName=name)["execution"]["jobId"] == f"{name}-first"
        jobs.update_job_execution(thingName=name, jobId=f"{name}-first", status="SUCCEEDED")
        (message,) = device.wait_for("/jobs/notify-next", timeout=10)
        assert json.loads(message[1])["execution"]["jobId"] == f"{name}-second"
    finally:
        device.close()
