"""Offline bundles (core/bundle.py) installed by `overair-agent install` on a real agent
(real Runtime and platform, real X.509 and ECDSA) with no broker connection: the
bundle is the only input, and it is built here as an attacker with a USB stick could,
from correctly code-signed images and metadata signed (or not) by the deployment key.
Each refusal names its check and leaves the device on its old image. The bundle made by
the real server: tests/e2e/test_offline_bundle.py."""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from overair.agent.bundle_install import InstallOutcome, install
from overair.agent.config import load_config
from overair.agent.fsutil import DataDirLock
from overair.agent.machine import reasons
from overair.agent.platform.select import build_platform
from overair.agent.platform.sim_mcu import SimMcu
from overair.agent.runtime import load_trust
from overair.cli.agent_main import status_report
from overair.core import deployment
from overair.core.bundle import write_bundle
from overair.core.deployment import DeployedFile, Deployment
from overair.core.revocation import RevocationList, sign_list
from overair.core.versions import Version
from overair.sim.firmware import make_firmware
from tests.integration.test_agent_deployment import DEPLOYMENT_KEY, strict_bundle
from tests.integration.test_agent_mqtt import (  # noqa: F401 - broker is a fixture
    IMAGE_SIZE,
    V2,
    BrokerEnv,
    broker,
    ota_job,
)
from tests.pki_helpers import make_ca, make_signer

V3 = Version(1, 2, 0)
STREAM = "bundle-0123456789abcdef"
SOURCE = f"{deployment.BUNDLE_SOURCE_PREFIX}ota-1"


def statement(thing: str, job: str, image: bytes, version: Version, counter: int = 0, /,
              **changes: Any) -> Deployment:
    base = Deployment(job_id=job, thing=thing, files=(
        DeployedFile("/firmware", len(image), hashlib.sha256(image).digest(), str(version), counter),),
        stream=STREAM, url_path=SOURCE, expires=int(time.time()) + 3600, sequence=1000)
    return replace(base, **changes)


def offline_bundle(env: BrokerEnv, path: Path, thing: str, job: str, image: bytes, *,
                   version: Version = V2, counter: int = 0, shipped: bytes | None = None,
                   key: ec.EllipticCurvePrivateKey = DEPLOYMENT_KEY, signer: Any = None,
                   revocations: bytes | None = None, stated: dict[str, Any] | None = None) -> Path:
    """A bundle of `image` (signed by `signer`, else the fleet's code signer) with metadata
    signed by `key` (`stated`: changes to it); `shipped`: the bytes put in the bundle
    instead of `image`."""
    document = ota_job(signer or env.signer, image, STREAM)
    document["overair"]["deployment"] = deployment.sign(statement(thing, job, image, version, counter,
                                                                  **(stated or {})), key)
    with path.open("wb") as f:
        write_bundle(f, thing, job, 1, document, [image if shipped is None else shipped], revocations)
    return path


def run_install(device: Path, bundle: Path) -> InstallOutcome:
    return install(load_config(device), bundle, timeout=60)


def assert_refused(outcome: InstallOutcome, check: str) -> None:
    assert (outcome.status, outcome.details.get("check")) == ("FAILED", check), outcome
    assert (outcome.version, outcome.reboots, outcome.error) == ("1.0.0", 0, None)  # nothing installed


@pytest.mark.parametrize("platform", ["linux", "sim_mcu"])
def test_f2_offline_bundle_signed_by_the_deployment_key_updates_the_device(
        broker: BrokerEnv, tmp_path: Path, platform: str) -> None:  # noqa: F811
    thing = f"offline-ok-{platform}"
    device = strict_bundle(broker, tmp_path, thing, platform)
    image = make_firmware(V2, IMAGE_SIZE, seed=thing)
    outcome = run_install(device, offline_bundle(broker, tmp_path / "ok.bundle", thing, "job-ok", image))
    assert (outcome.status, outcome.details, outcome.version, outcome.reboots, outcome.error) == \
        ("SUCCEEDED", {"reason": "accepted v1.1.0"}, "1.1.0", 1, None)


