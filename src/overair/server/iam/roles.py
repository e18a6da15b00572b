"""Roles with trust policies, and STS sessions (AssumeRole's temporary credentials).

The session secret is sealed like an access key's; the session token is random and only
its SHA-256 is stored, so a database dump yields no usable session.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from sqlalchemy import delete, select

from overair.core.arn import Arn
from overair.server.api.contract import ApiError
from overair.server.clock import Clock
from overair.server.iam.arns import Arns
from overair.server.iam.errors import (
    already_exists,
    check_name,
    check_path,
    delete_conflict,
    invalid_input,
    malformed_policy,
    no_such_entity,
)
from overair.server.iam.identity import random_id, secret_context, token_digest
from overair.server.iam.policies import checked_document
from overair.server.iam.policy import MalformedPolicyError, PolicyKind
from overair.server.iam.principals import PrincipalBinder, PrincipalDirectory
from overair.server.sealing import Sealer
from overair.server.settings import Settings
from overair.server.storage.db import Database
from overair.server.storage.schema import IamAttachment, IamInlinePolicy, IamRole, StsSession

MIN_SESSION_SECONDS = 900
MAX_SESSION_CEILING = 43200
_SESSION_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+=,.@_-")


@dataclass(frozen=True, slots=True)
class RoleView:
    name: str
    role_id: str
    arn: str
    path: str
    trust_policy: str  # as stored: principals bound to unique ids (see shown_trust_policy)
    description: str
    max_session_duration: int
    created_at: float


@dataclass(frozen=True, slots=True)
class SessionCredentials:
    access_key_id: str
    secret_access_key: str
    session_token: str
    expires_at: float
    assumed_role_id: str
    arn: str


def _role(row: IamRole) -> RoleView:
    return RoleView(row.name, row.role_id, row.arn, row.path, row.trust_policy, row.description,
                    row.max_session_duration, row.created_at)


class RoleStore:
    def __init__(self, db: Database, sealer: Sealer, settings: Settings, clock: Clock) -> None:
        self._db = db
        self._sealer = sealer
        self._settings = settings
        self._clock = clock
        self._principals = PrincipalBinder(PrincipalDirectory(db), Arns.of(settings).scope)

    def role_by_arn(self, arn: Arn) -> RoleView | None:
        """The role a parsed role ARN names (path included), or None."""
        try:
            role = self.get_role(arn.leaf)
        except ApiError:
            return None
        return role if role.arn == str(arn) else None

    def shown_trust_policy(self, role: RoleView) -> str:
        """The trust policy as GetRole shows it: principals' unique ids as ARNs."""
        return self._principals.render(role.trust_policy)

    def _bound_trust_policy(self, trust_policy: str) -> str:
        """Validated, and naming users and roles by unique id (server/iam/principals.py)."""
        text = checked_document(trust_policy, PolicyKind.TRUST)
        try:
            return self._principals.bind(text, PolicyKind.TRUST)
        except MalformedPolicyError as exc:
            raise malformed_policy(exc.message) from None

    def session_arn(self, role: str, session: str) -> str:
        return self._settings.arn("sts", f"assumed-role/{role}/{session}", regional=False)

    def create_role(self, name: str, trust_policy: str, path: str = "/", description: str = "",
                    max_session_duration: int = 3600) -> RoleView:
        check_name("roleName", name, 64)
        check_path(path)
        if not MIN_SESSION_SECONDS <= max_session_duration <= MAX_SESSION_CEILING:
            raise invalid_input(f"MaxSessionDuration must be {MIN_SESSION_SECONDS}..{MAX_SESSION_CEILING}")
        text = self._bound_trust_policy(trust_policy)
        with self._db.session() as s:
            if s.get(IamRole, name) is not None:
                raise already_exists(f"Role with name {name}")
            row = IamRole(name=name, role_id=random_id("AROA", 21),
                          arn=self._settings.arn("iam", f"role{path}{name}", regional=False), path=path,
                          trust_policy=text, description=description,
                          max_session_duration=max_session_duration, created_at=self._clock())
            s.add(row)
            s.flush()
            return _role(row)

    def get_role(self, name: str) -> RoleView:
        with self._db.reading() as s:
            row = s.get(IamRole, name)
            if row is None:
                raise no_such_entity(f"role with name {name}")
            return _role(row)

    def list_roles(self, path_prefix: str = "/") -> list[RoleView]:
        with self._db.reading() as s:
            rows = s.scalars(select(IamRole).order_by(IamRole.name)).all()
            return [_role(r) for r in rows if r.path.startswith(path_prefix)]

    def update_trust_policy(self, name: str, trust_policy: str) -> None:
        text = self._bound_trust_policy(trust_policy)
        with self._db.session() as s:
            row = s.get(IamRole, name)
            if row is None:
                raise no_such_entity(f"role with name {name}")
            row.trust_policy = text

    def delete_role(self, name: str) -> None:
        with self._db.session() as s:
            if s.get(IamRole, name) is None:
                raise no_such_entity(f"role with name {name}")
            attached = s.scalar(select(IamAttachment.policy_arn).where(
                IamAttachment.principal_kind == "role", IamAttachment.principal_name == name))
            inline = s.scalar(select(IamInlinePolicy.policy_name).where(
                IamInlinePolicy.principal_kind == "role", IamInlinePolicy.principal_name == name))
            if attached or inline:
                raise delete_conflict(f"Cannot delete role {name}: it still has policies")
            # Its sessions end with it (the foreign key cascades; explicit for SQLite
            # connections without foreign-key enforcement).
            s.execute(delete(StsSession).where(StsSession.role_name == name))
            s.execute(delete(IamRole).where(IamRole.name == name))

    def start_session(self, role: RoleView, session_name: str, duration: int | None) -> SessionCredentials:
        """Temporary credentials for `role` (the caller has already been authorized)."""
        if not 2 <= len(session_name) <= 64 or not set(session_name) <= _SESSION_NAME_CHARS:
            raise ApiError("ValidationError", "RoleSessionName must be 2 to 64 characters from letters, "
                           "digits and +=,.@_-", 400)
        seconds = duration if duration is not None else 3600
        if not MIN_SESSION_SECONDS <= seconds <= role.max_session_duration:
            raise invalid_input(f"DurationSeconds must be between {MIN_SESSION_SECONDS} and the role's "
                                f"MaxSessionDuration ({role.max_session_duration})")
        now = self._clock()
        key_id = random_id("ASIA", 20)
        secret = secrets.token_urlsafe(30)[:40]
        token = secrets.token_urlsafe(96)
        arn = self.session_arn(role.name, session_name)
        with self._db.session() as s:
            # Expired sessions are useless (SigV4 refuses them): sweep them on the way.
            s.execute(delete(StsSession).where(StsSession.expires_at < now))
            s.add(StsSession(access_key_id=key_id, role_name=role.name, session_name=session_name, arn=arn,
                             secret_sealed=self._sealer.seal(secret.encode(), secret_context(key_id)),
                             token_sha256=token_digest(token), expires_at=now + seconds, created_at=now))
        return SessionCredentials(key_id, secret, token, now + seconds, f"{role.role_id}:{session_name}", arn)

