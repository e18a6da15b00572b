"""The agent downloading over HTTPS with pre-signed URLs (device-protocol.md §4).

Status flows over a real Mosquitto with mutual TLS, through the scripted service of
test_agent_mqtt.py, which here delivers a job document with a freshly signed URL at
every delivery, as AWS does. Blocks come from a small threaded HTTPS server (stdlib
`http.server` + `ssl`, certificate from the fleet CA, SAN 127.0.0.1) that serves `Range`
requests, checks the URL's `sig` query parameter, and can be told to let the URL expire
(answer 403) after some blocks. The agent runs in-process with LinuxSlots.
"""

from __future__ import annotations

import re
import secrets
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from overair.agent.config import ConfigError, load_config
from overair.agent.platform.linux_slots import LinuxSlots
from overair.agent.runtime import Runtime
from overair.agent.transport.http import RangeClient, RangeError, https_context
from overair.core.bitmap import block_count
from overair.core.jobdoc import OtaFile, OtaJobDocument
from overair.sim.firmware import make_firmware
from tests.integration import test_agent_mqtt as mqtt_env
from tests.integration.test_agent_mqtt import (
    BLOCK,
    IMAGE_SIZE,
    V2,
    BrokerEnv,
    Execution,
    Service,
    make_bundle,
)
from tests.pki_helpers import Issued, issue, make_ca, sign_file

# The broker, the scripted service and the runtime clean-up of test_agent_mqtt.py (the
# broker is started once for this module).
broker = mqtt_env.broker
service = mqtt_env.service
runtimes = mqtt_env.runtimes

BLOCKS = block_count(IMAGE_SIZE, BLOCK)  # 60, the last one short
SUCCESS_UPDATES = [
    ("IN_PROGRESS", {"receive": "1/60"}),
    ("IN_PROGRESS", {"receive": "25/60"}),
    ("IN_PROGRESS", {"receive": "50/60"}),
    ("IN_PROGRESS", {"self_test": "ready", "updatedBy": "0x01000000"}),
    ("IN_PROGRESS", {"self_test": "active", "updatedBy": "0x01010000"}),
    ("SUCCEEDED", {"reason": "accepted v1.1.0"}),
]


# --- the HTTPS file server --------------------------------------------------------------------

@dataclass(frozen=True)
class Hit:
    path: str
    sig: str
    offset: int  # -1 without a usable Range header
    status: int


class FileServer:
    """Serves `Range: bytes=a-b` of registered files at `https://127.0.0.1:<port>/<path>`;
    a request must carry a `sig` issued by `presign()` and not expired yet."""

    def __init__(self, root: Path, certificate: Issued) -> None:
        root.mkdir(parents=True, exist_ok=True)
        certificate.write(root / "https.crt", root / "https.key")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(root / "https.crt"), str(root / "https.key"))
        self.lock = threading.Lock()
        self.files: dict[str, bytes] = {}
        self.sigs: dict[str, set[str]] = {}
        self.expire_after: dict[str, int] = {}  # path -> 206 answers after which its URLs expire
        self.served: Counter[str] = Counter()
        # Misbehaviours for the next answers that would be 206, in order: "whole" (200 with
        # the whole file), "shifted" (206 with another range), "longer" (one byte more than
        # asked, without Content-Length, the connection closed to end the body).
        self.faults: list[str] = []
        self.hits: list[Hit] = []
        self.connections = 0
        self.handshake_failures = 0
        self.httpd = _TlsServer(("127.0.0.1", 0), _Handler, context, self)
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="https-files", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def add(self, path: str, data: bytes) -> None:
        with self.lock:
            self.files[path] = data
            self.sigs[path] = set()

    def presign(self, path: str) -> str:
        """A fresh URL for `path`, as the server makes one at each job-document delivery."""
        sig = secrets.token_hex(8)
        with self.lock:
            self.sigs[path].add(sig)
        return f"https://127.0.0.1:{self.port}{path}?expires=1800&sig={sig}"

    def answer(self, path: str, sig: str, range_header: str) -> tuple[int, bytes, str, bool]:
        """(status, body, Content-Range, whether Content-Length frames the body)."""
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", range_header)
        offset = int(match[1]) if match else -1
        with self.lock:
            data = self.files.get(path)
            content_range = ""
            body = b""
            framed = True
            if data is None:
                status = 404
            elif sig not in self.sigs[path]:
                status = 403
            elif match is None or int(match[1]) > int(match[2]) or int(match[2]) >= len(data):
                status = 416
            else:
                first, last = int(match[1]), int(match[2])
                status, body = 206, data[first:last + 1]
                content_range = f"bytes {first}-{last}/{len(data)}"
                fault = self.faults.pop(0) if self.faults else None
                if fault == "whole":
                    status, body, content_range = 200, data, ""
                elif fault == "shifted":
                    content_range = f"bytes {first + 1}-{last + 1}/{len(data)}"
                elif fault == "longer":
                    body, framed = data[first:last + 2] + b"!", False
                elif fault is not None and fault.startswith("throttled"):  # "throttled:<Retry-After>"
                    status, body, content_range = 429, b"slow down", fault.partition(":")[2]
                else:
                    self.served[path] += 1
                    if self.served[path] == self.expire_after.get(path):
                        self.sigs[path].clear()  # every URL issued so far expires now
            self.hits.append(Hit(path, sig, offset, status))
        return status, body, content_range, framed

    def hits_for(self, path: str) -> list[Hit]:
        with self.lock:
            return [h for h in self.hits if h.path == path]


