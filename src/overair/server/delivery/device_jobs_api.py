"""The Jobs data-plane API over HTTPS for devices that poll (AWS's iot-jobs-data):
GetPendingJobExecutions, StartNextPendingJobExecution, DescribeJobExecution and
UpdateJobExecution, authenticated by the device's X.509 certificate (mutual TLS), not
SigV4, as AWS IoT does for devices.

Requests are routed, parsed and answered with botocore's iot-jobs-data model, like the
operator API. The certificate must be ACTIVE and attached to the thing named in the path
(threat N4); the job logic is the same JobService the MQTT Jobs API uses.

Everything a device sends is hostile until checked, in this order: a client
certificate, the certificate's request budget (delivery/budgets.py; over it, 429
ThrottlingException, counted in the audit log), a body of bounded size that is valid,
bounded JSON (core/wirejson.py) before the model parses it, the thing and job names
against their patterns, then the same field checks as the MQTT API (core/jobs_wire.py).
Failures are translated once, in `_endpoint`, to the model's errors (4xx; 503 when a
dependency is down, through the edge's one translation table, api/faults.py).
"""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import Callable
from typing import Any

from cryptography import x509
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from overair.core import jobs_wire as wire
from overair.core import topics, wirejson
from overair.core.asciinum import parse_uint
from overair.core.errors import PeerInputError
from overair.core.jobstates import ExecStatus
from overair.core.limits import DEFAULT_LIMITS, Limits
from overair.server.api.contract import ApiError
from overair.server.api.faults import to_api_error
from overair.server.api.models import HttpRequest, HttpResponse, ServiceProtocol, load_services
from overair.server.audit.device_events import DeviceEventRecorder
from overair.server.audit.log import AuditLog
from overair.server.clock import Clock, system_clock
from overair.server.delivery.budgets import DeviceBudgets, Kind
from overair.server.delivery.tls_peer import peer_certificate
from overair.server.jobs.service import JobService, JobsMqttError
from overair.server.registry.service import Registry

log = logging.getLogger("overair.devices")
INVALID = "InvalidRequestException"
THROTTLED_ACTION = "iot-jobs-data:*"  # throttling comes before the operation is known
# Jobs MQTT error codes as the HTTP API reports them. An update of an execution in a
# terminal state is InvalidStateTransitionException (409), as on MQTT: the model lists no
# TerminalStateException among UpdateJobExecution's errors.
_HTTP_ERRORS = {
    wire.RESOURCE_NOT_FOUND: ("ResourceNotFoundException", 404),
    wire.INVALID_STATE_TRANSITION: ("InvalidStateTransitionException", 409),
    wire.VERSION_MISMATCH: ("InvalidStateTransitionException", 409),
    wire.TERMINAL_STATE_REACHED: ("TerminalStateException", 410),
}


def _execution(view: wire.ExecutionView, with_document: bool) -> dict[str, Any]:
    """An execution in iot-jobs-data's shape: the job document is JSON text there."""
    execution = view.to_json_obj(include_document=False)
    if with_document and view.job_document is not None:
        execution["jobDocument"] = wire.encode(view.job_document).decode()
    return execution


def _body_fields(params: dict[str, Any]) -> dict[str, Any]:
    """The request's fields other than the path's, for the same checks as on MQTT."""
    return {k: v for k, v in params.items() if k not in ("thingName", "jobId")}


_SUPPORTED = frozenset({"GetPendingJobExecutions", "StartNextPendingJobExecution", "DescribeJobExecution",
                        "UpdateJobExecution"})


class BodyTooLarge(Exception):
    pass


def device_certificate(request: Request, api: str) -> tuple[x509.Certificate, str]:
    """The request's client certificate and its principal; refused without one (the
    device APIs of this endpoint: Jobs here, Device Shadow in shadow/device_api.py)."""
    der = peer_certificate(request.scope)
    if der is None:
        raise ApiError("CertificateValidationException",
                       f"{api} needs the device's client certificate (mutual TLS)", 400)
    # Verified against the fleet CA by the TLS layer already.
    cert = x509.load_der_x509_certificate(der)
    return cert, f"cert/{cert.serial_number:x}"


