"""CreateOTAUpdate for one thing group of N things: the time until all N job executions
exist, against a bulk INSERT of N rows of the same shape into the same database.

    .venv/bin/python -m bench.rollout_create [--things 10000]

A real server runs (`tests.server_harness`: API, device service, its own Mosquitto) on
a fresh data directory, SQLite by default (`--database-url` for another). Setup is not
measured and is made fast: the group and one thing are created by the Registry, the
other N-1 things and memberships are bulk copies of that thing's rows. A 1 MiB image is
uploaded. The measured part starts with the CreateOTAUpdate call (boto3, HTTP API) for
the group, signing with `overair-dev`, and ends when the job's N executions are visible
(a COUNT through JobService.describe_job, polled every 5 ms). The steps inside are
timed too (SigningService.sign_object, Registry.resolve_targets, JobService.create_job)
by wrapping those methods on the running server's service objects, and the full garbage
collections in that time (gc.callbacks) are counted: they stop every thread.

Memory: ru_maxrss of this process (server and all) before and after the creation.
tracemalloc slows every allocation down, so it is measured in a second, separate
creation (the first job cancelled first, same N): its peak of traced Python memory.

The limit is what the database alone takes for the same rows: one transaction on the
server's own engine (SQLAlchemy core, `insert(job_executions)` with N parameter sets)
whose rows are copies of an execution the service created, for a copy of its job. It
runs after the first creation, on the same table (which then holds N rows), best of 3,
and its rows are deleted after each run.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import resource
import statistics
import tempfile
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, delete, insert, select
from tests.server_harness import RunningServer, running_server

from overair.core.versions import Version
from overair.server.api.contract import ApiError
from overair.server.bootstrap import DEV_PROFILE
from overair.server.gateway.mqtt_driver import NOTIFY_BATCH
from overair.server.storage.schema import Job, JobExecution, Thing, ThingGroupMember
from overair.sim.firmware import make_firmware

BUCKET = "firmware"  # the bucket the default OTA service role may read (least privilege)
GROUP = "bench-rollout"
KEY = "app/firmware-1.1.0.bin"
LIMIT_JOB = "bench-bulk-insert-limit"
MIB = 1024 * 1024
POLL = 0.005  # seconds between two COUNTs of the executions


# --- timing the steps inside the server --------------------------------------------------------

@dataclass
class Stopwatch:
    """Wall-clock spans of calls to a few service methods, relative to `t0`."""

    t0: float = 0.0
    spans: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def watch(self, obj: object, method: str, label: str) -> None:
        """Replace `obj.method` (an instance attribute shadowing the class's): the
        services call each other through attributes looked up at each call. A method
        that does not exist (any more) is skipped: this is only a breakdown."""
        original: Callable[..., Any] | None = getattr(obj, method, None)
        if original is None:
            return

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                ended = time.perf_counter()
                with self._lock:
                    self.spans.setdefault(label, []).append((started - self.t0, ended - self.t0))

        setattr(obj, method, timed)

    def reset(self, t0: float) -> None:
        with self._lock:
            self.t0 = t0
            self.spans.clear()

    def snapshot(self) -> dict[str, list[tuple[float, float]]]:
        with self._lock:
            return {label: list(values) for label, values in self.spans.items()}


class GcWatch:
    """Full (generation 2) garbage collections while it is active: they stop every
    thread of the process, and their length grows with everything the process holds."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append(time.perf_counter() - self._started)

    def __enter__(self) -> GcWatch:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *_exc: object) -> None:
        gc.callbacks.remove(self._callback)


@dataclass
class Creation:
    seconds: float | None  # CreateOTAUpdate call -> N executions visible; None: timed out
    api_return_s: float  # the call itself (records CREATE_PENDING, schedules the work)
    spans: dict[str, list[tuple[float, float]]]
    maxrss_before_kib: int
    maxrss_after_kib: int
    gc_pauses: list[float]  # full collections between the call and the executions visible
    traced_peak: int | None = None  # bytes, when run under tracemalloc
    t0: float = 0.0  # perf_counter() at the call


