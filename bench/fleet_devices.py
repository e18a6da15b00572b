"""FreeRTOS-shaped devices at the protocol level for the fleet benchmark (bench/fleet.py).

Each device is its own mutual-TLS connection with its own certificate and does on the
wire what the FreeRTOS OTA library (v3.4.0, MQTT demo) does for one update, in order
(facts from `tests/freertos_device.py`, which cites the library's source):

1. CONNECT (client id = thing name, clean session), SUBSCRIBE `jobs/notify-next` at
   QoS 1, publish `jobs/$next/get` with the library's client token; the answer comes on
   `notify-next` (the library never subscribes to `$next/get/accepted`).
2. A job arrives: SUBSCRIBE `streams/<S>/data/cbor`, GetStream requests of 8 blocks of
   4 KiB (the next when the last block of an answer is in), `IN_PROGRESS {"receive":
   "k/N"}` at QoS 0 on the first block and every 25th. A job message that arrives during
   the download aborts it and starts it again from block 0, as in the library (counted
   as a restart: the service should never cause one).
3. Every block in: SHA-256 of the assembled file checked against the image's, then
   `IN_PROGRESS {"self_test": "ready", "updatedBy": "0x<old>"}` at QoS 1.
4. "Reboot": the connection is closed and a new one made (new TLS handshake, CONNECT,
   SUBSCRIBE, `$next/get`), all without blocking the loop.
5. The execution comes back with `self_test` in its details: `IN_PROGRESS {"self_test":
   "active"}`, then `SUCCEEDED` with the library's `reason`/`updatedBy` strings.

With `reconnect` (the node-loss tests, docs/scaling.md), a device whose connection drops
connects again by itself (0.5 s later, then backing off to 4 s) as the FreeRTOS demo's
MQTT agent does, and asks `$next/get` again: a download in progress starts over from
block 0 when the job comes back; a device that had sent `self_test: ready` or SUCCEEDED
looks at the job again and repeats what the server has not recorded (a QoS 1 PUBACK
comes from the broker, not from the server: a node lost after it may have lost the
update), so SUCCEEDED counts only once the job is gone from `$next/get`. Over HTTPS, a
lost MQTT connection ends the download too (it starts over when the job comes back), and
a download connection that drops (its node lost behind the balancer) is made again to
the URL's address and asks for the block it was waiting for: the FreeRTOS HTTP demo
closes the connection on a failed request and its request timer asks again (10 s);
here after the reconnect delay, so that the time measured is the server's.

What a device skips: the ECDSA signature check (one verification, ~0.1 ms of C per
device), flash writes, the real reboot's seconds. No `expectedVersion` is sent: the
library never sends one (the issue's wording aside, this is the wire a fleet of FreeRTOS
devices produces).

Devices run many per child process on one selector loop over non-blocking TLS sockets
(TLS in C); MQTT framing by hand (CONNECT, SUBSCRIBE, PUBLISH QoS 0/1, PUBACK).
`raw_receiver_process` is the same loop as a plain subscriber, for the limit run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import resource
import selectors
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from multiprocessing.connection import Connection
from pathlib import Path

import cbor2

from bench.lean_devices import _Packets, mqtt_connect, mqtt_publish_qos0, mqtt_subscribe
from overair.core.bitmap import block_count, make_bitmap
from overair.core.streamcodec import GetStreamRequest, encode_get_stream

BLOCK_SIZE = 4096
BLOCKS_PER_REQUEST = 8
RECEIVE_EVERY = 25  # the library's progress interval (blocks)
RECONNECT_DELAY, RECONNECT_MAX_DELAY = 0.5, 4.0  # seconds, with `reconnect`
HTTP_RECONNECTS = 32  # per device: the library gives up after 32 requests without a block


@dataclass(frozen=True)
class DeviceSpec:
    thing: str
    cert: Path
    key: Path


@dataclass
class FleetDeviceResult:
    thing: str
    notified: float = 0.0  # time.perf_counter (CLOCK_MONOTONIC: comparable across processes)
    first_request: float = 0.0
    downloaded: float = 0.0  # last block in, SHA-256 checked
    succeeded: float = 0.0  # SUCCEEDED published
    blocks: int = 0
    requests: int = 0
    status_updates: int = 0
    restarts: int = 0
    throttled: int = 0  # HTTPS answers 429/503 with Retry-After (asked again when told)
    reconnects: int = 0  # connections lost and made again (with `reconnect`)
    http_reconnects: int = 0  # HTTPS download connections lost and made again (with `reconnect`)
    verified: bool = False
    error: str = ""


def mqtt_publish_qos1(topic: str, payload: bytes, packet_id: int) -> bytes:
    name = topic.encode()
    body = len(name).to_bytes(2, "big") + name + packet_id.to_bytes(2, "big") + payload
    length = bytearray()
    remaining = len(body)
    while True:
        byte, remaining = remaining % 128, remaining // 128
        length.append(byte | (0x80 if remaining else 0))
        if not remaining:
            break
    return b"\x32" + bytes(length) + body


def data_block(payload: bytes) -> tuple[int, bytes]:
    """(block id, bytes) of a CBOR data block, read as the FreeRTOS decoder reads it: a
    map with `f` (file 0), `i`, `l` and `p`, `l` equal to the length of `p`. cbor2's C
    decoder, not overair's bounded pure-Python one (core/wirecbor.py, which guards the
    server against hostile input): decoding every block in Python was a seventh of the
    device processes' CPU (py-spy), time a real device spends in C on its own chip."""
    try:
        message = cbor2.loads(payload)
    except cbor2.CBORDecodeError as exc:  # not a ValueError: the device loop fails on ValueError
        raise ValueError(f"a data block is not CBOR: {exc}") from exc
    if not isinstance(message, dict):
        raise ValueError(f"a data block is not a CBOR map: {type(message).__name__}")
    block_id, data, length = message.get("i"), message.get("p"), message.get("l")
    if message.get("f") != 0 or not isinstance(block_id, int) or not isinstance(data, bytes) \
            or length != len(data):
        raise ValueError(f"not a data block of file 0: keys {sorted(message)}")
    return block_id, data


