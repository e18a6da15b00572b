"""Steering a job after it was created: UpdateJob, AssociateTargetsWithJob and
DeleteJobExecution (AWS IoT Jobs operator API, issue 15).

Each operation runs in one transaction and returns the things whose next job changed,
so the device service sends notify-next exactly to them (jobs/service.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from overair.core import presign, rollout
from overair.core.errors import PeerInputError
from overair.core.jobstates import ExecStatus, JobStatus
from overair.server.api.contract import ApiError, invalid, not_found
from overair.server.clock import Clock
from overair.server.health.gates import JOB_CONFIG_KEY as HEALTH_GATES
from overair.server.jobs.deliveries import PRESIGNED_OBJECTS
from overair.server.jobs.service import SKIPPED_THINGS, JobService
from overair.server.registry.service import Registry
from overair.server.storage.db import Database
from overair.server.storage.schema import Job, JobExecution

# UpdateJob's configuration members (iot model, UpdateJobRequest).
UPDATABLE_CONFIGS = ("presignedUrlConfig", "jobExecutionsRolloutConfig", "abortConfig", "timeoutConfig",
                     "jobExecutionsRetryConfig")
# AWS AssociateTargetsWithJob: "The total number of targets associated with a job must
# not exceed 100" (iot API reference).
MAX_JOB_TARGETS = 100
_OPEN = (JobStatus.IN_PROGRESS.value, JobStatus.SCHEDULED.value)


def _check_config(key: str, value: Any) -> None:
    checks: dict[str, Callable[[Any], object]] = {
        "presignedUrlConfig": presign.expiry_seconds,
        "jobExecutionsRolloutConfig": rollout.RolloutConfig.from_aws,
        "abortConfig": rollout.abort_criteria,
        "timeoutConfig": rollout.in_progress_timeout,
        "jobExecutionsRetryConfig": rollout.retry_limits,
    }
    try:
        checks[key](value)
    except PeerInputError as exc:
        raise invalid(exc.message) from exc


class JobSteering:
    def __init__(self, db: Database, jobs: JobService, registry: Registry, clock: Clock) -> None:
        self._db = db
        self._jobs = jobs
        self._registry = registry
        self._clock = clock

    def update_job(self, job_id: str, description: str | None, configs: dict[str, Any]) -> None:
        """UpdateJob. The new configuration applies from now on: a new rollout config
        restarts the rollout's rate from its base (the executions already released stay
        released); a new timeout applies to executions that start after it; new retry and
        abort criteria apply to the failures that come after it."""
        for key, value in configs.items():
            _check_config(key, value)
        with self._db.session() as s:
            job = s.get(Job, job_id, with_for_update=True)
            if job is None:
                raise not_found(f"job {job_id}")
            if job.status not in _OPEN:
                raise invalid(f"job {job_id} is {job.status}; only a job in progress or scheduled "
                              "can be updated")
            config = dict(job.config)
            presigned = configs.get("presignedUrlConfig")
            if presigned is not None and config.get(PRESIGNED_OBJECTS) and not presigned.get("roleArn"):
                raise invalid("the job document has pre-signed URL placeholders: presignedUrlConfig "
                              "with a roleArn is required")
            config.update(configs)
            job.config = config
            if "jobExecutionsRolloutConfig" in configs:
                job.rollout_state = None
            if description is not None:
                job.description = description
            job.last_updated_at = self._clock()

    def associate_targets(self, job_id: str, targets: list[str], comment: str | None) -> list[str]:
        """AssociateTargetsWithJob: AWS, "the job must have been created with the
        targetSelection field set to CONTINUOUS; the job status must currently be
        IN_PROGRESS; the total number of targets associated with a job must not exceed
        100". Things of the new targets without an execution of the job get one, released
        as the job's rollout and schedule allow."""
        things = self._registry.resolve_targets(targets)
        now = self._clock()
        with self._db.session() as s:
            job = s.get(Job, job_id, with_for_update=True)
            if job is None:
                raise not_found(f"job {job_id}")
            if job.target_selection != "CONTINUOUS":
                raise invalid(f"job {job_id} is a SNAPSHOT job; targets can be added to CONTINUOUS "
                              "jobs only")
            if job.status != JobStatus.IN_PROGRESS.value:
                raise invalid(f"job {job_id} is {job.status}, not IN_PROGRESS")
            merged = list(dict.fromkeys([*job.targets, *targets]))
            if len(merged) > MAX_JOB_TARGETS:
                raise ApiError("LimitExceededException",
                               f"a job has at most {MAX_JOB_TARGETS} targets; this would make "
                               f"{len(merged)}", 410)
            job.targets = merged
            if comment is not None:
                job.comment = comment
            job.last_updated_at = now
            have = set(s.scalars(select(JobExecution.thing_name).where(JobExecution.job_id == job_id)))
            skipped = set(job.config.get(SKIPPED_THINGS, []))
            new = [t for t in things if t not in have and t not in skipped]
            before = {t: self._jobs.next_id_in(s, t) for t in new}
            limited = rollout.RolloutConfig.from_aws(job.config.get("jobExecutionsRolloutConfig")).limited \
                or HEALTH_GATES in job.config
            releasing = rollout.schedule(job.config.get("schedulingConfig")).releasing(now)
            for thing in new:
                s.add(JobExecution(job_id=job_id, thing_name=thing, status=ExecStatus.QUEUED.value,
                                   status_details={}, queued_at=now, last_updated_at=now, version_number=1,
                                   execution_number=1,
                                   released_at=now if releasing and not limited else None))
            s.flush()
            changed = [t for t in new if self._jobs.next_id_in(s, t) != before[t]]
        self._jobs.executions_changed(new)
        return changed

    def delete_execution(self, job_id: str, thing: str, execution_number: int, force: bool) -> list[str]:
        """DeleteJobExecution: AWS, "you can only delete a job execution which is in a
        terminal state ... or an exception will occur"; `force` deletes one that is not
        (the device is not told; its next update finds no execution)."""
        with self._db.session() as s:
            row = s.scalar(select(JobExecution).where(
                JobExecution.job_id == job_id, JobExecution.thing_name == thing,
                JobExecution.execution_number == execution_number).with_for_update())
            if row is None:
                raise not_found(f"execution {execution_number} of job {job_id} on {thing}")
            if not ExecStatus(row.status).terminal and not force:
                raise ApiError("InvalidStateTransitionException",
                               f"the execution is {row.status}; only an ended execution can be deleted "
                               "without force", 409)
            before = self._jobs.next_id_in(s, thing)
            s.delete(row)
            s.flush()
            job = s.get(Job, job_id)
            if job is not None:
                self._jobs.maybe_complete(s, job)
            changed = [thing] if self._jobs.next_id_in(s, thing) != before else []
        self._jobs.executions_changed([thing])
        return changed
