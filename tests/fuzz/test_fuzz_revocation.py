"""Fuzz target: core/revocation.py, the signed code-signing revocation list every agent
receives retained from the broker (O2). Whatever the envelope, and whatever a correctly
signed body holds, only `DecodeError` or `VerificationFailed` may escape."""

from __future__ import annotations

import base64
import contextlib
import json

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from overair.core.errors import DecodeError, VerificationFailed
from overair.core.revocation import verify_list
from tests.fuzz.agent_strategies import HOSTILE_TEXT, JSON_VALUES
from tests.pki_helpers import Issued, make_ca

SIGNER = make_ca("fuzz revocation signer")


def _signed_body(body: bytes, signer: Issued) -> bytes:
    """An envelope around any body, correctly signed, so that decoding is reached."""
    assert isinstance(signer.key, ec.EllipticCurvePrivateKey)
    signature = signer.key.sign(body, ec.ECDSA(hashes.SHA256()))
    return json.dumps({"list": base64.b64encode(body).decode(),
                       "signature": base64.b64encode(signature).decode()}).encode()


def _verify(envelope: bytes) -> None:
    with contextlib.suppress(DecodeError, VerificationFailed):
        verify_list(envelope, SIGNER.cert)


@given(st.binary(max_size=400))
def test_fuzz_revocation_any_envelope_bytes(envelope: bytes) -> None:
    _verify(envelope)


@given(JSON_VALUES, JSON_VALUES | HOSTILE_TEXT)
def test_fuzz_revocation_envelope_fields(listed: object, signature: object) -> None:
    _verify(json.dumps({"list": listed, "signature": signature}).encode())


@given(st.fixed_dictionaries({}, optional={
    "format": JSON_VALUES, "sequence": JSON_VALUES, "issued_at": JSON_VALUES,
    "serials": st.lists(HOSTILE_TEXT | JSON_VALUES, max_size=5) | JSON_VALUES}))
def test_fuzz_revocation_correctly_signed_hostile_body(body: dict[str, object]) -> None:
    """A body past the signature check: only a holder of the server's key can send it,
    which is exactly why its decoding must not be the weak point."""
    _verify(_signed_body(json.dumps(body).encode(), SIGNER))


@given(st.binary(max_size=200))
def test_fuzz_revocation_correctly_signed_body_bytes(body: bytes) -> None:
    _verify(_signed_body(body, SIGNER))
    _verify(json.dumps({"list": base64.b64encode(body).decode(), "signature": "\u00e9"}).encode())
