"""The broker overair configures: mutual TLS only (L1) and per-thing topics (N4)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from overair.server import pki
from overair.server.files import write_atomic, write_private
from overair.server.gateway.broker import Broker, render_acl, render_config
from overair.server.gateway.broker_plugin import build_plugin
from overair.server.gateway.tls import client_ssl_context
from tests.ports import free_port

NOW = dt.datetime.now(dt.UTC)


class BrokerEnv:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = pki.make_root_ca("test fleet CA", NOW)
        self.port = free_port()
        write_atomic(root / "ca.pem", self.ca.cert_pem)
        server = pki.issue_server_cert(self.ca, ("localhost", "127.0.0.1"), NOW)
        write_atomic(root / "server.pem", server.cert_pem)
        write_private(root / "server.key", server.key_pem)
        write_atomic(root / "crl.pem", pki.make_crl(self.ca, [], NOW))
        self.identities: dict[str, str] = {}  # file name -> broker identity
        self.startup_log: tuple[str, ...] = ()
        self.service = self.client_files("service", pki.SERVICE_IDENTITY)
        self.a = self.client_files("a", "thing-a")
        self.b = self.client_files("b", "thing-b")

    def client_files(self, name: str, cn: str, ca: pki.Issued | None = None) -> tuple[str, str]:
        issued = pki.issue_client_cert(ca or self.ca, cn, NOW)
        cert, key = self.root / f"{name}.pem", self.root / f"{name}.key"
        write_atomic(cert, issued.cert_pem)
        write_private(key, issued.key_pem)
        identity = pki.broker_username(issued.cert.subject)
        assert identity is not None
        self.identities[name] = identity
        return str(cert), str(key)


@pytest.fixture(params=["plugin", "subject"])
def broker_env(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[BrokerEnv]:
    """The broker as overair runs it, with its access plugin and without (the client id
    forced to the certificate's subject): both must hold L1 and N4."""
    env = BrokerEnv(tmp_path)
    broker = Broker(tmp_path / "broker", "mosquitto", "127.0.0.1", env.port)
    plugin = build_plugin(broker.workdir).path if request.param == "plugin" else None
    assert request.param == "subject" or plugin is not None
    acl = render_acl(service=env.identities["service"],
                     devices={env.identities["a"]: ["thing-a"], env.identities["b"]: ["thing-b"]},
                     for_plugin=plugin is not None)
    write_atomic(broker.acl_path, acl.encode())
    broker.write_config(render_config(host="127.0.0.1", port=env.port, ca=tmp_path / "ca.pem",
                                      cert=tmp_path / "server.pem", key=tmp_path / "server.key",
                                      crl=tmp_path / "crl.pem", acl=broker.acl_path,
                                      run_as_root=os.geteuid() == 0, workdir=broker.workdir, plugin=plugin))
    loop = asyncio.new_event_loop()
    context = client_ssl_context(str(tmp_path / "ca.pem"), *env.service)
    loop.run_until_complete(broker.start(context))
    env.startup_log = broker.log_tail()
    try:
        yield env
    finally:
        loop.run_until_complete(broker.stop())
        loop.close()


def _client(env: BrokerEnv, cert: tuple[str, str] | None, cn: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cn)
    client.tls_set(ca_certs=str(env.root / "ca.pem"), certfile=cert[0] if cert else None,
                   keyfile=cert[1] if cert else None, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    return client


def _connects(client: mqtt.Client, port: int) -> bool:
    connected = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: connected.set() if not rc.is_failure else None
    try:
        client.connect("127.0.0.1", port, keepalive=10)
    except (ssl.SSLError, OSError):
        return False
    client.loop_start()
    ok = connected.wait(3)
    client.loop_stop()
    client.disconnect()
    return ok


def test_l1_client_without_certificate_is_refused(broker_env: BrokerEnv) -> None:
    assert not _connects(_client(broker_env, None, "anon"), broker_env.port)


def test_l1_client_from_another_ca_is_refused(broker_env: BrokerEnv) -> None:
    rogue_ca = pki.make_root_ca("rogue CA", NOW)
    cert = broker_env.client_files("rogue", "thing-a", ca=rogue_ca)
    assert not _connects(_client(broker_env, cert, "thing-a"), broker_env.port)


def test_l1_no_plaintext_listener(broker_env: BrokerEnv) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="plain")
    assert not _connects(client, broker_env.port)


def test_l1_the_broker_opens_only_the_mutual_tls_listener(broker_env: BrokerEnv) -> None:
    """Mosquitto 2.0.11 opens a plaintext listener on port 1883 for any listener option
    written before the first `listener` line (found while adding the access plugin)."""
    opened = [line for line in broker_env.startup_log if "listen socket on port" in line]
    assert opened
    assert all(line.endswith(f"listen socket on port {broker_env.port}.") for line in opened), opened


def test_n4_device_cannot_read_or_write_another_devices_topics(broker_env: BrokerEnv) -> None:
    a = _client(broker_env, broker_env.a, "thing-a")
    b = _client(broker_env, broker_env.b, "thing-b")
    received: dict[str, list[str]] = {"a": [], "b": []}
    a.on_message = lambda c, u, m: received["a"].append(m.topic)
    b.on_message = lambda c, u, m: received["b"].append(m.topic)
    for client in (a, b):
        client.connect("127.0.0.1", broker_env.port)
        client.loop_start()
    try:
        time.sleep(0.3)
        a.subscribe("$aws/things/thing-a/#", qos=1)
        b.subscribe("$aws/things/thing-a/#", qos=1)  # not allowed: nothing may arrive
        b.subscribe("$aws/things/thing-b/#", qos=1)
        time.sleep(0.3)
        # Each publishes its own message; then B tries to inject into A's stream and A's
        # jobs (with the access plugin its first try ends its MQTT 3.1.1 connection).
        b.publish("$aws/things/thing-b/jobs/$next/get", b"{}", qos=1).wait_for_publish(2)
        a.publish("$aws/things/thing-a/jobs/$next/get", b"{}", qos=1).wait_for_publish(2)
        for topic in ("$aws/things/thing-a/streams/s1/data/cbor", "$aws/things/thing-a/jobs/notify-next"):
            with contextlib.suppress(RuntimeError):  # B is no longer connected
                b.publish(topic, b"forged", qos=1).wait_for_publish(2)
        time.sleep(0.5)
    finally:
        for client in (a, b):
            client.loop_stop()
            client.disconnect()
    assert received["a"] == ["$aws/things/thing-a/jobs/$next/get"]
    assert received["b"] == ["$aws/things/thing-b/jobs/$next/get"]
