"""The examples in examples/ run unchanged (subprocesses, as a user runs them) against a
real server and real agents, and the agents end up running the new firmware.

The test provisions the agents (thing + certificate + bundle) for thing names it then
passes to the example, which finds the things there and does everything else itself:
group, service role, operator user, bucket, upload, certificate import, profile, OTA
update, and following the job until SUCCEEDED.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from overair.core.versions import Version
from overair.sim.firmware import make_firmware
from overair.sim.fleet import Fleet
from tests.pki_helpers import Issued, make_ca, make_signer
from tests.server_harness import RunningServer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FACTORY = Version(1, 0, 0)
NEW = Version(1, 1, 0)
SIZE = 40 * 1024 + 7


@dataclass(frozen=True)
class SigningFiles:
    root: Issued
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def signing(srv: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> SigningFiles:
    """The operator's code-signing root (trusted by the server and the agents) and a
    signer certificate + key on disk, as the examples take them."""
    root = make_ca("examples code-signing root")
    roots = srv.settings.paths.code_signing_root
    roots.write_bytes(roots.read_bytes() + root.cert_pem)
    out = tmp_path_factory.mktemp("signer")
    signer = make_signer(root, "examples firmware signer")
    signer.write(out / "signer.pem", out / "signer.key")
    return SigningFiles(root, out / "signer.pem", out / "signer.key")


@pytest.fixture
def fleet_of(srv: RunningServer, signing: SigningFiles, tmp_path: Path) -> Iterator[object]:
    fleets: list[Fleet] = []

    def start(names: list[str]) -> Fleet:
        factory = tmp_path / "factory.bin"
        factory.write_bytes(make_firmware(FACTORY, SIZE, seed="factory"))
        roots = srv.settings.paths.code_signing_root.read_bytes()
        bundles = [srv.provision(name, tmp_path / name, factory_image=factory, code_signing_roots_pem=roots)
                   for name in names]
        fleet = Fleet(bundles)
        fleet.start()
        fleets.append(fleet)
        assert fleet.wait(lambda snaps: all(s.connected for s in snaps.values()), timeout=30)
        return fleet

    yield start
    for fleet in fleets:
        fleet.stop()


def _environment(srv: RunningServer) -> dict[str, str]:
    """The administrator's key (the credentials file `overair init` wrote) and the
    endpoint, in the variables AWS tools read."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(srv.settings.paths.credentials), AWS_CONFIG_FILE=os.devnull,
               AWS_DEFAULT_REGION=srv.clients.region, OVERAIR_ENDPOINT=srv.endpoint,
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return env


def _run(command: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _assert_updated(srv: RunningServer, fleet: Fleet, ota_id: str, things: list[str]) -> None:
    iot = srv.client("iot")
    job_id = iot.get_ota_update(otaUpdateId=ota_id)["otaUpdateInfo"]["awsIotJobId"]
    summaries = iot.list_job_executions_for_job(jobId=job_id)["executionSummaries"]
    assert {s["thingArn"].rpartition("/")[2]: s["jobExecutionSummary"]["status"] for s in summaries} == (
        dict.fromkeys(things, "SUCCEEDED"))
    assert fleet.wait(lambda snaps: all(s.version == str(NEW) for s in snaps.values()), timeout=20)


def test_boto3_example_runs_the_whole_ota_workflow(
        srv: RunningServer, signing: SigningFiles, fleet_of: object) -> None:
    things = ["example-boto3-1", "example-boto3-2"]
    fleet = fleet_of(things)  # type: ignore[operator]
    out = _run([sys.executable, str(EXAMPLES / "ota_workflow_boto3.py"), "--things", ",".join(things),
                "--group", "example-boto3", "--bucket", "example-boto3-firmware",
                "--certificate", str(signing.cert), "--private-key", str(signing.key),
                "--ota-id", "example-boto3", "--firmware-version", str(NEW), "--timeout", "120"],
               _environment(srv))
    assert "all 2 device(s) SUCCEEDED" in out
    _assert_updated(srv, fleet, "example-boto3", things)
    # The operator's key of the run was deleted at its end; the user and its policy stay.
    iam = srv.client("iam")
    assert iam.list_access_keys(UserName="ota-example-operator")["AccessKeyMetadata"] == []
    attached = iam.list_attached_user_policies(UserName="ota-example-operator")["AttachedPolicies"]
    assert [p["PolicyArn"] for p in attached] == ["arn:aws:iam::aws:policy/OverairOTAOperator"]


def test_awscli_example_runs_the_whole_ota_workflow(
        srv: RunningServer, signing: SigningFiles, fleet_of: object, tmp_path: Path) -> None:
    things = ["example-cli-1", "example-cli-2"]
    fleet = fleet_of(things)  # type: ignore[operator]
    firmware = tmp_path / "app-1.1.0.bin"
    firmware.write_bytes(make_firmware(NEW, SIZE, seed="cli"))
    env = _environment(srv) | {"OTA_THINGS": ",".join(things), "OTA_GROUP": "example-cli",
                               "OTA_BUCKET": "example-cli-firmware", "OTA_UPDATE_ID": "example-cli",
                               "OTA_TIMEOUT": "120"}
    out = _run(["bash", str(EXAMPLES / "ota_workflow_awscli.sh"), str(firmware), str(signing.cert),
                str(signing.key)], env)
    assert "all 2 device(s) SUCCEEDED" in out
    _assert_updated(srv, fleet, "example-cli", things)
    assert srv.client("iam").list_access_keys(UserName="ota-cli-operator")["AccessKeyMetadata"] == []
