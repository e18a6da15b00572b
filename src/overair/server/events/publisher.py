"""Publishes event messages (core/events.py) on AWS's reserved topics, off every other
path: committed changes (server/events/recorder.py) and the broker's connection events
(gateway/presence.py) are put on one bounded queue without waiting, and one thread
turns them into payloads and hands them to the service's MQTT connection.

A full queue (more than `Limits.max_queued_events` waiting) drops the event, counts it
(`dropped`) and logs it (the first drop and every 1,000th), rather than slowing a
device's request or an API call. So overair publishes each event at most once, where
AWS promises at least once ("Iot events", developer guide); docs/compatibility.md says so.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from overair.core import events
from overair.server.clock import Clock
from overair.server.events.recorder import Change
from overair.server.gateway.presence import PresenceEvent
from overair.server.pki import SERVICE_IDENTITY
from overair.server.storage.db import Database
from overair.server.storage.schema import DeviceCertificate, EventReader, JobExecution, Thing, ThingGroup

log = logging.getLogger("overair.events")
# A certificate's serial as the broker logs its subject (server/pki.py issue_client_cert).
_SERIAL = re.compile(r"(?:^|,)serialNumber=([0-9a-f]{1,64})(?:,|$)")
_STOP = object()
_CERTIFICATE_IDS_KEPT = 100_000  # past this the kept ones are dropped and read again


@dataclass(frozen=True, slots=True)
class _Presence:
    event: PresenceEvent
    at: float


class EventPublisher:
    def __init__(self, db: Database, clock: Clock, *, account: str, arn: Callable[[str], str],
                 max_queued: int, publish: Callable[[list[tuple[str, bytes]]], None]) -> None:
        """`arn(resource)`: the iot ARN of a resource (`thing/dev-1`); `publish`: sends
        (topic, payload) messages at QoS 1 (thread-safe, never waits)."""
        self._db = db
        self._clock = clock
        self._account = account
        self._arn = arn
        self._publish = publish
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queued)
        self.dropped = 0
        self.published = 0
        # Presence bookkeeping, touched by the publishing thread only: each live client
        # id's session identifier, and each client id's last version number.
        self._sessions: dict[str, str] = {}
        self._versions: dict[str, int] = {}
        # Certificate serial -> certificate id (fixed once issued): a fleet's reconnect
        # wave is one event per connection, and a read per event on PostgreSQL under
        # load (tens of ms each) filled the queue at 10,000 devices (bench/fleet.py).
        self._certificate_ids: dict[str, str] = {}
        self._thread: threading.Thread | None = None

    # Producers (any thread; never wait) ----------------------------------------------
    def changes_committed(self, changes: list[Change]) -> None:
        self._offer(list(changes))

    def presence(self, event: PresenceEvent) -> None:
        # The server's own connections (the service's reserved id; the witness and the
        # session closer connect as certificate subjects, as gateway/presence.py
        # `thing_of_client` tells) are not the fleet's: no events for them.
        client = event.client_id
        if client == SERVICE_IDENTITY or "=" in client or not events.presence_allowed(client):
            return
        self._offer(_Presence(event, self._clock()))

    def _offer(self, item: object) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("event queue full (%d waiting): %d event message(s) dropped so far",
                            self._queue.maxsize, self.dropped)

    # The publishing thread -----------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="events", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        while True:
            try:
                self._queue.put(_STOP, timeout=1)
                break
            except queue.Full:
                if not self._thread.is_alive():
                    return
        self._thread.join(10)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            try:
                messages = self._messages(item)
            except Exception:  # a defect must not end the publisher
                log.exception("building an event message failed")
                continue
            if messages:
                self._publish([(topic, json.dumps(payload, separators=(",", ":")).encode())
                               for topic, payload in messages])
                self.published += len(messages)

    def _messages(self, item: object) -> list[tuple[str, dict[str, Any]]]:
        if isinstance(item, _Presence):
            return [self._presence_message(item)]
        assert isinstance(item, list)
        now = self._clock()
        return [message for change in item for message in self._change_messages(change, now)]

    def _presence_message(self, item: _Presence) -> tuple[str, dict[str, Any]]:
        event, client = item.event, item.event.client_id
        version = self._versions.get(client, 0) + (1 if event.connected else 0)
        self._versions[client] = version
        if event.connected:
            session = self._sessions[client] = str(uuid.uuid4())
        else:
            session = self._sessions.pop(client, "")
        principal = self._principal(event.username) if event.connected else None
        return events.presence_event(item.at, client_id=client, connected=event.connected, session=session,
                                     principal=principal, address=event.address or None, version=version,
                                     reason=event.reason)

    def _principal(self, username: str) -> str | None:
        """AWS: "For TLS mutual authentication certificates, this is the certificate ID"."""
        found = _SERIAL.search(username)
        if found is None:
            return None
        serial = found[1]
        known = self._certificate_ids.get(serial)
        if known is not None:
            return known
        with self._db.reading() as s:
            certificate_id: str | None = s.scalar(select(DeviceCertificate.certificate_id).where(
                DeviceCertificate.serial == serial).limit(1)) or s.scalar(
                select(EventReader.certificate_id).where(EventReader.serial == serial).limit(1))
        if certificate_id is not None:
            if len(self._certificate_ids) >= _CERTIFICATE_IDS_KEPT:
                self._certificate_ids.clear()
            self._certificate_ids[serial] = certificate_id
        return certificate_id

    def _change_messages(self, change: Change, now: float) -> list[tuple[str, dict[str, Any]]]:
        facts = change.facts
        if change.event_type == "THING":
            return [events.thing_event(change.operation, now, account=self._account,
                                       thing_id=facts["thingId"] or "", thing_name=facts["thingName"],
                                       version=facts["versionNumber"], thing_type=facts["thingTypeName"],
                                       attributes=facts["attributes"])]
        if change.event_type == "THING_GROUP":
            return [events.thing_group_event(change.operation, now, account=self._account,
                                             group_id=facts["thingGroupId"],
                                             group_name=facts["thingGroupName"],
                                             version=facts["versionNumber"], description=facts["description"],
                                             attributes=facts["attributes"], dynamic=facts["dynamic"])]
        if change.event_type == "THING_GROUP_MEMBERSHIP":
            group, thing = facts["thingGroupName"], facts["thingName"]
            group_id, thing_id = self._ids(group, thing)
            return [events.membership_event(change.operation, now, account=self._account,
                                            group_arn=self._arn(f"thinggroup/{group}"), group_id=group_id,
                                            group_name=group, thing_arn=self._arn(f"thing/{thing}"),
                                            thing_id=thing_id, thing_name=thing)]
        if change.event_type == "JOB":
            job = events.JobFacts(
                job_id=facts["jobId"], force_canceled=bool(facts["forceCanceled"]),
                target_selection=facts["targetSelection"], targets=tuple(facts["targets"]),
                description=facts["description"], comment=facts["comment"], created_at=facts["createdAt"],
                last_updated_at=facts["lastUpdatedAt"], completed_at=facts["completedAt"])
            counts = self._counts(job.job_id) if change.operation in ("completed", "canceled") else None
            return [events.job_event(change.operation, now, job, counts)]
        if change.event_type == "JOB_EXECUTION":
            return [events.execution_event(change.operation, now, job_id=facts["jobId"],
                                           thing_arn=self._arn(f"thing/{facts['thingName']}"),
                                           status=facts["status"], status_details=facts["statusDetails"])]
        return []

    def _ids(self, group: str, thing: str) -> tuple[str, str]:
        """A membership's group and thing ids (empty once deleted)."""
        with self._db.reading() as s:
            group_id = s.scalar(select(ThingGroup.group_id).where(ThingGroup.name == group))
            thing_id = s.scalar(select(Thing.thing_id).where(Thing.name == thing))
        return group_id or "", thing_id or ""

    def _counts(self, job_id: str) -> dict[str, int]:
        with self._db.reading() as s:
            rows = s.execute(select(JobExecution.status, func.count()).where(JobExecution.job_id == job_id)
                             .group_by(JobExecution.status)).tuples().all()
        return {status: int(count) for status, count in rows}
