"""The signed trust list: how code-signing roots and deployment keys rotate on devices
without re-provisioning them (issue 14, "Key lifecycle").

The model is TUF's root metadata and its rotation rule (TUF specification §5.3.4,
"Update the root role"; python-tuf `TrustedMetadataSet.update_root`): version N+1 of the
list is trusted only if it is signed by a threshold of the keys version N trusts *and*
by a threshold of the keys it names itself, and its version is exactly N+1. The keys
that sign a list are the code-signing roots' keys (devices already hold the roots,
nothing else they hold is kept offline by the operator), so the list needs no new
key on any device:

    payload = compact JSON {"_type": "overair.trust/v1", "version": N, "threshold": k,
                            "code_signing_roots": [base64(DER certificate), ...],
                            "deployment_keys": [base64(DER SubjectPublicKeyInfo), ...]}

in a DSSE envelope, as deployment metadata is (core/deployment.py): each signature is
over PAE(payloadType, payload), by a root's key (ECDSA with SHA-256, or RSA PKCS#1 v1.5
with SHA-256), named by keyid = hex(SHA-256(the key's SPKI DER)). Version 0 is what a
device's bundle holds (its roots, its deployment keys, `[trust] trust_list_threshold`).

The server publishes every version it accepted, oldest first, as one retained MQTT
message (the *chain*, `{"lists": [envelope, ...]}` on `TRUST_TOPIC`), so that a device
that missed rotations walks them one version at a time from its bundle, as a TUF client
walks `N.root.json`. Everything here comes from the network: `decode_chain` and
`decode_envelope` raise DecodeError, `admit_next` VerificationFailed, and nothing else
(fuzzed: tests/fuzz/test_fuzz_trustlist.py).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from overair.core import wirejson
from overair.core.codesign import sign_digest
from overair.core.deployment import bounded_b64, is_uint, pae
from overair.core.errors import DecodeError, VerificationFailed
from overair.core.limits import DEFAULT_LIMITS, Limits

PAYLOAD_TYPE = "application/vnd.overair.trust+json"
STATEMENT_TYPE = "overair.trust/v1"
# Retained, readable by every device, writable by the service only (gateway/broker.py).
TRUST_TOPIC = "overair/code-signing/trust"
MAX_ROOTS = 8
MAX_DEPLOYMENT_KEYS = 8
MAX_SIGNATURES = 8
# Versions in a chain: a rotation a year for decades; past it devices are re-provisioned.
MAX_CHAIN = 32
_KEYID = re.compile(r"[0-9a-f]{64}")

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True, slots=True)
class TrustList:
    version: int
    threshold: int  # signatures of distinct root keys the next version needs
    roots: tuple[x509.Certificate, ...]
    deployment_keys: tuple[ec.EllipticCurvePublicKey, ...]

    @property
    def anchor(self) -> Anchor:
        return Anchor(self.version, self.threshold, tuple(_public_key(c) for c in self.roots))


@dataclass(frozen=True, slots=True)
class Anchor:
    """What the next version must be signed by: `threshold` of `keys`, at `version` + 1."""

    version: int
    threshold: int
    keys: tuple[PublicKey, ...]


@dataclass(frozen=True, slots=True)
class SignedList:
    trust: TrustList
    payload: bytes
    signatures: tuple[tuple[str, bytes], ...]  # (keyid, signature), as the envelope carries them


def key_id(key: PublicKey) -> str:
    """hex(SHA-256(SPKI DER)), as deployment metadata names its keys."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _public_key(cert: x509.Certificate) -> PublicKey:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise DecodeError("a code-signing root must have an EC or RSA key")
    return key


def anchor_of(roots: Sequence[x509.Certificate], threshold: int) -> Anchor:
    """Version 0: a device's bundle (or the server's `pki/code-signing-root.pem`)."""
    return Anchor(0, threshold, tuple(_public_key(c) for c in roots))


# --- making and signing (operator side) -------------------------------------------------------


