"""Overair agents take images far larger than a FreeRTOS device (issue 13, item 4), over
MQTT and over HTTP, and resume after the agent process is killed half-way (R2).

The agent runs as its own process (`overair-agent run`), reaching the server through
TLS-passthrough relays (tests/tcp_relay.py: what HAProxy `mode tcp` or nginx `stream` in
front of overair do), one for MQTT and one for the download endpoint, whose public URL
(`download_public_url`) names the relay. The relays count what they carry to the agent,
which shows that after the kill the agent fetched only what it did not have.

6 MiB (over the 4 MiB FreeRTOS limit) runs by default; 64 MiB (the agent's default
`max_file_size`) is `slow`. The agent runs with the configuration `overair thing create`
writes, 4 KiB blocks: over MQTT 8 blocks per request, over HTTP 16 blocks (64 KiB) per
Range request, each request counted against the device's download budget
(`Limits.device_downloads_per_second`), progress reports paced by time so that the
self-test report is never throttled behind them.
"""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from overair.agent.config import load_config
from overair.agent.platform.select import build_platform
from overair.agent.progress import is_needed
from overair.cli.provisioning import provision_thing
from overair.core.bitmap import block_count
from overair.core.limits import MIB
from overair.core.versions import Version
from overair.server.bootstrap import DEV_PROFILE
from overair.sim.firmware import make_firmware
from tests.e2e.ota_helpers import FINISHED, wait_for
from tests.server_harness import RunningServer, running_server
from tests.tcp_relay import Relay

BUCKET = "firmware"
DEFAULT_BLOCK = 4096  # what provisioning writes into agent.toml


@dataclass
class Site:
    srv: RunningServer
    mqtt: Relay  # devices -> broker
    downloads: Relay  # devices -> download endpoint (the public URL's port)
    tmp: Path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("large")
    # Bound before the server picks its ports, so that it cannot pick this one.
    downloads = Relay(None)
    toml = f'download_public_url = "https://localhost:{downloads.port}"'
    try:
        with running_server(tmp / "server", settings_toml=toml) as srv:
            s3 = srv.client("s3")
            s3.create_bucket(Bucket=BUCKET)
            s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
            downloads.target = ("127.0.0.1", srv.settings.download_port)
            mqtt = Relay(("127.0.0.1", srv.settings.mqtt_port))
            try:
                yield Site(srv, mqtt, downloads, tmp)
            finally:
                mqtt.close()
    finally:
        downloads.close()


