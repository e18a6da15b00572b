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
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from overair.core.errors import MisuseError, PeerInputError
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
    role (`principal_arn` the session): resource policies naming either then match."""

    principal_arn: str
    action: str  # service:Operation, e.g. iot:CreateJob
    resource: str  # the resource ARN, or "*" for actions without a resource
    keys: Mapping[str, ConditionValue] = field(default_factory=dict)
    role_arn: str | None = None
    service_principal: str | None = None
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


class _Principals:
    """Principal / NotPrincipal of a resource policy.

    An account (`123456789012` or `arn:aws:iam::123456789012:root`) in an Allow grants to
    the account itself, which then delegates through its own IAM policies: it lets the
    root principal in, and other principals only through their identity policies (which
    the evaluator checks anyway). In a Deny it covers every principal of the account."""

    __slots__ = ("accounts", "any_aws", "anyone", "arns", "services")

    def __init__(self, raw: object, where: str) -> None:
        self.anyone = False
        self.any_aws = False
        arns: set[str] = set()
        accounts: set[str] = set()
        services: set[str] = set()
        if raw == "*":
            self.anyone = True
        elif isinstance(raw, dict) and raw:
            for kind, value in raw.items():
                if kind not in _PRINCIPAL_TYPES:
                    raise _malformed(where, f"unknown principal type {kind!r}")
                for item in _string_list(value, f"{where} {kind}"):
                    self._add(kind, item, where, arns, accounts, services)
        else:
            raise _malformed(where, 'must be "*" or an object such as {"AWS": ...} or {"Service": ...}')
        self.arns = frozenset(arns)
        self.accounts = frozenset(accounts)
        self.services = frozenset(services)

    def _add(self, kind: str, item: str, where: str, arns: set[str], accounts: set[str],
             services: set[str]) -> None:
        if item == "*":
            if kind != "AWS":
                raise _malformed(where, f'"*" is only accepted for AWS principals, not {kind}')
            self.any_aws = True
        elif has_wildcards(item):
            raise _malformed(where, f'wildcards are not allowed in principals ({item!r}); use "*" alone')
        elif kind == "AWS" and item.isdigit() and len(item) == 12:
            accounts.add(item)
        elif kind == "AWS" and item.startswith("arn:") and item.endswith(":root") and item.count(":") == 5:
            accounts.add(item.split(":")[4])
        elif kind == "AWS" and not item.startswith("arn:"):
            raise _malformed(where, f"AWS principal must be an ARN, an account id or \"*\", got {item!r}")
        elif kind == "Service":
            services.add(item)
        else:
            arns.add(item)

    def match(self, ctx: RequestContext, deny: bool) -> bool:
        # A service acting through a role is both: statements naming the service and
        # statements naming the role (or its account) apply, so that a Deny on the role
        # cannot be sidestepped by going through the service.
        if self.anyone:
            return True
        if ctx.service_principal is not None and ctx.service_principal in self.services:
            return True
        if not ctx.principal_arn.startswith("arn:"):
            # Anonymous callers count as "any AWS principal"; a bare service does not.
            return self.any_aws and ctx.service_principal is None
        if self.any_aws or ctx.principal_arn in self.arns:
            return True
        if ctx.role_arn is not None and ctx.role_arn in self.arns:
            return True
        if ctx.principal_account in self.accounts:
            return deny or ctx.principal_arn.endswith(":root")
        return False


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
        """Does this statement match the request (whatever its effect)?"""
        if self.actions.matches(ctx.action_lower) == self.not_action:
            return False
        plain = self.resources.plain
        found = plain(ctx.resource) if plain is not None else self.resources.match(ctx)
        if found is None or found == self.not_resource:
            return False  # a variable without a value makes the statement not apply
        if resource_policy and (
            self.principals is None or self.principals.match(ctx, not self.allow) == self.not_principal
        ):
            return False
        return self.condition is None or self.condition.holds(ctx.values)


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


def evaluate(context: RequestContext, identity_policies: Sequence[NamedPolicy],
             resource_policies: Sequence[NamedPolicy] = ()) -> Decision:
    """Decide one request; see the module docstring for the logic."""
    for named in identity_policies:
        if named.policy.kind is not PolicyKind.IDENTITY:
            raise MisuseError(f"{named.name} is a {named.policy.kind.value} policy, passed as identity")
    for named in resource_policies:
        if named.policy.kind is PolicyKind.IDENTITY:
            raise MisuseError(f"{named.name} is a {named.policy.kind.value} policy, passed as resource")
    service = context.service
    # Denies first: one anywhere decides, so the first Allow found can end the search.
    for on_resource, group in ((False, identity_policies), (True, resource_policies)):
        for named in group:
            for st in named.policy.denies.get(service):
                if st.applies(context, on_resource):
                    return Decision(False, True, named.name, st.label, on_resource)
    for on_resource, group in ((False, identity_policies), (True, resource_policies)):
        for named in group:
            for st in named.policy.allows.get(service):
                if st.applies(context, on_resource):
                    return Decision(True, True, named.name, st.label, on_resource)
    return IMPLICIT_DENY


# ------------------------------------------------------------------ parsing


def _malformed(where: str, problem: str) -> MalformedPolicyError:
    return MalformedPolicyError(f"{where}: {problem}" if where else problem)


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two "Effect"s in one statement would be read differently by different tools.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _malformed("", f"duplicate key {key!r} in the policy document")
        out[key] = value
    return out


def _reject_constant(name: str) -> None:
    raise _malformed("", f"{name} is not a valid JSON value")


def _load(document: str | bytes | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(document, Mapping):
        return document
    try:
        loaded = json.loads(document, object_pairs_hook=_reject_duplicates,
                            parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and bad UTF-8 are ValueErrors
        raise _malformed("", f"the policy is not valid JSON ({exc})") from None
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
    doc = _load(document)
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
