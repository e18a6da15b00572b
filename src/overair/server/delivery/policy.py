"""The fleet download policy: how many devices download at once, and how fast (issue 18).

A rollout to thousands of devices must not saturate the server's uplink or the site's
network, nor let a few fast devices starve the others. Two scopes each carry
`DownloadLimits`: the whole server (`[download_policy]` in overair.toml) and one rollout
(CreateOTAUpdate's `additionalParameters`, `overair:*` keys below). A download request
(one HTTPS Range request, or one GetStream request over MQTT) must pass both:

- **Concurrent downloads**: a device counts as downloading from its first admitted
  request until `lease_seconds` after its latest, or until it asked for the end of the
  file, or its execution changed (ended): whichever comes first. A device that is not
  downloading is admitted only while fewer than `max_concurrent_downloads` are;
  otherwise it is told to come back when the oldest lease runs out (`DownloadSlotsFull`).
- **Bytes per second**, fleet-wide and per device, with fair sharing: each downloading
  device gets at most `bytes_per_second / devices asking` (the devices that asked
  within `lease_seconds` and were not turned away for want of a slot; at most
  `device_bytes_per_second`), so that the devices of a scope share its bandwidth evenly
  however fast each one asks. Buckets may go into debt: a request larger than a second's
  share is served, and the debt is the wait before the device's next one. A device's
  bucket holds at most one second of its share; the fleet's a quarter of a second, so
  that no second carries much more than the cap even after an idle spell.

A refused request carries a reason (`Decision.code`) and how long to wait. The HTTPS
endpoint answers 429 (the device's own rate) or 503 (the scope's capacity) with
`Retry-After`; MQTT answers AWS's rejected response. FreeRTOS devices ignore both and ask
again after their own timeout, giving up after 32 unanswered requests
(device-protocol.md §3): so a device refused `serve_after_refusals` times in a row, over
at least `serve_after_seconds`, is served its next request anyway (counted in the
buckets, no lease). A FreeRTOS device is at worst slowed, never failed by the policy;
a device hammering the server gains at most one request per `serve_after_seconds`.

Pure state behind a lock: time is passed in. Memory is bounded: devices (`max_devices`)
and rollouts (`MAX_ROLLOUTS`) seen least recently are forgotten first.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from overair.core.errors import PeerInputError

# additionalParameters of CreateOTAUpdate (a string-to-string map that AWS clients pass
# through unchanged), and the overair.toml `[download_policy]` keys they mirror.
PARAMETERS = {
    "overair:maxConcurrentDownloads": "max_concurrent_downloads",
    "overair:maxBytesPerSecond": "bytes_per_second",
    "overair:maxDeviceBytesPerSecond": "device_bytes_per_second",
}
SETTINGS_KEYS = frozenset({*PARAMETERS.values(), "lease_seconds", "serve_after_refusals",
                           "serve_after_seconds"})
JOB_CONFIG_KEY = "overair:downloadPolicy"  # where a rollout's limits sit in its job's config
MAX_VALUE = 10**12  # bytes per second (1 TB/s) or devices: anything larger is a mistake
MAX_VALUE_DIGITS = 13
MAX_ROLLOUTS = 1024
SCOPE_BURST_SECONDS = 0.25  # what a scope's bucket holds, in seconds of its rate
# Reasons a request is refused (stable error codes: HTTPS body and Error header, MQTT `o`
# message prefix; docs/configuration.md "Download policy").
SLOTS_FULL = "DownloadSlotsFull"
BANDWIDTH = "DownloadBandwidthExceeded"
DEVICE_RATE = "DeviceDownloadRateExceeded"


@dataclass(frozen=True, slots=True)
class DownloadLimits:
    """0 means unlimited."""

    max_concurrent_downloads: int = 0
    bytes_per_second: int = 0
    device_bytes_per_second: int = 0
    lease_seconds: float = 10.0
    serve_after_refusals: int = 8
    serve_after_seconds: float = 30.0

    @property
    def unlimited(self) -> bool:
        return not (self.max_concurrent_downloads or self.bytes_per_second or self.device_bytes_per_second)

    def to_config(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in PARAMETERS.values()}


def parse_parameters(params: Mapping[str, Any] | None) -> DownloadLimits | None:
    """A rollout's limits from CreateOTAUpdate's additionalParameters; None when it sets
    none. Values are decimal integers as strings (the map's type); PeerInputError names
    the parameter that is not."""
    if not params:
        return None
    given: dict[str, int] = {}
    for parameter, name in PARAMETERS.items():
        value = params.get(parameter)
        if value is None:
            continue
        if not isinstance(value, str):
            raise PeerInputError(f"{parameter} must be a string of digits")
        given[name] = _count(parameter, value.strip())
    return DownloadLimits(**given) if given else None


def parse_job_config(value: Any) -> DownloadLimits | None:
    """The limits stored in a job's config by `to_config` (trusted, but checked again)."""
    if not isinstance(value, dict):
        return None
    try:
        return DownloadLimits(**{name: _bounded(name, value.get(name, 0)) for name in PARAMETERS.values()})
    except PeerInputError:
        return None


def parse_settings(table: Mapping[str, Any]) -> DownloadLimits:
    """overair.toml's `[download_policy]` table; PeerInputError names a bad key."""
    unknown = set(table) - SETTINGS_KEYS
    if unknown:
        raise PeerInputError(f"unknown keys {sorted(unknown)}")
    given: dict[str, Any] = {name: _bounded(name, table[name])
                             for name in PARAMETERS.values() if name in table}
    lease = table.get("lease_seconds", 10.0)
    if isinstance(lease, bool) or not isinstance(lease, int | float) or not 1.0 <= lease <= 3600.0:
        raise PeerInputError("lease_seconds must be a number of seconds from 1 to 3600")
    refusals = _bounded("serve_after_refusals", table.get("serve_after_refusals", 8))
    if not 1 <= refusals <= 16:
        # FreeRTOS aborts after 32 unanswered requests: serving one in 16 keeps it alive.
        raise PeerInputError("serve_after_refusals must be from 1 to 16")
    starved = table.get("serve_after_seconds", 30.0)
    if isinstance(starved, bool) or not isinstance(starved, int | float) or not 0.0 <= starved <= 300.0:
        # FreeRTOS asks every 10 s or so: 16 requests take 150 s or more.
        raise PeerInputError("serve_after_seconds must be a number of seconds from 0 to 300")
    return DownloadLimits(**given, lease_seconds=float(lease), serve_after_refusals=refusals,
                          serve_after_seconds=float(starved))


def _count(parameter: str, text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > MAX_VALUE_DIGITS:
        raise PeerInputError(f"{parameter} must be a whole number from 0 to {MAX_VALUE}")
    return _bounded(parameter, int(text))


def _bounded(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_VALUE:
        raise PeerInputError(f"{name} must be a whole number from 0 to {MAX_VALUE}")
    return value


@dataclass(frozen=True, slots=True)
class Decision:
    admitted: bool
    code: str = ""
    message: str = ""
    retry_after: float = 0.0  # seconds until the request would be admitted
    own_rate: bool = False  # refused for the device's own rate (429), not the scope's capacity (503)

    @property
    def retry_after_seconds(self) -> int:
        """For a Retry-After header (whole seconds, at least one)."""
        return max(1, math.ceil(self.retry_after))

    @property
    def retry_after_ms(self) -> int:
        """The same to the millisecond (`x-overair-retry-after-ms`, the MQTT message): a
        device that knows it comes back when its share allows, not at the next second."""
        return max(1, math.ceil(self.retry_after * 1000))


ADMITTED = Decision(True)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float

    def refill(self, rate: float, burst: float, now: float) -> None:
        # A clock that went back refills nothing.
        self.tokens = min(burst, self.tokens + max(0.0, now - self.at) * rate)
        self.at = max(self.at, now)


@dataclass(slots=True)
class _Scope:
    limits: DownloadLimits
    leases: OrderedDict[str, float] = field(default_factory=OrderedDict)  # device -> lease end, oldest first
    # Devices sharing the bandwidth: they asked within a lease and had (or got) a slot.
    asking: OrderedDict[str, float] = field(default_factory=OrderedDict)
    devices: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict)
    bucket: _Bucket | None = None

    def expire(self, now: float) -> None:
        for table in (self.leases, self.asking):
            while table and next(iter(table.values())) <= now:
                table.popitem(last=False)

    def device_rate(self) -> float:
        """The fair share of one downloading device (0: unlimited)."""
        rates = [float(self.limits.device_bytes_per_second)] if self.limits.device_bytes_per_second else []
        if self.limits.bytes_per_second:
            rates.append(self.limits.bytes_per_second / max(1, len(self.asking)))
        return min(rates) if rates else 0.0

    def check(self, device: str, scope_name: str, now: float, max_devices: int) -> Decision:
        self.expire(now)
        cap = self.limits.max_concurrent_downloads
        if cap and device not in self.leases and len(self.leases) >= cap:
            # When the oldest lease runs out at the latest; slots also free earlier (a
            # device's last blocks, an execution's end), so ask again after a quarter
            # of a lease at most.
            wait = min(next(iter(self.leases.values())) - now, max(1.0, self.limits.lease_seconds / 4))
            return Decision(False, SLOTS_FULL, f"{len(self.leases)} of {cap} {scope_name} download slots "
                                               "are taken", wait)
        self.asking[device] = now + self.limits.lease_seconds
        self.asking.move_to_end(device)
        while len(self.asking) > max_devices:
            self.asking.popitem(last=False)
        rate = self.device_rate()
        if rate:
            bucket = self._device_bucket(device, rate, now)
            if bucket.tokens < 0:
                own = bool(self.limits.device_bytes_per_second) \
                    and rate >= self.limits.device_bytes_per_second
                what = "the device's download rate" if own \
                    else f"the device's share of the {scope_name} bandwidth"
                return Decision(False, DEVICE_RATE if own else BANDWIDTH, f"over {what} ({rate:.0f} B/s)",
                                -bucket.tokens / rate, own_rate=own)
        total = self.limits.bytes_per_second
        if total:
            bucket = self._scope_bucket(now)
            if bucket.tokens < 0:
                return Decision(False, BANDWIDTH, f"over the {scope_name} bandwidth ({total} B/s)",
                                -bucket.tokens / total)
        return ADMITTED

    def spend(self, device: str, nbytes: int, now: float, *, lease: bool, done: bool,
              max_devices: int) -> None:
        """Account for an admitted request; `lease`: it holds (or renews) a slot, `done`:
        it was the device's last (its slot and its share free at once)."""
        if done:
            self.leases.pop(device, None)
            self.asking.pop(device, None)
        elif lease:
            self.leases[device] = now + self.limits.lease_seconds
            self.leases.move_to_end(device)
            while len(self.leases) > max_devices:  # only without a cap could they grow so
                self.leases.popitem(last=False)
        rate = self.device_rate()
        if rate:
            self._device_bucket(device, rate, now).tokens -= nbytes
            self.devices.move_to_end(device)
            while len(self.devices) > max_devices:
                self.devices.popitem(last=False)
        if self.limits.bytes_per_second:
            self._scope_bucket(now).tokens -= nbytes

    def _device_bucket(self, device: str, rate: float, now: float) -> _Bucket:
        bucket = self.devices.get(device)
        if bucket is None:
            bucket = self.devices[device] = _Bucket(rate, now)
        bucket.refill(rate, rate, now)  # burst: one second of the device's share
        return bucket

    def _scope_bucket(self, now: float) -> _Bucket:
        rate = float(self.limits.bytes_per_second)
        burst = rate * SCOPE_BURST_SECONDS
        if self.bucket is None:
            self.bucket = _Bucket(burst, now)
        self.bucket.refill(rate, burst, now)
        return self.bucket


@dataclass(slots=True)
class Counters:
    """What the policy decided, for operators and tests (counted at the server)."""

    admitted: int = 0
    forced: int = 0  # served after `serve_after_refusals` refusals in a row
    refused: dict[str, int] = field(default_factory=dict)
    bytes_admitted: int = 0


class DownloadPolicy:
    def __init__(self, server: DownloadLimits, *, max_devices: int = 100_000) -> None:
        self._server = _Scope(server)
        self._server_limits = server
        self._rollouts: OrderedDict[str, _Scope] = OrderedDict()
        # device -> (refusals in a row, when the first of them was)
        self._refusals: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._max_devices = max(1, max_devices)
        self._lock = threading.Lock()
        self.counters = Counters()

    @property
    def server_limits(self) -> DownloadLimits:
        return self._server_limits

    def admit(self, device: str, nbytes: int, now: float, *, rollout: str | None = None,
              rollout_limits: DownloadLimits | None = None, final: bool = False) -> Decision:
        """May `device` be sent `nbytes` now? Admitted requests are accounted for; a
        `final` one (it reaches the end of the file) frees the device's slot."""
        with self._lock:
            scopes: list[tuple[_Scope, str]] = [(self._server, "server")]
            if rollout is not None and rollout_limits is not None and not rollout_limits.unlimited:
                scopes.append((self._rollout(rollout, rollout_limits), "rollout"))
            if all(scope.limits.unlimited for scope, _ in scopes):
                self.counters.admitted += 1
                self.counters.bytes_admitted += nbytes
                return ADMITTED
            checks = (scope.check(device, name, now, self._max_devices) for scope, name in scopes)
            refused = next((d for d in checks if not d.admitted), None)
            if refused is not None:
                count, since = self._refusals.get(device, (0, now))
                count += 1
                if count < self._server_limits.serve_after_refusals \
                        or now - since < self._server_limits.serve_after_seconds:
                    self._refusals[device] = (count, since)
                    self._refusals.move_to_end(device)
                    while len(self._refusals) > self._max_devices:
                        self._refusals.popitem(last=False)
                    self.counters.refused[refused.code] = self.counters.refused.get(refused.code, 0) + 1
                    return refused
                self.counters.forced += 1  # starvation guard: served, but no slot taken
            self._refusals.pop(device, None)
            for scope, _ in scopes:
                scope.spend(device, nbytes, now, lease=refused is None, done=final,
                            max_devices=self._max_devices)
            self.counters.admitted += 1
            self.counters.bytes_admitted += nbytes
            return ADMITTED

    def _rollout(self, rollout: str, limits: DownloadLimits) -> _Scope:
        # Rollouts share the server's lease and starvation settings.
        wanted = DownloadLimits(limits.max_concurrent_downloads, limits.bytes_per_second,
                                limits.device_bytes_per_second, self._server_limits.lease_seconds,
                                self._server_limits.serve_after_refusals,
                                self._server_limits.serve_after_seconds)
        scope = self._rollouts.get(rollout)
        if scope is None or scope.limits != wanted:  # new, or its limits changed
            scope = self._rollouts[rollout] = _Scope(wanted)
        self._rollouts.move_to_end(rollout)
        while len(self._rollouts) > MAX_ROLLOUTS:
            self._rollouts.popitem(last=False)
        return scope

    def release(self, devices: list[str]) -> None:
        """These devices are done downloading (their executions changed): free their slots."""
        with self._lock:
            for scope in (self._server, *self._rollouts.values()):
                for device in devices:
                    scope.leases.pop(device, None)
                    scope.asking.pop(device, None)

    def downloading(self, rollout: str | None = None, now: float | None = None) -> int:
        """Devices holding a download slot (server-wide, or of one rollout)."""
        with self._lock:
            scope = self._server if rollout is None else self._rollouts.get(rollout)
            if scope is None:
                return 0
            if now is not None:
                scope.expire(now)
            return len(scope.leases)
