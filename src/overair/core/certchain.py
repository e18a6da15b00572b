"""The certificate chain an operator gives with CreateOTAUpdate's `customCodeSigning`.

AWS documents `certificateChain.inlineDocument` as "a base64 encoded binary
representation of the code signing certificate chain" (API reference,
CodeSigningCertificateChain), so the forms accepted are:

- base64 of DER: one certificate, or several concatenated (signer and intermediates);
- base64 of a DER PKCS#7 certificate bundle (`.p7b`, the other binary form of a chain);
- base64 of PEM text (what `base64 chain.pem` gives);
- PEM text itself (the only form overair took before; kept).

Base64 may be wrapped over lines (the `base64` tool wraps at 76 characters). The result
is signer first, then the intermediates as given: the signer is the one certificate
that is not a CA, wherever it stands.

The text comes from an API caller, so it is bounded (length, number of certificates)
and anything unreadable raises `DecodeError` (code `BadCertificateChain`) and nothing
else (fuzzed: tests/fuzz/test_fuzz_certchain.py).

A certificate whose serial number is not positive is refused the same way: RFC 5280
(4.1.2.2) forbids it, `cryptography` loads one today with a deprecation warning and will
refuse to load it in a future release (or now, when warnings are errors), and either way
the caller sees the one stable refusal.
"""

from __future__ import annotations

import base64
import binascii
import re

from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs7

from overair.core.codesign import UNREADABLE
from overair.core.errors import DecodeError

CODE = "BadCertificateChain"
MAX_DOCUMENT_CHARS = 256 * 1024  # eight 16 KiB certificates, base64 over PEM, with room
PEM_MARK = "-----BEGIN"
_BASE64 = re.compile(r"[A-Za-z0-9+/=\s]+")
_SEQUENCE = 0x30
_OID = 0x06
_INTEGER = 0x02
_VERSION_TAG = 0xA0  # [0] EXPLICIT Version, before the serial number
# A load refused: unreadable bytes, or a warning of cryptography's raised as an error
# (when warnings are made errors): a non-positive serial number, a PKCS#7 bundle read
# only through its BER fallback; both are what a future cryptography says it will raise.
_REFUSED = (*UNREADABLE, Warning)


def parse_chain_document(text: str, *, max_certificates: int) -> list[x509.Certificate]:
    """The certificates of an inline chain document, signer first."""
    if not isinstance(text, str) or not text.strip():
        raise DecodeError("the certificate chain is empty", code=CODE)
    if len(text) > MAX_DOCUMENT_CHARS:
        raise DecodeError(f"the certificate chain is longer than {MAX_DOCUMENT_CHARS} characters", code=CODE)
    if PEM_MARK in text:
        certs = _pem(text.encode("utf-8", "replace"))
    else:
        if _BASE64.fullmatch(text) is None:
            raise DecodeError("the certificate chain is neither PEM nor base64", code=CODE)
        try:
            data = base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError):
            raise DecodeError("the certificate chain is not valid base64", code=CODE) from None
        certs = _pem(data) if data.lstrip().startswith(PEM_MARK.encode()) else _der(data)
    if not certs:
        raise DecodeError("the certificate chain holds no certificate", code=CODE)
    if len(certs) > max_certificates:
        raise DecodeError(f"the certificate chain holds {len(certs)} certificates; at most "
                          f"{max_certificates} are accepted", code=CODE)
    for position, cert in enumerate(certs):
        if not _serial_is_positive(cert):
            raise DecodeError(f"certificate {position + 1} of the chain has a serial number that is not "
                              "positive (RFC 5280 4.1.2.2)", code=CODE)
    return signer_first(certs)


def signer_first(certs: list[x509.Certificate]) -> list[x509.Certificate]:
    """The one certificate that is not a CA first (the signer), the others in their
    order; unchanged when there is not exactly one such certificate (the chain check
    then says what is wrong)."""
    leaves = [i for i, cert in enumerate(certs) if not _is_ca(cert)]
    if len(leaves) != 1:
        return list(certs)
    index = leaves[0]
    return [certs[index], *certs[:index], *certs[index + 1:]]


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False
    except UNREADABLE:
        return False


def _serial_is_positive(cert: x509.Certificate) -> bool:
    """Read from the TBSCertificate's DER, which cryptography has already parsed: its
    `serial_number` would warn again about the very value being checked."""
    tbs = cert.tbs_certificate_bytes
    offset = _content_start(tbs, 0)
    if tbs[offset] == _VERSION_TAG:
        offset = _content_start(tbs, offset) + _content_length(tbs, offset)
    if tbs[offset] != _INTEGER:
        return False
    start = _content_start(tbs, offset)
    length = _content_length(tbs, offset)
    serial = tbs[start:start + length]
    return bool(serial) and serial[0] & 0x80 == 0 and any(serial)


def _content_start(der: bytes, offset: int) -> int:
    first = der[offset + 1]
    return offset + 2 + (first - 0x80 if first & 0x80 else 0)


def _content_length(der: bytes, offset: int) -> int:
    first = der[offset + 1]
    if first & 0x80 == 0:
        return first
    return int.from_bytes(der[offset + 2:_content_start(der, offset)], "big")


def _pem(data: bytes) -> list[x509.Certificate]:
    try:
        return list(x509.load_pem_x509_certificates(data))
    except _REFUSED as exc:
        raise DecodeError(f"the certificate chain is not readable PEM: {exc}", code=CODE) from None


def _der(data: bytes) -> list[x509.Certificate]:
    """Concatenated DER certificates, or one DER PKCS#7 bundle."""
    elements = list(_der_elements(data))
    if len(elements) == 1 and _is_pkcs7(elements[0]):
        try:
            return list(pkcs7.load_der_pkcs7_certificates(elements[0]))
        except _REFUSED as exc:
            raise DecodeError(f"the PKCS#7 certificate bundle is not readable: {exc}", code=CODE) from None
    certs = []
    for position, element in enumerate(elements):
        try:
            certs.append(x509.load_der_x509_certificate(element))
        except _REFUSED as exc:
            raise DecodeError(f"certificate {position + 1} of the chain is not readable DER: {exc}",
                              code=CODE) from None
    return certs


def _der_elements(data: bytes) -> list[bytes]:
    """Split `data` into its top-level DER SEQUENCEs (definite lengths only)."""
    elements = []
    offset = 0
    while offset < len(data):
        if data[offset] != _SEQUENCE or offset + 2 > len(data):
            raise DecodeError("the certificate chain is not DER certificates", code=CODE)
        first = data[offset + 1]
        if first < 0x80:
            header, length = 2, first
        elif 0x81 <= first <= 0x84:
            count = first - 0x80
            header = 2 + count
            if offset + header > len(data):
                raise DecodeError("the certificate chain ends inside a DER length", code=CODE)
            length = int.from_bytes(data[offset + 2:offset + header], "big")
        else:  # indefinite (0x80) or absurd lengths: never in DER
            raise DecodeError("the certificate chain is not DER (bad length)", code=CODE)
        end = offset + header + length
        if end > len(data):
            raise DecodeError("the certificate chain ends inside a certificate", code=CODE)
        elements.append(data[offset:end])
        offset = end
    return elements


def _is_pkcs7(element: bytes) -> bool:
    """A ContentInfo starts with an OID (contentType); a certificate with a SEQUENCE."""
    first = element[1]
    header = 2 if first < 0x80 else 2 + (first - 0x80)
    return len(element) > header and element[header] == _OID
