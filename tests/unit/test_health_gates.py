"""Health reports and the health gates' pure decision (core/health.py, server/health/gates.py)."""

from __future__ import annotations

from typing import Any

import pytest

from overair.core.errors import PeerInputError
from overair.core.health import HealthReport, InvalidHealthReport, health_window, parse_report
from overair.core.limits import Limits
from overair.server.health.gates import (
    Execution,
    HealthGates,
    RolloutHealthState,
    decide,
    parse_parameters,
)

JOB = "ota-job"
GATES = HealthGates(window_seconds=60, cohort_size=2, max_crash_ratio=2.0, min_samples=2)


def fleet(released: int, ended: int = 0, at: float = 100.0, total: int = 6) -> list[Execution]:
    return [Execution(f"t{i}", at if i < released else None, i < ended) for i in range(total)]


def ok(job: str | None = JOB, crashes: int = 0, **metrics: float) -> HealthReport:
    return HealthReport(job_id=job, crashes=crashes, metrics=dict(metrics))


# --- reports -----------------------------------------------------------------------------------

def test_a_full_report_round_trips() -> None:
    report = HealthReport("j", "1.1.0", 1_700_000_000, 2, 3, 1, "PASSED", {"temp_c": 51.5})
    assert parse_report(report.to_reported()) == report


@pytest.mark.parametrize("reported", [
    [], "x", {"crashes": -1}, {"crashes": True}, {"crashes": 10**7}, {"reboots": 1.5},
    {"selfTest": "MAYBE"}, {"jobId": ""}, {"jobId": "x" * 129}, {"jobId": "a\nb"}, {"since": -1},
    {"lastExitCode": 2**40}, {"metrics": []}, {"metrics": {"bad name": 1}}, {"metrics": {"m": "1"}},
    {"metrics": {"m": float("inf")}}, {"metrics": {f"m{i}": i for i in range(17)}}, {"extra": 1},
])
def test_malformed_reports_are_refused_with_the_stable_code(reported: Any) -> None:
    with pytest.raises(InvalidHealthReport) as raised:
        parse_report(reported)
    assert raised.value.code == "InvalidHealthReport"


def test_the_metric_bound_comes_from_limits() -> None:
    with pytest.raises(InvalidHealthReport):
        parse_report({"metrics": {"a": 1, "b": 2}}, Limits(max_health_metrics=1))


def test_the_agent_reads_the_window_from_the_document_extension() -> None:
    assert health_window({"overair": {"health": {"windowSeconds": 30}}}) == 30.0
    for seconds in ("30", True, 0, -5, 10**9, None):
        assert health_window({"overair": {"health": {"windowSeconds": seconds}}}) == 0.0
    documents: list[Any] = [{}, {"overair": []}, [], {"overair": {"health": 30}}]
    for document in documents:
        assert health_window(document) == 0.0


# --- parameters --------------------------------------------------------------------------------

def test_gates_from_additional_parameters() -> None:
    gates = parse_parameters({"overair:healthWindowSeconds": "600", "overair:healthCohortSize": "10",
                              "overair:healthMaxCrashRatio": "1.5", "overair:healthMinSamples": "8",
                              "overair:healthAction": "cancel_and_rollback", "overair:healthApproval": "true",
                              "overair:healthMetricMax.temp_c": "85", "overair:maxConcurrentDownloads": "5"})
    assert gates == HealthGates(600, 10, 1.5, 8, "CANCEL_AND_ROLLBACK", True, {"temp_c": 85.0})
    assert HealthGates.from_config(gates.to_config()) == gates
    assert parse_parameters({"overair:maxConcurrentDownloads": "5"}) is None


BASE = {"overair:healthWindowSeconds": "60", "overair:healthCohortSize": "1"}


@pytest.mark.parametrize("params", [
    {"overair:healthWindowSeconds": "60"},  # no cohort size
    {**BASE, "overair:healthCohortSize": "0"},
    {**BASE, "overair:healthWindowSeconds": "\u00b2"},  # isdigit() but not int()
    {**BASE, "overair:healthAction": "REBOOT"},
    {**BASE, "overair:healthMaxCrashRatio": "nan"},
    {**BASE, "overair:healthTypo": "1"},
    {**BASE, "overair:healthMetricMax.a b": "1"},
])
def test_bad_gates_are_refused(params: dict[str, str]) -> None:
    with pytest.raises(PeerInputError):
        parse_parameters(params)


# --- the decision ------------------------------------------------------------------------------

def test_the_first_cohort_is_released_first() -> None:
    decision = decide(GATES, JOB, fleet(0), {}, RolloutHealthState(), now=0.0)
    assert (decision.verdict, decision.release_cap) == ("ADVANCE", 2)


