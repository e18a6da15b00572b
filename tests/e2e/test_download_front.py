"""Downloads through the nginx download front (`download_front = "nginx"`,
server/delivery/nginx_front.py): real Debian nginx, real server, a device's job document
and its pre-signed URL. nginx serves the bytes; overair decides every access (N4: another
thing's, a forged or an expired URL; an ended execution stops downloads within 2 s), the
device's budget holds (429 with Retry-After), and hostile requests get clear 4xx answers.
The Python endpoint without the front is tests/e2e/test_http_delivery.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import signal
import socket
import ssl
import stat
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest

from overair.core.versions import Version
from overair.server.bootstrap import DEV_PROFILE
from overair.server.delivery import nginx_front
from overair.sim.firmware import make_firmware
from tests.e2e.conftest import ShiftableClock, _with_bucket
from tests.e2e.test_http_delivery import IMAGE, HttpJob, _get, _url, _with_query, http_job
from tests.e2e.test_server_security import Device
from tests.processes import alive
from tests.server_harness import RunningServer, free_port, running_server

pytestmark = pytest.mark.skipif(not Path("/usr/sbin/nginx").exists(),
                                reason="scripts/dev test installs nginx")
__all__ = ["http_job"]  # the fixture, shared with the Python endpoint's tests
BURST = 40  # the device download budget here: enough for IMAGE's 13 blocks, little enough to exceed


@pytest.fixture(scope="module")
def clocked_srv(tmp_path_factory: pytest.TempPathFactory, clock: ShiftableClock) -> Iterator[RunningServer]:
    """The server of tests/e2e/test_http_delivery.py's fixtures, with the front on."""
    toml = f'download_front = "nginx"\ndownload_front_port = {free_port()}'
    with running_server(tmp_path_factory.mktemp("front"), clock=clock, settings_toml=toml,
                        limits={"device_downloads_burst": BURST,
                                "device_downloads_per_second": 20.0}) as running:
        yield _with_bucket(running)


def _blocks(srv: RunningServer, url: str, size: int, block: int = 4096) -> tuple[bytes, list[int]]:
    """Fetch the first `size` bytes of `url` (IMAGE's) as a FreeRTOS device does: one
    Range GET per block on one keep-alive TLS connection. Returns the bytes and statuses."""
    parts = urlsplit(url)
    context = ssl.create_default_context(cafile=str(srv.settings.paths.fleet_ca_cert))
    connection = http.client.HTTPSConnection("127.0.0.1", parts.port, context=context, timeout=10)
    connection.sock = context.wrap_socket(socket.create_connection(("127.0.0.1", parts.port), timeout=10),
                                          server_hostname=parts.hostname)
    data, statuses = bytearray(), []
    try:
        for first in range(0, size, block):
            connection.request("GET", f"{parts.path}?{parts.query}",
                               headers={"Range": f"bytes={first}-{min(size, first + block) - 1}"})
            response = connection.getresponse()
            body = response.read()
            statuses.append(response.status)
            if response.status == 206:
                last = first + len(body) - 1
                assert response.getheader("content-range") == f"bytes {first}-{last}/{len(IMAGE)}"
                data += body
    finally:
        connection.close()
    return bytes(data), statuses


def test_device_downloads_the_whole_image_through_the_front(clocked_srv: RunningServer,
                                                            http_job: HttpJob) -> None:
    url = _url(http_job)
    settings = clocked_srv.settings
    # The job document names the front, not the Python endpoint.
    assert url.startswith(f"https://localhost:{settings.download_front_port}/ota/")
    data, statuses = _blocks(clocked_srv, url, len(IMAGE))
    assert set(statuses) == {206}
    assert hashlib.sha256(data).hexdigest() == hashlib.sha256(IMAGE).hexdigest()
    status, _, body = _get(clocked_srv, url)
    assert (status, body) == (200, IMAGE)
    assert (settings.paths.download_front / "nginx.conf").exists()  # generated in the data directory


def test_the_front_reuses_a_granted_decision_instead_of_asking_for_every_block(
        clocked_srv: RunningServer, http_job: HttpJob) -> None:
    # A device waiting for a fresh decision at every block (or every second) was what set
    # the front's pace at 1,000 devices (bench/fleet.py --front nginx): a grant is reused
    # while fresh, then refreshed in the background while the device goes on.
    url = _url(http_job)
    answered = clocked_srv.server.delivery.answered
    asked_before = answered[204]
    started = time.monotonic()
    statuses: list[int] = []
    for _ in range(3):
        statuses += _blocks(clocked_srv, url, len(IMAGE))[1]
    elapsed = time.monotonic() - started
    assert set(statuses) == {206}
    # At most one decision per fresh period plus the first (and one refresh under way).
    assert answered[204] - asked_before <= elapsed / nginx_front.DECISION_FRESH_SECONDS + 2, \
        (answered[204] - asked_before, len(statuses), elapsed)


