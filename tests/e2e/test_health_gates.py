"""Health-gated rollouts end to end (issue 18): real server, real agents, real broker.

Ten devices (thirty in the slow variant) run an application (`[app] command`) and report their health to the
`overair-health` shadow. A bad image makes the application of 30 % of them (three
devices, two of them in the first cohort) crash after it starts; the rollout's crash
gate (more than 2x the control's crash rate) cancels the job after the first cohort,
and every device of that cohort, still in its health window, rolls back. A good image
then goes through both cohorts.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from sqlalchemy import select
from typer.testing import CliRunner

from overair.cli.main import app as cli_app
from overair.core.versions import Version
from overair.server.bootstrap import DEV_PROFILE
from overair.server.jobs.scheduler import TICK_SECONDS
from overair.server.storage.schema import AuditEntry, JobExecution, ThingShadow
from overair.sim.firmware import make_firmware
from overair.sim.fleet import Fleet
from tests.e2e.ota_helpers import create_ota, wait_for
from tests.e2e.test_server_security import Device
from tests.server_harness import RunningServer, running_server

V1, BAD, GOOD = Version(1, 0, 0), Version(1, 1, 0), Version(1, 2, 0)
SIZE = 16 * 1024
runner = CliRunner()
# The application: on the bad image, the crashing devices' exits with 3 after starting.
APP = (
    "import os, sys, time\n"
    "crashing = {crashing!r}\n"
    f"if os.environ['OVERAIR_VERSION'] == '{BAD}' and os.environ['OVERAIR_THING_NAME'] in crashing:\n"
    "    time.sleep(0.3)\n"
    "    sys.exit(3)\n"
    "time.sleep(3600)\n"
)


def _crashing(things: list[str]) -> set[str]:
    """30 % of the fleet, spread over it: positions 0, 3 and 7 of every ten."""
    return {t for i, t in enumerate(things) if i % 10 in (0, 3, 7)}


def _bundles(srv: RunningServer, root: Path, things: list[str]) -> list[Path]:
    factory = root / "factory.bin"
    factory.write_bytes(make_firmware(V1, SIZE, seed="factory"))
    (root / "app.py").write_text(APP.replace("{crashing!r}", repr(sorted(_crashing(things)))))
    bundles = []
    for name in things:
        bundle = srv.provision(name, root / name, factory_image=factory)
        config = bundle / "agent.toml"
        text = config.read_text().replace("deadline_seconds = 60", "deadline_seconds = 20")
        config.write_text(text + f"\n[app]\ncommand = [{json.dumps(sys.executable)}, "
                                 f"{json.dumps(str(root / 'app.py'))}]\n"
                                 "[health]\nreport_interval_seconds = 1\n")
        bundles.append(bundle)
    return bundles


def _statuses(srv: RunningServer, job_id: str) -> dict[str, str]:
    pages = srv.client("iot").get_paginator("list_job_executions_for_job").paginate(jobId=job_id)
    return {s["thingArn"].rpartition("/")[2]: s["jobExecutionSummary"]["status"]
            for page in pages for s in page["executionSummaries"]}


def _gated_ota(srv: RunningServer, ota_id: str, things: list[str], version: Version, window: int) -> str:
    iot = srv.client("iot")
    targets = [iot.describe_thing(thingName=t)["thingArn"] for t in things]
    cohort = str(len(things) // 2)
    info = create_ota(srv, ota_id, targets, make_firmware(version, SIZE, seed=ota_id), additionalParameters={
        "overair:healthWindowSeconds": str(window), "overair:healthCohortSize": cohort,
        "overair:healthMinSamples": cohort, "overair:healthMaxCrashRatio": "2",
        "overair:healthAction": "CANCEL_AND_ROLLBACK"})
    assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info.get("errorInfo")
    return str(info["awsIotJobId"])


def _reported(srv: RunningServer, thing: str) -> dict[str, Any]:
    data = srv.client("iot-data")
    try:
        payload = data.get_thing_shadow(thingName=thing, shadowName="overair-health")["payload"].read()
    except data.exceptions.ResourceNotFoundException:
        return {}
    return dict(json.loads(payload)["state"].get("reported", {}))


def test_a_crashing_image_stops_after_the_first_cohort_and_a_good_one_goes_through(
        srv: RunningServer, tmp_path: Path) -> None:
    _crashing_then_good(srv, tmp_path, [f"health-{i}" for i in range(10)])


@pytest.mark.slow
def test_a_crashing_image_stops_after_the_first_cohort_of_a_larger_fleet(
        srv: RunningServer, tmp_path: Path) -> None:
    _crashing_then_good(srv, tmp_path, [f"health-large-{i}" for i in range(30)])


def _crashing_then_good(srv: RunningServer, tmp_path: Path, things: list[str]) -> None:
    iot, ops = srv.client("iot"), srv.client("overair")
    size, cohort = len(things), len(things) // 2
    crashing = _crashing(things)
    order = sorted(things)  # the job's execution order: its targets' thing names, sorted
    first_crashing = sorted(crashing & set(order[:cohort]))
    with Fleet(_bundles(srv, tmp_path, things)) as fleet:
        assert fleet.wait(lambda s: all(x.connected for x in s.values()), 60)
        # The control reports too: every device's health is in its shadow before the rollout.
        wait_for(lambda: all(_reported(srv, t).get("version") == str(V1) for t in things), 60, "baselines")

        job_id = _gated_ota(srv, f"health-bad-{size}", things, BAD, window=30)
        job = wait_for(lambda: (j := iot.describe_job(jobId=job_id)["job"])["status"] == "CANCELED" and j,
                       120, "the health gate")
        assert job["reasonCode"] == "HEALTH_GATE"
        rate = len(first_crashing) / cohort
        assert (f"crash rate {rate:.0%} ({len(first_crashing)}/{cohort} updated devices) exceeds 2x the "
                f"control's 0% (0/{size - cohort})") in job["comment"]
        statuses = _statuses(srv, job_id)
        assert {statuses[t] for t in things} == {"CANCELED"}  # forced in the window; never released
        # The first cohort (crashing or not) rolls back; the second never received the image.
        assert fleet.wait(lambda s: all(x.version == str(V1) and x.job_id is None for x in s.values()), 60)
        health = ops.describe_rollout_health(JobId=job_id)
        assert (health["Status"], health["JobStatus"]) == ("CANCELED", "CANCELED")
        figures = json.loads(health["Details"])["decision"]
        assert (figures["updatedReporting"], figures["updatedCrashed"], figures["controlReporting"],
                figures["controlCrashed"], figures["released"]) == (cohort, len(first_crashing),
                                                                   size - cohort, 0, cohort)
        assert sorted(figures["crashedThings"]) == first_crashing
        with srv.server.db.reading() as s:
            gated = select(AuditEntry).where(AuditEntry.action == "overair:HealthGate")
            audited = [e for e in s.scalars(gated) if e.resource.endswith(f"job/{job_id}")]
        assert [e.decision for e in audited] == ["Canceled"]
        assert audited[0].detail["figures"]["updatedCrashed"] == len(first_crashing)

        good = _gated_ota(srv, f"health-good-{size}", things, GOOD, window=3)
        wait_for(lambda: iot.describe_job(jobId=good)["job"]["status"] == "COMPLETED", 240, "good rollout")
        assert set(_statuses(srv, good).values()) == {"SUCCEEDED"}
        # The second cohort was released only after the first had ended and its window passed.
        executions = {t: iot.describe_job_execution(jobId=good, thingName=t)["execution"] for t in things}
        first_ended = max(executions[t]["lastUpdatedAt"] for t in order[:cohort])
        first_released = max(executions[t]["queuedAt"] for t in order[:cohort])
        second_released = min(executions[t]["queuedAt"] for t in order[cohort:])
        assert second_released >= first_ended
        assert (second_released - first_released).total_seconds() >= 3
        assert fleet.wait(lambda s: all(x.version == str(GOOD) for x in s.values()), 30)
        assert ops.describe_rollout_health(JobId=good)["Status"] == "PASSED"


# --- pause, resume (API and CLI), and hostile reports ------------------------------------------

def _bare_things(srv: RunningServer, names: list[str]) -> list[str]:
    iot = srv.client("iot")
    return [iot.create_thing(thingName=name)["thingArn"] for name in names]


def _report(srv: RunningServer, thing: str, reported: dict[str, Any]) -> None:
    payload = json.dumps({"state": {"reported": reported}}).encode()
    srv.client("iot-data").update_thing_shadow(thingName=thing, shadowName="overair-health", payload=payload)


def _cli(srv: RunningServer, *args: str) -> str:
    result = runner.invoke(cli_app, [*args, "--data-dir", str(srv.settings.paths.root)])
    assert result.exit_code == 0, result.output
    return str(result.output)


def test_a_paused_rollout_is_explained_and_resumed_from_the_cli(srv: RunningServer) -> None:
    """A PAUSE gate holds the releases with the figures (reports written through iot-data,
    as any device or gateway may); a crafted report stored behind the shadow service's back
    is left out of the figures, never breaking the decision; `overair ota resume` goes on."""
    iot, ops = srv.client("iot"), srv.client("overair")
    arns = _bare_things(srv, ["pause-0", "pause-1", "pause-2"])
    gates = {"overair:healthWindowSeconds": "600", "overair:healthCohortSize": "1",
             "overair:healthAction": "PAUSE"}
    image = make_firmware(BAD, SIZE, seed="pause")
    info = create_ota(srv, "health-pause", arns, image, additionalParameters=gates)
    job_id = str(info["awsIotJobId"])
    wait_for(lambda: _released(srv, job_id) == {"pause-0"}, 20, "the first cohort")
    _report(srv, "pause-1", {"jobId": None, "crashes": 0})
    with srv.server.db.session() as s:  # as if stored before validation existed
        s.add(ThingShadow(thing_name="pause-2", shadow_name="overair-health", desired={},
                          reported={"crashes": "many", "metrics": [1e308]}, metadata_={}, version=1,
                          present=True, updated_at=0.0))
    _report(srv, "pause-0", {"jobId": job_id, "crashes": 2, "lastExitCode": 139})
    paused = wait_for(lambda: (h := ops.describe_rollout_health(JobId=job_id))["Status"] == "PAUSED" and h,
                      20, "the pause")
    assert paused["JobStatus"] == "IN_PROGRESS"
    job = iot.describe_job(jobId=job_id)["job"]
    assert job["reasonCode"] == "HEALTH_GATE"
    assert job["comment"] == f"health gate: paused: {paused['Reason']}"
    assert paused["Reason"] == ("crash rate 100% (1/1 updated devices) exceeds 2x the control's 0% (0/1)")
    output = _cli(srv, "ota", "health", "health-pause")
    assert "PAUSED" in output
    assert "crash rate 100%" in output
    assert _released(srv, job_id) == {"pause-0"}  # held: the second cohort is not released
    assert "OBSERVING" in _cli(srv, "ota", "resume", "health-pause")
    assert ops.describe_rollout_health(JobId=job_id)["Status"] == "OBSERVING"
    resumed = iot.describe_job(jobId=job_id)["job"]
    assert resumed["comment"] == "health gate: resumed from PAUSED (ResumeRollout)"
    assert ops.resume_rollout(JobId=job_id)["Status"] == "OBSERVING"  # idempotent
    iot.cancel_job(jobId=job_id, force=True)


def _released(srv: RunningServer, job_id: str) -> set[str]:
    with srv.server.db.reading() as s:
        return set(s.scalars(select(JobExecution.thing_name).where(
            JobExecution.job_id == job_id, JobExecution.released_at.is_not(None))))


def test_n4_a_device_cannot_report_health_for_another_thing(srv: RunningServer, tmp_path: Path) -> None:
    a, b = "n4-health-a", "n4-health-b"
    device = Device(srv, srv.provision(a, tmp_path / a), a)
    srv.provision(b, tmp_path / b)
    assert device.connect()
    try:
        forged = json.dumps({"state": {"reported": {"jobId": "any", "crashes": 5}}})
        wait_for(lambda: _publish_own(device, a, forged), 20, "the device's own report")
        device.client.publish(f"$aws/things/{b}/shadow/name/overair-health/update", forged, qos=1)
        assert device.disconnected.wait(10)  # the broker drops the device's connection ...
        assert _reported(srv, b) == {}  # ... and the report never reaches the service
        assert _reported(srv, a)["crashes"] == 5
    finally:
        device.close()


def _publish_own(device: Device, thing: str, payload: str) -> bool:
    """Publish to the device's own health shadow until the service answers (its
    subscription may take a moment to be in place)."""
    device.subscribe(f"$aws/things/{thing}/shadow/name/overair-health/update/#")
    device.client.publish(f"$aws/things/{thing}/shadow/name/overair-health/update", payload, qos=1)
    return bool(device.wait_for("/update/accepted", 1.0))


def test_a_malformed_report_is_refused_with_a_stable_code(srv: RunningServer, tmp_path: Path) -> None:
    name = "bad-report"
    device = Device(srv, srv.provision(name, tmp_path / name), name)
    assert device.connect()
    try:
        wait_for(lambda: _publish_own(device, name, json.dumps({"state": {"reported": {"crashes": 0}}})),
                 20, "the device's own report")
        device.client.publish(f"$aws/things/{name}/shadow/name/overair-health/update",
                              json.dumps({"state": {"reported": {"crashes": -1}}}), qos=1)
        rejected = device.wait_for("/update/rejected")
        assert rejected
        body = json.loads(rejected[0][1])
        assert body["code"] == 400
        assert body["message"].startswith("InvalidHealthReport: crashes must be an integer")
    finally:
        device.close()
    with pytest.raises(ClientError) as raised:
        _report(srv, name, {"metrics": {f"m{i}": i for i in range(17)}})
    assert raised.value.response["Error"]["Code"] == "InvalidRequestException"
    assert raised.value.response["Error"]["Message"].startswith("InvalidHealthReport: at most 16 metrics")
    assert _reported(srv, name) == {"crashes": 0}  # the refused reports changed nothing


def test_a_flood_of_reports_is_bounded(srv: RunningServer, tmp_path: Path) -> None:
    """A device publishing reports as fast as it can spends its update budget (issue 12):
    the excess is refused with 429, and the service keeps one document for the thing."""
    name = "flooding-device"
    device = Device(srv, srv.provision(name, tmp_path / name), name)
    assert device.connect()
    try:
        wait_for(lambda: _publish_own(device, name, json.dumps({"state": {"reported": {"crashes": 0}}})),
                 20, "the device's own report")
        device.messages.clear()
        for i in range(300):
            report = {"state": {"reported": {"crashes": i % 3, "metrics": {"n": i}}}}
            device.client.publish(f"$aws/things/{name}/shadow/name/overair-health/update", json.dumps(report))
        wait_for(lambda: len([m for m in device.messages if m[0].endswith(("/accepted", "/rejected"))]) >= 300
                 or None, 30, "the answers")
        throttled = [json.loads(p) for t, p in device.messages if t.endswith("/update/rejected")]
        assert throttled
        assert {body["code"] for body in throttled} == {429}
    finally:
        device.close()
    data = srv.client("iot-data")
    shadow = data.get_thing_shadow(thingName=name, shadowName="overair-health")
    document = json.loads(shadow["payload"].read())
    assert document["version"] < 300  # what the budget let through, in one document
    assert data.list_named_shadows_for_thing(thingName=name)["results"] == ["overair-health"]


def test_the_cli_creates_a_gated_rollout_with_params(srv: RunningServer, tmp_path: Path) -> None:
    (arn,) = _bare_things(srv, ["cli-gated"])
    image = tmp_path / "app.img"
    image.write_bytes(make_firmware(GOOD, SIZE, seed="cli-gated"))
    _cli(srv, "ota", "create", "health-cli", "--image", str(image), "--target", arn,
         "--signing-profile", DEV_PROFILE, "--param", "overair:healthWindowSeconds=600",
         "--param", "overair:healthCohortSize=1", "--param", "overair:healthApproval=true")
    details = json.loads(_cli(srv, "ota", "health", "health-cli", "--json"))
    assert details["gates"] == {"windowSeconds": 600, "cohortSize": 1, "maxCrashRatio": 2.0, "minSamples": 1,
                                "action": "PAUSE", "approval": True, "metricMax": {}}
    refused = runner.invoke(cli_app, ["ota", "create", "health-cli-2", "--image", str(image), "--target", arn,
                                      "--signing-profile", DEV_PROFILE, "--param", "overair:healthCohortSize",
                                      "--data-dir", str(srv.settings.paths.root)])
    assert refused.exit_code != 0
    assert "KEY=VALUE" in refused.output
    srv.client("iot").cancel_job(jobId=details["jobId"], force=True)


def test_a_restarted_server_keeps_the_decision_and_decides_the_same(tmp_path: Path) -> None:
    """The decision lives in the job and comes from stored reports and executions: after a
    restart the rollout is still paused with the same figures, nothing more is released,
    and the decision is not taken (nor audited) a second time."""
    data_dir = tmp_path / "server"
    with running_server(data_dir) as first:
        s3 = first.client("s3")
        s3.create_bucket(Bucket="firmware")
        s3.put_bucket_versioning(Bucket="firmware", VersioningConfiguration={"Status": "Enabled"})
        arns = _bare_things(first, ["restart-0", "restart-1"])
        gates = {"overair:healthWindowSeconds": "600", "overair:healthCohortSize": "1"}
        info = create_ota(first, "health-restart", arns, make_firmware(BAD, SIZE, seed="restart"),
                          additionalParameters=gates)
        job_id = str(info["awsIotJobId"])
        wait_for(lambda: _released(first, job_id) == {"restart-0"}, 20, "the first cohort")
        _report(first, "restart-1", {"jobId": None, "crashes": 0})
        _report(first, "restart-0", {"jobId": job_id, "crashes": 1})
        ops = first.client("overair")
        before = wait_for(lambda: (h := ops.describe_rollout_health(JobId=job_id))["Status"] == "PAUSED"
                          and h, 20, "the pause")
    with running_server(data_dir) as again:
        ops = again.client("overair")
        time.sleep(3 * TICK_SECONDS)  # the scheduler and the health monitor ticked again
        after = ops.describe_rollout_health(JobId=job_id)
        assert (after["Status"], after["Reason"]) == (before["Status"], before["Reason"])
        assert json.loads(after["Details"])["decision"] == json.loads(before["Details"])["decision"]
        assert _released(again, job_id) == {"restart-0"}
        with again.server.db.reading() as s:
            gated = select(AuditEntry.decision).where(AuditEntry.action == "overair:HealthGate")
            decisions = list(s.scalars(gated))
        assert decisions == ["Paused"]


HOT = Version(1, 5, 0)  # runs without crashing, but hot
METRICS = (
    "import json, os\n"
    f"print(json.dumps({{'temp_c': 91.0 if os.environ['OVERAIR_VERSION'] == '{HOT}' else 40.0}}))\n"
)


def test_a_metric_from_the_agents_hook_pauses_the_rollout(srv: RunningServer, tmp_path: Path) -> None:
    """Real agents' metrics hook (`[health] metrics_command`): the bad image runs hot, the
    metric gate pauses the rollout after the first cohort, and nothing more is released."""
    things = ["metric-0", "metric-1"]
    (tmp_path / "metrics.py").write_text(METRICS)
    bundles = _bundles(srv, tmp_path, things)
    hook = json.dumps(f"{sys.executable} {tmp_path / 'metrics.py'}")
    for bundle in bundles:  # into the [health] table, which _bundles writes last
        config = bundle / "agent.toml"
        config.write_text(config.read_text() + f"metrics_command = {hook}\n")
    with Fleet(bundles) as fleet:
        assert fleet.wait(lambda s: all(x.connected for x in s.values()), 30)
        wait_for(lambda: all(_reported(srv, t).get("metrics") == {"temp_c": 40.0} for t in things), 30,
                 "baselines with metrics")
        iot = srv.client("iot")
        info = create_ota(srv, "health-metric", [iot.describe_thing(thingName=t)["thingArn"] for t in things],
                          make_firmware(HOT, SIZE, seed="metric"), additionalParameters={
                              "overair:healthWindowSeconds": "30", "overair:healthCohortSize": "1",
                              "overair:healthMetricMax.temp_c": "85", "overair:healthAction": "PAUSE"})
        job_id = str(info["awsIotJobId"])
        health = wait_for(lambda: (h := srv.client("overair").describe_rollout_health(JobId=job_id))["Status"]
                          == "PAUSED" and h, 60, "the metric gate")
        assert health["Reason"] == "metric temp_c reached 91 on 1 updated device(s), above 85"
        assert _released(srv, job_id) == {"metric-0"}
        iot.cancel_job(jobId=job_id, force=True)  # and metric-0 rolls back from its trial
        assert fleet.wait(lambda s: all(x.version == str(V1) for x in s.values()), 60)
