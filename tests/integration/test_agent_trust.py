"""Key lifecycle on a real agent (real Runtime, Mosquitto with mutual TLS, the scripted
service of test_agent_mqtt.py), on both platforms.

P2 without a time bomb: an image admitted while its signer certificate was valid keeps
booting after the certificate expires (secure boot checks the signature under the trust
that holds now, not the signer's validity against today's clock; agent/trust.py
`DeviceTrust.admit_boot`), while a new image by that signer is refused (N2: validity is
checked against the clock when an image is admitted)."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest

from overair.agent.config import load_config
from overair.agent.runtime import Runtime
from overair.core.versions import Version
from overair.sim.firmware import make_firmware
from tests.integration.test_agent_mqtt import (  # noqa: F401 - broker and service are fixtures
    IMAGE_SIZE,
    V2,
    BrokerEnv,
    Service,
    broker,
    ota_job,
    runtimes,
    service,
    start_agent,
)
from tests.integration.test_agent_resume import device_bundle
from tests.pki_helpers import NOW, make_signer

HOUR = dt.timedelta(hours=1)
# The device's clock when it installs the update: half a day behind, inside the
# signer's validity; at the restart the device's clock is the real one, past it.
INSTALLED_AT_OFFSET = 12 * 3600.0


@pytest.mark.parametrize("platform", ["linux", "sim_mcu"])
def test_p2_image_keeps_booting_after_its_signer_certificate_expires(
        broker: BrokerEnv, service: Service, tmp_path: Path, runtimes: list[Runtime],  # noqa: F811
        platform: str) -> None:
    thing = f"expiry-{platform}"
    signer = make_signer(broker.code_root, "signer that expired since",
                         not_before=NOW - 20 * HOUR, not_after=NOW - 2 * HOUR)
    bundle = device_bundle(broker, tmp_path, thing, platform)
    image = make_firmware(V2, IMAGE_SIZE, seed=f"expiry-{platform}")
    service.add_job(thing, "job-signed", "s-signed", image, ota_job(signer, image, "s-signed"))
    installing = Runtime(load_config(bundle), clock=lambda: time.time() - INSTALLED_AT_OFFSET)
    runtimes.append(installing)
    installing.start()
    assert service.wait_terminal(thing).updates[-1] == ("SUCCEEDED", {"reason": "accepted v1.1.0"})
    assert installing.wait(lambda s: s.phase == "idle" and s.version == "1.1.0" and not s.trial, 10)
    installing.stop()

    runtime = start_agent(bundle, runtimes)  # the real clock: the signer has expired
    assert runtime.wait(lambda s: s.connected and s.phase == "idle", 10)
    snap = runtime.snapshot()
    assert (snap.version, snap.slot, snap.error) == ("1.1.0", "b", None)  # no fallback to the old image

    # What the device admits from now on is still checked against its clock.
    newer = make_firmware(Version(1, 2, 0), IMAGE_SIZE, seed=f"late-{platform}")
    service.add_job(thing, "job-late", "s-late", newer, ota_job(signer, newer, "s-late"))
    service.replay(thing, service.executions[thing].view())
    ex = service.wait_terminal(thing)
    assert ex.job_id == "job-late"
    assert ex.updates[-1][0] == "FAILED"
    assert ex.updates[-1][1]["check"] == "CertificateExpired"
    assert runtime.snapshot().version == "1.1.0"
