"""The service frames its PUBLISH packets itself (one write per run of messages: a
GetStream answer's QoS 0 data blocks, a job's QoS 1 notifications): the bytes must be
exactly the packets gmqtt would have built, and a QoS 1 packet must be kept as gmqtt's
own `publish` keeps it (packet id taken, packet stored until its PUBACK)."""

from __future__ import annotations

import ssl

import pytest
from gmqtt import Message
from gmqtt.mqtt.package import PublishPacket
from gmqtt.mqtt.utils import IdGenerator
from gmqtt.storage import PersistentStorage

from overair.core.limits import Limits
from overair.server.gateway.device_service import Outgoing
from overair.server.gateway.mqtt_driver import (
    ServiceConnection,
    qos0_publish_packet,
    qos0_publish_packets,
    qos1_publish_packet,
)


class _Protocol:
    proto_ver = 4  # MQTT 3.1.1

    def __init__(self) -> None:
        self.id_generator = IdGenerator()


class _Service:
    limits = Limits()


class _Connection:
    def __init__(self) -> None:
        self._protocol = _Protocol()
        self.written: list[bytes] = []

    def send_package(self, package: bytes) -> None:
        self.written.append(package)


@pytest.mark.parametrize("size", [0, 1, 127 - 40, 128, 4113, 16_384, 2_097_151])
def test_qos0_publish_packet_matches_gmqtt(size: int) -> None:
    topic = "$aws/things/thing-1/streams/ota-0123456789/data/cbor"
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    expected = PublishPacket.build_package(Message(topic, payload, qos=0), _Protocol())[1]
    assert qos0_publish_packet(topic, payload) == expected


def test_non_ascii_topics_are_utf8_with_their_byte_length() -> None:
    topic = "$aws/things/gerät/streams/s/data/json"
    packet = qos0_publish_packet(topic, b"{}")  # short: a one-byte remaining length
    assert packet[4:4 + int.from_bytes(packet[2:4], "big")] == topic.encode()


def test_a_run_of_answers_is_each_message_framed_in_order() -> None:
    # Headers are made once per (topic, size) in a run: a last block of another size, a
    # block to another thing between two of the same size, must each get their own.
    messages = [Outgoing("$aws/things/a/streams/s/data/cbor", bytes([i]) * 4113, 0) for i in range(3)]
    messages += [Outgoing("$aws/things/a/streams/s/data/cbor", b"last", 0),
                 Outgoing("$aws/things/gerät/streams/s/data/cbor", b"x" * 4113, 0),
                 Outgoing("$aws/things/a/streams/s/data/cbor", b"y" * 4113, 0)]
    assert qos0_publish_packets(messages) == b"".join(
        PublishPacket.build_package(Message(m.topic, m.payload, qos=0), _Protocol())[1] for m in messages)


@pytest.mark.parametrize("size", [0, 1, 127 - 42, 128, 4113, 2_097_151 - 60])
@pytest.mark.parametrize("packet_id", [1, 255, 256, 65535])
def test_qos1_publish_packet_matches_gmqtt(size: int, packet_id: int) -> None:
    topic = "$aws/things/thing-1/jobs/notify-next"
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    protocol = _Protocol()
    protocol.id_generator._last_used_id = packet_id - 1
    mid, expected = PublishPacket.build_package(Message(topic, payload, qos=1), protocol)
    assert mid == packet_id
    assert qos1_publish_packet(topic, packet_id, payload) == expected


def test_a_run_of_qos1_messages_is_one_write_each_packet_kept_until_acknowledged() -> None:
    service = ServiceConnection("127.0.0.1", 1, ssl.create_default_context(), _Service())  # type: ignore[arg-type]
    connection = _Connection()
    service._client._connection = connection
    service._client._persistent_storage = stored = PersistentStorage()
    messages = [Outgoing(f"$aws/things/t-{i}/jobs/notify-next", b"{}" * i, 1) for i in range(3)]
    messages += [Outgoing("$aws/things/t-0/streams/s/data/cbor", b"block", 0),
                 Outgoing("$aws/things/t-0/streams/s/data/cbor", b"block", 0),
                 Outgoing("$aws/things/t-9/jobs/notify", b"[]", 1),
                 Outgoing("$aws/things/t-9/jobs/x", b"", 1)]
    service.publish(messages)
    reference = _Protocol()
    expected = [PublishPacket.build_package(Message(m.topic, m.payload, qos=m.qos), reference)[1]
                for m in messages]
    # In order, one write per run of one QoS; the QoS 1 ones numbered 1..5 as gmqtt would.
    assert connection.written == [b"".join(expected[:3]), b"".join(expected[3:5]), b"".join(expected[5:])]
    numbered = ((1, 0), (2, 1), (3, 2), (4, 5), (5, 6))  # (packet id, message)
    assert stored.get_all() == [(mid, bytes(expected[i])) for mid, i in numbered]
    assert connection._protocol.id_generator._used_ids == {1, 2, 3, 4, 5}
