"""The device agent under hostile input, against a real Mosquitto (issue 12).

The scripted service of test_agent_mqtt.py plays the server, and here also the attacker
on the server side or the broker path: it offers hostile job documents, serves hostile
stream blocks, and "loses" a FAILED report so that the same poison comes back after a
restart (what made finding 9 a crash loop). The agent runs in-process with LinuxSlots.

Threat ids in test names: N2 (a job must not choose which local file the agent reads as
its signer certificate); `test_agent_survives_*` for finding 9 (nothing a server or
broker sends stops the agent; a defect in handling one job fails that job only).
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtensionOID

from overair.agent.config import load_config
from overair.agent.platform.linux_slots import LinuxSlots
from overair.agent.runtime import Runtime
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
from tests.pki_helpers import Issued, make_signer, sign_file

broker = mqtt_env.broker
service = mqtt_env.service
runtimes = mqtt_env.runtimes

PARSER = "0x0000000c: 0x00000005"  # OtaErrJobParserError: NonConformingJobDoc
DEFECT = "0x00000002: 0x00000000"  # OtaErrPanic: a contained defect
BAD_BLOCK = "0x000000e0: 0x00000000"
BAD_SIGNER = "0x000000e7: 0x00000009"  # PAL_BAD_SIGNER_CERT, MissingSignerCertificate
UNREADABLE_SIGNER = "0x000000e7: 0x00000008"  # PAL_BAD_SIGNER_CERT, BadCertificate


def _alive(runtime: Runtime) -> None:
    snapshot = runtime.snapshot()
    assert (snapshot.alive, snapshot.error) == (True, None)


def _offer(service: Service, thing: str) -> None:
    """Tell an idle, connected agent about its job, as notify-next does."""
    view = service.executions[thing].view()
    service.client.publish(f"$aws/things/{thing}/jobs/notify-next",
                           json.dumps({"timestamp": 4, "execution": view}).encode(), 1)


def _lose_the_report(service: Service, thing: str) -> None:
    """The FAILED report never reached the server: the execution is still QUEUED, and
    it is offered again at the next `$next/get` (how finding 9 became a crash loop)."""
    with service.lock:
        execution = service.executions[thing]
        execution.status, execution.details = "QUEUED", {}


def _restart(runtime: Runtime, bundle: Path, runtimes: list[Runtime],
             make: Callable[[Path], Runtime] | None = None) -> Runtime:
    runtime.stop()
    assert runtime.wait(lambda s: not s.alive, 10)
    if make is None:
        return start_agent(bundle, runtimes)
    again = make(bundle)
    runtimes.append(again)
    again.start()
    return again


def _good_job_afterwards(service: Service, runtime: Runtime, env: BrokerEnv, thing: str) -> None:
    image = make_firmware(V2, IMAGE_SIZE, seed=f"good-{thing}")
    service.add_job(thing, f"good-{thing}", f"s-good-{thing}", image,
                    ota_job(env.signer, image, f"s-good-{thing}"))
    _offer(service, thing)
    assert service.wait_terminal(thing).updates[-1] == ("SUCCEEDED", {"reason": "accepted v1.1.0"})
    assert runtime.wait(lambda s: s.version == "1.1.0" and s.phase == "idle" and not s.trial, 10)
    _alive(runtime)


# --- finding 9: hostile documents, and the poison coming back after a restart -------------------

def test_agent_survives_a_non_ascii_signature_and_its_replay_after_a_restart(
        broker: BrokerEnv, service: Service, tmp_path: Path, runtimes: list[Runtime]) -> None:
    thing = "dev-poison"
    image = make_firmware(V2, IMAGE_SIZE, seed="poison")
    document = ota_job(broker.signer, image, "s-poison")
    document["afr_ota"]["files"][0]["sig-sha256-ecdsa"] = "MEUCIQ\u00e9" + "A" * 90
    service.add_job(thing, "job-poison", "s-poison", image, document)
    bundle = make_bundle(broker, tmp_path, thing)
    runtime = start_agent(bundle, runtimes)
    status, details = service.wait_terminal(thing).updates[-1]
    assert (status, details["reason"]) == ("FAILED", PARSER)
    assert "sig-sha256-ecdsa" in details["detail"]
    _alive(runtime)

    _lose_the_report(service, thing)
    runtime = _restart(runtime, bundle, runtimes)
    # Offered again after the restart: the journal knows the job, its result is repeated
    # and its document is not handled again.
    assert service.wait_until(lambda: len(service.executions[thing].updates) == 2, 10)
    assert service.executions[thing].updates[-1] == ("FAILED", details)
    assert runtime.wait(lambda s: s.phase == "idle", 5)
    _alive(runtime)
    _good_job_afterwards(service, runtime, broker, thing)


class DefectivePlatform(LinuxSlots):
    """LinuxSlots with a bug that fires for images of one size: a stand-in for any
    defect the agent has in handling one job's input. `fired` counts across restarts."""

    fired: list[int] = []

    def __init__(self, root: Path, poison_size: int) -> None:
        super().__init__(root)
        self.poison_size = poison_size

    def create_staging(self, size: int, binding: bytes = b"", block_size: int = 0) -> None:
        if size == self.poison_size:
            self.fired.append(size)
            raise ZeroDivisionError("a defect in handling this job")
        super().create_staging(size, binding, block_size)


