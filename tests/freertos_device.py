"""A FreeRTOS-shaped OTA device, at the protocol level, for end-to-end tests.

It behaves on the wire as the FreeRTOS OTA library (ota-for-aws-iot-embedded-sdk v3.4.0,
the version the AWS IoT Device SDK for Embedded C 202211.00 pins for its OTA demos) does
inside its coreMQTT and coreHTTP demos, and enforces their limits. Each rule below comes
from that source (fetched: source/ota.c, ota_mqtt.c, ota_http.c, ota_cbor.c, and
demos/ota/ota_demo_core_{mqtt,http}); where a device would silently fail, this one fails
the same way and records why, so that a test can assert it did not happen:

- MQTT 3.1.1, client id = thing name, clean session. It subscribes to `notify-next` only
  (QoS 1), plus `streams/<S>/data/cbor` (QoS 0) once a download starts, and asks
  `$next/get` with the library's client token (`"<counter>:<thing>"` in v3.4.0; the
  later main branch drops the counter's last digit and cuts the name at 53 characters:
  `token_style="main"`). The demo routes `$next/get/accepted` and `notify-next` to the
  agent and everything under `streams/` to it as file blocks.
- Receive buffer (coreMQTT network buffer): the demo's `otaconfigFILE_BLOCK_SIZE + 128` =
  4,224 bytes (MQTT demo; the HTTP demo adds its 2,048-byte URL buffer). A larger PUBLISH
  is dropped unacknowledged and never reaches the agent (`dropped`).
- Job document: `execution.jobId`, `execution.statusDetails.self_test` (presence) and
  `.updatedBy` (strtoul, base 0), and `execution.jobDocument.afr_ota`: `protocols` (raw
  text at most 19 characters), `streamname` (< 128), `files[0]` only: `filesize`,
  `fileid` (required), `filepath` and `certfile` (< 260), `update_data_url` (< 2,048),
  `auth_scheme`, `sig-sha256-ecdsa` (no `\\/` in the raw text), `fileType`. Anything
  else in the document is ignored (an `overair` key would only cost buffer bytes).
- A file of more blocks than the bitmap tracks (128 bytes: 1,024 blocks of 4 KiB) is
  ignored without any status (`ignored`), as is a file of size 0.
- MQTT download: GetStream `{"c":"rdy","f","l":4096,"o":0,"b":bitmap,"n":8}`, the next
  request after 8 new blocks or `request_wait` (10 s) of silence; after 32 requests
  without a block the job is aborted. A message under `streams/` that is not a valid
  block (bad CBOR, wrong sizes, out of range) fails the job as the library does
  (`0x000000e0: 0x00000000`) and is also recorded in `violations`.
- HTTP download: everything between `://` and the first `/` of `update_data_url` is the
  host name; it is resolved and connected to on port 443 (a test maps that to its
  listener with `network`, as a NAT would); TLS checked against `root-ca.pem` for that
  host; one `Range` request per 4 KiB block; the response (headers and body) must fit
  the demo's 5,120-byte buffer; 400/403/404 make it ask for the job again (fresh URL) and
  go on. A connection that cannot be made is retried every `request_wait` up to 32
  times, then the agent shuts down without a word: the execution stays QUEUED.
- Status updates exactly as the library formats them: `receive` (QoS 0, on the first
  block and every 25th), `self_test` `ready`/`active` with `updatedBy` `0x%08x`,
  `SUCCEEDED` `{"reason":"accepted  v%u.%u.%u","updatedBy":"  v%u.%u.%u"}` (two spaces,
  as the library writes them), `FAILED` `{"reason":"%s: 0x%08x"}` or
  `{"reason":"0x%08x: 0x%08x"}`.
- Signature: ECDSA P-256 (or RSA) over SHA-256 of the file, checked with the certificate
  the device holds at `certfile` (only the signature: FreeRTOS does not check chains);
  no such certificate: `0x000000e7`, bad signature: `0x000000e3`.
- After a good download it reports self-test ready, "reboots" into the new image (its
  version read from the image's header, as the new firmware would have it compiled in),
  and on the job received after the reboot: same version `rejected: 0x00000010`, older
  `rejected: 0x0000000f` (and rolls back), newer self-test active then SUCCEEDED.

Any job message that arrives during a download aborts it and the job is asked again
from block 0 (`restarts`), which is the library's behaviour too.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import enum
import json
import queue
import re
import socket
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from paho.mqtt.enums import CallbackAPIVersion

from overair.cli.provisioning import create_keys_and_certificate_for
from overair.core.image import parse_header
from overair.core.mqttsize import publish_packet_size
from overair.core.versions import Version

# ota.h / ota_private.h / ota_platform_interface.h
ERR_JOB_PARSER = 0x0C
ERR_DOWNGRADE = 0x0F
ERR_SAME_VERSION = 0x10
ERR_IMAGE_STATE_MISMATCH = 0x11
PAL_UNINITIALIZED = 0xE0
PAL_SIGNATURE_CHECK_FAILED = 0xE3
PAL_BAD_SIGNER_CERT = 0xE7
PARSE_NON_CONFORMING = 4
PARSE_ZERO_FILE_SIZE = 3
PROTOCOL_BUFFER = 20  # OTA_PROTOCOL_BUFFER_SIZE, with the terminating NUL
JOB_ID_BUFFER = 73  # OTA_JOB_ID_MAX_SIZE
PATH_BUFFER = 260  # OTA_MAX_FILE_PATH_SIZE (demo)
STREAM_BUFFER = 128  # OTA_MAX_STREAM_NAME_SIZE (demo)
URL_BUFFER = 2048  # OTA_MAX_URL_SIZE (HTTP demo)
HTTPS_PORT = 443  # AWS_HTTPS_PORT (HTTP demo)
HTTP_HEADER_MAX = 1024  # HTTP_HEADER_SIZE_MAX (HTTP demo)
USER_AGENT = "my-platform-name"  # coreHTTP's default HTTP_USER_AGENT_VALUE


@dataclass(frozen=True)
class DeviceSettings:
    """The demo's build settings (ota_config.h and the demo sources)."""

    block_size: int = 4096  # otaconfigFILE_BLOCK_SIZE
    max_blocks: int = 128 * 8  # OTA_MAX_BLOCK_BITMAP_SIZE bytes of bitmap
    blocks_per_request: int = 8  # otaconfigMAX_NUM_BLOCKS_REQUEST (MQTT demo; HTTP demo: 1)
    data_protocols: tuple[str, ...] = ("MQTT",)  # configENABLED_DATA_PROTOCOLS, primary first
    request_wait: float = 10.0  # otaconfigFILE_REQUEST_WAIT_MS
    max_momentum: int = 32  # otaconfigMAX_NUM_REQUEST_MOMENTUM
    status_frequency: int = 25  # otaconfigOTA_UPDATE_STATUS_FREQUENCY
    self_test_wait: float = 16.0  # otaconfigSELF_TEST_RESPONSE_WAIT_MS
    token_style: str = "v3.4.0"  # or "main" (the clientToken quirk after v3.4.1)

    @property
    def mqtt_buffer(self) -> int:
        """OTA_NETWORK_BUFFER_SIZE: block + 128 (MQTT demo); + the URL buffer (HTTP demo)."""
        return self.block_size + 128 + (URL_BUFFER if "HTTP" in self.data_protocols else 0)

    @property
    def http_buffer(self) -> int:
        return self.block_size + HTTP_HEADER_MAX  # HTTP_USER_BUFFER_LENGTH


