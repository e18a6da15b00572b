"""Two `overair serve` processes sharing one PostgreSQL database and one S3 bucket
(SeaweedFS), each with its own Mosquitto (docs/scaling.md): an object uploaded through
one is served by the other, and a device registered through one, connected to the
other's broker, gets an OTA update created through the first, downloads it from the
second and reports SUCCEEDED. What crosses between the processes: the database, the
bucket, and the fan-out of notifications and access changes (jobs/fanout.py)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from overair.core.versions import Version
from overair.sim.firmware import make_firmware
from overair.sim.fleet import Fleet
from tests.e2e.conftest import BUCKET
from tests.e2e.ota_helpers import create_ota, wait_for
from tests.e2e.test_s3_backend import s3_settings
from tests.multi_server import ServerProcess, server_cluster
from tests.postgres_harness import PostgresCluster
from tests.seaweedfs_harness import SeaweedS3

IMAGE = make_firmware(Version(2, 0, 0), 200_000, seed="scale-out")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, postgres: PostgresCluster,
            seaweedfs: SeaweedS3) -> Iterator[list[ServerProcess]]:
    root = tmp_path_factory.mktemp("scale-out")
    toml = s3_settings(seaweedfs, seaweedfs.new_bucket(), root / "s3.secret")
    # Each data directory names the secret as ../s3.secret: one level below `root`.
    with server_cluster(root, postgres.new_database(), toml) as servers:
        s3 = servers[0].client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        yield servers


def test_an_object_uploaded_through_one_process_is_served_by_the_other(cluster: list[ServerProcess]) -> None:
    a, b = (server.client("s3") for server in cluster)
    data = make_firmware(Version(1, 2, 3), 70_000, seed="shared")
    version = a.put_object(Bucket=BUCKET, Key="shared.bin", Body=data)["VersionId"]
    got = b.get_object(Bucket=BUCKET, Key="shared.bin", VersionId=version)
    assert got["Body"].read() == data
    assert b.get_object(Bucket=BUCKET, Key="shared.bin", Range="bytes=10-19")["Body"].read() == data[10:20]
    b.delete_object(Bucket=BUCKET, Key="shared.bin", VersionId=version)
    assert [v["VersionId"] for v in a.list_object_versions(Bucket=BUCKET, Prefix="shared.bin")
            .get("Versions", [])] == []


def test_a_device_on_one_process_is_updated_by_an_ota_created_through_the_other(
        cluster: list[ServerProcess], tmp_path: Path) -> None:
    first, second = cluster
    factory = tmp_path / "factory.bin"
    factory.write_bytes(make_firmware(Version(1, 0, 0), 4096, seed="factory"))
    names = ["spread-a", "spread-b"]
    bundles = []
    for name in names:
        # Registered through the first process, connected to the second one's broker:
        # the second learns of the new certificate from the fan-out.
        bundle = first.provision(name, tmp_path / name, factory_image=factory)
        config = bundle / "agent.toml"
        config.write_text(re.sub(r"(?m)^port = \d+$", f"port = {second.settings.mqtt_port}",
                                 config.read_text(), count=1))
        if name == "spread-b":
            config.write_text(config.read_text().replace("[ota]\n", "[ota]\nprefer_http = true\n"))
        bundles.append(bundle)
    iot = first.client("iot")
    with Fleet(bundles) as fleet:
        assert fleet.wait(lambda s: all(x.connected for x in s.values()), 30), fleet.snapshots()
        targets = [iot.describe_thing(thingName=n)["thingArn"] for n in names]
        info = create_ota(first, "spread", targets, IMAGE, protocols=("MQTT", "HTTP"))  # type: ignore[arg-type]
        assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info.get("errorInfo")
        assert fleet.wait(lambda s: all(x.version == "2.0.0" and not x.trial for x in s.values()), 90), (
            fleet.snapshots())
        other = second.client("iot")

        def statuses() -> set[str]:
            return {other.describe_job_execution(jobId="AFR_OTA-spread", thingName=n)["execution"]["status"]
                    for n in names}

        assert wait_for(lambda: statuses() == {"SUCCEEDED"}, 30, "SUCCEEDED reports")


def test_when_the_leader_process_is_killed_the_other_leads_and_serves_on(
        cluster: list[ServerProcess]) -> None:
    """(Last in the module: it kills a process.) The first process to start leads; the
    other takes the leadership over once it is SIGKILLed with its broker, and goes on
    serving what the first stored."""
    first, second = cluster
    assert "scheduler leadership taken" in first.log.read_text(errors="replace")
    assert "scheduler leadership taken" not in second.log.read_text(errors="replace")
    s3 = first.client("s3")
    s3.put_object(Bucket=BUCKET, Key="before-the-kill.bin", Body=b"stored through the first")
    first.kill()
    wait_for(lambda: "scheduler leadership taken" in second.log.read_text(errors="replace"), 30,
             "the second process to take the leadership over")
    got = second.client("s3").get_object(Bucket=BUCKET, Key="before-the-kill.bin")
    assert got["Body"].read() == b"stored through the first"
