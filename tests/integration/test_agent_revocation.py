"""Revoked code-signing certificates, end to end against a real Mosquitto (threat O2).

The scripted service of test_agent_mqtt.py publishes a signed revocation list retained
on `REVOCATIONS_TOPIC`, as overair's server does, and offers jobs; the agent runs
in-process. Threat ids in test names: O2 revoked signer still trusted, N2 mis-signed
update, N3 replay.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from overair.agent.runtime import REVOCATIONS_FILE, RevocationStore, Runtime
from overair.cli.agent_main import app as agent_cli
from overair.core.revocation import REVOCATIONS_TOPIC, RevocationList, sign_list
from overair.sim.firmware import make_firmware
from tests.integration import test_agent_mqtt as mqtt_env
from tests.integration.test_agent_mqtt import (
    IMAGE_SIZE,
    V2,
    BrokerEnv,
    Service,
    make_bundle,
    ota_job,
    start_agent,
)
from tests.pki_chain import signer_chain
from tests.pki_helpers import Issued, make_ca, make_signer

# The broker, the scripted service and the runtime clean-up of test_agent_mqtt.py; the
# broker is started once for this module, so every test clears the retained list it set.
broker = mqtt_env.broker
service = mqtt_env.service
runtimes = mqtt_env.runtimes

REVOKED_REASON = "0x000000e7: 0x00000006"  # PAL_BAD_SIGNER_CERT, CertificateRevoked
ISSUED_AT = 1_800_000_000
Publisher = Callable[[bytes], None]


@pytest.fixture(scope="module")
def revocation_signer() -> Issued:
    """The server's revocation key and the certificate every bundle carries."""
    return make_ca("overair revocation signer")


@pytest.fixture
def publish_list(service: Service) -> Iterator[Publisher]:
    """Publish an envelope retained, as the server does; the retained list is cleared after the test."""

    def publish(envelope: bytes) -> None:
        info = service.client.publish(REVOCATIONS_TOPIC, envelope, qos=1, retain=True)
        info.wait_for_publish(5)
        assert info.is_published()  # acknowledged: the broker holds it for the next subscriber

    yield publish
    publish(b"")  # an empty retained payload deletes the retained message


@pytest.fixture
def agent_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="overair.agent")
    return caplog


def revocations(sequence: int, *revoked: Issued) -> RevocationList:
    return RevocationList(sequence, ISSUED_AT + sequence, frozenset(c.cert.serial_number for c in revoked))


def signed_list(listed: RevocationList, signer: Issued) -> bytes:
    """The envelope `signer` (an EC key, as the server's revocation key is) signs."""
    assert isinstance(signer.key, ec.EllipticCurvePrivateKey)
    return sign_list(listed, signer.key)


def bundle_with_revocations(env: BrokerEnv, root: Path, thing: str, signer: Issued) -> Path:
    """A test_agent_mqtt bundle that also trusts `signer` for revocation lists."""
    bundle = make_bundle(env, root, thing)
    (bundle / "revocation-signer.pem").write_bytes(signer.cert_pem)
    toml = bundle / "agent.toml"
    line = 'revocation_signer = "revocation-signer.pem"\n'
    toml.write_text(toml.read_text().replace("[trust]\n", f"[trust]\n{line}"))
    return bundle


def add_signed_job(service: Service, thing: str, signer: Issued, seed: str) -> None:
    image = make_firmware(V2, IMAGE_SIZE, seed=seed)
    service.add_job(thing, f"job-{thing}", f"s-{thing}", image, ota_job(signer, image, f"s-{thing}"))


def offer(service: Service, thing: str) -> None:
    """Tell an idle, connected agent about its new job, as notify-next does."""
    view = service.executions[thing].view()
    service.client.publish(f"$aws/things/{thing}/jobs/notify-next",
                           json.dumps({"timestamp": 4, "execution": view}).encode(), 1)


def logged(caplog: pytest.LogCaptureFixture, level: int, text: str, timeout: float = 10.0) -> bool:
    """Poll the captured records (the agent logs from its own thread)."""
    deadline = time.monotonic() + timeout
    while True:
        if any(r.levelno == level and text in r.getMessage() for r in list(caplog.records)):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def assert_refused_as_revoked(service: Service, runtime: Runtime, thing: str) -> None:
    status, details = service.wait_terminal(thing).updates[-1]
    assert status == "FAILED"
    assert (details["reason"], details["check"]) == (REVOKED_REASON, "CertificateRevoked")
    snap = runtime.snapshot()
    assert (snap.version, snap.slot, snap.reboots) == ("1.0.0", "a", 0)  # still on the old image