HTTP_DEMO = DeviceSettings(blocks_per_request=1, data_protocols=("HTTP",))


@dataclass(frozen=True)
class Update:
    job_id: str
    status: str
    details: dict[str, str]
    qos: int


class ImageState(enum.Enum):
    ACCEPTED = "accepted"
    PENDING_COMMIT = "pending commit"  # booted a new image, not yet self-tested


@dataclass
class _File:
    job_id: str
    stream: str | None
    file_id: int
    size: int
    path: str
    certfile: str
    signature: bytes
    signature_key: str
    url: str | None
    data: bytearray
    needed: bytearray  # bitmap, a set bit = block still needed (erased flash is 0xff)
    remaining: int
    protocol: str
    current_block: int = 0  # HTTP: the next block to fetch, in order
    to_receive: int = 0


@dataclass
class _Http:
    sock: ssl.SSLSocket
    host: str
    path: str


@dataclass
class DeviceLog:
    """What the device did and saw, for assertions."""

    updates: list[Update] = field(default_factory=list)
    documents: list[dict[str, Any]] = field(default_factory=list)  # afr_ota documents parsed
    dropped: list[tuple[str, int]] = field(default_factory=list)  # (topic, packet size) too large
    job_messages: list[int] = field(default_factory=list)  # packet sizes of the job messages taken
    ignored: list[str] = field(default_factory=list)  # jobs the library ignores without a word
    violations: list[str] = field(default_factory=list)  # what a real device would choke on
    restarts: int = 0  # downloads aborted by a job message
    http_connects: list[tuple[str, int]] = field(default_factory=list)  # (host, port) connected
    http_failures: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)  # $next/get client tokens sent
    shut_down: bool = False  # the agent gave up (momentum abort)
    boots: int = 0


