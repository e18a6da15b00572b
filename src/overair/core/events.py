"""AWS IoT event messages (issue 15, item 5), pure: the event configuration
(UpdateEventConfigurations / DescribeEventConfigurations) and each event's topic and
payload, in AWS's shapes. The server decides when an event happens and publishes it
(server/events/).

Facts, from the AWS IoT Core developer guide:

- "Enable events for AWS IoT" / iot API reference UpdateEventConfigurations: the
  configuration maps each event type (THING, THING_GROUP, THING_TYPE,
  THING_GROUP_MEMBERSHIP, THING_GROUP_HIERARCHY, THING_TYPE_ASSOCIATION, JOB,
  JOB_EXECUTION, POLICY, CERTIFICATE, CA_CERTIFICATE) to `{"Enabled": bool}`; registry and
  job events "are not available by default" (all start disabled).
- "Lifecycle events": presence events "are available by default and they can't be
  disabled"; fields clientId, timestamp (ms), eventType connected|disconnected,
  sessionIdentifier, principalIdentifier (the certificate id for mutual TLS),
  ipAddress, versionNumber ("monotonically increasing ... for each client ID
  connection"), and on disconnection clientInitiatedDisconnect and disconnectReason.
- "Registry events": THING_EVENT on `$aws/events/thing/<thingName>/created|updated|deleted`
  (eventId, timestamp in ms, operation CREATED|UPDATED|DELETED, accountId, thingId,
  thingName, versionNumber, thingTypeName or null, attributes); THING_GROUP_EVENT on
  `$aws/events/thingGroup/<name>/...`; THING_GROUP_MEMBERSHIP_EVENT on
  `$aws/events/thingGroupMembership/thingGroup/<group>/thing/<thing>/added|removed`.
- "Jobs events": JOB on `$aws/events/job/<jobId>/completed|canceled|deleted|
  cancellation_in_progress|deletion_in_progress`, `status` COMPLETED, CANCELED, DELETED,
  CANCELLATION_IN_PROGRESS, DELETION_IN_PROGRESS, `jobProcessDetails` on completed and
  canceled, `forceCanceled` on canceled, `comment`; JOB_EXECUTION on
  `$aws/events/jobExecution/<jobId>/succeeded|failed|rejected|canceled|timed_out|removed|
  deleted` ("the `status` field reflects the job execution status prior to the
  deletion"). A cancel or delete sends the *_in_progress message, then the final one.
  The guide's job examples give `timestamp` in seconds (createdAt etc. in milliseconds);
  its registry and lifecycle examples in milliseconds: each is followed here.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# iot API reference, EventType (botocore's model lists the same values).
EVENT_TYPES = ("THING", "THING_GROUP", "THING_TYPE", "THING_GROUP_MEMBERSHIP", "THING_GROUP_HIERARCHY",
               "THING_TYPE_ASSOCIATION", "JOB", "JOB_EXECUTION", "POLICY", "CERTIFICATE", "CA_CERTIFICATE")
# Event types overair publishes; the others are accepted and stored (AWS's API takes
# them) but overair has no such objects, or publishes nothing for them yet
# (docs/compatibility.md, Events).
PUBLISHED_TYPES = frozenset({"THING", "THING_GROUP", "THING_GROUP_MEMBERSHIP", "JOB", "JOB_EXECUTION"})
EVENTS_TOPIC_FILTER = "$aws/events/#"
# Job execution statuses that have an event, and the topic suffix of each.
EXECUTION_OPERATIONS = {"SUCCEEDED": "succeeded", "FAILED": "failed", "REJECTED": "rejected",
                        "CANCELED": "canceled", "TIMED_OUT": "timed_out", "REMOVED": "removed"}


class InvalidEventConfiguration(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class EventConfig:
    enabled: frozenset[str] = frozenset()

    def on(self, event_type: str) -> bool:
        return event_type in self.enabled


DEFAULT = EventConfig()


def parse_update(spec: object, current: EventConfig) -> EventConfig:
    """UpdateEventConfigurations' `eventConfigurations` over the current configuration:
    types not named keep their state."""
    if not isinstance(spec, Mapping):
        raise InvalidEventConfiguration("eventConfigurations must be a map of event type to configuration")
    enabled = set(current.enabled)
    for name, value in spec.items():
        if name not in EVENT_TYPES:
            raise InvalidEventConfiguration(f"{str(name)[:64]!r} is not an event type: use one of "
                                            f"{', '.join(EVENT_TYPES)}")
        if not isinstance(value, Mapping) or set(value) - {"Enabled"}:
            raise InvalidEventConfiguration(f"the configuration of {name} must be "
                                            '{"Enabled": true|false}')
        flag = value.get("Enabled")
        if flag is None:
            continue  # AWS's Configuration has Enabled as an optional member: nothing changes
        if not isinstance(flag, bool):
            raise InvalidEventConfiguration(f"{name}.Enabled must be a boolean")
        if flag:
            enabled.add(str(name))
        else:
            enabled.discard(str(name))
    return EventConfig(frozenset(enabled))


def to_aws(config: EventConfig) -> dict[str, dict[str, bool]]:
    """DescribeEventConfigurations' `eventConfigurations`: every type, enabled or not."""
    return {name: {"Enabled": config.on(name)} for name in EVENT_TYPES}


def to_stored(config: EventConfig) -> list[str]:
    return sorted(config.enabled)


def from_stored(stored: object) -> EventConfig:
    """The stored form (written by this module); anything unexpected reads as disabled."""
    if not isinstance(stored, list):
        return DEFAULT
    return EventConfig(frozenset(name for name in stored if name in EVENT_TYPES))


