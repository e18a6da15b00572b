"""IAM policy documents: parse and validate once, evaluate on every request.

Pure logic, no I/O. The intended use:

* when a policy is stored or loaded, `compile_policy(text, kind)` (or a shared
  `PolicyCache`, keyed by the document's SHA-256) turns it into an immutable
  `CompiledPolicy`, raising `MalformedPolicyError` (code `MalformedPolicyDocument`) with
  a message that names the statement and the field;
* per request, build a `RequestContext` (principal, action, resource ARN, condition keys)
  and call `evaluate(context, identity_policies, resource_policies)` with the caller's
  policies and, for S3, the bucket policy, each wrapped in a `NamedPolicy`;
* the returned `Decision` says allowed or not, explicit or implicit, and which policy and
  statement decided: what the audit log records.

Evaluation is AWS's single-account logic: a matching Deny in any policy denies; otherwise
a matching Allow in an identity policy, or in a resource policy whose Principal names the
caller, allows; otherwise the request is implicitly denied. Actions match
case-insensitively, resource ARNs case-sensitively; `*` in an ARN spans `:` and `/`.
sts:AssumeRole has its own rule (`evaluate_assume_role`): the role's trust policy must
let the caller in, and an identity Allow alone never does.

Resource and trust policies name IAM users and roles by unique id (`_Principals`), so a
principal deleted and re-created under the same name is a stranger to them.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from overair.core import wirejson
from overair.core.errors import DecodeError, MisuseError, PeerInputError
from overair.core.limits import DEFAULT_LIMITS
from overair.server.iam.conditions import Condition, ConditionError, ContextValues, compile_condition
from overair.server.iam.wildcards import (
    Part,
    PatternSet,
    TemplateError,
    compile_glob,
    has_wildcards,
    parse_template,
    plain_text,
    resolve,
    single_value_lookup,
)

VERSION_2012 = "2012-10-17"
VERSION_2008 = "2008-10-17"

ConditionValue = str | Sequence[str]

_TOP_LEVEL = frozenset({"Version", "Id", "Statement"})
_STATEMENT_KEYS = frozenset({"Sid", "Effect", "Action", "NotAction", "Resource", "NotResource",
                             "Principal", "NotPrincipal", "Condition"})
_PRINCIPAL_TYPES = frozenset({"AWS", "Service", "Federated", "CanonicalUser"})


class MalformedPolicyError(PeerInputError):
    """A policy document that is not valid JSON or not valid policy grammar."""

    code = "MalformedPolicyDocument"


class PolicyKind(Enum):
    IDENTITY = "identity"  # attached to a user, group or role: no Principal
    RESOURCE = "resource"  # e.g. a bucket policy: Principal required
    TRUST = "trust"  # a role's trust policy: Principal required, no Resource (it is the role)


# ------------------------------------------------------------------ request context


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Everything a policy can ask about one request.

    `keys` are the condition keys (any case) with one value or a list of values, e.g.
    aws:SourceIp, aws:CurrentTime, aws:EpochTime, aws:SecureTransport ("true"/"false"),
    aws:username, aws:userid, aws:PrincipalType, iam:PassedToService, s3:prefix.
    aws:PrincipalArn defaults to `principal_arn`. For an assumed-role session,
    `role_arn` is the role's own ARN (a resource policy naming the role matches all
    its sessions); `service_principal` is set when a service (e.g. iot.amazonaws.com)
    calls, on its own behalf (`principal_arn` is then the service name) or through a
    role (`principal_arn` the session): resource policies naming either then match.
    `principal_id` is the unique id of the user (AIDA...) or of the session's role
    (AROA...): what a stored resource or trust policy names (see `_Principals`)."""

    principal_arn: str
    action: str  # service:Operation, e.g. iot:CreateJob
    resource: str  # the resource ARN, or "*" for actions without a resource
    keys: Mapping[str, ConditionValue] = field(default_factory=dict)
    role_arn: str | None = None
    service_principal: str | None = None
    principal_id: str | None = None
    # Derived once, so that statements do not redo it.
    action_lower: str = field(init=False, repr=False, compare=False)
    service: str = field(init=False, repr=False, compare=False)
    values: ContextValues = field(init=False, repr=False, compare=False)
    principal_account: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        action_lower = self.action.lower()
        values: dict[str, tuple[str, ...]] = {}
        for key, value in self.keys.items():
            values[key.lower()] = (value,) if isinstance(value, str) else tuple(value)
        if self.principal_arn:
            values.setdefault("aws:principalarn", (self.principal_arn,))
        arn_fields = self.principal_arn.split(":", 5)
        object.__setattr__(self, "action_lower", action_lower)
        object.__setattr__(self, "service", action_lower.partition(":")[0])
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "principal_account", arn_fields[4] if len(arn_fields) == 6 else "")


