"""Jobs and their per-device executions.

Which job is `$next` for a thing: the oldest IN_PROGRESS execution, else the oldest
QUEUED one. Every operation that can change it returns the things whose next job
changed, so the device service pushes `notify-next` exactly then and at no other time
(a FreeRTOS agent restarts its download on any unexpected job message).

Status updates follow `core.jobstates`: terminal states are final, `expectedVersion`
is honoured when given, `statusDetails` is replaced as a whole (the FreeRTOS agent
always sends the full map), and `versionNumber` is bumped on every applied update.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, Table, bindparam, func, insert, select, update

from overair.core import jobs_wire as wire
from overair.core import presign, rollout
from overair.core.errors import PeerInputError
from overair.core.jobs_wire import ExecutionView, UpdateRequest
from overair.core.jobstates import Actor, ExecStatus, JobStatus, can_transition
from overair.core.versions import Version
from overair.server.api.contract import ApiError, already_exists, invalid, not_found
from overair.server.clock import Clock
from overair.server.health.gates import JOB_CONFIG_KEY as HEALTH_GATES
from overair.server.jobs import progress
from overair.server.jobs.deliveries import Deliveries
from overair.server.jobs.live import ACTIVE, RELEASED
from overair.server.packages.inventory import (
    DEFAULT_PACKAGE,
    Installed,
    Inventory,
    read_installed,
    record_installed,
)
from overair.server.registry.service import Registry
from overair.server.settings import Settings
from overair.server.storage.db import Database
from overair.server.storage.keyset import page_query, split
from overair.server.storage.schema import InstalledSoftware, Job, JobExecution, Thing, ThingGroupMember

log = logging.getLogger("overair.jobs")

JOB_ID_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


# The execution an update without executionNumber addresses: the latest released one
# (`_addressed`), locked for the update.
_LATEST_FOR_UPDATE = (select(JobExecution)
                      .where(JobExecution.job_id == bindparam("job"),
                             JobExecution.thing_name == bindparam("thing"), RELEASED)
                      .order_by(JobExecution.execution_number.desc()).limit(1).with_for_update())
# Is any execution of a job still live (`maybe_complete`, once per ended execution)?
_ANY_LIVE = (select(JobExecution.id)
             .where(JobExecution.job_id == bindparam("job"), JobExecution.status.in_(ACTIVE)).limit(1))
# A thing's live released executions (`_next_row` picks by `_next_key`), built once for
# the same reason: one read, where a statement per status was two.
_THING_LIVE = (JobExecution.thing_name == bindparam("thing"), RELEASED, JobExecution.status.in_(ACTIVE))
_LIVE_ROWS_OF_THING = select(JobExecution).where(*_THING_LIVE)
# The same as (id, status, queued_at), for `update_execution` to tell whether ending one
# changes the thing's next job with one read instead of `_next_row` before and after (each
# statement a wait for the interpreter while SQLite's write lock is held).
_LIVE_OF_THING = select(JobExecution.id, JobExecution.status, JobExecution.queued_at).where(*_THING_LIVE)
# `next_and_pending`: the live released executions of many things, as rows (expanding
# IN: one statement compiled once for any number of things).
_LIVE_OF_THINGS = (select(JobExecution.id, JobExecution.thing_name, JobExecution.job_id, JobExecution.status,
                          JobExecution.status_details, JobExecution.queued_at, JobExecution.started_at,
                          JobExecution.last_updated_at, JobExecution.version_number,
                          JobExecution.execution_number)
                   .where(JobExecution.thing_name.in_(bindparam("things", expanding=True)), RELEASED,
                          JobExecution.status.in_(ACTIVE))
                   .order_by(JobExecution.thing_name, JobExecution.queued_at, JobExecution.id))
# `update_many`: the live released executions of the things it updates, as `_LIVE_OF_THING`.
_LIVE_OF_THINGS_BRIEF = (
    select(JobExecution.id, JobExecution.status, JobExecution.queued_at, JobExecution.thing_name)
    .where(JobExecution.thing_name.in_(bindparam("things", expanding=True)), RELEASED,
           JobExecution.status.in_(ACTIVE)))
# A thing's pending executions: (inProgressJobs, queuedJobs) summaries.
Pending = tuple[list[dict[str, Any]], list[dict[str, Any]]]
_EXECUTIONS: Table = JobExecution.__table__  # type: ignore[assignment]
_JOBS_BY_ID = select(Job).where(Job.job_id.in_(bindparam("jobs", expanding=True)))
# Job config key of the firmware version an OTA job installs (MAJOR.MINOR.BUILD), when known.
IMAGE_VERSION = "image_version"
# Job config key of the package that version belongs to (packages/inventory.py; default
# DEFAULT_PACKAGE).
PACKAGE_NAME = "package_name"
# Job config key of the catalog package versions a job installs ([[package, version]],
# from destinationPackageVersions): what a thing runs once its execution SUCCEEDS.
PACKAGE_VERSIONS = "package_versions"
# Job config key of the things a job leaves out although its targets name them: an OTA
# update's targets that already run the image it sends (server/ota/manager.py), so that
# re-sending a version to a group reaches only the members that do not run it.
SKIPPED_THINGS = "skipped_things"
# Rewrites a stored document for one delivery (e.g. a fresh pre-signed URL).
DocumentRenderer = Callable[[Job, str], dict[str, Any]]


class JobsMqttError(PeerInputError):
    """A device request the Jobs API rejects; `code` is the Jobs MQTT error code."""

    def __init__(self, code: str, message: str, execution_state: dict[str, Any] | None = None) -> None:
        super().__init__(message, code=code)
        self.execution_state = execution_state


@dataclass(frozen=True, slots=True)
class UpdateOutcome:
    execution: ExecutionView
    next_changed: bool


@dataclass(frozen=True, slots=True)
class _Change:
    """One applied update, for what follows its commit (`JobService._after`)."""

    thing: str
    job_id: str
    request: UpdateRequest
    outcome: UpdateOutcome
    installed: list[Installed]
    job: Job | None  # its job, when the update ended the execution


@dataclass(slots=True)
class _Reads:
    """What `update_many` reads for a run of updates at once, instead of per update: the
    addressed executions (locked), the things' live executions, which things exist and
    what they have installed. Only for things updated once in the run and updates naming
    no execution number (a thing's second update in a run must see its first one, and
    goes through the per-update reads). 10,000 devices ending within a minute: the reads
    and flushes per update were most of a rollout's tail (bench/fleet.py)."""

    covers: set[str]  # the things read for
    latest: dict[tuple[str, str], JobExecution]  # (job, thing) -> its latest released execution
    live: dict[str, list[Any]]  # thing ending an execution -> its live released executions
    things: set[str]  # things succeeding that exist
    installed: dict[tuple[str, str], InstalledSoftware]  # every row of those things

    @classmethod
    def read(cls, s: Any, updates: list[tuple[str, str, UpdateRequest]]) -> _Reads:
        counts = Counter(thing for thing, _, _ in updates)
        covered = [(thing, job_id, request) for thing, job_id, request in updates
                   if counts[thing] == 1 and request.execution_number is None]
        reads = cls({thing for thing, _, _ in covered}, {}, {}, set(), {})
        if not covered:
            return reads
        pairs = {(job_id, thing) for thing, job_id, _ in covered}
        # Searched by thing: `job_id || ''` keeps SQLite (no statistics) off the job's
        # indexes, which walk every execution of a 10,000-thing job (a (job, thing) IN
        # list scanned the table); tests/integration/test_job_query_plans.py.
        for row in s.scalars(select(JobExecution).where(
                JobExecution.thing_name.in_(sorted(reads.covers)),
                JobExecution.job_id.concat("").in_(sorted({job_id for job_id, _ in pairs})), RELEASED)
                .order_by(JobExecution.id).with_for_update()):
            key = (row.job_id, row.thing_name)
            if key in pairs and (key not in reads.latest
                                 or row.execution_number > reads.latest[key].execution_number):
                reads.latest[key] = row
        ending = sorted(thing for thing, _, request in covered if request.status.terminal)
        if ending:
            reads.live = {thing: [] for thing in ending}
            for row in s.execute(_LIVE_OF_THINGS_BRIEF, {"things": ending}):
                reads.live[row.thing_name].append(row)
        succeeding = [thing for thing, _, request in covered if request.status is ExecStatus.SUCCEEDED]
        if succeeding:
            reads.things = set(s.scalars(select(Thing.name).where(Thing.name.in_(succeeding))))
            reads.installed = read_installed(s, sorted(reads.things))
        return reads


