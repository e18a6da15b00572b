"""core/bundle.py: the shape and bounds of an offline bundle, checked before the agent
looks at what it says (the trust decisions: tests/integration/test_offline_bundle.py).
Hostile input at large: tests/fuzz/test_fuzz_bundle.py."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from typing import Any

import pytest

from overair.core.bundle import MANIFEST, MAX_MANIFEST_BYTES, MAX_MEMBERS, read_bundle, write_bundle
from overair.core.errors import DecodeError

DOCUMENT = {"afr_ota": {"streamname": "bundle-1"}}


def written(files: list[bytes] | None = None, revocations: bytes | None = b"signed list") -> bytes:
    out = io.BytesIO()
    write_bundle(out, "dev-1", "job-1", 3, DOCUMENT, files or [b"image"], revocations)
    return out.getvalue()


def archive(*members: tuple[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def manifest(**changes: Any) -> bytes:
    base: dict[str, Any] = {"format": "overair.bundle/v1", "thing": "dev-1", "job_id": "job-1",
                            "execution_number": 1, "document": DOCUMENT, "revocations": "",
                            "files": [{"member": "file-0", "size": 5,
                                       "sha256": hashlib.sha256(b"image").hexdigest()}]}
    return json.dumps({**base, **changes}).encode()


def refused(data: bytes, words: str) -> None:
    with pytest.raises(DecodeError) as caught:
        read_bundle(io.BytesIO(data))
    assert caught.value.code == "BadBundle"
    assert words in caught.value.message


def test_a_written_bundle_reads_back() -> None:
    bundle = read_bundle(io.BytesIO(written([b"first image", b"second"])))
    assert (bundle.thing, bundle.job_id, bundle.execution_number, bundle.document) == \
        ("dev-1", "job-1", 3, DOCUMENT)
    assert [f.data for f in bundle.files] == [b"first image", b"second"]
    assert bundle.revocations == b"signed list"
    assert read_bundle(io.BytesIO(written(revocations=None))).revocations is None


def test_not_a_tar_archive_is_refused() -> None:
    refused(b"PK\x03\x04 a zip, or anything", "not a readable bundle")


def test_the_manifest_comes_first() -> None:
    refused(archive(("file-0", b"image"), (MANIFEST, manifest())), "first member")


def test_a_member_the_manifest_does_not_list_is_refused() -> None:
    refused(archive((MANIFEST, manifest()), ("file-0", b"image"), ("extra", b"x")),
            "files its manifest lists")


def test_a_missing_file_is_refused() -> None:
    refused(archive((MANIFEST, manifest())), "files its manifest lists")


def test_a_file_that_is_not_what_the_manifest_says_is_refused() -> None:
    refused(archive((MANIFEST, manifest()), ("file-0", b"imagE")), "SHA-256")
    refused(archive((MANIFEST, manifest()), ("file-0", b"image!")), "holds 6 bytes")


def test_a_link_is_never_followed() -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        data = manifest()
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("file-0")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/shadow"
        tar.addfile(link)
    refused(out.getvalue(), "not a regular file")


def test_members_and_manifest_are_bounded() -> None:
    many = [(MANIFEST, manifest())] + [(f"file-{i}", b"x") for i in range(MAX_MEMBERS)]
    refused(archive(*many), f"at most {MAX_MEMBERS} members")
    refused(archive((MANIFEST, b" " * (MAX_MANIFEST_BYTES + 1))), "larger than")


@pytest.mark.parametrize(("changes", "words"), [
    ({"format": "overair.bundle/v0"}, "manifest"),
    ({"thing": "a/b"}, "thing name"),
    ({"job_id": "$next"}, "job id"),
    ({"execution_number": 0}, "execution_number"),
    ({"document": []}, "document"),
    ({"files": []}, "1 to"),
    ({"files": [{"member": "../file-0", "size": 5, "sha256": "00" * 32}]}, "needs member"),
    ({"revocations": "not base64!"}, "revocations"),
])
def test_a_malformed_manifest_is_refused(changes: dict[str, Any], words: str) -> None:
    refused(archive((MANIFEST, manifest(**changes)), ("file-0", b"image")), words)
