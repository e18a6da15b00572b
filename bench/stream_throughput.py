"""MQTT file delivery of a signed OTA update to N devices at once, against raw Mosquitto
forwarding of the same bytes over mutual TLS measured in the same run.

    .venv/bin/python -m bench.stream_throughput [--devices 100] [--size-mib 1]

The stream phase is the whole product path: a real server (`tests.server_harness`: API,
device service, its own Mosquitto with mutual TLS), N provisioned things in one thing
group, one image uploaded and signed through CreateOTAUpdate with the `overair-dev`
profile, and N real agents (`overair.sim.fleet.Fleet`: paho, LinuxSlots, in-process
reboot) downloading it in CBOR blocks of 4 KiB, 8 blocks per GetStream request. The
download phase runs from the first block request any agent publishes to the last data
block any agent receives; both are stamped in the agents' transports (see
`DownloadProbe`). Goodput is image bytes x devices / that time. The end-to-end time runs
from the CreateOTAUpdate call to every execution SUCCEEDED (signing, job, notification,
download, verification, reboot, self-test, commit, report).

The limit is Mosquitto alone, same version, same TLS settings: a broker of its own with
one listener requiring client certificates, N `mosquitto_sub` clients (C, one mutual-TLS
connection each, each on the data topic of "its" device) and one publisher connection
(like the service's) sending every block of every device, with the same topics and the
same CBOR messages, as fast as TCP takes them. It is run `--raw-runs` times and the best
run counts. Both phases run one after the other, on the same machine, in one run; the
ratio goodput / raw says how much of the broker's forwarding capacity a rollout uses.

To explain the figure, the run also prints: when the devices got their notify-next and
sent their first request; each request cycle as the devices see it (request -> first
block of the answer -> last block -> next request); how long the server's device
service took per call, by kind (it wraps `handle` and `notify_next` on the running
server's DeviceService); and the CPU used by this process and by the server's Mosquitto.

By default the agents run in this process, next to the server: 100 agents are 200
threads sharing one GIL with it. `--agent-processes K` runs them in K child processes
instead (one Fleet each), as real devices would not share the server's interpreter.
`--py-spy PATH` (a py-spy binary; not a project dependency) samples this process from
the CreateOTAUpdate call until all SUCCEEDED and prints where the GIL-holding thread
spent its time, by thread / service and by function.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import multiprocessing
import os
import re
import signal
import socket
import ssl
import statistics
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from tests.server_harness import MOSQUITTO, RunningServer, free_port, running_server

from bench import lean_devices
from overair.agent.config import AgentConfig
from overair.agent.runtime import AgentSnapshot, Runtime
from overair.agent.transport.base import Transport, TransportCallbacks
from overair.agent.transport.mqtt import MqttTransport
from overair.cli.provisioning import provision_thing
from overair.core import streamcodec, topics
from overair.core.versions import Version
from overair.server import pki
from overair.server.api.contract import ApiError
from overair.server.bootstrap import DEV_PROFILE
from overair.server.gateway.device_service import DeviceService, Outgoing
from overair.sim.firmware import make_firmware
from overair.sim.fleet import Fleet

BUCKET = "firmware"  # the bucket the default OTA service role may read (least privilege)
GROUP = "bench-stream"
OTA_ID = "bench-stream"
BLOCK_SIZE = 4096  # what provisioning writes into agent.toml ([ota] block_size)
BLOCKS_PER_REQUEST = 8  # idem ([ota] blocks_per_request): the service answers in batches of 8
MOSQUITTO_SUB = "/usr/bin/mosquitto_sub"
TERMINAL = {"SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT", "CANCELED", "REMOVED"}
MIB = 1024 * 1024


# --- timestamps inside the agents ----------------------------------------------------------

@dataclass
class ProbeData:
    """What the probes saw, per thing; perf_counter() times (CLOCK_MONOTONIC on Linux, so
    comparable between the processes of one machine)."""

    notified: dict[str, float] = field(default_factory=dict)  # first notify-next after arm()
    first_request: dict[str, float] = field(default_factory=dict)  # first GetStream published
    last_block: dict[str, float] = field(default_factory=dict)  # last data block delivered
    blocks: dict[str, int] = field(default_factory=dict)  # data blocks delivered (duplicates too)
    stored: dict[str, tuple[int, int]] = field(default_factory=dict)  # Fleet progress: (received, total)
    # Every request cycle but each device's last: (request published -> first block of the
    # answer delivered, first -> last block of the answer, last block -> next request).
    cycles: list[tuple[float, float, float]] = field(default_factory=list)

    def merge(self, other: ProbeData) -> None:
        self.notified.update(other.notified)
        self.first_request.update(other.first_request)
        self.last_block.update(other.last_block)
        self.blocks.update(other.blocks)
        self.stored.update(other.stored)
        self.cycles.extend(other.cycles)


class DownloadProbe:
    """Stamps, per device, in its MQTT transport: the first job notification after
    `arm()`, the first GetStream request it publishes (as the runtime hands it to paho)
    and every data block it receives (as paho's network thread delivers it, before the
    agent's queue). The Fleet progress callback alone would miss the first request and
    its round trip: it reports a block only once the agent has stored it; it is used to
    check that every device stored every block."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed = False
        self._data = ProbeData()
        # thing -> [its last GetStream request, first and last block of the answer so far]
        self._cycle: dict[str, list[float]] = {}

    def arm(self) -> None:
        # Agents get notify-next on connect too (the answer to their $next/get): only
        # notifications after this call count.
        with self._lock:
            self._armed = True
            self._data.notified.clear()

    def data(self) -> ProbeData:
        with self._lock:
            d = self._data
            return ProbeData(dict(d.notified), dict(d.first_request), dict(d.last_block), dict(d.blocks),
                             dict(d.stored), list(d.cycles))

    def on_publish(self, thing: str, topic: str) -> None:
        if "/streams/" in topic and "/get/" in topic:
            now = time.perf_counter()
            with self._lock:
                self._data.first_request.setdefault(thing, now)
                cycle = self._cycle.get(thing)
                if cycle is not None and len(cycle) == 3:
                    asked, first, last = cycle
                    self._data.cycles.append((first - asked, last - first, now - last))
                self._cycle[thing] = [now]

    def on_message(self, thing: str, topic: str, _payload: bytes) -> None:
        now = time.perf_counter()
        if "/streams/" in topic and "/data/" in topic:
            with self._lock:
                self._data.last_block[thing] = now
                self._data.blocks[thing] = self._data.blocks.get(thing, 0) + 1
                cycle = self._cycle.get(thing)
                if cycle is not None:
                    cycle[1:] = [cycle[1] if len(cycle) > 1 else now, now]
        elif topic.endswith("/jobs/notify-next"):
            with self._lock:
                if self._armed:
                    self._data.notified.setdefault(thing, now)

    def progress(self, thing: str, received: int, total: int) -> None:
        with self._lock:
            self._data.stored[thing] = (received, total)

    def factory(self, config: AgentConfig) -> Callable[[TransportCallbacks], Transport]:
        thing = config.thing_name

        def make(callbacks: TransportCallbacks) -> Transport:
            def on_message(topic: str, payload: bytes) -> None:
                self.on_message(thing, topic, payload)
                callbacks.on_message(topic, payload)

            wrapped = TransportCallbacks(callbacks.on_connected, callbacks.on_disconnected, on_message)
            return _ProbedTransport(MqttTransport(config.mqtt, thing, wrapped), thing, self)

        return make


class _ProbedTransport:
    """The agent's own MqttTransport, with its publishes shown to the probe."""

    def __init__(self, inner: MqttTransport, thing: str, probe: DownloadProbe) -> None:
        self._inner = inner
        self._thing = thing
        self._probe = probe

    def connect(self) -> None:
        self._inner.connect()

    def disconnect(self) -> None:
        self._inner.disconnect()

    def subscribe(self, topic: str, qos: int) -> None:
        self._inner.subscribe(topic, qos)

    def unsubscribe(self, topic: str) -> None:
        self._inner.unsubscribe(topic)

    def publish(self, topic: str, payload: bytes, qos: int) -> None:
        self._probe.on_publish(self._thing, topic)
        self._inner.publish(topic, payload, qos)

    def flush(self, timeout: float) -> bool:
        return self._inner.flush(timeout)


class ProbedFleet(Fleet):
    """`Fleet` whose agents run with their transport wrapped by a `DownloadProbe`. Fleet
    takes no transport factory, so the runtimes are built again with one; everything
    else (start, stop, snapshots, wait) is Fleet's."""

    def __init__(self, bundles: Sequence[Path], probe: DownloadProbe) -> None:
        super().__init__(bundles)
        self.runtimes = {config.thing_name: Runtime(config, transport_factory=probe.factory(config),
                                                    progress=_progress_of(probe, config.thing_name))
                         for config in self.configs}


def _progress_of(probe: DownloadProbe, thing: str) -> Callable[[str, int, int], None]:
    def report(_job_id: str, received: int, total: int) -> None:
        probe.progress(thing, received, total)
    return report


def _all_connected(snaps: dict[str, AgentSnapshot]) -> bool:
    return all(s.connected for s in snaps.values())


# --- timings inside the server --------------------------------------------------------------

def _run_size(n: int) -> str:
    """A run's size class for the table: 2-4, 5-16, 17+ messages."""
    return "2-4" if n <= 4 else "5-16" if n <= 16 else "17+"


class ServiceTimer:
    """Times every call the MQTT driver makes into the device service, by kind. It
    replaces `handle` and `notify_next` on the DeviceService instance (the driver looks
    them up at each call); nothing else in the server changes."""

    def __init__(self, devices: DeviceService) -> None:
        self._lock = threading.Lock()
        self._armed = False
        self.calls: dict[str, list[float]] = {}
        # When each batch of a job's notifications was ready to publish (perf_counter).
        self.notify_batches_done: list[float] = []
        handle, notify_next, notify_many = devices.handle, devices.notify_next, devices.notify_next_many
        handle_updates = devices.handle_updates

        def timed_handle(topic: str, payload: bytes, **options: bool) -> list[Outgoing]:
            started = time.perf_counter()
            try:
                return handle(topic, payload, **options)
            finally:
                kind = ("GetStream" if "/streams/" in topic
                        else "job execution update" if topic.endswith("/update") else "other Jobs request")
                self._record(kind, time.perf_counter() - started)

        def timed_handle_updates(messages: list[tuple[str, bytes]]) -> list[list[Outgoing]]:
            # A run of job updates handled together (gateway/thing_workers.py): one entry
            # per run; an update in it that is not a plain progress report also shows as
            # a "job execution update" call.
            started = time.perf_counter()
            try:
                return handle_updates(messages)
            finally:
                self._record(f"job update run of {_run_size(len(messages))}", time.perf_counter() - started)

        def timed_notify_next(thing: str) -> list[Outgoing]:
            started = time.perf_counter()
            try:
                return notify_next(thing)
            finally:
                self._record("notify-next", time.perf_counter() - started)

        def timed_notify_many(things: list[str], pending: bool = True) -> list[Outgoing]:
            try:
                return notify_many(things, pending)
            finally:
                with self._lock:
                    if self._armed:
                        self.notify_batches_done.append(time.perf_counter())

        devices.handle = timed_handle  # type: ignore[method-assign]
        devices.handle_updates = timed_handle_updates  # type: ignore[method-assign]
        devices.notify_next = timed_notify_next  # type: ignore[method-assign]
        devices.notify_next_many = timed_notify_many  # type: ignore[method-assign]

    def arm(self) -> None:
        with self._lock:
            self._armed = True
            self.calls.clear()
            self.notify_batches_done.clear()

    def _record(self, kind: str, seconds: float) -> None:
        with self._lock:
            if self._armed:
                self.calls.setdefault(kind, []).append(seconds)


# --- where the agents run ------------------------------------------------------------------

class LocalAgents:
    """All agents in this process, next to the server (the default: one Fleet)."""

    def __init__(self, bundles: list[Path]) -> None:
        self._probe = DownloadProbe()
        self._fleet = ProbedFleet(bundles, self._probe)
        self.pids: list[int] = []  # their CPU is this process's

    def __enter__(self) -> LocalAgents:
        self._fleet.start()
        if not self._fleet.wait(_all_connected, timeout=120):
            self._fleet.stop()
            raise RuntimeError("not every agent connected within 120 s")
        return self

    def arm(self) -> None:
        self._probe.arm()

    def finish(self) -> ProbeData:
        return self._probe.data()

    def __exit__(self, *_exc: object) -> None:
        self._fleet.stop()


def _agent_process(bundles: list[str], conn: Connection) -> None:
    """A child process running one Fleet; obeys "arm" and "stop", then sends its data."""
    probe = DownloadProbe()
    fleet = ProbedFleet([Path(b) for b in bundles], probe)
    fleet.start()
    try:
        conn.send(fleet.wait(_all_connected, timeout=120))
        while (command := conn.recv()) != "stop":
            if command == "arm":
                probe.arm()
    finally:
        fleet.stop()
    conn.send(probe.data())


class ProcessAgents:
    """The agents split over child processes, one Fleet each, so that they do not share
    the server's GIL (as real devices would not)."""

    def __init__(self, bundles: list[Path], processes: int) -> None:
        context = multiprocessing.get_context("spawn")  # the server's threads are running: no fork
        self._conns: list[Connection] = []
        self._procs: list[BaseProcess] = []
        for i in range(processes):
            parent, child = context.Pipe()
            self._conns.append(parent)
            self._procs.append(context.Process(target=_agent_process, name=f"bench-agents-{i}", daemon=True,
                                               args=([str(b) for b in bundles[i::processes]], child)))

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    def __enter__(self) -> ProcessAgents:
        for proc in self._procs:
            proc.start()
        for conn in self._conns:
            if not conn.poll(180) or not conn.recv():
                self.__exit__()
                raise RuntimeError("not every agent connected within 120 s")
        return self

    def arm(self) -> None:
        for conn in self._conns:
            conn.send("arm")

    def finish(self) -> ProbeData:
        merged = ProbeData()
        for conn in self._conns:
            conn.send("stop")
        for conn in self._conns:
            if conn.poll(60):
                merged.merge(conn.recv())
        return merged

    def __exit__(self, *_exc: object) -> None:
        for conn in self._conns:
            # Harmless after finish() (the child has gone); on an error it is what stops them.
            with contextlib.suppress(OSError, ValueError):
                conn.send("stop")
        for proc in self._procs:
            proc.join(30)
            if proc.is_alive():
                proc.terminate()
                proc.join()


# --- the stream phase ----------------------------------------------------------------------

@dataclass
class StreamResult:
    devices: int
    agent_processes: int  # 0: in this process
    file_size: int
    stream_id: str
    t_created: float | None  # CreateOTAUpdate call -> job seen by the 20 ms poll (signing included)
    t_notified: tuple[float, float] | None  # -> first and last device notified
    t_requested: tuple[float, float] | None  # -> first and last device's first block request
    download_s: float  # first block request -> last block received, fleet-wide
    end_to_end_s: float  # CreateOTAUpdate call -> all SUCCEEDED (or the timeout)
    per_device_s: list[float]  # each device's own first request -> last block
    statuses: dict[str, int]
    blocks_received: int
    blocks_expected: int
    complete_devices: int  # devices whose agent stored every block (Fleet progress)
    cpu_self_s: float  # CPU of this process from the call to all SUCCEEDED
    cpu_agents_s: float  # CPU of the agents' processes (0 when they run in this one)
    cpu_broker_s: float  # CPU of the server's Mosquitto over the same time
    cycles: list[tuple[float, float, float]]  # at the devices: see ProbeData.cycles
    service_calls: dict[str, list[float]]  # in the server: duration of each device service call
    profile: Profile | None = None


def _provision_all(srv: RunningServer, root: Path, names: list[str], factory: Path,
                   workers: int = 8, group: str = GROUP) -> list[Path]:
    """Provision in parallel, one boto3 client per worker (a boto3 session must not
    create clients from several threads, so they are made here first). The broker
    reloads its ACL once per burst of attachments (AccessSync), not once per thing."""
    paths = srv.settings.paths
    fleet_ca, roots = paths.fleet_ca_cert.read_bytes(), paths.code_signing_root.read_bytes()
    revocation_signer = paths.revocation_signer_cert.read_bytes()
    clients = [srv.client("iot") for _ in range(workers)]
    chunks = [names[i::workers] for i in range(workers)]

    def provision(client: Any, chunk: list[str]) -> list[Path]:
        return [provision_thing(client, name, root / name, fleet_ca_pem=fleet_ca,
                                code_signing_roots_pem=roots, revocation_signer_pem=revocation_signer,
                                mqtt_host="127.0.0.1", mqtt_port=srv.settings.mqtt_port, group=group,
                                factory_image=factory).parent
                for name in chunk]

    with ThreadPoolExecutor(workers) as pool:
        done = list(pool.map(provision, clients, chunks))
    by_name = {path.name: path for chunk in done for path in chunk}
    return [by_name[name] for name in names]


def _job_counts(srv: RunningServer, job_id: str) -> dict[str, int] | None:
    try:
        _, counts = srv.server.jobs.describe_job(job_id)
    except ApiError:
        return None  # not created yet
    return counts


def _span(times: dict[str, float], t0: float) -> tuple[float, float] | None:
    return (min(times.values()) - t0, max(times.values()) - t0) if times else None


def stream_phase(root: Path, devices: int, size: int, timeout: float, agent_processes: int,
                 py_spy: str | None) -> StreamResult:
    with running_server(root / "server") as srv:
        iot, s3 = srv.client("iot"), srv.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        group = iot.create_thing_group(thingGroupName=GROUP)
        factory = root / "factory-1.0.0.bin"
        factory.write_bytes(make_firmware(Version(1, 0, 0), size, seed="bench-factory"))
        names = thing_names(devices)
        started = time.perf_counter()
        bundles = _provision_all(srv, root / "devices", names, factory)
        print(f"provisioned {devices} devices in {time.perf_counter() - started:.1f} s", flush=True)
        image = make_firmware(Version(1, 1, 0), size, seed="bench-update")
        version = s3.put_object(Bucket=BUCKET, Key="app/firmware-1.1.0.bin", Body=image)["VersionId"]
        job_id = f"AFR_OTA-{OTA_ID}"
        timer = ServiceTimer(srv.server.devices)
        agents = ProcessAgents(bundles, agent_processes) if agent_processes else LocalAgents(bundles)
        with agents:
            # Each agent asks for its next job on connect; let those answers land so the
            # measurement starts from an idle fleet.
            time.sleep(1.0)
            agents.arm()
            timer.arm()
            profiler = start_py_spy(py_spy, root / "profile.txt") if py_spy else None
            broker = srv.server.broker
            broker_pid = broker.process.pid if broker is not None and broker.process is not None else None
            cpu0, broker0 = _self_cpu(), _proc_cpu(broker_pid)
            agents0 = sum(_proc_cpu(pid) for pid in agents.pids)
            t0 = time.perf_counter()
            iot.create_ota_update(
                otaUpdateId=OTA_ID, targets=[group["thingGroupArn"]], protocols=["MQTT"],
                targetSelection="SNAPSHOT",
                roleArn=f"arn:aws:iam::{srv.settings.account_id}:role/overair-ota",
                files=[{"fileName": "/firmware/app.bin", "fileVersion": "1.1.0",
                        "fileLocation": {"s3Location": {"bucket": BUCKET, "key": "app/firmware-1.1.0.bin",
                                                        "version": version}},
                        "codeSigning": {"startSigningJobParameter": {
                            "signingProfileName": DEV_PROFILE,
                            "destination": {"s3Destination": {"bucket": BUCKET, "prefix": "signed/"}}}}}])
            created_at: float | None = None
            counts: dict[str, int] = {}
            deadline = t0 + timeout
            # Polled in-process (a COUNT by status): every 20 ms until the job exists, then
            # every 100 ms, which bounds the error of the end time to 0.1 s while costing
            # the server's GIL little (a 20 ms poll showed up as 6% of its samples).
            while time.perf_counter() < deadline:
                found = _job_counts(srv, job_id)
                if found is not None:
                    created_at = created_at or time.perf_counter()
                    counts = found
                    if sum(n for s, n in counts.items() if s in TERMINAL) >= devices:
                        break
                elif srv.server.ota.get(OTA_ID).status == "CREATE_FAILED":
                    raise RuntimeError(f"CreateOTAUpdate failed: {srv.server.ota.get(OTA_ID).error_info}")
                time.sleep(0.1 if created_at else 0.02)
            t_end = time.perf_counter()
            cpu_self, cpu_broker = _self_cpu() - cpu0, _proc_cpu(broker_pid) - broker0
            cpu_agents = sum(_proc_cpu(pid) for pid in agents.pids) - agents0
            profile = stop_py_spy(profiler) if profiler else None
            data = agents.finish()
            stream_id = srv.server.ota.get(OTA_ID).stream_id or ""
    total_blocks = -(-size // BLOCK_SIZE)
    per_device = [data.last_block[n] - data.first_request[n] for n in names
                  if n in data.first_request and n in data.last_block]
    first = min(data.first_request.values(), default=t0)
    last = max(data.last_block.values(), default=first)
    return StreamResult(
        devices=devices, agent_processes=agent_processes, file_size=size, stream_id=stream_id,
        t_created=None if created_at is None else created_at - t0,
        t_notified=_span(data.notified, t0), t_requested=_span(data.first_request, t0),
        download_s=last - first, end_to_end_s=t_end - t0, per_device_s=per_device,
        statuses=counts, blocks_received=sum(data.blocks.values()), blocks_expected=total_blocks * devices,
        complete_devices=sum(1 for got, total in data.stored.values() if total and got == total),
        cpu_self_s=cpu_self, cpu_agents_s=cpu_agents, cpu_broker_s=cpu_broker,
        cycles=data.cycles, service_calls=timer.calls, profile=profile)


# --- the lean-device phase -------------------------------------------------------------------

@dataclass
class LeanResult:
    devices: int
    processes: int
    file_size: int
    stream_id: str
    download_s: float  # first request -> last block, fleet-wide
    results: list[lean_devices.DeviceResult]
    cpu_server_s: float  # this process (the server) over the download
    cpu_broker_s: float
    cpu_devices_s: float
    service_calls: dict[str, list[float]]


def lean_phase(root: Path, devices: int, size: int, processes: int, timeout: float) -> LeanResult:
    """The same signed OTA update as the agent phase, downloaded by protocol-level devices
    (bench/lean_devices.py): the delivery path without the devices' own Python cost."""
    with running_server(root / "server") as srv:
        iot, s3 = srv.client("iot"), srv.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        group = iot.create_thing_group(thingGroupName=GROUP)
        factory = root / "factory-1.0.0.bin"
        factory.write_bytes(make_firmware(Version(1, 0, 0), size, seed="bench-factory"))
        names = thing_names(devices)
        bundles = _provision_all(srv, root / "devices", names, factory)
        image = make_firmware(Version(1, 1, 0), size, seed="bench-update")
        version = s3.put_object(Bucket=BUCKET, Key="app/firmware-1.1.0.bin", Body=image)["VersionId"]
        iot.create_ota_update(
            otaUpdateId=OTA_ID, targets=[group["thingGroupArn"]], protocols=["MQTT"],
            targetSelection="SNAPSHOT", roleArn=f"arn:aws:iam::{srv.settings.account_id}:role/overair-ota",
            files=[{"fileName": "/firmware/app.bin", "fileVersion": "1.1.0",
                    "fileLocation": {"s3Location": {"bucket": BUCKET, "key": "app/firmware-1.1.0.bin",
                                                    "version": version}},
                    "codeSigning": {"startSigningJobParameter": {"signingProfileName": DEV_PROFILE}}}])
        deadline = time.monotonic() + timeout
        while srv.server.ota.get(OTA_ID).status not in ("CREATE_COMPLETE", "CREATE_FAILED"):
            if time.monotonic() > deadline:
                raise RuntimeError("CreateOTAUpdate did not finish")
            time.sleep(0.05)
        ota = srv.server.ota.get(OTA_ID)
        if ota.status != "CREATE_COMPLETE" or not ota.stream_id:
            raise RuntimeError(f"CreateOTAUpdate failed: {ota.error_info}")
        stream_id = ota.stream_id
        specs = [lean_devices.DeviceSpec(name, bundle) for name, bundle in zip(names, bundles, strict=True)]
        sha = hashlib.sha256(image).hexdigest()
        context = multiprocessing.get_context("spawn")
        pipes, procs = [], []
        for i in range(processes):
            parent, child = context.Pipe()
            proc = context.Process(target=lean_devices.device_process, args=(
                specs[i::processes], "127.0.0.1", srv.settings.mqtt_port, stream_id, size, sha, BLOCK_SIZE,
                BLOCKS_PER_REQUEST, child), daemon=True)
            proc.start()
            pipes.append(parent)
            procs.append(proc)
        for pipe in pipes:
            if not pipe.poll(timeout) or pipe.recv() != "ready":
                raise RuntimeError("the lean devices did not connect")
        timer = ServiceTimer(srv.server.devices)
        timer.arm()
        broker = srv.server.broker
        broker_pid = broker.process.pid if broker is not None and broker.process is not None else None
        cpu0, broker0 = _self_cpu(), _proc_cpu(broker_pid)
        devices0 = sum(_proc_cpu(p.pid) for p in procs)
        for pipe in pipes:
            pipe.send("go")
        results: list[lean_devices.DeviceResult] = []
        cpu_devices = 0.0
        for pipe, proc in zip(pipes, procs, strict=True):
            if not pipe.poll(timeout):
                raise RuntimeError("the lean devices did not finish")
            cpu_devices += _proc_cpu(proc.pid)
            results.extend(pipe.recv())
        cpu_server, cpu_broker = _self_cpu() - cpu0, _proc_cpu(broker_pid) - broker0
        for proc in procs:
            proc.join(10)
    first = min((r.first_request for r in results if r.first_request), default=0.0)
    last = max((r.last_block for r in results), default=first)
    return LeanResult(devices, processes, size, stream_id, last - first, results, cpu_server,
                      cpu_broker, cpu_devices - devices0, timer.calls)


def report_lean(lean: LeanResult) -> float:
    """Prints the lean-device figures; returns the goodput in MiB/s."""
    n, size = lean.devices, lean.file_size
    ok = [r for r in lean.results if r.verified and not r.error]
    print(f"lean devices: {n} in {lean.processes} processes, image {size / MIB:.2f} MiB "
          f"({-(-size // BLOCK_SIZE)} blocks of {BLOCK_SIZE} B, {BLOCKS_PER_REQUEST} per request), "
          f"MQTT + mutual TLS 1.2, {os.cpu_count()} CPUs")
    print(f"devices with the whole image, SHA-256 verified: {len(ok)}/{n}")
    for failed in [r for r in lean.results if r.error][:5]:
        print(f"  {failed.thing}: {failed.error}")
    print(f"download (first request -> last block, fleet-wide): {lean.download_s:7.3f} s")
    cycles = [c for r in lean.results for c in r.cycles]
    if cycles:
        print(f"GetStream cycle (request -> last block of its answer), {len(cycles)} requests: "
              f"mean {1000 * statistics.fmean(cycles):.1f} ms, "
              f"median {1000 * statistics.median(cycles):.1f} ms")
    wall = lean.download_s or 1.0
    print(f"CPU over the download: server process {lean.cpu_server_s:.2f} s "
          f"({100 * lean.cpu_server_s / wall:.0f}% of one core), its Mosquitto {lean.cpu_broker_s:.2f} s "
          f"({100 * lean.cpu_broker_s / wall:.0f}%), devices {lean.cpu_devices_s:.2f} s")
    for kind, durations in sorted(lean.service_calls.items()):
        print(f"server DeviceService {kind:<22}: {len(durations):5d} calls, "
              f"mean {1000 * statistics.fmean(durations):6.3f} ms, total {sum(durations):6.2f} s")
    goodput = size * len(ok) / MIB / lean.download_s if lean.download_s > 0 else 0.0
    print(f"stream goodput: {goodput:8.2f} MiB/s ({size * len(ok) / MIB:.0f} MiB of verified image)")
    return goodput


def raw_summary(raw_runs: list[RawResult]) -> float:
    for i, raw in enumerate(raw_runs, 1):
        flag = "" if raw.complete else "  <-- messages lost"
        print(f"raw Mosquitto run {i}: {raw.image_bytes / MIB / raw.seconds:8.2f} MiB/s of image bytes "
              f"({raw.seconds:.3f} s, {raw.payload_bytes / MIB:.1f} MiB of CBOR messages, Mosquitto CPU "
              f"{100 * raw.cpu_broker_s / raw.seconds:.0f}% of one core){flag}")
    complete = [r for r in raw_runs if r.complete] or raw_runs
    best = max(r.image_bytes / MIB / r.seconds for r in complete)
    print(f"raw Mosquitto forwarding (best of {len(raw_runs)}): {best:8.2f} MiB/s")
    return best


def thing_names(devices: int) -> list[str]:
    return [f"bench-dev-{i:04d}" for i in range(devices)]


def _self_cpu() -> float:
    times = os.times()
    return times.user + times.system  # every thread of this process


def _proc_cpu(pid: int | None) -> float:
    """User + system CPU seconds of another process, from /proc (Linux); 0 if unknown."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


# --- optional profile ----------------------------------------------------------------------

@dataclass
class _Profiler:
    process: subprocess.Popen[bytes]
    output: Path


def start_py_spy(binary: str, output: Path) -> _Profiler:
    # --nonblocking: pausing 200+ threads 100 times a second slows this process down
    # several-fold (mostly in the kernel) and so measures another program. --gil: only the
    # thread holding the GIL is sampled, i.e. where the Python CPU time goes; with --idle
    # off, py-spy's idle detection still counts threads blocked in select() as busy.
    process = subprocess.Popen([binary, "record", "--pid", str(os.getpid()), "--format", "raw",
                                "--nonblocking", "--gil", "--rate", "100", "--output", str(output)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # py-spy needs a moment to attach; samples before t0 are few and idle
    return _Profiler(process, output)


@dataclass
class Profile:
    samples: int
    components: list[tuple[str, int]]  # which thread / service each sample was in
    own: list[tuple[str, int]]  # innermost Python function of each sample
    overair: list[tuple[str, int]]  # overair functions anywhere on the stack, once per sample


# A sample belongs to the first component whose marker is on its stack.
COMPONENTS = (
    ("DeviceService.handle", "server: device service workers (GetStream, Jobs requests)"),
    ("OtaManager.process", "server: CreateOTAUpdate processing (sign, stream, job)"),
    ("JobScheduler.tick", "server: job scheduler (timeouts, aborts, staged releases)"),
    ("Runtime.run", "agents: runtime threads (state machine, staging writes, verify)"),
    ("Client._thread_main", "agents: paho network threads (TLS, MQTT framing)"),
    ("ServerThread._main", "server: event loop (gmqtt link to the broker, HTTP API)"),
    ("stream_phase", "bench: main thread (polling the job counts)"),
    ("rollout_phase", "bench: main thread (polling DescribeJob)"),
)


def stop_py_spy(profiler: _Profiler) -> Profile | None:
    profiler.process.send_signal(signal.SIGINT)
    try:
        profiler.process.wait(300)  # at 10,000 devices py-spy needs minutes to write its samples
    except subprocess.TimeoutExpired:
        profiler.process.kill()
        profiler.process.wait()
        return None
    if not profiler.output.exists():
        return None
    components: Counter[str] = Counter()
    own: Counter[str] = Counter()
    overair: Counter[str] = Counter()
    total = 0
    for line in profiler.output.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(frame) for frame in stack.split(";")]
        joined = ";".join(frames)
        components[next((label for marker, label in COMPONENTS if marker in joined), "other")] += count
        own[frames[-1]] += count
        for name in {f for f in frames if "(overair/" in f}:
            overair[name] += count
        total += count
    return Profile(total, components.most_common(), own.most_common(20), overair.most_common(20))


def _short(frame: str) -> str:
    # "function (overair/agent/runtime.py:123)" -> "function (overair/agent/runtime.py)"
    match = re.match(r"(.*) \((.*?):\d+\)$", frame)
    return f"{match.group(1)} ({match.group(2)})" if match else frame


# --- the limit: Mosquitto alone ------------------------------------------------------------

@dataclass
class RawResult:
    seconds: float
    payload_bytes: int  # CBOR messages, topic and MQTT framing excluded
    image_bytes: int  # the image bytes those messages carry
    complete: bool  # every subscriber got every message
    cpu_broker_s: float  # CPU of the raw Mosquitto during the run


class RawBroker:
    """A Mosquitto of our own: one listener, mutual TLS required, TLS 1.2, identity as
    username, like the server's broker; no ACL (every authenticated client may use every
    topic), no queue limit and Nagle off (see the configuration)."""

    def __init__(self, workdir: Path) -> None:
        now = dt.datetime.now(dt.UTC)
        self.dir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        ca = pki.make_root_ca("bench raw CA", now)
        server = pki.issue_server_cert(ca, ("localhost", "127.0.0.1"), now)
        self.ca = self._write("ca.pem", ca.cert_pem)
        self._write("server.crt", server.cert_pem)
        self._write("server.key", server.key_pem)
        self._ca, self._now = ca, now
        self.port = free_port()
        self._subscribed = 0
        self._log_lock = threading.Condition()
        self._running = False
        config = [
            "per_listener_settings false", "allow_anonymous false", "persistence false",
            "log_dest stderr", "log_type error", "log_type warning", "log_type notice",
            "log_type information", "log_type subscribe",  # subscribe lines tell when subscribers are ready
            "max_packet_size 1048576",
            # The limit run sends every block without waiting for requests; the default
            # (1000) could drop QoS 0 messages queued for one subscriber. The stream never
            # has more than 8 outstanding per device, so this changes nothing for it.
            "max_queued_messages 0",
            # Nagle off on every link of the limit run (here, the publisher's socket and
            # mosquitto_sub --nodelay): else the last partial TCP segment of a burst waits
            # for a delayed ACK (40 ms on Linux), a fixed stall that is not forwarding work.
            "set_tcp_nodelay true",
            f"listener {self.port} 127.0.0.1",
            f"cafile {self.ca}", f"certfile {workdir / 'server.crt'}", f"keyfile {workdir / 'server.key'}",
            "require_certificate true", "use_identity_as_username true", "tls_version tlsv1.2",
        ]
        if os.geteuid() == 0:
            config.insert(0, "user root")  # else Mosquitto drops to `mosquitto`, who cannot read the keys
        self.config = self._write("mosquitto.conf", ("\n".join(config) + "\n").encode())
        self.process: subprocess.Popen[bytes] | None = None

    def _write(self, name: str, data: bytes) -> Path:
        path = self.dir / name
        path.write_bytes(data)
        path.chmod(0o600)
        return path

    def client_cert(self, cn: str) -> tuple[Path, Path]:
        issued = pki.issue_client_cert(self._ca, cn, self._now)
        return self._write(f"{cn}.crt", issued.cert_pem), self._write(f"{cn}.key", issued.key_pem)

    def publisher(self, cert: tuple[Path, Path], client_id: str) -> ssl.SSLSocket:
        """The limit run's one publisher: mutual TLS, Nagle off, MQTT CONNECT accepted."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(cert[0]), str(cert[1]))
        raw_socket = socket.create_connection(("127.0.0.1", self.port))
        raw_socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        publisher = context.wrap_socket(raw_socket, server_hostname="127.0.0.1")
        publisher.sendall(lean_devices.mqtt_connect(client_id))
        if publisher.recv(4)[:1] != b"\x20":
            raise RuntimeError("the raw broker refused the publisher")
        return publisher

    def start(self, timeout: float = 10.0) -> None:
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        threading.Thread(target=self._read_log, name="raw-broker-log", daemon=True).start()
        with self._log_lock:
            if not self._log_lock.wait_for(lambda: self._running, timeout):
                raise RuntimeError("the raw Mosquitto did not start")

    def _read_log(self) -> None:
        assert self.process is not None
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            line = raw.decode(errors="replace")
            with self._log_lock:
                if " running" in line and "mosquitto version" in line:
                    self._running = True
                elif re.match(r"^\d+: \S+ \d \S+$", line.strip()):  # "<time>: <client> <qos> <topic>"
                    self._subscribed += 1
                self._log_lock.notify_all()

    def wait_subscribed(self, count: int, timeout: float) -> bool:
        with self._log_lock:
            return self._log_lock.wait_for(lambda: self._subscribed >= count, timeout)

    def reset_subscribed(self) -> None:
        with self._log_lock:
            self._subscribed = 0

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def raw_forwarding(broker: RawBroker, things: list[str], stream_id: str, image: bytes,
                   sub_certs: dict[str, tuple[Path, Path]], pub_cert: tuple[Path, Path],
                   timeout: float) -> RawResult:
    """One run: N mosquitto_sub, one publisher, every block of `image` to every thing."""
    messages = [streamcodec.encode_data_block(streamcodec.DataBlock(0, i, image[off:off + BLOCK_SIZE]))
                for i, off in enumerate(range(0, len(image), BLOCK_SIZE))]
    data_topics = [topics.stream_data_topic(thing, stream_id, "cbor") for thing in things]
    # Interleaved as the service answers: a batch of 8 blocks for one device, then the next.
    wire = bytearray()
    for start in range(0, len(messages), BLOCKS_PER_REQUEST):
        batch = messages[start:start + BLOCKS_PER_REQUEST]
        for topic in data_topics:
            for message in batch:
                wire += lean_devices.mqtt_publish_qos0(topic, message)
    broker.reset_subscribed()
    subscribers: list[subprocess.Popen[bytes]] = []
    publisher: ssl.SSLSocket | None = None
    try:
        for thing, topic in zip(things, data_topics, strict=True):
            cert, key = sub_certs[thing]
            subscribers.append(subprocess.Popen(
                [MOSQUITTO_SUB, "-h", "127.0.0.1", "-p", str(broker.port), "--cafile", str(broker.ca),
                 "--cert", str(cert), "--key", str(key), "-i", f"sub-{thing}", "-t", topic, "-q", "0",
                 "-C", str(len(messages)), "-W", str(int(timeout)), "-N", "--nodelay"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        if not broker.wait_subscribed(len(things), 30):
            raise RuntimeError("the raw subscribers did not all subscribe within 30 s")
        publisher = broker.publisher(pub_cert, "bench-publisher")
        view = memoryview(wire)
        pid = broker.process.pid if broker.process is not None else None
        broker0 = _proc_cpu(pid)
        # Popen.wait(timeout) polls with sleeps of up to 50 ms, which would be counted;
        # a plain wait() blocks in waitpid and returns at once. -W bounds each subscriber's
        # life, and this watchdog bounds it again should one not exit.
        def kill_all() -> None:
            for p in subscribers:
                p.kill()

        watchdog = threading.Timer(timeout + 10, kill_all)
        watchdog.start()
        started = time.perf_counter()
        for off in range(0, len(view), 1 << 20):
            publisher.sendall(view[off:off + (1 << 20)])
        codes = [p.wait() for p in subscribers]
        seconds = time.perf_counter() - started
        watchdog.cancel()
        cpu_broker = _proc_cpu(pid) - broker0
        publisher.sendall(b"\xe0\x00")  # DISCONNECT
    finally:
        if publisher is not None:
            publisher.close()
        for p in subscribers:
            if p.poll() is None:
                p.kill()
                p.wait()
    return RawResult(seconds=seconds, payload_bytes=sum(len(m) for m in messages) * len(things),
                     image_bytes=len(image) * len(things), complete=all(c == 0 for c in codes),
                     cpu_broker_s=cpu_broker)


def raw_phase(root: Path, things: list[str], stream_id: str, image: bytes, runs: int,
              timeout: float) -> list[RawResult]:
    broker = RawBroker(root / "raw-broker")
    sub_certs = {thing: broker.client_cert(thing) for thing in things}
    pub_cert = broker.client_cert("bench-publisher")
    broker.start()
    try:
        return [raw_forwarding(broker, things, stream_id, image, sub_certs, pub_cert, timeout)
                for _ in range(runs)]
    finally:
        broker.stop()


# --- main ----------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--size-mib", type=float, default=1.0, help="image size (at most 4: 1024 blocks)")
    parser.add_argument("--agent-processes", type=int, default=0,
                        help="run the agents in this many child processes (default 0: in this process)")
    parser.add_argument("--raw-runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for all SUCCEEDED")
    parser.add_argument("--py-spy", metavar="PATH", help="profile the stream phase with this py-spy binary")
    parser.add_argument("--devices-kind", choices=("lean", "agent"), default="lean",
                        help="lean: protocol-level devices (the delivery path; the ratio's subject); "
                        "agent: full overair agents end to end")
    parser.add_argument("--device-processes", type=int, default=2, help="processes for the lean devices")
    args = parser.parse_args()
    size = int(args.size_mib * MIB)
    image = make_firmware(Version(1, 1, 0), size, seed="bench-update")
    with tempfile.TemporaryDirectory(prefix="overair-bench-") as tmp:
        root = Path(tmp)
        if args.devices_kind == "lean":
            lean = lean_phase(root, args.devices, size, args.device_processes, args.timeout)
            raw_runs = raw_phase(root, thing_names(args.devices), lean.stream_id, image, args.raw_runs,
                                 args.timeout)
            goodput = report_lean(lean)
            best = raw_summary(raw_runs)
            print(f"ratio stream goodput / raw forwarding: {goodput / best:.3f} (target >= 0.6)")
            return
        stream = stream_phase(root, args.devices, size, args.timeout, args.agent_processes, args.py_spy)
        # The same thing names and stream id give topics of the same length as the stream's.
        raw_runs = raw_phase(root, thing_names(args.devices), stream.stream_id or "ota-0123456789", image,
                             args.raw_runs, args.timeout)
    report(stream, raw_runs)


def _since(label: str, span: tuple[float, float] | None) -> str:
    if span is None:
        return f"CreateOTAUpdate -> {label}: never seen"
    return f"CreateOTAUpdate -> {label}: first {span[0]:6.2f} s, last {span[1]:6.2f} s"


def report(stream: StreamResult, raw_runs: list[RawResult]) -> None:
    n, size = stream.devices, stream.file_size
    image_mib = size * n / MIB
    succeeded = stream.statuses.get("SUCCEEDED", 0)
    where = (f"in {stream.agent_processes} child processes" if stream.agent_processes
             else "in the server's process")
    print(f"devices: {n} (agents {where}), image {size / MIB:.2f} MiB ({-(-size // BLOCK_SIZE)} blocks of "
          f"{BLOCK_SIZE} B, {BLOCKS_PER_REQUEST} per request), MQTT + mutual TLS 1.2, {os.cpu_count()} CPUs")
    print(f"executions: {dict(sorted(stream.statuses.items()))}"
          + ("" if succeeded == n else f"  <-- only {succeeded}/{n} SUCCEEDED"))
    print(f"data blocks received: {stream.blocks_received} (expected {stream.blocks_expected}); "
          f"devices that stored every block: {stream.complete_devices}/{n}")
    created = "never seen" if stream.t_created is None else f"{stream.t_created:6.2f} s"
    print(f"CreateOTAUpdate -> job created (20 ms poll): {created}")
    print(_since("notify-next at device", stream.t_notified))
    print(_since("device's first block request", stream.t_requested))
    print(f"download (first request -> last block, fleet-wide): {stream.download_s:7.2f} s")
    if stream.per_device_s:
        per = sorted(stream.per_device_s)
        print(f"  per device (own first request -> own last block): min {per[0]:.2f} s, "
              f"median {statistics.median(per):.2f} s, max {per[-1]:.2f} s")
    print(f"CreateOTAUpdate -> all SUCCEEDED: {stream.end_to_end_s:7.2f} s")
    wall = stream.end_to_end_s
    agents = f", agents' processes {stream.cpu_agents_s:.1f} s" if stream.agent_processes else ""
    print(f"CPU over that time: this process {stream.cpu_self_s:.1f} s "
          f"({100 * stream.cpu_self_s / wall:.0f}% of one core){agents}, "
          f"server's Mosquitto {stream.cpu_broker_s:.1f} s ({100 * stream.cpu_broker_s / wall:.0f}%)")
    if stream.cycles:
        print(f"GetStream cycle at the devices ({len(stream.cycles)} requests), mean / median:")
        for i, part in enumerate(("request published -> first block delivered",
                                  "first -> last block of the answer",
                                  "last block -> next request (agent stores 8 blocks)")):
            values = [c[i] for c in stream.cycles]
            print(f"  {part:<51} {1000 * statistics.fmean(values):7.1f} / "
                  f"{1000 * statistics.median(values):6.1f} ms")
    for kind, durations in sorted(stream.service_calls.items()):
        ordered = sorted(durations)
        p99 = ordered[int(0.99 * (len(ordered) - 1))]
        print(f"server DeviceService {kind:<22}: {len(ordered):5d} calls, "
              f"mean {1000 * statistics.fmean(ordered):6.2f} ms, p99 {1000 * p99:6.2f} ms, "
              f"total {sum(ordered):6.2f} s")
    goodput = image_mib / stream.download_s if stream.download_s > 0 else 0.0
    print(f"stream goodput: {goodput:8.2f} MiB/s ({image_mib:.0f} MiB of image to {n} devices)")
    best = raw_summary(raw_runs)
    print(f"ratio stream goodput / raw forwarding: {goodput / best:.3f} (target >= 0.6)")
    if stream.profile is not None:
        print_profile(stream.profile)


def print_profile(prof: Profile) -> None:
    if not prof.samples:
        return
    print(f"\nwhere the Python time goes (py-spy --gil, {prof.samples} samples of the thread "
          "holding the GIL, CreateOTAUpdate -> all SUCCEEDED)")
    for title, rows in (("by thread / service:", prof.components),
                        ("innermost Python function:", prof.own),
                        ("overair functions, inclusive (anywhere on the stack):", prof.overair)):
        print(f"  {title}")
        for name, count in rows:
            print(f"    {100 * count / prof.samples:5.1f}%  {name}")


if __name__ == "__main__":
    main()
