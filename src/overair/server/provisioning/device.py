"""The device provisioning MQTT API (CreateKeysAndCertificate, CreateCertificateFromCsr,
RegisterThing) for devices that hold a claim certificate. Wire format and token:
core/claimwire.py; delivery to the requesting connection alone: the access plugin.

- CreateKeysAndCertificate / CreateCertificateFromCsr issue a fleet-CA certificate in
  PENDING_ACTIVATION (AWS: "The new certificate has a PENDING_ACTIVATION status. When
  you call RegisterThing ... the certificate status changes to ACTIVE or INACTIVE as
  described in the template"), with the unique subject every device certificate has
  (server/pki.py); the CSR is checked as bulk registration checks it (bulk.csr_key). The
  private key is in the answer only, never stored.
- RegisterThing evaluates the template's default version (enabled templates only) with
  the device's parameters and `AWS::IoT::Certificate::Id` = the token's certificate,
  through bulk registration's registrar (one transaction: thing, certificate status,
  attachment, groups; the broker access change confirmed before the answer), as the
  template's provisioning role, which must still be assumable by IoT and allow
  iot:CreateThing on the thing.

Minting keys costs CPU and every claim device shares one certificate, so the budget is
fleet-wide (Limits.claim_requests_per_second); a request over it is rejected with 429.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import serialization
from sqlalchemy import select

from overair.core import claimwire
from overair.core.claimwire import ClaimError, ClaimRequest, Operation
from overair.core.errors import OverairError, UnavailableError
from overair.core.limits import Limits
from overair.core.provtemplate import Template, TemplateError, plan
from overair.server import pki
from overair.server.api.contract import ApiError
from overair.server.audit.log import AuditLog
from overair.server.clock import Clock
from overair.server.gateway.device_service import Outgoing
from overair.server.provisioning.templates import ProvisioningTemplates
from overair.server.registry.bulk import PENDING_ACTIVATION, AccessNotConfirmed, BulkRegistrar, csr_key
from overair.server.registry.service import Registry
from overair.server.storage.db import Database
from overair.server.storage.schema import ClaimCertificate, DeviceCertificate

log = logging.getLogger("overair.provisioning")
RoleMayRegister = Callable[[str, str], None]  # (role ARN, thing ARN): raises ApiError if not


class _Bucket:
    """A token bucket: `rate` per second, at most `burst` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate, self._burst = rate, float(burst)
        self._tokens, self._at = float(burst), 0.0
        self._lock = threading.Lock()

    def take(self, now: float) -> bool:
        with self._lock:
            self._tokens = min(self._burst, self._tokens + max(0.0, now - self._at) * self._rate)
            self._at = now
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            return True


