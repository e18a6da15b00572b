"""Metadata storage on both supported databases: every test runs once on SQLite and
once on PostgreSQL (see `database_url` in conftest.py), through the real services.

What a user relies on: the schema migrates (and re-migrates) cleanly, each service's
rows round-trip, uniqueness and optimistic concurrency hold under concurrent writers,
and a failed operation leaves nothing half-written.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509
from sqlalchemy import event, inspect, text

from overair.core.jobs_wire import UpdateRequest
from overair.core.jobstates import ExecStatus
from overair.server import pki
from overair.server.api.contract import ApiError
from overair.server.audit.log import AuditLog
from overair.server.iam.identity import IdentityStore
from overair.server.jobs.service import IMAGE_VERSION, JobService, JobsMqttError, UpdateOutcome
from overair.server.registry.service import Registry
from overair.server.sealing import Sealer, create_master_key
from overair.server.settings import Settings
from overair.server.storage.db import Database, migrate
from overair.server.storage.objects import ObjectStore
from tests.blob_helpers import read_stored, stored_names, write_stored
from tests.conftest import BlobFactory
from tests.row_counting import transactions

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(data_dir=tmp_path, account_id="123456789012", database_url=database_url)


@pytest.fixture
def registry(db: Database, settings: Settings) -> Registry:
    return Registry(db, settings, pki.make_root_ca("storage test fleet CA", NOW), time.time)


def _update(status: ExecStatus, expected_version: int | None = None,
            details: dict[str, str] | None = None, execution_number: int | None = None) -> UpdateRequest:
    return UpdateRequest(status=status, status_details=details, expected_version=expected_version,
                         execution_number=execution_number, include_job_execution_state=False,
                         include_job_document=False, step_timeout_minutes=None, client_token="")


def test_migrations_create_the_schema_and_are_idempotent(db: Database) -> None:
    tables = set(inspect(db.engine).get_table_names())
    assert {"things", "job_executions", "jobs", "object_versions", "alembic_version"} <= tables
    with db.engine.connect() as connection:
        head = connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    migrate(db.engine)  # a second start of the server
    with db.engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == head


def test_registry_round_trips_things_groups_and_access(registry: Registry) -> None:
    registry.create_thing("dev-1", {"model": "x1"})
    with pytest.raises(ApiError) as caught:
        registry.create_thing("dev-1", {"model": "other"})
    assert caught.value.code == "ResourceAlreadyExistsException"
    registry.create_group("fleet", "all of them")
    registry.add_to_group("fleet", "dev-1")
    assert registry.things_in_group("fleet") == ["dev-1"]
    assert registry.describe_thing("dev-1").attributes == {"model": "x1"}

    cert = registry.create_keys_and_certificate(True, "dev-1")
    assert registry.broker_access().grants == {}  # not attached: grants nothing
    registry.attach_principal("dev-1", cert.arn)
    identity = pki.broker_username(x509.load_pem_x509_certificate(cert.pem.encode()).subject)
    assert registry.broker_access().grants == {identity: frozenset({"dev-1"})}
    registry.update_certificate(cert.certificate_id, "REVOKED")
    assert registry.broker_access().grants == {}
    assert registry.revoked_serials() == [x509.load_pem_x509_certificate(cert.pem.encode()).serial_number]


def test_failed_operation_leaves_nothing_half_written(registry: Registry) -> None:
    registry.create_thing("dev-1")
    cert = registry.create_keys_and_certificate(True, "dev-1")
    registry.attach_principal("dev-1", cert.arn)
    with pytest.raises(ApiError):
        registry.delete_thing("dev-1")  # still has a principal: refused as a whole
    assert registry.describe_thing("dev-1").name == "dev-1"
    assert registry.thing_principals("dev-1") == [cert.arn]


def _jobs(db: Database, settings: Settings, registry: Registry, things: list[str]) -> JobService:
    for thing in things:
        registry.create_thing(thing)
    jobs = JobService(db, settings, registry, time.time)
    jobs.create_job("job-1", [registry.thing_arn(t) for t in things], {"operation": "x"})
    return jobs


def test_job_executions_follow_the_state_table_and_versions(db: Database, settings: Settings,
                                                            registry: Registry) -> None:
    jobs = _jobs(db, settings, registry, ["dev-1"])
    view = jobs.next_execution("dev-1")
    assert view is not None
    assert (view.job_id, view.status, view.version_number) == ("job-1", ExecStatus.QUEUED, 1)
    jobs.update_execution("dev-1", "job-1", _update(ExecStatus.IN_PROGRESS, 1, {"receive": "1/4"}))
    with pytest.raises(JobsMqttError) as stale:
        jobs.update_execution("dev-1", "job-1", _update(ExecStatus.IN_PROGRESS, 1))
    assert stale.value.code == "VersionMismatch"
    outcome = jobs.update_execution("dev-1", "job-1", _update(ExecStatus.SUCCEEDED, 2, {"reason": "ok"}))
    assert outcome.next_changed
    with pytest.raises(JobsMqttError) as final:
        jobs.update_execution("dev-1", "job-1", _update(ExecStatus.FAILED))
    assert final.value.code == "InvalidStateTransition"  # AWS: an update of an ended execution
    row = jobs.describe_execution("job-1", "dev-1")
    assert (row.status, row.version_number, row.status_details) == ("SUCCEEDED", 3, {"reason": "ok"})
    job, counts = jobs.describe_job("job-1")
    assert job.status == "COMPLETED"
    assert counts.get("SUCCEEDED") == 1


def test_notifying_many_things_at_once_reads_what_one_thing_at_a_time_would(
        db: Database, settings: Settings, registry: Registry) -> None:
    """`next_and_pending` (one read for a job's whole target list) answers for each thing
    exactly as `next_execution` and `pending_for_device` do: no job, one queued, one in
    progress ahead of an older queued one, an ended one that no longer counts."""
    things = ["idle", "queued", "running", "ended"]
    jobs = _jobs(db, settings, registry, things[1:])
    registry.create_thing("idle")
    jobs.create_job("job-2", [registry.thing_arn("running")], {"operation": "y"})
    jobs.update_execution("running", "job-2", _update(ExecStatus.IN_PROGRESS, None, {"step": "1"}))
    jobs.update_execution("ended", "job-1", _update(ExecStatus.SUCCEEDED, None, {"reason": "ok"}))
    found = jobs.next_and_pending(things)
    assert list(found) == things
    for thing in things:
        assert found[thing].next == jobs.next_execution(thing), thing
        assert (found[thing].in_progress, found[thing].queued) == jobs.pending_for_device(thing), thing
    assert found["idle"].next is None
    assert found["ended"].next is None
    running = found["running"].next
    assert running is not None
    assert (running.job_id, running.status) == ("job-2", ExecStatus.IN_PROGRESS)
    assert [j["jobId"] for j in found["running"].queued] == ["job-1"]


def test_notifying_a_jobs_targets_reads_a_fixed_number_of_statements_not_one_per_thing(
        db: Database, settings: Settings, registry: Registry) -> None:
    """Notifying the targets of a new job must not read the job again for every thing
    (the session's identity map drops objects nobody refers to): the statements issued
    for 60 things are those issued for 3."""
    jobs = _jobs(db, settings, registry, [f"n-{i}" for i in range(60)])
    statements: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(statement)

    engines = {db.engine, db.read_engine}
    for engine in engines:
        event.listen(engine, "before_cursor_execute", count)
    try:
        few = jobs.next_and_pending([f"n-{i}" for i in range(3)])
        for_few = len(statements)
        statements.clear()
        many = jobs.next_and_pending([f"n-{i}" for i in range(60)])
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", count)
    assert all(found.next is not None for found in (*few.values(), *many.values()))
    assert len(statements) == for_few, statements


def test_a_progress_report_takes_the_short_path_with_the_same_effect_as_a_full_update(
        db: Database, settings: Settings, registry: Registry) -> None:
    """`report_progress` (one UPDATE) leaves an execution exactly as `update_execution`
    does, and declines everything else, which then goes the full way and is answered."""
    jobs = _jobs(db, settings, registry, ["short", "full"])
    for thing in ("short", "full"):
        jobs.update_execution(thing, "job-1", _update(ExecStatus.IN_PROGRESS, None, {"receive": "1/9"}))
    progress = _update(ExecStatus.IN_PROGRESS, None, {"receive": "25/9"})
    assert jobs.report_progress("short", "job-1", progress)
    jobs.update_execution("full", "job-1", progress)
    short, full = jobs.describe_execution("job-1", "short"), jobs.describe_execution("job-1", "full")
    assert (short.status, short.status_details, short.version_number, short.timeout_at) == (
        full.status, full.status_details, full.version_number, full.timeout_at)
    assert short.version_number == 3
    # Declined: a version check, a state change, an unknown job.
    assert not jobs.report_progress("short", "job-1", _update(ExecStatus.IN_PROGRESS, 3, {"receive": "x"}))
    assert not jobs.report_progress("short", "job-1", _update(ExecStatus.SUCCEEDED, None, {"reason": "ok"}))
    assert not jobs.report_progress("short", "no-such-job", progress)
    assert jobs.describe_execution("job-1", "short").version_number == 3
    # A QUEUED execution is started by the short path as by the full update: IN_PROGRESS,
    # started now, timed by the job's in-progress timeout.
    for thing in ("queued-short", "queued-full"):
        registry.create_thing(thing)
    jobs.create_job("job-q", [registry.thing_arn("queued-short"), registry.thing_arn("queued-full")],
                    {"operation": "x"}, config={"timeoutConfig": {"inProgressTimeoutInMinutes": 5}})
    assert jobs.report_progress("queued-short", "job-q", progress)
    jobs.update_execution("queued-full", "job-q", progress)
    short = jobs.describe_execution("job-q", "queued-short")
    full = jobs.describe_execution("job-q", "queued-full")
    assert (short.status, short.status_details, short.version_number) == (
        "IN_PROGRESS", {"receive": "25/9"}, 2)
    assert (short.status, short.status_details, short.version_number) == (
        full.status, full.status_details, full.version_number)
    for row in (short, full):
        assert row.started_at is not None
        assert row.timeout_at == pytest.approx(row.started_at + 300, abs=2)


def test_concurrent_updates_with_the_same_expected_version_have_exactly_one_winner(
        db: Database, settings: Settings, registry: Registry) -> None:
    """Optimistic concurrency under real contention: 8 writers race for version 1."""
    jobs = _jobs(db, settings, registry, ["dev-1"])
    barrier = threading.Barrier(8)

    def attempt(i: int) -> str:
        barrier.wait()
        try:
            jobs.update_execution("dev-1", "job-1",
                                  _update(ExecStatus.IN_PROGRESS, 1, {"writer": str(i)}))
        except JobsMqttError as exc:
            return exc.code
        return "won"

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(attempt, range(8)))
    assert results.count("won") == 1
    assert set(results) - {"won"} <= {"VersionMismatch"}
    assert jobs.describe_execution("job-1", "dev-1").version_number == 2


def test_many_devices_updating_at_once_lose_no_update(db: Database, settings: Settings,
                                                     registry: Registry) -> None:
    things = [f"dev-{i}" for i in range(20)]
    jobs = _jobs(db, settings, registry, things)

    def run_device(thing: str) -> None:
        for step in range(1, 6):
            jobs.update_execution(thing, "job-1", _update(ExecStatus.IN_PROGRESS, step,
                                                          {"receive": f"{step}/5"}))
        jobs.update_execution(thing, "job-1", _update(ExecStatus.SUCCEEDED, 6))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(run_device, things))
    for thing in things:
        row = jobs.describe_execution("job-1", thing)
        assert (row.status, row.version_number, row.status_details) == ("SUCCEEDED", 7, {"receive": "5/5"})
    assert jobs.describe_job("job-1")[0].status == "COMPLETED"


def test_object_versions_round_trip_and_corruption_is_never_served(db: Database, tmp_path: Path,
                                                                    blob_backend: BlobFactory) -> None:
    objects = ObjectStore(db, tmp_path / "objects", blobs=blob_backend(tmp_path / "objects"))
    objects.create_bucket("firmware")
    objects.set_versioning("firmware", "Enabled")
    first = objects.put_object("firmware", "app.bin", b"version one")
    second = objects.put_object("firmware", "app.bin", b"version two")
    assert first.version_id != second.version_id
    assert objects.get_object("firmware", "app.bin", first.version_id)[1] == b"version one"
    assert objects.get_object("firmware", "app.bin")[1] == b"version two"
    stored = [name for name in stored_names(objects.blobs, "data/")
              if read_stored(objects.blobs, name) == b"version one"]
    assert len(stored) == 1
    write_stored(objects.blobs, stored[0], b"version 0ne")  # bit rot, or tampering in storage
    with pytest.raises(ApiError) as caught:
        objects.get_object("firmware", "app.bin", first.version_id)
    assert caught.value.status >= 500


def test_access_keys_are_sealed_and_audit_entries_kept(db: Database, settings: Settings,
                                                      tmp_path: Path, database_url: str) -> None:
    create_master_key(tmp_path / "master.key")
    identity = IdentityStore(db, Sealer.from_file(tmp_path / "master.key"), settings, time.time)
    identity.create_user("alice")
    key, secret = identity.create_access_key("alice")
    found = identity.lookup(key.access_key_id)
    assert found is not None
    assert found.secret_access_key == secret
    with db.engine.connect() as connection:
        raw = " ".join(str(v) for row in connection.execute(text("SELECT * FROM access_keys")) for v in row)
    assert secret not in raw  # only the sealed form is stored
    audit = AuditLog(db, time.time)
    audit.record(principal="user/alice", action="iot:CreateJob", resource="job/j1", decision="ALLOW")
    with db.engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM audit_log")).scalar_one() == 1


def test_a_run_of_progress_reports_from_many_things_is_one_statement_with_one_by_ones_effect(
        db: Database, settings: Settings, registry: Registry) -> None:
    """jobs/progress.py: reports of several things, and several of one execution, written
    by one UPDATE for the running executions and one (after one read of the jobs) for the
    QUEUED ones they start; each flag and each execution as applying them one at a time
    gives. Each thing has a twin that gets the same reports one by one."""
    started = ["a", "b", "c"]
    queued = ["q", "r"]
    jobs = _jobs(db, settings, registry, [*started, *queued, *(f"twin-{t}" for t in (*started, *queued))])
    for thing in (*started, *(f"twin-{t}" for t in started)):
        jobs.update_execution(thing, "job-1", _update(ExecStatus.IN_PROGRESS, None, {"receive": "1/9"}))
    run = [("a", _update(ExecStatus.IN_PROGRESS, None, {"receive": "2/9"})),
           ("b", _update(ExecStatus.IN_PROGRESS)),  # no details: kept
           ("q", _update(ExecStatus.IN_PROGRESS, None, {"receive": "1/9"})),  # QUEUED: started
           ("a", _update(ExecStatus.IN_PROGRESS, None, {"receive": "3/9"})),
           ("c", _update(ExecStatus.IN_PROGRESS, None, {"receive": "4/9"}, execution_number=1)),
           ("q", _update(ExecStatus.IN_PROGRESS, None, {"receive": "2/9"})),
           ("r", _update(ExecStatus.IN_PROGRESS, None, {"receive": "1/9"}, execution_number=2)),  # no such
           ("a", _update(ExecStatus.IN_PROGRESS))]
    one_by_one = [jobs.report_progress(f"twin-{thing}", "job-1", request) for thing, request in run]
    statements: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        applied = jobs.report_progress_many([(thing, "job-1", request) for thing, request in run])
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    assert applied == one_by_one == [True, True, True, True, True, True, False, True]
    assert len([s for s in statements if s.lstrip().upper().startswith(("UPDATE", "WITH"))]) == 2, statements
    for thing in (*started, *queued):
        mine = jobs.describe_execution("job-1", thing)
        twin = jobs.describe_execution("job-1", f"twin-{thing}")
        assert (mine.status, mine.status_details, mine.version_number, mine.timeout_at) == (
            twin.status, twin.status_details, twin.version_number, twin.timeout_at)
    a = jobs.describe_execution("job-1", "a")
    assert (a.status_details, a.version_number) == ({"receive": "3/9"}, 5)
    assert jobs.describe_execution("job-1", "b").status_details == {"receive": "1/9"}
    q = jobs.describe_execution("job-1", "q")
    assert (q.status, q.status_details, q.version_number) == ("IN_PROGRESS", {"receive": "2/9"}, 3)
    assert q.started_at is not None
    assert jobs.describe_execution("job-1", "r").status == "QUEUED"
    # One execution addressed with and without a number in one run: each report on its own.
    mixed = jobs.report_progress_many([("b", "job-1", _update(ExecStatus.IN_PROGRESS, None, {"k": "1"})),
                                       ("b", "job-1", _update(ExecStatus.IN_PROGRESS, None, {"k": "2"},
                                                              execution_number=7))])
    assert mixed == [True, False]
    assert jobs.describe_execution("job-1", "b").status_details == {"k": "1"}


def test_ending_an_execution_changes_the_next_job_only_when_it_was_next(
        db: Database, settings: Settings, registry: Registry) -> None:
    """`update_execution` tells from one read of the thing's live executions whether its
    next job (the oldest IN_PROGRESS, else the oldest QUEUED) changed."""
    jobs = _jobs(db, settings, registry, ["dev-1"])
    jobs.create_job("job-2", [registry.thing_arn("dev-1")], {"operation": "y"})
    jobs.create_job("job-3", [registry.thing_arn("dev-1")], {"operation": "z"})
    for job in ("job-2", "job-1"):
        jobs.update_execution("dev-1", job, _update(ExecStatus.IN_PROGRESS))
    assert jobs.next_job_id("dev-1") == "job-1"  # both IN_PROGRESS: the older one
    assert not jobs.update_execution("dev-1", "job-2", _update(ExecStatus.SUCCEEDED)).next_changed
    assert jobs.update_execution("dev-1", "job-1", _update(ExecStatus.FAILED)).next_changed
    assert jobs.next_job_id("dev-1") == "job-3"  # QUEUED, next now
    assert jobs.update_execution("dev-1", "job-3", _update(ExecStatus.REJECTED)).next_changed
    assert jobs.next_job_id("dev-1") is None


def _outcome(result: UpdateOutcome | JobsMqttError) -> object:
    """What a test compares of an update's result: whether the next job changed, or the
    refusal's code."""
    return result.code if isinstance(result, JobsMqttError) else result.next_changed


def _one_by_one(jobs: JobService, job: str, run: list[tuple[str, UpdateRequest]]) -> list[object]:
    """`_outcome` of each update applied alone (`update_execution`), in order."""
    outcomes: list[object] = []
    for thing, request in run:
        try:
            outcomes.append(_outcome(jobs.update_execution(thing, job, request)))
        except JobsMqttError as exc:
            outcomes.append(_outcome(exc))
    return outcomes


def test_updates_of_many_things_in_one_transaction_do_what_one_by_one_does(
        db: Database, settings: Settings, registry: Registry) -> None:
    """`update_many` (a run's ends and other full updates): each update as alone, a refused
    one answered alone with the others written, the job completed once all ended, and one
    transaction in all. Each thing has a twin updated one by one."""
    things = ["a", "b", "c", "d"]
    jobs = _jobs(db, settings, registry, [*things, *(f"twin-{t}" for t in things)])
    for thing in (*things, *(f"twin-{t}" for t in things)):
        jobs.update_execution(thing, "job-1", _update(ExecStatus.IN_PROGRESS, None, {"receive": "1/9"}))
    run = [("a", _update(ExecStatus.SUCCEEDED, None, {"reason": "ok"})),
           ("b", _update(ExecStatus.IN_PROGRESS, 7, {"stale": "1"})),  # VersionMismatch
           ("c", _update(ExecStatus.FAILED, 2, {"reason": "bad"})),
           ("d", _update(ExecStatus.SUCCEEDED))]
    twins = _one_by_one(jobs, "job-1", [(f"twin-{thing}", request) for thing, request in run])
    with transactions(db) as opened:
        results = jobs.update_many([(thing, "job-1", request) for thing, request in run])
    assert opened == [1]
    assert [_outcome(r) for r in results] == twins
    assert twins == [True, "VersionMismatch", True, True]
    for thing in things:
        mine = jobs.describe_execution("job-1", thing)
        twin = jobs.describe_execution("job-1", f"twin-{thing}")
        assert (mine.status, mine.status_details, mine.version_number) == (
            twin.status, twin.status_details, twin.version_number)
    assert jobs.describe_job("job-1")[0].status == "IN_PROGRESS"  # b and twin-b still run
    for thing in ("b", "twin-b"):
        jobs.update_many([(thing, "job-1", _update(ExecStatus.SUCCEEDED))])
    job, counts = jobs.describe_job("job-1")
    assert (job.status, counts) == ("COMPLETED", {"SUCCEEDED": 6, "FAILED": 2})


def test_a_run_naming_a_thing_twice_and_one_installing_firmware(
        db: Database, settings: Settings, registry: Registry) -> None:
    """`update_many` reads a run's executions once; a thing updated twice in the run sees
    its first update (read again, not from the run's reads), a retry's new execution is
    next, and a SUCCEEDED OTA job records the version the thing now runs. Each with a twin
    updated one by one."""
    things = ["e", "f", "twin-e", "twin-f"]
    for thing in things:
        registry.create_thing(thing)
    jobs = JobService(db, settings, registry, time.time)
    jobs.create_job("ota", [registry.thing_arn(t) for t in things], {"operation": "x"}, config={
        IMAGE_VERSION: "2.1.0",
        "jobExecutionsRetryConfig": {"criteriaList": [{"failureType": "FAILED", "numberOfRetries": 1}]}})
    for thing in things:
        jobs.update_execution(thing, "ota", _update(ExecStatus.IN_PROGRESS, None, {"receive": "1/9"}))
    run = [("e", _update(ExecStatus.IN_PROGRESS, 2, {"self_test": "ready"})),
           ("f", _update(ExecStatus.FAILED, None, {"reason": "flash"})),
           ("e", _update(ExecStatus.SUCCEEDED, 3, {"reason": "ok"})),
           ("e", _update(ExecStatus.SUCCEEDED))]  # after its end: refused
    twins = _one_by_one(jobs, "ota", [(f"twin-{thing}", request) for thing, request in run])
    results = jobs.update_many([(thing, "ota", request) for thing, request in run])
    assert [_outcome(r) for r in results] == twins
    assert twins == [False, True, True, "InvalidStateTransition"]
    for thing in ("e", "f"):
        mine, twin = jobs.describe_execution("ota", thing), jobs.describe_execution("ota", f"twin-{thing}")
        assert (mine.status, mine.status_details, mine.version_number, mine.execution_number) == (
            twin.status, twin.status_details, twin.version_number, twin.execution_number)
    assert jobs.next_job_id("f") == "ota"  # its retry, queued
    assert jobs.running_versions(["e", "f", "twin-e"]) == {"e": "2.1.0", "twin-e": "2.1.0"}
    # Two jobs of one thing ending in one run, its next job first: the second sees the
    # first ended (its next job then changes from the second to none).
    jobs.create_job("other", [registry.thing_arn("e"), registry.thing_arn("twin-e")], {"operation": "y"})
    for thing in ("e", "twin-e"):
        jobs.update_execution(thing, "other", _update(ExecStatus.IN_PROGRESS))
    jobs.create_job("third", [registry.thing_arn("e")], {"operation": "z"})
    jobs.update_execution("e", "third", _update(ExecStatus.IN_PROGRESS))
    assert jobs.next_job_id("e") == "other"
    results = jobs.update_many([("e", "other", _update(ExecStatus.SUCCEEDED)),
                                ("e", "third", _update(ExecStatus.SUCCEEDED))])
    assert [r.next_changed for r in results if not isinstance(r, JobsMqttError)] == [True, True]


def test_pending_lists_of_many_things_are_each_things_own(
        db: Database, settings: Settings, registry: Registry) -> None:
    """`pending_of` (the pending lists a large fan-out sends after every notify-next) reads
    for many things what `pending_for_device` reads for one."""
    jobs = _jobs(db, settings, registry, ["p1", "p2", "p3"])
    jobs.create_job("job-2", [registry.thing_arn("p1")], {"operation": "y"})
    jobs.update_execution("p1", "job-2", _update(ExecStatus.IN_PROGRESS))
    jobs.update_execution("p2", "job-1", _update(ExecStatus.SUCCEEDED))
    registry.create_thing("p4")  # no execution at all
    lists = jobs.pending_of(["p1", "p2", "p3", "p4"])
    assert lists == {thing: jobs.pending_for_device(thing) for thing in ("p1", "p2", "p3", "p4")}
    assert [[s["jobId"] for s in part] for part in lists["p1"]] == [["job-2"], ["job-1"]]
    assert lists["p2"] == ([], [])
