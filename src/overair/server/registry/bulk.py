"""Registering devices from a provisioning template (core/provtemplate.py), for
RegisterThing (one) and bulk registration (server/registry/registration_tasks.py: many).

A batch of lines is registered in three steps:

1. Each line is planned and its CSR checked and signed by the fleet CA, outside any
   transaction (the CPU-bound part).
2. One transaction checks every line against the registry (thing already there, a
   group that does not exist or is dynamic, an unknown certificate) and writes only the
   lines that passed: thing, certificate, attachment, group memberships. A line that
   fails writes nothing. Should the transaction itself fail, each line is retried in a
   transaction of its own, so one line's problem never takes the others with it.
3. One broker access change covers every certificate the batch attached (the access
   plugin takes all of them in one control message; with an external broker, one
   regeneration), instead of one round trip per device.

Device certificates get the thing name as CN (as `overair thing create` does; the device
agent checks it) and overair's unique subject (server/pki.py), whatever the CSR's
subject says: the CSR contributes its public key only, because the broker identity must
be one overair minted (threat N4: identity is the attached certificate, never a name a
device chose).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import Select, insert, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from overair.core.errors import OverairError, UnavailableError
from overair.core.provtemplate import Plan, Template, TemplateError, plan
from overair.core.topics import THING_NAME_RE
from overair.server import pki
from overair.server.clock import Clock
from overair.server.registry.service import Registry
from overair.server.storage.db import Database
from overair.server.storage.schema import (
    DeviceCertificate,
    Thing,
    ThingGroup,
    ThingGroupMember,
    ThingPrincipal,
)

log = logging.getLogger("overair.registry")

# AWS's RegisterThing error for a resource it could not create (iot API reference).
REGISTRATION_FAILED = "ResourceRegistrationFailureException"
PENDING_ACTIVATION = "PENDING_ACTIVATION"
_MAX_CSR_CHARS = 8192
# A thing's attributes as CreateThing takes them (botocore's iot model: AttributeName,
# AttributeValue).
_ATTRIBUTE_NAME = re.compile(r"[a-zA-Z0-9_.,@/:#-]{1,128}")
_ATTRIBUTE_VALUE = re.compile(r"[a-zA-Z0-9_.,@/:#=\[\]-]{0,800}")
_CURVES = (ec.SECP256R1, ec.SECP384R1)  # AWS IoT's ECC device certificate curves


class LineError(OverairError):
    code = REGISTRATION_FAILED


class AccessNotConfirmed(UnavailableError):
    """The batch is registered but the broker did not confirm its access change (503,
    as for AttachThingPrincipal); `results` are the batch's lines."""

    def __init__(self, message: str, results: list[LineResult]) -> None:
        super().__init__(message, code="ServiceUnavailableException")
        self.results = results


@dataclass(slots=True)
class LineResult:
    reference_id: str
    resource_arns: dict[str, str] = field(default_factory=dict)
    certificate_pem: str | None = None
    error_code: str | None = None
    error_message: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_code is None

    def fail(self, exc: OverairError) -> None:
        self.error_code, self.error_message = exc.code, exc.message

    def reset(self) -> None:
        """Back to not registered and not failed (a batch that failed as a whole)."""
        self.resource_arns.clear()
        self.certificate_pem = self.error_code = self.error_message = None

    def report_line(self) -> dict[str, object]:
        """A line of the RESULTS or ERRORS report (docs/compatibility.md)."""
        if self.ok:
            return {"referenceId": self.reference_id,
                    "response": {"certificatePem": self.certificate_pem, "resourceArns": self.resource_arns}}
        return {"referenceId": self.reference_id, "errorCode": self.error_code,
                "errorMessage": self.error_message}


@dataclass(slots=True)
class _Prepared:
    result: LineResult
    plan: Plan
    cert: x509.Certificate | None = None
    cert_pem: str = ""


