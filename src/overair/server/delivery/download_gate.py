"""Where the download policy (delivery/policy.py) meets the two ways files reach devices.

The HTTPS endpoint asks per Range request (the object version a URL names), the device
service per GetStream request (the stream). Both need the rollout the request belongs
to, for its own limits: the running jobs delivering that object or stream, the first
one whose config carries `overair:downloadPolicy` (CreateOTAUpdate's additionalParameters).
That lookup reads the database, so it is cached for `LOOKUP_SECONDS`; the MQTT driver's
fast path, which must never wait on the database, asks with `cached_only` and takes the
normal path when the answer is not cached yet.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from overair.server.clock import Clock
from overair.server.delivery.policy import (
    JOB_CONFIG_KEY,
    Decision,
    DownloadLimits,
    DownloadPolicy,
    parse_job_config,
)
from overair.server.jobs.service import JobService

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
        rollout = self._rollout(("object", bucket, key, version),
                                lambda: self._jobs.jobs_delivering_object(bucket, key, version), False)
        assert rollout is not None
        return self._admit(thing, nbytes, rollout, final)

    def for_stream(self, thing: str, stream_id: str, nbytes: int, *, final: bool = False,
                   cached_only: bool = False) -> Decision | None:
        """None only with `cached_only`, when the stream's rollout is not cached."""
        rollout = self._rollout(("stream", stream_id), lambda: self._jobs.jobs_referencing_stream(stream_id),
                                cached_only)
        return None if rollout is None else self._admit(thing, nbytes, rollout, final)

    def _admit(self, thing: str, nbytes: int, rollout: Rollout, final: bool) -> Decision:
        job_id, limits = rollout
        return self.policy.admit(thing, nbytes, self._clock(), rollout=job_id, rollout_limits=limits,
                                 final=final)

    def _rollout(self, key: tuple[str, ...], job_ids: Callable[[], list[str]],
                 cached_only: bool) -> Rollout | None:
        now = time.monotonic()
        with self._lock:
            cached = self._lookups.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        if cached_only:
            return None
        found: Rollout = (None, None)
        for job_id in job_ids():
            limits = parse_job_config(self._jobs.describe_job(job_id)[0].config.get(JOB_CONFIG_KEY))
            if limits is not None and not limits.unlimited:
                found = (job_id, limits)
                break
        with self._lock:
            self._lookups[key] = (now + LOOKUP_SECONDS, found)
            self._lookups.move_to_end(key)
            while len(self._lookups) > MAX_LOOKUPS:
                self._lookups.popitem(last=False)
        return found
