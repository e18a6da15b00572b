"""What one device status update costs the server, on SQLite and on PostgreSQL.

    .venv/bin/python -m bench.job_updates [--things 2000] [--threads 4]

Each of the N things has one execution of one job. Measured through `JobService`, the
calls the device workers make for a FreeRTOS device's updates (no broker, no MQTT, no
JSON: those are the device service's and are measured by bench/fleet.py):
- start: QUEUED -> IN_PROGRESS (`update_execution`, the device's first update),
- progress: IN_PROGRESS -> IN_PROGRESS with new statusDetails (`report_progress`, the
  `receive` report every 25 blocks and the self-test reports: most of a rollout's updates),
- end: IN_PROGRESS -> SUCCEEDED (`update_execution`: also records the installed version,
  checks retries and job completion, and compares the thing's next job before/after),
  for half of the things one by one and for the other half in runs of 32 through
  `update_many` (what the device workers do with the ends of a rollout's tail).
Each call is its own transaction, as in the server. Progress is measured once from one
thread and once from `--threads` threads at a time (the server's device workers), as
updates per second.

Then the same updates while `--busy` threads keep the interpreter busy, as the event
loop and the block workers do during a rollout (their work is plain Python, standing in
for MQTT parsing and block encoding): progress reports per second from `--threads`
threads, one transaction each, at CPython's 5 ms thread switch interval and at 1 ms,
and in runs of 16 per transaction
(`report_progress_many`, what the device workers do with reports waiting in a queue).
The busy threads' own progress is printed beside it, so what the updates cost them shows.

The limit, in the same run and database: the same row change as a progress report
written by the database driver alone (one UPDATE by primary key and a COMMIT per
update, no SQLAlchemy). PostgreSQL runs in a throw-away cluster
(tests/postgres_harness.py; skipped with a note if Debian's `postgresql` is missing).
Left out: the broker, TLS, the device service's parsing and the event loop.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench.postgres import throwaway_postgres
from overair.core.jobs_wire import UpdateRequest
from overair.core.jobstates import ExecStatus
from overair.server import pki
from overair.server.jobs.service import JobService
from overair.server.registry.service import Registry
from overair.server.settings import Settings
from overair.server.storage.db import Database, migrate

JOB = "bench-job"
END_RUN = 32  # SUCCEEDED updates per `update_many` run


def _update(status: ExecStatus, details: dict[str, str]) -> UpdateRequest:
    return UpdateRequest(status=status, status_details=details, expected_version=None,
                         execution_number=None, include_job_execution_state=False,
                         include_job_document=False, step_timeout_minutes=None, client_token="")


def _per_call_us(calls: list[Callable[[], object]]) -> float:
    start = time.perf_counter()
    for call in calls:
        call()
    return (time.perf_counter() - start) / len(calls) * 1e6


def _run_all(calls: list[Callable[[], object]]) -> None:
    for call in calls:
        call()


def _rate(threads: int, work: list[Callable[[], object]]) -> float:
    """Calls per second with `threads` threads taking calls from one shared list."""
    chunks = [work[i::threads] for i in range(threads)]
    workers = [threading.Thread(target=_run_all, args=(chunk,)) for chunk in chunks]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return len(work) / (time.perf_counter() - start)


def _spin(stop: threading.Event, counter: list[int]) -> None:
    while not stop.is_set():
        sum(range(200))  # a few microseconds of bytecode, like parsing or encoding a message
        counter[0] += 1


@contextmanager
def _busy(threads: int) -> Iterator[list[list[int]]]:
    stop = threading.Event()
    counters = [[0] for _ in range(threads)]
    spinners = [threading.Thread(target=_spin, args=(stop, c), daemon=True) for c in counters]
    for spinner in spinners:
        spinner.start()
    try:
        yield counters
    finally:
        stop.set()
        for spinner in spinners:
            spinner.join()


def contention(jobs: JobService, names: list[str], threads: int, busy: int) -> dict[str, float]:
    """Progress reports/s from `threads` threads beside `busy` spinning threads: one per
    transaction at 5 ms and 1 ms switch intervals, and 16 per transaction at 1 ms; and the
    spinners' iterations/s in each case."""
    out: dict[str, float] = {}
    report = _update(ExecStatus.IN_PROGRESS, {"receive": "busy"})
    before = sys.getswitchinterval()
    try:
        for label, interval, run in (("5ms", 0.005, 1), ("1ms", 0.001, 1), ("1ms_runs", 0.001, 16)):
            sys.setswitchinterval(interval)
            work: list[Callable[[], object]] = [
                partial(jobs.report_progress_many, [(n, JOB, report) for n in names[i:i + run]])
                for i in range(0, len(names), run)]
            with _busy(busy) as counters:
                start = time.perf_counter()
                rate = _rate(threads, work) * run
                spun = sum(c[0] for c in counters) / (time.perf_counter() - start)
            out[label], out[f"{label}_spin"] = rate, spun
    finally:
        sys.setswitchinterval(before)
    return out


