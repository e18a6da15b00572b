"""Signed, expiring deployment metadata (threats F1 freeze, F2 injected job).

The server's deployment key (ECDSA P-256, separate from code signing and from the
revocation key) signs, for each delivery of an OTA job to an overair agent, a statement
binding what the device is told to install:

    payload = compact JSON {"_type": "overair.deployment/v1", "job_id": ..., "thing": ...,
                            "files": [{"name", "size", "sha256" (hex), "version", "security_counter"}],
                            "stream": "<stream id>" | "", "url_path": "<path of the pre-signed URL>" | "",
                            "expires": <epoch s>, "sequence": <int that only goes up>}

in a DSSE envelope (https://github.com/secure-systems-lab/dsse, protocol.md): the
signature is over PAE(payloadType, payload) =
`"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body` (LEN: ASCII decimal byte count),
never over the JSON itself, so no canonicalisation is needed:

    envelope = {"payload": base64(payload), "payloadType": PAYLOAD_TYPE,
                "signatures": [{"keyid": hex(SHA-256(SPKI DER)), "sig": base64(DER ECDSA-SHA256)}]}

The envelope comes from the network (the job document's `overair.deployment`):
`verify` raises DecodeError (malformed) or VerificationFailed (no signature by a trusted
key) and nothing else, whatever it holds (fuzzed: tests/fuzz/test_fuzz_deployment.py).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeGuard

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from overair.core import wirejson
from overair.core.errors import DecodeError, VerificationFailed
from overair.core.limits import DEFAULT_LIMITS, Limits

PAYLOAD_TYPE = "application/vnd.overair.deployment+json"
STATEMENT_TYPE = "overair.deployment/v1"
MAX_FILES = 8
MAX_SIGNATURES = 4
# The `url_path` of metadata signed for an offline bundle (core/bundle.py): no URL of an
# online delivery has a path like it, so metadata made for one way is refused the other.
BUNDLE_SOURCE_PREFIX = "bundle:"
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
_KEYID = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class DeployedFile:
    name: str
    size: int
    sha256: bytes
    version: str  # MAJOR.MINOR.BUILD from the image header, "" if not an overair image
    security_counter: int


@dataclass(frozen=True, slots=True)
class Deployment:
    job_id: str
    thing: str
    files: tuple[DeployedFile, ...]
    stream: str
    url_path: str
    expires: int
    sequence: int
    # Key ids of the trusted keys whose signatures verified (set by `verify`, not signed):
    # a job whose every signing key was retired since is refused (agent/trust.py).
    signed_by: frozenset[str] = frozenset()


_PEM_PUBLIC_KEY = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.DOTALL)


def load_public_keys(pem: bytes) -> list[ec.EllipticCurvePublicKey]:
    """Every `PUBLIC KEY` block of a PEM file (a device trusts several during a
    rotation); DecodeError if one is unreadable or not a P-256 key."""
    keys = []
    for block in _PEM_PUBLIC_KEY.findall(pem):
        try:
            key = serialization.load_pem_public_key(block)
        except ValueError as exc:
            raise DecodeError(f"unreadable deployment public key: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
            raise DecodeError("a deployment key must be an ECDSA P-256 key")
        keys.append(key)
    return keys


def public_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding (protocol.md)."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def encode_payload(deployment: Deployment) -> bytes:
    return json.dumps({
        "_type": STATEMENT_TYPE, "job_id": deployment.job_id, "thing": deployment.thing,
        "files": [{"name": f.name, "size": f.size, "sha256": f.sha256.hex(), "version": f.version,
                   "security_counter": f.security_counter} for f in deployment.files],
        "stream": deployment.stream, "url_path": deployment.url_path,
        "expires": deployment.expires, "sequence": deployment.sequence,
    }, separators=(",", ":"), sort_keys=True).encode()


def sign(deployment: Deployment, key: ec.EllipticCurvePrivateKey,
         *more_keys: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    """The envelope (a JSON object) to put at the document's `overair.deployment`; signed
    by each key given (during a rotation, by the current and the next deployment key, so
    that agents on either side of it admit it)."""
    payload = encode_payload(deployment)
    message = pae(PAYLOAD_TYPE, payload)
    return {"payload": base64.b64encode(payload).decode(), "payloadType": PAYLOAD_TYPE,
            "signatures": [{"keyid": key_id(k.public_key()),
                            "sig": base64.b64encode(k.sign(message, ec.ECDSA(hashes.SHA256()))).decode()}
                           for k in (key, *more_keys)]}


def verify(envelope: Any, trusted: Sequence[ec.EllipticCurvePublicKey],
           limits: Limits = DEFAULT_LIMITS) -> Deployment:
    """The deployment an envelope (already JSON-decoded) states, if a trusted key signed
    it. DecodeError for a malformed envelope or payload, VerificationFailed when no
    signature verifies with a trusted key (`UnknownDeploymentKey` when none is by one)."""
    if not isinstance(envelope, dict):
        raise DecodeError("deployment metadata must be an object")
    if envelope.get("payloadType") != PAYLOAD_TYPE:
        raise DecodeError("deployment metadata has another payloadType")
    payload = bounded_b64(envelope.get("payload"), "payload", limits.max_revocation_list_bytes)
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list) or not 1 <= len(signatures) <= MAX_SIGNATURES:
        raise DecodeError(f"deployment metadata must carry 1 to {MAX_SIGNATURES} signatures")
    by_id = {key_id(k): k for k in trusted}
    message = pae(PAYLOAD_TYPE, payload)
    known = False
    valid: set[str] = set()
    for entry in signatures:
        if not isinstance(entry, dict) or not isinstance(entry.get("keyid"), str) \
                or not _KEYID.fullmatch(entry["keyid"]):
            raise DecodeError("deployment metadata signature entries need a keyid (hex SHA-256)")
        sig = bounded_b64(entry.get("sig"), "sig", 1024)
        key = by_id.get(entry["keyid"])
        if key is None:
            continue
        known = True
        try:
            key.verify(sig, message, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            continue
        valid.add(entry["keyid"])
    if valid:
        return replace(decode_payload(payload, limits), signed_by=frozenset(valid))
    if not known:
        raise VerificationFailed("deployment metadata is not signed by a deployment key this device trusts",
                                 code="UnknownDeploymentKey")
    raise VerificationFailed("deployment metadata signature does not verify", code="BadDeploymentSignature")


def decode_payload(payload: bytes, limits: Limits = DEFAULT_LIMITS) -> Deployment:
    obj = wirejson.loads(payload, limits=limits, max_depth=3, what="deployment metadata")
    if not isinstance(obj, dict) or obj.get("_type") != STATEMENT_TYPE:
        raise DecodeError("deployment metadata of an unknown type")
    job_id, thing, files = obj.get("job_id"), obj.get("thing"), obj.get("files")
    stream, url_path, expires, sequence = obj.get("stream"), obj.get("url_path"), obj.get("expires"), \
        obj.get("sequence")
    if not (_text(job_id) and _text(thing) and _text(stream) and _text(url_path)):
        raise DecodeError("deployment metadata: job_id, thing, stream and url_path must be text")
    if not (is_uint(expires) and is_uint(sequence)):
        raise DecodeError("deployment metadata: expires and sequence must be non-negative integers")
    if not isinstance(files, list) or not 1 <= len(files) <= MAX_FILES:
        raise DecodeError(f"deployment metadata must describe 1 to {MAX_FILES} files")
    return Deployment(job_id, thing, tuple(_file(f) for f in files), stream, url_path, expires, sequence)


def _file(obj: Any) -> DeployedFile:
    if not isinstance(obj, dict):
        raise DecodeError("deployment metadata: a file must be an object")
    name, size, digest, version, counter = (obj.get("name"), obj.get("size"), obj.get("sha256"),
                                            obj.get("version"), obj.get("security_counter"))
    if not (_text(name) and _text(version) and is_uint(size) and is_uint(counter)
            and isinstance(digest, str) and _HEX_SHA256.fullmatch(digest)):
        raise DecodeError("deployment metadata: a file needs name, size, sha256 (hex), version and "
                          "security_counter")
    return DeployedFile(name, size, bytes.fromhex(digest), version, counter)


def _text(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and len(value) <= 1024


def is_uint(value: object) -> TypeGuard[int]:
    """An unsigned 63-bit integer in a decoded envelope (JSON true is not 1)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 63


def bounded_b64(value: object, name: str, max_bytes: int, subject: str = "deployment metadata") -> bytes:
    """Base64 text of at most `max_bytes` decoded bytes in a DSSE envelope (this module's
    and core/trustlist.py's); DecodeError naming `subject` and `name` otherwise."""
    if not isinstance(value, str) or not value.isascii() or len(value) > max_bytes * 4 // 3 + 4:
        raise DecodeError(f"{subject}: {name} is not bounded base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise DecodeError(f"{subject}: {name} is not base64") from exc