def encode_payload(trust: TrustList) -> bytes:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return json.dumps({
        "_type": STATEMENT_TYPE, "version": trust.version, "threshold": trust.threshold,
        "code_signing_roots": [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode()
                               for c in trust.roots],
        "deployment_keys": [base64.b64encode(k.public_bytes(serialization.Encoding.DER, spki)).decode()
                            for k in trust.deployment_keys],
    }, separators=(",", ":"), sort_keys=True).encode()


def unsigned_envelope(trust: TrustList) -> dict[str, Any]:
    """A new list, for the key holders to sign in turn (`add_signature`)."""
    return {"payload": base64.b64encode(encode_payload(trust)).decode(), "payloadType": PAYLOAD_TYPE,
            "signatures": []}


class DigestSigner(Protocol):
    """A key that signs a SHA-256 digest where it is kept (a PKCS#11 token:
    server/signing/keys.py `Pkcs11Key`); DER ECDSA or RSA PKCS#1 v1.5."""

    def public_key(self) -> Any: ...

    def sign_digest(self, digest: bytes) -> bytes: ...


def add_signature(envelope: Any, key: PrivateKey | DigestSigner) -> dict[str, Any]:
    """The envelope with `key`'s signature added (replacing an earlier one by the same
    key). DecodeError if the envelope is malformed or the key is neither EC nor RSA."""
    signed = decode_envelope(envelope)
    public = key.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise DecodeError("a trust list is signed by an EC or RSA key")
    kid = key_id(public)
    digest = hashlib.sha256(pae(PAYLOAD_TYPE, signed.payload)).digest()
    sig = key.sign_digest(digest) if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) \
        else sign_digest(key, digest)
    kept = [(k, s) for k, s in signed.signatures if k != kid] + [(kid, sig)]
    return {"payload": base64.b64encode(signed.payload).decode(), "payloadType": PAYLOAD_TYPE,
            "signatures": [{"keyid": k, "sig": base64.b64encode(s).decode()} for k, s in kept]}


def encode_chain(envelopes: Sequence[Any]) -> bytes:
    return json.dumps({"lists": list(envelopes)}, separators=(",", ":")).encode()


# --- reading and checking (device and server) -------------------------------------------------


def decode_chain(data: bytes, limits: Limits = DEFAULT_LIMITS) -> list[SignedList]:
    """The lists of a published chain, in its order (not yet checked: `admit_next`)."""
    obj = wirejson.loads(data, limits=limits, max_bytes=limits.max_trust_chain_bytes, max_depth=5,
                         what="trust list chain")
    lists = obj.get("lists") if isinstance(obj, dict) else None
    if not isinstance(lists, list) or not 1 <= len(lists) <= MAX_CHAIN:
        raise DecodeError(f"a trust list chain must be an object with 1 to {MAX_CHAIN} lists")
    return [decode_envelope(envelope, limits) for envelope in lists]


def decode_envelope(envelope: Any, limits: Limits = DEFAULT_LIMITS) -> SignedList:
    if not isinstance(envelope, dict) or envelope.get("payloadType") != PAYLOAD_TYPE:
        raise DecodeError(f"a trust list must be a DSSE envelope of type {PAYLOAD_TYPE}")
    payload = _b64(envelope.get("payload"), "payload", limits.max_trust_chain_bytes)
    entries = envelope.get("signatures")
    if not isinstance(entries, list) or len(entries) > MAX_SIGNATURES:
        raise DecodeError(f"a trust list carries at most {MAX_SIGNATURES} signatures")
    signatures = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("keyid"), str) \
                or not _KEYID.fullmatch(entry["keyid"]):
            raise DecodeError("trust list signature entries need a keyid (hex SHA-256)")
        signatures.append((entry["keyid"], _b64(entry.get("sig"), "sig", limits.agent_max_signature_bytes)))
    return SignedList(decode_payload(payload, limits), payload, tuple(signatures))


