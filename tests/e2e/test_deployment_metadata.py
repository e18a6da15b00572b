"""F1 and F2 through the real server, broker and agents: an agent provisioned as
`overair thing create` provisions it requires signed deployment metadata; the server
signs it into every delivery of a CreateOTAUpdate job to it (its rollouts, over MQTT and
HTTPS, are tested in test_rollout.py, test_http_delivery.py and, next to FreeRTOS
devices that never receive it, test_freertos_shaped.py). Here: a correctly code-signed
job put on the device's queue by a server process that does not hold the deployment key
(CreateJob) is refused by that agent, and installed by one that does not require
metadata (the positive control)."""

from __future__ import annotations

from pathlib import Path

from overair.sim.firmware import make_firmware
from overair.sim.fleet import Fleet
from tests.e2e.ota_helpers import wait_for
from tests.e2e.test_rollout import (  # noqa: F401 - test_signer is a fixture
    SIZE,
    V2,
    _bundles,
    _finished,
    _hand_made_job,
    test_signer,
)
from tests.pki_helpers import Issued, sign_file
from tests.server_harness import RunningServer


def test_f2_job_injected_without_the_deployment_key_is_refused_by_an_agent_that_requires_metadata(
        srv: RunningServer, tmp_path: Path, test_signer: tuple[Issued, Issued]) -> None:  # noqa: F811
    root, signer = test_signer
    strict, lenient = "e2e-f2-strict", "e2e-f2-lenient"
    (strict_bundle,) = _bundles(srv, tmp_path, [strict], extra_roots=root.cert_pem)
    (lenient_bundle,) = _bundles(srv, tmp_path, [lenient], extra_roots=root.cert_pem,
                                 require_deployment_metadata=False)
    image = make_firmware(V2, SIZE, seed="injected")
    iot = srv.client("iot")
    with Fleet([strict_bundle, lenient_bundle]) as fleet:
        assert fleet.wait(lambda snaps: all(s.connected for s in snaps.values()), timeout=30)
        jobs = {thing: _hand_made_job(srv, thing, image, sign_file(signer, image), signer, f"f2-{thing}")
                for thing in (strict, lenient)}
        for thing, job_id in jobs.items():
            wait_for(_finished(iot, job_id, [thing]), what=f"{thing}'s execution to finish")
        snaps = fleet.snapshots()
    details = iot.describe_job_execution(jobId=jobs[strict], thingName=strict)["execution"]["statusDetails"]
    assert details["detailsMap"]["check"] == "MissingDeploymentMetadata"
    assert snaps[strict].version == "1.0.0"
    positive = iot.describe_job_execution(jobId=jobs[lenient], thingName=lenient)["execution"]
    assert positive["status"] == "SUCCEEDED"
    assert snaps[lenient].version == "1.1.0"
