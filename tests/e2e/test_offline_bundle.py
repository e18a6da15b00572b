"""Offline bundles through the real server and agent: `overair bundle create` (the
server signs the bundle's deployment metadata: overair's CreateOfflineBundle) writes one
file; `overair-agent install` applies it on a device that never connected (no broker:
the bundle is its only input), reboots into the new image and commits it; when the
agent then runs and connects, the server records the result of the offline install
from the agent's journal. The adversarial bundles: tests/integration/test_offline_bundle.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from overair.cli.agent_main import app as agent_app
from overair.cli.agent_main import status_report
from overair.cli.main import app as server_app
from overair.sim.firmware import make_firmware
from overair.sim.fleet import Fleet
from tests.e2e.ota_helpers import create_ota, wait_for
from tests.e2e.test_rollout import SIZE, V2, _bundles, _finished
from tests.server_harness import RunningServer

runner = CliRunner()


@pytest.mark.parametrize("protocol", ["MQTT", "HTTP"])
def test_offline_bundle_is_installed_without_a_network_and_reported_at_the_next_connection(
        srv: RunningServer, tmp_path: Path, protocol: str) -> None:
    thing = f"e2e-offline-{protocol.lower()}"
    (device,) = _bundles(srv, tmp_path, [thing])
    iot = srv.client("iot")
    arn = iot.describe_thing(thingName=thing)["thingArn"]
    info = create_ota(srv, f"offline-{protocol.lower()}", [arn], make_firmware(V2, SIZE, seed=thing),
                      protocols=(protocol,))
    assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info
    job_id = info["awsIotJobId"]
    out = tmp_path / "update.bundle"
    made = runner.invoke(server_app, ["bundle", "create", "--ota-update", info["otaUpdateId"],
                                      "--thing", thing, "--out", str(out), "--valid-hours", "2",
                                      "--data-dir", str(srv.settings.data_dir)])
    assert made.exit_code == 0, made.output

    installed = runner.invoke(agent_app, ["install", str(out), "--config", str(device), "--json"])
    assert installed.exit_code == 0, installed.output
    outcome = json.loads(installed.stdout[installed.stdout.index("{"):])
    assert (outcome["status"], outcome["details"], outcome["version"], outcome["reboots"]) == \
        ("SUCCEEDED", {"reason": "accepted v1.1.0"}, "1.1.0", 1)
    report = status_report(device)
    assert (report["running"], report["last_result"]["status"]) == \
        ({"slot": "b", "version": "1.1.0", "trial": False}, "SUCCEEDED")
    # The device never connected: the server knows nothing yet.
    assert iot.describe_job_execution(jobId=job_id, thingName=thing)["execution"]["status"] == "QUEUED"

    with Fleet([device]) as fleet:
        statuses = wait_for(_finished(iot, job_id, [thing]), what="the offline result to reach the server")
        snaps = fleet.snapshots()
    assert statuses == {thing: "SUCCEEDED"}
    execution = iot.describe_job_execution(jobId=job_id, thingName=thing)["execution"]
    assert execution["statusDetails"]["detailsMap"]["reason"] == "accepted v1.1.0"
    assert (snaps[thing].version, snaps[thing].reboots) == ("1.1.0", 0)  # booted the installed image


def test_offline_bundle_is_made_only_for_a_target_with_a_pending_execution(
        srv: RunningServer, tmp_path: Path) -> None:
    thing, stranger = "e2e-offline-target", "e2e-offline-stranger"
    _bundles(srv, tmp_path, [thing, stranger])
    iot = srv.client("iot")
    arn = iot.describe_thing(thingName=thing)["thingArn"]
    info = create_ota(srv, "offline-target", [arn], make_firmware(V2, SIZE, seed=thing))
    made = runner.invoke(server_app, ["bundle", "create", "--ota-update", info["otaUpdateId"],
                                      "--thing", stranger, "--out", str(tmp_path / "b"),
                                      "--data-dir", str(srv.settings.data_dir)])
    assert made.exit_code == 2
    assert "ResourceNotFoundException" in made.output
    assert not (tmp_path / "b").exists()
