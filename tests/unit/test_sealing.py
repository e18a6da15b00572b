"""Sealing secrets at rest (threat O2): AES-256-GCM, bound to the value's purpose."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from overair.core.errors import MisuseError, VerificationFailed
from overair.server.sealing import MASTER_KEY_ENV, Sealer, create_master_key


def test_sealed_value_opens_only_in_its_own_context(tmp_path: Path) -> None:
    create_master_key(tmp_path / "master.key")
    sealer = Sealer.load(tmp_path / "master.key")
    sealed = sealer.seal(b"signing key bytes", "signing-key:arn-1")
    assert b"signing key bytes" not in sealed
    assert sealer.open(sealed, "signing-key:arn-1") == b"signing key bytes"
    with pytest.raises(VerificationFailed):
        sealer.open(sealed, "signing-key:arn-2")  # copied into another row: refused
    tampered = bytearray(sealed)
    tampered[-1] ^= 1
    with pytest.raises(VerificationFailed):
        sealer.open(bytes(tampered), "signing-key:arn-1")


def test_o2_master_key_file_is_private(tmp_path: Path) -> None:
    create_master_key(tmp_path / "master.key")
    assert (tmp_path / "master.key").stat().st_mode & 0o077 == 0


def test_master_key_can_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = os.urandom(32)
    monkeypatch.setenv(MASTER_KEY_ENV, base64.b64encode(key).decode())
    create_master_key(tmp_path / "master.key")
    assert not (tmp_path / "master.key").exists()  # nothing written to the data directory
    sealed = Sealer.load(tmp_path / "master.key").seal(b"x", "c")
    assert Sealer(key).open(sealed, "c") == b"x"
    monkeypatch.setenv(MASTER_KEY_ENV, "not base64!")
    with pytest.raises(MisuseError):
        Sealer.load(tmp_path / "master.key")
    monkeypatch.setenv(MASTER_KEY_ENV, base64.b64encode(b"short").decode())
    with pytest.raises(MisuseError):
        Sealer.load(tmp_path / "master.key")


def test_missing_master_key_file_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MASTER_KEY_ENV, raising=False)
    with pytest.raises(MisuseError, match="overair init"):
        Sealer.load(tmp_path / "nothing.key")
