"""Threat N2 (mis-signed update): every way a signature or signer can be wrong is refused."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from overair.core import codesign
from overair.core.errors import VerificationFailed
from overair.server import pki
from tests.pki_chain import signer_chain
from tests.pki_helpers import NOW as REAL_NOW
from tests.pki_helpers import make_ca, sign_file

NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
FILE = b"firmware image bytes" * 100


@pytest.fixture(scope="module")
def root() -> pki.Issued:
    return pki.make_root_ca("test code-signing root", NOW)


@pytest.fixture(scope="module")
def signer(root: pki.Issued) -> pki.Issued:
    return pki.issue_code_signing_cert(root, "signer", NOW)


def _sign(issued: pki.Issued, data: bytes = FILE) -> bytes:
    return codesign.sign_digest(issued.key, codesign.sha256(data))


def _verify(sig: bytes, chain: list[pki.Issued], roots: list[pki.Issued], *, data: bytes = FILE,
            revoked: frozenset[int] = frozenset(), now: dt.datetime = NOW) -> None:
    trust = codesign.TrustPolicy(tuple(r.cert for r in roots), revoked)
    codesign.verify_file_signature(codesign.sha256(data), sig, [c.cert for c in chain], trust, now)


def test_n2_good_signature_verifies(root: pki.Issued, signer: pki.Issued) -> None:
    _verify(_sign(signer), [signer], [root])


def test_n2_flipped_byte_is_refused(root: pki.Issued, signer: pki.Issued) -> None:
    tampered = bytearray(FILE)
    tampered[100] ^= 0x01
    with pytest.raises(VerificationFailed) as err:
        _verify(_sign(signer), [signer], [root], data=bytes(tampered))
    assert err.value.code == "BadSignature"


def test_n2_wrong_key_is_refused(root: pki.Issued, signer: pki.Issued) -> None:
    other = pki.issue_code_signing_cert(root, "other signer", NOW)
    with pytest.raises(VerificationFailed) as err:
        _verify(_sign(other), [signer], [root])
    assert err.value.code == "BadSignature"


def test_n2_wrong_eku_is_refused(root: pki.Issued) -> None:
    client = pki.issue_leaf(root, "not a code signer", NOW, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    with pytest.raises(VerificationFailed) as err:
        _verify(_sign(client), [client], [root])
    assert err.value.code == "MissingCodeSigningUsage"


def test_n2_missing_digital_signature_usage_is_refused(root: pki.Issued) -> None:
    leaf = pki.issue_leaf(root, "no ds", NOW, eku=[ExtendedKeyUsageOID.CODE_SIGNING],
                          digital_signature=False)
    with pytest.raises(VerificationFailed) as err:
        _verify(_sign(leaf), [leaf], [root])
    assert err.value.code == "MissingDigitalSignature"


def test_n2_expired_signer_is_refused(root: pki.Issued, signer: pki.Issued) -> None:
    with pytest.raises(VerificationFailed) as err:
        _verify(_sign(signer), [signer], [root], now=NOW + dt.timedelta(days=900))
    assert err.value.code == "CertificateExpired"


def test_n2_not_yet_valid_signer_is_refused(root: pki.Issued, signer: pki.Issued) -> None:
    with pytest.raises(VerificationFailed) as err:
        _verify(_sign(signer), [signer], [root], now=NOW - dt.timedelta(days=1))
    assert err.value.code == "CertificateNotYetValid"


def test_n2_revoked_signer_is_refused(root: pki.Issued, signer: pki.Issued) -> None:
    with pytest.raises(VerificationFailed) as err:
        _verify(_sign(signer), [signer], [root], revoked=frozenset({signer.cert.serial_number}))
    assert err.value.code == "CertificateRevoked"


def test_n2_untrusted_chain_is_refused(signer: pki.Issued) -> None:
    stranger_root = pki.make_root_ca("someone else's root", NOW)
    stranger = pki.issue_code_signing_cert(stranger_root, "signer", NOW)
    with pytest.raises(VerificationFailed) as err:
        _verify(_sign(stranger), [stranger], [pki.make_root_ca("trusted root", NOW)])
    assert err.value.code == "UntrustedChain"
    # A self-signed "code-signing" certificate is not a trusted root either.
    with pytest.raises(VerificationFailed):
        _verify(_sign(signer), [signer], [stranger_root])


def test_rsa_signatures_verify(root: pki.Issued) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    base = pki.issue_code_signing_cert(root, "rsa", NOW).cert
    cert = (x509.CertificateBuilder().subject_name(base.subject).issuer_name(base.issuer)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(base.not_valid_before_utc).not_valid_after(base.not_valid_after_utc))
    for ext in base.extensions:
        if ext.oid != x509.oid.ExtensionOID.SUBJECT_KEY_IDENTIFIER:
            cert = cert.add_extension(ext.value, ext.critical)
    signed = cert.sign(root.key, hashes.SHA256())
    sig = codesign.sign_digest(key, codesign.sha256(FILE))
    trust = codesign.TrustPolicy((root.cert,))
    codesign.verify_file_signature(codesign.sha256(FILE), sig, [signed], trust, NOW)


def test_n2_revoked_intermediate_ca_in_the_signer_chain_is_refused() -> None:
    """Revocation applies to every certificate of the chain: a signer below a revoked
    intermediate CA is refused although the signer's own serial is not listed."""
    chain_root = make_ca("code-signing root with an intermediate")
    intermediate, leaf = signer_chain(chain_root)
    digest, signature = codesign.sha256(FILE), sign_file(leaf, FILE)
    chain = [leaf.cert, intermediate.cert]
    trust = codesign.TrustPolicy((chain_root.cert,))
    assert codesign.verify_file_signature(digest, signature, chain, trust, REAL_NOW) == leaf.cert
    revoked = codesign.TrustPolicy((chain_root.cert,), frozenset({intermediate.cert.serial_number}))
    with pytest.raises(VerificationFailed) as err:
        codesign.verify_file_signature(digest, signature, chain, revoked, REAL_NOW)
    assert err.value.code == "CertificateRevoked"
    assert "intermediate" in err.value.message
    # The device's own root is its configuration: a serial on a list does not override it.
    anchored = codesign.TrustPolicy((chain_root.cert,), frozenset({chain_root.cert.serial_number}))
    assert codesign.verify_file_signature(digest, signature, chain, anchored, REAL_NOW) == leaf.cert