def test_the_front_keeps_its_connections_to_overair_open_between_decisions(
        clocked_srv: RunningServer, http_job: HttpJob, clock: ShiftableClock) -> None:
    # nginx sends `Connection: close` upstream from a location that sets request headers
    # of its own unless that location clears it too: each decision then opened a new
    # connection to overair (4,631 for 3,623 decisions at 1,000 devices, bench.fleet).
    asks = (os.cpu_count() or 1) + 4  # more than nginx's workers (each keeps its own)
    observed: list[set[int]] = []
    try:
        for _ in range(asks):
            clock.offset += 1  # a new expiry: a URL nginx holds no decision for
            assert _get(clocked_srv, _url(http_job), {"Range": "bytes=0-9"})[0] == 206
            observed.append(_connections_to_overair(clocked_srv))
    finally:
        clock.offset = 0.0
    # The connection of the first decision is still open at the later ones (a closed
    # one is seen once at most, if it lingers a moment).
    open_at = Counter(connection for connections in observed for connection in connections)
    assert max(open_at.values(), default=0) >= asks // 2, observed


def test_the_front_keeps_decisions_it_reuses_open_instead_of_opening_them_per_request(
        clocked_srv: RunningServer, http_job: HttpJob) -> None:
    # nginx reads a cached decision from a file at every request it answers; opening and
    # closing that file was a sixth of the front's CPU at 1,000 devices (open_file_cache).
    url = _url(http_job)
    assert set(_blocks(clocked_srv, url, len(IMAGE))[1]) == {206}
    front = clocked_srv.server.download_front
    decisions = front.decisions if front is not None else None
    assert decisions is not None
    assert any(Path(target).is_relative_to(decisions) for target in _files_open_in_front(clocked_srv))


def test_the_front_caches_decisions_in_a_private_directory_in_memory_removed_at_stop(
        tmp_path: Path) -> None:
    # Written to the data directory's disk, each refreshed decision (one per device per
    # 2 s) cost nginx more than serving the bytes as the fleet grew (docs/scaling.md).
    toml = f'download_front = "nginx"\ndownload_front_port = {free_port()}'
    with running_server(tmp_path / "server", settings_toml=toml) as srv:
        front = srv.server.download_front
        decisions = front.decisions if front is not None else None
        assert decisions is not None
        assert decisions.parent == nginx_front.SHARED_MEMORY
        info = decisions.lstat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o700, os.geteuid())
        conf = (srv.settings.paths.download_front / "nginx.conf").read_text()
        assert f"proxy_cache_path {decisions} " in conf
    assert not decisions.exists()




def test_a_front_that_dies_is_started_again_with_its_decisions_directory(clocked_srv: RunningServer,
                                                                         http_job: HttpJob) -> None:
    # nginx killed whole (master and workers, as by the OOM killer): overair's supervisor
    # starts it again on the same port and the same private decisions directory.
    front = clocked_srv.server.download_front
    assert front is not None
    master, restarts, decisions = front.pid, front.restarts, front.decisions
    assert master is not None
    url = _url(http_job)
    assert _get(clocked_srv, url, {"Range": "bytes=0-9"})[0] == 206
    workers = [int(pid) for pid in Path(f"/proc/{master}/task/{master}/children").read_text().split()]
    for pid in (master, *workers):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while front.restarts == restarts or not front.up:
        assert time.monotonic() < deadline, "the front was not started again"
        time.sleep(0.05)
    assert front.pid != master
    assert front.decisions == decisions
    assert decisions is not None
    assert decisions.is_dir()
    assert _get(clocked_srv, url, {"Range": "bytes=0-9"})[:3:2] == (206, IMAGE[:10])


