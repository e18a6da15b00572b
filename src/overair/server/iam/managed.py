"""The managed policies overair ships, under AWS-style `arn:aws:iam::aws:policy/...` ARNs.

They are documents in code (never stored, never editable), compiled once at import.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from overair.server.iam.policy import VERSION_2012, CompiledPolicy, NamedPolicy, compile_policy

ARN_PREFIX = "arn:aws:iam::aws:policy"


@dataclass(frozen=True, slots=True)
class ManagedPolicy:
    name: str
    path: str  # "/" or e.g. "/service-role/", as AWS
    description: str
    document_json: str  # the canonical text; `document` parses a fresh copy
    compiled: CompiledPolicy = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "compiled", compile_policy(self.document_json))

    @property
    def arn(self) -> str:
        return f"{ARN_PREFIX}{self.path}{self.name}"

    @property
    def policy_id(self) -> str:
        # AWS policy ids are ANPA + 17 characters; derive a stable one from the ARN.
        digest = base64.b32encode(hashlib.sha256(self.arn.encode()).digest()).decode()
        return "ANPA" + digest[:17]

    @property
    def document(self) -> dict[str, Any]:
        return dict(json.loads(self.document_json))

    def named(self) -> NamedPolicy:
        return NamedPolicy(self.arn, self.compiled)


def _policy(name: str, path: str, description: str, statements: list[dict[str, Any]]) -> ManagedPolicy:
    document = {"Version": VERSION_2012, "Statement": statements}
    return ManagedPolicy(name, path, description, json.dumps(document, indent=2))


# AWS's AWSIoTOTAUpdate grants iot:CreateJob and signer:DescribeSigningJob only, because
# in AWS the stream and the signing job are created by AWS-internal principals on the
# service's behalf. In overair the OTA Update Manager does every step as the service
# role itself, and each step is authorized against that role, so the role also needs
# to create and read the stream and to start the signing job. Reading the firmware
# object is granted separately (bucket policy or an S3 policy on the role), as in AWS.
OTA_SERVICE_ROLE_ACTIONS = (
    "iot:CreateJob",
    "iot:CreateStream",
    "iot:DescribeStream",
    "signer:StartSigningJob",
    "signer:DescribeSigningJob",
)

AWS_IOT_OTA_UPDATE = _policy(
    "AWSIoTOTAUpdate", "/service-role/",
    "Lets the OTA service role create the job and stream and sign the image for an OTA update",
    [{"Effect": "Allow", "Action": list(OTA_SERVICE_ROLE_ACTIONS), "Resource": "*"}],
)

# Exactly the actions the seed lists under "Preventing Unauthorized Job Operators".
OTA_OPERATOR_ACTIONS = (
    "s3:ListBucket",
    "s3:ListAllMyBuckets",
    "s3:CreateBucket",
    "s3:PutBucketVersioning",
    "s3:GetBucketLocation",
    "s3:GetObjectVersion",
    "acm:ImportCertificate",
    "acm:ListCertificates",
    "iot:ListThings",
    "iot:ListThingGroups",
    "iot:CreateStream",
    "iot:CreateOTAUpdate",
    "iot:GetOTAUpdate",
    "iot:ListJobs",
    "iot:ListJobExecutionsForJob",
    "iot:DescribeJob",
    "iot:GetJobDocument",
    "iam:ListRoles",
    "signer:ListSigningJobs",
    "signer:StartSigningJob",
    "signer:DescribeSigningJob",
)

OTA_SERVICE_PRINCIPAL = "iot.amazonaws.com"

# The roles an OTA operator may hand to the OTA service: OTA service roles, by naming
# convention, never any role (the Update Manager acts as the role passed, so passing an
# administrator role would let an operator read any firmware bucket or target any thing
# through it). The role `overair init` creates, and roles named `ota-*` (path "/").
OTA_SERVICE_ROLES = ("arn:*:iam::*:role/overair-ota", "arn:*:iam::*:role/ota-*")

# An operator who starts a rollout must be able to stop it: list and delete the OTA
# updates, and cancel the jobs the Update Manager creates for them (AFR_OTA-<id>).
OTA_OPERATOR_CONTROL = (
    {"Sid": "ListOTAUpdates", "Effect": "Allow", "Action": "iot:ListOTAUpdates", "Resource": "*"},
    {"Sid": "DeleteOTAUpdates", "Effect": "Allow", "Action": "iot:DeleteOTAUpdate",
     "Resource": "arn:*:iot:*:*:otaupdate/*"},
    {"Sid": "CancelOTAJobs", "Effect": "Allow", "Action": "iot:CancelJob",
     "Resource": "arn:*:iot:*:*:job/AFR_OTA-*"},
    # Health-gated rollouts (docs/health-gates.md): why a gate held the rollout, and resuming it.
    {"Sid": "HealthGatedRollouts", "Effect": "Allow",
     "Action": ["overair:DescribeRolloutHealth", "overair:ResumeRollout"], "Resource": "*"},
)

OVERAIR_OTA_OPERATOR = _policy(
    "OverairOTAOperator", "/",
    "What an operator needs to run the FreeRTOS OTA workflow, and nothing else",
    [
        {"Sid": "OTAWorkflow", "Effect": "Allow", "Action": list(OTA_OPERATOR_ACTIONS), "Resource": "*"},
        *OTA_OPERATOR_CONTROL,
        # CreateOTAUpdate names a service role (roleArn) that the OTA Update Manager will
        # act as, so the caller must be allowed to pass that role; the condition limits
        # this to handing roles to the IoT service, not to any other consumer of roles.
        {
            "Sid": "PassOTAServiceRole",
            "Effect": "Allow",
            "Action": "iam:PassRole",
            "Resource": list(OTA_SERVICE_ROLES),
            "Condition": {"StringEquals": {"iam:PassedToService": OTA_SERVICE_PRINCIPAL}},
        },
    ],
)

READ_ONLY_ACTIONS = (
    "iot:Describe*",
    "iot:Get*",
    "iot:List*",
    "signer:Describe*",
    "signer:Get*",
    "signer:List*",
    "acm:Describe*",
    "acm:Get*",
    "acm:List*",
    "iam:Get*",
    "iam:List*",
    "s3:Get*",
    "s3:List*",
    # Not sts:Get*: GetSessionToken and GetFederationToken mint credentials.
    "sts:GetCallerIdentity",
    # Reading the audit log in the dashboard (server/dashboard/), AWS's action for reading
    # the API activity log (CloudTrail), which AWS's ReadOnlyAccess grants too.
    "cloudtrail:LookupEvents",
    "overair:DescribeRolloutHealth",  # a health-gated rollout's decision and figures
)

OVERAIR_READ_ONLY = _policy(
    "OverairReadOnly", "/",
    "Read-only access to every service overair serves; nothing that changes state",
    [{"Sid": "ReadOnly", "Effect": "Allow", "Action": list(READ_ONLY_ACTIONS), "Resource": "*"}],
)

ADMINISTRATOR_ACCESS = _policy(
    "AdministratorAccess", "/",
    "Full access to every action on every resource",
    [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
)

# ARN -> policy.
BUILTIN: Mapping[str, ManagedPolicy] = {
    p.arn: p for p in (AWS_IOT_OTA_UPDATE, OVERAIR_OTA_OPERATOR, OVERAIR_READ_ONLY, ADMINISTRATOR_ACCESS)
}
