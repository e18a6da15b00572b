"""`overair-agent install BUNDLE`: apply an offline bundle (core/bundle.py) through the
very machine and runtime that apply an online update — no parallel path.

The bundle stands in for the service: `BundleTransport` is a Transport (like MQTT's)
that answers the agent's Jobs requests (`$next/get`, UpdateJobExecution) with the
bundle's one execution and its GetStream requests with blocks of the bundle's file.
Everything else is the agent's own: the state machine admits the document's deployment
metadata, the image's signature and chain, the revocation list, the version floor and
security counter (agent/trust.py, with `Settings.offline_bundle`: only metadata signed
for a bundle, and deployment metadata required whatever the configuration says); the
runtime stages, verifies, activates, reboots, self-tests and commits or rolls back, and
journals each step first (R2), so a power cut at any point leaves the device as an
interrupted online update would. Run it again after a power cut: the journal resumes
the self-test of an image already activated, a download restarts.

Reporting: the agent journals the job's result like any other. The bundle carries the
server's execution number, so when the device next connects the service offers that
execution, the agent recognises a job it finished (N3) and repeats its recorded result:
that is how the server learns the outcome. Nothing in a bundle reaches the network.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from overair.agent.config import AgentConfig, ConfigError
from overair.agent.fsutil import atomic_write
from overair.agent.platform.base import Platform
from overair.agent.runtime import Runtime, SelfTestHook
from overair.agent.transport.base import Transport, TransportCallbacks
from overair.core import jobs_wire, streamcodec, topics, wirejson
from overair.core.bitmap import block_count
from overair.core.bundle import Bundle, read_bundle_file
from overair.core.errors import DecodeError, OverairError, PeerInputError
from overair.core.jobstates import ExecStatus
from overair.core.limits import DEFAULT_LIMITS
from overair.core.revocation import REVOCATIONS_TOPIC
from overair.core.streamplan import block_bytes, plan_blocks
from overair.core.trustlist import TRUST_TOPIC

log = logging.getLogger("overair.agent")
DEFAULT_TIMEOUT = 600.0
EXECUTION_FILE = "offline-execution.json"  # in the agent's data directory


@dataclass
class BundleSession:
    """The bundle's one job execution as the service would hold it, shared by the
    transports of each (in-process) boot of one install, and kept in `store` (replaced
    atomically) for the next run of `install` after a power cut: what the service holds
    online, e.g. the `self_test` step reported just before the cut. It is the network's
    side of the job and trusted no more than a job message is."""

    bundle: Bundle
    thing: str
    store: Path | None = None
    status: ExecStatus = ExecStatus.QUEUED
    status_details: dict[str, str] = field(default_factory=dict)
    version_number: int = 1
    finished: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.store is None:
            return
        try:
            held = wirejson.loads(self.store.read_bytes(), max_depth=3, what="offline execution")
            if not isinstance(held, dict) or held.get("job_id") != self.bundle.job_id:
                return  # another bundle's, or none: this execution starts QUEUED
            status = ExecStatus(str(held.get("status")))
            details = jobs_wire.parse_status_details(held.get("details"))
        except (OSError, DecodeError, ValueError):
            return
        if not status.terminal:  # a finished install is offered again: the agent repeats its result (N3)
            self.status, self.status_details = status, details or {}

    def _save(self) -> None:
        if self.store is None:
            return
        record = {"job_id": self.bundle.job_id, "status": self.status.value, "details": self.status_details}
        try:
            self.store.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.store, json.dumps(record, sort_keys=True).encode())
        except OSError as exc:
            log.warning("offline install: could not keep the execution's state in %s: %s", self.store, exc)

    @property
    def stream_id(self) -> str:
        ota = self.bundle.document.get("afr_ota")
        name = ota.get("streamname") if isinstance(ota, dict) else None
        return name if isinstance(name, str) else ""

    def file_data(self, file_id: int) -> bytes | None:
        """The bundled bytes of the document's file `file_id` (files are bundled in the
        document's order)."""
        ota = self.bundle.document.get("afr_ota")
        files = ota.get("files") if isinstance(ota, dict) else None
        if not isinstance(files, list):
            return None
        for index, entry in enumerate(files[:len(self.bundle.files)]):
            if isinstance(entry, dict) and entry.get("fileid", index) == file_id:
                return self.bundle.files[index].data
        return None

    def execution(self, now: int) -> jobs_wire.ExecutionView | None:
        if self.status.terminal:
            return None
        return jobs_wire.ExecutionView(
            job_id=self.bundle.job_id, thing_name=self.thing, status=self.status,
            status_details=dict(self.status_details), queued_at=now, started_at=None, last_updated_at=now,
            version_number=self.version_number, execution_number=self.bundle.execution_number,
            job_document=self.bundle.document)

    def update(self, request: jobs_wire.UpdateRequest) -> None:
        with self.lock:
            self.status = request.status
            if request.status_details is not None:
                self.status_details = dict(request.status_details)
            self.version_number += 1
            self._save()
        log.info("offline job %s: %s %s", self.bundle.job_id, request.status.value,
                 json.dumps(request.status_details or {}, sort_keys=True))
        if request.status.terminal:
            self.finished.set()


