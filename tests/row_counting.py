"""Counting the rows a request reads, for tests that a listing reads one page, not the
table (tests/e2e/test_registry_paging.py, tests/e2e/test_listing_paging.py), and the
transactions a batched write opens."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from sqlalchemy import Result, Select, event
from sqlalchemy.orm import ORMExecuteState, Session

from overair.server.storage.db import Database
from overair.server.storage.schema import Base


@contextmanager
def loads(model: type) -> Iterator[list[int]]:
    """Counts the `model` rows the ORM builds meanwhile."""
    count = [0]

    def loaded(_target: object, _context: object) -> None:
        count[0] += 1

    event.listen(model, "load", loaded)
    try:
        yield count
    finally:
        event.remove(model, "load", loaded)


@contextmanager
def returned(model: type[Base]) -> Iterator[list[int]]:
    """Counts the rows that SELECTs reading `model`'s table return meanwhile, column
    selects included (which build no ORM objects, so `loads` does not see them)."""
    count = [0]
    table = model.__table__

    def execute(state: ORMExecuteState) -> Result[Any] | None:
        statement = state.statement
        if not isinstance(statement, Select) or table not in statement.get_final_froms():
            return None
        frozen = state.invoke_statement().freeze()
        count[0] += len(frozen.data)
        return frozen()

    event.listen(Session, "do_orm_execute", execute)
    try:
        yield count
    finally:
        event.remove(Session, "do_orm_execute", execute)


@contextmanager
def transactions(db: Database) -> Iterator[list[int]]:
    """Counts the read-write transactions (`Database.session()`) opened meanwhile, on any
    thread: what a batched write saves (tests/integration/test_update_batches.py)."""
    count = [0]
    session = db.session

    def counted() -> AbstractContextManager[Session]:
        count[0] += 1
        return session()

    db.session = counted  # type: ignore[method-assign,assignment]
    try:
        yield count
    finally:
        db.session = session  # type: ignore[method-assign]


@contextmanager
def statements(db: Database) -> Iterator[list[str]]:
    """The SQL statements sent to the database meanwhile, on any thread, in order (a
    batched write must not send one per item)."""
    sent: list[str] = []

    def before(_conn: object, _cursor: object, sql: str, *_args: object) -> None:
        sent.append(sql.strip())

    event.listen(db.engine, "before_cursor_execute", before)
    try:
        yield sent
    finally:
        event.remove(db.engine, "before_cursor_execute", before)
