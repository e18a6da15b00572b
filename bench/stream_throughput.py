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
run counts. Both phases run one after the other in this process on a quiet machine; the
ratio goodput / raw says how much of the broker's forwarding capacity a rollout uses.

To see where the time of the stream phase goes, give `--py-spy PATH` (a py-spy binary,
not a project dependency): it samples this process (all threads) from the
CreateOTAUpdate call until all SUCCEEDED and prints the functions with the most samples.
"""

from __future__ import annotations

import argparse
import datetime as dt
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
from pathlib import Path
from typing import Any

from overair.agent.config import AgentConfig
from overair.agent.runtime import Runtime
from overair.agent.transport.base import Transport, TransportCallbacks
from overair.agent.transport.mqtt import MqttTransport
from overair.cli.provisioning import provision_thing
from overair.core import streamcodec, topics
from overair.core.versions import Version
from overair.server import pki
from overair.server.api.contract import ApiError
from overair.server.bootstrap import DEV_PROFILE
from overair.sim.firmware import make_firmware
from overair.sim.fleet import Fleet
from tests.server_harness import MOSQUITTO, RunningServer, free_port, running_server

BUCKET = "bench-firmware"
GROUP = "bench-stream"
OTA_ID = "bench-stream"
BLOCK_SIZE = 4096  # what provisioning writes into agent.toml ([ota] block_size)
BLOCKS_PER_REQUEST = 8  # idem ([ota] blocks_per_request): the service answers in batches of 8
MOSQUITTO_SUB = "/usr/bin/mosquitto_sub"
TERMINAL = {"SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT", "CANCELED", "REMOVED"}
MIB = 1024 * 1024


# --- timestamps inside the agents ----------------------------------------------------------

class DownloadProbe:
    """Stamps, per device, the first GetStream request it publishes and every data block
    it receives, in its MQTT transport: the publish as the runtime hands it to paho, the
    block as paho's network thread delivers it (before the agent's queue). The Fleet
    progress callback alone would miss the first request and its round trip: it reports
    a block only once the agent has stored it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.first_request: dict[str, float] = {}
        self.last_block: dict[str, float] = {}
        self.blocks: Counter[str] = Counter()
        self.block_bytes: Counter[str] = Counter()
        self.progress_total: dict[str, int] = {}
        self.progress_received: dict[str, int] = {}

    def on_publish(self, thing: str, topic: str) -> None:
        if "/streams/" in topic and "/get/" in topic:
            now = time.perf_counter()
            with self._lock:
                self.first_request.setdefault(thing, now)

    def on_message(self, thing: str, topic: str, payload: bytes) -> None:
        if "/streams/" in topic and "/data/" in topic:
            now = time.perf_counter()
            with self._lock:
                self.last_block[thing] = now
                self.blocks[thing] += 1
                self.block_bytes[thing] += len(payload)

    def progress(self, thing: str, _job: str, received: int, total: int) -> None:
        # Fleet's progress callback: blocks the agent has stored, to check completeness.
        with self._lock:
            self.progress_received[thing] = received
            self.progress_total[thing] = total

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
        super().__init__(bundles, progress=probe.progress)
        self.runtimes = {config.thing_name: Runtime(config, transport_factory=probe.factory(config),
                                                    progress=_progress_of(probe, config.thing_name))
                         for config in self.configs}


def _progress_of(probe: DownloadProbe, thing: str) -> Callable[[str, int, int], None]:
    def report(job_id: str, received: int, total: int) -> None:
        probe.progress(thing, job_id, received, total)
    return report


# --- the stream phase ----------------------------------------------------------------------

@dataclass
class StreamResult:
    devices: int
    file_size: int
    stream_id: str
    create_complete_s: float  # CreateOTAUpdate call -> job created (signing included)
    first_request_s: float  # CreateOTAUpdate call -> first block request
    download_s: float  # first block request -> last block received, fleet-wide
    end_to_end_s: float  # CreateOTAUpdate call -> all SUCCEEDED (or the timeout)
    per_device_s: list[float]  # each device's own first request -> last block
    request_spread_s: float  # first to last device's first block request
    statuses: dict[str, int]
    blocks_received: int
    blocks_expected: int
    profile: list[tuple[str, int]] = field(default_factory=list)
    profile_samples: int = 0


