"""HTTPS delivery in `bench.fleet --protocol HTTP`: the same client code (one keep-alive
TLS connection per device, one Range GET per 4 KiB block, bench/fleet_devices.py
`HttpDownload`) fetching

- from Debian's nginx serving the file from disk over TLS: the limit (`nginx_phase`);
- from overair's download endpoint (or its nginx download front), each device with its
  own pre-signed URL of a live job, before the rollout and with nothing else running
  (`endpoint_phase`): every request passes overair's access decision as in a rollout,
  but the devices send no status updates, so this is the delivery path alone, on the
  same terms as the limit. The rollout's own download figure carries the status updates.

Both print what they measured; `bench.fleet` prints the ratios.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import multiprocessing
import os
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.server_harness import RunningServer, free_port

from bench import fleet_devices
from bench.stream_throughput import _proc_cpu, _self_cpu
from overair.server import pki
from overair.server.bootstrap import DEV_PROFILE

NGINX = "/usr/sbin/nginx"


@dataclass(frozen=True)
class HttpsRun:
    seconds: float  # first request -> last image complete
    complete: bool  # every image fetched and its SHA-256 right
    image_bytes: int
    cpu_server_s: float  # what serves: nginx's processes (and overair's, for the endpoint)
    cpu_clients_s: float
    failures: tuple[str, ...] = ()
    cpu_overair_s: float = 0.0  # of cpu_server_s, overair's process (the endpoint run)
    decisions: int = 0  # access decisions overair answered its front (the endpoint run)
    throttled: int = 0  # answers 429/503 with Retry-After, asked again when told


def nginx_cpu(master_pid: int | None) -> float:
    """CPU seconds of an nginx master and its worker processes so far (Linux /proc)."""
    if master_pid is None:
        return 0.0
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children")
    try:
        workers = [int(pid) for pid in children.read_text().split()]
    except OSError:
        workers = []
    return _proc_cpu(master_pid) + sum(_proc_cpu(pid) for pid in workers)


def fetch(ca: Path, port: int, urls: list[str], size: int, image_sha256: str, processes: int,
          timeout: float, server_cpu: Callable[[], float]) -> HttpsRun:
    """`len(urls)` devices, spread over `processes` spawned processes, each fetching its URL."""
    context = multiprocessing.get_context("spawn")
    pipes, procs = [], []
    for i in range(processes):
        parent, child = context.Pipe()
        proc = context.Process(target=fleet_devices.http_fetch_process, daemon=True, args=(
            urls[i::processes], ca, "127.0.0.1", port, size, image_sha256, timeout, child))
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    for pipe in pipes:
        if not pipe.poll(60) or pipe.recv() != "ready":
            raise RuntimeError("the HTTPS clients did not start")
    cpu0, clients0 = server_cpu(), sum(_proc_cpu(p.pid) for p in procs if p.pid is not None)
    for pipe in pipes:
        pipe.send("go")
    results: list[fleet_devices.HttpFetchResult] = [pipe.recv() for pipe in pipes if pipe.poll(timeout)]
    cpu, clients = server_cpu() - cpu0, sum(_proc_cpu(p.pid) for p in procs if p.pid is not None) - clients0
    for proc in procs:
        proc.join(10)
    complete = len(results) == processes and sum(r.verified for r in results) == len(urls)
    first = min((r.first for r in results), default=0.0)
    last = max((r.last for r in results), default=first)
    failures = tuple(f for r in results for f in r.failed)
    return HttpsRun(last - first, complete, size * len(urls), cpu, clients, failures,
                    throttled=sum(r.throttled for r in results))


def nginx_phase(root: Path, devices: int, image: bytes, processes: int, timeout: float,
                name: str = "nginx") -> HttpsRun:
    """The HTTPS limit: nginx (Debian's, its default worker count) serving the same image
    over TLS 1.2+ with a certificate of its own, fetched by the same number of devices
    with the same client code (one Range GET per 4 KiB block, keep-alive), same run.
    `name`: its directory under `root` (new for each call)."""
    workdir = root / name
    nginx_workdir(workdir, image, "bench nginx CA")
    port = free_port()
    temp = "".join(f"{kind}_temp_path {workdir / kind};\n    "
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (workdir / "nginx.conf").write_text(
        ("user root;\n" if os.geteuid() == 0 else "")
        + f"worker_processes auto;\ndaemon off;\npid {workdir / 'nginx.pid'};\nerror_log stderr error;\n"
        "worker_rlimit_nofile 65536;\nevents { worker_connections 65536; }\n"
        f"http {{\n    access_log off;\n    {temp}keepalive_requests 1000000;\n"
        f"    server {{\n        listen 127.0.0.1:{port} ssl;\n"
        f"        ssl_certificate {workdir / 'server.crt'};\n"
        f"        ssl_certificate_key {workdir / 'server.key'};\n"
        f"        root {workdir / 'files'};\n    }}\n}}\n")
    process = start_nginx(workdir, port)
    try:
        url = f"https://127.0.0.1:{port}/firmware.bin"
        return fetch(workdir / "ca.pem", port, [url] * devices, len(image), hashlib.sha256(image).hexdigest(),
                     processes, timeout, lambda: nginx_cpu(process.pid))
    finally:
        process.terminate()
        process.wait(10)


def nginx_workdir(workdir: Path, image: bytes, ca_name: str) -> None:
    """`workdir` for an nginx serving `image` as files/firmware.bin over TLS: its own CA
    (ca.pem, for the clients) and server certificate (server.crt, server.key)."""
    (workdir / "files").mkdir(parents=True)
    (workdir / "files" / "firmware.bin").write_bytes(image)
    now = dt.datetime.now(dt.UTC)
    ca = pki.make_root_ca(ca_name, now)
    server = pki.issue_server_cert(ca, ("localhost", "127.0.0.1"), now)
    (workdir / "ca.pem").write_bytes(ca.cert_pem)
    (workdir / "server.crt").write_bytes(server.cert_pem)
    (workdir / "server.key").write_bytes(server.key_pem)


def start_nginx(workdir: Path, port: int, failure: Callable[[], str] = lambda: "") -> subprocess.Popen[bytes]:
    """nginx on `workdir`/nginx.conf, once it accepts connections on `port` (else stopped,
    and `failure()` says why in the error)."""
    process = subprocess.Popen([NGINX, "-c", str(workdir / "nginx.conf"), "-p", str(workdir)],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.terminate()
                process.wait(10)
                raise RuntimeError(f"nginx did not start {failure()}") from None
            time.sleep(0.05)


@dataclass(frozen=True)
class Pair:
    """One round of the comparison: the limit, then the endpoint, one after the other."""
    nginx: HttpsRun
    endpoint: HttpsRun
    overair_idle_cpu_s: float  # overair's CPU while nginx alone ran (what it took from the limit)

    @property
    def ratio(self) -> float:
        return self.nginx.seconds / self.endpoint.seconds if self.endpoint.seconds > 0 else 0.0


def compare(srv: RunningServer, root: Path, group_arn: str, things: list[str], bucket: str, key: str,
            version: str, image: bytes, processes: int, timeout: float, rounds: int) -> list[Pair]:
    """`rounds` x (the limit, then the endpoint alone), back to back: this machine's speed
    drifts by a fifth from one minute to the next (nginx alone took 6.9-8.5 s for the
    same 1,000 clients within ten minutes), so each ratio is of two runs a few seconds
    apart, and the median of the rounds is the figure."""
    pairs = []
    for i in range(rounds):
        idle = _self_cpu()
        limit = nginx_phase(root, len(things), image, processes, timeout, name=f"nginx-{i}")
        idle = _self_cpu() - idle
        alone = endpoint_phase(srv, group_arn, things, bucket, key, version, image, processes, timeout,
                               ota_id=f"bench-endpoint-alone-{i}")
        pairs.append(Pair(limit, alone, idle))
    return pairs


def endpoint_phase(srv: RunningServer, group_arn: str, things: list[str], bucket: str, key: str,
                   version: str, image: bytes, processes: int, timeout: float,
                   ota_id: str = "bench-endpoint-alone") -> HttpsRun:
    """The download endpoint (or front) alone: an OTA update over HTTP to the group whose
    devices are not connected yet, each thing's own pre-signed URL as its job document
    carries it, fetched by the limit's client code; then the job is canceled, so the
    rollout that follows starts from nothing. Counts overair's CPU and its front's."""
    iot = srv.client("iot")
    iot.create_ota_update(
        otaUpdateId=ota_id, targets=[group_arn], protocols=["HTTP"], targetSelection="SNAPSHOT",
        roleArn=f"arn:aws:iam::{srv.settings.account_id}:role/overair-ota",
        files=[{"fileName": "/firmware/app.bin", "fileVersion": "1",
                "fileLocation": {"s3Location": {"bucket": bucket, "key": key, "version": version}},
                "codeSigning": {"startSigningJobParameter": {"signingProfileName": DEV_PROFILE}}}])
    deadline = time.monotonic() + timeout
    while (status := iot.get_ota_update(otaUpdateId=ota_id)["otaUpdateInfo"]["otaUpdateStatus"]) \
            != "CREATE_COMPLETE":
        if status == "CREATE_FAILED" or time.monotonic() > deadline:
            raise RuntimeError(f"the endpoint phase's OTA update: {status}")
        time.sleep(0.1)
    server = srv.server
    job_id = f"AFR_OTA-{ota_id}"
    job = server.jobs.describe_job(job_id)[0]
    urls = [str(server.delivery.render(job, thing)["afr_ota"]["files"][0]["update_data_url"])
            for thing in things]
    front = server.download_front

    def serving_cpu() -> float:
        master = front.pid if front is not None else None
        return _self_cpu() + nginx_cpu(master)

    port = int(urls[0].split("://", 1)[1].split("/", 1)[0].rpartition(":")[2])
    overair0, decisions0 = _self_cpu(), server.delivery.answered[204]
    try:
        run = fetch(srv.settings.paths.fleet_ca_cert, port, urls, len(image),
                    hashlib.sha256(image).hexdigest(), processes, timeout, serving_cpu)
    finally:
        iot.cancel_job(jobId=job_id, force=True)
    return dataclasses.replace(run, cpu_overair_s=_self_cpu() - overair0,
                               decisions=server.delivery.answered[204] - decisions0)
