"""Resumable download across reboots (R2), end to end: the real `Runtime` against a real
Mosquitto (mutual TLS) and the scripted service of test_agent_mqtt.py.

A device downloads half of an update, then dies: the agent process is killed (SIGKILL,
Linux platforms) or the power fails in the middle of a flash write (simulated MCU).
After the restart it asks only for the blocks it does not hold, and the image it
assembles verifies. A kept bitmap for another job is discarded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from overair.agent.config import load_config
from overair.agent.platform.base import Platform
from overair.agent.platform.select import build_platform
from overair.agent.platform.sim_mcu import SimMcu
from overair.agent.progress import StagedProgress, is_needed
from overair.agent.runtime import Runtime
from overair.core.bitmap import needed_blocks
from overair.core.streamcodec import decode_get_stream
from overair.sim.firmware import make_firmware
from tests.integration.test_agent_mqtt import (  # noqa: F401 - broker is a fixture
    IMAGE_SIZE,
    V2,
    BrokerEnv,
    Service,
    broker,
    make_bundle,
    ota_job,
)

TOTAL = 60  # blocks of IMAGE_SIZE
HALF = 30
PLATFORMS = ("linux", "linux-sealed", "sim_mcu")


class LimitedService(Service):
    """Serves at most `limit` blocks per thing (None: all), and keeps the bitmap of every
    block request so that a test can see which blocks were asked for."""

    def __init__(self, env: BrokerEnv) -> None:
        self.limit: int | None = None
        self.served: dict[str, int] = {}
        self.asked: dict[str, list[set[int]]] = {}
        super().__init__(env)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if parts[3] == "streams":
            thing = parts[2]
            request = decode_get_stream(bytes(msg.payload), "cbor")
            wanted = needed_blocks(request.bitmap, request.block_offset, TOTAL)
            with self.lock:
                self.asked.setdefault(thing, []).append(set(wanted))
                if self.limit is not None and self.served.get(thing, 0) >= self.limit:
                    return  # the device waits, as behind a stalled link
                count = min(len(wanted), request.number_of_blocks or 1)
                self.served[thing] = self.served.get(thing, 0) + count
        super()._on_message(client, userdata, msg)


@pytest.fixture
def service(broker: BrokerEnv) -> Iterator[LimitedService]:  # noqa: F811
    svc = LimitedService(broker)
    try:
        yield svc
    finally:
        svc.close()


def device_bundle(env: BrokerEnv, root: Path, thing: str, platform: str) -> Path:
    bundle = make_bundle(env, root, thing)
    toml = bundle / "agent.toml"
    storage = 'factory_image = "factory.bin"\n'
    if platform == "sim_mcu":
        (bundle / "device-secret.bin").write_bytes(os.urandom(32))
        extra = ('platform = "sim_mcu"\nflash_file = "flash.bin"\nunique_id = "' + os.urandom(16).hex()
                 + '"\ndevice_secret_file = "device-secret.bin"\nimage_capacity = 65536\n')
    elif platform == "linux-sealed":
        (bundle / "device-secret.bin").write_bytes(os.urandom(32))
        (bundle / "machine-id").write_text(os.urandom(16).hex() + "\n")
        extra = 'device_secret_file = "device-secret.bin"\nmachine_id_file = "machine-id"\n'
    else:
        extra = ""
    # A stalled download is asked again after 1 s (the default is 10).
    toml.write_text(toml.read_text().replace(storage, storage + extra) + "request_timeout_seconds = 1\n")
    return bundle


def open_platform(bundle: Path) -> Platform:
    platform = build_platform(load_config(bundle), None)
    platform.boot()
    return platform


def interrupt_half_way(service: LimitedService, bundle: Path, thing: str, platform: str) -> None:
    """Download until HALF blocks were served, then kill the agent or cut the power."""
    service.limit = HALF
    if platform == "sim_mcu":
        runtime = Runtime(load_config(bundle), tick_interval=0.05)
        runtime.start()
        try:
            assert service.wait_until(lambda: service.served.get(thing, 0) >= HALF, 20)
            assert runtime.wait(lambda s: s.blocks_received >= HALF, 10)
            sim = runtime.platform
            assert isinstance(sim, SimMcu)
            # The power fails during the next flash write: the next block's.
            sim.flash.cut_after_writes = sim.flash.operations + 1
            service.limit = HALF + 8  # the device asks again after its request timeout
            assert runtime.wait(lambda s: s.error is not None, 20)
            assert "PowerCut" in str(runtime.snapshot().error)
        finally:
            runtime.stop()
        return
    proc = subprocess.Popen([sys.executable, "-c", "from overair.cli.agent_main import app; app()",
                             "run", "--config", str(bundle)], stderr=subprocess.DEVNULL)
    try:
        assert service.wait_until(lambda: service.served.get(thing, 0) >= HALF, 30)
        time.sleep(0.5)  # the served blocks are written (and the last bitmap saved)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()


def held(progress: StagedProgress) -> set[int]:
    return {i for i in range(TOTAL) if not is_needed(progress.needed, i)}


@pytest.mark.parametrize("platform", PLATFORMS)
def test_r2_interrupted_download_resumes_asking_only_for_missing_blocks(
        broker: BrokerEnv, service: LimitedService, tmp_path: Path, platform: str) -> None:  # noqa: F811
    thing = f"resume-{platform}"
    image = make_firmware(V2, IMAGE_SIZE, seed=thing)
    service.add_job(thing, f"job-{thing}", f"s-{thing}", image, ota_job(broker.signer, image, f"s-{thing}"))
    bundle = device_bundle(broker, tmp_path, thing, platform)
    interrupt_half_way(service, bundle, thing, platform)

    kept = open_platform(bundle).staged_progress()
    assert kept is not None, "nothing was kept of the interrupted download"
    have = held(kept)
    assert 8 <= len(have) <= HALF + 8
    service.limit = None
    service.asked[thing] = []
    runtime = Runtime(load_config(bundle))
    runtime.start()
    try:
        ex = service.wait_terminal(thing, 30)
        assert ex.updates[-1] == ("SUCCEEDED", {"reason": "accepted v1.1.0"}), ex.updates
        asked_after = service.asked[thing]
        assert asked_after, "no block was requested after the restart"
        assert asked_after[0] == set(range(TOTAL)) - have  # the first request: exactly the gaps
        assert all(not (request & have) for request in asked_after)  # held blocks never again
        assert runtime.wait(lambda s: s.version == "1.1.0" and not s.trial, 10)
    finally:
        runtime.stop()
    assert open_platform(bundle).staged_progress() is None


@pytest.mark.parametrize("platform", ["linux", "sim_mcu"])
def test_r2_kept_bitmap_of_another_job_is_discarded(
        broker: BrokerEnv, service: LimitedService, tmp_path: Path, platform: str) -> None:  # noqa: F811
    thing = f"other-{platform}"
    image = make_firmware(V2, IMAGE_SIZE, seed=thing)
    service.add_job(thing, "job-first", f"s-{thing}", image, ota_job(broker.signer, image, f"s-{thing}"))
    bundle = device_bundle(broker, tmp_path, thing, platform)
    interrupt_half_way(service, bundle, thing, platform)
    assert open_platform(bundle).staged_progress() is not None
    # The operator canceled that job; another one delivers the same file.
    service.add_job(thing, "job-second", f"s-{thing}", image, ota_job(broker.signer, image, f"s-{thing}"))
    service.limit = None
    service.asked[thing] = []
    runtime = Runtime(load_config(bundle))
    runtime.start()
    try:
        ex = service.wait_terminal(thing, 30)
        assert (ex.job_id, ex.updates[-1][0]) == ("job-second", "SUCCEEDED")
        assert service.asked[thing][0] == set(range(TOTAL))  # from scratch
    finally:
        runtime.stop()
