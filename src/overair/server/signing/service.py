"""The code-signing service.

Private keys live only sealed (AES-GCM under the master key) in the certificate store
and are opened for the length of one signature. A signature is ECDSA P-256 (or RSA)
over SHA-256 of the whole file, DER; job documents carry it base64.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import select

from overair.core import codesign
from overair.server.api.contract import ApiError, already_exists, invalid, not_found
from overair.server.clock import Clock
from overair.server.sealing import Sealer
from overair.server.settings import Settings
from overair.server.storage.db import Database
from overair.server.storage.objects import ObjectStore
from overair.server.storage.schema import SigningCertificate, SigningJob, SigningProfile

PLATFORMS: dict[str, dict[str, Any]] = {
    "AmazonFreeRTOS-Default": {"displayName": "FreeRTOS ECDSA-SHA256 P-256",
                               "hashAlgorithm": "SHA256", "encryptionAlgorithm": "ECDSA",
                               "signatureKey": "sig-sha256-ecdsa"},
    "AmazonFreeRTOS-RSA": {"displayName": "FreeRTOS RSA-SHA256",
                           "hashAlgorithm": "SHA256", "encryptionAlgorithm": "RSA",
                           "signatureKey": "sig-sha256-rsa"},
}
DEFAULT_PLATFORM = "AmazonFreeRTOS-Default"


@dataclass(frozen=True, slots=True)
class Signed:
    signature: bytes
    chain: list[x509.Certificate]  # signer first, then intermediates
    certificate_path_on_device: str
    signature_key: str
    job_id: str


def _key_context(arn: str) -> str:
    return f"signing-key:{arn}"


class SigningService:
    def __init__(self, db: Database, settings: Settings, sealer: Sealer, objects: ObjectStore,
                 clock: Clock) -> None:
        self._db = db
        self._settings = settings
        self._sealer = sealer
        self._objects = objects
        self._clock = clock

    # Certificate store -------------------------------------------------------------
    def import_certificate(self, cert_pem: bytes, key_pem: bytes | None, chain_pem: bytes = b"",
                           *, development_only: bool = False) -> str:
        cert = codesign.load_pem_certificates(cert_pem)[0]
        codesign.check_signer_usages(cert)
        arn = self._settings.arn("acm", f"certificate/{uuid.uuid4()}")
        sealed = None
        if key_pem is not None:
            key = serialization.load_pem_private_key(key_pem, password=None)
            if key.public_key().public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != \
                    cert.public_key().public_bytes(serialization.Encoding.DER,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo):
                raise ApiError("ValidationException", "the private key does not match the certificate")
            der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
            sealed = self._sealer.seal(der, _key_context(arn))
        with self._db.session() as s:
            s.add(SigningCertificate(
                arn=arn, pem=cert_pem.decode(), chain_pem=chain_pem.decode(), key_sealed=sealed,
                serial=format(cert.serial_number, "x"), subject=cert.subject.rfc4514_string(),
                not_before=cert.not_valid_before_utc.timestamp(),
                not_after=cert.not_valid_after_utc.timestamp(), status="ISSUED",
                development_only=development_only, imported_at=self._clock()))
        return arn

    def certificate(self, arn: str) -> SigningCertificate:
        with self._db.session() as s:
            row = s.get(SigningCertificate, arn)
            if row is None:
                raise not_found(f"certificate {arn}")
            return row

    def chain_of(self, row: SigningCertificate) -> list[x509.Certificate]:
        chain = codesign.load_pem_certificates(row.pem.encode())[:1]
        if row.chain_pem.strip():
            chain += codesign.load_pem_certificates(row.chain_pem.encode())
        return chain

    def _private_key(self, row: SigningCertificate) -> codesign.PrivateKey:
        if row.key_sealed is None:
            raise invalid(f"certificate {row.arn} has no private key in the store")
        key = serialization.load_der_private_key(self._sealer.open(row.key_sealed, _key_context(row.arn)),
                                                 password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise invalid("unsupported signing key type")
        return key

    # Profiles -----------------------------------------------------------------------
    def put_profile(self, name: str, platform_id: str, certificate_arn: str,
                    certificate_path_on_device: str) -> SigningProfile:
        if platform_id not in PLATFORMS:
            raise ApiError("ValidationException", f"unknown signing platform {platform_id}")
        self.certificate(certificate_arn)
        with self._db.session() as s:
            if s.get(SigningProfile, name) is not None:
                raise already_exists(f"signing profile {name}")
            profile = SigningProfile(name=name, arn=self._settings.arn("signer", f"/signing-profiles/{name}"),
                                     platform_id=platform_id, certificate_arn=certificate_arn,
                                     certificate_path_on_device=certificate_path_on_device,
                                     status="Active", created_at=self._clock())
            s.add(profile)
            return profile

    def profile(self, name: str) -> SigningProfile:
        with self._db.session() as s:
            row = s.get(SigningProfile, name)
            if row is None or row.status != "Active":
                raise not_found(f"signing profile {name}")
            return row

    # Signing jobs ---------------------------------------------------------------------
    def sign_object(self, profile_name: str, bucket: str, key: str, version: str | None,
                    destination_bucket: str, prefix: str = "", requested_by: str = "") -> Signed:
        profile = self.profile(profile_name)
        cert_row = self.certificate(profile.certificate_arn)
        if cert_row.status != "ISSUED":
            raise invalid(f"signing certificate {cert_row.arn} is {cert_row.status}")
        stored, data = self._objects.get_object(bucket, key, version)
        signature = codesign.sign_digest(self._private_key(cert_row), codesign.sha256(data))
        job_id = str(uuid.uuid4())
        platform = PLATFORMS[profile.platform_id]
        signed_key = f"{prefix}{job_id}"
        envelope = json.dumps({"signature": base64.b64encode(signature).decode(),
                               "hashAlgorithm": "SHA256", "source": {"bucket": bucket, "key": key,
                                                                       "version": stored.version_id},
                               "certificateArn": cert_row.arn}).encode()
        out = self._objects.put_object(destination_bucket, signed_key, envelope,
                                       content_type="application/json")
        now = self._clock()
        with self._db.session() as s:
            s.add(SigningJob(job_id=job_id, profile_name=profile_name, client_request_token=None,
                             source={"s3": {"bucketName": bucket, "key": key, "version": stored.version_id}},
                             destination={"s3": {"bucketName": destination_bucket, "prefix": prefix}},
                             signed_object={"s3": {"bucketName": destination_bucket, "key": out.key}},
                             signature=signature, status="Succeeded", requested_by=requested_by,
                             created_at=now, completed_at=now))
        return Signed(signature, self.chain_of(cert_row), profile.certificate_path_on_device,
                      platform["signatureKey"], job_id)

    def signed_by_job(self, job_id: str) -> Signed:
        with self._db.session() as s:
            job = s.get(SigningJob, job_id)
            if job is None:
                raise not_found(f"signing job {job_id}")
            if job.status != "Succeeded" or job.signature is None:
                raise invalid(f"signing job {job_id} is {job.status}")
        profile = self.profile(job.profile_name)
        cert_row = self.certificate(profile.certificate_arn)
        return Signed(job.signature, self.chain_of(cert_row), profile.certificate_path_on_device,
                      PLATFORMS[profile.platform_id]["signatureKey"], job_id)

    def revoked_serials(self) -> frozenset[int]:
        with self._db.session() as s:
            serials = s.scalars(select(SigningCertificate.serial)
                                .where(SigningCertificate.status == "REVOKED"))
            return frozenset(int(x, 16) for x in serials)

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self._clock(), dt.UTC)
