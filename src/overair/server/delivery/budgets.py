"""What one device may make the server do: token buckets per device and kind of request.

Every request a device sends costs the server work and may cost it a database write (a
status update, an audit entry). Without a bound, one device flooding its own topics
grows the database and starves the others (issue 12, finding 11). Each device has one
bucket per kind of request (`Kind`: job updates, job reads, stream requests over MQTT,
calls to the HTTPS Jobs API, downloads): a bucket holds up to `burst` tokens, refills at
`per_second`, and a request takes one token or is refused. The figures come from the
`Limits` object and are far above what a device following the protocol sends (the
FreeRTOS agent: one GetStream per `n` blocks, a progress update every few dozen blocks).

Devices are keyed by the identity the transport authenticated: the thing in an MQTT
topic (the broker ACL confines a certificate to its things' topics), the certificate on
the HTTPS Jobs API (checked before the thing it names is authorized, so a certificate
probing other things' names is bounded too), the thing a download URL's signature binds.

Pure state plus a lock: time is passed in. Memory is bounded by `max_devices`: the
least recently seen buckets are dropped first (a dropped bucket comes back full, which
only forgives a device idle for longer than the others).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum

from overair.core.limits import Limits


class Kind(Enum):
    JOB_UPDATE = "job-update"  # $aws/things/T/jobs/J/update, start-next
    JOB_READ = "job-read"  # $next/get, get, J/get
    STREAM = "stream"  # streams/S/get|describe
    HTTPS_API = "https-api"  # iot-jobs-data over HTTPS
    DOWNLOAD = "download"  # pre-signed URL GET/HEAD


@dataclass(frozen=True, slots=True)
class Rate:
    burst: float
    per_second: float


def rates(limits: Limits) -> dict[Kind, Rate]:
    return {
        Kind.JOB_UPDATE: Rate(limits.device_job_updates_burst, limits.device_job_updates_per_second),
        Kind.JOB_READ: Rate(limits.device_job_reads_burst, limits.device_job_reads_per_second),
        Kind.STREAM: Rate(limits.device_stream_requests_burst, limits.device_stream_requests_per_second),
        Kind.HTTPS_API: Rate(limits.device_https_calls_burst, limits.device_https_calls_per_second),
        Kind.DOWNLOAD: Rate(limits.device_downloads_burst, limits.device_downloads_per_second),
    }


class DeviceBudgets:
    def __init__(self, limits: Limits) -> None:
        self._rates = rates(limits)
        self._max = max(1, limits.device_budgets_tracked)
        self._lock = threading.Lock()
        # (device, kind) -> (tokens left, when they were counted)
        self._buckets: OrderedDict[tuple[str, Kind], tuple[float, float]] = OrderedDict()

    def take(self, device: str, kind: Kind, now: float, *, keep: float = 0.0) -> bool:
        """Spend one token of `device`'s `kind` bucket; False if it is empty, or if
        spending it would leave fewer than `keep` tokens (a reserve that lower-priority
        requests may not touch)."""
        rate = self._rates[kind]
        key = (device, kind)
        with self._lock:
            tokens, then = self._buckets.get(key, (rate.burst, now))
            # A clock that went back refills nothing; one that jumped ahead refills at most
            # the burst.
            tokens = min(rate.burst, tokens + max(0.0, now - then) * rate.per_second)
            allowed = tokens >= 1.0 + keep
            self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
            self._buckets.move_to_end(key)
            while len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        return allowed
