"""Fuzz targets of health-gated rollouts (issue 18):

- a device's health report (the `overair-health` shadow's reported state, any JSON):
  only a HealthReport within bounds or InvalidHealthReport comes out;
- the health gates from additionalParameters (operator input), from a job's config and
  the persisted decision state (junk in storage): the gates, None or PeerInputError;
- the decision itself over any executions, reports, state and clock: it never raises and
  never releases more than the targets or fewer than already released;
- the health window an agent reads from any job document: a bounded number.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from overair.core.errors import PeerInputError
from overair.core.health import (
    MAX_WINDOW_SECONDS,
    HealthReport,
    InvalidHealthReport,
    health_window,
    parse_report,
)
from overair.core.limits import DEFAULT_LIMITS
from overair.server.health.gates import ACTION as ACTION_KEY
from overair.server.health.gates import (
    APPROVAL,
    COHORT,
    CRASH_RATIO,
    METRIC_PREFIX,
    MIN_SAMPLES,
    WINDOW,
    Execution,
    HealthGates,
    RolloutHealthState,
    decide,
    parse_parameters,
)
from tests.fuzz.agent_strategies import HOSTILE_TEXT, JSON_VALUES
from tests.fuzz.hostile import digits_or_not

REPORT_KEYS = st.sampled_from(["jobId", "version", "since", "crashes", "lastExitCode", "reboots", "selfTest",
                               "metrics"]) | HOSTILE_TEXT
NUMBERS = st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True)
REPORT_VALUES = JSON_VALUES | NUMBERS | st.sampled_from(["PASSED", "FAILED", "PENDING"]) \
    | st.dictionaries(HOSTILE_TEXT, NUMBERS | JSON_VALUES, max_size=20)


@given(JSON_VALUES | st.dictionaries(REPORT_KEYS, REPORT_VALUES, max_size=10))
def test_fuzz_health_report(reported: Any) -> None:
    try:
        report = parse_report(reported)
    except InvalidHealthReport:
        return
    assert 0 <= report.crashes <= DEFAULT_LIMITS.max_health_count
    assert 0 <= report.reboots <= DEFAULT_LIMITS.max_health_count
    assert len(report.metrics) <= DEFAULT_LIMITS.max_health_metrics
    assert parse_report(report.to_reported()) == report


GATE_KEYS = st.sampled_from([WINDOW, COHORT, CRASH_RATIO, MIN_SAMPLES, ACTION_KEY, APPROVAL,
                             METRIC_PREFIX + "temp", METRIC_PREFIX, "overair:healthX"]) | HOSTILE_TEXT
GATE_VALUES = (digits_or_not | st.sampled_from(["PAUSE", "cancel", "true", "False", "nan", "1e400"])
               | JSON_VALUES)


@given(st.none() | st.dictionaries(GATE_KEYS, GATE_VALUES, max_size=8))
def test_fuzz_gate_parameters(params: dict[str, Any] | None) -> None:
    try:
        gates = parse_parameters(params)
    except PeerInputError:
        return
    if gates is not None:
        assert 1 <= gates.window_seconds <= MAX_WINDOW_SECONDS
        assert gates.cohort_size >= 1
        assert HealthGates.from_config(gates.to_config()) == gates


@given(JSON_VALUES | st.dictionaries(HOSTILE_TEXT | st.sampled_from(
    ["windowSeconds", "cohortSize", "maxCrashRatio", "minSamples", "action", "approval", "metricMax",
     "status", "acceptedThrough", "approvedThrough", "figures", "decidedAt"]), REPORT_VALUES, max_size=12))
def test_fuzz_stored_gates_and_state(raw: Any) -> None:
    gates = HealthGates.from_config(raw)
    assert gates is None or gates.cohort_size >= 1
    RolloutHealthState.from_json(raw)


reports = st.builds(HealthReport, job_id=st.sampled_from([None, "job", "other"]),
                    crashes=st.integers(0, 3), metrics=st.dictionaries(st.sampled_from(["temp", "q"]),
                                                                       st.floats(-1e6, 1e6), max_size=2))
executions = st.lists(st.builds(Execution, thing=st.sampled_from([f"t{i}" for i in range(8)]),
                                released_at=st.none() | st.floats(0, 1e6), ended=st.booleans()), max_size=12)
states = st.builds(RolloutHealthState, status=st.sampled_from(["OBSERVING", "PAUSED", "CANCELED",
                                                               "AWAITING_APPROVAL", "PASSED", "x"]),
                   accepted_through=st.integers(-5, 10), approved_through=st.integers(-5, 10))
gate_sets = st.builds(HealthGates, window_seconds=st.integers(1, 1000), cohort_size=st.integers(1, 5),
                      max_crash_ratio=st.floats(0, 1000), min_samples=st.integers(1, 5),
                      approval=st.booleans(), metric_max=st.dictionaries(st.sampled_from(["temp", "q"]),
                                                                         st.floats(-1e6, 1e6), max_size=2))


@given(gate_sets, executions, st.dictionaries(st.sampled_from([f"t{i}" for i in range(8)]), reports),
       states, st.floats(-1e9, 1e9))
def test_fuzz_decision(gates: HealthGates, runs: list[Execution], by_thing: dict[str, HealthReport],
                       state: RolloutHealthState, now: float) -> None:
    decision = decide(gates, "job", runs, by_thing, state, now)
    released = sum(1 for e in runs if e.released_at is not None)
    assert min(released, len(runs)) <= max(decision.release_cap, released)
    assert decision.release_cap <= len(runs) or decision.release_cap == released


@given(JSON_VALUES | st.dictionaries(st.just("overair"), JSON_VALUES | st.dictionaries(
    st.just("health"), JSON_VALUES | st.dictionaries(st.just("windowSeconds"), REPORT_VALUES))))
def test_fuzz_health_window(document: Any) -> None:
    assert 0 <= health_window(document) <= MAX_WINDOW_SECONDS
