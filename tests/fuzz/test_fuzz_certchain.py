"""Fuzz target: core/certchain.py, the certificate chain an API caller gives with
CreateOTAUpdate's customCodeSigning (base64 DER, base64 PKCS#7, base64 PEM or PEM). Only
`DecodeError` may escape, whatever the text; what it returns is certificates, signer
first, within the bound.

Inputs: arbitrary text, base64 of arbitrary bytes, and real chains (DER, PKCS#7, PEM)
with bytes flipped or cut before they are base64-encoded. A flip can make a serial
number negative or zero, or leave a PKCS#7 bundle that cryptography reads only through
its BER fallback; it loads both with a warning today and says it will refuse them in a
future release: the damaged-chain target runs both ways (the warning ignored, or raised
as that release would), and the certificates returned always have positive serial
numbers.
"""

from __future__ import annotations

import base64
import contextlib
import warnings

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from hypothesis import given
from hypothesis import strategies as st

from overair.core.certchain import parse_chain_document
from overair.core.errors import DecodeError
from tests.pki_chain import signer_two_below
from tests.pki_helpers import make_ca

ROOT = make_ca("fuzz certchain root")
CHAIN = [c.cert for c in reversed(signer_two_below(ROOT))]
DER = b"".join(c.public_bytes(serialization.Encoding.DER) for c in CHAIN)
PKCS7 = pkcs7.serialize_certificates(CHAIN, serialization.Encoding.DER)
PEM = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in CHAIN)
MAX = 4

# What a future cryptography says it will do where it warns today (a non-positive serial
# number, a PKCS#7 bundle read through its BER fallback): refuse to load.
pytestmark = pytest.mark.filterwarnings("error::UserWarning")


def _parse(text: str) -> None:
    with contextlib.suppress(DecodeError):
        certs = parse_chain_document(text, max_certificates=MAX)
        assert 0 < len(certs) <= MAX
        assert all(isinstance(c, x509.Certificate) for c in certs)
        assert all(c.serial_number > 0 for c in certs)


@given(st.text(max_size=2000))
def test_fuzz_certchain_arbitrary_text(text: str) -> None:
    _parse(text)


@given(st.binary(max_size=2000), st.booleans())
def test_fuzz_certchain_base64_of_arbitrary_bytes(data: bytes, wrapped: bool) -> None:
    _parse((base64.encodebytes if wrapped else base64.b64encode)(data).decode())


@given(st.sampled_from([DER, PKCS7, PEM]),
       st.lists(st.tuples(st.integers(0, 4000), st.integers(1, 255)), max_size=4),
       st.integers(0, 4000), st.booleans(), st.booleans())
def test_fuzz_certchain_damaged_real_chains(base: bytes, flips: list[tuple[int, int]], cut: int,
                                            as_text: bool, loader_warns: bool) -> None:
    data = bytearray(base)
    for position, mask in flips:
        data[position % len(data)] ^= mask
    damaged = bytes(data[:len(data) - cut % len(data)])
    text = damaged.decode("latin-1") if as_text else base64.b64encode(damaged).decode()
    with warnings.catch_warnings():
        # "ignore": as cryptography loads it today, so overair's own check must refuse it.
        warnings.simplefilter("ignore" if loader_warns else "error", UserWarning)
        _parse(text)
