"""Persistent MQTT sessions outlive restarts (issue 13, item 11).

A device on the classic jobs client (MQTT 3.1.1, `clean_session=false`) or an MQTT 5
device with a session expiry subscribes to notify-next once: when its CONNACK says the
session is present it does not subscribe again. AWS keeps such a session, and the QoS 1
messages for it, for an hour after the device left; overair's broker must too, across a
restart of overair and across the supervisor's restart of a broker that died.

Real server, real Mosquitto, paho devices; no timing decides anything: each step waits
for the message or CONNACK it expects.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from overair.cli.client import ApiClients
from overair.server.app import ServerThread
from overair.server.settings import load_settings
from tests.integration.test_broker_supervision import ReconnectingDevice
from tests.mqtt_peer import WAIT
from tests.server_harness import RunningServer, running_server

SESSION_EXPIRY_SECONDS = 3600  # what an MQTT 5 device asks for (AWS's default maximum)


class SessionDevice:
    """A device with a persistent session, as the classic jobs client keeps one."""

    def __init__(self, srv: RunningServer, bundle: Path, thing: str, protocol: MQTTProtocolVersion) -> None:
        self.thing, self.protocol, self.port = thing, protocol, srv.settings.mqtt_port
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.context.load_verify_locations(cafile=str(srv.settings.paths.fleet_ca_cert))
        self.context.load_cert_chain(str(bundle / "device.crt"), str(bundle / "device.key"))
        self.received: list[tuple[str, bytes]] = []
        self.changed = threading.Condition()
        self.client: mqtt.Client | None = None

    def connect(self) -> bool:
        """Connect resuming the session; returns the CONNACK's session-present flag."""
        answered: list[bool] = []
        if self.protocol == MQTTProtocolVersion.MQTTv5:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.thing, protocol=self.protocol)
        else:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.thing, protocol=self.protocol,
                                 clean_session=False)
        client.tls_set_context(self.context)

        def on_connect(_c: mqtt.Client, _u: Any, flags: Any, reason: ReasonCode, _p: Any) -> None:
            assert not reason.is_failure, reason
            with self.changed:
                answered.append(bool(flags.session_present))
                self.changed.notify_all()

        def on_message(_c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
            with self.changed:
                self.received.append((message.topic, bytes(message.payload)))
                self.changed.notify_all()

        client.on_connect = on_connect
        client.on_message = on_message
        if self.protocol == MQTTProtocolVersion.MQTTv5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho is untyped here
            properties.SessionExpiryInterval = SESSION_EXPIRY_SECONDS
            client.connect("127.0.0.1", self.port, keepalive=30, clean_start=False, properties=properties)
        else:
            client.connect("127.0.0.1", self.port, keepalive=30)
        client.loop_start()
        self.client = client
        with self.changed:
            assert self.changed.wait_for(lambda: bool(answered), WAIT), "no CONNACK"
        return answered[0]

    def subscribe_notify_next(self) -> None:
        assert self.client is not None
        done = threading.Event()
        self.client.on_subscribe = lambda *_a: done.set()
        self.client.subscribe(f"$aws/things/{self.thing}/jobs/notify-next", qos=1)
        assert done.wait(WAIT)

    def wait_notify_next(self, job_id: str) -> dict[str, Any]:
        topic = f"$aws/things/{self.thing}/jobs/notify-next"

        def found() -> dict[str, Any] | None:
            for got, payload in self.received:
                body: dict[str, Any] = json.loads(payload)
                if got == topic and body.get("execution", {}).get("jobId") == job_id:
                    return body
            return None

        with self.changed:
            assert self.changed.wait_for(lambda: found() is not None, WAIT), f"no notify-next for {job_id}"
        body = found()
        assert body is not None
        return body

    def disconnect(self) -> None:
        assert self.client is not None
        self.client.disconnect()
        self.client.loop_stop()
        self.client = None


def _create_job(clients: ApiClients, thing: str, job_id: str) -> None:
    iot = clients.client("iot")
    iot.create_job(jobId=job_id, targets=[iot.describe_thing(thingName=thing)["thingArn"]],
                   document='{"operation":"update"}')


@pytest.mark.parametrize("protocol", [MQTTProtocolVersion.MQTTv311, MQTTProtocolVersion.MQTTv5],
                         ids=["mqtt3.1.1", "mqtt5"])
def test_a_persistent_session_survives_an_overair_restart_and_gets_notify_next_queued_meanwhile(
        tmp_path: Path, protocol: MQTTProtocolVersion) -> None:
    thing = "session-keeper"
    with running_server(tmp_path / "data") as srv:
        bundle = srv.provision(thing, tmp_path / thing)
        device = SessionDevice(srv, bundle, thing, protocol)
        assert device.connect() is False  # a new session
        device.subscribe_notify_next()
        device.disconnect()
        data_dir = srv.settings.data_dir
    # overair stopped (its broker with it) and starts again on the same data directory.
    restarted = ServerThread(load_settings(data_dir))
    restarted.start()
    try:
        clients = ApiClients.from_data_dir(data_dir)
        _create_job(clients, thing, "while-offline")  # the device is offline: queued for it
        assert device.connect() is True  # the session is present: the device does not resubscribe
        assert device.wait_notify_next("while-offline")["execution"]["status"] == "QUEUED"
        device.disconnect()
    finally:
        restarted.stop()


def test_a_persistent_session_survives_the_supervisors_restart_of_a_broker_that_died(
        tmp_path: Path) -> None:
    thing = "session-survivor"
    with running_server(tmp_path / "data") as srv:
        bundle = srv.provision(thing, tmp_path / thing)
        watcher = srv.provision("session-watcher", tmp_path / "watcher")
        observer = ReconnectingDevice(srv, watcher / "device.crt", watcher / "device.key", "session-watcher")
        device = SessionDevice(srv, bundle, thing, MQTTProtocolVersion.MQTTv311)
        try:
            observer.wait_connects(1)
            device.connect()
            device.subscribe_notify_next()
            device.disconnect()
            broker = srv.server.broker
            assert broker is not None
            assert broker.process is not None
            # Mosquitto saves its sessions when it is stopped (a SIGKILL loses at most the
            # last AUTOSAVE_SECONDS); the supervisor sees an unexpected exit and restarts it.
            os.kill(broker.process.pid, signal.SIGTERM)
            observer.wait_connects(2)
            assert observer.answered(WAIT)  # the service is connected to the new broker too
            _create_job(srv.clients, thing, "after-the-broker-died")
            assert device.connect() is True
            device.wait_notify_next("after-the-broker-died")
            device.disconnect()
        finally:
            observer.close()