def test_the_workers_of_a_front_master_that_died_go_with_it(clocked_srv: RunningServer,
                                                            http_job: HttpJob) -> None:
    # Its workers outlive a killed master and keep its port: the master started again
    # could not bind it (and the old workers served on with the old configuration).
    front = clocked_srv.server.download_front
    assert front is not None
    master, restarts = front.pid, front.restarts
    assert master is not None
    workers = [int(pid) for pid in Path(f"/proc/{master}/task/{master}/children").read_text().split()]
    os.kill(master, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while front.restarts == restarts or not front.up:
        assert time.monotonic() < deadline, "the front was not started again"
        time.sleep(0.05)
    assert not [pid for pid in workers if alive(pid)]
    new_master = front.pid
    assert new_master is not None
    assert Path(f"/proc/{new_master}/task/{new_master}/children").read_text().split()
    assert _get(clocked_srv, _url(http_job), {"Range": "bytes=0-9"})[:3:2] == (206, IMAGE[:10])
    time.sleep(1)
    assert front.restarts == restarts + 1  # started once and stays up


def _connections_to_overair(srv: RunningServer) -> set[int]:
    """The open connections accepted on overair's socket for the front (/proc/net/unix:
    an accepted socket carries its listener's path; St 03 is connected)."""
    path = str(srv.settings.paths.download_front / nginx_front.SOCKET_NAME)
    rows = (line.split() for line in Path("/proc/net/unix").read_text().splitlines()[1:])
    return {int(row[6]) for row in rows if len(row) == 8 and row[7] == path and row[5] == "03"}


def _files_open_in_front(srv: RunningServer) -> list[str]:
    """What nginx's worker processes hold open (/proc/<pid>/fd)."""
    front = srv.server.download_front
    master = front.pid if front is not None else None
    assert master is not None
    workers = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    targets = []
    for worker in workers:
        for fd in Path(f"/proc/{worker}/fd").iterdir():
            with contextlib.suppress(OSError):
                targets.append(os.readlink(fd))
    return targets


def test_n4_front_refuses_another_things_forged_and_altered_urls(clocked_srv: RunningServer,
                                                                 http_job: HttpJob) -> None:
    url = _url(http_job)
    assert _get(clocked_srv, url, {"Range": "bytes=0-9"})[0] == 206
    for altered in (
        _with_query(url, thing="someone-else"),  # another thing's name on this URL
        _with_query(url, expires=str(int(time.time()) + 86_400)),
        _with_query(url, version="another-version"),
        _with_query(url, signature="0" * 64),  # forged
        url.replace(f"/{http_job.thing}.bin", "/other.bin"),
    ):
        status, headers, body = _get(clocked_srv, altered, {"Range": "bytes=0-99"})
        assert (status, headers.get("x-amzn-errortype")) == (403, "SignatureDoesNotMatch"), (altered, body)
        assert body.startswith(b"SignatureDoesNotMatch: ")


def test_n4_front_refuses_an_expired_url(clocked_srv: RunningServer, http_job: HttpJob,
                                         clock: ShiftableClock) -> None:
    url = _url(http_job)  # never asked for before it expires: no decision to reuse
    try:
        clock.offset += 301
        status, headers, body = _get(clocked_srv, url, {"Range": "bytes=0-99"})
        assert (status, headers.get("x-amzn-errortype")) == (403, "ExpiredUrl"), body
        fresh = _url(http_job)
        assert _get(clocked_srv, fresh, {"Range": "bytes=0-99"})[:3:2] == (206, IMAGE[:100])
    finally:
        clock.offset = 0.0


def test_n4_front_stops_downloads_within_two_seconds_of_the_execution_ending(clocked_srv: RunningServer,
                                                                          http_job: HttpJob) -> None:
    url = _url(http_job)
    assert _get(clocked_srv, url, {"Range": "bytes=0-9"})[0] == 206
    clocked_srv.client("iot").cancel_job(jobId=http_job.job_id, force=True)
    canceled = time.monotonic()
    answers: list[tuple[float, int]] = []
    while time.monotonic() < canceled + 4:
        started = time.monotonic()
        status, headers, body = _get(clocked_srv, url, {"Range": "bytes=0-9"})
        answers.append((started - canceled, status))
        time.sleep(0.05)
    # The bound: a decision is fresh for 1 s and answers for at most 1 s more while it is
    # asked again, so nothing asked 2 s after the cancel was served.
    bound = nginx_front.DECISION_FRESH_SECONDS + nginx_front.DECISION_STALE_SECONDS
    late = [status for after, status in answers if after >= bound]
    assert late, answers
    assert set(late) == {403}, answers
    assert (headers.get("x-amzn-errortype"), body.split(b":")[0]) == ("AccessDenied", b"AccessDenied")


def test_device_over_its_budget_gets_429_with_retry_after(clocked_srv: RunningServer,
                                                          http_job: HttpJob) -> None:
    url = _url(http_job)
    _, statuses = _blocks(clocked_srv, url, 3 * BURST * 16, block=16)  # 3 x the burst, at once
    assert 429 in statuses
    assert 206 in statuses
    status, headers, body = _get(clocked_srv, url, {"Range": "bytes=0-9"})
    while status != 429:  # the bucket may have refilled meanwhile: empty it again
        _, statuses = _blocks(clocked_srv, url, 2 * BURST * 16, block=16)
        status, headers, body = _get(clocked_srv, url, {"Range": "bytes=0-9"})
    assert headers["retry-after"] == "1"
    assert body.startswith(b"ThrottlingException: ")


def test_front_answers_hostile_requests_with_clear_client_errors(clocked_srv: RunningServer,
                                                                 http_job: HttpJob) -> None:
    url = _url(http_job)
    parts = urlsplit(url)
    cases: list[tuple[str, dict[str, str], int, bytes]] = [
        (url, {"Range": "bytes=0-1,5-9"}, 416, b"InvalidRange"),
        (url, {"Range": "bytes=" + "9" * 5000 + "-"}, 416, b"InvalidRange"),
        (url, {"Range": "bytes=+1-2"}, 416, b"InvalidRange"),
        (url, {"Range": "items=0-9"}, 416, b"InvalidRange"),
        (url, {"Range": f"bytes={len(IMAGE) + 10}-{len(IMAGE) + 20}"}, 416, b""),
        (url, {"X-Huge": "a" * 20_000}, 400, b""),
        (_with_query(url, expires="9" * 5000), {}, 400, b"MalformedUrl"),
        (_with_query(url, thing=http_job.thing + "\n"), {}, 400, b"MalformedUrl"),
        (url.replace(parts.path, "/ota/firmware"), {}, 404, b""),
        (url.replace("/ota/", "/elsewhere/"), {}, 404, b"NotFound"),
    ]
    for target, headers, status, code in cases:
        answered, _, body = _get(clocked_srv, target, headers)
        assert (answered, code in body) == (status, True), (target[-60:], list(headers), answered, body[:200])
    assert _get(clocked_srv, url, {"Range": "bytes=0-9"})[:3:2] == (206, IMAGE[:10])  # still serving



def _delivery(srv: RunningServer, tmp_path: Path, name: str, bucket: str, key: str,
              version: str | None) -> tuple[HttpJob, str]:
    """An OTA update over HTTP of `bucket`/`key` (at `version`, or the current one of an
    unversioned bucket) to a new thing `name`: its job and the URL its device is given."""
    bundle = srv.provision(name, tmp_path / name)
    iot = srv.client("iot")
    location = {"bucket": bucket, "key": key} | ({"version": version} if version else {})
    iot.create_ota_update(
        otaUpdateId=name, targets=[iot.describe_thing(thingName=name)["thingArn"]], protocols=["HTTP"],
        roleArn=f"arn:aws:iam::{srv.settings.account_id}:role/overair-ota",
        files=[{"fileName": "/fw.bin", "fileLocation": {"s3Location": location},
                "codeSigning": {"startSigningJobParameter": {"signingProfileName": DEV_PROFILE}}}])
    deadline = time.monotonic() + 30
    while (info := iot.get_ota_update(otaUpdateId=name)["otaUpdateInfo"])["otaUpdateStatus"] \
            != "CREATE_COMPLETE":
        assert info["otaUpdateStatus"] != "CREATE_FAILED", info
        assert time.monotonic() < deadline, info
        time.sleep(0.05)
    device = Device(srv, bundle, name)
    assert device.connect()
    device.subscribe(f"$aws/things/{name}/jobs/#")
    time.sleep(0.2)
    job = HttpJob(name, f"AFR_OTA-{name}", device)
    return job, _url(job)


def test_n4_front_serves_each_thing_the_object_version_overair_granted_it(clocked_srv: RunningServer,
                                                                           tmp_path: Path) -> None:
    # Two objects nginx's own reading of a URL cannot tell apart: "fw.bin" and "/fw.bin"
    # (nginx merges the slashes of /ota/b//fw.bin) in a bucket without versions (both
    # "null"). Keyed on that reading, the first device's fetch filled the cache the second
    # device was then served from: another image. The key is now overair's grant.
    bucket, s3 = "front-unversioned", clocked_srv.client("s3")
    s3.create_bucket(Bucket=bucket)
    clocked_srv.client("iam").put_role_policy(
        RoleName="overair-ota", PolicyName="FrontUnversioned", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"],
                           "Resource": f"arn:aws:s3:::{bucket}/*"}]}))
    images = {key: make_firmware(Version(3, 0, n), len(IMAGE), seed=f"front-{n}")
              for n, key in enumerate(("/fw.bin", "fw.bin"))}
    for key, image in images.items():
        s3.put_object(Bucket=bucket, Key=key, Body=image)
    jobs = []
    for n, (key, image) in enumerate(images.items()):
        job, url = _delivery(clocked_srv, tmp_path, f"front-object-{n}", bucket, key, None)
        jobs.append(job)
        data, statuses = _blocks(clocked_srv, url, len(image))
        assert set(statuses) == {206}
        assert data == image, f"{key}: served another object's bytes"
    for job in jobs:
        job.device.close()