def assert_accepted(service: Service, runtime: Runtime, thing: str) -> None:
    assert service.wait_terminal(thing).updates[-1] == ("SUCCEEDED", {"reason": "accepted v1.1.0"})
    assert runtime.wait(lambda s: s.version == "1.1.0" and s.phase == "idle" and not s.trial, 5)


# --- scenarios ------------------------------------------------------------------------------

def test_o2_agent_refuses_image_signed_by_a_certificate_revoked_by_a_signed_list(
        broker: BrokerEnv, service: Service, tmp_path: Path, runtimes: list[Runtime],
        revocation_signer: Issued, publish_list: Publisher) -> None:
    revoked, other = broker.signer, make_signer(broker.code_root, "second firmware signer")
    publish_list(signed_list(revocations(1, revoked), revocation_signer))
    add_signed_job(service, "dev-o2-revoked", revoked, "o2")
    add_signed_job(service, "dev-o2-control", other, "o2")
    refused = start_agent(bundle_with_revocations(broker, tmp_path, "dev-o2-revoked", revocation_signer),
                          runtimes)
    control = start_agent(bundle_with_revocations(broker, tmp_path, "dev-o2-control", revocation_signer),
                          runtimes)

    # The image is correctly signed by a certificate that chains to the device's root:
    # only the list makes it unacceptable (N2 check "CertificateRevoked").
    assert_refused_as_revoked(service, refused, "dev-o2-revoked")
    assert refused.snapshot().revocation_sequence == 1
    assert not (tmp_path / "dev-o2-revoked" / "state" / "slots" / "b" / "image.bin").exists()
    # Positive control: the same image from a signer the list does not name is installed.
    assert_accepted(service, control, "dev-o2-control")
    assert control.snapshot().revocation_sequence == 1


def test_o2_list_signed_by_the_wrong_key_is_ignored(
        broker: BrokerEnv, service: Service, tmp_path: Path, runtimes: list[Runtime],
        revocation_signer: Issued, publish_list: Publisher, agent_logs: pytest.LogCaptureFixture) -> None:
    forger = make_ca("overair revocation signer")  # the right name, the wrong key
    publish_list(signed_list(revocations(7, broker.signer), forger))
    add_signed_job(service, "dev-o2-forged", broker.signer, "forged")
    bundle = bundle_with_revocations(broker, tmp_path, "dev-o2-forged", revocation_signer)
    runtime = start_agent(bundle, runtimes)

    assert_accepted(service, runtime, "dev-o2-forged")
    assert logged(agent_logs, logging.WARNING, "revocation list refused: revocation list signature")
    assert runtime.snapshot().revocation_sequence is None
    assert runtime.snapshot().error is None
    assert not (bundle / "state" / REVOCATIONS_FILE).exists()


def test_n3_replaying_an_older_list_does_not_unrevoke(
        broker: BrokerEnv, service: Service, tmp_path: Path, runtimes: list[Runtime],
        revocation_signer: Issued, publish_list: Publisher, agent_logs: pytest.LogCaptureFixture) -> None:
    before = signed_list(revocations(1), revocation_signer)  # genuine, from before the revocation
    publish_list(signed_list(revocations(2, broker.signer), revocation_signer))
    bundle = bundle_with_revocations(broker, tmp_path, "dev-n3-replay", revocation_signer)
    runtime = start_agent(bundle, runtimes)
    assert runtime.wait(lambda s: s.revocation_sequence == 2, 10)

    publish_list(before)  # the captured older list, replayed while the agent listens
    assert logged(agent_logs, logging.WARNING, "revocation list 1 refused: older than the held list 2")
    assert runtime.snapshot().revocation_sequence == 2
    held = RevocationStore(bundle / "state").load(revocation_signer.cert)
    assert held is not None
    assert held.sequence == 2

    add_signed_job(service, "dev-n3-replay", broker.signer, "replay")
    offer(service, "dev-n3-replay")
    assert_refused_as_revoked(service, runtime, "dev-n3-replay")


def test_o2_the_held_list_signed_again_at_a_server_restart_is_not_taken_for_a_replay(
        broker: BrokerEnv, service: Service, tmp_path: Path, runtimes: list[Runtime],
        revocation_signer: Issued, publish_list: Publisher, agent_logs: pytest.LogCaptureFixture) -> None:
    """The server signs the list afresh (a new issued_at) whenever it connects to the
    broker: the same sequence with the same serials is the held list, said quietly."""
    agent_logs.set_level(logging.DEBUG, logger="overair.agent")
    listed = revocations(1, broker.signer)
    publish_list(signed_list(listed, revocation_signer))
    bundle = bundle_with_revocations(broker, tmp_path, "dev-o2-resigned", revocation_signer)
    runtime = start_agent(bundle, runtimes)
    assert runtime.wait(lambda s: s.revocation_sequence == 1, 10)
    publish_list(signed_list(replace(listed, issued_at=listed.issued_at + 3600), revocation_signer))
    assert logged(agent_logs, logging.DEBUG, "revocation list 1 is the one held")
    warned = [r for r in agent_logs.records
              if r.levelno >= logging.WARNING and "revocation" in r.getMessage()]
    assert not warned
    assert runtime.snapshot().revocation_sequence == 1