class BulkRegistrar:
    def __init__(self, db: Database, registry: Registry, fleet_ca: pki.Issued, clock: Clock) -> None:
        self._db = db
        self._registry = registry
        self._ca = fleet_ca
        self._clock = clock
        # The targets of CONTINUOUS jobs (JobService.continuous_targets): a join of any
        # other group needs no job work, so the batch asks once instead of per thing.
        self.followed: Callable[[], set[str]] = set

    def register(self, template: Template,
                 lines: Sequence[tuple[str, dict[str, str] | TemplateError]]) -> list[LineResult]:
        """Register a batch: (reference id, parameter values or why the line is unusable)."""
        prepared: list[_Prepared] = []
        results: list[LineResult] = []
        seen: set[str] = set()
        for reference, values in lines:
            result = LineResult(reference)
            results.append(result)
            try:
                if isinstance(values, TemplateError):
                    raise values
                item = self._prepare(template, result, values)
                if item.plan.thing_name in seen:
                    raise LineError(f"thing {item.plan.thing_name} is registered by an earlier line")
                seen.add(item.plan.thing_name)
                prepared.append(item)
            except OverairError as exc:
                result.fail(exc)
        self._commit(template, prepared)
        try:
            self._announce(template, [item for item in prepared if item.result.ok])
        except UnavailableError as exc:
            raise AccessNotConfirmed(exc.message, results) from exc
        return results

    # Step 1: plan, check and sign --------------------------------------------------------
    def _prepare(self, template: Template, result: LineResult, values: dict[str, str]) -> _Prepared:
        line = plan(template, values)
        for name in (line.thing_name, *line.groups):
            if not THING_NAME_RE.match(name):
                raise TemplateError(f"{name!r:.140} is not a valid thing or group name "
                                    "(1-128 characters of [a-zA-Z0-9:_-])")
        if line.thing_type is not None and not THING_NAME_RE.match(line.thing_type):
            raise TemplateError(f"thing type {line.thing_type!r:.140} is not a valid name")
        for name, value in line.attributes.items():
            if not _ATTRIBUTE_NAME.fullmatch(name) or not _ATTRIBUTE_VALUE.fullmatch(value):
                raise TemplateError(f"attribute {name!r:.140}={value!r:.140} is not valid: names are 1-128 "
                                    "characters of [a-zA-Z0-9_.,@/:#-], values up to 800 of "
                                    "[a-zA-Z0-9_.,@/:#=[]-]")
        item = _Prepared(result, line)
        if line.csr_pem is not None:
            now = dt.datetime.fromtimestamp(self._clock(), dt.UTC)
            item.cert = pki.sign_client_key(self._ca, line.thing_name, csr_key(line.csr_pem), now)
            item.cert_pem = item.cert.public_bytes(serialization.Encoding.PEM).decode()
        return item

    # Step 2: one transaction for the batch -----------------------------------------------
    def _commit(self, template: Template, prepared: list[_Prepared]) -> None:
        if not prepared:
            return
        try:
            with self._db.session() as s:
                self._check(s, prepared)
                self._insert(s, template, [item for item in prepared if item.result.ok])
            return
        except Exception as exc:  # any failure of the whole batch: its lines are retried one by one
            log.warning("a registration batch of %d lines failed as a whole (%s); registering its "
                        "lines one by one", len(prepared), exc)
        for item in prepared:
            item.result.reset()
            try:
                with self._db.session() as s:
                    self._check(s, [item])
                    if item.result.ok:
                        self._insert(s, template, [item])
            except Exception as exc:
                item.result.reset()
                item.result.fail(exc if isinstance(exc, OverairError)
                                 else LineError(f"the line could not be stored: {type(exc).__name__}"))

    def _check(self, s: Session, prepared: list[_Prepared]) -> None:
        """Check the lines against the registry, a few queries for the whole batch; a
        line that fails is marked so (it will write nothing). All checks come before the
        first write."""
        items = [item for item in prepared if item.result.ok]
        things = _existing(s, Thing.name, [item.plan.thing_name for item in items])
        groups = {name: query for name, query in _rows(
            s, select(ThingGroup.name, ThingGroup.query_string), ThingGroup.name,
            sorted({g for item in items for g in item.plan.groups}))}
        certs = {cert_id: status for cert_id, status in _rows(
            s, select(DeviceCertificate.certificate_id, DeviceCertificate.status),
            DeviceCertificate.certificate_id,
            sorted({item.plan.certificate_id for item in items if item.plan.certificate_id}))}
        for item in items:
            line = item.plan
            try:
                if line.thing_name in things:
                    raise LineError(f"thing {line.thing_name} already exists")
                for name in line.groups:
                    if name not in groups:
                        raise LineError(f"thing group {name} does not exist")
                    if groups[name] is not None:
                        raise LineError(f"thing group {name} is a dynamic thing group: its members are the "
                                        "things its query matches")
                if line.certificate_id is not None:
                    status = certs.get(line.certificate_id)
                    if status is None:
                        raise LineError(f"certificate {line.certificate_id} does not exist")
                    if status == "REVOKED":
                        raise LineError(f"certificate {line.certificate_id} is revoked")
            except LineError as exc:
                item.result.fail(exc)

    def _insert(self, s: Session, template: Template, items: list[_Prepared]) -> None:
        """Write the checked lines: things, then certificates, attachments and memberships
        (one multi-row INSERT each)."""
        if not items:
            return
        registry, now = self._registry, self._clock()
        things, certs, links, members = [], [], [], []
        existing_pems = dict(_rows(s, select(DeviceCertificate.certificate_id, DeviceCertificate.pem),
                                   DeviceCertificate.certificate_id,
                                   sorted({i.plan.certificate_id for i in items if i.plan.certificate_id})))
        for item in items:
            line, result = item.plan, item.result
            thing_arn = registry.thing_arn(line.thing_name)
            things.append({"name": line.thing_name, "thing_id": str(uuid.uuid4()), "arn": thing_arn,
                           "thing_type_name": line.thing_type, "attributes": dict(line.attributes),
                           "version": 1, "created_at": now})
            members += [{"group_name": group, "thing_name": line.thing_name, "added_at": now}
                        for group in line.groups]
            result.resource_arns[template.thing_resource] = thing_arn
            cert_id = line.certificate_id
            if item.cert is not None:
                cert_id = pki.certificate_id(item.cert)
                certs.append({"certificate_id": cert_id, "arn": registry.cert_arn(cert_id),
                              "pem": item.cert_pem, "serial": format(item.cert.serial_number, "x"),
                              "status": line.certificate_status, "created_at": now, "last_modified_at": now})
                result.certificate_pem = item.cert_pem
            elif cert_id is not None:
                result.certificate_pem = existing_pems[cert_id]
                # A certificate fleet provisioning issued waits in PENDING_ACTIVATION until
                # RegisterThing gives it the template's status (AWS: "the certificate
                # status changes to ACTIVE or INACTIVE as described in the template").
                s.execute(update(DeviceCertificate)
                          .where(DeviceCertificate.certificate_id == cert_id,
                                 DeviceCertificate.status == PENDING_ACTIVATION)
                          .values(status=line.certificate_status, last_modified_at=now))
            if cert_id is not None and template.certificate_resource is not None:
                links.append({"thing_name": line.thing_name, "principal": registry.cert_arn(cert_id)})
                result.resource_arns[template.certificate_resource] = registry.cert_arn(cert_id)
        for table, rows in ((Thing, things), (DeviceCertificate, certs), (ThingPrincipal, links),
                            (ThingGroupMember, members)):
            if rows:
                s.execute(insert(table), rows)

    # Step 3: tell the broker and the rest of the server, once per batch ------------------
    def _announce(self, template: Template, done: list[_Prepared]) -> None:
        if not done:
            return
        registry = self._registry
        key = template.certificate_resource
        principals = sorted({item.result.resource_arns[key] for item in done
                             if key is not None and key in item.result.resource_arns})
        registry.on_things_changed([item.plan.thing_name for item in done])
        followed = self.followed() if any(item.plan.groups for item in done) else set()
        for item in done:
            for group in item.plan.groups:
                if registry.group_arn(group) in followed:
                    registry.on_group_join(item.plan.thing_name, registry.group_arn(group))
        if principals:
            registry.on_access_change(principals)


