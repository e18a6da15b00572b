"""The service frames QoS 0 data blocks itself (one write per GetStream answer): the bytes
must be exactly the PUBLISH packets gmqtt would have built."""

from __future__ import annotations

import pytest
from gmqtt import Message
from gmqtt.mqtt.package import PublishPacket

from overair.server.gateway.mqtt_driver import qos0_publish_packet


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
