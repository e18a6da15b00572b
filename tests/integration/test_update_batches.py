"""A run of job status updates handled together (`DeviceService.handle_updates`, fed by
gateway/thing_workers.py batches) answers and records exactly what handling them one by
one does: plain progress reports are written in one transaction, and every other update
(a start from QUEUED, a self-test report asking for its state back, SUCCEEDED, a
malformed payload, another job, an update after the end) goes through `handle` in order.
Two identical worlds (the real server's device side on SQLite, tests/fuzz/device_world.py)
get the same messages, one batched and one not; replies (timestamps aside) and the stored
execution must match."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from overair.server.gateway.device_service import Outgoing
from overair.server.storage.schema import JobExecution
from tests.fuzz.device_world import JOB, OTHER_THING, THING, DeviceWorld, build
from tests.row_counting import transactions

UPDATE = f"$aws/things/{THING}/jobs/{JOB}/update"


def _update(status: str, details: dict[str, str] | None = None, **extra: Any) -> bytes:
    body: dict[str, Any] = {"status": status, **extra}
    if details is not None:
        body["statusDetails"] = details
    return json.dumps(body).encode()


MESSAGES: list[tuple[str, bytes]] = [
    (UPDATE, _update("IN_PROGRESS", {"receive": "0/256"})),  # QUEUED: started by the short path
    (UPDATE, _update("IN_PROGRESS", {"receive": "25/256"}, clientToken="p1")),
    (UPDATE, _update("IN_PROGRESS", {"receive": "50/256"}, clientToken="p2")),
    (UPDATE, b"{not json"),
    (f"$aws/things/{THING}/jobs/other-job/update", _update("IN_PROGRESS", {"receive": "1/2"})),
    (UPDATE, _update("IN_PROGRESS", {"self_test": "ready"}, includeJobExecutionState=True)),
    (UPDATE, _update("IN_PROGRESS", {"receive": "75/256"}, expectedVersion=1)),  # a stale version
    (UPDATE, _update("IN_PROGRESS", {"self_test": "active"})),
    (UPDATE, _update("SUCCEEDED", {"reason": "accepted"})),
    (UPDATE, _update("IN_PROGRESS", {"receive": "after the end"})),
]


def _normal(answers: list[list[Outgoing]]) -> list[list[tuple[str, Any, int]]]:
    def body(payload: bytes) -> Any:
        data = json.loads(payload)
        data.pop("timestamp", None)
        return data
    return [[(m.topic, body(m.payload), m.qos) for m in answer] for answer in answers]


def _execution(world: DeviceWorld) -> tuple[Any, ...]:
    with world.server.db.reading() as s:
        row = s.scalars(select(JobExecution).where(JobExecution.thing_name == THING)).one()
        return row.status, row.status_details, row.version_number, row.execution_number


@pytest.fixture
def worlds(tmp_path: Path) -> Any:
    built = [build(tmp_path / "one-by-one"), build(tmp_path / "batched")]
    yield built
    for world in built:
        world.server.devices.close()
        world.server.db.close()


def test_a_batch_of_updates_answers_and_records_what_one_by_one_does(worlds: list[DeviceWorld]) -> None:
    one_by_one, batched = worlds
    expected = [one_by_one.server.devices.handle(topic, payload) for topic, payload in MESSAGES]
    got = batched.server.devices.handle_updates(MESSAGES)
    assert _normal(got) == _normal(expected)
    assert _execution(batched) == _execution(one_by_one)
    assert _execution(batched)[:1] == ("SUCCEEDED",)
    # The plain progress reports were accepted in the batch, with their tokens.
    assert [json.loads(m.payload).get("clientToken") for m in got[1] + got[2]] == ["p1", "p2"]


def test_progress_reports_of_several_things_in_one_batch(worlds: list[DeviceWorld]) -> None:
    """Reports of a thing without an execution are rejected as handle rejects them, and do
    not disturb the other thing's reports in the same transaction."""
    one_by_one, batched = worlds
    other = f"$aws/things/{OTHER_THING}/jobs/{JOB}/update"
    messages = [MESSAGES[0], (other, _update("IN_PROGRESS", {"receive": "1"})), MESSAGES[1],
                (other, _update("IN_PROGRESS", {"receive": "2"})), MESSAGES[2]]
    expected = [one_by_one.server.devices.handle(topic, payload) for topic, payload in messages]
    got = batched.server.devices.handle_updates(messages)
    assert _normal(got) == _normal(expected)
    assert [topic.rsplit("/", 1)[1] for answer in got for topic in [answer[0].topic]] == \
        ["accepted", "rejected", "accepted", "rejected", "accepted"]
    assert _execution(batched) == _execution(one_by_one)


def test_consecutive_progress_reports_are_written_in_one_transaction(worlds: list[DeviceWorld]) -> None:
    _, batched = worlds
    devices = batched.server.devices
    devices.handle(*MESSAGES[0])  # started: IN_PROGRESS
    reports = [(UPDATE, _update("IN_PROGRESS", {"receive": f"{25 * n}/256"})) for n in range(1, 9)]
    with transactions(batched.server.db) as opened:
        answers = devices.handle_updates(reports)
    assert [answer[0].topic for answer in answers] == [f"{UPDATE}/accepted"] * 8
    assert opened == [1]
    assert _execution(batched)[1:3] == ({"receive": "200/256"}, 10)