def test_o2_held_list_survives_an_agent_restart(
        broker: BrokerEnv, service: Service, tmp_path: Path, runtimes: list[Runtime],
        revocation_signer: Issued, publish_list: Publisher, agent_logs: pytest.LogCaptureFixture) -> None:
    publish_list(signed_list(revocations(1, broker.signer), revocation_signer))
    bundle = bundle_with_revocations(broker, tmp_path, "dev-o2-restart", revocation_signer)
    first = start_agent(bundle, runtimes)
    assert first.wait(lambda s: s.revocation_sequence == 1, 10)
    first.stop()
    assert first.wait(lambda s: not s.alive, 10)

    publish_list(b"")  # the retained list is gone: the next agent can only know it from its disk
    add_signed_job(service, "dev-o2-restart", broker.signer, "restart")
    second = start_agent(bundle, runtimes)
    assert_refused_as_revoked(service, second, "dev-o2-restart")
    assert second.snapshot().revocation_sequence == 1
    accepted = [r for r in agent_logs.records if "revocation list 1 accepted" in r.getMessage()]
    assert len(accepted) == 1  # by the first agent only: the second never received it

    result = CliRunner().invoke(agent_cli, ["status", "--config", str(bundle), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["revocations"]
    assert report["sequence"] == 1
    assert report["revoked_serials"] == [format(broker.signer.cert.serial_number, "x")]
    text = CliRunner().invoke(agent_cli, ["status", "--config", str(bundle)])
    assert "revocation list: sequence 1 (1 revoked)" in text.stdout


def test_o2_held_list_that_no_longer_verifies_is_ignored_at_boot(
        broker: BrokerEnv, service: Service, tmp_path: Path, runtimes: list[Runtime],
        revocation_signer: Issued, agent_logs: pytest.LogCaptureFixture) -> None:
    bundle = bundle_with_revocations(broker, tmp_path, "dev-o2-edited", revocation_signer)
    (bundle / "state").mkdir()
    forged = signed_list(revocations(9, broker.signer), make_ca("someone else"))
    (bundle / "state" / REVOCATIONS_FILE).write_bytes(forged)
    runtime = start_agent(bundle, runtimes)

    assert service.wait_until(lambda: service.next_gets.get("dev-o2-edited", 0) >= 1, 10)  # up and asking
    assert logged(agent_logs, logging.WARNING, "does not verify")
    snap = runtime.snapshot()
    assert (snap.alive, snap.error, snap.revocation_sequence) == (True, None, None)
    status = json.loads(CliRunner().invoke(agent_cli, ["status", "--config", str(bundle), "--json"]).stdout)
    assert status["revocations"]["sequence"] is None
    assert "does not verify" in status["revocations"]["problem"]


def test_o2_agent_refuses_a_signer_below_an_intermediate_ca_revoked_by_a_signed_list(
        broker: BrokerEnv, service: Service, tmp_path: Path, runtimes: list[Runtime],
        revocation_signer: Issued, publish_list: Publisher) -> None:
    """The list names the intermediate CA, not the signer: every certificate of the
    chain (root -> intermediate -> signer) is checked against it."""
    intermediate, signer = signer_chain(broker.code_root)
    other_intermediate, control_signer = signer_chain(broker.code_root)
    publish_list(signed_list(revocations(1, intermediate), revocation_signer))
    for thing, by, seed in (("dev-o2-intermediate", (signer, intermediate), "o2-i"),
                            ("dev-o2-intermediate-ok", (control_signer, other_intermediate), "o2-i")):
        image = make_firmware(V2, IMAGE_SIZE, seed=seed)
        document = ota_job(by[0], image, f"s-{thing}")
        document["overair"]["signer_chain"] = [base64.b64encode(c.cert_der).decode() for c in by]
        service.add_job(thing, f"job-{thing}", f"s-{thing}", image, document)
    refused = start_agent(bundle_with_revocations(broker, tmp_path, "dev-o2-intermediate", revocation_signer),
                          runtimes)
    control = start_agent(bundle_with_revocations(broker, tmp_path, "dev-o2-intermediate-ok",
                                                  revocation_signer), runtimes)

    assert_refused_as_revoked(service, refused, "dev-o2-intermediate")
    assert "intermediate" in service.executions["dev-o2-intermediate"].updates[-1][1]["detail"]
    # Positive control: the same kind of chain through an intermediate not on the list.
    assert_accepted(service, control, "dev-o2-intermediate-ok")
