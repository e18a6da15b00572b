"""Users, groups and access keys. Secrets are generated here, shown once, stored sealed.

Credential lookup (`lookup`) serves the SigV4 check of every request: long-term keys of
users and the temporary keys of role sessions (server/iam/roles.py) alike.
"""

from __future__ import annotations

import hashlib
import secrets
import string
from dataclasses import dataclass

from sqlalchemy import delete, select

from overair.server.api.contract import Credential
from overair.server.clock import Clock
from overair.server.iam.errors import (
    already_exists,
    check_name,
    check_path,
    delete_conflict,
    invalid_input,
    limit_exceeded,
    no_such_entity,
)
from overair.server.sealing import Sealer
from overair.server.settings import Settings
from overair.server.storage.db import Database
from overair.server.storage.schema import (
    AccessKey,
    IamAttachment,
    IamGroup,
    IamGroupMember,
    IamInlinePolicy,
    IamUser,
    StsSession,
)

_ID_ALPHABET = string.ascii_uppercase + string.digits
MAX_KEYS_PER_USER = 2  # as AWS
KEY_STATUSES = ("Active", "Inactive")


def random_id(prefix: str, length: int) -> str:
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(length - len(prefix)))


def secret_context(access_key_id: str) -> str:
    """The sealing context binds a sealed secret to its key id (no swapping of rows)."""
    return f"access-key-secret:{access_key_id}"


@dataclass(frozen=True, slots=True)
class UserView:
    name: str
    user_id: str
    arn: str
    path: str
    created_at: float


@dataclass(frozen=True, slots=True)
class GroupView:
    name: str
    group_id: str
    arn: str
    path: str
    created_at: float


@dataclass(frozen=True, slots=True)
class KeyView:
    access_key_id: str
    user_name: str
    status: str
    created_at: float


def _user(row: IamUser) -> UserView:
    return UserView(row.name, row.user_id, row.arn, row.path, row.created_at)


def _group(row: IamGroup) -> GroupView:
    return GroupView(row.name, row.group_id, row.arn, row.path, row.created_at)


