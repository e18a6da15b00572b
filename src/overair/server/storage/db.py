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

Health (`/health`, issue 12 finding 13): a database that is corrupt, locked, full or gone
must show there, not only as failing API calls. `health()` reads the schema and the
first row of every table (the pages every query starts from) on a separate thread,
bounded in time, and also reports the last database failure any transaction met if no
transaction has succeeded since (the server's scheduler runs one every second, so a
passing condition clears quickly). `unavailable_cause` tells such failures (answered
503 at the API) from defects (a constraint violation, bad SQL), which stay bugs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, inspect, literal_column, select, table
from sqlalchemy import exc as sa
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
HEALTH_TIMEOUT_SECONDS = 2.0
# DatabaseError subclasses that mean a defect in overair, not an unavailable database.
_DEFECTS = (sa.IntegrityError, sa.ProgrammingError, sa.DataError, sa.NotSupportedError)


def unavailable_cause(exc: BaseException) -> str | None:
    """Why the database is unavailable, if `exc` says so (a corrupt file, a lock held too
    long, a full disk, a server gone, no free connection); None for anything else."""
    if isinstance(exc, sa.TimeoutError):
        return "no database connection became free in time"
    if not isinstance(exc, sa.DBAPIError) or isinstance(exc, _DEFECTS):
        return None
    text = str(exc.orig).strip()
    return text.splitlines()[0] if text else type(exc.orig).__name__


# Session.info key: what runs once the session's transaction has committed (`after_commit`).
_AFTER_COMMIT = "overair.after_commit"


def after_commit(session: Session, action: Callable[[], None]) -> None:
    """Run `action` once `session`'s transaction has committed, never if it rolls back
    (server/events/: event messages tell of committed changes only). Actions run on the
    committing thread, right after the commit: they must be quick and must not raise."""
    session.info.setdefault(_AFTER_COMMIT, []).append(action)


def _run_after_commit(session: Session) -> None:
    for action in session.info.pop(_AFTER_COMMIT, ()):
        action()


def _drop_after_commit(session: Session, *_args: Any) -> None:
    session.info.pop(_AFTER_COMMIT, None)


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
        # (monotonic time, cause) of the last unavailable-database failure; time of the
        # last transaction that succeeded. Plain assignments: atomic enough for a health view.
        self._last_failure: tuple[float, str] | None = None
        self._last_success = 0.0
        self._probe_lock = threading.Lock()
        self._probe: Future[None] | None = None
        for engine in {self.engine, self._read_engine or self.engine}:
            event.listen(engine, "handle_error", self._note_failure)
        event.listen(self._sessions, "after_commit", _run_after_commit)
        event.listen(self._sessions, "after_rollback", _drop_after_commit)

    def listen(self, name: str, listener: Callable[..., Any]) -> None:
        """A SQLAlchemy session event listener on the read-write sessions (e.g. the event
        recorder's `before_flush`, server/events/recorder.py)."""
        event.listen(self._sessions, name, listener)

    @property
    def read_engine(self) -> Engine:
        """The engine `reading()` uses (on PostgreSQL the same as `engine`)."""
        return self._read_engine or self.engine

    def _note_failure(self, context: Any) -> None:
        cause = unavailable_cause(context.sqlalchemy_exception) if context.sqlalchemy_exception else None
        if cause is not None:
            self._last_failure = (time.monotonic(), cause)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One serializable read-write transaction: committed on success, rolled back on
        any error."""
        if self._write_lock is None:
            with self._sessions() as session, session.begin():
                yield session
        else:
            with self._write_lock, self._sessions() as session, session.begin():
                yield session
        self._last_success = time.monotonic()

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A read-only transaction: a consistent snapshot that does not wait for, or hold
        up, writers. Use it where nothing is written (lookups, listings)."""
        # Closing ends the transaction with a rollback and detaches (without expiring)
        # what was loaded, so results stay readable after the block.
        with self._read_sessions() as session:
            yield session
        self._last_success = time.monotonic()

    def health(self, timeout: float = HEALTH_TIMEOUT_SECONDS) -> str | None:
        """None if the database answers; otherwise why not. Never raises, never waits
        longer than `timeout`; a probe still running from an earlier call is waited for
        rather than a second one started."""
        with self._probe_lock:
            if self._probe is None or self._probe.done():
                self._probe = self._start_probe()
            probe = self._probe
        try:
            probe.result(timeout)
        except TimeoutError:
            return f"the database did not answer within {timeout:g} seconds"
        except Exception as exc:  # reported, not raised: this is the health view
            return unavailable_cause(exc) or f"{type(exc).__name__}: {exc}"
        failure = self._last_failure
        if failure is not None and failure[0] > self._last_success:
            return failure[1]
        return None

    def _start_probe(self) -> Future[None]:
        future: Future[None] = Future()

        def run() -> None:
            try:
                self._read_schema_and_tables()
            except BaseException as exc:  # handed to the waiting health() call
                future.set_exception(exc)
            else:
                future.set_result(None)

        # A daemon thread: a probe stuck on a dead database must not hold up shutdown.
        threading.Thread(target=run, name="db-health", daemon=True).start()
        return future

    def _read_schema_and_tables(self) -> None:
        """Read the schema and one whole row of every table: the root pages each query
        uses. The whole row: for `SELECT 1` SQLite reads a covering index instead of the
        table, so a corrupt table looked healthy (tests/e2e/test_database_faults.py)."""
        with (self._read_engine or self.engine).connect() as connection:
            for name in inspect(connection).get_table_names():
                connection.execute(select(literal_column("*")).select_from(table(name)).limit(1)).all()
            connection.rollback()

    def close(self) -> None:
        self.engine.dispose()
        if self._read_engine is not None:
            self._read_engine.dispose()
