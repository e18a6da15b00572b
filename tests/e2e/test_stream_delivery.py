"""MQTT file delivery details and replays, against the real server.

- JSON streams: `describe/json` and `get/json` serve the same bytes as CBOR, base64
  in JSON, exactly the blocks asked for.
- N3 replay: captured job and stream messages replayed to a device that finished its
  update, and a device's captured status update replayed to the service, change nothing.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from overair.core.bitmap import block_count
from overair.core.streamcodec import GetStreamRequest, decode_rejection, encode_get_stream
from overair.core.versions import Version
from overair.sim.firmware import make_firmware
from overair.sim.fleet import Fleet
from tests.e2e.ota_helpers import create_ota
from tests.e2e.test_server_security import Device
from tests.server_harness import RunningServer

BUCKET = "firmware"
SIZE = 20_000


def _ota(srv: RunningServer, ota_id: str, thing: str, image: bytes) -> str:
    """A signed OTA update to `thing`; returns the stream it delivers."""
    iot = srv.client("iot")
    info = create_ota(srv, ota_id, [iot.describe_thing(thingName=thing)["thingArn"]], image)
    assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info.get("errorInfo")
    document = json.loads(iot.get_job_document(jobId=f"AFR_OTA-{ota_id}")["document"])
    return str(document["afr_ota"]["streamname"])


def test_json_stream_serves_the_file_base64_exactly_as_asked(srv: RunningServer, tmp_path: Path) -> None:
    name = "json-reader"
    bundle = srv.provision(name, tmp_path / name)
    image = make_firmware(Version(3, 0, 0), SIZE, seed="json")
    stream = _ota(srv, "json-1", name, image)
    device = Device(srv, bundle, name)
    try:
        assert device.connect()
        device.subscribe(f"$aws/things/{name}/streams/{stream}/#")
        time.sleep(0.2)
        device.client.publish(
            f"$aws/things/{name}/streams/{stream}/describe/json", json.dumps({"c": "d1"}), qos=1
        )
        (description,) = device.wait_for("/description/json")
        assert json.loads(description[1])["r"] == [{"f": 0, "z": SIZE}]
        block_size = 1024
        total = block_count(SIZE, block_size)
        received: dict[int, bytes] = {}
        while len(received) < total:
            needed = bytearray((total + 7) // 8)
            for block in range(total):
                if block not in received:
                    needed[block // 8] |= 1 << (block % 8)
            device.messages.clear()
            request = GetStreamRequest(
                client_token="j",
                file_id=0,
                block_size=block_size,
                block_offset=0,
                bitmap=bytes(needed),
                number_of_blocks=5,
                stream_version=None,
            )
            device.client.publish(
                f"$aws/things/{name}/streams/{stream}/get/json", encode_get_stream(request, "json"), qos=1
            )
            deadline = time.monotonic() + 10
            while len([m for m in device.messages if "/data/json" in m[0]]) < min(5, total - len(received)):
                assert time.monotonic() < deadline, "blocks missing"
                time.sleep(0.01)
            time.sleep(0.1)  # anything beyond what was asked would arrive now
            blocks = [json.loads(m[1]) for m in device.messages if "/data/json" in m[0]]
            assert len(blocks) == min(5, total - len(received))  # exactly min(n, still needed)
            expected = sorted(b for b in range(total) if b not in received)[:5]
            assert sorted(b["i"] for b in blocks) == expected  # lowest needed first
            for block in blocks:
                payload = base64.b64decode(block["p"])
                assert block["l"] == len(payload)
                received[block["i"]] = payload
        assert b"".join(received[i] for i in range(total)) == image
    finally:
        device.close()


class ThingTap:
    """A second certificate attached to the thing, on its own connection: it sees every
    message to and from the thing and can inject messages on its topics, as a replaying
    attacker on the broker path could (threat N3)."""

    def __init__(self, srv: RunningServer, thing: str, workdir: Path) -> None:
        iot = srv.client("iot")
        cert = iot.create_keys_and_certificate(setAsActive=True)
        iot.attach_thing_principal(thingName=thing, principal=cert["certificateArn"])
        (workdir / "tap.crt").write_text(cert["certificatePem"])
        (workdir / "tap.key").write_text(cert["keyPair"]["PrivateKey"])
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cafile=str(srv.settings.paths.fleet_ca_cert))
        context.load_cert_chain(str(workdir / "tap.crt"), str(workdir / "tap.key"))
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"{thing}#tap", protocol=mqtt.MQTTv311
        )
        self.client.tls_set_context(context)
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", srv.settings.mqtt_port)
        self.client.subscribe(f"$aws/things/{thing}/#", 1)
        self.client.loop_start()
        time.sleep(0.3)

    def _on_message(self, _c: Any, _u: Any, message: Any) -> None:
        with self._lock:
            self.messages.append((message.topic, bytes(message.payload)))

    def captured(self, part: str) -> list[tuple[str, bytes]]:
        with self._lock:
            return [m for m in self.messages if part in m[0]]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def finished_update(
    srv: RunningServer, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[str, Fleet, ThingTap]]:
    name = "replay-" + request.node.name[-12:].strip("_")
    ota_id = f"ota-{name}"
    factory = tmp_path / "factory.bin"
    factory.write_bytes(make_firmware(Version(1, 0, 0), 4096, seed="factory"))
    bundle = srv.provision(name, tmp_path / name, factory_image=factory)
    tap = ThingTap(srv, name, tmp_path)
    fleet = Fleet([bundle])
    fleet.start()
    try:
        assert fleet.wait(lambda s: s[name].connected, 30)
        _ota(srv, ota_id, name, make_firmware(Version(1, 1, 0), SIZE, seed="replay"))
        assert fleet.wait(lambda s: s[name].version == "1.1.0" and not s[name].trial, 60)
        deadline = time.monotonic() + 10
        while (
            srv.client("iot").describe_job_execution(jobId=f"AFR_OTA-{ota_id}", thingName=name)["execution"][
                "status"
            ]
            != "SUCCEEDED"
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield name, fleet, tap
    finally:
        fleet.stop()
        tap.close()


def test_n3_replayed_job_and_stream_messages_change_nothing(
    srv: RunningServer, finished_update: tuple[str, Fleet, ThingTap]
) -> None:
    name, fleet, tap = finished_update
    iot = srv.client("iot")
    before = iot.describe_job_execution(jobId=f"AFR_OTA-ota-{name}", thingName=name)["execution"]
    job_messages = [m for m in tap.captured("/jobs/notify-next") if f"AFR_OTA-ota-{name}".encode() in m[1]]
    data_blocks = tap.captured("/data/cbor")
    assert job_messages
    assert data_blocks
    reboots = fleet.snapshots()[name].reboots
    for topic, payload in job_messages[:1] + data_blocks[:8]:
        tap.client.publish(topic, payload, qos=1)
    time.sleep(2.0)  # give a wrongly re-applied update every chance to start
    snapshot = fleet.snapshots()[name]
    assert snapshot.version == "1.1.0"
    assert snapshot.reboots == reboots  # nothing was activated again
    assert snapshot.job_id in (None, f"AFR_OTA-ota-{name}")
    assert snapshot.blocks_received == 0  # no download started
    after = iot.describe_job_execution(jobId=f"AFR_OTA-ota-{name}", thingName=name)["execution"]
    assert after["status"] == "SUCCEEDED"
    assert after["statusDetails"] == before["statusDetails"]


def test_n3_replayed_status_update_changes_nothing(
    srv: RunningServer, finished_update: tuple[str, Fleet, ThingTap]
) -> None:
    name, _fleet, tap = finished_update
    iot = srv.client("iot")
    before = iot.describe_job_execution(jobId=f"AFR_OTA-ota-{name}", thingName=name)["execution"]
    updates = tap.captured(f"/jobs/AFR_OTA-ota-{name}/update")
    updates = [m for m in updates if not m[0].endswith(("/accepted", "/rejected"))]
    in_progress = [m for m in updates if b'"IN_PROGRESS"' in m[1]]
    assert in_progress
    tap.messages.clear()
    # A device's own earlier message, replayed on its topic (only the device and the
    # service may publish there).
    tap.client.publish(in_progress[0][0], in_progress[0][1], qos=1)
    deadline = time.monotonic() + 10
    while not tap.captured("/update/rejected"):
        assert time.monotonic() < deadline, "the replay was not answered"
        time.sleep(0.05)
    assert b"InvalidStateTransition" in tap.captured("/update/rejected")[0][1]
    after = iot.describe_job_execution(jobId=f"AFR_OTA-ota-{name}", thingName=name)["execution"]
    assert (after["status"], after["versionNumber"]) == ("SUCCEEDED", before["versionNumber"])


def test_no_500_hostile_device_messages_are_rejected_and_the_service_keeps_serving(
    srv: RunningServer, tmp_path: Path
) -> None:
    """Issue 12, finding 10: what crashed a handler or escaped onto the service's event
    loop (deep JSON, a 400-digit number, a non-ASCII base64 bitmap, CBOR tags) is answered
    on the request's rejected topic with AWS's code, and the device is served after it."""
    name = "hostile-sender"
    bundle = srv.provision(name, tmp_path / name)
    stream = _ota(srv, "hostile-1", name, make_firmware(Version(3, 0, 0), SIZE, seed="hostile"))
    job = "AFR_OTA-hostile-1"
    device = Device(srv, bundle, name)
    jobs, streams = f"$aws/things/{name}/jobs", f"$aws/things/{name}/streams/{stream}"
    deep = b"[" * 1000 + b"]" * 1000
    bitmap = json.dumps({"c": "j", "f": 0, "l": 1024, "o": 0, "b": "\u00e9\u00e9==", "n": 1}).encode()
    cases = [
        (f"{jobs}/{job}/update", deep, f"{jobs}/{job}/update/rejected", "InvalidJson"),
        (f"{jobs}/{job}/update", b'{"status": "IN_PROGRESS", "stepTimeoutInMinutes": 1' + b"0" * 400 + b"}",
         f"{jobs}/{job}/update/rejected", "InvalidJson"),
        (f"{jobs}/{job}/update", b'{"status": "IN_PROGRESS", "stepTimeoutInMinutes": 100000}',
         f"{jobs}/{job}/update/rejected", "InvalidRequest"),
        (f"{jobs}/$next/get", b'{"clientToken": ' + deep + b"}", f"{jobs}/$next/get/rejected", "InvalidJson"),
        (f"{jobs}/start-next", b'{"statusDetails": {"k": "\\ud800"}}', f"{jobs}/start-next/rejected",
         "InvalidRequest"),
        (f"{jobs}/not$a$job/get", b"{}", f"{jobs}/not$a$job/get/rejected", "InvalidTopic"),
        (f"{streams}/get/json", bitmap, f"{streams}/rejected/json", "InvalidRequest"),
        (f"{streams}/get/json", b"[" * 400 + b"]" * 400, f"{streams}/rejected/json", "InvalidJson"),
        (f"{streams}/get/json", deep, f"{streams}/rejected/json", "InvalidRequest"),  # over 1 KiB
        (f"{streams}/get/cbor", b"\xd8\x23\x63(a)", f"{streams}/rejected/cbor", "InvalidCbor"),
        (f"{streams}/get/cbor", b"\x81" * 500 + b"\x00", f"{streams}/rejected/cbor", "InvalidCbor"),
    ]
    try:
        assert device.connect()
        device.subscribe(f"$aws/things/{name}/#")
        time.sleep(0.3)
        for topic, payload, reply_topic, code in cases:
            device.messages.clear()
            device.client.publish(topic, payload, qos=1)
            replies = device.wait_for(reply_topic)
            assert replies, f"no answer on {reply_topic}"
            fmt = reply_topic.rsplit("/", 1)[1]
            answered = (decode_rejection(replies[0][1], fmt)[0] if "/streams/" in reply_topic
                        else json.loads(replies[0][1])["code"])
            assert answered == code, (topic, answered)
            assert not [m for m in device.messages if "/data/" in m[0]]
        device.messages.clear()
        request = GetStreamRequest("ok", 0, 1024, 0, b"\x01", 1, None)
        device.client.publish(f"{streams}/get/cbor", encode_get_stream(request), qos=1)
        assert device.wait_for(f"{streams}/data/cbor"), "the service stopped serving after hostile messages"
        execution = srv.client("iot").describe_job_execution(jobId=job, thingName=name)["execution"]
        assert execution["status"] == "QUEUED"  # nothing hostile was applied
    finally:
        device.close()
