"""Protocol-level devices for the stream benchmark: what a FreeRTOS device puts on the
wire, at a cost close to zero on the benchmark machine.

Each device is one mutual-TLS connection with its own provisioned certificate, speaking
MQTT 3.1.1 at QoS 0 and the CBOR stream protocol exactly as the overair agent does (the
same request encoder, 4 KiB blocks, 8 blocks per GetStream request, the next request only
when the last one is answered), and checks the SHA-256 of what it assembled. It skips
everything a device does besides receiving (flash writes, signature check, reboot), so
the figure measures the delivery path (service and broker), not the Python cost of 100
simulated devices sharing the benchmark's two cores with the server. The full agents are
measured too (`--devices-kind agent`).

Devices run in child processes, many per process on one selector loop over non-blocking
TLS sockets (TLS in C; asyncio's TLS layer costs more Python per message than the
device's own work). MQTT framing is done by hand: a device needs only CONNECT,
SUBSCRIBE and PUBLISH at QoS 0.
"""

from __future__ import annotations

import hashlib
import select
import selectors
import socket
import ssl
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

from overair.core.bitmap import block_count, make_bitmap
from overair.core.streamcodec import GetStreamRequest, decode_data_block, encode_get_stream
from overair.server.gateway.mqtt_driver import qos0_publish_packet


@dataclass(frozen=True)
class DeviceSpec:
    thing: str
    bundle: Path  # root-ca.pem, device.crt, device.key as `overair thing create` writes them


@dataclass
class DeviceResult:
    thing: str
    first_request: float = 0.0  # time.perf_counter (CLOCK_MONOTONIC: comparable across processes)
    last_block: float = 0.0
    blocks: int = 0
    verified: bool = False
    error: str = ""
    cycles: list[float] = field(default_factory=list)  # request -> its last block, seconds


