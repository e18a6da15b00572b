"""The agent against a hostile broker (issue 12): a broker may deliver what no standard
broker forwards, such as a PUBLISH whose topic is not UTF-8. paho re-raises an error of a
message callback in its network thread unless told not to, and that thread then ends:
the agent would be deaf for good. Here the broker is the attacker, so it is a small
MQTT 3.1.1 server written for the test (mutual TLS, CONNACK, SUBACK, PUBACK); the agent
is the real one (paho, LinuxSlots, in-process).
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from overair.agent.config import load_config
from overair.agent.runtime import Runtime
from overair.sim.firmware import make_firmware
from tests.integration.test_agent_mqtt import V1
from tests.pki_helpers import Issued, issue, make_ca

THING = "dev-hostile-broker"
NOTIFY = f"$aws/things/{THING}/jobs/notify-next"


def _read_exactly(conn: ssl.SSLSocket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _read_packet(conn: ssl.SSLSocket) -> tuple[int, bytes]:
    header = _read_exactly(conn, 1)[0]
    length, shift = 0, 0
    while True:
        byte = _read_exactly(conn, 1)[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return header, _read_exactly(conn, length)


def _remaining(length: int) -> bytes:
    out = bytearray()
    while True:
        byte, length = length & 0x7F, length >> 7
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out)


def _publish(topic: bytes, payload: bytes) -> bytes:
    body = struct.pack(">H", len(topic)) + topic + payload
    return b"\x30" + _remaining(len(body)) + body


class HostileBroker:
    """Accepts one agent; once it has subscribed, sends `first`, then a job message;
    records every topic the agent publishes to."""

    def __init__(self, root: Path, ca: Issued, first: bytes) -> None:
        server = issue(ca, "hostile broker", server_names=("127.0.0.1",))
        server.write(root / "broker.crt", root / "broker.key")
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(root / "broker.crt", root / "broker.key")
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.first = first
        self.published: list[str] = []
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        raw, _ = self.listener.accept()
        with self.context.wrap_socket(raw, server_side=True) as conn:
            try:
                self._session(conn)
            except (ConnectionError, OSError):
                return

    def _session(self, conn: ssl.SSLSocket) -> None:
        sent = False
        while True:
            header, body = _read_packet(conn)
            kind = header >> 4
            if kind == 1:  # CONNECT
                conn.sendall(b"\x20\x02\x00\x00")
            elif kind == 8:  # SUBSCRIBE: grant QoS 0 to each filter
                count, offset = 0, 2
                while offset < len(body):
                    offset += 2 + struct.unpack(">H", body[offset:offset + 2])[0] + 1
                    count += 1
                conn.sendall(b"\x90" + _remaining(2 + count) + body[:2] + b"\x00" * count)
            elif kind == 12:  # PINGREQ
                conn.sendall(b"\xd0\x00")
            elif kind == 3:  # PUBLISH from the agent
                topic_length = struct.unpack(">H", body[:2])[0]
                topic = body[2:2 + topic_length].decode()
                if (header >> 1) & 3:
                    packet_id = body[2 + topic_length:4 + topic_length]
                    conn.sendall(b"\x40\x02" + packet_id)
                with self.changed:
                    self.published.append(topic)
                    self.changed.notify_all()
                if topic.endswith("/$next/get") and not sent:
                    sent = True
                    conn.sendall(self.first)
                    job = {"timestamp": 1, "execution": {"jobId": "job-after", "executionNumber": 1,
                                                         "jobDocument": {"operation": "not an OTA job"}}}
                    conn.sendall(_publish(NOTIFY.encode(), json.dumps(job).encode()))

    def wait_published(self, suffix: str, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: any(t.endswith(suffix) for t in self.published), timeout)

    def close(self) -> None:
        self.listener.close()


def _bundle(root: Path, ca: Issued, port: int) -> Path:
    bundle = root / THING
    bundle.mkdir(parents=True)
    issue(ca, THING, client=True).write(bundle / "device.crt", bundle / "device.key")
    (bundle / "root-ca.pem").write_bytes(ca.cert_pem)
    (bundle / "code-signing-root.pem").write_bytes(make_ca("code root").cert_pem)
    (bundle / "factory.bin").write_bytes(make_firmware(V1, 4096, seed=THING))
    (bundle / "agent.toml").write_text(
        f'thing_name = "{THING}"\n[mqtt]\nhost = "127.0.0.1"\nport = {port}\nclient_cert = "device.crt"\n'
        'client_key = "device.key"\nca_file = "root-ca.pem"\n'
        '[trust]\ncode_signing_roots = "code-signing-root.pem"\n'
        '[storage]\ndata_dir = "state"\nfactory_image = "factory.bin"\n')
    return bundle


@pytest.fixture
def agent_and_broker(tmp_path: Path,
                     request: pytest.FixtureRequest) -> Iterator[tuple[Runtime, HostileBroker]]:
    ca = make_ca("hostile fleet CA")
    broker = HostileBroker(tmp_path, ca, request.param)
    runtime = Runtime(load_config(_bundle(tmp_path, ca, broker.port)))
    runtime.start()
    try:
        yield runtime, broker
    finally:
        runtime.stop()
        broker.close()


@pytest.mark.parametrize("agent_and_broker", [
    _publish(b"$aws/things/\xff\xfe/jobs/notify-next", b"{}"),  # a topic that is not UTF-8
    _publish(NOTIFY.encode(), b"\xff" * 100),  # a payload that is not UTF-8
    _publish(b"$aws/things/other/unsubscribed", b"[" * 10_000),  # a topic never subscribed
], indirect=True, ids=["non-utf8-topic", "non-utf8-payload", "unsubscribed-topic"])
def test_agent_survives_what_a_hostile_broker_delivers(
        agent_and_broker: tuple[Runtime, HostileBroker]) -> None:
    runtime, broker = agent_and_broker
    assert broker.wait_published(f"/{THING}/jobs/$next/get", 15)
    # The job message sent after the hostile one is still handled: the network thread lives.
    assert broker.wait_published("/jobs/job-after/update", 10), broker.published
    assert runtime.wait(lambda s: s.last_result is not None and s.last_result.job_id == "job-after", 5)
    snapshot = runtime.snapshot()
    assert (snapshot.alive, snapshot.error) == (True, None)
