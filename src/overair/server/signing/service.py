"""The signing service (the signer API): platforms, profiles and signing jobs.

A signing job reads one object version, signs SHA-256 of its bytes with the profile's
certificate key (software or HSM, see `certstore.py`), writes the signed result to the
destination bucket and ends Succeeded, or Failed with a reason. `clientRequestToken`
makes StartSigningJob idempotent. A signature is DER (ECDSA, or RSA PKCS#1 v1.5); job
documents carry it base64.

The signed object is a JSON envelope: the base64 signature, the algorithm, the source
object version and the certificate chain in PEM, i.e. everything a device or a script
needs to check the image independently.

A job reads and writes objects for whoever asked for it (threat O1): `start_job` takes an
`authorize` gate and asks it for `s3:GetObject` (`s3:GetObjectVersion` when a version is
named) on the source and `s3:PutObject` on the signed object's key before touching
either. The API passes the caller's gate, the OTA Update Manager its service role's, so a
signing job can read and write only what its requester could.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select

from overair.core import codesign
from overair.core.errors import OverairError
from overair.server import metrics
from overair.server.api.contract import ApiError, already_exists
from overair.server.clock import Clock
from overair.server.settings import Settings
from overair.server.signing.certstore import CertificateStore
from overair.server.storage.db import Database
from overair.server.storage.keyset import page_query, split
from overair.server.storage.objects import ObjectStore
from overair.server.storage.schema import SigningJob, SigningProfile

log = logging.getLogger("overair.signing")

# (IAM action, resource ARN) -> None, or raise ApiError (AccessDenied) if the requester may not.
Gate = Callable[[str, str], None]


@dataclass(frozen=True)
class JobFilters:
    """ListSigningJobs' filters: status, platformId, isRevoked (None: either)."""

    status: str | None = None
    platform_id: str | None = None
    revoked: bool | None = None


@dataclass(frozen=True, slots=True)
class Platform:
    platform_id: str
    display_name: str
    encryption: str  # ECDSA or RSA
    signature_key: str  # the afr_ota file key that carries the signature
    key_algorithms: tuple[str, ...]

    def to_api(self) -> dict[str, Any]:
        return {
            "platformId": self.platform_id,
            "displayName": self.display_name,
            "partner": "overair",
            "target": "FreeRTOS",
            "category": "AWSIoT",
            "maxSizeInMB": 64,
            "signingConfiguration": {
                "encryptionAlgorithmOptions": {
                    "allowedValues": [self.encryption],
                    "defaultValue": self.encryption,
                },
                "hashAlgorithmOptions": {"allowedValues": ["SHA256"], "defaultValue": "SHA256"},
            },
            "signingImageFormat": {"supportedFormats": ["JSONDetached"], "defaultFormat": "JSONDetached"},
        }


PLATFORMS: dict[str, Platform] = {
    p.platform_id: p
    for p in (
        Platform(
            "AmazonFreeRTOS-Default",
            "FreeRTOS ECDSA-SHA256 P-256",
            "ECDSA",
            "sig-sha256-ecdsa",
            ("ECDSA-P256",),
        ),
        Platform(
            "AmazonFreeRTOS-ECDSA-P384",
            "FreeRTOS ECDSA-SHA256 P-384 (overair agents)",
            "ECDSA",
            "sig-sha256-ecdsa",
            ("ECDSA-P384",),
        ),
        Platform(
            "AmazonFreeRTOS-RSA",
            "FreeRTOS RSA-SHA256",
            "RSA",
            "sig-sha256-rsa",
            ("RSA-2048", "RSA-3072", "RSA-4096"),
        ),
    )
}
DEFAULT_PLATFORM = "AmazonFreeRTOS-Default"


@dataclass(frozen=True, slots=True)
class Signed:
    signature: bytes
    chain: list[x509.Certificate]  # signer first, then intermediates
    certificate_path_on_device: str
    signature_key: str
    job_id: str


def signed_key(prefix: str, job_id: str) -> str:
    """Where a job writes its signed object: `<prefix><job id>.json`."""
    return f"{prefix}{job_id}.json"


class SigningFailed(OverairError):
    """A signing job that ended Failed; `message` is its statusReason."""

    code = "SigningFailed"


