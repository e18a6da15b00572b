"""Devices built on the AWS IoT Device SDK v2 for Python run jobs against the real server
(API, device service, Mosquitto) exactly as against AWS IoT Core: MQTT 3.1.1 and MQTT 5,
the classic `IotJobsClient` and `IotJobsClientV2`, mutual TLS with a certificate the API
issued and attached to the thing (tests/e2e/sdk_device.py).

Each test ends on an event the device observes. What AWS does, and where that is
documented, is in the docstrings; docs/compatibility.md (Device Jobs API) sums it up.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from awsiot import iotjobs

from tests.e2e.conftest import ShiftableClock
from tests.e2e.sdk_device import Protocol, SdkDevice, V1Rejected, V2Rejected
from tests.server_harness import RunningServer

DOCUMENT = {"operation": "install", "version": "2.0.0"}
Devices = Callable[[str], SdkDevice]


@pytest.fixture(params=list(Protocol), ids=lambda protocol: protocol.value)
def protocol(request: pytest.FixtureRequest) -> Protocol:
    return Protocol(request.param)


@pytest.fixture
def devices(clocked_srv: RunningServer, tmp_path: Path, protocol: Protocol,
            request: pytest.FixtureRequest) -> Iterator[Devices]:
    """Provision a thing (certificate issued by the API, attached to it) and connect an
    SDK device for it; every device is disconnected at the end."""
    opened: list[SdkDevice] = []
    test = request.node.originalname.removeprefix("test_")[:24].strip("_")

    def make(suffix: str) -> SdkDevice:
        thing = f"sdk-{protocol.value}-{test}-{suffix}".replace("_", "-")
        device = SdkDevice(clocked_srv, clocked_srv.provision(thing, tmp_path / thing), thing, protocol)
        opened.append(device)
        return device

    yield make
    for device in opened:
        device.close()


@pytest.fixture
def server_clock(clock: ShiftableClock) -> Iterator[ShiftableClock]:
    """The server's clock, to move forward; put back afterwards, because the server also
    dates the certificates it issues and the broker checks them against real time."""
    try:
        yield clock
    finally:
        clock.offset = 0.0


def _create_job(srv: RunningServer, job_id: str, things: list[str], **config: Any) -> None:
    iot = srv.client("iot")
    iot.create_job(jobId=job_id, targets=[iot.describe_thing(thingName=t)["thingArn"] for t in things],
                   document=json.dumps(DOCUMENT), **config)


def _job_id(device: SdkDevice, name: str) -> str:
    return f"{device.thing}-{name}"[-64:].lstrip("-_")


def _queued(device: SdkDevice, job_id: str, number: int = 1) -> Any:
    """Wait for the NextJobExecutionChanged event that offers `job_id` (execution `number`)."""
    return device.inbox.wait_for(
        "next-changed", lambda e: e.execution is not None and e.execution.job_id == job_id
        and e.execution.execution_number == number and e.execution.status == "QUEUED",
        f"no NextJobExecutionChanged offering {job_id} #{number}")


def _offers(device: SdkDevice) -> list[str | None]:
    """The job each NextJobExecutionChanged event so far offered (None: nothing next)."""
    return [e.execution.job_id if e.execution else None for e in device.inbox.of("next-changed")]


def _nothing_next(device: SdkDevice) -> Any:
    return device.inbox.wait_for("next-changed", lambda e: e.execution is None,
                                 "no NextJobExecutionChanged saying nothing is next")


def test_classic_client_runs_a_job_to_succeeded(clocked_srv: RunningServer, devices: Devices) -> None:
    """The classic client through the whole life cycle, as the SDK's jobs sample drives it.
    GetNextPendingJobExecution (`$next/get`) is answered on `$next/get/accepted` only: the
    device's next NextJobExecutionChanged is the one its finished job causes (issue 13,
    item 7). An update after the end is refused InvalidStateTransition with the
    execution's state, AWS's documented answer (item 8)."""
    device = devices("a")
    device.watch_v1()
    job = _job_id(device, "job")
    _create_job(clocked_srv, job, [device.thing])
    offered = _queued(device, job)
    assert offered.execution.job_document == DOCUMENT
    changed = device.inbox.wait_for("executions-changed")
    assert [summary.job_id for summary in changed.jobs["QUEUED"]] == [job]

    pending = device.v1_get_pending()
    assert [j.job_id for j in pending.queued_jobs] == [job]
    assert pending.in_progress_jobs == []
    asked = device.v1_describe("$next")
    assert (asked.execution.job_id, asked.execution.job_document) == (job, DOCUMENT)

    started = device.v1_start_next(status_details={"step": "download"})
    assert started.execution.status == "IN_PROGRESS"
    assert started.execution.status_details == {"step": "download"}
    version = started.execution.version_number
    progress = device.v1_update(job, "IN_PROGRESS", status_details={"step": "install"},
                                expected_version=version, include_job_execution_state=True)
    assert (progress.execution_state.status, progress.execution_state.version_number) == ("IN_PROGRESS",
                                                                                          version + 1)
    done = device.v1_update(job, "SUCCEEDED", status_details={"result": "ok"},
                            include_job_execution_state=True, include_job_document=True)
    assert done.execution_state.status == "SUCCEEDED"
    assert done.job_document == DOCUMENT

    _nothing_next(device)
    # Two events on notify-next: the job offered, then nothing next. Nothing for `$next/get`.
    assert _offers(device) == [job, None]

    with pytest.raises(V1Rejected) as refused:
        device.v1_update(job, "IN_PROGRESS")
    assert refused.value.error.code == iotjobs.RejectedErrorCode.INVALID_STATE_TRANSITION
    assert refused.value.error.execution_state.status == "SUCCEEDED"
    final = device.v1_describe(job)
    assert (final.execution.status, final.execution.status_details) == ("SUCCEEDED", {"result": "ok"})
    operator = clocked_srv.client("iot").describe_job_execution(jobId=job, thingName=device.thing)
    assert operator["execution"]["status"] == "SUCCEEDED"


def test_v2_client_runs_a_job_to_succeeded(clocked_srv: RunningServer, devices: Devices) -> None:
    """The V2 client (request-response, event streams) through the life cycle.
    DescribeJobExecution honours `includeJobDocument` (AWS: "Unless set to false, the
    response contains the job document", item 6); `$next/get` adds no event to the
    NextJobExecutionChanged stream (item 7); an update after the end is refused
    InvalidStateTransition (item 8)."""
    device = devices("a")
    device.watch_v2()
    job = _job_id(device, "job")
    _create_job(clocked_srv, job, [device.thing])
    _queued(device, job)
    v2 = device.v2

    pending = device.v2_call(v2.get_pending_job_executions,
                             iotjobs.GetPendingJobExecutionsRequest(thing_name=device.thing))
    assert [j.job_id for j in pending.queued_jobs] == [job]
    asked = device.v2_call(v2.describe_job_execution,
                           iotjobs.DescribeJobExecutionRequest(thing_name=device.thing, job_id="$next"))
    assert (asked.execution.job_id, asked.execution.job_document) == (job, DOCUMENT)
    bare = device.v2_call(v2.describe_job_execution, iotjobs.DescribeJobExecutionRequest(
        thing_name=device.thing, job_id=job, include_job_document=False))
    assert (bare.execution.status, bare.execution.job_document) == ("QUEUED", None)
    bare_next = device.v2_call(v2.describe_job_execution, iotjobs.DescribeJobExecutionRequest(
        thing_name=device.thing, job_id="$next", include_job_document=False))
    assert (bare_next.execution.job_id, bare_next.execution.job_document) == (job, None)

    started = device.v2_call(v2.start_next_pending_job_execution,
                             iotjobs.StartNextPendingJobExecutionRequest(thing_name=device.thing))
    assert started.execution.status == "IN_PROGRESS"
    assert started.execution.job_document == DOCUMENT
    done = device.v2_call(v2.update_job_execution, iotjobs.UpdateJobExecutionRequest(
        thing_name=device.thing, job_id=job, status="SUCCEEDED", status_details={"result": "ok"},
        expected_version=started.execution.version_number, include_job_execution_state=True))
    assert done.execution_state.status == "SUCCEEDED"

    _nothing_next(device)
    assert _offers(device) == [job, None]
    with pytest.raises(V2Rejected) as refused:
        device.v2_call(v2.update_job_execution, iotjobs.UpdateJobExecutionRequest(
            thing_name=device.thing, job_id=job, status="FAILED"))
    assert refused.value.error.code == iotjobs.RejectedErrorCode.INVALID_STATE_TRANSITION
    assert refused.value.error.execution_state.status == "SUCCEEDED"


def test_step_timeout_times_out_an_execution_not_updated_in_time(clocked_srv: RunningServer,
                                                                 server_clock: ShiftableClock,
                                                                 devices: Devices) -> None:
    """StartNextPendingJobExecution with stepTimeoutInMinutes starts the step timer: an
    execution not updated before it expires becomes TIMED_OUT; an update to IN_PROGRESS
    with a new stepTimeoutInMinutes restarts it, and -1 cancels it (AWS's iot-jobs-data
    model, StartNextPendingJobExecution and UpdateJobExecution; issue 13, item 5). The
    three devices run one job, so one scheduler pass decides all three."""
    late, restarted, canceled = devices("late"), devices("restart"), devices("cancel")
    job = _job_id(late, "job")
    for device in (late, restarted, canceled):
        device.watch_v2()
    _create_job(clocked_srv, job, [late.thing, restarted.thing, canceled.thing])
    for device in (late, restarted, canceled):
        _queued(device, job)
        started = device.v2_call(device.v2.start_next_pending_job_execution,
                                 iotjobs.StartNextPendingJobExecutionRequest(thing_name=device.thing,
                                                                             step_timeout_in_minutes=1))
        assert started.execution.status == "IN_PROGRESS"
    for device, minutes in ((restarted, 3), (canceled, -1)):
        device.v2_call(device.v2.update_job_execution, iotjobs.UpdateJobExecutionRequest(
            thing_name=device.thing, job_id=job, status="IN_PROGRESS", step_timeout_in_minutes=minutes))

    def status(device: SdkDevice) -> str:
        return str(device.v2_call(device.v2.describe_job_execution, iotjobs.DescribeJobExecutionRequest(
            thing_name=device.thing, job_id=job)).execution.status)

    server_clock.offset += 61
    _nothing_next(late)
    assert [status(d) for d in (late, restarted, canceled)] == ["TIMED_OUT", "IN_PROGRESS", "IN_PROGRESS"]
    server_clock.offset += 3 * 60
    _nothing_next(restarted)
    assert [status(d) for d in (restarted, canceled)] == ["TIMED_OUT", "IN_PROGRESS"]
    done = canceled.v2_call(canceled.v2.update_job_execution, iotjobs.UpdateJobExecutionRequest(
        thing_name=canceled.thing, job_id=job, status="SUCCEEDED", include_job_execution_state=True))
    assert done.execution_state.status == "SUCCEEDED"


def test_execution_number_addresses_one_execution_after_a_retry(clocked_srv: RunningServer,
                                                                devices: Devices) -> None:
    """After a retry (jobExecutionsRetryConfig), DescribeJobExecution with executionNumber
    1 returns execution #1, without it the latest; UpdateJobExecution with executionNumber
    addresses that execution: #1 has ended (InvalidStateTransition, its state attached),
    #3 does not exist (ResourceNotFound), #2 is the one to run (item 6)."""
    device = devices("a")
    device.watch_v2()
    job = _job_id(device, "job")
    _create_job(clocked_srv, job, [device.thing],
                jobExecutionsRetryConfig={"criteriaList": [{"failureType": "FAILED", "numberOfRetries": 1}]})
    _queued(device, job)
    v2 = device.v2
    device.v2_call(v2.start_next_pending_job_execution,
                   iotjobs.StartNextPendingJobExecutionRequest(thing_name=device.thing))
    device.v2_call(v2.update_job_execution, iotjobs.UpdateJobExecutionRequest(
        thing_name=device.thing, job_id=job, status="FAILED", status_details={"reason": "flash error"}))
    _queued(device, job, number=2)

    def describe(**fields: Any) -> Any:
        request = iotjobs.DescribeJobExecutionRequest(thing_name=device.thing, job_id=job, **fields)
        return device.v2_call(v2.describe_job_execution, request)

    first = describe(execution_number=1).execution
    assert (first.execution_number, first.status) == (1, "FAILED")
    assert first.status_details == {"reason": "flash error"}
    latest = describe().execution
    assert (latest.execution_number, latest.status) == (2, "QUEUED")
    with pytest.raises(V2Rejected) as missing:
        describe(execution_number=3)
    assert missing.value.error.code == iotjobs.RejectedErrorCode.RESOURCE_NOT_FOUND

    def update(number: int, status: str) -> Any:
        return device.v2_call(v2.update_job_execution, iotjobs.UpdateJobExecutionRequest(
            thing_name=device.thing, job_id=job, status=status, execution_number=number,
            include_job_execution_state=True))

    with pytest.raises(V2Rejected) as ended:
        update(1, "IN_PROGRESS")
    assert ended.value.error.code == iotjobs.RejectedErrorCode.INVALID_STATE_TRANSITION
    assert ended.value.error.execution_state.status == "FAILED"
    with pytest.raises(V2Rejected) as unknown:
        update(3, "IN_PROGRESS")
    assert unknown.value.error.code == iotjobs.RejectedErrorCode.RESOURCE_NOT_FOUND
    assert update(2, "SUCCEEDED").execution_state.status == "SUCCEEDED"
    assert describe(execution_number=1).execution.status == "FAILED"
    _nothing_next(device)


def test_a_request_on_a_topic_that_maps_to_no_api_is_refused_invalid_topic(devices: Devices) -> None:
    """AWS: InvalidTopic, "The request was sent to a topic in the AWS IoT Jobs namespace
    that doesn't map to any API operation", on the request topic's `/rejected` (Jobs
    device API, ErrorResponse; item 8). Sent through the SDK's own connection, since no
    jobs client publishes there."""
    device = devices("a")
    prefix = f"$aws/things/{device.thing}/jobs"
    for topic in (f"{prefix}/describe", f"{prefix}/some-job/describe", f"{prefix}/some-job/get/extra",
                  f"{prefix}/$next/update", f"{prefix}/not a job id/get"):
        device.raw_subscribe(f"{topic}/rejected")
        device.raw_publish(topic, json.dumps({"clientToken": "asked-1"}).encode())
        error = device.inbox.wait_for(f"{topic}/rejected", what=f"no answer on {topic}/rejected")
        assert (error["code"], error["clientToken"]) == ("InvalidTopic", "asked-1"), topic
        assert isinstance(error["timestamp"], int)


def test_only_a_freertos_shaped_next_get_is_answered_on_notify_next(clocked_srv: RunningServer,
                                                                   devices: Devices) -> None:
    """The one accommodation (device-protocol.md §1): the FreeRTOS OTA library never
    subscribes to `$next/get/accepted`, so a `$next/get` shaped exactly as its own,
    `{"clientToken":"<counter>:<thing name>"}` (source/ota_mqtt.c, requestJob_Mqtt), also
    gets its answer on notify-next. Any other request does not: the SDK's requests above,
    and a token that names another thing or carries another field."""
    device = devices("a")
    device.watch_v1()
    job = _job_id(device, "job")
    _create_job(clocked_srv, job, [device.thing])
    _queued(device, job)
    topic = f"$aws/things/{device.thing}/jobs/$next/get"
    device.raw_subscribe(f"{topic}/accepted")
    thing = device.thing
    for token in (f"7:{thing}-x", "7", f":{thing}", f"12:{thing}"):
        device.raw_publish(topic, json.dumps({"clientToken": token}, separators=(",", ":")).encode())
    device.raw_publish(topic, json.dumps({"clientToken": f"7:{thing}", "a": 1}).encode())
    device.inbox.wait_count(f"{topic}/accepted", 5, "every $next/get is answered on accepted")
    echoes = device.inbox.wait_count("next-changed", 3, "the two FreeRTOS-shaped requests echoed")
    assert [e.execution.job_id for e in echoes] == [job, job, job]
    # The device's next event is a real change, not another echo.
    device.v1_start_next()
    device.v1_update(job, "SUCCEEDED")
    _nothing_next(device)
    assert len(device.inbox.of("next-changed")) == 4
