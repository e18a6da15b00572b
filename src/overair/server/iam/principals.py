"""Resource and trust policies name IAM users and roles by unique id, as AWS stores them.

Theory of operation (threat O1). A policy that names `arn:aws:iam::<account>:user/bob`
means *that* bob: when the document is stored (CreateRole, UpdateAssumeRolePolicy,
PutBucketPolicy), `PrincipalBinder.bind` replaces each IAM user or role ARN in an `AWS`
principal with the entity's unique id (AIDA... for users, AROA... for roles), and refuses
a document naming one that does not exist ("Invalid principal in policy", as AWS). The
evaluator (server/iam/policy.py) matches callers by unique id, so a bob deleted and
re-created is a different principal: he inherits neither the trust nor the bucket grant.
When a document is shown (GetRole, GetBucketPolicy), `render` turns ids back into the
ARNs of the entities that still exist; the id of a deleted one stays, as in AWS.

Documents without IAM user or role principals are stored and shown as given.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from overair.core.arn import ArnError, ArnScope, parse_arn
from overair.server.iam.policy import (
    IAM_ENTITY_ARN,
    UNIQUE_ID,
    MalformedPolicyError,
    PolicyKind,
    compile_policy,
    load_document,
)
from overair.server.storage.db import Database
from overair.server.storage.schema import IamRole, IamUser


@dataclass(frozen=True, slots=True)
class Entity:
    kind: str  # "user" or "role"
    name: str
    unique_id: str
    arn: str


class PrincipalDirectory:
    """The IAM users and roles that exist now, by name or by unique id."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def by_name(self, kind: str, name: str) -> Entity | None:
        with self._db.reading() as s:
            if kind == "user":
                user = s.get(IamUser, name)
                return Entity("user", user.name, user.user_id, user.arn) if user is not None else None
            if kind == "role":
                role = s.get(IamRole, name)
                return Entity("role", role.name, role.role_id, role.arn) if role is not None else None
        return None

    def by_id(self, unique_id: str) -> Entity | None:
        with self._db.reading() as s:
            if unique_id.startswith("AIDA"):
                user = s.scalar(select(IamUser).where(IamUser.user_id == unique_id))
                return Entity("user", user.name, user.user_id, user.arn) if user is not None else None
            role = s.scalar(select(IamRole).where(IamRole.role_id == unique_id))
            return Entity("role", role.name, role.role_id, role.arn) if role is not None else None


class PrincipalBinder:
    def __init__(self, directory: PrincipalDirectory, scope: ArnScope) -> None:
        self._directory = directory
        self._scope = scope

    def bind(self, document: str, kind: PolicyKind = PolicyKind.RESOURCE) -> str:
        """The document, validated as a `kind` policy, with IAM user and role principals
        replaced by unique ids; `MalformedPolicyError` if it is not a valid policy or
        names a user or role that does not exist."""
        compile_policy(document, kind)
        return _rewrite(document, self._bound)

    def render(self, document: str) -> str:
        """The document with unique ids of existing users and roles shown as their ARNs."""
        return _rewrite(document, self._shown)

    def _bound(self, item: str) -> str:
        if UNIQUE_ID.fullmatch(item):
            if self._directory.by_id(item) is None:  # a pasted-back id must still exist
                raise _invalid_principal(item)
            return item
        if not IAM_ENTITY_ARN.fullmatch(item):
            return item
        try:
            arn = parse_arn(item)
        except ArnError:
            raise _invalid_principal(item) from None
        if (arn.partition, arn.account) != (self._scope.partition, self._scope.account):
            raise _invalid_principal(item)  # no other account exists here
        entity = self._directory.by_name(arn.resource_type, arn.leaf)
        if entity is None or entity.arn != item:  # the path is part of the name
            raise _invalid_principal(item)
        return entity.unique_id

    def _shown(self, item: str) -> str:
        if not UNIQUE_ID.fullmatch(item):
            return item
        entity = self._directory.by_id(item)
        return entity.arn if entity is not None else item


def _invalid_principal(item: str) -> MalformedPolicyError:
    return MalformedPolicyError(f'Invalid principal in policy: "AWS":{json.dumps(item[:200])}')


def _rewrite(document: str, change: Callable[[str], str]) -> str:
    doc = dict(load_document(document))
    statements = doc.get("Statement")
    changed = False
    for statement in statements if isinstance(statements, list) else [statements]:
        if not isinstance(statement, dict):
            continue
        for key in ("Principal", "NotPrincipal"):
            principals = statement.get(key)
            if not isinstance(principals, dict) or "AWS" not in principals:
                continue
            before: Any = principals["AWS"]
            after = ([change(i) if isinstance(i, str) else i for i in before] if isinstance(before, list)
                     else change(before) if isinstance(before, str) else before)
            if after != before:
                principals["AWS"] = after
                changed = True
    return json.dumps(doc) if changed else document
