"""Messages of the AWS IoT Jobs MQTT API (device-protocol.md §1), both directions.

Timestamps are integer seconds since the epoch as AWS sends them. `jobDocument` is
always a JSON object, never a string. A reply with only `clientToken` and `timestamp`
means "no pending job" to the FreeRTOS agent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from overair.core.errors import DecodeError
from overair.core.jobstates import ExecStatus
from overair.core.limits import DEFAULT_LIMITS, Limits

# Error codes of the Jobs MQTT API, as AWS spells them.
INVALID_TOPIC = "InvalidTopic"
INVALID_JSON = "InvalidJson"
INVALID_REQUEST = "InvalidRequest"
INVALID_STATE_TRANSITION = "InvalidStateTransition"
RESOURCE_NOT_FOUND = "ResourceNotFound"
VERSION_MISMATCH = "VersionMismatch"
INTERNAL_ERROR = "InternalError"
REQUEST_THROTTLED = "RequestThrottled"
TERMINAL_STATE_REACHED = "TerminalStateReached"


@dataclass(frozen=True, slots=True)
class ExecutionView:
    """One job execution as the device sees it."""

    job_id: str
    thing_name: str
    status: ExecStatus
    status_details: dict[str, str]
    queued_at: int
    started_at: int | None
    last_updated_at: int
    version_number: int
    execution_number: int
    job_document: dict[str, Any] | None

    def to_json_obj(self, include_document: bool = True) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "jobId": self.job_id,
            "thingName": self.thing_name,
            "status": self.status.value,
            "queuedAt": self.queued_at,
            "lastUpdatedAt": self.last_updated_at,
            "versionNumber": self.version_number,
            "executionNumber": self.execution_number,
        }
        if self.status_details:
            obj["statusDetails"] = dict(self.status_details)
        if self.started_at is not None:
            obj["startedAt"] = self.started_at
        if include_document and self.job_document is not None:
            obj["jobDocument"] = self.job_document
        return obj


@dataclass(frozen=True, slots=True)
class UpdateRequest:
    status: ExecStatus
    status_details: dict[str, str] | None
    expected_version: int | None
    execution_number: int | None
    include_job_execution_state: bool
    include_job_document: bool
    step_timeout_minutes: int | None
    client_token: str


def load_request(payload: bytes, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Parse a device's JSON request body; an empty body is an empty request."""
    if len(payload) > limits.max_job_message_bytes:
        raise DecodeError("request too large", code=INVALID_REQUEST)
    if not payload.strip():
        return {}
    try:
        value = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"request is not JSON: {exc}", code=INVALID_JSON) from exc
    if not isinstance(value, dict):
        raise DecodeError("request must be a JSON object", code=INVALID_JSON)
    return value


def client_token(request: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> str:
    token = request.get("clientToken", "")
    if not isinstance(token, str) or len(token) > limits.max_client_token_length:
        raise DecodeError(f"clientToken must be text of at most {limits.max_client_token_length} chars",
                          code=INVALID_REQUEST)
    return token


def parse_status_details(value: Any, limits: Limits = DEFAULT_LIMITS) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > limits.max_status_details_entries:
        raise DecodeError(f"statusDetails must be a map of at most {limits.max_status_details_entries} "
                          "entries", code=INVALID_REQUEST)
    details: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(item, str) or len(key) > 128 or len(item) > limits.max_status_detail_length:
            raise DecodeError("statusDetails entries must be strings within size limits",
                              code=INVALID_REQUEST)
        details[key] = item
    return details


def _opt_int(request: dict[str, Any], name: str) -> int | None:
    value = request.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DecodeError(f"{name} must be a non-negative integer", code=INVALID_REQUEST)
    return value


def parse_update(request: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> UpdateRequest:
    status_text = request.get("status")
    try:
        status = ExecStatus(str(status_text))
    except ValueError as exc:
        raise DecodeError(f"unknown status {status_text!r}", code=INVALID_REQUEST) from exc
    return UpdateRequest(
        status=status,
        status_details=parse_status_details(request.get("statusDetails"), limits),
        expected_version=_opt_int(request, "expectedVersion"),
        execution_number=_opt_int(request, "executionNumber"),
        include_job_execution_state=bool(request.get("includeJobExecutionState", False)),
        include_job_document=bool(request.get("includeJobDocument", False)),
        step_timeout_minutes=_opt_int(request, "stepTimeoutInMinutes"),
        client_token=client_token(request, limits),
    )


def error_reply(code: str, message: str, token: str, now: int,
                execution_state: dict[str, Any] | None = None) -> dict[str, Any]:
    reply: dict[str, Any] = {"code": code, "message": message, "timestamp": now}
    if token:
        reply["clientToken"] = token
    if execution_state is not None:
        reply["executionState"] = execution_state
    return reply


def execution_reply(execution: ExecutionView | None, token: str, now: int) -> dict[str, Any]:
    """Reply to `$next/get` and `J/get`; no `execution` key means nothing pending."""
    reply: dict[str, Any] = {"clientToken": token, "timestamp": now}
    if execution is not None:
        reply["execution"] = execution.to_json_obj()
    return reply


def notify_next(execution: ExecutionView | None, now: int) -> dict[str, Any]:
    reply: dict[str, Any] = {"timestamp": now}
    if execution is not None:
        reply["execution"] = execution.to_json_obj()
    return reply


def notify_pending(in_progress: list[dict[str, Any]], queued: list[dict[str, Any]],
                   now: int) -> dict[str, Any]:
    """`$aws/things/T/jobs/notify`: the thing's pending executions, by status (AWS omits
    an empty status)."""
    jobs: dict[str, Any] = {}
    if queued:
        jobs["QUEUED"] = queued
    if in_progress:
        jobs["IN_PROGRESS"] = in_progress
    return {"timestamp": now, "jobs": jobs}


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()
