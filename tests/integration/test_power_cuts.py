"""R2: a power cut at every flash write of a whole update cycle on the simulated MCU.

The real agent `Runtime` runs against a real Mosquitto (mutual TLS) and the scripted
service of test_agent_mqtt.py, on a `SimMcu` (encrypted flash, A/B + factory slots,
secure boot). One uninterrupted run of the cycle (download -> verify -> activate ->
reboot -> self-test -> commit; or a self-test that fails -> rollback) counts its
flash operations K. Then for each cut point k the device starts from the same
provisioned flash with `cut_after_writes=k`: the k-th program/erase is left half done
and the device dies (the runtime thread stops on `PowerCut`). The agent's journal lives
in the flash too (a failsafe file of the encrypted file system), so its writes are cut
points like the image writes. The device is then reset (a new `Flash`/`SimMcu` on the
same file, a new `Runtime`) and runs to the end. For every k: the job ends SUCCEEDED or FAILED with a
reason, the device runs a valid image that matches that outcome, and a fresh boot of
the flash selects it (never "no bootable image").

The `delta` scenario is the same cycle for a delta update (core/delta.py): the stream
carries a patch from the factory image, the agent applies it into the inactive slot from
the running one (which it only reads) and verifies the result; an apply cut short leaves
no resumable file, so the job starts over with the patch. Measured with every cut point:
K = 47, 44 SUCCEEDED and 3 (cuts around activation) FAILED cleanly, as the full-image
`commit` scenario (K = 47, 44 and 3).

By default every 10th cut point (and the last) is tried; all of them run with
`.venv/bin/pytest -m slow tests/integration/test_power_cuts.py -s` (or `scripts/dev slow`).
The number of cut points tried is printed (`-s`) and recorded as a junit property.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from overair.agent.config import load_config
from overair.agent.platform.sim_mcu import SimMcu
from overair.agent.runtime import Runtime
from overair.core.delta import create_patch
from overair.core.delta_offer import OFFER_KEY, DeltaOffer
from overair.core.image import HEADER_SIZE, build_image
from overair.sim.firmware import make_firmware
from tests.integration.test_agent_mqtt import (  # noqa: F401 - broker is a fixture
    BLOCK,
    V1,
    V2,
    BrokerEnv,
    Service,
    broker,
    make_bundle,
    ota_job,
)

SECRET = b"power-cut device secret, 32 B..."
UID = bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")
IMAGE_SIZE = 6 * BLOCK - 100
CAPACITY = 16 * 1024
EVERY = 10
RUN_TIMEOUT = 30.0
FACTORY = make_firmware(V1, 20_000, seed="factory")


@dataclass
class Outcome:
    cut: bool  # the power failed during this run
    operations: int  # flash program/erase operations started


def _sim(flash: Path, cut: int | None = None) -> SimMcu:
    return SimMcu.open(flash, device_secret=SECRET, unique_id=UID, image_capacity=CAPACITY,
                       cut_after_writes=cut)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A provisioned device flash: the factory image (v1.0.0) installed, never booted."""
    path = tmp_path_factory.mktemp("template") / "flash.bin"
    _sim(path).install_factory(FACTORY)
    return path


@pytest.fixture
def service(broker: BrokerEnv) -> Iterator[Service]:  # noqa: F811 - uses the imported fixture
    svc = Service(broker)
    try:
        yield svc
    finally:
        svc.close()


