"""The fleet download policy end to end (issue 18, part 3): the real server, its
Mosquitto, real agents, FreeRTOS-shaped devices and boto3.

- A rollout's limits set through boto3 unmodified (CreateOTAUpdate's
  additionalParameters) are enforced on the HTTPS endpoint: a device past the
  concurrency cap gets 503, one past its rate 429, each with Retry-After and a stable
  error code; over MQTT the same refusal is AWS's rejected response.
- Unmodified FreeRTOS devices (which read neither) are slowed, never failed.
- An artifact deleted mid-rollout: the agents' requests, counted at the server, stay
  within their retry budgets, and every device ends FAILED with the reason.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from overair.core.streamcodec import GetStreamRequest, decode_rejection, encode_get_stream
from overair.core.versions import Version
from overair.server.bootstrap import DEV_CERT_PATH_ON_DEVICE, DEV_PROFILE
from overair.server.delivery.budgets import Kind
from overair.server.delivery.policy import DEVICE_RATE, SLOTS_FULL
from overair.server.jobs.deliveries import HTTP_FILES
from overair.sim.firmware import make_firmware
from overair.sim.fleet import Fleet
from tests.e2e.ota_helpers import create_ota, wait_for
from tests.e2e.test_server_security import Device
from tests.freertos_device import DeviceSettings, FreeRtosDevice, provision
from tests.server_harness import RunningServer, running_server

BUCKET = "firmware"
V1, V2 = Version(1, 0, 0), Version(2, 0, 0)
SERVER_TOML = """[download_policy]
max_concurrent_downloads = 8
lease_seconds = 1
serve_after_refusals = 4
serve_after_seconds = 1
"""
SERVER_CAP = 8


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("server"), settings_toml=SERVER_TOML) as running:
        s3 = running.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        yield running


@dataclass
class Thing:
    name: str
    bundle: Path
    device: Device


def _things(srv: RunningServer, tmp: Path, prefix: str, count: int) -> list[Thing]:
    things = []
    for i in range(count):
        name = f"{prefix}-{i}"
        bundle = srv.provision(name, tmp / name)
        device = Device(srv, bundle, name)
        assert device.connect()
        device.subscribe(f"$aws/things/{name}/jobs/#")
        device.subscribe(f"$aws/things/{name}/streams/#")
        things.append(Thing(name, bundle, device))
    time.sleep(0.2)  # the subscriptions are in place
    return things


def _arns(srv: RunningServer, things: list[Thing]) -> list[str]:
    iot = srv.client("iot")
    return [iot.describe_thing(thingName=t.name)["thingArn"] for t in things]


def _document(thing: Thing) -> dict[str, Any]:
    """Ask `$next/get` as a device does; the job document it receives."""
    thing.device.messages.clear()
    thing.device.client.publish(f"$aws/things/{thing.name}/jobs/$next/get",
                                json.dumps({"clientToken": "t"}), qos=1)
    (_, payload), *_ = thing.device.wait_for("/jobs/$next/get/accepted")
    document: dict[str, Any] = json.loads(payload)["execution"]["jobDocument"]
    return document


def _get(srv: RunningServer, thing: Thing, url: str, first: int, last: int) -> http.client.HTTPResponse:
    """One Range request to the download endpoint (the URL's host is the public one)."""
    context = ssl.create_default_context(cafile=str(thing.bundle / "root-ca.pem"))
    context.check_hostname = False
    parts = urlsplit(url)
    connection = http.client.HTTPSConnection("127.0.0.1", srv.settings.download_port, context=context,
                                             timeout=10)
    connection.request("GET", f"{parts.path}?{parts.query}", headers={"Range": f"bytes={first}-{last}"})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def _url(document: dict[str, Any]) -> str:
    return str(document["afr_ota"]["files"][0]["update_data_url"])


def test_https_rollout_concurrency_cap_answers_503_with_retry_after_and_a_code(
        srv: RunningServer, tmp_path: Path) -> None:
    things = _things(srv, tmp_path, "cap", 3)
    info = create_ota(srv, "cap", _arns(srv, things), make_firmware(V2, 40_000, seed="cap"),
                      protocols=("HTTP",),
                      additionalParameters={"overair:maxConcurrentDownloads": "2"})
    assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info
    urls = [_url(_document(t)) for t in things]
    policy = srv.server.downloads.policy
    assert _get(srv, things[0], urls[0], 0, 4095).status == 206
    assert _get(srv, things[1], urls[1], 0, 4095).status == 206
    refused = _get(srv, things[2], urls[2], 0, 4095)
    assert refused.status == 503
    assert refused.getheader("x-amzn-ErrorType") == SLOTS_FULL
    assert 1 <= int(refused.getheader("Retry-After") or "0") <= 1  # the oldest lease (1 s) ends
    assert 0 < int(refused.getheader("x-overair-retry-after-ms") or "0") <= 1000  # the same, to the ms
    assert policy.downloading("AFR_OTA-cap") == 2
    assert _get(srv, things[0], urls[0], 4096, 8191).status == 206  # a slot holder goes on
    # The slots free up once their holders stop asking (lease_seconds = 1).
    wait_for(lambda: _get(srv, things[2], urls[2], 0, 4095).status == 206, what="a free slot")


def test_https_device_rate_answers_429_and_mqtt_refusal_is_the_aws_rejected_response(
        srv: RunningServer, tmp_path: Path) -> None:
    (thing,) = _things(srv, tmp_path, "rate", 1)
    info = create_ota(srv, "rate", _arns(srv, [thing]), make_firmware(V2, 40_000, seed="rate"),
                      protocols=("HTTP", "MQTT"),
                      additionalParameters={"overair:maxDeviceBytesPerSecond": "4096"})
    assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info
    document = _document(thing)
    url = _url(document)
    assert _get(srv, thing, url, 0, 32767).status == 206  # 8 s of its rate, served into debt
    refused = _get(srv, thing, url, 32768, 36863)
    assert refused.status == 429
    assert refused.getheader("x-amzn-ErrorType") == DEVICE_RATE
    assert int(refused.getheader("Retry-After") or "0") >= 6
    assert int(refused.getheader("x-overair-retry-after-ms") or "0") > 5000
    # The same device, the same file over MQTT: the policy is one for both ways.
    stream = document["afr_ota"]["streamname"]
    thing.device.messages.clear()
    request = GetStreamRequest("rdy", 0, 4096, 0, b"\xff", 8, None)
    thing.device.client.publish(f"$aws/things/{thing.name}/streams/{stream}/get/cbor",
                                encode_get_stream(request))
    ((topic, payload),) = thing.device.wait_for("/rejected/cbor")
    assert topic == f"$aws/things/{thing.name}/streams/{stream}/rejected/cbor"
    code, message = decode_rejection(payload, "cbor")
    assert code == "RequestThrottled"
    assert message.startswith(f"{DEVICE_RATE}: ")
    assert re.search(r"; retry after [0-9]+\.[0-9]{3} s\Z", message), message
    assert not [m for m in thing.device.messages if "/data/cbor" in m[0]]


def test_additional_parameters_that_are_not_counts_are_refused(srv: RunningServer) -> None:
    iot = srv.client("iot")
    with pytest.raises(iot.exceptions.InvalidRequestException, match="overair:maxBytesPerSecond"):
        create_ota(srv, "bad-limits", [f"arn:aws:iot:us-east-1:{srv.settings.account_id}:thing/x"], b"x",
                   additionalParameters={"overair:maxBytesPerSecond": "fast"})


@pytest.fixture(scope="module")
def srv443(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server whose URLs name port 443, as FreeRTOS HTTP devices need (README)."""
    toml = 'download_public_url = "https://localhost:443"\n' + SERVER_TOML
    with running_server(tmp_path_factory.mktemp("server443"), settings_toml=toml) as running:
        s3 = running.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        yield running


@pytest.mark.parametrize("protocol", ["MQTT", "HTTP"])
def test_unmodified_freertos_devices_are_slowed_by_the_cap_never_failed(
        request: pytest.FixtureRequest, tmp_path: Path, protocol: str) -> None:
    """FreeRTOS reads no rejection (MQTT) and takes a 503 as a failed request (HTTP): it
    asks again after its request wait and aborts after 32 requests without a block. Under
    a rollout cap of one download at a time, the policy's starvation guard serves it
    before that: every device updates."""
    srv: RunningServer = request.getfixturevalue("srv" if protocol == "MQTT" else "srv443")
    signer = srv.client("signer").get_signing_profile(profileName=DEV_PROFILE)
    signer_pem = srv.client("acm").get_certificate(
        CertificateArn=signer["signingMaterial"]["certificateArn"])["Certificate"].encode()
    fleet_ca = srv.settings.paths.fleet_ca_cert.read_bytes()
    # The library's default of one block per request, a short request wait (32 of them:
    # under 10 s); the rollout lets one device download at a time, at 4 KiB/s: the first
    # holds the slot for 12 s, past the others' 32 requests without a block.
    quick = DeviceSettings(request_wait=0.3, blocks_per_request=1, data_protocols=(protocol,))
    nat = {("127.0.0.1", 443): ("127.0.0.1", srv.settings.download_port)}  # the device's network
    names = [f"fr-cap-{protocol}-{i}" for i in range(3)]
    devices = [FreeRtosDevice(name, provision(srv.client("iot"), name, tmp_path / name, fleet_ca),
                              srv.settings.mqtt_port, V1, certfiles={DEV_CERT_PATH_ON_DEVICE: signer_pem},
                              settings=quick, network=nat) for name in names]
    refused_before = srv.server.downloads.policy.counters.refused.get(SLOTS_FULL, 0)
    for device in devices:
        device.start()
    try:
        iot = srv.client("iot")
        arns = [iot.describe_thing(thingName=name)["thingArn"] for name in names]
        image = make_firmware(Version(1, 1, 0), 48 * 1024, seed="fr-cap")
        info = create_ota(srv, f"fr-cap-{protocol}", arns, image, protocols=(protocol,),
                          additionalParameters={"overair:maxConcurrentDownloads": "1",
                                                "overair:maxDeviceBytesPerSecond": "4096"})
        assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info
        for device in devices:
            final = device.terminal(info["awsIotJobId"], timeout=120)
            assert final.status == "SUCCEEDED", device.log
            assert device.log.violations == []
            assert device.log.dropped == []
        # They were slowed: requests were refused, and devices were served by the guard.
        assert srv.server.downloads.policy.counters.refused.get(SLOTS_FULL, 0) > refused_before
        assert srv.server.downloads.policy.counters.forced > 0
    finally:
        for device in devices:
            device.stop()


# --- an artifact deleted mid-rollout ---------------------------------------------------------

RETRY_TOML = "retry_base_seconds = 0.2\nretry_cap_seconds = 1.0\njob_retry_budget = {budget}\n"


@dataclass(frozen=True)
class StormResult:
    devices: int
    budget: int
    not_found_after: int  # HTTPS requests answered 404 after the deletion
    other_after: int  # and answered otherwise (the requests in flight at the deletion)
    reads_after: int  # $next/get and other job reads after the deletion
    details: dict[str, dict[str, str]]  # thing -> statusDetails of its execution
    peak_downloading: int


def run_deleted_artifact(srv: RunningServer, tmp: Path, prefix: str, devices: int, *, budget: int = 3,
                         size: int = 256 * 1024) -> StormResult:
    """`devices` agents download over HTTPS under the rollout's per-device cap; once
    some have blocks, the artifact's object version is deleted through S3."""
    iot = srv.client("iot")
    group = iot.create_thing_group(thingGroupName=prefix)
    factory = tmp / "factory.bin"
    factory.write_bytes(make_firmware(V1, 64 * 1024, seed="factory"))
    bundles = [srv.provision(f"{prefix}-{i}", tmp / f"{prefix}-{i}", group=prefix, factory_image=factory)
               for i in range(devices)]
    for bundle in bundles:
        with (bundle / "agent.toml").open("a") as config:
            config.write(RETRY_TOML.format(budget=budget))
    delivery, gate = srv.server.delivery, srv.server.downloads
    with Fleet(bundles) as fleet:
        assert fleet.wait(lambda snaps: all(s.connected for s in snaps.values()), timeout=60)
        info = create_ota(srv, prefix, [group["thingGroupArn"]], make_firmware(V2, size, seed=prefix),
                          protocols=("HTTP",),
                          additionalParameters={"overair:maxDeviceBytesPerSecond": "65536"})
        assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info
        job_id = info["awsIotJobId"]
        peak = 0

        def some_have_blocks(snaps: dict[str, Any]) -> bool:
            nonlocal peak
            peak = max(peak, gate.policy.downloading())
            return sum(1 for s in snaps.values() if s.blocks_received > 0) >= max(1, devices // 4)

        assert fleet.wait(some_have_blocks, timeout=120)
        (file,) = srv.server.jobs.describe_job(job_id)[0].config[HTTP_FILES]
        srv.client("s3").delete_object(Bucket=file["bucket"], Key=file["key"], VersionId=file["version"])
        # Counted from the moment the object is gone (the delivery caches dropped it).
        answered_before = Counter(delivery.answered)
        reads_before = srv.server.devices.requests[Kind.JOB_READ]

        def finished() -> dict[str, dict[str, str]] | None:
            nonlocal peak
            peak = max(peak, gate.policy.downloading())
            summaries = iot.list_job_executions_for_job(jobId=job_id)["executionSummaries"]
            statuses = [s["jobExecutionSummary"]["status"] for s in summaries]
            if len(summaries) < devices or any(status not in ("FAILED", "SUCCEEDED") for status in statuses):
                return None
            things = [s["thingArn"].rpartition("/")[2] for s in summaries]
            return {thing: iot.describe_job_execution(jobId=job_id, thingName=thing)["execution"]
                    .get("statusDetails", {}).get("detailsMap", {}) for thing in things}

        details = wait_for(finished, timeout=300, what="every execution to end")
        after = Counter(delivery.answered)
        after.subtract(answered_before)
        return StormResult(devices, budget, after[404], sum(after.values()) - after[404],
                           srv.server.devices.requests[Kind.JOB_READ] - reads_before, details, peak)


def _check_storm(result: StormResult) -> None:
    devices, budget = result.devices, result.budget
    failed = {t: d for t, d in result.details.items() if d.get("check") == "RetryBudgetExhausted"}
    # A device that had every block before the deletion may finish; every other one
    # fails with the reason, after its budget.
    succeeded = [d for d in result.details.values() if "accepted" in d.get("reason", "")]
    assert len(failed) + len(succeeded) == devices, result.details
    assert len(failed) >= devices // 2
    for details in failed.values():
        assert details["reason"] == "aborted: 0x0000000e"
        assert details["detail"].startswith(f"{budget + 1} requests failed (budget {budget}); last: HTTP 404")
    # Bounded at the server: each failing device sent exactly its first request and its
    # budget of retries after the deletion, besides the one request it had in flight; each
    # 404 also asks the job again, for a fresh URL.
    assert result.not_found_after <= len(failed) * (budget + 1), result
    assert result.not_found_after >= len(failed) * budget, result
    assert result.other_after <= devices, result
    assert result.reads_after <= devices * (budget + 3), result
    assert result.peak_downloading <= SERVER_CAP


def _report(what: str, result: StormResult) -> None:
    print(f"\n{what}: after the deletion {result.not_found_after} HTTPS requests answered 404, "
          f"{result.other_after} otherwise, {result.reads_after} job reads (budget {result.budget}); "
          f"peak {result.peak_downloading} downloading (cap {SERVER_CAP})")


def test_artifact_deleted_mid_rollout_devices_fail_within_their_budget(srv: RunningServer,
                                                                       tmp_path: Path) -> None:
    result = run_deleted_artifact(srv, tmp_path, "storm", 12)
    _report("12 agents", result)
    _check_storm(result)


@pytest.mark.slow
def test_artifact_deleted_mid_rollout_with_100_agents(srv: RunningServer, tmp_path: Path) -> None:
    result = run_deleted_artifact(srv, tmp_path, "storm100", 100)
    _report("100 agents", result)
    _check_storm(result)