def _maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


# --- setup ---------------------------------------------------------------------------------

def _table(model: Any) -> Table:
    return cast(Table, model.__table__)  # declarative models: always a Table


def _copy_of(conn: Any, table: Table, **where: Any) -> dict[str, Any]:
    query = select(table)
    for column, value in where.items():
        query = query.where(table.c[column] == value)
    return dict(conn.execute(query.limit(1)).one()._mapping)


def make_group(srv: RunningServer, count: int) -> list[str]:
    """A thing group of `count` things: the group and the first thing through the
    Registry, the rest as copies of the first one's rows (every column, so this follows
    the schema), inserted in one transaction."""
    registry = srv.server.registry
    names = [f"bench-thing-{i:05d}" for i in range(count)]
    registry.create_group(GROUP)
    registry.create_thing(names[0])
    registry.add_to_group(GROUP, names[0])
    things, members = _table(Thing), _table(ThingGroupMember)
    with srv.server.db.engine.begin() as conn:
        thing = _copy_of(conn, things, name=names[0])
        member = _copy_of(conn, members, thing_name=names[0])
        if len(names) > 1:
            conn.execute(insert(things), [{**thing, "name": name, "thing_id": str(uuid.uuid4()),
                                           "arn": registry.thing_arn(name)} for name in names[1:]])
            conn.execute(insert(members), [{**member, "thing_name": name} for name in names[1:]])
    return names


# --- the measured part ---------------------------------------------------------------------

def _executions(srv: RunningServer, job_id: str) -> int:
    try:
        _, counts = srv.server.jobs.describe_job(job_id)
    except ApiError:
        return 0  # the job is created with its executions, in one transaction
    return sum(counts.values())


def create_rollout(srv: RunningServer, iot: Any, ota_id: str, version_id: str, things: int,
                   watch: Stopwatch, timeout: float, trace: bool = False) -> Creation:
    job_id = f"AFR_OTA-{ota_id}"
    group_arn = srv.server.registry.group_arn(GROUP)
    before = _maxrss_kib()
    if trace:
        tracemalloc.start()
    gc_watch = GcWatch().__enter__()
    t0 = time.perf_counter()
    watch.reset(t0)
    iot.create_ota_update(
        otaUpdateId=ota_id, targets=[group_arn], protocols=["MQTT"], targetSelection="SNAPSHOT",
        roleArn=f"arn:aws:iam::{srv.settings.account_id}:role/overair-ota",
        files=[{"fileName": "/firmware/app.bin", "fileVersion": "1.1.0",
                "fileLocation": {"s3Location": {"bucket": BUCKET, "key": KEY, "version": version_id}},
                "codeSigning": {"startSigningJobParameter": {
                    "signingProfileName": DEV_PROFILE,
                    "destination": {"s3Destination": {"bucket": BUCKET, "prefix": "signed/"}}}}}])
    api_return = time.perf_counter() - t0
    seconds: float | None = None
    deadline = t0 + timeout
    # The executions appear all at once (one transaction); the poll bounds the error.
    polls = 0
    while time.perf_counter() < deadline:
        if _executions(srv, job_id) >= things:
            seconds = time.perf_counter() - t0
            break
        polls += 1
        if polls % 20 == 0 and srv.server.ota.get(ota_id).status == "CREATE_FAILED":
            raise RuntimeError(f"CreateOTAUpdate failed: {srv.server.ota.get(ota_id).error_info}")
        time.sleep(POLL)
    gc_watch.__exit__()
    peak = None
    if trace:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    after = _maxrss_kib()
    # The executions are visible once create_job commits, a little before the background
    # processing returns: let it finish so that the breakdown is complete.
    _wait_until(lambda: "OtaManager.process" in watch.snapshot(), timeout)
    return Creation(seconds, api_return, watch.snapshot(), before, after, gc_watch.pauses, peak, t0)


