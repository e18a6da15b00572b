"""core/certchain.py: the forms of customCodeSigning.certificateChain.inlineDocument AWS
documents ("a base64 encoded binary representation of the code signing certificate
chain") and the PEM overair took before, each giving the chain signer first."""

from __future__ import annotations

import base64
import warnings

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.utils import CryptographyDeprecationWarning

from overair.core.certchain import MAX_DOCUMENT_CHARS, parse_chain_document
from overair.core.errors import DecodeError
from tests.pki_chain import signer_two_below
from tests.pki_helpers import Issued, make_ca

ROOT = make_ca("certchain test root")
UPPER, LOWER, SIGNER = signer_two_below(ROOT)
SIGNER_FIRST = [SIGNER.cert, LOWER.cert, UPPER.cert]


def _der(*certs: Issued) -> bytes:
    return b"".join(c.cert.public_bytes(serialization.Encoding.DER) for c in certs)


@pytest.mark.parametrize(("form", "document"), [
    ("PEM, signer first", (SIGNER.cert_pem + LOWER.cert_pem + UPPER.cert_pem).decode()),
    ("base64 DER", base64.b64encode(_der(SIGNER, LOWER, UPPER)).decode()),
    ("base64 DER wrapped at 76", base64.encodebytes(_der(SIGNER, LOWER, UPPER)).decode()),
    ("base64 PEM", base64.b64encode(SIGNER.cert_pem + LOWER.cert_pem + UPPER.cert_pem).decode()),
    ("base64 PKCS#7", base64.b64encode(pkcs7.serialize_certificates(
        [SIGNER.cert, LOWER.cert, UPPER.cert], serialization.Encoding.DER)).decode()),
])
def test_each_documented_form_gives_the_chain_signer_first(form: str, document: str) -> None:
    chain = parse_chain_document(document, max_certificates=8)
    assert chain[0] == SIGNER.cert, form
    if "PKCS#7" in form:  # a SET OF certificates: their order is DER's, not the caller's
        assert set(chain) == set(SIGNER_FIRST)
    else:
        assert chain == SIGNER_FIRST, form


def test_the_signer_is_put_first_wherever_it_stands() -> None:
    root_first = base64.b64encode(_der(UPPER, LOWER, SIGNER)).decode()
    assert parse_chain_document(root_first, max_certificates=8) == [SIGNER.cert, UPPER.cert, LOWER.cert]
    single = base64.b64encode(_der(SIGNER)).decode()
    assert parse_chain_document(single, max_certificates=8) == [SIGNER.cert]


@pytest.mark.parametrize(("document", "why"), [
    ("", "empty"),
    ("   \n", "empty"),
    ("not base64 at all!", "neither PEM nor base64"),
    ("QUJ", "not valid base64"),
    (base64.b64encode(b"plain text, not DER").decode(), "not DER"),
    (base64.b64encode(b"\x30\x03\x02\x01\x05").decode(), "not readable DER"),
    (base64.b64encode(_der(SIGNER)[:-10]).decode(), "ends inside a certificate"),
    (base64.b64encode(b"\x30\x80\x00\x00").decode(), "bad length"),
    (base64.b64encode(b"\x30\x84\x00").decode(), "ends inside a DER length"),
    ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not readable PEM"),
    ("A" * (MAX_DOCUMENT_CHARS + 4), "longer than"),
])
def test_anything_else_is_refused_with_its_reason(document: str, why: str) -> None:
    with pytest.raises(DecodeError) as caught:
        parse_chain_document(document, max_certificates=8)
    assert caught.value.code == "BadCertificateChain"
    assert why in caught.value.message


def test_a_chain_longer_than_the_bound_is_refused() -> None:
    document = base64.b64encode(_der(SIGNER, LOWER, UPPER)).decode()
    with pytest.raises(DecodeError, match="holds 3 certificates; at most 2"):
        parse_chain_document(document, max_certificates=2)


