"""Shared fixtures. `database_url` runs a test once on SQLite and once on PostgreSQL
(a throw-away cluster started once per session, a fresh database per test); `softhsm` is
a SoftHSM2 token for PKCS#11 tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.postgres_harness import PostgresCluster
from tests.softhsm_harness import SoftHsm, SoftHsmMissing


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'overair.db'}"
    cluster: PostgresCluster = request.getfixturevalue("postgres")
    return cluster.new_database()


@pytest.fixture(scope="session")
def softhsm() -> Iterator[SoftHsm]:
    """One SoftHSM2 token for the session (a PKCS#11 module initialises once per process)."""
    try:
        hsm = SoftHsm.start()
    except SoftHsmMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield hsm
    finally:
        hsm.stop()