@contextlib.contextmanager
def _counting_notifications(srv: RunningServer) -> Iterator[Notified]:
    """After the job exists, the server pushes notify-next (and notify) to each of the N
    things in batches (DeviceService.notify_next_many, in the MQTT driver's notify
    worker; each batch is published as soon as it returns). Counted and timed, so that
    the report says when the last batch was ready and the next measurement starts when
    it is over."""
    devices = srv.server.devices
    original = devices.notify_next_many
    notified = Notified()

    def counted(things: list[str], pending: bool = True) -> Any:
        started = time.perf_counter()
        try:
            return original(things, pending)
        finally:
            notified.batch_done(len(things), started, time.perf_counter())

    devices.notify_next_many = counted  # type: ignore[method-assign]
    try:
        yield notified
    finally:
        devices.notify_next_many = original  # type: ignore[method-assign]


class Notified:
    """Things notified so far, when the last batch was ready, and the batches' own time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0
        self.last_done = 0.0
        self.batch_seconds: list[float] = []

    def batch_done(self, things: int, started: float, done: float) -> None:
        with self._lock:
            self.count += things
            self.last_done = done
            self.batch_seconds.append(done - started)

    def __call__(self) -> int:
        with self._lock:
            return self.count


def _wait_until(condition: Callable[[], bool], timeout: float) -> float | None:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if condition():
            return time.perf_counter() - started
        time.sleep(0.05)
    return None


# --- the limit -----------------------------------------------------------------------------

def bulk_insert_limit(srv: RunningServer, job_id: str, names: list[str], runs: int = 3) -> list[float]:
    """N execution rows like the service's, for a copy of its job, in one transaction."""
    engine = srv.server.db.engine
    jobs, executions = _table(Job), _table(JobExecution)
    with engine.begin() as conn:
        job = _copy_of(conn, jobs, job_id=job_id)
        execution = _copy_of(conn, executions, job_id=job_id)
        conn.execute(insert(jobs), {**job, "job_id": LIMIT_JOB, "arn": srv.server.jobs.job_arn(LIMIT_JOB)})
    del execution["id"]  # autoincrement, as in the service's insert
    rows = [{**execution, "job_id": LIMIT_JOB, "thing_name": name} for name in names]
    times = []
    try:
        for _ in range(runs):
            started = time.perf_counter()
            with engine.begin() as conn:
                conn.execute(insert(executions), rows)
            times.append(time.perf_counter() - started)
            with engine.begin() as conn:
                conn.execute(delete(executions).where(executions.c.job_id == LIMIT_JOB))
    finally:
        with engine.begin() as conn:
            conn.execute(delete(executions).where(executions.c.job_id == LIMIT_JOB))
            conn.execute(delete(jobs).where(jobs.c.job_id == LIMIT_JOB))
    return times