# ------------------------------------------------------------------ compiled parts


class _Resources:
    """Resource / NotResource patterns: plain ones precompiled, templated ones
    (with policy variables) compiled per resolved value (cached)."""

    __slots__ = ("plain", "static", "templates")

    def __init__(self, patterns: Sequence[str], variables: bool) -> None:
        parsed: list[tuple[Part, ...]] = [parse_template(p) if variables else (p,) for p in patterns]
        self.static = PatternSet(t for p in parsed if (t := plain_text(p)) is not None)
        self.templates = tuple(p for p in parsed if plain_text(p) is None)
        # Without variables the statement can match on the resource string alone.
        self.plain: Callable[[str], bool] | None = None if self.templates else self.static.matches

    def match(self, ctx: RequestContext) -> bool | None:
        """True/False, or None when a variable used here has no value in the request."""
        if self.static.matches(ctx.resource):
            return True
        if not self.templates:
            return False
        lookup = single_value_lookup(ctx.values)
        unresolved = False
        for parts in self.templates:
            segments = resolve(parts, lookup)
            if segments is None:
                unresolved = True
            elif compile_glob(segments).fullmatch(ctx.resource):
                return True
        return None if unresolved else False


# What a stored policy names an IAM user or role by: its unique id, as AWS rewrites it
# (AIDA... users, AROA... roles; server/iam/principals.py binds names to ids on storage).
UNIQUE_ID = re.compile(r"(?:AIDA|AROA)[A-Z0-9]{17}")
_ACCOUNT_ID = re.compile(r"[0-9]{12}")
# The ARN of an IAM user or role (any account): never matched by name in a grant.
IAM_ENTITY_ARN = re.compile(r"arn:[a-z][a-z0-9-]*:iam::[0-9]{12}:(?:user|role)/.+", re.DOTALL)
_ROOT_ARN = re.compile(r"arn:[a-z][a-z0-9-]*:iam::(?P<account>[0-9]{12}):root")


class PrincipalMatch(Enum):
    """How a statement's principals name the caller."""

    NONE = 0
    ACCOUNT = 1  # only through the caller's account: the account delegates to its own policies
    DIRECT = 2  # by unique id, session, service, "*", or the root itself