def test_interleaved_things_keep_each_things_order_and_share_the_progress_writes(
        worlds: list[DeviceWorld]) -> None:
    """A run mixing two things' starts, progress reports, self-test reports and ends: each
    thing's reports before its next other message are written in one statement with the
    other thing's (phases), and replies and executions are what one by one gives."""
    for world in worlds:
        world.server.jobs.create_job("second-job", [world.server.registry.thing_arn(OTHER_THING)],
                                     {"operation": "x"})
    one_by_one, batched = worlds
    other = f"$aws/things/{OTHER_THING}/jobs/second-job/update"
    messages = [
        (UPDATE, _update("IN_PROGRESS", {"receive": "1/256"})),  # starts its execution
        (other, _update("IN_PROGRESS", {"receive": "1/9"})),
        (UPDATE, _update("IN_PROGRESS", {"receive": "25/256"})),
        (other, _update("IN_PROGRESS", {"receive": "2/9"})),
        (UPDATE, _update("IN_PROGRESS", {"self_test": "ready"}, includeJobExecutionState=True)),
        (other, _update("IN_PROGRESS", {"receive": "3/9"})),
        (UPDATE, _update("IN_PROGRESS", {"receive": "50/256"})),
        (other, _update("SUCCEEDED", {"reason": "ok"})),
        (UPDATE, _update("IN_PROGRESS", {"receive": "75/256"})),
        (UPDATE, _update("IN_PROGRESS", {"receive": "stale"}, expectedVersion=1)),  # VersionMismatch
        (other, _update("FAILED", {"reason": "after the end"})),  # InvalidStateTransition
        (other, _update("IN_PROGRESS", {"receive": "after the end"})),
    ]
    for topic, payload in messages[:2]:  # both started, one by one in both worlds
        for world in worlds:
            world.server.devices.handle(topic, payload)
    expected = [one_by_one.server.devices.handle(topic, payload) for topic, payload in messages[2:]]
    with transactions(batched.server.db) as opened:
        got = batched.server.devices.handle_updates(messages[2:])
    assert _normal(got) == _normal(expected)
    assert [answer[0].topic.rsplit("/", 1)[1] for answer in got] == ["accepted"] * 7 + ["rejected"] * 3

    def executions(world: DeviceWorld) -> list[tuple[Any, ...]]:
        with world.server.db.reading() as s:
            return [(row.thing_name, row.status, row.status_details, row.version_number)
                    for row in s.scalars(select(JobExecution).order_by(JobExecution.thing_name))]
    assert executions(batched) == executions(one_by_one)
    # Phase 0: THING's first report and OTHER_THING's two (one write), then THING's
    # self-test report asking for its state and OTHER_THING's SUCCEEDED (one write for
    # both, and one audit append). Phase 1: THING's next two reports (one write), then its
    # stale update and OTHER_THING's FAILED after the end (one transaction, both refused;
    # each refusal audited). Phase 2: the report after the end (one write, which does not
    # apply), then its full update, refused (its audit entry is a repeat of the thing's
    # refusal, counted for later by server/audit/device_events.py). Handled one message at
    # a time the run would open a transaction for nearly every message.
    assert opened == [9]


def test_things_ending_together_are_told_their_next_job_from_one_read(worlds: list[DeviceWorld]) -> None:
    """SUCCEEDED of several things in one run (a rollout's devices ending together): each
    gets its accepted reply, notify-next and notify as one by one, and what they are told
    is read once for all of them (two reads per thing made a rollout's tail longer)."""
    for world in worlds:
        world.server.jobs.create_job("second-job", [world.server.registry.thing_arn(OTHER_THING)],
                                     {"operation": "x"})
        world.server.jobs.create_job("later-job", [world.server.registry.thing_arn(OTHER_THING)],
                                     {"operation": "y"})
    one_by_one, batched = worlds
    other = f"$aws/things/{OTHER_THING}/jobs/second-job/update"
    for topic, payload in [MESSAGES[0], (other, _update("IN_PROGRESS", {"receive": "1/9"}))]:
        for world in worlds:
            world.server.devices.handle(topic, payload)
    messages = [(UPDATE, _update("SUCCEEDED", {"reason": "accepted"})),
                (other, _update("SUCCEEDED", {"reason": "ok"}))]
    expected = [one_by_one.server.devices.handle(topic, payload) for topic, payload in messages]
    db = batched.server.db
    reading = db.reading
    reads = [0]

    def counted() -> Any:
        reads[0] += 1
        return reading()

    db.reading = counted  # type: ignore[method-assign]
    try:
        got = batched.server.devices.handle_updates(messages)
    finally:
        db.reading = reading  # type: ignore[method-assign]
    assert _normal(got) == _normal(expected)
    assert [[m.topic.rsplit("/", 1)[1] for m in answer] for answer in got] == \
        [["accepted", "notify-next", "notify"]] * 2
    # OTHER_THING is told its next job: later-job.
    assert json.loads(got[1][1].payload)["execution"]["jobId"] == "later-job"
    assert reads == [1]
