"""N3 (a replayed update): agent/trust.py `is_replay`, the decision on a job this device
already finished. The machine repeats the recorded result instead of applying it
(test_agent_resume_and_counter.py, test_agent_machine.py)."""

from __future__ import annotations

import pytest

from overair.agent.machine.state import JobResult
from overair.agent.trust import is_replay


def _result(status: str, number: int | None) -> JobResult:
    return JobResult("job-1", number, status, (("reason", "x"),), 0.0)


@pytest.mark.parametrize("number", [None, 1, 2, 99])
def test_n3_a_succeeded_job_is_always_a_replay(number: int | None) -> None:
    assert is_replay(_result("SUCCEEDED", 2), number)


@pytest.mark.parametrize(("recorded", "offered", "replay"), [
    (2, 2, True), (2, 1, True), (2, 3, False), (None, 3, True), (2, None, True)])
def test_n3_only_a_new_execution_of_a_failed_job_may_run(recorded: int | None, offered: int | None,
                                                          replay: bool) -> None:
    assert is_replay(_result("FAILED", recorded), offered) is replay
