"""Managed policies (with versions), inline policies and attachments, and the documents
that apply to a principal.

Documents are validated by the evaluator's parser (server/iam/policy.py) before they are
stored, so a stored policy always compiles. overair's built-in managed policies
(server/iam/managed.py) live in code under `arn:aws:iam::aws:policy/...` and can be
attached like any other; they have one version, v1, and cannot be changed.

Every mutation bumps `generation`, which the authorizer uses to drop cached policies.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from urllib.parse import unquote

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from overair.server.clock import Clock
from overair.server.iam import managed
from overair.server.iam.errors import (
    already_exists,
    check_path,
    delete_conflict,
    invalid_input,
    limit_exceeded,
    malformed_policy,
    no_such_entity,
)
from overair.server.iam.identity import random_id
from overair.server.iam.policy import MalformedPolicyError, PolicyKind, compile_policy
from overair.server.settings import Settings
from overair.server.storage.db import Database
from overair.server.storage.schema import (
    IamAttachment,
    IamGroup,
    IamGroupMember,
    IamInlinePolicy,
    IamPolicy,
    IamPolicyVersion,
    IamRole,
    IamUser,
)

KINDS = ("user", "group", "role")
MAX_VERSIONS = 5  # as AWS
MAX_DOCUMENT_CHARS = 6144
_PARENT = {"user": IamUser, "group": IamGroup, "role": IamRole}


@dataclass(frozen=True, slots=True)
class PolicyView:
    arn: str
    name: str
    policy_id: str
    path: str
    description: str
    default_version: str
    attachment_count: int
    created_at: float
    updated_at: float
    aws_managed: bool


@dataclass(frozen=True, slots=True)
class VersionView:
    version_id: str
    document: str
    is_default: bool
    created_at: float


@dataclass(frozen=True, slots=True)
class NamedDocument:
    """A policy document that applies to a principal, named for the audit log."""

    name: str
    document: str


def checked_document(text: str, kind: PolicyKind = PolicyKind.IDENTITY) -> str:
    """The document if it parses as a policy; IAM's MalformedPolicyDocument if not."""
    if len(text) > MAX_DOCUMENT_CHARS:
        raise malformed_policy(f"The policy document exceeds {MAX_DOCUMENT_CHARS} characters")
    # botocore sends documents URL-encoded by some clients (the AWS CLI with file://
    # sends plain JSON; hand-written scripts often quote); AWS accepts both.
    candidate = text if text.lstrip().startswith("{") else unquote(text)
    try:
        compile_policy(candidate, kind)
    except MalformedPolicyError as exc:
        raise malformed_policy(str(exc)) from exc
    return candidate


