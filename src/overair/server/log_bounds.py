"""Log lines that devices and strangers cause, bounded.

A refused download, Jobs request or stream request is logged (hostile input is logged),
but the sender decides how many it sends: anyone who can open a TLS connection to the
download endpoint could send a forged URL thousands of times a second, and each refusal
was one more line for the disk and the log pipeline. `BoundedLog` passes the first
`Limits.device_log_lines` lines of each kind per `Limits.device_audit_interval_seconds`
and counts the rest; the first line logged after an interval that left lines out says
how many, per kind. Kinds are names in overair's code, never from the request, so the
counters are bounded too. The audit log has its own bound (audit/device_events.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

from overair.core.limits import Limits


class BoundedLog:
    def __init__(self, logger: logging.Logger, limits: Limits,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger
        self._per_interval = max(1, limits.device_log_lines)
        self._interval = limits.device_audit_interval_seconds
        self._clock = clock
        self._lock = threading.Lock()  # called from the event loop and worker threads
        self._ends = clock() + self._interval
        self._logged: Counter[str] = Counter()
        self._left_out: Counter[str] = Counter()

    def info(self, kind: str, message: str, *args: object) -> None:
        """Log `message % args` at INFO unless `kind` has had its lines this interval."""
        with self._lock:
            now = self._clock()
            left_out: list[tuple[str, int]] = []
            if now >= self._ends:
                left_out = sorted(self._left_out.items())
                self._logged.clear()
                self._left_out.clear()
                self._ends = now + self._interval
            passes = self._logged[kind] < self._per_interval
            if passes:
                self._logged[kind] += 1
            else:
                self._left_out[kind] += 1
        for name, count in left_out:
            self._log.info("%d more %s lines were left out in %.0f s (Limits.device_log_lines)",
                           count, name, self._interval)
        if passes:
            self._log.info(message, *args)
