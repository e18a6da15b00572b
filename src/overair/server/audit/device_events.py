"""Device events in the audit log, bounded per device.

Connections the broker refused (`RefusedConnectionRecorder`): the broker's log reader
runs on the event loop and must never wait for the database (and Mosquitto blocks when
its log pipe is full), so refusals are handed to a worker thread through a bounded
queue. A flood of refused connections beyond the queue is counted and recorded as one
summary entry instead of growing memory without bound.

Refusals and throttling of device requests (`DeviceEventRecorder`, issue 12 finding
11): a device decides how many requests it sends, so one audit row per refused request
would let it grow the database at will (20,000 messages made 6,890 rows). Entries are
grouped by (principal, action, decision, reason) over an interval
(`Limits.device_audit_interval_seconds`): the first refusal of a group in an interval
is appended at once, before it is answered, exactly as before; repeats in the same
interval are only counted, and when the interval closes one more entry records how many
there were (`detail.count`). Throttled requests are always counted (they are refused on
the event loop, which never waits for the database). So a device adds at most two rows
per group and interval, however much it sends; the number of groups in memory is
bounded too (`Limits.device_audit_keys`; past it, counts go to one overflow group).
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any

from overair.core.errors import OverairError
from overair.core.limits import Limits
from overair.server.audit.log import AuditLog
from overair.server.clock import Clock
from overair.server.gateway.broker_log import UNKNOWN_CLIENT, RefusedConnection

log = logging.getLogger("overair.audit")

CONNECT_ACTION = "iot:Connect"  # AWS IoT's name for an MQTT connection (resource client/<id>)
REFUSED = "Refused"
# The worker thread ends after this long without events (it is started again on demand),
# so an idle server holds no thread for it.
IDLE_SECONDS = 5.0


class RefusedConnectionRecorder:
    def __init__(self, audit: AuditLog, max_queued: int = 1000) -> None:
        self._audit = audit
        self._queue: queue.Queue[RefusedConnection] = queue.Queue(max_queued)
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._suppressed = 0

    def __call__(self, event: RefusedConnection) -> None:
        """Never blocks."""
        with self._lock:
            try:
                self._queue.put_nowait(event)
            except queue.Full:
                self._suppressed += 1
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="audit-refusals", daemon=True)
                self._worker.start()

    def _run(self) -> None:
        while True:
            try:
                event = self._queue.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                self._record_suppressed()
                with self._lock:  # producers put under this lock: nothing can slip in now
                    if self._queue.empty() and not self._suppressed:
                        self._worker = None
                        return
                continue
            self._record(event)
            self._record_suppressed()

    def _record(self, event: RefusedConnection) -> None:
        try:
            # The client id is only what the client claimed: no certificate was accepted.
            self._audit.record(principal=event.client_id, action=CONNECT_ACTION,
                               resource=f"client/{event.client_id}",
                               decision=REFUSED, source=event.source, detail={"reason": event.reason})
        except Exception:
            log.exception("could not audit a refused connection from %s", event.source or "?")

    def _record_suppressed(self) -> None:
        with self._lock:
            suppressed, self._suppressed = self._suppressed, 0
        if suppressed:
            try:
                self._audit.record(principal=UNKNOWN_CLIENT, action=CONNECT_ACTION,
                                   resource=f"client/{UNKNOWN_CLIENT}",
                                   decision=REFUSED,
                                   detail={"reason": "flood: refused connections not recorded one by one",
                                           "count": suppressed})
            except Exception:
                log.exception("could not audit %d suppressed refused connections", suppressed)


THROTTLED = "Throttled"
OVERFLOW_PRINCIPAL = "devices/*"  # counts of groups beyond Limits.device_audit_keys
# The flusher's poll period (real time); the interval itself is measured on the server clock.
FLUSH_POLL_SECONDS = 0.5


@dataclass(slots=True)
class _Group:
    started: float  # server clock, start of the current interval
    resource: str  # the last resource seen (the group spans resources: a device picks them)
    count: int = 0  # repeats not written yet


_Key = tuple[str, str, str, str]  # principal, action, decision, reason


class DeviceEventRecorder:
    def __init__(self, audit: AuditLog, clock: Clock, limits: Limits) -> None:
        self._audit = audit
        self._clock = clock
        self._interval = limits.device_audit_interval_seconds
        self._max_groups = max(1, limits.device_audit_keys)
        self._lock = threading.Lock()
        self._groups: dict[_Key, _Group] = {}
        self._closed: list[tuple[_Key, _Group]] = []  # intervals ended with counts to write
        self._worker: threading.Thread | None = None
        self._stopping = threading.Event()

    def refused(self, *, principal: str, action: str, resource: str, decision: str, reason: str,
                detail: dict[str, Any] | None = None) -> None:
        """A request a device sent was refused: appended now if it is the first of its
        group in this interval (blocks until written), else counted."""
        if self._note((principal, action, decision, reason), resource, count_first=False):
            self._write(principal=principal, action=action, resource=resource, decision=decision,
                        detail={"reason": reason, **(detail or {})})

    def throttled(self, *, principal: str, action: str, resource: str) -> None:
        """A request refused for its device's budget: counted, never blocks."""
        self._note((principal, action, THROTTLED, "over the device's request budget"), resource,
                   count_first=True)

    def _note(self, key: _Key, resource: str, *, count_first: bool) -> bool:
        """Count one event; True if the caller should write it now (first of its interval)."""
        now = self._clock()
        with self._lock:
            group = self._groups.get(key)
            if group is not None and not group.started <= now < group.started + self._interval:
                self._close(key, group)
                group = None
            first = group is None
            if group is None:
                if len(self._groups) >= self._max_groups:
                    key = (OVERFLOW_PRINCIPAL, key[1], key[2], "groups beyond the limit")
                    group = self._groups.get(key)
                    first = False
                if group is None:
                    group = self._groups[key] = _Group(now, resource)
            group.resource = resource
            if count_first or not first:
                group.count += 1
            self._ensure_worker()
        return first and not count_first

    def _close(self, key: _Key, group: _Group) -> None:
        del self._groups[key]
        if group.count:
            self._closed.append((key, group))

    def _ensure_worker(self) -> None:
        if self._worker is None and not self._stopping.is_set():
            self._worker = threading.Thread(target=self._run, name="audit-devices", daemon=True)
            self._worker.start()

    def _run(self) -> None:
        while not self._stopping.wait(FLUSH_POLL_SECONDS):
            self._write_closed(self._take_closed(everything=False))
            with self._lock:
                if not self._groups and not self._closed:
                    self._worker = None
                    return

    def _take_closed(self, *, everything: bool) -> list[tuple[_Key, _Group]]:
        now = self._clock()
        with self._lock:
            for key, group in list(self._groups.items()):
                if everything or not group.started <= now < group.started + self._interval:
                    self._close(key, group)
            closed, self._closed = self._closed, []
        return closed

    def _write_closed(self, closed: list[tuple[_Key, _Group]]) -> None:
        for (principal, action, decision, reason), group in closed:
            self._write(principal=principal, action=action, resource=group.resource, decision=decision,
                        detail={"reason": reason, "count": group.count,
                                "intervalSeconds": self._interval,
                                "summary": "repeats counted, not recorded one by one"})

    def flush(self) -> None:
        """Write every count now (the server is stopping)."""
        self._write_closed(self._take_closed(everything=True))

    def close(self) -> None:
        self._stopping.set()
        self.flush()

    def _write(self, *, principal: str, action: str, resource: str, decision: str,
               detail: dict[str, Any]) -> None:
        try:
            self._audit.record(principal=principal, action=action, resource=resource, decision=decision,
                               detail=detail)
        except OverairError as exc:
            # The refusal stands without its entry; say so loudly instead.
            log.error("could not audit %s %s by %s: %s", decision, action, principal, exc.message)