def test_f1_expired_offline_bundle_is_refused(broker: BrokerEnv, tmp_path: Path) -> None:  # noqa: F811
    thing = "offline-expired"
    image = make_firmware(V2, IMAGE_SIZE, seed=thing)
    bundle = offline_bundle(broker, tmp_path / "b", thing, "job-e", image,
                            stated={"expires": int(time.time()) - 60})
    assert_refused(run_install(strict_bundle(broker, tmp_path, thing), bundle), "DeploymentMetadataExpired")


def test_f2_offline_bundle_for_another_thing_is_refused(broker: BrokerEnv, tmp_path: Path) -> None:  # noqa: F811
    thing = "offline-other-thing"
    image = make_firmware(V2, IMAGE_SIZE, seed=thing)
    bundle = offline_bundle(broker, tmp_path / "b", thing, "job-t", image, stated={"thing": "another-device"})
    assert_refused(run_install(strict_bundle(broker, tmp_path, thing), bundle), "DeploymentForAnotherThing")


def test_f2_offline_bundle_signed_by_an_unknown_key_is_refused(
        broker: BrokerEnv, tmp_path: Path) -> None:  # noqa: F811
    thing = "offline-unknown-key"
    image = make_firmware(V2, IMAGE_SIZE, seed=thing)
    bundle = offline_bundle(broker, tmp_path / "b", thing, "job-k", image,
                            key=ec.generate_private_key(ec.SECP256R1()))
    assert_refused(run_install(strict_bundle(broker, tmp_path, thing), bundle), "UnknownDeploymentKey")


def test_f2_offline_bundle_with_online_metadata_is_refused(broker: BrokerEnv, tmp_path: Path) -> None:  # noqa: F811
    """Metadata captured from an online delivery (its url_path is not a bundle's) cannot
    be shipped in a bundle; the reverse is tests/unit/test_bundle_trust.py."""
    thing = "offline-online-metadata"
    image = make_firmware(V2, IMAGE_SIZE, seed=thing)
    bundle = offline_bundle(broker, tmp_path / "b", thing, "job-o", image,
                            stated={"url_path": "/downloads/fw"})
    assert_refused(run_install(strict_bundle(broker, tmp_path, thing), bundle), "DeploymentSourceMismatch")


def test_f2_tampered_image_in_an_offline_bundle_is_refused(broker: BrokerEnv, tmp_path: Path) -> None:  # noqa: F811
    """The image's bytes changed (and the bundle's manifest rewritten to match): its code
    signature no longer verifies, checked before anything is activated."""
    thing = "offline-tampered"
    image = make_firmware(V2, IMAGE_SIZE, seed=thing)
    tampered = image[:-1] + bytes([image[-1] ^ 1])
    bundle = offline_bundle(broker, tmp_path / "b", thing, "job-x", image, shipped=tampered)
    assert_refused(run_install(strict_bundle(broker, tmp_path, thing), bundle), "BadSignature")


def test_f2_offline_bundle_of_another_build_is_refused(broker: BrokerEnv, tmp_path: Path) -> None:  # noqa: F811
    """A correctly code-signed image that is not the one the metadata describes (mixed
    files): the metadata's SHA-256 refuses it."""
    thing = "offline-mixed"
    image = make_firmware(V2, IMAGE_SIZE, seed=thing)
    other = make_firmware(V2, IMAGE_SIZE, seed="another build of 1.1.0")
    document_image = other  # the document (and its code signature) is for `other`
    bundle = offline_bundle(broker, tmp_path / "b", thing, "job-m", document_image,
                            stated={"files": statement(thing, "job-m", image, V2).files})
    assert_refused(run_install(strict_bundle(broker, tmp_path, thing), bundle), "DeploymentFilesMismatch")


def test_f2_offline_bundle_signed_outside_the_device_roots_is_refused(
        broker: BrokerEnv, tmp_path: Path) -> None:  # noqa: F811
    thing = "offline-untrusted-signer"
    image = make_firmware(V2, IMAGE_SIZE, seed=thing)
    rogue = make_signer(make_ca("rogue code-signing root"))
    bundle = offline_bundle(broker, tmp_path / "b", thing, "job-r", image, signer=rogue)
    assert_refused(run_install(strict_bundle(broker, tmp_path, thing), bundle), "UntrustedChain")


