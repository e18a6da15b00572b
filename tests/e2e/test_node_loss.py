"""Losing a node in the middle of a rollout (issue 17 item 5, docs/scaling.md "Losing a
node"): two `overair serve` processes, each with its Mosquitto, on one PostgreSQL and one
S3 bucket (SeaweedFS), HAProxy in front of the two brokers and of the two download
endpoints (every node's pre-signed URLs name HAProxy); FreeRTOS-shaped devices
(bench/fleet_devices.py, each its own mutual-TLS connection and certificate) connect
through HAProxy only and reconnect by themselves. In the middle of the rollout one node
is lost: the whole serve process with its broker (SIGKILL), or separately the broker
alone (its supervisor starts it again; the service re-notifies devices once it hears
them again); the image goes in MQTT stream blocks or, in one test, in HTTPS Range GETs.
The rollout completes: every execution SUCCEEDED exactly once, as the database rows and
the API say (tests/e2e/loss_rollout.py).

The 1,000-device versions (a process, a broker) run in `scripts/dev slow`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

import psycopg
import pytest
from bench.fleet import BUCKET, GROUP
from bench.fleet_devices import FleetDeviceResult

from overair.core.versions import Version
from overair.server.jobs.leader import postgres_conninfo
from overair.sim.firmware import make_firmware
from tests.e2e.loss_rollout import Site, rollout_losing
from tests.e2e.ota_helpers import create_ota
from tests.e2e.test_device_cutoff import CUT_OFF_WITHIN, _gets_nothing
from tests.e2e.test_http_delivery import _get
from tests.e2e.test_s3_backend import s3_settings
from tests.e2e.test_server_security import Device
from tests.haproxy_harness import Haproxy, haproxy_config, running_haproxy
from tests.multi_server import ServerProcess, server_cluster
from tests.postgres_harness import PostgresCluster
from tests.seaweedfs_harness import SeaweedS3
from tests.server_harness import RunningServer, free_port

DOCS = Path(__file__).resolve().parents[2] / "docs" / "scaling.md"


class Nodes:
    def __init__(self, servers: list[ServerProcess], database_url: str, balancer: Haproxy) -> None:
        self.servers = servers
        self.database_url = database_url
        self.balancer_port = balancer.port  # the devices' MQTT
        self.download_port = balancer.download_port  # their HTTPS downloads, which every node's URLs name


@pytest.fixture
def nodes(tmp_path: Path, postgres: PostgresCluster, seaweedfs: SeaweedS3) -> Iterator[Nodes]:
    database_url = postgres.new_database()
    # Every node's pre-signed URLs name the balancer (127.0.0.1 is in the endpoint
    # certificate's names, as `init` makes it), so a URL outlives the node that rendered it.
    # Drawn before the nodes' own ports, which free_port() then never hands out again.
    download_port = free_port()
    toml = (f'download_public_url = "https://127.0.0.1:{download_port}"\n'
            + s3_settings(seaweedfs, seaweedfs.new_bucket(), tmp_path / "s3.secret"))
    with server_cluster(tmp_path, database_url, toml) as servers:
        s3 = servers[0].client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        servers[0].client("iot").create_thing_group(thingGroupName=GROUP)
        brokers = [server.settings.mqtt_port for server in servers]
        endpoints = [server.settings.download_port for server in servers]
        with running_haproxy(tmp_path, free_port(), brokers, download_port=download_port,
                             download_ports=endpoints) as balancer:
            yield Nodes(servers, database_url, balancer)


def _kill_process(node: ServerProcess) -> None:
    node.kill()


def _kill_broker(node: ServerProcess) -> None:
    """SIGKILL to the node's Mosquitto only (a child of the serve process)."""
    pids = subprocess.run(["pgrep", "-P", str(node.process.pid), "-x", "mosquitto"], capture_output=True,
                          text=True, check=True).stdout.split()
    assert len(pids) == 1, pids
    os.kill(int(pids[0]), signal.SIGKILL)


