"""One scheduler leader among processes sharing a PostgreSQL database (jobs/leader.py):
two real scheduler processes, the leader SIGKILLed in the middle of a staged rollout;
the other takes over and the rollout completes with every execution released once and
every notification sent at most once, read from the database rows and the processes'
own records. SQLite keeps its single process, which always leads."""

from __future__ import annotations

import collections
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from overair.server import pki
from overair.server.jobs.leader import AdvisoryLeader, SoleLeader, leadership_for
from overair.server.jobs.service import JobService
from overair.server.registry.service import Registry
from overair.server.settings import Settings
from overair.server.storage.db import Database, migrate
from overair.server.storage.schema import JobExecution
from tests.e2e.ota_helpers import wait_for
from tests.postgres_harness import PostgresCluster
from tests.scheduler_process import shared_clock

ROOT = Path(__file__).resolve().parents[2]
THINGS = 30
PER_MINUTE = 4  # of the processes' clock: 4 executions per real second


def _events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _start(db_url: str, tmp_path: Path, name: str, t0: float) -> tuple[subprocess.Popen[bytes], Path]:
    events = tmp_path / f"{name}.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.scheduler_process", db_url, str(tmp_path), str(events), str(t0)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=(tmp_path / f"{name}.log").open("wb"))
    return process, events


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def test_a_follower_takes_over_when_the_leader_is_killed(postgres: PostgresCluster, tmp_path: Path,
                                                          processes: list[subprocess.Popen[bytes]]) -> None:
    db_url = postgres.new_database()
    db = Database(db_url)
    migrate(db.engine)
    t0 = time.time()
    try:
        settings = Settings(data_dir=tmp_path, account_id="123456789012", database_url=db_url)
        registry = Registry(db, settings, pki.make_root_ca("leader test CA", dt.datetime.now(dt.UTC)),
                            lambda: shared_clock(t0))
        registry.create_group("fleet")
        for i in range(THINGS):
            registry.create_thing(f"dev-{i:02d}")
            registry.add_to_group("fleet", f"dev-{i:02d}")
        jobs = JobService(db, settings, registry, lambda: shared_clock(t0))
        jobs.create_job("rollout", [registry.group_arn("fleet")], {"operation": "update"},
                        config={"jobExecutionsRolloutConfig": {"maximumPerMinute": PER_MINUTE}})

        def released() -> int:
            with db.reading() as s:
                return int(s.scalar(select(func.count()).select_from(JobExecution).where(
                    JobExecution.job_id == "rollout", JobExecution.released_at.is_not(None))) or 0)

        first, first_events = _start(db_url, tmp_path, "first", t0)
        processes.append(first)
        wait_for(lambda: any(e["event"] == "leader" for e in _events(first_events)), 30, "a leader")
        second, second_events = _start(db_url, tmp_path, "second", t0)
        processes.append(second)
        wait_for(lambda: any(e["event"] == "started" for e in _events(second_events)), 30, "the follower")
        wait_for(lambda: released() >= 2 * PER_MINUTE, 30, "releases by the first leader")
        assert not any(e["event"] == "leader" for e in _events(second_events))  # one leader at a time

        os.kill(first.pid, signal.SIGKILL)
        killed_at = time.time()
        first.wait(10)
        took_over = wait_for(lambda: [e for e in _events(second_events) if e["event"] == "leader"],
                             30, "the follower to take over")
        print(f"takeover {took_over[0]['at'] - killed_at:.2f} s after SIGKILL")
        wait_for(lambda: released() == THINGS, 60, "the whole rollout")

        with db.reading() as s:
            rows = list(s.scalars(select(JobExecution).where(JobExecution.job_id == "rollout")))
        assert len(rows) == THINGS
        # Released once each, no status transition beyond it (a second release or a
        # timeout would have bumped the version).
        assert {(row.status, row.version_number) for row in rows} == {("QUEUED", 1)}
        assert all(row.released_at is not None for row in rows)
        by_first = [t for e in _events(first_events) if e["event"] == "notified" for t in e["things"]]
        by_second = [t for e in _events(second_events) if e["event"] == "notified" for t in e["things"]]
        assert by_first
        assert by_second
        counts = collections.Counter(by_first + by_second)
        assert max(counts.values()) == 1, "a thing was notified twice"
        # Every release was notified, but a leader killed between its commit and its
        # notification loses that tick's notifications (devices learn of the job at
        # their next $next/get): at most one tick's worth.
        assert len(counts) >= THINGS - PER_MINUTE
    finally:
        db.close()


def test_the_lock_is_exclusive_and_freed_when_its_holder_lets_go(postgres: PostgresCluster) -> None:
    db_url = postgres.new_database()
    one, two = leadership_for(db_url), leadership_for(db_url)
    assert isinstance(one, AdvisoryLeader)
    try:
        assert one.poll()
        assert not two.poll()
        assert one.poll()  # still leading
        one.close()
        assert two.poll()
        assert not one.poll()
    finally:
        one.close()
        two.close()


def test_sqlite_has_one_process_which_leads(tmp_path: Path) -> None:
    leadership = leadership_for(f"sqlite:///{tmp_path / 'overair.db'}")
    assert isinstance(leadership, SoleLeader)
    assert leadership.poll()
