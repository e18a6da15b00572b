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
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography import x509
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from overair.cli.provisioning import create_keys_and_certificate_for
from overair.core.revocation import REVOCATIONS_TOPIC, verify_list
from overair.server.files import write_atomic, write_private
from tests.mqtt_peer import WAIT, MqttPeer, Received
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


def _minted(srv: RunningServer, tmp_path: Path, cn: str) -> tuple[dict[str, Any], Path]:
    """A fresh ACTIVE certificate whose CN is `cn` (the CLI's header), and where its
    certificate and key files are."""
    minted = create_keys_and_certificate_for(srv.client("iot"), cn)
    out = tmp_path / f"minted-{secrets.token_hex(4)}"
    write_atomic(out / "cert.pem", minted["certificatePem"].encode())
    write_private(out / "key.pem", minted["keyPair"]["PrivateKey"].encode())
    return minted, out


def _minted_client(out: Path, srv: RunningServer, client_id: str) -> Client:
    return Client(srv, out / "cert.pem", out / "key.pem", client_id)


def _refusal(srv: RunningServer, out: Path, client_id: str, protocol: MQTTProtocolVersion) -> ReasonCode:
    """How the broker answers a CONNECT with these files and this client id."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(srv.settings.paths.fleet_ca_cert))
    context.load_cert_chain(str(out / "cert.pem"), str(out / "key.pem"))
    answered: list[ReasonCode] = []
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
    client.tls_set_context(context)

    def on_connect(_c: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: object) -> None:
        answered.append(reason)
        done.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", srv.settings.mqtt_port, keepalive=30)
    client.loop_start()
    try:
        assert done.wait(WAIT), "no CONNACK"
    finally:
        client.disconnect()
        client.loop_stop()
    return answered[0]


def _request(client: Client, thing: str, what: str, body: dict[str, Any]) -> dict[str, Any]:
    token = secrets.token_hex(6)
    client.publish(f"$aws/things/{thing}/jobs/{what}", json.dumps({**body, "clientToken": token}).encode())
    reply: dict[str, Any] = json.loads(client.wait_for(f"$aws/things/{thing}/jobs/{what}/accepted", token))
    return reply


def test_n4_unattached_certificate_minted_with_a_things_name_reaches_nothing_and_kicks_nobody_off(
        srv: RunningServer, tmp_path: Path) -> None:
    """The client id is the device's (AWS), but only one of its own things' ids: an
    unattached certificate with the victim's name as CN and as client id is refused at
    CONNECT, so it neither reaches the victim's topics nor takes its session over."""
    iot = srv.client("iot")
    thing = "n4-victim"
    device = _bundle_client(srv, srv.provision(thing, tmp_path / thing), thing)
    minted, out = _minted(srv, tmp_path, thing)  # CN = the victim's name, never attached
    assert x509.load_pem_x509_certificate(minted["certificatePem"].encode()).subject.get_attributes_for_oid(
        x509.NameOID.COMMON_NAME)[0].value == thing
    try:
        device.subscribe(f"$aws/things/{thing}/jobs/#")
        for client_id in (thing, f"{thing}#2", "anything-else"):
            assert _refusal(srv, out, client_id, MQTTProtocolVersion.MQTTv311) == "Not authorized"
            assert _refusal(srv, out, client_id, MQTTProtocolVersion.MQTTv5) == "Not authorized"
        iot.create_job(jobId="n4-victim-job", targets=[iot.describe_thing(thingName=thing)["thingArn"]],
                       document='{"operation":"x"}')
        device.wait_for(f"$aws/things/{thing}/jobs/notify-next", "n4-victim-job")
        assert not device.gone.is_set()  # nobody took its session over
        device.echo()
    finally:
        device.close()


def test_n4_detaching_from_one_thing_keeps_the_session_and_the_other_thing(
        srv: RunningServer, tmp_path: Path) -> None:
    iot = srv.client("iot")
    kept, dropped = "n4-kept", "n4-dropped"
    bundle = srv.provision(kept, tmp_path / kept)
    (principal,) = iot.list_thing_principals(thingName=kept)["principals"]
    iot.create_thing(thingName=dropped)
    iot.attach_thing_principal(thingName=dropped, principal=principal)
    other_cert, other_files = _minted(srv, tmp_path, dropped)  # the dropped thing's own device
    iot.attach_thing_principal(thingName=dropped, principal=other_cert["certificateArn"])
    other = _minted_client(other_files, srv, dropped)
    device = _bundle_client(srv, bundle, kept)
    try:
        device.subscribe(f"$aws/things/{kept}/jobs/#", f"$aws/things/{dropped}/jobs/#")
        other.subscribe(f"$aws/things/{dropped}/jobs/#")
        _request(device, dropped, "get", {})  # attached to both: it may use both

        iot.detach_thing_principal(thingName=dropped, principal=principal)

        device.received.clear()
        _request(other, dropped, "get", {})  # the dropped thing's answers no longer reach it
        assert _request(device, kept, "get", {})["clientToken"]  # its other thing still works
        device.echo()
        assert [t for t, _ in device.things_messages() if f"/{dropped}/" in t] == []
        assert not device.gone.is_set()
        # Publishing into the dropped thing's topics is now out of bounds: on MQTT 3.1.1
        # AWS closes the connection, and the message never reaches the service.
        token = "from-the-detached-certificate"
        device.client.publish(f"$aws/things/{dropped}/jobs/get", json.dumps({"clientToken": token}).encode(),
                              qos=1)
        assert device.gone.wait(WAIT)
        _request(other, dropped, "get", {})  # answered after any answer to the device's request
        assert not any(token.encode() in p for _, p in other.received)
    finally:
        device.close()
        other.close()


def test_n4_device_cannot_overwrite_the_retained_revocation_list(srv: RunningServer, tmp_path: Path) -> None:
    signer = x509.load_pem_x509_certificate(srv.settings.paths.revocation_signer_cert.read_bytes())
    thing = "n4-revocation-forger"
    bundle = srv.provision(thing, tmp_path / thing)
    forger = _bundle_client(srv, bundle, thing)
    try:
        forger.client.publish(REVOCATIONS_TOPIC, b'{"forged": "an empty list"}', qos=1, retain=True)
        assert forger.gone.wait(WAIT)  # out of its topics: MQTT 3.1.1 connection closed, as AWS does
    finally:
        forger.close()
    again = _bundle_client(srv, bundle, thing)
    try:
        verify_list(again.echo(), signer)  # what the broker retains is still the service's
    finally:
        again.close()
    later = _bundle_client(srv, srv.provision(f"{thing}-2", tmp_path / "later"), f"{thing}-2")
    try:
        verify_list(later.echo(), signer)
    finally:
        later.close()
