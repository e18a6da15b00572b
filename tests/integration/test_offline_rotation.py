"""Key rotation reaches devices without a network path: an offline bundle carries the
published trust list chain (core/bundle.py `trust_lists`), which `overair-agent install`
offers to the agent's trust as the broker would (agent/trust.py `admit_trust_chain`)
before the job. A device provisioned with the old deployment key installs a bundle whose
metadata only the new key signed if, and only if, the bundle carries a chain that the
device's root signed to trust that key; a chain signed by another root is refused.
(The server's CreateOfflineBundle returns the published chain as `TrustLists`, which
`overair bundle create` writes into the bundle.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from overair.cli.agent_main import app as agent_app
from overair.cli.agent_main import status_report
from overair.core import deployment, trustlist
from overair.core.bundle import write_bundle
from overair.core.trustlist import TrustList
from overair.sim.firmware import make_firmware
from tests.integration.test_agent_deployment import strict_bundle
from tests.integration.test_agent_mqtt import IMAGE_SIZE, V2, BrokerEnv, broker, ota_job  # noqa: F401
from tests.integration.test_offline_bundle import STREAM, assert_refused, run_install, statement
from tests.pki_helpers import Issued, make_ca

NEW_KEY = ec.generate_private_key(ec.SECP256R1())


def chain_to_new_key(root: Issued) -> bytes:
    trust = TrustList(1, 1, (root.cert,), (NEW_KEY.public_key(),))
    return trustlist.encode_chain([trustlist.add_signature(trustlist.unsigned_envelope(trust), root.key)])


def rotated_bundle(env: BrokerEnv, path: Path, thing: str, chain: bytes | None) -> Path:
    """A bundle (its own job) whose metadata only the new deployment key signed."""
    job = f"job-{path.stem}"
    image = make_firmware(V2, IMAGE_SIZE, seed=thing)
    document = ota_job(env.signer, image, STREAM)
    document["overair"]["deployment"] = deployment.sign(statement(thing, job, image, V2), NEW_KEY)
    with path.open("wb") as f:
        write_bundle(f, thing, job, 1, document, [image], None, chain)
    return path


@pytest.mark.parametrize("platform", ["linux", "sim_mcu"])
def test_f2_offline_bundle_carries_the_rotation_that_trusts_its_deployment_key(
        broker: BrokerEnv, tmp_path: Path, platform: str) -> None:  # noqa: F811
    thing = f"offline-rotated-{platform}"
    device = strict_bundle(broker, tmp_path, thing, platform)
    assert_refused(run_install(device, rotated_bundle(broker, tmp_path / "bare.bundle", thing, None)),
                   "UnknownDeploymentKey")
    forged = chain_to_new_key(make_ca("not the device's root"))
    assert_refused(run_install(device, rotated_bundle(broker, tmp_path / "forged.bundle", thing, forged)),
                   "UnknownDeploymentKey")
    assert not (device / "state" / "trust-list.json").exists()
    assert status_report(device)["trust_list"]["version"] == 0
    chain = chain_to_new_key(broker.code_root)
    outcome = run_install(device, rotated_bundle(broker, tmp_path / "rotated.bundle", thing, chain))
    assert (outcome.status, outcome.version, outcome.error) == ("SUCCEEDED", "1.1.0", None), outcome
    assert (device / "state" / "trust-list.json").read_bytes() == chain  # held, walked again at boot
    trusted = status_report(device)["trust_list"]
    assert (trusted["version"], trusted["deployment_keys"], "problem" in trusted) == (1, 1, False)
    shown = CliRunner().invoke(agent_app, ["status", "--config", str(device)])
    assert shown.exit_code == 0, shown.output
    assert "trusted (trust list 1): CN=test code-signing root" in shown.output
