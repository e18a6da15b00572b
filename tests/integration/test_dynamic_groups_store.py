"""Dynamic thing groups on SQLite and PostgreSQL: the membership worker (server/fleet/
dynamic.py) over the real stores (registry, shadows, connectivity, jobs), the indexing
configuration's effect on membership, and the job service withdrawing an unreleased
execution from a thing that stopped matching."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from overair.core.limits import DEFAULT_LIMITS
from overair.server import pki
from overair.server.api.contract import ApiError
from overair.server.fleet.config import IndexingStore
from overair.server.fleet.dynamic import DynamicGroups
from overair.server.fleet.search import FleetSearch
from overair.server.gateway.presence import PresenceEvent
from overair.server.jobs.service import JobService
from overair.server.registry.connectivity import Connectivity
from overair.server.registry.service import Registry
from overair.server.settings import Settings
from overair.server.shadow.service import ShadowService
from overair.server.storage.db import Database, migrate

CA = pki.make_root_ca("dynamic groups CA", dt.datetime.now(dt.UTC))


@dataclass
class Fleet:
    registry: Registry
    shadows: ShadowService
    connectivity: Connectivity
    indexing: IndexingStore
    dynamic: DynamicGroups
    jobs: JobService

    def settle(self, condition: Callable[[], bool] = lambda: True) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.dynamic.idle() and condition():
                return
            time.sleep(0.02)
        raise AssertionError("the membership worker did not settle")

    def members(self, group: str) -> list[str]:
        return self.registry.things_in_group(group)


@pytest.fixture
def fleet(database_url: str, tmp_path: Path) -> Iterator[Fleet]:
    db = Database(database_url)
    migrate(db.engine)
    clock = time.time
    settings = Settings(data_dir=tmp_path, account_id="123456789012", database_url=database_url)
    registry = Registry(db, settings, CA, clock)
    shadows = ShadowService(db, DEFAULT_LIMITS, clock)
    connectivity = Connectivity(db, clock)
    indexing = IndexingStore(db, clock)
    search = FleetSearch(db, DEFAULT_LIMITS, indexing.get)
    dynamic = DynamicGroups(db, search, indexing, DEFAULT_LIMITS, clock, registry.group_arn)
    jobs = JobService(db, settings, registry, clock)

    def joined(thing: str, group: str) -> None:
        jobs.add_thing_to_continuous_jobs(thing, group)

    dynamic.on_join = joined
    dynamic.on_leave = jobs.withdraw_unreleased
    dynamic.followed = jobs.continuous_targets
    indexing.on_change = dynamic.rebuild_all
    registry.on_things_changed = dynamic.touch
    shadows.on_change = lambda thing: dynamic.touch((thing,))
    connectivity.on_change = dynamic.touch
    dynamic.start()
    yield Fleet(registry, shadows, connectivity, indexing, dynamic, jobs)
    dynamic.stop()
    db.close()


def test_membership_follows_registry_shadow_and_connectivity(fleet: Fleet) -> None:
    for name in ("t-0", "t-1", "t-2"):
        fleet.registry.create_thing(name, {"zone": "hot" if name != "t-2" else "cold"})
    fleet.shadows.update("t-0", "", {"state": {"reported": {"battery": 90}}})
    fleet.dynamic.create("hot-charged", {"queryString": "attributes.zone:hot AND shadow.reported.battery>50"})
    fleet.dynamic.create("online", {"queryString": "connectivity.connected:true"})
    fleet.settle(lambda: fleet.members("hot-charged") == ["t-0"])
    assert fleet.registry.describe_group("hot-charged").status == "ACTIVE"
    fleet.shadows.update("t-1", "", {"state": {"reported": {"battery": 70}}})
    fleet.settle(lambda: fleet.members("hot-charged") == ["t-0", "t-1"])
    fleet.registry.update_thing("t-0", {"zone": "cold"}, merge=True, expected_version=None)
    fleet.settle(lambda: fleet.members("hot-charged") == ["t-1"])
    fleet.connectivity.apply([PresenceEvent("t-2", True)])
    fleet.settle(lambda: fleet.members("online") == ["t-2"])
    fleet.connectivity.restarted()
    fleet.settle(lambda: fleet.members("online") == [])
    # The configuration decides what a query sees: without shadows the group empties.
    fleet.indexing.update({"thingIndexingMode": "REGISTRY"}, None)
    fleet.settle(lambda: fleet.members("hot-charged") == [])
    fleet.dynamic.delete("hot-charged", None)
    assert [g.name for g in fleet.registry.page_groups_of_thing("t-1", None, 100)[0]] == []


def test_a_thing_that_stops_matching_before_release_loses_its_execution(fleet: Fleet) -> None:
    fleet.registry.create_thing("j-0", {"ring": "beta"})
    fleet.dynamic.create("beta", {"queryString": "attributes.ring:beta"})
    fleet.settle(lambda: fleet.members("beta") == ["j-0"])
    arn = fleet.registry.group_arn("beta")
    hour = (dt.datetime.now(dt.UTC).hour + 12) % 24
    window = {"maintenanceWindows": [{"startTime": f"cron(0 {hour} * * ? *)", "durationInMinutes": 30}]}
    fleet.jobs.create_job("held", [arn], {"op": "x"}, target_selection="CONTINUOUS",
                          config={"schedulingConfig": window})
    fleet.registry.create_thing("j-1", {"ring": "beta"})
    fleet.settle(lambda: fleet.members("beta") == ["j-0", "j-1"])
    statuses = {e.thing_name: e.status for e in fleet.jobs.executions_for_job("held")}
    assert statuses == {"j-0": "QUEUED", "j-1": "QUEUED"}
    fleet.registry.update_thing("j-1", {"ring": "alpha"}, merge=True, expected_version=None)
    fleet.settle(lambda: fleet.members("beta") == ["j-0"])
    statuses = {e.thing_name: e.status for e in fleet.jobs.executions_for_job("held")}
    assert statuses == {"j-0": "QUEUED", "j-1": "REMOVED"}


def test_a_scheduled_continuous_job_covers_things_that_come_to_match_before_its_start(fleet: Fleet) -> None:
    fleet.dynamic.create("gamma", {"queryString": "attributes.ring:gamma"})
    start = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0) + dt.timedelta(hours=2)
    scheduling = {"schedulingConfig": {"startTime": start.strftime("%Y-%m-%dT%H:%M")}}
    fleet.jobs.create_job("later", [fleet.registry.group_arn("gamma")], {"op": "x"},
                          target_selection="CONTINUOUS", config=scheduling)
    assert fleet.jobs.describe_job("later")[0].status == "SCHEDULED"
    fleet.registry.create_thing("g-0", {"ring": "gamma"})  # comes to match while the job waits
    fleet.settle(lambda: fleet.members("gamma") == ["g-0"])
    fleet.settle(lambda: [e.thing_name for e in fleet.jobs.executions_for_job("later")] == ["g-0"])
    assert fleet.jobs.next_execution("g-0") is None  # not released before the start


def test_a_restart_applies_changes_the_stopped_worker_had_not(fleet: Fleet, database_url: str) -> None:
    fleet.registry.create_thing("r-0", {"zone": "cold"})
    fleet.dynamic.create("hot", {"queryString": "attributes.zone:hot"})
    fleet.settle(lambda: fleet.registry.describe_group("hot").status == "ACTIVE")
    fleet.dynamic.stop()
    # Marked changed, never applied:
    fleet.registry.update_thing("r-0", {"zone": "hot"}, merge=True, expected_version=None)
    assert fleet.members("hot") == []
    db = Database(database_url)
    try:
        indexing = IndexingStore(db, time.time)
        restarted = DynamicGroups(db, FleetSearch(db, DEFAULT_LIMITS, indexing.get), indexing, DEFAULT_LIMITS,
                                  time.time, fleet.registry.group_arn)
        restarted.start()
        try:
            deadline = time.monotonic() + 15
            while fleet.members("hot") != ["r-0"] and time.monotonic() < deadline:
                time.sleep(0.02)
            assert fleet.members("hot") == ["r-0"]
        finally:
            restarted.stop()
    finally:
        db.close()


def test_groups_are_served_up_to_the_fleet_size_searching_is(fleet: Fleet, database_url: str) -> None:
    for name in ("b-0", "b-1", "b-2"):
        fleet.registry.create_thing(name)
    limits = dataclasses.replace(DEFAULT_LIMITS, max_search_things=2)
    db = Database(database_url)
    try:
        indexing = IndexingStore(db, time.time)
        bounded = DynamicGroups(db, FleetSearch(db, limits, indexing.get), indexing, limits, time.time,
                                fleet.registry.group_arn)
        with pytest.raises(ApiError) as refused:
            bounded.create("too-big", {"queryString": "thingName:b-*"})
        assert refused.value.code == "InvalidRequestException"
        assert "3 things" in refused.value.message
    finally:
        db.close()
