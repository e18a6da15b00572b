"""Reading the audit log: the head anchor, verification of the whole chain, filtered
listings. Reads only; everything runs in one consistent snapshot so that appends
committed meanwhile (a live server) never look like tampering."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Row, func, inspect, select
from sqlalchemy.orm import Session

from overair.core.errors import MisuseError
from overair.server.audit import chain
from overair.server.audit.log import HEAD_ROW
from overair.server.storage.db import Database
from overair.server.storage.schema import AuditEntry, AuditHead

# Rows fetched per round trip while walking the chain: memory stays flat for any length.
BATCH_ROWS = 2000

_ENTRY_COLUMNS = (AuditEntry.seq, AuditEntry.at, AuditEntry.principal, AuditEntry.action,
                  AuditEntry.resource, AuditEntry.decision, AuditEntry.statement, AuditEntry.source,
                  AuditEntry.detail, AuditEntry.prev_hash, AuditEntry.entry_hash)


@contextmanager
def _snapshot(db: Database) -> Iterator[Session]:
    with db.reading() as session:
        if db.engine.dialect.name == "postgresql":
            # READ COMMITTED would give each statement its own snapshot: the head read
            # first and the entries read later could then disagree on a live server.
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        yield session


def _check_schema(db: Database) -> None:
    if not inspect(db.engine).has_table(AuditHead.__tablename__):
        raise MisuseError("the database predates the hash-chained audit log: start `overair serve` "
                          "once to upgrade it", code="SchemaOutdated")


def _head(session: Session) -> chain.Head | None:
    row = session.execute(select(AuditHead.seq, AuditHead.entry_hash)
                          .where(AuditHead.id == HEAD_ROW)).one_or_none()
    return None if row is None else chain.Head(int(row.seq), str(row.entry_hash))


def to_entry(row: Row[Any]) -> chain.ChainEntry:
    fields = chain.EntryFields(time=row.at, principal=row.principal, action=row.action,
                               resource=row.resource, decision=row.decision, statement=row.statement,
                               source=row.source, detail=row.detail)
    return chain.ChainEntry(int(row.seq), fields, row.prev_hash, row.entry_hash)


def _stream(session: Session, statement: Any) -> Iterator[Row[Any]]:
    result = session.execute(statement, execution_options={"yield_per": BATCH_ROWS})
    yield from result


def read_head(db: Database) -> chain.Head:
    _check_schema(db)
    with _snapshot(db) as session:
        head = _head(session)
    if head is None:
        raise MisuseError("the audit head anchor is missing: run `overair audit verify`",
                          code="AuditHeadMissing")
    return head


def verify_log(db: Database, expected: chain.Head | None = None) -> chain.Report:
    """Walk the whole chain in seq order and compare its end with the head anchor and,
    if given, a head saved earlier (`overair audit head`)."""
    _check_schema(db)
    with _snapshot(db) as session:
        anchor = _head(session)
        verifier = chain.ChainVerifier(expected)
        for row in _stream(session, select(*_ENTRY_COLUMNS).order_by(AuditEntry.seq)):
            if not verifier.add(to_entry(row)):
                break
        return verifier.finish(anchor)


@dataclass(frozen=True, slots=True)
class Query:
    """Filters of `overair audit list`; patterns may use * and ? (fnmatch, case-sensitive)."""

    principal: str | None = None
    action: str | None = None
    decision: str | None = None  # case-insensitive; "Deny" is every kind of denial
    since: float | None = None  # epoch seconds, inclusive
    until: float | None = None  # epoch seconds, inclusive
    limit: int | None = None  # the newest `limit` matches


def _like(pattern: str) -> str:
    """A glob as an SQL LIKE prefilter (which may match more: SQLite's LIKE ignores case);
    the exact glob is applied to the rows it returns."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _glob_condition(column: Any, pattern: str) -> ColumnElement[bool]:
    if "*" in pattern or "?" in pattern:
        return column.like(_like(pattern), escape="\\")  # type: ignore[no-any-return]
    return column == pattern  # type: ignore[no-any-return]


# `Deny` names a family: IAM's ImplicitDeny and ExplicitDeny and the device side's DENY.
_DENIALS = ("deny", "implicitdeny", "explicitdeny")


def _decision_condition(decision: str) -> ColumnElement[bool]:
    column = func.lower(AuditEntry.decision)
    wanted = decision.lower()
    if wanted == "deny":
        return column.in_(_DENIALS)
    return column == wanted


def _matches(pattern: str | None, value: str) -> bool:
    return pattern is None or fnmatch.fnmatchcase(value, pattern)


def list_entries(db: Database, query: Query) -> Iterator[chain.ChainEntry]:
    """Matching entries, oldest first: all of them, streamed, or the newest `query.limit`."""
    _check_schema(db)
    statement = select(*_ENTRY_COLUMNS)
    if query.principal is not None:
        statement = statement.where(_glob_condition(AuditEntry.principal, query.principal))
    if query.action is not None:
        statement = statement.where(_glob_condition(AuditEntry.action, query.action))
    if query.decision is not None:
        statement = statement.where(_decision_condition(query.decision))
    if query.since is not None:
        statement = statement.where(AuditEntry.at >= query.since)
    if query.until is not None:
        statement = statement.where(AuditEntry.at <= query.until)
    with _snapshot(db) as session:
        if query.limit is None:
            for row in _stream(session, statement.order_by(AuditEntry.seq)):
                if _wanted(query, row):
                    yield to_entry(row)
            return
        # Newest first so that the limit ends the walk early; handed out oldest first.
        newest: list[chain.ChainEntry] = []
        if query.limit > 0:
            for row in _stream(session, statement.order_by(AuditEntry.seq.desc())):
                if _wanted(query, row):
                    newest.append(to_entry(row))
                    if len(newest) >= query.limit:
                        break
    yield from reversed(newest)


def _wanted(query: Query, row: Row[Any]) -> bool:
    return _matches(query.principal, row.principal) and _matches(query.action, row.action)
