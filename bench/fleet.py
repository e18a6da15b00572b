"""A whole signed OTA rollout to N FreeRTOS-shaped devices, end to end, against raw
Mosquitto forwarding of the same bytes measured in the same run.

    .venv/bin/python -m bench.fleet [--devices 1000] [--size-mib 1] [--device-processes 4]
    .venv/bin/python -m bench.fleet --devices 10000          # minutes; not in CI

The rollout is the product path: a real server (`tests.server_harness`: API, device
service, its own Mosquitto with mutual TLS, SQLite or `--database-url`), N things each
with its own certificate in one thing group, one image uploaded and signed through
CreateOTAUpdate (`overair-dev` profile, MQTT, SNAPSHOT). The devices
(`bench/fleet_devices.py`, in `--device-processes` child processes) do on the wire what
the FreeRTOS OTA library does: notify-next, `$next/get`, progress updates, CBOR blocks
of 4 KiB 8 per request, SHA-256 check, self_test ready, a reconnect as the reboot,
self_test active, SUCCEEDED. Nothing is skipped on the service's side.

It prints, from the CreateOTAUpdate call (t0): every device notified, every image
downloaded, every SUCCEEDED published by the devices, and every execution SUCCEEDED as
the API reports it (DescribeJob through boto3, polled every 0.5 s: the figure is at most
0.5 s late); CPU and peak RSS of the server (this process: it also runs the benchmark's
own boto3 polling, so its figures are an upper bound), its Mosquitto and the devices;
failures, restarts and status updates; where the server's device-service time went.

The limit: a Mosquitto of our own (same version, TLS 1.2, client certificates), one
subscriber per device in the same child processes with the same TLS code, and one
publisher sending every block of every device (the same CBOR messages on the same
topics) as fast as TCP takes them. The ratio compares image bytes per second delivered
during the rollout's download phase (first block request -> last image complete) with
that. What the limit leaves out: the request/answer round trips a real download needs,
and all the Jobs traffic, which is exactly what the rollout adds on top of forwarding.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import Engine, event
from tests.server_harness import RunningServer, free_port, running_server

from bench import fleet_agents, fleet_devices, fleet_https, lean_devices
from bench.memory_sampler import MemorySample, MemorySampler, PeakBetweenSamples
from bench.postgres import throwaway_postgres
from bench.stream_throughput import (
    Profile,
    RawBroker,
    ServiceTimer,
    _proc_cpu,
    _self_cpu,
    print_profile,
    start_py_spy,
    stop_py_spy,
)
from overair.cli.provisioning import create_keys_and_certificate_for
from overair.core import streamcodec, topics
from overair.core.versions import Version
from overair.server.bootstrap import DEV_PROFILE
from overair.sim.firmware import make_firmware

BUCKET = "firmware"  # the bucket the default OTA service role may read (least privilege)
GROUP = "bench-fleet"
OTA_ID = "bench-fleet"
MIB = 1024 * 1024
OLD_VERSION = Version(1, 0, 0)
NEW_VERSION = Version(1, 1, 0)


def _vm(pid: int | str, field_name: str) -> int:
    """VmRSS / VmHWM of a process in bytes (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_peak(pid: int | str) -> int:
    """Start a new peak-RSS (VmHWM) count for the process (Linux: clear_refs 5), so that
    the peak read later is the rollout's, not the provisioning's; returns the peak so far."""
    before = _vm(pid, "VmHWM")
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    return before


class StatementCounter:
    """Counts the SQL statements and commits the server sends on its read-write engine
    from `arm()` on. On SQLite each one is a wait for the interpreter while the database's
    one write lock is held, so statements per device measure what paces the status
    updates without depending on how loaded the machine is (docs/scaling.md)."""

    def __init__(self, engine: Engine) -> None:
        self.statements = self.commits = 0
        self._armed = False
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine, "commit", self._commit)

    def arm(self) -> None:
        self._armed = True

    def _statement(self, *_args: object) -> None:
        if self._armed:
            self.statements += 1  # `+=` on an int under the GIL: close enough for a count

    def _commit(self, *_args: object) -> None:
        if self._armed:
            self.commits += 1