def _provision_all(srv: RunningServer, root: Path, names: list[str], factory: Path,
                   workers: int = 8) -> list[Path]:
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
                                mqtt_host="127.0.0.1", mqtt_port=srv.settings.mqtt_port, group=GROUP,
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


def stream_phase(root: Path, devices: int, size: int, timeout: float, py_spy: str | None) -> StreamResult:
    with running_server(root / "server") as srv:
        iot, s3 = srv.client("iot"), srv.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        group = iot.create_thing_group(thingGroupName=GROUP)
        factory = root / "factory-1.0.0.bin"
        factory.write_bytes(make_firmware(Version(1, 0, 0), size, seed="bench-factory"))
        names = [f"bench-dev-{i:04d}" for i in range(devices)]
        started = time.perf_counter()
        bundles = _provision_all(srv, root / "devices", names, factory)
        print(f"provisioned {devices} devices in {time.perf_counter() - started:.1f} s", flush=True)
        image = make_firmware(Version(1, 1, 0), size, seed="bench-update")
        version = s3.put_object(Bucket=BUCKET, Key="app/firmware-1.1.0.bin", Body=image)["VersionId"]
        probe = DownloadProbe()
        job_id = f"AFR_OTA-{OTA_ID}"
        with ProbedFleet(bundles, probe) as fleet:
            if not fleet.wait(lambda snaps: all(s.connected for s in snaps.values()), timeout=60):
                raise RuntimeError("not every agent connected within 60 s")
            # Each agent asks for its next job on connect; let those answers land so the
            # measurement starts from an idle fleet.
            time.sleep(1.0)
            profiler = _start_py_spy(py_spy, root / "profile.txt") if py_spy else None
            t0 = time.perf_counter()
            iot.create_ota_update(
                otaUpdateId=OTA_ID, targets=[group["thingGroupArn"]], protocols=["MQTT"],
                targetSelection="SNAPSHOT", roleArn=f"arn:aws:iam::{srv.settings.account_id}:role/ota",
                files=[{"fileName": "/firmware/app.bin", "fileVersion": "1.1.0",
                        "fileLocation": {"s3Location": {"bucket": BUCKET, "key": "app/firmware-1.1.0.bin",
                                                        "version": version}},
                        "codeSigning": {"startSigningJobParameter": {
                            "signingProfileName": DEV_PROFILE,
                            "destination": {"s3Destination": {"bucket": BUCKET, "prefix": "signed/"}}}}}])
            created_at: float | None = None
            counts: dict[str, int] = {}
            deadline = t0 + timeout
            # Polled in-process (a COUNT by status), every 20 ms: cheap next to the work
            # measured, and it bounds the error of the end time to 20 ms.
            while time.perf_counter() < deadline:
                found = _job_counts(srv, job_id)
                if found is not None:
                    created_at = created_at or time.perf_counter()
                    counts = found
                    if sum(n for s, n in counts.items() if s in TERMINAL) >= devices:
                        break
                elif srv.server.ota.get(OTA_ID).status == "CREATE_FAILED":
                    raise RuntimeError(f"CreateOTAUpdate failed: {srv.server.ota.get(OTA_ID).error_info}")
                time.sleep(0.02)
            t_end = time.perf_counter()
            profile = _stop_py_spy(profiler) if profiler else ([], 0)
            stream_id = srv.server.ota.get(OTA_ID).stream_id or ""
    total_blocks = -(-size // BLOCK_SIZE)
    requested = [probe.first_request[n] for n in names if n in probe.first_request]
    last = [probe.last_block[n] for n in names if n in probe.last_block]
    per_device = [probe.last_block[n] - probe.first_request[n] for n in names
                  if n in probe.first_request and n in probe.last_block]
    first, end = (min(requested), max(last)) if requested and last else (t0, t0)
    return StreamResult(
        devices=devices, file_size=size, stream_id=stream_id,
        create_complete_s=(created_at or t_end) - t0, first_request_s=first - t0,
        download_s=end - first, end_to_end_s=t_end - t0, per_device_s=per_device,
        request_spread_s=(max(requested) - min(requested)) if requested else 0.0,
        statuses=counts, blocks_received=sum(probe.blocks.values()),
        blocks_expected=total_blocks * devices, profile=profile[0], profile_samples=profile[1])


# --- optional profile ----------------------------------------------------------------------

@dataclass
class _Profiler:
    process: subprocess.Popen[bytes]
    output: Path


def _start_py_spy(binary: str, output: Path) -> _Profiler:
    process = subprocess.Popen([binary, "record", "--pid", str(os.getpid()), "--format", "raw",
                                "--rate", "200", "--output", str(output)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # py-spy needs a moment to attach; samples before t0 are few and idle
    return _Profiler(process, output)


def _stop_py_spy(profiler: _Profiler) -> tuple[list[tuple[str, int]], int]:
    """Stop py-spy and total its samples by function: 'self' (innermost frame) counts."""
    profiler.process.send_signal(signal.SIGINT)
    try:
        profiler.process.wait(30)
    except subprocess.TimeoutExpired:
        profiler.process.kill()
        return [], 0
    own: Counter[str] = Counter()
    total = 0
    if not profiler.output.exists():
        return [], 0
    for line in profiler.output.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        own[_short(frames[-1])] += int(count)
        total += int(count)
    return own.most_common(25), total


def _short(frame: str) -> str:
    # "function (path/to/module.py:123)" -> "function (module.py)"
    match = re.match(r"(.*) \((.*?):\d+\)$", frame)
    if not match:
        return frame
    return f"{match.group(1)} ({Path(match.group(2)).name})"


# --- the limit: Mosquitto alone ------------------------------------------------------------

def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _mqtt_string(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def mqtt_connect(client_id: str) -> bytes:
    # MQTT 3.1.1, clean session, keep-alive 0 (the publisher sends nothing but PUBLISH).
    body = _mqtt_string("MQTT") + bytes([4, 0x02]) + (0).to_bytes(2, "big") + _mqtt_string(client_id)
    return b"\x10" + _remaining_length(len(body)) + body


def mqtt_publish_qos0(topic: str, payload: bytes) -> bytes:
    body = _mqtt_string(topic) + payload
    return b"\x30" + _remaining_length(len(body)) + body


@dataclass
class RawResult:
    seconds: float
    payload_bytes: int  # CBOR messages, topic and MQTT framing excluded
    image_bytes: int  # the image bytes those messages carry
    complete: bool  # every subscriber got every message


class RawBroker:
    """A Mosquitto of our own: one listener, mutual TLS required, no ACL (every
    authenticated client may use every topic), TLS 1.2 like the server's broker."""

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

    def start(self, timeout: float = 10.0) -> None:
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        threading.Thread(target=self._read_log, name="raw-broker-log", daemon=True).start()
        with self._log_lock:
            if not self._log_lock.wait_for(lambda: self._running, timeout):
                raise RuntimeError("the raw Mosquitto did not start")

    def _read_log(self) -> None:
        assert self.process is not None and self.process.stderr is not None
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
                wire += mqtt_publish_qos0(topic, message)
    broker.reset_subscribed()
    subscribers: list[subprocess.Popen[bytes]] = []
    publisher: ssl.SSLSocket | None = None
    try:
        for thing, topic in zip(things, data_topics, strict=True):
            cert, key = sub_certs[thing]
            subscribers.append(subprocess.Popen(
                [MOSQUITTO_SUB, "-h", "127.0.0.1", "-p", str(broker.port), "--cafile", str(broker.ca),
                 "--cert", str(cert), "--key", str(key), "-i", f"sub-{thing}", "-t", topic, "-q", "0",
                 "-C", str(len(messages)), "-W", str(int(timeout)), "-N"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        if not broker.wait_subscribed(len(things), 30):
            raise RuntimeError("the raw subscribers did not all subscribe within 30 s")
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(broker.ca))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(pub_cert[0]), str(pub_cert[1]))
        publisher = context.wrap_socket(socket.create_connection(("127.0.0.1", broker.port)),
                                        server_hostname="127.0.0.1")
        publisher.sendall(mqtt_connect("bench-publisher"))
        if publisher.recv(4)[:1] != b"\x20":
            raise RuntimeError("the raw broker refused the publisher")
        view = memoryview(wire)
        started = time.perf_counter()
        for off in range(0, len(view), 1 << 20):
            publisher.sendall(view[off:off + (1 << 20)])
        codes = [p.wait(timeout + 10) for p in subscribers]
        seconds = time.perf_counter() - started
        publisher.sendall(b"\xe0\x00")  # DISCONNECT
    finally:
        if publisher is not None:
            publisher.close()
        for p in subscribers:
            if p.poll() is None:
                p.kill()
                p.wait()
    return RawResult(seconds=seconds, payload_bytes=sum(len(m) for m in messages) * len(things),
                     image_bytes=len(image) * len(things), complete=all(c == 0 for c in codes))


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
    parser.add_argument("--raw-runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for all SUCCEEDED")
    parser.add_argument("--py-spy", metavar="PATH", help="profile the stream phase with this py-spy binary")
    args = parser.parse_args()
    size = int(args.size_mib * MIB)
    with tempfile.TemporaryDirectory(prefix="overair-bench-") as tmp:
        root = Path(tmp)
        stream = stream_phase(root, args.devices, size, args.timeout, args.py_spy)
        names = [f"bench-dev-{i:04d}" for i in range(args.devices)]
        image = make_firmware(Version(1, 1, 0), size, seed="bench-update")
        raw_runs = raw_phase(root, names, stream.stream_id or "ota-0123456789", image, args.raw_runs,
                             args.timeout)
    report(stream, raw_runs)


def report(stream: StreamResult, raw_runs: list[RawResult]) -> None:
    n, size = stream.devices, stream.file_size
    image_mib = size * n / MIB
    succeeded = stream.statuses.get("SUCCEEDED", 0)
    print(f"devices: {n}, image {size / MIB:.2f} MiB ({-(-size // BLOCK_SIZE)} blocks of {BLOCK_SIZE} B, "
          f"{BLOCKS_PER_REQUEST} per request), MQTT + mutual TLS 1.2, {os.cpu_count()} CPUs")
    print(f"executions: {dict(sorted(stream.statuses.items()))}"
          + ("" if succeeded == n else f"  <-- only {succeeded}/{n} SUCCEEDED"))
    print(f"data blocks received: {stream.blocks_received} (expected {stream.blocks_expected})")
    print(f"CreateOTAUpdate -> job created:         {stream.create_complete_s:7.2f} s")
    print(f"CreateOTAUpdate -> first block request: {stream.first_request_s:7.2f} s "
          f"(first requests spread over {stream.request_spread_s:.2f} s)")
    print(f"download (first request -> last block): {stream.download_s:7.2f} s")
    if stream.per_device_s:
        per = sorted(stream.per_device_s)
        print(f"  per device: min {per[0]:.2f} s, median {statistics.median(per):.2f} s, max {per[-1]:.2f} s")
    print(f"CreateOTAUpdate -> all SUCCEEDED:       {stream.end_to_end_s:7.2f} s")
    goodput = image_mib / stream.download_s if stream.download_s > 0 else 0.0
    print(f"stream goodput: {goodput:8.2f} MiB/s ({image_mib:.0f} MiB of image to {n} devices)")
    for i, raw in enumerate(raw_runs, 1):
        flag = "" if raw.complete else "  <-- messages lost"
        print(f"raw Mosquitto run {i}: {raw.image_bytes / MIB / raw.seconds:8.2f} MiB/s of image bytes "
              f"({raw.seconds:.3f} s, {raw.payload_bytes / MIB:.1f} MiB of CBOR messages){flag}")
    complete = [r for r in raw_runs if r.complete] or raw_runs
    best = max(r.image_bytes / MIB / r.seconds for r in complete)
    print(f"raw Mosquitto forwarding (best of {len(raw_runs)}): {best:8.2f} MiB/s")
    print(f"ratio stream goodput / raw forwarding: {goodput / best:.3f} (target >= 0.6)")
    if stream.profile:
        print(f"\nwhere the time goes (py-spy, {stream.profile_samples} samples of all threads, "
              "innermost function):")
        for name, count in stream.profile:
            print(f"  {100 * count / stream.profile_samples:5.1f}%  {name}")


if __name__ == "__main__":
    main()
