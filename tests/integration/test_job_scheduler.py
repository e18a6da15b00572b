"""The job scheduler and the job service together, on SQLite and PostgreSQL, against a
controlled clock: staged release, timeouts, retries, abort, continuous jobs, and a
"restart" (a new service over the same database) in the middle of all of it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from overair.core.jobs_wire import UpdateRequest
from overair.core.jobstates import ExecStatus
from overair.server import pki
from overair.server.api.contract import ApiError
from overair.server.jobs.scheduler import JobScheduler
from overair.server.jobs.service import JobService
from overair.server.jobs.steering import JobSteering
from overair.server.packages.inventory import Installed, Inventory
from overair.server.registry.service import Registry
from overair.server.settings import Settings
from overair.server.storage.db import Database, migrate
from overair.server.storage.schema import JobExecution

CA = pki.make_root_ca("scheduler test CA", dt.datetime.now(dt.UTC))


@dataclass
class Clock:
    now: float = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class World:
    db: Database
    settings: Settings
    clock: Clock
    registry: Registry = field(init=False)
    jobs: JobService = field(init=False)
    scheduler: JobScheduler = field(init=False)

    def __post_init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        """New service objects over the same database, as after a server restart."""
        self.registry = Registry(self.db, self.settings, CA, self.clock)
        self.jobs = JobService(self.db, self.settings, self.registry, self.clock)
        self.scheduler = JobScheduler(self.db, self.jobs, self.clock)
        self.registry.on_group_join = self.jobs.add_thing_to_continuous_jobs  # type: ignore[assignment]

    def things(self, n: int, group: str = "fleet") -> list[str]:
        names = [f"dev-{i:03d}" for i in range(n)]
        self.registry.create_group(group)
        for name in names:
            self.registry.create_thing(name)
            self.registry.add_to_group(group, name)
        return names

    def create(self, job_id: str = "job-1", group: str = "fleet", **config: Any) -> list[str]:
        _, notify = self.jobs.create_job(
            job_id,
            [self.registry.group_arn(group)],
            {"operation": "x"},
            config=config,
            target_selection=config.pop("selection", "SNAPSHOT"),
        )
        return notify

    def visible(self, job_id: str = "job-1") -> dict[str, str]:
        """What the operator sees (ListJobExecutionsForJob): every target, released or not."""
        return {row.thing_name: row.status for row in self.jobs.executions_for_job(job_id)}

    def released(self, job_id: str = "job-1") -> dict[str, str]:
        """The executions the rollout has released to their devices."""
        with self.db.reading() as s:
            rows = s.scalars(select(JobExecution).where(JobExecution.job_id == job_id,
                                                        JobExecution.released_at.is_not(None)))
            return {row.thing_name: row.status for row in rows}

    def update(
        self,
        thing: str,
        status: ExecStatus,
        job_id: str = "job-1",
        step_minutes: int | None = None,
        expected: int | None = None,
    ) -> Any:
        return self.jobs.update_execution(
            thing,
            job_id,
            UpdateRequest(
                status=status,
                status_details={"s": status.value},
                expected_version=expected,
                execution_number=None,
                include_job_execution_state=False,
                include_job_document=False,
                step_timeout_minutes=step_minutes,
                client_token="",
            ),
        )


@pytest.fixture
def world(database_url: str, tmp_path: Path) -> Iterator[World]:
    db = Database(database_url)
    migrate(db.engine)
    yield World(
        db, Settings(data_dir=tmp_path, account_id="123456789012", database_url=database_url), Clock()
    )
    db.close()


def test_staged_rollout_releases_at_most_the_rate_per_minute_and_survives_a_restart(world: World) -> None:
    things = world.things(12)
    assert world.create(jobExecutionsRolloutConfig={"maximumPerMinute": 5}) == []  # nobody notified yet
    assert world.released() == {}
    assert world.jobs.next_execution(things[0]) is None  # unreleased: the device sees nothing
    # ...but the operator sees every target QUEUED from the start (AWS's jobProcessDetails).
    assert world.visible() == dict.fromkeys(things, "QUEUED")
    assert world.jobs.describe_job("job-1")[1] == {"QUEUED": 12}
    first = world.scheduler.tick().next_changed
    assert len(first) == 5
    assert len(world.released()) == 5
    world.clock.advance(30)
    assert world.scheduler.tick().next_changed == []  # same minute: nothing more
    world.restart()
    world.clock.advance(31)
    assert len(world.scheduler.tick().next_changed) == 5  # next minute, after the "restart"
    world.clock.advance(60)
    world.scheduler.tick()
    assert len(world.released()) == 12
    assert world.jobs.describe_job("job-1")[1]["QUEUED"] == 12


def test_in_progress_timeout_times_out_silent_devices_and_retries_them(world: World) -> None:
    a, b = world.things(2)
    world.create(
        timeoutConfig={"inProgressTimeoutInMinutes": 2},
        jobExecutionsRetryConfig={"criteriaList": [{"failureType": "TIMED_OUT", "numberOfRetries": 1}]},
    )
    world.update(a, ExecStatus.IN_PROGRESS)
    # A longer step timer does not extend the in-progress timer: AWS, "setting or resetting
    # the step timeout has no effect on the in progress timeout" (UpdateJobExecution).
    world.update(b, ExecStatus.IN_PROGRESS, step_minutes=10)
    world.clock.advance(119)
    assert world.scheduler.tick().next_changed == []
    world.clock.advance(2)
    assert world.scheduler.tick().next_changed == [a, b]  # their next job changed: their retries
    retry = world.jobs.next_execution(a)
    assert retry is not None
    assert (retry.status, retry.execution_number) == (ExecStatus.QUEUED, 2)
    world.update(a, ExecStatus.IN_PROGRESS)
    world.clock.advance(121)
    world.scheduler.tick()
    assert world.jobs.describe_execution("job-1", a).status == "TIMED_OUT"
    assert world.jobs.next_execution(a) is None  # no retries left
    assert sorted((r.execution_number, r.status) for r in world.jobs.executions_for_thing(b)) == [
        (1, "TIMED_OUT"),
        (2, "QUEUED"),
    ]
    assert world.jobs.describe_job("job-1")[0].status == "IN_PROGRESS"


def test_step_timers_start_restart_and_cancel_alongside_the_in_progress_timer(world: World) -> None:
    """Issue 13, item 5. AWS (iot-jobs-data model): StartNextPendingJobExecution and
    UpdateJobExecution(IN_PROGRESS) with stepTimeoutInMinutes start the step timer, a new
    value restarts it, -1 cancels it; the job's in-progress timer runs regardless, and
    whichever expires first times the execution out."""
    started, restarted, canceled, long_step, untimed = world.things(5)
    world.create(timeoutConfig={"inProgressTimeoutInMinutes": 10})
    for thing in (started, restarted, canceled):
        view = world.jobs.start_next(thing, None, step_timeout_minutes=1)
        assert view is not None
        assert view.status is ExecStatus.IN_PROGRESS
    world.update(long_step, ExecStatus.IN_PROGRESS, step_minutes=30)
    world.update(untimed, ExecStatus.IN_PROGRESS)
    world.clock.advance(50)
    world.update(restarted, ExecStatus.IN_PROGRESS, step_minutes=2)
    world.update(canceled, ExecStatus.IN_PROGRESS, step_minutes=-1)
    world.update(started, ExecStatus.IN_PROGRESS)  # a progress report: the step timer runs on
    world.clock.advance(11)
    world.scheduler.tick()
    assert world.visible() == {started: "TIMED_OUT", restarted: "IN_PROGRESS", canceled: "IN_PROGRESS",
                               long_step: "IN_PROGRESS", untimed: "IN_PROGRESS"}
    world.clock.advance(110)  # 171 s: the restarted step timer (50 s + 2 min) has expired
    world.scheduler.tick()
    assert world.visible()[restarted] == "TIMED_OUT"
    world.clock.advance(600 - 171 - 1)
    world.scheduler.tick()
    assert {t: s for t, s in world.visible().items() if s == "IN_PROGRESS"} == {
        canceled: "IN_PROGRESS", long_step: "IN_PROGRESS", untimed: "IN_PROGRESS"}
    world.clock.advance(2)  # the in-progress timer ends the rest, the 30-minute step timer too
    world.scheduler.tick()
    assert set(world.visible().values()) == {"TIMED_OUT"}


def test_start_next_without_a_step_timeout_leaves_only_the_in_progress_timer(world: World) -> None:
    (thing,) = world.things(1)
    world.create()
    assert world.jobs.start_next(thing, {"step": "1"}) is not None
    world.clock.advance(7 * 24 * 3600)
    world.scheduler.tick()
    assert world.visible() == {thing: "IN_PROGRESS"}


def test_timed_out_execution_refuses_a_late_device_update(world: World) -> None:
    (a,) = world.things(1)
    world.create(timeoutConfig={"inProgressTimeoutInMinutes": 1})
    world.update(a, ExecStatus.IN_PROGRESS)
    world.clock.advance(61)
    world.scheduler.tick()
    with pytest.raises(Exception, match="already TIMED_OUT"):
        world.update(a, ExecStatus.SUCCEEDED)


def test_abort_cancels_the_job_once_the_failure_threshold_is_reached(world: World) -> None:
    things = world.things(10)
    world.create(
        abortConfig={
            "criteriaList": [
                {
                    "failureType": "FAILED",
                    "action": "CANCEL",
                    "thresholdPercentage": 50,
                    "minNumberOfExecutedThings": 4,
                }
            ]
        }
    )
    world.update(things[0], ExecStatus.FAILED)
    world.update(things[1], ExecStatus.FAILED)
    world.update(things[2], ExecStatus.SUCCEEDED)
    world.update(things[3], ExecStatus.IN_PROGRESS)
    assert world.scheduler.tick().next_changed == []  # 3 executed: below the minimum
    world.update(things[4], ExecStatus.FAILED)  # 4 executed, 3 failed: 75 %
    notified = world.scheduler.tick().next_changed
    job, counts = world.jobs.describe_job("job-1")
    assert job.status == "CANCELED"
    assert job.reason_code == "ABORTED_FAILED"
    assert set(notified) == set(things[5:])  # their queued execution went away
    assert counts["CANCELED"] == 5
    assert world.jobs.describe_execution("job-1", things[3]).status == "IN_PROGRESS"  # may finish


def test_continuous_job_reaches_a_thing_added_to_the_group_later(world: World) -> None:
    world.things(2)
    world.create(selection="CONTINUOUS")
    world.registry.create_thing("late-comer")
    world.registry.add_to_group("fleet", "late-comer")
    execution = world.jobs.next_execution("late-comer")
    assert execution is not None
    assert execution.job_id == "job-1"
    world.registry.add_to_group("fleet", "late-comer")  # already a member: no second execution
    assert len([r for r in world.jobs.executions_for_thing("late-comer")]) == 1


def test_snapshot_job_does_not_reach_a_thing_added_later(world: World) -> None:
    world.things(2)
    world.create()
    world.registry.create_thing("late-comer")
    world.registry.add_to_group("fleet", "late-comer")
    assert world.jobs.next_execution("late-comer") is None


def test_invalid_job_configuration_is_refused_before_anything_is_created(world: World) -> None:
    world.things(1)
    with pytest.raises(ApiError) as caught:
        world.create(jobExecutionsRolloutConfig={"maximumPerMinute": 0})
    assert caught.value.code == "InvalidRequestException"
    assert world.jobs.list_jobs() == []


def test_retry_after_a_failure_and_a_replayed_update_changes_nothing(world: World) -> None:
    (a,) = world.things(1)
    world.create(jobExecutionsRetryConfig={"criteriaList": [{"failureType": "FAILED", "numberOfRetries": 1}]})
    first = world.update(a, ExecStatus.FAILED, expected=1)
    assert first.next_changed  # the retry is its next job
    with pytest.raises(Exception, match="expected version 1"):
        world.update(a, ExecStatus.FAILED, expected=1)  # N3: the same update replayed
    rows = world.jobs.executions_for_thing(a)
    assert sorted((r.execution_number, r.status) for r in rows) == [(1, "FAILED"), (2, "QUEUED")]


def test_cancel_job_execution_follows_the_aws_rules(world: World) -> None:
    a, b = world.things(2)
    world.create()
    assert world.jobs.cancel_execution("job-1", a, force=False) == [a]  # its next job went away
    assert world.jobs.describe_execution("job-1", a).status == "CANCELED"
    world.update(b, ExecStatus.IN_PROGRESS)
    with pytest.raises(ApiError) as refused:
        world.jobs.cancel_execution("job-1", b, force=False)
    assert refused.value.code == "InvalidStateTransitionException"
    with pytest.raises(ApiError) as stale:
        world.jobs.cancel_execution("job-1", b, force=True, expected_version=1)
    assert stale.value.code == "VersionConflictException"
    world.jobs.cancel_execution("job-1", b, force=True)
    with pytest.raises(ApiError):
        world.jobs.cancel_execution("job-1", b, force=True)  # terminal states are final
    assert world.jobs.describe_job("job-1")[0].status == "COMPLETED"


def _at(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M")


def test_scheduled_job_waits_for_its_start_time_then_releases_everything(world: World) -> None:
    things = world.things(3)
    start = (world.clock.now // 60 + 10) * 60  # a whole minute, 9-10 minutes ahead
    assert world.create(schedulingConfig={"startTime": _at(start)}) == []
    assert world.jobs.describe_job("job-1")[0].status == "SCHEDULED"
    assert world.scheduler.tick().next_changed == []
    assert world.jobs.next_execution(things[0]) is None
    world.clock.now = start
    assert sorted(world.scheduler.tick().next_changed) == things
    assert world.jobs.describe_job("job-1")[0].status == "IN_PROGRESS"
    assert set(world.visible().values()) == {"QUEUED"}


def test_scheduled_continuous_job_covers_things_that_joined_its_group_before_the_start(world: World) -> None:
    things = world.things(2)
    start = (world.clock.now // 60 + 10) * 60
    world.create(selection="CONTINUOUS", schedulingConfig={"startTime": _at(start)})
    world.registry.create_thing("early-joiner")
    world.registry.add_to_group("fleet", "early-joiner")  # joins while the job is SCHEDULED
    assert world.jobs.next_execution("early-joiner") is None  # nothing released before the start
    assert world.visible()["early-joiner"] == "QUEUED"  # but counted from the start
    assert world.released() == {}
    world.clock.now = start
    assert sorted(world.scheduler.tick().next_changed) == sorted([*things, "early-joiner"])
    execution = world.jobs.next_execution("early-joiner")
    assert execution is not None
    assert execution.job_id == "job-1"
    world.registry.create_thing("late-joiner")  # and after the start, as before
    world.registry.add_to_group("fleet", "late-joiner")
    assert world.jobs.next_execution("late-joiner") is not None


@pytest.mark.parametrize(
    ("behavior", "queued_after", "running_after", "job_status"),
    [
        ("STOP_ROLLOUT", "QUEUED", "IN_PROGRESS", "IN_PROGRESS"),
        ("CANCEL", "CANCELED", "IN_PROGRESS", "CANCELED"),
        ("FORCE_CANCEL", "CANCELED", "CANCELED", "CANCELED"),
    ],
)
def test_end_time_stops_the_rollout_or_cancels_the_job(
    world: World, behavior: str, queued_after: str, running_after: str, job_status: str
) -> None:
    things = world.things(6)
    end = (world.clock.now // 60 + 2) * 60
    world.create(
        jobExecutionsRolloutConfig={"maximumPerMinute": 2},
        schedulingConfig={"endTime": _at(end), "endBehavior": behavior},
    )
    world.scheduler.tick()
    running, queued = sorted(world.released())
    world.update(running, ExecStatus.IN_PROGRESS)
    world.clock.now = end
    world.scheduler.tick()
    statuses = world.released()
    assert (statuses[running], statuses[queued]) == (running_after, queued_after)
    assert len(statuses) == 2  # the 4 never released are never released now
    # The operator sees them CANCELED, and counts them.
    never = {t: s for t, s in world.visible().items() if t not in statuses}
    assert len(never) == 4
    assert set(never.values()) == {"CANCELED"}
    counts = world.jobs.describe_job("job-1")[1]
    assert counts.get("CANCELED", 0) == 4 + list(statuses.values()).count("CANCELED")
    assert world.jobs.describe_job("job-1")[0].status == job_status
    assert len(things) == 6


def test_invalid_schedules_are_refused(world: World) -> None:
    world.things(1)
    for config in (
        {"startTime": "tomorrow"},
        {"startTime": "2030-01-01T10:00", "endTime": "2030-01-01T09:00"},
        {"endBehavior": "EXPLODE", "endTime": "2030-01-01T09:00"},
        {"maintenanceWindows": [{"startTime": "cron(0 0 * * * *)", "durationInMinutes": 30}]},
        {"maintenanceWindows": [{"startTime": "cron(0 0 * * ? *)", "durationInMinutes": 1431}]},
        {"maintenanceWindows": [{"startTime": "cron(0 0 1 JAN ? 1970)", "durationInMinutes": 30}]},  # past
    ):
        with pytest.raises(ApiError):
            world.create(schedulingConfig=config)


def test_tick_reports_things_whose_pending_list_changed_but_not_their_next_job(world: World) -> None:
    (a,) = world.things(1)
    world.create("job-1")
    world.create("job-2", jobExecutionsRolloutConfig={"maximumPerMinute": 5})
    result = world.scheduler.tick()
    assert result.next_changed == []  # job-1 stays next
    assert result.pending_changed == [a]  # but job-2 joined its pending list: `notify`


def _epoch(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


def test_maintenance_windows_pause_the_rollout_outside_them_across_restarts(world: World) -> None:
    things = world.things(12)
    world.clock.now = _epoch("2026-03-10T01:58")
    assert world.create(
        jobExecutionsRolloutConfig={"maximumPerMinute": 5},
        timeoutConfig={"inProgressTimeoutInMinutes": 3},
        schedulingConfig={"maintenanceWindows": [{"startTime": "cron(0 2 * * ? *)", "durationInMinutes": 2}]},
    ) == []
    job = world.jobs.describe_job("job-1")[0]
    assert job.status == "IN_PROGRESS"
    assert world.jobs.scheduled_rollouts(job)[:2] == [
        _epoch("2026-03-10T02:00"), _epoch("2026-03-11T02:00")]
    assert world.scheduler.tick().next_changed == []  # 01:58: outside the window
    world.clock.now = _epoch("2026-03-10T01:59:59")
    assert world.scheduler.tick().next_changed == []
    assert world.released() == {}
    world.clock.now = _epoch("2026-03-10T02:00")
    first = world.scheduler.tick().next_changed
    assert len(first) == 5
    world.update(first[0], ExecStatus.IN_PROGRESS)
    world.update(first[1], ExecStatus.IN_PROGRESS)
    world.restart()  # the window decision is recomputed from the config: nothing is lost
    world.clock.now = _epoch("2026-03-10T02:01")
    assert len(world.scheduler.tick().next_changed) == 5
    world.clock.now = _epoch("2026-03-10T02:02")  # closed: no more releases...
    assert world.scheduler.tick().next_changed == []
    assert len(world.released()) == 10
    world.update(first[0], ExecStatus.SUCCEEDED)  # ...but released executions carry on
    world.clock.now = _epoch("2026-03-10T02:03:01")
    world.scheduler.tick()  # and so do timeouts
    assert world.jobs.describe_execution("job-1", first[1]).status == "TIMED_OUT"
    world.restart()
    world.clock.now = _epoch("2026-03-11T01:59")
    assert world.scheduler.tick().next_changed == []
    world.clock.now = _epoch("2026-03-11T02:00:30")  # the next window: the rest goes out
    assert len(world.scheduler.tick().next_changed) == 2
    assert len(world.released()) == len(things)


def test_job_created_inside_a_window_releases_at_once_and_a_late_group_member_waits(world: World) -> None:
    things = world.things(3)
    world.clock.now = _epoch("2026-03-14T02:10")  # a Saturday, inside 02:00-02:30
    windows = [{"startTime": "cron(0 2 ? * SAT *)", "durationInMinutes": 30}]
    notified = world.create(selection="CONTINUOUS", schedulingConfig={"maintenanceWindows": windows})
    assert sorted(notified) == things
    world.clock.now = _epoch("2026-03-14T03:00")
    world.registry.create_thing("late-comer")
    world.registry.add_to_group("fleet", "late-comer")
    assert world.jobs.next_execution("late-comer") is None  # outside the window: not yet
    assert world.scheduler.tick().next_changed == []
    world.clock.now = _epoch("2026-03-21T02:00")
    assert world.scheduler.tick().next_changed == ["late-comer"]


def test_maintenance_windows_never_opening_before_the_end_time_are_refused(world: World) -> None:
    world.things(1)
    world.clock.now = _epoch("2026-03-10T12:00")
    with pytest.raises(ApiError) as caught:
        world.create(schedulingConfig={
            "endTime": "2026-03-12T00:00",
            "maintenanceWindows": [{"startTime": "cron(0 2 ? * SUN *)", "durationInMinutes": 30}]})
    assert caught.value.code == "InvalidRequestException"
    assert "before endTime" in caught.value.message
    assert world.jobs.list_jobs() == []


def test_counts_take_each_thing_once_by_its_latest_execution(world: World) -> None:
    """A retried thing counts as its retry (QUEUED), not also as the attempt that failed."""
    a, b = world.things(2)
    world.create(jobExecutionsRetryConfig={"criteriaList": [{"failureType": "FAILED", "numberOfRetries": 1}]})
    world.update(a, ExecStatus.IN_PROGRESS)
    world.update(a, ExecStatus.FAILED)
    assert world.jobs.describe_job("job-1")[1] == {"QUEUED": 2}
    assert sorted(world.visible(), key=str) == [a, b]
    assert len(world.jobs.executions_for_job("job-1")) == 3  # the listing keeps both of a's attempts


def test_steering_on_both_databases(world: World) -> None:
    """UpdateJob, AssociateTargetsWithJob and DeleteJobExecution (jobs/steering.py)."""
    steering = JobSteering(world.db, world.jobs, world.registry, world.clock)
    first = world.things(2)
    world.registry.create_group("later")
    world.registry.create_thing("late-1")
    world.registry.add_to_group("later", "late-1")
    world.create(selection="CONTINUOUS", jobExecutionsRolloutConfig={"maximumPerMinute": 1})
    assert world.scheduler.tick().next_changed == [first[0]]
    steering.update_job("job-1", "faster", {"jobExecutionsRolloutConfig": {"maximumPerMinute": 10}})
    assert steering.associate_targets("job-1", [world.registry.group_arn("later")], "more") == []
    assert world.visible() == dict.fromkeys([*first, "late-1"], "QUEUED")
    assert sorted(world.scheduler.tick().next_changed) == [first[1], "late-1"]  # the new rate, at once
    assert steering.delete_execution("job-1", "late-1", 1, force=True) == ["late-1"]
    with pytest.raises(ApiError) as caught:
        steering.delete_execution("job-1", first[0], 1, force=False)
    assert caught.value.code == "InvalidStateTransitionException"
    assert world.jobs.describe_job("job-1")[0].description == "faster"


def test_a_succeeded_ota_execution_records_what_the_thing_runs(world: World) -> None:
    """packages/inventory.py on both databases: written with the execution's status;
    a FAILED one records nothing, a repeated SUCCEEDED of the same version keeps `since`."""
    a, b = world.things(2)
    seen: list[Installed] = []
    world.jobs.on_installed = seen.append
    world.create("ota-1", image_version="1.1.0")
    world.update(a, ExecStatus.SUCCEEDED, "ota-1")
    world.update(b, ExecStatus.FAILED, "ota-1")
    recorded = [(i.thing, i.package, i.version, i.since) for i in seen]
    assert recorded == [(a, "firmware", "1.1.0", world.clock.now)]
    since = world.clock.now
    world.clock.advance(100)
    world.create("ota-2", image_version="1.1.0")
    world.update(a, ExecStatus.SUCCEEDED, "ota-2")
    assert len(seen) == 1
    assert [(i.version, i.since) for i in Inventory(world.db).running(a)] == [("1.1.0", since)]
    assert world.jobs.running_versions([a, b]) == {a: "1.1.0"}
