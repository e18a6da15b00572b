"""What each thing may fetch now (threat N4, server/jobs/deliveries.py), on SQLite and
PostgreSQL: the stream and HTTP objects of the running jobs of its live released
executions, for many things in one read; what a job delivers is kept per job, and a job
id used again after a deletion is a new job."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, event

from overair.core.jobs_wire import UpdateRequest
from overair.core.jobstates import ExecStatus
from overair.server import pki
from overair.server.jobs.deliveries import HTTP_FILES, NOTHING, Delivered, delivered_by
from overair.server.jobs.service import JobService
from overair.server.registry.service import Registry
from overair.server.settings import Settings
from overair.server.storage.db import Database

IMAGE = ("firmware", "app.bin", "v-1")


@contextmanager
def _statements() -> Iterator[list[str]]:
    """The SQL any engine sends meanwhile (reads go to a read-only engine of their own)."""
    sent: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        sent.append(statement)

    event.listen(Engine, "before_cursor_execute", count)
    try:
        yield sent
    finally:
        event.remove(Engine, "before_cursor_execute", count)


class _Ticking:
    """A clock that moves on at every reading: two creations never share a time."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def _service(db: Database, tmp_path: Path, database_url: str,
             things: list[str]) -> tuple[JobService, Registry]:
    settings = Settings(data_dir=tmp_path, account_id="123456789012", database_url=database_url)
    clock = _Ticking()
    registry = Registry(db, settings, pki.make_root_ca("deliveries test CA", dt.datetime.now(dt.UTC)), clock)
    for thing in things:
        registry.create_thing(thing)
    return JobService(db, settings, registry, clock), registry


def _ota(jobs: JobService, registry: Registry, job_id: str, stream: str, things: list[str]) -> None:
    bucket, key, version = IMAGE
    jobs.create_job(job_id, [registry.thing_arn(t) for t in things], {"afr_ota": {"streamname": stream}},
                    config={HTTP_FILES: [{"fileId": 0, "bucket": bucket, "key": key, "version": version}]})


def _ended(status: ExecStatus) -> UpdateRequest:
    return UpdateRequest(status=status, status_details=None, expected_version=None, execution_number=None,
                         include_job_execution_state=False, include_job_document=False,
                         step_timeout_minutes=None, client_token="")


def test_n4_a_thing_may_fetch_what_its_live_executions_jobs_deliver_and_nothing_else(
        db: Database, tmp_path: Path, database_url: str) -> None:
    jobs, registry = _service(db, tmp_path, database_url, ["dev-1", "dev-2", "dev-3"])
    _ota(jobs, registry, "ota-1", "stream-1", ["dev-1", "dev-2"])
    jobs.update_execution("dev-2", "ota-1", _ended(ExecStatus.SUCCEEDED))
    found = jobs.deliveries.of_things(["dev-1", "dev-2", "dev-3"])
    assert found == {"dev-1": Delivered(frozenset({"stream-1"}), frozenset({IMAGE})),
                     "dev-2": NOTHING,  # its execution ended
                     "dev-3": NOTHING}  # never a target
    assert "stream-2" not in found["dev-1"].streams
    jobs.cancel_job("ota-1", force=True)
    assert jobs.deliveries.of_things(["dev-1"]) == {"dev-1": NOTHING}


def test_a_thing_with_two_live_jobs_may_fetch_what_either_delivers(
        db: Database, tmp_path: Path, database_url: str) -> None:
    jobs, registry = _service(db, tmp_path, database_url, ["dev-1"])
    _ota(jobs, registry, "ota-1", "stream-1", ["dev-1"])
    _ota(jobs, registry, "ota-2", "stream-2", ["dev-1"])
    assert jobs.deliveries.of_things(["dev-1"])["dev-1"].streams == {"stream-1", "stream-2"}


def test_n4_a_job_id_used_again_after_its_deletion_delivers_what_the_new_job_does(
        db: Database, tmp_path: Path, database_url: str) -> None:
    jobs, registry = _service(db, tmp_path, database_url, ["dev-1"])
    _ota(jobs, registry, "ota-1", "stream-old", ["dev-1"])
    assert jobs.deliveries.of_things(["dev-1"])["dev-1"].streams == {"stream-old"}  # now kept
    jobs.delete_job("ota-1", force=True)
    _ota(jobs, registry, "ota-1", "stream-new", ["dev-1"])
    assert jobs.deliveries.of_things(["dev-1"])["dev-1"].streams == {"stream-new"}


def test_many_things_are_decided_by_one_read_once_their_jobs_are_known(
        db: Database, tmp_path: Path, database_url: str) -> None:
    things = [f"dev-{i}" for i in range(40)]
    jobs, registry = _service(db, tmp_path, database_url, things)
    _ota(jobs, registry, "ota-1", "stream-1", things)
    jobs.deliveries.of_things(things[:1])  # the job's deliveries read and kept
    with _statements() as counted:
        found = jobs.deliveries.of_things(things)
    assert all(delivered.streams == {"stream-1"} for delivered in found.values())
    assert len([sql for sql in counted if sql.lstrip().upper().startswith("SELECT")]) == 1


def test_what_a_job_delivers_ignores_malformed_entries() -> None:
    config = {HTTP_FILES: [{"bucket": "b", "key": "k", "version": "v"}, {"bucket": "b"}, "junk"],
              "presigned_objects": [{"bucket": "b2", "key": "k2", "version": "v2", "placeholder": "x"}]}
    assert delivered_by({"afr_ota": {"streamname": "s"}}, config) == Delivered(
        frozenset({"s"}), frozenset({("b", "k", "v"), ("b2", "k2", "v2")}))
    assert delivered_by({"afr_ota": "not a map"}, {HTTP_FILES: "not a list"}) == NOTHING
    assert delivered_by({"afr_ota": {"streamname": 7}}, {}) == NOTHING
