"""Authorization of every API request, and of the OTA service role's own steps.

The edge asks `check(caller, checks)` before each handler runs (server/iam/actions.py
says what each operation needs; S3 calls `check_s3`). Each check builds a request
context (source address, time, transport, who the principal is, with its unique id),
evaluates the caller's identity policies and the resource policy that applies (a bucket
policy for S3), and records the decision with its deciding statement in the audit log.
sts:AssumeRole is decided by AWS's own rule against the role's trust policy
(`evaluate_assume_role`), for API callers and for the OTA service alike. A denied check
raises the service's AccessDenied error. Work a service does for its caller (a signing
job's reads and writes) is checked as the caller through `gate_for`.

Compiled policies are cached per principal and dropped whenever IAM changes
(`PolicyStore.generation`); documents are compiled once per content (`PolicyCache`).
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from overair.core.arn import ArnError
from overair.server.api.contract import ApiError, Caller
from overair.server.audit.log import AuditLog
from overair.server.clock import Clock
from overair.server.iam.actions import Check
from overair.server.iam.arns import Arns
from overair.server.iam.policies import PolicyStore
from overair.server.iam.policy import (
    Decision,
    MalformedPolicyError,
    NamedPolicy,
    PolicyCache,
    PolicyKind,
    RequestContext,
    evaluate,
    evaluate_assume_role,
)
from overair.server.iam.principals import Entity, PrincipalDirectory
from overair.server.iam.roles import RoleStore

# The service principal the OTA Update Manager acts as when it assumes a service role.
OTA_SERVICE = "iot.amazonaws.com"
ASSUME_ROLE = "sts:assumerole"

BucketPolicy = Callable[[str], str | None]  # bucket name -> its policy document, if any
Gate = Callable[[str, str], None]  # (action, resource) -> None, or raise AccessDenied


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: a user, a role session, or the OTA service acting as a role."""

    arn: str
    kind: str  # "user" or "role"
    name: str  # user or role name
    source_ip: str = ""
    secure_transport: bool = True
    service: str | None = None  # set when a service acts through a role
    audit_source: str = ""  # the audit log's source: the client, "client via proxy" if forwarded

    @staticmethod
    def of(caller: Caller) -> Principal:
        return Principal(caller.principal_arn, caller.principal_kind, caller.principal_name,
                         caller.source_ip, caller.secure_transport, audit_source=caller.audit_source)


def access_denied_code(service: str) -> str:
    return "AccessDenied" if service in ("s3", "iam", "sts") else "AccessDeniedException"