def test_agent_survives_a_defect_in_handling_one_job_fails_it_and_serves_the_next(
        broker: BrokerEnv, service: Service, tmp_path: Path, runtimes: list[Runtime]) -> None:
    thing, poison_size = "dev-defect", IMAGE_SIZE - 7
    image = make_firmware(V2, poison_size, seed="defect")
    service.add_job(thing, "job-defect", "s-defect", image, ota_job(broker.signer, image, "s-defect"))
    bundle = make_bundle(broker, tmp_path, thing)
    DefectivePlatform.fired.clear()

    def defective(bundle: Path) -> Runtime:
        return Runtime(load_config(bundle), platform=DefectivePlatform(bundle / "state", poison_size))

    runtime = defective(bundle)
    runtimes.append(runtime)
    runtime.start()
    status, details = service.wait_terminal(thing).updates[-1]
    assert (status, details["reason"], details["check"]) == ("FAILED", DEFECT, "AgentDefect")
    assert "ZeroDivisionError: a defect in handling this job" in details["detail"]
    assert DefectivePlatform.fired == [poison_size]
    _alive(runtime)

    _lose_the_report(service, thing)
    runtime = _restart(runtime, bundle, runtimes, defective)
    assert service.wait_until(lambda: len(service.executions[thing].updates) == 2, 10)
    assert service.executions[thing].updates[-1] == ("FAILED", details)
    assert DefectivePlatform.fired == [poison_size]  # journaled first: never handled again
    _alive(runtime)
    _good_job_afterwards(service, runtime, broker, thing)


