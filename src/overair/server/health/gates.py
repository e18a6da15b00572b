"""Health gates of a rollout, and the pure decision over stored reports (issue 18).

A health-gated rollout releases its executions in cohorts of `cohort_size` devices, in
the job's execution order. The devices released so far (the updated cohort) are compared
with the targets not yet released (the control) over the window, from the reports in
their `overair-health` shadows (core/health.py):

- **crash rate**: the share of reporting devices with at least one application crash.
  The gate is crossed when the updated cohort's rate exceeds `max_crash_ratio` times
  the control's and at least one updated device crashed (a control without crashes
  makes any crash count);
- **metrics**: any updated device reporting a metric above its threshold.

A gate is judged only once `min_samples` updated devices reported for this job (their
report's `jobId` is the job's). Crossed, it acts (`action`): PAUSE holds the releases
until ResumeRollout; CANCEL cancels the job (queued executions canceled, those in
progress may finish); CANCEL_AND_ROLLBACK force-cancels it, so that every device still
in its window (an overair agent keeps the new image on trial, uncommitted, for the
window) rolls back to the image it ran before.

A cohort is done when each of its executions ended and `window_seconds` passed since its
last release; then the next cohort is released, or (with `approval`) the rollout waits
for ResumeRollout first. `decide` reads nothing but its arguments: the same stored
executions, reports, persisted state and `now` give the same decision, so a restarted
server decides as the one before it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from overair.core.errors import PeerInputError
from overair.core.health import MAX_WINDOW_SECONDS, METRIC_NAME, HealthReport
from overair.core.limits import DEFAULT_LIMITS, Limits

# CreateOTAUpdate's additionalParameters (a string-to-string map AWS clients pass through
# unchanged), as `overair:maxConcurrentDownloads` (server/delivery/policy.py).
WINDOW = "overair:healthWindowSeconds"
COHORT = "overair:healthCohortSize"
CRASH_RATIO = "overair:healthMaxCrashRatio"
MIN_SAMPLES = "overair:healthMinSamples"
ACTION = "overair:healthAction"
APPROVAL = "overair:healthApproval"
METRIC_PREFIX = "overair:healthMetricMax."
ACTIONS = ("PAUSE", "CANCEL", "CANCEL_AND_ROLLBACK")
JOB_CONFIG_KEY = "overair:healthGates"  # the gates, in the job's config
STATE_KEY = "overair:healthState"  # what the monitor decided, in the job's config
REASON_CODE = "HEALTH_GATE"  # CancelJob's reasonCode when a gate cancels (DescribeJob)
MAX_COHORT = 100_000


class InvalidHealthGates(PeerInputError):
    code = "InvalidRequestException"


@dataclass(frozen=True, slots=True)
class HealthGates:
    window_seconds: int
    cohort_size: int
    max_crash_ratio: float = 2.0
    min_samples: int = 1
    action: str = "PAUSE"
    approval: bool = False
    metric_max: dict[str, float] = field(default_factory=dict)

    def to_config(self) -> dict[str, Any]:
        return {"windowSeconds": self.window_seconds, "cohortSize": self.cohort_size,
                "maxCrashRatio": self.max_crash_ratio, "minSamples": self.min_samples,
                "action": self.action, "approval": self.approval, "metricMax": dict(self.metric_max)}

    @classmethod
    def from_config(cls, raw: Any) -> HealthGates | None:
        """The gates stored by `to_config` (trusted, but checked again: None if unusable)."""
        if not isinstance(raw, Mapping):
            return None
        try:
            gates = cls(int(raw["windowSeconds"]), int(raw["cohortSize"]), float(raw["maxCrashRatio"]),
                        int(raw["minSamples"]), str(raw["action"]), bool(raw["approval"]),
                        {str(k): float(v) for k, v in dict(raw["metricMax"]).items()})
        except (KeyError, TypeError, ValueError, OverflowError):
            return None
        usable = (1 <= gates.window_seconds <= MAX_WINDOW_SECONDS and 1 <= gates.cohort_size <= MAX_COHORT
                  and gates.action in ACTIONS and math.isfinite(gates.max_crash_ratio))
        return gates if usable else None


def _integer(parameter: str, text: str, low: int, high: int) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 9 or not low <= int(text) <= high:
        raise InvalidHealthGates(f"{parameter} must be an integer from {low} to {high}")
    return int(text)


def _number(parameter: str, text: str) -> float:
    try:
        value = float(text) if len(text) <= 32 else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or abs(value) > 1e15:
        raise InvalidHealthGates(f"{parameter} must be a finite number")
    return value


def parse_parameters(params: Mapping[str, Any] | None, limits: Limits = DEFAULT_LIMITS) -> HealthGates | None:
    """A rollout's gates from additionalParameters; None when it sets none. The window and
    the cohort size are required once any health parameter is given."""
    if not params:
        return None
    given = {k: v for k, v in params.items() if isinstance(k, str) and k.startswith("overair:health")}
    if not given:
        return None
    for key, value in given.items():
        if not isinstance(value, str):
            raise InvalidHealthGates(f"{key[:80]} must be a string")
    known = {WINDOW, COHORT, CRASH_RATIO, MIN_SAMPLES, ACTION, APPROVAL}
    metric_keys = [k for k in given if k.startswith(METRIC_PREFIX)]
    unknown = sorted(set(given) - known - set(metric_keys))
    if unknown:
        raise InvalidHealthGates(f"unknown health parameter {unknown[0][:80]}")
    if WINDOW not in given or COHORT not in given:
        raise InvalidHealthGates(f"a health-gated rollout needs {WINDOW} and {COHORT}")
    if len(metric_keys) > limits.max_health_metric_gates:
        raise InvalidHealthGates(f"at most {limits.max_health_metric_gates} metric gates")
    metric_max: dict[str, float] = {}
    for key in metric_keys:
        name = key[len(METRIC_PREFIX):]
        if not METRIC_NAME.fullmatch(name):
            raise InvalidHealthGates(f"{key[:80]}: metric names are 1 to 64 characters of [A-Za-z0-9_.-]")
        metric_max[name] = _number(key, given[key].strip())
    ratio = _number(CRASH_RATIO, given[CRASH_RATIO].strip()) if CRASH_RATIO in given else 2.0
    if not 0 <= ratio <= 1000:
        raise InvalidHealthGates(f"{CRASH_RATIO} must be from 0 to 1000")
    action = given.get(ACTION, "PAUSE").strip().upper()
    if action not in ACTIONS:
        raise InvalidHealthGates(f"{ACTION} must be one of {', '.join(ACTIONS)}")
    approval = given.get(APPROVAL, "false").strip().lower()
    if approval not in ("true", "false"):
        raise InvalidHealthGates(f"{APPROVAL} must be true or false")
    return HealthGates(
        window_seconds=_integer(WINDOW, given[WINDOW].strip(), 1, MAX_WINDOW_SECONDS),
        cohort_size=_integer(COHORT, given[COHORT].strip(), 1, MAX_COHORT),
        max_crash_ratio=ratio,
        min_samples=(_integer(MIN_SAMPLES, given[MIN_SAMPLES].strip(), 1, MAX_COHORT)
                     if MIN_SAMPLES in given else 1),
        action=action, approval=approval == "true", metric_max=metric_max)


# --- the decision ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Execution:
    """One target's execution, in the job's execution order."""

    thing: str
    released_at: float | None
    ended: bool


@dataclass(frozen=True, slots=True)
class RolloutHealthState:
    """What the monitor persisted (STATE_KEY): the gate that fired, and what the operator
    accepted (ResumeRollout)."""

    status: str = "OBSERVING"  # OBSERVING, AWAITING_APPROVAL, PAUSED, CANCELED, PASSED
    accepted_through: int = -1  # cohorts whose figures a resume accepted
    approved_through: int = -1  # cohorts whose successor a resume approved
    figures: dict[str, Any] = field(default_factory=dict)
    decided_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "acceptedThrough": self.accepted_through,
                "approvedThrough": self.approved_through, "figures": self.figures,
                "decidedAt": self.decided_at}

    @classmethod
    def from_json(cls, raw: Any) -> RolloutHealthState:
        if not isinstance(raw, Mapping):
            return cls()
        try:
            figures = raw.get("figures")
            return cls(str(raw.get("status", "OBSERVING")), int(raw.get("acceptedThrough", -1)),
                       int(raw.get("approvedThrough", -1)),
                       dict(figures) if isinstance(figures, Mapping) else {},
                       None if raw.get("decidedAt") is None else float(raw["decidedAt"]))
        except (TypeError, ValueError, OverflowError):
            return cls()


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: str  # OBSERVING, ADVANCE, AWAITING_APPROVAL, GATE_CROSSED, HELD, DONE
    release_cap: int  # how many executions may be released in all
    cohort: int  # the cohort under observation (0-based; -1: none released yet)
    figures: dict[str, Any]
    reason: str


def _rate(crashed: int, sampled: int) -> float:
    return crashed / sampled if sampled else 0.0


def _figures(gates: HealthGates, job_id: str, updated: Sequence[str], control: Sequence[str],
             reports: Mapping[str, HealthReport]) -> dict[str, Any]:
    sample = [reports[t] for t in updated if t in reports and reports[t].job_id == job_id]
    control_sample = [reports[t] for t in control if t in reports and reports[t].job_id != job_id]
    crashed = sorted(t for t in updated if t in reports and reports[t].job_id == job_id
                     and reports[t].crashes > 0)
    control_crashed = sum(1 for r in control_sample if r.crashes > 0)
    breaches: list[dict[str, Any]] = []
    for name, limit in sorted(gates.metric_max.items()):
        worst = max((r.metrics[name] for r in sample if name in r.metrics), default=None)
        if worst is not None and worst > limit:
            breaches.append({"metric": name, "max": limit, "worst": worst,
                             "devices": sum(1 for r in sample if r.metrics.get(name, -math.inf) > limit)})
    return {"updatedReporting": len(sample), "updatedCrashed": len(crashed),
            "updatedCrashRate": round(_rate(len(crashed), len(sample)), 4),
            "controlReporting": len(control_sample), "controlCrashed": control_crashed,
            "controlCrashRate": round(_rate(control_crashed, len(control_sample)), 4),
            "maxCrashRatio": gates.max_crash_ratio, "minSamples": gates.min_samples,
            "crashedThings": crashed[:20], "metricBreaches": breaches}


def _crossed(gates: HealthGates, figures: Mapping[str, Any]) -> str | None:
    if figures["updatedReporting"] < gates.min_samples:
        return None
    rate, control = figures["updatedCrashRate"], figures["controlCrashRate"]
    if figures["updatedCrashed"] > 0 and rate > gates.max_crash_ratio * control:
        return (f"crash rate {rate:.0%} ({figures['updatedCrashed']}/{figures['updatedReporting']} updated "
                f"devices) exceeds {gates.max_crash_ratio:g}x the control's {control:.0%} "
                f"({figures['controlCrashed']}/{figures['controlReporting']})")
    for breach in figures["metricBreaches"]:
        return (f"metric {breach['metric']} reached {breach['worst']:g} on {breach['devices']} updated "
                f"device(s), above {breach['max']:g}")
    return None


def decide(gates: HealthGates, job_id: str, executions: Sequence[Execution],
           reports: Mapping[str, HealthReport], state: RolloutHealthState, now: float) -> Decision:
    """What the rollout does next. `executions` in the job's execution order; `reports`
    the parsed health reports by thing (missing or unparsable: absent)."""
    size = gates.cohort_size
    released = [e for e in executions if e.released_at is not None]
    total = len(executions)
    cohort = (len(released) + size - 1) // size - 1  # the latest cohort released
    if state.status in ("PAUSED", "CANCELED"):
        return Decision("HELD", len(released), cohort, state.figures, f"rollout {state.status.lower()}")
    # Judged: the devices released after the cohorts a resume accepted.
    judged = [e.thing for e in released[(state.accepted_through + 1) * size:]]
    control = [e.thing for e in executions if e.released_at is None]
    figures = {"cohort": cohort, "cohortSize": size, "released": len(released), "targets": total,
               **_figures(gates, job_id, judged, control, reports)}
    why = _crossed(gates, figures) if cohort > state.accepted_through else None
    if why is not None:
        return Decision("GATE_CROSSED", len(released), cohort, figures, why)
    if cohort < 0:
        return Decision("ADVANCE", min(size, total), cohort, figures, "first cohort")
    current = released[cohort * size:]
    last_release = max(e.released_at or 0.0 for e in current)
    done = all(e.ended for e in current) and now >= last_release + gates.window_seconds
    if not done:
        return Decision("OBSERVING", min((cohort + 1) * size, total), cohort, figures,
                        f"observing cohort {cohort + 1} for {gates.window_seconds} s")
    if len(released) >= total:
        return Decision("DONE", total, cohort, figures, "every cohort passed its window")
    if gates.approval and state.approved_through < cohort:
        return Decision("AWAITING_APPROVAL", len(released), cohort, figures,
                        f"cohort {cohort + 1} passed; waiting for ResumeRollout")
    return Decision("ADVANCE", min((cohort + 2) * size, total), cohort, figures,
                    f"cohort {cohort + 1} passed its window")
