"""server/events/publisher.py: a full queue drops events (counted, logged once per
thousand) and never waits; what was queued is published in order, in AWS's shape."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from overair.server.events.publisher import EventPublisher
from overair.server.events.recorder import Change
from overair.server.storage.db import Database


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
