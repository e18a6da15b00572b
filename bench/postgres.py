"""A throw-away PostgreSQL cluster for a benchmark run (tests/postgres_harness.py: Debian's
`postgresql` binaries, a cluster in a temporary directory, stopped at the end)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def throwaway_postgres() -> Iterator[str | None]:
    """A SQLAlchemy URL of a fresh database, or None (with the reason printed) where
    PostgreSQL's binaries are missing."""
    try:
        from tests.postgres_harness import PostgresCluster
        cluster = PostgresCluster.start()
    except RuntimeError as exc:
        print(f"PostgreSQL left out: {exc}")
        yield None
        return
    try:
        yield cluster.new_database().replace("postgresql://", "postgresql+psycopg://", 1)
    finally:
        cluster.stop()