class GcTimer:
    """Time the server process spends in Python's cyclic garbage collector from `arm()`
    on, per generation: a full collection walks every tracked object, and at 10,000
    connected devices those are many (docs/scaling.md)."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.collections = [0, 0, 0]
        self._started = 0.0
        self._armed = False
        gc.callbacks.append(self._callback)

    def arm(self) -> None:
        self._armed = True

    def stop(self) -> None:
        self._armed = False
        gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._armed:
            generation = info["generation"]
            self.seconds[generation] += time.perf_counter() - self._started
            self.collections[generation] += 1


@dataclass
class Provisioned:
    specs: list[fleet_devices.DeviceSpec]
    seconds: float


def provision(srv: RunningServer, root: Path, devices: int, workers: int = 8) -> Provisioned:
    """N things as an operator registers FreeRTOS devices with plain AWS calls: CreateThing,
    CreateKeysAndCertificate (CN = thing), AttachThingPrincipal, AddThingToThingGroup; one
    boto3 client per worker thread."""
    names = [f"fleet-{i:05d}" for i in range(devices)]
    clients = [srv.client("iot") for _ in range(workers)]
    root.mkdir(parents=True, exist_ok=True)

    def one(client: Any, chunk: list[str]) -> list[fleet_devices.DeviceSpec]:
        specs = []
        for name in chunk:
            client.create_thing(thingName=name)
            cert = create_keys_and_certificate_for(client, name)
            client.attach_thing_principal(thingName=name, principal=cert["certificateArn"])
            client.add_thing_to_thing_group(thingGroupName=GROUP, thingName=name)
            crt, key = root / f"{name}.crt", root / f"{name}.key"
            crt.write_text(cert["certificatePem"])
            key.write_text(cert["keyPair"]["PrivateKey"])
            specs.append(fleet_devices.DeviceSpec(name, crt, key))
        return specs

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        chunks = list(pool.map(one, clients, [names[i::workers] for i in range(workers)]))
    by_name = {spec.thing: spec for chunk in chunks for spec in chunk}
    return Provisioned([by_name[name] for name in names], time.perf_counter() - started)


BULK_ROLE = "bench-fleet-registration"


def provision_bulk(srv: RunningServer, root: Path, devices: int) -> Provisioned:
    """The same things as `provision`, the way a factory registers a fleet: each device
    makes its key and a CSR, one JSON line per device in the object store, one
    StartThingRegistrationTask (thing, certificate from the CSR, attachment, group), the
    certificates read back from the task's RESULTS report. Timed from the upload of the
    file to the last certificate read (the devices' key generation is not included)."""
    iot, s3, iam = srv.client("iot"), srv.client("s3"), srv.client("iam")
    names = [f"fleet-{i:05d}" for i in range(devices)]
    root.mkdir(parents=True, exist_ok=True)
    keys, lines = {}, []
    for name in names:
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .sign(key, hashes.SHA256()))
        keys[name] = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())
        lines.append(json.dumps({"ThingName": name,
                                 "CSR": csr.public_bytes(serialization.Encoding.PEM).decode()}))
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                     "Principal": {"Service": "iot.amazonaws.com"}}]}
    role = iam.create_role(RoleName=BULK_ROLE, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    iam.put_role_policy(RoleName=BULK_ROLE, PolicyName="read-input", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject",
                                                "Resource": f"arn:aws:s3:::{BUCKET}/*"}]}))
    template = {
        "Parameters": {"ThingName": {"Type": "String"}, "CSR": {"Type": "String"}},
        "Resources": {
            "thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "ThingName"},
                                                                 "ThingGroups": [GROUP]}},
            "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {
                "CertificateSigningRequest": {"Ref": "CSR"}, "Status": "ACTIVE"}}}}
    started = time.perf_counter()
    s3.put_object(Bucket=BUCKET, Key="fleet-devices.json", Body=("\n".join(lines) + "\n").encode())
    task = iot.start_thing_registration_task(templateBody=json.dumps(template), inputFileBucket=BUCKET,
                                             inputFileKey="fleet-devices.json", roleArn=role)["taskId"]
    while (described := iot.describe_thing_registration_task(taskId=task))["status"] in ("InProgress",
                                                                                          "Cancelling"):
        time.sleep(0.2)
    if described["status"] != "Completed" or described["failureCount"]:
        raise RuntimeError(f"bulk registration {described['status']}: {described.get('message', '')}")
    specs = {}
    for link in iot.list_thing_registration_task_reports(taskId=task, reportType="RESULTS")["resourceLinks"]:
        bucket, _, key = link.removeprefix("s3://").partition("/")
        for line in s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode().splitlines():
            if line.strip():
                response = json.loads(line)["response"]
                name = response["resourceArns"]["thing"].rpartition("/")[2]
                crt, key_path = root / f"{name}.crt", root / f"{name}.key"
                crt.write_text(response["certificatePem"])
                key_path.write_bytes(keys[name])
                specs[name] = fleet_devices.DeviceSpec(name, crt, key_path)
    return Provisioned([specs[name] for name in names], time.perf_counter() - started)