def test_n2_certificate_with_a_malformed_extension_is_refused_not_raised(root: pki.Issued) -> None:
    """cryptography parses extensions lazily: the error must become a refusal."""
    base = pki.issue_code_signing_cert(root, "malformed", NOW)
    cert = (x509.CertificateBuilder().subject_name(base.cert.subject).issuer_name(base.cert.issuer)
            .public_key(base.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(base.cert.not_valid_before_utc).not_valid_after(base.cert.not_valid_after_utc)
            .add_extension(x509.UnrecognizedExtension(ExtensionOID.KEY_USAGE, b"\x01\x02"), critical=True)
            .sign(root.key, hashes.SHA256()))
    with pytest.raises(VerificationFailed) as loading:
        codesign.load_der_chain([cert.public_bytes(Encoding.DER)])
    with pytest.raises(VerificationFailed) as checking:  # loaded elsewhere, checked here
        _verify_certs(_sign(base), [cert], [root])
    assert loading.value.code == checking.value.code == "BadCertificate"


def _verify_certs(sig: bytes, chain: list[x509.Certificate], roots: list[pki.Issued]) -> None:
    trust = codesign.TrustPolicy(tuple(r.cert for r in roots))
    codesign.verify_file_signature(codesign.sha256(FILE), sig, chain, trust, NOW)