class IdentityStore:
    def __init__(self, db: Database, sealer: Sealer, settings: Settings, clock: Clock) -> None:
        self._db = db
        self._sealer = sealer
        self._settings = settings
        self._clock = clock

    def _arn(self, kind: str, path: str, name: str) -> str:
        return self._settings.arn("iam", f"{kind}{path}{name}", regional=False)

    def user_arn(self, name: str) -> str:
        return self._arn("user", "/", name)

    # Users ---------------------------------------------------------------------------
    def create_user(self, name: str, path: str = "/") -> UserView:
        check_name("userName", name, 64)
        check_path(path)
        with self._db.session() as s:
            if s.get(IamUser, name) is not None:
                raise already_exists(f"User with name {name}")
            row = IamUser(name=name, user_id=random_id("AIDA", 21), arn=self._arn("user", path, name),
                          path=path, created_at=self._clock())
            s.add(row)
            s.flush()
            return _user(row)

    def get_user(self, name: str) -> UserView:
        with self._db.reading() as s:
            row = s.get(IamUser, name)
            if row is None:
                raise no_such_entity(f"user with name {name}")
            return _user(row)

    def list_users(self, path_prefix: str = "/") -> list[UserView]:
        with self._db.reading() as s:
            rows = s.scalars(select(IamUser).order_by(IamUser.name)).all()
            return [_user(r) for r in rows if r.path.startswith(path_prefix)]

    def delete_user(self, name: str) -> None:
        """As AWS: refused while the user still has keys, policies or groups."""
        with self._db.session() as s:
            if s.get(IamUser, name) is None:
                raise no_such_entity(f"user with name {name}")
            held = [
                ("access keys", s.scalar(select(AccessKey.access_key_id).where(AccessKey.user_name == name))),
                ("attached policies", s.scalar(select(IamAttachment.policy_arn).where(
                    IamAttachment.principal_kind == "user", IamAttachment.principal_name == name))),
                ("inline policies", s.scalar(select(IamInlinePolicy.policy_name).where(
                    IamInlinePolicy.principal_kind == "user", IamInlinePolicy.principal_name == name))),
                ("group memberships", s.scalar(select(IamGroupMember.group_name).where(
                    IamGroupMember.user_name == name))),
            ]
            blocking = [what for what, first in held if first is not None]
            if blocking:
                raise delete_conflict(f"Cannot delete user {name}: it still has {', '.join(blocking)}")
            s.execute(delete(IamUser).where(IamUser.name == name))

    # Access keys ---------------------------------------------------------------------
    def create_access_key(self, user_name: str) -> tuple[KeyView, str]:
        """Returns the key and its secret; the secret is never retrievable again."""
        key_id = random_id("AKIA", 20)
        secret = secrets.token_urlsafe(30)[:40]
        with self._db.session() as s:
            if s.get(IamUser, user_name) is None:
                raise no_such_entity(f"user with name {user_name}")
            count = len(s.scalars(select(AccessKey.access_key_id)
                                  .where(AccessKey.user_name == user_name)).all())
            if count >= MAX_KEYS_PER_USER:
                raise limit_exceeded(f"Cannot exceed quota for AccessKeysPerUser: {MAX_KEYS_PER_USER}")
            row = AccessKey(access_key_id=key_id, user_name=user_name,
                            secret_sealed=self._sealer.seal(secret.encode(), secret_context(key_id)),
                            status="Active", created_at=self._clock())
            s.add(row)
            return KeyView(key_id, user_name, "Active", row.created_at), secret

    def list_access_keys(self, user_name: str) -> list[KeyView]:
        with self._db.reading() as s:
            if s.get(IamUser, user_name) is None:
                raise no_such_entity(f"user with name {user_name}")
            rows = s.scalars(select(AccessKey).where(AccessKey.user_name == user_name)
                             .order_by(AccessKey.created_at)).all()
            return [KeyView(r.access_key_id, r.user_name, r.status, r.created_at) for r in rows]

    def update_access_key(self, user_name: str, key_id: str, status: str) -> None:
        if status not in KEY_STATUSES:
            raise invalid_input(f"Status must be one of {', '.join(KEY_STATUSES)}")
        with self._db.session() as s:
            row = s.get(AccessKey, key_id)
            if row is None or row.user_name != user_name:
                raise no_such_entity(f"Access Key with id {key_id}")
            row.status = status

    def delete_access_key(self, user_name: str, key_id: str) -> None:
        with self._db.session() as s:
            row = s.get(AccessKey, key_id)
            if row is None or row.user_name != user_name:
                raise no_such_entity(f"Access Key with id {key_id}")
            s.delete(row)

    def lookup(self, access_key_id: str) -> Credential | None:
        with self._db.reading() as s:
            row = s.execute(select(AccessKey, IamUser).join(IamUser)
                            .where(AccessKey.access_key_id == access_key_id)).first()
            if row is not None:
                key, user = row
                secret = self._sealer.open(key.secret_sealed, secret_context(key.access_key_id))
                return Credential(access_key_id=key.access_key_id, secret_access_key=secret.decode(),
                                  principal_name=user.name, principal_arn=user.arn,
                                  active=key.status == "Active")
            session = s.get(StsSession, access_key_id)
            if session is None:
                return None
            secret = self._sealer.open(session.secret_sealed, secret_context(access_key_id))
            return Credential(access_key_id=access_key_id, secret_access_key=secret.decode(),
                              principal_name=session.role_name, principal_arn=session.arn, active=True,
                              principal_kind="role", session_token_sha256=session.token_sha256,
                              expires_at=session.expires_at)

    # Groups --------------------------------------------------------------------------
    def create_group(self, name: str, path: str = "/") -> GroupView:
        check_name("groupName", name, 128)
        check_path(path)
        with self._db.session() as s:
            if s.get(IamGroup, name) is not None:
                raise already_exists(f"Group with name {name}")
            row = IamGroup(name=name, group_id=random_id("AGPA", 21), arn=self._arn("group", path, name),
                           path=path, created_at=self._clock())
            s.add(row)
            s.flush()
            return _group(row)

    def get_group(self, name: str) -> tuple[GroupView, list[UserView]]:
        with self._db.reading() as s:
            row = s.get(IamGroup, name)
            if row is None:
                raise no_such_entity(f"group with name {name}")
            users = s.scalars(select(IamUser).join(IamGroupMember, IamGroupMember.user_name == IamUser.name)
                              .where(IamGroupMember.group_name == name).order_by(IamUser.name)).all()
            return _group(row), [_user(u) for u in users]

    def list_groups(self, path_prefix: str = "/") -> list[GroupView]:
        with self._db.reading() as s:
            rows = s.scalars(select(IamGroup).order_by(IamGroup.name)).all()
            return [_group(r) for r in rows if r.path.startswith(path_prefix)]

    def groups_for_user(self, user_name: str) -> list[GroupView]:
        with self._db.reading() as s:
            if s.get(IamUser, user_name) is None:
                raise no_such_entity(f"user with name {user_name}")
            rows = s.scalars(select(IamGroup).join(IamGroupMember, IamGroupMember.group_name == IamGroup.name)
                             .where(IamGroupMember.user_name == user_name).order_by(IamGroup.name)).all()
            return [_group(r) for r in rows]

    def delete_group(self, name: str) -> None:
        with self._db.session() as s:
            if s.get(IamGroup, name) is None:
                raise no_such_entity(f"group with name {name}")
            attached = s.scalar(select(IamAttachment.policy_arn).where(
                IamAttachment.principal_kind == "group", IamAttachment.principal_name == name))
            inline = s.scalar(select(IamInlinePolicy.policy_name).where(
                IamInlinePolicy.principal_kind == "group", IamInlinePolicy.principal_name == name))
            member = s.scalar(select(IamGroupMember.user_name).where(IamGroupMember.group_name == name))
            if attached or inline or member:
                raise delete_conflict(f"Cannot delete group {name}: it still has policies or members")
            s.execute(delete(IamGroup).where(IamGroup.name == name))

    def add_user_to_group(self, group: str, user: str) -> None:
        with self._db.session() as s:
            if s.get(IamGroup, group) is None:
                raise no_such_entity(f"group with name {group}")
            if s.get(IamUser, user) is None:
                raise no_such_entity(f"user with name {user}")
            if s.get(IamGroupMember, (group, user)) is None:
                s.add(IamGroupMember(group_name=group, user_name=user))

    def remove_user_from_group(self, group: str, user: str) -> None:
        with self._db.session() as s:
            row = s.get(IamGroupMember, (group, user))
            if row is None:
                raise no_such_entity(f"user {user} in group {group}")
            s.delete(row)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
