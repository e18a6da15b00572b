"""Throwaway PKI for tests: CAs, TLS server/client certificates, code-signing signers.

Everything is ECDSA P-256 and generated in memory with `cryptography`; nothing here
depends on overair's server. Each knob that a security test needs to turn (key usage,
extended key usage, validity) is a keyword argument.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from overair.core.codesign import sha256, sign_digest

NOW = dt.datetime.now(dt.UTC)
DAY = dt.timedelta(days=1)


SignerKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class Issued:
    key: SignerKey
    cert: x509.Certificate

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def cert_der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def write(self, cert_path: Path, key_path: Path | None = None) -> None:
        cert_path.write_bytes(self.cert_pem)
        if key_path is not None:
            key_path.write_bytes(self.key_pem)
            key_path.chmod(0o600)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_usage(*, digital_signature: bool = False, cert_sign: bool = False,
               key_agreement: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=digital_signature, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=key_agreement,
                         key_cert_sign=cert_sign, crl_sign=cert_sign, encipher_only=False,
                         decipher_only=False)


def make_ca(cn: str, *, not_before: dt.datetime = NOW - DAY,
            not_after: dt.datetime = NOW + 365 * DAY) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn)).issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(key, cert)


def issue(issuer: Issued, cn: str, *, server_names: Sequence[str] = (), client: bool = False,
          code_signing: bool = False, digital_signature: bool = True, eku: bool = True,
          not_before: dt.datetime = NOW - DAY, not_after: dt.datetime = NOW + 365 * DAY,
          key: SignerKey | None = None) -> Issued:
    """A leaf certificate: TLS server (server_names), TLS client, or code-signing signer;
    ECDSA P-256 unless another `key` is given."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn)).issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
                       critical=False)
    )
    if digital_signature:
        builder = builder.add_extension(_key_usage(digital_signature=True,
                                                   key_agreement=not code_signing and isinstance(
                                                       key, ec.EllipticCurvePrivateKey)),
                                        critical=True)
    usages = []
    if server_names:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        sans: list[x509.GeneralName] = []
        for name in server_names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    if code_signing and eku:
        usages.append(ExtendedKeyUsageOID.CODE_SIGNING)
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return Issued(key, builder.sign(issuer.key, hashes.SHA256()))


def make_signer(root: Issued, cn: str = "test firmware signer", **kwargs: object) -> Issued:
    return issue(root, cn, code_signing=True, **kwargs)  # type: ignore[arg-type]


def sign_file(signer: Issued, data: bytes) -> bytes:
    """DER signature (ECDSA, or RSA PKCS#1 v1.5) over SHA-256 of the whole file
    (device-protocol.md §6)."""
    return sign_digest(signer.key, sha256(data))