class _Principals:
    """Principal / NotPrincipal of a resource or trust policy.

    * An account (`123456789012` or `arn:aws:iam::123456789012:root`) names the account
      itself: in an Allow it delegates to the account's own IAM policies (`ACCOUNT`), so
      it lets the root in and other principals only through their identity policies;
      in a Deny it covers every principal of the account.
    * An IAM user or role is named by its unique id (AIDA.../AROA...): a user deleted and
      re-created with the same name is another principal and inherits no grant (threat
      O1). Stored documents are bound to ids when saved; a user or role ARN still in a
      document (never bound) is matched by name only where that takes permissions away
      (a Deny, or an Allow's NotPrincipal), never to grant them.
    * Session ARNs (`arn:aws:sts::...:assumed-role/r/s`) and services match by name."""

    __slots__ = ("accounts", "any_aws", "anyone", "arns", "entity_names", "services", "unique_ids")

    def __init__(self, raw: object, where: str) -> None:
        self.anyone = False
        self.any_aws = False
        arns: set[str] = set()
        accounts: set[str] = set()
        services: set[str] = set()
        unique_ids: set[str] = set()
        entity_names: set[str] = set()
        if raw == "*":
            self.anyone = True
        elif isinstance(raw, dict) and raw:
            for kind, value in raw.items():
                if kind not in _PRINCIPAL_TYPES:
                    raise _malformed(where, f"unknown principal type {kind!r}")
                for item in _string_list(value, f"{where} {kind}"):
                    self._add(kind, item, where, arns, accounts, services, unique_ids, entity_names)
        else:
            raise _malformed(where, 'must be "*" or an object such as {"AWS": ...} or {"Service": ...}')
        self.arns = frozenset(arns)
        self.accounts = frozenset(accounts)
        self.services = frozenset(services)
        self.unique_ids = frozenset(unique_ids)
        self.entity_names = frozenset(entity_names)

    def _add(self, kind: str, item: str, where: str, arns: set[str], accounts: set[str],
             services: set[str], unique_ids: set[str], entity_names: set[str]) -> None:
        root = _ROOT_ARN.fullmatch(item)
        if item == "*":
            if kind != "AWS":
                raise _malformed(where, f'"*" is only accepted for AWS principals, not {kind}')
            self.any_aws = True
        elif has_wildcards(item):
            raise _malformed(where, f'wildcards are not allowed in principals ({item!r}); use "*" alone')
        elif kind == "Service":
            services.add(item)
        elif kind != "AWS":
            arns.add(item)
        elif _ACCOUNT_ID.fullmatch(item):
            accounts.add(item)
        elif root is not None:
            accounts.add(root["account"])
        elif UNIQUE_ID.fullmatch(item):
            unique_ids.add(item)
        elif IAM_ENTITY_ARN.fullmatch(item):
            entity_names.add(item)
        elif item.startswith("arn:"):
            arns.add(item)
        else:
            raise _malformed(where, f'AWS principal must be an ARN, an account id, a unique id or "*", '
                                    f"got {item!r}")

    def match(self, ctx: RequestContext, widen: bool) -> PrincipalMatch:
        """How these principals name the caller. `widen`: also count an unbound user or
        role ARN naming the caller (only where a match takes permissions away)."""
        # A service acting through a role is both: statements naming the service and
        # statements naming the role (or its account) apply, so that a Deny on the role
        # cannot be sidestepped by going through the service.
        if self.anyone:
            return PrincipalMatch.DIRECT
        if ctx.service_principal is not None and ctx.service_principal in self.services:
            return PrincipalMatch.DIRECT
        if not ctx.principal_arn.startswith("arn:"):
            # Anonymous callers count as "any AWS principal"; a bare service does not.
            anonymous_match = self.any_aws and ctx.service_principal is None
            return PrincipalMatch.DIRECT if anonymous_match else PrincipalMatch.NONE
        if self.any_aws or ctx.principal_arn in self.arns:
            return PrincipalMatch.DIRECT
        if ctx.principal_id is not None and ctx.principal_id in self.unique_ids:
            return PrincipalMatch.DIRECT
        if widen and (ctx.principal_arn in self.entity_names or ctx.role_arn in self.entity_names):
            return PrincipalMatch.DIRECT
        if ctx.principal_account in self.accounts:
            return PrincipalMatch.DIRECT if ctx.principal_arn.endswith(":root") else PrincipalMatch.ACCOUNT
        return PrincipalMatch.NONE


