"""Jobs MQTT/HTTPS requests from devices (core/jobs_wire.py): every field typed and
bounded, and nothing but DecodeError with a Jobs error code ever raised (finding 10)."""

from __future__ import annotations

import json

import pytest

from overair.core import jobs_wire as wire
from overair.core.errors import DecodeError
from overair.core.jobstates import ExecStatus


def test_a_freertos_update_parses() -> None:
    request = wire.load_request(
        b'{"status":"IN_PROGRESS","statusDetails":{"self_test":"ready",'
        b'"updatedBy":"0x1000000"},"clientToken":"12:thing"}'
    )
    update = wire.parse_update(request)
    assert update.status is ExecStatus.IN_PROGRESS
    assert update.status_details == {"self_test": "ready", "updatedBy": "0x1000000"}
    assert update.client_token == "12:thing"


@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 1000 + b"]" * 1000,
        b'{"status": ' + b"[" * 1000 + b"]" * 1000 + b"}",
        b'{"status": "IN_PROGRESS", "expectedVersion": 1e400}',
        b'{"a": NaN}',
        b"\xff\xfe",
        b'{"a": 1',
        b'{"stepTimeoutInMinutes": ' + b"1" + b"0" * 400 + b"}",
    ],
)
def test_no_500_undecodable_or_unbounded_json_is_invalid_json(payload: bytes) -> None:
    with pytest.raises(DecodeError) as err:
        wire.load_request(payload)
    assert err.value.code == wire.INVALID_JSON


@pytest.mark.parametrize(
    "patch",
    [
        {"status": "BOGUS"},
        {"status": ["IN_PROGRESS"]},
        {"stepTimeoutInMinutes": 10**30},
        {"stepTimeoutInMinutes": 10_081},
        {"stepTimeoutInMinutes": 0},
        {"stepTimeoutInMinutes": -5},
        {"stepTimeoutInMinutes": 1.5},
        {"expectedVersion": 1 << 63},
        {"executionNumber": True},
        {"includeJobDocument": "false"},
        {"includeJobExecutionState": 1},
        {"statusDetails": {"bad key": "x"}},
        {"statusDetails": {"k": ""}},
        {"statusDetails": {"k": 1}},
        {"statusDetails": {"k": "\x1b]0;owned\x07"}},
        {"statusDetails": {"k": "\ud800"}},
        {"statusDetails": {"k": "x" * 1025}},
        {"statusDetails": {f"k{i}": "v" for i in range(11)}},
        {"statusDetails": ["k"]},
        {"clientToken": "t" * 65},
        {"clientToken": "\x00"},
        {"clientToken": 5},
    ],
)
def test_no_500_every_field_is_typed_and_bounded(patch: dict[str, object]) -> None:
    request = {"status": "IN_PROGRESS", **patch}
    with pytest.raises(DecodeError) as err:
        wire.parse_update(wire.load_request(json.dumps(request).encode()))
    assert err.value.code == wire.INVALID_REQUEST


def test_free_text_reasons_keep_newlines_and_the_largest_step_timeout_is_accepted() -> None:
    update = wire.parse_update(
        {
            "status": "FAILED",
            "statusDetails": {"reason": "line 1\nline 2\ttab"},
            "stepTimeoutInMinutes": 10_080,
        }
    )
    assert update.status_details == {"reason": "line 1\nline 2\ttab"}
    assert update.step_timeout_minutes == 10_080