def _parse_publish(first: int, body: bytes) -> tuple[str, bytes, int | None]:
    """(topic, payload, packet id to acknowledge or None)."""
    topic_length = int.from_bytes(body[:2], "big")
    topic = body[2:2 + topic_length].decode()
    rest = body[2 + topic_length:]
    if first & 0x06:  # QoS 1 or 2 (we subscribe at most at 1)
        return topic, rest[2:], int.from_bytes(rest[:2], "big")
    return topic, rest, None


class Phase(Enum):
    CONNECTING = "connecting"
    WAITING = "waiting for a job"
    DOWNLOADING = "downloading"
    ACTIVATING = "waiting for the PUBACK of self_test ready"
    REBOOTING = "rebooting"
    TESTING = "waiting for the self-test job"
    CONFIRMING = "waiting for the PUBACK of SUCCEEDED"
    RECONNECTING = "reconnecting"
    DONE = "done"


class _TlsConnection:
    """A non-blocking TLS client connection driven by selector events: the TCP connect
    blocks (on loopback it completes at once unless the server's accept backlog is full;
    wrapping a socket whose connect is still in progress makes Python's pre-handshake
    check raise), the handshake and the writes do not."""

    def __init__(self, context: ssl.SSLContext, host: str, port: int, server_hostname: str) -> None:
        raw = socket.create_connection((host, port), timeout=30)
        raw.setblocking(False)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = context.wrap_socket(raw, server_hostname=server_hostname, do_handshake_on_connect=False)
        self.handshaken = False
        self.outbox = bytearray()

    def wants_write(self) -> bool:
        return not self.handshaken or bool(self.outbox)

    def flush(self) -> None:
        if not self.handshaken:
            return
        while self.outbox:
            try:
                sent = self.sock.send(self.outbox)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                return
            del self.outbox[:sent]

    def handshake(self) -> bool:
        """Progress the handshake; True once it is done."""
        if not self.handshaken:
            try:
                self.sock.do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                return False
            self.handshaken = True
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class _Link(_TlsConnection):
    """One mutual-TLS MQTT connection: after the handshake, CONNECT and the
    subscriptions; `ready` once every ack is in."""

    def __init__(self, context: ssl.SSLContext, host: str, port: int, client_id: str,
                 subscriptions: list[tuple[str, int]]) -> None:
        super().__init__(context, host, port, host)
        self.client_id = client_id
        self.subscriptions = subscriptions
        self.acks_missing = 1 + len(subscriptions)
        self.packets = _Packets()

    @property
    def ready(self) -> bool:
        return self.handshaken and self.acks_missing == 0

    def send(self, data: bytes) -> None:
        self.outbox += data
        self.flush()

    def advance(self) -> list[tuple[int, bytes]]:
        """Progress the handshake, flush, read what is there; returns MQTT packets."""
        if not self.handshaken:
            if not self.handshake():
                return []
            hello = mqtt_connect(self.client_id)
            for i, (topic, qos) in enumerate(self.subscriptions, 1):
                hello += mqtt_subscribe(topic, i)[:-1] + bytes([qos])
            self.outbox[:0] = hello
        self.flush()
        packets: list[tuple[int, bytes]] = []
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                break
            if not data:
                raise ConnectionError("the broker closed the connection")
            for first, body in self.packets.feed(data):
                if first in (0x20, 0x90):
                    if first == 0x20 and body[1:2] != b"\x00":
                        raise ConnectionError(f"CONNACK refused: {body[1]}")
                    if first == 0x90 and body[2:3] == b"\x80":
                        raise ConnectionError("SUBSCRIBE refused")
                    self.acks_missing -= 1
                else:
                    packets.append((first, body))
            if not self.sock.pending():
                break
        return packets