@dataclass
class RolloutResult:
    devices: int
    file_size: int
    provisioning_s: float
    results: list[fleet_devices.FleetDeviceResult]
    t0: float
    all_succeeded_api_s: float | None  # t0 -> DescribeJob says every execution SUCCEEDED
    statuses: dict[str, int]
    cpu_server_s: float
    cpu_broker_s: float
    cpu_devices_s: float
    rss_server_connected: int  # VmRSS of the server process with every device connected, before t0
    hwm_server_before: int  # peak RSS of the server process before t0 (provisioning, connecting)
    hwm_server: int  # from t0 (the count restarts there)
    hwm_broker: int
    hwm_devices: int  # the sum over device processes
    stream_id: str
    elapsed_s: float  # t0 -> the end of the polling (all SUCCEEDED, all ended, or the timeout)
    service_calls: dict[str, list[float]] = field(default_factory=dict)
    profile: Profile | None = None
    notify_batches_done: list[float] = field(default_factory=list)  # server side, perf_counter
    agents: fleet_agents.AgentResult | None = None  # the share of full overair agents (--agents)
    memory_peak: MemorySample | None = None  # what the server held at its largest sampled RSS
    # The device endpoint's answers by status (HTTPS): with the download front, its 204s are
    # the access decisions nginx asked for and its 206s the slices it filled.
    http_answers: dict[int, int] = field(default_factory=dict)
    # (statements, commits) on the server's read-write engine from t0 (StatementCounter).
    written: tuple[int, int] = (0, 0)
    collector: GcTimer | None = None
    cpu_front_s: float = 0.0  # the nginx download front's processes, from t0 (--front nginx)
    # HTTP: rounds of nginx alone, then the download endpoint alone, before t0
    endpoint: list[fleet_https.Pair] = field(default_factory=list)
    memory_between: PeakBetweenSamples | None = None  # the server's peak RSS, if between samples
    # t0 -> each SUCCEEDED as the server recorded it (the executions' lastUpdatedAt, wall clock)
    recorded_s: list[float] = field(default_factory=list)


class DeviceProcesses:
    """The devices, spread over child processes (spawned: no inherited server threads)."""

    def __init__(self, specs: list[fleet_devices.DeviceSpec], processes: int, ca: Path, port: int,
                 image_sha256: str, connect_rate: float, timeout: float, http_port: int = 0,
                 *, host: str = "127.0.0.1", reconnect: bool = False) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs: list[BaseProcess] = []
        for i in range(processes):
            parent, child = context.Pipe()
            proc = context.Process(target=fleet_devices.device_process, daemon=True, args=(
                specs[i::processes], ca, host, port, image_sha256, OLD_VERSION.to_u32(),
                connect_rate / processes, timeout, child, http_port, reconnect))
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)

    def wait_ready(self, timeout: float) -> None:
        for pipe in self.pipes:
            if not pipe.poll(timeout) or pipe.recv() != "ready":
                raise RuntimeError("the devices did not connect")

    def cpu(self) -> float:
        return sum(_proc_cpu(p.pid) for p in self.procs if p.pid is not None)

    def results(self, timeout: float) -> tuple[list[fleet_devices.FleetDeviceResult], int]:
        """Every device's result, and the sum of the processes' peak RSS."""
        out: list[fleet_devices.FleetDeviceResult] = []
        peak = 0
        for pipe in self.pipes:
            if not pipe.poll(timeout):
                raise RuntimeError("the devices did not finish")
            results, rss = pipe.recv()
            out.extend(results)
            peak += rss
        for proc in self.procs:
            proc.join(10)
        return out, peak


