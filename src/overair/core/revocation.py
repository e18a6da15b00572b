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
cannot un-revoke a certificate (decided by agent/trust.py `DeviceTrust.admit_revocations`).
The server publishes the envelope retained on
`REVOCATIONS_TOPIC`, which every device may read and none may write.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeGuard

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from overair.core import wirejson
from overair.core.errors import DecodeError, VerificationFailed
from overair.core.limits import DEFAULT_LIMITS, Limits

REVOCATIONS_TOPIC = "overair/code-signing/revocations"
FORMAT = 1
MAX_ENVELOPE_BYTES = DEFAULT_LIMITS.max_revocation_list_bytes
# X.509 serials are at most 20 octets (RFC 5280 4.1.2.2); encode_body writes lower-case hex.
_HEX_SERIAL = re.compile(r"[0-9a-f]{1,40}")


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


def verify_list(envelope: bytes, signer: x509.Certificate, limits: Limits = DEFAULT_LIMITS) -> RevocationList:
    """Check the envelope's signature with the revocation signer's certificate and
    decode it. Raises DecodeError (malformed) or VerificationFailed (bad signature), and
    nothing else whatever `envelope` holds: it arrives from the broker (fuzzed)."""
    if len(envelope) > limits.max_revocation_list_bytes:
        raise DecodeError("revocation list too large")
    outer = wirejson.loads(envelope, limits=limits, max_depth=2, what="revocation list envelope")
    if not isinstance(outer, dict):
        raise DecodeError("malformed revocation list envelope: not an object")
    body = _b64(outer.get("list"), "list")
    signature = _b64(outer.get("signature"), "signature")
    public_key = signer.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise VerificationFailed("the revocation signer must have an EC key", code="BadSignerKey")
    try:
        public_key.verify(signature, body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError) as exc:
        raise VerificationFailed("revocation list signature does not verify",
                                 code="BadSignature") from exc
    return _decode_body(body, limits)


def _b64(value: object, name: str) -> bytes:
    # ASCII first: b64decode raises ValueError, not binascii.Error, for other text.
    if not isinstance(value, str) or not value.isascii():
        raise DecodeError(f"malformed revocation list envelope: {name} is not base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise DecodeError(f"malformed revocation list envelope: {name} is not base64") from exc


def _decode_body(body: bytes, limits: Limits) -> RevocationList:
    obj = wirejson.loads(body, limits=limits, max_depth=2, what="revocation list")
    if not isinstance(obj, dict):
        raise DecodeError("malformed revocation list: not an object")
    fmt, sequence, issued_at, serials = (obj.get("format"), obj.get("sequence"), obj.get("issued_at"),
                                         obj.get("serials"))
    if not _is_int(fmt) or fmt != FORMAT:
        raise DecodeError("unsupported revocation list format")
    if not (_is_int(sequence) and _is_int(issued_at) and isinstance(serials, list)):
        raise DecodeError("revocation list fields have the wrong types")
    if not all(isinstance(s, str) and _HEX_SERIAL.fullmatch(s) for s in serials):
        raise DecodeError("revocation list serials must be lower-case hex of at most 40 digits")
    return RevocationList(sequence, issued_at, frozenset(int(s, 16) for s in serials))


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def merged_serials(static: Iterable[int], held: RevocationList | None) -> frozenset[int]:
    return frozenset(static) | (held.serials if held is not None else frozenset())
