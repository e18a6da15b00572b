"""The device registry.

A device's identity is its X.509 certificate, issued by the fleet CA. The broker learns
who may touch which topics from `access_entries()`: one entry per ACTIVE certificate
attached to a thing, so a certificate that is unattached, detached, inactive or
revoked reaches nothing (threat N4), and `revoked_serials()` feeds the broker's CRL.
Any change to either calls `on_access_change` so the gateway can regenerate and reload.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import delete, func, select

from overair.core.errors import PeerInputError
from overair.core.topics import THING_NAME_RE
from overair.server.api.contract import already_exists, invalid, not_found
from overair.server.clock import Clock
from overair.server.pki import Issued, certificate_id, issue_client_cert
from overair.server.settings import Settings
from overair.server.storage.db import Database
from overair.server.storage.schema import (
    DeviceCertificate,
    Thing,
    ThingGroup,
    ThingGroupMember,
    ThingPrincipal,
)

CERT_STATUSES = ("ACTIVE", "INACTIVE", "REVOKED", "PENDING_TRANSFER", "PENDING_ACTIVATION")


@dataclass(frozen=True, slots=True)
class AccessEntry:
    username: str  # the certificate's CN, which Mosquitto uses as the username
    thing_name: str


@dataclass(frozen=True, slots=True)
class NewCertificate:
    certificate_id: str
    arn: str
    pem: str
    private_key_pem: str
    public_key_pem: str


def check_thing_name(name: str) -> None:
    if not THING_NAME_RE.match(name):
        raise invalid(f"thing name {name!r} must be 1-128 characters of [a-zA-Z0-9:_-]")


class Registry:
    def __init__(self, db: Database, settings: Settings, fleet_ca: Issued, clock: Clock,
                 on_access_change: Callable[[], None] = lambda: None) -> None:
        self._db = db
        self._settings = settings
        self._ca = fleet_ca
        self._clock = clock
        self.on_access_change = on_access_change
        # (thing, group ARN) after a thing joined a group: CONTINUOUS jobs reach it.
        self.on_group_join: Callable[[str, str], None] = lambda _thing, _group: None

    # Things ---------------------------------------------------------------------
    def thing_arn(self, name: str) -> str:
        return self._settings.arn("iot", f"thing/{name}")

    def group_arn(self, name: str) -> str:
        return self._settings.arn("iot", f"thinggroup/{name}")

    def create_thing(self, name: str, attributes: dict[str, str] | None = None,
                     thing_type: str | None = None) -> Thing:
        check_thing_name(name)
        with self._db.session() as s:
            existing = s.get(Thing, name)
            if existing is not None:
                # AWS: creating an identical thing again is idempotent.
                if (attributes or {}) == existing.attributes and thing_type == existing.thing_type_name:
                    return existing
                raise already_exists(f"thing {name}")
            thing = Thing(name=name, thing_id=str(uuid.uuid4()), arn=self.thing_arn(name),
                          thing_type_name=thing_type, attributes=dict(attributes or {}), version=1,
                          created_at=self._clock())
            s.add(thing)
            return thing

    def describe_thing(self, name: str) -> Thing:
        with self._db.reading() as s:
            thing = s.get(Thing, name)
            if thing is None:
                raise not_found(f"thing {name}")
            return thing

    def update_thing(self, name: str, attributes: dict[str, str] | None, merge: bool,
                     expected_version: int | None) -> None:
        with self._db.session() as s:
            thing = s.get(Thing, name)
            if thing is None:
                raise not_found(f"thing {name}")
            if expected_version is not None and expected_version != thing.version:
                raise PeerInputError(f"thing {name} is at version {thing.version}",
                                     code="VersionConflictException")
            if attributes is not None:
                new = dict(thing.attributes) if merge else {}
                for key, value in attributes.items():
                    if value == "" and merge:
                        new.pop(key, None)
                    else:
                        new[key] = value
                thing.attributes = new
            thing.version += 1

    def list_things(self, prefix: str | None = None) -> list[Thing]:
        with self._db.reading() as s:
            query = select(Thing).order_by(Thing.name)
            if prefix:
                query = query.where(Thing.name.startswith(prefix, autoescape=True))
            return list(s.scalars(query))

    def delete_thing(self, name: str, expected_version: int | None = None) -> None:
        with self._db.session() as s:
            thing = s.get(Thing, name)
            if thing is None:
                return  # AWS: deleting a thing that does not exist succeeds
            if expected_version is not None and expected_version != thing.version:
                raise PeerInputError(f"thing {name} is at version {thing.version}",
                                     code="VersionConflictException")
            attached = s.scalar(select(func.count()).select_from(ThingPrincipal)
                                .where(ThingPrincipal.thing_name == name))
            if attached:
                raise invalid(f"thing {name} still has {attached} attached principal(s); "
                              "detach them first")
            s.execute(delete(ThingGroupMember).where(ThingGroupMember.thing_name == name))
            s.delete(thing)

    # Groups ---------------------------------------------------------------------
    def create_group(self, name: str, description: str = "") -> ThingGroup:
        check_thing_name(name)
        with self._db.session() as s:
            existing = s.get(ThingGroup, name)
            if existing is not None:
                if existing.description == description:
                    return existing
                raise already_exists(f"thing group {name}")
            group = ThingGroup(name=name, group_id=str(uuid.uuid4()), arn=self.group_arn(name),
                               description=description, attributes={}, version=1,
                               created_at=self._clock())
            s.add(group)
            return group

    def describe_group(self, name: str) -> ThingGroup:
        with self._db.reading() as s:
            group = s.get(ThingGroup, name)
            if group is None:
                raise not_found(f"thing group {name}")
            return group

    def list_groups(self, prefix: str | None = None) -> list[ThingGroup]:
        with self._db.reading() as s:
            query = select(ThingGroup).order_by(ThingGroup.name)
            if prefix:
                query = query.where(ThingGroup.name.startswith(prefix, autoescape=True))
            return list(s.scalars(query))

    def delete_group(self, name: str) -> None:
        with self._db.session() as s:
            group = s.get(ThingGroup, name)
            if group is not None:
                s.execute(delete(ThingGroupMember).where(ThingGroupMember.group_name == name))
                s.delete(group)

    def add_to_group(self, group: str, thing: str) -> None:
        with self._db.session() as s:
            if s.get(ThingGroup, group) is None:
                raise not_found(f"thing group {group}")
            if s.get(Thing, thing) is None:
                raise not_found(f"thing {thing}")
            joined = s.get(ThingGroupMember, (group, thing)) is None
            if joined:
                s.add(ThingGroupMember(group_name=group, thing_name=thing, added_at=self._clock()))
        if joined:
            self.on_group_join(thing, self.group_arn(group))

    def remove_from_group(self, group: str, thing: str) -> None:
        with self._db.session() as s:
            member = s.get(ThingGroupMember, (group, thing))
            if member is not None:
                s.delete(member)

    def things_in_group(self, group: str) -> list[str]:
        with self._db.reading() as s:
            if s.get(ThingGroup, group) is None:
                raise not_found(f"thing group {group}")
            return list(s.scalars(select(ThingGroupMember.thing_name)
                                  .where(ThingGroupMember.group_name == group)
                                  .order_by(ThingGroupMember.thing_name)))

    def resolve_targets(self, target_arns: list[str]) -> list[str]:
        """Thing and thing-group ARNs -> distinct thing names, sorted."""
        things: set[str] = set()
        for arn in target_arns:
            kind, _, name = arn.rpartition(":")[2].partition("/")
            if kind == "thing":
                self.describe_thing(name)
                things.add(name)
            elif kind == "thinggroup":
                things.update(self.things_in_group(name))
            else:
                raise invalid(f"target {arn!r} is neither a thing nor a thing group ARN")
        return sorted(things)

    # Certificates ---------------------------------------------------------------
    def cert_arn(self, cert_id: str) -> str:
        return self._settings.arn("iot", f"cert/{cert_id}")

    def create_keys_and_certificate(self, set_as_active: bool,
                                    common_name: str | None = None) -> NewCertificate:
        """Issue a key pair and a fleet-CA certificate. The key is returned once and
        never stored. CN is the thing name when the caller names one (the overair CLI
        does), else a unique id; either way access comes from the attachment."""
        if common_name is not None:
            check_thing_name(common_name)
        cn = common_name or f"device-{uuid.uuid4().hex}"
        now = dt.datetime.fromtimestamp(self._clock(), dt.UTC)
        issued = issue_client_cert(self._ca, cn, now)
        cert_id = certificate_id(issued.cert)
        with self._db.session() as s:
            s.add(DeviceCertificate(certificate_id=cert_id, arn=self.cert_arn(cert_id),
                                    pem=issued.cert_pem.decode(),
                                    serial=format(issued.cert.serial_number, "x"),
                                    status="ACTIVE" if set_as_active else "INACTIVE",
                                    created_at=self._clock(), last_modified_at=self._clock()))
        public_pem = issued.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        # No on_access_change: a certificate grants nothing until it is attached.
        return NewCertificate(cert_id, self.cert_arn(cert_id), issued.cert_pem.decode(),
                              issued.key_pem.decode(), public_pem)

    def describe_certificate(self, cert_id: str) -> DeviceCertificate:
        with self._db.reading() as s:
            cert = s.get(DeviceCertificate, cert_id)
            if cert is None:
                raise not_found(f"certificate {cert_id}")
            return cert

    def list_certificates(self) -> list[DeviceCertificate]:
        with self._db.reading() as s:
            return list(s.scalars(select(DeviceCertificate).order_by(DeviceCertificate.created_at)))

    def update_certificate(self, cert_id: str, status: str) -> None:
        if status not in CERT_STATUSES:
            raise invalid(f"certificate status must be one of {CERT_STATUSES}")
        with self._db.session() as s:
            cert = s.get(DeviceCertificate, cert_id)
            if cert is None:
                raise not_found(f"certificate {cert_id}")
            if cert.status == "REVOKED" and status != "REVOKED":
                raise invalid("a revoked certificate cannot be reactivated")
            cert.status = status
            cert.last_modified_at = self._clock()
        self.on_access_change()

    def attach_principal(self, thing: str, principal: str) -> None:
        cert_id = self._cert_id_of(principal)
        with self._db.session() as s:
            if s.get(Thing, thing) is None:
                raise not_found(f"thing {thing}")
            if s.get(DeviceCertificate, cert_id) is None:
                raise not_found(f"certificate {cert_id}")
            if s.get(ThingPrincipal, (thing, principal)) is None:
                s.add(ThingPrincipal(thing_name=thing, principal=principal))
        self.on_access_change()

    def detach_principal(self, thing: str, principal: str) -> None:
        with self._db.session() as s:
            link = s.get(ThingPrincipal, (thing, principal))
            if link is None:
                raise not_found(f"principal {principal} on thing {thing}")
            s.delete(link)
        self.on_access_change()

    def thing_principals(self, thing: str) -> list[str]:
        with self._db.reading() as s:
            if s.get(Thing, thing) is None:
                raise not_found(f"thing {thing}")
            return list(s.scalars(select(ThingPrincipal.principal)
                                  .where(ThingPrincipal.thing_name == thing)))

    def _cert_id_of(self, principal: str) -> str:
        prefix = self._settings.arn("iot", "cert/")
        if not principal.startswith(prefix):
            raise invalid(f"principal {principal!r} is not a certificate ARN of this account")
        return principal.removeprefix(prefix)

    # What the broker enforces ------------------------------------------------------
    def access_entries(self) -> list[AccessEntry]:
        with self._db.reading() as s:
            rows = s.execute(select(DeviceCertificate.pem, ThingPrincipal.thing_name)
                             .join(ThingPrincipal, ThingPrincipal.principal == DeviceCertificate.arn)
                             .where(DeviceCertificate.status == "ACTIVE")).all()
        entries = []
        for pem, thing in rows:
            cn = _common_name(pem)
            if cn is not None:
                entries.append(AccessEntry(cn, thing))
        return sorted(set(entries), key=lambda e: (e.username, e.thing_name))

    def things_of_certificate(self, cert: x509.Certificate) -> list[str]:
        """The things an ACTIVE device certificate is attached to (none otherwise)."""
        cert_id = certificate_id(cert)
        with self._db.reading() as s:
            row = s.get(DeviceCertificate, cert_id)
            if row is None or row.status != "ACTIVE":
                return []
            return list(s.scalars(select(ThingPrincipal.thing_name)
                                  .where(ThingPrincipal.principal == self.cert_arn(cert_id))))

    def withdrawn_common_names(self) -> set[str]:
        """The CNs of device certificates that are not ACTIVE (revoked or inactive)."""
        with self._db.reading() as s:
            pems = s.scalars(select(DeviceCertificate.pem).where(DeviceCertificate.status != "ACTIVE")).all()
        return {cn for cn in map(_common_name, pems) if cn is not None}

    def revoked_serials(self) -> list[int]:
        """Every device certificate that must not connect: not ACTIVE."""
        with self._db.reading() as s:
            serials = s.scalars(select(DeviceCertificate.serial)
                                .where(DeviceCertificate.status != "ACTIVE"))
            return [int(serial, 16) for serial in serials]


def _common_name(pem: str) -> str | None:
    cert = x509.load_pem_x509_certificate(pem.encode())
    values = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(values[0].value) if values else None


def thing_view(thing: Thing) -> dict[str, Any]:
    return {"thingName": thing.name, "thingId": thing.thing_id, "thingArn": thing.arn,
            "attributes": dict(thing.attributes), "version": thing.version,
            **({"thingTypeName": thing.thing_type_name} if thing.thing_type_name else {})}
