"""core/events.py: UpdateEventConfigurations' semantics (AWS: types not named keep their
state; every type starts disabled) and the payload shapes of AWS's developer guide
("Registry events", "Jobs events", "Lifecycle events")."""

from __future__ import annotations

import pytest

from overair.core import events
from overair.core.events import InvalidEventConfiguration


def test_updates_merge_and_everything_starts_disabled() -> None:
    assert events.to_aws(events.DEFAULT) == {name: {"Enabled": False} for name in events.EVENT_TYPES}
    on = events.parse_update({"JOB": {"Enabled": True}, "THING": {"Enabled": True}}, events.DEFAULT)
    off = events.parse_update({"THING": {"Enabled": False}, "POLICY": {}}, on)
    assert off.enabled == frozenset({"JOB"})


@pytest.mark.parametrize("spec", [
    [], {"JOBS": {"Enabled": True}}, {"JOB": True}, {"JOB": {"Enabled": "true"}},
    {"JOB": {"Enabled": True, "Other": 1}},
])
def test_bad_configurations_are_refused(spec: object) -> None:
    with pytest.raises(InvalidEventConfiguration):
        events.parse_update(spec, events.DEFAULT)


def test_payloads_have_aws_fields() -> None:
    topic, thing = events.thing_event("CREATED", 1.5, account="123456789012", thing_id="id-1",
                                      thing_name="t1", version=1, thing_type=None, attributes={"a": "b"})
    assert topic == "$aws/events/thing/t1/created"
    assert set(thing) == {"eventType", "eventId", "timestamp", "operation", "accountId", "thingId",
                          "thingName", "versionNumber", "thingTypeName", "attributes"}
    assert (thing["eventType"], thing["timestamp"]) == ("THING_EVENT", 1500)
    job = events.JobFacts("j1", False, "SNAPSHOT", ("arn:t",), "", "", 1.0, 2.0, 3.0)
    topic, completed = events.job_event("completed", 4.0, job, {"SUCCEEDED": 2, "FAILED": 1})
    assert topic == "$aws/events/job/j1/completed"
    assert completed["jobProcessDetails"]["numberOfSucceededThings"] == 2
    assert (completed["completedAt"], completed["timestamp"], completed["status"]) == (3000, 4, "COMPLETED")
    assert events.job_event("cancellation_in_progress", 4.0, job)[1]["status"] == "CANCELLATION_IN_PROGRESS"
    topic, gone = events.presence_event(1.0, client_id="c1", connected=False, session="s", principal=None,
                                        address=None, version=3, reason="CONNECTION_LOST")
    assert topic == "$aws/events/presence/disconnected/c1"
    assert (gone["clientInitiatedDisconnect"], gone["disconnectReason"], gone["versionNumber"]) == (
        False, "CONNECTION_LOST", 3)
    assert not events.presence_allowed("dev-1#2")  # AWS: no lifecycle events for ids with # or +
