"""The audit log: every authorization decision and every refused device request.

Entries are appended in their own transaction so that a refusal is recorded even when
the request it refused changes nothing else.
"""

from __future__ import annotations

import logging
from typing import Any

from overair.server.clock import Clock
from overair.server.storage.db import Database
from overair.server.storage.schema import AuditEntry

log = logging.getLogger("overair.audit")


class AuditLog:
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    def record(self, *, principal: str, action: str, resource: str, decision: str,
               source: str = "", detail: dict[str, Any] | None = None) -> None:
        log.info("audit %s %s %s %s", decision, principal, action, resource)
        with self._db.session() as s:
            s.add(AuditEntry(at=self._clock(), principal=principal, action=action, resource=resource,
                             decision=decision, source=source, detail=dict(detail or {})))