def _string(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_connect(client_id: str) -> bytes:
    """MQTT 3.1.1 CONNECT, clean session, keep-alive 0 (these clients never idle)."""
    body = _string("MQTT") + bytes([4, 0x02]) + (0).to_bytes(2, "big") + _string(client_id)
    return b"\x10" + _remaining_length(len(body)) + body


def mqtt_subscribe(topic: str, packet_id: int = 1) -> bytes:
    body = packet_id.to_bytes(2, "big") + _string(topic) + b"\x00"
    return b"\x82" + _remaining_length(len(body)) + body


# The service's own framing of QoS 0 PUBLISH (tested against gmqtt's).
mqtt_publish_qos0 = qos0_publish_packet


class _Packets:
    """Splits a byte stream into MQTT packets: (first byte, body). One pass over what
    arrived, one deletion at the end (per-packet deletions would move the rest each time)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buffer = self._buffer
        buffer += data
        packets: list[tuple[int, bytes]] = []
        start, end = 0, len(buffer)
        while True:
            length, multiplier, pos = 0, 1, start + 1
            while True:
                if pos >= end:
                    del buffer[:start]
                    return packets
                byte = buffer[pos]
                length += (byte & 0x7F) * multiplier
                multiplier *= 128
                pos += 1
                if not byte & 0x80:
                    break
            if end < pos + length:
                del buffer[:start]
                return packets
            packets.append((buffer[start], bytes(buffer[pos:pos + length])))
            start = pos + length


class _Device:
    """One device's download, driven by the process's selector loop."""

    def __init__(self, spec: DeviceSpec, sock: ssl.SSLSocket, stream_id: str, file_size: int,
                 block_size: int, per_request: int) -> None:
        self.spec = spec
        self.sock = sock
        self.result = DeviceResult(spec.thing)
        self.base = f"$aws/things/{spec.thing}/streams/{stream_id}"
        self.image = bytearray(file_size)
        self.total = block_count(file_size, block_size)
        self.block_size = block_size
        self.per_request = per_request
        self.packets = _Packets()
        self.offset = 0
        self.wanted: set[int] = set()
        self.sent = 0.0
        self.done = False

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:  # requests are small: a full send buffer is rare and short-lived
            try:
                view = view[self.sock.send(view):]
            except (ssl.SSLWantWriteError, BlockingIOError):
                select.select([], [self.sock], [], 1.0)

    def request_next(self) -> None:
        if self.offset >= self.total:
            self.done = True
            return
        wanted = range(self.offset, min(self.total, self.offset + self.per_request))
        self.wanted = set(wanted)
        bitmap = make_bitmap(wanted, self.offset, len(wanted))
        request = GetStreamRequest(client_token="b", file_id=0, block_size=self.block_size,
                                   block_offset=self.offset, bitmap=bitmap, number_of_blocks=len(wanted),
                                   stream_version=None)
        self.sent = time.perf_counter()
        self.result.first_request = self.result.first_request or self.sent
        self.send(mqtt_publish_qos0(f"{self.base}/get/cbor", encode_get_stream(request)))

    def receive(self, data: bytes) -> None:
        for kind, body in self.packets.feed(data):
            if kind & 0xF0 != 0x30:
                continue
            topic_length = int.from_bytes(body[:2], "big")
            if body[2:2 + topic_length].endswith(b"/rejected/cbor"):
                raise RuntimeError(f"request rejected: {body[2 + topic_length:]!r}")
            block = decode_data_block(body[2 + topic_length:])
            start = block.block_id * self.block_size
            self.image[start:start + len(block.payload)] = block.payload
            self.result.blocks += block.block_id in self.wanted
            self.wanted.discard(block.block_id)
        if not self.wanted and not self.done:
            self.result.last_block = time.perf_counter()
            self.result.cycles.append(self.result.last_block - self.sent)
            self.offset += self.per_request
            self.request_next()


def _connect_device(spec: DeviceSpec, host: str, port: int) -> ssl.SSLSocket:
    """Mutual TLS, MQTT CONNECT and the two SUBSCRIBEs, blocking (before the clock runs)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(spec.bundle / "root-ca.pem"))
    context.load_cert_chain(str(spec.bundle / "device.crt"), str(spec.bundle / "device.key"))
    sock = context.wrap_socket(socket.create_connection((host, port), timeout=30), server_hostname=host)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    base = f"$aws/things/{spec.thing}"
    sock.sendall(mqtt_connect(spec.thing) + mqtt_subscribe(f"{base}/streams/+/data/cbor")
                 + mqtt_subscribe(f"{base}/streams/+/rejected/cbor", 2))
    packets, acked = _Packets(), 0
    while acked < 3:  # CONNACK and two SUBACKs
        data = sock.recv(4096)
        if not data:
            raise ConnectionError("the broker closed the connection")
        acked += sum(1 for kind, _ in packets.feed(data) if kind in (0x20, 0x90))
    sock.setblocking(False)
    return sock


def device_process(specs: list[DeviceSpec], host: str, port: int, stream_id: str, file_size: int,
                   expected_sha256: str, block_size: int, per_request: int, conn: Connection) -> None:
    """Child process: connect every device, report ready, wait for "go", download all
    with one selector loop (TLS in C, no asyncio), report the results."""
    devices: list[_Device] = []
    failed: list[DeviceResult] = []
    for spec in specs:
        try:
            sock = _connect_device(spec, host, port)
        except (OSError, ConnectionError) as exc:
            failed.append(DeviceResult(spec.thing, error=f"connect: {exc}"))
            continue
        devices.append(_Device(spec, sock, stream_id, file_size, block_size, per_request))
    conn.send("ready")
    conn.recv()
    selector = selectors.DefaultSelector()
    for device in devices:
        selector.register(device.sock, selectors.EVENT_READ, device)
        device.request_next()
    active = len(devices)
    while active:
        for key, _ in selector.select(timeout=30):
            device = key.data
            try:
                while True:
                    try:
                        data = device.sock.recv(1 << 16)
                    except (ssl.SSLWantReadError, BlockingIOError):
                        break
                    if not data:
                        raise ConnectionError("the broker closed the connection")
                    device.receive(data)
                    if device.done or not device.sock.pending():
                        break
            except (OSError, RuntimeError, ConnectionError, ValueError) as exc:
                device.result.error = f"{type(exc).__name__}: {exc}"
                device.done = True
            if device.done:
                selector.unregister(device.sock)
                active -= 1
    results = failed
    for device in devices:
        device.sock.close()
        device.result.verified = hashlib.sha256(device.image).hexdigest() == expected_sha256
        results.append(device.result)
    conn.send(results)
