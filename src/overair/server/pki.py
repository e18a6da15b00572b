"""X.509 for the fleet: the device CA, broker and service certificates, device
certificates, the CRL the broker enforces, and development code-signing certificates.

All keys are ECDSA P-256. Validity periods are explicit arguments so tests can make
expired or not-yet-valid certificates.

Broker identity (threat N4). Mosquitto runs with `use_subject_as_username`: a client's
username (and, with `use_username_as_clientid`, its client id) is its certificate's
whole subject as OpenSSL prints it in RFC 2253 form. Every client certificate the fleet
CA issues (`issue_client_cert`: devices, the service, the server's own probes) carries a
subject unique to it: O=overair, CN=<name for people and for the agent's check>,
serialNumber=<the certificate's own X.509 serial, hex>. Two certificates with the same
CN therefore never share a broker identity, whatever code path minted them; the ACL
names the subject of each attached certificate (`broker_username`). The one deliberate
exception is `issue_session_closer_cert`, which copies a subject so the server can take
that identity's session over (server/gateway/session_close.py).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The CN of the service's certificate. '.' is not allowed in thing names, so no device
# certificate is ever issued with it (and its subject is unique anyway, see above).
SERVICE_IDENTITY = "overair.service"
FLEET_ORGANIZATION = "overair"

# The attribute types overair puts in fleet client subjects, by the short names OpenSSL
# prints (X509_NAME_print_ex with XN_FLAG_RFC2253 uses XN_FLAG_FN_SN).
_OPENSSL_SHORT_NAMES = {NameOID.COMMON_NAME: "CN", NameOID.ORGANIZATION_NAME: "O",
                        NameOID.SERIAL_NUMBER: "serialNumber"}
# Values that print as themselves in RFC 2253 (nothing to escape: no ,+"\<>;= # or
# space, no control or non-ASCII byte) and cannot break a line of Mosquitto's ACL file.
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9:_.-]{1,128}")


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


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
             not_before: dt.datetime, days: float, serial: int | None = None) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public_key).serial_number(serial or x509.random_serial_number())
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
    subject: x509.Name | None = None,
    serial: int | None = None,
) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (_builder(subject or _name(cn), issuer.cert.subject, public_key or key.public_key(),
                        now - dt.timedelta(minutes=5), days, serial)
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
    """A fleet client certificate whose subject is unique to it (module docstring): the
    X.520 serialNumber attribute repeats the certificate's own random 159-bit serial."""
    serial = x509.random_serial_number()
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, FLEET_ORGANIZATION),
                         x509.NameAttribute(NameOID.COMMON_NAME, cn),
                         x509.NameAttribute(NameOID.SERIAL_NUMBER, format(serial, "x"))])
    return issue_leaf(ca, cn, now, eku=[ExtendedKeyUsageOID.CLIENT_AUTH], days=days,
                      subject=subject, serial=serial)


def sign_client_key(ca: Issued, cn: str, public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
                    now: dt.datetime,
                    days: float = 825) -> x509.Certificate:
    """A fleet client certificate for a key the device keeps (a CSR's): the same profile
    and unique subject as `issue_client_cert`, without minting a key pair."""
    serial = x509.random_serial_number()
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, FLEET_ORGANIZATION),
                         x509.NameAttribute(NameOID.COMMON_NAME, cn),
                         x509.NameAttribute(NameOID.SERIAL_NUMBER, format(serial, "x"))])
    return (_builder(subject, ca.cert.subject, public_key, now - dt.timedelta(minutes=5), days, serial)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca.key, hashes.SHA256()))


def issue_session_closer_cert(ca: Issued, subject: x509.Name, now: dt.datetime, days: float) -> Issued:
    """A short-lived certificate with another certificate's exact subject, hence its broker
    identity and client id: only for the server's session takeover (session_close.py),
    held in memory, never stored or handed out."""
    cn = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return issue_leaf(ca, str(cn[0].value) if cn else "", now, eku=[ExtendedKeyUsageOID.CLIENT_AUTH],
                      days=days, subject=subject)


def broker_username(subject: x509.Name) -> str | None:
    """The username Mosquitto gives a client presenting a certificate with this subject
    under `use_subject_as_username`: OpenSSL's RFC 2253 form, last RDN first, `SN=value`
    joined by commas (verified against Mosquitto 2.0.11 in
    tests/integration/test_broker_identity.py). None for a subject overair does not issue
    (another attribute type, a multi-valued RDN, a value that would need escaping): such
    a certificate is granted nothing rather than a name that might not be its own."""
    parts = []
    for rdn in reversed(subject.rdns):
        attributes = list(rdn)
        if len(attributes) != 1:
            return None
        (attribute,) = attributes
        short = _OPENSSL_SHORT_NAMES.get(attribute.oid)
        value = attribute.value
        if short is None or not isinstance(value, str) or not _PLAIN_VALUE.fullmatch(value):
            return None
        parts.append(f"{short}={value}")
    return ",".join(parts) or None


def issue_code_signing_cert(root: Issued, cn: str, now: dt.datetime, days: int = 825,
                            public_key: ec.EllipticCurvePublicKey | None = None) -> Issued:
    """A code-signing certificate (digitalSignature, codeSigning EKU). With `public_key`
    (a key held in an HSM) the certificate is for that key; the returned `key` is then a
    throwaway that matches nothing and must not be used."""
    return issue_leaf(root, cn, now, eku=[ExtendedKeyUsageOID.CODE_SIGNING], days=days, public_key=public_key)


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
