"""Device health reports after an update (issue 18, health-gated rollouts).

A device reports its health in the reported state of its named shadow `overair-health`
(AWS's Device Shadow service: `$aws/things/<thing>/shadow/name/overair-health/update`,
or iot-data UpdateThingShadow), which any device that speaks the shadow protocol can
use, FreeRTOS included. The broker lets a device publish only to its own shadow topics,
so a report is attributed to the thing the connection is attached to; the shadow keeps
the latest state only, so a flood of reports stores one document per thing.

The reported state (every member optional; counts since `since`, the device's boot of
the image it runs):

    {"jobId": "ota-1" | null,   the job whose image runs (null: none, or not known)
     "version": "1.1.0",        the running image's version
     "since": 1765000000,       when counting started (device clock, informational)
     "crashes": 0,              exits of the application with a non-zero code
     "lastExitCode": null,      the latest such exit code
     "reboots": 0,              boots of this image beyond the first
     "selfTest": "PASSED",      PASSED, FAILED or PENDING
     "metrics": {"temp_c": 51.5}}  custom numeric metrics (names [A-Za-z0-9_.-]{1,64})

Reports are untrusted: `parse_report` accepts exactly this shape within the `Limits`
bounds and raises `InvalidHealthReport` (stable code) for anything else. The shadow
service refuses such an update (400 with the code in the message), so no stored report
is malformed; the decision code parses again anyway and ignores what does not parse.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from overair.core.errors import PeerInputError
from overair.core.limits import DEFAULT_LIMITS, Limits

SHADOW_NAME = "overair-health"
SELF_TEST_VALUES = ("PASSED", "FAILED", "PENDING")
METRIC_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_TEXT = 128  # jobId (AWS: 64), version
_KEYS = frozenset({"jobId", "version", "since", "crashes", "lastExitCode", "reboots", "selfTest", "metrics"})


class InvalidHealthReport(PeerInputError):
    code = "InvalidHealthReport"


@dataclass(frozen=True, slots=True)
class HealthReport:
    job_id: str | None = None
    version: str | None = None
    since: int | None = None
    crashes: int = 0
    last_exit_code: int | None = None
    reboots: int = 0
    self_test: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def to_reported(self) -> dict[str, Any]:
        return {"jobId": self.job_id, "version": self.version, "since": self.since,
                "crashes": self.crashes, "lastExitCode": self.last_exit_code, "reboots": self.reboots,
                "selfTest": self.self_test, "metrics": dict(self.metrics)}


def _count(name: str, value: Any, limits: Limits) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limits.max_health_count:
        raise InvalidHealthReport(f"{name} must be an integer from 0 to {limits.max_health_count}")
    return value


def _text(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_TEXT or not value.isprintable():
        raise InvalidHealthReport(f"{name} must be printable text of 1 to {MAX_TEXT} characters")
    return value


def _metrics(value: Any, limits: Limits) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidHealthReport("metrics must be an object of numbers")
    if len(value) > limits.max_health_metrics:
        raise InvalidHealthReport(f"at most {limits.max_health_metrics} metrics")
    out: dict[str, float] = {}
    for name, number in value.items():
        if not isinstance(name, str) or not METRIC_NAME.fullmatch(name):
            raise InvalidHealthReport("metric names are 1 to 64 characters of [A-Za-z0-9_.-]")
        if number is None:  # a shadow update deletes a member with null
            continue
        if isinstance(number, bool) or not isinstance(number, int | float) \
                or not math.isfinite(number) or abs(number) > 1e15:
            raise InvalidHealthReport(f"metric {name} must be a finite number")
        out[name] = float(number)
    return out


def parse_report(reported: Any, limits: Limits = DEFAULT_LIMITS) -> HealthReport:
    """A report from a shadow's reported state (already decoded by core.wirejson)."""
    if not isinstance(reported, Mapping):
        raise InvalidHealthReport("the reported state must be an object")
    unknown = set(reported) - _KEYS
    if unknown:
        raise InvalidHealthReport(f"unknown members {sorted(str(k)[:32] for k in unknown)[:4]}")
    since = reported.get("since")
    if since is not None and (isinstance(since, bool) or not isinstance(since, int)
                              or not 0 <= since < 10**11):
        raise InvalidHealthReport("since must be epoch seconds")
    exit_code = reported.get("lastExitCode")
    if exit_code is not None and (isinstance(exit_code, bool) or not isinstance(exit_code, int)
                                  or not -(2**31) <= exit_code < 2**32):
        raise InvalidHealthReport("lastExitCode must be an exit status")
    self_test = reported.get("selfTest")
    if self_test is not None and self_test not in SELF_TEST_VALUES:
        raise InvalidHealthReport(f"selfTest must be one of {', '.join(SELF_TEST_VALUES)}")
    return HealthReport(
        job_id=_text("jobId", reported.get("jobId")), version=_text("version", reported.get("version")),
        since=since, crashes=_count("crashes", reported.get("crashes", 0) or 0, limits),
        last_exit_code=exit_code, reboots=_count("reboots", reported.get("reboots", 0) or 0, limits),
        self_test=self_test, metrics=_metrics(reported.get("metrics"), limits))


def health_window(document: Any) -> float:
    """The health window a job document asks of an overair agent (`overair.health.
    windowSeconds`, set by the server for a health-gated rollout): the agent keeps the
    new image on trial, reporting, for that long before committing it. 0: none."""
    extension = document.get("overair") if isinstance(document, dict) else None
    health = extension.get("health") if isinstance(extension, dict) else None
    seconds = health.get("windowSeconds") if isinstance(health, dict) else None
    if isinstance(seconds, bool) or not isinstance(seconds, int) or not 0 < seconds <= MAX_WINDOW_SECONDS:
        return 0.0
    return float(seconds)


MAX_WINDOW_SECONDS = 7 * 24 * 3600
