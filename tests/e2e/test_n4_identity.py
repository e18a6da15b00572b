"""N4 end to end: device identity is the certificate itself, never a name that matches.

The real server (API, device service, its own Mosquitto); devices are paho clients
holding certificates the API issued. A certificate grants nothing until it is attached
(AWS semantics), grants only its attached things afterwards, loses one thing without
losing its session, and no device can overwrite the signed revocation list.

Checks end with an *echo*: the device (re)subscribes to the retained revocation-list
topic, whose retained message the broker queues behind anything already routed to it,
so a message that was going to reach it has arrived by then. Nothing is decided by
waiting for silence.
"""

from __future__ import annotations

import json
import secrets
import ssl
from pathlib import Path
from typing import Any

from cryptography import x509

from overair.cli.provisioning import create_keys_and_certificate_for
from overair.core.revocation import REVOCATIONS_TOPIC, verify_list
from overair.server.files import write_atomic, write_private
from tests.mqtt_peer import MqttPeer, Received
from tests.server_harness import RunningServer


class Client(MqttPeer):
    """A device as a bare MQTT client with a certificate from the fleet CA."""

    def __init__(self, srv: RunningServer, cert: Path, key: Path, client_id: str, *,
                 port: int | None = None) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cafile=str(srv.settings.paths.fleet_ca_cert))
        context.load_cert_chain(str(cert), str(key))
        super().__init__(context, port or srv.settings.mqtt_port, client_id)

    def wait_for(self, topic: str, token: str = "") -> bytes:
        def found(received: Received) -> bytes | None:
            return next((p for t, p in received if t == topic and token.encode() in p), None)

        self.wait_until(lambda received: found(received) is not None, (topic, token))
        payload = found(self.received)
        assert payload is not None
        return payload

    def echo(self) -> bytes:
        """(Re)subscribe to the revocation list: returns its retained message, which
        arrives after anything the broker had already routed to this client."""
        def lists(received: Received) -> list[bytes]:
            return [p for t, p in received if t == REVOCATIONS_TOPIC]

        count = len(lists(self.received))
        self.subscribe(REVOCATIONS_TOPIC)
        self.wait_until(lambda received: len(lists(received)) > count, REVOCATIONS_TOPIC)
        return lists(self.received)[-1]


def _bundle_client(srv: RunningServer, bundle: Path, client_id: str) -> Client:
    return Client(srv, bundle / "device.crt", bundle / "device.key", client_id)


def _minted(srv: RunningServer, tmp_path: Path, cn: str) -> tuple[dict[str, Any], Client]:
    """A fresh ACTIVE certificate whose CN is `cn` (the CLI's header), connected."""
    minted = create_keys_and_certificate_for(srv.client("iot"), cn)
    out = tmp_path / f"minted-{secrets.token_hex(4)}"
    write_atomic(out / "cert.pem", minted["certificatePem"].encode())
    write_private(out / "key.pem", minted["keyPair"]["PrivateKey"].encode())
    return minted, Client(srv, out / "cert.pem", out / "key.pem", cn)


def _request(client: Client, thing: str, what: str, body: dict[str, Any]) -> dict[str, Any]:
    token = secrets.token_hex(6)
    client.publish(f"$aws/things/{thing}/jobs/{what}", json.dumps({**body, "clientToken": token}).encode())
    reply: dict[str, Any] = json.loads(client.wait_for(f"$aws/things/{thing}/jobs/{what}/accepted", token))
    return reply


