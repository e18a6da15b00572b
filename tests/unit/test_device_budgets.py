"""The per-device token buckets (server/delivery/budgets.py) and which job updates only
report progress (core/jobs_wire.is_progress_report): pure logic, time passed in."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from overair.core.jobs_wire import is_progress_report
from overair.core.limits import DEFAULT_LIMITS
from overair.server.delivery.budgets import DeviceBudgets, Kind

LIMITS = replace(DEFAULT_LIMITS, device_job_updates_burst=5, device_job_updates_per_second=1.0)


def test_a_bucket_allows_its_burst_then_refills_at_its_rate() -> None:
    budgets = DeviceBudgets(LIMITS)
    assert [budgets.take("t", Kind.JOB_UPDATE, 0.0) for _ in range(6)] == [True] * 5 + [False]
    assert budgets.take("t", Kind.JOB_UPDATE, 1.0)
    assert not budgets.take("t", Kind.JOB_UPDATE, 1.0)
    assert budgets.take("other", Kind.JOB_UPDATE, 1.0)  # each device has its own


def test_a_reserve_is_left_for_requests_that_may_spend_it() -> None:
    budgets = DeviceBudgets(LIMITS)
    # Progress may take the bucket down to the reserve (2 tokens) and no further ...
    assert [budgets.take("t", Kind.JOB_UPDATE, 0.0, keep=2.0) for _ in range(4)] == [True] * 3 + [False]
    # ... which state-changing updates then spend.
    assert [budgets.take("t", Kind.JOB_UPDATE, 0.0) for _ in range(3)] == [True, True, False]


def test_a_clock_that_goes_back_refills_nothing() -> None:
    budgets = DeviceBudgets(LIMITS)
    for _ in range(5):
        assert budgets.take("t", Kind.JOB_UPDATE, 100.0)
    assert not budgets.take("t", Kind.JOB_UPDATE, 50.0)


@pytest.mark.parametrize(("body", "progress"), [
    ({"status": "IN_PROGRESS", "statusDetails": {"receive": "3/10"}}, True),
    ({"status": "IN_PROGRESS"}, True),
    ({"status": "IN_PROGRESS", "statusDetails": {"self_test": "ready", "updatedBy": "0x10000"}}, False),
    ({"status": "SUCCEEDED", "statusDetails": {"reason": "accepted v1.1.0"}}, False),
    ({"status": "FAILED"}, False),
    ({"status": "IN_PROGRESS", "statusDetails": ["self_test"]}, True),
])
def test_only_plain_in_progress_reports_count_as_progress(body: dict[str, object], progress: bool) -> None:
    assert is_progress_report(json.dumps(body).encode()) is progress


@pytest.mark.parametrize("payload", [b"", b"{", b"[]", b'"IN_PROGRESS"', b"\xff" * 10,
                                     b'{"status": "IN_PROGRESS", "x": ' + b"[" * 100 + b"]" * 100 + b"}"])
def test_unparsable_updates_are_not_progress(payload: bytes) -> None:
    assert is_progress_report(payload) is False
