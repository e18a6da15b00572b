"""overair's access plugin in the real Mosquitto 2.0.11 (issue 13, items 9 and 10), with
paho clients speaking MQTT 3.1.1 and MQTT 5.

What AWS IoT Core does and the plugin reproduces (plugin/overair_access.c):
- a SUBSCRIBE to a filter outside the client's topics is refused in the SUBACK (0x80 on
  MQTT 3.1.1, 0x87 on MQTT 5), with or without wildcards;
- a PUBLISH outside them closes an MQTT 3.1.1 connection and is answered PUBACK 0x87 on
  MQTT 5, and reaches nobody;
- the client id is the device's own: one certificate may hold several connections with
  different ids of its things, a duplicate id takes the older session over, and no
  certificate may use an id of a thing it is not attached to, or one the server reserved;
- a reload that leaves a certificate no thing closes its session at once.

Each check ends on a message, CONNACK, SUBACK or PUBACK it waits for, never on silence.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import secrets
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from overair.server import pki
from overair.server.files import write_atomic
from overair.server.gateway.access_change import CONTROL_TOPIC, RESPONSE_TOPIC, render_change
from overair.server.gateway.broker import AclRule, Broker, render_acl, render_config
from overair.server.gateway.broker_plugin import build_plugin
from overair.server.gateway.ephemeral import client_context
from overair.server.gateway.tls import client_ssl_context
from tests.mqtt_peer import WAIT
from tests.ports import free_port

NOW = dt.datetime.now(dt.UTC)
V311, V5 = MQTTProtocolVersion.MQTTv311, MQTTProtocolVersion.MQTTv5
PROTOCOLS = pytest.mark.parametrize("protocol", [V311, V5], ids=["mqtt3.1.1", "mqtt5"])
SERVICE_CLIENT_ID = "overair.service"
CONTROLLER_CLIENT_ID = "overair.controller"


class Device:
    """A paho client that records every acknowledgement and message, in order."""

    def __init__(self, issued: pki.Issued, ca_file: Path, port: int, client_id: str,
                 protocol: MQTTProtocolVersion, username: str | None = None) -> None:
        self.events: list[tuple[str, Any]] = []
        self.changed = threading.Condition()
        self.gone = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        self.client.tls_set_context(client_context(issued, ca_file))
        self.client.reconnect_delay_set(min_delay=60, max_delay=60)  # one attempt per test step
        if username is not None:
            self.client.username_pw_set(username)
        self.client.on_connect = lambda _c, _u, _f, reason, _p: self._add("connack", reason)
        self.client.on_disconnect = lambda *_a: self.gone.set()
        self.client.on_subscribe = lambda _c, _u, _m, reasons, _p: self._add("suback", list(reasons))
        self.client.on_publish = lambda _c, _u, _m, reason, _p: self._add("puback", reason)
        self.client.on_message = lambda _c, _u, m: self._add("message", (m.topic, bytes(m.payload)))
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()

    def _add(self, kind: str, value: Any) -> None:
        with self.changed:
            self.events.append((kind, value))
            self.changed.notify_all()

    def next(self, kind: str, after: int = 0) -> Any:
        """The first `kind` event past the first `after` events (waits for it)."""
        def found() -> list[Any]:
            return [value for k, value in self.events[after:] if k == kind]

        with self.changed:
            assert self.changed.wait_for(lambda: bool(found()), WAIT), f"no {kind}"
            return found()[0]

    @property
    def connack(self) -> ReasonCode:
        reason: ReasonCode = self.next("connack")
        return reason

    def subscribe(self, topic: str) -> ReasonCode:
        mark = len(self.events)
        self.client.subscribe(topic, qos=1)
        reasons: list[ReasonCode] = self.next("suback", mark)
        assert len(reasons) == 1
        return reasons[0]

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1)

    def messages(self) -> list[tuple[str, bytes]]:
        with self.changed:
            return [value for kind, value in self.events if kind == "message"]

    def wait_message(self, topic: str, payload: bytes) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: ("message", (topic, payload)) in self.events, WAIT), topic

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Env:
    root: Path
    port: int
    broker: Broker
    certs: dict[str, pki.Issued]
    service_identity: str
    write: Any  # grants -> None
    devices: list[Device]

    def connect(self, cert: str, client_id: str, protocol: MQTTProtocolVersion = V311,
                username: str | None = None) -> Device:
        device = Device(self.certs[cert], self.root / "ca.pem", self.port, client_id, protocol, username)
        self.devices.append(device)
        return device

    def identity(self, cert: str) -> str:
        name = pki.broker_username(self.certs[cert].cert.subject)
        assert name is not None
        return name


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    ca = pki.make_root_ca("access plugin test CA", NOW)
    write_atomic(tmp_path / "ca.pem", ca.cert_pem)
    server = pki.issue_server_cert(ca, ("localhost", "127.0.0.1"), NOW)
    write_atomic(tmp_path / "server.pem", server.cert_pem)
    write_atomic(tmp_path / "server.key", server.key_pem, mode=0o600)
    write_atomic(tmp_path / "crl.pem", pki.make_crl(ca, [], NOW))
    certs = {"service": pki.issue_client_cert(ca, pki.SERVICE_IDENTITY, NOW),
             "dev-1": pki.issue_client_cert(ca, "dev-1", NOW),
             "dev-1-spare": pki.issue_client_cert(ca, "dev-1", NOW),  # a second certificate of dev-1
             "dev-2": pki.issue_client_cert(ca, "dev-2", NOW),
             "unattached": pki.issue_client_cert(ca, "dev-1", NOW),
             # a device whose thing is named like the start of the service's client id
             "overair": pki.issue_client_cert(ca, "overair", NOW),
             # what the server's witness is: the one identity that may change access
             "controller": pki.issue_client_cert(ca, "overair.controller", NOW)}
    write_atomic(tmp_path / "service.pem", certs["service"].cert_pem)
    write_atomic(tmp_path / "service.key", certs["service"].key_pem, mode=0o600)
    port = free_port()
    broker = Broker(tmp_path / "broker", "/usr/sbin/mosquitto", "127.0.0.1", port)
    plugin = build_plugin(broker.workdir)
    assert plugin.path is not None, plugin.reason
    identity = {name: pki.broker_username(issued.cert.subject) or "" for name, issued in certs.items()}

    def write(grants: Mapping[str, Sequence[str]]) -> None:
        acl = render_acl(service=identity["service"], devices={identity[c]: t for c, t in grants.items()},
                         control={identity["controller"]: [AclRule("write", CONTROL_TOPIC),
                                                           AclRule("read", RESPONSE_TOPIC)]},
                         client_ids={identity["service"]: [SERVICE_CLIENT_ID],
                                     identity["controller"]: [CONTROLLER_CLIENT_ID]}, for_plugin=True)
        write_atomic(broker.acl_path, acl.encode())

    write({"dev-1": ["dev-1"], "dev-1-spare": ["dev-1"], "dev-2": ["dev-2"], "overair": ["overair"]})
    broker.write_config(render_config(host="127.0.0.1", port=port, ca=tmp_path / "ca.pem",
                                      cert=tmp_path / "server.pem", key=tmp_path / "server.key",
                                      crl=tmp_path / "crl.pem", acl=broker.acl_path,
                                      run_as_root=os.geteuid() == 0, workdir=broker.workdir,
                                      plugin=plugin.path))
    loop = asyncio.new_event_loop()
    service_tls = client_ssl_context(str(tmp_path / "ca.pem"), str(tmp_path / "service.pem"),
                                     str(tmp_path / "service.key"))
    loop.run_until_complete(broker.start(service_tls))
    running = Env(tmp_path, port, broker, certs, identity["service"], write, [])
    try:
        yield running
    finally:
        for device in running.devices:
            device.close()
        loop.run_until_complete(broker.stop())
        loop.close()


def _service(env: Env) -> Device:
    service = env.connect("service", SERVICE_CLIENT_ID)
    assert not service.connack.is_failure
    assert service.subscribe("$aws/things/#").value == 1
    return service


def _echo(service: Device) -> None:
    """After this, the service has received whatever the broker routed to it before."""
    nonce = secrets.token_hex(6).encode()
    service.publish("$aws/things/echo/x", nonce)
    service.wait_message("$aws/things/echo/x", nonce)


@PROTOCOLS
def test_a_subscribe_outside_the_devices_topics_is_refused_in_the_suback(
        env: Env, protocol: MQTTProtocolVersion) -> None:
    device = env.connect("dev-1", "dev-1", protocol)
    assert not device.connack.is_failure
    refused = 0x80 if protocol == V311 else 0x87  # MQTT 3.1.1 "Failure"; MQTT 5 "Not authorized"
    for topic in ("$aws/things/dev-2/jobs/notify-next", "$aws/things/+/jobs/notify-next", "$aws/things/#",
                  "#", "+/things/dev-1/jobs/notify", "$SYS/#", "other/topic", "overair/code-signing/#"):
        assert device.subscribe(topic).value == refused, topic
    for topic in ("$aws/things/dev-1/jobs/notify-next", "$aws/things/dev-1/#", "$aws/things/dev-1",
                  "$aws/things/dev-1/jobs/+/get/accepted", "$aws/things/dev-1/streams/+/data/cbor",
                  "overair/code-signing/revocations"):
        assert device.subscribe(topic).value == 1, topic
    assert not device.gone.is_set()


def test_a_publish_outside_the_devices_topics_closes_an_mqtt311_connection_and_reaches_nobody(
        env: Env) -> None:
    service = _service(env)
    for qos0_or_1, topic in ((1, "$aws/things/dev-2/jobs/$next/get"), (0, "$aws/things/dev-2/jobs/notify"),
                             (1, "overair/code-signing/revocations")):
        device = env.connect("dev-1", "dev-1", V311)
        assert not device.connack.is_failure
        device.client.publish(topic, b"forged", qos=qos0_or_1)
        assert device.gone.wait(WAIT), topic  # AWS disconnects the client
        _echo(service)
    assert all(payload != b"forged" for _, payload in service.messages())
    device = env.connect("dev-1", "dev-1", V311)  # its own topics still work
    device.publish("$aws/things/dev-1/jobs/$next/get", b"mine")
    service.wait_message("$aws/things/dev-1/jobs/$next/get", b"mine")


def test_a_publish_outside_the_devices_topics_is_answered_0x87_on_mqtt5(env: Env) -> None:
    service = _service(env)
    device = env.connect("dev-1", "dev-1", V5)
    assert not device.connack.is_failure
    mark = len(device.events)
    device.publish("$aws/things/dev-2/jobs/$next/get", b"forged")
    assert device.next("puback", mark).value == 0x87
    mark = len(device.events)
    device.publish("$aws/things/dev-1/jobs/$next/get", b"mine")
    assert device.next("puback", mark).value == 0
    service.wait_message("$aws/things/dev-1/jobs/$next/get", b"mine")
    assert not device.gone.is_set()
    assert all(payload != b"forged" for _, payload in service.messages())


def test_the_services_own_replies_reach_the_device_and_not_the_service(env: Env) -> None:
    """`topic noread` (topics.SERVICE_REPLY_FILTERS): the service reads every topic under
    a thing's jobs/, and without the rule each notification and accepted/rejected reply
    it published came back to it."""
    service = env.connect("service", SERVICE_CLIENT_ID)
    assert not service.connack.is_failure
    assert service.subscribe("$aws/things/+/jobs/#").value == 1
    device = env.connect("dev-1", "dev-1")
    assert not device.connack.is_failure
    assert device.subscribe("$aws/things/dev-1/jobs/#").value == 1
    replies = [f"$aws/things/dev-1/jobs/{tail}" for tail in (
        "notify", "notify-next", "get/accepted", "start-next/rejected", "$next/get/accepted",
        "job-1/update/accepted", "job-1/get/rejected")]
    for topic in replies:
        service.publish(topic, b"reply")
    for topic in replies:
        device.wait_message(topic, b"reply")
    device.publish("$aws/things/dev-1/jobs/job-1/update", b"request")  # requests still arrive
    service.wait_message("$aws/things/dev-1/jobs/job-1/update", b"request")
    device.publish("$aws/things/dev-1/jobs/job-1/describe", b"no such api")  # answered InvalidTopic
    service.wait_message("$aws/things/dev-1/jobs/job-1/describe", b"no such api")
    service.publish("$aws/things/echo/jobs/mark", b"mark")  # routed to the service after the replies
    service.wait_message("$aws/things/echo/jobs/mark", b"mark")
    assert [topic for topic, _ in service.messages() if topic in replies] == []


@PROTOCOLS
def test_one_certificate_holds_several_client_ids_of_its_things_and_a_duplicate_takes_over(
        env: Env, protocol: MQTTProtocolVersion) -> None:
    service = _service(env)
    first = env.connect("dev-1", "dev-1", protocol)
    second = env.connect("dev-1", "dev-1#2", protocol)
    third = env.connect("dev-1", "dev-1.jobs", protocol)
    for device, client_id in ((first, "dev-1"), (second, "dev-1#2"), (third, "dev-1.jobs")):
        assert not device.connack.is_failure, client_id
        assert device.subscribe("$aws/things/dev-1/jobs/notify").value == 1
    service.publish("$aws/things/dev-1/jobs/notify", b"to-all")
    for device in (first, second, third):
        device.wait_message("$aws/things/dev-1/jobs/notify", b"to-all")
        assert not device.gone.is_set()  # several connections of one certificate coexist
    # Another certificate of the same thing reuses the id: it takes the older session over.
    again = env.connect("dev-1-spare", "dev-1", protocol)
    assert not again.connack.is_failure
    assert first.gone.wait(WAIT)
    assert not second.gone.is_set()


@PROTOCOLS
def test_no_certificate_may_use_a_client_id_of_a_thing_it_is_not_attached_to(
        env: Env, protocol: MQTTProtocolVersion) -> None:
    owner = env.connect("dev-1", "dev-1", protocol)
    assert not owner.connack.is_failure
    owner_identity = env.identity("dev-1")
    for cert, client_id, username in (
            ("dev-2", "dev-1", None), ("dev-2", "dev-1#2", None), ("dev-2", "dev-1.jobs", None),
            ("dev-2", "dev-1", owner_identity),  # a username naming the owner changes nothing
            ("unattached", "dev-1", None), ("unattached", "dev-1-spare", None),
            ("dev-1", "dev-10", None), ("dev-1", "dev-2", None), ("dev-1", "#dev-1", None),
            ("overair", SERVICE_CLIENT_ID, None),  # reserved for the server's own identity
            ("dev-1", "dev-1#" + "x" * 123, None)):
        intruder = env.connect(cert, client_id, protocol, username)
        assert intruder.connack == "Not authorized", (cert, client_id)
    assert env.connect("dev-1", "dev-1#" + "x" * 122, protocol).connack == "Success"  # 128 bytes
    assert env.connect("overair", "overair.other", protocol).connack == "Success"
    assert not owner.gone.is_set()  # nobody took the owner's session over


def test_a_reload_that_leaves_a_certificate_no_thing_closes_its_sessions_and_keeps_others(env: Env) -> None:
    service = _service(env)
    dropped = env.connect("dev-1", "dev-1", V5)
    dropped_too = env.connect("dev-1", "dev-1#2", V311)
    kept = env.connect("dev-2", "dev-2", V311)
    for device in (dropped, dropped_too, kept):
        assert not device.connack.is_failure
    env.write({"dev-1-spare": ["dev-1"], "dev-2": ["dev-2"]})
    env.broker.signal_reload()
    assert dropped.gone.wait(WAIT)
    assert dropped_too.gone.wait(WAIT)
    assert env.connect("dev-1", "dev-1", V311).connack == "Not authorized"
    kept.publish("$aws/things/dev-2/jobs/$next/get", b"still-here")
    service.wait_message("$aws/things/dev-2/jobs/$next/get", b"still-here")
    assert not kept.gone.is_set()


def test_an_access_file_that_is_not_valid_grants_nothing(env: Env) -> None:
    device = env.connect("dev-2", "dev-2", V311)
    assert not device.connack.is_failure
    broken = f"user {env.identity('dev-2')}\nthing dev-2\ntopic  readwrite #\n"  # two spaces
    write_atomic(env.broker.acl_path, broken.encode())
    env.broker.signal_reload()
    assert device.gone.wait(WAIT)  # re-authenticated against nothing
    assert env.connect("dev-2", "dev-2", V311).connack == "Not authorized"


# --- access changes on the control topic (issue 20, item 1) ----------------------------

def _controller(env: Env) -> Device:
    controller = env.connect("controller", CONTROLLER_CLIENT_ID, V5)
    assert not controller.connack.is_failure
    assert controller.subscribe(RESPONSE_TOPIC).value == 1
    return controller


def _change(controller: Device, payload: bytes, seq: int) -> str:
    """Send a change; the plugin's answer to it."""
    mark = len(controller.events)
    controller.publish(CONTROL_TOPIC, payload)
    while True:
        topic, answer = controller.next("message", mark)
        mark = controller.events.index(("message", (topic, answer)), mark) + 1
        text: str = bytes(answer).decode()
        if topic == RESPONSE_TOPIC and text.split(":", maxsplit=1)[0].rsplit(" ", maxsplit=1)[-1] == str(seq):
            return text