def test_n4_front_refuses_urls_whose_query_nginx_and_overair_would_read_differently(
        clocked_srv: RunningServer, tmp_path: Path) -> None:
    # Python keeps the last of a repeated field, nginx the first; nginx matches names in
    # any case, Python decodes %xx in them. Taken, `?version=B&...&version=A` was granted
    # for A and cached as B (another thing's image served to B's devices), and
    # `?signature=junk&...` put the device's request budget on a key of the caller's choosing.
    s3 = clocked_srv.client("s3")
    key = "front-two-versions.bin"
    old, new = (make_firmware(Version(4, 0, n), len(IMAGE), seed=f"front-v{n}") for n in (0, 1))
    old_version = s3.put_object(Bucket="firmware", Key=key, Body=old)["VersionId"]
    new_version = s3.put_object(Bucket="firmware", Key=key, Body=new)["VersionId"]
    attacker, attacker_url = _delivery(clocked_srv, tmp_path, "front-query-old", "firmware", key, old_version)
    victim, victim_url = _delivery(clocked_srv, tmp_path, "front-query-new", "firmware", key, new_version)
    path, _, query = attacker_url.partition("?")
    polluted = [
        f"{path}?version={new_version}&{query}",  # version twice: first B, last A
        f"{path}?signature={'0' * 64}&{query}",  # signature twice
        f"{path}?VERSION={new_version}&{query}",  # another case
        attacker_url.replace("version=", "versio%6E="),  # an encoded name
        f"{attacker_url}&x-id=GetObject",  # a field not signed
    ]
    for url in polluted:
        status, headers, body = _get(clocked_srv, url, {"Range": "bytes=0-262143"})
        assert (status, headers.get("x-amzn-errortype")) == (400, "MalformedUrl"), (url[-80:], body[:100])
    data, statuses = _blocks(clocked_srv, victim_url, len(new))
    assert set(statuses) == {206}
    assert data == new
    assert _blocks(clocked_srv, attacker_url, len(old))[0] == old
    attacker.device.close()
    victim.device.close()