def test_n4_unattached_certificate_minted_with_a_things_name_reaches_nothing_and_kicks_nobody_off(
        srv: RunningServer, tmp_path: Path) -> None:
    iot = srv.client("iot")
    thing = "n4-victim"
    device = _bundle_client(srv, srv.provision(thing, tmp_path / thing), thing)
    minted, intruder = _minted(srv, tmp_path, thing)  # CN = the victim's name, never attached
    assert x509.load_pem_x509_certificate(minted["certificatePem"].encode()).subject.get_attributes_for_oid(
        x509.NameOID.COMMON_NAME)[0].value == thing
    try:
        device.subscribe(f"$aws/things/{thing}/jobs/#")
        intruder.subscribe(f"$aws/things/{thing}/jobs/#")
        iot.create_job(jobId="n4-victim-job", targets=[iot.describe_thing(thingName=thing)["thingArn"]],
                       document='{"operation":"x"}')
        device.wait_for(f"$aws/things/{thing}/jobs/notify-next", "n4-victim-job")
        # The intruder fails the victim's execution, then the victim asks for it: the
        # service handles one thing's messages in order, so a forged update that got
        # through would be in the answer.
        intruder.publish(f"$aws/things/{thing}/jobs/n4-victim-job/update",
                         json.dumps({"status": "FAILED", "expectedVersion": 1}).encode())
        reply = _request(device, thing, "n4-victim-job/get", {})
        assert reply["execution"]["status"] == "QUEUED"
        execution = iot.describe_job_execution(jobId="n4-victim-job", thingName=thing)["execution"]
        assert execution["status"] == "QUEUED"
        intruder.echo()
        assert intruder.things_messages() == []  # neither the notify-next nor the reply
        assert not device.gone.is_set()  # the intruder's client id (the thing's name) took nothing over
        device.echo()
    finally:
        device.close()
        intruder.close()


def test_n4_detaching_from_one_thing_keeps_the_session_and_the_other_thing(
        srv: RunningServer, tmp_path: Path) -> None:
    iot = srv.client("iot")
    kept, dropped = "n4-kept", "n4-dropped"
    bundle = srv.provision(kept, tmp_path / kept)
    (principal,) = iot.list_thing_principals(thingName=kept)["principals"]
    iot.create_thing(thingName=dropped)
    iot.attach_thing_principal(thingName=dropped, principal=principal)
    other_cert, other = _minted(srv, tmp_path, dropped)  # the dropped thing's own device
    iot.attach_thing_principal(thingName=dropped, principal=other_cert["certificateArn"])
    device = _bundle_client(srv, bundle, kept)
    try:
        device.subscribe(f"$aws/things/{kept}/jobs/#", f"$aws/things/{dropped}/jobs/#")
        other.subscribe(f"$aws/things/{dropped}/jobs/#")
        _request(device, dropped, "get", {})  # attached to both: it may use both

        iot.detach_thing_principal(thingName=dropped, principal=principal)

        device.received.clear()
        token = "from-the-detached-certificate"
        device.publish(f"$aws/things/{dropped}/jobs/get", json.dumps({"clientToken": token}).encode())
        _request(other, dropped, "get", {})  # answered after any answer to the device's request
        assert _request(device, kept, "get", {})["clientToken"]  # its other thing still works
        device.echo()
        assert [t for t, _ in device.things_messages() if f"/{dropped}/" in t] == []
        assert not any(token.encode() in p for _, p in other.received)  # never reached the service
        assert not device.gone.is_set()
    finally:
        device.close()
        other.close()


def test_n4_device_cannot_overwrite_the_retained_revocation_list(srv: RunningServer, tmp_path: Path) -> None:
    signer = x509.load_pem_x509_certificate(srv.settings.paths.revocation_signer_cert.read_bytes())
    thing = "n4-revocation-forger"
    forger = _bundle_client(srv, srv.provision(thing, tmp_path / thing), thing)
    try:
        forger.publish(REVOCATIONS_TOPIC, b'{"forged": "an empty list"}', retain=True)
        verify_list(forger.echo(), signer)  # what the broker retains is still the service's
    finally:
        forger.close()
    later = _bundle_client(srv, srv.provision(f"{thing}-2", tmp_path / "later"), "later")
    try:
        verify_list(later.echo(), signer)
    finally:
        later.close()
