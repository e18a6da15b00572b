"""Rollout control end to end, with real agents on the real server: abort after the
failure threshold, timeout of a device gone silent, a CONTINUOUS job reaching a thing
added to the group later, and a job canceled in the middle of a download.

The server's clock can be moved forward (timeouts are minutes long in AWS's model);
agents, TLS and the broker keep real time.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from sqlalchemy import select

from overair.core.versions import Version
from overair.server.bootstrap import DEV_PROFILE
from overair.server.storage.schema import AuditEntry
from overair.sim.firmware import make_firmware
from overair.sim.fleet import Fleet
from tests.e2e.conftest import ShiftableClock
from tests.e2e.ota_helpers import create_ota, wait_for
from tests.e2e.test_server_security import Device
from tests.server_harness import RunningServer

V1, V2 = Version(1, 0, 0), Version(1, 1, 0)
SIZE = 32 * 1024
BUCKET = "firmware"
TERMINAL = {"SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT", "CANCELED", "REMOVED"}


def _bundles(
    srv: RunningServer, root: Path, names: list[str], group: str | None, ota_settings: str = ""
) -> list[Path]:
    factory = root / "factory.bin"
    factory.write_bytes(make_firmware(V1, SIZE, seed="factory"))
    bundles = []
    for name in names:
        bundle = srv.provision(name, root / name, group=group, factory_image=factory)
        if ota_settings:
            config = bundle / "agent.toml"
            text = config.read_text()
            config.write_text(text.replace("block_size = 4096\nblocks_per_request = 8\n", ota_settings))
        bundles.append(bundle)
    return bundles


def _ota(srv: RunningServer, ota_id: str, targets: list[str], size: int = SIZE,
         image_version: Version = V2, **extra: Any) -> str:
    info = create_ota(srv, ota_id, targets, make_firmware(image_version, size, seed=ota_id), **extra)
    assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info.get("errorInfo")
    return str(info["awsIotJobId"])


def _statuses(srv: RunningServer, job_id: str) -> dict[str, str]:
    summaries = srv.client("iot").list_job_executions_for_job(jobId=job_id)["executionSummaries"]
    return {s["thingArn"].rpartition("/")[2]: s["jobExecutionSummary"]["status"] for s in summaries}


def test_rollout_aborts_after_the_failure_threshold(clocked_srv: RunningServer, tmp_path: Path) -> None:
    """Three devices whose new image fails its self-test go first (staged rollout); the
    abort criterion fires and the healthy devices never receive the update."""
    iot = clocked_srv.client("iot")
    group = iot.create_thing_group(thingGroupName="abort-fleet")["thingGroupArn"]
    failing = [f"abort-a-{i}" for i in range(3)]
    healthy = [f"abort-b-{i}" for i in range(3)]
    bad = Fleet(
        _bundles(clocked_srv, tmp_path, failing, "abort-fleet"), self_test_hook=lambda _v: "watchdog fired"
    )
    good = Fleet(_bundles(clocked_srv, tmp_path, healthy, "abort-fleet"))
    with bad, good:
        assert bad.wait(lambda s: all(x.connected for x in s.values()), 30)
        assert good.wait(lambda s: all(x.connected for x in s.values()), 30)
        job_id = _ota(
            clocked_srv,
            "abort-1",
            [group],
            awsJobExecutionsRolloutConfig={"maximumPerMinute": 3},
            awsJobAbortConfig={
                "abortCriteriaList": [
                    {
                        "failureType": "FAILED",
                        "action": "CANCEL",
                        "thresholdPercentage": 50,
                        "minNumberOfExecutedThings": 3,
                    }
                ]
            },
        )
        job = wait_for(
            lambda: (j := iot.describe_job(jobId=job_id)["job"])["status"] == "CANCELED" and j,
            what="the abort",
        )
        assert job["reasonCode"] == "ABORTED_FAILED"
        statuses = _statuses(clocked_srv, job_id)
        assert {statuses[t] for t in failing} == {"FAILED"}
        # Never released, and counted: the abort canceled them (issue 15).
        assert {statuses[t] for t in healthy} == {"CANCELED"}
        assert job["jobProcessDetails"]["numberOfCanceledThings"] == len(healthy)
        assert bad.wait(lambda s: all(x.version == "1.0.0" for x in s.values()), 20)  # rolled back
        assert all(s.version == "1.0.0" and s.job_id is None for s in good.snapshots().values())


def test_a_device_gone_silent_times_out(
    clocked_srv: RunningServer, clock: ShiftableClock, tmp_path: Path
) -> None:
    iot = clocked_srv.client("iot")
    name = "silent-device"
    (bundle,) = _bundles(clocked_srv, tmp_path, [name], None)
    thing_arn = iot.describe_thing(thingName=name)["thingArn"]
    device = Device(clocked_srv, bundle, name)
    try:
        assert device.connect()
        device.subscribe(f"$aws/things/{name}/jobs/#")
        job_id = _ota(
            clocked_srv, "silent-1", [thing_arn], awsJobTimeoutConfig={"inProgressTimeoutInMinutes": 1}
        )
        device.client.publish(
            f"$aws/things/{name}/jobs/{job_id}/update",
            json.dumps({"status": "IN_PROGRESS", "statusDetails": {"receive": "1/8"}}),
            qos=1,
        )
        wait_for(lambda: _statuses(clocked_srv, job_id).get(name) == "IN_PROGRESS", what="IN_PROGRESS")
        device.messages.clear()
        clock.offset += 61  # ... and the device says nothing more
        wait_for(lambda: _statuses(clocked_srv, job_id).get(name) == "TIMED_OUT", 15, "TIMED_OUT")
        notified = device.wait_for("/jobs/notify-next")
        assert notified
        assert "execution" not in json.loads(notified[-1][1])  # nothing next for it
        late = json.dumps({"status": "SUCCEEDED", "statusDetails": {}, "clientToken": "late"})
        device.client.publish(f"$aws/things/{name}/jobs/{job_id}/update", late, qos=1)
        rejected = device.wait_for(f"/jobs/{job_id}/update/rejected")
        assert rejected
        assert b"InvalidStateTransition" in rejected[-1][1]
    finally:
        clock.offset = 0.0
        device.close()


def test_continuous_job_reaches_a_thing_added_to_the_group_later(
    clocked_srv: RunningServer, tmp_path: Path
) -> None:
    iot = clocked_srv.client("iot")
    group = iot.create_thing_group(thingGroupName="continuous-fleet")["thingGroupArn"]
    (bundle,) = _bundles(clocked_srv, tmp_path, ["late-comer"], None)  # not in the group yet
    job_id = _ota(clocked_srv, "continuous-1", [group], targetSelection="CONTINUOUS")
    with Fleet([bundle]) as fleet:
        assert fleet.wait(lambda s: all(x.connected for x in s.values()), 30)
        time.sleep(0.5)
        assert fleet.snapshots()["late-comer"].job_id is None
        iot.add_thing_to_thing_group(thingGroupName="continuous-fleet", thingName="late-comer")
        wait_for(
            lambda: _statuses(clocked_srv, job_id).get("late-comer") == "SUCCEEDED", what="the late comer"
        )
        assert fleet.snapshots()["late-comer"].version == "1.1.0"
    assert iot.describe_job(jobId=job_id)["job"]["status"] == "IN_PROGRESS"  # continuous jobs stay open


def test_continuous_job_is_not_given_to_a_joining_thing_whose_profile_cannot_take_the_file(
    clocked_srv: RunningServer,
) -> None:
    """CreateOTAUpdate refuses targets whose device profile cannot take the file; a thing
    joining a CONTINUOUS update's group later is checked the same way (issue 13, item 4):
    no execution a FreeRTOS device would ignore and leave QUEUED, and the refusal is
    audited; an overair agent joining gets the update."""
    iot = clocked_srv.client("iot")
    group = iot.create_thing_group(thingGroupName="big-fleet")["thingGroupArn"]
    agent = {"attributes": {"overair:deviceProfile": "overair-agent"}}
    iot.create_thing(thingName="big-agent", attributePayload=agent)
    iot.add_thing_to_thing_group(thingGroupName="big-fleet", thingName="big-agent")
    job_id = _ota(clocked_srv, "continuous-big", [group], size=5 * 1024 * 1024, targetSelection="CONTINUOUS")
    iot.create_thing(thingName="small-mcu")  # the default profile: FreeRTOS, files up to 4 MiB
    iot.create_thing(thingName="big-agent-2", attributePayload=agent)
    for thing in ("small-mcu", "big-agent-2"):
        iot.add_thing_to_thing_group(thingGroupName="big-fleet", thingName=thing)
    assert _statuses(clocked_srv, job_id) == {"big-agent": "QUEUED", "big-agent-2": "QUEUED"}
    with clocked_srv.server.db.reading() as s:
        refused = [e for e in s.scalars(select(AuditEntry).where(AuditEntry.decision == "Refused"))
                   if e.detail.get("thing") == "small-mcu"]
    assert len(refused) == 1
    assert refused[0].resource.endswith(f"job/{job_id}")
    assert "5242880 bytes" in refused[0].detail["reason"]


def test_job_canceled_during_a_download_stops_it(clocked_srv: RunningServer, tmp_path: Path) -> None:
    iot = clocked_srv.client("iot")
    name = "cancel-me"
    slow = "block_size = 1024\nblocks_per_request = 1\n"  # a slow download: one 1 KiB block at a time
    (bundle,) = _bundles(clocked_srv, tmp_path, [name], None, ota_settings=slow)
    thing_arn = iot.describe_thing(thingName=name)["thingArn"]
    started = threading.Event()
    fleet = Fleet([bundle], progress=lambda _t, _j, received, _total: started.set() if received else None)
    with fleet:
        assert fleet.wait(lambda s: all(x.connected for x in s.values()), 30)
        job_id = _ota(clocked_srv, "cancel-1", [thing_arn], size=512 * 1024)
        assert started.wait(30)
        iot.cancel_job(jobId=job_id, force=True, comment="wrong build")
        assert _statuses(clocked_srv, job_id)[name] == "CANCELED"
        assert fleet.wait(lambda s: s[name].job_id is None and s[name].phase == "idle", 20)
        snapshot = fleet.snapshots()[name]
        assert snapshot.version == "1.0.0"
        assert snapshot.blocks_received == 0  # the download was abandoned, not finished


def test_n1_create_ota_update_refuses_a_downgrade_unless_allowed(
    clocked_srv: RunningServer, tmp_path: Path
) -> None:
    iot = clocked_srv.client("iot")
    name = "downgrade-target"
    (bundle,) = _bundles(clocked_srv, tmp_path, [name], None)
    arn = iot.describe_thing(thingName=name)["thingArn"]
    job_id = _ota(clocked_srv, "installs-1-1-0", [arn])  # V2 = 1.1.0
    device = Device(clocked_srv, bundle, name)
    try:
        assert device.connect()
        device.client.publish(
            f"$aws/things/{name}/jobs/{job_id}/update", json.dumps({"status": "SUCCEEDED"}), qos=1
        )
        wait_for(lambda: _statuses(clocked_srv, job_id).get(name) == "SUCCEEDED", what="SUCCEEDED")
    finally:
        device.close()

    def attempt(ota_id: str, image_version: Version, **extra: Any) -> dict[str, Any]:
        return create_ota(
            clocked_srv, ota_id, [arn], make_firmware(image_version, SIZE, seed=ota_id), **extra
        )

    older = attempt("older-1-0-5", Version(1, 0, 5))
    assert older["otaUpdateStatus"] == "CREATE_FAILED"
    assert f"{name} runs 1.1.0" in older["errorInfo"]["message"]
    # The version it runs is not a downgrade: the update is made, and leaves it out
    # (issue 15: re-sending a version reaches only the targets that do not run it).
    same = attempt("same-1-1-0", V2)
    assert same["otaUpdateStatus"] == "CREATE_COMPLETE"
    assert _statuses(clocked_srv, same["awsIotJobId"]) == {}
    assert iot.describe_job(jobId=same["awsIotJobId"])["job"]["status"] == "COMPLETED"
    allowed = attempt(
        "older-allowed", Version(1, 0, 5), additionalParameters={"overair:allowDowngrade": "true"}
    )
    assert allowed["otaUpdateStatus"] == "CREATE_COMPLETE"
    assert attempt("newer-1-2-0", Version(1, 2, 0))["otaUpdateStatus"] == "CREATE_COMPLETE"


def _report(srv: RunningServer, bundle: Path, name: str, job_id: str, status: str) -> None:
    device = Device(srv, bundle, name)
    try:
        assert device.connect()
        topic = f"$aws/things/{name}/jobs/{job_id}/update"
        device.client.publish(topic, json.dumps({"status": status}), qos=1)
        wait_for(lambda: _statuses(srv, job_id).get(name) == status, what=status)
    finally:
        device.close()


def test_resending_a_version_to_a_group_reaches_only_the_members_that_do_not_run_it(
    clocked_srv: RunningServer, tmp_path: Path
) -> None:
    """Retrying the devices that failed an update is one CreateOTAUpdate to the same group
    (issue 15): the member that installed it is left out, the one that failed and the one
    that never got it are targeted again; nothing is refused as a downgrade."""
    iot = clocked_srv.client("iot")
    group = iot.create_thing_group(thingGroupName="resend-fleet")["thingGroupArn"]
    names = ["resend-ok", "resend-failed", "resend-offline"]
    bundles = _bundles(clocked_srv, tmp_path, names, "resend-fleet")
    job_id = _ota(clocked_srv, "resend-1", [group])
    _report(clocked_srv, bundles[0], names[0], job_id, "SUCCEEDED")
    _report(clocked_srv, bundles[1], names[1], job_id, "FAILED")
    again = create_ota(clocked_srv, "resend-2", [group], make_firmware(V2, SIZE, seed="resend-1"))
    assert again["otaUpdateStatus"] == "CREATE_COMPLETE", again.get("errorInfo")
    assert _statuses(clocked_srv, again["awsIotJobId"]) == {names[1]: "QUEUED", names[2]: "QUEUED"}
    details = iot.describe_job(jobId=again["awsIotJobId"])["job"]["jobProcessDetails"]
    assert details["numberOfQueuedThings"] == 2


def test_ota_update_from_an_existing_stream(clocked_srv: RunningServer, tmp_path: Path) -> None:
    """fileLocation.stream: the file of a stream created beforehand, under its own file id."""
    iot, s3 = clocked_srv.client("iot"), clocked_srv.client("s3")
    name = "stream-sourced"
    (bundle,) = _bundles(clocked_srv, tmp_path, [name], None)
    version = s3.put_object(Bucket=BUCKET, Key="streamed.bin", Body=make_firmware(V2, SIZE, seed="streamed"))
    iot.create_stream(
        streamId="my-stream",
        roleArn=f"arn:aws:iam::{clocked_srv.settings.account_id}:role/overair-ota",
        files=[
            {
                "fileId": 2,
                "s3Location": {"bucket": BUCKET, "key": "streamed.bin", "version": version["VersionId"]},
            }
        ],
    )
    with Fleet([bundle]) as fleet:
        assert fleet.wait(lambda s: all(x.connected for x in s.values()), 30)
        iot.create_ota_update(
            otaUpdateId="from-stream",
            targets=[iot.describe_thing(thingName=name)["thingArn"]],
            protocols=["MQTT"],
            roleArn=f"arn:aws:iam::{clocked_srv.settings.account_id}:role/overair-ota",
            files=[
                {
                    "fileName": "/fw.bin",
                    "fileLocation": {"stream": {"streamId": "my-stream", "fileId": 2}},
                    "codeSigning": {"startSigningJobParameter": {"signingProfileName": DEV_PROFILE}},
                }
            ],
        )
        assert fleet.wait(lambda s: s[name].version == "1.1.0" and not s[name].trial, 60), fleet.snapshots()
    document = json.loads(iot.get_job_document(jobId="AFR_OTA-from-stream")["document"])
    assert document["afr_ota"]["streamname"] == "my-stream"
    assert document["afr_ota"]["files"][0]["fileid"] == 2


def test_maintenance_window_holds_a_job_until_it_opens(
    clocked_srv: RunningServer, clock: ShiftableClock
) -> None:
    """CreateJob with a maintenance window through boto3: DescribeJob shows the schedule
    as given and the next window start; nothing reaches a device until the window opens
    (the server's clock is moved into it), then everything does."""
    iot = clocked_srv.client("iot")
    arns = [iot.create_thing(thingName=f"window-{i}")["thingArn"] for i in range(3)]
    # 7-8 minutes ahead: moving the server's clock there stays within SigV4's 15-minute skew.
    start = dt.datetime.fromtimestamp(clock() + 8 * 60, dt.UTC).replace(second=0, microsecond=0)
    expression = f"cron({start.minute} {start.hour} {start.day} {start.month} ? {start.year})"
    scheduling = {"maintenanceWindows": [{"startTime": expression, "durationInMinutes": 30}]}
    for bad, complaint in (
        ([{"startTime": expression, "durationInMinutes": 1431}], "less than or equal to 1430"),
        ([{"startTime": "cron(0 2 * * * *)", "durationInMinutes": 30}], "exactly one of day-of-month"),
        ([{"startTime": "cron(0 2 L-1 * ? *)", "durationInMinutes": 30}], "'L-n'"),
    ):
        with pytest.raises(ClientError) as refused:
            iot.create_job(jobId="window-bad", targets=arns, document="{}",
                           schedulingConfig={"maintenanceWindows": bad})
        assert refused.value.response["Error"]["Code"] == "InvalidRequestException"
        assert complaint in refused.value.response["Error"]["Message"]
    iot.create_job(jobId="window-job", targets=arns, document=json.dumps({"operation": "reboot"}),
                   schedulingConfig=scheduling)
    job = iot.describe_job(jobId="window-job")["job"]
    assert job["schedulingConfig"] == scheduling
    assert job["scheduledJobRollouts"] == [{"startTime": start.strftime("%Y-%m-%dT%H:%M")}]
    clocked_srv.server.scheduler.tick()  # a tick outside the window releases nothing
    names = [arn.rpartition("/")[2] for arn in arns]
    jobs = clocked_srv.server.jobs

    def released() -> int:  # what devices see: their next job
        return sum(jobs.next_job_id(name) == "window-job" for name in names)

    assert released() == 0
    # The operator sees every target waiting (QUEUED) from the start (issue 15).
    assert _statuses(clocked_srv, "window-job") == dict.fromkeys(names, "QUEUED")
    try:
        clock.offset += start.timestamp() - clock() + 30
        wait_for(lambda: released() == 3, timeout=15, what="the window")
    finally:
        clock.offset = 0.0
    assert set(_statuses(clocked_srv, "window-job").values()) == {"QUEUED"}


def test_the_version_a_succeeded_ota_installed_is_what_the_thing_runs_since_then(
    clocked_srv: RunningServer, clock: ShiftableClock, tmp_path: Path
) -> None:
    """FreeRTOS devices report nothing of what they run: the server records the version
    each SUCCEEDED OTA execution installed, and reports it in the thing's `$package`
    shadow (AWS's Software Package Catalog shape), the metadata saying since when."""
    iot, data = clocked_srv.client("iot"), clocked_srv.client("iot-data")
    name = "inventory-device"
    (bundle,) = _bundles(clocked_srv, tmp_path, [name], None)
    arn = iot.describe_thing(thingName=name)["thingArn"]

    def package_shadow() -> dict[str, Any]:
        response = data.get_thing_shadow(thingName=name, shadowName="$package")
        return dict(json.loads(response["payload"].read()))

    first = _ota(clocked_srv, "inventory-1", [arn])  # V2 = 1.1.0
    _report(clocked_srv, bundle, name, first, "SUCCEEDED")
    shadow = package_shadow()
    assert shadow["state"]["reported"] == {
        "firmware": {"version": "1.1.0", "attributes": {"installedByJob": first}}}
    since = shadow["metadata"]["reported"]["firmware"]["version"]["timestamp"]
    assert abs(since - clocked_srv.server.clock()) < 60
    clock.offset += 600.0  # (under SigV4's 15 minutes of allowed skew)
    try:
        failed = _ota(clocked_srv, "inventory-2", [arn], image_version=Version(1, 2, 0))
        _report(clocked_srv, bundle, name, failed, "FAILED")
        assert package_shadow()["state"]["reported"]["firmware"]["version"] == "1.1.0"  # still
        newer = _ota(clocked_srv, "inventory-3", [arn], image_version=Version(1, 3, 0))
        _report(clocked_srv, bundle, name, newer, "SUCCEEDED")
        shadow = package_shadow()
        assert shadow["state"]["reported"]["firmware"]["version"] == "1.3.0"
        assert shadow["metadata"]["reported"]["firmware"]["version"]["timestamp"] >= since + 600
        assert data.list_named_shadows_for_thing(thingName=name)["results"] == ["$package"]
    finally:
        clock.offset = 0.0
