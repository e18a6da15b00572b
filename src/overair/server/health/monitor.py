"""The health gates at work: read what `gates.decide` needs, and act on its decision.

Two entry points. `release_cap` is the job scheduler's hook (jobs/scheduler.py): inside
the scheduler's transaction it says how many executions of a gated job may be released
so far, so that a staged release never runs ahead of the gates. `tick` (once a second,
from the server's event loop) acts on crossed gates: it persists the decision with the
figures that triggered it in the job's config (DescribeRolloutHealth shows them, a
restarted server keeps them), pauses or cancels the job (the reason in DescribeJob's
`reasonCode`/`comment`), and writes one audit entry per decision.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from overair.core.errors import PeerInputError, UnavailableError
from overair.core.health import SHADOW_NAME, HealthReport, parse_report
from overair.core.jobstates import ExecStatus, JobStatus
from overair.core.limits import Limits
from overair.server.api.contract import invalid, not_found
from overair.server.audit.log import AuditLog
from overair.server.clock import Clock
from overair.server.health import gates
from overair.server.health.gates import Decision, HealthGates, RolloutHealthState
from overair.server.jobs.service import JobService
from overair.server.storage.db import Database
from overair.server.storage.schema import Job, JobExecution, ThingShadow

log = logging.getLogger("overair.health")
PRINCIPAL = "service/overair-health"
HELD = {"PAUSED": "paused", "AWAITING_APPROVAL": "awaiting approval (ResumeRollout)"}


def gates_of(job: Job) -> HealthGates | None:
    return HealthGates.from_config((job.config or {}).get(gates.JOB_CONFIG_KEY))


def state_of(job: Job) -> RolloutHealthState:
    return RolloutHealthState.from_json((job.config or {}).get(gates.STATE_KEY))


def _reports(s: Session, things: list[str], limits: Limits) -> dict[str, HealthReport]:
    out: dict[str, HealthReport] = {}
    for start in range(0, len(things), 500):
        rows = s.execute(select(ThingShadow.thing_name, ThingShadow.reported).where(
            ThingShadow.thing_name.in_(things[start:start + 500]), ThingShadow.shadow_name == SHADOW_NAME,
            ThingShadow.present.is_(True))).tuples().all()
        for thing, reported in rows:
            try:
                out[thing] = parse_report(reported, limits)
            except PeerInputError:
                continue  # refused at the shadow service already; never judged
    return out


def evaluate(s: Session, job: Job, health: HealthGates, limits: Limits, now: float) -> Decision:
    rows = s.execute(select(JobExecution.thing_name, JobExecution.released_at, JobExecution.status)
                     .where(JobExecution.job_id == job.job_id).order_by(JobExecution.id)).tuples().all()
    executions = [gates.Execution(thing, released, ExecStatus(status).terminal)
                  for thing, released, status in rows]
    reports = _reports(s, [e.thing for e in executions], limits)
    return gates.decide(health, job.job_id, executions, reports, state_of(job), now)


def _store_state(job: Job, state: RolloutHealthState) -> None:
    job.config = {**job.config, gates.STATE_KEY: state.to_json()}


class HealthMonitor:
    def __init__(self, db: Database, jobs: JobService, audit: AuditLog, limits: Limits, clock: Clock,
                 notify: Callable[[list[str]], None]) -> None:
        self._db = db
        self._jobs = jobs
        self._audit = audit
        self._limits = limits
        self._clock = clock
        self._notify = notify

    # --- the scheduler's hook ---------------------------------------------------------
    def release_cap(self, s: Session, job: Job, now: float) -> int | None:
        health = gates_of(job)
        if health is None:
            return None
        return evaluate(s, job, health, self._limits, now).release_cap

    # --- periodic ---------------------------------------------------------------------
    def tick(self) -> None:
        with self._db.reading() as s:
            job_ids = [job_id for job_id, config in s.execute(select(Job.job_id, Job.config).where(
                Job.status == JobStatus.IN_PROGRESS.value)).tuples().all()
                if isinstance(config, dict) and gates.JOB_CONFIG_KEY in config]
        for job_id in job_ids:
            try:
                self._tick_job(job_id)
            except Exception:
                log.exception("evaluating the health gates of job %s failed", job_id)

    def _tick_job(self, job_id: str) -> None:
        now = self._clock()
        with self._db.session() as s:
            job = s.get(Job, job_id, with_for_update=True)
            health = gates_of(job) if job is not None else None
            if job is None or health is None or job.status != JobStatus.IN_PROGRESS.value:
                return
            state = state_of(job)
            if state.status == "CANCELED":  # decided, then interrupted before the cancel
                decision: Decision | None = None
            else:
                decision = evaluate(s, job, health, self._limits, now)
                new = self._next_state(health, state, decision, now)
                if new is None:
                    return
                state = new
                _store_state(job, state)
                if state.status in HELD:  # DescribeJob says why the rollout stands still
                    job.reason_code = gates.REASON_CODE
                    job.comment = f"health gate: {HELD[state.status]}: {decision.reason}"[:1024]
                    job.last_updated_at = now
        if decision is not None:
            self._record(job_id, health, state, decision)
        if state.status == "CANCELED":
            force = health.action == "CANCEL_AND_ROLLBACK"
            comment = f"health gate: {state.figures.get('reason', '')}"[:1024]
            self._notify(self._jobs.cancel_job(job_id, force=force, reason_code=gates.REASON_CODE,
                                               comment=comment))

    @staticmethod
    def _next_state(health: HealthGates, state: RolloutHealthState, decision: Decision,
                    now: float) -> RolloutHealthState | None:
        if decision.verdict == "HELD":
            return None
        figures = {**decision.figures, "reason": decision.reason}
        if decision.verdict == "GATE_CROSSED":
            status = "PAUSED" if health.action == "PAUSE" else "CANCELED"
            return RolloutHealthState(status, state.accepted_through, state.approved_through, figures, now)
        status = {"AWAITING_APPROVAL": "AWAITING_APPROVAL", "DONE": "PASSED"}.get(decision.verdict,
                                                                                   "OBSERVING")
        if status == state.status:
            return None
        return RolloutHealthState(status, state.accepted_through, state.approved_through, figures, now)

    def _record(self, job_id: str, health: HealthGates, state: RolloutHealthState,
                decision: Decision) -> None:
        if state.status == "OBSERVING":
            return
        log.warning("job %s: health %s (%s)", job_id, state.status, decision.reason)
        try:
            self._audit.record(principal=PRINCIPAL, action="overair:HealthGate",
                               resource=self._jobs.job_arn(job_id),
                               decision=state.status.title().replace("_", ""),
                               detail={"verdict": decision.verdict, "action": health.action,
                                       "reason": decision.reason, "figures": decision.figures})
        except UnavailableError as exc:
            log.error("could not audit the health decision on job %s: %s", job_id, exc.message)

    # --- operator ----------------------------------------------------------------------
    def describe(self, job_id: str) -> dict[str, Any]:
        """DescribeRolloutHealth: the gates, the persisted decision and the live figures."""
        with self._db.reading() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise not_found(f"job {job_id}")
            health = gates_of(job)
            if health is None:  # an ordinary job: nothing to explain, and nothing fails
                return {"jobId": job_id, "jobStatus": job.status, "gates": None, "status": "NONE",
                        "decidedAt": None, "decision": {},
                        "current": {"verdict": "NONE", "reason": "the job has no health gates",
                                    "releaseCap": None, "figures": {}}}
            state = state_of(job)
            decision = evaluate(s, job, health, self._limits, self._clock())
        status = state.status
        if job.status == JobStatus.COMPLETED.value and status == "OBSERVING":
            status = "PASSED"  # the last executions ended before a tick saw the last window out
        return {"jobId": job_id, "jobStatus": job.status, "gates": health.to_config(),
                "status": status, "decidedAt": state.decided_at, "decision": state.figures,
                "current": {"verdict": decision.verdict, "reason": decision.reason,
                            "releaseCap": decision.release_cap, "figures": decision.figures}}

    def resume(self, job_id: str) -> dict[str, Any]:
        """ResumeRollout: accept the figures so far (a PAUSED rollout goes on; its gates
        judge only the devices released from now on) or approve the next cohort. A rollout
        that is not held (or a job without gates) is left as it is: resuming is idempotent."""
        now = self._clock()
        with self._db.session() as s:
            job = s.get(Job, job_id, with_for_update=True)
            if job is None:
                raise not_found(f"job {job_id}")
            health = gates_of(job)
            if health is None:
                return {"jobId": job_id, "status": "NONE"}
            state = state_of(job)
            if state.status not in ("PAUSED", "AWAITING_APPROVAL"):
                return {"jobId": job_id, "status": state.status}
            if job.status != JobStatus.IN_PROGRESS.value:
                raise invalid(f"job {job_id} is {job.status}; only a rollout in progress can resume")
            cohort = evaluate(s, job, health, self._limits, now).cohort
            accepted = cohort if state.status == "PAUSED" else state.accepted_through
            resumed = RolloutHealthState("OBSERVING", accepted, cohort,
                                         {**state.figures, "resumedFrom": state.status}, now)
            _store_state(job, resumed)
            job.comment = f"health gate: resumed from {state.status} (ResumeRollout)"
            job.last_updated_at = now
        try:
            self._audit.record(principal=PRINCIPAL, action="overair:ResumeRollout",
                               resource=self._jobs.job_arn(job_id), decision="Resumed",
                               detail={"from": state.status, "cohort": cohort})
        except UnavailableError as exc:
            log.error("could not audit the resume of job %s: %s", job_id, exc.message)
        return {"jobId": job_id, "status": resumed.status}
