"""Shared fixtures. `database_url` runs a test once on SQLite and once on PostgreSQL
(a throw-away cluster started once per session, a fresh database per test); `softhsm` is
a SoftHSM2 token for PKCS#11 tests. `blob_backend` runs a test once with the object
store's bytes in a local directory and once in an S3 bucket of a SeaweedFS server
(started once per session, a fresh bucket per test)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from overair.server.storage.blobs import BlobStore, LocalBlobs
from overair.server.storage.s3_blobs import S3Blobs
from tests.postgres_harness import PostgresCluster
from tests.seaweedfs_harness import SeaweedS3
from tests.softhsm_harness import SoftHsm, SoftHsmMissing

# The CLI's rich consoles are made at import and keep the width COLUMNS gives then
# (cli/common.py); tests that read wide tables set COLUMNS for their own run. The width
# of whatever started pytest must not decide: a pytest-xdist worker inherits COLUMNS=80,
# which would cut those tables. LINES goes with it for the same reason.
for _name in ("COLUMNS", "LINES"):
    os.environ.pop(_name, None)


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


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedS3]:
    server = SeaweedS3.start()
    try:
        yield server
    finally:
        server.stop()


BlobFactory = Callable[[Path], BlobStore]  # the object store's root -> where its bytes go


@pytest.fixture(params=["local", "s3"])
def blob_backend(request: pytest.FixtureRequest) -> BlobFactory:
    if request.param == "local":
        return LocalBlobs
    server: SeaweedS3 = request.getfixturevalue("seaweedfs")
    bucket = server.new_bucket()
    return lambda _root: S3Blobs(server.location(bucket, prefix="objects/"))


@pytest.fixture(autouse=True)
def _cli_log_handlers_removed_after_the_test() -> Iterator[None]:
    """A CLI command run in-process (cli/logs.py configure_logging, `overair db`) points
    the root logger at this test's captured stderr; a server of a module-scoped fixture
    that outlives the test then logs into a closed stream ("--- Logging error ---" in the
    output). pytest's own handlers are subclasses and stay."""
    root = logging.getLogger()
    before = set(root.handlers)
    yield
    for handler in root.handlers[:]:
        if handler not in before and type(handler) is logging.StreamHandler:
            root.removeHandler(handler)