class _TlsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 context: ssl.SSLContext, owner: FileServer) -> None:
        self.context = context
        self.owner = owner
        super().__init__(address, handler)

    def get_request(self) -> tuple[Any, Any]:
        sock, address = super().get_request()
        sock.settimeout(10)
        # The handshake runs in the connection's own thread (Handler.setup), not in accept().
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # refused handshakes are counted in Handler.setup


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # headers and body go out in two writes
    server: _TlsServer

    def setup(self) -> None:
        owner = self.server.owner
        try:
            self.request.do_handshake()
        except (ssl.SSLError, OSError):
            with owner.lock:
                owner.handshake_failures += 1
            raise
        with owner.lock:
            owner.connections += 1
        super().setup()

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        sig = parse_qs(parts.query).get("sig", [""])[0]
        status, body, content_range, framed = self.server.owner.answer(parts.path, sig,
                                                                       self.headers.get("Range", ""))
        self.send_response(status)
        if status == 429:
            if content_range:  # FileServer.answer: a 429 carries its Retry-After here
                self.send_header("Retry-After", content_range)
        elif content_range:
            self.send_header("Content-Range", content_range)
        self.send_header("Content-Type", "application/octet-stream")
        if framed:
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def files(broker: BrokerEnv, tmp_path: Path) -> Iterator[FileServer]:
    server = FileServer(tmp_path / "https", issue(broker.ca, "files", server_names=("127.0.0.1",)))
    try:
        yield server
    finally:
        server.close()


# --- jobs and devices ---------------------------------------------------------------------

@dataclass
class HttpExecution(Execution):
    """An execution whose document carries a freshly pre-signed URL at every delivery."""

    fresh_document: Callable[[], dict[str, Any]] | None = None

    def view(self) -> dict[str, Any]:
        if self.fresh_document is not None:
            self.document = self.fresh_document()
        return super().view()


def add_http_job(service: Service, files: FileServer, signer: Issued, thing: str, image: bytes, *,
                 served: bytes | None = None, protocols: tuple[str, ...] = ("HTTP",)) -> str:
    """Offer `image` (signed) to `thing`; the file server serves `served` (default: it)."""
    path = f"/firmware/{thing}.bin"
    files.add(path, image if served is None else served)
    signature = sign_file(signer, image)

    def document() -> dict[str, Any]:
        return OtaJobDocument(
            protocols=protocols, stream_name="s-unused" if "MQTT" in protocols else None,
            files=(OtaFile(filepath="/firmware", filesize=len(image), fileid=0, certfile="signer.crt",
                           signature=signature, update_data_url=files.presign(path),
                           auth_scheme="aws.s3.presigned"),),
            signer_chain=(signer.cert_der,)).to_json_obj()

    with service.lock:
        service.executions[thing] = HttpExecution(f"job-{thing}", thing, {}, fresh_document=document)
    return path


def http_bundle(env: BrokerEnv, root: Path, thing: str, ota: str = "") -> Path:
    bundle = make_bundle(env, root, thing)
    with (bundle / "agent.toml").open("a") as toml:  # make_bundle's last table is [ota]
        toml.write(ota)
    return bundle