def test_a_change_grants_a_new_device_without_touching_the_file_or_reloading(env: Env) -> None:
    controller = _controller(env)
    before = env.broker.acl_path.read_bytes()
    # dev-2's certificate is attached to a second thing: it may use its client id now.
    assert env.connect("dev-2", "dev-2b", V311).connack == "Not authorized"
    answer = _change(controller, render_change(1, {env.identity("dev-2"): frozenset({"dev-2", "dev-2b"})}), 1)
    assert answer == "applied 1"
    device = env.connect("dev-2", "dev-2b", V311)
    assert not device.connack.is_failure
    assert device.subscribe("$aws/things/dev-2b/jobs/notify-next").value == 1
    assert env.broker.acl_path.read_bytes() == before


@PROTOCOLS
def test_a_change_that_drops_a_certificate_closes_its_sessions_at_once(env: Env, protocol: MQTTProtocolVersion
                                                                       ) -> None:
    controller = _controller(env)
    dropped = env.connect("dev-1", "dev-1", protocol)
    kept = env.connect("dev-2", "dev-2", protocol)
    assert not dropped.connack.is_failure
    assert not kept.connack.is_failure
    assert _change(controller, render_change(7, {env.identity("dev-1"): frozenset()}), 7) == "applied 7"
    assert dropped.gone.wait(WAIT)
    assert env.connect("dev-1", "dev-1", V311).connack == "Not authorized"
    assert not kept.gone.is_set()


