"""Claim certificates: which certificates devices may provision themselves with, and for
which templates (overair's operation SetClaimCertificateTemplates).

AWS marks a claim certificate by attaching an IoT policy that allows the provisioning
topics; overair serves no IoT policies (docs/compatibility.md), so the operator names
the templates a certificate may use instead. A claim certificate may use only the
topics of the device provisioning MQTT API for those templates (core/claimwire.py
`claim_grants`), with the broker's access plugin (gateway/plugin/overair_access.c)
delivering every answer to the requesting connection alone. It is never also a device's
certificate: one attached to a thing cannot be made a claim certificate, and a claim
certificate attached to a thing afterwards stays a claim certificate only (broker.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cryptography import x509
from sqlalchemy import delete, select

from overair.core.claimwire import TEMPLATE_NAME_RE
from overair.server.api.contract import invalid, not_found
from overair.server.pki import broker_username
from overair.server.storage.db import Database
from overair.server.storage.schema import (
    ClaimCertificate,
    DeviceCertificate,
    ProvisioningTemplate,
    ThingPrincipal,
)


class ClaimCertificates:
    def __init__(self, db: Database) -> None:
        self._db = db
        # Told after a change: the broker's rules are regenerated whole (claims are rare).
        self.on_change: Callable[[], None] = lambda: None

    def set_templates(self, certificate_id: str, templates: Sequence[str]) -> list[str]:
        """Make the certificate a claim certificate for exactly these templates (none: it
        is no longer one). Returns them, sorted."""
        names = sorted(set(templates))
        bad = [name for name in names if not TEMPLATE_NAME_RE.fullmatch(name)]
        if bad:
            raise invalid(f"template names {bad!r:.200} are not valid")
        with self._db.session() as s:
            cert = s.get(DeviceCertificate, certificate_id)
            if cert is None:
                raise not_found(f"certificate {certificate_id}")
            things = list(s.scalars(select(ThingPrincipal.thing_name)
                                    .where(ThingPrincipal.principal == cert.arn).limit(3)))
            if things and names:
                raise invalid(f"certificate {certificate_id} is attached to {', '.join(things)}: a device's "
                              "certificate cannot be a claim certificate")
            known = set(s.scalars(select(ProvisioningTemplate.name)
                                  .where(ProvisioningTemplate.name.in_(names)))) if names else set()
            missing = [name for name in names if name not in known]
            if missing:
                raise not_found(f"provisioning templates {', '.join(missing)}")
            s.execute(delete(ClaimCertificate).where(ClaimCertificate.certificate_id == certificate_id))
            for name in names:
                s.add(ClaimCertificate(certificate_id=certificate_id, template_name=name))
        self.on_change()
        return names

    def templates_of(self, certificate_id: str) -> list[str]:
        with self._db.reading() as s:
            if s.get(DeviceCertificate, certificate_id) is None:
                raise not_found(f"certificate {certificate_id}")
            return sorted(s.scalars(select(ClaimCertificate.template_name)
                                    .where(ClaimCertificate.certificate_id == certificate_id)))

    def identities(self) -> dict[str, list[str]]:
        """Broker identity -> templates, of every ACTIVE claim certificate."""
        with self._db.reading() as s:
            rows = s.execute(select(DeviceCertificate.pem, ClaimCertificate.template_name)
                             .join(ClaimCertificate,
                                   ClaimCertificate.certificate_id == DeviceCertificate.certificate_id)
                             .where(DeviceCertificate.status == "ACTIVE")).all()
        out: dict[str, list[str]] = {}
        subjects: dict[str, str | None] = {}
        for pem, template in rows:
            if pem not in subjects:
                subjects[pem] = broker_username(x509.load_pem_x509_certificate(pem.encode()).subject)
            identity = subjects[pem]
            if identity is not None:
                out.setdefault(identity, []).append(template)
        return out

    def any_claim(self, principals: Sequence[str]) -> bool:
        """Is any of these certificate ARNs a claim certificate?"""
        if not principals:
            return False
        with self._db.reading() as s:
            return s.scalar(select(ClaimCertificate.certificate_id)
                            .join(DeviceCertificate,
                                  ClaimCertificate.certificate_id == DeviceCertificate.certificate_id)
                            .where(DeviceCertificate.arn.in_(list(principals))).limit(1)) is not None
