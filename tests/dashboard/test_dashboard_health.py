"""A health-gated rollout in the dashboard (docs/health-gates.md): the gate's decision
with its reason on the rollout page, and Resume, authorized as overair's ResumeRollout
(threat O1: a viewer without it is refused, and the rollout stays paused)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from overair.core.versions import Version
from overair.sim.firmware import make_firmware
from tests.dashboard.conftest import admin_key, make_user, policy, web
from tests.dashboard.test_dashboard_security import READ_ROLLOUTS
from tests.e2e.ota_helpers import BUCKET, create_ota, wait_for
from tests.server_harness import RunningServer, running_server


@pytest.fixture(scope="module")
def ota_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("server")) as running:
        s3 = running.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        yield running


def _paused_rollout(srv: RunningServer) -> str:
    iot, data = srv.client("iot"), srv.client("iot-data")
    arns = [iot.create_thing(thingName=name)["thingArn"] for name in ("gate-0", "gate-1")]
    info = create_ota(srv, "gated", arns, make_firmware(Version(2, 0, 0), 4096, seed="gated"),
                      additionalParameters={"overair:healthWindowSeconds": "600",
                                            "overair:healthCohortSize": "1"})
    job_id = str(info["awsIotJobId"])
    reports = (("gate-1", {"jobId": None, "crashes": 0}), ("gate-0", {"jobId": job_id, "crashes": 1}))
    for thing, report in reports:
        data.update_thing_shadow(thingName=thing, shadowName="overair-health",
                                 payload=json.dumps({"state": {"reported": report}}).encode())
    ops = srv.client("overair")
    wait_for(lambda: ops.describe_rollout_health(JobId=job_id)["Status"] == "PAUSED", 20, "the pause")
    return job_id


def test_a_paused_rollout_shows_its_reason_and_resumes_only_for_those_allowed(ota_srv: RunningServer) -> None:
    job_id = _paused_rollout(ota_srv)
    viewer = make_user(ota_srv, "gate-viewer", policy({**READ_ROLLOUTS, "Action": [
        *READ_ROLLOUTS["Action"], "overair:DescribeRolloutHealth"]}))
    browser = web(ota_srv)
    browser.sign_in(viewer)
    page = browser.get(f"/dashboard/rollouts/{job_id}")
    assert '<strong id="health-status">PAUSED</strong>' in page.body
    assert "crash rate 100% (1/1 updated devices) exceeds 2x the control&#39;s 0% (0/1)" in page.body
    page_path = f"/dashboard/rollouts/{job_id}"
    refused = browser.post(f"{page_path}/resume", {"csrf": browser.csrf(page_path)})
    assert refused.status == 403
    assert "overair:ResumeRollout" in refused.body
    assert ota_srv.client("overair").describe_rollout_health(JobId=job_id)["Status"] == "PAUSED"

    admin = web(ota_srv)
    admin.sign_in(admin_key(ota_srv))
    assert 'id="resume"' in admin.get(f"/dashboard/rollouts/{job_id}").body
    resumed = admin.post(f"{page_path}/resume", {"csrf": admin.csrf(page_path)})
    assert resumed.status == 303
    assert ota_srv.client("overair").describe_rollout_health(JobId=job_id)["Status"] == "OBSERVING"
    assert '<strong id="health-status">OBSERVING</strong>' in admin.get(f"/dashboard/rollouts/{job_id}").body
