"""Plain progress reports written to the database: one statement for a whole run.

A plain progress report (`JobService.is_plain_progress`: IN_PROGRESS, no expectedVersion
or step timeout, nothing asked back) replaces the execution's statusDetails, bumps its
versionNumber and its last-update time, and touches nothing else; sent to a QUEUED
execution it also starts it (IN_PROGRESS, started now, the job's in-progress timer), as
the full update would. Most of a rollout's status updates are such reports (a FreeRTOS
device starts its execution with the first and sends one every 25 blocks), and a device
worker hands them over in runs (gateway/thing_workers.py). A run costs one statement for
the running executions and, if some reports found none, one read of their jobs and one
statement for the QUEUED ones.

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

import functools
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import TextClause, bindparam, select, text
from sqlalchemy.engine import Connection

from overair.core import rollout
from overair.core.jobs_wire import UpdateRequest
from overair.core.jobstates import ExecStatus
from overair.server.storage.schema import Job

# (thing, job id, request): one report as the device service hands it over.
Report = tuple[str, str, UpdateRequest]


# Rows of VALUES per statement: statements are cached by row count (SQLAlchemy's own
# VALUES construct was compiled afresh at every call: 13 ms for 30 rows, against 1.6 ms
# for this text, all of it holding the interpreter). A run of one (a device's single
# report) is the same statement with one row.
_MAX_ROWS = 64


def apply(connection: Connection, reports: Sequence[Report], now: float) -> list[bool]:
    """Write `reports` in the caller's transaction, in order; one flag each: applied, or
    not (no released live execution of that job, with that number if given; the caller
    then takes the full path, which answers every error). A report to a QUEUED execution
    starts it, as `JobService.update_execution` would: IN_PROGRESS, started now, timed
    by the job's in-progress timeout."""
    rows = _merged(reports)
    if rows is None:  # an execution addressed two ways: one report at a time
        return [bool(_write(connection, _merged([report]) or [], now)) for report in reports]
    written = _write(connection, rows, now)
    return [(job, thing) in written for thing, job, _request in reports]


def _write(connection: Connection, rows: list[_Row], now: float) -> set[tuple[str, str]]:
    """The (job, thing) of the rows written: running executions first (one statement),
    then the QUEUED ones among the rest (their jobs' timeouts read, one more)."""
    written = _run(connection, _RUNNING, rows, now, {})
    rest = [row for row in rows if (row[0], row[1]) not in written]
    if rest:
        limits = {job: rollout.in_progress_timeout((config or {}).get("timeoutConfig"))
                  for job, config in connection.execute(_JOB_CONFIGS, {"jobs": sorted({r[0] for r in rest})})}
        written |= _run(connection, _STARTING, rest, now, limits)
    return written


def _run(connection: Connection, kind: str, rows: list[_Row], now: float,
         limits: dict[str, float | None]) -> set[tuple[str, str]]:
    dialect = connection.dialect.name
    written: set[tuple[str, str]] = set()
    for start in range(0, len(rows), _MAX_ROWS):
        chunk = rows[start:start + _MAX_ROWS]
        params: dict[str, Any] = {"now": now}
        for i, (job, thing, number, details, count) in enumerate(chunk):
            params.update({f"j{i}": job, f"t{i}": thing, f"n{i}": number, f"c{i}": count,
                           f"d{i}": None if details is None else json.dumps(details)})
            if kind == _STARTING:
                limit = limits.get(job)
                params[f"e{i}"] = None if limit is None else now + limit
        result = connection.execute(_run_statement(dialect, kind, len(chunk)), params)
        written.update((str(job), str(thing)) for job, thing in result)
    return written


_RUNNING, _STARTING = "running", "starting"
_JOB_CONFIGS = select(Job.job_id, Job.config).where(Job.job_id.in_(bindparam("jobs", expanding=True)))


@functools.cache
def _run_statement(dialect: str, kind: str, rows: int) -> TextClause:
    """`rows` executions' reports in one UPDATE: VALUES (job, thing, number, details as
    JSON text or NULL, count[, deadline]), joined on the execution; the executions written
    come back. `_RUNNING`: IN_PROGRESS ones. `_STARTING`: QUEUED ones, which become
    IN_PROGRESS, started now, with the deadline given (the job's in-progress timeout).
    PostgreSQL needs the VALUES columns typed (a column of NULLs would be text)."""
    def typed(name: str, sql_type: str) -> str:
        return f"CAST(:{name} AS {sql_type})" if dialect == "postgresql" else f":{name}"
    starting = kind == _STARTING
    columns = "job, thing, number, details, count" + (", deadline" if starting else "")
    listed = ", ".join(f"(:j{i}, :t{i}, {typed(f'n{i}', 'INTEGER')}, {typed(f'd{i}', 'JSON')}, "
                       f"{typed(f'c{i}', 'INTEGER')}"
                       + (f", {typed(f'e{i}', 'DOUBLE PRECISION')}" if starting else "") + ")"
                       for i in range(rows))
    start = (f"status = '{ExecStatus.IN_PROGRESS.value}', started_at = :now, timeout_at = reports.deadline, "
             if starting else "")
    status = ExecStatus.QUEUED.value if starting else ExecStatus.IN_PROGRESS.value
    # SQLite, which has no statistics here, searched the executions by an index on
    # (job, released_at) or (job, status) for each report, i.e. walked all the job's
    # executions per row of VALUES: 60 ms for 64 reports on a 10,000-thing job, most of
    # a rollout's tail (py-spy, bench/fleet.py). A unary + keeps those two terms from
    # choosing an index ("Disqualifying WHERE clause terms", SQLite's query planner
    # documentation), so each report is one search of the (job, thing, number) key.
    # PostgreSQL plans from its statistics and has no unary + for text.
    keep_off = "+" if dialect == "sqlite" else ""
    # Only placeholders and constants are formatted in; every value is a bound parameter.
    sql = (f"WITH reports({columns}) AS (VALUES {listed}) "  # noqa: S608
           f"UPDATE job_executions SET {start}"
           "version_number = job_executions.version_number + reports.count, "
           "status_details = COALESCE(reports.details, job_executions.status_details), "
           "last_updated_at = :now "
           "FROM reports WHERE job_executions.job_id = reports.job "
           "AND job_executions.thing_name = reports.thing "
           f"AND {keep_off}job_executions.released_at IS NOT NULL "
           f"AND {keep_off}job_executions.status = '{status}' "
           "AND (reports.number IS NULL OR job_executions.execution_number = reports.number) "
           "RETURNING job_id, thing_name")
    return text(sql)


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
