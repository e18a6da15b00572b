"""Event readers: who may read event messages (`$aws/events/#`).

AWS grants event topics through IoT policies ("Enable events for AWS IoT": a policy
allowing iot:Subscribe and iot:Receive on `$aws/events/*`). overair has no IoT policies:
a device's access is its thing attachment, `$aws/things/<thing>/#`, and nothing under
`$aws/events/` (one device must never learn of another's connections or jobs: threat
N4). An event reader is an identity of its own: a fleet certificate attached to no
thing, made by an operator (CreateEventReader, `overair events reader create`), whose
broker rules are `read $aws/events/#` and nothing else (no write, no thing topics), with
one reserved client id (`client_id_of`). Revoking it removes the rule and puts its serial
on the CRL; the broker applies both before the call returns (gateway/access_sync.py).
The private key is returned once and never stored.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import select

from overair.core.events import EVENTS_TOPIC_FILTER
from overair.server import pki
from overair.server.api.contract import ApiError, invalid, not_found
from overair.server.clock import Clock
from overair.server.gateway.broker import AclRule
from overair.server.storage.db import Database
from overair.server.storage.schema import EventReader

NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
# The certificate's common name: a fixed prefix no thing certificate carries.
CN_PREFIX = "overair-events."


def client_id_of(name: str) -> str:
    """The reader's MQTT client id. It starts with a character no thing name has, so it
    never names a thing (gateway/presence.py `thing_of_client`) and cannot collide with a
    device's client id; the access plugin reserves it for this reader alone."""
    return f".events-reader.{name}"


@dataclass(frozen=True, slots=True)
class NewReader:
    name: str
    certificate_id: str
    certificate_pem: str
    private_key_pem: str
    client_id: str
    root_ca_pem: str


class EventReaders:
    def __init__(self, db: Database, fleet_ca: pki.Issued, clock: Clock,
                 access_changed: Callable[[], None]) -> None:
        """`access_changed`: regenerate the broker's rules and return once it enforces them."""
        self._db = db
        self._fleet_ca = fleet_ca
        self._clock = clock
        self._access_changed = access_changed

    def create(self, name: str) -> NewReader:
        if not NAME.fullmatch(name):
            raise invalid("an event reader's name is 1 to 64 letters, digits, '_' or '-'")
        now = self._clock()
        issued = pki.issue_client_cert(self._fleet_ca, CN_PREFIX + name,
                                       dt.datetime.fromtimestamp(now, dt.UTC))
        identity = pki.broker_username(issued.cert.subject)
        assert identity is not None  # overair's own subjects always have one
        cert_id = pki.certificate_id(issued.cert)
        with self._db.session() as s:
            if s.get(EventReader, name) is not None:
                raise ApiError("ResourceAlreadyExistsException", f"event reader {name} already exists", 409)
            s.add(EventReader(name=name, certificate_id=cert_id,
                              serial=format(issued.cert.serial_number, "x"), identity=identity,
                              status="ACTIVE", created_at=now))
        self._access_changed()
        return NewReader(name, cert_id, issued.cert.public_bytes(Encoding.PEM).decode(),
                         pki.key_pem(issued.key).decode(), client_id_of(name),
                         self._fleet_ca.cert.public_bytes(Encoding.PEM).decode())

    def revoke(self, name: str) -> None:
        with self._db.session() as s:
            row = s.get(EventReader, name, with_for_update=True)
            if row is None:
                raise not_found(f"event reader {name}")
            if row.status == "REVOKED":
                return
            row.status, row.revoked_at = "REVOKED", self._clock()
        self._access_changed()

    def listed(self) -> list[EventReader]:
        with self._db.reading() as s:
            return list(s.scalars(select(EventReader).order_by(EventReader.name)))

    def rules(self) -> tuple[dict[str, list[AclRule]], dict[str, list[str]]]:
        """The broker rules of every ACTIVE reader, and the client id reserved for each."""
        rules: dict[str, list[AclRule]] = {}
        client_ids: dict[str, list[str]] = {}
        for row in self.listed():
            if row.status == "ACTIVE":
                rules[row.identity] = [AclRule("read", EVENTS_TOPIC_FILTER)]
                client_ids[row.identity] = [client_id_of(row.name)]
        return rules, client_ids

    def revoked_serials(self) -> list[int]:
        return [int(row.serial, 16) for row in self.listed() if row.status != "ACTIVE"]