def _ts(value: float | None) -> int | None:
    return None if value is None else int(value)


class JobService:
    def __init__(self, db: Database, settings: Settings, registry: Registry, clock: Clock) -> None:
        self._db = db
        self._settings = settings
        self._registry = registry
        self._clock = clock
        # N4: what each thing may fetch now (streams, HTTP objects), for the access caches.
        self.deliveries = Deliveries(db, settings.limits.delivery_jobs_kept)
        self.render_document: DocumentRenderer = lambda job, _thing: job.document
        # Called with a session and the things whose documents are about to be rendered in
        # it, so that the renderer can read what it needs for all of them at once.
        self.prepare_render: Callable[[Any, list[str]], None] = lambda _s, _things: None
        # Why a thing joining a CONTINUOUS job's group cannot take that job (None: it can);
        # the OTA Update Manager's device-profile check (ota/profiles.py `refusal`).
        self.refuse_target: Callable[[Job, str], str | None] = lambda _job, _thing: None
        # Things whose pending list changed while their next job did not (e.g. a second
        # job queued behind a running one): they get `notify`, not notify-next.
        self.on_pending_changed: Callable[[list[str]], None] = lambda _things: None
        self.on_target_refused: Callable[[str, str, str], None] = lambda _job, _thing, _why: None
        # Called (after the commit) with the things whose executions changed in a way that
        # can change what they may download: an execution ended (SUCCEEDED, FAILED,
        # REJECTED, CANCELED, TIMED_OUT, REMOVED), a job was created or deleted. The
        # device service and the download endpoint drop cached access decisions (N4).
        self._execution_watchers: list[Callable[[list[str]], None]] = []
        # Called (after the commit) when a thing starts running a version an OTA job
        # installed (packages/shadow_sync.py reports it in the thing's $package shadow).
        self.on_installed: Callable[[Installed], None] = lambda _installed: None

    def job_arn(self, job_id: str) -> str:
        return self._settings.arn("iot", f"job/{job_id}")

    def watch_executions(self, watcher: Callable[[list[str]], None]) -> None:
        self._execution_watchers.append(watcher)

    def executions_changed(self, things: list[str]) -> None:
        """Tell the watchers; the scheduler calls this too after each tick's commits."""
        if things:
            for watcher in self._execution_watchers:
                watcher(things)

    # Operator side ----------------------------------------------------------------
    def create_job(self, job_id: str, targets: list[str], document: dict[str, Any], *,
                   description: str = "", target_selection: str = "SNAPSHOT",
                   config: dict[str, Any] | None = None,
                   things: list[str] | None = None) -> tuple[Job, list[str]]:
        """Create the job and one QUEUED execution per target thing. Returns the job
        and the things whose next job changed (to be notified). `things`: the targets
        already resolved by the caller (else they are resolved here)."""
        if JOB_ID_RE.fullmatch(job_id) is None:
            raise invalid("jobId must be 1-64 characters of [a-zA-Z0-9_-]")
        if not targets:
            raise invalid("a job needs at least one target")
        if target_selection not in ("SNAPSHOT", "CONTINUOUS"):
            raise invalid("targetSelection must be SNAPSHOT or CONTINUOUS")
        config = dict(config or {})
        try:
            rollout_config = rollout.RolloutConfig.from_aws(config.get("jobExecutionsRolloutConfig"))
            rollout.abort_criteria(config.get("abortConfig"))
            rollout.in_progress_timeout(config.get("timeoutConfig"))
            rollout.retry_limits(config.get("jobExecutionsRetryConfig"))
            presign.expiry_seconds(config.get("presignedUrlConfig"))
            plan = rollout.schedule(config.get("schedulingConfig"))
            rollout.check_windows_open(plan, self._clock())
        except PeerInputError as exc:
            raise invalid(exc.message) from exc
        encoded = wire.encode(document)
        if len(encoded) > self._settings.limits.max_job_document_bytes:
            raise invalid(f"job document is {len(encoded)} bytes; the limit is "
                          f"{self._settings.limits.max_job_document_bytes}")
        skipped = set(config.get(SKIPPED_THINGS, []))
        resolved = self._registry.resolve_targets(targets) if things is None else things
        things = [t for t in resolved if t not in skipped]
        now = self._clock()
        with self._db.session() as s:
            if s.get(Job, job_id) is not None:
                raise already_exists(f"job {job_id}")
            waiting = plan.phase(now) == "waiting"
            job = Job(job_id=job_id, arn=self.job_arn(job_id),
                      status=(JobStatus.SCHEDULED if waiting else JobStatus.IN_PROGRESS).value,
                      document=document, description=description, targets=list(targets),
                      target_selection=target_selection, config=config,
                      created_at=now, last_updated_at=now)
            s.add(job)
            s.flush()
            # A staged rollout releases executions from the scheduler, and so does a job
            # created outside its maintenance windows; else all at once.
            # Health gates release in cohorts, from the scheduler too (server/health/gates.py).
            staged = rollout_config.limited or HEALTH_GATES in config
            released_at = None if staged or not plan.releasing(now) else now
            had_next = self._things_with_active(s, things) if released_at is not None else set(things)
            if things:
                # Core INSERT on the table: the ORM's bulk insert of the same rows took
                # 0.78 of 1.34 s for 10,000 targets (bench/rollout_create.py).
                s.execute(insert(_EXECUTIONS), [
                    {"job_id": job_id, "thing_name": t, "status": ExecStatus.QUEUED.value,
                     "status_details": {}, "queued_at": now, "last_updated_at": now,
                     "version_number": 1, "execution_number": 1, "released_at": released_at}
                    for t in things])
            else:
                self.maybe_complete(s, job)
        self.executions_changed(things)
        # A new QUEUED job is only next for a thing that had nothing active before.
        if released_at is not None:
            self.on_pending_changed([t for t in things if t in had_next])
        return job, [t for t in things if t not in had_next]

    def add_thing_to_continuous_jobs(self, thing: str, group_arn: str) -> list[str]:
        """A thing joined a group: CONTINUOUS jobs targeting the group reach it too.
        Returns the things to notify (this one, if its next job changed).

        Also a job still SCHEDULED (before its startTime): the thing gets an execution
        not released yet, so at the start the job covers every thing in its groups then,
        as AWS's continuous jobs do; the scheduler releases it with the others."""
        now = self._clock()
        with self._db.session() as s:
            jobs = [job for job in s.scalars(select(Job).where(
                Job.status.in_((JobStatus.IN_PROGRESS.value, JobStatus.SCHEDULED.value)),
                Job.target_selection == "CONTINUOUS"))
                    if group_arn in job.targets and thing not in job.config.get(SKIPPED_THINGS, [])]
            if not jobs:
                return []
            before = self.next_id_in(s, thing)
            refused: list[tuple[str, str]] = []
            for job in jobs:
                latest = s.scalar(self._latest(job.job_id, thing, released_only=False))
                if latest is not None and latest.status != ExecStatus.REMOVED.value:
                    continue  # it already has (or had) an execution of this job
                # A thing a dynamic group let go of before its release and that matches
                # again is a target again (withdraw_unreleased).
                number = 1 if latest is None else latest.execution_number + 1
                refusal = self.refuse_target(job, thing)
                if refusal is not None:
                    # As CreateOTAUpdate refuses such a target: no execution the device
                    # would ignore and leave QUEUED; said in the log (and the audit log
                    # by the caller's hook).
                    log.warning("thing %s joined %s but gets no execution of job %s: %s", thing,
                                group_arn, job.job_id, refusal)
                    refused.append((job.job_id, refusal))
                    continue
                rollout_config = job.config.get("jobExecutionsRolloutConfig")
                limited = rollout.RolloutConfig.from_aws(rollout_config).limited or HEALTH_GATES in job.config
                releasing = rollout.schedule(job.config.get("schedulingConfig")).releasing(now)
                s.add(JobExecution(job_id=job.job_id, thing_name=thing, status=ExecStatus.QUEUED.value,
                                   status_details={}, queued_at=now, last_updated_at=now, version_number=1,
                                   execution_number=number,
                                   released_at=now if releasing and not limited else None))
            s.flush()
            changed = [thing] if self.next_id_in(s, thing) != before else []
        for job_id, refusal in refused:  # audited once the transaction is over
            self.on_target_refused(job_id, thing, refusal)
        self.executions_changed([thing])
        return changed

    def continuous_targets(self) -> set[str]:
        """The targets (ARNs) of CONTINUOUS jobs that can still reach a thing: joins and
        leaves of other groups need no job work (server/fleet/dynamic.py asks once per batch)."""
        with self._db.reading() as s:
            rows = s.scalars(select(Job.targets).where(
                Job.status.in_((JobStatus.IN_PROGRESS.value, JobStatus.SCHEDULED.value)),
                Job.target_selection == "CONTINUOUS"))
            return {arn for targets in rows for arn in targets}

    def withdraw_unreleased(self, thing: str, group_arn: str) -> None:
        """A thing left a group (a dynamic group's query stopped matching it): CONTINUOUS
        jobs aimed at that group, whose staged rollout has not released the thing's
        execution yet, no longer reach it: the execution is REMOVED, AWS's state for
        "things that are no longer scheduled to execute the job because they have been
        deleted or removed from the group that was a target of the job" (iot API
        reference, JobProcessDetails.numberOfRemovedThings). A released execution stays:
        the device may be running it. A thing the job still targets otherwise (by name,
        or through another of its groups) keeps it."""
        now = self._clock()
        with self._db.session() as s:
            jobs = [job for job in s.scalars(select(Job).where(
                Job.status.in_((JobStatus.IN_PROGRESS.value, JobStatus.SCHEDULED.value)),
                Job.target_selection == "CONTINUOUS")) if group_arn in job.targets]
            if not jobs:
                return
            still = {self._registry.group_arn(name) for name in s.scalars(
                select(ThingGroupMember.group_name).where(ThingGroupMember.thing_name == thing))}
            still.add(self._registry.thing_arn(thing))
            for job in jobs:
                if still & set(job.targets):
                    continue
                s.execute(update(JobExecution).where(
                    JobExecution.job_id == job.job_id, JobExecution.thing_name == thing,
                    JobExecution.status == ExecStatus.QUEUED.value, JobExecution.released_at.is_(None))
                    .values(status=ExecStatus.REMOVED.value, last_updated_at=now,
                            version_number=JobExecution.version_number + 1))
        self.executions_changed([thing])

    def next_id_in(self, s: Any, thing: str) -> int | None:
        row = self._next_row(s, thing)
        return None if row is None else row.id

    def _things_with_active(self, s: Any, things: list[str]) -> set[str]:
        found: set[str] = set()
        chunk = 500
        for i in range(0, len(things), chunk):
            part = things[i:i + chunk]
            found.update(s.scalars(select(JobExecution.thing_name)
                                   .where(JobExecution.thing_name.in_(part), RELEASED,
                                          JobExecution.status.in_(ACTIVE))))
        return found

    def describe_job(self, job_id: str) -> tuple[Job, dict[str, int]]:
        with self._db.reading() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise not_found(f"job {job_id}")
            # Every target counts from the start, released or not (QUEUED until the rollout
            # sends it, CANCELED when the job ends before): AWS's jobProcessDetails count
            # the job's executions, and a staged rollout only paces the notifications.
            # A thing counts once, by its latest execution (a retried thing is the retry).
            latest = (select(JobExecution.thing_name, func.max(JobExecution.execution_number).label("n"))
                      .where(JobExecution.job_id == job_id).group_by(JobExecution.thing_name).subquery())
            counts = dict(s.execute(
                select(JobExecution.status, func.count())
                .join(latest, (JobExecution.thing_name == latest.c.thing_name)
                      & (JobExecution.execution_number == latest.c.n))
                .where(JobExecution.job_id == job_id)
                .group_by(JobExecution.status)).tuples().all())
            return job, counts

    def scheduled_rollouts(self, job: Job) -> list[float]:
        """DescribeJob's scheduledJobRollouts: the next maintenance window starts of a job
        that can still roll out."""
        if job.status not in (JobStatus.SCHEDULED.value, JobStatus.IN_PROGRESS.value):
            return []
        return rollout.schedule(job.config.get("schedulingConfig")).upcoming_rollouts(self._clock())

    def list_jobs(self, status: str | None = None) -> list[Job]:
        with self._db.reading() as s:
            query = select(Job).order_by(Job.created_at, Job.job_id)
            if status:
                query = query.where(Job.status == status)
            return list(s.scalars(query))

    def get_document(self, job_id: str) -> dict[str, Any]:
        with self._db.reading() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise not_found(f"job {job_id}")
            return job.document

    # Keyset pages (api/paging.py): each reads `size + 1` rows after the previous page's
    # last key, over an index, whatever the depth.
    def page_jobs(self, status: str | None, selection: str | None, keep: Callable[[Job], bool],
                  after: tuple[float, str] | None, size: int) -> tuple[list[Job], bool]:
        found: list[Job] = []
        with self._db.reading() as s:
            while True:
                query = select(Job)
                if status:
                    query = query.where(Job.status == status)
                if selection:
                    query = query.where(Job.target_selection == selection)
                rows = list(s.scalars(page_query(query, [Job.created_at, Job.job_id], after, size)))
                found.extend(row for row in rows if keep(row))
                if len(found) > size or len(rows) <= size:
                    return split(found, size)
                after = (rows[-1].created_at, rows[-1].job_id)

    def page_executions_for_job(self, job_id: str, status: str | None, after: tuple[str, int] | None,
                                size: int) -> tuple[list[JobExecution], bool]:
        """Every execution, released or not, by thing then execution number."""
        with self._db.reading() as s:
            if s.get(Job, job_id) is None:
                raise not_found(f"job {job_id}")
            query = select(JobExecution).where(JobExecution.job_id == job_id)
            if status:
                query = query.where(JobExecution.status == status)
            query = page_query(query, [JobExecution.thing_name, JobExecution.execution_number], after, size)
            return split(list(s.scalars(query)), size)

    def page_executions_for_thing(self, thing: str, status: str | None, job_id: str | None,
                                  after: tuple[float, int] | None,
                                  size: int) -> tuple[list[JobExecution], bool]:
        with self._db.reading() as s:
            query = select(JobExecution).where(JobExecution.thing_name == thing)
            if status:
                query = query.where(JobExecution.status == status)
            if job_id:
                query = query.where(JobExecution.job_id == job_id)
            query = page_query(query, [JobExecution.queued_at, JobExecution.id], after, size)
            return split(list(s.scalars(query)), size)

    def executions_for_job(self, job_id: str, status: str | None = None) -> list[JobExecution]:
        with self._db.reading() as s:
            if s.get(Job, job_id) is None:
                raise not_found(f"job {job_id}")
            # Operators see every execution, released or not (devices see released ones).
            query = select(JobExecution).where(JobExecution.job_id == job_id)
            if status:
                query = query.where(JobExecution.status == status)
            return list(s.scalars(query.order_by(JobExecution.thing_name)))

    def executions_for_thing(self, thing: str, status: str | None = None) -> list[JobExecution]:
        with self._db.reading() as s:
            query = select(JobExecution).where(JobExecution.thing_name == thing)
            if status:
                query = query.where(JobExecution.status == status)
            return list(s.scalars(query.order_by(JobExecution.queued_at)))

    def describe_execution(self, job_id: str, thing: str,
                           execution_number: int | None = None) -> JobExecution:
        """DescribeJobExecution (operator): the latest execution, or the one numbered."""
        with self._db.reading() as s:
            # The operator sees executions a staged rollout has not released yet.
            query = self._latest(job_id, thing, released_only=False) if execution_number is None else \
                select(JobExecution).where(JobExecution.job_id == job_id, JobExecution.thing_name == thing,
                                           JobExecution.execution_number == execution_number)
            row = s.scalar(query)
            if row is None:
                number = "" if execution_number is None else f" number {execution_number}"
                raise not_found(f"execution{number} of job {job_id} on {thing}")
            return row

    def cancel_job(self, job_id: str, *, force: bool, comment: str = "",
                   reason_code: str = "") -> list[str]:
        """Cancel a job: QUEUED executions (and IN_PROGRESS ones with force) become
        CANCELED. Returns the things whose next job changed."""
        now = self._clock()
        with self._db.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise not_found(f"job {job_id}")
            if job.status in (JobStatus.COMPLETED.value,):
                raise invalid(f"job {job_id} is already completed")
            statuses = ACTIVE if force else (ExecStatus.QUEUED.value,)
            things = list(s.scalars(select(JobExecution.thing_name).where(
                JobExecution.job_id == job_id, JobExecution.status.in_(statuses))))
            s.execute(update(JobExecution)
                      .where(JobExecution.job_id == job_id, JobExecution.status.in_(statuses))
                      .values(status=ExecStatus.CANCELED.value, last_updated_at=now,
                              version_number=JobExecution.version_number + 1))
            job.status = JobStatus.CANCELED.value
            log.info("job %s canceled (force=%s): %d execution(s) canceled", job_id, force, len(things),
                     extra={"job": job_id, "jobStatus": job.status})
            job.force_canceled = force
            job.comment = comment
            job.reason_code = reason_code
            job.last_updated_at = now
        self.executions_changed(things)
        return things

    def cancel_execution(self, job_id: str, thing: str, *, force: bool, expected_version: int | None = None,
                         status_details: dict[str, str] | None = None) -> list[str]:
        """CancelJobExecution: a QUEUED execution (IN_PROGRESS only with force) becomes
        CANCELED. Returns the thing if its next job changed."""
        now = self._clock()
        with self._db.session() as s:
            row = s.scalar(self._latest(job_id, thing, released_only=False).with_for_update())
            if row is None:
                raise not_found(f"execution of job {job_id} on {thing}")
            if expected_version is not None and expected_version != row.version_number:
                raise ApiError("VersionConflictException",
                               f"execution is at version {row.version_number}, not {expected_version}", 409)
            status = ExecStatus(row.status)
            if status.terminal or (status is ExecStatus.IN_PROGRESS and not force):
                raise ApiError("InvalidStateTransitionException",
                               f"an execution in {status.value} cannot be canceled"
                               + ("" if status.terminal else " without force"), 409)
            before = self.next_id_in(s, thing)
            row.status = ExecStatus.CANCELED.value
            row.last_updated_at = now
            row.version_number += 1
            row.timeout_at = None
            if status_details is not None:
                row.status_details = status_details
            job = s.get(Job, job_id)
            if job is not None:
                self.maybe_complete(s, job)
            s.flush()
            changed = [thing] if self.next_id_in(s, thing) != before else []
        self.executions_changed([thing])
        return changed

    def delete_job(self, job_id: str, *, force: bool) -> None:
        with self._db.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise not_found(f"job {job_id}")
            in_progress = s.scalar(select(func.count()).select_from(JobExecution).where(
                JobExecution.job_id == job_id, JobExecution.status == ExecStatus.IN_PROGRESS.value))
            if in_progress and not force:
                raise invalid(f"job {job_id} has {in_progress} execution(s) in progress; use force")
            things = list(s.scalars(select(JobExecution.thing_name).where(JobExecution.job_id == job_id)))
            s.delete(job)
        self.executions_changed(things)

    # Device side ------------------------------------------------------------------
    @staticmethod
    def _latest(job_id: str, thing: str, *, released_only: bool = True) -> Select[tuple[JobExecution]]:
        query = select(JobExecution).where(JobExecution.job_id == job_id, JobExecution.thing_name == thing)
        if released_only:
            query = query.where(RELEASED)
        return query.order_by(JobExecution.execution_number.desc()).limit(1)

    def _view(self, s: Any, row: JobExecution, with_document: bool = True) -> ExecutionView:
        document = None
        if with_document:
            job = s.get(Job, row.job_id)
            document = self.render_document(job, row.thing_name) if job is not None else None
        return _execution_view(row, document)

    def _next_row(self, s: Any, thing: str) -> JobExecution | None:
        row: JobExecution | None = min(s.scalars(_LIVE_ROWS_OF_THING, {"thing": thing}), key=_next_key,
                                       default=None)
        return row

    def next_execution(self, thing: str, include_document: bool = True) -> ExecutionView | None:
        with self._db.reading() as s:
            row = self._next_row(s, thing)
            return None if row is None else self._view(s, row, with_document=include_document)

    def next_job_id(self, thing: str) -> str | None:
        with self._db.reading() as s:
            row = self._next_row(s, thing)
            return None if row is None else row.job_id

    @staticmethod
    def _numbered(job_id: str, thing: str, execution_number: int) -> Select[tuple[JobExecution]]:
        return select(JobExecution).where(JobExecution.job_id == job_id, JobExecution.thing_name == thing,
                                          JobExecution.execution_number == execution_number, RELEASED)

    def _addressed(self, job_id: str, thing: str,
                   execution_number: int | None) -> Select[tuple[JobExecution]]:
        """The execution a device request names: that number, else the latest (AWS)."""
        if execution_number is None:
            return self._latest(job_id, thing)
        return self._numbered(job_id, thing, execution_number)

    def execution_for_device(self, thing: str, job_id: str, execution_number: int | None = None,
                             include_document: bool = True) -> ExecutionView:
        """DescribeJobExecution: `job_id` may be `$next`; `execution_number` None means the
        latest execution, else exactly that one (after a retry, #1 is still #1)."""
        with self._db.reading() as s:
            if job_id == "$next":
                row = self._next_row(s, thing)
                if row is not None and execution_number not in (None, row.execution_number):
                    row = None
            else:
                row = s.scalar(self._addressed(job_id, thing, execution_number))
            if row is None:
                number = "" if execution_number is None else f" number {execution_number}"
                raise JobsMqttError(wire.RESOURCE_NOT_FOUND, f"no execution{number} of {job_id} for {thing}")
            return self._view(s, row, with_document=include_document)

    def pending_for_device(self, thing: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(inProgressJobs, queuedJobs) summaries for `$aws/things/T/jobs/get`."""
        with self._db.reading() as s:
            rows = s.scalars(select(JobExecution).where(JobExecution.thing_name == thing, RELEASED,
                                                        JobExecution.status.in_(ACTIVE))
                             .order_by(JobExecution.queued_at, JobExecution.id)).all()
        return _pending_summaries(rows)

    def things_with_pending(self) -> list[str]:
        """Every thing with a released QUEUED or IN_PROGRESS execution."""
        with self._db.reading() as s:
            pending = select(JobExecution.thing_name).where(RELEASED, JobExecution.status.in_(ACTIVE))
            return list(s.scalars(pending.distinct().order_by(JobExecution.thing_name)))

    def pending_of(self, things: Sequence[str]) -> dict[str, Pending]:
        """`pending_for_device` for many things, from one read."""
        with self._db.reading() as s:
            rows = s.execute(_LIVE_OF_THINGS, {"things": list(things)}).all()
        by_thing: dict[str, list[Any]] = {thing: [] for thing in things}
        for row in rows:
            by_thing[row.thing_name].append(row)
        return {thing: _pending_summaries(mine) for thing, mine in by_thing.items()}

    def next_and_pending(self, things: Sequence[str], pending: bool = True) -> dict[str, NextAndPending]:
        """For each thing: its next execution (as `next_execution`) and its pending
        summaries (as `pending_for_device`; left empty if not `pending`), read with one
        query for all of them: what a job's creation must tell every target (a per-thing
        lookup made notifying 10,000 devices take 17 s). The executions are read as plain
        rows by a statement built once, and each job once per call (ORM objects, a
        statement built per call and a job lookup per thing were 60% of notifying 10,000
        devices: bench/fleet.py)."""
        with self._db.reading() as s:
            rows = s.execute(_LIVE_OF_THINGS, {"things": list(things)}).all()
            by_thing: dict[str, list[Any]] = {thing: [] for thing in things}
            for row in rows:
                by_thing[row.thing_name].append(row)
            self.prepare_render(s, [thing for thing, mine in by_thing.items() if mine])
            held = s.scalars(_JOBS_BY_ID, {"jobs": sorted({row.job_id for row in rows})})
            jobs = {job.job_id: job for job in held}
            out = {}
            for thing, mine in by_thing.items():
                first = min(mine, key=_next_key, default=None)
                view = None
                if first is not None:
                    job = jobs.get(first.job_id)
                    document = self.render_document(job, thing) if job is not None else None
                    view = _execution_view(first, document)
                out[thing] = NextAndPending(view, *(_pending_summaries(mine) if pending else ([], [])))
        return out

    def start_next(self, thing: str, details: dict[str, str] | None,
                   step_timeout_minutes: int | None = None) -> ExecutionView | None:
        """`start-next`: the next execution, moved to IN_PROGRESS if it was QUEUED, with
        the device's step timer if it gave one (it times out unless updated in time).
        One already IN_PROGRESS is returned as it is."""
        now = self._clock()
        with self._db.session() as s:
            row = self._next_row(s, thing)
            if row is None:
                return None
            if row.status == ExecStatus.QUEUED.value:
                row.status = ExecStatus.IN_PROGRESS.value
                row.started_at = now
                row.last_updated_at = now
                row.version_number += 1
                row.timeout_at = self._deadline(s, row, step_timeout_minutes, now)
                if details is not None:
                    row.status_details = details
            return self._view(s, row)

    @staticmethod
    def is_plain_progress(request: UpdateRequest) -> bool:
        """The common update of a rollout: IN_PROGRESS (a FreeRTOS device's first `receive`,
        which starts its execution, and the one every 25 blocks after it, a self-test
        report) with no expectedVersion, no step timeout and nothing asked back
        (`report_progress`)."""
        return (request.status is ExecStatus.IN_PROGRESS and request.expected_version is None
                and request.step_timeout_minutes is None and not request.include_job_execution_state
                and not request.include_job_document)

    def report_progress(self, thing: str, job_id: str, request: UpdateRequest) -> bool:
        """A plain progress report made cheap (jobs/progress.py): an UPDATE with the same
        effect as `update_execution` (details replaced, version and last-update time moved
        on; a QUEUED execution started, with the job's in-progress timer); no row read, no
        view built. False if it did not apply (not a plain progress report, or no such
        live execution): the caller then goes through `update_execution`, which answers
        every error."""
        return self.is_plain_progress(request) and self.report_progress_many([(thing, job_id, request)])[0]

    def report_progress_many(self, reports: list[tuple[str, str, UpdateRequest]]) -> list[bool]:
        """`report_progress` for several plain progress reports (thing, job id, request),
        applied in order in one transaction: a burst of reports from many devices costs
        one commit (gateway/thing_workers.py batches). One flag each: applied or not."""
        now = self._clock()
        with self._db.session() as s:
            return progress.apply(s.connection(), reports, now)

    def update_execution(self, thing: str, job_id: str, request: UpdateRequest) -> UpdateOutcome:
        """A status update of an execution (device or Jobs HTTPS API): every check, every
        effect (timers, installed versions, retries, job completion, next job)."""
        outcome = self._update(thing, job_id, request, progress_first=False)
        assert outcome is not None  # only the short path answers None
        return outcome

    def device_update(self, thing: str, job_id: str, request: UpdateRequest) -> UpdateOutcome | None:
        """`update_execution`, but a plain progress report is first tried by the short path
        in the same transaction (a device's first report, which starts its execution, then
        costs one transaction, not two): None when it applied that way."""
        return self._update(thing, job_id, request, progress_first=self.is_plain_progress(request))

    def _update(self, thing: str, job_id: str, request: UpdateRequest, *,
                progress_first: bool) -> UpdateOutcome | None:
        now = self._clock()
        with self._db.session() as s:
            if progress_first and progress.apply(s.connection(), [(thing, job_id, request)], now)[0]:
                return None
            change = self._change(s, thing, job_id, request, now, complete=True)
        self._after([change])
        return change.outcome

    def update_many(self, updates: list[tuple[str, str, UpdateRequest]]
                    ) -> list[UpdateOutcome | JobsMqttError]:
        """`update_execution` for several (thing, job id, request) of different things, in
        order and in one transaction (gateway/thing_workers.py runs: a rollout's devices
        end within seconds of each other): each answered with its outcome or with the
        JobsMqttError that refused it alone (refusals come before any change). Any other
        failure fails them all, with nothing written."""
        now = self._clock()
        results: list[UpdateOutcome | JobsMqttError] = []
        changes: list[_Change] = []
        with self._db.session() as s:
            reads = _Reads.read(s, updates)
            for thing, job_id, request in updates:
                try:
                    change = self._change(s, thing, job_id, request, now, complete=False, reads=reads)
                except JobsMqttError as exc:
                    results.append(exc)
                    continue
                results.append(change.outcome)
                changes.append(change)
            # Whether a job is complete once, after all of them (one read per job).
            for job in {id(c.job): c.job for c in changes if c.job is not None}.values():
                self.maybe_complete(s, job)
        self._after(changes)
        return results

    def _change(self, s: Any, thing: str, job_id: str, request: UpdateRequest, now: float, *,
                complete: bool, reads: _Reads | None = None) -> _Change:
        """One update in the caller's transaction. Every JobsMqttError is raised before
        anything changed. `complete`: also complete the job if this was its last live
        execution (else the caller does, once for many). `reads`: what the caller read for
        a run of updates (used where it covers this one; nothing flushed before commit)."""
        covered = reads if reads is not None and thing in reads.covers and request.execution_number is None \
            else None
        read = covered is not None
        row = self._addressed_row(s, thing, job_id, request.execution_number, covered)
        if row is None:
            number = "" if request.execution_number is None else f" number {request.execution_number}"
            raise JobsMqttError(wire.RESOURCE_NOT_FOUND, f"no execution{number} of {job_id} for {thing}")
        current = ExecStatus(row.status)
        state = {"status": row.status, "statusDetails": dict(row.status_details),
                 "versionNumber": row.version_number}
        if request.expected_version is not None and request.expected_version != row.version_number:
            raise JobsMqttError(wire.VERSION_MISMATCH,
                                f"expected version {request.expected_version}, "
                                f"current is {row.version_number}", state)
        if current.terminal:
            # AWS: InvalidStateTransition, "for example, an attempt to change a request
            # in state SUCCEEDED to state IN_PROGRESS", with executionState (Jobs
            # device API, ErrorResponse); TerminalStateReached is for describing.
            raise JobsMqttError(wire.INVALID_STATE_TRANSITION,
                                f"execution is already {current.value}", state)
        if not can_transition(current, request.status, Actor.DEVICE):
            raise JobsMqttError(wire.INVALID_STATE_TRANSITION,
                                f"cannot go from {current.value} to {request.status.value}", state)
        # Only an execution that ends can change the thing's next job: progress reports
        # (most updates) skip the lookup.
        live: Sequence[Any] = []
        if request.status.terminal:
            live = covered.live[thing] if covered is not None else \
                s.execute(_LIVE_OF_THING, {"thing": thing}).all()
        row.status = request.status.value
        if request.status_details is not None:
            row.status_details = request.status_details
        if row.started_at is None and request.status is not ExecStatus.QUEUED:
            row.started_at = now
        row.last_updated_at = now
        row.version_number += 1
        if request.status is ExecStatus.IN_PROGRESS and (
                current is not ExecStatus.IN_PROGRESS or request.step_timeout_minutes is not None):
            # The clock starts when the execution enters IN_PROGRESS; a step timeout
            # (re)starts the step timer, -1 cancels it. Progress reports without one
            # leave both timers alone and cost no Job read.
            row.timeout_at = self._deadline(s, row, request.step_timeout_minutes, now)
        elif request.status.terminal:
            row.timeout_at = None
        if not read:
            s.flush()
        next_changed = False
        installed: list[Installed] = []
        job: Job | None = None
        if request.status.terminal:
            job = s.get(Job, job_id)
            retried = False
            if job is not None:
                installed = self._record_installed(s, job, row, now, covered)
                retried = self.retry_if_allowed(s, job, row, now)
                job.last_updated_at = now
                if complete:
                    self.maybe_complete(s, job)
            if not read:
                s.flush()
            # The next job after: the same live rows but this one, unless a retry was
            # queued (rare; then read as before).
            after = _next_of([r for r in live if r.id != row.id]) if not retried else (
                getattr(self._next_row(s, thing), "id", None))
            next_changed = _next_of(live) != after
        outcome = UpdateOutcome(self._view(s, row, with_document=request.include_job_document), next_changed)
        return _Change(thing, job_id, request, outcome, installed, job)

    def _addressed_row(self, s: Any, thing: str, job_id: str, execution_number: int | None,
                       covered: _Reads | None) -> JobExecution | None:
        """The execution an update addresses, locked: with an executionNumber that one
        (after a retry, #1 is still #1); without one, the latest (read for the run if
        `covered`)."""
        if covered is not None:
            return covered.latest.get((job_id, thing))
        if execution_number is None:
            row: JobExecution | None = s.scalar(_LATEST_FOR_UPDATE, {"job": job_id, "thing": thing})
            return row
        statement = self._numbered(job_id, thing, execution_number).with_for_update()
        numbered: JobExecution | None = s.scalar(statement)
        return numbered

    def _after(self, changes: list[_Change]) -> None:
        """What follows committed updates: ended executions logged, their things' access
        decisions dropped, installs reported."""
        ended = [c for c in changes if c.request.status.terminal]
        for c in ended:
            _log_ended(c.thing, c.job_id, c.outcome.execution.execution_number, c.request)
        if ended:
            self.executions_changed([c.thing for c in ended])
        for c in changes:
            for installed in c.installed:
                self.on_installed(installed)

    @staticmethod
    def _record_installed(s: Any, job: Job, row: JobExecution, now: float,
                          reads: _Reads | None = None) -> list[Installed]:
        """A job that SUCCEEDED on a thing: from now, the thing runs the image version of
        an OTA job and the package versions the job names (packages/inventory.py), in
        this transaction. Only the changes are returned."""
        if row.status != ExecStatus.SUCCEEDED.value:
            return []
        if row.thing_name not in reads.things if reads is not None else s.get(Thing, row.thing_name) is None:
            return []
        installs: list[tuple[str, str, bool]] = [(str(p), str(v), True)
                                                 for p, v in job.config.get(PACKAGE_VERSIONS, [])]
        version = job.config.get(IMAGE_VERSION)
        if version:
            installs.append((str(job.config.get(PACKAGE_NAME) or DEFAULT_PACKAGE), str(version), False))
        known = reads.installed if reads is not None else None
        changes = [record_installed(s, row.thing_name, package, v, job.job_id, now, catalog=catalog,
                                    known=known) for package, v, catalog in installs]
        return [change for change in changes if change is not None]

    @staticmethod
    def _deadline(s: Any, row: JobExecution, step_minutes: int | None, now: float) -> float | None:
        """When this IN_PROGRESS execution times out: the earlier of the job's in-progress
        timer (timeoutConfig, counted from its start) and the device's step timer (from
        now, if it set one), else never. AWS: "setting or resetting the step timeout has
        no effect on the in progress timeout" (UpdateJobExecution, iot-jobs-data model),
        so both run and whichever expires first times the execution out; a step timeout
        of -1 (or none) leaves only the in-progress timer."""
        job = s.get(Job, row.job_id)
        limit = rollout.in_progress_timeout(job.config.get("timeoutConfig")) if job is not None else None
        deadlines = [] if limit is None else [(row.started_at or now) + limit]
        if step_minutes is not None and step_minutes > 0:
            deadlines.append(now + 60.0 * step_minutes)
        return min(deadlines, default=None)

    def retry_if_allowed(self, s: Any, job: Job, row: JobExecution, now: float) -> bool:
        """jobExecutionsRetryConfig: queue a new attempt (the next execution number)."""
        limits = rollout.retry_limits(job.config.get("jobExecutionsRetryConfig"))
        if job.status != JobStatus.IN_PROGRESS.value or not rollout.should_retry(
                limits, row.status, row.execution_number):
            return False
        # The version number carries on from the failed attempt, so a stale or replayed
        # update carrying that attempt's expectedVersion cannot land on the new one (N3).
        s.add(JobExecution(job_id=job.job_id, thing_name=row.thing_name, status=ExecStatus.QUEUED.value,
                           status_details={}, queued_at=now, last_updated_at=now,
                           version_number=row.version_number + 1,
                           execution_number=row.execution_number + 1, released_at=now))
        return True

    def maybe_complete(self, s: Any, job: Job) -> None:
        if job.status != JobStatus.IN_PROGRESS.value or job.target_selection == "CONTINUOUS":
            return
        # Is any execution still live? The first one found answers it (a count visited
        # every live execution each time one of 10,000 devices finished).
        active = s.scalar(_ANY_LIVE, {"job": job.job_id})
        if active is None:
            job.status = JobStatus.COMPLETED.value
            job.completed_at = self._clock()
            job.last_updated_at = job.completed_at
            log.info("job %s completed", job.job_id, extra={"job": job.job_id, "jobStatus": job.status})

    def installed_versions(self, targets: list[str]) -> dict[str, str]:
        """For each of the things `targets` (names): the highest firmware version an OTA
        job of this server installed on it (SUCCEEDED), if any."""
        things = set(targets)
        best: dict[str, Version] = {}
        with self._db.reading() as s:
            configs = s.execute(select(Job.job_id, Job.config))
            jobs = {job_id: config[IMAGE_VERSION] for job_id, config in configs if config.get(IMAGE_VERSION)}
            if not jobs or not things:
                return {}
            rows = s.execute(select(JobExecution.thing_name, JobExecution.job_id).where(
                JobExecution.job_id.in_(list(jobs)), JobExecution.status == ExecStatus.SUCCEEDED.value))
            for thing, job_id in rows:
                if thing in things:
                    version = Version.parse(jobs[job_id])
                    best[thing] = max(best.get(thing, version), version)
        return {thing: str(version) for thing, version in best.items()}

    def running_versions(self, things: list[str]) -> dict[str, str]:
        """For each of `things` (names): the firmware version it runs now, as recorded
        when an OTA job last changed it (packages/inventory.py)."""
        return Inventory(self._db).running_versions(things)


def _next_key(row: Any) -> tuple[bool, float, int]:
    """Which of a thing's live executions (rows with id, status, queued_at) is its next
    job, the smallest key: the oldest IN_PROGRESS, else the oldest QUEUED (AWS Jobs:
    `$next` is the in-progress execution, else the earliest queued). The one place this
    order is stated: `$next/get`, StartNext, notify-next and the next-job change all rank
    by it."""
    return (row.status != ExecStatus.IN_PROGRESS.value, row.queued_at, row.id)


def _next_of(live: Sequence[Any]) -> int | None:
    """The id of the thing's next execution among its live rows."""
    ranked = min(live, key=_next_key, default=None)
    return None if ranked is None else int(ranked.id)


