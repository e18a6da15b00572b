"""Fuzz target: the Jobs API requests a device sends (core/jobs_wire.py), the body of
every MQTT Jobs request and of the HTTPS UpdateJobExecution, DescribeJobExecution and
StartNextPendingJobExecution (issue 12, finding 10; issue 13, items 5 and 6).

`load_request`, `client_token`, `parse_status_details`, `parse_update`,
`parse_describe` and `parse_start_next` may raise only `DecodeError`, with a Jobs error
code; what they accept is bounded. `is_freertos_next_request` and
`is_progress_report` (the budget's classification, run before anything else) never
raise.
"""

from __future__ import annotations

import contextlib
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from overair.core import jobs_wire as wire
from overair.core.errors import DecodeError
from overair.core.limits import DEFAULT_LIMITS
from tests.fuzz.device_strategies import JSON_VALUES, job_messages, json_payloads

CODES = {wire.INVALID_JSON, wire.INVALID_REQUEST}


@given(json_payloads(job_messages()))
def test_fuzz_jobs_request_bytes_raise_only_decode_error(payload: bytes) -> None:
    code: str | None = None
    assert wire.is_progress_report(payload) in (True, False)
    try:
        request = wire.load_request(payload)
        wire.client_token(request)
        wire.is_freertos_next_request(request, "thing-1")
        wire.parse_update(request)
    except DecodeError as exc:
        code = exc.code
    assert code is None or code in CODES


@given(job_messages(), st.sampled_from(["thing-1", "t", "x" * 128]))
def test_fuzz_describe_and_start_next_are_bounded(request: dict[str, Any], thing: str) -> None:
    wire.is_freertos_next_request(request, thing)
    codes: list[str] = []
    describe = start = None
    try:
        describe = wire.parse_describe(request)
    except DecodeError as exc:
        codes.append(exc.code)
    try:
        start = wire.parse_start_next(request)
    except DecodeError as exc:
        codes.append(exc.code)
    assert set(codes) <= CODES
    if describe is not None:
        assert describe.execution_number is None or 0 <= describe.execution_number <= wire.MAX_VERSION
        assert isinstance(describe.include_job_document, bool)
        assert len(describe.client_token.encode()) <= DEFAULT_LIMITS.max_client_token_length
    if start is not None:
        assert start.step_timeout_minutes is None or 1 <= start.step_timeout_minutes <= 10_080
        assert len(start.status_details or {}) <= DEFAULT_LIMITS.max_status_details_entries


@given(job_messages())
def test_fuzz_accepted_updates_are_bounded(request: dict[str, Any]) -> None:
    code: str | None = None
    try:
        update = wire.parse_update(request)
    except DecodeError as exc:
        code = exc.code
    if code is not None:
        assert code in CODES
        return
    details = update.status_details or {}
    assert len(details) <= DEFAULT_LIMITS.max_status_details_entries
    assert all(len(v.encode()) <= DEFAULT_LIMITS.max_status_detail_length for v in details.values())
    step = update.step_timeout_minutes
    assert step in (None, wire.CANCEL_STEP_TIMER) or 1 <= step <= 10_080
    assert len(update.client_token.encode()) <= DEFAULT_LIMITS.max_client_token_length


@given(JSON_VALUES)
def test_fuzz_status_details_raise_only_decode_error(value: Any) -> None:
    with contextlib.suppress(DecodeError):
        wire.parse_status_details(value)
    with contextlib.suppress(DecodeError):
        wire.parse_status_details({"reason": value})
