"""Signer chains with intermediate CAs for tests (root -> intermediate(s) -> signer),
built with tests/pki_helpers.py's types; ECDSA P-256, generated in memory."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.pki_helpers import DAY, NOW, Issued, make_signer


def make_intermediate(root: Issued, cn: str = "test code-signing intermediate", *,
                      path_length: int = 0, not_before: dt.datetime = NOW - DAY,
                      not_after: dt.datetime = NOW + 365 * DAY) -> Issued:
    """A CA certificate issued by `root` with `path_length` CAs allowed below it (0: it
    issues signers only)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(root.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     key_cert_sign=True, crl_sign=True, encipher_only=False,
                                     decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root.key.public_key()),
                       critical=False)
        .sign(root.key, hashes.SHA256())
    )
    return Issued(key, cert)


def signer_chain(root: Issued) -> tuple[Issued, Issued]:
    """(intermediate, signer): a signer two steps below `root`."""
    intermediate = make_intermediate(root)
    return intermediate, make_signer(intermediate, "signer below an intermediate")


def signer_two_below(root: Issued) -> tuple[Issued, Issued, Issued]:
    """(upper intermediate, lower intermediate, signer): a signer three steps below
    `root`, the chain of issue 13 whose notify-next outgrew a FreeRTOS buffer."""
    upper = make_intermediate(root, "test code-signing intermediate (upper)", path_length=1)
    lower = make_intermediate(upper, "test code-signing intermediate (lower)")
    return upper, lower, make_signer(lower, "signer two intermediates below")
