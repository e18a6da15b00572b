"""The OTA job document (`afr_ota`) exactly as FreeRTOS agents parse it.

Quirks that are the contract (device-protocol.md §2): compact JSON so that the raw
`protocols` text stays within 19 characters; `/` never escaped in the base64
signature; only `files[0]` is read; numbers within 32 bits. The top-level `overair`
key carries what only overair agents read (the signer's certificate chain); FreeRTOS
agents ignore it.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from overair.core.errors import DecodeError

PROTOCOLS = ("MQTT", "HTTP")
SIGNATURE_KEYS = {"sig-sha256-ecdsa": "ECDSA", "sig-sha256-rsa": "RSA"}


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
        if not 0 < self.filesize <= 0xFFFFFFFF:
            raise DecodeError(f"filesize {self.filesize} out of range")
        if not 0 <= self.fileid <= 255:
            raise DecodeError(f"fileid {self.fileid} out of range")
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
            doc["overair"] = {"signer_chain": [base64.b64encode(c).decode() for c in self.signer_chain]}
        doc.update(self.extra)
        return doc


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


def parse_job_document(doc: Any) -> OtaJobDocument:
    """Parse a received `jobDocument` object; refuses anything not an OTA document."""
    if not isinstance(doc, dict) or not isinstance(doc.get("afr_ota"), dict):
        raise DecodeError("not an OTA job document (no afr_ota)", code="NotOtaDocument")
    ota = doc["afr_ota"]
    protocols = ota.get("protocols")
    if not isinstance(protocols, list) or not all(isinstance(p, str) for p in protocols):
        raise DecodeError("afr_ota.protocols must be a list of strings")
    files = ota.get("files")
    if not isinstance(files, list) or not files:
        raise DecodeError("afr_ota.files must be a non-empty list")
    chain: tuple[bytes, ...] = ()
    extension = doc.get("overair")
    if isinstance(extension, dict) and isinstance(extension.get("signer_chain"), list):
        chain = tuple(_b64(c, "overair.signer_chain") for c in extension["signer_chain"])
    stream = ota.get("streamname")
    return OtaJobDocument(
        protocols=tuple(protocols),
        files=tuple(_parse_file(f) for f in files),
        stream_name=stream if isinstance(stream, str) else None,
        signer_chain=chain,
    )


def _parse_file(obj: Any) -> OtaFile:
    if not isinstance(obj, dict):
        raise DecodeError("afr_ota.files[] entries must be objects")
    sig_keys = [k for k in obj if k.startswith("sig-")]
    if len(sig_keys) != 1:
        raise DecodeError("a file needs exactly one sig-<hash>-<algorithm> entry")
    for name in ("filepath", "certfile"):
        if not isinstance(obj.get(name), str):
            raise DecodeError(f"file.{name} must be a string")
    for name in ("filesize", "fileid"):
        if isinstance(obj.get(name), bool) or not isinstance(obj.get(name), int):
            raise DecodeError(f"file.{name} must be an integer")
    url = obj.get("update_data_url")
    return OtaFile(
        filepath=obj["filepath"],
        filesize=obj["filesize"],
        fileid=obj["fileid"],
        certfile=obj["certfile"],
        signature=_b64(obj[sig_keys[0]], sig_keys[0]),
        signature_key=sig_keys[0],
        file_type=obj.get("fileType") if isinstance(obj.get("fileType"), int) else None,
        update_data_url=url if isinstance(url, str) else None,
        auth_scheme=obj.get("auth_scheme") if isinstance(obj.get("auth_scheme"), str) else None,
    )


def _b64(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise DecodeError(f"{name} must be base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise DecodeError(f"{name} is not valid base64") from exc
