"""The shadow store (server/shadow/service.py) on SQLite and PostgreSQL: versions carry
on across a delete, named shadows are listed, racing updates naming one version let
exactly one through, and a deleted thing takes its shadows with it."""

from __future__ import annotations

import dataclasses
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
from tests.row_counting import statements, transactions

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


def test_the_named_shadow_bound_holds_within_one_burst(db: Database, database_url: str,
                                                       tmp_path: Path) -> None:
    """New named shadows written in one `update_many` count against the thing's bound as
    they are made (the batch is read once, not flushed per update)."""
    settings = Settings(data_dir=tmp_path, account_id="123456789012", database_url=database_url)
    registry = Registry(db, settings, CA, lambda: 1_000.0)
    shadows = ShadowService(db, dataclasses.replace(DEFAULT_LIMITS, max_named_shadows_per_thing=2),
                            lambda: 1_000.0)
    registry.create_thing("t")
    _update(shadows, "t", "first")
    reported = {"state": {"reported": {"n": 1}}}
    results = shadows.update_many([("t", "second", reported), ("t", CLASSIC, reported),
                                   ("t", "third", reported), ("t", "first", reported)])
    outcomes = [r.status if isinstance(r, ShadowError) else r[0].body["version"] for r in results]
    assert outcomes == [1, 1, 400, 2]
    assert shadows.named_shadows("t") == ["first", "second"]


def test_a_burst_reads_its_rows_in_a_fixed_number_of_statements(
        world: tuple[Registry, ShadowService], db: Database) -> None:
    """A burst of $package reports (a rollout's devices ending together) reads the things,
    their shadows and their named-shadow counts once for the batch, whatever its size."""
    registry, shadows = world
    counts = []
    for size in (4, 40):
        things = [f"burst-{size}-{i}" for i in range(size)]
        for thing in things:
            registry.create_thing(thing)
        with statements(db) as seen:
            report = {"state": {"reported": {"fw": {"version": "2"}}}}
            results = shadows.update_many([(thing, "$package", report) for thing in things])
        assert all(not isinstance(r, ShadowError) for r in results)
        counts.append([sql.split()[0] for sql in seen if sql.split()[0] == "SELECT"])
    assert counts[0] == counts[1] == ["SELECT"] * 3, counts