class ClaimService:
    def __init__(self, db: Database, registry: Registry, registrar: BulkRegistrar,
                 templates: ProvisioningTemplates, fleet_ca: pki.Issued, audit: AuditLog, limits: Limits,
                 clock: Clock, token_key: bytes, role_may_register: RoleMayRegister) -> None:
        self._db = db
        self._registry = registry
        self._registrar = registrar
        self._templates = templates
        self._ca = fleet_ca
        self._audit = audit
        self._limits = limits
        self._clock = clock
        self._token_key = token_key
        self._role_may_register = role_may_register
        self._budget = _Bucket(limits.claim_requests_per_second, limits.claim_request_burst)
        # One RegisterThing at a time: a token's certificate is registered once.
        self._registering = threading.Lock()

    def admit(self, topic: str) -> list[Outgoing] | None:
        """On the event loop, before a worker: None if the request may be served, else
        what to answer instead (a 429 over the fleet-wide budget; nothing for a topic that
        is no request). Cheap and never raises, so a flood queues nothing and writes
        nothing."""
        try:
            request = claimwire.parse_request_topic(topic)
            if request is None:
                log.warning("ignored a claim message on %r", topic[:200])
                return []
            if self._budget.take(self._clock()):
                return None
            log.debug("claim request from %s throttled", request.client_id)
            return [self._out(request, False, claimwire.rejection(ClaimError(
                429, "ThrottlingException", "the rate of provisioning requests exceeds "
                f"{self._limits.claim_requests_per_second:g} per second; try again")))]
        except Exception:
            log.exception("admitting a claim message on %r failed", topic[:200])
            return []

    def handle(self, topic: str, payload: bytes) -> list[Outgoing]:
        """The answer to one admitted request the plugin moved to the service (none for
        a topic that is not one). Never raises."""
        request = claimwire.parse_request_topic(topic)
        if request is None:
            return []
        try:
            doc = claimwire.decode_payload(request, payload, self._limits)
            body, resource = self._serve(request, doc)
            self._record(request, resource, "Allow")
            return [self._out(request, True, body)]
        except ClaimError as exc:
            error = exc
        except UnavailableError as exc:
            error = ClaimError(503, "ServiceUnavailable", f"try again: {exc.message}")
        except OverairError as exc:
            error = ClaimError(400, "InvalidRequest", exc.message)
        except Exception:
            log.exception("claim request on %s failed", request.topic)
            error = ClaimError(500, "InternalError", "internal error")
        log.info("claim request %s from %s rejected: %s %s", request.operation.value, request.client_id,
                 error.code, error.message)
        self._record(request, "*", "Deny")
        return [self._out(request, False, claimwire.rejection(error))]

    def _out(self, request: ClaimRequest, accepted: bool, body: dict[str, Any]) -> Outgoing:
        return Outgoing(claimwire.ANSWER_TOPIC, claimwire.answer(request, accepted, body), 1)

    def _record(self, request: ClaimRequest, resource: str, decision: str) -> None:
        try:
            self._audit.record(principal=f"claim-client/{request.client_id}",
                               action=f"iot:{request.operation.value}", resource=resource, decision=decision)
        except Exception:
            log.exception("could not audit a claim request")

    def _serve(self, request: ClaimRequest, doc: dict[str, Any]) -> tuple[dict[str, Any], str]:
        if request.operation is Operation.REGISTER_THING:
            assert request.template is not None
            token, parameters = claimwire.registration_of(doc, self._limits)
            return self._register(request.template, token, parameters)
        now = dt.datetime.fromtimestamp(self._clock(), dt.UTC)
        cn = f"device-{uuid.uuid4().hex}"  # the thing is not known yet; access comes from the attachment
        if request.operation is Operation.CREATE_FROM_CSR:
            csr = claimwire.csr_of(doc)
            try:
                key = csr_key(csr)
            except OverairError as exc:
                raise ClaimError(400, "InvalidCsr", exc.message) from None
            cert = pki.sign_client_key(self._ca, cn, key, now)
            private_key = None
        else:
            issued = pki.issue_client_cert(self._ca, cn, now)
            cert, private_key = issued.cert, issued.key_pem.decode()
        cert_id = pki.certificate_id(cert)
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        with self._db.session() as s:
            s.add(DeviceCertificate(certificate_id=cert_id, arn=self._registry.cert_arn(cert_id), pem=pem,
                                    serial=format(cert.serial_number, "x"), status=PENDING_ACTIVATION,
                                    created_at=self._clock(), last_modified_at=self._clock()))
        expires = int(self._clock()) + self._limits.claim_ownership_token_seconds
        body: dict[str, Any] = {"certificateId": cert_id, "certificatePem": pem,
                                "certificateOwnershipToken": claimwire.issue_token(self._token_key, cert_id,
                                                                                   expires)}
        if private_key is not None:
            body["privateKey"] = private_key
        return body, self._registry.cert_arn(cert_id)

    def _register(self, template_name: str, token: str,
                  parameters: dict[str, str]) -> tuple[dict[str, Any], str]:
        cert_id = claimwire.verify_token(self._token_key, token, self._clock())
        try:
            template, role_arn = self._templates.for_registration(template_name)
        except ApiError as exc:
            raise ClaimError(404, "ResourceNotFound", exc.message) from None
        with self._registering:
            with self._db.reading() as s:
                cert = s.get(DeviceCertificate, cert_id)
                status = cert.status if cert is not None else None
                is_claim = s.scalar(select(ClaimCertificate.certificate_id)
                                    .where(ClaimCertificate.certificate_id == cert_id).limit(1)) is not None
            if status != PENDING_ACTIVATION or is_claim:
                raise ClaimError(400, "InvalidCertificateOwnershipToken", "the token's certificate is "
                                 "already registered or no longer exists")
            values = {**parameters, claimwire.CERTIFICATE_ID_PARAMETER: cert_id}
            try:
                thing = self._planned_thing(template, values)
                self._role_may_register(role_arn, self._registry.thing_arn(thing))
            except ApiError as exc:
                raise ClaimError(403, "AccessDenied",
                                 f"the template's provisioning role: {exc.message}") from None
            try:
                (result,) = self._registrar.register(template, [("0", values)])
            except AccessNotConfirmed as exc:
                # Registered, and the token spent: the device is told so, and can connect
                # once the broker applies the change (at the latest at its restart).
                log.warning("thing %s registered but its broker access is not confirmed: %s", thing,
                            exc.message)
                (result,) = exc.results
        if not result.ok:
            raise ClaimError(400, "ResourceRegistrationFailure",
                             result.error_message or "registration failed")
        return ({"thingName": thing, "deviceConfiguration": dict(template.device_configuration)},
                self._registry.thing_arn(thing))

    @staticmethod
    def _planned_thing(template: Template, values: dict[str, str]) -> str:
        try:
            return plan(template, values).thing_name
        except TemplateError as exc:
            raise ClaimError(400, "InvalidParameters", exc.message) from None
