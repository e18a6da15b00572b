"""The OTA job document (`afr_ota`) exactly as FreeRTOS agents parse it.

Quirks that are the contract (device-protocol.md §2): compact JSON so that the raw
`protocols` text stays within 19 characters; `/` never escaped in the base64
signature; only `files[0]` is read; numbers within 32 bits. The top-level `overair`
key carries what only overair agents read (the signer's certificate chain). The server
stores and sends FreeRTOS devices the document without it, as AWS would (`afr_ota`
only: its size counts against the device's 4 KiB MQTT buffer), and adds it when it
delivers a document to a thing whose device profile takes it (server/ota/profiles.py);
the agent reads it here, where it arrives.

Parsing is the agent's first contact with what a server or broker sends (finding 9 of
issue 12: a non-ASCII signature crashed the agent at every restart). `parse_job_document`
takes the already decoded JSON value and raises `DecodeError` for anything it cannot
use, and nothing else: every text is a bounded, encodable string, every number is
range-checked before it is formatted, every base64 field is ASCII and bounded, and the
signer chain is bounded in length and size (core/limits.py).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from overair.core.errors import DecodeError
from overair.core.limits import DEFAULT_LIMITS, Limits

PROTOCOLS = ("MQTT", "HTTP")
SIGNATURE_KEYS = {"sig-sha256-ecdsa": "ECDSA", "sig-sha256-rsa": "RSA"}
MAX_U32 = 0xFFFFFFFF  # FreeRTOS keeps sizes and types in 32 bits
MAX_FILE_ID = 255
MAX_FILES = 16  # FreeRTOS reads only files[0]


@dataclass(frozen=True, slots=True)
class OtaFile:
    filepath: str
    filesize: int
    fileid: int
    certfile: str
    signature: bytes
    signature_key: str = "sig-sha256-ecdsa"
    file_type: int | None = 0
    update_data_url: str | None = None
    auth_scheme: str | None = None

    def __post_init__(self) -> None:
        if not 0 < self.filesize <= MAX_U32:
            raise DecodeError(f"filesize must be in [1, {MAX_U32}]")
        if not 0 <= self.fileid <= MAX_FILE_ID:
            raise DecodeError(f"fileid must be in [0, {MAX_FILE_ID}]")
        if self.signature_key not in SIGNATURE_KEYS:
            raise DecodeError(f"unsupported signature key {self.signature_key!r}")


@dataclass(frozen=True, slots=True)
class OtaJobDocument:
    protocols: tuple[str, ...]
    files: tuple[OtaFile, ...]
    stream_name: str | None = None
    # DER certificates from signer up to (not including) the device's trusted root.
    signer_chain: tuple[bytes, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.protocols or any(p not in PROTOCOLS for p in self.protocols):
            raise DecodeError(f"protocols must be a non-empty subset of {PROTOCOLS}")
        if not self.files:
            raise DecodeError("an OTA job document needs at least one file")
        if "MQTT" in self.protocols and not self.stream_name:
            raise DecodeError("MQTT delivery needs a stream name")

    def to_json_obj(self) -> dict[str, Any]:
        ota: dict[str, Any] = {"protocols": list(self.protocols)}
        if self.stream_name:
            ota["streamname"] = self.stream_name
        ota["files"] = [_file_obj(f) for f in self.files]
        doc: dict[str, Any] = {"afr_ota": ota}
        if self.signer_chain:
            doc["overair"] = overair_extension(self.signer_chain)
        doc.update(self.extra)
        return doc


def overair_extension(signer_chain: tuple[bytes, ...]) -> dict[str, Any]:
    """The value of the document's `overair` key: DER certificates, signer first."""
    return {"signer_chain": [base64.b64encode(c).decode() for c in signer_chain]}


def _file_obj(f: OtaFile) -> dict[str, Any]:
    obj: dict[str, Any] = {"filepath": f.filepath, "filesize": f.filesize, "fileid": f.fileid,
                           "certfile": f.certfile}
    if f.file_type is not None:
        obj["fileType"] = f.file_type
    if f.update_data_url is not None:
        obj["update_data_url"] = f.update_data_url
        obj["auth_scheme"] = f.auth_scheme or "aws.s3.presigned"
    obj[f.signature_key] = base64.b64encode(f.signature).decode()
    return obj


