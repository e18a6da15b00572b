"""Overair agents take images far larger than a FreeRTOS device (issue 13, item 4), over
MQTT and over HTTP, and resume after the agent process is killed half-way (R2).

The agent runs as its own process (`overair-agent run`), reaching the server through
TLS-passthrough relays (tests/tcp_relay.py: what HAProxy `mode tcp` or nginx `stream` in
front of overair do), one for MQTT and one for the download endpoint, whose public URL
(`download_public_url`) names the relay. The relays count what they carry to the agent,
which shows that after the kill the agent fetched only what it did not have.

6 MiB (over the 4 MiB FreeRTOS limit) runs by default; 64 MiB (the agent's default
`max_file_size`), with the agent's default configuration, is `slow`. The agent fetches
one block per HTTP range request, so over HTTP the default run's agent uses 16 KiB blocks
(`[ota] block_size`) to keep the run short; MQTT uses the default 4 KiB.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from overair.agent.config import load_config
from overair.agent.platform.select import build_platform
from overair.agent.progress import is_needed
from overair.cli.provisioning import provision_thing
from overair.core.bitmap import block_count
from overair.core.limits import MIB
from overair.core.versions import Version
from overair.sim.firmware import make_firmware
from tests.e2e.ota_helpers import create_ota, wait_for
from tests.server_harness import RunningServer, free_port, running_server
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
    public_port = free_port()
    toml = f'download_public_url = "https://localhost:{public_port}"'
    with running_server(tmp / "server", settings_toml=toml) as srv:
        s3 = srv.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        downloads = Relay(("127.0.0.1", srv.settings.download_port), port=public_port)
        mqtt = Relay(("127.0.0.1", srv.settings.mqtt_port))
        try:
            yield Site(srv, mqtt, downloads, tmp)
        finally:
            mqtt.close()
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
    assert f"block_size = {DEFAULT_BLOCK}\n" in text
    config.write_text(text.replace(f"block_size = {DEFAULT_BLOCK}\n", f"block_size = {block_size}\n"))
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


def _status(srv: RunningServer, job: str, thing: str) -> str:
    return str(srv.client("iot").describe_job_execution(jobId=job, thingName=thing)["execution"]["status"])


def update_with_a_kill(site: Site, protocol: str, size: int, block: int = DEFAULT_BLOCK) -> None:
    """Create the update, kill the agent with SIGKILL when about 40% has crossed the relay,
    start it again, and check it finishes fetching no more than what it lacked."""
    name = f"big-{protocol.lower()}-{size // MIB}m"
    relay = site.mqtt if protocol == "MQTT" else site.downloads
    bundle = _agent_bundle(site, name, block)
    image = make_firmware(Version(1, 1, 0), size, seed=name)
    thing_arn = site.srv.client("iot").describe_thing(thingName=name)["thingArn"]
    info = create_ota(site.srv, name, [thing_arn], image, protocols=(protocol,))
    assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info
    job = info["awsIotJobId"]
    started = time.monotonic()
    relay.reset()
    agent = _start_agent(bundle)
    try:
        wait_for(lambda: relay.downstream >= size * 0.4, timeout=60 + size / MIB * 6, what="40% of the image")
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
    finally:
        if agent.poll() is None:
            agent.kill()
    held = _held_bytes(bundle, size, block)
    assert 0 < held < size
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


@pytest.mark.parametrize(("protocol", "block"), [("MQTT", DEFAULT_BLOCK), ("HTTP", 16 * 1024)])
def test_agent_updates_a_6_mib_image_and_resumes_after_a_kill(site: Site, protocol: str, block: int) -> None:
    update_with_a_kill(site, protocol, 6 * MIB, block)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["MQTT", "HTTP"])
def test_agent_updates_a_64_mib_image_and_resumes_after_a_kill(site: Site, protocol: str) -> None:
    update_with_a_kill(site, protocol, 64 * MIB)
