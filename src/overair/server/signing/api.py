"""acm and signer operations, plus overair's own RevokeCodeSigningCertificate.

acm has no notion of flags, so the certificate store's warnings (development-only,
self-signed, expires within 30 days, revoked) are reported as `overair:*` tags by
ListTagsForCertificate and by the `overair signing list` command.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from overair.server.api.contract import ApiError, ApiRequest, Caller, OperationTable
from overair.server.api.paging import key_token, page_out, page_size, paginate, time_key_after
from overair.server.signing.certstore import CertificateStore
from overair.server.signing.service import PLATFORMS, Gate, JobFilters, SigningService
from overair.server.storage.schema import SigningCertificate, SigningJob, SigningProfile

_ACM_KEY_ALGORITHMS = {
    "ECDSA-P256": "EC_prime256v1",
    "ECDSA-P384": "EC_secp384r1",
    "RSA-2048": "RSA_2048",
    "RSA-3072": "RSA_3072",
    "RSA-4096": "RSA_4096",
}
CERTNAME_PARAMETER = "certname"  # AWS's signingParameters key for the FreeRTOS certificate path


# Members of DescribeSigningJob's answer that ListSigningJobs' SigningJob shape lacks.
_NOT_IN_SUMMARY = frozenset({"requestedBy", "completedAt", "statusReason", "revocationRecord"})


def wire_version(stored: str) -> str:
    """A profile version as signer's model has it: exactly 10 alphanumerics (botocore
    refuses anything else client-side, so a shorter one could not be sent back)."""
    return stored.rjust(10, "0")


def stored_version(wire: str) -> str:
    return wire.lstrip("0") or ("0" if wire else "")


def _blob_text(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value or "").encode()


def _when(epoch: float | None) -> dt.datetime | None:
    return None if epoch is None else dt.datetime.fromtimestamp(epoch, dt.UTC)


def _detail(store: CertificateStore, row: SigningCertificate, in_use_by: list[str]) -> dict[str, Any]:
    cert = x509.load_pem_x509_certificate(row.pem.encode())
    common_names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    detail: dict[str, Any] = {
        "CertificateArn": row.arn,
        "DomainName": str(common_names[0].value) if common_names else "",
        "Subject": row.subject,
        "Issuer": cert.issuer.rfc4514_string(),
        "Serial": row.serial,
        "NotBefore": _when(row.not_before),
        "NotAfter": _when(row.not_after),
        "ImportedAt": _when(row.imported_at),
        "KeyAlgorithm": _ACM_KEY_ALGORITHMS.get(row.key_algorithm, row.key_algorithm or "EC_prime256v1"),
        "SignatureAlgorithm": cert.signature_algorithm_oid._name.upper(),
        "Status": row.status,
        "Type": "IMPORTED",
        "InUseBy": in_use_by,
        "KeyUsages": [{"Name": "DIGITAL_SIGNATURE"}],
        "ExtendedKeyUsages": [
            {"Name": "CODE_SIGNING", "OID": ExtendedKeyUsageOID.CODE_SIGNING.dotted_string}
        ],
    }
    if row.revoked_at is not None:
        detail["RevokedAt"] = _when(row.revoked_at)
        detail["RevocationReason"] = (
            "KEY_COMPROMISE" if "compromise" in row.revocation_reason.lower() else "CESSATION_OF_OPERATION"
        )
    return detail


def _summary(store: CertificateStore, row: SigningCertificate) -> dict[str, Any]:
    detail = _detail(store, row, [])
    keys = (
        "CertificateArn",
        "DomainName",
        "KeyAlgorithm",
        "Status",
        "Type",
        "NotBefore",
        "NotAfter",
        "ImportedAt",
        "RevokedAt",
    )
    return {k: detail[k] for k in keys if k in detail} | {"InUse": False}


def register_acm(table: OperationTable, store: CertificateStore, signing: SigningService) -> None:
    def import_certificate(r: ApiRequest) -> dict[str, Any]:
        if r.params.get("CertificateArn"):
            raise ApiError(
                "ValidationException",
                "re-importing over an existing certificate is not "
                "supported: import a new one and point profiles to it",
            )
        arn = store.import_certificate(
            _blob_text(r.params["Certificate"]),
            _blob_text(r.params["PrivateKey"]),
            _blob_text(r.params.get("CertificateChain")),
        )
        return {"CertificateArn": arn}

    def in_use_by(arn: str) -> list[str]:
        return [p.arn for p in signing.list_profiles() if p.certificate_arn == arn and p.status == "Active"]

    def describe(r: ApiRequest) -> dict[str, Any]:
        row = store.get(r.params["CertificateArn"])
        return {"Certificate": _detail(store, row, in_use_by(row.arn))}

    def get(r: ApiRequest) -> dict[str, Any]:
        row = store.get(r.params["CertificateArn"])
        out = {"Certificate": row.pem}
        if row.chain_pem.strip():
            out["CertificateChain"] = row.chain_pem
        return out

    def list_(r: ApiRequest) -> dict[str, Any]:
        statuses = set(r.params.get("CertificateStatuses") or [])
        rows = [row for row in store.list_certificates() if not statuses or row.status in statuses]
        page, token = paginate(
            [_summary(store, row) for row in rows],
            r.params,
            limit_key="MaxItems",
            token_key="NextToken",
            ceiling=1000,
        )
        return page_out("CertificateSummaryList", page, token, token_key="NextToken")

    def delete(r: ApiRequest) -> dict[str, Any]:
        store.delete(r.params["CertificateArn"], signing.profile_in_use)
        return {}

    def tags(r: ApiRequest) -> dict[str, Any]:
        row = store.get(r.params["CertificateArn"])
        return {"Tags": [{"Key": f"overair:{name}", "Value": "true"} for name in store.flags(row).names()]}

    for name, handler in {
        "ImportCertificate": import_certificate,
        "DescribeCertificate": describe,
        "GetCertificate": get,
        "ListCertificates": list_,
        "DeleteCertificate": delete,
        "ListTagsForCertificate": tags,
    }.items():
        table.register("acm", name, handler)


def _profile_view(settings_arn: str, row: SigningProfile) -> dict[str, Any]:
    view: dict[str, Any] = {
        "profileName": row.name,
        "profileVersion": wire_version(row.version),
        "profileVersionArn": f"{settings_arn}/{wire_version(row.version)}",
        "arn": row.arn,
        "platformId": row.platform_id,
        "platformDisplayName": PLATFORMS[row.platform_id].display_name,
        "signingMaterial": {"certificateArn": row.certificate_arn},
        "signingParameters": {CERTNAME_PARAMETER: row.certificate_path_on_device},
        "status": row.status,
        "signatureValidityPeriod": {"value": 135, "type": "MONTHS"},
    }
    if row.revoked_at is not None:
        view["revocationRecord"] = {
            "revocationEffectiveFrom": _when(row.revoked_at),
            "revokedAt": _when(row.revoked_at),
            "revokedBy": "overair",
        }
        view["statusReason"] = row.revocation_reason
    return view


def _job_view(row: SigningJob, profile: SigningProfile | None) -> dict[str, Any]:
    source = {"s3": dict(row.source["s3"])}
    view: dict[str, Any] = {
        "jobId": row.job_id,
        "source": source,
        "profileName": row.profile_name,
        "platformId": row.platform_id,
        "signingMaterial": {"certificateArn": row.certificate_arn},
        "createdAt": _when(row.created_at),
        "status": row.status,
        "requestedBy": row.requested_by or "overair",
        "isRevoked": row.revoked_at is not None,
    }
    if row.platform_id in PLATFORMS:
        view["platformDisplayName"] = PLATFORMS[row.platform_id].display_name
    if profile is not None:
        view["profileVersion"] = wire_version(profile.version)
        view["signingParameters"] = {CERTNAME_PARAMETER: profile.certificate_path_on_device}
    if row.completed_at is not None:
        view["completedAt"] = _when(row.completed_at)
    if row.status_reason:
        view["statusReason"] = row.status_reason
    if row.signed_object:
        view["signedObject"] = row.signed_object
    if row.revoked_at is not None:
        view["revocationRecord"] = {
            "reason": row.status_reason,
            "revokedAt": _when(row.revoked_at),
            "revokedBy": "overair",
        }
    return view


# (caller, service) -> a gate that checks further (action, resource) pairs as the caller.
GateFor = Callable[[Caller, str], Gate]


def register_signer(table: OperationTable, signing: SigningService, gate_for: GateFor) -> None:
    def platforms(r: ApiRequest) -> dict[str, Any]:
        items = [p.to_api() for p in PLATFORMS.values()]
        page, token = paginate(items, r.params)
        return page_out("platforms", page, token)

    def get_platform(r: ApiRequest) -> dict[str, Any]:
        platform = PLATFORMS.get(r.params["platformId"])
        if platform is None:
            raise ApiError(
                "ResourceNotFoundException", f"signing platform {r.params['platformId']} not found"
            )
        return platform.to_api()

    def put_profile(r: ApiRequest) -> dict[str, Any]:
        material = r.params.get("signingMaterial") or {}
        parameters = r.params.get("signingParameters") or {}
        if not material.get("certificateArn"):
            raise ApiError("ValidationException", "signingMaterial.certificateArn is required")
        row = signing.put_profile(
            r.params["profileName"],
            r.params.get("platformId") or "",
            material["certificateArn"],
            parameters.get(CERTNAME_PARAMETER, ""),
        )
        return {
            "arn": row.arn,
            "profileVersion": wire_version(row.version),
            "profileVersionArn": f"{row.arn}/{wire_version(row.version)}",
        }

    def get_profile(r: ApiRequest) -> dict[str, Any]:
        row = signing.get_profile(r.params["profileName"])
        return _profile_view(row.arn, row)

    def list_profiles(r: ApiRequest) -> dict[str, Any]:
        rows = signing.list_profiles(bool(r.params.get("includeCanceled")))
        if r.params.get("platformId"):
            rows = [row for row in rows if row.platform_id == r.params["platformId"]]
        if r.params.get("statuses"):
            rows = [row for row in rows if row.status in r.params["statuses"]]
        page, token = paginate([_profile_view(row.arn, row) for row in rows], r.params)
        return page_out("profiles", page, token)

    def cancel_profile(r: ApiRequest) -> dict[str, Any]:
        signing.cancel_profile(r.params["profileName"])
        return {}

    def revoke_profile(r: ApiRequest) -> dict[str, Any]:
        effective = r.params["effectiveTime"]
        signing.revoke_profile(
            r.params["profileName"], stored_version(r.params.get("profileVersion", "")),
            r.params.get("reason", ""), effective
        )
        return {}

    for name, handler in {
        "ListSigningPlatforms": platforms,
        "GetSigningPlatform": get_platform,
        "PutSigningProfile": put_profile,
        "GetSigningProfile": get_profile,
        "ListSigningProfiles": list_profiles,
        "CancelSigningProfile": cancel_profile,
        "RevokeSigningProfile": revoke_profile,
    }.items():
        table.register("signer", name, handler)
    _register_signing_jobs(table, signing, gate_for)


def _register_signing_jobs(table: OperationTable, signing: SigningService, gate_for: GateFor) -> None:
    def start_job(r: ApiRequest) -> dict[str, Any]:
        source = (r.params.get("source") or {}).get("s3") or {}
        destination = (r.params.get("destination") or {}).get("s3") or {}
        if not source.get("bucketName") or not source.get("key"):
            raise ApiError("ValidationException", "source.s3 needs bucketName and key")
        if not destination.get("bucketName"):
            raise ApiError("ValidationException", "destination.s3 needs bucketName")
        job = signing.start_job(
            r.params["profileName"],
            source["bucketName"],
            source["key"],
            source.get("version"),
            destination["bucketName"],
            destination.get("prefix", ""),
            # The job reads the source and writes the result for the caller (O1).
            authorize=gate_for(r.caller, "signer"),
            client_request_token=r.params.get("clientRequestToken"),
            requested_by=r.caller.principal_arn,
        )
        return {"jobId": job.job_id, "jobOwner": signing_account(r)}

    def signing_account(r: ApiRequest) -> str:
        return r.caller.principal_arn.split(":")[4] if r.caller.principal_arn.count(":") >= 4 else ""

    def describe_job(r: ApiRequest) -> dict[str, Any]:
        row = signing.describe_job(r.params["jobId"])
        view = _job_view(row, _profile_or_none(row.profile_name))
        view.pop("isRevoked")  # DescribeSigningJob says it with revocationRecord
        return view

    def _profile_or_none(name: str) -> SigningProfile | None:
        try:
            return signing.get_profile(name)
        except ApiError:
            return None

    def list_jobs(r: ApiRequest) -> dict[str, Any]:
        filters = JobFilters(r.params.get("status") or None, r.params.get("platformId") or None,
                             bool(r.params["isRevoked"]) if "isRevoked" in r.params else None)
        rows, more = signing.page_jobs(filters, time_key_after(r.params), page_size(r.params))
        summaries = [{k: v for k, v in _job_view(row, None).items() if k not in _NOT_IN_SUMMARY}
                     for row in rows]
        token = key_token(repr(rows[-1].created_at), rows[-1].job_id) if more else None
        return page_out("jobs", summaries, token)

    def revoke_signature(r: ApiRequest) -> dict[str, Any]:
        signing.revoke_signature(r.params["jobId"], r.params.get("reason", ""))
        return {}

    for name, handler in {
        "StartSigningJob": start_job,
        "DescribeSigningJob": describe_job,
        "ListSigningJobs": list_jobs,
        "RevokeSignature": revoke_signature,
    }.items():
        table.register("signer", name, handler)


def register_overair(table: OperationTable, store: CertificateStore) -> None:
    """overair's own operations (model: overair/apimodels)."""

    def revoke(r: ApiRequest) -> dict[str, Any]:
        store.revoke(r.params["CertificateArn"], r.params.get("Reason", ""))
        return {"RevocationSequence": store.revocation_count()}

    table.register("overair", "RevokeCodeSigningCertificate", revoke)
