"""Fuzz target: core/trustlist.py, the trust list chain every overair agent receives
(retained on the broker) and walks to rotate its code-signing roots and deployment keys,
and agent/trust.py `DeviceTrust.admit_trust_chain` around it. Whatever the bytes, and
whatever a payload signed by a trusted root holds, only `DecodeError` (decoding) or
`VerificationFailed` (`admit_next`) may escape core/trustlist.py, and the device's
admission returns a verdict and raises nothing."""

from __future__ import annotations

import base64
import contextlib
import json
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from overair.agent.trust import DeviceTrust, TrustListVerdict
from overair.core import trustlist
from overair.core.deployment import pae
from overair.core.errors import DecodeError, VerificationFailed
from tests.fuzz.agent_strategies import HOSTILE_TEXT, JSON_VALUES
from tests.pki_helpers import make_ca

ROOT = make_ca("fuzz trust root")
TRUST = DeviceTrust((ROOT.cert,))
KEYID = trustlist.key_id(ROOT.key.public_key())
ROOT_DER = base64.b64encode(ROOT.cert_der).decode()


def _signed(payload: bytes) -> dict[str, Any]:
    """An envelope around any payload, signed by the trusted root, so decoding is reached."""
    assert isinstance(ROOT.key, ec.EllipticCurvePrivateKey)
    signature = ROOT.key.sign(pae(trustlist.PAYLOAD_TYPE, payload), ec.ECDSA(hashes.SHA256()))
    return {"payload": base64.b64encode(payload).decode(), "payloadType": trustlist.PAYLOAD_TYPE,
            "signatures": [{"keyid": KEYID, "sig": base64.b64encode(signature).decode()}]}


def _check(message: bytes) -> None:
    with contextlib.suppress(DecodeError, VerificationFailed):
        for signed in trustlist.decode_chain(message):
            trustlist.admit_next(signed, trustlist.anchor_of([ROOT.cert], 1))
    outcome = TRUST.admit_trust_chain(message)
    assert outcome.verdict in TrustListVerdict
    if outcome.verdict is not TrustListVerdict.ADMITTED:
        assert outcome.trust is TRUST


@given(st.binary(max_size=400) | HOSTILE_TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_fuzz_trustlist_any_bytes(message: bytes) -> None:
    _check(message)


@given(st.lists(JSON_VALUES | HOSTILE_TEXT, max_size=3) | JSON_VALUES)
def test_fuzz_trustlist_chain_of_any_json(lists: object) -> None:
    _check(json.dumps({"lists": lists}).encode())


@given(JSON_VALUES | HOSTILE_TEXT, JSON_VALUES | HOSTILE_TEXT,
       st.lists(st.fixed_dictionaries({}, optional={"keyid": st.just(KEYID) | JSON_VALUES,
                                                    "sig": JSON_VALUES | HOSTILE_TEXT}), max_size=3)
       | JSON_VALUES)
def test_fuzz_trustlist_envelope_fields(payload: object, payload_type: object, signatures: object) -> None:
    envelope = {"payload": payload, "payloadType": payload_type, "signatures": signatures}
    _check(trustlist.encode_chain([envelope]))
    _check(trustlist.encode_chain([dict(envelope, payloadType=trustlist.PAYLOAD_TYPE)]))


@given(st.fixed_dictionaries({}, optional={
    "_type": st.just(trustlist.STATEMENT_TYPE) | JSON_VALUES, "version": st.integers(-2, 3) | JSON_VALUES,
    "threshold": st.integers(-1, 3) | JSON_VALUES,
    "code_signing_roots": st.lists(st.just(ROOT_DER) | JSON_VALUES | HOSTILE_TEXT, max_size=3) | JSON_VALUES,
    "deployment_keys": st.lists(JSON_VALUES | HOSTILE_TEXT, max_size=3) | JSON_VALUES}))
def test_fuzz_trustlist_correctly_signed_hostile_payload(payload: dict[str, object]) -> None:
    """A payload past the signature check: only a root's key holder can send it, which is
    exactly why its decoding must not be the weak point."""
    _check(trustlist.encode_chain([_signed(json.dumps(payload).encode())]))


@given(st.binary(max_size=300))
def test_fuzz_trustlist_correctly_signed_payload_bytes(payload: bytes) -> None:
    _check(trustlist.encode_chain([_signed(payload)]))
