"""Fuzz target: core/deployment.py, the signed deployment metadata a job document
carries to overair agents (F1 F2), and agent/trust.py `admit_deployment` around it.
Whatever the envelope (it arrives decoded from a job message), and whatever a correctly
signed payload holds, only `DecodeError` or `VerificationFailed` may escape `verify`, and
`admit_deployment` returns a verdict and raises nothing."""

from __future__ import annotations

import base64
import contextlib
import json
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from overair.agent.machine.state import Settings
from overair.agent.trust import admit_deployment
from overair.core import deployment
from overair.core.errors import DecodeError, VerificationFailed
from overair.core.jobdoc import OtaFile, OtaJobDocument
from tests.fuzz.agent_strategies import HOSTILE_TEXT, JSON_VALUES

KEY = ec.generate_private_key(ec.SECP256R1())
KEYID = deployment.key_id(KEY.public_key())
SETTINGS = Settings(thing_name="dev-1", deployment_keys=(KEY.public_key(),), require_deployment=True)
DOC = OtaJobDocument(protocols=("MQTT",), stream_name="s",
                     files=(OtaFile(filepath="/fw", filesize=10, fileid=0, certfile="c", signature=b"s"),))


def _signed(payload: bytes) -> dict[str, Any]:
    """An envelope around any payload, correctly signed, so that decoding is reached."""
    signature = KEY.sign(deployment.pae(deployment.PAYLOAD_TYPE, payload), ec.ECDSA(hashes.SHA256()))
    return {"payload": base64.b64encode(payload).decode(), "payloadType": deployment.PAYLOAD_TYPE,
            "signatures": [{"keyid": KEYID, "sig": base64.b64encode(signature).decode()}]}


def _check(envelope: Any) -> None:
    with contextlib.suppress(DecodeError, VerificationFailed):
        deployment.verify(envelope, SETTINGS.deployment_keys)
    admit_deployment(envelope, SETTINGS, held_sequence=0, job_id="job-1", doc=DOC, url=None, now=0.0)


@given(JSON_VALUES | HOSTILE_TEXT)
def test_fuzz_deployment_any_envelope(envelope: object) -> None:
    _check(envelope)


@given(JSON_VALUES | HOSTILE_TEXT, JSON_VALUES | HOSTILE_TEXT,
       st.lists(JSON_VALUES, max_size=3) | JSON_VALUES)
def test_fuzz_deployment_envelope_fields(payload: object, payload_type: object, signatures: object) -> None:
    _check({"payload": payload, "payloadType": payload_type, "signatures": signatures})
    _check({"payload": payload, "payloadType": deployment.PAYLOAD_TYPE,
            "signatures": [{"keyid": KEYID, "sig": payload}]})


@given(st.fixed_dictionaries({}, optional={
    "_type": st.just(deployment.STATEMENT_TYPE) | JSON_VALUES, "job_id": JSON_VALUES | HOSTILE_TEXT,
    "thing": JSON_VALUES | HOSTILE_TEXT, "stream": JSON_VALUES, "url_path": JSON_VALUES,
    "expires": JSON_VALUES, "sequence": JSON_VALUES,
    "files": st.lists(st.fixed_dictionaries({}, optional={
        "name": JSON_VALUES | HOSTILE_TEXT, "size": JSON_VALUES, "sha256": JSON_VALUES | HOSTILE_TEXT,
        "version": JSON_VALUES, "security_counter": JSON_VALUES}), max_size=3) | JSON_VALUES}))
def test_fuzz_deployment_correctly_signed_hostile_payload(payload: dict[str, object]) -> None:
    """A payload past the signature check: only a holder of the deployment key can send
    it, which is exactly why its decoding must not be the weak point."""
    _check(_signed(json.dumps(payload).encode()))


@given(st.binary(max_size=200))
def test_fuzz_deployment_correctly_signed_payload_bytes(payload: bytes) -> None:
    _check(_signed(payload))
