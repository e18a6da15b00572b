"""The shadow store (server/shadow/service.py) on SQLite and PostgreSQL: versions carry
on across a delete, named shadows are listed, racing updates naming one version let
exactly one through, and a deleted thing takes its shadows with it."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import pytest

from overair.core.limits import DEFAULT_LIMITS
from overair.core.shadow import ShadowError
from overair.server import pki
from overair.server.registry.service import Registry
from overair.server.settings import Settings
from overair.server.shadow.service import CLASSIC, ShadowService
from overair.server.storage.db import Database
from tests.row_counting import transactions

CA = pki.make_root_ca("shadow test CA", dt.datetime.now(dt.UTC))


@pytest.fixture
def world(db: Database, database_url: str, tmp_path: Path) -> tuple[Registry, ShadowService]:
    settings = Settings(data_dir=tmp_path, account_id="123456789012", database_url=database_url)
    return Registry(db, settings, CA, lambda: 1_000.0), ShadowService(db, DEFAULT_LIMITS, lambda: 1_000.0)


def _update(shadows: ShadowService, thing: str, name: str = CLASSIC, **request: object) -> int:
    published = shadows.update(thing, name, {"state": {"reported": {"n": 1}}, **request})
    version = published[0].body["version"]
    assert isinstance(version, int)
    return version


def test_versions_named_shadows_and_thing_deletion(world: tuple[Registry, ShadowService]) -> None:
    registry, shadows = world
    registry.create_thing("t1")
    assert _update(shadows, "t1") == 1
    assert _update(shadows, "t1", "cfg") == 1
    assert _update(shadows, "t1", "$package") == 1
    assert shadows.named_shadows("t1") == ["$package", "cfg"]
    assert shadows.delete("t1", CLASSIC, {"version": 1})["version"] == 1
    with pytest.raises(ShadowError) as caught:
        shadows.get("t1", CLASSIC, None)
    assert caught.value.status == 404
    assert _update(shadows, "t1") == 2  # the version carries on after a delete
    registry.delete_thing("t1")
    registry.create_thing("t1")
    with pytest.raises(ShadowError):
        shadows.get("t1", "cfg", None)  # gone with the thing
    assert _update(shadows, "t1") == 1


def test_racing_updates_on_one_version_let_exactly_one_through(world: tuple[Registry, ShadowService]) -> None:
    registry, shadows = world
    registry.create_thing("t2")
    _update(shadows, "t2")
    outcomes: list[int] = []
    lock = threading.Lock()

    def attempt() -> None:
        try:
            _update(shadows, "t2", version=1)
            result = 200
        except ShadowError as exc:
            result = exc.status
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=attempt) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == [200, 409, 409, 409]
    assert shadows.get("t2", CLASSIC, None)["version"] == 2


def test_a_burst_of_updates_in_one_transaction_answers_each_as_alone(
        world: tuple[Registry, ShadowService], db: Database) -> None:
    """`update_many` (the $package reports of many devices ending at once): a refused
    update (unknown thing, stale version, malformed) is answered alone and leaves the
    others written; two updates of one shadow follow each other."""
    registry, shadows = world
    for thing in ("a", "b"):
        registry.create_thing(thing)
    changed: list[str] = []
    shadows.on_change = changed.append
    with transactions(db) as opened:
        results = shadows.update_many([
            ("a", "$package", {"state": {"reported": {"fw": {"version": "1.0.0"}}}}),
            ("ghost", "$package", {"state": {"reported": {"fw": {"version": "1.0.0"}}}}),
            ("b", "$package", {"state": {"reported": {"fw": {"version": "1.0.0"}}}, "version": 7}),
            ("b", CLASSIC, {"nostate": 1}),
            ("a", "$package", {"state": {"reported": {"fw": {"version": "1.1.0"}}}}),
            ("b", "$package", {"state": {"reported": {"fw": {"version": "2.0.0"}}}})])
    assert opened == [1]
    refused = [r.status for r in results if isinstance(r, ShadowError)]
    assert refused == [404, 409, 400]
    versions = [r[0].body["version"] for r in results if not isinstance(r, ShadowError)]
    assert versions == [1, 2, 1]
    assert changed == ["a", "a", "b"]
    assert shadows.get("a", "$package", None)["state"]["reported"] == {"fw": {"version": "1.1.0"}}
    assert shadows.get("b", "$package", None)["version"] == 1