def _log_ended(thing: str, job_id: str, number: int | None, request: UpdateRequest) -> None:
    """One line per execution that ended: a failure at WARNING with the device's reason
    (its statusDetails), success at INFO."""
    failed = request.status is not ExecStatus.SUCCEEDED
    details = ", ".join(f"{k}={v}" for k, v in sorted((request.status_details or {}).items()))[:300]
    log.log(logging.WARNING if failed else logging.INFO, "job %s on %s (execution %s): %s%s", job_id, thing,
            number, request.status.value, f" ({details})" if details else "",
            extra={"job": job_id, "thing": thing, "executionStatus": request.status.value})


@dataclass(frozen=True)
class NextAndPending:
    next: ExecutionView | None
    in_progress: list[dict[str, Any]]
    queued: list[dict[str, Any]]


def _execution_view(row: Any, document: dict[str, Any] | None) -> ExecutionView:
    """An execution as the device sees it, from its ORM object or a row of its columns."""
    return ExecutionView(job_id=row.job_id, thing_name=row.thing_name,
                         status=ExecStatus(row.status), status_details=dict(row.status_details),
                         queued_at=int(row.queued_at), started_at=_ts(row.started_at),
                         last_updated_at=int(row.last_updated_at),
                         version_number=row.version_number,
                         execution_number=row.execution_number, job_document=document)


def _pending_summaries(rows: Sequence[Any]) -> Pending:
    """(inProgressJobs, queuedJobs) of `$aws/things/T/jobs/get`, from one thing's live
    executions in queue order."""
    summaries: dict[str, list[dict[str, Any]]] = {status: [] for status in ACTIVE}
    for row in rows:
        summary = {"jobId": row.job_id, "queuedAt": int(row.queued_at),
                   "lastUpdatedAt": int(row.last_updated_at),
                   "versionNumber": row.version_number, "executionNumber": row.execution_number}
        if row.started_at is not None:
            summary["startedAt"] = int(row.started_at)
        summaries[row.status].append(summary)
    return summaries[ExecStatus.IN_PROGRESS.value], summaries[ExecStatus.QUEUED.value]
