"""Thing group tags (server/registry/tags.py) on SQLite and PostgreSQL: kept per group,
limited to 50, gone with the group (the foreign key's cascade), not inherited by a new
group of the same name."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from overair.server import pki
from overair.server.api.contract import ApiError
from overair.server.registry.service import Registry
from overair.server.registry.tags import GroupTags
from overair.server.settings import Settings
from overair.server.storage.db import Database, migrate

CA = pki.make_root_ca("group tags CA", dt.datetime.now(dt.UTC))


@pytest.fixture
def stores(database_url: str, tmp_path: Path) -> Iterator[tuple[Registry, GroupTags]]:
    db = Database(database_url)
    migrate(db.engine)
    settings = Settings(data_dir=tmp_path, account_id="123456789012", database_url=database_url)
    yield Registry(db, settings, CA, lambda: 1_000_000.0), GroupTags(db)
    db.close()


def test_tags_follow_the_group(stores: tuple[Registry, GroupTags]) -> None:
    registry, tags = stores
    registry.create_group("g")
    tags.tag("g", {"b": "2", "a": "1"})
    tags.tag("g", {"a": "one"})
    assert tags.list("g") == [{"Key": "a", "Value": "one"}, {"Key": "b", "Value": "2"}]
    with pytest.raises(ApiError) as full:
        tags.tag("g", {f"k{i}": "" for i in range(49)})
    assert full.value.code == "LimitExceededException"
    tags.untag("g", ["b", "never"])
    assert tags.list("g") == [{"Key": "a", "Value": "one"}]
    registry.delete_group("g")
    with pytest.raises(ApiError) as gone:
        tags.list("g")
    assert gone.value.code == "ResourceNotFoundException"
    registry.create_group("g")
    assert tags.list("g") == []