class SigningService:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        certificates: CertificateStore,
        objects: ObjectStore,
        clock: Clock,
    ) -> None:
        self._db = db
        self._settings = settings
        self.certificates = certificates
        self._objects = objects
        self._clock = clock

    # Profiles -------------------------------------------------------------------------
    def put_profile(
        self, name: str, platform_id: str, certificate_arn: str, certificate_path_on_device: str
    ) -> SigningProfile:
        platform = PLATFORMS.get(platform_id)
        if platform is None:
            raise ApiError(
                "ValidationException",
                f"unknown signing platform {platform_id}; choose one of {sorted(PLATFORMS)}",
            )
        cert = self.certificates.get(certificate_arn)
        if cert.status != "ISSUED":
            raise ApiError("ValidationException", f"certificate {certificate_arn} is {cert.status}")
        if cert.key_algorithm and cert.key_algorithm not in platform.key_algorithms:
            raise ApiError(
                "ValidationException",
                f"platform {platform_id} signs with "
                f"{'/'.join(platform.key_algorithms)}; certificate "
                f"{certificate_arn} has an {cert.key_algorithm} key",
            )
        if not certificate_path_on_device:
            raise ApiError(
                "ValidationException",
                "certificatePathOnDevice is required for FreeRTOS platforms: it is the certfile devices read",
            )
        with self._db.session() as s:
            if s.get(SigningProfile, name) is not None:
                raise already_exists(f"signing profile {name}")
            profile = SigningProfile(
                name=name,
                arn=self.profile_arn(name),
                platform_id=platform_id,
                certificate_arn=certificate_arn,
                certificate_path_on_device=certificate_path_on_device,
                status="Active",
                created_at=self._clock(),
                version="1",
            )
            s.add(profile)
            return profile

    def profile_arn(self, name: str) -> str:
        return self._settings.arn("signer", f"/signing-profiles/{name}")

    def get_profile(self, name: str) -> SigningProfile:
        with self._db.reading() as s:
            row = s.get(SigningProfile, name)
            if row is None:
                raise ApiError("ResourceNotFoundException", f"signing profile {name} not found")
            return row

    def list_profiles(self, include_canceled: bool = False) -> list[SigningProfile]:
        with self._db.reading() as s:
            query = select(SigningProfile).order_by(SigningProfile.name)
            if not include_canceled:
                query = query.where(SigningProfile.status != "Canceled")
            return list(s.scalars(query))

    def cancel_profile(self, name: str) -> None:
        with self._db.session() as s:
            row = s.get(SigningProfile, name)
            if row is None:
                raise ApiError("ResourceNotFoundException", f"signing profile {name} not found")
            row.status = "Canceled"

    def revoke_profile(self, name: str, version: str, reason: str, effective: dt.datetime) -> None:
        """Signatures the profile made at or after `effective` are no longer accepted."""
        with self._db.session() as s:
            row = s.get(SigningProfile, name)
            if row is None:
                raise ApiError("ResourceNotFoundException", f"signing profile {name} not found")
            if version and version != row.version:
                raise ApiError("ValidationException", f"signing profile {name} is at version {row.version}")
            row.status = "Revoked"
            row.revoked_at = effective.timestamp()
            row.revocation_reason = reason[:1024]

    def profile_in_use(self, certificate_arn: str) -> bool:
        with self._db.reading() as s:
            return (
                s.scalar(
                    select(SigningProfile.name)
                    .where(
                        SigningProfile.certificate_arn == certificate_arn, SigningProfile.status == "Active"
                    )
                    .limit(1)
                )
                is not None
            )

    # Jobs -----------------------------------------------------------------------------
    def start_job(
        self,
        profile_name: str,
        bucket: str,
        key: str,
        version: str | None,
        destination_bucket: str,
        prefix: str = "",
        *,
        authorize: Gate,
        client_request_token: str | None = None,
        requested_by: str = "",
    ) -> SigningJob:
        """Run a signing job to its end; a repeated `client_request_token` returns the
        job it started the first time. `authorize` is asked first for reading the source
        and writing the signed object; a refusal raises before anything is read, written
        or recorded."""
        source_arn = self._object_arn(bucket, key)
        authorize("s3:GetObjectVersion" if version else "s3:GetObject", source_arn)
        if client_request_token:
            with self._db.reading() as s:
                earlier = s.scalar(
                    select(SigningJob).where(SigningJob.client_request_token == client_request_token)
                )
            if earlier is not None:
                if (earlier.profile_name, earlier.source["s3"]["key"]) != (profile_name, key):
                    raise ApiError(
                        "ConflictException", "clientRequestToken was already used for another signing request"
                    )
                return earlier
        profile = self.get_profile(profile_name)
        if profile.status != "Active":
            raise ApiError("ValidationException", f"signing profile {profile_name} is {profile.status}")
        job_id = str(uuid.uuid4())
        authorize("s3:PutObject", self._object_arn(destination_bucket, signed_key(prefix, job_id)))
        now = self._clock()
        job = SigningJob(
            job_id=job_id,
            profile_name=profile_name,
            client_request_token=client_request_token or None,
            source={"s3": {"bucketName": bucket, "key": key, "version": version or ""}},
            destination={"s3": {"bucketName": destination_bucket, "prefix": prefix}},
            signed_object=None,
            signature=None,
            status="InProgress",
            requested_by=requested_by,
            created_at=now,
            platform_id=profile.platform_id,
            certificate_arn=profile.certificate_arn,
        )
        try:
            self._sign(job, profile)
        except (OverairError, OSError) as exc:
            job.status, job.status_reason = "Failed", getattr(exc, "message", str(exc))
            log.warning("signing job %s failed: %s", job_id, job.status_reason)
        job.completed_at = self._clock()
        metrics.SIGNING_JOBS.labels(job.status.lower()).inc()
        with self._db.session() as s:
            s.add(job)
        return job

    def _sign(self, job: SigningJob, profile: SigningProfile) -> None:
        cert_row = self.certificates.get(profile.certificate_arn)
        source = job.source["s3"]
        stored, data = self._objects.get_object(
            source["bucketName"], source["key"], source["version"] or None
        )
        job.source = {"s3": {**source, "version": stored.version_id}}
        signature = self.certificates.signing_key(cert_row).sign_digest(codesign.sha256(data))
        chain = self.certificates.chain_of(cert_row)
        # Check the key really made a signature the device will accept (an HSM answering
        # with another key's signature must not produce a job that ships).
        codesign.verify_digest(chain[0], codesign.sha256(data), signature)
        destination = job.destination["s3"]
        envelope = json.dumps(
            {
                "signature": base64.b64encode(signature).decode(),
                "hashAlgorithm": "SHA256",
                "encryptionAlgorithm": PLATFORMS[profile.platform_id].encryption,
                "source": job.source["s3"],
                "certificateArn": cert_row.arn,
                "certificateChain": "".join(
                    c.public_bytes(serialization.Encoding.PEM).decode() for c in chain
                ),
            },
            indent=1,
        ).encode()
        out = self._objects.put_object(
            destination["bucketName"],
            signed_key(destination["prefix"], job.job_id),
            envelope,
            content_type="application/json",
        )
        job.signature = signature
        job.signed_object = {"s3": {"bucketName": destination["bucketName"], "key": out.key}}
        job.status = "Succeeded"

    def _object_arn(self, bucket: str, key: str) -> str:
        return f"arn:{self._settings.partition}:s3:::{bucket}/{key}"

    def describe_job(self, job_id: str) -> SigningJob:
        with self._db.reading() as s:
            job = s.get(SigningJob, job_id)
            if job is None:
                raise ApiError("ResourceNotFoundException", f"signing job {job_id} not found")
            return job

    def page_jobs(self, filters: JobFilters, after: tuple[float, str] | None,
                  size: int) -> tuple[list[SigningJob], bool]:
        """ListSigningJobs: oldest first, after (creation time, id), over the creation-time
        index (0017); the filters are SQL conditions, so a page loads only its rows."""
        query = select(SigningJob)
        if filters.status:
            query = query.where(SigningJob.status == filters.status)
        if filters.platform_id:
            query = query.where(SigningJob.platform_id == filters.platform_id)
        if filters.revoked is not None:
            query = query.where(SigningJob.revoked_at.is_not(None) if filters.revoked
                                else SigningJob.revoked_at.is_(None))
        with self._db.reading() as s:
            return split(list(s.scalars(page_query(query, [SigningJob.created_at, SigningJob.job_id],
                                                   after, size))), size)

    def revoke_signature(self, job_id: str, reason: str) -> None:
        with self._db.session() as s:
            job = s.get(SigningJob, job_id)
            if job is None:
                raise ApiError("ResourceNotFoundException", f"signing job {job_id} not found")
            job.revoked_at = self._clock()
            job.status_reason = f"revoked: {reason}"[:1024]

    # For the OTA Update Manager ---------------------------------------------------------
    def sign_object(
        self,
        profile_name: str,
        bucket: str,
        key: str,
        version: str | None,
        destination_bucket: str,
        prefix: str = "",
        requested_by: str = "",
        *,
        authorize: Gate,
    ) -> Signed:
        job = self.start_job(
            profile_name, bucket, key, version, destination_bucket, prefix, authorize=authorize,
            requested_by=requested_by,
        )
        return self.signed_by_job(job.job_id)

    def signed_by_job(self, job_id: str) -> Signed:
        """A finished job's signature, refused if it, its profile or its certificate is
        no longer trusted."""
        job = self.describe_job(job_id)
        if job.status != "Succeeded" or job.signature is None:
            raise SigningFailed(f"signing job {job_id} is {job.status}: {job.status_reason}")
        if job.revoked_at is not None:
            raise SigningFailed(f"the signature of signing job {job_id} was revoked")
        profile = self.get_profile(job.profile_name)
        if profile.revoked_at is not None and job.created_at >= profile.revoked_at:
            raise SigningFailed(
                f"signing profile {profile.name} was revoked for signatures made after "
                f"{dt.datetime.fromtimestamp(profile.revoked_at, dt.UTC).isoformat()}"
            )
        cert_row = self.certificates.get(job.certificate_arn or profile.certificate_arn)
        if cert_row.status == "REVOKED":
            raise SigningFailed(f"the certificate of signing job {job_id} ({cert_row.arn}) is revoked")
        return Signed(
            job.signature,
            self.certificates.chain_of(cert_row),
            profile.certificate_path_on_device,
            PLATFORMS[profile.platform_id].signature_key,
            job_id,
        )

    def revoked_serials(self) -> frozenset[int]:
        return self.certificates.revoked_serials()
