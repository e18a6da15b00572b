"""A scheduler process for the leadership tests: what `overair serve` runs for the job
scheduler (server/app.py `_run_scheduler`: poll the leadership, tick if leading, notify
the things whose next job changed), over a shared database, as its own OS process so a
test can SIGKILL it. Each event is one JSON line appended (and flushed) to `events`:
{"event": "started"|"leader"|"notified", "at": epoch seconds, "things": [...]}.

Its clock runs `SPEED` times faster than real time from the epoch `t0` that every
process of a test shares, so a rollout of a few executions per minute takes seconds.

    python -m tests.scheduler_process DB_URL DATA_DIR EVENTS T0
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path

from overair.server import pki
from overair.server.jobs.leader import leadership_for
from overair.server.jobs.scheduler import TICK_SECONDS, JobScheduler
from overair.server.jobs.service import JobService
from overair.server.registry.service import Registry
from overair.server.settings import Settings
from overair.server.storage.db import Database

SPEED = 60.0  # one real second is a minute of the schedulers' clock


def shared_clock(t0: float) -> float:
    return t0 + (time.time() - t0) * SPEED


def main(db_url: str, data_dir: Path, events: Path, t0: float) -> None:
    db = Database(db_url)
    settings = Settings(data_dir=data_dir, account_id="123456789012", database_url=db_url)
    ca = pki.make_root_ca("leadership test CA", dt.datetime.now(dt.UTC))

    def clock() -> float:
        return shared_clock(t0)

    registry = Registry(db, settings, ca, clock)
    scheduler = JobScheduler(db, JobService(db, settings, registry, clock), clock)
    leadership = leadership_for(db_url)
    with events.open("a") as out:
        def emit(event: str, things: list[str] | None = None) -> None:
            out.write(json.dumps({"event": event, "at": time.time(), "things": things or []}) + "\n")
            out.flush()

        emit("started")
        leading = False
        while True:
            if leadership.poll():
                if not leading:
                    emit("leader")
                    leading = True
                result = scheduler.tick()
                if result.next_changed:
                    emit("notified", result.next_changed)
            else:
                leading = False
            time.sleep(TICK_SECONDS)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4]))
