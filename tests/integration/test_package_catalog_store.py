"""The Software Package Catalog store (server/packages/catalog.py) on SQLite and
PostgreSQL: the lifecycle, default versions, what a job may deploy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from overair.server.api.contract import ApiError
from overair.server.packages.catalog import Catalog
from overair.server.settings import Settings
from overair.server.storage.db import Database, migrate


@pytest.fixture
def catalog(database_url: str, tmp_path: Path) -> Iterator[Catalog]:
    db = Database(database_url)
    migrate(db.engine)
    yield Catalog(db, Settings(data_dir=tmp_path, account_id="123456789012", database_url=database_url),
                  lambda: 1_000.0)
    db.close()


def _code(call: object, *args: object) -> str:
    assert callable(call)
    with pytest.raises(ApiError) as caught:
        call(*args)
    return caught.value.code


def test_lifecycle_defaults_and_deployable_versions(catalog: Catalog) -> None:
    catalog.create_package("fw", "")
    draft = catalog.create_version("fw", "1.0", "", {"a": "1"}, None, "")
    assert _code(catalog.published_versions, [draft.arn]) == "ValidationException"
    assert _code(catalog.update_package, "fw", None, "1.0", False) == "ConflictException"
    catalog.update_version("fw", "1.0", {"attributes": {"a": "2"}}, "PUBLISH")
    assert catalog.published_versions([draft.arn]) == [("fw", "1.0")]
    catalog.update_package("fw", None, "1.0", False)
    assert catalog.get_package("fw").default_version == "1.0"
    assert _code(catalog.update_version, "fw", "1.0", {"recipe": "x"}, None) == "ConflictException"
    catalog.delete_version("fw", "1.0")
    assert catalog.get_package("fw").default_version is None
    catalog.delete_package("fw")
    catalog.delete_package("fw")  # deleting what does not exist succeeds, as AWS
    catalog.configure(True, "arn:aws:iam::123456789012:role/r")
    assert catalog.configuration().jobs_update_versions
