"""X.509 for the fleet: the device CA, broker and service certificates, device
certificates (CN = thing name), the CRL the broker enforces, and development
code-signing certificates.

All keys are ECDSA P-256. Validity periods are explicit arguments so tests can make
expired or not-yet-valid certificates.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The service's MQTT identity. '.' is not allowed in thing names, so no device can
# ever obtain a certificate (and thus a broker username) equal to it.
SERVICE_IDENTITY = "overair.service"


@dataclass(frozen=True, slots=True)
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return key_pem(self.key)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(cn: str, org: str = "overair") -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_usage(*, digital_signature: bool = False, key_cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=digital_signature, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         key_cert_sign=key_cert_sign, crl_sign=key_cert_sign,
                         encipher_only=False, decipher_only=False)


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
             not_before: dt.datetime, days: float) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_before + dt.timedelta(days=days))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))


def make_root_ca(cn: str, now: dt.datetime, days: int = 3650, org: str = "overair") -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(cn, org)
    cert = (_builder(name, name, key.public_key(), now - dt.timedelta(minutes=5), days)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(key_cert_sign=True), critical=True)
            .sign(key, hashes.SHA256()))
    return Issued(cert, key)


def issue_leaf(
    issuer: Issued,
    cn: str,
    now: dt.datetime,
    *,
    eku: list[x509.ObjectIdentifier],
    digital_signature: bool = True,
    san_dns: tuple[str, ...] = (),
    san_ip: tuple[str, ...] = (),
    days: float = 825,
    public_key: ec.EllipticCurvePublicKey | None = None,
) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (_builder(_name(cn), issuer.cert.subject, public_key or key.public_key(),
                        now - dt.timedelta(minutes=5), days)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(_key_usage(digital_signature=digital_signature), critical=True)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   issuer.key.public_key()), critical=False))
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in san_dns]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in san_ip]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Issued(builder.sign(issuer.key, hashes.SHA256()), key)


def issue_server_cert(ca: Issued, hostnames: tuple[str, ...], now: dt.datetime) -> Issued:
    ips = tuple(h for h in hostnames if _is_ip(h))
    dns = tuple(h for h in hostnames if not _is_ip(h))
    return issue_leaf(ca, dns[0] if dns else ips[0], now, eku=[ExtendedKeyUsageOID.SERVER_AUTH],
                      san_dns=dns, san_ip=ips)


def issue_client_cert(ca: Issued, cn: str, now: dt.datetime, days: float = 825) -> Issued:
    return issue_leaf(ca, cn, now, eku=[ExtendedKeyUsageOID.CLIENT_AUTH], days=days)


def issue_code_signing_cert(root: Issued, cn: str, now: dt.datetime, days: int = 825) -> Issued:
    return issue_leaf(root, cn, now, eku=[ExtendedKeyUsageOID.CODE_SIGNING], days=days)


def make_revocation_signer(now: dt.datetime, days: int = 3650) -> Issued:
    """The key that signs the code-signing revocation list agents receive (a self-signed
    certificate only to carry the public key into device bundles)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("overair code-signing revocation list signer")
    cert = (_builder(name, name, key.public_key(), now - dt.timedelta(minutes=5), days)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True), critical=True)
            .sign(key, hashes.SHA256()))
    return Issued(cert, key)


def make_crl(ca: Issued, revoked_serials: list[int], now: dt.datetime, days: int = 30) -> bytes:
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca.cert.subject)
               .last_update(now - dt.timedelta(minutes=5)).next_update(now + dt.timedelta(days=days)))
    for serial in sorted(set(revoked_serials)):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build())
    return builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def load_issued(cert_pem: bytes, key_pem_bytes: bytes) -> Issued:
    key = serialization.load_pem_private_key(key_pem_bytes, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("expected an EC private key")
    return Issued(x509.load_pem_x509_certificate(cert_pem), key)


def certificate_id(cert: x509.Certificate) -> str:
    """AWS IoT certificate ids are the SHA-256 of the DER certificate, in hex."""
    return cert.fingerprint(hashes.SHA256()).hex()


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