def _with_garbage_key_usage(root: Issued, template: Issued) -> bytes:
    """A certificate correctly signed by the trusted root whose key-usage extension is
    not DER: it loads, and raised ValueError inside the usage check before issue 12."""
    cert = (x509.CertificateBuilder().subject_name(template.cert.subject).issuer_name(root.cert.subject)
            .public_key(template.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(template.cert.not_valid_before_utc)
            .not_valid_after(template.cert.not_valid_after_utc)
            .add_extension(x509.UnrecognizedExtension(ExtensionOID.KEY_USAGE, b"\x01\x02"), critical=True)
            .sign(root.key, hashes.SHA256()))
    return cert.public_bytes(Encoding.DER)


def test_agent_survives_a_malformed_certificate_in_the_signer_chain(
        broker: BrokerEnv, service: Service, tmp_path: Path, runtimes: list[Runtime]) -> None:
    thing = "dev-bad-cert"
    image = make_firmware(V2, IMAGE_SIZE, seed="bad-cert")
    document = ota_job(broker.signer, image, "s-bad-cert")
    document["overair"]["signer_chain"] = [
        base64.b64encode(_with_garbage_key_usage(broker.code_root, broker.signer)).decode()]
    service.add_job(thing, "job-bad-cert", "s-bad-cert", image, document)
    runtime = start_agent(make_bundle(broker, tmp_path, thing), runtimes)
    status, details = service.wait_terminal(thing).updates[-1]
    assert (status, details["reason"], details["check"]) == ("FAILED", UNREADABLE_SIGNER, "BadCertificate")
    _alive(runtime)
    assert runtime.snapshot().version == "1.0.0"
    _good_job_afterwards(service, runtime, broker, thing)


class HostileBlocks(Service):
    """The scripted service, serving one hostile message on the data topic in answer to
    the first GetStream request (then behaving)."""

    def __init__(self, env: BrokerEnv, payload: bytes) -> None:
        self.payload: bytes | None = payload
        self.done = threading.Event()
        super().__init__(env)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if parts[3] == "streams" and self.payload is not None:
            payload, self.payload = self.payload, None
            client.publish(f"$aws/things/{parts[2]}/streams/{parts[4]}/data/cbor", payload, 0)
            return
        super()._on_message(client, userdata, msg)


@pytest.mark.parametrize(("payload", "why"), [
    (b"\x9b\x00\x00\x00\xff\xff\xff\xff\xff", "undecodable"),  # an array of 2^40 elements announced
    (b"\x81" * 1000, "undecodable"),  # nested 1000 deep
    (b"\xa4\x61f\x00\x61i\xc2\x58\x40" + b"\xff" * 64 + b"\x61l\x00\x61p\x40", "undecodable"),  # bignum
    (bytes(64 * 1024), "exceeds"),  # refused before decoding: far larger than a block
], ids=["huge-array", "deep", "bignum-index", "oversized"])
def test_agent_survives_a_hostile_stream_data_block(
        broker: BrokerEnv, tmp_path: Path, runtimes: list[Runtime], payload: bytes, why: str) -> None:
    hostile = HostileBlocks(broker, payload)
    try:
        thing = f"dev-block-{len(payload)}"
        image = make_firmware(V2, IMAGE_SIZE, seed="block")
        hostile.add_job(thing, "job-block", "s-block", image, ota_job(broker.signer, image, "s-block"))
        runtime = start_agent(make_bundle(broker, tmp_path, thing), runtimes)
        status, details = hostile.wait_terminal(thing).updates[-1]
        assert (status, details["reason"]) == ("FAILED", BAD_BLOCK)
        assert why in details["detail"]
        _alive(runtime)
        _good_job_afterwards(hostile, runtime, broker, thing)
    finally:
        hostile.close()


# --- N2: the job's `certfile` is never a path the agent opens -----------------------------------

@pytest.mark.parametrize("name", ["signer.crt", "../{thing}/signer.crt", "{bundle}/signer.crt"],
                         ids=["base-name", "relative", "absolute"])
def test_n2_certfile_named_by_a_job_is_never_opened(broker: BrokerEnv, service: Service, tmp_path: Path,
                                                   runtimes: list[Runtime], name: str) -> None:
    """A file holding a certificate lies next to the agent's data (left there, or planted);
    a job without a signer chain names it as its `certfile`, with a signature by that
    certificate's key. The agent takes signer certificates only from the job's chain, so
    the job is refused, whatever certificate the file holds and however it is named."""
    thing = f"dev-certfile-{len(name)}"
    bundle = make_bundle(broker, tmp_path, thing)
    planted = make_signer(broker.code_root, "a signer the job points at by path")
    (bundle / "signer.crt").write_bytes(planted.cert_pem)
    image = make_firmware(V2, IMAGE_SIZE, seed="certfile")
    document = ota_job(planted, image, f"s-{thing}")
    del document["overair"]  # no chain: only the path could supply the certificate
    document["afr_ota"]["files"][0]["certfile"] = name.format(thing=thing, bundle=bundle)
    signature = base64.b64encode(sign_file(planted, image)).decode()
    document["afr_ota"]["files"][0]["sig-sha256-ecdsa"] = signature
    service.add_job(thing, f"job-{thing}", f"s-{thing}", image, document)
    runtime = start_agent(bundle, runtimes)
    status, details = service.wait_terminal(thing).updates[-1]
    assert (status, details["reason"], details["check"]) == ("FAILED", BAD_SIGNER, "MissingSignerCertificate")
    snap = runtime.snapshot()
    assert (snap.version, snap.reboots) == ("1.0.0", 0)
    _alive(runtime)
