"""The one ARN parser: every ARN that arrives in a request is read here, strictly, once.

Theory of operation. An Amazon Resource Name is
`arn:<partition>:<service>:<region>:<account>:<resource>`; overair serves a handful of
resource kinds (things, thing groups, jobs, certificates, roles, policies, signing
profiles, ...), each with a fixed resource form (`thing/<name>`, `role/<path/>name`,
`/signing-profiles/<name>`) and a name pattern. `parse_arn` accepts exactly those forms,
every field matched in full by an anchored pattern, and nothing else: no unknown
service or resource type, no empty or extra fields, no whitespace, no trailing newline.

The property that closes threat O1's ARN confusion: **an accepted ARN is canonical**
(`str(parse_arn(text)) == text`). Authorization checks that text, and the handler then
acts on the resource named by the parsed fields (never on a "last segment" guessed from
the text), so the resource IAM allowed is exactly the resource acted on. Before the
parser, `arn:aws:iot:eu-west-1:OTHER:thing/victim`, `not-an-arn:thing/victim` and
`...:thinggroup/x:thing/victim` all reached `victim` while IAM checked a different string.

`ArnScope.require` adds the deployment's rule: an ARN of another partition, region (for
regional services) or account, or of an unexpected resource type, is refused.

Errors: `ArnError` (a `PeerInputError`, code `InvalidArn`) only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from overair.core.errors import PeerInputError

MAX_ARN_LENGTH = 2048  # the models' maximum for ARN members

# Partition and region are the deployment's (settings may name any): the syntax only has
# to keep them unambiguous; `ArnScope.require` compares them with the deployment's.
_PARTITION = r"[a-z][a-z0-9-]{0,31}"
_SERVICE = r"[a-z][a-z0-9-]{0,31}"
_REGION = r"[a-z0-9][a-z0-9-]{0,31}"
_ACCOUNT = r"[0-9]{12}"
# IAM names: letters, digits and +=,.@_- (ASCII only: `\w` would admit any Unicode letter).
_IAM_NAME = r"[A-Za-z0-9+=,.@_-]"
# An IAM path between the type and the name: printable ASCII segments, each ending in "/".
_IAM_PATH = r"(?:[\x21-\x2e\x30-\x7e]{1,512}/){0,64}"
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


@dataclass(frozen=True, slots=True)
class _Kind:
    name: str  # fullmatch pattern of the resource name
    regional: bool  # the region field is required (else it must be empty)
    leading_slash: bool = False  # signer writes "/signing-profiles/<name>"
    aws_account: bool = False  # may belong to the account "aws" (AWS managed policies)


# (service, resource type) -> how its resource part looks.
_KINDS: dict[tuple[str, str], _Kind] = {
    ("iot", "thing"): _Kind(r"[a-zA-Z0-9:_-]{1,128}", True),
    ("iot", "thinggroup"): _Kind(r"[a-zA-Z0-9:_-]{1,128}", True),
    ("iot", "thingtype"): _Kind(r"[a-zA-Z0-9:_-]{1,128}", True),
    ("iot", "job"): _Kind(r"[a-zA-Z0-9_-]{1,64}", True),
    ("iot", "jobtemplate"): _Kind(r"[a-zA-Z0-9_-]{1,64}", True),
    # Software Package Catalog: package/<name> and package/<name>/version/<version>.
    ("iot", "package"): _Kind(r"[a-zA-Z0-9._-]{1,128}(?:/version/[a-zA-Z0-9._-]{1,64})?", True),
    ("iot", "stream"): _Kind(r"[a-zA-Z0-9_-]{1,128}", True),
    ("iot", "otaupdate"): _Kind(r"[a-zA-Z0-9_-]{1,128}", True),
    ("iot", "cert"): _Kind(r"[a-f0-9]{64}", True),
    ("iot", "provisioningtemplate"): _Kind(r"[0-9A-Za-z_-]{1,36}", True),
    ("iam", "user"): _Kind(_IAM_PATH + _IAM_NAME + "{1,64}", False),
    ("iam", "role"): _Kind(_IAM_PATH + _IAM_NAME + "{1,64}", False),
    ("iam", "group"): _Kind(_IAM_PATH + _IAM_NAME + "{1,128}", False),
    ("iam", "policy"): _Kind(_IAM_PATH + _IAM_NAME + "{1,128}", False, aws_account=True),
    ("iam", "root"): _Kind("", False),
    ("sts", "assumed-role"): _Kind(_IAM_NAME + "{1,64}/" + _IAM_NAME + "{2,64}", False),
    ("signer", "signing-profiles"): _Kind(r"[a-zA-Z0-9_]{2,64}", True, leading_slash=True),
    ("signer", "signing-jobs"): _Kind(_UUID, True, leading_slash=True),
    ("acm", "certificate"): _Kind(_UUID, True),
}

_ARN = re.compile(
    rf"arn:(?P<partition>{_PARTITION}):(?P<service>{_SERVICE}):(?P<region>(?:{_REGION})?)"
    rf":(?P<account>(?:{_ACCOUNT}|aws)?):(?P<resource>.+)",
    re.DOTALL,
)
_TYPED = re.compile(r"(?P<slash>/?)(?P<type>[a-z][a-z-]{0,31})(?:/(?P<name>.*))?", re.DOTALL)
_NAMES = {key: re.compile(kind.name, re.DOTALL) for key, kind in _KINDS.items()}


class ArnError(PeerInputError):
    """Text that is not an ARN overair accepts (malformed, unknown kind, or foreign)."""

    code = "InvalidArn"


@dataclass(frozen=True, slots=True)
class Arn:
    """A parsed ARN; `str()` gives back exactly the text it was parsed from."""

    partition: str
    service: str
    region: str
    account: str
    resource_type: str  # thing, role, signing-profiles, root, ...
    resource_name: str  # the name after the type ("path/name" for IAM entities; "" for root)

    @property
    def leaf(self) -> str:
        """The entity's own name: for IAM entities without their path (`role/a/b/r` -> `r`)."""
        return self.resource_name.rpartition("/")[2]

    @property
    def resource(self) -> str:
        kind = _KINDS[(self.service, self.resource_type)]
        prefix = "/" if kind.leading_slash else ""
        if self.resource_type == "root":
            return "root"
        return f"{prefix}{self.resource_type}/{self.resource_name}"

    def __str__(self) -> str:
        return f"arn:{self.partition}:{self.service}:{self.region}:{self.account}:{self.resource}"