class FreeRtosDevice:
    def __init__(self, thing: str, bundle: Path, mqtt_port: int, version: Version, *,
                 certfiles: Mapping[str, bytes], settings: DeviceSettings = DeviceSettings(),
                 network: Mapping[tuple[str, int], tuple[str, int]] | None = None) -> None:
        self.thing = thing
        self.bundle = bundle
        self.mqtt_port = mqtt_port
        self.version = version  # appFirmwareVersion of the running image
        self._previous = version
        self.image_state = ImageState.ACCEPTED
        self.certfiles = dict(certfiles)  # the device's file system: path -> PEM
        self.settings = settings
        self.network = dict(network or {})  # (address, 443) -> where it really is
        self.log = DeviceLog()
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._changed = threading.Condition()
        self._file: _File | None = None
        self._active_job = ""
        self._momentum = 0
        self._awaiting_job = False  # a `$next/get` was sent and its answer not yet seen
        self._counter = 0
        self._timer_generation = 0
        self._self_test_generation = 0
        self._http: _Http | None = None
        self._client: mqtt.Client | None = None
        self._subscribed = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"freertos-{thing}", daemon=True)

    # Life cycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()
        self._events.put(("boot", None))

    def stop(self) -> None:
        self._stopping = True
        self._events.put(("stop", None))
        self._thread.join(10)
        self._disconnect()

    def wait_until(self, condition: Callable[[DeviceLog], bool], timeout: float, what: str) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: condition(self.log), timeout), (
                f"{self.thing}: timed out waiting for {what}; {self.log}")

    def terminal(self, job_id: str, timeout: float = 60.0) -> Update:
        """Wait for the device's last status of the job (SUCCEEDED or FAILED)."""
        def ended(log: DeviceLog) -> bool:
            return any(u.job_id == job_id and u.status in ("SUCCEEDED", "FAILED") for u in log.updates)

        self.wait_until(ended, timeout, f"the end of {job_id}")
        return [u for u in self.log.updates if u.job_id == job_id][-1]

    def _note(self, change: Callable[[DeviceLog], None]) -> None:
        with self._changed:
            change(self.log)
            self._changed.notify_all()

    def _violation(self, text: str) -> None:
        self._note(lambda log: log.violations.append(text))

    def _http_failure(self, text: str) -> None:
        self._note(lambda log: log.http_failures.append(text))

    # MQTT (coreMQTT and the demo's callbacks) -------------------------------------------------
    def _connect(self) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cafile=str(self.bundle / "root-ca.pem"))
        context.load_cert_chain(str(self.bundle / "device.crt"), str(self.bundle / "device.key"))
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.thing, protocol=mqtt.MQTTv311,
                             clean_session=True, manual_ack=True)
        client.tls_set_context(context)
        connected = threading.Event()
        client.on_connect = lambda _c, _u, _f, reason, _p: None if reason.is_failure else connected.set()
        client.on_message = self._on_message
        client.on_subscribe = lambda *_a: self._subscribed.set()
        client.connect("127.0.0.1", self.mqtt_port, keepalive=60)
        client.loop_start()
        if not connected.wait(10):
            raise AssertionError(f"{self.thing}: the broker did not accept the connection")
        self._client = client

    def _disconnect(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None
        self._close_http()

    def _subscribe(self, topic: str, qos: int) -> None:
        assert self._client is not None
        self._subscribed.clear()
        self._client.subscribe(topic, qos)
        if not self._subscribed.wait(10):
            raise AssertionError(f"{self.thing}: no SUBACK for {topic}")

    def _publish(self, topic: str, payload: str, qos: int) -> None:
        if self._client is not None:
            self._client.publish(topic, payload.encode(), qos=qos)

    def _on_message(self, client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        size = publish_packet_size(message.topic, len(message.payload), message.qos)
        if size > self.settings.mqtt_buffer:
            # coreMQTT discards a packet larger than its buffer; the agent never sees it.
            self._note(lambda log: log.dropped.append((message.topic, size)))
            return
        if message.qos:
            client.ack(message.mid, message.qos)
        prefix = f"$aws/things/{self.thing}/"
        topic = message.topic
        if topic in (prefix + "jobs/notify-next", prefix + "jobs/$next/get/accepted"):
            self._note(lambda log: log.job_messages.append(size))
            self._events.put(("job", bytes(message.payload)))
        elif topic.startswith(prefix + "streams/"):
            self._events.put(("block", (topic, bytes(message.payload))))
        else:  # the demo logs and drops other job messages
            self._note(lambda log: log.ignored.append(f"message on {topic}"))

    # The agent task -----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            kind, value = self._events.get()
            if kind == "stop":
                return
            if self.log.shut_down and kind != "boot":
                continue
            try:
                self._handle(kind, value)
            except Exception as exc:  # a defect of this model, not a device behaviour
                self._violation(f"device model error: {exc!r}")

    def _handle(self, kind: str, value: Any) -> None:
        if kind == "boot":
            self._boot()
        elif kind == "job":
            self._on_job(value)
        elif kind == "block":
            self._on_block(*value)
        elif kind == "timer" and value == self._timer_generation:
            self._on_request_timer()
        elif kind == "self_test_timer" and value == self._self_test_generation:
            self._on_self_test_timeout()
        elif kind == "request_job":
            self._request_job()
        elif kind == "next_block" and self._file is not None:
            self._request_blocks()
        elif kind == "retry_init" and self._file is not None:
            self._init_transfer()

    def _boot(self) -> None:
        self._note(lambda log: setattr(log, "boots", log.boots + 1))
        self._connect()
        if self.image_state is ImageState.PENDING_COMMIT:
            self._self_test_generation += 1
            self._start_timer("self_test_timer", self._self_test_generation, self.settings.self_test_wait)
        self._request_job()

    def _start_timer(self, kind: str, generation: int, seconds: float) -> None:
        timer = threading.Timer(seconds, lambda: self._events.put((kind, generation)))
        timer.daemon = True
        timer.start()

    def _restart_request_timer(self) -> None:
        self._timer_generation += 1
        self._start_timer("timer", self._timer_generation, self.settings.request_wait)

    def _stop_request_timer(self) -> None:
        self._timer_generation += 1

    def _token(self) -> str:
        counter = str(self._counter)
        if self.settings.token_style == "main":  # ota_mqtt.c after v3.4.1 (#468)
            return f"{counter[:-1]}:{self.thing[:53]}"
        return f"{counter}:{self.thing}"

    def _request_job(self) -> None:
        """requestJob_Mqtt: subscribe notify-next, publish `$next/get` (no reply timeout)."""
        self._subscribe(f"$aws/things/{self.thing}/jobs/notify-next", 1)
        token = self._token()
        self._counter += 1
        self._awaiting_job = True
        self._note(lambda log: log.tokens.append(token))
        self._publish(f"$aws/things/{self.thing}/jobs/$next/get", '{"clientToken":"' + token + '"}', 1)

    # Status messages (ota_mqtt.c) ------------------------------------------------------------
    def _status(self, job_id: str, status: str, details: str, qos: int = 1) -> None:
        payload = '{"status":"' + status + '","statusDetails":{' + details + "}}"
        parsed = json.loads(payload)["statusDetails"]
        self._publish(f"$aws/things/{self.thing}/jobs/{job_id}/update", payload, qos)
        self._note(lambda log: log.updates.append(Update(job_id, status, parsed, qos)))

    def _fail_with_value(self, job_id: str, reason: int, sub: int) -> None:
        self._status(job_id, "FAILED", f'"reason":"0x{reason:08x}: 0x{sub:08x}"')

    def _finish(self, job_id: str, state: str, sub: int) -> None:
        """setImageStateWithReason for rejected/aborted: FAILED `<reason>: 0x%08x`."""
        self._status(job_id, "FAILED", f'"reason":"{state}: 0x{sub:08x}"')

    # Job documents (ota.c: parseJobDoc, validateAndStartJob, handleSelfTestJobDoc) ------------
    def _on_job(self, raw: bytes) -> None:
        if self._file is not None and not self._awaiting_job:
            # jobNotificationHandler: any job message during a download aborts it.
            self._abort_download()
            self._note(lambda log: setattr(log, "restarts", log.restarts + 1))
            self._events.put(("request_job", None))
            return
        self._awaiting_job = False
        try:
            message = json.loads(raw)
        except ValueError:
            self._violation("a job message that is not JSON")
            return
        execution = message.get("execution") if isinstance(message, dict) else None
        if not isinstance(execution, dict):
            return  # no active job (OtaJobEventNoActiveJob)
        job_id = execution.get("jobId")
        if not isinstance(job_id, str) or not 0 < len(job_id) < JOB_ID_BUFFER:
            return
        details = execution.get("statusDetails") or {}
        spec = self._parse(raw, execution)
        if spec is None:
            self._parse_failed(job_id, PARSE_NON_CONFORMING)
            return
        self._note(lambda log: log.documents.append(execution["jobDocument"]))
        if self._file is not None:  # the answer asked for during an HTTP download (403: fresh URL)
            if job_id == self._file.job_id:  # verifyActiveJobStatus: same job, new URL, go on
                self._file.url = spec["url"]
                self._init_transfer()
                return
            self._abort_download()  # another job replaces it
        if "self_test" in details:
            self._self_test_document(job_id, details)
            return
        if self.image_state is ImageState.PENDING_COMMIT:
            # processValidFileContext: a job not in self-test while the platform is: reset.
            self._reboot(rollback=True)
            return
        if spec["filesize"] == 0:
            self._parse_failed(job_id, PARSE_ZERO_FILE_SIZE)
            return
        blocks = -(-spec["filesize"] // self.settings.block_size)
        if blocks > self.settings.max_blocks:
            # More blocks than the bitmap tracks: the library gives up without a status.
            self._note(lambda log: log.ignored.append(f"{job_id}: {blocks} blocks exceed the bitmap"))
            return
        self._start_download(job_id, spec, blocks)

    def _parse(self, raw: bytes, execution: dict[str, Any]) -> dict[str, Any] | None:
        """The library's document model; None when a required parameter is missing or a
        value does not fit its buffer."""
        document = execution.get("jobDocument")
        ota = document.get("afr_ota") if isinstance(document, dict) else None
        if not isinstance(ota, dict):
            return None
        protocols_text = re.search(rb'"protocols"\s*:\s*(\[[^\]]*\])', raw)
        files = ota.get("files")
        if (protocols_text is None or len(protocols_text.group(1)) >= PROTOCOL_BUFFER
                or not isinstance(files, list) or not files or not isinstance(files[0], dict)):
            return None
        first = files[0]
        if not isinstance(first.get("filesize"), int) or not isinstance(first.get("fileid"), int):
            return None
        texts = {"filepath": PATH_BUFFER, "certfile": PATH_BUFFER, "update_data_url": URL_BUFFER,
                 "auth_scheme": URL_BUFFER}
        for key, limit in texts.items():
            if key in first and (not isinstance(first[key], str) or len(first[key]) >= limit):
                return None
        stream = ota.get("streamname")
        if stream is not None and (not isinstance(stream, str) or len(stream) >= STREAM_BUFFER):
            return None
        signature_key = next((k for k in ("sig-sha256-ecdsa", "sig-sha256-rsa") if k in first), None)
        signature = b""
        if signature_key is not None:
            text = first[signature_key]
            if not isinstance(text, str) or re.search(rb"\\/", raw):
                return None  # the library's base64 decoder stops at an escaped slash
            try:
                signature = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                return None
        return {"protocols": ota.get("protocols"), "stream": stream, "filesize": first["filesize"],
                "fileid": first["fileid"], "filepath": first.get("filepath", ""),
                "certfile": first.get("certfile", ""), "url": first.get("update_data_url"),
                "signature": signature, "signature_key": signature_key or "sig-sha256-ecdsa"}

    def _parse_failed(self, job_id: str, error: int) -> None:
        """handleCustomJob took the job id; handleJobParsingError fails the job."""
        self._active_job = job_id
        self._fail_with_value(job_id, ERR_JOB_PARSER, error)
        self._active_job = ""

    def _self_test_document(self, job_id: str, details: dict[str, Any]) -> None:
        if self.image_state is not ImageState.PENDING_COMMIT:
            # inSelfTestHandler: the job is in self-test but the platform is not.
            self._finish(job_id, "rejected", ERR_IMAGE_STATE_MISMATCH)
            return
        updater = _strtoul(details.get("updatedBy"))
        running = self.version.to_u32()
        self._active_job = job_id
        if updater == running:
            self._finish(job_id, "rejected", ERR_SAME_VERSION)
            self._reboot(rollback=True)
        elif updater is None or updater > running:
            self._finish(job_id, "rejected", ERR_DOWNGRADE)
            self._reboot(rollback=True)
        else:
            self._status(job_id, "IN_PROGRESS", f'"self_test":"active","updatedBy":"{self.version.hex()}"')
            self._self_test_generation += 1  # the application's self-test passes: accept
            self.image_state = ImageState.ACCEPTED
            previous = Version.from_u32(updater)
            self._status(job_id, "SUCCEEDED", f'"reason":"accepted  v{self.version}",'
                                              f'"updatedBy":"  v{previous}"')
        self._active_job = ""

    def _on_self_test_timeout(self) -> None:
        if self.image_state is ImageState.PENDING_COMMIT:
            self._reboot(rollback=True)

    def _reboot(self, *, rollback: bool) -> None:
        self._disconnect()
        if rollback:
            self.version = self._previous
            self.image_state = ImageState.ACCEPTED
        self._events.put(("boot", None))

    # Downloads ------------------------------------------------------------------------------
    def _start_download(self, job_id: str, spec: dict[str, Any], blocks: int) -> None:
        protocols = spec["protocols"] if isinstance(spec["protocols"], list) else []
        protocol = next((p for p in self.settings.data_protocols if p in protocols), None)
        if protocol is None:
            self._active_job = job_id
            self._finish(job_id, "aborted", 0x0D)  # OtaErrInvalidDataProtocol
            self._active_job = ""
            return
        needed = bytearray(b"\xff" * -(-blocks // 8))
        for bit in range(7, 7 - (len(needed) * 8 - blocks), -1):
            needed[-1] &= ~(1 << bit) & 0xFF
        self._active_job = job_id
        self._file = _File(job_id, spec["stream"], spec["fileid"], spec["filesize"], spec["filepath"],
                           spec["certfile"], spec["signature"], spec["signature_key"], spec["url"],
                           bytearray(spec["filesize"]), needed, blocks, protocol)
        self._momentum = 0
        self._init_transfer()

    def _init_transfer(self) -> None:
        file = self._file
        assert file is not None
        if file.protocol == "MQTT":
            if not file.stream:
                self._abort_download()
                return
            self._subscribe(f"$aws/things/{self.thing}/streams/{file.stream}/data/cbor", 0)
            self._request_blocks()
            return
        if self._http_connect(file):
            self._momentum = 0
            self._request_blocks()
        elif self._momentum < self.settings.max_momentum:
            self._momentum += 1
            self._events_after(self.settings.request_wait, ("retry_init", None))
        else:  # initFileHandler: momentum abort, shut down; no status is ever sent
            self._note(lambda log: setattr(log, "shut_down", True))

    def _events_after(self, seconds: float, event: tuple[str, Any]) -> None:
        timer = threading.Timer(seconds, lambda: self._events.put(event))
        timer.daemon = True
        timer.start()

    def _abort_download(self) -> None:
        self._stop_request_timer()
        self._close_http()
        self._file = None
        self._active_job = ""

    def _request_blocks(self) -> None:
        """requestDataHandler: one request, the timer restarted, momentum counted."""
        file = self._file
        assert file is not None
        if file.remaining == 0:
            return
        self._restart_request_timer()
        if self._momentum >= self.settings.max_momentum:
            self._stop_request_timer()
            job_id = file.job_id
            self._abort_download()
            self._finish(job_id, "aborted", 0)
            self._note(lambda log: setattr(log, "shut_down", True))
            return
        self._momentum += 1
        if file.protocol == "MQTT":
            file.to_receive = self.settings.blocks_per_request
            request = cbor2.dumps({"c": "rdy", "f": file.file_id, "l": self.settings.block_size, "o": 0,
                                   "b": bytes(file.needed), "n": self.settings.blocks_per_request})
            if self._client is not None:
                self._client.publish(f"$aws/things/{self.thing}/streams/{file.stream}/get/cbor", request, 0)
        else:
            self._http_block(file)

    def _on_request_timer(self) -> None:
        if self._file is not None:
            self._request_blocks()

    def _on_block(self, topic: str, payload: bytes) -> None:
        file = self._file
        if file is None or file.protocol != "MQTT" or file.remaining == 0:
            self._violation(f"unexpected message on {topic} (no download)")
            return
        if topic != f"$aws/things/{self.thing}/streams/{file.stream}/data/cbor":
            self._violation(f"message on {topic} while downloading")
        try:
            block = cbor2.loads(payload)
            index, size, data = block["i"], block["l"], block["p"]
            valid = (isinstance(block, dict) and isinstance(block.get("f"), int) and isinstance(index, int)
                     and isinstance(size, int) and isinstance(data, bytes)
                     and len(data) <= self.settings.block_size)
        except (cbor2.CBORDecodeError, KeyError, TypeError, ValueError):
            valid = False
        if not valid:
            self._bad_block(file, f"undecodable message on {topic}")
            return
        if block["f"] != file.file_id or size != len(data):
            self._violation(f"block {index}: file {block['f']}, l={size}, {len(data)} bytes")
        self._ingest(file, index, size, data)

    def _bad_block(self, file: _File, why: str) -> None:
        self._violation(why)
        job_id = file.job_id
        self._abort_download()
        self._fail_with_value(job_id, PAL_UNINITIALIZED, 0)

    def _ingest(self, file: _File, index: int, size: int, data: bytes) -> None:
        """processDataBlock, ingestDataBlockCleanup and processDataHandler."""
        last = (file.size + self.settings.block_size - 1) // self.settings.block_size - 1
        in_range = (0 <= index < last and size == self.settings.block_size) or (
            index == last and size == file.size - last * self.settings.block_size)
        if not in_range:
            self._bad_block(file, f"block {index} of {size} bytes is out of range")
            return
        byte, mask = index >> 3, 1 << (index % 8)
        if not file.needed[byte] & mask:
            return  # a duplicate: ignored
        offset = index * self.settings.block_size
        file.data[offset:offset + size] = data[:size]
        file.needed[byte] &= ~mask & 0xFF
        file.remaining -= 1
        if file.remaining == 0:
            self._complete(file)
            return
        self._momentum = 0
        blocks = last + 1
        received = blocks - file.remaining
        if received == 1 or received % self.settings.status_frequency == 0:
            self._status(file.job_id, "IN_PROGRESS", f'"receive":"{received}/{blocks}"', qos=0)
        if file.protocol == "HTTP":
            self._events.put(("next_block", None))
        elif file.to_receive > 1:
            file.to_receive -= 1
        else:
            self._request_blocks()

    def _complete(self, file: _File) -> None:
        self._stop_request_timer()
        self._close_http()
        self._file = None
        result = self._check_signature(file)
        if result != 0:
            self._fail_with_value(file.job_id, result, 0)
            self._active_job = ""
            return
        self._status(file.job_id, "IN_PROGRESS", f'"self_test":"ready","updatedBy":"{self.version.hex()}"')
        self._active_job = ""
        # OtaJobEventActivate: the new image boots in self-test (pending commit).
        self._previous = self.version
        self.version = parse_header(bytes(file.data)).version
        self.image_state = ImageState.PENDING_COMMIT
        self._reboot(rollback=False)

    def _check_signature(self, file: _File) -> int:
        pem = self.certfiles.get(file.certfile)
        if pem is None:
            return PAL_BAD_SIGNER_CERT
        try:
            key = x509.load_pem_x509_certificate(pem).public_key()
            if isinstance(key, ec.EllipticCurvePublicKey) and file.signature_key == "sig-sha256-ecdsa":
                key.verify(file.signature, bytes(file.data), ec.ECDSA(hashes.SHA256()))
            elif isinstance(key, rsa.RSAPublicKey) and file.signature_key == "sig-sha256-rsa":
                key.verify(file.signature, bytes(file.data), padding.PKCS1v15(), hashes.SHA256())
            else:
                return PAL_BAD_SIGNER_CERT
        except (InvalidSignature, ValueError):
            return PAL_SIGNATURE_CHECK_FAILED
        return 0

    # HTTP (the HTTP demo's connectToS3Server, httpRequest, handleHttpResponse) --------------
    def _http_connect(self, file: _File) -> bool:
        url = file.url or ""
        scheme_end = url.find("://")
        if scheme_end < 0:
            self._http_failure(f"URL without ://: {url[:80]}")
            return False
        rest = url[scheme_end + 3:]
        slash = rest.find("/")
        host, path = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])
        try:
            address = str(socket.getaddrinfo(host, HTTPS_PORT, socket.AF_INET, socket.SOCK_STREAM)[0][4][0])
        except (socket.gaierror, UnicodeError) as exc:
            self._http_failure(f"DNS {host!r}: {exc}")
            return False
        target = self.network.get((address, HTTPS_PORT), (address, HTTPS_PORT))
        context = ssl.create_default_context(cafile=str(self.bundle / "root-ca.pem"))
        try:
            raw = socket.create_connection(target, timeout=10)
            sock = context.wrap_socket(raw, server_hostname=host)  # SSL_set1_host(host)
        except OSError as exc:
            self._http_failure(f"connect {host}:{HTTPS_PORT}: {exc}")
            return False
        self._note(lambda log: log.http_connects.append((host, HTTPS_PORT)))
        self._http = _Http(sock, host, path)
        return True

    def _close_http(self) -> None:
        if self._http is not None:
            with contextlib.suppress(OSError):
                self._http.sock.close()
            self._http = None

    def _http_block(self, file: _File) -> None:
        if self._http is None and not self._http_connect(file):
            return  # the request timer asks again
        http = self._http
        assert http is not None
        first = file.current_block * self.settings.block_size
        last = file.size - 1 if file.remaining == 1 else first + self.settings.block_size - 1
        request = (f"GET {http.path} HTTP/1.1\r\nUser-Agent: {USER_AGENT}\r\nHost: {http.host}\r\n"
                   f"Connection: keep-alive\r\nRange: bytes={first}-{last}\r\n\r\n").encode()
        try:
            http.sock.sendall(request)
            status, headers, body = self._http_response(http.sock)
        except (OSError, ValueError) as exc:
            self._http_failure(f"request: {exc}")
            self._close_http()
            return
        if headers.get("connection", "").lower() == "close":
            self._close_http()
        if status == 206:
            index = file.current_block
            file.current_block += 1  # decodeFileBlock_Http: the block is the next in order
            self._ingest(file, index, len(body), body)
        elif status in (400, 403, 404):
            self._stop_request_timer()
            self._close_http()
            self._request_job()  # a fresh URL; the same job continues where it stopped
        else:
            self._http_failure(f"HTTP {status}")

    def _http_response(self, sock: ssl.SSLSocket) -> tuple[int, dict[str, str], bytes]:
        """One response read into the demo's buffer (headers and body together)."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                raise ValueError("connection closed")
            data += chunk
            if len(data) > self.settings.http_buffer:
                raise ValueError("response headers exceed the buffer")
        head, body = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        if len(head) + 4 + length > self.settings.http_buffer:
            self._violation(f"HTTP response of {len(head) + 4 + length} bytes exceeds the demo's buffer")
            raise ValueError("response exceeds the buffer")
        while len(body) < length:
            chunk = sock.recv(length - len(body))
            if not chunk:
                raise ValueError("connection closed")
            body += chunk
        return status, headers, body


def _strtoul(value: Any) -> int | None:
    """strtoul(text, &end, 0) that must consume the whole text."""
    if not isinstance(value, str):
        return None
    try:
        return int(value, 0) & 0xFFFFFFFF
    except ValueError:
        return None


def provision(iot: Any, thing: str, out_dir: Path, fleet_ca_pem: bytes, *, thing_type: str | None = None,
              attributes: Mapping[str, str] | None = None) -> Path:
    """A thing as an operator creates one for a FreeRTOS device with plain AWS calls (no
    overair marking: the default device profile), its certificate (CN = thing name,
    issued by the fleet CA) attached, and the files the device holds; returns out_dir."""
    params: dict[str, Any] = {"thingName": thing}
    if thing_type:
        params["thingTypeName"] = thing_type
    if attributes:
        params["attributePayload"] = {"attributes": dict(attributes)}
    iot.create_thing(**params)
    cert = create_keys_and_certificate_for(iot, thing)
    iot.attach_thing_principal(thingName=thing, principal=cert["certificateArn"])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "device.crt").write_text(cert["certificatePem"])
    (out_dir / "device.key").write_text(cert["keyPair"]["PrivateKey"])
    (out_dir / "root-ca.pem").write_bytes(fleet_ca_pem)
    return out_dir
