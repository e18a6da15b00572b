"""N4: a device keeps stream or download access only while its execution is live.

The device service and the download endpoint cache access decisions (server/streams/
access.py). These tests run the real server with a *stopped* clock that only the test
moves, so a cached decision never expires by itself: a device that was served, and
whose execution then ended, is refused on its very next request only because the end
of the execution dropped the cached decision (the job service's hook); and when an
execution ends where no hook runs (another server process sharing the database), the
refusal comes once the clock passes `Limits.device_access_cache_seconds`, the backstop,
or sooner, when the server decides the access of the devices at work again (every third
of that lifetime). Each test fails if the cache is never invalidated, never expires or
is never renewed.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select, update

from overair.core.streamcodec import GetStreamRequest, decode_rejection, encode_get_stream
from overair.core.versions import Version
from overair.server.storage.schema import AuditEntry, JobExecution
from overair.sim.firmware import make_firmware
from tests.e2e.ota_helpers import create_ota, wait_for
from tests.e2e.test_server_security import Device
from tests.server_harness import RunningServer, running_server

BUCKET = "firmware"
IMAGE = make_firmware(Version(4, 0, 0), 12_000, seed="n4-access")


class StoppedClock:
    """Now, frozen: it moves only when a test says so."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class World:
    srv: RunningServer
    clock: StoppedClock
    workdir: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    clock = StoppedClock()
    with running_server(tmp_path_factory.mktemp("server"), clock=clock) as srv:
        s3 = srv.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        yield World(srv, clock, tmp_path_factory.mktemp("devices"))


@dataclass
class StreamDevice:
    name: str
    stream: str
    job_id: str
    device: Device

    def request(self, token: str) -> tuple[str, bytes]:
        """One GetStream; the first answer: ("data", block) or ("rejected", payload)."""
        self.device.messages.clear()
        request = GetStreamRequest(token, 0, 1024, 0, b"\x01", 1, None)
        self.device.client.publish(
            f"$aws/things/{self.name}/streams/{self.stream}/get/cbor", encode_get_stream(request), qos=1
        )
        (topic, payload), *_ = wait_for(
            lambda: [m for m in self.device.messages if "/data/" in m[0] or "/rejected/" in m[0]],
            10,
            f"an answer to {token}",
        )
        return ("data" if "/data/" in topic else "rejected"), payload


def _stream_devices(
    world: World, tag: str, count: int, protocols: tuple[str, ...] = ("MQTT",)
) -> tuple[list[StreamDevice], dict[str, object]]:
    srv = world.srv
    iot = srv.client("iot")
    names = [f"n4-{tag}-{i}" for i in range(count)]
    bundles = [srv.provision(name, world.workdir / name) for name in names]
    info = create_ota(
        srv,
        f"n4-{tag}",
        [iot.describe_thing(thingName=n)["thingArn"] for n in names],
        IMAGE,
        protocols=protocols,
    )
    assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info.get("errorInfo")
    job_id = f"AFR_OTA-n4-{tag}"
    document = json.loads(iot.get_job_document(jobId=job_id)["document"])
    stream = str(document["afr_ota"].get("streamname", ""))
    devices = []
    for name, bundle in zip(names, bundles, strict=True):
        device = Device(srv, bundle, name)
        assert device.connect()
        device.subscribe(f"$aws/things/{name}/#")
        devices.append(StreamDevice(name, stream, job_id, device))
    time.sleep(0.3)
    return devices, document


def _denials(srv: RunningServer, thing: str) -> list[AuditEntry]:
    with srv.server.db.reading() as s:
        return list(
            s.scalars(
                select(AuditEntry).where(
                    AuditEntry.principal == f"thing/{thing}", AuditEntry.decision == "DENY"
                )
            )
        )


def _device_reports_failed(world: World, sd: StreamDevice) -> None:
    sd.device.client.publish(
        f"$aws/things/{sd.name}/jobs/{sd.job_id}/update",
        json.dumps({"status": "FAILED", "statusDetails": {"reason": "test"}}),
        qos=1,
    )
    wait_for(
        lambda: [m for m in sd.device.messages if m[0].endswith(f"{sd.job_id}/update/accepted")],
        10,
        "the FAILED update",
    )


def _operator_cancels_the_execution(world: World, sd: StreamDevice) -> None:
    world.srv.client("iot").cancel_job_execution(jobId=sd.job_id, thingName=sd.name, force=True)


def _execution_times_out(world: World, sd: StreamDevice) -> None:
    sd.device.client.publish(
        f"$aws/things/{sd.name}/jobs/{sd.job_id}/update",
        json.dumps({"status": "IN_PROGRESS", "stepTimeoutInMinutes": 1}),
        qos=1,
    )
    wait_for(
        lambda: [m for m in sd.device.messages if m[0].endswith(f"{sd.job_id}/update/accepted")],
        10,
        "the IN_PROGRESS update",
    )
    # Just before the step timeout: served again, so the cached decision is fresh when
    # the scheduler (one tick a second) times the execution out a moment later.
    world.clock.advance(59.9)
    assert sd.request("just before the timeout")[0] == "data"
    world.clock.advance(0.2)
    iot = world.srv.client("iot")
    wait_for(
        lambda: (
            iot.describe_job_execution(jobId=sd.job_id, thingName=sd.name)["execution"]["status"]
            == "TIMED_OUT"
        ),
        10,
        "TIMED_OUT",
    )


