"""Code-signing checks shared by the server (before it ships) and the agent (before it
activates): threat N2, mis-signed update.

A signature is ECDSA P-256 (or RSA PKCS#1 v1.5) over SHA-256 of the whole file, DER,
base64 in the job document. A signer certificate is accepted only if it chains to a
trusted code-signing root, is inside its validity period at `now`, has the
digitalSignature key usage and the codeSigning extended key usage, and neither it nor
any intermediate CA of its chain is on the revocation list. Each failure names its
check in `VerificationFailed.code`.

The certificates and signatures come from job documents, so from the network: every
check raises `VerificationFailed` and nothing else, however malformed its input
(`cryptography` parses extensions and keys lazily and raises ValueError or
UnsupportedAlgorithm deep inside a check; `require_readable` reads them up front).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID

from overair.core.errors import DecodeError, VerificationFailed

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
# What `cryptography` raises for a certificate it cannot read: most are ValueError, these
# are not (InvalidVersion and DuplicateExtension were found by tests/fuzz).
UNREADABLE = (ValueError, UnsupportedAlgorithm, x509.InvalidVersion, x509.DuplicateExtension,
              x509.UnsupportedGeneralNameType)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def sign_digest(key: PrivateKey, digest: bytes) -> bytes:
    """Sign a SHA-256 digest; returns a DER ECDSA signature or an RSA PKCS#1 one."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    return key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))


def verify_digest(cert: x509.Certificate, digest: bytes, signature: bytes) -> None:
    require_readable(cert)
    public_key = cert.public_key()
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
        else:
            raise VerificationFailed("signer key type is not supported", code="BadSignerKey")
    except (InvalidSignature, ValueError) as exc:  # ValueError: a signature that is not even DER
        raise VerificationFailed("signature does not match the file", code="BadSignature") from exc


def load_pem_certificates(pem: bytes) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except UNREADABLE as exc:
        raise DecodeError(f"not a PEM certificate: {exc}", code="BadCertificate") from exc
    return certs


def _require_code_signing_eku(
    _policy: verification.Policy, _cert: x509.Certificate, ext: x509.ExtendedKeyUsage | None
) -> None:
    if ext is None or ExtendedKeyUsageOID.CODE_SIGNING not in ext:
        raise ValueError("certificate lacks the codeSigning extended key usage")


def _require_digital_signature(
    _policy: verification.Policy, _cert: x509.Certificate, ext: x509.KeyUsage | None
) -> None:
    if ext is None or not ext.digital_signature:
        raise ValueError("certificate lacks the digitalSignature key usage")


def check_signer_usages(cert: x509.Certificate) -> None:
    """The leaf checks on their own, each with its own code (used on import too)."""
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        ku = None
    if ku is None or not ku.digital_signature:
        raise VerificationFailed("signer certificate lacks the digitalSignature key usage",
                                 code="MissingDigitalSignature")
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    if eku is None or ExtendedKeyUsageOID.CODE_SIGNING not in eku:
        raise VerificationFailed("signer certificate lacks the codeSigning extended key usage",
                                 code="MissingCodeSigningUsage")


def check_validity(cert: x509.Certificate, now: dt.datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise VerificationFailed("signer certificate is not yet valid", code="CertificateNotYetValid")
    if now > cert.not_valid_after_utc:
        raise VerificationFailed("signer certificate has expired", code="CertificateExpired")


@dataclass(frozen=True, slots=True)
class TrustPolicy:
    """What a verifier trusts: code-signing roots and revoked signer serials."""

    roots: tuple[x509.Certificate, ...]
    revoked_serials: frozenset[int] = frozenset()


def verify_signer_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    trust: TrustPolicy,
    now: dt.datetime,
) -> list[x509.Certificate]:
    """Check leaf usages, validity, the chain to a trusted root, and revocation of every
    certificate of that chain. Raises only VerificationFailed."""
    for cert in (leaf, *intermediates):
        require_readable(cert)
    check_signer_usages(leaf)
    check_validity(leaf, now)
    if not trust.roots:
        raise VerificationFailed("no trusted code-signing root is configured", code="UntrustedChain")
    ee_policy = (
        verification.ExtensionPolicy.permit_all()
        .require_present(x509.ExtendedKeyUsage, verification.Criticality.AGNOSTIC,
                         _require_code_signing_eku)
        .require_present(x509.KeyUsage, verification.Criticality.AGNOSTIC,
                         _require_digital_signature)
    )
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store(list(trust.roots)))
        .time(now)
        .extension_policies(ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
                            ee_policy=ee_policy)
        .build_client_verifier()
    )
    try:
        chain = verifier.verify(leaf, list(intermediates)).chain
    except Exception as exc:
        # VerificationError is the documented failure, but the verifier also raised
        # ValueError and KeyError for malformed certificates (fuzzed: tests/fuzz): at this
        # third-party call, any exception means the chain could not be verified.
        raise VerificationFailed(f"signer certificate does not chain to a trusted root: {exc}",
                                 code="UntrustedChain") from exc
    refuse_revoked(chain, trust)
    return chain


def refuse_revoked(chain: Sequence[x509.Certificate], trust: TrustPolicy) -> None:
    """Revocation applies to every certificate of a verified chain (signer first): the
    signer and each intermediate CA (a revoked intermediate revokes everything it
    issued). Only the trust anchor is exempt: the device's own roots are its
    configuration, not something a serial on a list may override by collision."""
    for position, cert in enumerate(chain):
        if position > 0 and cert in trust.roots:
            continue
        if cert.serial_number in trust.revoked_serials:
            what = "signer certificate" if position == 0 \
                else f"intermediate CA certificate {position} of the signer chain"
            raise VerificationFailed(f"{what} is revoked (serial {cert.serial_number:x})",
                                     code="CertificateRevoked")


def require_readable(cert: x509.Certificate) -> None:
    """`cryptography` parses a certificate's extensions and key lazily, so a malformed
    one (from a job document) raises ValueError or UnsupportedAlgorithm at the first
    check that looks, not at load. Read both now and refuse the certificate cleanly."""
    try:
        _ = cert.extensions
        _ = cert.public_key()
        _ = cert.signature_hash_algorithm  # an unknown signature algorithm OID raises here
    except UNREADABLE as exc:
        raise VerificationFailed(f"signer certificate is not readable: {exc}",
                                 code="BadCertificate") from exc


def load_der_chain(ders: Sequence[bytes]) -> list[x509.Certificate]:
    """The signer chain of a job document (DER, signer first), each certificate read in
    full; raises only VerificationFailed (`BadCertificate`)."""
    certs = []
    for der in ders:
        try:
            cert = x509.load_der_x509_certificate(der)
        except UNREADABLE as exc:
            raise VerificationFailed(f"signer certificate is not readable: {exc}",
                                     code="BadCertificate") from exc
        require_readable(cert)
        certs.append(cert)
    return certs


def verify_file_signature(
    digest: bytes,
    signature: bytes,
    chain: Iterable[x509.Certificate],
    trust: TrustPolicy,
    now: dt.datetime,
) -> x509.Certificate:
    """Full N2 check: chain first (who signed), then the signature (what was signed)."""
    certs = list(chain)
    if not certs:
        raise VerificationFailed("no signer certificate", code="UntrustedChain")
    verify_signer_chain(certs[0], certs[1:], trust, now)
    verify_digest(certs[0], digest, signature)
    return certs[0]
