"""Database engine, sessions and migrations.

SQLite (the default) runs in WAL mode with a busy timeout so that the API threads and
the device service can share it; PostgreSQL is selected by URL. Migrations are Alembic
scripts shipped inside the package and applied with `migrate()`.

Transactions must be real on both. Python's sqlite3 driver by default starts a
transaction only at the first INSERT/UPDATE/DELETE, so a read-check-write (the
expectedVersion check of a job execution update) would read outside the transaction
and two writers could both pass the check. So overair issues BEGIN itself: `session()`
starts with BEGIN IMMEDIATE (takes SQLite's single write lock up front, waiting for it
up to the busy timeout, which makes each transaction serializable), `reading()` with a
plain BEGIN (a consistent snapshot that never blocks writers). On PostgreSQL both are
ordinary transactions and writers lock rows with SELECT ... FOR UPDATE.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # the driver's implicit BEGIN off: see _sqlite_begin
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def make_engine(url: str, *, immediate: bool = True) -> Engine:
    """`immediate`: on SQLite, transactions take the write lock at BEGIN (for writers)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
        event.listen(engine, "connect", _sqlite_connect)
        begin = "BEGIN IMMEDIATE" if immediate else "BEGIN"

        def _sqlite_begin(connection: Any) -> None:
            connection.exec_driver_sql(begin)

        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


class Database:
    """Owns the engine and hands out transactional sessions."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time. Queueing writers on a lock in this process
        # avoids SQLite's busy handler, which sleeps in steps of up to 100 ms (p99 of a
        # job update went from ~350 ms to a few ms under contention).
        self._write_lock: threading.RLock | None = threading.RLock() if url.startswith("sqlite") else None
        if url.startswith("sqlite"):
            self._read_engine: Engine | None = make_engine(url, immediate=False)
            self._read_sessions = sessionmaker(self._read_engine, expire_on_commit=False)
        else:
            self._read_engine = None
            self._read_sessions = self._sessions

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One serializable read-write transaction: committed on success, rolled back on
        any error."""
        if self._write_lock is None:
            with self._sessions() as session, session.begin():
                yield session
            return
        with self._write_lock, self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A read-only transaction: a consistent snapshot that does not wait for, or hold
        up, writers. Use it where nothing is written (lookups, listings)."""
        # Closing ends the transaction with a rollback and detaches (without expiring)
        # what was loaded, so results stay readable after the block.
        with self._read_sessions() as session:
            yield session

    def close(self) -> None:
        self.engine.dispose()
        if self._read_engine is not None:
            self._read_engine.dispose()
