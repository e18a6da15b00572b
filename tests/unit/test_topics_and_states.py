"""Topic parsing and the execution transition table."""

from __future__ import annotations

import pytest

from overair.core.jobstates import Actor, ExecStatus, can_transition
from overair.core.topics import JobsRequest, JobsTopic, StreamsRequest, StreamsTopic, parse_request_topic


@pytest.mark.parametrize(("topic", "expected"), [
    ("$aws/things/t1/jobs/$next/get", JobsTopic("t1", JobsRequest.DESCRIBE, "$next")),
    ("$aws/things/t1/jobs/get", JobsTopic("t1", JobsRequest.GET_PENDING, None)),
    ("$aws/things/t1/jobs/start-next", JobsTopic("t1", JobsRequest.START_NEXT, None)),
    ("$aws/things/t1/jobs/AFR_OTA-x/update", JobsTopic("t1", JobsRequest.UPDATE, "AFR_OTA-x")),
    ("$aws/things/t1/streams/s1/get/cbor", StreamsTopic("t1", "s1", StreamsRequest.GET, "cbor")),
    ("$aws/things/t1/streams/s1/describe/json", StreamsTopic("t1", "s1", StreamsRequest.DESCRIBE, "json")),
    ("$aws/things/t1/jobs/$next/update", None),
    ("$aws/things/t1/jobs/j/get/accepted", None),
    ("$aws/things/t.1/jobs/get", None),
    ("$aws/things/t1/streams/s1/get/xml", None),
    ("other/topic", None),
])
def test_parse_request_topic(topic: str, expected: object) -> None:
    assert parse_request_topic(topic) == expected


def test_terminal_states_are_final() -> None:
    for src in ExecStatus:
        if src.terminal:
            assert not any(can_transition(src, dst, actor) for dst in ExecStatus for actor in Actor)


def test_devices_and_service_have_their_own_transitions() -> None:
    assert can_transition(ExecStatus.QUEUED, ExecStatus.IN_PROGRESS, Actor.DEVICE)
    assert can_transition(ExecStatus.IN_PROGRESS, ExecStatus.SUCCEEDED, Actor.DEVICE)
    assert not can_transition(ExecStatus.IN_PROGRESS, ExecStatus.CANCELED, Actor.DEVICE)
    assert not can_transition(ExecStatus.IN_PROGRESS, ExecStatus.SUCCEEDED, Actor.SERVICE)
    assert can_transition(ExecStatus.IN_PROGRESS, ExecStatus.TIMED_OUT, Actor.SERVICE)
    assert not can_transition(ExecStatus.QUEUED, ExecStatus.TIMED_OUT, Actor.SERVICE)