class BundleTransport:
    """A Transport served by the bundle: what a broker and the Jobs and Streams services
    would answer, for this one execution and this one stream, and nothing else."""

    def __init__(self, session: BundleSession, callbacks: TransportCallbacks,
                 clock: Callable[[], float] = time.time) -> None:
        self._session = session
        self._callbacks = callbacks
        self._clock = clock
        self._connected = False

    def connect(self) -> None:
        self._connected = True
        self._callbacks.on_connected()

    def disconnect(self) -> None:
        self._connected = False

    def subscribe(self, topic: str, qos: int) -> None:
        revocations = self._session.bundle.revocations
        if topic == REVOCATIONS_TOPIC and revocations is not None and self._connected:
            # As the broker delivers the retained list on SUBSCRIBE; the agent's trust
            # admits it only if the server signed it and it is newer than the held one (O2).
            self._callbacks.on_message(REVOCATIONS_TOPIC, revocations)
        trust_lists = self._session.bundle.trust_lists
        if topic == TRUST_TOPIC and trust_lists is not None and self._connected:
            # Likewise the trust list chain: a rotation reaches a device without a network
            # path too (admitted only by the rule of agent/trust.py admit_trust_chain).
            self._callbacks.on_message(TRUST_TOPIC, trust_lists)

    def unsubscribe(self, topic: str) -> None:
        return None

    def flush(self, timeout: float) -> bool:
        return True

    def publish(self, topic: str, payload: bytes, qos: int) -> None:
        if not self._connected:
            return
        request = topics.parse_request_topic(topic)
        try:
            if isinstance(request, topics.JobsTopic) and request.thing_name == self._session.thing:
                self._jobs(topic, request, payload)
            elif isinstance(request, topics.StreamsTopic) and request.thing_name == self._session.thing \
                    and request.request is topics.StreamsRequest.GET \
                    and request.stream_id == self._session.stream_id:
                self._stream(request, payload)
        except (DecodeError, PeerInputError) as exc:
            log.warning("offline install: request on %s ignored: %s", topic, exc.message)

    def _jobs(self, topic: str, request: topics.JobsTopic, payload: bytes) -> None:
        now = int(self._clock())
        body = jobs_wire.load_request(payload) if payload else {}
        if request.request is topics.JobsRequest.DESCRIBE and request.job_id == topics.NEXT:
            reply = jobs_wire.execution_reply(self._session.execution(now), jobs_wire.client_token(body), now)
            self._callbacks.on_message(topics.jobs_reply_topic(topic, accepted=True), jobs_wire.encode(reply))
        elif request.request is topics.JobsRequest.UPDATE and request.job_id == self._session.bundle.job_id:
            self._session.update(jobs_wire.parse_update(body))

    def _stream(self, request: topics.StreamsTopic, payload: bytes) -> None:
        get = streamcodec.decode_get_stream(payload, request.fmt)
        data = self._session.file_data(get.file_id)
        if data is None or block_count(len(data), get.block_size) == 0:
            return
        data_topic = topics.stream_data_topic(self._session.thing, request.stream_id, request.fmt)
        for block in plan_blocks(get, len(data), DEFAULT_LIMITS):
            message = streamcodec.DataBlock(get.file_id, block, block_bytes(data, block, get.block_size))
            self._callbacks.on_message(data_topic, streamcodec.encode_data_block(message, request.fmt))


@dataclass(frozen=True, slots=True)
class InstallOutcome:
    job_id: str
    status: str  # the job's final status as the agent reported it ("" if it never finished)
    details: dict[str, str]
    reboots: int  # 0: nothing was activated
    version: str | None  # running after the install
    error: str | None  # the runtime stopped on an error

    def to_json_obj(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "status": self.status, "details": self.details,
                "reboots": self.reboots, "version": self.version, "error": self.error}


def install(config: AgentConfig, bundle_path: Path, *, timeout: float = DEFAULT_TIMEOUT,
            platform: Platform | None = None, self_test_hook: SelfTestHook | None = None,
            clock: Callable[[], float] = time.time) -> InstallOutcome:
    """Apply the bundle at `bundle_path` to the device `config` describes and wait until
    the job finished (committed, refused or rolled back) or `timeout` passed. Run it while
    the agent service is stopped (they share the device's storage)."""
    if config.trust.deployment_keys is None:
        raise ConfigError(f"{config.source}: an offline bundle needs [trust] deployment_keys (the "
                          "server's deployment public key: deployment-keys.pem in bundles from "
                          "`overair thing create`)")
    try:
        bundle = read_bundle_file(bundle_path)
    except OSError as exc:
        raise OverairError(f"cannot read {bundle_path}: {exc}", code="FileError") from exc
    session = BundleSession(bundle, config.thing_name, config.storage.data_dir / EXECUTION_FILE)

    def transport(callbacks: TransportCallbacks) -> Transport:
        return BundleTransport(session, callbacks, clock)

    runtime = Runtime(config, platform=platform, transport_factory=transport, self_test_hook=self_test_hook,
                      clock=clock, offline_bundle=True)
    runtime.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not session.finished.is_set() and runtime.snapshot().alive:
            session.finished.wait(0.05)
        # The final report is published before the journal step ends: let it settle.
        runtime.wait(lambda s: s.phase == "idle" or not s.alive, 5.0)
    finally:
        runtime.stop()
    snap = runtime.snapshot()
    return InstallOutcome(
        job_id=bundle.job_id, status=session.status.value if session.finished.is_set() else "",
        details=dict(session.status_details), reboots=snap.reboots, version=snap.version, error=snap.error)
