"""Threat O2 (a revoked signer keeps being trusted): the signed revocation list.

First core.revocation (what the server signs and every agent checks), then the agent's
side of it that needs no broker: the `[trust] revocation_signer` key, the signer
certificate it names, and the file the agent keeps its list in. Threat ids in test
names: O2 revoked signer, N3 replay.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from overair.agent.config import ConfigError, load_config
from overair.agent.runtime import (
    REVOCATIONS_FILE,
    RevocationStore,
    load_revocation_signer,
    verify_revocations,
)
from overair.core.errors import DecodeError, VerificationFailed
from overair.core.revocation import (
    MAX_ENVELOPE_BYTES,
    RevocationList,
    encode_body,
    merged_serials,
    sign_list,
    verify_list,
)
from tests.pki_helpers import Issued, make_ca

LIST = RevocationList(sequence=3, issued_at=1_700_000_000, serials=frozenset({0x1F, 0xABCDEF0123456789}))


@pytest.fixture(scope="module")
def signer() -> Issued:
    return make_ca("overair revocation signer")


def _ec(issued: Issued) -> ec.EllipticCurvePrivateKey:
    """Revocation lists are signed with ECDSA only; make_ca's default key is P-256."""
    assert isinstance(issued.key, ec.EllipticCurvePrivateKey)
    return issued.key


def _envelope(body: bytes, signature: bytes) -> bytes:
    return json.dumps({"list": base64.b64encode(body).decode(),
                       "signature": base64.b64encode(signature).decode()}).encode()


def _signed_body(body: bytes, signer: Issued) -> bytes:
    """An envelope around any body, correctly signed: decoding is tested past the signature."""
    return _envelope(body, _ec(signer).sign(body, ec.ECDSA(hashes.SHA256())))


# --- core.revocation ------------------------------------------------------------------------

def test_o2_signed_list_verifies_and_round_trips(signer: Issued) -> None:
    assert verify_list(sign_list(LIST, _ec(signer)), signer.cert) == LIST


def test_o2_body_is_compact_json_with_hex_serials() -> None:
    assert json.loads(encode_body(LIST)) == {"format": 1, "sequence": 3, "issued_at": 1_700_000_000,
                                             "serials": ["1f", "abcdef0123456789"]}


def test_o2_tampered_list_is_refused(signer: Issued) -> None:
    envelope = json.loads(sign_list(LIST, _ec(signer)))
    shorter = RevocationList(LIST.sequence, LIST.issued_at, frozenset({0x1F}))  # one revocation removed
    envelope["list"] = base64.b64encode(encode_body(shorter)).decode()
    with pytest.raises(VerificationFailed) as info:
        verify_list(json.dumps(envelope).encode(), signer.cert)
    assert info.value.code == "BadSignature"


def test_o2_bad_signature_is_refused(signer: Issued) -> None:
    envelope = _envelope(encode_body(LIST), b"\x30\x06\x02\x01\x01\x02\x01\x01")
    with pytest.raises(VerificationFailed) as info:
        verify_list(envelope, signer.cert)
    assert info.value.code == "BadSignature"


def test_o2_list_signed_by_another_key_is_refused(signer: Issued) -> None:
    impostor = make_ca("overair revocation signer")  # same name, other key
    with pytest.raises(VerificationFailed) as info:
        verify_list(sign_list(LIST, _ec(impostor)), signer.cert)
    assert info.value.code == "BadSignature"


def test_o2_signer_without_an_ec_key_is_refused(signer: Issued) -> None:
    with pytest.raises(VerificationFailed) as info:
        verify_list(sign_list(LIST, _ec(signer)), _rsa_cert())
    assert info.value.code == "BadSignerKey"


@pytest.mark.parametrize("envelope", [
    b"", b"not json", b"[]", b"42", b'{"list": "e30="}', b'{"signature": "MEU="}',
    b'{"list": "not base64!", "signature": "MEU="}', b'{"list": 5, "signature": "MEU="}',
    b"\xff\xfe", b" " * (MAX_ENVELOPE_BYTES + 1),
])
def test_o2_malformed_envelope_is_a_decode_error(signer: Issued, envelope: bytes) -> None:
    with pytest.raises(DecodeError):
        verify_list(envelope, signer.cert)


@pytest.mark.parametrize("body", [
    b"not json", b"[]",
    b'{"format": 2, "sequence": 1, "issued_at": 1, "serials": []}',
    b'{"format": 1, "issued_at": 1, "serials": []}',
    b'{"format": 1, "sequence": "1", "issued_at": 1, "serials": []}',
    b'{"format": 1, "sequence": 1, "issued_at": 1, "serials": "1f"}',
    b'{"format": 1, "sequence": 1, "issued_at": 1, "serials": ["xyz"]}',
    b'{"format": 1, "sequence": 1, "issued_at": 1, "serials": [31]}',
])
def test_o2_malformed_signed_body_is_a_decode_error(signer: Issued, body: bytes) -> None:
    with pytest.raises(DecodeError):
        verify_list(_signed_body(body, signer), signer.cert)