def test_a_cohort_is_observed_until_it_ended_and_its_window_passed() -> None:
    reports = {"t0": ok(), "t1": ok()}
    assert decide(GATES, JOB, fleet(2, ended=1), reports, RolloutHealthState(), 1000.0).verdict == "OBSERVING"
    waiting = decide(GATES, JOB, fleet(2, ended=2), reports, RolloutHealthState(), 159.0)
    assert (waiting.verdict, waiting.release_cap) == ("OBSERVING", 2)
    passed = decide(GATES, JOB, fleet(2, ended=2), reports, RolloutHealthState(), 160.0)
    assert (passed.verdict, passed.release_cap) == ("ADVANCE", 4)


def test_crashes_beyond_twice_the_control_cross_the_gate_with_the_figures() -> None:
    reports = {"t0": ok(crashes=1), "t1": ok(), "t2": ok(None), "t3": ok(None), "t4": ok(None)}
    decision = decide(GATES, JOB, fleet(2), reports, RolloutHealthState(), 101.0)
    assert decision.verdict == "GATE_CROSSED"
    assert decision.release_cap == 2  # nothing more released
    assert decision.reason == ("crash rate 50% (1/2 updated devices) exceeds 2x the control's 0% (0/3)")
    assert decision.figures["crashedThings"] == ["t0"]


def test_a_control_that_crashes_as_often_keeps_the_gate_closed() -> None:
    reports = {"t0": ok(crashes=1), "t1": ok(), "t2": ok(None, crashes=1), "t3": ok(None), "t4": ok(None),
               "t5": ok(None)}
    assert decide(GATES, JOB, fleet(2), reports, RolloutHealthState(), 101.0).verdict == "OBSERVING"


def test_no_judgement_below_the_minimum_sample() -> None:
    # t1 has not reported for this job yet (its report is still the old image's)
    reports = {"t0": ok(crashes=1), "t1": ok("older-job")}
    assert decide(GATES, JOB, fleet(2), reports, RolloutHealthState(), 101.0).verdict == "OBSERVING"


def test_a_metric_past_its_threshold_crosses_the_gate() -> None:
    gates = HealthGates(60, 2, min_samples=1, metric_max={"temp_c": 85.0})
    decision = decide(gates, JOB, fleet(2), {"t0": ok(temp_c=90.0), "t1": ok(temp_c=60.0)},
                      RolloutHealthState(), 101.0)
    assert decision.verdict == "GATE_CROSSED"
    assert decision.reason == "metric temp_c reached 90 on 1 updated device(s), above 85"


def test_a_paused_rollout_holds_and_a_resume_judges_only_later_cohorts() -> None:
    reports = {"t0": ok(crashes=1), "t1": ok()}
    paused = RolloutHealthState("PAUSED", figures={"reason": "x"})
    assert decide(GATES, JOB, fleet(2), reports, paused, 101.0).verdict == "HELD"
    resumed = RolloutHealthState("OBSERVING", accepted_through=0, approved_through=0)
    after = decide(GATES, JOB, fleet(2, ended=2), reports, resumed, 1000.0)
    assert (after.verdict, after.release_cap) == ("ADVANCE", 4)
    assert after.figures["updatedReporting"] == 0  # cohort 1's figures were accepted


def test_approval_is_awaited_between_cohorts() -> None:
    gates = HealthGates(60, 2, approval=True)
    waiting = decide(gates, JOB, fleet(2, ended=2), {}, RolloutHealthState(), 1000.0)
    assert (waiting.verdict, waiting.release_cap) == ("AWAITING_APPROVAL", 2)
    approved = decide(gates, JOB, fleet(2, ended=2), {}, RolloutHealthState(approved_through=0), 1000.0)
    assert (approved.verdict, approved.release_cap) == ("ADVANCE", 4)


def test_the_rollout_is_done_when_the_last_cohort_passed() -> None:
    decision = decide(GATES, JOB, fleet(6, ended=6), {}, RolloutHealthState(), 1000.0)
    assert (decision.verdict, decision.release_cap) == ("DONE", 6)


def test_persisted_state_survives_a_round_trip_and_junk_is_a_fresh_state() -> None:
    state = RolloutHealthState("PAUSED", 1, 0, {"reason": "r"}, 12.5)
    assert RolloutHealthState.from_json(state.to_json()) == state
    assert RolloutHealthState.from_json({"acceptedThrough": "x"}) == RolloutHealthState()
    assert HealthGates.from_config({"windowSeconds": 1, "cohortSize": 0, "maxCrashRatio": 2, "minSamples": 1,
                                    "action": "PAUSE", "approval": False, "metricMax": {}}) is None
