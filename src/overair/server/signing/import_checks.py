"""What a code-signing certificate must be before the certificate store accepts it.

Pure: given the parsed certificate, its chain, the key's public half, the trusted
code-signing roots and `now`, either return what the store records about it or raise
`ImportRejected` naming exactly which check failed. The order is the order an
operator fixes things in: readable, right key type, key matches, usages, validity,
then trust.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from overair.core import codesign
from overair.core.errors import PeerInputError, VerificationFailed

EXPIRY_WARNING = dt.timedelta(days=30)
ALLOWED_CURVES = {"secp256r1": "ECDSA-P256", "secp384r1": "ECDSA-P384"}
MIN_RSA_BITS = 2048


class ImportRejected(PeerInputError):
    """A certificate the store refuses; `code` names the failed check."""


@dataclass(frozen=True, slots=True)
class Accepted:
    key_algorithm: str
    self_signed: bool


def key_algorithm(public_key: object) -> str:
    """ECDSA-P256, ECDSA-P384 or RSA-<bits>; anything else is refused."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        name = ALLOWED_CURVES.get(public_key.curve.name)
        if name is None:
            raise ImportRejected(f"ECDSA curve {public_key.curve.name} is not allowed; use P-256 or P-384",
                                 code="UnsupportedKey")
        return name
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < MIN_RSA_BITS:
            raise ImportRejected(f"RSA key of {public_key.key_size} bits is too weak; at least "
                                 f"{MIN_RSA_BITS} bits are required", code="KeyTooSmall")
        return f"RSA-{public_key.key_size}"
    raise ImportRejected(f"{type(public_key).__name__} keys are not supported; use ECDSA P-256/P-384 "
                         "or RSA 2048+", code="UnsupportedKey")


def _spki(public_key: object) -> bytes:
    assert isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def is_self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    public_key = cert.public_key()
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            assert cert.signature_hash_algorithm is not None
            public_key.verify(cert.signature, cert.tbs_certificate_bytes,
                              ec.ECDSA(cert.signature_hash_algorithm))
        elif isinstance(public_key, rsa.RSAPublicKey):
            assert cert.signature_hash_algorithm is not None
            public_key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(),
                              cert.signature_hash_algorithm)
        else:
            return False
    except InvalidSignature:
        return False
    return True


# Where the trusted code-signing roots live, relative to the data directory (DataDir).
TRUSTED_ROOTS_FILE = "pki/code-signing-root.pem"


def check_import(cert: x509.Certificate, chain: Sequence[x509.Certificate], key_public: object,
                 trusted_roots: Sequence[x509.Certificate], now: dt.datetime, *,
                 allow_self_signed: bool) -> Accepted:
    algorithm = key_algorithm(cert.public_key())
    if _spki(key_public) != _spki(cert.public_key()):
        raise ImportRejected("the private key does not belong to this certificate", code="KeyMismatch")
    try:
        codesign.check_signer_usages(cert)
        codesign.check_validity(cert, now)
    except VerificationFailed as exc:
        raise ImportRejected(exc.message, code=exc.code) from exc
    if is_self_signed(cert):
        if not allow_self_signed:
            raise ImportRejected("the certificate is self-signed; only certificates issued under a "
                                 "trusted code-signing root are accepted (self-signed ones only with "
                                 "allow_self_signed_code_signing = true, for testing)",
                                 code="SelfSignedNotAllowed")
        return Accepted(algorithm, self_signed=True)
    try:
        codesign.verify_signer_chain(cert, list(chain), codesign.TrustPolicy(tuple(trusted_roots)), now)
    except VerificationFailed as exc:
        raise ImportRejected(f"the certificate does not lead to a trusted code-signing root: "
                             f"{exc.message}. The trusted roots are the PEM bundle "
                             f"{TRUSTED_ROOTS_FILE} in the server's data directory (device bundles "
                             f"copy it): add the root that issued this certificate there, or pass "
                             f"the intermediates as CertificateChain", code="UntrustedChain") from exc
    return Accepted(algorithm, self_signed=False)


def expires_soon(not_after: dt.datetime, now: dt.datetime) -> bool:
    return not_after - now <= EXPIRY_WARNING
