"""Plain progress reports written to the database: one statement for a whole run.

A plain progress report (`JobService.is_plain_progress`: IN_PROGRESS staying IN_PROGRESS,
nothing asked back) replaces the execution's statusDetails, bumps its versionNumber and
its last-update time, and touches nothing else. Most of a rollout's status updates are
such reports (a FreeRTOS device sends one every 25 blocks), and a device worker hands
them over in runs (gateway/thing_workers.py).

Why one statement for the run and not one per report: on SQLite every statement step
gives up the interpreter lock while the transaction holds the database's one write lock,
and under load getting the interpreter back is what a step costs (up to the 5 ms switch
interval while the event loop and the block workers run), so the write lock is held for
a time that grows with the number of statements, not rows (bench/job_updates.py,
docs/scaling.md). `UPDATE ... FROM (VALUES ...) RETURNING` (SQLite 3.35+, PostgreSQL)
applies a run of reports from many devices in one step.

Several reports of one execution in a run become one row of the VALUES list with the
same effect as applying them in order: versionNumber moves on by their count and the
statusDetails are those of the last one that had any.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    JSON,
    Connection,
    Integer,
    String,
    Table,
    bindparam,
    cast,
    column,
    func,
    or_,
    update,
    values,
)

from overair.core.jobs_wire import UpdateRequest
from overair.core.jobstates import ExecStatus
from overair.server.storage.schema import JobExecution

_EXECUTIONS: Table = JobExecution.__table__  # type: ignore[assignment]
_RELEASED = _EXECUTIONS.c.released_at.is_not(None)
_IN_PROGRESS = _EXECUTIONS.c.status == ExecStatus.IN_PROGRESS.value

# (thing, job id, request): one report as the device service hands it over.
Report = tuple[str, str, UpdateRequest]


def _one_statement(*, details: bool) -> Any:
    """One report's UPDATE, built once (building and keying a statement per call was most
    of a report's cost). The execution a request without executionNumber addresses is the
    latest; an IN_PROGRESS one is always the latest (a retry is created only after the
    previous execution ended), so matching IN_PROGRESS finds exactly it."""
    number = bindparam("number", type_=_EXECUTIONS.c.execution_number.type)
    changes: dict[str, Any] = {"last_updated_at": bindparam("now", type_=_EXECUTIONS.c.last_updated_at.type),
                               "version_number": _EXECUTIONS.c.version_number + 1}
    if details:
        changes["status_details"] = bindparam("details", type_=_EXECUTIONS.c.status_details.type)
    return (update(_EXECUTIONS)
            .where(_EXECUTIONS.c.job_id == bindparam("job"), _EXECUTIONS.c.thing_name == bindparam("thing"),
                   _RELEASED, _IN_PROGRESS, or_(number.is_(None), _EXECUTIONS.c.execution_number == number))
            .values(**changes))


_ONE_WITH_DETAILS = _one_statement(details=True)
_ONE_KEEPING_DETAILS = _one_statement(details=False)
# VALUES columns of the run statement. NULL details (no report of the execution carried
# any) must stay SQL NULL for the COALESCE, not become the JSON text 'null'.
_VALUE_COLUMNS = (column("job", String), column("thing", String), column("number", Integer),
                  column("details", JSON(none_as_null=True)), column("count", Integer))


def apply(connection: Connection, reports: Sequence[Report], now: float) -> list[bool]:
    """Write `reports` in the caller's transaction, in order; one flag each: applied, or
    not (no released IN_PROGRESS execution of that job, with that number if given)."""
    rows = _merged(reports)
    if len(reports) == 1 or rows is None:
        return [_apply_one(connection, report, now) for report in reports]
    run = values(*_VALUE_COLUMNS, name="reports").data(rows).cte("reports")
    statement = (update(_EXECUTIONS)
                 .where(_EXECUTIONS.c.job_id == run.c.job, _EXECUTIONS.c.thing_name == run.c.thing,
                        _RELEASED, _IN_PROGRESS,
                        # The cast: on PostgreSQL a VALUES column of NULLs only is text.
                        or_(run.c.number.is_(None),
                            _EXECUTIONS.c.execution_number == cast(run.c.number, Integer)))
                 .values(version_number=_EXECUTIONS.c.version_number + run.c.count,
                         status_details=func.coalesce(run.c.details, _EXECUTIONS.c.status_details),
                         last_updated_at=bindparam("now", type_=_EXECUTIONS.c.last_updated_at.type))
                 .returning(_EXECUTIONS.c.job_id, _EXECUTIONS.c.thing_name))
    written = {(job, thing) for job, thing in connection.execute(statement, {"now": now})}
    return [(job, thing) in written for thing, job, _request in reports]


# (job, thing, execution number, statusDetails, count of reports)
_Row = tuple[str, str, int | None, dict[str, Any] | None, int]


def _merged(reports: Sequence[Report]) -> list[_Row] | None:
    """One VALUES row per execution: (job, thing, number, last details given, count).
    None when one job and thing come with different execution numbers (a device mixing
    them: each report then has its own statement, as their outcomes may differ)."""
    merged: dict[tuple[str, str], list[Any]] = {}
    for thing, job, request in reports:
        row = merged.get((job, thing))
        if row is None:
            merged[(job, thing)] = [job, thing, request.execution_number, request.status_details, 1]
            continue
        if row[2] != request.execution_number:
            return None
        row[4] += 1
        if request.status_details is not None:
            row[3] = request.status_details
    return [tuple(row) for row in merged.values()]


def _apply_one(connection: Connection, report: Report, now: float) -> bool:
    thing, job, request = report
    params: dict[str, Any] = {"job": job, "thing": thing, "now": now, "number": request.execution_number}
    statement = _ONE_KEEPING_DETAILS
    if request.status_details is not None:
        params["details"] = request.status_details
        statement = _ONE_WITH_DETAILS
    return getattr(connection.execute(statement, params), "rowcount", 0) == 1
