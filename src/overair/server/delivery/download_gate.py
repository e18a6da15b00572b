"""Where the download policy (delivery/policy.py) meets the two ways files reach devices.

The HTTPS endpoint asks per Range request (the object version a URL names), the device
service per GetStream request (the stream). Both need the rollout the request belongs
to, for its own limits: the first running job delivering that object or stream whose
config carries `overair:downloadPolicy` (CreateOTAUpdate's additionalParameters). That
lookup reads the running jobs, so it is cached per object or stream for
`LOOKUP_SECONDS` (one read per stream and interval, not per device); the MQTT driver's
fast path, which must never wait on the database, asks with `cached_only` and takes the
normal path when the answer is not cached yet.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from overair.core.jobstates import JobStatus
from overair.server.clock import Clock
from overair.server.delivery.policy import (
    JOB_CONFIG_KEY,
    Decision,
    DownloadLimits,
    DownloadPolicy,
    parse_job_config,
)
from overair.server.jobs.deliveries import HTTP_FILES, PRESIGNED_OBJECTS
from overair.server.jobs.service import JobService
from overair.server.storage.schema import Job

LOOKUP_SECONDS = 2.0
MAX_LOOKUPS = 10_000
Rollout = tuple[str | None, DownloadLimits | None]


class DownloadGate:
    def __init__(self, policy: DownloadPolicy, jobs: JobService, clock: Clock) -> None:
        self.policy = policy
        self._jobs = jobs
        self._clock = clock
        self._lookups: OrderedDict[tuple[str, ...], tuple[float, Rollout]] = OrderedDict()
        self._lock = threading.Lock()
        # A thing whose execution ended (or changed) is done downloading: its slot frees
        # at once rather than when its lease runs out.
        jobs.watch_executions(policy.release)

    def for_object(self, thing: str, bucket: str, key: str, version: str, nbytes: int, *,
                   final: bool = False) -> Decision:
        """`final`: the request reaches the end of the file (the device's slot frees)."""
        wanted = {"bucket": bucket, "key": key, "version": version}

        def delivers(job: Job) -> bool:
            return any({k: f.get(k) for k in wanted} == wanted
                       for name in (HTTP_FILES, PRESIGNED_OBJECTS) for f in job.config.get(name, []))

        rollout = self._rollout(("object", bucket, key, version), delivers, False)
        assert rollout is not None
        return self._admit(thing, nbytes, rollout, final)

    def for_stream(self, thing: str, stream_id: str, nbytes: int, *, final: bool = False,
                   cached_only: bool = False) -> Decision | None:
        """None only with `cached_only`, when the stream's rollout is not cached."""
        def delivers(job: Job) -> bool:
            ota = job.document.get("afr_ota")
            return isinstance(ota, dict) and ota.get("streamname") == stream_id

        rollout = self._rollout(("stream", stream_id), delivers, cached_only)
        return None if rollout is None else self._admit(thing, nbytes, rollout, final)

    def _admit(self, thing: str, nbytes: int, rollout: Rollout, final: bool) -> Decision:
        job_id, limits = rollout
        return self.policy.admit(thing, nbytes, self._clock(), rollout=job_id, rollout_limits=limits,
                                 final=final)

    def _rollout(self, key: tuple[str, ...], delivers: Callable[[Job], bool],
                 cached_only: bool) -> Rollout | None:
        now = time.monotonic()
        with self._lock:
            cached = self._lookups.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        if cached_only:
            return None
        found: Rollout = (None, None)
        for job in self._jobs.list_jobs(JobStatus.IN_PROGRESS.value):
            limits = parse_job_config(job.config.get(JOB_CONFIG_KEY))
            if limits is not None and not limits.unlimited and delivers(job):
                found = (job.job_id, limits)
                break
        with self._lock:
            self._lookups[key] = (now + LOOKUP_SECONDS, found)
            self._lookups.move_to_end(key)
            while len(self._lookups) > MAX_LOOKUPS:
                self._lookups.popitem(last=False)
        return found
