"""The device registry.

A device's identity is its X.509 certificate, issued by the fleet CA. The broker knows a
client by its certificate's subject (server/pki.py: unique per certificate) and learns
what each may touch from `broker_access()`: an ACTIVE certificate reaches the topics of
the things it is attached to and nothing else, so a certificate that is unattached,
detached, inactive or revoked reaches nothing (threat N4), and `revoked_serials()`
feeds the broker's CRL. Any change to either calls `on_access_change` so the gateway
can regenerate and reload.

Certificates from before unique subjects (CN and O only) can share a subject when one
thing name was issued twice. The broker cannot tell such certificates apart, so their
shared identity is granted only the things every ACTIVE one of them is attached to (the
intersection): a twin never inherits what another certificate was given because the
names match. `BrokerAccess.shared` names these identities so the operator can revoke
the stale twin (docs/security.md, "Devices (N4)").
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import delete, func, select

from overair.core.errors import PeerInputError
from overair.core.topics import THING_NAME_RE
from overair.server.api.contract import ApiError, already_exists, invalid, not_found
from overair.server.clock import Clock
from overair.server.iam.arns import Arns
from overair.server.pki import Issued, broker_username, certificate_id, issue_client_cert
from overair.server.settings import Settings
from overair.server.storage.db import Database
from overair.server.storage.keyset import page_query, split
from overair.server.storage.schema import (
    DeviceCertificate,
    RetiredCertificate,
    Thing,
    ThingGroup,
    ThingGroupMember,
    ThingPrincipal,
)

CERT_STATUSES = ("ACTIVE", "INACTIVE", "REVOKED", "PENDING_TRANSFER", "PENDING_ACTIVATION")


@dataclass(frozen=True, slots=True)
class BrokerAccess:
    """What the broker must enforce, by broker identity (pki.broker_username)."""

    grants: dict[str, frozenset[str]]  # identity -> things; only identities granted something
    subjects: dict[str, x509.Name]  # every identity above or in `withdrawn` -> its subject
    withdrawn: frozenset[str]  # identities of certificates that are not ACTIVE
    shared: frozenset[str]  # identities presented by more than one ACTIVE certificate
    unnamed: tuple[str, ...]  # certificate ids whose subject has no broker identity


@dataclass(frozen=True, slots=True)
class IdentityAccess:
    """The access of some broker identities (Registry.identity_access)."""

    things: dict[str, frozenset[str]]  # identity -> the things it may use (empty: none)
    shared: frozenset[str]  # identities presented by more than one ACTIVE certificate
    withdrawn: bool = False  # one of the certificates is not ACTIVE (the CRL changes)


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
                 on_access_change: Callable[[Sequence[str]], None] = lambda _principals: None) -> None:
        self._db = db
        self._settings = settings
        self._ca = fleet_ca
        self._clock = clock
        self.on_access_change = on_access_change
        # certificate id -> (broker identity or None, subject): a stored PEM never changes.
        self._identities: dict[str, tuple[str | None, x509.Name]] = {}
        self._by_identity: dict[str, set[str]] = {}  # broker identity -> certificate ids
        self._identity_lock = threading.Lock()
        # (thing, group ARN) after a thing joined a group: CONTINUOUS jobs reach it.
        self.on_group_join: Callable[[str, str], None] = lambda _thing, _group: None
        # Things whose registry data (attributes, groups) changed: dynamic thing groups
        # re-evaluate them (server/fleet/dynamic.py).
        self.on_things_changed: Callable[[list[str]], None] = lambda _things: None

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
        self.on_things_changed([name])
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
        self.on_things_changed([name])

    def list_things(self, prefix: str | None = None) -> list[Thing]:
        with self._db.reading() as s:
            query = select(Thing).order_by(Thing.name)
            if prefix:
                query = query.where(Thing.name.startswith(prefix, autoescape=True))
            return list(s.scalars(query))

    def page_things(self, after: str | None, size: int, keep: Callable[[Thing], bool] = lambda _t: True,
                    thing_type: str | None = None) -> tuple[list[Thing], bool]:
        """Up to `size` things named after `after`, in name order, that `keep` accepts
        (ListThings' attribute filter); and whether more follow. Read in key order over
        the primary key, `size + 1` rows at a time, so a page never reads the rows before
        it (keyset pagination; a selective filter reads further, never everything)."""
        found: list[Thing] = []
        with self._db.reading() as s:
            while True:
                query = page_query(select(Thing), [Thing.name], None if after is None else [after], size)
                if thing_type is not None:
                    query = query.where(Thing.thing_type_name == thing_type)
                rows = list(s.scalars(query))
                found.extend(row for row in rows if keep(row))
                if len(found) > size or len(rows) <= size:
                    return found[:size], len(found) > size
                after = rows[-1].name

    def page_group_members(self, group: str, after: str | None, size: int) -> tuple[list[str], bool]:
        with self._db.reading() as s:
            if s.get(ThingGroup, group) is None:
                raise not_found(f"thing group {group}")
            members = select(ThingGroupMember.thing_name).where(ThingGroupMember.group_name == group)
            query = page_query(members, [ThingGroupMember.thing_name],
                               None if after is None else [after], size)
            return split(list(s.scalars(query)), size)

    def page_thing_principals(self, thing: str, after: str | None, size: int) -> tuple[list[str], bool]:
        with self._db.reading() as s:
            if s.get(Thing, thing) is None:
                raise not_found(f"thing {thing}")
            query = page_query(select(ThingPrincipal.principal).where(ThingPrincipal.thing_name == thing),
                               [ThingPrincipal.principal], None if after is None else [after], size)
            return split(list(s.scalars(query)), size)

    def page_certificates(self, after: tuple[float, str] | None, size: int,
                          ascending: bool) -> tuple[list[DeviceCertificate], bool]:
        """By creation time (then id), oldest or newest first, after (time, id)."""
        query = page_query(select(DeviceCertificate),
                           [DeviceCertificate.created_at, DeviceCertificate.certificate_id], after, size,
                           descending=not ascending)
        with self._db.reading() as s:
            return split(list(s.scalars(query)), size)

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
                if existing.description == description and existing.query_string is None:
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

    def page_groups(self, prefix: str | None, after: str | None, size: int) -> tuple[list[ThingGroup], bool]:
        """ListThingGroups: groups named after `after`, by name over the primary key; a
        name prefix bounds the same index range."""
        query = select(ThingGroup)
        if prefix:
            query = query.where(ThingGroup.name.startswith(prefix, autoescape=True))
        with self._db.reading() as s:
            return split(list(s.scalars(page_query(query, [ThingGroup.name],
                                                   None if after is None else [after], size))), size)

    def delete_group(self, name: str) -> None:
        with self._db.session() as s:
            group = s.get(ThingGroup, name)
            if group is not None:
                _refuse_dynamic(group, "DeleteDynamicThingGroup deletes it")
                s.execute(delete(ThingGroupMember).where(ThingGroupMember.group_name == name))
                s.delete(group)

    def add_to_group(self, group: str, thing: str) -> None:
        with self._db.session() as s:
            row = s.get(ThingGroup, group)
            if row is None:
                raise not_found(f"thing group {group}")
            _refuse_dynamic(row, "its members are the things its query matches")
            if s.get(Thing, thing) is None:
                raise not_found(f"thing {thing}")
            joined = s.get(ThingGroupMember, (group, thing)) is None
            if joined:
                s.add(ThingGroupMember(group_name=group, thing_name=thing, added_at=self._clock()))
        if joined:
            self.on_group_join(thing, self.group_arn(group))
            self.on_things_changed([thing])

    def remove_from_group(self, group: str, thing: str) -> None:
        with self._db.session() as s:
            row = s.get(ThingGroup, group)
            if row is not None:
                _refuse_dynamic(row, "its members are the things its query matches")
            member = s.get(ThingGroupMember, (group, thing))
            if member is not None:
                s.delete(member)
        self.on_things_changed([thing])

    def things_in_group(self, group: str) -> list[str]:
        with self._db.reading() as s:
            if s.get(ThingGroup, group) is None:
                raise not_found(f"thing group {group}")
            return list(s.scalars(select(ThingGroupMember.thing_name)
                                  .where(ThingGroupMember.group_name == group)
                                  .order_by(ThingGroupMember.thing_name)))

    def page_groups_of_thing(self, thing: str, after: str | None,
                             size: int) -> tuple[list[ThingGroup], bool]:
        """ListThingGroupsForThing: the thing's groups by name after `after`, over the
        (thing, group) index."""
        with self._db.reading() as s:
            if s.get(Thing, thing) is None:
                raise not_found(f"thing {thing}")
            query = (select(ThingGroup)
                     .join(ThingGroupMember, ThingGroupMember.group_name == ThingGroup.name)
                     .where(ThingGroupMember.thing_name == thing))
            return split(list(s.scalars(page_query(query, [ThingGroupMember.group_name],
                                                   None if after is None else [after], size))), size)

    def resolve_targets(self, target_arns: list[str]) -> list[str]:
        """Thing and thing-group ARNs -> distinct thing names, sorted. Each target is
        parsed strictly (core/arn.py): exactly the thing or group IAM checked (O1)."""
        arns = Arns.of(self._settings)
        things: set[str] = set()
        for text in target_arns:
            target = arns.require("iot", "targets", text, "iot", ("thing", "thinggroup"))
            if target.resource_type == "thing":
                self.describe_thing(target.resource_name)
                things.add(target.resource_name)
            else:
                things.update(self.things_in_group(target.resource_name))
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
        self.on_access_change([self.cert_arn(cert_id)])

    def delete_certificate(self, cert_id: str) -> None:
        """DeleteCertificate. AWS: "A certificate cannot be deleted if it has a policy
        or IoT thing attached to it or if its status is set to ACTIVE" (iot API
        reference); CertificateStateException and DeleteConflictException. The serial
        stays in the broker's CRL (RetiredCertificate), so a deleted certificate can
        never connect again, whatever it was before."""
        with self._db.session() as s:
            cert = s.get(DeviceCertificate, cert_id, with_for_update=True)
            if cert is None:
                raise not_found(f"certificate {cert_id}")
            if cert.status == "ACTIVE":
                raise ApiError("CertificateStateException",
                               f"certificate {cert_id} is ACTIVE; make it INACTIVE first", 406)
            things = list(s.scalars(select(ThingPrincipal.thing_name)
                                    .where(ThingPrincipal.principal == cert.arn)))
            if things:
                raise ApiError("DeleteConflictException",
                               f"certificate {cert_id} is attached to {', '.join(sorted(things))}; "
                               "detach it first", 409)
            if s.get(RetiredCertificate, cert.serial) is None:
                s.add(RetiredCertificate(serial=cert.serial, certificate_id=cert_id,
                                         retired_at=self._clock()))
            s.delete(cert)
        with self._identity_lock:
            identity = self._identities.pop(cert_id, (None, None))[0]
            if identity is not None:
                self._by_identity.get(identity, set()).discard(cert_id)
        # The CRL gains its serial: the broker's files are regenerated (a rare change).
        self.on_access_change([])

    def attach_principal(self, thing: str, principal: str) -> None:
        cert_id = self._cert_id_of(principal)
        with self._db.session() as s:
            if s.get(Thing, thing) is None:
                raise not_found(f"thing {thing}")
            if s.get(DeviceCertificate, cert_id) is None:
                raise not_found(f"certificate {cert_id}")
            if s.get(ThingPrincipal, (thing, principal)) is None:
                s.add(ThingPrincipal(thing_name=thing, principal=principal))
        self.on_access_change([principal])

    def detach_principal(self, thing: str, principal: str) -> None:
        with self._db.session() as s:
            link = s.get(ThingPrincipal, (thing, principal))
            if link is None:
                raise not_found(f"principal {principal} on thing {thing}")
            s.delete(link)
        self.on_access_change([principal])

    def thing_principals(self, thing: str) -> list[str]:
        with self._db.reading() as s:
            if s.get(Thing, thing) is None:
                raise not_found(f"thing {thing}")
            return list(s.scalars(select(ThingPrincipal.principal)
                                  .where(ThingPrincipal.thing_name == thing)))

    def _cert_id_of(self, principal: str) -> str:
        """The certificate id of a certificate ARN of this deployment (core/arn.py)."""
        return Arns.of(self._settings).require("iot", "principal", principal, "iot", ("cert",)).resource_name

    # What the broker enforces ------------------------------------------------------
    def broker_access(self) -> BrokerAccess:
        with self._db.reading() as s:
            certs = s.execute(select(DeviceCertificate.certificate_id, DeviceCertificate.arn,
                                     DeviceCertificate.status)).all()
            self._learn_identities(s, [cert_id for cert_id, _, _ in certs])
            attached: dict[str, set[str]] = {}
            for principal, thing in s.execute(select(ThingPrincipal.principal, ThingPrincipal.thing_name)):
                attached.setdefault(principal, set()).add(thing)
        # identity -> the things of each ACTIVE certificate presenting it
        presented: dict[str, list[frozenset[str]]] = {}
        subjects: dict[str, x509.Name] = {}
        withdrawn: set[str] = set()
        unnamed: list[str] = []
        for cert_id, arn, status in certs:
            identity, subject = self._identities[cert_id]
            if identity is None:
                unnamed.append(cert_id)
                continue
            subjects[identity] = subject
            if status == "ACTIVE":
                presented.setdefault(identity, []).append(frozenset(attached.get(arn, ())))
            else:
                withdrawn.add(identity)
        grants = {}
        for identity, thing_sets in presented.items():
            things = frozenset.intersection(*thing_sets)
            if things:
                grants[identity] = things
        keep = grants.keys() | withdrawn
        return BrokerAccess(grants=grants, subjects={i: n for i, n in subjects.items() if i in keep},
                            withdrawn=frozenset(withdrawn),
                            shared=frozenset(i for i, sets in presented.items() if len(sets) > 1),
                            unnamed=tuple(sorted(unnamed)))

    def _learn_identities(self, s: Any, cert_ids: Sequence[str]) -> None:
        """Fill the identity cache for these certificates (a stored PEM never changes)."""
        new = [cert_id for cert_id in cert_ids if cert_id not in self._identities]
        for start in range(0, len(new), 500):
            batch = new[start:start + 500]
            for cert_id, pem in s.execute(select(DeviceCertificate.certificate_id, DeviceCertificate.pem)
                                          .where(DeviceCertificate.certificate_id.in_(batch))):
                subject = x509.load_pem_x509_certificate(pem.encode()).subject
                identity = broker_username(subject)
                with self._identity_lock:
                    self._identities[cert_id] = (identity, subject)
                    if identity is not None:
                        self._by_identity.setdefault(identity, set()).add(cert_id)

    def identity_access(self, principals: Sequence[str]) -> IdentityAccess:
        """What the broker must now enforce for the identities these certificates present,
        read for them alone (a cost independent of the fleet's size): each identity's
        things (the things every ACTIVE certificate presenting it is attached to; none:
        it loses all access). Same rule as `broker_access`."""
        cert_ids = [self._cert_id_of(p) for p in principals]
        with self._db.reading() as s:
            self._learn_identities(s, cert_ids)
            with self._identity_lock:
                identities = {self._identities[c][0] for c in cert_ids if c in self._identities} - {None}
                related = {c for identity in identities for c in self._by_identity.get(identity or "", ())}
            rows = s.execute(select(DeviceCertificate.certificate_id, DeviceCertificate.arn,
                                    DeviceCertificate.status)
                             .where(DeviceCertificate.certificate_id.in_(sorted(related)))).all()
            active_arns = [arn for _, arn, status in rows if status == "ACTIVE"]
            attached: dict[str, set[str]] = {}
            for principal, thing in s.execute(select(ThingPrincipal.principal, ThingPrincipal.thing_name)
                                              .where(ThingPrincipal.principal.in_(active_arns))):
                attached.setdefault(principal, set()).add(thing)
        presented: dict[str, list[frozenset[str]]] = {identity: [] for identity in identities if identity}
        for cert_id, arn, status in rows:
            identity = self._identities[cert_id][0]
            if identity is not None and status == "ACTIVE":
                presented.setdefault(identity, []).append(frozenset(attached.get(arn, ())))
        things = {identity: frozenset.intersection(*sets) if sets else frozenset()
                  for identity, sets in presented.items()}
        return IdentityAccess(things=things,
                              shared=frozenset(i for i, sets in presented.items() if len(sets) > 1),
                              withdrawn=any(status != "ACTIVE" for _, _, status in rows))

    def things_of_certificate(self, cert: x509.Certificate) -> list[str]:
        """The things an ACTIVE device certificate is attached to (none otherwise)."""
        cert_id = certificate_id(cert)
        with self._db.reading() as s:
            row = s.get(DeviceCertificate, cert_id)
            if row is None or row.status != "ACTIVE":
                return []
            return list(s.scalars(select(ThingPrincipal.thing_name)
                                  .where(ThingPrincipal.principal == self.cert_arn(cert_id))))

    def revoked_serials(self) -> list[int]:
        """Every device certificate that must not connect: not ACTIVE. Except one pending
        activation (fleet provisioning, server/provisioning/): it is granted nothing until
        RegisterThing activates it, and must then connect without waiting for a reload
        to re-read the CRL (access changes go to the broker in place)."""
        with self._db.reading() as s:
            serials = set(s.scalars(select(DeviceCertificate.serial).where(
                DeviceCertificate.status.not_in(("ACTIVE", "PENDING_ACTIVATION")))))
            serials.update(s.scalars(select(RetiredCertificate.serial)))
            return [int(serial, 16) for serial in sorted(serials)]


def _refuse_dynamic(group: ThingGroup, why: str) -> None:
    """AWS: "You use a different set of commands to create, update, and delete dynamic
    thing groups" (developer guide, "Dynamic thing groups")."""
    if group.query_string is not None:
        raise invalid(f"thing group {group.name} is a dynamic thing group: {why}")


def thing_view(thing: Thing) -> dict[str, Any]:
    return {"thingName": thing.name, "thingId": thing.thing_id, "thingArn": thing.arn,
            "attributes": dict(thing.attributes), "version": thing.version,
            **({"thingTypeName": thing.thing_type_name} if thing.thing_type_name else {})}
