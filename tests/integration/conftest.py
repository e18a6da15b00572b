"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from overair.server.storage.db import Database, migrate


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """A migrated database, SQLite and PostgreSQL in turn (`database_url`, tests/conftest.py)."""
    database = Database(database_url)
    migrate(database.engine)
    yield database
    database.close()
