"""What each thing may fetch now (threat N4): the streams and HTTP objects of the jobs of
its live executions.

A device may read a stream over MQTT, or download an object version with a pre-signed
URL, only while it has a live (QUEUED or IN_PROGRESS) released execution of a running
job that delivers it (device-protocol.md §3, §4). What a job delivers is fixed when it
is created (its document names the stream; its config pins the HTTP objects: later
changes such as UpdateJob keep those keys), so it is worked out once per job and kept;
what changes all the time, which jobs a thing has live, is read for many things in one
statement (`Deliveries.of_things`): the access caches renew every device's decisions
with a read per batch of things rather than one per device (streams/access.py).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, select

from overair.core.jobstates import JobStatus
from overair.server.jobs.live import ACTIVE, RELEASED
from overair.server.storage.db import Database
from overair.server.storage.schema import Job, JobExecution

# An object version a job delivers over HTTP: (bucket, key, version).
ObjectVersion = tuple[str, str, str]

# Job config key of the files a job delivers over HTTP: [{"fileId", "bucket", "key", "version"}].
HTTP_FILES = "http_files"
# Job config key of the objects a plain job's pre-signed URL placeholders name, pinned to
# a version at creation: [{"placeholder": "${aws:iot:s3-presigned-url:...}", "bucket",
# "key", "version"}] (server/jobs/documents.py).
PRESIGNED_OBJECTS = "presigned_objects"
_OBJECT_KEYS = (HTTP_FILES, PRESIGNED_OBJECTS)  # each entry names a bucket, key and version
# Things per statement: an expanding IN of this many names stays well inside SQLite's
# and PostgreSQL's parameter limits.
THINGS_PER_READ = 500


@dataclass(frozen=True)
class Delivered:
    """What one job delivers, or what one thing may fetch now (the union over its jobs)."""

    streams: frozenset[str] = frozenset()
    objects: frozenset[ObjectVersion] = frozenset()

    def __or__(self, other: Delivered) -> Delivered:
        return Delivered(self.streams | other.streams, self.objects | other.objects)


NOTHING = Delivered()


def delivered_by(document: Mapping[str, Any], config: Mapping[str, Any]) -> Delivered:
    """What a job with this document and config delivers: the stream of its OTA document
    (`afr_ota.streamname`) and the object versions pinned in its config."""
    ota = document.get("afr_ota")
    stream = ota.get("streamname") if isinstance(ota, dict) else None
    objects = set()
    for config_key in _OBJECT_KEYS:
        entries = config.get(config_key)
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict):
                parts = (entry.get("bucket"), entry.get("key"), entry.get("version"))
                if all(isinstance(part, str) for part in parts):
                    objects.add((str(parts[0]), str(parts[1]), str(parts[2])))
    return Delivered(frozenset([stream] if isinstance(stream, str) else []), frozenset(objects))


# For each of some things: the jobs of its live released executions while the job runs.
# The job's creation time is read with its id: a job id can be used again after its job
# is deleted, and the id with the time names one job.
_LIVE_JOBS_OF_THINGS = (
    select(JobExecution.thing_name, Job.job_id, Job.created_at)
    .join(Job, Job.job_id == JobExecution.job_id)
    .where(JobExecution.thing_name.in_(bindparam("things", expanding=True)), RELEASED,
           JobExecution.status.in_(ACTIVE), Job.status == JobStatus.IN_PROGRESS.value))
_JOBS = select(Job.job_id, Job.created_at, Job.document, Job.config).where(
    Job.job_id.in_(bindparam("jobs", expanding=True)))


class Deliveries:
    """Reads what things may fetch; keeps what each job delivers (at most `max_jobs`
    jobs; past that the kept ones are dropped and read again when asked)."""

    def __init__(self, db: Database, max_jobs: int) -> None:
        self._db = db
        self._max_jobs = max_jobs
        self._lock = threading.Lock()
        self._by_job: dict[tuple[str, float], Delivered] = {}

    def of_things(self, things: Sequence[str]) -> dict[str, Delivered]:
        """For each of `things`: what it may fetch now (NOTHING if it has no live job)."""
        out = dict.fromkeys(things, NOTHING)
        for start in range(0, len(things), THINGS_PER_READ):
            chunk = list(things[start:start + THINGS_PER_READ])
            with self._db.reading() as s:
                rows = [(thing, (job_id, created)) for thing, job_id, created
                        in s.execute(_LIVE_JOBS_OF_THINGS, {"things": chunk})]
                jobs = self._jobs(s, {job for _thing, job in rows})
            for thing, job in rows:
                delivered = jobs.get(job, NOTHING)
                # Most things have one live job: no union to build (it was most of the time
                # renewing 10,000 things took).
                out[thing] = delivered if out[thing] is NOTHING else out[thing] | delivered
        return out

    def _jobs(self, s: Any, wanted: set[tuple[str, float]]) -> dict[tuple[str, float], Delivered]:
        with self._lock:
            known = {job: self._by_job[job] for job in wanted if job in self._by_job}
        missing = sorted({job_id for job_id, created in wanted if (job_id, created) not in known})
        if not missing:
            return known
        read = {(row.job_id, row.created_at): delivered_by(row.document or {}, row.config or {})
                for row in s.execute(_JOBS, {"jobs": missing})}
        with self._lock:
            if len(self._by_job) + len(read) > self._max_jobs:
                self._by_job.clear()
            self._by_job.update(read)
        return known | read
