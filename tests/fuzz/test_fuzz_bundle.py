"""Fuzz target: core/bundle.py `read_bundle`, the reader of an offline bundle (a file
from a USB stick or a service tool: untrusted). Whatever the bytes, a tar archive with
hostile members, or a well-formed archive whose manifest is hostile, only DecodeError
escapes, and what it returns is bounded as the module promises."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

from hypothesis import given
from hypothesis import strategies as st

from overair.core.bundle import MANIFEST, MAX_MEMBERS, Bundle, read_bundle, write_bundle
from overair.core.errors import DecodeError
from tests.fuzz.agent_strategies import HOSTILE_TEXT, JSON_VALUES

VALID = io.BytesIO()
write_bundle(VALID, "dev-1", "job-1", 1, {"afr_ota": {}}, [b"image bytes"], b"revocations")
VALID_BYTES = VALID.getvalue()
_TYPES = [tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE, tarfile.FIFOTYPE,
          tarfile.CHRTYPE, tarfile.GNUTYPE_SPARSE]


def _read(data: bytes) -> None:
    try:
        bundle = read_bundle(io.BytesIO(data))
    except DecodeError:
        return
    assert isinstance(bundle, Bundle)
    assert 1 <= len(bundle.files) < MAX_MEMBERS


def _archive(members: list[tuple[str, bytes, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            info.linkname = "manifest.json" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return out.getvalue()


@given(st.binary(max_size=2000))
def test_fuzz_bundle_any_bytes(data: bytes) -> None:
    _read(data)


@given(st.integers(0, len(VALID_BYTES) - 1), st.binary(min_size=1, max_size=64), st.booleans())
def test_fuzz_bundle_corrupted_valid_bundle(offset: int, patch: bytes, truncate: bool) -> None:
    data = VALID_BYTES[:offset] + patch + (b"" if truncate else VALID_BYTES[offset + len(patch):])
    _read(data)


def _writable(name: str) -> bool:
    """What a tar writer can store as a name (the reader gets any bytes from the corruption targets)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\0" not in name


_NAMES = (st.sampled_from([MANIFEST, "file-0", "file-1", "../x", "/etc/passwd"])
          | HOSTILE_TEXT.filter(_writable))


@given(st.lists(st.tuples(_NAMES, st.sampled_from(_TYPES), st.binary(max_size=64)), max_size=12))
def test_fuzz_bundle_hostile_members(members: list[tuple[str, bytes, bytes]]) -> None:
    _read(_archive(members))


@given(st.fixed_dictionaries({}, optional={
    "format": st.just("overair.bundle/v1") | JSON_VALUES,
    "thing": st.just("dev-1") | JSON_VALUES | HOSTILE_TEXT,
    "job_id": st.just("job-1") | JSON_VALUES, "execution_number": JSON_VALUES, "document": JSON_VALUES,
    "files": st.lists(st.fixed_dictionaries({}, optional={
        "member": st.just("file-0") | JSON_VALUES, "size": JSON_VALUES | st.integers(),
        "sha256": st.just(hashlib.sha256(b"image").hexdigest()) | JSON_VALUES}), max_size=3) | JSON_VALUES,
    "revocations": JSON_VALUES | HOSTILE_TEXT, "trust_lists": JSON_VALUES | HOSTILE_TEXT}),
    st.binary(max_size=32))
def test_fuzz_bundle_hostile_manifest(manifest: dict[str, object], file_data: bytes) -> None:
    _read(_archive([(MANIFEST, tarfile.REGTYPE, json.dumps(manifest).encode()),
                    ("file-0", tarfile.REGTYPE, file_data)]))
