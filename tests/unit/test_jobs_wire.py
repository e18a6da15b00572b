"""Jobs MQTT/HTTPS requests from devices (core/jobs_wire.py): every field typed and
bounded, and nothing but DecodeError with a Jobs error code ever raised (finding 10)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

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


def test_update_step_timeout_minus_one_cancels_the_step_timer_and_only_there() -> None:
    # AWS: UpdateJobExecution's "-1 ... will cancel the current step timer";
    # StartNextPendingJobExecution documents 1 to 10080 only.
    assert wire.parse_update({"status": "IN_PROGRESS", "stepTimeoutInMinutes": -1}).step_timeout_minutes == -1
    assert wire.parse_start_next({"stepTimeoutInMinutes": 1}).step_timeout_minutes == 1
    for value in (-1, 0, 10_081, True, "5", 2.0):
        with pytest.raises(DecodeError) as err:
            wire.parse_start_next({"stepTimeoutInMinutes": value})
        assert err.value.code == wire.INVALID_REQUEST


def test_describe_includes_the_job_document_unless_told_not_to() -> None:
    # AWS: "includeJobDocument: Unless set to false, the response contains the job document."
    assert wire.parse_describe({}) == wire.DescribeRequest(None, True, "")
    assert wire.parse_describe({"includeJobDocument": False, "executionNumber": 1, "clientToken": "c"}) == \
        wire.DescribeRequest(1, False, "c")
    for patch in ({"includeJobDocument": "false"}, {"executionNumber": -1}, {"executionNumber": 1.0},
                  {"clientToken": "t" * 65}):
        with pytest.raises(DecodeError) as err:
            wire.parse_describe(patch)
        assert err.value.code == wire.INVALID_REQUEST


@pytest.mark.parametrize(
    ("token", "thing", "freertos"),
    [
        (":dev-1", "dev-1", True),  # v3.0.0-v3.4.1, first request: counter 0 rendered empty
        ("1:dev-1", "dev-1", True),
        ("4294967295:dev-1", "dev-1", True),
        ("12:a:b", "a:b", True),  # thing names may contain ':'
        ("3:" + "t" * 53, "t" * 60, True),  # main branch: thing name cut to 53 characters
        ("3:" + "t" * 61, "t" * 70, True),  # overair's agent: the token cut to 64 characters
        ("3:" + "t" * 52, "t" * 60, False),  # a shorter prefix is not the library's
        ("1:dev-2", "dev-1", False),  # another thing
        ("1:dev-1x", "dev-1", False),
        ("x:dev-1", "dev-1", False),
        ("1 :dev-1", "dev-1", False),
        ("dev-1", "dev-1", False),
        ("1:", "dev-1", False),
        ("8d3e0f2c-3a1b-4c57-9e4f-2b7f5a8c9d10", "dev-1", False),  # the SDK's V2 client
        ("12345678901:dev-1", "dev-1", False),  # more digits than a uint32
    ],
)
def test_only_requests_shaped_as_the_freertos_ota_librarys_are_freertos(token: str, thing: str,
                                                                         freertos: bool) -> None:
    assert wire.is_freertos_next_request({"clientToken": token}, thing) is freertos


def test_a_freertos_token_with_any_other_field_is_not_the_librarys_request() -> None:
    assert wire.is_freertos_next_request(wire.load_request(b'{"clientToken":"1:dev-1"}'), "dev-1")
    assert not wire.is_freertos_next_request({"clientToken": "1:dev-1", "includeJobDocument": True}, "dev-1")
    assert not wire.is_freertos_next_request({}, "dev-1")
    assert not wire.is_freertos_next_request({"clientToken": 1}, "dev-1")


_DOCUMENTS = st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                          lambda inner: (st.lists(inner, max_size=3)
                                         | st.dictionaries(st.text(), inner, max_size=3)),
                          max_leaves=12)


@given(document=st.none() | st.dictionaries(st.text(), _DOCUMENTS, max_size=4),
       details=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
       started=st.none() | st.integers(0, 2**40), now=st.integers(0, 2**40))
def test_a_notify_next_encoded_with_shared_documents_is_the_same_bytes(
        document: dict[str, object] | None, details: dict[str, str], started: int | None, now: int) -> None:
    """notify-next for a job's targets encodes each shared document once per batch
    (`encode_notify_next`): the bytes must be those of encoding each message whole, for
    the first thing of a batch, for the next ones sharing the document, and after a
    different document with the same id slot."""
    encoded: wire.EncodedDocuments = {}
    for thing in ("thing-1", "thing-é"):
        view = wire.ExecutionView(job_id="job-1", thing_name=thing, status=ExecStatus.QUEUED,
                                  status_details=details, queued_at=1, started_at=started,
                                  last_updated_at=2, version_number=1, execution_number=1,
                                  job_document=document)
        assert wire.encode_notify_next(view, now, encoded) == wire.encode(wire.notify_next(view, now))
    assert wire.encode_notify_next(None, now, encoded) == wire.encode(wire.notify_next(None, now))
    # A stale entry under the id of another object is not used for it.
    other = {"other": [1, 2]}
    encoded[id(other)] = ({"stale": True}, b'{"stale":true}')
    view = wire.ExecutionView(job_id="j", thing_name="t", status=ExecStatus.IN_PROGRESS, status_details={},
                              queued_at=1, started_at=None, last_updated_at=2, version_number=3,
                              execution_number=1, job_document=other)
    assert json.loads(wire.encode_notify_next(view, now, encoded))["execution"]["jobDocument"] == other