@dataclass(frozen=True, slots=True)
class CompiledStatement:
    index: int
    sid: str | None
    allow: bool
    actions: PatternSet  # lower-cased patterns
    not_action: bool
    resources: _Resources
    not_resource: bool
    principals: _Principals | None
    not_principal: bool
    condition: Condition | None
    services: frozenset[str] | None  # services its Action can name; None = any

    @property
    def label(self) -> str:
        """How the audit log names the statement: its Sid, else its position."""
        return self.sid if self.sid else f"Statement[{self.index}]"

    def applies(self, ctx: RequestContext, resource_policy: bool) -> bool:
        """Does this statement match the request (whatever its effect)? In a resource
        policy an Allow must name the caller directly; an account grant delegates to the
        caller's identity policies (see `trust_applies` for sts:AssumeRole)."""
        if not self._matches_request(ctx):
            return False
        if resource_policy:
            found = self.principal_match(ctx)
            # A Deny naming the caller's account covers the caller; an Allow does not.
            if found is PrincipalMatch.NONE or (self.allow and found is PrincipalMatch.ACCOUNT):
                return False
        return self.condition is None or self.condition.holds(ctx.values)

    def principal_match(self, ctx: RequestContext) -> PrincipalMatch:
        """How the statement's Principal (or NotPrincipal) covers the caller. For a
        NotPrincipal statement: DIRECT if it covers the caller (the caller is not listed)."""
        if self.principals is None:
            return PrincipalMatch.NONE
        # Widen (count anything that might be the caller) exactly where matching takes
        # permissions away: a Deny's Principal, an Allow's NotPrincipal.
        found = self.principals.match(ctx, widen=self.allow == self.not_principal)
        if not self.not_principal:
            return found
        # NotPrincipal: an Allow excludes anyone its list might name (an account listing
        # covers the account's principals); a Deny spares only those listed directly.
        listed = found is not PrincipalMatch.NONE if self.allow else found is PrincipalMatch.DIRECT
        return PrincipalMatch.NONE if listed else PrincipalMatch.DIRECT

    def trust_applies(self, ctx: RequestContext) -> PrincipalMatch:
        """For a trust policy: NONE if the statement does not apply to the request, else
        how its principals name the caller (ACCOUNT needs the caller's identity policy)."""
        if not self._matches_request(ctx):
            return PrincipalMatch.NONE
        found = self.principal_match(ctx)
        if found is PrincipalMatch.NONE or not (self.condition is None or self.condition.holds(ctx.values)):
            return PrincipalMatch.NONE
        return found

    def _matches_request(self, ctx: RequestContext) -> bool:
        if self.actions.matches(ctx.action_lower) == self.not_action:
            return False
        plain = self.resources.plain
        found = plain(ctx.resource) if plain is not None else self.resources.match(ctx)
        # A variable without a value (None) makes the statement not apply.
        return found is not None and found != self.not_resource


@dataclass(frozen=True, slots=True)
class _Index:
    """Statements by service, so a request only looks at those that can name it."""

    by_service: Mapping[str, tuple[CompiledStatement, ...]]
    generic: tuple[CompiledStatement, ...]

    @classmethod
    def build(cls, statements: Sequence[CompiledStatement]) -> _Index:
        services = {s for st in statements if st.services is not None for s in st.services}
        by_service = {
            svc: tuple(st for st in statements if st.services is None or svc in st.services)
            for svc in services
        }
        return cls(by_service, tuple(st for st in statements if st.services is None))

    def get(self, service: str) -> tuple[CompiledStatement, ...]:
        return self.by_service.get(service, self.generic)


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    kind: PolicyKind
    version: str
    policy_id: str | None
    statements: tuple[CompiledStatement, ...]
    denies: _Index = field(repr=False, compare=False)
    allows: _Index = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class NamedPolicy:
    """A compiled policy and the name the audit log gives it (ARN, or user/name for
    inline policies, or the bucket for a bucket policy)."""

    name: str
    policy: CompiledPolicy


