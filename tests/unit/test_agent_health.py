"""The agent's side of health-gated rollouts: the trial lasts the health window, a canceled
execution rolls the trial image back, and the health reports (agent/health.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from overair.agent.health import HealthReporter, update_topic
from overair.agent.machine import commands as c
from overair.agent.machine.events import SelfTestResult, Tick
from overair.agent.machine.state import Phase
from overair.core.health import parse_report
from tests.unit.test_agent_machine import READY, V2, after_activation, booted, job, of, ota_doc, run, statuses


def _sent(reporter: HealthReporter, now: float) -> bytes | None:
    report = reporter.due(now)
    return None if report is None else reporter.payload(report)


GATED = {**ota_doc(), "overair": {"health": {"windowSeconds": 300}}}


def test_a_gated_job_holds_the_trial_for_the_window_and_extends_the_deadline() -> None:
    state = booted(V2, trial=True, journal=after_activation(), now=1000.0)
    state, commands = run(state, [job(doc=GATED, details=READY)], now=1001.0)
    assert of(commands, c.RunSelfTest) == [c.RunSelfTest("job-1", 1361.0, 300.0)]
    assert state.self_test_deadline == 1361.0
    state, commands = run(state, [Tick()], now=1200.0)  # inside the window: no rollback
    assert not of(commands, c.RollbackAndReboot)
    _, commands = run(state, [SelfTestResult(True)], now=1302.0)
    assert of(commands, c.CommitImage)


def test_an_execution_canceled_during_the_window_rolls_the_image_back() -> None:
    state = booted(V2, trial=True, journal=after_activation(), now=1000.0)
    state, _ = run(state, [job(doc=GATED, details=READY)], now=1001.0)
    state, commands = run(state, [job(doc=GATED, details={"self_test": "active"})], now=1002.0)
    assert not of(commands, c.RollbackAndReboot)  # its own job again: ignored
    no_job = job()
    no_job = type(no_job)(no_job.topic, b'{"timestamp":2}')
    state, commands = run(state, [no_job], now=1003.0)
    assert of(commands, c.RollbackAndReboot)
    assert statuses(commands)[0][0] == "FAILED"
    assert state.phase is Phase.REBOOTING


def test_reports_count_since_boot_and_are_sent_on_change_and_every_interval() -> None:
    reporter = HealthReporter(10.0)
    reporter.booted(version="1.1.0", job_id="job-1", trial=True, boot_count=2, now=100.0)
    first = _sent(reporter, 100.0)
    assert first is not None
    assert _sent(reporter, 105.0) is None
    reporter.crashed(3)
    reporter.crashed(139)
    crashed = _sent(reporter, 106.0)
    assert crashed is not None
    report = parse_report(json.loads(crashed)["state"]["reported"])
    assert (report.job_id, report.crashes, report.last_exit_code, report.reboots, report.self_test) == (
        "job-1", 2, 139, 1, "PENDING")
    assert _sent(reporter, 115.0) is None
    assert _sent(reporter, 116.0) is not None
    reporter.booted(version="1.0.0", job_id=None, trial=False, boot_count=0, now=200.0)
    again = parse_report(json.loads(_sent(reporter, 200.0) or b"")["state"]["reported"])
    assert (again.job_id, again.crashes, again.self_test) == (None, 0, None)
    assert update_topic("dev-1") == "$aws/things/dev-1/shadow/name/overair-health/update"
    assert HealthReporter(0.0).due(0.0) is None  # reports off


def test_the_metrics_hook_is_checked_as_the_server_checks_it(tmp_path: Path) -> None:
    good = tmp_path / "good.py"
    good.write_text('print(\'{"temp_c": 51.5, "queue": 3}\')')
    bad = tmp_path / "bad.py"
    bad.write_text('print(\'{"temp c": "hot"}\')')
    reporter = HealthReporter(1.0, f"{sys.executable} {good}")
    reporter.booted(version="1.0.0", job_id=None, trial=False, boot_count=0, now=0.0)
    reported = json.loads(_sent(reporter, 0.0) or b"")["state"]["reported"]
    assert reported["metrics"] == {"temp_c": 51.5, "queue": 3.0}
    reporter = HealthReporter(1.0, f"{sys.executable} {bad}")
    reporter.booted(version="1.0.0", job_id=None, trial=False, boot_count=0, now=0.0)
    assert json.loads(_sent(reporter, 0.0) or b"")["state"]["reported"]["metrics"] == {}