def decode_payload(payload: bytes, limits: Limits = DEFAULT_LIMITS) -> TrustList:
    obj = wirejson.loads(payload, limits=limits, max_bytes=limits.max_trust_chain_bytes, max_depth=3,
                         what="trust list")
    if not isinstance(obj, dict) or obj.get("_type") != STATEMENT_TYPE:
        raise DecodeError("a trust list of an unknown type")
    version, threshold, roots, keys = (obj.get("version"), obj.get("threshold"),
                                       obj.get("code_signing_roots"), obj.get("deployment_keys"))
    if not (is_uint(version) and version >= 1):
        raise DecodeError("a trust list's version must be an integer from 1")
    if not isinstance(roots, list) or not 1 <= len(roots) <= MAX_ROOTS:
        raise DecodeError(f"a trust list names 1 to {MAX_ROOTS} code-signing roots")
    if not isinstance(keys, list) or len(keys) > MAX_DEPLOYMENT_KEYS:
        raise DecodeError(f"a trust list names at most {MAX_DEPLOYMENT_KEYS} deployment keys")
    if not (is_uint(threshold) and 1 <= threshold <= len(roots)):
        raise DecodeError("a trust list's threshold must be from 1 to its number of roots")
    certs = tuple(_root(r, limits) for r in roots)
    if len({key_id(_public_key(c)) for c in certs}) != len(certs):
        raise DecodeError("a trust list names one root key twice (a threshold counts distinct keys)")
    return TrustList(version, threshold, certs, tuple(_deployment_key(k) for k in keys))


def signed_by(signed: SignedList, keys: Sequence[PublicKey]) -> int:
    """How many distinct keys of `keys` made a valid signature over the list."""
    by_id = {key_id(k): k for k in keys}
    message = pae(PAYLOAD_TYPE, signed.payload)
    valid = set()
    for kid, sig in signed.signatures:
        key = by_id.get(kid)
        if key is not None and kid not in valid and _verifies(key, sig, message):  # a set: each key once
            valid.add(kid)
    return len(valid)


def admit_next(signed: SignedList, current: Anchor) -> TrustList:
    """TUF's root rotation rule: the list is version `current.version + 1` and carries
    valid signatures of a threshold of the keys trusted now and of a threshold of the
    keys it names. VerificationFailed (its `code` names the check) otherwise."""
    trust = signed.trust
    if trust.version != current.version + 1:  # one check: no rollback, no version skipped
        if trust.version <= current.version:
            raise VerificationFailed(f"trust list {trust.version} is not newer than the trusted version "
                                     f"{current.version} (a list never goes back)", code="TrustListRollback")
        raise VerificationFailed(f"trust list {trust.version} skips version {current.version + 1}",
                                 code="TrustListVersionSkipped")
    have = signed_by(signed, current.keys)
    if have < current.threshold:
        raise VerificationFailed(f"trust list {trust.version} is signed by {have} of the trusted keys, "
                                 f"{current.threshold} needed", code="TrustListBelowThreshold")
    new = trust.anchor
    have = signed_by(signed, new.keys)
    if have < new.threshold:
        raise VerificationFailed(f"trust list {trust.version} is signed by {have} of its own keys, "
                                 f"{new.threshold} needed", code="TrustListNotSignedByNewKeys")
    return trust


def _verifies(key: PublicKey, sig: bytes, message: bytes) -> bool:
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(sig, message, ec.ECDSA(hashes.SHA256()))
        else:
            key.verify(sig, message, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        return False
    return True


def _root(value: object, limits: Limits) -> x509.Certificate:
    der = _b64(value, "code_signing_roots entry", limits.agent_max_certificate_bytes)
    try:
        cert = x509.load_der_x509_certificate(der)
        _public_key(cert)
    except ValueError as exc:
        raise DecodeError(f"a trust list's root is not a DER certificate: {exc}") from exc
    return cert


def _deployment_key(value: object) -> ec.EllipticCurvePublicKey:
    der = _b64(value, "deployment_keys entry", 1024)
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, TypeError) as exc:  # cryptography raises either for malformed DER
        raise DecodeError(f"a trust list's deployment key is unreadable: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise DecodeError("a deployment key must be an ECDSA P-256 key")
    return key


def _b64(value: object, name: str, max_bytes: int) -> bytes:
    return bounded_b64(value, name, max_bytes, subject="trust list")