def rollout_losing_a_node(nodes: Nodes, root: Path, devices: int, lose: Callable[[ServerProcess], None],
                          *, image_size: int, device_processes: int = 1, timeout: float = 240,
                          protocol: str = "MQTT") -> list[FleetDeviceResult]:
    """The first node registers the devices and creates the update, then is lost; the
    second node's API counts. `protocol` HTTP: downloads through the balancer's HTTPS
    frontend."""
    first, second = nodes.servers
    conninfo = postgres_conninfo(nodes.database_url)
    assert conninfo is not None

    def executions(job: str) -> list[tuple[str, str, int]]:
        with psycopg.connect(conninfo) as connection:
            return connection.execute("SELECT thing_name, status, execution_number FROM job_executions "
                                      "WHERE job_id = %s", (job,)).fetchall()

    # The second node's broker admits the devices registered through the first through
    # the fan-out of access changes.
    site = Site(cast(RunningServer, first), second.client("iot"), nodes.balancer_port, nodes.download_port,
                executions)
    return rollout_losing(site, root, devices, lambda: lose(first), image_size=image_size,
                          device_processes=device_processes, timeout=timeout, protocol=protocol)


def test_losing_a_serve_process_and_its_broker_in_the_middle_of_a_rollout(nodes: Nodes,
                                                                          tmp_path: Path) -> None:
    rollout_losing_a_node(nodes, tmp_path, 20, _kill_process, image_size=2 * 1024 * 1024)
    second = nodes.servers[1]
    assert "scheduler leadership taken" in second.log.read_text(errors="replace")  # the first led


def test_losing_one_broker_in_the_middle_of_a_rollout(nodes: Nodes, tmp_path: Path) -> None:
    rollout_losing_a_node(nodes, tmp_path, 20, _kill_broker, image_size=2 * 1024 * 1024)
    log = nodes.servers[0].log.read_text(errors="replace")
    assert "mosquitto is back (restart 1)" in log


def test_losing_a_serve_process_in_the_middle_of_a_rollout_over_https(nodes: Nodes, tmp_path: Path) -> None:
    """The image in Range GETs of pre-signed URLs that name the balancer (the devices
    connect to the URL's address: a URL naming a node would fail with it): downloads
    cut with the lost node are made again through HAProxy to the other node, which
    serves the same URL, and go on from the block they were waiting for."""
    results = rollout_losing_a_node(nodes, tmp_path, 20, _kill_process, image_size=2 * 1024 * 1024,
                                    protocol="HTTP")
    assert all(r.requests >= r.blocks > 0 for r in results)  # HTTPS, not MQTT streams: one block a request
    # Some devices whose MQTT stayed on the other node were downloading from the lost one
    # (leastconn spreads both frontends' connections over both nodes, each on its own).
    assert sum(r.http_reconnects for r in results) > 0


def _on_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"{parts.hostname}:{port}").geturl()


def test_every_node_serves_every_download_url(nodes: Nodes, tmp_path: Path) -> None:
    """A pre-signed URL rendered by one node names the balancer and is served alike by
    every node (the URL-signing key and the object bytes are shared) and through the
    balancer; the endpoint's certificate is valid for the URL's host (checked against
    the fleet CA for that name, as devices do)."""
    first, second = nodes.servers
    thing = "any-node"
    device = _device(second, first.provision(thing, tmp_path / thing), thing)
    try:
        assert device.connect()
        device.subscribe(f"$aws/things/{thing}/jobs/#")
        image = make_firmware(Version(1, 1, 0), 50_000, seed="any-node")
        arn = first.client("iot").describe_thing(thingName=thing)["thingArn"]
        info = create_ota(cast(RunningServer, first), thing, [arn], image, protocols=("HTTP",))
        assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info.get("errorInfo")
        device.client.publish(f"$aws/things/{thing}/jobs/$next/get", json.dumps({"clientToken": "t"}), qos=1)
        replies = device.wait_for("/jobs/$next/get/accepted")
        assert replies
        url = json.loads(replies[-1][1])["execution"]["jobDocument"]["afr_ota"]["files"][0]["update_data_url"]
        assert url.startswith(f"https://127.0.0.1:{nodes.download_port}/")  # rendered by the second node
        for port in (first.settings.download_port, second.settings.download_port, nodes.download_port):
            status, _, body = _get(cast(RunningServer, first), _on_port(url, port), {"Range": "bytes=0-4095"})
            assert (status, body) == (206, image[:4096]), port
    finally:
        device.close()
    for node in nodes.servers:
        assert "which the endpoint's certificate" not in node.log.read_text(errors="replace")


