"""The signed code-signing revocation list that overair sends to its agents (threat O2).

A revoked code-signing certificate must stop being trusted by devices, but devices
trust code-signing *roots*, whose keys the server does not hold (and, for the
development root, nobody holds), so no X.509 CRL from the issuer is possible. Instead
the server signs a small list with its own revocation key (ECDSA P-256, created by
`overair init`), whose certificate each agent bundle carries:

    body     = compact JSON {"format": 1, "sequence": N, "issued_at": T,
                             "serials": ["<hex>", ...]}
    envelope = JSON {"list": base64(body), "signature": base64(DER ECDSA-SHA256(body))}

`sequence` only grows (it is the number of revocations so far, and a revocation is
final), so an agent refuses a list older than the one it holds: replaying an old list
cannot un-revoke a certificate. The server publishes the envelope retained on
`REVOCATIONS_TOPIC`, which every device may read and none may write.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from overair.core.errors import DecodeError, VerificationFailed

REVOCATIONS_TOPIC = "overair/code-signing/revocations"
FORMAT = 1
MAX_ENVELOPE_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class RevocationList:
    sequence: int
    issued_at: int
    serials: frozenset[int]


def encode_body(revocations: RevocationList) -> bytes:
    return json.dumps({"format": FORMAT, "sequence": revocations.sequence,
                       "issued_at": revocations.issued_at,
                       "serials": [format(s, "x") for s in sorted(revocations.serials)]},
                      separators=(",", ":"), sort_keys=True).encode()


def sign_list(revocations: RevocationList, key: ec.EllipticCurvePrivateKey) -> bytes:
    """The envelope to publish."""
    body = encode_body(revocations)
    signature = key.sign(body, ec.ECDSA(hashes.SHA256()))
    return json.dumps({"list": base64.b64encode(body).decode(),
                       "signature": base64.b64encode(signature).decode()},
                      separators=(",", ":")).encode()


def verify_list(envelope: bytes, signer: x509.Certificate) -> RevocationList:
    """Check the envelope's signature with the revocation signer's certificate and
    decode it. Raises DecodeError (malformed) or VerificationFailed (bad signature)."""
    if len(envelope) > MAX_ENVELOPE_BYTES:
        raise DecodeError("revocation list too large")
    try:
        outer = json.loads(envelope)
        body = base64.b64decode(outer["list"], validate=True)
        signature = base64.b64decode(outer["signature"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error, RecursionError) as exc:
        raise DecodeError(f"malformed revocation list envelope: {exc}") from exc
    public_key = signer.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise VerificationFailed("the revocation signer must have an EC key", code="BadSignerKey")
    try:
        public_key.verify(signature, body, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise VerificationFailed("revocation list signature does not verify",
                                 code="BadSignature") from exc
    return _decode_body(body)


def _decode_body(body: bytes) -> RevocationList:
    try:
        obj = json.loads(body)
        if obj["format"] != FORMAT:
            raise DecodeError(f"unsupported revocation list format {obj['format']!r}")
        sequence, issued_at, serials = obj["sequence"], obj["issued_at"], obj["serials"]
        if not (isinstance(sequence, int) and isinstance(issued_at, int) and isinstance(serials, list)):
            raise DecodeError("revocation list fields have the wrong types")
        return RevocationList(sequence, issued_at, frozenset(int(s, 16) for s in serials))
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise DecodeError(f"malformed revocation list: {exc}") from exc


def newer(candidate: RevocationList, held: RevocationList | None) -> bool:
    """Whether `candidate` may replace `held` (a list never goes back in sequence)."""
    return held is None or candidate.sequence > held.sequence


def merged_serials(static: Iterable[int], held: RevocationList | None) -> frozenset[int]:
    return frozenset(static) | (held.serials if held is not None else frozenset())
