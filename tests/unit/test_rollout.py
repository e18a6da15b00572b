"""Rollout rate, abort, timeout and retry rules (core/rollout.py) against a controlled
clock: numbers in, decisions out."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from overair.core.rollout import (
    AbortCriterion,
    InvalidJobConfig,
    RolloutConfig,
    RolloutState,
    Schedule,
    abort_criteria,
    abort_triggered,
    check_windows_open,
    format_time,
    in_progress_timeout,
    initial_rollout,
    record_released,
    retry_limits,
    rollout_step,
    schedule,
    should_retry,
)


def _release_over(
    config: RolloutConfig, minutes: float, total: int, *, tick: float = 1.0, succeed_all: bool = False
) -> list[int]:
    """Simulate the scheduler: per minute, how many executions get released."""
    state, released, per_minute = initial_rollout(config, 0.0), 0, [0] * (int(minutes) + 1)
    now = 0.0
    while now < minutes * 60:
        state, allowed = rollout_step(
            config, state, released=released, succeeded=released if succeed_all else 0, now=now
        )
        actually = min(allowed, total - released)
        state = record_released(state, allowed, actually)
        released += actually
        per_minute[int(now // 60)] += actually
        now += tick
    return per_minute


def test_no_rollout_config_releases_everything_at_once() -> None:
    config = RolloutConfig.from_aws(None)
    _, allowed = rollout_step(config, initial_rollout(config, 0), released=0, succeeded=0, now=0)
    assert allowed >= 1_000_000


def test_maximum_per_minute_caps_each_one_minute_window() -> None:
    per_minute = _release_over(RolloutConfig.from_aws({"maximumPerMinute": 7}), 5, total=30)
    assert per_minute[:5] == [7, 7, 7, 7, 2]


def test_exponential_rate_grows_by_the_factor_after_each_notified_step_up_to_the_maximum() -> None:
    config = RolloutConfig.from_aws(
        {
            "maximumPerMinute": 40,
            "exponentialRate": {
                "baseRatePerMinute": 5,
                "incrementFactor": 2.0,
                "rateIncreaseCriteria": {"numberOfNotifiedThings": 5},
            },
        }
    )
    per_minute = _release_over(config, 6, total=1000)
    assert per_minute[:5] == [5, 10, 40, 40, 40]  # +5, then +10 = two more steps


def test_exponential_rate_on_succeeded_things_waits_for_successes() -> None:
    config = RolloutConfig.from_aws(
        {
            "exponentialRate": {
                "baseRatePerMinute": 3,
                "incrementFactor": 2,
                "rateIncreaseCriteria": {"numberOfSucceededThings": 3},
            }
        }
    )
    assert _release_over(config, 3, total=1000)[:3] == [3, 3, 3]  # nobody succeeds: no increase
    assert _release_over(config, 3, total=1000, succeed_all=True)[:3] == [3, 6, 24]


def test_rollout_state_survives_a_restart_as_json() -> None:
    config = RolloutConfig.from_aws({"maximumPerMinute": 10})
    state, allowed = rollout_step(config, initial_rollout(config, 100.0), released=0, succeeded=0, now=110.0)
    restored = RolloutState.from_json(state.to_json())
    assert restored == state
    _, more = rollout_step(config, restored, released=allowed, succeeded=0, now=120.0)
    assert more == 0  # the same window: nothing more after a restart


@pytest.mark.parametrize(
    "raw",
    [
        {"maximumPerMinute": 0},
        {"maximumPerMinute": 1001},
        {"maximumPerMinute": "5"},
        {
            "exponentialRate": {
                "baseRatePerMinute": 5,
                "incrementFactor": 1.0,
                "rateIncreaseCriteria": {"numberOfNotifiedThings": 1},
            }
        },
        {"exponentialRate": {"baseRatePerMinute": 5, "incrementFactor": 2, "rateIncreaseCriteria": {}}},
        {
            "maximumPerMinute": 5,
            "exponentialRate": {
                "baseRatePerMinute": 10,
                "incrementFactor": 2,
                "rateIncreaseCriteria": {"numberOfNotifiedThings": 1},
            },
        },
    ],
)
def test_invalid_rollout_config_is_refused(raw: dict[str, Any]) -> None:
    with pytest.raises(InvalidJobConfig):
        RolloutConfig.from_aws(raw)


def _abort(**kwargs: Any) -> tuple[AbortCriterion, ...]:
    return abort_criteria({"criteriaList": [{"action": "CANCEL", **kwargs}]})


def test_abort_fires_at_the_threshold_once_enough_things_executed() -> None:
    criteria = _abort(failureType="FAILED", thresholdPercentage=50, minNumberOfExecutedThings=4)
    assert abort_triggered(criteria, {"FAILED": 3}) is None  # only 3 executed
    assert abort_triggered(criteria, {"FAILED": 1, "SUCCEEDED": 3}) is None  # 25 %
    assert abort_triggered(criteria, {"FAILED": 2, "SUCCEEDED": 2}) == criteria[0]  # 50 %
    assert abort_triggered(criteria, {"TIMED_OUT": 4}) is None  # another failure type


def test_abort_on_all_counts_every_kind_of_failure() -> None:
    criteria = _abort(failureType="ALL", thresholdPercentage=75, minNumberOfExecutedThings=4)
    assert (
        abort_triggered(criteria, {"FAILED": 1, "REJECTED": 1, "TIMED_OUT": 1, "SUCCEEDED": 1}) == criteria[0]
    )


@pytest.mark.parametrize(
    "item",
    [
        {"failureType": "BROKEN", "thresholdPercentage": 10, "minNumberOfExecutedThings": 1},
        {"failureType": "FAILED", "thresholdPercentage": 0, "minNumberOfExecutedThings": 1},
        {"failureType": "FAILED", "thresholdPercentage": 10, "minNumberOfExecutedThings": 0},
        {
            "failureType": "FAILED",
            "thresholdPercentage": 10,
            "minNumberOfExecutedThings": 1,
            "action": "PAUSE",
        },
    ],
)
def test_invalid_abort_config_is_refused(item: dict[str, Any]) -> None:
    with pytest.raises(InvalidJobConfig):
        abort_criteria({"criteriaList": [item]})


def test_timeout_and_retry_rules() -> None:
    assert in_progress_timeout(None) is None
    assert in_progress_timeout({"inProgressTimeoutInMinutes": 2}) == 120.0
    with pytest.raises(InvalidJobConfig):
        in_progress_timeout({"inProgressTimeoutInMinutes": 0})
    limits = retry_limits(
        {
            "criteriaList": [
                {"failureType": "FAILED", "numberOfRetries": 2},
                {"failureType": "TIMED_OUT", "numberOfRetries": 1},
            ]
        }
    )
    assert [should_retry(limits, "FAILED", n) for n in (1, 2, 3)] == [True, True, False]
    assert [should_retry(limits, "TIMED_OUT", n) for n in (1, 2)] == [True, False]
    assert not should_retry(limits, "REJECTED", 1)  # a device's refusal is never retried
    assert should_retry(
        retry_limits({"criteriaList": [{"failureType": "ALL", "numberOfRetries": 1}]}), "TIMED_OUT", 1
    )


# --- maintenance windows (schedulingConfig.maintenanceWindows) --------------------------------

def _t(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


def _release_with_windows(config: RolloutConfig, plan: Schedule, start: float, minutes: int,
                          total: int) -> dict[int, int]:
    """Simulate the scheduler tick by tick (once a second): executions released per minute
    since `start`, releasing only while `plan.releasing(now)`."""
    state, released = initial_rollout(config, start), 0
    per_minute: dict[int, int] = {}
    for second in range(minutes * 60):
        now = start + second
        if not plan.releasing(now):
            continue
        state, allowed = rollout_step(config, state, released=released, succeeded=0, now=now)
        actually = min(allowed, total - released)
        state = record_released(state, allowed, actually)
        released += actually
        if actually:
            per_minute[second // 60] = per_minute.get(second // 60, 0) + actually
    return per_minute


def test_rollout_releases_only_inside_maintenance_windows_and_resumes_at_the_next() -> None:
    # Windows open at 02:00 and 02:10 for 3 minutes each; 10 per minute; 45 executions.
    plan = schedule({"maintenanceWindows": [
        {"startTime": "cron(0,10 2 * * ? *)", "durationInMinutes": 3}]})
    start = _t("2026-03-10T01:58")
    per_minute = _release_with_windows(RolloutConfig.from_aws({"maximumPerMinute": 10}), plan, start,
                                       minutes=20, total=45)
    # Minutes 0-1 (01:58-01:59): closed. 2-4 (02:00-02:02): open. 5-11: closed. 12-14 open.
    assert per_minute == {2: 10, 3: 10, 4: 10, 12: 10, 13: 5}


def test_without_a_rate_everything_waiting_goes_out_when_the_window_opens() -> None:
    plan = schedule({"maintenanceWindows": [{"startTime": "cron(30 3 ? * SUN *)", "durationInMinutes": 60}]})
    saturday = _t("2026-03-14T12:00")
    assert not plan.releasing(saturday)
    per_minute = _release_with_windows(RolloutConfig.from_aws(None), plan, _t("2026-03-15T03:00"),
                                       minutes=120, total=500)
    assert per_minute == {30: 500}


@pytest.mark.parametrize(
    ("when", "open_"),
    [
        ("2026-03-10T21:59:59", False),
        ("2026-03-10T22:00:00", True),  # the start minute opens it
        ("2026-03-11T01:59:59", True),  # a window may run past midnight
        ("2026-03-11T02:00:00", False),  # 240 minutes later it is closed
        ("2026-03-11T21:00:00", False),
    ],
)
def test_window_is_open_from_its_start_for_its_duration(when: str, open_: bool) -> None:
    plan = schedule({"maintenanceWindows": [{"startTime": "cron(0 22 * * ? *)", "durationInMinutes": 240}]})
    assert plan.releasing(_t(when)) is open_


def test_windows_combine_with_start_and_end_time() -> None:
    plan = schedule({
        "startTime": "2026-03-10T22:30", "endTime": "2026-03-12T23:00",
        "maintenanceWindows": [{"startTime": "cron(0 22 * * ? *)", "durationInMinutes": 60}]})
    assert not plan.releasing(_t("2026-03-10T22:10"))  # window open, start time not reached
    assert plan.releasing(_t("2026-03-10T22:45"))
    assert plan.releasing(_t("2026-03-12T22:59"))
    assert not plan.releasing(_t("2026-03-12T23:00"))  # the end time closes it early
    assert [format_time(t) for t in plan.upcoming_rollouts(_t("2026-03-10T12:00"))] == [
        "2026-03-11T22:00", "2026-03-12T22:00"]  # only starts between startTime and endTime


def test_upcoming_rollouts_lists_the_next_seven_starts_of_all_windows_merged() -> None:
    plan = schedule({"maintenanceWindows": [
        {"startTime": "cron(0 2 ? * SAT *)", "durationInMinutes": 120},
        {"startTime": "cron(0 2 ? * SAT,SUN *)", "durationInMinutes": 30}]})
    starts = [format_time(t) for t in plan.upcoming_rollouts(_t("2026-03-14T02:00"))]
    assert starts == ["2026-03-14T02:00", "2026-03-15T02:00", "2026-03-21T02:00", "2026-03-22T02:00",
                      "2026-03-28T02:00", "2026-03-29T02:00", "2026-04-04T02:00"]


def test_window_decision_is_a_pure_function_of_config_and_now() -> None:
    raw = {"maintenanceWindows": [{"startTime": "cron(15 4 1 * ? *)", "durationInMinutes": 45}]}
    samples = [_t("2026-04-01T04:14"), _t("2026-04-01T04:15"), _t("2026-04-01T04:59"), _t("2026-04-01T05:00")]
    first = [schedule(raw).releasing(t) for t in samples]
    assert first == [False, True, True, False]
    assert [schedule(dict(raw)).releasing(t) for t in samples] == first  # a "restarted" parse


@pytest.mark.parametrize(
    ("windows", "complaint"),
    [
        ("cron(0 2 * * ? *)", "must be a list"),
        ([{"startTime": "cron(0 2 * * ? *)"}], "needs startTime (a cron expression) and durationInMinutes"),
        ([{"durationInMinutes": 30}], "needs startTime"),
        ([{"startTime": "cron(0 2 * * ? *)", "durationInMinutes": 0}], "from 1 to 1430"),
        ([{"startTime": "cron(0 2 * * ? *)", "durationInMinutes": 1431}], "from 1 to 1430"),
        ([{"startTime": "cron(0 2 * * ? *)", "durationInMinutes": "30"}], "from 1 to 1430"),
        ([{"startTime": "cron(0 2 * * * *)", "durationInMinutes": 30}], "maintenanceWindows[0].startTime"),
        ([{"startTime": "cron(0 2 L-3 * ? *)", "durationInMinutes": 30}], "'L-n'"),
        ([{"startTime": "x" * 257, "durationInMinutes": 30}], "1-256 characters"),
        ([{"startTime": "cron(0 2 * * ? *)", "durationInMinutes": 30}] * 33, "at most 32"),
    ],
)
def test_invalid_maintenance_windows_are_refused_with_a_clear_reason(windows: Any, complaint: str) -> None:
    with pytest.raises(InvalidJobConfig) as caught:
        schedule({"maintenanceWindows": windows})
    assert complaint in caught.value.message
    assert caught.value.code == "InvalidRequestException"


def test_windows_that_never_open_before_the_end_are_refused() -> None:
    now = _t("2026-03-10T12:00")
    never = schedule({"endTime": "2026-03-12T00:00",
                      "maintenanceWindows": [{"startTime": "cron(0 2 ? * SUN *)", "durationInMinutes": 30}]})
    with pytest.raises(InvalidJobConfig, match="before endTime"):
        check_windows_open(never, now)
    with pytest.raises(InvalidJobConfig, match="in the future"):
        check_windows_open(schedule({"maintenanceWindows": [
            {"startTime": "cron(0 2 * * ? 2025)", "durationInMinutes": 30}]}), now)
    check_windows_open(schedule({"maintenanceWindows": [  # open right now: fine
        {"startTime": "cron(0 11 * * ? 2026)", "durationInMinutes": 90}]}), now)
    check_windows_open(schedule({"startTime": "2026-03-11T02:30", "endTime": "2026-03-11T02:45",
                                 "maintenanceWindows": [  # open when the start time comes: fine
                                     {"startTime": "cron(0 2 * * ? *)", "durationInMinutes": 60}]}), now)
