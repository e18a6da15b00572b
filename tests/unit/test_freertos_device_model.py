"""The FreeRTOS-shaped test device (tests/freertos_device.py) enforces what it claims:
the end-to-end tests rely on it to fail where a real device would. Its rules are checked
here without a network: the receive buffer, the client token of each library version,
the URL host parsing, and a bad message under `streams/` during a download."""

from __future__ import annotations

from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from overair.core.versions import Version
from tests.freertos_device import HTTP_DEMO, DeviceSettings, FreeRtosDevice, _File

MQTT_DEMO = DeviceSettings()


def _device(settings: DeviceSettings = MQTT_DEMO, thing: str = "fr-1") -> FreeRtosDevice:
    return FreeRtosDevice(thing, Path("/nonexistent"), 1, Version(1, 0, 0), certfiles={}, settings=settings)


def _message(topic: str, size: int) -> mqtt.MQTTMessage:
    message = mqtt.MQTTMessage(mid=0, topic=topic.encode())
    message.payload = b"{" + b" " * (size - 2) + b"}"
    message.qos = 0
    return message


def test_a_message_larger_than_the_mqtt_demo_buffer_is_dropped() -> None:
    device = _device()
    topic = "$aws/things/fr-1/jobs/notify-next"
    fits = 4224 - 1 - 2 - 2 - len(topic)  # packet type, 2 length bytes, topic length, topic
    device._on_message(mqtt.Client(CallbackAPIVersion.VERSION2), None, _message(topic, fits))
    device._on_message(mqtt.Client(CallbackAPIVersion.VERSION2), None, _message(topic, fits + 1))
    assert device.log.job_messages == [4224]
    assert device.log.dropped == [(topic, 4225)]
    assert HTTP_DEMO.mqtt_buffer == 4096 + 2048 + 128  # the HTTP demo's buffer holds its URL too


@pytest.mark.parametrize(("style", "counters", "tokens"), [
    ("v3.4.0", [0, 9, 10, 123], ["0:fr-1", "9:fr-1", "10:fr-1", "123:fr-1"]),
    ("main", [0, 9, 10, 123], [":fr-1", ":fr-1", "1:fr-1", "12:fr-1"]),  # the last digit is lost
])
def test_the_client_token_is_the_librarys(style: str, counters: list[int], tokens: list[str]) -> None:
    device = _device(DeviceSettings(token_style=style))
    seen = []
    for counter in counters:
        device._counter = counter
        seen.append(device._token())
    assert seen == tokens


def test_the_main_branch_token_cuts_the_thing_name_at_53_characters() -> None:
    device = _device(DeviceSettings(token_style="main"), thing="t" * 60)
    assert device._token() == ":" + "t" * 53


def _download(device: FreeRtosDevice, url: str | None = None, protocol: str = "MQTT") -> _File:
    file = _File("job-1", "s-1", 0, 10_000, "/fw", "/c.pem", b"", "sig-sha256-ecdsa", url,
                 bytearray(10_000), bytearray(b"\x07"), 3, protocol)
    device._file = file
    return file


def test_a_url_with_a_port_is_a_host_name_the_device_cannot_resolve() -> None:
    device = _device(HTTP_DEMO)
    file = _download(device, "https://localhost:8443/ota/firmware/fw.bin?x=1", "HTTP")
    assert device._http_connect(file) is False
    assert device.log.http_failures[0].startswith("DNS 'localhost:8443'")
    assert device.log.http_connects == []


def test_an_undecodable_message_under_streams_fails_the_job_as_the_library_does() -> None:
    device = _device()
    _download(device)
    device._on_block("$aws/things/fr-1/streams/s-1/data/cbor", b"not cbor")
    assert device.log.violations == ["undecodable message on $aws/things/fr-1/streams/s-1/data/cbor"]
    assert [(u.status, u.details) for u in device.log.updates] == [
        ("FAILED", {"reason": "0x000000e0: 0x00000000"})]


def test_any_message_under_streams_without_a_download_is_a_violation() -> None:
    device = _device()
    device._on_block("$aws/things/fr-1/streams/s-1/rejected/cbor", b"\xa0")
    assert device.log.violations == ["unexpected message on $aws/things/fr-1/streams/s-1/rejected/cbor "
                                     "(no download)"]