def rollout_phase(root: Path, devices: int, size: int, processes: int, connect_rate: float,
                  timeout: float, database_url: str, py_spy: str | None,
                  protocol: str = "MQTT", bulk: bool = True, agents: int = 0,
                  agent_processes: int = 1, front: str = "", https_rounds: int = 3) -> RolloutResult:
    # --front nginx: devices download through the nginx download front (delivery/nginx_front.py).
    toml = f'download_front = "{front}"\ndownload_front_port = {free_port()}' if front else ""
    with running_server(root / "server", database_url=database_url, settings_toml=toml) as srv:
        iot, s3 = srv.client("iot"), srv.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        group = iot.create_thing_group(thingGroupName=GROUP)
        if bulk:
            provisioned = provision_bulk(srv, root / "devices", devices)
            how = "one StartThingRegistrationTask"
        else:
            provisioned = provision(srv, root / "devices", devices)
            how = "4 API calls each, 8 threads"
        print(f"provisioned {devices} things ({how}) in {provisioned.seconds:.1f} s", flush=True)
        image = make_firmware(NEW_VERSION, size, seed="bench-fleet")
        version = s3.put_object(Bucket=BUCKET, Key="app/firmware.bin", Body=image)["VersionId"]
        endpoint: list[fleet_https.Pair] = []
        if protocol == "HTTP":
            things = [spec.thing for spec in provisioned.specs]
            endpoint = fleet_https.compare(srv, root, group["thingGroupArn"], things, BUCKET,
                                           "app/firmware.bin", version, image, processes, timeout,
                                           https_rounds)
            print("download endpoint alone, before the rollout: " + ", ".join(
                f"{pair.endpoint.seconds:.2f} s (nginx {pair.nginx.seconds:.2f} s)" for pair in endpoint),
                flush=True)
        fleet = DeviceProcesses(provisioned.specs, processes, srv.settings.paths.fleet_ca_cert,
                                srv.settings.mqtt_port, hashlib.sha256(image).hexdigest(), connect_rate,
                                timeout, 0 if protocol != "HTTP" else
                                srv.settings.download_front_port if front else srv.settings.download_port)
        connecting = time.perf_counter()
        fleet.wait_ready(timeout)
        print(f"{devices} devices connected, subscribed and answered in "
              f"{time.perf_counter() - connecting:.1f} s", flush=True)
        agent_share = fleet_agents.AgentShare(srv, root / "agents", agents, agent_processes, GROUP,
                                              OLD_VERSION, size)
        targets = devices + agents
        time.sleep(1.0)  # the answers to their first $next/get land before t0
        broker = srv.server.broker
        broker_pid = broker.process.pid if broker is not None and broker.process is not None else None
        rss_connected = _vm("self", "VmRSS")
        hwm_before = _reset_peak("self")
        if broker_pid:
            _reset_peak(broker_pid)
        timer = ServiceTimer(srv.server.devices)
        timer.arm()
        statements = StatementCounter(srv.server.db.engine)
        statements.arm()
        collector = GcTimer()
        collector.arm()
        profiler = start_py_spy(py_spy, root / "profile.txt") if py_spy else None
        download_front = srv.server.download_front
        front_pid = download_front.pid if download_front is not None else None
        cpu0, broker0, devices0 = _self_cpu(), _proc_cpu(broker_pid), fleet.cpu()
        front0 = fleet_https.nginx_cpu(front_pid)
        agent_share.arm()
        t0, wall0 = time.perf_counter(), time.time()
        sampler = MemorySampler(srv.server.connection, t0).start()
        iot.create_ota_update(
            otaUpdateId=OTA_ID, targets=[group["thingGroupArn"]], protocols=[protocol],
            targetSelection="SNAPSHOT",
            roleArn=f"arn:aws:iam::{srv.settings.account_id}:role/overair-ota",
            files=[{"fileName": "/firmware/app.bin", "fileVersion": str(NEW_VERSION),
                    "fileLocation": {"s3Location": {"bucket": BUCKET, "key": "app/firmware.bin",
                                                    "version": version}},
                    "codeSigning": {"startSigningJobParameter": {"signingProfileName": DEV_PROFILE}}}])
        statuses: dict[str, int] = {}
        all_succeeded: float | None = None
        deadline = t0 + timeout
        job_id = f"AFR_OTA-{OTA_ID}"
        while time.perf_counter() < deadline:
            time.sleep(0.5)
            try:
                details = iot.describe_job(jobId=job_id)["job"].get("jobProcessDetails", {})
            except iot.exceptions.ResourceNotFoundException:
                ota = srv.server.ota.get(OTA_ID)
                if ota.status == "CREATE_FAILED":
                    raise RuntimeError(f"CreateOTAUpdate failed: {ota.error_info}") from None
                continue
            statuses = {key.removeprefix("numberOf").removesuffix("Things"): value
                        for key, value in details.items() if key.startswith("numberOf")}
            if statuses.get("Succeeded", 0) >= targets:
                all_succeeded = time.perf_counter() - t0
                break
            if sum(v for k, v in statuses.items() if k not in ("Queued", "InProgress", "Succeeded")) \
                    + statuses.get("Succeeded", 0) >= targets:
                break  # every execution ended, not all of them well
        elapsed = time.perf_counter() - t0
        memory_peak = sampler.stop()
        recorded = [when - wall0 for when in succeeded_recorded(iot, job_id)]
        cpu_server, cpu_broker = _self_cpu() - cpu0, _proc_cpu(broker_pid) - broker0
        cpu_devices = fleet.cpu() - devices0
        cpu_front = fleet_https.nginx_cpu(front_pid) - front0
        hwm_broker = _vm(broker_pid, "VmHWM") if broker_pid else 0
        profile = stop_py_spy(profiler) if profiler else None
        results, hwm_devices = fleet.results(timeout)
        agent_result = agent_share.finish(job_id)
        stream_id = srv.server.ota.get(OTA_ID).stream_id or ""
        http_answers = dict(sorted(srv.server.delivery.answered.items()))
        written = (statements.statements, statements.commits)
        collector.stop()
    return RolloutResult(devices, size, provisioned.seconds, results, t0, all_succeeded, statuses,
                         cpu_server, cpu_broker, cpu_devices, rss_connected, hwm_before, _vm("self", "VmHWM"),
                         hwm_broker, hwm_devices, stream_id, elapsed, timer.calls, profile,
                         list(timer.notify_batches_done), agent_result, memory_peak, http_answers, written,
                         collector, cpu_front, endpoint, sampler.between, recorded)


