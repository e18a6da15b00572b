"""Messages of the AWS IoT Jobs MQTT API (device-protocol.md §1), both directions.

Timestamps are integer seconds since the epoch as AWS sends them. `jobDocument` is
always a JSON object, never a string. A reply with only `clientToken` and `timestamp`
means "no pending job" to the FreeRTOS agent.

Requests come from devices: they are decoded with the bounded decoder
(core/wirejson.py) and every field is checked for type and range here, so that
nothing a device sends reaches the job service unchecked; the only error raised is
`DecodeError` with a Jobs error code (InvalidJson, InvalidRequest).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from overair.core import wirejson
from overair.core.errors import DecodeError
from overair.core.jobstates import ExecStatus
from overair.core.limits import DEFAULT_LIMITS, Limits
from overair.core.wiretext import text_field

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

_STATUSES = frozenset(status.value for status in ExecStatus)
_DETAIL_KEY = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
MAX_VERSION = (1 << 63) - 1  # versionNumber and executionNumber are AWS longs
# UpdateJobExecution's stepTimeoutInMinutes: "A value of -1 is also valid and will cancel
# the current step timer" (botocore's iot-jobs-data model, UpdateJobExecutionRequest).
CANCEL_STEP_TIMER = -1


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
    step_timeout_minutes: int | None  # 1..max, CANCEL_STEP_TIMER, or None (timer unchanged)
    client_token: str


@dataclass(frozen=True, slots=True)
class DescribeRequest:
    """DescribeJobExecution (`J/get`, `$next/get`; HTTPS GET /things/T/jobs/J)."""

    execution_number: int | None  # None: the latest execution (AWS's default)
    include_job_document: bool  # AWS's default: true
    client_token: str


@dataclass(frozen=True, slots=True)
class StartNextRequest:
    """StartNextPendingJobExecution (`start-next`; HTTPS PUT /things/T/jobs/$next)."""

    status_details: dict[str, str] | None
    step_timeout_minutes: int | None  # 1..max, or None: no step timer
    client_token: str


def load_request(payload: bytes, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Parse a device's JSON request body (bounded: core/wirejson.py); an empty body is
    an empty request. Raises only DecodeError."""
    if len(payload) > limits.max_job_message_bytes:
        raise DecodeError(f"request of {len(payload)} bytes exceeds {limits.max_job_message_bytes}",
                          code=INVALID_REQUEST)
    if not payload.strip():
        return {}
    try:
        value = wirejson.loads(payload, limits=limits, max_bytes=limits.max_job_message_bytes,
                               what="request")
    except DecodeError as exc:
        raise DecodeError(exc.message, code=INVALID_JSON) from None
    if not isinstance(value, dict):
        raise DecodeError("request must be a JSON object", code=INVALID_JSON)
    return value


