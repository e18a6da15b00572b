"""Issue 15's smaller stores on SQLite and PostgreSQL: connectivity from broker events,
job templates, deleted certificates kept in the CRL, a thing's groups."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from overair.server import pki
from overair.server.api.contract import ApiError
from overair.server.gateway.presence import PresenceEvent
from overair.server.jobs.claims import claims_for
from overair.server.jobs.service import JobService
from overair.server.jobs.templates import JobTemplates, job_from_template
from overair.server.registry.connectivity import NODE_CLAIM, Connectivity
from overair.server.registry.service import Registry
from overair.server.settings import Settings
from overair.server.storage.db import Database, migrate

CA = pki.make_root_ca("fleet stores CA", dt.datetime.now(dt.UTC))


@dataclass
class Clock:
    now: float = 5_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Stores:
    db: Database
    clock: Clock
    registry: Registry
    settings: Settings


@pytest.fixture
def stores(database_url: str, tmp_path: Path) -> Iterator[Stores]:
    db = Database(database_url)
    migrate(db.engine)
    clock = Clock()
    settings = Settings(data_dir=tmp_path, account_id="123456789012", database_url=database_url)
    yield Stores(db, clock, Registry(db, settings, CA, clock), settings)
    db.close()


def test_connectivity_follows_client_ids_and_restarts(stores: Stores) -> None:
    stores.registry.create_thing("dev-1")
    connectivity = Connectivity(stores.db, stores.clock)
    connectivity.apply([PresenceEvent("dev-1", True), PresenceEvent("dev-1#2", True),
                        PresenceEvent("overair.service", True), PresenceEvent("ghost", True)])
    row = connectivity.get("dev-1")
    assert row is not None
    assert (row.connected, row.changed_at) == (True, 5_000.0)
    stores.clock.now += 10
    connectivity.apply([PresenceEvent("dev-1", False, "CONNECTION_LOST")])
    row = connectivity.get("dev-1")
    assert row is not None
    assert (row.connected, row.changed_at) == (True, 5_000.0)  # dev-1#2 is still connected
    connectivity.apply([PresenceEvent("dev-1#2", False, "MQTT_KEEP_ALIVE_TIMEOUT")])
    row = connectivity.get("dev-1")
    assert row is not None
    assert (row.connected, row.changed_at) == (False, 5_010.0)
    assert row.disconnect_reason == "MQTT_KEEP_ALIVE_TIMEOUT"
    connectivity.apply([PresenceEvent("dev-1", True)])
    stores.clock.now += 10
    connectivity.restarted()
    row = connectivity.get("dev-1")
    assert row is not None
    assert (row.connected, row.disconnect_reason) == (False, "SERVER_INITIATED_DISCONNECT")
    assert connectivity.get("ghost") is None  # not a thing of this registry


def _connected(connectivity: Connectivity, thing: str) -> tuple[bool, str, str]:
    row = connectivity.get(thing)
    assert row is not None
    return row.connected, row.node, row.disconnect_reason


def test_each_broker_node_changes_only_the_connectivity_it_recorded(stores: Stores,
                                                                   database_url: str) -> None:
    """Two server processes, each with its own broker node: a device that moved to the
    other node stays connected through the late end of its old connection, its old
    node's restart, and the leader's sweep while the other node's process lives; once
    that process is gone (its claim free), the sweep disconnects its things."""
    for thing in ("dev-1", "dev-2"):
        stores.registry.create_thing(thing)
    node_a = Connectivity(stores.db, stores.clock, node="host:1")
    node_b = Connectivity(stores.db, stores.clock, node="host:2")
    node_a.apply([PresenceEvent("dev-1", True), PresenceEvent("dev-2", True)])
    node_b.apply([PresenceEvent("dev-1", True)])  # dev-1 reconnected through the balancer to B
    node_a.apply([PresenceEvent("dev-1", False, "MQTT_KEEP_ALIVE_TIMEOUT")])  # A notices late
    assert _connected(node_a, "dev-1") == (True, "host:2", "")
    node_a.restarted()
    assert _connected(node_a, "dev-1") == (True, "host:2", "")
    assert _connected(node_a, "dev-2") == (False, "host:1", "SERVER_INITIATED_DISCONNECT")

    claims = claims_for(database_url)
    process_b = claims.take(NODE_CLAIM, "host:2")
    assert process_b is not None
    assert node_a.sweep_dead_nodes(claims) == []
    assert _connected(node_a, "dev-1") == (True, "host:2", "")
    process_b.release()  # B's process died
    assert node_a.sweep_dead_nodes(claims) == ["host:2"]
    assert _connected(node_a, "dev-1") == (False, "host:2", "SERVER_INITIATED_DISCONNECT")
    assert node_a.sweep_dead_nodes(claims) == []  # nothing connected through B any more


def test_templates_from_documents_and_jobs(stores: Stores) -> None:
    templates = JobTemplates(stores.db, stores.settings, stores.clock)
    jobs = JobService(stores.db, stores.settings, stores.registry, stores.clock)
    stores.registry.create_thing("dev-2")
    jobs.create_job("source-job", [stores.registry.thing_arn("dev-2")], {"operation": "x"},
                    config={"timeoutConfig": {"inProgressTimeoutInMinutes": 3}})
    templates.create("tpl-doc", "d", {"operation": "y"}, "", {"maintenanceWindows": [{"a": 1}]}, None)
    copied = templates.create("tpl-job", "j", None, "", {}, "source-job")
    assert (copied.document, copied.config) == ({"operation": "x"},
                                                {"timeoutConfig": {"inProgressTimeoutInMinutes": 3}})
    with pytest.raises(ApiError) as caught:
        templates.create("tpl-doc", "again", {"operation": "y"}, "", {}, None)
    assert caught.value.code == "ConflictException"
    document, config = job_from_template(templates.describe("tpl-doc"), {})
    assert document == {"operation": "y"}
    assert config == {"schedulingConfig": {"maintenanceWindows": [{"a": 1}]}}
    assert [t.template_id for t in templates.page(None, 100)[0]] == ["tpl-doc", "tpl-job"]
    templates.delete("tpl-doc")
    assert [t.template_id for t in templates.page(None, 100)[0]] == ["tpl-job"]


def test_deleted_certificates_stay_revoked_and_groups_of_a_thing(stores: Stores) -> None:
    registry = stores.registry
    registry.create_thing("dev-3")
    for group in ("b-group", "a-group"):
        registry.create_group(group)
        registry.add_to_group(group, "dev-3")
    assert [g.name for g in registry.page_groups_of_thing("dev-3", None, 100)[0]] == ["a-group", "b-group"]
    cert = registry.create_keys_and_certificate(set_as_active=False)
    serial = int(registry.describe_certificate(cert.certificate_id).serial, 16)
    registry.delete_certificate(cert.certificate_id)
    assert serial in registry.revoked_serials()
    with pytest.raises(ApiError):
        registry.describe_certificate(cert.certificate_id)