# Payloads ------------------------------------------------------------------------
def _base(event_type: str, now: float, operation: str, *, seconds: bool = False) -> dict[str, Any]:
    return {"eventType": event_type, "eventId": str(uuid.uuid4()),
            "timestamp": int(now) if seconds else int(now * 1000), "operation": operation}


# A job event's `status` by operation (developer guide, "Jobs events").
JOB_STATUS = {"completed": "COMPLETED", "canceled": "CANCELED", "deleted": "DELETED",
              "cancellation_in_progress": "CANCELLATION_IN_PROGRESS",
              "deletion_in_progress": "DELETION_IN_PROGRESS"}


def thing_event(operation: str, now: float, *, account: str, thing_id: str, thing_name: str, version: int,
                thing_type: str | None, attributes: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
    return (f"$aws/events/thing/{thing_name}/{operation.lower()}",
            {**_base("THING_EVENT", now, operation), "accountId": account, "thingId": thing_id,
             "thingName": thing_name, "versionNumber": version, "thingTypeName": thing_type,
             "attributes": dict(attributes)})


def thing_group_event(operation: str, now: float, *, account: str, group_id: str, group_name: str,
                      version: int, description: str, attributes: Mapping[str, str],
                      dynamic: bool) -> tuple[str, dict[str, Any]]:
    # overair's thing groups have no parents: the hierarchy fields are AWS's for a root group.
    payload = {**_base("THING_GROUP_EVENT", now, operation), "accountId": account, "thingGroupId": group_id,
               "thingGroupName": group_name, "versionNumber": version, "parentGroupName": None,
               "parentGroupId": None, "description": description, "rootToParentThingGroups": [],
               "attributes": dict(attributes), "dynamicGroupMappingId": None}
    if dynamic:
        payload["dynamicGroupMappingId"] = group_id
    return f"$aws/events/thingGroup/{group_name}/{operation.lower()}", payload


def membership_event(operation: str, now: float, *, account: str, group_arn: str, group_id: str,
                     group_name: str, thing_arn: str, thing_id: str,
                     thing_name: str) -> tuple[str, dict[str, Any]]:
    return (f"$aws/events/thingGroupMembership/thingGroup/{group_name}/thing/{thing_name}/"
            f"{operation.lower()}",
            {**_base("THING_GROUP_MEMBERSHIP_EVENT", now, operation), "accountId": account,
             "groupArn": group_arn, "groupId": group_id, "thingArn": thing_arn, "thingId": thing_id,
             # A UUID, as AWS's: the same for the same group and thing.
             "membershipId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{group_arn}#{thing_arn}"))})


@dataclass(frozen=True, slots=True)
class JobFacts:
    job_id: str
    force_canceled: bool
    target_selection: str
    targets: tuple[str, ...]
    description: str
    comment: str
    created_at: float
    last_updated_at: float
    completed_at: float | None


def job_event(operation: str, now: float, job: JobFacts,
              counts: Mapping[str, int] | None = None) -> tuple[str, dict[str, Any]]:
    payload: dict[str, Any] = {
        **_base("JOB", now, operation, seconds=True), "jobId": job.job_id, "status": JOB_STATUS[operation],
        "targetSelection": job.target_selection, "targets": list(job.targets),
        "description": job.description, "createdAt": int(job.created_at * 1000),
        "lastUpdatedAt": int(job.last_updated_at * 1000)}
    if job.comment:
        payload["comment"] = job.comment
    if operation == "completed":
        payload["completedAt"] = int((job.completed_at or now) * 1000)
    if operation == "canceled":
        payload["forceCanceled"] = job.force_canceled
    if operation in ("completed", "canceled"):
        counts = counts or {}
        payload["jobProcessDetails"] = {
            "numberOfCanceledThings": counts.get("CANCELED", 0),
            "numberOfRejectedThings": counts.get("REJECTED", 0),
            "numberOfFailedThings": counts.get("FAILED", 0),
            "numberOfRemovedThings": counts.get("REMOVED", 0),
            "numberOfSucceededThings": counts.get("SUCCEEDED", 0),
            "numberOfTimedOutThings": counts.get("TIMED_OUT", 0)}
    return f"$aws/events/job/{job.job_id}/{operation}", payload


def execution_event(operation: str, now: float, *, job_id: str, thing_arn: str, status: str,
                    status_details: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    payload = {**_base("JOB_EXECUTION", now, operation, seconds=True), "jobId": job_id, "thingArn": thing_arn,
               "status": status}
    if status_details:
        payload["statusDetails"] = dict(status_details)
    return f"$aws/events/jobExecution/{job_id}/{operation}", payload


def presence_event(now: float, *, client_id: str, connected: bool, session: str, principal: str | None,
                   address: str | None, version: int, reason: str = "") -> tuple[str, dict[str, Any]]:
    kind = "connected" if connected else "disconnected"
    payload: dict[str, Any] = {"clientId": client_id, "timestamp": int(now * 1000), "eventType": kind,
                               "sessionIdentifier": session, "versionNumber": version}
    if principal:
        payload["principalIdentifier"] = principal
    if address:
        payload["ipAddress"] = address
    if not connected:
        payload["clientInitiatedDisconnect"] = reason == "CLIENT_INITIATED_DISCONNECT"
        payload["disconnectReason"] = reason
    return f"$aws/events/presence/{kind}/{client_id}", payload


def presence_allowed(client_id: str) -> bool:
    """AWS: "Client IDs that contain # or + do not receive lifecycle events"."""
    return bool(client_id) and "#" not in client_id and "+" not in client_id