def client_token(request: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> str:
    return text_field(request.get("clientToken", ""), name="clientToken",
                      max_bytes=limits.max_client_token_length, code=INVALID_REQUEST)


def parse_status_details(value: Any, limits: Limits = DEFAULT_LIMITS) -> dict[str, str] | None:
    """AWS's statusDetails: at most `max_status_details_entries` entries, keys of
    [a-zA-Z0-9:_-]{1,128}, values non-empty printable text of bounded length. Everything
    stored here is bounded, whatever a device sends (finding 11)."""
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > limits.max_status_details_entries:
        raise DecodeError(f"statusDetails must be a map of at most {limits.max_status_details_entries} "
                          "entries", code=INVALID_REQUEST)
    details: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or _DETAIL_KEY.fullmatch(key) is None:
            raise DecodeError("statusDetails keys must be 1-128 characters of [a-zA-Z0-9:_-]",
                              code=INVALID_REQUEST)
        details[key] = text_field(item, name=f"statusDetails.{key}", code=INVALID_REQUEST,
                                  max_bytes=limits.max_status_detail_length, allow_empty=False)
    return details


def _opt_int(request: dict[str, Any], name: str, high: int) -> int | None:
    value = request.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise DecodeError(f"{name} must be an integer from 0 to {high}", code=INVALID_REQUEST)
    return value


def _opt_bool(request: dict[str, Any], name: str, default: bool = False) -> bool:
    value = request.get(name, default)
    if not isinstance(value, bool):  # bool("false") is True: never coerce
        raise DecodeError(f"{name} must be true or false", code=INVALID_REQUEST)
    return value


def _step_timeout(request: dict[str, Any], limits: Limits, *, may_cancel: bool) -> int | None:
    """stepTimeoutInMinutes: 1 to 10080 (AWS), and on UpdateJobExecution also -1, which
    cancels the step timer."""
    value = request.get("stepTimeoutInMinutes")
    if value is None:
        return None
    high = limits.max_step_timeout_minutes
    if isinstance(value, int) and not isinstance(value, bool) and (
            1 <= value <= high or (may_cancel and value == CANCEL_STEP_TIMER)):
        return value
    allowed = f"from 1 to {high}"
    if may_cancel:
        allowed += f" (or {CANCEL_STEP_TIMER} to cancel the step timer)"
    raise DecodeError(f"stepTimeoutInMinutes must be an integer {allowed}", code=INVALID_REQUEST)


def parse_update(request: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> UpdateRequest:
    """UpdateJobExecution from a device (MQTT or HTTPS): every field typed and bounded,
    DecodeError (InvalidRequest) naming the first that is not."""
    status_text = request.get("status")
    if not isinstance(status_text, str) or status_text not in _STATUSES:
        raise DecodeError(f"unknown status {str(status_text)[:40]!r}", code=INVALID_REQUEST)
    return UpdateRequest(
        status=ExecStatus(status_text),
        status_details=parse_status_details(request.get("statusDetails"), limits),
        expected_version=_opt_int(request, "expectedVersion", MAX_VERSION),
        execution_number=_opt_int(request, "executionNumber", MAX_VERSION),
        include_job_execution_state=_opt_bool(request, "includeJobExecutionState"),
        include_job_document=_opt_bool(request, "includeJobDocument"),
        step_timeout_minutes=_step_timeout(request, limits, may_cancel=True),
        client_token=client_token(request, limits),
    )


def is_progress_report(payload: bytes, limits: Limits = DEFAULT_LIMITS) -> bool:
    """An UpdateJobExecution that only reports progress: IN_PROGRESS without a
    `self_test` step (the OTA convention FreeRTOS and the overair agent share). Such
    reports may be throttled before the device's state-changing updates are (see
    server/delivery/budgets.py). Anything unparsable is not progress: it is charged like
    a state change and answered by the usual error."""
    try:
        request = load_request(payload, limits)
    except DecodeError:
        return False
    details = request.get("statusDetails")
    return request.get("status") == ExecStatus.IN_PROGRESS.value and not (
        isinstance(details, dict) and "self_test" in details)


def parse_describe(request: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> DescribeRequest:
    """DescribeJobExecution from a device (MQTT or HTTPS). AWS: "includeJobDocument:
    Unless set to false, the response contains the job document"; "executionNumber: ...
    If not specified, the latest job execution is returned" (iot-jobs-data model)."""
    return DescribeRequest(
        execution_number=_opt_int(request, "executionNumber", MAX_VERSION),
        include_job_document=_opt_bool(request, "includeJobDocument", default=True),
        client_token=client_token(request, limits),
    )


def parse_start_next(request: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> StartNextRequest:
    """StartNextPendingJobExecution from a device (MQTT or HTTPS): stepTimeoutInMinutes
    1 to 10080 (AWS documents no -1 here)."""
    return StartNextRequest(
        status_details=parse_status_details(request.get("statusDetails"), limits),
        step_timeout_minutes=_step_timeout(request, limits, may_cancel=False),
        client_token=client_token(request, limits),
    )


# The FreeRTOS OTA library (aws/ota-for-aws-iot-embedded-sdk, source/ota_mqtt.c,
# requestJob_Mqtt) publishes `$next/get` with exactly one member, built from the template
# pOtaGetNextJobMsgTemplate `{"clientToken":"%u:%s"}`: a request counter, a colon, the
# thing name. Releases v3.0.0-v3.4.1 render the first counter (0) as an empty string
# (stringBuilderUInt32Decimal); the main branch truncates the thing name to
# OTA_CLIENT_TOKEN_MAX_THINGNAME_LEN (53) characters and loses the counter's last digit.
_FREERTOS_NEXT_TOKEN = re.compile(r"[0-9]{0,10}:(?P<thing>[a-zA-Z0-9:_-]{1,128})")
_FREERTOS_THING_NAME_CUT = 53


def is_freertos_next_request(request: dict[str, Any], thing: str) -> bool:
    """True for a `$next/get` shaped exactly as the FreeRTOS OTA library sends it, from
    `thing`: the library never subscribes to `$next/get/accepted` (device-protocol.md §1),
    so only such a request gets its answer on `notify-next` too."""
    token = request.get("clientToken")
    if request.keys() != {"clientToken"} or not isinstance(token, str):
        return False
    match = _FREERTOS_NEXT_TOKEN.fullmatch(token)
    if match is None:
        return False
    named = match.group("thing")
    return named == thing or (len(named) >= _FREERTOS_THING_NAME_CUT and thing.startswith(named))


def error_reply(code: str, message: str, token: str, now: int,
                execution_state: dict[str, Any] | None = None) -> dict[str, Any]:
    reply: dict[str, Any] = {"code": code, "message": message, "timestamp": now}
    if token:
        reply["clientToken"] = token
    if execution_state is not None:
        reply["executionState"] = execution_state
    return reply


def execution_reply(execution: ExecutionView | None, token: str, now: int,
                    include_document: bool = True) -> dict[str, Any]:
    """Reply to `$next/get`, `J/get` and `start-next`; no `execution` key means nothing
    pending."""
    reply: dict[str, Any] = {"clientToken": token, "timestamp": now}
    if execution is not None:
        reply["execution"] = execution.to_json_obj(include_document)
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


# Documents already encoded for one batch of notifications: id -> (the document, its JSON).
# The document is held with its bytes, so its id cannot be reused by another meanwhile.
EncodedDocuments = dict[int, tuple[dict[str, Any], bytes]]


def encode_notify_next(execution: ExecutionView | None, now: int, encoded: EncodedDocuments) -> bytes:
    """`encode(notify_next(execution, now))`, byte for byte, with each job document object
    encoded once per batch: a job's targets mostly share one rendered document (the
    job's own, when nothing in it is per thing), and encoding it again for each of 10,000
    things was a fifth of notifying them."""
    document = None if execution is None else execution.job_document
    if execution is None or document is None:
        return encode(notify_next(execution, now))
    cached = encoded.get(id(document))
    if cached is None or cached[0] is not document:
        cached = encoded[id(document)] = (document, encode(document))
    # The document is the last member of the execution, the execution the last member of
    # the message: the rest, encoded, ends with "}}".
    head = encode({"timestamp": now, "execution": execution.to_json_obj(include_document=False)})
    return b"".join((head[:-2], b',"jobDocument":', cached[1], b"}}"))