# ------------------------------------------------------------------ decisions


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    explicit: bool  # False only for the implicit deny (nothing matched)
    policy: str | None = None  # name of the deciding policy
    statement: str | None = None  # Sid of the deciding statement, or Statement[i]
    resource_policy: bool = False  # the deciding policy was a resource policy

    @property
    def outcome(self) -> str:
        if self.allowed:
            return "Allow"
        return "ExplicitDeny" if self.explicit else "ImplicitDeny"

    def describe(self) -> str:
        if not self.explicit:
            return "implicitly denied: no statement allows it"
        verb = "allowed" if self.allowed else "explicitly denied"
        return f"{verb} by {self.policy} statement {self.statement}"


IMPLICIT_DENY = Decision(allowed=False, explicit=False)


def _check_kinds(identity_policies: Sequence[NamedPolicy], resource_policies: Sequence[NamedPolicy]) -> None:
    for named in identity_policies:
        if named.policy.kind is not PolicyKind.IDENTITY:
            raise MisuseError(f"{named.name} is a {named.policy.kind.value} policy, passed as identity")
    for named in resource_policies:
        if named.policy.kind is PolicyKind.IDENTITY:
            raise MisuseError(f"{named.name} is a {named.policy.kind.value} policy, passed as resource")


def _first_deny(context: RequestContext, identity_policies: Sequence[NamedPolicy],
                resource_policies: Sequence[NamedPolicy]) -> Decision | None:
    for on_resource, group in ((False, identity_policies), (True, resource_policies)):
        for named in group:
            for st in named.policy.denies.get(context.service):
                if st.applies(context, on_resource):
                    return Decision(False, True, named.name, st.label, on_resource)
    return None


def _first_allow(context: RequestContext, policies: Sequence[NamedPolicy],
                 on_resource: bool) -> Decision | None:
    for named in policies:
        for st in named.policy.allows.get(context.service):
            if st.applies(context, on_resource):
                return Decision(True, True, named.name, st.label, on_resource)
    return None


def evaluate(context: RequestContext, identity_policies: Sequence[NamedPolicy],
             resource_policies: Sequence[NamedPolicy] = ()) -> Decision:
    """Decide one request; see the module docstring for the logic."""
    _check_kinds(identity_policies, resource_policies)
    # Denies first: one anywhere decides, so the first Allow found can end the search.
    return (_first_deny(context, identity_policies, resource_policies)
            or _first_allow(context, identity_policies, False)
            or _first_allow(context, resource_policies, True)
            or IMPLICIT_DENY)


def evaluate_assume_role(context: RequestContext, identity_policies: Sequence[NamedPolicy],
                         trust: NamedPolicy | None) -> Decision:
    """Decide sts:AssumeRole by AWS's rule (one account): the role's trust policy must
    let the caller in. A trust statement naming the caller itself (its unique id, its
    session, its service, "*") suffices; one naming only the caller's account delegates
    to the account, so the caller's identity policies must allow sts:AssumeRole on the
    role too. An explicit Deny in either wins. An identity Allow alone never suffices:
    a role trusted only by iot.amazonaws.com, or only by another user, cannot be assumed
    by a user whose policies allow everything (threat O1). `trust` is None when the role
    does not exist (implicitly denied, as AWS answers)."""
    trusts = (trust,) if trust is not None else ()
    _check_kinds(identity_policies, trusts)
    if trust is not None and trust.policy.kind is not PolicyKind.TRUST:
        raise MisuseError(f"{trust.name} is a {trust.policy.kind.value} policy, passed as trust")
    denied = _first_deny(context, identity_policies, trusts)
    if denied is not None or trust is None:
        return denied or IMPLICIT_DENY
    delegated = False
    for st in trust.policy.allows.get(context.service):
        found = st.trust_applies(context)
        if found is PrincipalMatch.DIRECT:
            return Decision(True, True, trust.name, st.label, resource_policy=True)
        delegated = delegated or found is PrincipalMatch.ACCOUNT
    if delegated:
        return _first_allow(context, identity_policies, False) or IMPLICIT_DENY
    return IMPLICIT_DENY


