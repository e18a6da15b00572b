"""Topic parsing and the execution transition table."""

from __future__ import annotations

import re

import pytest

from overair.core import topics
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


@pytest.mark.parametrize("topic", [
    "$aws/things/t1\n/jobs/get", "$aws/things/t1/jobs/j1\n/update", "$aws/things/t1/streams/s1\n/get/cbor",
    "$aws/things/\u0661/jobs/get", "$aws/things//jobs/get", "$aws/things/" + "t" * 129 + "/jobs/get",
])
def test_no_500_names_in_topics_are_matched_whole(topic: str) -> None:
    assert parse_request_topic(topic) is None


@pytest.mark.parametrize(("pattern", "valid"), [
    (topics.THING_NAME_RE, "thing-1:a_b"), (topics.JOB_ID_RE, "AFR_OTA-x"), (topics.STREAM_ID_RE, "s_1-2"),
])
def test_name_patterns_refuse_a_trailing_newline_however_applied(pattern: re.Pattern[str],
                                                                 valid: str) -> None:
    # `^...$` with .match() accepted "name\n"; every way of applying the patterns must not.
    assert pattern.match(valid)
    assert pattern.fullmatch(valid)
    assert pattern.search(valid)
    for hostile in (valid + "\n", "\n" + valid, valid + "\n" + valid):
        assert not pattern.match(hostile)
        assert not pattern.fullmatch(hostile)
        assert not pattern.search(hostile)


def test_unserved_requests_under_a_jobs_topic_are_recognised_for_an_invalid_topic_reply() -> None:
    assert topics.jobs_request_thing("$aws/things/t1/jobs/bad id/get") == "t1"
    assert topics.jobs_request_thing("$aws/things/t1/jobs/x/y/update") == "t1"
    assert topics.jobs_request_thing("$aws/things/t1/jobs/j/get/rejected") is None  # a reply: never answered
    assert topics.jobs_request_thing("$aws/things/t\n1/jobs/get") is None
