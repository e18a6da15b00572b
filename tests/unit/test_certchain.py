"""core/certchain.py: the forms of customCodeSigning.certificateChain.inlineDocument AWS
documents ("a base64 encoded binary representation of the code signing certificate
chain") and the PEM overair took before, each giving the chain signer first."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7

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
