"""server/log_bounds.py: refusal lines a sender causes are bounded per kind and interval,
and what was left out is counted and said."""

from __future__ import annotations

import logging

import pytest

from overair.core.limits import Limits
from overair.server.log_bounds import BoundedLog


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "test.bounded"]


def test_a_flood_of_refusals_logs_the_first_lines_then_counts_the_rest(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    limits = Limits(device_log_lines=3, device_audit_interval_seconds=60)
    bounded = BoundedLog(logging.getLogger("test.bounded"), limits, clock)
    with caplog.at_level(logging.INFO, logger="test.bounded"):
        for i in range(1000):
            bounded.info("download refused", "download refused: %s", i)
        bounded.info("jobs request rejected", "jobs request %s", "x")  # another kind: its own lines
        assert _lines(caplog) == ["download refused: 0", "download refused: 1", "download refused: 2",
                                  "jobs request x"]
        clock.now += 60
        bounded.info("download refused", "download refused: %s", "later")
    assert _lines(caplog)[4:] == [
        "997 more download refused lines were left out in 60 s (Limits.device_log_lines)",
        "download refused: later"]


def test_nothing_is_left_out_below_the_bound(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    bounded = BoundedLog(logging.getLogger("test.bounded"), Limits(device_log_lines=2), clock)
    with caplog.at_level(logging.INFO, logger="test.bounded"):
        for _ in range(3):
            bounded.info("k", "one")
            bounded.info("k", "two")
            clock.now += Limits().device_audit_interval_seconds
    assert _lines(caplog) == ["one", "two"] * 3