# --- main ----------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--things", type=int, default=10000)
    parser.add_argument("--size-mib", type=float, default=1.0, help="image size")
    parser.add_argument("--database-url", default="", help="default: SQLite in the data directory")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--no-tracemalloc", action="store_true", help="skip the second, traced creation")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="overair-bench-") as tmp, \
            running_server(Path(tmp) / "server", database_url=args.database_url) as srv:
        started = time.perf_counter()
        names = make_group(srv, args.things)
        setup = time.perf_counter() - started
        iot, s3 = srv.client("iot"), srv.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        image = make_firmware(Version(1, 1, 0), int(args.size_mib * MIB), seed="bench-rollout")
        version_id = s3.put_object(Bucket=BUCKET, Key=KEY, Body=image)["VersionId"]
        watch = Stopwatch()
        watch.watch(srv.server.ota, "process", "OtaManager.process")
        watch.watch(srv.server.signing, "sign_object", "SigningService.sign_object")
        watch.watch(srv.server.jobs, "create_job", "JobService.create_job")
        watch.watch(srv.server.registry, "resolve_targets", "Registry.resolve_targets")
        watch.watch(srv.server.jobs, "_things_with_active", "JobService._things_with_active")
        with _counting_notifications(srv) as notified:
            first = create_rollout(srv, iot, "bench-rollout-1", version_id, args.things, watch, args.timeout)
            fan_out = _wait_until(lambda: notified() >= args.things, args.timeout)
            fan_out_s = None if fan_out is None else notified.last_done - first.t0
            batches = list(notified.batch_seconds)
            limit = bulk_insert_limit(srv, "AFR_OTA-bench-rollout-1", names)
            traced = None
            if not args.no_tracemalloc:
                # Same N executions again: the first job is cancelled so that nothing else differs
                # (its things have no active job, as before the first creation).
                srv.server.jobs.cancel_job("AFR_OTA-bench-rollout-1", force=True)
                traced = create_rollout(srv, iot, "bench-rollout-2", version_id, args.things, watch,
                                        args.timeout, trace=True)
                _wait_until(lambda: notified() >= 2 * args.things, args.timeout)
        url = srv.settings.db_url
    report(args.things, len(image), url, setup, first, fan_out_s, batches, limit, traced)


def report(things: int, image_size: int, db_url: str, setup: float, first: Creation, fan_out_s: float | None,
           batches: list[float], limit: list[float], traced: Creation | None) -> None:
    database = db_url.split(":", 1)[0]
    print(f"things: {things} in one thing group (setup {setup:.1f} s), image {image_size / MIB:.2f} MiB "
          f"signed with {DEV_PROFILE}, database {database}")
    if first.seconds is None:
        print("CreateOTAUpdate -> all executions exist: NOT within the timeout")
        return
    print(f"CreateOTAUpdate -> all {things} executions exist (5 ms poll): {first.seconds:.3f} s "
          "(target < 2 s)")
    print(f"  the API call returned after {first.api_return_s:.3f} s; then, in a background thread:")
    for label, spans in sorted(first.spans.items(), key=lambda item: item[1][0][0]):
        for start, end in spans:
            print(f"  {label:<32} from {start:6.3f} s to {end:6.3f} s ({end - start:6.3f} s)")
    if first.gc_pauses:
        print(f"  full garbage collections in that time: {len(first.gc_pauses)}, "
              f"{1000 * sum(first.gc_pauses):.0f} ms (every thread stops)")
    if fan_out_s is not None and batches:
        # The things have no devices: the server publishes to the broker all the same.
        # With several batches the pending lists (`notify`) are read after the last one.
        print(f"CreateOTAUpdate -> notify-next ready for all {things} things: {fan_out_s:.2f} s "
              f"(target 2 s); {len(batches)} batches of up to {NOTIFY_BATCH}, each read and encoded in "
              f"{1000 * statistics.fmean(batches):.0f} ms mean, {1000 * sum(batches):.0f} ms in all")
    else:
        print("notify-next: NOT all things notified within the timeout")
    grown = first.maxrss_after_kib - first.maxrss_before_kib
    print(f"peak RSS of the process (ru_maxrss): {first.maxrss_before_kib / 1024:.0f} MiB before, "
          f"{first.maxrss_after_kib / 1024:.0f} MiB after (+{grown / 1024:.1f} MiB)")
    if traced is not None and traced.traced_peak is not None:
        took = "timed out" if traced.seconds is None else f"{traced.seconds:.3f} s"
        print(f"tracemalloc peak during a second creation of {things} executions: "
              f"{traced.traced_peak / MIB:.1f} MiB (that creation, slowed by tracing: {took})")
    best = min(limit)
    print(f"limit: bulk INSERT of {things} job_executions rows, one transaction, SQLAlchemy core: "
          f"best {best:.3f} s, median {statistics.median(limit):.3f} s of {len(limit)}")
    print(f"ratio bulk insert / CreateOTAUpdate: {best / first.seconds:.3f}")


if __name__ == "__main__":
    main()
