"""What the service answers to device messages (Jobs MQTT API and file delivery).

`DeviceService.handle(topic, payload)` is synchronous and returns the messages to
publish; the MQTT driver (`mqtt_driver.py`) owns the connection and runs `handle` in a
worker serialised per thing, so one device's messages are answered in order.

The broker ACL guarantees that a message under `$aws/things/T/...` was published by a
client whose certificate is attached to thing T, so the thing named in the topic is an
authenticated identity here.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from overair.core import jobs_wire as wire
from overair.core import streamcodec, topics
from overair.core.errors import DecodeError, OverairError, PeerInputError
from overair.core.limits import Limits
from overair.core.streamplan import plan_blocks
from overair.core.topics import JobsRequest, JobsTopic, StreamsRequest, StreamsTopic
from overair.server.api.contract import ApiError
from overair.server.audit.log import AuditLog
from overair.server.clock import Clock
from overair.server.jobs.service import JobService, JobsMqttError
from overair.server.streams.service import StreamService

log = logging.getLogger("overair.devices")

QOS_CONTROL = 1
QOS_BLOCKS = 0  # blocks are re-requested by the device's bitmap; QoS 1 would only add round trips
STREAM_ACCESS_TTL = 2.0


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    payload: bytes
    qos: int = QOS_CONTROL


class DeviceService:
    def __init__(self, jobs: JobService, streams: StreamService, audit: AuditLog, limits: Limits,
                 clock: Clock) -> None:
        self._jobs = jobs
        self._streams = streams
        self._audit = audit
        self._limits = limits
        self._clock = clock
        self._access: dict[tuple[str, str], tuple[bool, float]] = {}
        self._access_lock = threading.Lock()

    def handle(self, topic: str, payload: bytes) -> list[Outgoing]:
        parsed = topics.parse_request_topic(topic)
        if parsed is None:
            log.warning("ignored message on unserved topic %s", topic)
            return []
        try:
            if isinstance(parsed, JobsTopic):
                return self._handle_jobs(topic, parsed, payload)
            return self._handle_stream(parsed, payload)
        except Exception:
            # Never let one bad message take the service down; answer InternalError.
            log.exception("failed to handle %s", topic)
            if isinstance(parsed, JobsTopic):
                return [self._jobs_error(topic, wire.INTERNAL_ERROR, "internal error", "")]
            return [self._stream_error(parsed, "InternalError", "internal error", "")]

    # Jobs ---------------------------------------------------------------------------
    def _now(self) -> int:
        return int(self._clock())

    def _jobs_error(self, topic: str, code: str, message: str, token: str,
                    state: dict[str, Any] | None = None) -> Outgoing:
        return Outgoing(topics.jobs_reply_topic(topic, accepted=False),
                        wire.encode(wire.error_reply(code, message, token, self._now(), state)))

    def _accepted(self, topic: str, body: dict[str, Any]) -> Outgoing:
        return Outgoing(topics.jobs_reply_topic(topic, accepted=True), wire.encode(body))

    def _handle_jobs(self, topic: str, parsed: JobsTopic, payload: bytes) -> list[Outgoing]:
        token = ""
        try:
            request = wire.load_request(payload, self._limits)
            token = wire.client_token(request, self._limits)
            thing = parsed.thing_name
            if parsed.request is JobsRequest.DESCRIBE:
                return self._describe(topic, thing, parsed.job_id or topics.NEXT, token)
            if parsed.request is JobsRequest.GET_PENDING:
                in_progress, queued = self._jobs.pending_for_device(thing)
                return [self._accepted(topic, {"inProgressJobs": in_progress, "queuedJobs": queued,
                                               "clientToken": token, "timestamp": self._now()})]
            if parsed.request is JobsRequest.START_NEXT:
                details = wire.parse_status_details(request.get("statusDetails"), self._limits)
                execution = self._jobs.start_next(thing, details)
                return [self._accepted(topic, wire.execution_reply(execution, token, self._now()))]
            return self._update(topic, parsed, request)
        except JobsMqttError as exc:
            log.info("jobs request %s rejected: %s %s", topic, exc.code, exc.message)
            if parsed.request is JobsRequest.UPDATE:
                self._audit_update(parsed, "Rejected", {"code": exc.code, "reason": exc.message})
            return [self._jobs_error(topic, exc.code, exc.message, token, exc.execution_state)]
        except DecodeError as exc:
            log.info("jobs request %s rejected: %s %s", topic, exc.code, exc.message)
            if parsed.request is JobsRequest.UPDATE:
                self._audit_update(parsed, "Rejected", {"code": exc.code, "reason": exc.message})
            return [self._jobs_error(topic, exc.code, exc.message, token)]

    def _audit_update(self, parsed: JobsTopic, decision: str, detail: dict[str, Any]) -> None:
        self._audit.record_status_update(parsed.thing_name, self._jobs.job_arn(parsed.job_id or ""), decision,
                                         detail)

    def _describe(self, topic: str, thing: str, job_id: str, token: str) -> list[Outgoing]:
        if job_id == topics.NEXT:
            execution = self._jobs.next_execution(thing)
            reply = wire.encode(wire.execution_reply(execution, token, self._now()))
            # FreeRTOS quirk: the agent never subscribes to $next/get/accepted (AWS
            # delivers it anyway; a standard broker does not), so the same reply also
            # goes to notify-next, which it does subscribe to. Never leave it unanswered.
            return [Outgoing(topics.jobs_reply_topic(topic, accepted=True), reply),
                    Outgoing(topics.notify_next_topic(thing), reply)]
        execution = self._jobs.execution_for_device(thing, job_id)
        return [self._accepted(topic, wire.execution_reply(execution, token, self._now()))]

    def _update(self, topic: str, parsed: JobsTopic, request: dict[str, Any]) -> list[Outgoing]:
        thing = parsed.thing_name
        update = wire.parse_update(request, self._limits)
        outcome = self._jobs.update_execution(thing, parsed.job_id or "", update)
        if update.status.terminal:
            self._audit_update(parsed, "Accepted", {"status": update.status.value,
                                                    "statusDetails": update.status_details})
        body: dict[str, Any] = {"clientToken": update.client_token, "timestamp": self._now()}
        if update.include_job_execution_state:
            view = outcome.execution
            body["executionState"] = {"status": view.status.value,
                                      "statusDetails": view.status_details,
                                      "versionNumber": view.version_number}
        if update.include_job_document and outcome.execution.job_document is not None:
            body["jobDocument"] = outcome.execution.job_document
        out = [self._accepted(topic, body)]
        if outcome.next_changed:
            out.extend(self.notify_next(thing))
        return out

    def notify_next(self, thing: str) -> list[Outgoing]:
        """`notify-next` for a thing whose next job changed, and `notify` with its pending
        list (which changed with it)."""
        execution = self._jobs.next_execution(thing)
        return [Outgoing(topics.notify_next_topic(thing),
                         wire.encode(wire.notify_next(execution, self._now()))),
                *self.notify_pending(thing)]

    def notify_pending(self, thing: str) -> list[Outgoing]:
        """`notify` for a thing whose list of pending executions changed. FreeRTOS agents
        do not subscribe to it, so it never disturbs a download."""
        in_progress, queued = self._jobs.pending_for_device(thing)
        return [Outgoing(topics.notify_topic(thing),
                         wire.encode(wire.notify_pending(in_progress, queued, self._now())))]

    # File delivery -----------------------------------------------------------------
    def _stream_error(self, parsed: StreamsTopic, code: str, message: str, token: str) -> Outgoing:
        return Outgoing(topics.stream_rejected_topic(parsed.thing_name, parsed.stream_id, parsed.fmt),
                        streamcodec.encode_rejection(code, message, token, parsed.fmt))

    def _may_read(self, thing: str, stream_id: str) -> bool:
        """N4: only a thing with a live execution whose job delivers this stream."""
        now = self._clock()
        key = (thing, stream_id)
        with self._access_lock:
            cached = self._access.get(key)
            if cached is not None and cached[1] > now:
                return cached[0]
        allowed = self._jobs.live_execution_references(
            thing, self._jobs.jobs_referencing_stream(stream_id))
        with self._access_lock:
            if len(self._access) > 100_000:
                self._access.clear()
            self._access[key] = (allowed, now + STREAM_ACCESS_TTL)
        return allowed

    def _cached_access(self, thing: str, stream_id: str) -> bool | None:
        with self._access_lock:
            cached = self._access.get((thing, stream_id))
        return cached[0] if cached is not None and cached[1] > self._clock() else None

    def handle_from_cache(self, topic: str, payload: bytes) -> list[Outgoing] | None:
        """Answer a block request from what is already in memory, or return None.

        Nearly every GetStream of a rollout is such a request (the access decision, the
        stream row and the file bytes were cached by the device's first request). The MQTT
        driver answers these on its event loop, skipping two thread hand-offs per request;
        anything that needs the database, the object store, an audit entry or an error
        reply returns None and goes the normal way (`handle`)."""
        parsed = topics.parse_request_topic(topic)
        if not isinstance(parsed, StreamsTopic) or parsed.request is not StreamsRequest.GET:
            return None
        if not self._cached_access(parsed.thing_name, parsed.stream_id):
            return None
        stream = self._streams.cached_stream(parsed.stream_id)
        if stream is None:
            return None
        try:
            request = streamcodec.decode_get_stream(payload, parsed.fmt, self._limits)
        except DecodeError:
            return None
        if request.stream_version is not None and request.stream_version != stream.version:
            return None
        data = self._streams.cached_file_bytes(stream, request.file_id)
        if data is None:
            return None
        try:
            return self._blocks(parsed, request, stream, data)
        except PeerInputError:
            return None

    def forget_access(self) -> None:
        with self._access_lock:
            self._access.clear()

    def _handle_stream(self, parsed: StreamsTopic, payload: bytes) -> list[Outgoing]:
        token = ""
        try:
            if parsed.request is StreamsRequest.DESCRIBE:
                token = streamcodec.decode_describe_stream(payload, parsed.fmt, self._limits)
            else:
                request = streamcodec.decode_get_stream(payload, parsed.fmt, self._limits)
                token = request.client_token
            if not self._may_read(parsed.thing_name, parsed.stream_id):
                self._audit.record(principal=f"thing/{parsed.thing_name}", action="iot:GetStream",
                                   resource=f"stream/{parsed.stream_id}", decision="DENY",
                                   detail={"reason": "no live execution references this stream"})
                # Same answer as for a stream that does not exist: no existence oracle.
                return [self._stream_error(parsed, "ResourceNotFound",
                                           f"stream {parsed.stream_id} not found", token)]
            stream = self._streams.stream_for_delivery(parsed.stream_id)
            if parsed.request is StreamsRequest.DESCRIBE:
                return [Outgoing(topics.stream_description_topic(parsed.thing_name, parsed.stream_id,
                                                                 parsed.fmt),
                                 streamcodec.encode_description(token, stream.version, stream.description,
                                                                self._streams.file_sizes(stream),
                                                                parsed.fmt))]
            return self._serve_blocks(parsed, stream, request)
        except ApiError as exc:
            return [self._stream_error(parsed, "ResourceNotFound", exc.message, token)]
        except PeerInputError as exc:
            log.info("stream request from %s rejected: %s %s", parsed.thing_name, exc.code, exc.message)
            return [self._stream_error(parsed, exc.code, exc.message, token)]
        except OverairError as exc:
            log.error("stream %s unavailable: %s", parsed.stream_id, exc.message)
            return [self._stream_error(parsed, "InternalError", "file unavailable", token)]

    def _serve_blocks(self, parsed: StreamsTopic, stream: Any,
                      request: streamcodec.GetStreamRequest) -> list[Outgoing]:
        if request.stream_version is not None and request.stream_version != stream.version:
            raise PeerInputError(f"stream is at version {stream.version}", code="VersionMismatch")
        return self._blocks(parsed, request, stream, self._streams.file_bytes(stream, request.file_id))

    def _blocks(self, parsed: StreamsTopic, request: streamcodec.GetStreamRequest, stream: Any,
                data: bytes) -> list[Outgoing]:
        blocks = plan_blocks(request, len(data), self._limits)
        topic = topics.stream_data_topic(parsed.thing_name, parsed.stream_id, parsed.fmt)
        return [Outgoing(topic, self._streams.data_block(stream, request.file_id, data, request.block_size,
                                                         block, parsed.fmt), QOS_BLOCKS)
                for block in blocks]
