"""The broker is supervised (finding: a Mosquitto that died left every device offline
until a person restarted `overair serve`, and access changes answered 200 meanwhile).

The real server runs its Mosquitto through a wrapper script that the test can make
fail (a "block" file), so the broker can be held down for as long as the test needs:
SIGKILL it, see /health report it down with the cause, see an AttachThingPrincipal
answer 503 while it is down, let it come back, and see the attach in force and the
device reconnected on its own.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from botocore.exceptions import ClientError
from paho.mqtt.enums import CallbackAPIVersion

from overair.cli.provisioning import create_keys_and_certificate_for
from overair.core.revocation import REVOCATIONS_TOPIC
from overair.server.files import write_atomic, write_private
from tests.server_harness import MOSQUITTO, RunningServer, running_server

WAIT = 60.0  # generous: restarts back off (0.5 s, 1 s, 2 s, ...)


@pytest.fixture
def block(tmp_path: Path) -> Path:
    return tmp_path / "block-the-broker"


@pytest.fixture
def srv(tmp_path: Path, block: Path) -> Iterator[RunningServer]:
    wrapper = tmp_path / "mosquitto-wrapper"
    wrapper.write_text(f'#!/bin/sh\nif [ -e "{block}" ]; then echo "held down by the test" >&2; exit 3; fi\n'
                       f'exec {MOSQUITTO} "$@"\n')
    wrapper.chmod(0o755)
    with running_server(tmp_path / "data", settings_toml=f'mosquitto_binary = "{wrapper}"') as running:
        yield running


class ReconnectingDevice:
    """A device that reconnects by itself (paho's loop does) and subscribes again each
    time, as the overair agent and FreeRTOS do."""

    def __init__(self, srv: RunningServer, cert: Path, key: Path, thing: str) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cafile=str(srv.settings.paths.fleet_ca_cert))
        context.load_cert_chain(str(cert), str(key))
        self.thing = thing
        self.connects = 0
        self.received: list[tuple[str, bytes]] = []
        self.changed = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=thing, protocol=mqtt.MQTTv311)
        self.client.tls_set_context(context)
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect_async("127.0.0.1", srv.settings.mqtt_port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            client.subscribe([(f"$aws/things/{self.thing}/jobs/#", 1), (REVOCATIONS_TOPIC, 1)])
            with self.changed:
                self.connects += 1
                self.changed.notify_all()

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        with self.changed:
            self.received.append((message.topic, bytes(message.payload)))
            self.changed.notify_all()

    def wait_connects(self, count: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.connects >= count, WAIT), f"{self.connects} connects"

    def answered(self, timeout: float) -> bool:
        """Ask for the next job until the service answers (subscriptions take a moment
        after each reconnect); True once it has."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            token = secrets.token_hex(6)
            self.client.publish(f"$aws/things/{self.thing}/jobs/$next/get",
                                json.dumps({"clientToken": token}), qos=1)
            if self._got(token.encode()):
                return True
        return False

    def _got(self, token: bytes) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: any(token in p for _, p in self.received), 1.0)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _health(srv: RunningServer) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(srv.endpoint + "/health", timeout=5) as response:
            body: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read())
    return body


def _wait_health(srv: RunningServer, predicate: Any) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        health = _health(srv)
        if predicate(health):
            return health
        time.sleep(0.1)
    raise AssertionError(f"/health never matched: {_health(srv)}")


def test_killed_broker_is_restarted_and_an_access_change_meanwhile_is_refused_then_applied(
        srv: RunningServer, block: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="overair.broker")
    iot = srv.client("iot")
    thing = "supervised-device"
    iot.create_thing(thingName=thing)
    cert = create_keys_and_certificate_for(iot, thing)  # not attached yet
    write_atomic(tmp_path / "device.crt", cert["certificatePem"].encode())
    write_private(tmp_path / "device.key", cert["keyPair"]["PrivateKey"].encode())
    # Not attached, it may use no client id: it keeps retrying until the attach is in force.
    device = ReconnectingDevice(srv, tmp_path / "device.crt", tmp_path / "device.key", thing)
    try:
        assert _health(srv)["brokerRestarts"] == 0
        broker = srv.server.broker
        assert broker is not None
        assert broker.process is not None
        block.touch()
        os.kill(broker.process.pid, signal.SIGKILL)

        down = _wait_health(srv, lambda h: h["broker"] == "down")
        assert down["status"] != "ok"
        with pytest.raises(ClientError) as refused:
            iot.attach_thing_principal(thingName=thing, principal=cert["certificateArn"])
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        assert refused.value.response["Error"]["Code"] == "ServiceUnavailableException"
        assert iot.list_thing_principals(thingName=thing)["principals"] == [cert["certificateArn"]]  # saved
        supervisor = srv.server.supervisor
        assert supervisor is not None
        deadline = time.monotonic() + WAIT
        while supervisor.exits < 2 and time.monotonic() < deadline:  # a restart failed meanwhile
            time.sleep(0.05)

        block.unlink()
        health = _wait_health(srv, lambda h: h["broker"] == "up" and h["brokerRestarts"] >= 1)
        assert health["status"] == "ok"
        assert health["brokerLastExit"]["cause"] in ("killed by SIGKILL", "exited with status 3")
        device.wait_connects(1)  # the attach made while the broker was down is in force
        assert device.answered(WAIT)
        with device.changed:  # the retained revocation list is there too
            assert device.changed.wait_for(
                lambda: any(t == REVOCATIONS_TOPIC for t, _ in device.received), WAIT)
    finally:
        device.close()
    logged = caplog.text
    assert "killed by SIGKILL" in logged
    assert "held down by the test" in logged  # a failed restart's own output is logged
    assert "mosquitto is back (restart 1)" in logged