def test_f1_offline_bundle_older_than_the_running_image_is_refused(
        broker: BrokerEnv, tmp_path: Path) -> None:  # noqa: F811
    thing = "offline-older"
    device = strict_bundle(broker, tmp_path, thing)
    newer = make_firmware(V3, IMAGE_SIZE, seed=thing)
    assert run_install(device, offline_bundle(broker, tmp_path / "new", thing, "job-new", newer,
                                              version=V3)).status == "SUCCEEDED"
    older = make_firmware(V2, IMAGE_SIZE, seed=thing)
    outcome = run_install(device, offline_bundle(broker, tmp_path / "old", thing, "job-old", older,
                                                 stated={"sequence": 2000}))
    assert (outcome.status, outcome.details.get("reason"), outcome.version, outcome.reboots) == \
        ("FAILED", reasons.rejected(reasons.ERR_DOWNGRADE_NOT_ALLOWED), "1.2.0", 0)


def test_f1_offline_bundle_below_the_security_counter_is_refused(
        broker: BrokerEnv, tmp_path: Path) -> None:  # noqa: F811
    thing = "offline-counter"
    device = strict_bundle(broker, tmp_path, thing)
    fixed = make_firmware(V2, IMAGE_SIZE, seed=thing, security_counter=2)
    assert run_install(device, offline_bundle(broker, tmp_path / "fixed", thing, "job-fix", fixed,
                                              counter=2)).status == "SUCCEEDED"
    vulnerable = make_firmware(V3, IMAGE_SIZE, seed=thing, security_counter=1)
    outcome = run_install(device, offline_bundle(broker, tmp_path / "vuln", thing, "job-vuln", vulnerable,
                                                 version=V3, counter=1, stated={"sequence": 2000}))
    assert (outcome.status, outcome.details.get("check"), outcome.version, outcome.reboots) == \
        ("FAILED", reasons.SECURITY_COUNTER_CHECK, "1.1.0", 0)


def test_f1_replayed_offline_bundles_are_refused(broker: BrokerEnv, tmp_path: Path) -> None:  # noqa: F811
    """The bundle just installed, presented again, is not applied twice (its recorded
    result is repeated: N3); an older bundle (a lower sequence: signed before the one
    installed) is refused even for a newer image."""
    thing = "offline-replayed"
    device = strict_bundle(broker, tmp_path, thing)
    image = make_firmware(V2, IMAGE_SIZE, seed=thing)
    current = offline_bundle(broker, tmp_path / "current", thing, "job-cur", image, stated={"sequence": 5000})
    assert run_install(device, current).status == "SUCCEEDED"
    again = run_install(device, current)
    assert (again.status, again.version, again.reboots) == ("SUCCEEDED", "1.1.0", 0)
    newer = make_firmware(V3, IMAGE_SIZE, seed=thing)
    stale = offline_bundle(broker, tmp_path / "stale", thing, "job-stale", newer, version=V3,
                           stated={"sequence": 4000})
    outcome = run_install(device, stale)
    assert (outcome.status, outcome.details.get("check"), outcome.version, outcome.reboots) == \
        ("FAILED", "DeploymentMetadataReplayed", "1.1.0", 0)


def test_offline_bundle_failing_its_self_test_is_rolled_back(broker: BrokerEnv, tmp_path: Path) -> None:  # noqa: F811
    """The same power-cut-safe path as online: the image boots on trial and, failing its
    self-test, the device rolls back to the image it ran."""
    thing = "offline-self-test"
    device = strict_bundle(broker, tmp_path, thing)
    image = make_firmware(V2, IMAGE_SIZE, seed=thing)
    bundle = offline_bundle(broker, tmp_path / "b", thing, "job-st", image)
    outcome = install(load_config(device), bundle, timeout=60,
                      self_test_hook=lambda v: "the application did not start" if v == V2 else None)
    assert (outcome.status, outcome.version, outcome.reboots) == ("FAILED", "1.0.0", 2)