def succeeded_recorded(iot: Any, job_id: str) -> list[float]:
    """When the server recorded each SUCCEEDED execution of the job (epoch seconds, its
    lastUpdatedAt), read through ListJobExecutionsForJob after the run: beside the
    devices' send times it shows how far the server's writes fell behind."""
    pages = iot.get_paginator("list_job_executions_for_job").paginate(
        jobId=job_id, status="SUCCEEDED", PaginationConfig={"PageSize": 250})
    return [e["jobExecutionSummary"]["lastUpdatedAt"].timestamp()
            for page in pages for e in page.get("executionSummaries", [])]


# --- the limit -----------------------------------------------------------------------------

@dataclass
class RawRun:
    seconds: float
    complete: bool
    image_bytes: int
    cpu_broker_s: float


def raw_phase(root: Path, things: list[str], stream_id: str, image: bytes, processes: int,
              timeout: float) -> RawRun:
    broker = RawBroker(root / "raw-broker")
    sub_cert, pub_cert = broker.client_cert("raw-subscriber"), broker.client_cert("raw-publisher")
    broker.start()
    try:
        block = fleet_devices.BLOCK_SIZE
        messages = [streamcodec.encode_data_block(streamcodec.DataBlock(0, i, image[off:off + block]))
                    for i, off in enumerate(range(0, len(image), block))]
        data_topics = [topics.stream_data_topic(thing, stream_id, "cbor") for thing in things]
        context = multiprocessing.get_context("spawn")
        pipes, procs = [], []
        for i in range(processes):
            parent, child = context.Pipe()
            proc = context.Process(target=fleet_devices.raw_receiver_process, daemon=True, args=(
                data_topics[i::processes], broker.ca, sub_cert[0], sub_cert[1], "127.0.0.1", broker.port,
                len(messages), timeout, child))
            proc.start()
            pipes.append(parent)
            procs.append(proc)
        for pipe in pipes:
            if not pipe.poll(timeout) or pipe.recv() != "ready":
                raise RuntimeError("the raw subscribers did not connect")
        publisher = broker.publisher(pub_cert, "raw-publisher")
        pid = broker.process.pid if broker.process is not None else None
        broker0 = _proc_cpu(pid)
        started = time.perf_counter()
        # As the service answers: 8 blocks for one device, then the next device.
        for start in range(0, len(messages), fleet_devices.BLOCKS_PER_REQUEST):
            batch = messages[start:start + fleet_devices.BLOCKS_PER_REQUEST]
            for topic in data_topics:
                publisher.sendall(b"".join(lean_devices.mqtt_publish_qos0(topic, m) for m in batch))
        results: list[fleet_devices.RawReceiverResult] = [pipe.recv() for pipe in pipes
                                                           if pipe.poll(timeout)]
        cpu_broker = _proc_cpu(pid) - broker0
        publisher.close()
        for proc in procs:
            proc.join(10)
    finally:
        broker.stop()
    complete = len(results) == processes and all(n >= len(messages) for r in results for n in r.received)
    last = max((r.last for r in results), default=started)
    return RawRun(last - started, complete, len(image) * len(things), cpu_broker)