def dumps_compact(obj: Any) -> str:
    """JSON as devices need it: no spaces, `/` never escaped (json never escapes it)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def parse_job_document(doc: Any, limits: Limits = DEFAULT_LIMITS) -> OtaJobDocument:
    """Parse a received `jobDocument` object (already decoded from JSON, e.g. by
    core.wirejson); refuses anything not an OTA document with `DecodeError` and raises
    nothing else, whatever the shape or content of `doc` (fuzzed: tests/fuzz)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("afr_ota"), dict):
        raise DecodeError("not an OTA job document (no afr_ota)", code="NotOtaDocument")
    ota = doc["afr_ota"]
    protocols = ota.get("protocols")
    if (not isinstance(protocols, list) or not 0 < len(protocols) <= len(PROTOCOLS)
            or not all(isinstance(p, str) and p in PROTOCOLS for p in protocols)):
        raise DecodeError(f"afr_ota.protocols must be a non-empty list of {PROTOCOLS}")
    files = ota.get("files")
    if not isinstance(files, list) or not files:
        raise DecodeError("afr_ota.files must be a non-empty list")
    if len(files) > MAX_FILES:
        raise DecodeError(f"afr_ota.files lists more than {MAX_FILES} files")
    stream = ota.get("streamname")
    return OtaJobDocument(
        protocols=tuple(protocols),
        files=tuple(_parse_file(f, limits) for f in files),
        stream_name=_text(stream, "afr_ota.streamname", limits) if isinstance(stream, str) else None,
        signer_chain=_signer_chain(doc.get("overair"), limits),
    )


def _signer_chain(extension: Any, limits: Limits) -> tuple[bytes, ...]:
    """`overair.signer_chain`: what only overair agents read; absent is fine (the agent
    then refuses the image for want of a signer), malformed is not."""
    if extension is None:
        return ()
    if not isinstance(extension, dict):
        raise DecodeError("overair must be an object")
    chain = extension.get("signer_chain", [])
    if not isinstance(chain, list) or len(chain) > limits.agent_max_signer_chain:
        raise DecodeError(f"overair.signer_chain must be a list of at most {limits.agent_max_signer_chain} "
                          "certificates")
    return tuple(_b64(c, "overair.signer_chain[]", limits.agent_max_certificate_bytes) for c in chain)


def _parse_file(obj: Any, limits: Limits) -> OtaFile:
    if not isinstance(obj, dict):
        raise DecodeError("afr_ota.files[] entries must be objects")
    sig_keys = [k for k in obj if k.startswith("sig-")]
    if len(sig_keys) != 1:
        raise DecodeError("a file needs exactly one sig-<hash>-<algorithm> entry")
    signature_key = sig_keys[0]
    if signature_key not in SIGNATURE_KEYS:
        raise DecodeError(f"unsupported signature key {signature_key[:40]!r}")
    url, scheme, file_type = obj.get("update_data_url"), obj.get("auth_scheme"), obj.get("fileType")
    return OtaFile(
        filepath=_text(obj.get("filepath"), "file.filepath", limits),
        filesize=_integer(obj.get("filesize"), "file.filesize", 1, MAX_U32),
        fileid=_integer(obj.get("fileid"), "file.fileid", 0, MAX_FILE_ID),
        certfile=_text(obj.get("certfile"), "file.certfile", limits),
        signature=_b64(obj[signature_key], signature_key, limits.agent_max_signature_bytes),
        signature_key=signature_key,
        file_type=None if file_type is None else _integer(file_type, "file.fileType", 0, MAX_U32),
        update_data_url=_text(url, "file.update_data_url", limits) if url is not None else None,
        auth_scheme=_text(scheme, "file.auth_scheme", limits) if scheme is not None else None,
    )


def _text(value: Any, name: str, limits: Limits) -> str:
    """A string of bounded length that is real Unicode text: JSON's `\\ud800` escapes
    decode to lone surrogates, which no encoder takes (a crash waiting in a log line,
    a digest or a topic)."""
    if not isinstance(value, str):
        raise DecodeError(f"{name} must be a string")
    if len(value) > limits.agent_max_job_text_length:
        raise DecodeError(f"{name} is longer than {limits.agent_max_job_text_length} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise DecodeError(f"{name} is not valid Unicode text") from None
    return value


def _integer(value: Any, name: str, low: int, high: int) -> int:
    # The value is never formatted: a hostile integer may be too long to print.
    if isinstance(value, bool) or not isinstance(value, int):
        raise DecodeError(f"{name} must be an integer")
    if not low <= value <= high:
        raise DecodeError(f"{name} must be in [{low}, {high}]")
    return value


def _b64(value: Any, name: str, max_bytes: int) -> bytes:
    """Strict base64 text to bytes. `base64.b64decode` raises ValueError, not
    binascii.Error, for text that is not ASCII (finding 9: it escaped and crashed the
    agent at every restart), so the text is checked to be ASCII first."""
    if not isinstance(value, str):
        raise DecodeError(f"{name} must be base64 text")
    if not value.isascii():
        raise DecodeError(f"{name} is not base64 (non-ASCII characters)")
    if len(value) > (max_bytes + 2) // 3 * 4:
        raise DecodeError(f"{name} is longer than {max_bytes} bytes")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise DecodeError(f"{name} is not valid base64") from None
