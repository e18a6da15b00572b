"""Sealing secrets at rest (threat O2): AES-256-GCM under the server's master key.

Access-key secrets and code-signing private keys are stored only sealed. The
associated data binds each sealed value to its purpose and owner, so a sealed value
copied into another row or column fails to open instead of being misused.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from overair.core.errors import MisuseError, VerificationFailed
from overair.server.files import write_private

MASTER_KEY_ENV = "OVERAIR_MASTER_KEY"
_VERSION = b"\x01"
_NONCE_BYTES = 12


class Sealer:
    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != 32:
            raise MisuseError("the master key must be 32 bytes")
        self._aead = AESGCM(master_key)

    @classmethod
    def load(cls, path: Path) -> Sealer:
        """The master key from the environment (`OVERAIR_MASTER_KEY`, base64 of 32
        bytes, e.g. from a secret manager or systemd credentials, so that it need not
        sit in the data directory), else from the key file."""
        encoded = os.environ.get(MASTER_KEY_ENV)
        if encoded:
            try:
                key = base64.b64decode(encoded, validate=True)
            except binascii.Error as exc:
                raise MisuseError(f"{MASTER_KEY_ENV} is not valid base64") from exc
            return cls(key)
        return cls.from_file(path)

    @classmethod
    def from_file(cls, path: Path) -> Sealer:
        try:
            return cls(path.read_bytes())
        except FileNotFoundError as exc:
            raise MisuseError(f"master key file {path} is missing (run `overair init`)") from exc

    def seal(self, plaintext: bytes, context: str) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, context.encode())

    def open(self, sealed: bytes, context: str) -> bytes:
        if sealed[:1] != _VERSION or len(sealed) < 1 + _NONCE_BYTES + 16:
            raise VerificationFailed("sealed value has an unknown format", code="BadSealedValue")
        nonce = sealed[1:1 + _NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, sealed[1 + _NONCE_BYTES:], context.encode())
        except InvalidTag as exc:
            raise VerificationFailed("sealed value failed authentication", code="BadSealedValue") from exc


def create_master_key(path: Path) -> None:
    """A new master key file, unless the key comes from the environment."""
    if not os.environ.get(MASTER_KEY_ENV):
        write_private(path, AESGCM.generate_key(bit_length=256))
