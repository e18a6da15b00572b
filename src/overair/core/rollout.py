"""Rollout, abort, timeout and retry rules of AWS IoT Jobs, as pure functions.

The job scheduler (server/jobs/scheduler.py) calls these with counts read from the
database and `now`; everything they decide is written back, so a restarted server picks
up exactly where it stopped. No clock, no I/O here: tests drive them with numbers.

- Rollout (`jobExecutionsRolloutConfig`): executions are released in one-minute
  windows, at most `rate` per window. With `exponentialRate` the rate starts at
  `baseRatePerMinute` and is multiplied by `incrementFactor` each time
  `numberOfNotifiedThings` more things were released (or `numberOfSucceededThings`
  more succeeded) since the last increase, never above `maximumPerMinute`.
- Abort (`abortConfig`): a criterion fires when at least `minNumberOfExecutedThings`
  executions have ended and the share of those that ended with its failure type is at
  least `thresholdPercentage`.
- Timeout (`timeoutConfig.inProgressTimeoutInMinutes`, or a device's
  `stepTimeoutInMinutes`): an IN_PROGRESS execution past its deadline is TIMED_OUT.
- Retry (`jobExecutionsRetryConfig`): a FAILED or TIMED_OUT execution is queued again
  (a new execution number) while its failure type has retries left.
- Scheduling (`schedulingConfig`): nothing is released before `startTime`; at
  `endTime` the rollout stops (STOP_ROLLOUT) or the job is canceled (CANCEL,
  FORCE_CANCEL). With `maintenanceWindows` (an AWS cron expression for each window's
  start and a duration, core/cron.py) executions are released only while a window is
  open; outside them the rollout pauses, and executions already released carry on.
  Whether a window is open is a pure function of the configuration and `now`, so a
  restarted server decides exactly as the one before it: nothing about windows is
  persisted.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from overair.core import cron
from overair.core.errors import PeerInputError

WINDOW_SECONDS = 60.0
MAX_RATE = 1000
FAILURE_TYPES = ("FAILED", "REJECTED", "TIMED_OUT", "ALL")
RETRY_FAILURE_TYPES = ("FAILED", "TIMED_OUT", "ALL")


class InvalidJobConfig(PeerInputError):
    code = "InvalidRequestException"


def _int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidJobConfig(f"{name} must be an integer from {low} to {high}")
    return value


# --- rollout ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RolloutConfig:
    maximum_per_minute: int | None = None
    base_rate: int | None = None  # exponentialRate.baseRatePerMinute
    increment_factor: float = 1.0
    notified_step: int | None = None  # rateIncreaseCriteria.numberOfNotifiedThings
    succeeded_step: int | None = None  # rateIncreaseCriteria.numberOfSucceededThings

    @property
    def limited(self) -> bool:
        return self.maximum_per_minute is not None or self.base_rate is not None

    @classmethod
    def from_aws(cls, raw: Mapping[str, Any] | None) -> RolloutConfig:
        if not raw:
            return cls()
        maximum = raw.get("maximumPerMinute")
        if maximum is not None:
            maximum = _int(maximum, "maximumPerMinute", 1, MAX_RATE)
        exponential = raw.get("exponentialRate")
        if not exponential:
            return cls(maximum_per_minute=maximum)
        base = _int(exponential.get("baseRatePerMinute"), "baseRatePerMinute", 1, MAX_RATE)
        factor = exponential.get("incrementFactor")
        if isinstance(factor, bool) or not isinstance(factor, int | float) or not 1.1 <= factor <= 5:
            raise InvalidJobConfig("incrementFactor must be a number from 1.1 to 5")
        criteria = exponential.get("rateIncreaseCriteria") or {}
        notified, succeeded = criteria.get("numberOfNotifiedThings"), criteria.get("numberOfSucceededThings")
        if (notified is None) == (succeeded is None):
            raise InvalidJobConfig("rateIncreaseCriteria needs exactly one of numberOfNotifiedThings "
                                   "and numberOfSucceededThings")
        if maximum is not None and base > maximum:
            raise InvalidJobConfig("baseRatePerMinute cannot exceed maximumPerMinute")
        return cls(maximum, base, float(factor),
                   None if notified is None else _int(notified, "numberOfNotifiedThings", 1, 1_000_000),
                   None if succeeded is None else _int(succeeded, "numberOfSucceededThings", 1, 1_000_000))


@dataclass(frozen=True, slots=True)
class RolloutState:
    """What the scheduler persists per job between ticks."""

    window_start: float
    released_in_window: int = 0
    rate: float = 0.0
    increase_mark: int = 0  # notified/succeeded count at the last rate increase

    def to_json(self) -> dict[str, Any]:
        return {"window_start": self.window_start, "released_in_window": self.released_in_window,
                "rate": self.rate, "increase_mark": self.increase_mark}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RolloutState:
        return cls(float(raw["window_start"]), int(raw["released_in_window"]), float(raw["rate"]),
                   int(raw["increase_mark"]))


def initial_rollout(config: RolloutConfig, now: float) -> RolloutState:
    rate = config.base_rate if config.base_rate is not None else (config.maximum_per_minute or 0)
    return RolloutState(window_start=now, rate=float(rate))


def rollout_step(config: RolloutConfig, state: RolloutState, *, released: int, succeeded: int,
                 now: float) -> tuple[RolloutState, int]:
    """How many more executions may be released at `now` (and the state after releasing
    them). `released` and `succeeded` are totals for the job so far."""
    if not config.limited:
        return state, 1 << 30
    if now - state.window_start >= WINDOW_SECONDS:
        windows = int((now - state.window_start) // WINDOW_SECONDS)
        state = replace(state, window_start=state.window_start + windows * WINDOW_SECONDS,
                        released_in_window=0)
        state = _increase_rate(config, state, released, succeeded)
    allowance = max(0, int(state.rate) - state.released_in_window)
    return replace(state, released_in_window=state.released_in_window + allowance), allowance


def _increase_rate(config: RolloutConfig, state: RolloutState, released: int, succeeded: int) -> RolloutState:
    """At a window boundary: one increase per full step of progress since the last one
    (a rate changes only between windows, so a window never exceeds the rate it began with)."""
    if config.base_rate is not None:
        progress = released if config.notified_step is not None else succeeded
        step = config.notified_step or config.succeeded_step or 1
        ceiling = float(config.maximum_per_minute or MAX_RATE)
        rate, mark = state.rate, state.increase_mark
        while progress - mark >= step and rate < ceiling:
            rate, mark = min(rate * config.increment_factor, ceiling), mark + step
        state = replace(state, rate=rate, increase_mark=mark)
    return state


def record_released(state: RolloutState, allowed: int, actually: int) -> RolloutState:
    """Give back what was allowed but not used (fewer executions were left)."""
    return replace(state, released_in_window=state.released_in_window - (allowed - actually))


# --- abort -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class AbortCriterion:
    failure_type: str
    threshold_percentage: float
    min_executed: int

    def describe(self) -> str:
        return (f"{self.failure_type} reached {self.threshold_percentage:g}% of at least "
                f"{self.min_executed} executed things")


def abort_criteria(raw: Mapping[str, Any] | None) -> tuple[AbortCriterion, ...]:
    if not raw:
        return ()
    criteria = []
    for item in raw.get("criteriaList") or []:
        failure_type = item.get("failureType")
        if failure_type not in FAILURE_TYPES:
            raise InvalidJobConfig(f"failureType must be one of {FAILURE_TYPES}")
        if item.get("action", "CANCEL") != "CANCEL":
            raise InvalidJobConfig("the only abort action is CANCEL")
        threshold = item.get("thresholdPercentage")
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 < threshold <= 100:
            raise InvalidJobConfig("thresholdPercentage must be a number above 0 and at most 100")
        criteria.append(AbortCriterion(failure_type, float(threshold),
                                       _int(item.get("minNumberOfExecutedThings"),
                                            "minNumberOfExecutedThings", 1, 1_000_000)))
    return tuple(criteria)


def abort_triggered(criteria: tuple[AbortCriterion, ...], counts: Mapping[str, int]) -> AbortCriterion | None:
    """`counts`: executions per terminal status (SUCCEEDED, FAILED, REJECTED, TIMED_OUT, ...)."""
    executed = sum(counts.get(s, 0) for s in ("SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT"))
    for criterion in criteria:
        if executed < criterion.min_executed:
            continue
        failures = (sum(counts.get(s, 0) for s in ("FAILED", "REJECTED", "TIMED_OUT"))
                    if criterion.failure_type == "ALL" else counts.get(criterion.failure_type, 0))
        if failures * 100 >= criterion.threshold_percentage * executed:
            return criterion
    return None


# --- timeout and retry -----------------------------------------------------------------------

def in_progress_timeout(raw: Mapping[str, Any] | None) -> float | None:
    """Seconds an execution may stay IN_PROGRESS, from timeoutConfig."""
    if not raw or raw.get("inProgressTimeoutInMinutes") is None:
        return None
    return 60.0 * _int(raw["inProgressTimeoutInMinutes"], "inProgressTimeoutInMinutes", 1, 10080)


def retry_limits(raw: Mapping[str, Any] | None) -> dict[str, int]:
    """failureType -> numberOfRetries, from jobExecutionsRetryConfig."""
    limits: dict[str, int] = {}
    for item in (raw or {}).get("criteriaList") or []:
        failure_type = item.get("failureType")
        if failure_type not in RETRY_FAILURE_TYPES:
            raise InvalidJobConfig(f"retry failureType must be one of {RETRY_FAILURE_TYPES}")
        limits[failure_type] = _int(item.get("numberOfRetries"), "numberOfRetries", 0, 10)
    return limits


def should_retry(limits: Mapping[str, int], status: str, execution_number: int) -> bool:
    """Whether an execution that ended `status` gets another attempt (execution numbers
    start at 1, so `execution_number - 1` retries were already used)."""
    allowed = limits.get(status, limits.get("ALL", 0)) if status in ("FAILED", "TIMED_OUT") else 0
    return execution_number - 1 < allowed


# --- scheduling -------------------------------------------------------------------------------

END_BEHAVIORS = ("STOP_ROLLOUT", "CANCEL", "FORCE_CANCEL")
MIN_WINDOW_MINUTES, MAX_WINDOW_MINUTES = 1, 1430  # the botocore model's DurationInMinutes
MAX_WINDOWS = 32  # overair's bound: every window is evaluated on every scheduler tick
MAX_CRON_CHARS = 256  # the model's CronExpression
UPCOMING_ROLLOUTS = 7  # DescribeJob's scheduledJobRollouts: "the next seven" window starts


@dataclass(frozen=True, slots=True)
class MaintenanceWindow:
    start: cron.CronExpression
    duration_minutes: int

    def open_at(self, now: float) -> bool:
        when = dt.datetime.fromtimestamp(now, dt.UTC)
        latest = self.start.latest_start_at_or_before(when)
        return latest is not None and when < latest + dt.timedelta(minutes=self.duration_minutes)

    def next_start_after(self, now: float) -> float | None:
        start = self.start.next_start_after(dt.datetime.fromtimestamp(now, dt.UTC))
        return None if start is None else start.timestamp()


@dataclass(frozen=True, slots=True)
class Schedule:
    start: float | None = None
    end: float | None = None
    end_behavior: str = "STOP_ROLLOUT"
    windows: tuple[MaintenanceWindow, ...] = ()

    def phase(self, now: float) -> str:
        """"waiting" before the start, "ended" from the end on, else "open"."""
        if self.start is not None and now < self.start:
            return "waiting"
        if self.end is not None and now >= self.end:
            return "ended"
        return "open"

    def releasing(self, now: float) -> bool:
        """Whether executions may be released at `now`: between start and end, and
        inside a maintenance window if there are any."""
        return self.phase(now) == "open" and (not self.windows or any(w.open_at(now) for w in self.windows))

    def upcoming_rollouts(self, now: float, count: int = UPCOMING_ROLLOUTS) -> list[float]:
        """The next `count` window starts from `now` on that fall between start and end."""
        if not self.windows:
            return []
        # A start exactly at `now` (or at startTime) still counts, hence the second back.
        cursor = max(now, self.start if self.start is not None else now) - 1
        starts: list[float] = []
        pending = {i: w.next_start_after(cursor) for i, w in enumerate(self.windows)}
        while len(starts) < count:
            upcoming = [t for t in pending.values() if t is not None]
            if not upcoming:
                break
            first = min(upcoming)
            if self.end is not None and first >= self.end:
                break
            starts.append(first)
            for i, t in pending.items():
                if t == first:  # two windows starting together count once
                    pending[i] = self.windows[i].next_start_after(first)
        return starts


_LATEST_EPOCH = dt.datetime(9999, 1, 1, tzinfo=dt.UTC).timestamp()


def _time(value: Any, name: str) -> float:
    """AWS gives `yyyy-MM-ddTHH:mm` in UTC; full ISO-8601 is accepted too."""
    if not isinstance(value, str):
        raise InvalidJobConfig(f"{name} must be a date-time string like 2026-12-01T08:30")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidJobConfig(f"{name} {value!r} is not a date-time like 2026-12-01T08:30") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    epoch = parsed.timestamp()
    # Year 1 at +14:00 is year 0 in UTC: every later formatting of it would crash.
    if not 0 <= epoch < _LATEST_EPOCH:
        raise InvalidJobConfig(f"{name} {value!r} is outside 1970-01-01 to 9998-12-31")
    return epoch


def format_time(epoch: float) -> str:
    """The `yyyy-MM-ddTHH:mm` form AWS uses for schedule times (UTC)."""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M")


def maintenance_windows(raw: Any) -> tuple[MaintenanceWindow, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidJobConfig("maintenanceWindows must be a list of {startTime, durationInMinutes}")
    if len(raw) > MAX_WINDOWS:
        raise InvalidJobConfig(f"at most {MAX_WINDOWS} maintenanceWindows are supported")
    windows = []
    for index, item in enumerate(raw):
        where = f"maintenanceWindows[{index}]"
        if not isinstance(item, Mapping) or "startTime" not in item or "durationInMinutes" not in item:
            raise InvalidJobConfig(f"{where} needs startTime (a cron expression) and durationInMinutes")
        text = item["startTime"]
        if not isinstance(text, str) or not 1 <= len(text) <= MAX_CRON_CHARS:
            raise InvalidJobConfig(f"{where}.startTime must be a cron expression of 1-{MAX_CRON_CHARS} "
                                   "characters, like cron(0 2 ? * SAT *)")
        try:
            expression = cron.parse(text)
        except cron.CronError as exc:
            raise InvalidJobConfig(f"{where}.startTime: {exc.message}") from exc
        duration = _int(item["durationInMinutes"], f"{where}.durationInMinutes",
                        MIN_WINDOW_MINUTES, MAX_WINDOW_MINUTES)
        windows.append(MaintenanceWindow(expression, duration))
    return tuple(windows)


def schedule(raw: Mapping[str, Any] | None) -> Schedule:
    if not raw:
        return Schedule()
    start = _time(raw["startTime"], "startTime") if raw.get("startTime") else None
    end = _time(raw["endTime"], "endTime") if raw.get("endTime") else None
    behavior = raw.get("endBehavior", "STOP_ROLLOUT")
    if behavior not in END_BEHAVIORS:
        raise InvalidJobConfig(f"endBehavior must be one of {END_BEHAVIORS}")
    if start is not None and end is not None and end <= start:
        raise InvalidJobConfig("endTime must be after startTime")
    return Schedule(start, end, behavior, maintenance_windows(raw.get("maintenanceWindows")))


def check_windows_open(plan: Schedule, now: float) -> None:
    """Refuse maintenance windows that would never open between now (or the start) and
    the end: such a job could never release anything."""
    if not plan.windows or plan.upcoming_rollouts(now, count=1) or plan.releasing(now):
        return
    # A window already open when startTime comes counts too.
    if plan.start is None or plan.start < now or not plan.releasing(plan.start):
        raise InvalidJobConfig("no maintenanceWindow opens "
                               + ("before endTime" if plan.end is not None else "in the future")
                               + "; the job would never roll out")