def _agent_bundle(site: Site, name: str, block_size: int) -> Path:
    paths = site.srv.settings.paths
    factory = site.tmp / "factory.bin"
    if not factory.exists():
        factory.write_bytes(make_firmware(Version(1, 0, 0), 4096, seed="factory"))
    config = provision_thing(site.srv.client("iot"), name, site.tmp / name,
                             fleet_ca_pem=paths.fleet_ca_cert.read_bytes(),
                             code_signing_roots_pem=paths.code_signing_root.read_bytes(),
                             revocation_signer_pem=paths.revocation_signer_cert.read_bytes(),
                             mqtt_host="127.0.0.1", mqtt_port=site.mqtt.port, factory_image=factory)
    text = config.read_text()
    assert f"block_size = {DEFAULT_BLOCK}\nblocks_per_request = 8\n" in text
    per_request = max(1, min(8, (128 * 1024) // block_size))  # the agent's bound: 128 KiB a request
    # The agent's own progress pacing (by block count and by time) keeps a download this
    # fast within the device's job-update budget.
    config.write_text(text.replace(f"block_size = {DEFAULT_BLOCK}\nblocks_per_request = 8\n",
                                   f"block_size = {block_size}\nblocks_per_request = {per_request}\n"))
    return config.parent


def _start_agent(bundle: Path) -> subprocess.Popen[bytes]:
    log = (bundle / "agent.log").open("ab")
    return subprocess.Popen([sys.executable, "-c", "from overair.cli.agent_main import app; app()",
                             "run", "--config", str(bundle)], stdout=log, stderr=log)


def _held_bytes(bundle: Path, size: int, block: int) -> int:
    """Bytes of the partial download the killed agent kept (its bitmap)."""
    platform = build_platform(load_config(bundle), None)
    platform.boot()
    kept = platform.staged_progress()
    assert kept is not None, "nothing was kept of the interrupted download"
    total = block_count(size, block)
    held = [i for i in range(total) if not is_needed(kept.needed, i)]
    return sum(min(block, size - i * block) for i in held)


def _create_ota(srv: RunningServer, ota_id: str, thing: str, image: bytes, protocol: str) -> dict[str, Any]:
    """Upload the image as boto3 does a large file (multipart: a PutObject body is at most
    16 MiB) and create the update, signed with the development profile."""
    s3, iot = srv.client("s3"), srv.client("iot")
    s3.upload_fileobj(io.BytesIO(image), BUCKET, f"{ota_id}.bin")
    version = s3.head_object(Bucket=BUCKET, Key=f"{ota_id}.bin")["VersionId"]
    location = {"s3Location": {"bucket": BUCKET, "key": f"{ota_id}.bin", "version": version}}
    iot.create_ota_update(
        otaUpdateId=ota_id, targets=[iot.describe_thing(thingName=thing)["thingArn"]], protocols=[protocol],
        roleArn=f"arn:aws:iam::{srv.settings.account_id}:role/overair-ota",
        files=[{"fileName": "/fw.bin", "fileLocation": location,
                "codeSigning": {"startSigningJobParameter": {"signingProfileName": DEV_PROFILE}}}])

    def done() -> dict[str, Any] | None:
        info: dict[str, Any] = iot.get_ota_update(otaUpdateId=ota_id)["otaUpdateInfo"]
        return info if info["otaUpdateStatus"] in FINISHED else None

    return dict(wait_for(done, timeout=120, what=f"OTA update {ota_id}"))


def _status(srv: RunningServer, job: str, thing: str) -> str:
    return str(srv.client("iot").describe_job_execution(jobId=job, thingName=thing)["execution"]["status"])


def update_with_a_kill(site: Site, protocol: str, size: int, block: int = DEFAULT_BLOCK) -> None:
    """Create the update, let about 40% of it cross the relay, kill the agent with SIGKILL
    (the relay stalls there, so the agent cannot finish first), start it again, and check
    it finishes fetching no more than what it lacked."""
    name = f"big-{protocol.lower()}-{size // MIB}m"
    relay = site.mqtt if protocol == "MQTT" else site.downloads
    bundle = _agent_bundle(site, name, block)
    image = make_firmware(Version(1, 1, 0), size, seed=name)
    info = _create_ota(site.srv, name, name, image, protocol)
    assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info
    job = info["awsIotJobId"]
    started = time.monotonic()
    relay.reset()
    relay.hold_after(int(size * 0.4))
    agent = _start_agent(bundle)
    try:
        wait_for(lambda: relay.downstream >= size * 0.4, timeout=60 + size / MIB * 6, what="40% of the image")
        time.sleep(0.5)  # what crossed is written (and the bitmap saved) before the power goes
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
    finally:
        if agent.poll() is None:
            agent.kill()
    held = _held_bytes(bundle, size, block)
    assert 0 < held < size
    relay.hold_after(None)
    relay.reset()
    agent = _start_agent(bundle)
    try:
        wait_for(lambda: _status(site.srv, job, name) == "SUCCEEDED", timeout=120 + size / MIB * 12,
                 what=f"{name} to succeed")
        elapsed = time.monotonic() - started
        after = relay.downstream
        # Resumed: what crossed the relay after the restart is about what was missing
        # (plus MQTT/TLS framing), never the whole image again.
        assert after < size - held // 2, (after, size, held)
        print(f"\n{protocol}: {size} bytes updated end to end in {elapsed:.1f} s, killed once "
              f"(kept {held} bytes, fetched {after} bytes after the restart)")
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(15)
        except subprocess.TimeoutExpired:
            agent.kill()


@pytest.mark.parametrize(("protocol", "block"), [("MQTT", DEFAULT_BLOCK), ("HTTP", DEFAULT_BLOCK)])
def test_agent_updates_a_6_mib_image_and_resumes_after_a_kill(site: Site, protocol: str, block: int) -> None:
    update_with_a_kill(site, protocol, 6 * MIB, block)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize(("protocol", "block"), [("MQTT", DEFAULT_BLOCK), ("HTTP", DEFAULT_BLOCK)])
def test_agent_updates_a_64_mib_image_and_resumes_after_a_kill(site: Site, protocol: str, block: int) -> None:
    update_with_a_kill(site, protocol, 64 * MIB, block)