def test_front_serves_a_granted_version_from_its_checked_copy_until_the_object_is_deleted(
        clocked_srv: RunningServer, http_job: HttpJob) -> None:
    # A 4 KiB Range GET served from nginx's slice cache cost it a second cache lookup
    # per request; the granted version's checked copy is a static file (front_files.py).
    url = _url(http_job)
    assert _blocks(clocked_srv, url, len(IMAGE))[0] == IMAGE  # from slices; the copy starts
    version = dict(parse_qsl(urlsplit(url).query))["version"]
    key = f"{http_job.thing}.bin"
    copy = clocked_srv.settings.paths.download_front / "files" / (
        nginx_front.FILE_PREFIX + nginx_front.object_token("firmware", key, version))
    deadline = time.monotonic() + 10
    while not copy.exists():
        assert time.monotonic() < deadline, "the granted version was never copied for serving"
        time.sleep(0.05)
    assert copy.read_bytes() == IMAGE
    # The decision nginx holds is renewed within 2 s, now naming the copy: nginx's static
    # answers carry Last-Modified (overair's through the slices do not).
    deadline = time.monotonic() + 5
    while "last-modified" not in (answer := _get(clocked_srv, url, {"Range": "bytes=4096-8191"}))[1]:
        assert time.monotonic() < deadline, answer[1]
        time.sleep(0.1)
    assert answer[0] == 206
    assert answer[2] == IMAGE[4096:8192]
    assert answer[1]["content-range"] == f"bytes 4096-8191/{len(IMAGE)}"
    assert _blocks(clocked_srv, url, len(IMAGE))[0] == IMAGE
    clocked_srv.client("s3").delete_object(Bucket="firmware", Key=key, VersionId=version)
    assert not copy.exists()  # removed with the object
    deadline = time.monotonic() + nginx_front.DECISION_FRESH_SECONDS + nginx_front.DECISION_STALE_SECONDS + 1
    while (status := _get(clocked_srv, url, {"Range": "bytes=0-9"})[0]) == 206:
        assert time.monotonic() < deadline, "a deleted object is still served"
        time.sleep(0.1)
    assert status == 404