def _with_serial(der: bytes, serial: bytes) -> bytes:
    """`der` (a certificate from pki_helpers: two-byte lengths, a version field) with
    its serial number's content bytes replaced; the signature no longer matches, which
    parsing does not check. CertificateBuilder refuses to make such a certificate."""
    version_end = 8 + 5  # Certificate and TBSCertificate headers, then [0] { INTEGER 2 }
    assert der[0:2] == der[4:6] == b"\x30\x82"
    assert der[8:13] == b"\xa0\x03\x02\x01\x02"
    old = der[version_end + 1]
    delta = len(serial) - old
    tbs_length = int.from_bytes(der[6:8], "big") + delta
    cert_length = int.from_bytes(der[2:4], "big") + delta
    return (b"\x30\x82" + cert_length.to_bytes(2, "big") + b"\x30\x82" + tbs_length.to_bytes(2, "big")
            + der[8:version_end] + bytes([0x02, len(serial)]) + serial + der[version_end + 2 + old:])


def _pem(der: bytes) -> bytes:
    return b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der) + b"-----END CERTIFICATE-----\n"


def _pkcs7(*ders: bytes) -> bytes:
    with warnings.catch_warnings():  # loading them to build the bundle warns as parsing does
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        certs = [x509.load_der_x509_certificate(der) for der in ders]
    return pkcs7.serialize_certificates(certs, serialization.Encoding.DER)


@pytest.mark.parametrize("serial", [b"\x00", b"\xff", b"\x80" + bytes(19)],
                         ids=["zero", "minus one", "negative"])
@pytest.mark.parametrize("form", ["PEM", "base64 DER", "base64 PEM", "base64 PKCS#7"])
@pytest.mark.parametrize("loader", ["warns", "raises"])
def test_a_certificate_with_a_non_positive_serial_is_refused(serial: bytes, form: str, loader: str) -> None:
    """RFC 5280 4.1.2.2: serial numbers are positive. cryptography loads such a
    certificate today with a deprecation warning ("warns": overair's own check refuses
    it) and will raise in a future release ("raises", as with warnings made errors): the
    caller sees the same refusal either way."""
    bad = _with_serial(_der(SIGNER), serial)
    good = _der(LOWER, UPPER)
    document = {
        "PEM": (_pem(bad) + LOWER.cert_pem + UPPER.cert_pem).decode(),
        "base64 DER": base64.b64encode(bad + good).decode(),
        "base64 PEM": base64.b64encode(_pem(bad) + LOWER.cert_pem + UPPER.cert_pem).decode(),
        "base64 PKCS#7": base64.b64encode(_pkcs7(bad, _der(LOWER), _der(UPPER))).decode(),
    }[form]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore" if loader == "warns" else "error", CryptographyDeprecationWarning)
        with pytest.raises(DecodeError) as caught:
            parse_chain_document(document, max_certificates=8)
    assert caught.value.code == "BadCertificateChain"
    if loader == "warns":
        assert "serial number that is not positive" in caught.value.message


def test_a_positive_serial_with_its_high_byte_set_is_accepted() -> None:
    """DER's leading zero byte keeps such a serial positive."""
    original = _der(SIGNER)
    assert _with_serial(original, original[15:15 + original[14]]) == original  # the rewrite is exact
    document = base64.b64encode(_with_serial(_der(SIGNER), b"\x00\x80" + bytes(18))).decode()
    assert parse_chain_document(document, max_certificates=8)[0].serial_number == 0x80 << (8 * 18)


def test_a_loader_warning_raised_as_an_error_is_a_refusal() -> None:
    """cryptography reads a PKCS#7 bundle with an unknown inner content type only through
    its BER fallback, with a UserWarning it says may become an exception: with warnings
    made errors the chain is refused, not a crash."""
    bundle = pkcs7.serialize_certificates([SIGNER.cert], serialization.Encoding.DER)
    data_type = bytes.fromhex("06092a864886f70d010701")  # id-data, the inner ContentInfo's type
    at = bundle.index(data_type) + len(data_type) - 1
    document = base64.b64encode(bundle[:at] + b"\x09" + bundle[at + 1:]).decode()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DecodeError) as caught:
            parse_chain_document(document, max_certificates=8)
    assert caught.value.code == "BadCertificateChain"