# --- report --------------------------------------------------------------------------------

def _span(values: list[float], t0: float) -> str:
    if not values:
        return "never"
    return f"first {min(values) - t0:7.2f} s, last {max(values) - t0:7.2f} s"


def _shares(values: list[float], t0: float) -> str:
    """When half, 90% and 99% of them had happened (the devices' processes share the
    machine's cores with server and broker, and read their messages late when busy)."""
    if len(values) < 10:
        return ""
    ordered = sorted(values)
    at = {share: ordered[min(len(ordered) - 1, len(ordered) * share // 100)] - t0 for share in (50, 90, 99)}
    return f" (50% by {at[50]:.2f} s, 90% by {at[90]:.2f} s, 99% by {at[99]:.2f} s)"


def report(rollout: RolloutResult, raw: RawRun | fleet_https.HttpsRun, processes: int,
           protocol: str = "MQTT") -> None:
    n, size, t0 = rollout.devices, rollout.file_size, rollout.t0
    results = rollout.results
    print(f"\ndevices: {n} FreeRTOS-shaped (MQTT, mutual TLS 1.2, own certificate each) in {processes} "
          f"processes; image {size / MIB:.2f} MiB ({-(-size // fleet_devices.BLOCK_SIZE)} blocks of "
          f"{fleet_devices.BLOCK_SIZE} B, {fleet_devices.BLOCKS_PER_REQUEST} per request); "
          f"{os.cpu_count()} CPUs")
    print(f"provisioning: {rollout.provisioning_s:.1f} s ({n / rollout.provisioning_s:.0f} things/s)")
    print(f"executions (DescribeJob): {rollout.statuses}")
    failed = [r for r in results if r.error]
    print(f"devices with a verified image: {sum(r.verified for r in results)}/{n}; "
          f"SUCCEEDED published: {sum(bool(r.succeeded) for r in results)}/{n}; failures: {len(failed)}")
    for reason, count in Counter(r.error for r in failed).most_common(5):
        print(f"  {count} x {reason}")
    print(f"download restarts (a job message during a download): {sum(r.restarts for r in results)}; "
          f"HTTPS answers 429/503 (asked again when told): {sum(r.throttled for r in results)}")
    print(f"status updates sent: {sum(r.status_updates for r in results)}; "
          f"block requests: {sum(r.requests for r in results)}")
    if rollout.http_answers:
        print(f"device endpoint answers by status: {rollout.http_answers}")
    notified = [r.notified for r in results if r.notified]
    batches = rollout.notify_batches_done
    if batches:
        # The server's side alone: the devices' own processes (sharing the 2 cores) may
        # read their messages later.
        print(f"CreateOTAUpdate -> notify-next published by the server: first batch "
              f"{min(batches) - t0:6.2f} s, last {max(batches) - t0:6.2f} s ({len(batches)} batches)")
    print(f"CreateOTAUpdate -> notify-next at the devices:   {_span(notified, t0)}{_shares(notified, t0)}")
    downloaded = [r.downloaded for r in results if r.downloaded]
    sent = [r.succeeded for r in results if r.succeeded]
    print(f"CreateOTAUpdate -> image downloaded and checked: {_span(downloaded, t0)}"
          f"{_shares(downloaded, t0)}")
    print(f"CreateOTAUpdate -> SUCCEEDED sent by the devices: {_span(sent, t0)}{_shares(sent, t0)}")
    if rollout.recorded_s:
        print(f"CreateOTAUpdate -> SUCCEEDED recorded by the server (lastUpdatedAt): first "
              f"{min(rollout.recorded_s):7.2f} s, last {max(rollout.recorded_s):7.2f} s"
              f"{_shares(rollout.recorded_s, 0.0)}")
    api = "never (see the executions above)" if rollout.all_succeeded_api_s is None \
        else f"{rollout.all_succeeded_api_s:.2f} s (0.5 s poll)"
    print(f"CreateOTAUpdate -> every execution SUCCEEDED per the API: {api}")
    firsts = [r.first_request for r in results if r.first_request]
    downloads = [r.downloaded for r in results if r.downloaded]
    download_s = (max(downloads) - min(firsts)) if firsts and downloads else 0.0
    wall = rollout.elapsed_s
    print(f"CPU from t0 to the end ({wall:.1f} s): server process {rollout.cpu_server_s:.1f} s "
          f"({100 * rollout.cpu_server_s / wall:.0f}% of one core), "
          f"its Mosquitto {rollout.cpu_broker_s:.1f} s "
          f"({100 * rollout.cpu_broker_s / wall:.0f}%), devices {rollout.cpu_devices_s:.1f} s"
          + (f", its nginx download front {rollout.cpu_front_s:.1f} s" if rollout.cpu_front_s else ""))
    print(f"memory: server RSS with every device connected {rollout.rss_server_connected / MIB:.0f} MiB, "
          f"peak from t0 {rollout.hwm_server / MIB:.0f} MiB (before t0: "
          f"{rollout.hwm_server_before / MIB:.0f} MiB); "
          f"Mosquitto peak from t0 {rollout.hwm_broker / MIB:.0f} MiB; "
          f"device processes peak {rollout.hwm_devices / MIB:.0f} MiB in all")
    if rollout.memory_peak is not None:
        print(f"server at its largest sampled RSS (every 0.5 s) {rollout.memory_peak.describe()}")
    if rollout.memory_between is not None:
        print(f"server {rollout.memory_between.describe()}")
    statements, commits = rollout.written
    print(f"server read-write database engine from t0: {statements:,} statements, {commits:,} commits "
          f"({statements / max(1, n):.1f} and {commits / max(1, n):.1f} per device)")
    if rollout.collector is not None:
        gcs = rollout.collector
        print("server garbage collector from t0: " + ", ".join(
            f"generation {g}: {gcs.collections[g]} runs, {gcs.seconds[g]:.2f} s" for g in range(3)))
    for kind, durations in sorted(rollout.service_calls.items()):
        ordered = sorted(durations)
        p99 = ordered[int(0.99 * (len(ordered) - 1))]
        print(f"server DeviceService {kind:<22}: {len(ordered):7d} calls, "
              f"mean {1000 * statistics.fmean(ordered):6.2f} ms, p99 {1000 * p99:6.2f} ms, "
              f"total {sum(ordered):7.2f} s")
    goodput = size * len(downloads) / MIB / download_s if download_s > 0 else 0.0
    raw_rate = raw.image_bytes / MIB / raw.seconds if raw.seconds > 0 else 0.0
    print(f"download phase (first block request -> last image complete): {download_s:.2f} s, "
          f"{goodput:.1f} MiB/s of image")
    if isinstance(raw, fleet_https.HttpsRun):
        print(f"nginx serving the same file over TLS to the same number of clients: {raw.seconds:.2f} s, "
              f"{raw_rate:.1f} MiB/s (nginx CPU {raw.cpu_server_s:.1f} s, clients {raw.cpu_clients_s:.1f} s)"
              f"{'' if raw.complete else '  <-- not every image verified'}")
        for i, pair in enumerate(rollout.endpoint, 1):
            alone, limit = pair.endpoint, pair.nginx
            # The same clients as the limit's, each with its own pre-signed URL of a live
            # job: every request passes overair's access decision; no status updates.
            print(f"round {i}: nginx alone {limit.seconds:.2f} s (nginx CPU {limit.cpu_server_s:.1f} s, "
                  f"clients {limit.cpu_clients_s:.1f} s, idle overair {pair.overair_idle_cpu_s:.1f} s), "
                  "then the download endpoint alone "
                  "(same clients, own URLs) "
                  f"{alone.seconds:.2f} s (CPU: overair {alone.cpu_overair_s:.1f} s, its front "
                  f"{alone.cpu_server_s - alone.cpu_overair_s:.1f} s, clients {alone.cpu_clients_s:.1f} s; "
                  f"{alone.decisions} access decisions, {alone.throttled} answers 429/503 asked again when "
                  f"told): ratio {pair.ratio:.3f}"
                  f"{'' if alone.complete and limit.complete else '  <-- not every image verified'}"
                  f"{f' failures: {alone.failures[:3]}' if alone.failures else ''}")
        if rollout.endpoint:
            ratios = [pair.ratio for pair in rollout.endpoint]
            print("ratio download endpoint alone / nginx (the rounds' median): "
                  f"{statistics.median(ratios):.3f} (rounds {', '.join(f'{r:.3f}' for r in ratios)})")
    else:
        print(f"raw Mosquitto forwarding of the same messages: {raw.seconds:.2f} s, {raw_rate:.1f} MiB/s "
              f"(Mosquitto CPU {raw.cpu_broker_s:.1f} s){'' if raw.complete else '  <-- messages lost'}")
    if raw_rate:
        print(f"ratio rollout download goodput / {'nginx' if protocol == 'HTTP' else 'raw forwarding'}: "
              f"{goodput / raw_rate:.3f}")
        total = rollout.all_succeeded_api_s
        if total:
            images = n + (rollout.agents.count if rollout.agents is not None else 0)
            print(f"ratio end-to-end (image bytes / (t0 -> all SUCCEEDED)) / the limit: "
                  f"{size * images / MIB / total / raw_rate:.3f}")
    if rollout.agents is not None:
        fleet_agents.report(rollout.agents, t0, wall)
    if rollout.profile is not None:
        print_profile(rollout.profile)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--size-mib", type=float, default=1.0, help="image size (at most 4: 1024 blocks)")
    parser.add_argument("--device-processes", type=int, default=4)
    parser.add_argument("--connect-rate", type=float, default=1000.0,
                        help="new device connections per second, fleet-wide, before the rollout")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--database-url", default="", help="e.g. postgresql+psycopg://... (default SQLite)")
    parser.add_argument("--postgres", action="store_true",
                        help="run the server on a throw-away PostgreSQL cluster (Debian's postgresql, "
                        "as the tests start it) instead of SQLite")
    parser.add_argument("--py-spy", metavar="PATH", help="profile the server from t0 with this py-spy binary "
                        "(.venv/bin/py-spy)")
    parser.add_argument("--protocol", choices=("MQTT", "HTTP"), default="MQTT",
                        help="file delivery: MQTT streams (limit: raw Mosquitto) or HTTPS Range GETs of the "
                        "pre-signed URL (limit: nginx)")
    parser.add_argument("--provision", choices=("bulk", "calls"), default="bulk",
                        help="register the things with one StartThingRegistrationTask (default) or "
                        "with CreateThing, CreateKeysAndCertificate, AttachThingPrincipal, "
                        "AddThingToThingGroup per thing")
    parser.add_argument("--agents", type=int, default=0,
                        help="also update this many full overair agents (bench/fleet_agents.py), in the same "
                        "thing group and rollout")
    parser.add_argument("--agent-processes", type=int, default=1)
    parser.add_argument("--https-rounds", type=int, default=3,
                        help="--protocol HTTP: rounds of nginx alone then the download endpoint alone, "
                        "before the rollout (the ratio is their median)")
    parser.add_argument("--front", choices=("none", "nginx"), default="none",
                        help="with --protocol HTTP: devices download through overair's nginx download front "
                        "(download_front = \"nginx\"; its nginx's CPU is not in the server's figure)")
    parser.add_argument("--switch-interval-ms", type=float, default=0.0,
                        help="the thread switch interval of the interpreter the server runs in "
                        "(sys.setswitchinterval; default CPython's 5 ms, which `overair serve` keeps: "
                        "1 ms made 1,000-device rollouts slower, bench/README.md)")
    args = parser.parse_args()
    size = int(args.size_mib * MIB)
    if args.switch_interval_ms:
        sys.setswitchinterval(args.switch_interval_ms / 1000)
    with tempfile.TemporaryDirectory(prefix="overair-fleet-") as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        database_url = args.database_url
        if args.postgres:
            database_url = stack.enter_context(throwaway_postgres()) or ""
            if not database_url:
                raise SystemExit("--postgres: no PostgreSQL to start (install Debian's postgresql)")
        rollout = rollout_phase(root, args.devices, size, args.device_processes, args.connect_rate,
                                args.timeout, database_url, args.py_spy, args.protocol,
                                args.provision == "bulk", args.agents, args.agent_processes,
                                "" if args.front == "none" else args.front, args.https_rounds)
        image = make_firmware(NEW_VERSION, size, seed="bench-fleet")
        if args.protocol == "HTTP":
            limit: RawRun | fleet_https.HttpsRun = fleet_https.nginx_phase(
                root, args.devices, image, args.device_processes, args.timeout)
        else:
            limit = raw_phase(root, [r.thing for r in rollout.results], rollout.stream_id or "ota-0123456789",
                              image, args.device_processes, args.timeout)
    if args.front != "none":
        print(f"devices downloaded through the {args.front} download front")
    report(rollout, limit, args.device_processes, args.protocol)


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
