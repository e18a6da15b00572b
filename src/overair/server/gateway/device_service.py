"""What the service answers to device messages (Jobs MQTT API and file delivery).

`DeviceService.handle(topic, payload)` is synchronous and returns the messages to
publish; the MQTT driver (`mqtt_driver.py`) owns the connection and runs `handle` in a
worker serialised per thing, so one device's messages are answered in order.

The broker ACL guarantees that a message under `$aws/things/T/...` was published by a
client whose certificate is attached to thing T, so the thing named in the topic is an
authenticated identity here.

Everything else in a message is hostile. This class is the one place where the device
side of MQTT is translated: decoders raise `DecodeError`/`PeerInputError`, the job
service `JobsMqttError`, and each becomes AWS's error reply on `<request>/rejected`
(jobs) or `.../rejected/<fmt>` (streams); nothing else is ever published under a
device's `streams/` topics. No message can raise out of `handle`, `admit` or
`handle_from_cache`.

What a device can make the service do is bounded (finding 11): `admit` spends a token
of the device's budget (delivery/budgets.py) before anything else and refuses an
over-budget request with RequestThrottled, counted in the audit log rather than
recorded one by one (audit/device_events.py); refusals and rejected updates are audited
the same bounded way.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

from overair.core import jobs_wire as wire
from overair.core import streamcodec, topics
from overair.core.errors import DecodeError, OverairError, PeerInputError, UnavailableError
from overair.core.limits import Limits
from overair.core.shadow import ShadowError
from overair.core.streamplan import plan_blocks
from overair.core.topics import JobsRequest, JobsTopic, StreamsRequest, StreamsTopic
from overair.server import metrics
from overair.server.api.contract import ApiError
from overair.server.audit.device_events import DeviceEventRecorder
from overair.server.audit.log import AuditLog
from overair.server.clock import Clock
from overair.server.delivery.budgets import DeviceBudgets, Kind
from overair.server.delivery.download_gate import DownloadGate
from overair.server.jobs.coalesced_reads import CoalescedReads
from overair.server.jobs.deliveries import THINGS_PER_READ
from overair.server.jobs.service import JobService, JobsMqttError, UpdateOutcome
from overair.server.log_bounds import BoundedLog
from overair.server.shadow.mqtt import ShadowMqtt, ShadowTopic, ShadowVerb, parse_topic
from overair.server.streams.access import AccessCache
from overair.server.streams.service import StreamService

log = logging.getLogger("overair.devices")

QOS_CONTROL = 1
# A plain progress report of a run: (index in the run, topic, payload, thing, job id, request).
_Report = tuple[int, str, bytes, str, str, wire.UpdateRequest]
# A well-formed UpdateJobExecution: its topic and its request (`_parsed_update`).
_Parsed = tuple[JobsTopic, wire.UpdateRequest]
QOS_BLOCKS = 0  # blocks are re-requested by the device's bitmap; QoS 1 would only add round trips
QOS_THROTTLED = 0  # a refusal for a flood: never worth a PUBACK round trip
# What each kind of request is called in the audit log.
_KIND_ACTIONS = {Kind.JOB_UPDATE: "iot:UpdateJobExecution", Kind.JOB_READ: "iot:DescribeJobExecution",
                 Kind.STREAM: "iot:GetStream"}


_JOBS_CODES = frozenset({wire.INVALID_TOPIC, wire.INVALID_JSON, wire.INVALID_REQUEST,
                         wire.INVALID_STATE_TRANSITION, wire.RESOURCE_NOT_FOUND, wire.VERSION_MISMATCH,
                         wire.INTERNAL_ERROR, wire.REQUEST_THROTTLED, wire.TERMINAL_STATE_REACHED})


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    payload: bytes
    qos: int = QOS_CONTROL


class DeviceService:
    def __init__(self, jobs: JobService, streams: StreamService, audit: AuditLog, limits: Limits,
                 clock: Clock, gate: DownloadGate | None = None) -> None:
        self._jobs = jobs
        self._streams = streams
        self._audit = audit
        self._limits = limits
        self._clock = clock
        self._access = AccessCache(limits.device_access_cache_seconds, limits.device_access_cache_entries)
        # A rollout's first block requests all miss the access cache at once: read them together.
        self._delivered_streams = CoalescedReads(self._streams_delivered, THINGS_PER_READ)
        self._budgets = DeviceBudgets(limits)
        self._gate = gate  # the fleet download policy (delivery/policy.py)
        self.requests: Counter[Kind] = Counter()  # device requests by kind (tests, bench)
        self.events = DeviceEventRecorder(audit, clock, limits)
        self._refusals_log = BoundedLog(log, limits)  # a device decides how many there are
        # N4: a thing's cached stream access goes the moment its executions change.
        jobs.watch_executions(self._access.forget_things)
        # The Device Shadow service's topics (server/shadow/mqtt.py), when wired.
        self.shadows: ShadowMqtt | None = None

    @property
    def limits(self) -> Limits:
        return self._limits

    # Admission (on the event loop: never waits) -------------------------------------
    def admit(self, topic: str, in_flight: int = 0, payload: bytes = b"") -> list[Outgoing] | None:
        """None if the message may be handled; else what to publish instead (a
        RequestThrottled refusal, or nothing for a topic we do not serve). `in_flight`:
        the thing's messages already waiting for a worker. A progress report may not
        spend the reserve of the job-update budget kept for state-changing updates."""
        try:
            shadow = parse_topic(topic) if self.shadows is not None else None
            if shadow is not None:
                return self._admit_shadow(shadow, in_flight)
            parsed = topics.parse_request_topic(topic)
            if parsed is None:
                thing = topics.jobs_request_thing(topic)
                kind = Kind.JOB_READ
            else:
                thing = parsed.thing_name
                kind = self._kind(parsed)
            if thing is None:
                return []  # not a request we serve and not worth an answer
            self.requests[kind] += 1
            keep = 0.0
            if isinstance(parsed, JobsTopic) and parsed.request is JobsRequest.UPDATE \
                    and wire.is_progress_report(payload, self._limits):
                keep = float(self._limits.device_job_updates_reserved)
            if in_flight < self._limits.device_messages_in_flight and self._budgets.take(
                    thing, kind, self._clock(), keep=keep):
                return None
            self.events.throttled(principal=f"thing/{thing}", action=_KIND_ACTIONS[kind],
                                  resource=f"thing/{thing}")
            message = "request rate exceeds the device's budget"
            if isinstance(parsed, StreamsTopic):
                return [self._stream_error(parsed, wire.REQUEST_THROTTLED, message, "", QOS_THROTTLED)]
            return [Outgoing(topics.jobs_reply_topic(topic, accepted=False),
                             wire.encode(wire.error_reply(wire.REQUEST_THROTTLED, message, "", self._now())),
                             QOS_THROTTLED)]
        except Exception:
            log.exception("admitting a message on %r failed", topic[:200])
            return []

    def _admit_shadow(self, parsed: ShadowTopic, in_flight: int) -> list[Outgoing] | None:
        # Shadow requests spend the device's job budgets (delivery/budgets.py): reads
        # the read budget, updates and deletes the update budget.
        kind = Kind.JOB_READ if parsed.verb is ShadowVerb.GET else Kind.JOB_UPDATE
        if in_flight < self._limits.device_messages_in_flight and self._budgets.take(
                parsed.thing, kind, self._clock()):
            return None
        assert self.shadows is not None
        action = "iot:GetThingShadow" if kind is Kind.JOB_READ else "iot:UpdateThingShadow"
        self.events.throttled(principal=f"thing/{parsed.thing}", action=action,
                              resource=f"thing/{parsed.thing}")
        error = ShadowError(429, "request rate exceeds the device's budget")
        return [Outgoing(t, p, QOS_THROTTLED) for t, p in self.shadows.rejected(parsed, error, None)]

    @staticmethod
    def _kind(parsed: JobsTopic | StreamsTopic) -> Kind:
        if isinstance(parsed, StreamsTopic):
            return Kind.STREAM
        if parsed.request in (JobsRequest.UPDATE, JobsRequest.START_NEXT):
            return Kind.JOB_UPDATE
        return Kind.JOB_READ

    def handle(self, topic: str, payload: bytes, *, progress_tried: bool = False) -> list[Outgoing]:
        """Answer one device message. `progress_tried`: it is a plain progress report
        already tried as one (`handle_updates`) that did not apply."""
        shadow = parse_topic(topic) if self.shadows is not None else None
        if shadow is not None and self.shadows is not None:
            try:
                return [Outgoing(t, p) for t, p in self.shadows.handle(shadow, payload)]
            except Exception:
                log.exception("failed to handle %s", topic)
                error = ShadowError(500, "Internal service failure")
                return [Outgoing(t, p) for t, p in self.shadows.rejected(shadow, error, None)]
        parsed = topics.parse_request_topic(topic)
        if parsed is None:
            if topics.jobs_request_thing(topic) is not None:
                # A request under a device's jobs topics we do not serve: AWS's answer,
                # with the request's clientToken when it has a usable one (SDKs match
                # replies by it).
                return [self._jobs_error(topic, wire.INVALID_TOPIC, "no Jobs API matches this topic",
                                         self._token_if_any(payload))]
            log.debug("ignored message on unserved topic %r", topic[:200])
            return []
        try:
            if isinstance(parsed, JobsTopic):
                return self._handle_jobs(topic, parsed, payload, progress_tried)
            return self._handle_stream(parsed, payload)
        except Exception:
            # A defect, not the device's input: never let it take the service down;
            # answer InternalError and say where it happened.
            log.exception("failed to handle %s", topic)
            if isinstance(parsed, JobsTopic):
                return [self._jobs_error(topic, wire.INTERNAL_ERROR, "internal error", "")]
            return [self._stream_error(parsed, "InternalError", "internal error", "")]

    def _token_if_any(self, payload: bytes) -> str:
        try:
            return wire.client_token(wire.load_request(payload, self._limits), self._limits)
        except PeerInputError:
            return ""

    def close(self) -> None:
        """Write the audit counts still open (the service is stopping)."""
        self.events.close()

    # Jobs ---------------------------------------------------------------------------
    def _now(self) -> int:
        return int(self._clock())

    def _jobs_error(self, topic: str, code: str, message: str, token: str,
                    state: dict[str, Any] | None = None) -> Outgoing:
        return Outgoing(topics.jobs_reply_topic(topic, accepted=False),
                        wire.encode(wire.error_reply(code, message, token, self._now(), state)))

    def _accepted(self, topic: str, body: dict[str, Any]) -> Outgoing:
        return Outgoing(topics.jobs_reply_topic(topic, accepted=True), wire.encode(body))

    def _handle_jobs(self, topic: str, parsed: JobsTopic, payload: bytes,
                     progress_tried: bool = False) -> list[Outgoing]:
        token = ""
        try:
            request = wire.load_request(payload, self._limits)
            token = wire.client_token(request, self._limits)
            thing = parsed.thing_name
            if parsed.request is JobsRequest.DESCRIBE:
                return self._describe(topic, thing, parsed.job_id or topics.NEXT, request)
            if parsed.request is JobsRequest.GET_PENDING:
                in_progress, queued = self._jobs.pending_for_device(thing)
                return [self._accepted(topic, {"inProgressJobs": in_progress, "queuedJobs": queued,
                                               "clientToken": token, "timestamp": self._now()})]
            if parsed.request is JobsRequest.START_NEXT:
                start = wire.parse_start_next(request, self._limits)
                execution = self._jobs.start_next(thing, start.status_details, start.step_timeout_minutes)
                return [self._accepted(topic, wire.execution_reply(execution, token, self._now()))]
            return self._update(topic, parsed, request, progress_tried)
        except PeerInputError as exc:  # JobsMqttError, DecodeError and the rest of the device's faults
            return self._jobs_refusal(topic, parsed, exc, token)
        except ApiError as exc:  # a domain error of the job service, by its HTTP status
            if exc.status >= 500:
                log.error("jobs request %s failed: %s", topic, exc.message)
                return [self._jobs_error(topic, wire.INTERNAL_ERROR, "service unavailable, try again", token)]
            code = wire.RESOURCE_NOT_FOUND if exc.status == 404 else wire.INVALID_REQUEST
            return [self._jobs_error(topic, code, exc.message, token)]
        except UnavailableError as exc:
            log.error("jobs request %s failed: %s", topic, exc.message)
            return [self._jobs_error(topic, wire.INTERNAL_ERROR, "service unavailable, try again", token)]

    def _jobs_refusal(self, topic: str, parsed: JobsTopic, exc: PeerInputError, token: str) -> list[Outgoing]:
        """The device's request refused: its error reply (with the execution's state when
        the refusal has it), logged, and audited if it was an update."""
        code = exc.code if exc.code in _JOBS_CODES else wire.INVALID_REQUEST
        self._refusals_log.info("jobs request rejected", "jobs request %s rejected: %s %s", topic, code,
                                exc.message)
        if parsed.request is JobsRequest.UPDATE:
            self._audit_rejected_update(parsed, code, exc.message)
        state = exc.execution_state if isinstance(exc, JobsMqttError) else None
        return [self._jobs_error(topic, code, exc.message, token, state)]

    def _audit_rejected_update(self, parsed: JobsTopic, code: str, message: str) -> None:
        self.events.refused(principal=f"thing/{parsed.thing_name}", action="iot:UpdateJobExecution",
                            resource=self._jobs.job_arn(parsed.job_id or ""), decision="Rejected",
                            reason=code, detail={"code": code, "message": message[:512]})

    def _describe(self, topic: str, thing: str, job_id: str, request: dict[str, Any]) -> list[Outgoing]:
        describe = wire.parse_describe(request, self._limits)
        if job_id == topics.NEXT and describe.execution_number is None:
            execution = self._jobs.next_execution(thing, describe.include_job_document)
        else:
            execution = self._jobs.execution_for_device(thing, job_id, describe.execution_number,
                                                        describe.include_job_document)
        reply = wire.encode(wire.execution_reply(execution, describe.client_token, self._now(),
                                                 describe.include_job_document))
        out = [Outgoing(topics.jobs_reply_topic(topic, accepted=True), reply)]
        if job_id == topics.NEXT and wire.is_freertos_next_request(request, thing):
            # FreeRTOS quirk (device-protocol.md §1): the OTA library never subscribes to
            # $next/get/accepted (AWS delivers it anyway; a standard broker does not), so
            # the answer to a request shaped exactly as the library's also goes to
            # notify-next, which it does subscribe to. Any other client (an AWS SDK, whose
            # tokens never have that shape) gets only what AWS sends: no notify-next
            # unless its next job changes (docs/compatibility.md, Device Jobs API).
            out.append(Outgoing(topics.notify_next_topic(thing), reply))
        return out

    @staticmethod
    def is_job_update(topic: str) -> bool:
        """An UpdateJobExecution topic (`$aws/things/T/jobs/J/update`), by its shape only:
        what `handle_updates` may take in a batch (it checks everything else)."""
        return topic.endswith("/update") and "/jobs/" in topic

    def handle_updates(self, messages: list[tuple[str, bytes]]) -> list[list[Outgoing]]:
        """`handle` for a run of messages (gateway/thing_workers.py batches), with their
        writes shared. Only each thing's own messages must keep their order, so the run is
        cut in phases: phase k holds, for every thing, its plain progress reports after k
        other messages of its own, and then its (k+1)th other message. Each phase's reports
        are written in one statement (jobs/progress.py), then its other messages in one
        transaction (`_write_others`); whatever did not apply or did not parse goes
        through `handle`, which answers it as one by one would."""
        answers: list[list[Outgoing]] = [[] for _ in messages]
        reports: list[list[_Report]] = []  # by phase
        others: list[list[tuple[int, _Parsed | None]]] = []  # by phase: (index, parsed update or None)
        phase_of: dict[str, int] = {}  # thing -> its phase so far
        for index, (topic, payload) in enumerate(messages):
            found = self._parsed_update(topic, payload)
            plain = found is not None and self._jobs.is_plain_progress(found[1])
            thing = found[0].thing_name if found is not None else (topics.jobs_request_thing(topic) or "")
            phase = phase_of.get(thing, 0)
            if phase == len(reports):
                reports.append([])
                others.append([])
            if found is not None and plain:
                reports[phase].append((index, topic, payload, thing, found[0].job_id or "", found[1]))
            else:
                others[phase].append((index, found))
                phase_of[thing] = phase + 1
        for group, parsed_others in zip(reports, others, strict=True):
            self._write_progress(group, answers)
            self._write_others(parsed_others, messages, answers)
        return answers

    def _write_others(self, others: list[tuple[int, _Parsed | None]], messages: list[tuple[str, bytes]],
                      answers: list[list[Outgoing]]) -> None:
        """A phase's other messages (one per thing at most). The status updates among them
        that parse are applied in one transaction (`JobService.update_many`; the ends of
        a rollout's devices arrive together), and audited in one append; anything else,
        and all of them if that transaction fails, goes through `handle`."""
        updates: list[tuple[int, JobsTopic, wire.UpdateRequest]] = []
        for index, found in others:
            if found is None:
                answers[index] = self.handle(*messages[index])
            else:
                updates.append((index, *found))
        if len(updates) < 2:
            for index, _parsed, _update in updates:
                answers[index] = self.handle(*messages[index])
            return
        try:
            results = self._jobs.update_many([(p.thing_name, p.job_id or "", u) for _, p, u in updates])
        except Exception as exc:  # nothing was written: each is answered on its own
            log.warning("a batch of %d job updates failed (%s); handling them one by one", len(updates), exc)
            for index, _parsed, _update in updates:
                answers[index] = self.handle(*messages[index])
            return
        answered = list(zip(updates, results, strict=True))
        self._audit.record_status_updates([
            self._ended_entry(topic, update) for (_, topic, update), result in answered
            if update.status.terminal and not isinstance(result, JobsMqttError)])
        # The things whose next job changed (most of a burst: their job ended) are told it
        # from one read for all of them, not two per thing (bench/fleet.py, the tail).
        told = self._notifications([parsed.thing_name for (_, parsed, _), result in answered
                                    if not isinstance(result, JobsMqttError) and result.next_changed])
        for (index, parsed, update), result in answered:
            topic = messages[index][0]
            if isinstance(result, JobsMqttError):
                answers[index] = self._jobs_refusal(topic, parsed, result, update.client_token)
            else:
                answers[index] = self._update_reply(topic, parsed, update, result,
                                                    told.get(parsed.thing_name))

    def _parsed_update(self, topic: str, payload: bytes) -> tuple[JobsTopic, wire.UpdateRequest] | None:
        """A well-formed UpdateJobExecution (topic and request); None for anything else."""
        try:
            parsed = topics.parse_request_topic(topic)
            if not isinstance(parsed, JobsTopic) or parsed.request is not JobsRequest.UPDATE \
                    or not parsed.job_id:
                return None
            return parsed, wire.parse_update(wire.load_request(payload, self._limits), self._limits)
        except Exception:
            return None

    def _write_progress(self, group: list[_Report], answers: list[list[Outgoing]]) -> None:
        if not group:
            return
        tried = True
        try:
            applied = self._jobs.report_progress_many([(thing, job, update)
                                                       for _, _, _, thing, job, update in group])
        except Exception as exc:  # answered one by one below, each with its own error
            log.warning("a batch of %d progress reports failed (%s); handling them one by one",
                        len(group), exc)
            applied, tried = [False] * len(group), False
        for (index, topic, payload, _thing, _job, update), done in zip(group, applied, strict=True):
            # A report that did not apply (a start from QUEUED, most often) needs the full
            # update; trying it as a plain report again would only cost a transaction.
            answers[index] = self.handle(topic, payload, progress_tried=tried) if not done else [
                self._accepted(topic, {"clientToken": update.client_token, "timestamp": self._now()})]

    def _update(self, topic: str, parsed: JobsTopic, request: dict[str, Any],
                progress_tried: bool = False) -> list[Outgoing]:
        thing = parsed.thing_name
        update = wire.parse_update(request, self._limits)
        outcome = self._jobs.update_execution(thing, parsed.job_id or "", update) if progress_tried \
            else self._jobs.device_update(thing, parsed.job_id or "", update)
        if outcome is None:  # a plain progress report, applied
            return [self._accepted(topic, {"clientToken": update.client_token, "timestamp": self._now()})]
        if update.status.terminal:
            # Once per execution: an execution ends once, whatever a device sends.
            self._audit.record_status_update(*self._ended_entry(parsed, update))
        return self._update_reply(topic, parsed, update, outcome)

    def _ended_entry(self, parsed: JobsTopic,
                     update: wire.UpdateRequest) -> tuple[str, str, str, dict[str, Any]]:
        """The audit entry of an accepted update that ended an execution."""
        return (parsed.thing_name, self._jobs.job_arn(parsed.job_id or ""), "Accepted",
                {"status": update.status.value, "statusDetails": update.status_details})

    def _update_reply(self, topic: str, parsed: JobsTopic, update: wire.UpdateRequest,
                      outcome: UpdateOutcome, notifications: list[Outgoing] | None = None) -> list[Outgoing]:
        """update/accepted, with what the request asked back, and notify-next when the
        thing's next job changed (`notifications` if the caller read them already)."""
        thing = parsed.thing_name
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
            out.extend(self.notify_next(thing) if notifications is None else notifications)
        return out

    def notify_next(self, thing: str) -> list[Outgoing]:
        """`notify-next` for a thing whose next job changed, and `notify` with its pending
        list (which changed with it)."""
        execution = self._jobs.next_execution(thing)
        return [Outgoing(topics.notify_next_topic(thing),
                         wire.encode(wire.notify_next(execution, self._now()))),
                *self.notify_pending(thing)]

    def notify_next_many(self, things: list[str], pending: bool = True) -> list[Outgoing]:
        """`notify_next` for many things from one database read (a job's creation).
        Without `pending`, notify-next only: a large fan-out sends every thing's pending
        list after every thing's notify-next (`notify_pending_many`), and building them
        with each batch was a fifth of the batch's time (bench/rollout_create.py)."""
        return [message for told in self._notifications(things, pending).values() for message in told]

    def notify_pending_many(self, things: list[str]) -> list[Outgoing]:
        """`notify_pending` for many things from one database read."""
        now = self._now()
        return [Outgoing(topics.notify_topic(thing), wire.encode(wire.notify_pending(running, queued, now)))
                for thing, (running, queued) in self._jobs.pending_of(things).items()]

    def _notifications(self, things: list[str], pending: bool = True) -> dict[str, list[Outgoing]]:
        """Per thing, what `notify_next` publishes for it (without its pending list if not
        `pending`), read for all of them at once."""
        if not things:
            return {}
        now = self._now()
        encoded: wire.EncodedDocuments = {}
        told: dict[str, list[Outgoing]] = {}
        for thing, found in self._jobs.next_and_pending(things, pending).items():
            told[thing] = [Outgoing(topics.notify_next_topic(thing),
                                    wire.encode_notify_next(found.next, now, encoded))]
            if pending:
                told[thing].append(Outgoing(topics.notify_topic(thing), wire.encode(
                    wire.notify_pending(found.in_progress, found.queued, now))))
        return told

    def things_with_pending(self) -> list[str]:
        """Things to tell their next job again after the service's subscriptions were
        lost (gateway/mqtt_driver.py, a broker restart)."""
        return self._jobs.things_with_pending()

    def notify_pending(self, thing: str) -> list[Outgoing]:
        """`notify` for a thing whose list of pending executions changed. FreeRTOS agents
        do not subscribe to it, so it never disturbs a download."""
        in_progress, queued = self._jobs.pending_for_device(thing)
        return [Outgoing(topics.notify_topic(thing),
                         wire.encode(wire.notify_pending(in_progress, queued, self._now())))]

    # File delivery -----------------------------------------------------------------
    def _stream_error(self, parsed: StreamsTopic, code: str, message: str, token: str,
                      qos: int = QOS_CONTROL) -> Outgoing:
        return Outgoing(topics.stream_rejected_topic(parsed.thing_name, parsed.stream_id, parsed.fmt),
                        streamcodec.encode_rejection(code, message, token, parsed.fmt), qos)

    def _may_read(self, thing: str, stream_id: str) -> bool:
        """N4: only a thing with a live execution whose job delivers this stream. Cached
        (streams/access.py): dropped when the thing's executions change, and in any case
        after `Limits.device_access_cache_seconds`."""
        cached = self._access.get(thing, stream_id, self._clock())
        if cached is not None:
            return cached
        generation = self._access.generation(thing)
        allowed = stream_id in self._delivered_streams.get(thing)  # read after `generation` was noted
        self._access.put(thing, stream_id, allowed, self._clock(), generation)
        return allowed

    def _streams_delivered(self, things: list[str]) -> dict[str, frozenset[str]]:
        delivered = self._jobs.deliveries.of_things(things)
        return {thing: of_thing.streams for thing, of_thing in delivered.items()}

    def renew_access(self) -> int:
        """Decide again the stream access of the devices downloading now (streams/access.py
        `renew`): one read per 500 of them. Returns how many were renewed."""
        return self._access.renew(self._streams_delivered, self._clock)

    def handle_from_cache(self, topic: str, payload: bytes) -> list[Outgoing] | None:
        """Answer a block request from what is already in memory, or return None.

        Nearly every GetStream of a rollout is such a request (the access decision, the
        stream row and the file bytes were cached by the device's first request). The MQTT
        driver answers these on its event loop, skipping two thread hand-offs per request;
        anything that needs the database, the object store, an audit entry or an error
        reply returns None and goes the normal way (`handle`)."""
        try:
            return self._answer_from_cache(topic, payload)
        except Exception:
            # Whatever went wrong, the normal path answers it (and says what it was).
            return None

    def _answer_from_cache(self, topic: str, payload: bytes) -> list[Outgoing] | None:
        parsed = topics.parse_request_topic(topic)
        if not isinstance(parsed, StreamsTopic) or parsed.request is not StreamsRequest.GET:
            return None
        if not self._access.get(parsed.thing_name, parsed.stream_id, self._clock()):
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
            return self._blocks(parsed, request, stream, data, cached_only=True)
        except PeerInputError:
            return None

    def forget_access(self) -> None:
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
                self.events.refused(principal=f"thing/{parsed.thing_name}", action="iot:GetStream",
                                    resource=f"stream/{parsed.stream_id}", decision="DENY",
                                    reason="no live execution references this stream")
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
            if exc.status >= 500:
                log.error("stream %s unavailable: %s", parsed.stream_id, exc.message)
                return [self._stream_error(parsed, "InternalError", "file unavailable", token)]
            return [self._stream_error(parsed, "ResourceNotFound", exc.message, token)]
        except PeerInputError as exc:
            self._refusals_log.info("stream request rejected", "stream request from %s rejected: %s %s",
                                    parsed.thing_name, exc.code, exc.message)
            return [self._stream_error(parsed, exc.code, exc.message, token)]
        except OverairError as exc:
            log.error("stream %s unavailable: %s", parsed.stream_id, exc.message)
            return [self._stream_error(parsed, "InternalError", "file unavailable", token)]

    def _serve_blocks(self, parsed: StreamsTopic, stream: Any,
                      request: streamcodec.GetStreamRequest) -> list[Outgoing]:
        if request.stream_version is not None and request.stream_version != stream.version:
            raise PeerInputError(f"stream is at version {stream.version}", code="VersionMismatch")
        served = self._blocks(parsed, request, stream, self._streams.file_bytes(stream, request.file_id))
        assert served is not None  # only the cached path may defer
        return served

    def _blocks(self, parsed: StreamsTopic, request: streamcodec.GetStreamRequest, stream: Any,
                data: bytes, *, cached_only: bool = False) -> list[Outgoing] | None:
        """The data-block messages answering `request`, or the download policy's refusal
        (AWS's rejected response, which FreeRTOS does not read: it asks again after its
        timeout, and the policy serves it after a few refusals). None only with
        `cached_only`, when the policy's lookup is not cached (the normal path answers)."""
        blocks = plan_blocks(request, len(data), self._limits)
        nbytes = sum(min(request.block_size, len(data) - block * request.block_size) for block in blocks)
        if self._gate is not None and blocks:
            # The last blocks the device still needs: its slot frees once they are sent.
            final = len(blocks) >= int.from_bytes(request.bitmap, "little").bit_count()
            decision = self._gate.for_stream(parsed.thing_name, parsed.stream_id, nbytes, final=final,
                                             cached_only=cached_only)
            if decision is None:
                return None
            if not decision.admitted:
                wait = f"{decision.retry_after_ms / 1000:.3f}"
                message = f"{decision.code}: {decision.message}; retry after {wait} s"
                return [self._stream_error(parsed, wire.REQUEST_THROTTLED, message, request.client_token,
                                           QOS_THROTTLED)]
        metrics.BLOCKS_SERVED.inc(len(blocks))
        metrics.BYTES_SERVED_MQTT.inc(nbytes)
        topic = topics.stream_data_topic(parsed.thing_name, parsed.stream_id, parsed.fmt)
        encoded = self._streams.data_blocks(stream, request.file_id, data, request.block_size, blocks,
                                            parsed.fmt)
        return [Outgoing(topic, payload, QOS_BLOCKS) for payload in encoded]