def _device(node: ServerProcess, bundle: Path, thing: str) -> Device:
    device = Device(cast(RunningServer, node), bundle, thing)
    device.port = node.settings.mqtt_port
    return device


def test_access_withdrawn_through_one_node_cuts_the_device_off_on_every_node(nodes: Nodes,
                                                                             tmp_path: Path) -> None:
    """Certificates revoked, made INACTIVE or detached through the first node's API cut
    their devices off the second node's broker at once (the fan-out of access changes),
    and neither node lets them back in; a bystander on the same broker stays."""
    first, second = nodes.servers
    iot = first.client("iot")
    names = ["revoked", "inactive", "detached", "bystander"]
    bundles = {name: first.provision(name, tmp_path / name) for name in names}
    connected = {name: _device(second, bundles[name], name) for name in names}
    try:
        for device in connected.values():
            assert device.connect()
        principals = {name: iot.list_thing_principals(thingName=name)["principals"][0] for name in names}
        iot.update_certificate(certificateId=principals["revoked"].rpartition("/")[2], newStatus="REVOKED")
        iot.update_certificate(certificateId=principals["inactive"].rpartition("/")[2], newStatus="INACTIVE")
        iot.detach_thing_principal(thingName="detached", principal=principals["detached"])
        for name in ("revoked", "inactive", "detached"):
            assert connected[name].disconnected.wait(CUT_OFF_WITHIN), f"{name} still on the other node"
        assert not connected["bystander"].disconnected.is_set()
        for node in (first, second):
            for name in ("revoked", "inactive", "detached"):
                again = _device(node, bundles[name], name)
                try:
                    if name == "revoked":
                        assert not again.connect(timeout=3), f"{name} admitted by {node.name}"
                    elif again.connect(timeout=3):
                        assert _gets_nothing(cast(RunningServer, node), again, name), (name, node.name)
                finally:
                    again.close()
    finally:
        for device in connected.values():
            device.close()


@pytest.mark.slow
def test_losing_a_serve_process_in_the_middle_of_a_1000_device_rollout(nodes: Nodes, tmp_path: Path) -> None:
    rollout_losing_a_node(nodes, tmp_path, 1000, _kill_process, image_size=256 * 1024, device_processes=2,
                          timeout=600)


@pytest.mark.slow
def test_losing_one_broker_in_the_middle_of_a_1000_device_rollout(nodes: Nodes, tmp_path: Path) -> None:
    rollout_losing_a_node(nodes, tmp_path, 1000, _kill_broker, image_size=256 * 1024, device_processes=2,
                          timeout=600)
    assert "mosquitto is back (restart 1)" in nodes.servers[0].log.read_text(errors="replace")


def test_the_documented_haproxy_configuration_is_the_one_tested() -> None:
    nodes = [("node-1", "10.0.1.11"), ("node-2", "10.0.1.12")]
    example = haproxy_config("0.0.0.0:8883", [(name, f"{host}:8883") for name, host in nodes],
                             downloads=("0.0.0.0:443", [(name, f"{host}:8443") for name, host in nodes]))
    assert f"```\n{example}```" in DOCS.read_text()
