"""Signing keys: software keys, and keys that live in a (SoftHSM2) token and never leave it.

The token keys are generated inside the token, non-extractable and sensitive; their
certificates are issued by a test CA for the public key read back from the token, and
every signature is checked with the same `codesign` functions devices rely on.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pkcs11 import exceptions as p11
from pkcs11.constants import Attribute, ObjectClass
from pkcs11.mechanisms import KeyType
from pkcs11.types import WrapMixin

from overair.core import codesign
from overair.core.codesign import PrivateKey
from overair.core.errors import MisuseError, PeerInputError, UnavailableError, VerificationFailed
from overair.server.signing.keys import (
    Pkcs11Key,
    Pkcs11Ref,
    SigningKey,
    SoftwareKey,
    key_algorithm,
    parse_pkcs11_uri,
)
from tests import softhsm_harness
from tests.pki_helpers import DAY, NOW, Issued, make_ca
from tests.softhsm_harness import USER_PIN, SoftHsm, SoftHsmMissing

EC_LABEL = "signer-ec-p256"
RSA_LABEL = "signer-rsa-2048"
SECRET_PIN = "s3cr3t-PIN-4711"
DIGEST = codesign.sha256(b"firmware image v1.2.3")


@pytest.fixture(scope="session")
def softhsm(softhsm: SoftHsm) -> SoftHsm:
    """The session's token (conftest.py) with this module's keys in it."""
    softhsm.generate_ec(EC_LABEL)
    softhsm.generate_rsa(RSA_LABEL)
    return softhsm


@pytest.fixture(scope="session")
def ca() -> Issued:
    return make_ca("test code-signing root")


def code_signing_cert(ca: Issued, public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
                      cn: str = "token firmware signer") -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY).not_valid_after(NOW + 30 * DAY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     key_cert_sign=False, crl_sign=False, encipher_only=False,
                                     decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                       critical=False)
        .sign(ca.key, hashes.SHA256())
    )


KeyFactory = Callable[[Pkcs11Ref, str], Pkcs11Key]


@pytest.fixture
def open_key(softhsm: SoftHsm) -> Iterator[KeyFactory]:
    """Make Pkcs11Keys that are closed at the end of the test: an open key holds the
    token's login, which is per process."""
    opened: list[Pkcs11Key] = []

    def make(ref: Pkcs11Ref, pin: str) -> Pkcs11Key:
        opened.append(Pkcs11Key(ref, pin))
        return opened[-1]

    yield make
    for key in opened:
        key.close()


def assert_signs_like_a_device_expects(key: SigningKey, ca: Issued) -> None:
    cert = code_signing_cert(ca, key.public_key())
    signature = key.sign_digest(DIGEST)
    codesign.verify_digest(cert, DIGEST, signature)
    codesign.verify_file_signature(DIGEST, signature, [cert], codesign.TrustPolicy((ca.cert,)),
                                   dt.datetime.now(dt.UTC))
    flipped = bytes([DIGEST[0] ^ 0x01]) + DIGEST[1:]
    with pytest.raises(VerificationFailed) as caught:
        codesign.verify_digest(cert, flipped, signature)
    assert caught.value.code == "BadSignature"


# Keys in the token ---------------------------------------------------------------------------

@pytest.mark.parametrize(("label", "algorithm"), [(EC_LABEL, "ECDSA-P256"), (RSA_LABEL, "RSA-2048")])
def test_token_key_signs_what_devices_verify(softhsm: SoftHsm, open_key: KeyFactory, ca: Issued,
                                              label: str, algorithm: str) -> None:
    key = open_key(softhsm.ref(label), USER_PIN)
    assert key.algorithm == algorithm
    assert_signs_like_a_device_expects(key, ca)


