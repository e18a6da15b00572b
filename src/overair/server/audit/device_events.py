"""Device events in the audit log that do not come from a request handler: connections
the broker refused.

The broker's log reader runs on the event loop and must never wait for the database
(and Mosquitto blocks when its log pipe is full), so refusals are handed to a worker
thread through a bounded queue. A flood of refused connections beyond the queue is
counted and recorded as one summary entry instead of growing memory without bound.
"""

from __future__ import annotations

import logging
import queue
import threading

from overair.server.audit.log import AuditLog
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