async def bounded_body(request: Request, limit: int) -> bytes:
    """The request body, refused past `limit` bytes without reading the rest."""
    declared = parse_uint(request.headers.get("content-length", ""))
    if declared is not None and declared > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def model_request(request: Request, body: bytes) -> HttpRequest:
    """The request as the API model's router sees it (the raw path: percent-escapes kept)."""
    raw_path = request.scope.get("raw_path", b"").decode("latin-1").split("?", 1)[0] or request.url.path
    return HttpRequest(request.method, raw_path, HttpRequest.parse_query(request.url.query),
                       {k.lower(): v for k, v in request.headers.items()}, body)


def error_reply(service: ServiceProtocol, request_id: str, what: str) -> HttpResponse:
    """The exception being handled as the model's error: a fault it knows, else a logged
    503 naming the request (called from an `except` block of a device API's endpoint)."""
    exc = sys.exc_info()[1]
    error = to_api_error(exc, service.protocol, INVALID) if isinstance(exc, Exception) else None
    if error is None:
        log.exception("%s request %s failed", what, request_id)
        error = ApiError("ServiceUnavailableException",
                         f"internal error (request id {request_id}); try again", 503)
    return service.render_error(error, request_id)


class DeviceJobsApi:
    def __init__(self, jobs: JobService, registry: Registry, audit: AuditLog, limits: Limits = DEFAULT_LIMITS,
                 clock: Clock = system_clock) -> None:
        self._jobs = jobs
        self._registry = registry
        self._audit = audit
        self._limits = limits
        self._clock = clock
        self.budgets = DeviceBudgets(limits)  # per certificate; shared with the shadow API
        self.events = DeviceEventRecorder(audit, clock, limits)
        self._service: ServiceProtocol = load_services()["iot-jobs-data"]
        self.on_next_changed: Callable[[list[str]], None] = lambda _things: None

    def routes(self) -> list[BaseRoute]:
        # Everything else the model routes (StartCommandExecution) is answered too, with
        # NotImplementedException naming it rather than a bare 404.
        return [Route("/things/{rest:path}", self._endpoint, methods=["GET", "PUT", "POST"]),
                Route("/command-executions", self._endpoint, methods=["POST"])]

    async def _endpoint(self, request: Request) -> Response:
        """The one translation point of this API: every failure becomes the model's error."""
        request_id = str(uuid.uuid4())
        try:
            cert, principal = device_certificate(request, "the Jobs API")
            try:
                body = await bounded_body(request, self._limits.max_job_message_bytes)
            except BodyTooLarge:
                raise ApiError(INVALID, "request body too large", 400) from None
            # As over MQTT (gateway/device_service.py): progress reports (UpdateJobExecution
            # is the API's one POST) may not spend the reserve kept for state changes.
            keep = float(self._limits.device_job_updates_reserved) \
                if request.method == "POST" and wire.is_progress_report(body, self._limits) else 0.0
            if not self.budgets.take(principal, Kind.HTTPS_API, self._clock(), keep=keep):
                self.events.throttled(principal=principal, action=THROTTLED_ACTION, resource=principal)
                raise ApiError("ThrottlingException", "request rate exceeds the device's budget", 429)
            reply = await run_in_threadpool(self._handle, model_request(request, body), cert, principal,
                                            request_id)
        except Exception:
            reply = error_reply(self._service, request_id, "device jobs")
        return Response(reply.body, reply.status, headers=dict(reply.headers))

    def _handle(self, http: HttpRequest, cert: x509.Certificate, principal: str,
                request_id: str) -> HttpResponse:
        if http.body.strip():
            # Bounded decoding first: the model's parser must never see a body nested
            # 1,000 deep, a number of 400 digits, or anything but the object every
            # iot-jobs-data body is.
            body = wirejson.loads(http.body, limits=self._limits,
                                  max_bytes=self._limits.max_job_message_bytes, what="request body")
            if not isinstance(body, dict):
                raise ApiError(INVALID, "the request body must be a JSON object", 400)
        resolved = self._service.resolve(http)
        if resolved.name not in _SUPPORTED:
            raise ApiError("NotImplementedException",
                           f"iot-jobs-data:{resolved.name} is not implemented by overair", 501)
        params = self._service.parse(resolved, http)
        thing = params.get("thingName")
        if not isinstance(thing, str) or not topics.is_thing_name(thing):
            raise ApiError(INVALID, "thingName must be 1-128 characters of [a-zA-Z0-9:_-]", 400)
        job_id = params.get("jobId")
        if job_id is not None and (not isinstance(job_id, str) or not topics.is_job_id(job_id)):
            raise ApiError(INVALID, "jobId must be 1-64 characters of [a-zA-Z0-9_-]", 400)
        self._authorize(cert, principal, thing, resolved.name)
        updating = resolved.name == "UpdateJobExecution"
        job_arn = self._jobs.job_arn(str(job_id or ""))
        try:
            result = self._operation(resolved.name, thing, params)
        except PeerInputError as exc:  # JobsMqttError, DecodeError: the device's request
            if updating:
                self.events.refused(principal=f"thing/{thing}", action="iot:UpdateJobExecution",
                                    resource=job_arn, decision="Rejected", reason=exc.code,
                                    detail={"code": exc.code, "message": exc.message[:512]})
            if isinstance(exc, JobsMqttError):
                code, status = _HTTP_ERRORS.get(exc.code, (INVALID, 400))
                raise ApiError(code, exc.message, status) from exc
            raise ApiError(INVALID, exc.message, 400) from exc
        if updating and ExecStatus(str(params.get("status"))).terminal:
            # Once per execution: an execution ends once, whatever a device sends.
            self._audit.record_status_update(thing, job_arn, "Accepted", {
                "status": params.get("status"), "statusDetails": dict(params.get("statusDetails") or {})})
        return self._service.serialize(resolved.operation, result, request_id)

    def _authorize(self, cert: x509.Certificate, principal: str, thing: str, operation: str) -> None:
        if thing not in self._registry.things_of_certificate(cert):
            self.events.refused(principal=principal, action=f"iot-jobs-data:{operation}",
                                resource=f"thing/{thing}", decision="DENY",
                                reason="certificate not ACTIVE or not attached to the thing")
            # The same answer as for a thing that does not exist: no existence oracle.
            raise ApiError("ResourceNotFoundException", f"thing {thing} not found", 404)

    def _operation(self, name: str, thing: str, params: dict[str, Any]) -> dict[str, Any]:
        if name == "GetPendingJobExecutions":
            in_progress, queued = self._jobs.pending_for_device(thing)
            return {"inProgressJobs": in_progress, "queuedJobs": queued}
        if name == "StartNextPendingJobExecution":
            start = wire.parse_start_next(_body_fields(params), self._limits)
            execution = self._jobs.start_next(thing, start.status_details, start.step_timeout_minutes)
            return {} if execution is None else {"execution": _execution(execution, True)}
        if name == "DescribeJobExecution":
            describe = wire.parse_describe(_body_fields(params), self._limits)
            view = self._jobs.execution_for_device(thing, str(params["jobId"]), describe.execution_number,
                                                   describe.include_job_document)
            return {"execution": _execution(view, describe.include_job_document)}
        if name == "UpdateJobExecution":
            update = wire.parse_update(_body_fields(params), self._limits)
            outcome = self._jobs.update_execution(thing, str(params["jobId"]), update)
            if outcome.next_changed:
                # As over MQTT: the device's MQTT session (if any) hears of its next job.
                self.on_next_changed([thing])
            reply: dict[str, Any] = {}
            if update.include_job_execution_state:
                view = outcome.execution
                reply["executionState"] = {"status": view.status.value, "statusDetails": view.status_details,
                                           "versionNumber": view.version_number}
            if update.include_job_document and outcome.execution.job_document is not None:
                reply["jobDocument"] = wire.encode(outcome.execution.job_document).decode()
            return reply
        raise AssertionError(f"{name} is in _SUPPORTED but has no implementation")
