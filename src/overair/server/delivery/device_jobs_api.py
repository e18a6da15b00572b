"""The Jobs data-plane API over HTTPS for devices that poll (AWS's iot-jobs-data):
GetPendingJobExecutions, StartNextPendingJobExecution, DescribeJobExecution and
UpdateJobExecution, authenticated by the device's X.509 certificate (mutual TLS), not
SigV4, as AWS IoT does for devices.

Requests are routed, parsed and answered with botocore's iot-jobs-data model, like the
operator API. The certificate must be ACTIVE and attached to the thing named in the path
(threat N4); the job logic is the same JobService the MQTT Jobs API uses.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from cryptography import x509
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from overair.core import jobs_wire as wire
from overair.core.errors import DecodeError
from overair.core.jobstates import ExecStatus
from overair.server.api.contract import ApiError
from overair.server.api.models import HttpRequest, HttpResponse, ServiceProtocol, load_services
from overair.server.audit.log import AuditLog
from overair.server.delivery.tls_peer import peer_certificate
from overair.server.jobs.service import JobService, JobsMqttError
from overair.server.registry.service import Registry

log = logging.getLogger("overair.devices")
MAX_BODY = 64 * 1024
# Jobs MQTT error codes as the HTTP API reports them.
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


_SUPPORTED = frozenset({"GetPendingJobExecutions", "StartNextPendingJobExecution", "DescribeJobExecution",
                        "UpdateJobExecution"})

class DeviceJobsApi:
    def __init__(self, jobs: JobService, registry: Registry, audit: AuditLog) -> None:
        self._jobs = jobs
        self._registry = registry
        self._audit = audit
        self._service: ServiceProtocol = load_services()["iot-jobs-data"]

    def routes(self) -> list[BaseRoute]:
        # Everything else the model routes (StartCommandExecution) is answered too, with
        # NotImplementedException naming it rather than a bare 404.
        return [Route("/things/{rest:path}", self._endpoint, methods=["GET", "PUT", "POST"]),
                Route("/command-executions", self._endpoint, methods=["POST"])]

    async def _endpoint(self, request: Request) -> Response:
        request_id = str(uuid.uuid4())
        body = await request.body()
        der = peer_certificate(request.scope)
        raw_path = request.scope.get("raw_path", b"").decode("latin-1").split("?", 1)[0] or request.url.path
        http = HttpRequest(request.method, raw_path, HttpRequest.parse_query(request.url.query),
                           {k.lower(): v for k, v in request.headers.items()}, body)
        try:
            if len(body) > MAX_BODY:
                raise ApiError("InvalidRequestException", "request body too large", 400)
            reply = await run_in_threadpool(self._handle, http, der, request_id)
        except ApiError as exc:
            reply = self._service.render_error(exc, request_id)
        return Response(reply.body, reply.status, headers=dict(reply.headers))

    def _handle(self, http: HttpRequest, der: bytes | None, request_id: str) -> HttpResponse:
        resolved = self._service.resolve(http)
        if resolved.name not in _SUPPORTED:
            raise ApiError("NotImplementedException",
                           f"iot-jobs-data:{resolved.name} is not implemented by overair", 501)
        params = self._service.parse(resolved, http)
        thing = str(params.get("thingName", ""))
        self._authorize(der, thing, resolved.name)
        updating = resolved.name == "UpdateJobExecution"
        job_arn = self._jobs.job_arn(str(params.get("jobId", "")))
        try:
            result = self._operation(resolved.name, thing, params)
        except (JobsMqttError, DecodeError) as exc:
            if updating:
                self._audit.record_status_update(thing, job_arn, "Rejected", {"code": exc.code,
                                                                              "reason": exc.message})
            if isinstance(exc, DecodeError):
                raise ApiError("InvalidRequestException", exc.message, 400) from exc
            code, status = _HTTP_ERRORS.get(exc.code, ("InvalidRequestException", 400))
            raise ApiError(code, exc.message, status) from exc
        if updating and ExecStatus(str(params.get("status"))).terminal:
            self._audit.record_status_update(thing, job_arn, "Accepted", {
                "status": params.get("status"), "statusDetails": dict(params.get("statusDetails") or {})})
        return self._service.serialize(resolved.operation, result, request_id)

    def _authorize(self, der: bytes | None, thing: str, operation: str) -> None:
        if der is None:
            raise ApiError("CertificateValidationException",
                           "the Jobs API needs the device's client certificate (mutual TLS)", 400)
        cert = x509.load_der_x509_certificate(der)
        if thing not in self._registry.things_of_certificate(cert):
            self._audit.record(principal=f"cert/{cert.serial_number:x}", action=f"iot-jobs-data:{operation}",
                               resource=f"thing/{thing}", decision="DENY",
                               detail={"reason": "certificate not ACTIVE or not attached to the thing"})
            # The same answer as for a thing that does not exist: no existence oracle.
            raise ApiError("ResourceNotFoundException", f"thing {thing} not found", 404)

    def _operation(self, name: str, thing: str, params: dict[str, Any]) -> dict[str, Any]:
        if name == "GetPendingJobExecutions":
            in_progress, queued = self._jobs.pending_for_device(thing)
            return {"inProgressJobs": in_progress, "queuedJobs": queued}
        if name == "StartNextPendingJobExecution":
            details = params.get("statusDetails")
            execution = self._jobs.start_next(thing, dict(details) if details is not None else None)
            return {} if execution is None else {"execution": _execution(execution, True)}
        if name == "DescribeJobExecution":
            view = self._jobs.execution_for_device(thing, str(params["jobId"]))
            return {"execution": _execution(view, params.get("includeJobDocument") is not False)}
        if name == "UpdateJobExecution":
            request = {k: v for k, v in params.items() if k not in ("thingName", "jobId")}
            update = wire.parse_update(request)
            outcome = self._jobs.update_execution(thing, str(params["jobId"]), update)
            reply: dict[str, Any] = {}
            if update.include_job_execution_state:
                view = outcome.execution
                reply["executionState"] = {"status": view.status.value, "statusDetails": view.status_details,
                                           "versionNumber": view.version_number}
            if update.include_job_document and outcome.execution.job_document is not None:
                reply["jobDocument"] = wire.encode(outcome.execution.job_document).decode()
            return reply
        raise AssertionError(f"{name} is in _SUPPORTED but has no implementation")
