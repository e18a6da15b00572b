"""Users and access keys. Secrets are generated here, shown once, stored sealed."""

from __future__ import annotations

import secrets
import string

from sqlalchemy import select

from overair.core.errors import PeerInputError
from overair.server.api.contract import Credential
from overair.server.clock import Clock
from overair.server.sealing import Sealer
from overair.server.settings import Settings
from overair.server.storage.db import Database
from overair.server.storage.schema import AccessKey, IamUser

_KEY_ALPHABET = string.ascii_uppercase + string.digits


def _secret_context(access_key_id: str) -> str:
    return f"access-key-secret:{access_key_id}"


class IdentityStore:
    def __init__(self, db: Database, sealer: Sealer, settings: Settings, clock: Clock) -> None:
        self._db = db
        self._sealer = sealer
        self._settings = settings
        self._clock = clock

    def user_arn(self, name: str) -> str:
        return self._settings.arn("iam", f"user/{name}", regional=False)

    def create_user(self, name: str) -> str:
        with self._db.session() as s:
            if s.get(IamUser, name) is not None:
                raise PeerInputError(f"user {name} already exists", code="EntityAlreadyExists")
            user_id = "AIDA" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(17))
            s.add(IamUser(name=name, user_id=user_id, arn=self.user_arn(name), created_at=self._clock()))
        return self.user_arn(name)

    def create_access_key(self, user_name: str) -> tuple[str, str]:
        """Returns (access key id, secret); the secret is never retrievable again."""
        key_id = "AKIA" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(16))
        secret = secrets.token_urlsafe(30)[:40]
        with self._db.session() as s:
            if s.get(IamUser, user_name) is None:
                raise PeerInputError(f"user {user_name} does not exist", code="NoSuchEntity")
            s.add(AccessKey(access_key_id=key_id, user_name=user_name,
                            secret_sealed=self._sealer.seal(secret.encode(), _secret_context(key_id)),
                            status="Active", created_at=self._clock()))
        return key_id, secret

    def lookup(self, access_key_id: str) -> Credential | None:
        with self._db.reading() as s:
            row = s.execute(select(AccessKey, IamUser).join(IamUser)
                            .where(AccessKey.access_key_id == access_key_id)).first()
            if row is None:
                return None
            key, user = row
            secret = self._sealer.open(key.secret_sealed, _secret_context(key.access_key_id))
            return Credential(access_key_id=key.access_key_id, secret_access_key=secret.decode(),
                              user_name=user.name, principal_arn=user.arn,
                              active=key.status == "Active")