class HttpDownload(_TlsConnection):
    """One device's file over HTTPS as the FreeRTOS HTTP demo fetches it: one TLS
    connection kept alive, one `Range` request per 4 KiB block, the next when the last
    answer is in. Non-blocking, driven by the process's selector loop; `on_block` gets
    each block, `on_error` a refusal (the library asks for the job again on 400/403/404)."""

    def __init__(self, context: ssl.SSLContext, host: str, port: int, url: str, size: int,
                 on_block: Callable[[int, bytes], None], on_error: Callable[[str], None],
                 next_block: int = 0) -> None:
        rest = url.split("://", 1)[-1]
        authority, _, path = rest.partition("/")
        name, _, url_port = authority.partition(":")
        # The port the URL names (the node's endpoint, a front, or a balancer: the test
        # fails if it is the wrong one), else `port` (where this run's 443 is).
        super().__init__(context, host, int(url_port) if url_port.isdigit() else port, name)
        self.url = url
        self.host = name
        self.path = "/" + path
        self.size = size
        self.total = block_count(size, BLOCK_SIZE)
        self.next_block = next_block  # a connection made again continues where the last stopped
        self.on_block, self.on_error = on_block, on_error
        self.buffer = bytearray()
        self.requests = 0
        self.throttled = 0  # answers 429/503 with Retry-After
        self.retry_at = 0.0  # perf_counter when to ask again after one (0: not waiting)
        self.done = False

    def retry_if_due(self, now: float) -> bool:
        """Ask again for the block a refusal deferred, if its time has come."""
        if not self.retry_at or now < self.retry_at:
            return False
        self.retry_at = 0.0
        self._request()
        self.flush()
        return True

    def _request(self) -> None:
        first = self.next_block * BLOCK_SIZE
        last = min(self.size, first + BLOCK_SIZE) - 1
        self.outbox += (f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nConnection: keep-alive\r\n"
                        f"Range: bytes={first}-{last}\r\n\r\n").encode()
        self.requests += 1

    def advance(self) -> None:
        if not self.handshaken:
            if not self.handshake():
                return
            self._request()
        self.flush()
        while not self.done:
            try:
                data = self.sock.recv(1 << 16)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                break
            if not data:
                raise ConnectionError("the server closed the connection")
            self.buffer += data
            self._responses()
            if not self.sock.pending():
                break
        self.flush()

    def _responses(self) -> None:
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            fields = (line.partition(":") for line in lines[1:])
            headers = {k.strip().lower(): v.strip() for k, _, v in fields}
            length = int(headers.get("content-length", "0"))
            if len(self.buffer) < end + 4 + length:
                return
            status = int(lines[0].split(" ")[1])
            body = bytes(self.buffer[end + 4:end + 4 + length])
            del self.buffer[:end + 4 + length]
            if status in (429, 503) and "retry-after" in headers:
                # Told to wait: ask for the same block again when the server said. (The
                # FreeRTOS demo would wait for its 10 s request timer; this device is the
                # best-behaved one, so the figure is the server's, not the timer's.)
                wait_ms = headers.get("x-overair-retry-after-ms") or str(1000 * int(headers["retry-after"]))
                self.retry_at = time.perf_counter() + int(wait_ms) / 1000
                self.throttled += 1
                return
            if status != 206:
                self.done = True
                self.on_error(f"HTTP {status}: {body[:100]!r}")
                return
            self.on_block(self.next_block, body)
            self.next_block += 1
            if self.next_block >= self.total:
                self.done = True
                return
            self._request()


