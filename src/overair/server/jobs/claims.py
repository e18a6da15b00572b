"""Which live process is working on a long piece of background work (an OTA update being
created, a registration task running), so that the scheduler leader can take over what a
dead process left and never what a live one is doing.

The process doing the work holds a claim on it for as long as it works. On PostgreSQL a
claim is a session-level advisory lock, keyed by the work's kind and id, on a connection
of the claim's own: PostgreSQL ends the session, and so the claim, when the process dies
(the same bound as the leader's lock, `leader.py`). The leader looks for work still
pending in the database whose claim it can take: nobody is working on it any more
(`app.py` does it on becoming leader and every `RESCAN_SECONDS` while leading). Two
processes can never both hold one claim, so work is never done twice at once.

On SQLite there is one process: claims are an in-memory set (the same rules in one
process, so the leader's rescan skips work this process is doing).
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from typing import Any, Protocol

import psycopg

from overair.server.jobs.leader import (
    KEEPALIVE_COUNT,
    KEEPALIVE_IDLE,
    KEEPALIVE_INTERVAL,
    LOCK_KEY,
    postgres_conninfo,
)

# How often the leader looks for work a dead process left (besides on becoming leader).
RESCAN_SECONDS = 10.0


def claim_key(kind: str, work_id: str) -> int:
    """A 63-bit advisory-lock key for (kind, id), never the leader's own key."""
    key = int.from_bytes(hashlib.sha256(f"overair-claim:{kind}:{work_id}".encode()).digest()[:8], "big")
    key &= 0x7FFF_FFFF_FFFF_FFFF
    return key ^ 1 if key == LOCK_KEY else key


class Claim(Protocol):
    def release(self) -> None: ...


class Claims(Protocol):
    def take(self, kind: str, work_id: str) -> Claim | None:
        """The claim on (kind, id) if no live process holds it, else None."""
        ...


class _LocalClaim:
    def __init__(self, held: set[tuple[str, str]], lock: threading.Lock, key: tuple[str, str]) -> None:
        self._held, self._lock, self._key = held, lock, key

    def release(self) -> None:
        with self._lock:
            self._held.discard(self._key)


class LocalClaims:
    """One process (SQLite): claims in memory."""

    def __init__(self) -> None:
        self._held: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def take(self, kind: str, work_id: str) -> Claim | None:
        with self._lock:
            if (kind, work_id) in self._held:
                return None
            self._held.add((kind, work_id))
        return _LocalClaim(self._held, self._lock, (kind, work_id))


class _AdvisoryClaim:
    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._connection = connection

    def release(self) -> None:
        # Closing the session releases its lock (an explicit unlock first would only
        # repeat what the session's end does).
        with contextlib.suppress(psycopg.Error):
            self._connection.close()


class AdvisoryClaims:
    """PostgreSQL: a session-level advisory lock per claim, on its own connection (a
    claim lasts as long as the work: seconds to minutes; few run at once)."""

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo

    def take(self, kind: str, work_id: str) -> Claim | None:
        connection = psycopg.connect(
            self._conninfo, autocommit=True, connect_timeout=5, application_name="overair-claim",
            keepalives=1, keepalives_idle=KEEPALIVE_IDLE, keepalives_interval=KEEPALIVE_INTERVAL,
            keepalives_count=KEEPALIVE_COUNT,
            options=f"-c tcp_keepalives_idle={KEEPALIVE_IDLE} "
                    f"-c tcp_keepalives_interval={KEEPALIVE_INTERVAL} "
                    f"-c tcp_keepalives_count={KEEPALIVE_COUNT}")
        try:
            key = claim_key(kind, work_id)
            row = connection.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        except psycopg.Error:
            connection.close()
            raise
        if row and row[0]:
            return _AdvisoryClaim(connection)
        connection.close()
        return None


def claims_for(db_url: str) -> Claims:
    conninfo = postgres_conninfo(db_url)
    return LocalClaims() if conninfo is None else AdvisoryClaims(conninfo)