def test_a_change_that_takes_one_thing_closes_its_sessions_and_keeps_the_others(env: Env) -> None:
    controller = _controller(env)
    both = render_change(1, {env.identity("dev-2"): frozenset({"dev-2", "dev-2b"})})
    assert _change(controller, both, 1) == "applied 1"
    device = env.connect("dev-2", "dev-2b", V311)
    also = env.connect("dev-2", "dev-2b#2", V5)
    other = env.connect("dev-2", "dev-2", V311)  # the same certificate, its other thing
    for connection in (device, also, other):
        assert not connection.connack.is_failure
    one = render_change(2, {env.identity("dev-2"): frozenset({"dev-2"})})
    assert _change(controller, one, 2) == "applied 2"
    assert device.gone.wait(WAIT)
    assert also.gone.wait(WAIT)
    assert env.connect("dev-2", "dev-2b", V311).connack == "Not authorized"
    service = _service(env)
    other.publish("$aws/things/dev-2/jobs/$next/get", b"still-here")  # it kept its session
    service.wait_message("$aws/things/dev-2/jobs/$next/get", b"still-here")
    assert not other.gone.is_set()


@pytest.mark.parametrize("payload", [
    b"user X\nthing dev-1\n",  # no seq
    b"seq 3\npattern read #\n",  # global rules only with the whole file
    b"seq 3\nuser {me}\nclientid overair.service\n",  # a reserved client id: a takeover of the service
    b"seq 3\nuser {me}\nthing dev-1\nuser {me}\nthing dev-2\n",  # one user twice
    b"seq 3\ndrop {me}\nuser {me}\n",  # both dropped and set
    b"seq 3\nuser {me}\ntopic  readwrite #\n",  # two spaces
    b"seq 3\nuser {me}\nthing dev-1\x00\nthing dev-2\n",  # a NUL
    b"seq 3\ntopic readwrite #\n",  # a grant before any user
])
def test_a_change_that_is_not_valid_is_refused_and_changes_nothing(env: Env, payload: bytes) -> None:
    controller = _controller(env)
    device = env.connect("dev-2", "dev-2", V311)
    assert not device.connack.is_failure
    sent = payload.replace(b"{me}", env.identity("dev-2").encode())
    controller.publish(CONTROL_TOPIC, sent)
    answer = controller.next("message")
    assert answer[0] == RESPONSE_TOPIC
    assert answer[1].decode().startswith("refused")
    # dev-2 keeps exactly its access: connected, its own topics only.
    assert not device.gone.is_set()
    assert device.subscribe("$aws/things/dev-1/jobs/notify-next").value == 0x80
    assert device.subscribe("$aws/things/dev-2/jobs/notify-next").value == 1


def test_n4_a_device_cannot_change_access_through_the_control_topic(env: Env) -> None:
    """A device that publishes a change granting itself another thing is refused (MQTT
    5: PUBACK 0x87; nothing reaches the plugin) and gains nothing."""
    controller = _controller(env)
    attacker = env.connect("dev-2", "dev-2", V5)
    assert not attacker.connack.is_failure
    mark = len(attacker.events)
    attacker.publish(CONTROL_TOPIC, render_change(99, {env.identity("dev-2"): frozenset({"dev-2", "dev-1"})}))
    assert attacker.next("puback", mark) == "Not authorized"
    _echo(_service(env))
    assert ("message", (RESPONSE_TOPIC, b"applied 99")) not in controller.events
    assert env.connect("dev-2", "dev-1", V311).connack == "Not authorized"
    assert attacker.subscribe("$aws/things/dev-1/jobs/notify-next").value == 0x87