# ------------------------------------------------------------------ parsing


def _malformed(where: str, problem: str) -> MalformedPolicyError:
    return MalformedPolicyError(f"{where}: {problem}" if where else problem)


def load_document(document: str | bytes | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(document, Mapping):
        return document
    try:
        # Policies come from operators over the network: the bounded decoder (size,
        # depth, numbers). Duplicate keys are refused: two "Effect"s in one statement
        # would be read differently by different tools.
        loaded = wirejson.loads(document, max_bytes=DEFAULT_LIMITS.max_policy_bytes,
                                max_depth=DEFAULT_LIMITS.max_policy_depth, reject_duplicate_keys=True,
                                what="the policy")
    except DecodeError as exc:
        raise _malformed("", exc.message) from None
    if not isinstance(loaded, dict):
        raise _malformed("", "the policy must be a JSON object")
    return loaded


def _string_list(raw: object, where: str) -> list[str]:
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise _malformed(where, "must not be empty")
    if not all(isinstance(i, str) and i for i in items):
        raise _malformed(where, "must be a non-empty string or a list of non-empty strings")
    return [str(i) for i in items]


def _check_action(action: str, where: str) -> None:
    if action == "*":
        return
    prefix, colon, name = action.partition(":")
    if not colon or not prefix or not name or any(ch.isspace() for ch in action) or ":" in name:
        raise _malformed(where, f"action {action!r} must have the form service:Action (e.g. iot:CreateJob)")


def _check_resource(resource: str, where: str) -> None:
    if resource != "*" and (not resource.startswith("arn:") or resource.count(":") < 2):
        raise _malformed(where, f'resource {resource!r} must be an ARN or "*"')


def _action_services(actions: Sequence[str]) -> frozenset[str] | None:
    services: set[str] = set()
    for action in actions:
        prefix = action.partition(":")[0]
        if action == "*" or has_wildcards(prefix):
            return None
        services.add(prefix)
    return frozenset(services)


def _one_of(stmt: Mapping[str, Any], names: tuple[str, str], where: str, required: bool) -> str | None:
    present = [n for n in names if n in stmt]
    if len(present) > 1:
        raise _malformed(where, f"has both {names[0]} and {names[1]}; use exactly one")
    if not present and required:
        raise _malformed(where, f"must have {names[0]} or {names[1]}")
    return present[0] if present else None


def _compile_statement(stmt: object, index: int, kind: PolicyKind, variables: bool) -> CompiledStatement:
    where = f"Statement[{index}]"
    if not isinstance(stmt, Mapping):
        raise _malformed(where, "must be an object")
    sid = stmt.get("Sid")
    if sid is not None:
        if not isinstance(sid, str):
            raise _malformed(where, "Sid must be a string")
        where = f"Statement[{index}] (Sid {sid!r})"
    unknown = sorted(set(stmt) - _STATEMENT_KEYS)
    if unknown:
        raise _malformed(where, f"unknown element {unknown[0]!r}")
    effect = stmt.get("Effect")
    if effect not in ("Allow", "Deny"):
        raise _malformed(where, f'Effect must be "Allow" or "Deny", got {effect!r}')

    action_key = _one_of(stmt, ("Action", "NotAction"), where, required=True)
    assert action_key is not None
    actions = _string_list(stmt[action_key], f"{where} {action_key}")
    for action in actions:
        _check_action(action, f"{where} {action_key}")
    lowered = [a.lower() for a in actions]

    resource_key = _one_of(stmt, ("Resource", "NotResource"), where, required=kind is not PolicyKind.TRUST)
    patterns = _string_list(stmt[resource_key], f"{where} {resource_key}") if resource_key else ["*"]
    for pattern in patterns:
        _check_resource(pattern, f"{where} {resource_key}")
    try:
        resources = _Resources(patterns, variables)
    except TemplateError as exc:
        raise _malformed(f"{where} {resource_key or 'Resource'}", str(exc)) from None

    principal_key = _one_of(stmt, ("Principal", "NotPrincipal"), where,
                            required=kind is not PolicyKind.IDENTITY)
    if principal_key is not None and kind is PolicyKind.IDENTITY:
        raise _malformed(where, f"{principal_key} is not allowed in an identity-based policy")
    if principal_key == "NotPrincipal" and kind is PolicyKind.TRUST:
        raise _malformed(where, "NotPrincipal is not allowed in a role trust policy (as in AWS)")
    principals = None
    if principal_key is not None:
        principals = _Principals(stmt[principal_key], f"{where} {principal_key}")

    condition = None
    if "Condition" in stmt:
        try:
            condition = compile_condition(stmt["Condition"], variables)
        except ConditionError as exc:
            raise _malformed(f"{where} Condition", str(exc)) from None

    return CompiledStatement(
        index=index,
        sid=sid or None,
        allow=effect == "Allow",
        actions=PatternSet(lowered),
        not_action=action_key == "NotAction",
        resources=resources,
        not_resource=resource_key == "NotResource",
        principals=principals,
        not_principal=principal_key == "NotPrincipal",
        condition=condition,
        services=None if action_key == "NotAction" else _action_services(lowered),
    )


def compile_policy(document: str | bytes | Mapping[str, Any],
                   kind: PolicyKind = PolicyKind.IDENTITY) -> CompiledPolicy:
    """Parse and validate a policy document (JSON text or an already-parsed object)."""
    doc = load_document(document)
    unknown = sorted(set(doc) - _TOP_LEVEL)
    if unknown:
        raise _malformed("", f"unknown top-level element {unknown[0]!r}")
    version = doc.get("Version", VERSION_2008)
    if version not in (VERSION_2012, VERSION_2008):
        raise _malformed("Version", f'must be "{VERSION_2012}" or "{VERSION_2008}", got {version!r}')
    policy_id = doc.get("Id")
    if policy_id is not None and not isinstance(policy_id, str):
        raise _malformed("Id", "must be a string")
    if "Statement" not in doc:
        raise _malformed("", "the policy has no Statement")
    raw = doc["Statement"]
    raw_statements = raw if isinstance(raw, list) else [raw]
    if not raw_statements:
        raise _malformed("Statement", "must not be empty")
    # Variables are only substituted in the 2012-10-17 language; before that "${" is text.
    variables = version == VERSION_2012
    statements = tuple(_compile_statement(s, i, kind, variables) for i, s in enumerate(raw_statements))
    sids = [s.sid for s in statements if s.sid]
    duplicate = next((sid for sid in sids if sids.count(sid) > 1), None)
    if duplicate is not None:
        raise _malformed("Statement", f"Sid {duplicate!r} is used by more than one statement")
    return CompiledPolicy(
        kind=kind,
        version=version,
        policy_id=policy_id,
        statements=statements,
        denies=_Index.build([s for s in statements if not s.allow]),
        allows=_Index.build([s for s in statements if s.allow]),
    )


def document_hash(document: str | bytes) -> str:
    data = document.encode() if isinstance(document, str) else document
    return hashlib.sha256(data).hexdigest()


class PolicyCache:
    """Compiled policies by (kind, SHA-256 of the document), least recently used evicted.

    Thread-safe: request handlers run in worker threads. Malformed documents are not
    cached; they raise every time."""

    def __init__(self, max_entries: int = 4096) -> None:
        self._max = max_entries
        self._entries: OrderedDict[tuple[PolicyKind, str], CompiledPolicy] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, document: str | bytes, kind: PolicyKind = PolicyKind.IDENTITY) -> CompiledPolicy:
        key = (kind, document_hash(document))
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found
        compiled = compile_policy(document, kind)
        with self._lock:
            self._entries[key] = compiled
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return compiled

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
