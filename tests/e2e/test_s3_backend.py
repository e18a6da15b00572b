"""The whole server with its object bytes in S3 (a SeaweedFS server): an operator
uploads an image and creates an OTA update, the server signs it (the signed envelope is
an object too), and real overair agents download it, one over MQTT streams and one over
HTTPS, install it and report SUCCEEDED. The bytes are in the S3 bucket, not on the
server's disk."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from overair.core.versions import Version
from overair.server.storage.s3_blobs import S3Blobs
from overair.sim.firmware import make_firmware
from overair.sim.fleet import Fleet
from tests.blob_helpers import stored_names
from tests.e2e.conftest import BUCKET
from tests.e2e.ota_helpers import create_ota, wait_for
from tests.seaweedfs_harness import SECRET_KEY, SeaweedS3
from tests.server_harness import RunningServer, running_server

IMAGE = make_firmware(Version(2, 0, 0), 300_000, seed="s3-backend")


def s3_settings(seaweedfs: SeaweedS3, bucket: str, secret_file: Path) -> str:
    """The `[object_store]` table for a data directory next to `secret_file`."""
    secret_file.write_text(SECRET_KEY + "\n")
    os.chmod(secret_file, 0o600)
    location = seaweedfs.location(bucket)
    return (f'[object_store]\nbackend = "s3"\nbucket = "{bucket}"\nendpoint_url = "{location.endpoint_url}"\n'
            f'region = "us-east-1"\nprefix = "overair/"\npath_style = true\n'
            f'access_key_id = "{location.access_key_id}"\nsecret_access_key_file = "../{secret_file.name}"\n')


@pytest.fixture(scope="module")
def s3_srv(tmp_path_factory: pytest.TempPathFactory, seaweedfs: SeaweedS3) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("s3-server")
    toml = s3_settings(seaweedfs, seaweedfs.new_bucket(), root / "s3.secret")
    with running_server(root / "data", settings_toml=toml) as running:
        s3 = running.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        yield running


def test_agents_update_over_mqtt_and_https_from_s3_stored_images(s3_srv: RunningServer,
                                                                 tmp_path: Path) -> None:
    objects = s3_srv.server.objects
    assert isinstance(objects.blobs, S3Blobs)
    iot = s3_srv.client("iot")
    factory = tmp_path / "factory.bin"
    factory.write_bytes(make_firmware(Version(1, 0, 0), 4096, seed="factory"))
    names = ["s3-mqtt", "s3-https"]
    bundles = []
    for name in names:
        bundle = s3_srv.provision(name, tmp_path / name, factory_image=factory)
        if name == "s3-https":
            config = bundle / "agent.toml"
            config.write_text(config.read_text().replace("[ota]\n", "[ota]\nprefer_http = true\n"))
        bundles.append(bundle)
    with Fleet(bundles) as fleet:
        assert fleet.wait(lambda s: all(x.connected for x in s.values()), 30)
        targets = [iot.describe_thing(thingName=n)["thingArn"] for n in names]
        info = create_ota(s3_srv, "s3-both", targets, IMAGE, protocols=("MQTT", "HTTP"))
        assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info.get("errorInfo")
        assert fleet.wait(lambda s: all(x.version == "2.0.0" and not x.trial for x in s.values()), 90), (
            fleet.snapshots())

        def statuses() -> set[str]:
            return {iot.describe_job_execution(jobId="AFR_OTA-s3-both", thingName=name)["execution"]["status"]
                    for name in names}

        assert wait_for(lambda: statuses() == {"SUCCEEDED"}, 30, "SUCCEEDED reports")
    stored = stored_names(objects.blobs, f"data/{BUCKET}/")
    assert len(stored) >= 2  # the image and its signed copy, in the bucket ...
    local = s3_srv.settings.paths.objects / "data"
    assert not local.exists() or not any(p.is_file() for p in local.rglob("*"))  # ... not on the disk


@pytest.mark.slow  # ~1 minute of retries; test_s3_blobs.py has the default run's variant
def test_an_object_store_going_down_is_503_never_500(tmp_path: Path) -> None:
    """The server's own SeaweedFS dies while it runs: every object operation through the
    API is 503 ServiceUnavailable (never a 500, after the server's and the client's
    retries), listings (database only) and the other APIs go on."""
    seaweed = SeaweedS3.start()
    try:
        toml = s3_settings(seaweed, seaweed.new_bucket(), tmp_path / "s3.secret")
        with running_server(tmp_path / "data", settings_toml=toml) as srv:
            s3, iot = srv.client("s3"), srv.client("iot")
            s3.create_bucket(Bucket=BUCKET)
            s3.put_object(Bucket=BUCKET, Key="kept.bin", Body=b"stored before the outage")
            seaweed.process.kill()
            seaweed.process.wait(10)
            attempts: list[Callable[[], object]] = [
                lambda: s3.get_object(Bucket=BUCKET, Key="kept.bin"),
                lambda: s3.head_object(Bucket=BUCKET, Key="kept.bin"),
                lambda: s3.put_object(Bucket=BUCKET, Key="new.bin", Body=b"x")]
            for attempt in attempts:
                with pytest.raises(ClientError) as exc:
                    attempt()
                assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
            assert [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]] == ["kept.bin"]
            iot.create_thing(thingName="still-served")  # the rest of the server goes on
            assert iot.describe_thing(thingName="still-served")["thingName"] == "still-served"
    finally:
        seaweed.stop()
