"""How many bytes an MQTT 3.1.1 PUBLISH takes in a device's receive buffer.

A FreeRTOS device built on coreMQTT receives each packet whole into one fixed network
buffer (the OTA demo: `otaconfigFILE_BLOCK_SIZE + 128` = 4,224 bytes) and drops a packet
that does not fit; the job is then never seen (device-protocol.md §2). What must fit is
the whole packet: fixed header, remaining length, topic, packet id (QoS 1 and 2) and
payload (MQTT 3.1.1 §3.3). Pure arithmetic, used to warn before a rollout starts.
"""

from __future__ import annotations

MAX_REMAINING_LENGTH = 268_435_455  # four length bytes (MQTT 3.1.1 §2.2.3)


def remaining_length_bytes(length: int) -> int:
    """Bytes of the variable-length encoding of a packet's remaining length."""
    if not 0 <= length <= MAX_REMAINING_LENGTH:
        raise ValueError(f"an MQTT remaining length is 0 to {MAX_REMAINING_LENGTH}")
    count = 1
    while length >= 128:
        length //= 128
        count += 1
    return count


def publish_packet_size(topic: str, payload_bytes: int, qos: int) -> int:
    """Size of the PUBLISH packet that carries `payload_bytes` on `topic` at `qos`."""
    if qos not in (0, 1, 2):
        raise ValueError("qos is 0, 1 or 2")
    remaining = 2 + len(topic.encode("utf-8")) + (2 if qos else 0) + payload_bytes
    return 1 + remaining_length_bytes(remaining) + remaining
