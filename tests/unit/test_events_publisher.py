"""server/events/publisher.py: a full queue drops events (counted, logged once per
thousand) and never waits; what was queued is published in order, in AWS's shape; a
device's connections name its certificate from one database read."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from pathlib import Path

import pytest
from cryptography import x509
from sqlalchemy import Engine, event

from overair.server import pki
from overair.server.events.publisher import EventPublisher
from overair.server.events.recorder import Change
from overair.server.gateway.presence import PresenceEvent
from overair.server.registry.service import Registry
from overair.server.settings import Settings
from overair.server.storage.db import Database, migrate


def _thing(name: str) -> Change:
    return Change("THING", "CREATED", {"thingName": name, "thingId": f"id-{name}", "versionNumber": 1,
                                       "thingTypeName": None, "attributes": {}})


def test_a_full_queue_drops_and_counts_without_waiting(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    sent: list[tuple[str, bytes]] = []
    publisher = EventPublisher(Database(f"sqlite:///{tmp_path / 'db'}"), lambda: 2.0,
                               account="123456789012", arn=lambda r: f"arn:aws:iot:r:123456789012:{r}",
                               max_queued=2, publish=sent.extend)
    caplog.set_level(logging.WARNING, logger="overair.events")
    for n in range(5):  # not started: nothing drains the queue
        publisher.changes_committed([_thing(f"t{n}")])
    assert publisher.dropped == 3
    assert len([r for r in caplog.records if "event queue full" in r.getMessage()]) == 1
    publisher.start()
    deadline = time.monotonic() + 10
    while len(sent) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    publisher.stop()
    assert [topic for topic, _ in sent] == ["$aws/events/thing/t0/created", "$aws/events/thing/t1/created"]
    payload = json.loads(sent[0][1])
    assert (payload["eventType"], payload["timestamp"], payload["accountId"]) == ("THING_EVENT", 2000,
                                                                                   "123456789012")


def test_a_devices_reconnections_name_its_certificate_from_one_read(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db'}"
    db = Database(url)
    migrate(db.engine)
    registry = Registry(db, Settings(data_dir=tmp_path, account_id="123456789012", database_url=url),
                        pki.make_root_ca("events test CA", dt.datetime.now(dt.UTC)), time.time)
    registry.create_thing("dev-1")
    issued = registry.create_keys_and_certificate(True, "dev-1")
    username = pki.broker_username(x509.load_pem_x509_certificate(issued.pem.encode()).subject)
    assert username is not None
    sent: list[tuple[str, bytes]] = []
    publisher = EventPublisher(db, time.time, account="123456789012",
                               arn=lambda r: f"arn:aws:iot:r:123456789012:{r}", max_queued=100,
                               publish=sent.extend)
    selects: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            selects.append(statement)

    event.listen(Engine, "before_cursor_execute", count)
    try:
        publisher.start()
        for connected in (True, False, True, False, True):
            publisher.presence(PresenceEvent("dev-1", connected, address="127.0.0.1", username=username))
        deadline = time.monotonic() + 10
        while len(sent) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        publisher.stop()
    finally:
        event.remove(Engine, "before_cursor_execute", count)
    payloads = [json.loads(payload) for _, payload in sent]
    connections = [p["principalIdentifier"] for p in payloads if p["eventType"] == "connected"]
    assert connections == [issued.certificate_id] * 3
    assert len(selects) == 1