def test_o2_deeply_nested_envelope_is_a_decode_error_for_the_agent(signer: Issued) -> None:
    """json recurses on nesting; the agent must see a malformed list, not a crash."""
    with pytest.raises(DecodeError):
        verify_revocations(b"[" * 100_000, signer.cert)


def test_o2_static_and_held_serials_are_merged() -> None:
    assert merged_serials({5}, LIST) == {5, 0x1F, 0xABCDEF0123456789}
    assert merged_serials({5}, None) == {5}


# --- the agent: config key, signer certificate, persisted list ---------------------------------

BUNDLE = """thing_name = "dev-1"
[mqtt]
host = "127.0.0.1"
port = 8883
client_cert = "device.crt"
client_key = "device.key"
ca_file = "root-ca.pem"
[trust]
code_signing_roots = "code-signing-root.pem"
{extra}
[storage]
data_dir = "state"
"""


def _bundle(tmp_path: Path, extra: str = "") -> Path:
    for name in ("device.crt", "device.key", "root-ca.pem", "code-signing-root.pem"):
        (tmp_path / name).write_text("x")
    (tmp_path / "agent.toml").write_text(BUNDLE.format(extra=extra))
    return tmp_path


def _rsa_cert() -> x509.Certificate:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rsa signer")])
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))


def test_o2_revocation_signer_is_optional(tmp_path: Path) -> None:
    config = load_config(_bundle(tmp_path))
    assert config.trust.revocation_signer is None
    assert load_revocation_signer(config) is None


def test_o2_revocation_signer_path_is_relative_to_the_bundle(tmp_path: Path, signer: Issued) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "revocation-signer.pem").write_bytes(signer.cert_pem)
    config = load_config(_bundle(tmp_path, 'revocation_signer = "keys/revocation-signer.pem"'))
    assert config.trust.revocation_signer == tmp_path / "keys" / "revocation-signer.pem"
    assert load_revocation_signer(config) == signer.cert


@pytest.mark.parametrize(("value", "problem"), [
    ('"absent.pem"', "does not exist"), ('""', "must not be empty"), ("7", "must be a string")])
def test_o2_bad_revocation_signer_key_names_the_key(tmp_path: Path, value: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=rf"\[trust\] revocation_signer.*{problem}"):
        load_config(_bundle(tmp_path, f"revocation_signer = {value}"))


@pytest.mark.parametrize(("pem", "problem"), [
    (lambda _signer: b"not a certificate", "not a PEM certificate"),
    (lambda _signer: _rsa_cert().public_bytes(Encoding.PEM), "must have an EC key"),
    (lambda signer: signer.cert_pem * 2, "exactly one certificate"),
], ids=["not PEM", "RSA key", "two certificates"])
def test_o2_unusable_revocation_signer_fails_at_start(tmp_path: Path, signer: Issued,
                                                     pem: Callable[[Issued], bytes], problem: str) -> None:
    (tmp_path / "revocation-signer.pem").write_bytes(pem(signer))
    config = load_config(_bundle(tmp_path, 'revocation_signer = "revocation-signer.pem"'))
    with pytest.raises(ConfigError, match=problem):
        load_revocation_signer(config)


def test_o2_store_keeps_the_signed_envelope_and_verifies_it_on_load(tmp_path: Path, signer: Issued) -> None:
    store = RevocationStore(tmp_path / "state")
    assert store.load(signer.cert) is None
    envelope = sign_list(LIST, _ec(signer))
    store.save(envelope)
    assert store.path == tmp_path / "state" / REVOCATIONS_FILE
    assert store.path.read_bytes() == envelope  # exactly what the server signed
    assert store.load(signer.cert) == LIST
    assert not [p for p in store.path.parent.iterdir() if p != store.path]  # no temporary left behind


def test_o2_store_edited_on_disk_does_not_verify(tmp_path: Path, signer: Issued) -> None:
    store = RevocationStore(tmp_path)
    store.save(sign_list(LIST, _ec(signer)))
    edited = json.loads(store.path.read_bytes())
    edited["list"] = base64.b64encode(encode_body(RevocationList(LIST.sequence, 0, frozenset()))).decode()
    store.path.write_text(json.dumps(edited))
    with pytest.raises(VerificationFailed):
        store.load(signer.cert)
