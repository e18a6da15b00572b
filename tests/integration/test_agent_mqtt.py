"""The agent against a real Mosquitto with mutual TLS and a scripted service.

The service here is a small paho client that plays overair's device service exactly as
device-protocol.md specifies it (not overair's server): it answers `$next/get` on
`/accepted` and on `notify-next`, stores the whole `statusDetails` of each update, and
serves exactly `min(n, still needed)` CBOR blocks per GetStream request. The agent runs
in-process with LinuxSlots in a temporary directory and reboots in-process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from typer.testing import CliRunner

from overair.agent.config import load_config
from overair.agent.runtime import Runtime
from overair.cli.agent_main import app as agent_cli
from overair.core.bitmap import block_count, needed_blocks
from overair.core.jobdoc import OtaFile, OtaJobDocument
from overair.core.streamcodec import DataBlock, decode_get_stream, encode_data_block
from overair.core.versions import Version
from overair.sim.firmware import make_firmware
from overair.sim.fleet import Fleet
from tests.pki_helpers import Issued, issue, make_ca, make_signer, sign_file
from tests.ports import free_port

MOSQUITTO = "/usr/sbin/mosquitto"
V0_9 = Version(0, 9, 0)
V1 = Version(1, 0, 0)
V2 = Version(1, 1, 0)
BLOCK = 1024
IMAGE_SIZE = 60 * BLOCK - 100  # 60 blocks, the last one short



@dataclass
class BrokerEnv:
    root: Path
    port: int
    ca: Issued
    code_root: Issued
    signer: Issued


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerEnv]:
    root = tmp_path_factory.mktemp("broker")
    ca = make_ca("test fleet CA")
    server = issue(ca, "broker", server_names=("localhost", "127.0.0.1"))
    server.write(root / "server.crt", root / "server.key")
    (root / "ca.pem").write_bytes(ca.cert_pem)
    port = free_port()
    (root / "mosquitto.conf").write_text(
        f"user root\npersistence false\nlog_dest file {root}/mosquitto.log\n"
        f"listener {port} 127.0.0.1\ncafile {root}/ca.pem\ncertfile {root}/server.crt\n"
        f"keyfile {root}/server.key\ntls_version tlsv1.2\nrequire_certificate true\n"
        "use_identity_as_username true\nallow_anonymous false\n")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(root / "mosquitto.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"mosquitto did not start: {err}") from None
            time.sleep(0.05)
    code_root = make_ca("test code-signing root")
    try:
        yield BrokerEnv(root, port, ca, code_root, make_signer(code_root))
    finally:
        proc.terminate()
        proc.wait(5)


# --- the scripted service -----------------------------------------------------------------

@dataclass
class Execution:
    job_id: str
    thing: str
    document: dict[str, Any]
    status: str = "QUEUED"
    details: dict[str, str] = field(default_factory=dict)
    version: int = 1
    updates: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def view(self) -> dict[str, Any]:
        view = {"jobId": self.job_id, "thingName": self.thing, "status": self.status, "queuedAt": 1,
                "lastUpdatedAt": 2, "versionNumber": self.version, "executionNumber": 1,
                "jobDocument": self.document}
        if self.details:
            view["statusDetails"] = dict(self.details)
        return view


class Service:
    def __init__(self, env: BrokerEnv) -> None:
        self.executions: dict[str, Execution] = {}
        self.streams: dict[str, bytes] = {}
        self.next_gets: dict[str, int] = {}
        self.requests: list[tuple[dict[str, Any], int]] = []  # (request, blocks served)
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        identity = issue(env.ca, "overair.service", client=True)
        identity.write(env.root / "service.crt", env.root / "service.key")
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id="overair.service")
        self.client.tls_set(ca_certs=str(env.root / "ca.pem"), certfile=str(env.root / "service.crt"),
                            keyfile=str(env.root / "service.key"))
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_args: subscribed.set()
        self.client.connect("127.0.0.1", env.port)
        self.client.loop_start()
        self.client.subscribe([("$aws/things/+/jobs/$next/get", 1), ("$aws/things/+/jobs/+/update", 1),
                               ("$aws/things/+/streams/+/get/cbor", 0)])
        assert subscribed.wait(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def add_job(self, thing: str, job_id: str, stream: str, image: bytes, document: dict[str, Any]) -> None:
        with self.lock:
            self.streams[stream] = image
            self.executions[thing] = Execution(job_id, thing, document)

    def _on_message(self, client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        thing = parts[2]
        with self.changed:
            if parts[3:] == ["jobs", "$next", "get"]:
                self.next_gets[thing] = self.next_gets.get(thing, 0) + 1
                ex = self.executions.get(thing)
                token = json.loads(msg.payload).get("clientToken", "")
                reply: dict[str, Any] = {"clientToken": token, "timestamp": int(time.time())}
                if ex is not None and ex.status in ("QUEUED", "IN_PROGRESS"):
                    reply["execution"] = ex.view()
                body = json.dumps(reply).encode()
                # The FreeRTOS agent does not subscribe to /accepted: send it on notify-next too.
                client.publish(f"{msg.topic}/accepted", body, 1)
                client.publish(f"$aws/things/{thing}/jobs/notify-next",
                               json.dumps({k: v for k, v in reply.items() if k != "clientToken"}).encode(), 1)
            elif parts[3] == "jobs" and parts[5] == "update":
                ex = self.executions[thing]
                body = json.loads(msg.payload)
                assert parts[4] == ex.job_id
                assert "expectedVersion" not in body
                ex.status, ex.details = body["status"], dict(body["statusDetails"])  # replace, never merge
                ex.version += 1
                ex.updates.append((ex.status, ex.details))
            elif parts[3] == "streams":
                request = decode_get_stream(bytes(msg.payload), "cbor")
                image = self.streams[parts[4]]
                total = block_count(len(image), request.block_size)
                wanted = request.number_of_blocks or 1
                blocks = needed_blocks(request.bitmap, request.block_offset, total)[:wanted]
                for i in blocks:
                    chunk = image[i * request.block_size:(i + 1) * request.block_size]
                    client.publish(f"$aws/things/{thing}/streams/{parts[4]}/data/cbor",
                                   encode_data_block(DataBlock(request.file_id, i, chunk)), 0)
                self.requests.append((
                    {"c": request.client_token, "l": request.block_size, "o": request.block_offset,
                     "n": request.number_of_blocks}, len(blocks)))
            self.changed.notify_all()

    def replay(self, thing: str, view: dict[str, Any]) -> None:
        """An attacker (or a confused broker) re-sends a captured job message (N3)."""
        self.client.publish(f"$aws/things/{thing}/jobs/notify-next",
                            json.dumps({"timestamp": 3, "execution": view}).encode(), 1)

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
        with self.changed:
            return self.changed.wait_for(predicate, timeout)

    def wait_terminal(self, thing: str, timeout: float = 20.0) -> Execution:
        assert self.wait_until(lambda: self.executions[thing].status in ("SUCCEEDED", "FAILED"), timeout), \
            f"no terminal status; updates: {self.executions[thing].updates}"
        return self.executions[thing]


@pytest.fixture
def service(broker: BrokerEnv) -> Iterator[Service]:
    svc = Service(broker)
    try:
        yield svc
    finally:
        svc.close()


# --- devices --------------------------------------------------------------------------------

def make_bundle(env: BrokerEnv, root: Path, thing: str, *, command: str = "") -> Path:
    bundle = root / thing
    bundle.mkdir(parents=True)
    issue(env.ca, thing, client=True).write(bundle / "device.crt", bundle / "device.key")
    (bundle / "root-ca.pem").write_bytes(env.ca.cert_pem)
    (bundle / "code-signing-root.pem").write_bytes(env.code_root.cert_pem)
    (bundle / "factory.bin").write_bytes(make_firmware(V1, 20_000, seed=thing))
    (bundle / "agent.toml").write_text(
        f'thing_name = "{thing}"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {env.port}\nclient_cert = "device.crt"\n'
        'client_key = "device.key"\nca_file = "root-ca.pem"\n'
        '[trust]\ncode_signing_roots = "code-signing-root.pem"\n'
        '[storage]\ndata_dir = "state"\nfactory_image = "factory.bin"\n'
        f'[self_test]\ndeadline_seconds = 20\ncommand = "{command}"\n'
        # FreeRTOS's pacing (one block per HTTPS request, progress by block count), so that
        # the status sequences below are the FreeRTOS ones; the agent's defaults are
        # tested in tests/unit/test_agent_machine.py and test_agent_http.py.
        f'[ota]\nblock_size = {BLOCK}\nblocks_per_request = 8\nstatus_min_interval_seconds = 0\n'
        'http_range_blocks = 1\n')
    return bundle


def ota_job(signer: Issued, signed: bytes, stream: str) -> dict[str, Any]:
    doc = OtaJobDocument(
        protocols=("MQTT",), stream_name=stream,
        files=(OtaFile(filepath="/firmware", filesize=len(signed), fileid=0, certfile="signer.crt",
                       signature=sign_file(signer, signed)),),
        signer_chain=(signer.cert_der,))
    return doc.to_json_obj()


@pytest.fixture
def runtimes() -> Iterator[list[Runtime]]:
    started: list[Runtime] = []
    yield started
    for runtime in started:
        runtime.stop()


def start_agent(bundle: Path, runtimes: list[Runtime]) -> Runtime:
    runtime = Runtime(load_config(bundle))
    runtimes.append(runtime)
    runtime.start()
    return runtime


# --- scenarios ------------------------------------------------------------------------------

def test_update_succeeds_after_reboot_onto_the_new_slot(broker: BrokerEnv, service: Service, tmp_path: Path,
                                                        runtimes: list[Runtime]) -> None:
    image = make_firmware(V2, IMAGE_SIZE, seed="v2")
    service.add_job("dev-ok", "job-ok", "stream-ok", image, ota_job(broker.signer, image, "stream-ok"))
    bundle = make_bundle(broker, tmp_path, "dev-ok")
    runtime = start_agent(bundle, runtimes)
    ex = service.wait_terminal("dev-ok")
    assert ex.updates == [
        ("IN_PROGRESS", {"receive": "1/60"}),
        ("IN_PROGRESS", {"receive": "25/60"}),
        ("IN_PROGRESS", {"receive": "50/60"}),
        ("IN_PROGRESS", {"self_test": "ready", "updatedBy": "0x01000000"}),
        ("IN_PROGRESS", {"self_test": "active", "updatedBy": "0x01010000"}),
        ("SUCCEEDED", {"reason": "accepted v1.1.0"}),
    ]
    assert runtime.wait(lambda s: s.phase == "idle" and s.version == "1.1.0" and not s.trial, 5)
    snap = runtime.snapshot()
    assert (snap.slot, snap.reboots, snap.error) == ("b", 1, None)
    assert snap.last_result is not None
    assert snap.last_result.reason == "accepted v1.1.0"
    assert service.next_gets["dev-ok"] == 2  # once per boot
    # Every request: 8 blocks of 1 KiB from offset 0, answered with min(8, still needed).
    assert all(r == {"c": "rdy", "l": BLOCK, "o": 0, "n": 8} for r, _ in service.requests)
    assert sum(served for _, served in service.requests) == 60
    state = bundle / "state"
    assert (state / "slots" / "b" / "image.bin").read_bytes() == image
    assert os.readlink(state / "current") == "slots/b"
    assert json.loads((state / "boot.json").read_text())["confirmed"] == "b"

    # N3: the captured job message, replayed, changes nothing; the device repeats its result.
    requests_before = len(service.requests)
    service.replay("dev-ok", {**ex.view(), "status": "IN_PROGRESS",
                              "statusDetails": {"self_test": "ready", "updatedBy": "0x01000000"}})
    assert service.wait_until(lambda: len(ex.updates) == 7, 5)
    assert ex.updates[-1] == ("SUCCEEDED", {"reason": "accepted v1.1.0"})
    time.sleep(0.3)
    assert len(service.requests) == requests_before
    assert len(ex.updates) == 7
    assert runtime.snapshot().reboots == 1

    result = CliRunner().invoke(agent_cli, ["status", "--config", str(bundle), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["running"] == {"slot": "b", "version": "1.1.0", "trial": False}
    assert report["last_result"]["status"] == "SUCCEEDED"
    assert report["current_job"] is None


def _tampered(image: bytes) -> bytes:
    flipped = bytearray(image)
    flipped[len(image) // 2] ^= 0x01
    return bytes(flipped)


@pytest.mark.parametrize(("case", "reason", "check"), [
    ("tampered", "0x000000e3: 0x00000001", "BadSignature"),
    ("untrusted signer", "0x000000e7: 0x00000001", "UntrustedChain"),
    ("signer without codeSigning", "0x000000e7: 0x00000002", "MissingCodeSigningUsage"),
    ("older version", "rejected: 0x0000000f", None),
])
def test_refused_update_fails_and_the_device_keeps_running_the_old_image(
        broker: BrokerEnv, service: Service, tmp_path: Path, runtimes: list[Runtime],
        case: str, reason: str, check: str | None) -> None:
    thing = "dev-" + case.replace(" ", "-")
    image = make_firmware(V0_9 if case == "older version" else V2, IMAGE_SIZE, seed=case)
    signer = broker.signer
    if case == "untrusted signer":
        signer = make_signer(make_ca("someone else's root"))
    elif case == "signer without codeSigning":
        signer = make_signer(broker.code_root, eku=False)
    document = ota_job(signer, image, f"s-{thing}")
    served = _tampered(image) if case == "tampered" else image
    service.add_job(thing, f"job-{thing}", f"s-{thing}", served, document)
    runtime = start_agent(make_bundle(broker, tmp_path, thing), runtimes)
    ex = service.wait_terminal(thing)
    status, details = ex.updates[-1]
    assert status == "FAILED"
    assert details["reason"] == reason
    assert details.get("check") == check
    assert not [d for _, d in ex.updates if "self_test" in d]
    snap = runtime.snapshot()
    assert (snap.version, snap.slot, snap.reboots) == ("1.0.0", "a", 0)
    assert not (tmp_path / thing / "state" / "slots" / "b" / "image.bin.part").exists()


def test_failed_self_test_rolls_back_to_the_old_image(broker: BrokerEnv, service: Service, tmp_path: Path,
                                                     runtimes: list[Runtime]) -> None:
    image = make_firmware(V2, IMAGE_SIZE, seed="flawed")
    service.add_job("dev-flawed", "job-flawed", "s-flawed", image, ota_job(broker.signer, image, "s-flawed"))
    bundle = make_bundle(broker, tmp_path, "dev-flawed", command="false")
    runtime = start_agent(bundle, runtimes)
    ex = service.wait_terminal("dev-flawed")
    assert [d.get("self_test") for _, d in ex.updates if "self_test" in d] == ["ready", "active"]
    status, details = ex.updates[-1]
    assert (status, details["reason"]) == ("FAILED", "rejected: 0x00000000")
    assert "exited 1" in details["detail"]
    # Activation reboot, then the rollback reboot onto the confirmed image.
    assert runtime.wait(lambda s: s.reboots == 2 and s.phase == "idle", 5)
    snap = runtime.snapshot()
    assert (snap.version, snap.slot, snap.trial) == ("1.0.0", "a", False)
    assert json.loads((bundle / "state" / "boot.json").read_text())["pending"] is None
    # After the rollback the device asks again; the job is over, so it idles on the old image.
    assert service.wait_until(lambda: service.next_gets["dev-flawed"] == 3, 5)


def test_fleet_updates_several_devices_and_reports_progress(broker: BrokerEnv, service: Service,
                                                           tmp_path: Path) -> None:
    image = make_firmware(V2, IMAGE_SIZE, seed="fleet")
    things = [f"fleet-{i}" for i in range(3)]
    for thing in things:
        service.add_job(thing, "job-fleet", "s-fleet", image, ota_job(broker.signer, image, "s-fleet"))
    progress: dict[str, tuple[int, int]] = {}
    fleet = Fleet([make_bundle(broker, tmp_path, t) for t in things],
                  progress=lambda thing, _job, got, total: progress.__setitem__(thing, (got, total)))
    with fleet:
        assert fleet.wait(lambda snaps: all(s.version == "1.1.0" and s.last_result is not None
                                            and s.last_result.status == "SUCCEEDED" for s in snaps.values()),
                          timeout=30)
    assert progress == {t: (60, 60) for t in things}
    assert all(not s.alive for s in fleet.snapshots().values())


def test_cli_run_logs_json_and_stops_on_sigterm(broker: BrokerEnv, service: Service, tmp_path: Path) -> None:
    bundle = make_bundle(broker, tmp_path, "dev-cli")
    proc = subprocess.Popen([sys.executable, "-c", "from overair.cli.agent_main import app; app()",
                             "run", "--config", str(bundle)], stderr=subprocess.PIPE, text=True)
    try:
        assert service.wait_until(lambda: service.next_gets.get("dev-cli", 0) >= 1, 15)
        time.sleep(0.2)  # let the "no pending job" reply arrive
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    messages = [entry["msg"] for entry in lines]
    assert any("booted 1.0.0" in m for m in messages)
    assert any(m == "no pending job" for m in messages)
    assert any("SIGTERM" in m for m in messages)
    assert all({"ts", "level", "logger", "msg"} <= set(entry) for entry in lines)