def test_token_key_reuses_its_session_across_threads(softhsm: SoftHsm, open_key: KeyFactory,
                                                      ca: Issued) -> None:
    ec_key, rsa_key = open_key(softhsm.ref(EC_LABEL), USER_PIN), open_key(softhsm.ref(RSA_LABEL), USER_PIN)
    certs = {ec_key: code_signing_cert(ca, ec_key.public_key()),
             rsa_key: code_signing_cert(ca, rsa_key.public_key())}
    digests = [codesign.sha256(f"image {n}".encode()) for n in range(24)]
    jobs = [(key, digest) for digest in digests for key in (ec_key, rsa_key)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        signatures = list(pool.map(lambda job: job[0].sign_digest(job[1]), jobs))
    for (key, digest), signature in zip(jobs, signatures, strict=True):
        codesign.verify_digest(certs[key], digest, signature)


def test_private_key_cannot_leave_the_token(softhsm: SoftHsm) -> None:
    with softhsm.session() as session:
        for label, secret in ((EC_LABEL, Attribute.VALUE), (RSA_LABEL, Attribute.PRIVATE_EXPONENT)):
            private = session.get_key(ObjectClass.PRIVATE_KEY, label=label)
            assert private[Attribute.EXTRACTABLE] is False
            assert private[Attribute.NEVER_EXTRACTABLE] is True
            assert private[Attribute.SENSITIVE] is True
            assert private[Attribute.ALWAYS_SENSITIVE] is True
            with pytest.raises(p11.AttributeSensitive):
                private[secret]
            # Extractable can only ever be turned off, never back on.
            with pytest.raises(p11.AttributeReadOnly):
                private[Attribute.EXTRACTABLE] = True
            # Nor can it be wrapped (exported encrypted) under a key we would know.
            wrapping = session.generate_key(KeyType.AES, 256, template={Attribute.WRAP: True})
            assert isinstance(wrapping, WrapMixin)
            with pytest.raises(p11.KeyUnextractable):
                wrapping.wrap_key(private)


def test_two_keys_on_one_token_share_the_login(softhsm: SoftHsm, open_key: KeyFactory,
                                                ca: Issued) -> None:
    # Login state is per process: closing one key must not log the other one out.
    first, second = open_key(softhsm.ref(EC_LABEL), USER_PIN), open_key(softhsm.ref(RSA_LABEL), USER_PIN)
    first.sign_digest(DIGEST)
    second.sign_digest(DIGEST)
    first.close()
    assert_signs_like_a_device_expects(second, ca)
    second.close()
    reopened = open_key(softhsm.ref(EC_LABEL), USER_PIN)
    assert_signs_like_a_device_expects(reopened, ca)


def test_module_named_through_a_symlink_is_the_same_module(softhsm: SoftHsm, open_key: KeyFactory,
                                                            ca: Issued, tmp_path: Path) -> None:
    link = tmp_path / "libsofthsm2.so"
    link.symlink_to(softhsm.module)
    direct = open_key(softhsm.ref(EC_LABEL), USER_PIN)
    via_link = open_key(Pkcs11Ref(str(link), softhsm.token_label, EC_LABEL), USER_PIN)
    assert direct.public_key().public_numbers() == via_link.public_key().public_numbers()
    assert_signs_like_a_device_expects(via_link, ca)


def test_lost_token_session_fails_one_signature_then_logs_in_again(softhsm: SoftHsm,
                                                                   open_key: KeyFactory, ca: Issued) -> None:
    first, second = open_key(softhsm.ref(EC_LABEL), USER_PIN), open_key(softhsm.ref(RSA_LABEL), USER_PIN)
    first.sign_digest(DIGEST)
    second.sign_digest(DIGEST)
    # Stand-in for an HSM restart: the shared session disappears under both keys.
    opened = first._opened
    assert opened is not None
    opened.login.session.close()
    with pytest.raises(UnavailableError) as caught:
        first.sign_digest(DIGEST)
    assert caught.value.code == "Pkcs11Error"
    assert_signs_like_a_device_expects(first, ca)
    assert_signs_like_a_device_expects(second, ca)


def test_closed_key_refuses_to_sign(softhsm: SoftHsm, open_key: KeyFactory) -> None:
    key = open_key(softhsm.ref(EC_LABEL), USER_PIN)
    key.sign_digest(DIGEST)
    key.close()
    with pytest.raises(MisuseError):
        key.sign_digest(DIGEST)


def test_digest_must_be_sha256_sized(softhsm: SoftHsm, open_key: KeyFactory) -> None:
    with pytest.raises(MisuseError):
        open_key(softhsm.ref(EC_LABEL), USER_PIN).sign_digest(b"firmware image, not its digest")


def test_wrong_pin_is_refused_without_echoing_it(softhsm: SoftHsm, open_key: KeyFactory) -> None:
    key = open_key(softhsm.ref(EC_LABEL), SECRET_PIN)
    with pytest.raises(PeerInputError) as caught:
        key.public_key()
    assert caught.value.code == "Pkcs11PinIncorrect"
    assert SECRET_PIN not in str(caught.value)
    # The failure sticks: retrying a wrong PIN counts against the token's retry limit.
    with pytest.raises(PeerInputError) as again:
        key.sign_digest(DIGEST)
    assert again.value.code == "Pkcs11PinIncorrect"
    assert SECRET_PIN not in repr(key)


def test_wrong_pin_is_refused_while_the_token_is_logged_in(softhsm: SoftHsm,
                                                          open_key: KeyFactory) -> None:
    open_key(softhsm.ref(EC_LABEL), USER_PIN).sign_digest(DIGEST)
    with pytest.raises(PeerInputError) as caught:
        open_key(softhsm.ref(RSA_LABEL), SECRET_PIN).sign_digest(DIGEST)
    assert caught.value.code == "Pkcs11PinIncorrect"
    assert SECRET_PIN not in str(caught.value)


def test_unknown_label_is_key_not_found(softhsm: SoftHsm, open_key: KeyFactory) -> None:
    with pytest.raises(PeerInputError) as caught:
        open_key(softhsm.ref("no-such-key"), USER_PIN).public_key()
    assert caught.value.code == "Pkcs11KeyNotFound"
    assert "no-such-key" in caught.value.message


def test_unknown_token_is_token_not_found(softhsm: SoftHsm, open_key: KeyFactory) -> None:
    with pytest.raises(UnavailableError) as caught:
        open_key(Pkcs11Ref(softhsm.module, "no-such-token", EC_LABEL), USER_PIN).public_key()
    assert caught.value.code == "Pkcs11TokenNotFound"


def test_unloadable_module_is_a_module_error(tmp_path: Path) -> None:
    not_a_module = tmp_path / "libnothing.so"
    not_a_module.write_bytes(b"not an ELF file")
    for path in (str(not_a_module), str(tmp_path / "missing.so")):
        with pytest.raises(UnavailableError) as caught:
            Pkcs11Key(Pkcs11Ref(path, "overair-test", EC_LABEL), USER_PIN).sign_digest(DIGEST)
        assert caught.value.code == "Pkcs11ModuleError"


def test_rsa_key_without_a_public_object_still_has_its_public_key(softhsm: SoftHsm,
                                                                  open_key: KeyFactory,
                                                                  ca: Issued) -> None:
    softhsm.generate_rsa("rsa-private-only")
    with softhsm.session() as session:
        session.get_key(ObjectClass.PUBLIC_KEY, label="rsa-private-only").destroy()
    assert_signs_like_a_device_expects(open_key(softhsm.ref("rsa-private-only"), USER_PIN), ca)


def test_ec_key_without_a_public_object_is_refused(softhsm: SoftHsm, open_key: KeyFactory) -> None:
    softhsm.generate_ec("ec-private-only")
    with softhsm.session() as session:
        session.get_key(ObjectClass.PUBLIC_KEY, label="ec-private-only").destroy()
    with pytest.raises(PeerInputError) as caught:
        open_key(softhsm.ref("ec-private-only"), USER_PIN).public_key()
    assert caught.value.code == "Pkcs11PublicKeyNotFound"


def test_public_object_of_another_key_is_caught_on_open(softhsm: SoftHsm,
                                                        open_key: KeyFactory) -> None:
    softhsm.generate_ec("ec-mismatched")
    softhsm.generate_ec("ec-other")
    with softhsm.session() as session:
        session.get_key(ObjectClass.PUBLIC_KEY, label="ec-mismatched").destroy()
        session.get_key(ObjectClass.PUBLIC_KEY, label="ec-other")[Attribute.LABEL] = "ec-mismatched"
    with pytest.raises(PeerInputError) as caught:
        open_key(softhsm.ref("ec-mismatched"), USER_PIN).sign_digest(DIGEST)
    assert caught.value.code == "Pkcs11KeyMismatch"


def test_p384_token_key(softhsm: SoftHsm, open_key: KeyFactory, ca: Issued) -> None:
    softhsm.generate_ec("ec-p384", curve="secp384r1")
    key = open_key(softhsm.ref("ec-p384"), USER_PIN)
    assert key.algorithm == "ECDSA-P384"
    assert_signs_like_a_device_expects(key, ca)


# PKCS#11 URIs and references -----------------------------------------------------------------

MODULE = "/usr/lib/softhsm/libsofthsm2.so"


def test_uri_parses_into_ref_and_pin() -> None:
    ref, pin = parse_pkcs11_uri(f"pkcs11:token=overair;object=signer-1;type=private"
                                f"?module-path={MODULE}&pin-value=1234")
    assert ref == Pkcs11Ref(MODULE, "overair", "signer-1")
    assert pin == "1234"


def test_uri_is_percent_decoded() -> None:
    ref, pin = parse_pkcs11_uri("PKCS11:token=Fleet%20HSM;object=signer%3Bv2%25"
                                "?module-path=/opt/hsm%20vendor/lib.so&pin-value=p%26ss%3Dw%C3%B6rd")
    assert ref == Pkcs11Ref("/opt/hsm vendor/lib.so", "Fleet HSM", "signer;v2%")
    assert pin == "p&ss=wörd"


@pytest.mark.parametrize("ref", [
    Pkcs11Ref(MODULE, "overair", "signer-1"),
    Pkcs11Ref("/opt/hsm vendor/lib?.so", "Fleet HSM; prod", "signer=1&2 #3 %41 ü"),
])
@pytest.mark.parametrize("pin", ["1234", "p&ss=w;rd ?# %20 ü"])
def test_uri_round_trips(ref: Pkcs11Ref, pin: str) -> None:
    assert parse_pkcs11_uri(ref.to_uri(pin)) == (ref, pin)
    assert "pin-value" not in ref.to_uri()
    assert "pin-value" not in str(ref)


@pytest.mark.parametrize(("uri", "names"), [
    (f"pkcs11:object=k;type=private?module-path={MODULE}&pin-value={SECRET_PIN}", ["token"]),
    (f"pkcs11:token=t?module-path={MODULE}&pin-value={SECRET_PIN}", ["object"]),
    (f"pkcs11:token=t;object=k?pin-value={SECRET_PIN}", ["module-path"]),
    (f"pkcs11:token=t;object=k?module-path={MODULE}", ["pin-value"]),
    (f"pkcs11:token=;object=k?module-path={MODULE}&pin-value={SECRET_PIN}", ["token"]),
    ("pkcs11:", ["token", "object", "module-path", "pin-value"]),
])
def test_uri_missing_parts_are_named(uri: str, names: list[str]) -> None:
    with pytest.raises(PeerInputError) as caught:
        parse_pkcs11_uri(uri)
    assert caught.value.code == "InvalidPkcs11Uri"
    assert f"missing {', '.join(names)}" in caught.value.message
    assert SECRET_PIN not in str(caught.value)


@pytest.mark.parametrize(("uri", "says"), [
    (f"pkcs12:token=t;object=k?module-path={MODULE}&pin-value={SECRET_PIN}", "pkcs11:"),
    (f"token=t;object=k?module-path={MODULE}&pin-value={SECRET_PIN}", "pkcs11:"),
    (f"pkcs11:token=t;object=k;type=public?module-path={MODULE}&pin-value={SECRET_PIN}", "type"),
    (f"pkcs11:token=t;object=k;id=%01?module-path={MODULE}&pin-value={SECRET_PIN}", "id"),
    (f"pkcs11:token=t;object=k?module-path={MODULE}&pin-source=file:/pin&pin-value={SECRET_PIN}",
     "pin-source"),
    (f"pkcs11:token=t;object=k;object=j?module-path={MODULE}&pin-value={SECRET_PIN}", "more than once"),
    (f"pkcs11:token=t;object=k?module-path={MODULE}&pin-value={SECRET_PIN}%zz", "percent"),
    (f"pkcs11:token=t;object=k?module-path={MODULE}&pin-value={SECRET_PIN}%ff", "UTF-8"),
    (f"pkcs11:token=t;object=k?module-path=libsofthsm2.so&pin-value={SECRET_PIN}", "absolute"),
    (f"pkcs11:token=t;object=k?module-path={MODULE}&{SECRET_PIN}", "name=value"),
    (f"pkcs11:token=t;object=k?module-path={MODULE}&pin-value={SECRET_PIN}#frag", "fragment"),
    (f"pkcs11:token=t;object=k;pin-value={SECRET_PIN}?module-path={MODULE}", "pin-value"),
])
def test_bad_uris_are_refused_without_echoing_the_pin(uri: str, says: str) -> None:
    with pytest.raises(PeerInputError) as caught:
        parse_pkcs11_uri(uri)
    assert caught.value.code == "InvalidPkcs11Uri"
    assert says in caught.value.message
    assert SECRET_PIN not in str(caught.value)


def test_ref_json_round_trip() -> None:
    ref = Pkcs11Ref(MODULE, "overair", "signer-1")
    assert Pkcs11Ref.from_json(ref.to_json()) == ref
    with pytest.raises(PeerInputError) as caught:
        Pkcs11Ref.from_json({"module": MODULE, "token": "overair"})
    assert caught.value.code == "InvalidPkcs11Ref"
    assert "label" in caught.value.message


# Software keys and algorithm names -----------------------------------------------------------

@pytest.mark.parametrize(("make", "algorithm"), [
    (lambda: ec.generate_private_key(ec.SECP256R1()), "ECDSA-P256"),
    (lambda: ec.generate_private_key(ec.SECP384R1()), "ECDSA-P384"),
    (lambda: rsa.generate_private_key(65537, 2048), "RSA-2048"),
])
def test_software_key_signs_what_devices_verify(make: Callable[[], PrivateKey], algorithm: str,
                                                ca: Issued) -> None:
    key = SoftwareKey(make())
    assert key.algorithm == algorithm
    assert_signs_like_a_device_expects(key, ca)
    with pytest.raises(MisuseError):
        key.sign_digest(DIGEST[:20])


def test_key_algorithm_names_and_leaves_policy_to_callers() -> None:
    assert key_algorithm(ec.generate_private_key(ec.SECP521R1()).public_key()) == "ECDSA-P521"
    assert key_algorithm(rsa.generate_private_key(65537, 1024).public_key()) == "RSA-1024"
    assert key_algorithm(rsa.generate_private_key(65537, 3072).public_key()) == "RSA-3072"


@pytest.mark.parametrize("public_key", [
    ed25519.Ed25519PrivateKey.generate().public_key(),
    ec.generate_private_key(ec.SECP256K1()).public_key(),
])
def test_key_algorithm_rejects_other_keys(public_key: object) -> None:
    with pytest.raises(PeerInputError) as caught:
        key_algorithm(public_key)
    assert caught.value.code == "UnsupportedKey"


def test_missing_softhsm_fails_with_instructions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    monkeypatch.setattr(os, "access", lambda _path, _mode: False)
    with pytest.raises(SoftHsmMissing) as caught:
        softhsm_harness.softhsm2_util()
    assert "scripts/dev test" in str(caught.value)
    assert "apt-get install softhsm2" in str(caught.value)