def _raw_update_us(db: Database, ids: list[int], placeholder: str) -> float:
    """One UPDATE by primary key and one COMMIT per row, through the driver only."""
    connection: Any = db.engine.raw_connection()
    try:
        cursor = connection.cursor()
        sql = (f"UPDATE job_executions SET status_details = {placeholder}, "
               f"version_number = version_number + 1, last_updated_at = {placeholder} "
               f"WHERE id = {placeholder}")
        start = time.perf_counter()
        for row_id in ids:
            cursor.execute(sql, ('{"receive": "raw"}', time.time(), row_id))
            connection.commit()
        return (time.perf_counter() - start) / len(ids) * 1e6
    finally:
        connection.close()


def measure(url: str, data_dir: Path, things: int, threads: int, busy: int) -> dict[str, float]:
    db = Database(url)
    try:
        migrate(db.engine)
        settings = Settings(data_dir=data_dir, account_id="123456789012", database_url=url)
        registry = Registry(db, settings, pki.make_root_ca("bench fleet CA", dt.datetime.now(dt.UTC)),
                            time.time)
        names = [f"thing-{i}" for i in range(things)]
        for name in names:
            registry.create_thing(name)
        jobs = JobService(db, settings, registry, time.time)
        jobs.create_job(JOB, [registry.thing_arn(n) for n in names], {"operation": "bench"})
        start = _update(ExecStatus.IN_PROGRESS, {"receive": "0/256"})
        out = {"start": _per_call_us([partial(jobs.update_execution, n, JOB, start) for n in names])}
        progress = [_update(ExecStatus.IN_PROGRESS, {"receive": f"{k}/256"}) for k in (25, 50)]
        out["progress"] = _per_call_us([partial(jobs.report_progress, n, JOB, progress[0]) for n in names])
        out["progress_rate"] = _rate(1, [partial(jobs.report_progress, n, JOB, progress[1]) for n in names])
        out["progress_rate_threads"] = _rate(threads, [partial(jobs.report_progress, n, JOB, progress[0])
                                                       for n in names])
        out.update({f"busy_{k}": v for k, v in contention(jobs, names, threads, busy).items()})
        with db.reading() as s:
            ids = [int(i) for i in s.execute(text("SELECT id FROM job_executions")).scalars()]
        out["raw"] = _raw_update_us(db, ids, "%s" if url.startswith("postgresql") else "?")
        done = _update(ExecStatus.SUCCEEDED, {"reason": "accepted"})
        half = len(names) // 2
        out["end"] = _per_call_us([partial(jobs.update_execution, n, JOB, done) for n in names[:half]])
        # The device workers' runs: many things' ends in one transaction (`update_many`).
        runs: list[Callable[[], object]] = [
            partial(jobs.update_many, [(n, JOB, done) for n in names[i:i + END_RUN]])
            for i in range(half, len(names), END_RUN)]
        out["end_runs"] = _per_call_us(runs) / END_RUN
        return out
    finally:
        db.close()


def report(name: str, figures: dict[str, float], threads: int, busy: int) -> None:
    raw = figures["raw"]
    print(f"{name}:")
    for kind in ("start", "progress", "end"):
        print(f"  {kind:<9} {figures[kind]:8.0f} us per update ({figures[kind] / raw:5.1f}x the raw UPDATE)")
    runs = figures["end_runs"]
    print(f"  end in runs of {END_RUN} (update_many, one transaction a run): {runs:.0f} us per update "
          f"({runs / raw:5.1f}x the raw UPDATE)")
    print(f"  raw UPDATE + COMMIT by the driver alone (the limit): {raw:.0f} us")
    print(f"  progress reports/s: 1 thread {figures['progress_rate']:.0f}, {threads} threads "
          f"{figures['progress_rate_threads']:.0f}; raw limit {1e6 / raw:.0f}/s "
          f"(ratio {figures['progress_rate'] * raw / 1e6:.2f})")
    print(f"  with {busy} busy threads, progress reports/s from {threads} threads (busy threads' "
          f"iterations/s): 5 ms switch interval {figures['busy_5ms']:.0f} ({figures['busy_5ms_spin']:.0f}), "
          f"1 ms {figures['busy_1ms']:.0f} ({figures['busy_1ms_spin']:.0f}), "
          f"1 ms and 16 per transaction {figures['busy_1ms_runs']:.0f} ({figures['busy_1ms_runs_spin']:.0f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--things", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=4, help="device workers (the server has 4)")
    parser.add_argument("--busy", type=int, default=2,
                        help="threads spinning in Python beside them in the contention figures")
    args = parser.parse_args()
    print(f"{args.things} things, one execution each; every update its own transaction")
    with tempfile.TemporaryDirectory() as tmp:
        report("SQLite (WAL, synchronous=NORMAL)",
               measure(f"sqlite:///{tmp}/bench.db", Path(tmp), args.things, args.threads, args.busy),
               args.threads, args.busy)
    with throwaway_postgres() as url, tempfile.TemporaryDirectory() as tmp:
        if url is not None:
            report("PostgreSQL", measure(url, Path(tmp), args.things, args.threads, args.busy), args.threads,
                   args.busy)


if __name__ == "__main__":
    main()
