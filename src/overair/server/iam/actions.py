"""What each API operation asks of IAM: the action name and the resource ARNs.

Pure apart from the deployment's ARNs: (service, operation, params, caller, headers) ->
`Needs`. Actions are AWS's (`iot:CreateJob`, `signer:StartSigningJob`, ...) so that
policies copied from AWS documentation mean the same here. Resources are derived from
the operation's input members by name, so a new operation is covered the day it is
routed; an operation that names no resource is checked against `*`, as AWS does for
List* operations. When an operation names several resources (a job and its target
things, a thing and a group) every one must be allowed.

Members that carry ARNs are listed in `ARN_MEMBERS`, each with the kind of ARN it must
be, and parsed strictly (core/arn.py) before anything is checked: an ARN of another
partition, region or account, of the wrong type, or malformed, is the service's
validation error, and the ARN checked is the canonical one the handler acts on (threat
O1). A test requires every ARN-like input member of every routed operation to be listed,
so a new one cannot slip past the parser.

IAM calls that may omit `UserName` act on the caller (`target_user`), and are authorized
against the caller's own user ARN, as in AWS (so `${aws:username}` policies work).

S3 has its own mapping (server/api/s3.py `action_for`), because S3's action names do not
follow the operation names.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from overair.server.api.contract import Caller
from overair.server.iam.arns import Arns, validation_error

# The IAM service prefix differs from the SigV4 signing name for a few services.
# iot-data's shadow operations are AWS's iot:GetThingShadow, iot:UpdateThingShadow, ...
_ACTION_PREFIX = {"iot-jobs-data": "iotjobsdata", "iotdata": "iot"}

# Operations every authenticated caller may use, as in AWS: GetCallerIdentity needs no
# permission (it only tells callers who they are, which they already know).
UNAUTHORIZED_OPERATIONS = frozenset({("sts", "GetCallerIdentity")})

# iam:PassRole is checked with this service as iam:PassedToService.
OTA_SERVICE_PRINCIPAL = "iot.amazonaws.com"

# overair extension (server/registry/api.py): the certificate CreateKeysAndCertificate
# mints is bound to the thing this header names, so minting it is attaching to that
# thing and needs iot:AttachThingPrincipal on it (threat N4).
THING_NAME_HEADER = "x-overair-thing-name"

# The iam operations whose UserName is optional (botocore's iam model; a test keeps the
# list equal to the model's): without it they act on the calling user.
SELF_SERVICE_OPERATIONS = frozenset({
    "CreateAccessKey", "CreateLoginProfile", "DeactivateMFADevice", "DeleteAccessKey",
    "DeleteLoginProfile", "DeleteServiceSpecificCredential", "DeleteSigningCertificate",
    "GetLoginProfile", "GetMFADevice", "GetUser", "ListAccessKeys", "ListMFADevices",
    "ListSSHPublicKeys", "ListServiceSpecificCredentials", "ListSigningCertificates",
    "ResetServiceSpecificCredential", "UpdateAccessKey", "UpdateServiceSpecificCredential",
    "UpdateSigningCertificate", "UploadSigningCertificate",
})

# Attach/Detach{User,Group,Role}Policy carry the policy as the iam:PolicyARN condition key.
_POLICY_ARN_KEY_OPERATIONS = re.compile(r"(?:Attach|Detach)(?:User|Group|Role)Policy")


@dataclass(frozen=True, slots=True)
class Check:
    action: str
    resource: str
    context: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Needs:
    checks: tuple[Check, ...]


@dataclass(frozen=True, slots=True)
class ArnMember:
    """An input member that holds ARNs, and what it must be.

    `use`: "resource" (the operation acts on it: checked with the operation's action),
    "named" (the ARN form of a name member, e.g. thingArn for thingName: checked as that
    resource), "passrole" (a role handed to the service: iam:PassRole), or "reference"
    (named but not acted on, e.g. the signing certificate of a profile: parsed only)."""

    path: str  # dotted; "[]" steps into a list: "files[].codeSigning...certificateArn"
    service: str
    types: tuple[str, ...]
    use: str
    allow_aws_account: bool = False  # AWS managed policies: arn:aws:iam::aws:policy/...


_ACM_CERTIFICATE = ("acm", ("certificate",))
ARN_MEMBERS: Mapping[str, tuple[ArnMember, ...]] = {
    "iot": (
        ArnMember("targets[]", "iot", ("thing", "thinggroup"), "resource"),
        ArnMember("thingArn", "iot", ("thing",), "named"),
        ArnMember("thingGroupArn", "iot", ("thinggroup",), "named"),
        # Tagging operations: overair keeps tags of thing groups only (registry/tags.py).
        ArnMember("resourceArn", "iot", ("thinggroup",), "resource"),
        ArnMember("principal", "iot", ("cert",), "reference"),
        ArnMember("roleArn", "iam", ("role",), "passrole"),
        ArnMember("provisioningRoleArn", "iam", ("role",), "passrole"),
        ArnMember("presignedUrlConfig.roleArn", "iam", ("role",), "passrole"),
        ArnMember("jobTemplateArn", "iot", ("jobtemplate",), "resource"),
        ArnMember("jobArn", "iot", ("job",), "resource"),
        ArnMember("destinationPackageVersions[]", "iot", ("package",), "resource"),
        ArnMember("versionUpdateByJobsConfig.roleArn", "iam", ("role",), "passrole"),
        ArnMember("files[].codeSigning.startSigningJobParameter.signingProfileParameter.certificateArn",
                  *_ACM_CERTIFICATE, "reference"),
    ),
    "signer": (ArnMember("signingMaterial.certificateArn", *_ACM_CERTIFICATE, "reference"),),
    "acm": (ArnMember("CertificateArn", *_ACM_CERTIFICATE, "resource"),),
    "overair": (ArnMember("CertificateArn", *_ACM_CERTIFICATE, "resource"),),
    "iam": (ArnMember("PolicyArn", "iam", ("policy",), "resource", allow_aws_account=True),),
    "sts": (ArnMember("RoleArn", "iam", ("role",), "resource"),),
}
# ARN members of routed operations that the operation refuses by name (docs/compatibility.md).
REFUSED_ARN_MEMBERS = frozenset({("sts", "PolicyArns[].arn"),
                                 ("sts", "ProvidedContexts[].ProviderArn"),
                                 ("iot", "preProvisioningHook.targetArn")})


def target_user(params: Mapping[str, Any], caller: Caller) -> str:
    """The user an iam call acts on: `UserName`, else (where the model lets it be
    omitted) the calling user, as in AWS."""
    name = params.get("UserName")
    if isinstance(name, str) and name:
        return name
    if caller.principal_kind != "user":
        raise validation_error("iam", "Must specify userName when calling with non-User credentials")
    return caller.principal_name


def values_at(params: Mapping[str, Any], path: str) -> Iterator[object]:
    """The values at a dotted member path of the parsed input ("[]" = each list item)."""
    current: list[object] = [params]
    for step in path.split("."):
        name, is_list = (step[:-2], True) if step.endswith("[]") else (step, False)
        found: list[object] = []
        for value in current:
            child = value.get(name) if isinstance(value, dict) else None
            if is_list:
                found += child if isinstance(child, list) else []
            elif child is not None:
                found.append(child)
        current = found
    yield from current


_IOT_NAMED = (("jobId", None, "job"), ("otaUpdateId", None, "otaupdate"), ("streamId", None, "stream"),
              ("thingGroupName", "thingGroupArn", "thinggroup"), ("thingName", "thingArn", "thing"),
              ("certificateId", None, "cert"), ("thingTypeName", None, "thingtype"),
              ("jobTemplateId", None, "jobtemplate"), ("templateName", None, "provisioningtemplate"))


def _iot_resources(service: str, params: Mapping[str, Any], arns: Arns) -> list[str]:
    out: list[str] = []
    for name_member, arn_member, kind in _IOT_NAMED:
        name = arns.named(service, params, name_member, arn_member, "iot", kind)
        if name:
            out.append(arns.arn("iot", f"{kind}/{name}"))
    # Software Package Catalog: the package, and for version operations the version too.
    package, version = params.get("packageName"), params.get("versionName")
    if isinstance(package, str) and package:
        out.append(arns.arn("iot", f"package/{package}"))
        if isinstance(version, str) and version:
            out.append(arns.arn("iot", f"package/{package}/version/{version}"))
    return out


def _signer_resources(params: Mapping[str, Any], arns: Arns) -> list[str]:
    out: list[str] = []
    profile = params.get("profileName")
    if isinstance(profile, str) and profile:
        out.append(arns.arn("signer", f"/signing-profiles/{profile}"))
    job = params.get("jobId")
    if isinstance(job, str) and job:
        out.append(arns.arn("signer", f"/signing-jobs/{job}"))
    return out


def _iam_resources(operation: str, params: Mapping[str, Any], arns: Arns, caller: Caller) -> list[str]:
    out: list[str] = []
    # Paths are not part of these ARNs: the request names only the entity (AWS resolves
    # the path; overair documents this as a deviation).
    user = params.get("UserName")
    if operation in SELF_SERVICE_OPERATIONS:
        user = target_user(params, caller)
    for kind, value in (("user", user), ("group", params.get("GroupName")), ("role", params.get("RoleName"))):
        if isinstance(value, str) and value:
            out.append(arns.arn("iam", f"{kind}/{value}"))
    return out


# Fleet indexing queries act on an index (AWS's resource type "index",
# arn:...:index/<indexName>; SearchIndex and the aggregations default to AWS_Things).
_INDEX_OPERATIONS = frozenset({"SearchIndex", "GetStatistics", "GetPercentiles", "GetCardinality",
                               "GetBucketsAggregation", "DescribeIndex"})


def _named_resources(service: str, operation: str, params: Mapping[str, Any], arns: Arns,
                     caller: Caller) -> list[str]:
    if service == "iot" and operation in _INDEX_OPERATIONS:
        index = params.get("indexName")
        return [arns.arn("iot", f"index/{index if isinstance(index, str) and index else 'AWS_Things'}")]
    if service in ("iot", "iot-jobs-data", "iotdata"):
        return _iot_resources(service, params, arns)
    if service == "signer":
        return _signer_resources(params, arns)
    if service == "iam":
        return _iam_resources(operation, params, arns, caller)
    return []


def _arn_members(service: str, params: Mapping[str, Any], arns: Arns) -> Iterator[tuple[ArnMember, str]]:
    """Every ARN the request carries, canonical, with the member it came in."""
    for member in ARN_MEMBERS.get(service, ()):
        for value in values_at(params, member.path):
            arn = arns.require(service, member.path, value, member.service, member.types,
                               allow_aws_account=member.allow_aws_account)
            yield member, str(arn)


def needs(service: str, operation: str, params: Mapping[str, Any], arns: Arns, caller: Caller,
          headers: Mapping[str, str] | None = None) -> Needs:
    """The checks an operation must pass; an empty tuple only for UNAUTHORIZED_OPERATIONS.
    Raises the service's validation error for an ARN member that is not a canonical ARN
    of this deployment."""
    if (service, operation) in UNAUTHORIZED_OPERATIONS:
        return Needs(())
    action = f"{_ACTION_PREFIX.get(service, service)}:{operation}"
    resources = _named_resources(service, operation, params, arns, caller)
    passed_roles: list[str] = []
    policy_arn: str | None = None
    for member, arn in _arn_members(service, params, arns):
        if member.use == "resource":
            resources.append(arn)
            if member.path == "PolicyArn":
                policy_arn = arn
        elif member.use == "passrole":
            passed_roles.append(arn)
    context: dict[str, str] = {}
    external_id = params.get("ExternalId")
    if service == "sts" and isinstance(external_id, str):  # trust policies may require it
        context["sts:ExternalId"] = external_id
    if service == "iam" and policy_arn is not None and _POLICY_ARN_KEY_OPERATIONS.fullmatch(operation):
        context["iam:PolicyARN"] = policy_arn
    checks = [Check(action, resource, dict(context)) for resource in dict.fromkeys(resources)] or [
        Check(action, "*", dict(context))]
    checks += [Check("iam:PassRole", role, {"iam:PassedToService": OTA_SERVICE_PRINCIPAL})
               for role in dict.fromkeys(passed_roles)]
    checks += _extension_checks(service, operation, headers or {}, arns)
    return Needs(tuple(checks))


def _extension_checks(service: str, operation: str, headers: Mapping[str, str], arns: Arns) -> list[Check]:
    """What overair's header extensions add to an operation's needs."""
    if (service, operation) == ("iot", "CreateKeysAndCertificate") and THING_NAME_HEADER in headers:
        thing = arns.require("iot", THING_NAME_HEADER, arns.arn("iot", f"thing/{headers[THING_NAME_HEADER]}"),
                             "iot", ("thing",))
        return [Check("iot:AttachThingPrincipal", str(thing))]
    return []