@pytest.mark.parametrize("share", [0.01, 0.3, 0.8, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 1.0])
def test_offline_install_survives_a_power_cut_at_any_flash_operation(
        broker: BrokerEnv, tmp_path: Path, share: float) -> None:  # noqa: F811
    """The power fails at the flash operation `share` of the way through an install
    (download, activation, self-test, commit, final journal); running the install again
    ends with a committed 1.1.0 or, as online when the cut stops the new image from
    booting after its `self_test: ready` report, a FAILED job on the old image: never
    anything in between, and the journal says which."""
    thing = f"offline-cut-{int(share * 100)}"
    image = make_firmware(V2, IMAGE_SIZE, seed="power cut")
    twin = strict_bundle(broker, tmp_path / "twin", thing, "sim_mcu")  # counts the operations
    counter = _sim_platform(twin)
    bundle = offline_bundle(broker, tmp_path / "b", thing, "job-c", image)
    assert install(load_config(twin), bundle, platform=counter, timeout=60).status == "SUCCEEDED"
    device = strict_bundle(broker, tmp_path, thing, "sim_mcu")
    platform = _sim_platform(device)
    platform.flash.cut_after_writes = max(1, round(counter.flash.operations * share))
    cut = install(load_config(device), bundle, platform=platform, timeout=60)
    assert "PowerCut" in str(cut.error)
    again = install(load_config(device), bundle, timeout=60)
    assert again.error is None
    assert (again.status, again.version) in {("SUCCEEDED", "1.1.0"), ("FAILED", "1.0.0")}, again
    report = status_report(device)
    assert (report["last_result"]["status"], report["running"]["version"], report["running"]["trial"]) == \
        (again.status, again.version, False)


def _sim_platform(device: Path) -> SimMcu:
    config = load_config(device)
    platform = build_platform(config, lambda: load_trust(config))
    assert isinstance(platform, SimMcu)
    return platform


def test_o2_revocation_list_carried_by_an_offline_bundle_is_held_and_applied(
        broker: BrokerEnv, tmp_path: Path) -> None:  # noqa: F811
    """The server's signed revocation list travels in the bundle: a device that never
    connected admits it (it is signed and newer than none) before the image is verified,
    so an image whose signer was revoked is refused; a list signed by another key is not
    admitted and blocks nothing."""
    revoker = make_ca("overair revocation signer")
    listed = RevocationList(3, 1_800_000_000, frozenset({broker.signer.cert.serial_number}))
    assert isinstance(revoker.key, ec.EllipticCurvePrivateKey)
    image = make_firmware(V2, IMAGE_SIZE, seed="revoked")
    outcomes = {}
    for case, key in (("signed", revoker.key), ("forged", make_ca("overair revocation signer").key)):
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        thing = f"offline-revoked-{case}"
        device = strict_bundle(broker, tmp_path, thing)
        (device / "revocation-signer.pem").write_bytes(revoker.cert_pem)
        toml = device / "agent.toml"
        trusts_revoker = '[trust]\nrevocation_signer = "revocation-signer.pem"\n'
        toml.write_text(toml.read_text().replace("[trust]\n", trusts_revoker))
        bundle = offline_bundle(broker, tmp_path / f"{case}.bundle", thing, "job-rv", image,
                                revocations=sign_list(listed, key))
        outcomes[case] = (run_install(device, bundle), status_report(device)["revocations"])
    refused, held = outcomes["signed"]
    assert_refused(refused, "CertificateRevoked")
    assert held is not None
    assert held["sequence"] == 3
    installed, none_held = outcomes["forged"]
    assert (installed.status, installed.version, none_held) == ("SUCCEEDED", "1.1.0", None)


def test_an_offline_install_is_refused_while_the_agent_runs_on_the_same_storage(
        broker: BrokerEnv, tmp_path: Path) -> None:  # noqa: F811
    """`overair-agent install` and `run` share the journal, slots and staged image: the
    install must not start beside a running agent (and leaves the device unchanged)."""
    thing = "offline-busy"
    device = strict_bundle(broker, tmp_path, thing)
    image = make_firmware(V2, IMAGE_SIZE, seed=thing)
    bundle = offline_bundle(broker, tmp_path / "busy.bundle", thing, "job-busy", image)
    lock = DataDirLock(load_config(device).storage.data_dir)
    lock.acquire()  # what a running agent holds
    try:
        outcome = run_install(device, bundle)
    finally:
        lock.release()
    assert outcome.status == ""
    assert outcome.error is not None
    assert "another overair agent" in outcome.error
    assert run_install(device, bundle).status == "SUCCEEDED"  # once the agent is gone