class PolicyStore:
    def __init__(self, db: Database, settings: Settings, clock: Clock) -> None:
        self._db = db
        self._settings = settings
        self._clock = clock
        self._generation = itertools.count(1)
        self._lock = threading.Lock()
        self.generation = 0

    def changed(self) -> None:
        with self._lock:
            self.generation = next(self._generation)

    def _policy_arn(self, path: str, name: str) -> str:
        return self._settings.arn("iam", f"policy{path}{name}", regional=False)

    # Managed policies ----------------------------------------------------------------
    def create_policy(self, name: str, document: str, path: str = "/", description: str = "") -> PolicyView:
        if not name or len(name) > 128:
            raise invalid_input("PolicyName must be 1 to 128 characters")
        check_path(path)
        text = checked_document(document)
        now = self._clock()
        arn = self._policy_arn(path, name)
        with self._db.session() as s:
            if s.scalar(select(IamPolicy.arn).where(IamPolicy.name == name)) is not None:
                raise already_exists(f"A policy called {name}")
            s.add(IamPolicy(arn=arn, name=name, policy_id=random_id("ANPA", 21), path=path,
                            description=description, default_version="v1", next_version=2,
                            created_at=now, updated_at=now))
            s.add(IamPolicyVersion(policy_arn=arn, version_id="v1", document=text, created_at=now))
        self.changed()
        return self.get_policy(arn)

    def get_policy(self, arn: str) -> PolicyView:
        builtin = managed.BUILTIN.get(arn)
        with self._db.reading() as s:
            count = len(s.scalars(select(IamAttachment.principal_name)
                                  .where(IamAttachment.policy_arn == arn)).all())
            if builtin is not None:
                return PolicyView(arn, builtin.name, builtin.policy_id, builtin.path, builtin.description,
                                  "v1", count, 0.0, 0.0, True)
            row = s.get(IamPolicy, arn)
            if row is None:
                raise no_such_entity(f"Policy {arn}")
            return PolicyView(row.arn, row.name, row.policy_id, row.path, row.description,
                              row.default_version, count, row.created_at, row.updated_at, False)

    def list_policies(self, scope: str = "All", only_attached: bool = False) -> list[PolicyView]:
        arns: list[str] = []
        if scope in ("All", "AWS"):
            arns += sorted(managed.BUILTIN)
        if scope in ("All", "Local"):
            with self._db.reading() as s:
                arns += list(s.scalars(select(IamPolicy.arn).order_by(IamPolicy.name)).all())
        views = [self.get_policy(arn) for arn in arns]
        return [v for v in views if v.attachment_count or not only_attached]

    def delete_policy(self, arn: str) -> None:
        self._local(arn)
        with self._db.session() as s:
            if s.scalar(select(IamAttachment.principal_name).where(IamAttachment.policy_arn == arn)):
                raise delete_conflict("Cannot delete a policy attached to entities.")
            s.execute(delete(IamPolicyVersion).where(IamPolicyVersion.policy_arn == arn))
            s.execute(delete(IamPolicy).where(IamPolicy.arn == arn))
        self.changed()

    def _local(self, arn: str) -> None:
        if arn in managed.BUILTIN:
            raise invalid_input(f"{arn} is a built-in policy and cannot be changed")

    def create_version(self, arn: str, document: str, set_default: bool) -> VersionView:
        self._local(arn)
        text = checked_document(document)
        with self._db.session() as s:
            row = s.get(IamPolicy, arn)
            if row is None:
                raise no_such_entity(f"Policy {arn}")
            versions = s.scalars(select(IamPolicyVersion.version_id)
                                 .where(IamPolicyVersion.policy_arn == arn)).all()
            if len(versions) >= MAX_VERSIONS:
                raise limit_exceeded(f"A managed policy can have up to {MAX_VERSIONS} versions. "
                                     "Delete a version first.")
            version_id = f"v{row.next_version}"
            row.next_version += 1
            row.updated_at = self._clock()
            if set_default:
                row.default_version = version_id
            s.add(IamPolicyVersion(policy_arn=arn, version_id=version_id, document=text,
                                   created_at=row.updated_at))
            view = VersionView(version_id, text, set_default, row.updated_at)
        self.changed()
        return view

    def get_version(self, arn: str, version_id: str) -> VersionView:
        builtin = managed.BUILTIN.get(arn)
        if builtin is not None:
            if version_id != "v1":
                raise no_such_entity(f"Policy {arn} version {version_id}")
            return VersionView("v1", builtin.document_json, True, 0.0)
        with self._db.reading() as s:
            row = s.get(IamPolicy, arn)
            version = s.get(IamPolicyVersion, (arn, version_id))
            if row is None or version is None:
                raise no_such_entity(f"Policy {arn} version {version_id}")
            return VersionView(version_id, version.document, row.default_version == version_id,
                               version.created_at)

    def list_versions(self, arn: str) -> list[VersionView]:
        if arn in managed.BUILTIN:
            return [self.get_version(arn, "v1")]
        with self._db.reading() as s:
            row = s.get(IamPolicy, arn)
            if row is None:
                raise no_such_entity(f"Policy {arn}")
            versions = s.scalars(select(IamPolicyVersion).where(IamPolicyVersion.policy_arn == arn)
                                 .order_by(IamPolicyVersion.created_at.desc())).all()
            return [VersionView(v.version_id, v.document, v.version_id == row.default_version, v.created_at)
                    for v in versions]

    def set_default_version(self, arn: str, version_id: str) -> None:
        self._local(arn)
        with self._db.session() as s:
            row = s.get(IamPolicy, arn)
            if row is None or s.get(IamPolicyVersion, (arn, version_id)) is None:
                raise no_such_entity(f"Policy {arn} version {version_id}")
            row.default_version = version_id
            row.updated_at = self._clock()
        self.changed()

    def delete_version(self, arn: str, version_id: str) -> None:
        self._local(arn)
        with self._db.session() as s:
            row = s.get(IamPolicy, arn)
            version = s.get(IamPolicyVersion, (arn, version_id))
            if row is None or version is None:
                raise no_such_entity(f"Policy {arn} version {version_id}")
            if row.default_version == version_id:
                raise delete_conflict("Cannot delete the default version of a policy.")
            s.delete(version)
        self.changed()

    # Attachments ---------------------------------------------------------------------
    def attach(self, kind: str, name: str, arn: str) -> None:
        with self._db.session() as s:
            self._require_principal(s, kind, name)
            if arn not in managed.BUILTIN and s.get(IamPolicy, arn) is None:
                raise no_such_entity(f"Policy {arn}")
            if s.get(IamAttachment, (kind, name, arn)) is None:
                s.add(IamAttachment(principal_kind=kind, principal_name=name, policy_arn=arn))
        self.changed()

    def detach(self, kind: str, name: str, arn: str) -> None:
        with self._db.session() as s:
            self._require_principal(s, kind, name)
            row = s.get(IamAttachment, (kind, name, arn))
            if row is None:
                raise no_such_entity(f"Policy {arn} attached to {kind} {name}")
            s.delete(row)
        self.changed()

    def attached(self, kind: str, name: str) -> list[PolicyView]:
        with self._db.reading() as s:
            self._require_principal(s, kind, name)
            arns = s.scalars(select(IamAttachment.policy_arn).where(
                IamAttachment.principal_kind == kind, IamAttachment.principal_name == name)
                .order_by(IamAttachment.policy_arn)).all()
        return [self.get_policy(arn) for arn in arns]

    def entities_for_policy(self, arn: str) -> list[tuple[str, str]]:
        self.get_policy(arn)
        with self._db.reading() as s:
            rows = s.execute(select(IamAttachment.principal_kind, IamAttachment.principal_name)
                             .where(IamAttachment.policy_arn == arn)
                             .order_by(IamAttachment.principal_kind, IamAttachment.principal_name)).all()
            return [(kind, name) for kind, name in rows]

    # Inline policies -----------------------------------------------------------------
    def put_inline(self, kind: str, name: str, policy_name: str, document: str) -> None:
        if not policy_name or len(policy_name) > 128:
            raise invalid_input("PolicyName must be 1 to 128 characters")
        text = checked_document(document)
        with self._db.session() as s:
            self._require_principal(s, kind, name)
            row = s.get(IamInlinePolicy, (kind, name, policy_name))
            if row is None:
                s.add(IamInlinePolicy(principal_kind=kind, principal_name=name, policy_name=policy_name,
                                      document=text))
            else:
                row.document = text
        self.changed()

    def get_inline(self, kind: str, name: str, policy_name: str) -> str:
        with self._db.reading() as s:
            self._require_principal(s, kind, name)
            row = s.get(IamInlinePolicy, (kind, name, policy_name))
            if row is None:
                raise no_such_entity(f"{kind} policy with name {policy_name}")
            return row.document

    def list_inline(self, kind: str, name: str) -> list[str]:
        with self._db.reading() as s:
            self._require_principal(s, kind, name)
            return list(s.scalars(select(IamInlinePolicy.policy_name).where(
                IamInlinePolicy.principal_kind == kind, IamInlinePolicy.principal_name == name)
                .order_by(IamInlinePolicy.policy_name)).all())

    def delete_inline(self, kind: str, name: str, policy_name: str) -> None:
        with self._db.session() as s:
            self._require_principal(s, kind, name)
            row = s.get(IamInlinePolicy, (kind, name, policy_name))
            if row is None:
                raise no_such_entity(f"{kind} policy with name {policy_name}")
            s.delete(row)
        self.changed()

    # What applies --------------------------------------------------------------------
    def documents_for(self, kind: str, name: str) -> list[NamedDocument]:
        """Every identity policy of a user (its own and its groups') or a role."""
        with self._db.reading() as s:
            owners = [(kind, name)]
            if kind == "user":
                groups = s.scalars(select(IamGroupMember.group_name)
                                   .where(IamGroupMember.user_name == name)).all()
                owners += [("group", g) for g in groups]
            out: list[NamedDocument] = []
            for owner_kind, owner in owners:
                inline = s.scalars(select(IamInlinePolicy).where(
                    IamInlinePolicy.principal_kind == owner_kind,
                    IamInlinePolicy.principal_name == owner)).all()
                out += [NamedDocument(f"{owner_kind}/{owner}/{p.policy_name}", p.document) for p in inline]
                arns = s.scalars(select(IamAttachment.policy_arn).where(
                    IamAttachment.principal_kind == owner_kind, IamAttachment.principal_name == owner)).all()
                for arn in arns:
                    builtin = managed.BUILTIN.get(arn)
                    if builtin is not None:
                        out.append(NamedDocument(builtin.name, builtin.document_json))
                        continue
                    row = s.get(IamPolicy, arn)
                    if row is None:
                        continue
                    version = s.get(IamPolicyVersion, (arn, row.default_version))
                    if version is not None:
                        out.append(NamedDocument(row.name, version.document))
            return out

    @staticmethod
    def _require_principal(s: Session, kind: str, name: str) -> None:
        if kind not in KINDS:
            raise invalid_input(f"unknown principal kind {kind}")
        if s.get(_PARENT[kind], name) is None:
            raise no_such_entity(f"{kind} with name {name}")
