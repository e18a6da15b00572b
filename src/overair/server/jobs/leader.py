"""One leader among the server processes sharing a database, for fleet-wide periodic work.

The job scheduler (timeouts, aborts, staged and scheduled releases, `scheduler.py`) and
the resumption of OTA updates a stopped server left pending must run in one process at
a time: two schedulers would each send the notifications of one release. Its
transactions lock the job row (`SELECT ... FOR UPDATE`), so a second scheduler could not
apply a transition twice, but it would notify twice and do every tick's work twice.

On PostgreSQL the leader holds a session-level advisory lock
(`pg_try_advisory_lock`) on a connection of its own, outside the pool. PostgreSQL
releases it when that session ends, which it does when the process dies (the kernel
closes the socket at once on a crash or SIGKILL; TCP keepalives, set on the connection,
bound the time for a host that vanished: about `KEEPALIVE_BOUND` seconds). Every other
process tries to take the lock once per tick, so it takes over within one tick of the
release. A leader that loses its connection stops leading at its next poll (its
session, and so the lock, is gone or going) and competes again.

On SQLite there is one process by construction (the database is a local file it
opens): it always leads, and nothing changes for the single-process default.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from typing import Any, Protocol

import psycopg
from psycopg.conninfo import make_conninfo
from sqlalchemy.engine import make_url

log = logging.getLogger("overair.jobs")

# The lock's key: one 64-bit number for this purpose in the shared database ("overair
# scheduler" in ASCII, truncated); any other use of advisory locks must pick another.
LOCK_KEY = int.from_bytes(b"ovairsch", "big") & 0x7FFF_FFFF_FFFF_FFFF
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 10, 5, 3
KEEPALIVE_BOUND = KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_COUNT


class Leadership(Protocol):
    def poll(self) -> bool:
        """Lead now? Takes the leadership if it is free; cheap enough for every tick."""
        ...

    def close(self) -> None: ...


class SoleLeader:
    """SQLite: this process is the only one."""

    def poll(self) -> bool:
        return True

    def close(self) -> None:
        pass


class AdvisoryLeader:
    """A PostgreSQL session-level advisory lock on a dedicated connection."""

    def __init__(self, conninfo: str, *, name: str | None = None) -> None:
        self._conninfo = conninfo
        self._name = name or f"{socket.gethostname()}:{os.getpid()}"
        self._connection: psycopg.Connection[Any] | None = None
        self._leading = False
        self._lock = threading.Lock()

    def poll(self) -> bool:
        with self._lock:
            try:
                leading = self._poll()
            except psycopg.Error as exc:
                if self._leading:
                    log.error("scheduler leadership lost (%s): the database connection failed: %s",
                              self._name, exc)
                self._drop()
                leading = False
            if leading and not self._leading:
                log.info("scheduler leadership taken by %s", self._name)
            self._leading = leading
            return leading

    def _poll(self) -> bool:
        connection = self._connection
        if connection is None or connection.closed:
            connection = self._connection = psycopg.connect(
                self._conninfo, autocommit=True, connect_timeout=5, application_name="overair-leader",
                keepalives=1, keepalives_idle=KEEPALIVE_IDLE, keepalives_interval=KEEPALIVE_INTERVAL,
                keepalives_count=KEEPALIVE_COUNT,
                # The server side too: it ends a session whose host vanished, freeing the lock.
                options=f"-c tcp_keepalives_idle={KEEPALIVE_IDLE} "
                        f"-c tcp_keepalives_interval={KEEPALIVE_INTERVAL} "
                        f"-c tcp_keepalives_count={KEEPALIVE_COUNT}")
            self._leading = False
        if self._leading:
            # A session-level lock lasts as long as the session: a round trip on it
            # (which fails if the session is gone, and the lock with it) is the check.
            connection.execute("SELECT 1")
            return True
        row = connection.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
        return bool(row and row[0])

    def _drop(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(psycopg.Error):
                self._connection.close()
            self._connection = None

    def close(self) -> None:
        """Give the leadership up (the session ends, so does the lock)."""
        with self._lock:
            if self._leading and self._connection is not None:
                # Unlocked now, not when the server notices the session's end: a follower
                # polling right after takes over.
                with contextlib.suppress(psycopg.Error):
                    self._connection.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
            self._drop()
            self._leading = False


def postgres_conninfo(db_url: str) -> str | None:
    """libpq's connection string for a PostgreSQL database URL; None for another database."""
    url = make_url(db_url)
    if url.get_backend_name() != "postgresql":
        return None
    parts = {"host": url.host, "port": url.port, "dbname": url.database, "user": url.username,
             "password": url.password}
    return make_conninfo(**{k: str(v) for k, v in parts.items() if v is not None},
                         **{k: str(v) for k, v in url.query.items()})


def leadership_for(db_url: str) -> Leadership:
    """The leadership the database supports: an advisory lock on PostgreSQL, else sole."""
    conninfo = postgres_conninfo(db_url)
    return SoleLeader() if conninfo is None else AdvisoryLeader(conninfo)
