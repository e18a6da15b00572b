"""Retry the failed devices of an OTA rollout from the dashboard, against a real server:
a signed OTA update, devices that report through the Jobs HTTPS API, and the retry
(a new OTA update of the same files to the devices that failed), authorized as
CreateOTAUpdate with iam:PassRole of its role. Threat id O1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from overair.core.versions import Version
from overair.sim.firmware import make_firmware
from tests.dashboard.conftest import Key, admin_key, make_user, policy, web
from tests.dashboard.test_dashboard_security import READ_ROLLOUTS, _device_jobs
from tests.e2e.ota_helpers import BUCKET, create_ota, wait_for
from tests.server_harness import RunningServer, running_server


@pytest.fixture(scope="module")
def ota_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("server")) as running:
        s3 = running.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        yield running


def _rollout_with_one_failure(srv: RunningServer, tmp_path: Path, ota_id: str) -> str:
    """An OTA update to two devices; the first fails it, the second succeeds. Its job id."""
    iot = srv.client("iot")
    names = [f"{ota_id}-a", f"{ota_id}-b"]
    devices = [_device_jobs(srv, srv.provision(name, tmp_path / name)) for name in names]
    info = create_ota(srv, ota_id, [iot.describe_thing(thingName=n)["thingArn"] for n in names],
                      make_firmware(Version(2, 0, 0), 4096, seed=ota_id))
    assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info.get("errorInfo")
    job_id = str(info["awsIotJobId"])
    for device, name, status in zip(devices, names, ("FAILED", "SUCCEEDED"), strict=True):
        device.start_next_pending_job_execution(thingName=name)
        device.update_job_execution(thingName=name, jobId=job_id, status=status,
                                    statusDetails={"reason": "0x1: test"} if status == "FAILED" else {})
    return job_id


def test_retry_failed_creates_an_ota_update_for_the_failed_devices_only(
        ota_srv: RunningServer, tmp_path: Path) -> None:
    job_id = _rollout_with_one_failure(ota_srv, tmp_path, "retry-me")
    browser = web(ota_srv)
    browser.sign_in(admin_key(ota_srv))
    page = browser.get(f"/dashboard/rollouts/{job_id}")
    assert 'id="retry-failed"' in page.body
    reply = browser.post(f"/dashboard/rollouts/{job_id}/retry-failed",
                         {"csrf": browser.csrf(f"/dashboard/rollouts/{job_id}")})
    assert reply.status == 303
    assert "retry=retry-me-retry-1" in reply.headers["location"]
    iot = ota_srv.client("iot")
    info = wait_for(lambda: (i := iot.get_ota_update(otaUpdateId="retry-me-retry-1")["otaUpdateInfo"])
                    ["otaUpdateStatus"] in ("CREATE_COMPLETE", "CREATE_FAILED") and i, what="the retry")
    assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info.get("errorInfo")
    assert info["targets"] == [iot.describe_thing(thingName="retry-me-a")["thingArn"]]
    original = iot.get_ota_update(otaUpdateId="retry-me")["otaUpdateInfo"]
    assert info["otaUpdateFiles"] == original["otaUpdateFiles"]
    executions = iot.list_job_executions_for_job(jobId=info["awsIotJobId"])["executionSummaries"]
    assert [e["thingArn"].rpartition("/")[2] for e in executions] == ["retry-me-a"]
    # What the device that succeeded runs now: the server's record, its $package shadow.
    device = browser.get("/dashboard/things/retry-me-b").body
    assert '<dd id="version">2.0.0</dd>' in device
    assert "<td>firmware</td><td>2.0.0</td>" in device
    assert "$package" in device
    assert '<span class="never">never connected</span>' in device  # it used HTTPS only
    # A second retry gets the next free name.
    reply = browser.post(f"/dashboard/rollouts/{job_id}/retry-failed",
                         {"csrf": browser.csrf(f"/dashboard/rollouts/{job_id}")})
    assert "retry=retry-me-retry-2" in reply.headers["location"]


def test_o1_retry_needs_create_ota_update_and_pass_role(ota_srv: RunningServer, tmp_path: Path) -> None:
    job_id = _rollout_with_one_failure(ota_srv, tmp_path, "retry-guarded")
    get_update = {"Effect": "Allow", "Action": "iot:GetOTAUpdate", "Resource": "*"}
    create = {"Effect": "Allow", "Action": "iot:CreateOTAUpdate", "Resource": "*"}
    for user, statements, missing in (("no-create", (READ_ROLLOUTS, get_update), "iot:CreateOTAUpdate"),
                                      ("no-pass-role", (READ_ROLLOUTS, get_update, create), "iam:PassRole")):
        browser = web(ota_srv)
        browser.sign_in(make_user(ota_srv, user, policy(*statements)))
        reply = browser.post(f"/dashboard/rollouts/{job_id}/retry-failed",
                             {"csrf": browser.csrf(f"/dashboard/rollouts/{job_id}")})
        assert reply.status == 403
        assert f'<code id="missing-action">{missing}</code>' in reply.body
    updates = ota_srv.client("iot").list_ota_updates()["otaUpdates"]
    assert not any(u["otaUpdateId"].startswith("retry-guarded-retry") for u in updates)


def test_the_ota_operator_policy_watches_retries_and_cancels_its_rollouts(
        ota_srv: RunningServer, tmp_path: Path) -> None:
    job_id = _rollout_with_one_failure(ota_srv, tmp_path, "operated")
    iam = ota_srv.client("iam")
    iam.create_user(UserName="ota-operator")
    iam.attach_user_policy(UserName="ota-operator", PolicyArn="arn:aws:iam::aws:policy/OverairOTAOperator")
    created = iam.create_access_key(UserName="ota-operator")["AccessKey"]
    browser = web(ota_srv)
    assert browser.sign_in(Key(created["AccessKeyId"], created["SecretAccessKey"])).status == 303
    for path in ("/dashboard/fleet", "/dashboard/rollouts", f"/dashboard/rollouts/{job_id}",
                 "/dashboard/certificates"):
        assert browser.get(path).status == 200, path
    assert browser.get("/dashboard/things/operated-a").status == 403  # no iot:DescribeThing
    assert browser.get("/dashboard/audit").status == 403
    csrf = browser.csrf(f"/dashboard/rollouts/{job_id}")
    assert browser.post(f"/dashboard/rollouts/{job_id}/retry-failed", {"csrf": csrf}).status == 303
    retry_job = wait_for(lambda: ota_srv.client("iot").get_ota_update(otaUpdateId="operated-retry-1")
                         ["otaUpdateInfo"].get("awsIotJobId"), what="the retry's job")
    assert browser.post(f"/dashboard/rollouts/{retry_job}/cancel", {"csrf": csrf}).status == 303
    assert ota_srv.client("iot").describe_job(jobId=retry_job)["job"]["status"] == "CANCELED"