class FleetDevice:
    """One device's update as the FreeRTOS library makes it; driven by `on_packet`."""

    def __init__(self, spec: DeviceSpec, image_sha256: str, old_version: int,
                 connect: Callable[[FleetDevice, list[tuple[str, int]]], _Link],
                 fetch: Callable[[FleetDevice, str, int], HttpDownload] | None = None,
                 resilient: bool = False) -> None:
        self.spec = spec
        self.resilient = resilient  # reconnects, and checks its reports reached the server
        self.resume = Phase.CONNECTING  # the phase a lost connection interrupted
        self.done_packet = 0
        self.result = FleetDeviceResult(spec.thing)
        self.base = f"$aws/things/{spec.thing}"
        self.sha256 = image_sha256
        self.old_version = old_version
        self._connect = connect
        self._fetch = fetch
        self.http: HttpDownload | None = None
        self.phase = Phase.CONNECTING
        # The answer to the first `$next/get` arrived (on notify-next: the FreeRTOS quirk).
        self.answered = False
        self.tokens = 0
        self.packet_id = 0
        self.job_id = ""
        self.stream = ""
        self.file_size = 0
        self.total = 0
        self.offset = 0
        self.wanted: set[int] = set()
        self.received = 0
        self.ready_packet = 0
        self.image = bytearray()
        self.link = connect(self, [(f"{self.base}/jobs/notify-next", 1)])

    # --- wire ---------------------------------------------------------------------------
    def _next_id(self) -> int:
        self.packet_id = self.packet_id % 65535 + 1
        return self.packet_id

    def ask_next(self) -> None:
        self.tokens += 1
        token = f"{self.tokens}:{self.spec.thing}"
        self.link.send(mqtt_publish_qos0(f"{self.base}/jobs/$next/get",
                                         json.dumps({"clientToken": token}).encode()))

    def update(self, status: str, details: dict[str, str], qos: int = 1) -> None:
        payload = json.dumps({"status": status, "statusDetails": details}).encode()
        topic = f"{self.base}/jobs/{self.job_id}/update"
        packet = (mqtt_publish_qos1(topic, payload, self._next_id()) if qos
                  else mqtt_publish_qos0(topic, payload))
        self.result.status_updates += 1
        self.link.send(packet)

    def request_blocks(self) -> None:
        wanted = range(self.offset, min(self.total, self.offset + BLOCKS_PER_REQUEST))
        self.wanted = set(wanted)
        bitmap = make_bitmap(wanted, self.offset, len(wanted))
        request = GetStreamRequest(client_token="rdy", file_id=0, block_size=BLOCK_SIZE,
                                   block_offset=self.offset, bitmap=bitmap, number_of_blocks=len(wanted),
                                   stream_version=None)
        self.result.requests += 1
        self.result.first_request = self.result.first_request or time.perf_counter()
        self.link.send(mqtt_publish_qos0(f"{self.base}/streams/{self.stream}/get/cbor",
                                         encode_get_stream(request)))

    # --- events -------------------------------------------------------------------------
    def on_ready(self) -> None:
        """The connection (first, after the reboot or after a lost one) is up and subscribed."""
        if self.phase is Phase.RECONNECTING:
            before = (Phase.CONNECTING, Phase.WAITING, Phase.DOWNLOADING)
            self.phase = Phase.WAITING if self.resume in before else Phase.TESTING
        else:
            self.phase = Phase.WAITING if self.phase is Phase.CONNECTING else Phase.TESTING
        self.ask_next()

    def connection_lost(self) -> None:
        """(`resilient`) The connection dropped: connect again, then ask for the job."""
        if self.phase is Phase.DOWNLOADING:
            self.result.restarts += 1  # the download starts over when the job comes back
        if self.phase is not Phase.RECONNECTING:
            self.resume = self.phase
            self.result.reconnects += 1
        self.phase = Phase.RECONNECTING
        self.stream = ""  # a clean session: subscribe to the stream again
        self.wanted = set()

    def on_packet(self, first: int, body: bytes) -> None:
        if first & 0xF0 == 0x40:
            if self.phase is Phase.ACTIVATING and int.from_bytes(body[:2], "big") == self.ready_packet:
                self.phase = Phase.REBOOTING
            elif self.phase is Phase.CONFIRMING and int.from_bytes(body[:2], "big") == self.done_packet:
                # The broker has it; whether the server recorded it, the next $next/get says
                # (after a lost connection).
                self.phase = Phase.DONE
            return
        if first & 0xF0 != 0x30:
            return
        topic, payload, packet_id = _parse_publish(first, body)
        if packet_id is not None:
            self.link.send(b"\x40\x02" + packet_id.to_bytes(2, "big"))
        if topic.endswith("/data/cbor"):
            self._on_block(payload)
        elif topic.endswith("/notify-next"):
            self._on_job(json.loads(payload))

    def _on_job(self, message: dict[str, object]) -> None:
        self.answered = True
        execution = message.get("execution")
        if not isinstance(execution, dict):
            if self.resilient and self.phase is Phase.TESTING and self.result.succeeded:
                self.phase = Phase.DONE  # the server recorded SUCCEEDED: nothing pending
            return  # no job pending
        if self.phase is Phase.DOWNLOADING:
            self.result.restarts += 1  # the library aborts and starts again from block 0
        if self.phase in (Phase.WAITING, Phase.DOWNLOADING):
            self._start_download(execution)
        elif self.phase is Phase.TESTING:
            details = execution.get("statusDetails") or {}
            if not isinstance(details, dict) or "self_test" not in details:
                if self.resilient:
                    # self_test ready was lost with a node: the library downloads again.
                    self.result.restarts += 1
                    self._start_download(execution)
                    return
                self.fail(f"the job came back after the reboot without self_test: {details}")
                return
            self.update("IN_PROGRESS", {"self_test": "active", "updatedBy": "0x01010000"})
            self.update("SUCCEEDED", {"reason": "accepted  v1.1.0", "updatedBy": "  v1.1.0"})
            self.result.succeeded = time.perf_counter()
            self.done_packet = self.packet_id
            self.phase = Phase.CONFIRMING if self.resilient else Phase.DONE

    def _start_download(self, execution: dict[str, object]) -> None:
        self.result.notified = self.result.notified or time.perf_counter()
        document = execution.get("jobDocument")
        ota = document.get("afr_ota") if isinstance(document, dict) else None
        if not isinstance(ota, dict):
            self.fail(f"not an OTA job document: {document}")
            return
        self.job_id = str(execution["jobId"])
        first = ota["files"][0]
        self.file_size = int(first["filesize"])
        self.total = block_count(self.file_size, BLOCK_SIZE)
        self.image = bytearray(self.file_size)
        self.offset = self.received = 0
        self.phase = Phase.DOWNLOADING
        url = first.get("update_data_url")
        if self._fetch is not None and isinstance(url, str):
            # The HTTP demo: blocks from the pre-signed URL, in order, over HTTPS.
            self.result.first_request = self.result.first_request or time.perf_counter()
            self.http = self._fetch(self, url, self.file_size)
            return
        new_stream = str(ota["streamname"]) != self.stream
        self.stream = str(ota["streamname"])
        if new_stream:
            self.link.send(mqtt_subscribe(f"{self.base}/streams/{self.stream}/data/cbor", self._next_id()))
        self.request_blocks()

    def on_http_block(self, index: int, data: bytes) -> None:
        self.result.requests += 1
        self.result.throttled = self.http.throttled if self.http is not None else self.result.throttled
        self._store(index, data)
        if self.received == self.total:
            self._downloaded()

    def on_http_error(self, why: str) -> None:
        self.fail(why)

    def _store(self, index: int, data: bytes) -> None:
        start = index * BLOCK_SIZE
        self.image[start:start + len(data)] = data
        self.received += 1
        self.result.blocks += 1
        if self.received == 1 or self.received % RECEIVE_EVERY == 0:
            self.update("IN_PROGRESS", {"receive": f"{self.received}/{self.total}"}, qos=0)

    def _on_block(self, payload: bytes) -> None:
        if self.phase is not Phase.DOWNLOADING:
            return
        block_id, data = data_block(payload)
        if block_id not in self.wanted:
            return
        self.wanted.discard(block_id)
        self._store(block_id, data)
        if self.wanted:
            return
        self.offset += BLOCKS_PER_REQUEST
        if self.offset < self.total:
            self.request_blocks()
            return
        self._downloaded()

    def _downloaded(self) -> None:
        self.result.downloaded = time.perf_counter()
        self.result.verified = hashlib.sha256(self.image).hexdigest() == self.sha256
        if not self.result.verified:
            self.update("FAILED", {"reason": "0x000000e3: 0x00000000"})
            self.fail("SHA-256 of the assembled image does not match")
            return
        self.image = bytearray()
        self.update("IN_PROGRESS", {"self_test": "ready", "updatedBy": f"0x{self.old_version:08x}"})
        # The demo's publish waits for the PUBACK of a QoS 1 message; only then does the
        # agent activate the image and reset.
        self.ready_packet = self.packet_id
        self.phase = Phase.ACTIVATING

    def fail(self, why: str) -> None:
        self.result.error = self.result.error or why
        self.phase = Phase.DONE


