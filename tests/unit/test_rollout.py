"""Rollout rate, abort, timeout and retry rules (core/rollout.py) against a controlled
clock: numbers in, decisions out."""

from __future__ import annotations

from typing import Any

import pytest

from overair.core.rollout import (
    AbortCriterion,
    InvalidJobConfig,
    RolloutConfig,
    RolloutState,
    abort_criteria,
    abort_triggered,
    in_progress_timeout,
    initial_rollout,
    record_released,
    retry_limits,
    rollout_step,
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
