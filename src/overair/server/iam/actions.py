"""What each API operation asks of IAM: the action name and the resource ARNs.

Pure: (service, operation, params) -> `Needs`. Actions are AWS's (`iot:CreateJob`,
`signer:StartSigningJob`, ...) so that policies copied from AWS documentation mean the
same here. Resources are derived from the operation's input members by name, so a new
operation is covered the day it is routed; an operation that names no resource is
checked against `*`, as AWS does for List* operations. When an operation names several
resources (a job and its target things, a thing and a group) every one must be allowed.

S3 has its own mapping (server/api/s3.py `action_for`), because S3's action names do not
follow the operation names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# The IAM service prefix differs from the SigV4 signing name for a few services.
_ACTION_PREFIX = {"iot-jobs-data": "iotjobsdata"}

# Operations every authenticated caller may use, as in AWS: GetCallerIdentity needs no
# permission (it only tells callers who they are, which they already know).
UNAUTHORIZED_OPERATIONS = frozenset({("sts", "GetCallerIdentity")})

# iam:PassRole is checked with this service as iam:PassedToService.
OTA_SERVICE_PRINCIPAL = "iot.amazonaws.com"


@dataclass(frozen=True, slots=True)
class Check:
    action: str
    resource: str
    context: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Needs:
    checks: tuple[Check, ...]


Arn = Callable[[str, str], str]  # (service, resource) -> ARN in this deployment


def _iot_resources(params: dict[str, Any], arn: Arn) -> list[str]:
    out: list[str] = []
    for member, kind in (("jobId", "job"), ("otaUpdateId", "otaupdate"), ("streamId", "stream"),
                         ("thingGroupName", "thinggroup"), ("thingName", "thing"),
                         ("certificateId", "cert"), ("thingTypeName", "thingtype")):
        value = params.get(member)
        if isinstance(value, str) and value:
            out.append(arn("iot", f"{kind}/{value}"))
    for member in ("thingArn", "thingGroupArn"):
        value = params.get(member)
        if isinstance(value, str) and value.startswith("arn:"):
            out.append(value)
    targets = params.get("targets")
    if isinstance(targets, list):  # CreateJob and CreateOTAUpdate: every target too
        out += [t for t in targets if isinstance(t, str)]
    return out


def _signer_resources(params: dict[str, Any], arn: Arn) -> list[str]:
    out: list[str] = []
    profile = params.get("profileName")
    if isinstance(profile, str) and profile:
        out.append(arn("signer", f"/signing-profiles/{profile}"))
    job = params.get("jobId")
    if isinstance(job, str) and job:
        out.append(arn("signer", f"/signing-jobs/{job}"))
    return out


def _iam_resources(params: dict[str, Any], arn: Arn) -> list[str]:
    out: list[str] = []
    # Paths are not part of these ARNs: the request names only the entity (AWS resolves
    # the path; overair documents this as a deviation).
    for member, kind in (("UserName", "user"), ("GroupName", "group"), ("RoleName", "role")):
        value = params.get(member)
        if isinstance(value, str) and value:
            out.append(arn("iam", f"{kind}/{value}"))
    policy = params.get("PolicyArn")
    if isinstance(policy, str) and policy:
        out.append(policy)
    return out


def _by_arn_member(member: str) -> Callable[[dict[str, Any], Arn], list[str]]:
    def resources(params: dict[str, Any], _arn: Arn) -> list[str]:
        value = params.get(member)
        return [value] if isinstance(value, str) and value else []

    return resources


_RESOURCES: dict[str, Callable[[dict[str, Any], Arn], list[str]]] = {
    "iot": _iot_resources,
    "iot-jobs-data": _iot_resources,
    "signer": _signer_resources,
    "iam": _iam_resources,
    "sts": _by_arn_member("RoleArn"),
    "acm": _by_arn_member("CertificateArn"),
    "overair": _by_arn_member("CertificateArn"),
}


def needs(service: str, operation: str, params: dict[str, Any], arn: Arn) -> Needs:
    """The checks an operation must pass; an empty tuple only for UNAUTHORIZED_OPERATIONS."""
    if (service, operation) in UNAUTHORIZED_OPERATIONS:
        return Needs(())
    action = f"{_ACTION_PREFIX.get(service, service)}:{operation}"
    resolve = _RESOURCES.get(service)
    resources = resolve(params, arn) if resolve is not None else []
    checks = [Check(action, resource) for resource in dict.fromkeys(resources)] or [Check(action, "*")]
    external_id = params.get("ExternalId")
    if service == "sts" and isinstance(external_id, str):  # trust policies may require it
        checks = [Check(c.action, c.resource, {**c.context, "sts:ExternalId": external_id}) for c in checks]
    if service == "iot":
        for role in _passed_roles(params):
            checks.append(Check("iam:PassRole", role, {"iam:PassedToService": OTA_SERVICE_PRINCIPAL}))
    return Needs(tuple(checks))


def _passed_roles(params: dict[str, Any]) -> list[str]:
    """Roles an iot request hands to the service: CreateOTAUpdate's and CreateStream's
    roleArn, CreateJob's presignedUrlConfig.roleArn."""
    roles = [params.get("roleArn")]
    presigned = params.get("presignedUrlConfig")
    if isinstance(presigned, dict):
        roles.append(presigned.get("roleArn"))
    return [role for role in roles if isinstance(role, str) and role]
