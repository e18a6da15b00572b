"""Fuzz target: the device side of MQTT at the service level (issue 12, finding 10):
`DeviceService.admit`, `handle_from_cache` and `handle` with the real job, stream and
audit services (tests/fuzz/device_world.py), for every request topic the service
subscribes to (`$next/get`, `get`, `J/get`, `start-next`, `J/update`, stream
`get`/`describe` in CBOR and JSON), unknown and hostile topics.

Every message yields a normal reply, a `rejected` reply or nothing, never an exception
and never InternalError (the catch-all that marks a defect); replies go only to the
requesting thing's reply topics, and under `streams/` nothing but decodable data
blocks, descriptions and rejections is ever published.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from overair.core import streamcodec
from overair.server.gateway.device_service import Outgoing
from tests.fuzz.device_strategies import (
    HOSTILE_TEXT,
    cbor_payloads,
    job_messages,
    json_payloads,
    stream_messages,
)
from tests.fuzz.device_world import JOB, OTHER_THING, STREAM, THING, DeviceWorld, build

JOB_TOPICS = [
    f"$aws/things/{THING}/jobs/$next/get",
    f"$aws/things/{THING}/jobs/get",
    f"$aws/things/{THING}/jobs/{JOB}/get",
    f"$aws/things/{THING}/jobs/start-next",
    f"$aws/things/{THING}/jobs/{JOB}/update",
    f"$aws/things/{THING}/jobs/other-job/update",
    f"$aws/things/{OTHER_THING}/jobs/{JOB}/update",
    f"$aws/things/{THING}/jobs/$next/update",
    # Topics that map to no API (InvalidTopic): the service takes all of `jobs/#`.
    f"$aws/things/{THING}/jobs",
    f"$aws/things/{THING}/jobs/describe",
    f"$aws/things/{THING}/jobs/{JOB}/describe",
    f"$aws/things/{THING}/jobs/{JOB}/get/more",
]
# The service's own replies come back through its `jobs/#` subscription: never answered.
REPLY_TOPICS = [
    f"$aws/things/{THING}/jobs/notify-next",
    f"$aws/things/{THING}/jobs/notify",
    f"$aws/things/{THING}/jobs/get/accepted",
    f"$aws/things/{THING}/jobs/start-next/rejected",
    f"$aws/things/{THING}/jobs/$next/get/accepted",
    f"$aws/things/{THING}/jobs/{JOB}/update/accepted",
    f"$aws/things/{THING}/jobs/{JOB}/update/rejected",
    f"$aws/things/{THING}/jobs/describe/rejected",
]
STREAM_TOPICS = [
    f"$aws/things/{t}/streams/{s}/{verb}/{fmt}"
    for t in (THING, OTHER_THING)
    for s in (STREAM, "no-such-stream")
    for verb in ("get", "describe")
    for fmt in ("cbor", "json")
]
_SEGMENT = st.one_of(
    HOSTILE_TEXT.filter(lambda t: "/" not in t), st.sampled_from(["get", "update", "$next", JOB])
)
HOSTILE_TOPICS = st.one_of(
    st.lists(_SEGMENT, min_size=1, max_size=4).map(lambda p: f"$aws/things/{THING}/jobs/{'/'.join(p)}"),
    st.tuples(_SEGMENT, _SEGMENT, _SEGMENT).map(
        lambda p: f"$aws/things/{THING}/streams/{p[0]}/{p[1]}/{p[2]}"
    ),
    _SEGMENT.map(lambda thing: f"$aws/things/{thing}/jobs/get"),
    HOSTILE_TEXT,
)


def _world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeviceWorld]:
    world = build(tmp_path_factory.mktemp("fuzz-mqtt"))
    yield world
    world.server.devices.close()
    world.server.db.close()


# Two worlds: the jobs target may end the execution, which would leave the stream target
# nothing but refusals to exercise.
world = pytest.fixture(scope="module")(_world)
jobs_world = pytest.fixture(scope="module")(_world)


def _check(world: DeviceWorld, topic: str, payload: bytes) -> None:
    devices = world.server.devices
    admitted = devices.admit(topic)
    assert admitted is None or all(isinstance(m, Outgoing) for m in admitted)
    cached = devices.handle_from_cache(topic, payload)
    replies = devices.handle(topic, payload)
    for reply in [*(cached or []), *replies]:
        _check_reply(topic, reply)


def _check_reply(topic: str, reply: Outgoing) -> None:
    parts = topic.split("/")
    thing = parts[2]
    assert reply.topic.startswith(f"$aws/things/{thing}/"), (topic, reply.topic)
    if "/streams/" in reply.topic:
        fmt = reply.topic.rsplit("/", 1)[1]
        kind = reply.topic.split("/")[-2]
        assert kind in ("data", "description", "rejected"), reply.topic
        if kind == "rejected":
            code, _ = streamcodec.decode_rejection(reply.payload, fmt)
            assert code != "InternalError", (topic, reply.payload)
        elif kind == "data":
            streamcodec.decode_data_block(reply.payload, fmt)
        else:
            assert (cbor2.loads(reply.payload) if fmt == "cbor" else json.loads(reply.payload))["r"]
        return
    assert reply.topic in (
        f"{topic}/accepted",
        f"{topic}/rejected",
        f"$aws/things/{thing}/jobs/notify-next",
        f"$aws/things/{thing}/jobs/notify",
    ), (topic, reply.topic)
    body = json.loads(reply.payload)
    assert body.get("code") != "InternalError", (topic, body)


def test_the_world_serves_a_well_formed_request(world: DeviceWorld) -> None:
    """The fuzz targets below reach the serving path: a valid request gets blocks."""
    request = streamcodec.GetStreamRequest("rdy", 0, 4096, 0, b"\x07", 3, None)
    replies = world.server.devices.handle(
        f"$aws/things/{THING}/streams/{STREAM}/get/cbor", streamcodec.encode_get_stream(request)
    )
    assert [streamcodec.decode_data_block(r.payload).block_id for r in replies] == [0, 1, 2]


@given(st.sampled_from(JOB_TOPICS), json_payloads(job_messages()))
def test_fuzz_device_service_jobs_requests_get_a_reply_or_a_rejection(
    jobs_world: DeviceWorld, topic: str, payload: bytes
) -> None:
    _check(jobs_world, topic, payload)


@given(st.sampled_from(REPLY_TOPICS), json_payloads(job_messages()))
def test_fuzz_device_service_never_answers_its_own_replies(world: DeviceWorld, topic: str,
                                                           payload: bytes) -> None:
    devices = world.server.devices
    assert devices.admit(topic) == []
    assert devices.handle(topic, payload) == []


@given(st.sampled_from(STREAM_TOPICS), st.data())
def test_fuzz_device_service_stream_requests_get_blocks_or_a_rejection(
    world: DeviceWorld, topic: str, data: st.DataObject
) -> None:
    fmt = topic.rsplit("/", 1)[1]
    payload = data.draw(cbor_payloads() if fmt == "cbor" else json_payloads(stream_messages()))
    _check(world, topic, payload)


@given(HOSTILE_TOPICS, st.binary(max_size=100))
def test_fuzz_device_service_hostile_topics_never_raise(
    world: DeviceWorld, topic: str, payload: bytes
) -> None:
    devices = world.server.devices
    devices.admit(topic)
    devices.handle_from_cache(topic, payload)
    for reply in devices.handle(topic, payload):
        _check_reply(topic, reply)


@given(st.lists(st.tuples(st.one_of(st.sampled_from(JOB_TOPICS), HOSTILE_TOPICS),
                          st.one_of(json_payloads(job_messages()), st.binary(max_size=100))),
                min_size=1, max_size=8))
def test_fuzz_device_service_a_run_of_updates_gets_one_answer_per_message(
    jobs_world: DeviceWorld, messages: list[tuple[str, bytes]]
) -> None:
    """`handle_updates` (a worker's run of job updates) never raises, answers each
    message, and each answer goes only to that message's thing, as `handle` would."""
    answers = jobs_world.server.devices.handle_updates(messages)
    assert len(answers) == len(messages)
    for (topic, _), replies in zip(messages, answers, strict=True):
        for reply in replies:
            _check_reply(topic, reply)