def parse_arn(text: str) -> Arn:
    """Parse one ARN of a kind overair serves; `ArnError` for anything else."""
    if not isinstance(text, str):
        raise ArnError("an ARN must be a string")
    if len(text) > MAX_ARN_LENGTH:
        raise ArnError(f"an ARN has at most {MAX_ARN_LENGTH} characters")
    shown = _shown(text)
    fields = _ARN.fullmatch(text)
    if fields is None:
        raise ArnError(f"{shown} is not an ARN (arn:partition:service:region:account:resource)")
    service, resource = fields["service"], fields["resource"]
    if resource == "root":
        typed_type, name, slash = "root", "", ""
    else:
        typed = _TYPED.fullmatch(resource)
        if typed is None or typed["name"] is None:
            raise ArnError(f"{shown} does not name a resource as type/name")
        typed_type, name, slash = typed["type"], typed["name"], typed["slash"]
    kind = _KINDS.get((service, typed_type))
    if kind is None:
        raise ArnError(f"{shown}: {service} has no resource type {typed_type!r} that overair serves")
    if bool(slash) != kind.leading_slash:
        raise ArnError(f"{shown}: the {service} resource must be written "
                       f"{'/' if kind.leading_slash else ''}{typed_type}/<name>")
    if not _NAMES[(service, typed_type)].fullmatch(name):
        raise ArnError(f"{shown}: {name!r} is not a valid {service} {typed_type} name")
    region, account = fields["region"], fields["account"]
    if bool(region) != kind.regional:
        raise ArnError(f"{shown}: {service} ARNs {'need' if kind.regional else 'have no'} region")
    if not account or (account == "aws" and not kind.aws_account):
        raise ArnError(f"{shown}: the account must be a 12-digit account id")
    return Arn(fields["partition"], service, region, account, typed_type, name)


@dataclass(frozen=True, slots=True)
class ArnScope:
    """The deployment an ARN must belong to: one partition, one region, one account."""

    partition: str
    region: str
    account: str

    def build(self, service: str, resource_type: str, name: str) -> Arn:
        """The ARN of one of this deployment's resources (checked like a parsed one)."""
        kind = _KINDS.get((service, resource_type))
        region = self.region if kind is not None and kind.regional else ""
        prefix = "/" if kind is not None and kind.leading_slash else ""
        resource = "root" if resource_type == "root" else f"{prefix}{resource_type}/{name}"
        return parse_arn(f"arn:{self.partition}:{service}:{region}:{self.account}:{resource}")

    def require(self, text: str, service: str, types: tuple[str, ...], *,
                allow_aws_account: bool = False) -> Arn:
        """`text` parsed, if it is an ARN of this deployment of one of `types`."""
        arn = parse_arn(text)
        shown = _shown(text)
        if arn.service != service or arn.resource_type not in types:
            wanted = " or ".join(f"{service} {t}" for t in types)
            raise ArnError(f"{shown} is not the ARN of a {wanted}")
        if arn.partition != self.partition:
            raise ArnError(f"{shown} is not in this server's partition ({self.partition})")
        if arn.region and arn.region != self.region:
            raise ArnError(f"{shown} is not in this server's region ({self.region})")
        if arn.account != self.account and not (allow_aws_account and arn.account == "aws"):
            raise ArnError(f"{shown} is not in this server's account ({self.account})")
        return arn


def _shown(text: str) -> str:
    """The ARN for an error message: bounded, and printable (it may be hostile)."""
    clipped = text if len(text) <= 200 else text[:200] + "..."
    return repr(clipped)
