"""OTA file delivery over HTTPS with pre-signed URLs, against the real server: the URL
comes fresh in each job-document delivery, is bound to the thing and the object
version, expires, and is honoured only while the thing's execution is live. Range
requests are answered 206. Threat ids: N4 unauthorized device.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

from overair.core.versions import Version
from overair.server.bootstrap import DEV_PROFILE
from overair.sim.firmware import make_firmware
from overair.sim.fleet import Fleet
from tests.e2e.conftest import ShiftableClock
from tests.e2e.ota_helpers import create_ota, wait_for
from tests.e2e.test_server_security import Device
from tests.server_harness import RunningServer

BUCKET = "firmware"
IMAGE = make_firmware(Version(2, 0, 0), 50_000, seed="http")


@dataclass
class HttpJob:
    thing: str
    job_id: str
    device: Device


@pytest.fixture
def http_job(clocked_srv: RunningServer, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[HttpJob]:
    name = "h-" + "".join(c if c.isalnum() else "-" for c in request.node.name)[-40:].strip("-")
    bundle = clocked_srv.provision(name, tmp_path / name)
    iot, s3 = clocked_srv.client("iot"), clocked_srv.client("s3")
    version = s3.put_object(Bucket=BUCKET, Key=f"{name}.bin", Body=IMAGE)["VersionId"]
    iot.create_ota_update(
        otaUpdateId=name,
        targets=[iot.describe_thing(thingName=name)["thingArn"]],
        protocols=["HTTP"],
        roleArn=f"arn:aws:iam::{clocked_srv.settings.account_id}:role/overair-ota",
        awsJobPresignedUrlConfig={"expiresInSec": 300},
        files=[
            {
                "fileName": "/fw.bin",
                "fileLocation": {"s3Location": {"bucket": BUCKET, "key": f"{name}.bin", "version": version}},
                "codeSigning": {"startSigningJobParameter": {"signingProfileName": DEV_PROFILE}},
            }
        ],
    )
    deadline = time.monotonic() + 30
    while iot.get_ota_update(otaUpdateId=name)["otaUpdateInfo"]["otaUpdateStatus"] != "CREATE_COMPLETE":
        assert time.monotonic() < deadline, iot.get_ota_update(otaUpdateId=name)["otaUpdateInfo"]
        time.sleep(0.05)
    device = Device(clocked_srv, bundle, name)
    assert device.connect()
    device.subscribe(f"$aws/things/{name}/jobs/#")
    time.sleep(0.2)
    yield HttpJob(name, f"AFR_OTA-{name}", device)
    device.close()


def _document(job: HttpJob) -> dict[str, Any]:
    """Ask `$next/get` as a device does and return the job document it receives."""
    job.device.messages.clear()
    job.device.client.publish(
        f"$aws/things/{job.thing}/jobs/$next/get", json.dumps({"clientToken": "t"}), qos=1
    )
    replies = job.device.wait_for("/jobs/$next/get/accepted")
    assert replies
    document: dict[str, Any] = json.loads(replies[-1][1])["execution"]["jobDocument"]
    return document


def _url(job: HttpJob) -> str:
    file = _document(job)["afr_ota"]["files"][0]
    assert file["auth_scheme"] == "aws.s3.presigned"
    return str(file["update_data_url"])


def _get(
    clocked_srv: RunningServer, url: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    context = ssl.create_default_context(cafile=str(clocked_srv.settings.paths.fleet_ca_cert))
    connection = http.client.HTTPSConnection("127.0.0.1", parts.port, context=context, timeout=10)
    try:
        # Connect by address but check the certificate for the URL's host name.
        connection.sock = context.wrap_socket(
            socket.create_connection(("127.0.0.1", parts.port), timeout=10), server_hostname=parts.hostname
        )
        connection.request(method, f"{parts.path}?{parts.query}", headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query)) | changes
    return parts._replace(query=urlencode(query)).geturl()


def test_http_job_document_carries_a_presigned_url_and_range_requests_get_206(
    clocked_srv: RunningServer, http_job: HttpJob
) -> None:
    document = _document(http_job)
    assert document["afr_ota"]["protocols"] == ["HTTP"]
    assert "streamname" not in document["afr_ota"]
    url = document["afr_ota"]["files"][0]["update_data_url"]
    assert url.startswith(f"https://localhost:{clocked_srv.settings.download_port}/ota/{BUCKET}/")
    status, headers, body = _get(clocked_srv, url, {"Range": "bytes=4096-8191"})
    assert status == 206
    assert body == IMAGE[4096:8192]
    assert headers["content-range"] == f"bytes 4096-8191/{len(IMAGE)}"
    status, _, body = _get(clocked_srv, url, {"Range": f"bytes={len(IMAGE) - 100}-"})
    assert (status, body) == (206, IMAGE[-100:])
    status, headers, body = _get(clocked_srv, url)
    assert (status, body) == (200, IMAGE)
    status, headers, body = _get(clocked_srv, url, method="HEAD")
    assert (status, body, headers["content-length"]) == (200, b"", str(len(IMAGE)))
    status, _, _ = _get(clocked_srv, url, {"Range": f"bytes={len(IMAGE)}-{len(IMAGE) + 10}"})
    assert status == 416


def test_n4_presigned_url_cannot_be_altered(clocked_srv: RunningServer, http_job: HttpJob) -> None:
    url = _url(http_job)
    for altered in (
        _with_query(url, thing="someone-else"),
        _with_query(url, expires=str(int(time.time()) + 86_400)),
        _with_query(url, version="another-version"),
        url.replace(f"/{http_job.thing}.bin", "/other.bin"),
    ):
        status, _, body = _get(clocked_srv, altered, {"Range": "bytes=0-99"})
        assert status == 403, altered
        assert b"SignatureDoesNotMatch" in body


def test_expired_url_is_refused_and_a_new_delivery_brings_a_fresh_one(
    clocked_srv: RunningServer, http_job: HttpJob, clock: ShiftableClock
) -> None:
    first = _url(http_job)
    try:
        clock.offset += 301
        status, _, body = _get(clocked_srv, first, {"Range": "bytes=0-99"})
        assert status == 403
        assert b"ExpiredUrl" in body
        fresh = _url(http_job)  # the device asks for the job again, as FreeRTOS does on 403
        assert fresh != first
        status, _, body = _get(clocked_srv, fresh, {"Range": "bytes=0-99"})
        assert (status, body) == (206, IMAGE[:100])
    finally:
        clock.offset = 0.0


def test_n4_url_stops_working_when_the_execution_is_no_longer_live(
    clocked_srv: RunningServer, http_job: HttpJob
) -> None:
    url = _url(http_job)
    assert _get(clocked_srv, url, {"Range": "bytes=0-9"})[0] == 206
    clocked_srv.client("iot").cancel_job(jobId=http_job.job_id, force=True)
    # At once: canceling the job drops the cached access (tests/e2e/test_n4_stream_access.py).
    status, _, body = _get(clocked_srv, url, {"Range": "bytes=0-9"})
    assert status == 403
    assert b"AccessDenied" in body


def test_download_endpoint_speaks_only_tls(clocked_srv: RunningServer, http_job: HttpJob) -> None:
    parts = urlsplit(_url(http_job))
    connection = http.client.HTTPConnection("127.0.0.1", parts.port, timeout=5)
    try:
        connection.request("GET", f"{parts.path}?{parts.query}")
        response = connection.getresponse()
        status, body = response.status, response.read()
    except (ConnectionError, http.client.HTTPException, OSError):
        status, body = None, b""
    finally:
        connection.close()
    assert status is None or status >= 400  # no plaintext service
    assert IMAGE[:64] not in body


@pytest.mark.parametrize("protocols", [["HTTP"], ["MQTT", "HTTP"]])
def test_agents_update_over_https_through_the_real_server(
    clocked_srv: RunningServer, tmp_path: Path, protocols: list[str]
) -> None:
    iot = clocked_srv.client("iot")
    tag = "-".join(p.lower() for p in protocols)
    factory = tmp_path / "factory.bin"
    factory.write_bytes(make_firmware(Version(1, 0, 0), 4096, seed="factory"))
    names = [f"https-{tag}-{i}" for i in range(2)]
    bundles = []
    for name in names:
        bundle = clocked_srv.provision(name, tmp_path / name, factory_image=factory)
        config = bundle / "agent.toml"
        config.write_text(config.read_text().replace("[ota]\n", "[ota]\nprefer_http = true\n"))
        bundles.append(bundle)
    with Fleet(bundles) as fleet:
        assert fleet.wait(lambda s: all(x.connected for x in s.values()), 30)
        targets = [iot.describe_thing(thingName=n)["thingArn"] for n in names]
        info = create_ota(clocked_srv, f"https-{tag}", targets, IMAGE, protocols=tuple(protocols))
        assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info.get("errorInfo")
        assert fleet.wait(lambda s: all(x.version == "2.0.0" and not x.trial for x in s.values()), 60), (
            fleet.snapshots()
        )

        def statuses() -> set[str]:
            return {
                iot.describe_job_execution(jobId=f"AFR_OTA-https-{tag}", thingName=name)["execution"][
                    "status"
                ]
                for name in names
            }

        # The agents' last report is on its way while they already run the new image.
        assert wait_for(lambda: statuses() == {"SUCCEEDED"}, 30, "SUCCEEDED reports")


def test_no_500_hostile_urls_and_ranges_get_client_errors(clocked_srv: RunningServer,
                                                          http_job: HttpJob) -> None:
    """Issue 12, finding 10: the download port answers anyone who can open TLS; what
    answered 500 (a non-ASCII signature, Unicode digits, a 5,000-digit Range) is a 4xx."""
    url = _url(http_job)
    cases = [
        (_with_query(url, signature="\u00e9" * 64), {}, 403, b"SignatureDoesNotMatch"),
        (_with_query(url, signature="\u0661" * 64), {}, 403, b"SignatureDoesNotMatch"),
        (_with_query(url, expires="\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669\u0660"), {}, 400,
         b"MalformedUrl"),
        (_with_query(url, expires="\u00b2"), {}, 400, b"MalformedUrl"),
        (_with_query(url, expires="9" * 5000), {}, 400, b"MalformedUrl"),
        (_with_query(url, thing=http_job.thing + "\n"), {}, 400, b"MalformedUrl"),
        (url, {"Range": "bytes=" + "9" * 5000 + "-"}, 416, b"InvalidRange"),
        (url, {"Range": "bytes=0-" + "9" * 5000}, 416, b"InvalidRange"),
        (url, {"Range": "bytes=\u0661-\u0662".encode().decode("latin-1")}, 416, b"InvalidRange"),
        (url, {"Range": "bytes=+1-2"}, 416, b"InvalidRange"),
    ]
    for target, headers, status, code in cases:
        answered, _, body = _get(clocked_srv, target, headers)
        assert (answered, code in body) == (status, True), (target[-80:], headers, answered, body[:200])
    assert _get(clocked_srv, url, {"Range": "bytes=0-9"})[0] == 206  # still serving


def test_a_flood_of_forged_urls_is_refused_and_logged_within_a_bound(
        clocked_srv: RunningServer, http_job: HttpJob, caplog: pytest.LogCaptureFixture) -> None:
    # Anyone who can open TLS may send a forged URL as often as they like: every refusal
    # is answered, but the log takes at most Limits.device_log_lines of them per interval.
    url = _url(http_job)
    bound = clocked_srv.settings.limits.device_log_lines
    sent = bound + 50
    parts = urlsplit(url)
    context = ssl.create_default_context(cafile=str(clocked_srv.settings.paths.fleet_ca_cert))
    connection = http.client.HTTPSConnection("127.0.0.1", parts.port, context=context, timeout=10)
    connection.sock = context.wrap_socket(socket.create_connection(("127.0.0.1", parts.port), timeout=10),
                                          server_hostname=parts.hostname)
    statuses = []
    with caplog.at_level(logging.INFO, logger="overair.delivery"):
        try:
            for i in range(sent):
                forged = urlsplit(_with_query(url, signature=f"{i:064x}"))
                connection.request("GET", f"{forged.path}?{forged.query}", headers={"Range": "bytes=0-9"})
                response = connection.getresponse()
                response.read()
                statuses.append(response.status)
        finally:
            connection.close()
    assert set(statuses) == {403}
    logged = [r for r in caplog.records if r.getMessage().startswith("download refused: SignatureDoes")]
    assert 0 < len(logged) <= bound
    assert _get(clocked_srv, url, {"Range": "bytes=0-9"})[0] == 206  # the device's own URL still works
