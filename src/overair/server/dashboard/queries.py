"""What the dashboard's pages read, straight from the database, a page at a time.

Every listing is paged in SQL (keyset on an indexed column, a bounded LIMIT) and every
summary is an aggregate the database computes (COUNT ... GROUP BY), so a page costs the
same for 100 devices as for 10,000: nothing here loads a whole table. Read-only; the
dashboard's one action (cancel) goes through the API's own handler (routes.py).
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from overair.core.jobstates import ExecStatus
from overair.server.audit.reader import _decision_condition, _glob_condition
from overair.server.jobs.live import RELEASED
from overair.server.jobs.service import IMAGE_VERSION
from overair.server.packages.inventory import DEFAULT_PACKAGE
from overair.server.storage.db import Database
from overair.server.storage.schema import (
    AuditEntry,
    InstalledSoftware,
    Job,
    JobExecution,
    OtaUpdate,
    SigningCertificate,
    Thing,
    ThingConnectivity,
    ThingGroup,
    ThingGroupMember,
    ThingShadow,
)

T = TypeVar("T")

PAGE_SIZE = 50
# Operator actions on one thing are found by its ARN, a column without an index: the
# device page looks for them among this many newest entries only (its own entries, by
# principal, are indexed and found in the whole log).
RECENT_AUDIT_WINDOW = 20_000
MAX_SHADOWS = 20
FIRMWARE_PACKAGE = DEFAULT_PACKAGE  # what an OTA update's image installs
EXPIRY_WARNING_DAYS = 30
STATES = [s.value for s in ExecStatus]
# The states a retry sends the update again for: the device does not run the new version
# (as `overair ota retry-failed`).
FAILED_STATES = (ExecStatus.FAILED.value, ExecStatus.REJECTED.value, ExecStatus.TIMED_OUT.value)


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_key: str | None  # the keyset value to ask for the next page with, None at the end


@dataclass(frozen=True, slots=True)
class FleetSummary:
    things: int
    groups: int
    # (firmware version, things running it), most common first: the server's record of
    # what each thing runs (server/packages/inventory.py, written when an OTA job succeeds)
    versions: list[tuple[str, int]]
    unknown_version: int  # things no OTA job of this server has updated
    executions: dict[str, int]  # execution state -> count, jobs still IN_PROGRESS only
    active_jobs: int
    online: int  # from the broker's connection log (gateway/presence.py)
    offline: int
    never_seen: int  # things the broker has not reported a connection of


@dataclass(frozen=True, slots=True)
class Presence:
    connected: bool | None  # None: never seen by the broker
    since: float | None
    disconnect_reason: str


@dataclass(frozen=True, slots=True)
class Software:
    package: str
    version: str
    since: float
    job_id: str


@dataclass(frozen=True, slots=True)
class ShadowRow:
    name: str
    reported: str  # JSON text, shown as text
    desired: str
    version: int
    updated_at: float


@dataclass(frozen=True, slots=True)
class ThingRow:
    name: str
    thing_type: str
    attributes: dict[str, Any]
    version: str  # "" when unknown
    presence: Presence
    last_activity: float | None  # the newest job execution update of the thing
    last_job: str


@dataclass(frozen=True, slots=True)
class JobRow:
    job_id: str
    status: str
    created_at: float
    description: str
    ota_update_id: str
    image_version: str
    counts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def done(self) -> int:
        return sum(n for state, n in self.counts.items() if ExecStatus(state).terminal)

    @property
    def failed(self) -> int:
        return sum(self.counts.get(state, 0) for state in FAILED_STATES)


@dataclass(frozen=True, slots=True)
class ExecutionRow:
    job_id: str
    thing_name: str
    status: str
    status_details: dict[str, Any]
    execution_number: int
    last_updated_at: float
    released: bool


@dataclass(frozen=True, slots=True)
class DeviceView:
    name: str
    arn: str
    thing_type: str
    attributes: dict[str, Any]
    created_at: float
    groups: list[str]
    version: str
    presence: Presence
    software: list[Software]
    shadows: list[ShadowRow]
    executions: list[ExecutionRow]
    audit: list[AuditRow]


@dataclass(frozen=True, slots=True)
class CertificateRow:
    arn: str
    subject: str
    serial: str
    not_after: float
    status: str
    key_backend: str
    development_only: bool
    days_left: float

    @property
    def expiring(self) -> bool:
        return self.days_left < EXPIRY_WARNING_DAYS


@dataclass(frozen=True, slots=True)
class AuditRow:
    seq: int
    at: float
    principal: str
    action: str
    resource: str
    decision: str
    statement: str
    source: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuditFilter:
    principal: str | None = None
    action: str | None = None
    decision: str | None = None
    since: float | None = None
    until: float | None = None


class DashboardQueries:
    def __init__(self, db: Database) -> None:
        self._db = db

    # Fleet ---------------------------------------------------------------------------
    def fleet_summary(self) -> FleetSummary:
        with self._db.reading() as s:
            things = s.scalar(select(func.count()).select_from(Thing)) or 0
            groups = s.scalar(select(func.count()).select_from(ThingGroup)) or 0
            versions = [(version, n) for version, n in s.execute(
                select(InstalledSoftware.version, func.count())
                .where(InstalledSoftware.package == FIRMWARE_PACKAGE)
                .group_by(InstalledSoftware.version).order_by(func.count().desc()).limit(PAGE_SIZE))]
            recorded = s.scalar(select(func.count()).select_from(InstalledSoftware)
                                .where(InstalledSoftware.package == FIRMWARE_PACKAGE)) or 0
            presence = {bool(connected): n for connected, n in s.execute(
                select(ThingConnectivity.connected, func.count()).group_by(ThingConnectivity.connected))}
            active = select(Job.job_id).where(Job.status == "IN_PROGRESS")
            executions = {state: n for state, n in s.execute(
                select(JobExecution.status, func.count()).where(JobExecution.job_id.in_(active), RELEASED)
                .group_by(JobExecution.status))}
            active_jobs = s.scalar(select(func.count()).select_from(Job)
                                   .where(Job.status == "IN_PROGRESS")) or 0
        online, offline = presence.get(True, 0), presence.get(False, 0)
        return FleetSummary(things, groups, versions, max(0, things - recorded), executions, active_jobs,
                            online, offline, max(0, things - online - offline))

    def things(self, after: str = "", prefix: str = "", limit: int = PAGE_SIZE) -> Page[ThingRow]:
        with self._db.reading() as s:
            statement = select(Thing.name, Thing.thing_type_name, Thing.attributes).order_by(Thing.name)
            if after:
                statement = statement.where(Thing.name > after)
            if prefix:
                statement = statement.where(Thing.name.startswith(prefix, autoescape=True))
            rows = list(s.execute(statement.limit(limit + 1)))
            more = len(rows) > limit
            rows = rows[:limit]
            names = [row.name for row in rows]
            versions: dict[str, str] = {}
            presence: dict[str, ThingConnectivity] = {}
            activity: dict[str, tuple[float, str]] = {}
            if names:
                versions = {thing: version for thing, version in s.execute(
                    select(InstalledSoftware.thing_name, InstalledSoftware.version)
                    .where(InstalledSoftware.thing_name.in_(names),
                           InstalledSoftware.package == FIRMWARE_PACKAGE))}
                presence = {row.thing_name: row for row in s.scalars(
                    select(ThingConnectivity).where(ThingConnectivity.thing_name.in_(names)))}
                latest = (select(JobExecution.thing_name, func.max(JobExecution.last_updated_at).label("at"))
                          .where(JobExecution.thing_name.in_(names), RELEASED)
                          .group_by(JobExecution.thing_name).subquery())
                for thing, at, job_id in s.execute(
                        select(latest.c.thing_name, latest.c.at, JobExecution.job_id)
                        .join(JobExecution, (JobExecution.thing_name == latest.c.thing_name)
                              & (JobExecution.last_updated_at == latest.c.at))):
                    activity[thing] = (at, job_id)
            items = [ThingRow(row.name, row.thing_type_name or "", dict(row.attributes or {}),
                              versions.get(row.name, ""), _presence(presence.get(row.name)),
                              *activity.get(row.name, (None, "")))
                     for row in rows]
        return Page(items, names[-1] if more and names else None)

    # Device --------------------------------------------------------------------------
    def device(self, name: str, thing_arn: str) -> DeviceView | None:
        with self._db.reading() as s:
            thing = s.get(Thing, name)
            if thing is None:
                return None
            groups = list(s.scalars(select(ThingGroupMember.group_name)
                                    .where(ThingGroupMember.thing_name == name)
                                    .order_by(ThingGroupMember.group_name).limit(PAGE_SIZE)))
            executions = [_execution(row) for row in s.scalars(
                select(JobExecution).where(JobExecution.thing_name == name)
                .order_by(JobExecution.queued_at.desc(), JobExecution.id.desc()).limit(PAGE_SIZE))]
            software = [Software(row.package, row.version, row.since, row.job_id) for row in s.scalars(
                select(InstalledSoftware).where(InstalledSoftware.thing_name == name)
                .order_by(InstalledSoftware.package).limit(PAGE_SIZE))]
            shadows = [ShadowRow(row.shadow_name or "(classic)", _json(row.reported), _json(row.desired),
                                 row.version, row.updated_at) for row in s.scalars(
                select(ThingShadow).where(ThingShadow.thing_name == name, ThingShadow.present)
                .order_by(ThingShadow.shadow_name).limit(MAX_SHADOWS))]
            own = list(s.scalars(select(AuditEntry).where(AuditEntry.principal == f"thing/{name}")
                                 .order_by(AuditEntry.seq.desc()).limit(PAGE_SIZE)))
            newest = s.scalar(select(func.max(AuditEntry.seq))) or 0
            about = list(s.scalars(select(AuditEntry).where(
                AuditEntry.seq > newest - RECENT_AUDIT_WINDOW,
                AuditEntry.resource.in_([thing_arn, f"client/{name}"]))
                .order_by(AuditEntry.seq.desc()).limit(PAGE_SIZE)))
            entries = sorted({row.seq: row for row in own + about}.values(), key=lambda row: -row.seq)
            firmware = next((item.version for item in software if item.package == FIRMWARE_PACKAGE), "")
            return DeviceView(thing.name, thing.arn, thing.thing_type_name or "",
                              dict(thing.attributes or {}), thing.created_at, groups, firmware,
                              _presence(s.get(ThingConnectivity, name)), software, shadows, executions,
                              [_audit(row) for row in entries[:PAGE_SIZE]])

    # Rollouts ------------------------------------------------------------------------
    def jobs(self, offset: int = 0, limit: int = PAGE_SIZE) -> tuple[list[JobRow], bool]:
        with self._db.reading() as s:
            rows = list(s.scalars(select(Job).order_by(Job.created_at.desc(), Job.job_id)
                                  .offset(offset).limit(limit + 1)))
            more = len(rows) > limit
            rows = rows[:limit]
            return [self._job_row(s, job, counts) for job, counts in
                    zip(rows, self._counts(s, [job.job_id for job in rows]), strict=True)], more

    def job(self, job_id: str) -> JobRow | None:
        with self._db.reading() as s:
            job = s.get(Job, job_id)
            if job is None:
                return None
            return self._job_row(s, job, self._counts(s, [job_id])[0])

    def _counts(self, s: Session, job_ids: list[str]) -> list[dict[str, int]]:
        counts: dict[str, dict[str, int]] = {job_id: {} for job_id in job_ids}
        if job_ids:
            for job_id, state, n in s.execute(
                    select(JobExecution.job_id, JobExecution.status, func.count())
                    .where(JobExecution.job_id.in_(job_ids), RELEASED)
                    .group_by(JobExecution.job_id, JobExecution.status)):
                counts[job_id][state] = n
        return [counts[job_id] for job_id in job_ids]

    def _job_row(self, s: Session, job: Job, counts: dict[str, int]) -> JobRow:
        ota = s.scalar(select(OtaUpdate.ota_update_id).where(OtaUpdate.job_id == job.job_id).limit(1))
        version = job.config.get(IMAGE_VERSION) if isinstance(job.config, dict) else None
        return JobRow(job.job_id, job.status, job.created_at, job.description, ota or "",
                      version if isinstance(version, str) else "", counts)

    def executions(self, job_id: str, status: str = "", after: str = "",
                   limit: int = PAGE_SIZE) -> Page[ExecutionRow]:
        with self._db.reading() as s:
            statement = (select(JobExecution).where(JobExecution.job_id == job_id)
                         .order_by(JobExecution.thing_name, JobExecution.execution_number))
            if status:
                statement = statement.where(JobExecution.status == status)
            if after:
                statement = statement.where(JobExecution.thing_name > after)
            rows = [_execution(row) for row in s.scalars(statement.limit(limit + 1))]
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(rows, rows[-1].thing_name if more and rows else None)

    def failed_things(self, job_id: str) -> list[str]:
        """Things whose execution of the job failed and that have none queued, running or
        succeeded since (an execution retried by the job's own retry config)."""
        with self._db.reading() as s:
            settled = select(JobExecution.thing_name).where(
                JobExecution.job_id == job_id,
                JobExecution.status.not_in(
                    (*FAILED_STATES, ExecStatus.CANCELED.value, ExecStatus.REMOVED.value)))
            return list(s.scalars(select(JobExecution.thing_name).distinct().where(
                JobExecution.job_id == job_id, JobExecution.status.in_(FAILED_STATES),
                JobExecution.thing_name.not_in(settled)).order_by(JobExecution.thing_name)))

    def ota_request(self, ota_update_id: str) -> dict[str, Any] | None:
        """The CreateOTAUpdate request as the OTA Update Manager stored and acts on it."""
        with self._db.reading() as s:
            row = s.get(OtaUpdate, ota_update_id)
            return dict(row.request) if row is not None else None

    def free_retry_id(self, ota_update_id: str) -> str:
        """`<id>-retry-<n>` with the first n not taken (as `overair ota retry-failed`)."""
        stem = f"{ota_update_id}-retry-"
        with self._db.reading() as s:
            taken = set(s.scalars(select(OtaUpdate.ota_update_id).where(
                OtaUpdate.ota_update_id.startswith(stem, autoescape=True))))
        return next(f"{stem}{n}" for n in range(1, len(taken) + 2) if f"{stem}{n}" not in taken)

    # Signing certificates ------------------------------------------------------------
    def certificates(self, now: float) -> list[CertificateRow]:
        with self._db.reading() as s:
            rows = list(s.scalars(select(SigningCertificate).order_by(SigningCertificate.not_after)
                                  .limit(1000)))
            return [CertificateRow(row.arn, row.subject, row.serial, row.not_after,
                                   "REVOKED" if row.revoked_at is not None else row.status, row.key_backend,
                                   row.development_only, (row.not_after - now) / 86400) for row in rows]

    # Audit ---------------------------------------------------------------------------
    def audit(self, wanted: AuditFilter, before: int | None = None, limit: int = PAGE_SIZE) -> Page[AuditRow]:
        """Newest first. Patterns may use * and ? as `overair audit list` (audit/reader.py)."""
        conditions: list[ColumnElement[bool]] = []
        if wanted.principal:
            conditions.append(_glob_condition(AuditEntry.principal, wanted.principal))
        if wanted.action:
            conditions.append(_glob_condition(AuditEntry.action, wanted.action))
        if wanted.decision:
            conditions.append(_decision_condition(wanted.decision))
        if wanted.since is not None:
            conditions.append(AuditEntry.at >= wanted.since)
        if wanted.until is not None:
            conditions.append(AuditEntry.at <= wanted.until)
        if before is not None:
            conditions.append(AuditEntry.seq < before)
        with self._db.reading() as s:
            rows = [_audit(row) for row in s.scalars(
                select(AuditEntry).where(*conditions).order_by(AuditEntry.seq.desc()).limit(limit + 1))]
        more = len(rows) > limit
        rows = rows[:limit]
        # LIKE is only a prefilter (case-insensitive on SQLite): the exact glob decides.
        shown = [row for row in rows
                 if _glob(wanted.principal, row.principal) and _glob(wanted.action, row.action)]
        return Page(shown, str(rows[-1].seq) if more and rows else None)


def _glob(pattern: str | None, value: str) -> bool:
    return not pattern or fnmatch.fnmatchcase(value, pattern)


def _presence(row: ThingConnectivity | None) -> Presence:
    if row is None:
        return Presence(None, None, "")
    return Presence(bool(row.connected), row.changed_at, row.disconnect_reason)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(", ", ": ")) if value else ""


def _execution(row: JobExecution) -> ExecutionRow:
    return ExecutionRow(row.job_id, row.thing_name, row.status, dict(row.status_details or {}),
                        row.execution_number, row.last_updated_at, row.released_at is not None)


def _audit(row: AuditEntry) -> AuditRow:
    return AuditRow(row.seq, row.at, row.principal, row.action, row.resource, row.decision, row.statement,
                    row.source, dict(row.detail or {}))


def iso(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
