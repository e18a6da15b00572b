"""How SQLite runs the job statements a rollout repeats thousands of times, on a job of
many executions. Without statistics SQLite picks an index by the shape of the terms, and
a wrong pick walks every execution of the job at each use:

- a run of plain progress reports (jobs/progress.py) searched by (job, released_at) or
  (job, status) for each report: 60 ms for 64 reports on a 10,000-thing job, most of a
  rollout's tail; it must search the (job, thing, number) key once per report;
- whether a job still has a live execution (`JobService.maybe_complete`, asked each time
  executions of it end) must be answered from the (job, status) index (migration 0020):
  1.5 ms at the end of a 10,000-thing job, 0.13 ms with it."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, insert, text

from overair.core.jobs_wire import UpdateRequest
from overair.core.jobstates import ExecStatus
from overair.server import pki
from overair.server.jobs import progress
from overair.server.jobs.service import _ANY_LIVE, JobService, UpdateOutcome
from overair.server.registry.service import Registry
from overair.server.settings import Settings
from overair.server.storage.db import Database, migrate
from overair.server.storage.schema import Job, JobExecution

EXECUTIONS = 2000


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'plans.db'}")
    migrate(database.engine)
    with database.session() as s:
        s.add(Job(job_id="job-1", arn="arn:job/job-1", status="IN_PROGRESS", document={}, description="",
                  targets=[], target_selection="SNAPSHOT", config={}, created_at=0.0, last_updated_at=0.0))
        s.flush()
        s.execute(insert(JobExecution), [
            {"job_id": "job-1", "thing_name": f"thing-{i}", "status": "IN_PROGRESS", "status_details": {},
             "queued_at": 0.0, "last_updated_at": 0.0, "version_number": 2, "execution_number": 1,
             "released_at": 0.0} for i in range(EXECUTIONS)])
    yield database
    database.close()


def _plan(db: Database, sql: str, params: dict[str, Any]) -> str:
    with db.engine.connect() as connection:
        rows = connection.execute(text(f"EXPLAIN QUERY PLAN {sql}"), params).all()
    return " | ".join(str(row[-1]) for row in rows)


@pytest.mark.parametrize("kind", [progress._RUNNING, progress._STARTING])
def test_a_run_of_progress_reports_searches_each_execution_by_its_key(db: Database, kind: str) -> None:
    rows = 64
    params: dict[str, Any] = {"now": 1.0}
    for i in range(rows):
        params.update({f"j{i}": "job-1", f"t{i}": f"thing-{i * 7}", f"n{i}": None, f"c{i}": 1,
                       f"d{i}": json.dumps({"progress": i}), f"e{i}": None})
    plan = _plan(db, progress._run_statement("sqlite", kind, rows).text, params)
    assert "sqlite_autoindex_job_executions_1 (job_id=? AND thing_name=?)" in plan, plan


def test_the_live_execution_check_reads_the_job_status_index(db: Database) -> None:
    statement = _ANY_LIVE.params(job="job-1").compile(dialect=db.engine.dialect,
                                                      compile_kwargs={"literal_binds": True})
    plan = _plan(db, str(statement), {})
    assert "COVERING INDEX ix_job_executions_job_status" in plan, plan


def _plans_while(db: Database, run: Callable[[], object]) -> list[tuple[str, str]]:
    """(statement, SQLite's plan) of every SELECT sent while `run` runs."""
    sent: list[tuple[str, Any]] = []

    def before(_conn: object, _cursor: object, sql: str, parameters: Any, *_args: object) -> None:
        if sql.lstrip().upper().startswith("SELECT"):
            sent.append((sql, parameters))

    event.listen(db.engine, "before_cursor_execute", before)
    try:
        run()
    finally:
        event.remove(db.engine, "before_cursor_execute", before)
    with db.engine.connect() as connection:
        return [(sql, " | ".join(str(row[-1]) for row in connection.exec_driver_sql(
            f"EXPLAIN QUERY PLAN {sql}", parameters).all())) for sql, parameters in sent]


def test_a_run_of_ends_reads_each_execution_by_its_thing(db: Database, tmp_path: Path) -> None:
    """`JobService.update_many` (a run of SUCCEEDED from devices ending together) reads
    what it needs for the whole run; none of those reads may walk the job's executions
    (a (job, thing) IN list made SQLite scan the table)."""
    settings = Settings(data_dir=tmp_path, account_id="123456789012", database_url=str(db.engine.url))
    ca = pki.make_root_ca("plans CA", dt.datetime.now(dt.UTC))
    jobs = JobService(db, settings, Registry(db, settings, ca, time.time), time.time)
    done = UpdateRequest(status=ExecStatus.SUCCEEDED, status_details={"reason": "ok"}, expected_version=None,
                         execution_number=None, include_job_execution_state=False, include_job_document=False,
                         step_timeout_minutes=None, client_token="")
    results: list[object] = []
    plans = _plans_while(db, lambda: results.extend(
        jobs.update_many([(f"thing-{i * 7}", "job-1", done) for i in range(32)])))
    assert all(isinstance(result, UpdateOutcome) for result in results), results
    # The executions of the run's things (whether the job still has a live execution is
    # answered from the (job, status) index: the test above).
    executions = [plan for sql, plan in plans if "FROM job_executions" in sql and "thing_name IN" in sql]
    assert len(executions) == 2, plans  # the addressed executions, the live ones of the things ending
    for plan in executions:
        assert "ix_job_executions_thing_status (thing_name=?" in plan, plan