def test_access_change_answers_503_when_the_broker_cannot_confirm_it(srv: RunningServer) -> None:
    """A broker that is alive but does not apply the reload (stopped): the change is
    saved, the API says 503, and it is in force once the broker runs again."""
    iot = srv.client("iot")
    iot.create_thing(thingName="frozen-broker")
    cert = iot.create_keys_and_certificate(setAsActive=True)
    broker = srv.server.broker
    assert broker is not None
    assert broker.process is not None
    os.kill(broker.process.pid, signal.SIGSTOP)
    try:
        with pytest.raises(ClientError) as refused:
            iot.attach_thing_principal(thingName="frozen-broker", principal=cert["certificateArn"])
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    finally:
        os.kill(broker.process.pid, signal.SIGCONT)
    # The next change of that certificate applies what was saved, and the broker confirms it:
    # the device may now connect with its thing's client id.
    iot.update_certificate(certificateId=cert["certificateId"], newStatus="ACTIVE")
    device = Path(srv.settings.data_dir) / "frozen-device"
    device.mkdir()
    (device / "device.crt").write_text(cert["certificatePem"])
    (device / "device.key").write_text(cert["keyPair"]["PrivateKey"])
    context = ssl.create_default_context(cafile=str(srv.settings.paths.fleet_ca_cert))
    context.load_cert_chain(str(device / "device.crt"), str(device / "device.key"))
    connected = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="frozen-broker", protocol=mqtt.MQTTv311)
    client.tls_set_context(context)
    client.on_connect = lambda _c, _u, _f, reason, _p: None if reason.is_failure else connected.set()
    client.connect("127.0.0.1", srv.settings.mqtt_port, keepalive=30)
    client.loop_start()
    try:
        assert connected.wait(30), "the attachment saved during the 503 is not in force"
    finally:
        client.disconnect()
        client.loop_stop()


def test_service_connection_lost_and_regained_with_a_broker_restart_re_notifies_pending_things(
        srv: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    """The service's own broker connection after a SIGKILLed broker: lost and regained
    (logged, counted), subscribed again, and once subscribed every thing with a pending
    job is told it on notify-next, for devices whose `$next/get` reached the restarted
    broker before the service did (docs/scaling.md, "Losing one broker only")."""
    caplog.set_level(logging.INFO, logger="overair.devices")
    iot = srv.client("iot")
    for thing in ("pending-device", "idle-device"):
        iot.create_thing(thingName=thing)
    arn = iot.describe_thing(thingName="pending-device")["thingArn"]
    iot.create_job(jobId="reconnect-job", targets=[arn], document=json.dumps({"op": "x"}))
    before = srv.server.broker_metrics()
    assert before["overair_service_broker_connects_total"] == 1.0
    assert before["overair_service_broker_connection_losses_total"] == 0.0
    broker = srv.server.broker
    assert broker is not None
    assert broker.process is not None
    os.kill(broker.process.pid, signal.SIGKILL)
    deadline = time.monotonic() + WAIT
    while "told 1 thing(s) their next job again" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "service lost its broker connection (loss 1); reconnecting" in caplog.text
    assert "service reconnected to the broker (connection 2)" in caplog.text
    assert "told 1 thing(s) their next job again" in caplog.text  # the idle thing is not told
    after = srv.server.broker_metrics()
    assert after["overair_service_broker_connects_total"] == 2.0
    assert after["overair_service_broker_connection_losses_total"] == 1.0
    assert after["overair_service_broker_connected"] == 1.0