class CountingSlots(LinuxSlots):
    """LinuxSlots that counts what is written to the staging file."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.written = 0

    def write_block(self, offset: int, data: bytes) -> None:
        self.written += len(data)
        super().write_block(offset, data)


def start(bundle: Path, runtimes: list[Runtime], *, tick: float = 0.2) -> tuple[Runtime, CountingSlots]:
    config = load_config(bundle)
    platform = CountingSlots(config.storage.data_dir)
    runtime = Runtime(config, platform=platform, tick_interval=tick)
    runtimes.append(runtime)
    runtime.start()
    return runtime, platform


def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# --- scenarios --------------------------------------------------------------------------------

def test_http_only_job_succeeds_with_the_same_status_sequence_as_mqtt(
        broker: BrokerEnv, service: Service, files: FileServer, tmp_path: Path,
        runtimes: list[Runtime]) -> None:
    image = make_firmware(V2, IMAGE_SIZE, seed="http-ok")
    path = add_http_job(service, files, broker.signer, "h-ok", image)
    bundle = http_bundle(broker, tmp_path, "h-ok")
    runtime, _ = start(bundle, runtimes)
    ex = service.wait_terminal("h-ok")
    assert ex.updates == SUCCESS_UPDATES
    assert runtime.wait(lambda s: s.phase == "idle" and s.version == "1.1.0" and not s.trial, 5)
    snap = runtime.snapshot()
    assert (snap.slot, snap.reboots, snap.error) == ("b", 1, None)
    assert (bundle / "state" / "slots" / "b" / "image.bin").read_bytes() == image
    # One Range request per block, in order, each answered once; nothing over MQTT streams.
    hits = files.hits_for(path)
    assert [(h.offset, h.status) for h in hits] == [(i * BLOCK, 206) for i in range(BLOCKS)]
    assert not service.requests
    assert files.connections == 1  # one kept-alive TLS connection for all 60 requests


def test_agent_defaults_fetch_runs_of_blocks_and_pace_progress_by_time(
        broker: BrokerEnv, service: Service, files: FileServer, tmp_path: Path,
        runtimes: list[Runtime]) -> None:
    # The agent's own defaults (not FreeRTOS's): 16 blocks per Range request, at most one
    # progress report a second; the rest of the sequence is the same.
    image = make_firmware(V2, IMAGE_SIZE, seed="http-spans")
    path = add_http_job(service, files, broker.signer, "h-spans", image)
    bundle = http_bundle(broker, tmp_path, "h-spans")
    toml = bundle / "agent.toml"
    toml.write_text(toml.read_text().replace("status_min_interval_seconds = 0\n", "")
                    .replace("http_range_blocks = 1\n", ""))
    assert (load_config(bundle).ota.http_range_blocks, load_config(bundle).ota.status_min_interval_seconds) \
        == (16, 1.0)
    start(bundle, runtimes)
    ex = service.wait_terminal("h-spans")
    assert ex.updates[-3:] == SUCCESS_UPDATES[-3:]
    progress = [u for u in ex.updates if "receive" in u[1]]
    assert progress[0] == ("IN_PROGRESS", {"receive": "1/60"})
    assert len(progress) <= 3
    hits = files.hits_for(path)
    assert [(h.offset, h.status) for h in hits] == [(i * 16 * BLOCK, 206) for i in range(-(-BLOCKS // 16))]


def test_both_protocols_go_over_https_when_the_device_prefers_http(
        broker: BrokerEnv, service: Service, files: FileServer, tmp_path: Path,
        runtimes: list[Runtime]) -> None:
    image = make_firmware(V2, IMAGE_SIZE, seed="http-both")
    path = add_http_job(service, files, broker.signer, "h-both", image, protocols=("MQTT", "HTTP"))
    bundle = http_bundle(broker, tmp_path, "h-both", "prefer_http = true\n")
    assert load_config(bundle).ota.prefer_http
    start(bundle, runtimes)
    ex = service.wait_terminal("h-both")
    assert ex.updates[-1] == ("SUCCEEDED", {"reason": "accepted v1.1.0"})
    assert len(files.hits_for(path)) == BLOCKS
    assert not service.requests  # the stream was never asked for


def test_expired_url_is_refreshed_and_the_download_continues_where_it_stopped(
        broker: BrokerEnv, service: Service, files: FileServer, tmp_path: Path,
        runtimes: list[Runtime]) -> None:
    image = make_firmware(V2, IMAGE_SIZE, seed="http-expiry")
    path = add_http_job(service, files, broker.signer, "h-expiry", image)
    files.expire_after[path] = 20  # the URL expires after 20 blocks
    runtime, _ = start(http_bundle(broker, tmp_path, "h-expiry"), runtimes)
    ex = service.wait_terminal("h-expiry")
    assert ex.updates == SUCCESS_UPDATES
    assert runtime.wait(lambda s: s.version == "1.1.0" and s.phase == "idle", 5)
    hits = files.hits_for(path)
    refused = [h for h in hits if h.status != 206]
    assert [(h.offset, h.status) for h in refused] == [(20 * BLOCK, 403)]
    per_offset = Counter(h.offset for h in hits if h.status == 206)
    assert per_offset == {i * BLOCK: 1 for i in range(BLOCKS)}  # no stored block fetched again
    first_url = {h.sig for h in hits[:21]}
    later = {h.sig for h in hits[21:]}
    assert len(first_url) == 1
    assert len(later) == 1
    assert first_url != later  # the rest came from the fresh URL
    assert hits[21].offset == 20 * BLOCK  # continued at the refused block
    # Boot, the URL refresh, and the boot of the new image.
    assert service.next_gets["h-expiry"] == 3


def test_responses_that_are_not_exactly_the_range_asked_are_never_written(
        broker: BrokerEnv, service: Service, files: FileServer, tmp_path: Path,
        runtimes: list[Runtime]) -> None:
    image = make_firmware(V2, IMAGE_SIZE, seed="http-faults")
    path = add_http_job(service, files, broker.signer, "h-faults", image)
    files.faults = ["whole", "shifted", "longer"]
    bundle = http_bundle(broker, tmp_path, "h-faults", "request_timeout_seconds = 0.1\n")
    runtime, platform = start(bundle, runtimes, tick=0.02)
    ex = service.wait_terminal("h-faults")
    assert ex.updates == SUCCESS_UPDATES
    assert runtime.wait(lambda s: s.version == "1.1.0" and s.phase == "idle", 5)
    hits = files.hits_for(path)
    # The first block was asked four times: three refused answers, then the right one.
    assert [(h.offset, h.status) for h in hits[:4]] == [(0, 200), (0, 206), (0, 206), (0, 206)]
    assert [h.offset for h in hits[4:]] == [i * BLOCK for i in range(1, BLOCKS)]
    assert platform.written == len(image)  # only the bytes asked for, each block once


def test_range_client_refuses_anything_but_the_exact_range(broker: BrokerEnv, files: FileServer,
                                                           tmp_path: Path) -> None:
    data = bytes(range(256)) * 16
    files.add("/f.bin", data)
    url = files.presign("/f.bin")
    (tmp_path / "ca.pem").write_bytes(broker.ca.cert_pem)
    client = RangeClient(https_context(tmp_path / "ca.pem"), timeout=5)
    try:
        assert client.fetch(url, 100, 50) == data[100:150]
        assert client.fetch(url, len(data) - 10, 10) == data[-10:]
        for fault, status, why in (("whole", 200, "whole file"), ("shifted", 206, "Content-Range"),
                                   ("longer", 206, "more bytes")):
            files.faults = [fault]
            with pytest.raises(RangeError, match=why) as refused:
                client.fetch(url, 1024, 512)
            assert refused.value.status == status
        with pytest.raises(RangeError) as expired:
            client.fetch(url.replace("sig=", "sig=x"), 0, 10)
        assert expired.value.status == 403
        assert "sig=" not in expired.value.reason
        assert client.fetch(url, 0, 4) == data[:4]  # a refused answer does not spoil the next
        # A throttled request says when to come back (the agent waits that long, capped).
        for header, after in (("7", 7.0), ("", None), ("Wed, 21 Oct 2015 07:28:00 GMT", None), ("-1", None)):
            files.faults = [f"throttled:{header}"]
            with pytest.raises(RangeError) as throttled:
                client.fetch(url, 0, 10)
            assert (throttled.value.status, throttled.value.retry_after) == (429, after)
        with pytest.raises(RangeError, match="not an https URL") as plain:
            client.fetch(url.replace("https:", "http:"), 0, 10)
        assert plain.value.status == 0
    finally:
        client.close()
    # Kept alive between good answers; a new connection after each refused one.
    assert files.connections == 8


@pytest.mark.parametrize(("issuer", "names", "why"), [
    ("fleet", ("files.example",), "IP address mismatch"),  # the host name is checked
    ("other", ("127.0.0.1",), "unable to get local issuer certificate"),
])
def test_range_client_authenticates_the_server(broker: BrokerEnv, tmp_path: Path, issuer: str,
                                               names: tuple[str, ...], why: str) -> None:
    ca = broker.ca if issuer == "fleet" else make_ca("someone else's CA")
    server = FileServer(tmp_path / "https", issue(ca, "files", server_names=names))
    (tmp_path / "ca.pem").write_bytes(broker.ca.cert_pem)
    client = RangeClient(https_context(tmp_path / "ca.pem"), timeout=5)
    try:
        server.add("/f.bin", b"secret" * 100)
        with pytest.raises(RangeError, match=f"TLS certificate refused: {why}") as refused:
            client.fetch(server.presign("/f.bin"), 0, 10)
        assert refused.value.status == 0
        assert not server.hits
    finally:
        client.close()
        server.close()


def test_wrong_bytes_from_the_server_fail_the_signature_check(
        broker: BrokerEnv, service: Service, files: FileServer, tmp_path: Path,
        runtimes: list[Runtime]) -> None:
    image = make_firmware(V2, IMAGE_SIZE, seed="http-tampered")
    tampered = bytearray(image)
    tampered[len(image) // 2] ^= 0x01
    add_http_job(service, files, broker.signer, "h-tampered", image, served=bytes(tampered))
    bundle = http_bundle(broker, tmp_path, "h-tampered")
    runtime, _ = start(bundle, runtimes)
    ex = service.wait_terminal("h-tampered")
    status, details = ex.updates[-1]
    assert (status, details["reason"], details["check"]) == ("FAILED", "0x000000e3: 0x00000001",
                                                              "BadSignature")
    assert not [d for _, d in ex.updates if "self_test" in d]
    snap = runtime.snapshot()
    assert (snap.version, snap.slot, snap.reboots) == ("1.0.0", "a", 0)
    assert not (bundle / "state" / "slots" / "b" / "image.bin.part").exists()


def test_server_with_a_certificate_from_another_ca_is_refused_until_the_job_aborts(
        broker: BrokerEnv, service: Service, tmp_path: Path, runtimes: list[Runtime]) -> None:
    """A failed request is retried after a jittered backoff until the job's retry budget
    is spent, then the job is aborted and reported FAILED with the last failure (issue 18;
    FreeRTOS's own code for too many failed requests)."""
    rogue = FileServer(tmp_path / "rogue",
                       issue(make_ca("someone else's CA"), "files", server_names=("127.0.0.1",)))
    try:
        image = make_firmware(V2, IMAGE_SIZE, seed="http-rogue")
        path = add_http_job(service, rogue, broker.signer, "h-rogue", image)
        retries = "retry_base_seconds = 0.01\nretry_cap_seconds = 0.05\njob_retry_budget = 5\n"
        bundle = http_bundle(broker, tmp_path, "h-rogue", "request_timeout_seconds = 0.1\n" + retries)
        runtime, platform = start(bundle, runtimes, tick=0.02)
        ex = service.wait_terminal("h-rogue", timeout=60)
        ((status, details),) = ex.updates
        assert status == "FAILED"
        assert (details["reason"], details["check"]) == ("aborted: 0x0000000e", "RetryBudgetExhausted")
        last = "6 requests failed (budget 5); last: no response (TLS certificate refused"
        assert details["detail"].startswith(last), details
        # Every request was refused at the handshake (the server may count the last alert late).
        assert eventually(lambda: rogue.handshake_failures == 6), rogue.handshake_failures
        assert rogue.connections == 0
        assert not rogue.hits_for(path)  # no request ever reached the server
        assert platform.written == 0
        snap = runtime.snapshot()
        assert (snap.version, snap.slot, snap.phase) == ("1.0.0", "a", "idle")
        assert not (bundle / "state" / "slots" / "b" / "image.bin.part").exists()
    finally:
        rogue.close()


def test_config_key_prefer_http_must_be_a_boolean(broker: BrokerEnv, tmp_path: Path) -> None:
    bundle = http_bundle(broker, tmp_path, "h-config", 'prefer_http = "yes"\n')
    with pytest.raises(ConfigError, match=r"\[ota\] prefer_http must be true or false"):
        load_config(bundle)
    assert not load_config(http_bundle(broker, tmp_path / "default", "h-config")).ota.prefer_http

