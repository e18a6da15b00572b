"""The service frames QoS 0 data blocks itself (one write per GetStream answer): the bytes
must be exactly the PUBLISH packets gmqtt would have built."""

from __future__ import annotations

import pytest
from gmqtt import Message
from gmqtt.mqtt.package import PublishPacket

from overair.server.gateway.device_service import Outgoing
from overair.server.gateway.mqtt_driver import qos0_publish_packet, qos0_publish_packets


class _Protocol:
    proto_ver = 4  # MQTT 3.1.1


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
