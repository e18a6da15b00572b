"""Health-gated rollouts end to end (issue 18): real server, real agents, real broker.

Ten devices run an application (`[app] command`) and report their health to the
`overair-health` shadow. A bad image makes the application of 30 % of them (three
devices, two of them in the first cohort) crash after it starts; the rollout's crash
gate (more than 2x the control's crash rate) cancels the job after the first cohort,
and every device of that cohort, still in its health window, rolls back. A good image
then goes through both cohorts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import select

from overair.core.versions import Version
from overair.server.storage.schema import AuditEntry
from overair.sim.firmware import make_firmware
from overair.sim.fleet import Fleet
from tests.e2e.ota_helpers import create_ota, wait_for
from tests.server_harness import RunningServer

V1, BAD, GOOD = Version(1, 0, 0), Version(1, 1, 0), Version(1, 2, 0)
SIZE = 16 * 1024
THINGS = [f"health-{i}" for i in range(10)]
CRASHING = {"health-0", "health-3", "health-7"}  # 30 %: two in the first cohort of five
# The application: on the bad image, the crashing devices' exits with 3 after starting.
APP = (
    "import os, sys, time\n"
    f"crashing = {sorted(CRASHING)!r}\n"
    f"if os.environ['OVERAIR_VERSION'] == '{BAD}' and os.environ['OVERAIR_THING_NAME'] in crashing:\n"
    "    time.sleep(0.3)\n"
    "    sys.exit(3)\n"
    "time.sleep(3600)\n"
)


def _bundles(srv: RunningServer, root: Path) -> list[Path]:
    factory = root / "factory.bin"
    factory.write_bytes(make_firmware(V1, SIZE, seed="factory"))
    (root / "app.py").write_text(APP)
    bundles = []
    for name in THINGS:
        bundle = srv.provision(name, root / name, factory_image=factory)
        config = bundle / "agent.toml"
        text = config.read_text().replace("deadline_seconds = 60", "deadline_seconds = 20")
        config.write_text(text + f"\n[app]\ncommand = [{json.dumps(sys.executable)}, "
                                 f"{json.dumps(str(root / 'app.py'))}]\n"
                                 "[health]\nreport_interval_seconds = 1\n")
        bundles.append(bundle)
    return bundles


def _statuses(srv: RunningServer, job_id: str) -> dict[str, str]:
    summaries = srv.client("iot").list_job_executions_for_job(jobId=job_id)["executionSummaries"]
    return {s["thingArn"].rpartition("/")[2]: s["jobExecutionSummary"]["status"] for s in summaries}


def _gated_ota(srv: RunningServer, ota_id: str, version: Version, window: int) -> str:
    iot = srv.client("iot")
    targets = [iot.describe_thing(thingName=t)["thingArn"] for t in THINGS]  # execution order
    info = create_ota(srv, ota_id, targets, make_firmware(version, SIZE, seed=ota_id), additionalParameters={
        "overair:healthWindowSeconds": str(window), "overair:healthCohortSize": "5",
        "overair:healthMinSamples": "5", "overair:healthMaxCrashRatio": "2",
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
    iot, ops = srv.client("iot"), srv.client("overair")
    with Fleet(_bundles(srv, tmp_path)) as fleet:
        assert fleet.wait(lambda s: all(x.connected for x in s.values()), 30)
        # The control reports too: every device's health is in its shadow before the rollout.
        wait_for(lambda: all(_reported(srv, t).get("version") == str(V1) for t in THINGS), 30, "baselines")

        job_id = _gated_ota(srv, "health-bad", BAD, window=30)
        job = wait_for(lambda: (j := iot.describe_job(jobId=job_id)["job"])["status"] == "CANCELED" and j,
                       90, "the health gate")
        assert job["reasonCode"] == "HEALTH_GATE"
        assert "crash rate 40% (2/5 updated devices) exceeds 2x the control's 0% (0/5)" in job["comment"]
        statuses = _statuses(srv, job_id)
        assert {statuses[t] for t in THINGS} == {"CANCELED"}  # forced in the window; never released
        # The first cohort (crashing or not) rolls back; the second never received the image.
        assert fleet.wait(lambda s: all(x.version == str(V1) and x.job_id is None for x in s.values()), 60)
        health = ops.describe_rollout_health(JobId=job_id)
        assert (health["Status"], health["JobStatus"]) == ("CANCELED", "CANCELED")
        figures = json.loads(health["Details"])["decision"]
        assert (figures["updatedReporting"], figures["updatedCrashed"], figures["controlReporting"],
                figures["controlCrashed"], figures["released"]) == (5, 2, 5, 0, 5)
        assert sorted(figures["crashedThings"]) == ["health-0", "health-3"]
        with srv.server.db.reading() as s:
            gated = select(AuditEntry).where(AuditEntry.action == "overair:HealthGate")
            audited = [e for e in s.scalars(gated) if e.resource.endswith(f"job/{job_id}")]
        assert [e.decision for e in audited] == ["Canceled"]
        assert audited[0].detail["figures"]["updatedCrashed"] == 2

        good = _gated_ota(srv, "health-good", GOOD, window=3)
        wait_for(lambda: iot.describe_job(jobId=good)["job"]["status"] == "COMPLETED", 180, "good rollout")
        assert set(_statuses(srv, good).values()) == {"SUCCEEDED"}
        # The second cohort was released only after the first had ended and its window passed.
        executions = {t: iot.describe_job_execution(jobId=good, thingName=t)["execution"] for t in THINGS}
        first_ended = max(executions[t]["lastUpdatedAt"] for t in THINGS[:5])
        first_released = max(executions[t]["queuedAt"] for t in THINGS[:5])
        second_released = min(executions[t]["queuedAt"] for t in THINGS[5:])
        assert second_released >= first_ended
        assert (second_released - first_released).total_seconds() >= 3
        assert fleet.wait(lambda s: all(x.version == str(GOOD) for x in s.values()), 30)
        assert ops.describe_rollout_health(JobId=good)["Status"] == "PASSED"