class Authorizer:
    def __init__(self, policies: PolicyStore, roles: RoleStore, directory: PrincipalDirectory,
                 bucket_policy: BucketPolicy, audit: AuditLog, clock: Clock, arns: Arns) -> None:
        self._policies = policies
        self._roles = roles
        self._directory = directory
        self._bucket_policy = bucket_policy
        self._audit = audit
        self._clock = clock
        self._arns = arns
        self._compiled = PolicyCache()
        self._lock = threading.Lock()
        self._generation = -1
        self._identity: dict[tuple[str, str], tuple[NamedPolicy, ...]] = {}
        self._entities: dict[tuple[str, str], Entity | None] = {}

    # Requests of API callers -----------------------------------------------------------
    def check(self, caller: Caller, service: str, checks: Sequence[Check]) -> None:
        principal = Principal.of(caller)
        for check in checks:
            self.require(principal, check, service)

    def check_s3(self, caller: Caller, action: str, resource: str) -> None:
        self.require(Principal.of(caller), Check(action, resource), "s3")

    def gate_for(self, caller: Caller, service: str) -> Gate:
        """A check of further (action, resource) pairs for `caller`, refused in
        `service`'s terms: for work a service does for its caller (a signing job reading
        and writing objects), so that it may touch only what the caller may."""
        principal = Principal.of(caller)

        def gate(action: str, resource: str) -> None:
            self.require(principal, Check(action, resource), service)

        return gate

    def require(self, principal: Principal, check: Check, service: str) -> Decision:
        decision = self.decide(principal, check)
        if not decision.allowed:
            why = ("with an explicit deny in " + (decision.policy or "a policy") if decision.explicit
                   else "because no policy allows the " + check.action + " action")
            raise ApiError(access_denied_code(service),
                           f"User: {principal.arn} is not authorized to perform: {check.action} "
                           f"on resource: {check.resource} {why}", 403)
        return decision

    def decide(self, principal: Principal, check: Check) -> Decision:
        """Evaluate and audit one check; never raises for a denial."""
        context = self._context(principal, check)
        try:
            if check.action.lower() == ASSUME_ROLE:
                decision = evaluate_assume_role(context, self._identity_policies(principal),
                                                self._trust_policy(check.resource))
            else:
                decision = evaluate(context, self._identity_policies(principal),
                                    self._resource_policies(check))
        except MalformedPolicyError as exc:  # a stored bucket/trust policy no longer parses
            decision = Decision(False, False, statement=f"unusable resource policy: {exc.message}")
        self._audit.record(principal=principal.arn, action=check.action, resource=check.resource,
                           decision=decision.outcome, source=principal.audit_source or principal.source_ip,
                           statement=_statement_label(decision),
                           detail={"service": principal.service} if principal.service else None)
        return decision

    # The OTA service role --------------------------------------------------------------
    def service_role(self, role_arn: str, session: str, service: str = OTA_SERVICE) -> Principal:
        """The principal the OTA Update Manager acts as; raises AccessDenied if the role
        does not exist or its trust policy does not let `service` assume it (the same
        rule as sts:AssumeRole: `evaluate_assume_role`)."""
        try:
            role = self._roles.role_by_arn(self._arns.scope.require(role_arn, "iam", ("role",)))
        except ArnError:
            role = None
        if role is None:
            raise ApiError("AccessDeniedException", f"The role {role_arn} does not exist", 403)
        trust = NamedPolicy(f"{role.name} trust policy",
                            self._compiled.get(role.trust_policy, PolicyKind.TRUST))
        context = RequestContext(principal_arn=service, action="sts:AssumeRole", resource=role.arn,
                                 service_principal=service, keys=self._time_keys())
        decision = evaluate_assume_role(context, (), trust)
        self._audit.record(principal=service, action="sts:AssumeRole", resource=role.arn,
                           decision=decision.outcome, statement=_statement_label(decision))
        if not decision.allowed:
            raise ApiError("AccessDeniedException",
                           f"The trust policy of {role_arn} does not allow {service} to assume it", 403)
        return Principal(self._roles.session_arn(role.name, session), "role", role.name, service=service)

    # Building blocks -------------------------------------------------------------------
    def _time_keys(self) -> dict[str, str]:
        now = self._clock()
        return {"aws:CurrentTime": dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "aws:EpochTime": str(int(now))}

    def _context(self, principal: Principal, check: Check) -> RequestContext:
        keys: dict[str, str] = {
            **self._time_keys(),
            "aws:SecureTransport": "true" if principal.secure_transport else "false",
            "aws:PrincipalType": "AssumedRole" if principal.kind == "role" else "User",
            **check.context,
        }
        if principal.source_ip:
            keys["aws:SourceIp"] = principal.source_ip
        if principal.kind == "user":
            keys["aws:username"] = principal.name
        entity = self._entity(principal.kind, principal.name)
        if entity is not None:  # AWS: AIDA... for a user, AROA...:<session> for a role session
            session = principal.arn.rpartition("/")[2]
            keys["aws:userid"] = (entity.unique_id if principal.kind == "user"
                                  else f"{entity.unique_id}:{session}")
        return RequestContext(principal_arn=principal.arn, action=check.action, resource=check.resource,
                              keys=keys, role_arn=entity.arn if entity and principal.kind == "role" else None,
                              service_principal=principal.service,
                              principal_id=entity.unique_id if entity is not None else None)

    def _fresh(self) -> None:
        generation = self._policies.generation
        if generation != self._generation:
            self._identity.clear()
            self._entities.clear()
            self._generation = generation

    def _identity_policies(self, principal: Principal) -> tuple[NamedPolicy, ...]:
        key = (principal.kind, principal.name)
        with self._lock:
            self._fresh()
            cached = self._identity.get(key)
        if cached is not None:
            return cached
        generation = self._policies.generation
        documents = self._policies.documents_for(principal.kind, principal.name)
        compiled = tuple(NamedPolicy(d.name, self._compiled.get(d.document)) for d in documents)
        with self._lock:
            if self._policies.generation == generation:  # not changed while we read
                self._identity[key] = compiled
        return compiled

    def _entity(self, kind: str, name: str) -> Entity | None:
        """The user or role a principal is (its unique id and ARN); IAM changes that
        create or delete one bump the generation, so a re-created name is looked up anew."""
        key = (kind, name)
        with self._lock:
            self._fresh()
            if key in self._entities:
                return self._entities[key]
        generation = self._policies.generation
        entity = self._directory.by_name(kind, name)
        with self._lock:
            if self._policies.generation == generation:
                self._entities[key] = entity
        return entity

    def _trust_policy(self, resource: str) -> NamedPolicy | None:
        """The trust policy of the role `resource` names (None: no such role)."""
        try:
            role = self._roles.role_by_arn(self._arns.scope.require(resource, "iam", ("role",)))
        except ArnError:
            return None
        if role is None:
            return None
        return NamedPolicy(f"{role.name} trust policy",
                           self._compiled.get(role.trust_policy, PolicyKind.TRUST))

    def _resource_policies(self, check: Check) -> tuple[NamedPolicy, ...]:
        if check.resource.startswith("arn:") and check.action.lower().startswith("s3:"):
            bucket = check.resource.split(":", 5)[5].split("/", 1)[0]
            document = self._bucket_policy(bucket) if bucket and bucket != "*" else None
            if document:
                return (NamedPolicy(f"bucket policy of {bucket}",
                                    self._compiled.get(document, PolicyKind.RESOURCE)),)
        return ()


def _statement_label(decision: Decision) -> str:
    if decision.policy is None:
        return decision.statement or ""
    return f"{decision.policy}#{decision.statement}"