ENDINGS = {
    "device-failed": _device_reports_failed,
    "operator-canceled": _operator_cancels_the_execution,
    "timed-out": _execution_times_out,
}


def test_n4_stream_access_ends_with_the_execution_not_with_the_cache(world: World) -> None:
    devices, _ = _stream_devices(world, "hook", len(ENDINGS))
    try:
        for sd, (how, end) in zip(devices, ENDINGS.items(), strict=True):
            assert sd.request("before")[0] == "data", how  # served, and the decision is cached
            denials = len(_denials(world.srv, sd.name))
            end(world, sd)
            # The clock has not moved past the cached decision's lifetime: only dropping
            # it when the execution ended refuses this request.
            kind, payload = sd.request("after")
            assert kind == "rejected", f"{how}: a device whose execution ended was still served"
            assert decode_rejection(payload, "cbor")[0] == "ResourceNotFound"
            assert len(_denials(world.srv, sd.name)) == denials + 1, how
    finally:
        for sd in devices:
            sd.device.close()


def test_n4_stream_access_expires_after_its_bound_when_no_hook_runs(world: World) -> None:
    (sd,), _ = _stream_devices(world, "ttl", 1)
    try:
        assert sd.request("before")[0] == "data"
        # Another server process sharing the database ends the execution: no hook here.
        with world.srv.server.db.session() as s:
            s.execute(
                update(JobExecution)
                .where(JobExecution.job_id == sd.job_id, JobExecution.thing_name == sd.name)
                .values(status="CANCELED")
            )
        world.clock.advance(world.srv.settings.limits.device_access_cache_seconds + 0.1)
        kind, payload = sd.request("after")
        assert kind == "rejected", "the cached access outlived its bound"
        assert decode_rejection(payload, "cbor")[0] == "ResourceNotFound"
        assert _denials(world.srv, sd.name)[-1].detail["reason"] == "no live execution references this stream"
    finally:
        sd.device.close()


def test_n4_stream_access_is_decided_again_within_its_bound_when_no_hook_runs(world: World) -> None:
    (sd,), _ = _stream_devices(world, "renewal", 1)
    try:
        assert sd.request("before")[0] == "data"
        with world.srv.server.db.session() as s:  # another server process ends the execution
            s.execute(
                update(JobExecution)
                .where(JobExecution.job_id == sd.job_id, JobExecution.thing_name == sd.name)
                .values(status="CANCELED")
            )
        # Half the decision's lifetime on the server's clock, which then stands still: the
        # cached yes never expires, so only the server's renewal (every third of the
        # lifetime, in real time) can refuse the device's next requests.
        world.clock.advance(world.srv.settings.limits.device_access_cache_seconds / 2)
        wait_for(lambda: sd.request("asking again")[0] == "rejected", 15, "the renewal to refuse the device")
        assert _denials(world.srv, sd.name)[-1].detail["reason"] == "no live execution references this stream"
    finally:
        sd.device.close()


def _download(world: World, url: str) -> int:
    parts = urlsplit(url)
    context = ssl.create_default_context(cafile=str(world.srv.settings.paths.fleet_ca_cert))
    connection = http.client.HTTPSConnection("127.0.0.1", parts.port, context=context, timeout=10)
    try:
        connection.sock = context.wrap_socket(
            socket.create_connection(("127.0.0.1", parts.port), timeout=10), server_hostname=parts.hostname
        )
        connection.request("GET", f"{parts.path}?{parts.query}", headers={"Range": "bytes=0-9"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def _url_of(world: World, sd: StreamDevice) -> str:
    sd.device.messages.clear()
    sd.device.client.publish(f"$aws/things/{sd.name}/jobs/$next/get", json.dumps({"clientToken": "u"}), qos=1)
    (_, payload), *_ = wait_for(
        lambda: [m for m in sd.device.messages if m[0].endswith("$next/get/accepted")], 10, "the job document"
    )
    return str(json.loads(payload)["execution"]["jobDocument"]["afr_ota"]["files"][0]["update_data_url"])


def test_n4_download_url_stops_working_when_the_execution_ends(world: World) -> None:
    devices, _ = _stream_devices(world, "url", 2, protocols=("HTTP",))
    hooked, unhooked = devices
    try:
        urls = {sd.name: _url_of(world, sd) for sd in devices}
        assert [_download(world, urls[sd.name]) for sd in devices] == [206, 206]  # access cached
        _device_reports_failed(world, hooked)
        assert _download(world, urls[hooked.name]) == 403  # at once: the hook dropped it
        with world.srv.server.db.session() as s:
            s.execute(
                update(JobExecution)
                .where(JobExecution.job_id == unhooked.job_id, JobExecution.thing_name == unhooked.name)
                .values(status="CANCELED")
            )
        world.clock.advance(world.srv.settings.limits.device_access_cache_seconds + 0.1)
        assert _download(world, urls[unhooked.name]) == 403  # the backstop: the entry expired
        assert _denials(world.srv, unhooked.name)[-1].action == "iot:DownloadOtaFile"
    finally:
        for sd in devices:
            sd.device.close()
