"""Which committed changes become event messages: a listener on the database's
read-write sessions (storage/db.py `Database.listen`), so the services that change
things, groups, jobs and executions need no hook of their own.

Two ways a change reaches the database, and both are seen here:

- ORM objects changed and flushed (`before_flush`): a Thing or ThingGroup created,
  updated or deleted, a group membership added or removed, a Job whose status moved to
  COMPLETED or CANCELED or that was deleted, a JobExecution whose status moved to a
  terminal one or that was deleted (DeleteJobExecution);
- statements (`do_orm_execute`): an UPDATE of job executions' status (CancelJob, a
  job's abort, a dynamic group's withdrawal) has its rows read first, with the same
  WHERE clause in the same transaction; an INSERT of things or memberships (bulk
  registration, dynamic groups) or a DELETE of memberships is read from its parameters
  or rows.

Changes are gathered on the session and handed to the sink only after the transaction
commits (`after_commit`); a rolled-back transaction hands over nothing. Nothing here
waits: the sink only queues (server/events/publisher.py). Event types that are not
enabled cost one set lookup per change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import inspect, select
from sqlalchemy.orm import ORMExecuteState, Session

from overair.core.events import EXECUTION_OPERATIONS, PUBLISHED_TYPES
from overair.server.storage.db import after_commit
from overair.server.storage.schema import Job, JobExecution, Thing, ThingGroup, ThingGroupMember

_PENDING = "overair.events.pending"
_THING_FIELDS = ("thing_id", "thing_type_name", "attributes", "version")
_GROUP_FIELDS = ("description", "attributes", "version", "query_string")


@dataclass(frozen=True, slots=True)
class Change:
    """One event to publish: its type (core/events.py EVENT_TYPES), operation and the
    facts its payload needs, taken when the change was made."""

    event_type: str
    operation: str
    facts: dict[str, Any] = field(default_factory=dict)


class ChangeRecorder:
    def __init__(self, enabled_types: Callable[[], frozenset[str]],
                 sink: Callable[[list[Change]], None]) -> None:
        """`enabled_types`: the event types UpdateEventConfigurations enabled (cached:
        asked on every flush); `sink`: takes what a committed transaction changed."""
        self._enabled_types = enabled_types
        self._sink = sink

    def _enabled(self, event_type: str) -> bool:
        return event_type in self._enabled_types()

    # Listeners ---------------------------------------------------------------------
    def before_flush(self, session: Session, _context: Any, _instances: Any) -> None:
        if not self._enabled_types() & PUBLISHED_TYPES:
            return  # AWS's default: nothing to record, nothing to pay
        found: list[Change] = []
        for obj in session.new:
            found.extend(self._created(obj))
        for obj in session.dirty:
            if session.is_modified(obj, include_collections=False):
                found.extend(self._updated(obj))
        for obj in session.deleted:
            found.extend(self._deleted(obj))
        self._keep(session, found)

    def do_orm_execute(self, state: ORMExecuteState) -> None:
        if not (state.is_update or state.is_insert or state.is_delete) or not (
                self._enabled_types() & PUBLISHED_TYPES):
            return
        entity = (getattr(state.statement, "entity_description", None) or {}).get("entity")
        if entity is JobExecution and state.is_update and self._enabled("JOB_EXECUTION"):
            self._keep(state.session, self._executions_updated(state))
        elif entity is Thing and state.is_insert and self._enabled("THING"):
            self._keep(state.session, [_thing_change("CREATED", row) for row in _rows(state)])
        elif entity is ThingGroupMember and self._enabled("THING_GROUP_MEMBERSHIP"):
            if state.is_insert:
                self._keep(state.session, [_membership("ADDED", row["group_name"], row["thing_name"])
                                           for row in _rows(state)])
            elif state.is_delete:
                where = state.statement.whereclause  # type: ignore[attr-defined]
                query = select(ThingGroupMember.group_name, ThingGroupMember.thing_name)
                rows = state.session.execute(query if where is None else query.where(where)).all()
                self._keep(state.session, [_membership("REMOVED", group, thing) for group, thing in rows])

    # What each change is -------------------------------------------------------------
    def _created(self, obj: object) -> list[Change]:
        if isinstance(obj, Thing) and self._enabled("THING"):
            return [_thing_change("CREATED", _fields(obj, ("name", *_THING_FIELDS)))]
        if isinstance(obj, ThingGroup) and self._enabled("THING_GROUP"):
            return [_group_change("CREATED", obj)]
        if isinstance(obj, ThingGroupMember) and self._enabled("THING_GROUP_MEMBERSHIP"):
            return [_membership("ADDED", obj.group_name, obj.thing_name)]
        return []

    def _updated(self, obj: object) -> list[Change]:
        if isinstance(obj, Thing) and self._enabled("THING") and _changed(obj, _THING_FIELDS):
            return [_thing_change("UPDATED", _fields(obj, ("name", *_THING_FIELDS)))]
        if isinstance(obj, ThingGroup) and self._enabled("THING_GROUP") and _changed(obj, _GROUP_FIELDS):
            return [_group_change("UPDATED", obj)]
        if isinstance(obj, Job) and self._enabled("JOB"):
            before, after = _status_change(obj)
            if after == before:
                return []
            if after == "COMPLETED":
                return [_job_change("completed", obj)]
            if after == "CANCELED":
                # overair cancels in one transaction: AWS's start and end messages both follow it.
                return [_job_change("cancellation_in_progress", obj), _job_change("canceled", obj)]
            return []
        if isinstance(obj, JobExecution) and self._enabled("JOB_EXECUTION"):
            before, after = _status_change(obj)
            if after != before and after in EXECUTION_OPERATIONS:
                return [_execution(EXECUTION_OPERATIONS[after], obj.job_id, obj.thing_name, after,
                                   obj.status_details)]
        return []

    def _deleted(self, obj: object) -> list[Change]:
        if isinstance(obj, Thing) and self._enabled("THING"):
            return [_thing_change("DELETED", _fields(obj, ("name", *_THING_FIELDS)))]
        if isinstance(obj, ThingGroup) and self._enabled("THING_GROUP"):
            return [_group_change("DELETED", obj)]
        if isinstance(obj, ThingGroupMember) and self._enabled("THING_GROUP_MEMBERSHIP"):
            return [_membership("REMOVED", obj.group_name, obj.thing_name)]
        if isinstance(obj, Job) and self._enabled("JOB"):
            return [_job_change("deletion_in_progress", obj), _job_change("deleted", obj)]
        if isinstance(obj, JobExecution) and self._enabled("JOB_EXECUTION"):
            return [_execution("deleted", obj.job_id, obj.thing_name, obj.status, obj.status_details)]
        return []

    def _executions_updated(self, state: ORMExecuteState) -> list[Change]:
        statement: Any = state.statement
        values = getattr(statement, "_values", None)  # SQLAlchemy's own: the SET columns
        if values is not None and not any(getattr(column, "key", column) == "status" for column in values):
            return []  # e.g. a progress report (jobs/service.py report_progress): no status change
        status = statement.compile().params.get("status")
        if status not in EXECUTION_OPERATIONS:
            return []
        where = statement.whereclause
        query = select(JobExecution.job_id, JobExecution.thing_name, JobExecution.status,
                       JobExecution.status_details)
        rows = state.session.execute(query if where is None else query.where(where)).all()
        return [_execution(EXECUTION_OPERATIONS[status], job_id, thing, status, details)
                for job_id, thing, before, details in rows if before != status]

    def _keep(self, session: Session, changes: list[Change]) -> None:
        if not changes:
            return
        pending: list[Change] | None = session.info.get(_PENDING)
        if pending is None:
            pending = session.info[_PENDING] = []
            sink = self._sink

            def hand_over() -> None:
                session.info.pop(_PENDING, None)
                sink(pending)

            after_commit(session, hand_over)
        pending.extend(changes)


def forget_pending(session: Session, *_args: Any) -> None:
    """after_rollback: what a rolled-back transaction changed is never published."""
    session.info.pop(_PENDING, None)


def _rows(state: ORMExecuteState) -> list[dict[str, Any]]:
    params: Any = state.parameters
    if isinstance(params, list):
        return [dict(row) for row in params]
    return [dict(params)] if params else []


def _fields(obj: object, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in names}


def _changed(obj: object, names: tuple[str, ...]) -> bool:
    instance: Any = inspect(obj)
    attrs = instance.attrs
    return any(attrs[name].history.has_changes() for name in names)


def _status_change(obj: object) -> tuple[str | None, str | None]:
    instance: Any = inspect(obj)
    history = instance.attrs["status"].history
    if not history.has_changes():
        return None, None
    before = history.deleted[0] if history.deleted else None
    after = history.added[0] if history.added else None
    return before, after


def _thing_change(operation: str, row: dict[str, Any]) -> Change:
    return Change("THING", operation, {
        "thingName": row.get("name"), "thingId": row.get("thing_id"),
        "versionNumber": row.get("version") or 1,
        "thingTypeName": row.get("thing_type_name"), "attributes": dict(row.get("attributes") or {})})


def _group_change(operation: str, group: ThingGroup) -> Change:
    return Change("THING_GROUP", operation, {
        "thingGroupName": group.name, "thingGroupId": group.group_id, "versionNumber": group.version or 1,
        "description": group.description or "", "attributes": dict(group.attributes or {}),
        "dynamic": group.query_string is not None})


def _membership(operation: str, group: str, thing: str) -> Change:
    return Change("THING_GROUP_MEMBERSHIP", operation, {"thingGroupName": group, "thingName": thing})


def _job_change(operation: str, job: Job) -> Change:
    return Change("JOB", operation, {
        "jobId": job.job_id, "forceCanceled": bool(job.force_canceled),
        "targetSelection": job.target_selection,
        "targets": list(job.targets or []), "description": job.description or "",
        "comment": job.comment or "",
        "createdAt": job.created_at, "lastUpdatedAt": job.last_updated_at, "completedAt": job.completed_at})


def _execution(operation: str, job_id: str, thing: str, status: str, details: Any) -> Change:
    return Change("JOB_EXECUTION", operation, {
        "jobId": job_id, "thingName": thing, "status": status,
        "statusDetails": dict(details) if isinstance(details, dict) else {}})
