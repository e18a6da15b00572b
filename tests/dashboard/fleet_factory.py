"""A large fleet for the dashboard's scale tests, made quickly: things inserted in one
transaction through the registry's own ARNs, jobs created by the real `JobService`
(one execution per thing), then executions moved to the states a rollout reaches (done
in SQL: driving thousands of devices is the job of other suites, not this one), what
each thing runs recorded as a succeeded execution records it
(`packages.inventory.record_installed`), and connections and disconnections fed to the
server's own connectivity worker as the broker's log would."""

from __future__ import annotations

import time
import uuid

from sqlalchemy import update

from overair.server.app import Server
from overair.server.gateway.presence import PresenceEvent
from overair.server.jobs.service import IMAGE_VERSION
from overair.server.packages.inventory import DEFAULT_PACKAGE, record_installed
from overair.server.storage.schema import Job, JobExecution, Thing

FAILURE_REASON = "0x2000000a: signature check failed"


def populate(server: Server, count: int, prefix: str = "scale") -> list[str]:
    """`count` things `<prefix>-00000`..., two finished rollouts (1.0.0 to all, 1.1.0 to
    half) and one in progress; 7 in 10 things online, 2 offline, 1 never connected.
    Returns the thing names."""
    names = [f"{prefix}-{i:05d}" for i in range(count)]
    now = time.time()
    with server.db.session() as s:
        s.add_all(Thing(name=name, thing_id=str(uuid.uuid4()), arn=server.registry.thing_arn(name),
                        attributes={"model": "m1" if i % 2 else "m2", "site": f"site-{i % 7}"},
                        version=1, created_at=now) for i, name in enumerate(names))
    for job_id, version, targets in ((f"{prefix}-v100", "1.0.0", names),
                                     (f"{prefix}-v110", "1.1.0", names[: count // 2]),
                                     (f"{prefix}-v120", "1.2.0", names)):
        server.jobs.create_job(job_id, [server.registry.thing_arn(n) for n in targets],
                               {"operation": "noop"}, description=f"firmware {version}")
        with server.db.session() as s:
            s.execute(update(Job).where(Job.job_id == job_id).values(config={IMAGE_VERSION: version}))
    with server.db.session() as s:
        for job_id in (f"{prefix}-v100", f"{prefix}-v110"):
            s.execute(update(JobExecution).where(JobExecution.job_id == job_id)
                      .values(status="SUCCEEDED", started_at=now, last_updated_at=now))
            s.execute(update(Job).where(Job.job_id == job_id).values(status="COMPLETED", completed_at=now))
        for name in names:
            record_installed(s, name, DEFAULT_PACKAGE, "1.0.0", f"{prefix}-v100", now)
        for name in names[: count // 2]:
            record_installed(s, name, DEFAULT_PACKAGE, "1.1.0", f"{prefix}-v110", now)
        # The running rollout: a tenth failed with a reason, a fifth in progress, a fifth done.
        running = f"{prefix}-v120"
        for i, name in enumerate(names):
            if i % 10 == 0:
                s.execute(update(JobExecution).where(JobExecution.job_id == running,
                                                     JobExecution.thing_name == name)
                          .values(status="FAILED", status_details={"reason": FAILURE_REASON},
                                  last_updated_at=now + 1))
            elif i % 5 == 1:
                s.execute(update(JobExecution).where(JobExecution.job_id == running,
                                                     JobExecution.thing_name == name)
                          .values(status="IN_PROGRESS", status_details={"progress": "40%"},
                                  last_updated_at=now + 1))
            elif i % 5 == 2:
                s.execute(update(JobExecution).where(JobExecution.job_id == running,
                                                     JobExecution.thing_name == name)
                          .values(status="SUCCEEDED", last_updated_at=now + 1))
                record_installed(s, name, DEFAULT_PACKAGE, "1.2.0", running, now + 1)
    events = [PresenceEvent(name, True) for i, name in enumerate(names) if i % 10 != 9]
    events += [PresenceEvent(name, False, "CLIENT_INITIATED_DISCONNECT")
               for i, name in enumerate(names) if i % 10 in (7, 8)]
    server.presence_worker.submit(server.connectivity.apply, events).result()
    return names
