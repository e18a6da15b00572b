"""Device access changes through the real server and its Mosquitto with overair's access
plugin (issue 20, item 1): each attach, detach or certificate status change goes to the
broker alone on its control topic (the access file is not rewritten, the broker not
reloaded), is in force when the API call returns, and concurrent changes never lose
each other: after 50 concurrent attach/detach sequences, what the broker enforces,
device by device, is what the registry says."""

from __future__ import annotations

import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.server_harness import RunningServer

DEVICES = 50
WAIT = 30.0


def _context(srv: RunningServer, root: Path, name: str, cert: dict[str, Any]) -> ssl.SSLContext:
    (root / f"{name}.crt").write_text(cert["certificatePem"])
    (root / f"{name}.key").write_text(cert["keyPair"]["PrivateKey"])
    context = ssl.create_default_context(cafile=str(srv.settings.paths.fleet_ca_cert))
    context.load_cert_chain(str(root / f"{name}.crt"), str(root / f"{name}.key"))
    return context


class Session:
    def __init__(self, srv: RunningServer, context: ssl.SSLContext, client_id: str) -> None:
        self.answer: list[Any] = []
        self.connected = threading.Event()
        self.gone = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        self.client.tls_set_context(context)
        self.client.reconnect_delay_set(min_delay=60, max_delay=60)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_a: self.gone.set()
        self.client.connect("127.0.0.1", srv.settings.mqtt_port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.answer.append(reason)
        self.connected.set()

    def accepted(self) -> bool:
        assert self.connected.wait(WAIT), "no CONNACK"
        return not self.answer[0].is_failure

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_concurrent_attach_and_detach_end_as_the_registry_says(srv: RunningServer, tmp_path: Path) -> None:
    """25 certificates, each attached to two things by two threads at once (so changes
    to one broker identity race each other), then one of the two detached again for every
    other certificate: 50 concurrent attach/detach sequences."""
    assert srv.server._changes_in_place(), "the broker does not take access changes on its control topic"
    iot = srv.client("iot")
    certs = {}
    for i in range(DEVICES // 2):
        for side in "ab":
            iot.create_thing(thingName=f"acc-{i}{side}")
        certs[i] = iot.create_keys_and_certificate(setAsActive=True)
    acl = srv.settings.paths.broker / "acl"
    before = acl.stat().st_mtime_ns, acl.read_bytes()

    def churn(job: tuple[int, str]) -> None:
        i, side = job
        client = srv.client("iot")  # one client per thread: boto3 clients are not shared
        arn = certs[i]["certificateArn"]
        client.attach_thing_principal(thingName=f"acc-{i}{side}", principal=arn)
        client.detach_thing_principal(thingName=f"acc-{i}{side}", principal=arn)
        client.attach_thing_principal(thingName=f"acc-{i}{side}", principal=arn)
        if i % 2 and side == "b":
            client.detach_thing_principal(thingName=f"acc-{i}{side}", principal=arn)

    with ThreadPoolExecutor(max_workers=DEVICES) as pool:
        list(pool.map(churn, [(i, side) for i in range(DEVICES // 2) for side in "ab"]))
    assert (acl.stat().st_mtime_ns, acl.read_bytes()) == before  # no regeneration, no reload

    for i in range(DEVICES // 2):
        for side in "ab":
            attached = iot.list_thing_principals(thingName=f"acc-{i}{side}")["principals"] != []
            assert attached == (side == "a" or i % 2 == 0)
            session = Session(srv, _context(srv, tmp_path, f"acc-{i}", certs[i]), f"acc-{i}{side}")
            try:
                assert session.accepted() == attached, f"acc-{i}{side}: the broker disagrees"
            finally:
                session.close()


def test_n4_a_deactivated_certificate_is_cut_off_when_the_call_returns(
    srv: RunningServer, tmp_path: Path
) -> None:
    iot = srv.client("iot")
    iot.create_thing(thingName="acc-revoked")
    cert = iot.create_keys_and_certificate(setAsActive=True)
    iot.attach_thing_principal(thingName="acc-revoked", principal=cert["certificateArn"])
    context = _context(srv, tmp_path, "acc-revoked", cert)
    session = Session(srv, context, "acc-revoked")
    try:
        assert session.accepted()
        iot.update_certificate(certificateId=cert["certificateId"], newStatus="INACTIVE")
        assert session.gone.wait(WAIT), "the deactivated certificate kept its session"
    finally:
        session.close()
    again = Session(srv, context, "acc-revoked")
    try:
        assert not again.accepted()
    finally:
        again.close()