def _peak_rss() -> int:
    """This process's peak resident set, bytes (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(ca))
    context.load_cert_chain(str(cert), str(key))
    return context


def device_process(specs: list[DeviceSpec], ca: Path, host: str, port: int, image_sha256: str,
                   old_version: int, connect_rate: float, timeout: float, conn: Connection,
                   http_port: int = 0, reconnect: bool = False) -> None:
    """Child process: connect every device (at most `connect_rate` new connections per
    second, as a fleet powering up would), report "ready" once all are subscribed and
    have the answer to their first `$next/get`, run every update to its end, send the
    results.
    `reconnect`: devices whose connection drops connect again (module docstring)."""
    _raise_fd_limit()
    selector = selectors.DefaultSelector()
    links: dict[FleetDevice, _Link] = {}
    retry_at: dict[FleetDevice, tuple[float, float]] = {}  # device: (when, next delay)
    # (`reconnect`) downloads whose connection dropped: device: (when, next delay, the download)
    http_retry_at: dict[FleetDevice, tuple[float, float, HttpDownload]] = {}

    # A device's TLS context (CA, its certificate and key) is made once and kept for its
    # reconnects, as a device keeps its credentials: made per connection it was an eighth
    # of the device processes' CPU (py-spy), time a real fleet does not spend on the server's
    # machine.
    contexts: dict[FleetDevice, ssl.SSLContext] = {}

    def connect(device: FleetDevice, subscriptions: list[tuple[str, int]]) -> _Link:
        context = contexts.get(device)
        if context is None:
            context = contexts[device] = _context(ca, device.spec.cert, device.spec.key)
        link = _Link(context, host, port, device.spec.thing, subscriptions)
        links[device] = link
        selector.register(link.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, device)
        return link

    http_context = ssl.create_default_context(cafile=str(ca))

    def fetch(device: FleetDevice, url: str, size: int, next_block: int = 0) -> HttpDownload:
        drop_http(device)  # a download started over (the job came again) leaves its old connection
        download = HttpDownload(http_context, host, http_port, url, size, device.on_http_block,
                                device.on_http_error, next_block)
        selector.register(download.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, ("http", device))
        return download

    def drop_http(device: FleetDevice) -> None:
        http_retry_at.pop(device, None)
        if device.http is not None:
            selector.unregister(device.http.sock)
            device.http.close()
            device.http = None

    def http_lost(device: FleetDevice, download: HttpDownload, why: str, delay: float) -> None:
        drop_http(device)
        if not reconnect or device.result.http_reconnects >= HTTP_RECONNECTS:
            device.fail(why)
            return
        device.result.http_reconnects += 1
        http_retry_at[device] = (time.perf_counter() + delay, min(delay * 2, RECONNECT_MAX_DELAY), download)

    def http_reconnect_due(now: float) -> None:
        for device, (when, delay, old) in list(http_retry_at.items()):
            if when <= now:
                del http_retry_at[device]
                try:
                    device.http = fetch(device, old.url, old.size, old.next_block)
                except OSError as exc:  # the TCP connect (the handshake's errors come later)
                    http_lost(device, old, f"HTTP {type(exc).__name__}: {exc}", delay)

    def service_http(device: FleetDevice) -> None:
        download = device.http
        if download is None:
            return
        try:
            download.advance()
        except (ValueError, ssl.SSLCertVerificationError) as exc:  # no retry makes these good
            device.fail(f"HTTP {type(exc).__name__}: {exc}")
        except (OSError, ConnectionError) as exc:
            http_lost(device, download, f"HTTP {type(exc).__name__}: {exc}", RECONNECT_DELAY)
        if download.done or device.phase is Phase.DONE:
            drop_http(device)
        elif device.http is download:
            selector.modify(download.sock,
                            selectors.EVENT_READ | (selectors.EVENT_WRITE if download.wants_write() else 0),
                            ("http", device))
        link = device.link
        if links.get(device) is link and link.wants_write():
            # Progress reports and self_test ready went to the MQTT link from here.
            selector.modify(link.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, device)

    def service(device: FleetDevice) -> None:
        link = device.link
        was_ready = link.ready
        try:
            packets = link.advance()
            if link.ready and not was_ready:
                device.on_ready()
            for first, body in packets:
                device.on_packet(first, body)
                if device.phase is Phase.REBOOTING:
                    reboot(device)
                    return
        except (OSError, ConnectionError) as exc:
            lost(device, f"{type(exc).__name__}: {exc}")
            return
        except (ValueError, KeyError, TypeError) as exc:
            device.fail(f"{type(exc).__name__}: {exc}")
            close(device)
            return
        # A device that is done stays connected, as a real one would, until the run ends.
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if link.wants_write() else 0)
        selector.modify(link.sock, events, device)

    def close(device: FleetDevice) -> None:
        link = links.pop(device, None)
        if link is not None:
            selector.unregister(link.sock)
            link.close()

    def lost(device: FleetDevice, why: str, delay: float = RECONNECT_DELAY) -> None:
        close(device)
        drop_http(device)  # the download starts over when the job comes back
        if not reconnect:
            device.fail(why)
            return
        device.connection_lost()
        retry_at[device] = (time.perf_counter() + delay, min(delay * 2, RECONNECT_MAX_DELAY))

    def reconnect_due(now: float) -> None:
        for device, (when, delay) in list(retry_at.items()):
            if when <= now:
                del retry_at[device]
                try:
                    device.link = connect(device, [(f"{device.base}/jobs/notify-next", 1)])
                except OSError as exc:
                    lost(device, f"{type(exc).__name__}: {exc}", delay)

    def reboot(device: FleetDevice) -> None:
        device.link.flush()  # the self_test report goes out before the "power cycle"
        close(device)
        # A rebooted device has a new clean session: if the job comes back without
        # self_test (the report lost with a node) it must subscribe to the stream again,
        # or it asks for blocks it never receives (node-loss test: stuck until timeout).
        device.stream = ""
        try:
            device.link = connect(device, [(f"{device.base}/jobs/notify-next", 1)])
        except OSError as exc:
            lost(device, f"{type(exc).__name__}: {exc}")

    def run_for(seconds: float) -> None:
        # (Over MQTT no device waits on a Retry-After: no walk over every device per select.)
        waiting = [d for d in devices if d.http is not None and d.http.retry_at] if http_port else []
        if waiting:
            seconds = min(seconds, min(d.http.retry_at for d in waiting if d.http) - time.perf_counter())
        if retry_at:
            seconds = min(seconds, min(when for when, _ in retry_at.values()) - time.perf_counter())
        if http_retry_at:
            seconds = min(seconds, min(when for when, _, _ in http_retry_at.values()) - time.perf_counter())
        for key, _ in selector.select(timeout=max(0.0, seconds)):
            if isinstance(key.data, tuple):
                service_http(key.data[1])
            else:
                service(key.data)
        now = time.perf_counter()
        for device in waiting:
            if device.http is not None and device.http.retry_if_due(now):
                service_http(device)
        reconnect_due(now)
        http_reconnect_due(now)

    devices: list[FleetDevice] = []
    pace = 1.0 / connect_rate if connect_rate > 0 else 0.0
    started = time.perf_counter()
    for i, spec in enumerate(specs):
        devices.append(FleetDevice(spec, image_sha256, old_version, connect, fetch if http_port else None,
                                   resilient=reconnect))
        while (wait := started + (i + 1) * pace - time.perf_counter()) > 0:
            run_for(wait)
    ready_sent = False
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline and any(d.phase is not Phase.DONE for d in devices):
        # Ready once every device has its first answer: an answer given after the job's
        # creation carries the job and is followed by the fan-out's notify-next, which
        # restarts the download (seen on PostgreSQL at 10,000 devices: 1,165 restarts).
        if not ready_sent and all(d.phase is not Phase.CONNECTING and d.answered for d in devices):
            conn.send("ready")
            ready_sent = True
        run_for(0.5)
    for device in devices:
        if device.phase is not Phase.DONE:
            device.fail(f"timed out while {device.phase.value}")
    end = time.perf_counter() + 1.0
    while time.perf_counter() < end and any(link.outbox for link in links.values()):
        run_for(0.05)  # the last SUCCEEDED reports leave before the connections close
    for device in devices:
        close(device)
    if not ready_sent:
        conn.send("ready")
    conn.send(([d.result for d in devices], _peak_rss()))


# --- the limit run: plain subscribers ------------------------------------------------------

@dataclass
class RawReceiverResult:
    received: list[int] = field(default_factory=list)  # messages per receiver
    last: float = 0.0  # perf_counter of the last message any receiver got
    connected: int = 0


def raw_receiver_process(topics: list[str], ca: Path, cert: Path, key: Path, host: str, port: int,
                         expected: int, timeout: float, conn: Connection) -> None:
    """Child process of the limit run: one mutual-TLS subscriber per topic (the same loop
    and TLS as the devices), counting messages until each has `expected`."""
    _raise_fd_limit()
    context = _context(ca, cert, key)
    selector = selectors.DefaultSelector()
    # Client ids from the topic (the thing): unique across processes, or the broker would
    # take each id over from the process that used it first.
    links = [_Link(context, host, port, "raw-" + topic.split("/")[2], [(topic, 0)]) for topic in topics]
    counts = dict.fromkeys(range(len(links)), 0)
    for i, link in enumerate(links):
        selector.register(link.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, i)
    result = RawReceiverResult()
    ready_sent = False
    deadline = time.perf_counter() + timeout
    open_links = len(links)
    while open_links and time.perf_counter() < deadline:
        if not ready_sent and all(link.ready for link in links):
            conn.send("ready")
            ready_sent = True
        for event, _ in selector.select(timeout=0.5):
            i = event.data
            link = links[i]
            try:
                packets = link.advance()
            except (OSError, ConnectionError):
                selector.unregister(link.sock)
                open_links -= 1
                continue
            counts[i] += sum(1 for first, _ in packets if first & 0xF0 == 0x30)
            if packets:
                result.last = time.perf_counter()
            if counts[i] >= expected:
                selector.unregister(link.sock)
                link.close()
                open_links -= 1
            else:
                events = selectors.EVENT_READ | (selectors.EVENT_WRITE if link.wants_write() else 0)
                selector.modify(link.sock, events, i)
    if not ready_sent:
        conn.send("ready")
    result.received = [counts[i] for i in range(len(links))]
    result.connected = sum(1 for link in links if link.handshaken)
    conn.send(result)


# --- the HTTPS limit run: the same downloads from nginx ------------------------------------

@dataclass
class HttpFetchResult:
    verified: int = 0
    failed: list[str] = field(default_factory=list)
    throttled: int = 0  # answers 429/503 with Retry-After (asked again when told)
    first: float = 0.0
    last: float = 0.0


def http_fetch_process(urls: list[str], ca: Path, host: str, port: int, size: int, image_sha256: str,
                       timeout: float, conn: Connection) -> None:
    """Child process of the HTTPS runs (bench/fleet_https.py): one device per URL, each
    fetching it block by block with the same HttpDownload as the rollout's devices;
    reports when the first request went out and when the last image was complete."""
    _raise_fd_limit()
    context = ssl.create_default_context(cafile=str(ca))
    selector = selectors.DefaultSelector()
    result = HttpFetchResult()
    images = [bytearray(size) for _ in urls]
    downloads: list[HttpDownload] = []
    conn.send("ready")
    conn.recv()
    result.first = time.perf_counter()
    for i, url in enumerate(urls):
        def store(index: int, data: bytes, image: bytearray = images[i]) -> None:
            image[index * BLOCK_SIZE:index * BLOCK_SIZE + len(data)] = data

        download = HttpDownload(context, host, port, url, size, store, result.failed.append)
        downloads.append(download)
        selector.register(download.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, i)
    open_count = len(urls)
    deadline = time.perf_counter() + timeout

    def service(index: int) -> None:
        nonlocal open_count
        download = downloads[index]
        try:
            download.advance()
        except (OSError, ConnectionError, ValueError) as exc:
            result.failed.append(f"{type(exc).__name__}: {exc}")
            download.done = True
        if download.done:
            selector.unregister(download.sock)
            download.close()
            open_count -= 1
            result.last = time.perf_counter()
        else:
            selector.modify(download.sock, selectors.EVENT_READ
                            | (selectors.EVENT_WRITE if download.wants_write() else 0), index)

    while open_count and time.perf_counter() < deadline:
        # Told to come back later (429/503 with Retry-After, the device's budget): ask
        # again when told, as the rollout's devices do.
        waiting = [i for i, d in enumerate(downloads) if d.retry_at and not d.done]
        wait = min((downloads[i].retry_at for i in waiting), default=time.perf_counter() + 0.5)
        for key, _ in selector.select(timeout=min(0.5, max(0.0, wait - time.perf_counter()))):
            service(key.data)
        now = time.perf_counter()
        for i in waiting:
            if downloads[i].retry_if_due(now):
                service(i)
    result.throttled = sum(d.throttled for d in downloads)
    result.verified = sum(1 for image in images if hashlib.sha256(image).hexdigest() == image_sha256)
    conn.send(result)