def _rows(s: Session, query: Select[Any], key: InstrumentedAttribute[str], values: list[str]) -> list[Any]:
    """`query` for rows whose `key` is one of `values`, read in chunks (SQLite's bound
    parameters per statement are limited)."""
    out: list[Any] = []
    for start in range(0, len(values), 500):
        out.extend(s.execute(query.where(key.in_(values[start:start + 500]))).all())
    return out


def _existing(s: Session, key: InstrumentedAttribute[str], values: list[str]) -> set[str]:
    return {row[0] for row in _rows(s, select(key), key, values)}


def csr_key(pem: str) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    """The public key of a CSR whose self-signature verifies: ECDSA P-256/P-384 or RSA of
    2048 bits or more (AWS IoT's device key types). Fleet provisioning's
    CreateCertificateFromCsr checks its CSR here too (server/provisioning/device.py)."""
    if len(pem) > _MAX_CSR_CHARS:
        raise LineError(f"the CSR is {len(pem)} characters; at most {_MAX_CSR_CHARS} are allowed")
    try:
        csr = x509.load_pem_x509_csr(pem.encode())
        valid = csr.is_signature_valid
        key = csr.public_key()
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise LineError(f"the CSR cannot be read: {str(exc)[:200]}") from None
    if not valid:
        raise LineError("the CSR's signature does not verify")
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _CURVES):
        return key
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048:
        return key
    raise LineError("the CSR's key must be ECDSA P-256 or P-384, or RSA of 2048 bits or more")
