"""Offline update bundles: one file that carries an OTA update to a device without a
network path (USB stick, a local service tool) — docs/security.md "Offline bundles".

A bundle is a POSIX tar archive (no compression: images are compressed already, and a
reader then needs no decompressor whose output could balloon) holding, in this order:

    manifest.json   {"format": "overair.bundle/v1", "thing": ..., "job_id": ...,
                     "execution_number": <int>, "document": <the job document as the
                     thing receives it, `overair.deployment` included>,
                     "files": [{"member": "file-0", "size": ..., "sha256": hex}],
                     "revocations": <base64 of the server's signed revocation list> | "",
                     "trust_lists": <base64 of the published trust list chain> | ""}  (optional)
    file-0 ...      the signed image(s), exactly the bytes the OTA update signed

Nothing in a bundle is trusted for being there: the manifest only says where things
are. The agent admits the document's deployment metadata, the image's signature and
chain, the revocation list, the trust lists (key rotation: core/trustlist.py, so that a
device without a network path takes a rotation too), the version and counter exactly as
it admits an online job
(agent/trust.py, through the same state machine: agent/bundle_install.py).

The metadata of a bundle names the source `url_path` "bundle:<OTA update id>"
(`deployment.BUNDLE_SOURCE_PREFIX`): no URL of an online delivery has such a path, and
an online agent refuses metadata naming one (and an offline install refuses any
other), so metadata signed for a bundle is never accepted online, nor the reverse.

Reading is bounded (`read_bundle`): at most MAX_MEMBERS regular-file members with the
expected names, each no larger than the manifest says and than `Limits`, the manifest
no larger than MAX_MANIFEST_BYTES and decoded with wirejson. It raises DecodeError for
anything else, and nothing else (fuzzed: tests/fuzz/test_fuzz_bundle.py).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import re
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from overair.core import wirejson
from overair.core.deployment import MAX_FILES
from overair.core.errors import DecodeError
from overair.core.limits import DEFAULT_LIMITS, Limits
from overair.core.topics import is_job_id, is_thing_name

FORMAT = "overair.bundle/v1"
MANIFEST = "manifest.json"
# A job document (32 KiB), a revocation list and a trust list chain (256 KiB each, as base64).
MAX_MANIFEST_BYTES = 768 * 1024
MAX_MEMBERS = 1 + MAX_FILES
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class BundleFile:
    member: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Bundle:
    thing: str
    job_id: str
    execution_number: int
    document: dict[str, Any]
    files: tuple[BundleFile, ...]
    revocations: bytes | None  # the signed revocation list envelope, if the bundle carries one
    trust_lists: bytes | None = None  # the published trust list chain, if the bundle carries one


def member_name(index: int) -> str:
    return f"file-{index}"


def write_bundle(out: IO[bytes], thing: str, job_id: str, execution_number: int, document: dict[str, Any],
                 files: Sequence[bytes], revocations: bytes | None, trust_lists: bytes | None = None) -> None:
    """Write a bundle to `out` (a binary file open for writing)."""
    manifest = {
        "format": FORMAT, "thing": thing, "job_id": job_id, "execution_number": execution_number,
        "document": document,
        "files": [{"member": member_name(i), "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                  for i, data in enumerate(files)],
        "revocations": "" if revocations is None else base64.b64encode(revocations).decode(),
        "trust_lists": "" if trust_lists is None else base64.b64encode(trust_lists).decode(),
    }
    encoded = json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [(MANIFEST, encoded), *((member_name(i), d) for i, d in enumerate(files))]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))


def read_bundle_file(path: Path, limits: Limits = DEFAULT_LIMITS) -> Bundle:
    """`read_bundle` of a file; OSError if it cannot be opened."""
    with path.open("rb") as f:
        return read_bundle(f, limits)


def read_bundle(source: IO[bytes], limits: Limits = DEFAULT_LIMITS) -> Bundle:
    """The bundle in `source`, checked for shape and size only (see the module doc)."""
    try:
        with tarfile.open(fileobj=source, mode="r:") as tar:
            return _read(tar, limits)
    except (tarfile.TarError, EOFError, UnicodeError, ValueError, OverflowError) as exc:
        raise DecodeError(f"not a readable bundle: {type(exc).__name__}: {str(exc)[:200]}",
                          code="BadBundle") from None


def _read(tar: tarfile.TarFile, limits: Limits) -> Bundle:
    members: list[tarfile.TarInfo] = []
    while (info := tar.next()) is not None:  # one at a time: never more than MAX_MEMBERS headers read
        members.append(info)
        if len(members) > MAX_MEMBERS:
            raise _bad(f"a bundle holds at most {MAX_MEMBERS} members")
        if not info.isreg():  # links, devices, directories: never followed nor created
            raise _bad(f"member {info.name[:64]!r} is not a regular file")
    if not members or members[0].name != MANIFEST:
        raise _bad(f"the first member of a bundle must be {MANIFEST}")
    manifest = _manifest(_member(tar, members[0], MAX_MANIFEST_BYTES), limits)
    described = manifest["files"]
    if [m.name for m in members[1:]] != [entry[0] for entry in described]:
        raise _bad("the bundle's members are not the files its manifest lists, in order")
    files = []
    for info, (name, size, digest) in zip(members[1:], described, strict=True):
        if info.size != size:
            raise _bad(f"{name} holds {info.size} bytes, the manifest says {size}")
        data = _member(tar, info, size)
        if hashlib.sha256(data).digest() != digest:
            raise _bad(f"{name} does not match the SHA-256 its manifest gives")
        files.append(BundleFile(name, data))
    return Bundle(manifest["thing"], manifest["job_id"], manifest["execution_number"], manifest["document"],
                  tuple(files), manifest["revocations"], manifest["trust_lists"])


def _member(tar: tarfile.TarFile, info: tarfile.TarInfo, max_bytes: int) -> bytes:
    if not info.isreg():
        raise _bad(f"member {info.name[:64]!r} is not a regular file")
    if info.size > max_bytes:
        raise _bad(f"member {info.name[:64]!r} of {info.size} bytes is larger than {max_bytes}")
    f = tar.extractfile(info)
    if f is None:
        raise _bad(f"member {info.name[:64]!r} cannot be read")
    data = f.read(max_bytes + 1)
    if len(data) != info.size:
        raise _bad(f"member {info.name[:64]!r} is truncated")
    return data


def _manifest(raw: bytes, limits: Limits) -> dict[str, Any]:
    obj = wirejson.loads(raw, limits=limits, max_bytes=MAX_MANIFEST_BYTES, what="bundle manifest")
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise _bad(f"the manifest is not an {FORMAT} manifest")
    thing, job_id, number = obj.get("thing"), obj.get("job_id"), obj.get("execution_number")
    document, files, revocations = obj.get("document"), obj.get("files"), obj.get("revocations")
    if not (isinstance(thing, str) and is_thing_name(thing)):
        raise _bad("the manifest's thing is not a thing name")
    if not (isinstance(job_id, str) and is_job_id(job_id)):
        raise _bad("the manifest's job_id is not a job id")
    if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number < 1 << 63:
        raise _bad("the manifest's execution_number is not a positive integer")
    if not isinstance(document, dict):
        raise _bad("the manifest's document is not an object")
    if not isinstance(files, list) or not 1 <= len(files) <= MAX_FILES:
        raise _bad(f"the manifest must list 1 to {MAX_FILES} files")
    described = []
    for index, entry in enumerate(files):
        size = entry.get("size") if isinstance(entry, dict) else None
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        sized = isinstance(size, int) and not isinstance(size, bool) and 0 < size <= limits.max_object_bytes
        if not (isinstance(entry, dict) and entry.get("member") == member_name(index) and sized
                and isinstance(digest, str) and _HEX_SHA256.fullmatch(digest)):
            raise _bad(f"the manifest's file {index} needs member {member_name(index)!r}, a size, a sha256")
        described.append((member_name(index), size, bytes.fromhex(digest)))
    return {"thing": thing, "job_id": job_id, "execution_number": number, "document": document,
            "files": described, "revocations": _optional_b64(revocations, "revocations"),
            "trust_lists": _optional_b64(obj.get("trust_lists", ""), "trust_lists")}


def _optional_b64(value: object, name: str) -> bytes | None:
    if not isinstance(value, str):
        raise _bad(f"the manifest's {name} must be base64 text")
    try:
        return base64.b64decode(value, validate=True) if value else None
    except (binascii.Error, ValueError):
        raise _bad(f"the manifest's {name} are not base64") from None


def _bad(message: str) -> DecodeError:
    return DecodeError(f"bundle: {message}", code="BadBundle")
