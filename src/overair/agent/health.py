"""The agent's health reports (issue 18): what the rollout's health gates judge.

The report (core/health.py) goes to the thing's named shadow `overair-health` at boot,
after every crash of the application (`[app] command` exiting with a non-zero code), when
the self-test result is known, and every `[health] report_interval_seconds`. Counts are
since the boot of the running image: a device on trial reports the job whose image it
runs (`jobId`), so that the server tells the updated devices from the control.

Thread-safe: the application's watcher thread records crashes, the self-test thread its
result; the runtime thread asks `due()` and publishes.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import threading
from pathlib import Path

from overair.core import wirejson
from overair.core.errors import PeerInputError
from overair.core.health import SHADOW_NAME, HealthReport, InvalidHealthReport, parse_report

log = logging.getLogger("overair.agent.health")
METRICS_TIMEOUT_SECONDS = 5.0
METRICS_MAX_OUTPUT = 4096


def update_topic(thing: str) -> str:
    return f"$aws/things/{thing}/shadow/name/{SHADOW_NAME}/update"


class HealthReporter:
    def __init__(self, interval: float, metrics_command: str = "", cwd: Path | None = None,
                 thing_name: str = "") -> None:
        self.interval = interval
        self.thing_name = thing_name
        self.metrics_command = metrics_command.strip()
        self.cwd = cwd
        self._lock = threading.Lock()
        self._report = HealthReport()
        self._dirty = False
        self._last_sent: float | None = None

    @property
    def enabled(self) -> bool:
        return self.interval > 0

    def booted(self, *, version: str, job_id: str | None, trial: bool, boot_count: int, now: float) -> None:
        """A (re)boot: counting starts again for the image booted."""
        with self._lock:
            self._report = HealthReport(job_id=job_id, version=version, since=int(now),
                                        reboots=max(0, boot_count - 1) if trial else 0,
                                        self_test="PENDING" if trial else None)
            self._dirty = True

    def crashed(self, exit_code: int) -> None:
        with self._lock:
            r = self._report
            self._report = HealthReport(r.job_id, r.version, r.since, r.crashes + 1, exit_code, r.reboots,
                                        r.self_test, r.metrics)
            self._dirty = True

    def self_test(self, passed: bool) -> None:
        with self._lock:
            r = self._report
            self._report = HealthReport(r.job_id, r.version, r.since, r.crashes, r.last_exit_code, r.reboots,
                                        "PASSED" if passed else "FAILED", r.metrics)
            self._dirty = True

    def due(self, now: float) -> HealthReport | None:
        """The report to publish now, if one is due (`payload` makes the message)."""
        if not self.enabled:
            return None
        with self._lock:
            if not self._dirty and self._last_sent is not None and now - self._last_sent < self.interval:
                return None
            self._dirty = False
            self._last_sent = now
            return self._report

    def payload(self, report: HealthReport) -> bytes:
        """The shadow update for `report`, with the metrics hook's output (which runs the
        command: call it off the agent's thread when there is one)."""
        metrics = self._metrics(report)
        reported = report.to_reported()
        if metrics is not None:
            reported["metrics"] = metrics
        return json.dumps({"state": {"reported": reported}}, separators=(",", ":")).encode()

    def _metrics(self, report: HealthReport) -> dict[str, float] | None:
        """The metrics hook's output, checked as the server checks it (None: no hook, or
        its output is unusable: the report goes without metrics rather than refused)."""
        if not self.metrics_command:
            return None
        try:
            # As the application's: which thing and image the metrics are of.
            env = {**os.environ, "OVERAIR_THING_NAME": self.thing_name,
                   "OVERAIR_VERSION": report.version or ""}
            done = subprocess.run(shlex.split(self.metrics_command), cwd=self.cwd, capture_output=True,
                                  env=env, timeout=METRICS_TIMEOUT_SECONDS, check=False)
            if done.returncode != 0 or len(done.stdout) > METRICS_MAX_OUTPUT:
                raise InvalidHealthReport(f"the metrics command exited {done.returncode}")
            return parse_report({"metrics": wirejson.loads(done.stdout)}).metrics
        except (OSError, ValueError, subprocess.TimeoutExpired, PeerInputError) as exc:
            log.warning("health metrics left out: %s", exc)
            return None
