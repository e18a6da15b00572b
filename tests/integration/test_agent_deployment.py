"""F1 and F2 on a real agent (real Runtime, Mosquitto with mutual TLS): the scripted
service of test_agent_mqtt.py plays a compromised broker or server process, which can
publish any job message but does not hold the deployment key. The agent's bundle
requires signed deployment metadata, as `overair thing create` writes it. Each refusal
leaves the device on its old image, and names its check. The pure decisions:
tests/unit/test_trust_f1_f2.py; through the real server: tests/e2e/test_deployment_metadata.py."""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from overair.agent.runtime import Runtime
from overair.core import deployment
from overair.core.deployment import DeployedFile, Deployment
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

DEPLOYMENT_KEY = ec.generate_private_key(ec.SECP256R1())


def strict_bundle(env: BrokerEnv, root: Path, thing: str, platform: str = "linux") -> Path:
    bundle = device_bundle(env, root, thing, platform)
    (bundle / "deployment-keys.pem").write_bytes(deployment.public_pem(DEPLOYMENT_KEY.public_key()))
    toml = bundle / "agent.toml"
    strict = '[trust]\ndeployment_keys = "deployment-keys.pem"\nrequire_deployment_metadata = true\n'
    toml.write_text(toml.read_text().replace("[trust]\n", strict))
    return bundle


def described(image: bytes, version: Version = V2) -> tuple[DeployedFile, ...]:
    return (DeployedFile("/firmware", len(image), hashlib.sha256(image).digest(), str(version), 0),)


def statement(device: str, job: str, source: str, image: bytes, **changes: Any) -> Deployment:
    base = Deployment(job_id=job, thing=device, files=described(image), stream=source, url_path="",
                      expires=int(time.time()) + 600, sequence=100)
    return replace(base, **changes)


def job_with(env: BrokerEnv, image: bytes, stream: str, stated: Deployment | None,
             key: ec.EllipticCurvePrivateKey = DEPLOYMENT_KEY) -> dict[str, Any]:
    doc = ota_job(env.signer, image, stream)
    if stated is not None:
        doc["overair"]["deployment"] = deployment.sign(stated, key)
    return doc


def refused(service: Service, runtime: Runtime, thing: str, check: str) -> None:  # noqa: F811
    status, details = service.wait_terminal(thing).updates[-1]
    assert (status, details.get("check")) == ("FAILED", check), details
    snap = runtime.snapshot()
    assert (snap.version, snap.reboots) == ("1.0.0", 0)  # nothing was installed


@pytest.mark.parametrize("platform", ["linux", "sim_mcu"])
def test_f2_job_with_metadata_signed_by_the_deployment_key_updates_the_device(
        broker: BrokerEnv, service: Service, tmp_path: Path, runtimes: list[Runtime],  # noqa: F811
        platform: str) -> None:
    thing = f"deploy-ok-{platform}"
    image = make_firmware(V2, IMAGE_SIZE, seed=thing)
    service.add_job(thing, "job-ok", "s-ok", image,
                    job_with(broker, image, "s-ok", statement(thing, "job-ok", "s-ok", image)))
    start_agent(strict_bundle(broker, tmp_path, thing, platform), runtimes)
    assert service.wait_terminal(thing).updates[-1] == ("SUCCEEDED", {"reason": "accepted v1.1.0"})


FORGERIES = {
    # check the agent names: (statement changes, signed by another key, no metadata at all)
    "MissingDeploymentMetadata": ({}, False, True),
    "UnknownDeploymentKey": ({}, True, False),
    "DeploymentForAnotherThing": ({"thing": "some-other-device"}, False, False),
    "DeploymentForAnotherJob": ({"job_id": "job-of-another-rollout"}, False, False),
    "DeploymentSourceMismatch": ({"stream": "stream-of-another-release"}, False, False),
}


@pytest.mark.parametrize("check", sorted(FORGERIES))
def test_f2_job_forged_at_the_broker_is_refused_before_downloading(
        broker: BrokerEnv, service: Service, tmp_path: Path, runtimes: list[Runtime],  # noqa: F811
        check: str) -> None:
    changes, other_key, missing = FORGERIES[check]
    thing = f"forged-{check.lower()[:24]}"
    image = make_firmware(V2, IMAGE_SIZE, seed=thing)  # correctly code-signed: only the metadata is wrong
    stated = None if missing else statement(thing, "job-f", "s-f", image, **changes)
    key = ec.generate_private_key(ec.SECP256R1()) if other_key else DEPLOYMENT_KEY
    service.add_job(thing, "job-f", "s-f", image, job_with(broker, image, "s-f", stated, key))
    runtime = start_agent(strict_bundle(broker, tmp_path, thing), runtimes)
    refused(service, runtime, thing, check)
    assert not service.requests  # not one block was asked for


def test_f2_mixed_files_metadata_of_another_release_is_refused_before_activation(
        broker: BrokerEnv, service: Service, tmp_path: Path, runtimes: list[Runtime]) -> None:  # noqa: F811
    thing = "forged-mixed"
    image = make_firmware(V2, IMAGE_SIZE, seed=thing)
    other_release = make_firmware(V2, IMAGE_SIZE, seed="another build of 1.1.0")
    stated = statement(thing, "job-m", "s-m", other_release)  # same name and size, other bytes
    service.add_job(thing, "job-m", "s-m", image, job_with(broker, image, "s-m", stated))
    runtime = start_agent(strict_bundle(broker, tmp_path, thing), runtimes)
    refused(service, runtime, thing, "DeploymentFilesMismatch")


def test_f1_expired_metadata_is_refused(
        broker: BrokerEnv, service: Service, tmp_path: Path, runtimes: list[Runtime]) -> None:  # noqa: F811
    thing = "frozen-expired"
    image = make_firmware(V2, IMAGE_SIZE, seed=thing)
    stated = statement(thing, "job-e", "s-e", image, expires=int(time.time()) - 60)
    service.add_job(thing, "job-e", "s-e", image, job_with(broker, image, "s-e", stated))
    runtime = start_agent(strict_bundle(broker, tmp_path, thing), runtimes)
    refused(service, runtime, thing, "DeploymentMetadataExpired")


def test_f1_replayed_older_metadata_is_refused_after_a_restart(
        broker: BrokerEnv, service: Service, tmp_path: Path, runtimes: list[Runtime]) -> None:  # noqa: F811
    thing = "frozen-replayed"
    bundle = strict_bundle(broker, tmp_path, thing)
    first = make_firmware(V2, IMAGE_SIZE, seed=thing)
    service.add_job(thing, "job-1", "s-1", first,
                    job_with(broker, first, "s-1", statement(thing, "job-1", "s-1", first, sequence=500)))
    runtime = start_agent(bundle, runtimes)
    assert service.wait_terminal(thing).updates[-1][0] == "SUCCEEDED"
    runtime.stop()
    # A delivery captured before the last one (a lower sequence), replayed after a restart.
    newer = make_firmware(Version(1, 2, 0), IMAGE_SIZE, seed=f"{thing}-2")
    stated = statement(thing, "job-2", "s-2", newer, sequence=400, files=described(newer, Version(1, 2, 0)))
    service.add_job(thing, "job-2", "s-2", newer, job_with(broker, newer, "s-2", stated))
    runtime = start_agent(bundle, runtimes)
    status, details = service.wait_terminal(thing).updates[-1]
    assert (status, details.get("check")) == ("FAILED", "DeploymentMetadataReplayed"), details
    assert runtime.snapshot().version == "1.1.0"
