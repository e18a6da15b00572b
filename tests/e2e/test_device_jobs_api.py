"""The Jobs data-plane API over HTTPS for devices that poll (iot-jobs-data), called with
unmodified boto3 exactly as against AWS IoT: no SigV4, the device's X.509 certificate
(mutual TLS), the fleet CA as the trust anchor. Threat ids: N4 unauthorized device."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pytest
from botocore import UNSIGNED
from botocore.exceptions import ClientError, ConnectionClosedError, SSLError
from sqlalchemy import select

from overair.server.storage.schema import AuditEntry
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
    assert stale.value.response["Error"]["Code"] in (
        "InvalidStateTransitionException",
        "TerminalStateException",
    )
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
