"""Sealing secrets at rest (threat O2): AES-256-GCM under the server's master key.

Access-key secrets and code-signing private keys are stored only sealed. The
associated data binds each sealed value to its purpose and owner, so a sealed value
copied into another row or column fails to open instead of being misused.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from overair.core.errors import MisuseError, VerificationFailed
from overair.server.files import write_private

_VERSION = b"\x01"
_NONCE_BYTES = 12


class Sealer:
    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != 32:
            raise MisuseError("the master key must be 32 bytes")
        self._aead = AESGCM(master_key)

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
    write_private(path, AESGCM.generate_key(bit_length=256))
