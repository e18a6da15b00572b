"""What one device can make the server do and write (issue 12, finding 11), against the
real server and Mosquitto: a device flooding its own topics is throttled with AWS's
errors, the database grows by a bounded amount, the flood appears in the audit log as
counts, and other devices keep being served meanwhile.

The server runs with the default budgets (`Limits`) and a one-second audit interval, so
that the counts are written while the test waits (the default interval is a minute).
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pytest
from botocore import UNSIGNED
from botocore.exceptions import ClientError
from sqlalchemy import func, select

from overair.core.streamcodec import GetStreamRequest, decode_data_block, encode_get_stream
from overair.core.versions import Version
from overair.server.storage.schema import AuditEntry
from overair.sim.firmware import make_firmware
from tests.e2e.ota_helpers import create_ota, wait_for
from tests.e2e.test_server_security import Device
from tests.server_harness import RunningServer, running_server

BUCKET = "firmware"
FLOOD = 20_000  # messages: half job updates, half stream requests
INTERVAL = 1.0  # the audit interval of this module's server (seconds)
# What the flood may add to the database, whatever the machine's speed: per (device,
# action, outcome) group at most two audit rows per interval (the first refusal, then one
# count), and the flood's messages fall into at most four groups (updates throttled,
# stream requests throttled, bogus updates rejected, and one spare); nothing else is
# written per message (valid progress updates rewrite the execution's row in place).
MAX_GROUPS = 4
MAX_GROWTH_BYTES = 512 * 1024  # 20,000 messages: measured 4 KiB (8 rows)


def _server(data_dir: Path) -> AbstractContextManager[RunningServer]:
    return running_server(data_dir, limits={"device_audit_interval_seconds": INTERVAL})


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with _server(tmp_path_factory.mktemp("server")) as running:
        s3 = running.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        yield running


def _audit_rows(srv: RunningServer, principal: str) -> list[AuditEntry]:
    with srv.server.db.reading() as s:
        return list(
            s.scalars(select(AuditEntry).where(AuditEntry.principal == principal).order_by(AuditEntry.seq))
        )


def _database_bytes(srv: RunningServer) -> int:
    """Bytes of pages in use by the database as it stands (SQLite; committed WAL frames
    included: a reader sees them)."""
    with contextlib.closing(sqlite3.connect(srv.settings.paths.database)) as connection:
        pages, free, size = (
            connection.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("page_count", "freelist_count", "page_size")
        )
    return int((pages - free) * size)


def _throttled_count(rows: list[AuditEntry]) -> int:
    return sum(int(row.detail.get("count", 1)) for row in rows if row.decision == "Throttled")


def test_device_flood_is_throttled_bounded_in_the_database_and_counted(
    srv: RunningServer, tmp_path: Path
) -> None:
    iot = srv.client("iot")
    names = ["flooder", "neighbour"]
    bundles = {name: srv.provision(name, tmp_path / name) for name in names}
    info = create_ota(
        srv,
        "flood",
        [iot.describe_thing(thingName=n)["thingArn"] for n in names],
        make_firmware(Version(2, 0, 0), 40_000, seed="flood"),
    )
    assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info.get("errorInfo")
    job = "AFR_OTA-flood"
    stream = json.loads(iot.get_job_document(jobId=job)["document"])["afr_ota"]["streamname"]
    flooder, neighbour = (
        Device(srv, bundles["flooder"], "flooder"),
        Device(srv, bundles["neighbour"], "neighbour"),
    )
    try:
        assert flooder.connect()
        assert neighbour.connect()
        flooder.subscribe("$aws/things/flooder/#")
        neighbour.subscribe("$aws/things/neighbour/#")
        time.sleep(0.3)
        rows_before = len(_audit_rows(srv, "thing/flooder"))
        bytes_before = _database_bytes(srv)

        block = encode_get_stream(GetStreamRequest("rdy", 0, 1024, 0, b"\xff", 8, None))
        messages = [
            (
                f"$aws/things/flooder/jobs/{job}/update",
                json.dumps({"status": "IN_PROGRESS", "statusDetails": {"receive": f"{i}/40"}}).encode(),
            )
            if i % 4 == 0
            else (f"$aws/things/flooder/jobs/{job}/update", b'{"status": "BOGUS"}')
            if i % 4 == 1
            else (f"$aws/things/flooder/streams/{stream}/get/cbor", block)
            for i in range(FLOOD)
        ]

        def flood() -> None:
            for topic, payload in messages:
                flooder.client.publish(topic, payload, qos=0)

        flooding = threading.Thread(target=flood)
        started = time.monotonic()
        flooding.start()
        # Meanwhile, another device asks for its job and its blocks and is answered.
        neighbour.client.publish(
            "$aws/things/neighbour/jobs/$next/get", json.dumps({"clientToken": "n"}), qos=1
        )
        assert neighbour.wait_for("/jobs/$next/get/accepted", timeout=30), (
            "the neighbour's job request went unanswered"
        )
        neighbour.client.publish(f"$aws/things/neighbour/streams/{stream}/get/cbor", block, qos=1)
        data = neighbour.wait_for(f"/streams/{stream}/data/cbor", timeout=30)
        assert data, "the neighbour got no blocks during the flood"
        assert decode_data_block(data[0][1]).file_id == 0
        flooding.join(60)
        assert not flooding.is_alive()

        # The flood was refused as AWS refuses it ...
        throttled = wait_for(
            lambda: [
                m for m in flooder.messages if m[0].endswith("/rejected") and b"RequestThrottled" in m[1]
            ],
            30,
            "RequestThrottled replies",
        )
        assert json.loads(throttled[0][1])["code"] == "RequestThrottled"
        assert wait_for(
            lambda: [m for m in flooder.messages if m[0].endswith(f"{stream}/rejected/cbor")],
            30,
            "stream refusals",
        )

        # ... and counted in the audit log once the service has drained it.
        def settled() -> list[AuditEntry] | None:
            first = _audit_rows(srv, "thing/flooder")
            time.sleep(2.5)  # more than two audit intervals
            second = _audit_rows(srv, "thing/flooder")
            return second if len(second) == len(first) and _throttled_count(second) else None

        rows = wait_for(settled, 90, "the flood's audit counts")[rows_before:]
        elapsed = time.monotonic() - started  # the flood arrived within this
        intervals = math.ceil(elapsed / INTERVAL) + 1
        groups = {(row.action, row.decision, row.detail.get("reason")) for row in rows}
        assert len(groups) <= MAX_GROUPS, groups
        assert len(rows) <= 2 * len(groups) * intervals, f"{len(rows)} audit rows for {FLOOD} messages"
        assert _database_bytes(srv) - bytes_before <= MAX_GROWTH_BYTES
        counted = _throttled_count(rows)
        actions = {row.action for row in rows if row.decision == "Throttled"}
        assert actions == {"iot:UpdateJobExecution", "iot:GetStream"}
        rejected = [row for row in rows if row.decision == "Rejected"]
        assert rejected, "the bogus updates within the budget are audited"
        assert {row.detail.get("code") or row.detail.get("reason") for row in rejected} == {"InvalidRequest"}
        # Of each kind, at most a burst plus the refill for the time the flood lasted got
        # through; the rest was refused unprocessed.
        limits = srv.settings.limits
        for action, sent, burst, rate in (
            (
                "iot:UpdateJobExecution",
                FLOOD // 2,
                limits.device_job_updates_burst,
                limits.device_job_updates_per_second,
            ),
            (
                "iot:GetStream",
                FLOOD // 2,
                limits.device_stream_requests_burst,
                limits.device_stream_requests_per_second,
            ),
        ):
            refused = _throttled_count([row for row in rows if row.action == action])
            assert sent - refused <= burst + rate * elapsed, (
                f"{action}: {sent - refused} of {sent} got through"
            )
        assert counted >= FLOOD // 2, f"only {counted} of {FLOOD} messages were throttled"
        # The device's execution is intact: only its own valid updates applied.
        execution = iot.describe_job_execution(jobId=job, thingName="flooder")["execution"]
        assert execution["status"] == "IN_PROGRESS"
    finally:
        flooder.close()
        neighbour.close()


def test_progress_reports_cannot_use_up_the_budget_of_a_state_change(
    srv: RunningServer, tmp_path: Path
) -> None:
    """A device reporting progress faster than its job-update budget is throttled on
    progress only: its `self_test: ready` report right after is still applied (a
    throttled `ready` once made agents roll back good updates and download them again)."""
    iot = srv.client("iot")
    srv.provision("reporter", tmp_path / "reporter")
    arn = iot.describe_thing(thingName="reporter")["thingArn"]
    info = create_ota(srv, "reporter", [arn], make_firmware(Version(2, 0, 0), 8192, seed="reporter"))
    assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info.get("errorInfo")
    job = "AFR_OTA-reporter"
    device = Device(srv, tmp_path / "reporter", "reporter")
    try:
        assert device.connect()
        device.subscribe(f"$aws/things/reporter/jobs/{job}/update/accepted")
        device.subscribe(f"$aws/things/reporter/jobs/{job}/update/rejected")
        time.sleep(0.3)
        update = f"$aws/things/reporter/jobs/{job}/update"
        for i in range(1000):
            device.client.publish(update, json.dumps({"status": "IN_PROGRESS",
                                                      "statusDetails": {"receive": f"{i}/1000"}}), qos=0)
        device.client.publish(update, json.dumps({"status": "IN_PROGRESS", "clientToken": "ready-1",
                                                  "statusDetails": {"self_test": "ready",
                                                                    "updatedBy": "0x10000"}}), qos=1)

        def answered() -> tuple[str, dict[str, Any]] | None:
            for topic, payload in list(device.messages):
                body = json.loads(payload)
                if body.get("clientToken") == "ready-1":
                    return topic, body
            return None

        topic, body = wait_for(answered, 30, "the answer to the self_test report")
        assert topic.endswith("/update/accepted"), body
        assert any(b"RequestThrottled" in m[1] for m in device.messages), "the flood was not throttled"
        execution = iot.describe_job_execution(jobId=job, thingName="reporter")["execution"]
        assert execution["statusDetails"]["detailsMap"]["self_test"] == "ready"
    finally:
        device.close()


def _jobs_client(srv: RunningServer, bundle: Path) -> Any:
    config = botocore.config.Config(
        signature_version=UNSIGNED,
        retries={"total_max_attempts": 1},  # no retries: every refusal is seen
        client_cert=(str(bundle / "device.crt"), str(bundle / "device.key")),
    )
    return boto3.session.Session(region_name=srv.clients.region).client(
        "iot-jobs-data",
        endpoint_url=f"https://localhost:{srv.settings.download_port}",
        verify=str(srv.settings.paths.fleet_ca_cert),
        config=config,
    )


def test_device_flood_https_jobs_api_is_throttled_with_429_and_counted(
    srv: RunningServer, tmp_path: Path
) -> None:
    bundle = srv.provision("https-flooder", tmp_path / "https-flooder")
    jobs = _jobs_client(srv, bundle)
    codes: list[str] = []
    started = time.monotonic()
    for _ in range(200):
        try:
            jobs.get_pending_job_executions(thingName="https-flooder")
            codes.append("ok")
        except ClientError as exc:
            status = exc.response["ResponseMetadata"]["HTTPStatusCode"]
            codes.append(f"{exc.response['Error']['Code']} {status}")
    elapsed = time.monotonic() - started
    limits = srv.settings.limits
    burst = limits.device_https_calls_burst
    assert codes[:burst] == ["ok"] * burst
    assert set(codes[burst:]) <= {"ok", "ThrottlingException 429"}
    refused = codes.count("ThrottlingException 429")
    # Whatever the machine's speed: no more than the burst and the refill got through.
    assert codes.count("ok") <= burst + limits.device_https_calls_per_second * elapsed + 1
    assert refused > 0
    (serial,) = {
        row.principal
        for row in wait_for(
            lambda: [row for row in _all_throttled(srv) if row.action == "iot-jobs-data:*"], 30, "the count"
        )
    }
    wait_for(
        lambda: _throttled_count([r for r in _all_throttled(srv) if r.principal == serial]) == refused,
        30,
        "all refusals counted",
    )
    # One count per interval the flood lasted, not one row per refusal.
    assert len([r for r in _all_throttled(srv) if r.principal == serial]) <= elapsed / 1.0 + 2


def _all_throttled(srv: RunningServer) -> list[AuditEntry]:
    with srv.server.db.reading() as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.decision == "Throttled")))


def test_audit_rows_stay_few_when_a_device_repeats_a_refused_request(
    srv: RunningServer, tmp_path: Path
) -> None:
    """Within its budget, a device repeating a request that is refused (here: updates
    to an execution it does not have) adds one row, then one count per interval."""
    srv.provision("repeater", tmp_path / "repeater")
    devices = srv.server.devices
    with srv.server.db.reading() as s:
        before = s.scalar(select(func.count()).select_from(AuditEntry)) or 0
    for _ in range(25):
        (reply,) = devices.handle(
            "$aws/things/repeater/jobs/no-such-job/update", b'{"status": "IN_PROGRESS"}'
        )
        assert reply.topic.endswith("/rejected")
    rows = wait_for(
        lambda: [r for r in _audit_rows(srv, "thing/repeater") if r.detail.get("count")],
        30,
        "the count of repeats",
    )
    every = _audit_rows(srv, "thing/repeater")
    assert [r.decision for r in every] == ["Rejected", "Rejected"]
    assert every[0].detail["code"] == "ResourceNotFound"
    assert rows[0].detail["count"] == 24
    with srv.server.db.reading() as s:
        assert (s.scalar(select(func.count()).select_from(AuditEntry)) or 0) - before <= 3


def test_https_progress_reports_cannot_use_up_the_budget_of_a_state_change(
    srv: RunningServer, tmp_path: Path
) -> None:
    """The same over the HTTPS Jobs API: after a flood of progress reports, most of
    them throttled, the device's SUCCEEDED is still applied."""
    iot = srv.client("iot")
    bundle = srv.provision("https-reporter", tmp_path / "https-reporter")
    arn = iot.describe_thing(thingName="https-reporter")["thingArn"]
    iot.create_job(jobId="https-reporter-job", targets=[arn], document=json.dumps({"step": 1}))
    jobs = _jobs_client(srv, bundle)
    jobs.start_next_pending_job_execution(thingName="https-reporter")
    codes = []
    for i in range(200):
        try:
            jobs.update_job_execution(thingName="https-reporter", jobId="https-reporter-job",
                                      status="IN_PROGRESS", statusDetails={"receive": f"{i}/200"})
            codes.append("ok")
        except ClientError as exc:
            codes.append(exc.response["Error"]["Code"])
    assert "ThrottlingException" in codes
    jobs.update_job_execution(thingName="https-reporter", jobId="https-reporter-job",
                              status="SUCCEEDED")
    execution = iot.describe_job_execution(jobId="https-reporter-job", thingName="https-reporter")
    assert execution["execution"]["status"] == "SUCCEEDED"
