"""The audit log writer: every authorization decision and every device event, appended
to the hash chain (chain.py).

`record` runs on every API request, so appends are group-committed: callers that
arrive while an append transaction is in flight queue their entries, and the next
caller to find the writer idle appends all queued entries in one transaction. Each
caller still returns only once its own entry is committed (a refusal is on disk before
it is answered), but concurrent requests share transactions instead of queueing for
one each.

The chain must never fork, so appends are serialised in the database, not only in this
process: the transaction locks the one `audit_head` row (SELECT ... FOR UPDATE on
PostgreSQL; on SQLite, `Database.session()`'s BEGIN IMMEDIATE already excludes other
writers), reads the head, inserts the batch after it and moves the head, all at once.

Never call `record` inside an open `Database.session()`: on SQLite the append would wait
for the write lock that very session holds; `record` refuses such a call (MisuseError).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, bindparam, select, update

from overair.core.errors import MisuseError, UnavailableError
from overair.server import metrics
from overair.server.audit import chain
from overair.server.audit.fields import clean_detail, clean_text
from overair.server.clock import Clock
from overair.server.storage.db import Database
from overair.server.storage.schema import AuditEntry, AuditHead

log = logging.getLogger("overair.audit")

HEAD_ROW = 1


@dataclass(slots=True)
class _Batch:
    entries: list[chain.EntryFields] = field(default_factory=list)
    done: bool = False
    error: BaseException | None = None


class AuditLog:
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock
        self._lock = threading.Condition()
        self._open: _Batch | None = None  # entries waiting for the next append
        self._writing = False

    def record_status_update(self, thing: str, job_arn: str, decision: str, detail: dict[str, Any]) -> None:
        """A device's job status update (MQTT or HTTPS), Accepted or Rejected. Callers
        record only rejected updates and those that end an execution: IN_PROGRESS progress
        reports arrive every few seconds per device and would drown the log. The update
        stands even if the audit write fails; that is logged loudly instead."""
        self.record_status_updates([(thing, job_arn, decision, detail)])

    def record_status_updates(self, updates: list[tuple[str, str, str, dict[str, Any]]]) -> None:
        """`record_status_update` for several (thing, job ARN, decision, detail), in one
        append (a device worker's run of updates that ended executions)."""
        if not updates:
            return
        entries = [self._fields(principal=f"thing/{thing}", action="iot:UpdateJobExecution", resource=job_arn,
                                decision=decision, detail=detail)
                   for thing, job_arn, decision, detail in updates]
        try:
            self._append_all(entries)
        except UnavailableError as exc:
            for thing, _arn, _decision, _detail in updates:
                log.error("could not audit a status update from %s: %s", thing, exc.message)

    def record(self, *, principal: str, action: str, resource: str, decision: str,
               source: str = "", detail: dict[str, Any] | None = None, statement: str = "") -> None:
        """Append one entry; returns once it is committed. `statement` is the policy
        statement that decided (e.g. "OverairOTAOperator#AllowJobs"); `detail` any
        JSON-compatible facts. Raises UnavailableError if the database cannot be written."""
        self._append_all([self._fields(principal=principal, action=action, resource=resource,
                                       decision=decision, source=source, detail=detail, statement=statement)])

    @staticmethod
    def _fields(*, principal: str, action: str, resource: str, decision: str, source: str = "",
                detail: dict[str, Any] | None = None, statement: str = "") -> tuple[Any, ...]:
        log.debug("audit %s %s %s %s", decision, principal, action, resource)
        return (clean_text(principal, 256), clean_text(action, 128), clean_text(resource),
                clean_text(decision, 16), clean_text(statement), clean_text(source, 128),
                clean_detail(detail))

    def _append_all(self, entries: list[tuple[Any, ...]]) -> None:
        """Append cleaned entries in this order; returns once they are committed. Callers
        at the same time share one append (group commit)."""
        if _inside_write_transaction(self._db):
            raise MisuseError("AuditLog.record was called inside an open Database.session(): record "
                              "after that transaction ends (on SQLite this would wait forever)")
        with self._lock:
            # Time is taken under the lock so that seq order is time order.
            now = float(self._clock())
            batch = self._open
            if batch is None:
                batch = self._open = _Batch()
            batch.entries.extend(chain.EntryFields(now, *cleaned) for cleaned in entries)
            while not batch.done:
                if self._writing:
                    self._lock.wait()
                    continue
                # Idle writer and our batch still open (a batch leaves `_open` only when
                # someone writes it): write it, ours and everyone's who joined it.
                self._open = None
                self._writing = True
                self._lock.release()
                try:
                    self._append(batch.entries)
                except BaseException as exc:
                    batch.error = exc  # the waiting callers fail too: their entries are not in
                    if not isinstance(exc, Exception):
                        raise
                finally:
                    self._lock.acquire()
                    batch.done = True
                    self._writing = False
                    self._lock.notify_all()
        if batch.error is not None:
            raise UnavailableError(f"the audit log could not be written: {batch.error}") from batch.error

    def _append(self, entries: list[chain.EntryFields]) -> None:
        with self._db.session() as session:
            # Core statements, built once: the ORM's per-call statement handling cost
            # more than the write itself (~1.5 ms against ~0.3 ms per append on SQLite).
            connection = session.connection()
            row = connection.execute(_SELECT_HEAD).one_or_none()
            if row is None:
                # The migration creates it; without it there is no chain to extend.
                raise UnavailableError("the audit head row is missing: the audit log has been tampered "
                                       "with (see `overair audit verify`)")
            sealed = chain.seal_all(chain.Head(int(row.seq), str(row.entry_hash)), entries)
            connection.execute(_INSERT_ENTRY, [_row(entry) for entry in sealed])
            last = sealed[-1]
            connection.execute(_MOVE_HEAD, {"new_seq": last.seq, "new_hash": last.entry_hash})
        metrics.AUDIT_ENTRIES.inc(len(sealed))


_log_table: Table = AuditEntry.__table__  # type: ignore[assignment]
_head_table: Table = AuditHead.__table__  # type: ignore[assignment]
_SELECT_HEAD = (select(_head_table.c.seq, _head_table.c.entry_hash)
                .where(_head_table.c.id == HEAD_ROW).with_for_update())
_INSERT_ENTRY = _log_table.insert()
_MOVE_HEAD = (update(_head_table).where(_head_table.c.id == HEAD_ROW)
              .values(seq=bindparam("new_seq"), entry_hash=bindparam("new_hash")))


def _inside_write_transaction(db: Database) -> bool:
    """Whether this thread holds SQLite's in-process write lock (db.py). A group-commit
    follower holding it would wait for a leader that waits for it: a deadlock of every
    audited request, so such a call is refused instead."""
    owned = getattr(getattr(db, "_write_lock", None), "_is_owned", None)
    return bool(owned()) if callable(owned) else False


def _row(entry: chain.ChainEntry) -> dict[str, Any]:
    f = entry.fields
    return {"seq": entry.seq, "at": f.time, "principal": f.principal, "action": f.action,
            "resource": f.resource, "decision": f.decision, "statement": f.statement,
            "source": f.source, "detail": f.detail, "prev_hash": entry.prev_hash,
            "entry_hash": entry.entry_hash}
