"""The job scheduler: what happens to jobs with time rather than with device messages.

Every tick, for each running job, in one transaction: time out IN_PROGRESS executions
past their deadline (and queue retries), abort the job when an abort criterion fires,
release the next executions of a staged rollout (only while a maintenance window is
open, when the job has any), and complete the job when nothing is left. The decisions
are `core.rollout`'s; every input is read from the database and every result written
back, so a tick is idempotent and a server killed between ticks
(or in the middle of one: the transaction rolls back) carries on where it stopped.

`tick()` returns the things whose next job changed (to be sent notify-next) and those
whose pending list changed while their next job did not (to be sent `notify`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from overair.core import rollout
from overair.core.jobstates import ExecStatus, JobStatus
from overair.server.clock import Clock
from overair.server.jobs.live import ACTIVE, RELEASED
from overair.server.jobs.service import JobService
from overair.server.storage.db import Database
from overair.server.storage.schema import Job, JobExecution

log = logging.getLogger("overair.jobs")
TICK_SECONDS = 1.0
Remember = Callable[[list[str]], None]  # note things before changing their executions
# endBehavior -> the released executions it cancels (never-released ones always go).
END_CANCELS: dict[str, tuple[str, ...]] = {
    "STOP_ROLLOUT": (),
    "CANCEL": (ExecStatus.QUEUED.value,),
    "FORCE_CANCEL": (ExecStatus.QUEUED.value, ExecStatus.IN_PROGRESS.value),
}


@dataclass(frozen=True, slots=True)
class TickResult:
    next_changed: list[str]
    pending_changed: list[str]


class JobScheduler:
    def __init__(self, db: Database, jobs: JobService, clock: Clock,
                 on_aborted: Callable[[str, str], None] = lambda _job, _why: None) -> None:
        self._db = db
        self._jobs = jobs
        self._clock = clock
        self.on_aborted = on_aborted
        # How many executions of a job may be released in all (None: no bound); the health
        # gates' hook (server/health/monitor.py).
        self.release_cap: Callable[[Session, Job, float], int | None] = lambda _s, _job, _now: None

    def tick(self) -> TickResult:
        with self._db.reading() as s:
            job_ids = list(s.scalars(select(Job.job_id).where(
                Job.status.in_((JobStatus.IN_PROGRESS.value, JobStatus.SCHEDULED.value)))))
        next_changed: set[str] = set()
        touched: set[str] = set()
        for job_id in job_ids:
            try:
                changed, seen = self._tick_job(job_id, self._clock())
            except Exception:
                # One broken job must not stop the others; the next tick tries again.
                log.exception("scheduling job %s failed", job_id)
                continue
            next_changed.update(changed)
            touched.update(seen)
        self._jobs.executions_changed(sorted(touched))  # timed out, canceled, released: access changed (N4)
        return TickResult(sorted(next_changed), sorted(touched - next_changed))

    def _tick_job(self, job_id: str, now: float) -> tuple[list[str], list[str]]:
        with self._db.session() as s:
            job = s.get(Job, job_id, with_for_update=True)
            if job is None:
                return [], []
            plan = rollout.schedule(job.config.get("schedulingConfig"))
            phase = plan.phase(now)
            if job.status == JobStatus.SCHEDULED.value:
                if phase == "waiting":
                    return [], []
                job.status = JobStatus.IN_PROGRESS.value  # the start time has come
                job.last_updated_at = now
                log.info("job %s: scheduled start reached", job_id)
            if job.status != JobStatus.IN_PROGRESS.value:
                return [], []
            touched: dict[str, int | None] = {}  # thing -> its next execution id before

            def remember(things: list[str]) -> None:
                for thing in things:
                    if thing not in touched:
                        touched[thing] = self._jobs.next_id_in(s, thing)

            self._time_out(s, job, now, remember)
            if phase == "ended":
                self._end(s, job, plan, now, remember)
            elif not self._abort_if_needed(s, job, now, remember) and plan.releasing(now):
                # Outside its maintenance windows a job only pauses its releases: timeouts,
                # aborts and the executions already out carry on. The decision depends on
                # nothing but the configuration and `now`, so a restart cannot change it.
                self._release(s, job, now, remember)
            self._jobs.maybe_complete(s, job)
            s.flush()
            changed = [thing for thing, before in touched.items()
                       if self._jobs.next_id_in(s, thing) != before]
            return changed, list(touched)

    def _time_out(self, s: Session, job: Job, now: float, remember: Remember) -> None:
        rows = list(s.scalars(select(JobExecution).where(
            JobExecution.job_id == job.job_id, RELEASED,
            JobExecution.status == ExecStatus.IN_PROGRESS.value, JobExecution.timeout_at <= now)))
        if not rows:
            return
        remember([row.thing_name for row in rows])
        for row in rows:
            row.status = ExecStatus.TIMED_OUT.value
            row.last_updated_at = now
            row.version_number += 1
            row.timeout_at = None
            self._jobs.retry_if_allowed(s, job, row, now)
        log.info("job %s: %d execution(s) timed out", job.job_id, len(rows))

    def _abort_if_needed(self, s: Session, job: Job, now: float, remember: Remember) -> bool:
        criteria = rollout.abort_criteria(job.config.get("abortConfig"))
        if not criteria:
            return False
        counts = dict(s.execute(
            select(JobExecution.status, func.count()).where(JobExecution.job_id == job.job_id, RELEASED)
            .group_by(JobExecution.status)).tuples().all())
        fired = rollout.abort_triggered(criteria, counts)
        if fired is None:
            return False
        queued = list(s.scalars(select(JobExecution.thing_name).where(
            JobExecution.job_id == job.job_id, RELEASED, JobExecution.status == ExecStatus.QUEUED.value)))
        remember(queued)
        # As AWS's abort: the job is canceled; queued executions are canceled, the ones
        # in progress may finish.
        s.execute(update(JobExecution)
                        .where(JobExecution.job_id == job.job_id,
                               JobExecution.status == ExecStatus.QUEUED.value)
                        .values(status=ExecStatus.CANCELED.value, last_updated_at=now,
                                version_number=JobExecution.version_number + 1))
        job.status = JobStatus.CANCELED.value
        job.reason_code = f"ABORTED_{fired.failure_type}"
        job.comment = f"aborted: {fired.describe()}"
        job.last_updated_at = now
        log.warning("job %s aborted: %s", job.job_id, fired.describe())
        self.on_aborted(job.job_id, fired.describe())
        return True

    def _end(self, s: Session, job: Job, plan: rollout.Schedule, now: float, remember: Remember) -> None:
        """endTime reached: executions never released are dropped; CANCEL also cancels
        the queued ones, FORCE_CANCEL the ones in progress too."""
        statuses = END_CANCELS[plan.end_behavior]
        condition = JobExecution.released_at.is_(None) & JobExecution.status.in_(ACTIVE)
        if statuses:
            condition = condition | (RELEASED & JobExecution.status.in_(statuses))
            remember(list(s.scalars(select(JobExecution.thing_name).where(
                JobExecution.job_id == job.job_id, RELEASED, JobExecution.status.in_(statuses)))))
        s.execute(update(JobExecution).where(JobExecution.job_id == job.job_id, condition)
                  .values(status=ExecStatus.CANCELED.value, last_updated_at=now, timeout_at=None,
                          version_number=JobExecution.version_number + 1))
        if plan.end_behavior != "STOP_ROLLOUT":
            job.status = JobStatus.CANCELED.value
            job.force_canceled = plan.end_behavior == "FORCE_CANCEL"
            job.reason_code = "SCHEDULED_END"
            job.comment = f"endTime reached ({plan.end_behavior})"
            job.last_updated_at = now

    def _release(self, s: Session, job: Job, now: float, remember: Remember) -> None:
        config = rollout.RolloutConfig.from_aws(job.config.get("jobExecutionsRolloutConfig"))
        unreleased = select(JobExecution).where(JobExecution.job_id == job.job_id,
                                                JobExecution.released_at.is_(None),
                                                JobExecution.status.in_(ACTIVE))
        if s.scalar(unreleased.limit(1)) is None:
            return
        state = (rollout.RolloutState.from_json(job.rollout_state) if job.rollout_state
                 else rollout.initial_rollout(config, now))
        released = s.scalar(select(func.count()).select_from(JobExecution).where(
            JobExecution.job_id == job.job_id, RELEASED)) or 0
        succeeded = s.scalar(select(func.count()).select_from(JobExecution).where(
            JobExecution.job_id == job.job_id, JobExecution.status == ExecStatus.SUCCEEDED.value)) or 0
        state, allowed = rollout.rollout_step(config, state, released=int(released),
                                              succeeded=int(succeeded), now=now)
        # (Without a rollout config every execution is allowed at once: a scheduled job
        # releases its whole target list when its start time comes.)
        cap = self.release_cap(s, job, now)  # what is not released stays in the window's allowance
        rows = list(s.scalars(unreleased.order_by(JobExecution.id).limit(
            allowed if cap is None else max(0, min(allowed, cap - int(released))))))
        remember([row.thing_name for row in rows])
        for row in rows:
            row.released_at = now
            row.queued_at = now
        job.rollout_state = rollout.record_released(state, allowed, len(rows)).to_json()
        if rows:
            log.info("job %s: released %d execution(s)", job.job_id, len(rows))