class Device:
    def __init__(self, env: BrokerEnv, service: Service, root: Path, template: Path, thing: str,
                 self_test: str) -> None:
        self.service, self.thing = service, thing
        self.bundle = make_bundle(env, root, thing, command=self_test)
        toml = self.bundle / "agent.toml"
        # A trial image left without a job (its result was reported before the cut)
        # rolls back at the self-test deadline: keep it short.
        # The bitmap is saved every 2 blocks, so cuts also hit those saves and the
        # download resumes after them (R2: resumable download).
        toml.write_text(toml.read_text().replace("deadline_seconds = 20", "deadline_seconds = 2")
                        + "save_progress_every_blocks = 2\n")
        self.flash = root / thing / "flash.bin"
        shutil.copy(template, self.flash)
        if "-delta-" not in thing:
            image = make_firmware(V2, IMAGE_SIZE, seed="power")
            service.add_job(thing, f"job-{thing}", f"s-{thing}", image,
                            ota_job(env.signer, image, f"s-{thing}"))
            return
        # A delta update (core/delta.py): the stream carries a patch from the factory image;
        # cuts then also hit the patch's writes into the inactive slot.
        image = build_image(V2, FACTORY[HEADER_SIZE:10_000] + b"a delta" + FACTORY[10_007:])
        patch = create_patch(FACTORY, image)
        document = ota_job(env.signer, image, f"s-{thing}")
        document["afr_ota"]["files"][0][OFFER_KEY] = DeltaOffer(
            1, len(patch), hashlib.sha256(patch).digest(), V1, hashlib.sha256(FACTORY).digest()).to_json_obj()
        service.add_job(thing, f"job-{thing}", f"s-{thing}", patch, document)

    def _done(self, runtime: Runtime) -> bool:
        ex = self.service.executions[self.thing]
        if ex.status not in ("SUCCEEDED", "FAILED"):
            return False
        snap = runtime.snapshot()
        expected = "1.1.0" if ex.status == "SUCCEEDED" else "1.0.0"
        return snap.phase == "idle" and not snap.trial and snap.version == expected

    def run(self, cut: int | None) -> Outcome:
        sim = _sim(self.flash, cut)
        runtime = Runtime(load_config(self.bundle), platform=sim, tick_interval=0.05)
        runtime.start()
        try:
            deadline = time.monotonic() + RUN_TIMEOUT
            while time.monotonic() < deadline:
                if runtime.snapshot().error is not None:
                    assert "PowerCut" in str(runtime.snapshot().error), runtime.snapshot().error
                    return Outcome(True, sim.flash.operations)
                if self._done(runtime):
                    return Outcome(False, sim.flash.operations)
                time.sleep(0.02)
            ex = self.service.executions[self.thing]
            raise AssertionError(f"{self.thing} (cut {cut}) stuck: {runtime.snapshot()}; "
                                 f"updates {ex.updates}")
        finally:
            runtime.stop()
            sim.flash.close()

    def check_final(self) -> str:
        ex = self.service.executions[self.thing]
        status, details = ex.updates[-1]
        assert status in ("SUCCEEDED", "FAILED")
        assert details.get("reason"), details
        info = _sim(self.flash).boot()  # a cold boot selects a valid image
        assert not info.trial
        assert info.version == (V2 if status == "SUCCEEDED" else V1)
        return status


def _cut_points(total: int, everything: bool) -> list[int]:
    if everything:
        return list(range(1, total + 1))
    return sorted({*range(1, total + 1, EVERY), total})


def _suite(env: BrokerEnv, service: Service, root: Path, template: Path, scenario: str, self_test: str,
           expected: str, everything: bool, record_property: Callable[[str, object], None]) -> None:
    reference = Device(env, service, root, template, f"pc-{scenario}-ref", self_test)
    outcome = reference.run(None)
    assert not outcome.cut
    assert reference.check_final() == expected
    total = outcome.operations
    assert total > 10
    started = time.monotonic()
    results: dict[str, int] = {}
    cleanly_failed: list[int] = []  # cut points after which the job failed cleanly instead
    points = _cut_points(total, everything)
    for k in points:
        device = Device(env, service, root, template, f"pc-{scenario}-{k}", self_test)
        assert device.run(k).cut, f"cut point {k} of {total} was never reached"
        assert not device.run(None).cut
        status = device.check_final()
        results[status] = results.get(status, 0) + 1
        if status != expected:
            cleanly_failed.append(k)
    elapsed = time.monotonic() - started
    print(f"\n[R2 {scenario}] K = {total} flash write points; {len(points)} cut points tried in "
          f"{elapsed:.1f} s; outcomes {results}; {expected} expected, other outcome at k = {cleanly_failed}")
    record_property(f"{scenario}_cut_points_total", total)
    record_property(f"{scenario}_cut_points_tried", len(points))
    assert sum(results.values()) == len(points)


SCENARIOS = pytest.mark.parametrize(("scenario", "self_test", "expected"), [
    ("commit", "", "SUCCEEDED"),
    ("rollback", "false", "FAILED"),
    ("delta", "", "SUCCEEDED"),
])


@SCENARIOS
def test_r2_power_cut_at_every_10th_write_of_an_update_cycle(
        broker: BrokerEnv, service: Service, template: Path, tmp_path: Path,  # noqa: F811
        record_property: Callable[[str, object], None], scenario: str, self_test: str, expected: str) -> None:
    _suite(broker, service, tmp_path, template, scenario, self_test, expected, False, record_property)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@SCENARIOS
def test_r2_power_cut_at_every_write_of_an_update_cycle(
        broker: BrokerEnv, service: Service, template: Path, tmp_path: Path,  # noqa: F811
        record_property: Callable[[str, object], None], scenario: str, self_test: str, expected: str) -> None:
    _suite(broker, service, tmp_path, template, scenario, self_test, expected, True, record_property)
