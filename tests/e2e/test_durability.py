"""The server killed with SIGKILL in the middle of a rollout and started again: the
broker goes down with it (no orphan holding the port), and the rollout carries on from
the database: every device finishes, each execution exactly once."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from overair.cli.client import ApiClients
from overair.cli.provisioning import provision_thing
from overair.core.versions import Version
from overair.server.bootstrap import DEV_PROFILE, initialize
from overair.server.delivery import nginx_front
from overair.server.settings import load_settings
from overair.sim.firmware import make_firmware
from overair.sim.fleet import Fleet
from tests.processes import alive
from tests.server_harness import free_port

OVERAIR = str(Path(sys.executable).parent / "overair")
BUCKET = "firmware"


class ServeProcess:
    def __init__(self, data_dir: Path, http_port: int) -> None:
        self.data_dir, self.http_port = data_dir, http_port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [OVERAIR, "serve", "--data-dir", str(self.data_dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/health", timeout=2):
                    return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        raise AssertionError("overair serve did not become healthy")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeProcess]:
    http_port, mqtt_port = free_port(), free_port()
    initialize(tmp_path / "server", http_port=http_port, mqtt_port=mqtt_port, download_port=free_port())
    process = ServeProcess(tmp_path / "server", http_port)
    process.start()
    yield process
    process.stop()


def _broker_running(data_dir: Path) -> bool:
    config = str(data_dir / "broker" / "mosquitto.conf")
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if config in cmdline and state != "Z":
                return True
    return False


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds it
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_server_killed_mid_rollout_and_restarted_loses_nothing(serve: ServeProcess, tmp_path: Path) -> None:
    data_dir = serve.data_dir
    settings = load_settings(data_dir)
    clients = ApiClients.from_data_dir(data_dir)
    iot, s3 = clients.client("iot"), clients.client("s3")
    factory = tmp_path / "factory.bin"
    factory.write_bytes(make_firmware(Version(1, 0, 0), 4096, seed="factory"))
    group = iot.create_thing_group(thingGroupName="durable")["thingGroupArn"]
    names = [f"durable-{i}" for i in range(3)]
    bundles = []
    for name in names:
        config = provision_thing(
            iot,
            name,
            tmp_path / name,
            fleet_ca_pem=settings.paths.fleet_ca_cert.read_bytes(),
            code_signing_roots_pem=settings.paths.code_signing_root.read_bytes(),
            mqtt_host="127.0.0.1",
            mqtt_port=settings.mqtt_port,
            group="durable",
            factory_image=factory,
        )
        # Small blocks one at a time: the download is still running when the server dies.
        config.write_text(
            config.read_text().replace(
                "block_size = 4096\nblocks_per_request = 8\n", "block_size = 1024\nblocks_per_request = 1\n"
            )
        )
        bundles.append(config.parent)
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    version = s3.put_object(
        Bucket=BUCKET, Key="fw.bin", Body=make_firmware(Version(1, 1, 0), 768 * 1024, seed="durable")
    )["VersionId"]
    downloading = threading.Event()
    progress = {name: 0 for name in names}

    def on_progress(thing: str, _job: str, received: int, _total: int) -> None:
        progress[thing] = received
        if all(progress.values()):
            downloading.set()

    with Fleet(bundles, progress=on_progress) as fleet:
        assert fleet.wait(lambda s: all(x.connected for x in s.values()), 30)
        iot.create_ota_update(
            otaUpdateId="durable-1",
            targets=[group],
            protocols=["MQTT"],
            roleArn=f"arn:aws:iam::{settings.account_id}:role/overair-ota",
            files=[
                {
                    "fileName": "/fw.bin",
                    "fileLocation": {"s3Location": {"bucket": BUCKET, "key": "fw.bin", "version": version}},
                    "codeSigning": {"startSigningJobParameter": {"signingProfileName": DEV_PROFILE}},
                }
            ],
        )
        assert downloading.wait(60), "the devices never started downloading"
        at_kill = dict(progress)
        serve.kill()
        deadline = time.monotonic() + 10
        while _broker_running(data_dir) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _broker_running(data_dir), "the broker outlived the killed server"
        assert _port_free(settings.mqtt_port)
        serve.start()
        assert fleet.wait(lambda s: all(x.version == "1.1.0" and not x.trial for x in s.values()), 120), (
            fleet.snapshots()
        )
    iot = ApiClients.from_data_dir(data_dir).client("iot")
    assert any(0 < at_kill[n] < 768 for n in names)  # killed while downloading (768 blocks)
    for name in names:
        execution = iot.describe_job_execution(jobId="AFR_OTA-durable-1", thingName=name)["execution"]
        assert execution["status"] == "SUCCEEDED"
        assert execution["executionNumber"] == 1  # one execution per device, never a second
    details = iot.describe_job(jobId="AFR_OTA-durable-1")["job"]["jobProcessDetails"]
    assert details["numberOfSucceededThings"] == 3


@pytest.mark.skipif(not Path("/usr/sbin/nginx").exists(), reason="scripts/dev test installs nginx")
def test_a_killed_server_takes_its_download_front_down_and_starts_it_again(tmp_path: Path) -> None:
    # nginx outliving a SIGKILLed server kept the front's port: the restarted server could
    # not start its front (and the old nginx served on with a stale configuration).
    http_port, front_port = free_port(), free_port()
    data_dir = tmp_path / "server"
    initialize(data_dir, http_port=http_port, mqtt_port=free_port(), download_port=free_port())
    config = data_dir / "overair.toml"
    config.write_text(f'download_front = "nginx"\ndownload_front_port = {front_port}\n' + config.read_text())
    serve = ServeProcess(data_dir, http_port)
    serve.start()
    try:
        front = data_dir / "download-front"
        decisions = Path((front / nginx_front.DECISIONS_RECORD).read_text())
        assert decisions.is_dir()
        processes = _front_processes(front)
        assert len(processes) > 1  # the master and its workers
        serve.kill()
        deadline = time.monotonic() + 10
        while any(map(alive, processes)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in processes if alive(pid)], "nginx outlived the killed server"
        assert _port_free(front_port)
        serve.start()
        assert not decisions.exists()  # the killed server's decisions, removed at the start
        assert _front_processes(front)
    finally:
        serve.stop()


def _front_processes(front: Path) -> set[int]:
    """The master of the nginx front in `front` (its pid file) and its children, if alive."""
    try:
        master = int((front / "nginx.pid").read_text())
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    except (OSError, ValueError):
        return set()
    return {master, *map(int, children)}
