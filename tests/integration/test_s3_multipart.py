"""S3 multipart uploads: unmodified boto3 (`upload_file` above its threshold, and the
low-level operations), the AWS CLI, S3's error rules and checksums, pagination, and the
store's crash-safety guarantees (on SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from overair.core.limits import DEFAULT_LIMITS, MIB
from overair.server.api.contract import ApiError, Caller
from overair.server.api.s3 import S3Api
from overair.server.api.s3_checksums import checksum_b64, crc64nvme
from overair.server.storage import multipart
from overair.server.storage.db import Database, migrate
from overair.server.storage.multipart import MultipartStore, RequestedPart
from overair.server.storage.objects import ObjectStore
from tests.api_harness import REGION, ApiServer, running_api
from tests.blob_helpers import read_stored, stored_names, write_stored
from tests.conftest import BlobFactory

PART = 5 * MIB  # the smallest part S3 accepts before the last one


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    # The production per-request limit: boto3's 8 MiB parts must fit.
    limit = DEFAULT_LIMITS.max_api_body_bytes
    with running_api(tmp_path_factory.mktemp("mpu"), max_body_bytes=limit) as server:
        yield server


@pytest.fixture(scope="module")
def tls_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    with running_api(tmp_path_factory.mktemp("mputls"), tls=True,
                     max_body_bytes=DEFAULT_LIMITS.max_api_body_bytes) as server:
        yield server


@pytest.fixture(autouse=True)
def _reset_clock(api: ApiServer) -> Iterator[None]:
    yield
    api.clock.offset = 0.0


@pytest.fixture
def s3(api: ApiServer) -> Any:
    return api.client("s3")


_counter = iter(range(1_000_000))


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"mpu-{next(_counter)}"
    s3.create_bucket(Bucket=name)
    return name


def error_of(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    return exc.value.response["Error"]["Code"], exc.value.response["ResponseMetadata"]["HTTPStatusCode"]


def multipart_etag(parts: list[bytes]) -> str:
    md5s = b"".join(hashlib.md5(p).digest() for p in parts)
    return f'"{hashlib.md5(md5s).hexdigest()}-{len(parts)}"'


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def uploads_dir(api: ApiServer) -> Path:
    return api.root / "objects" / "uploads"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# ------------------------------------------------------------------ unmodified boto3


@pytest.mark.parametrize("transport", ["http", "https"])
def test_upload_file_above_threshold_round_trips(request: pytest.FixtureRequest, transport: str,
                                                 tmp_path: Path) -> None:
    server: ApiServer = request.getfixturevalue("api" if transport == "http" else "tls_api")
    s3 = server.client("s3")
    name = f"upload-file-{transport}"
    s3.create_bucket(Bucket=name)
    data = os.urandom(17 * MIB)  # boto3's threshold and part size are 8 MiB: 3 parts
    source = tmp_path / "firmware.bin"
    source.write_bytes(data)

    s3.upload_file(str(source), name, "fw/firmware.bin")

    head = s3.head_object(Bucket=name, Key="fw/firmware.bin")
    assert head["ETag"] == multipart_etag(split(data, 8 * MIB))
    assert head["ContentLength"] == len(data)
    target = tmp_path / "downloaded.bin"
    s3.download_file(name, "fw/firmware.bin", str(target))
    assert target.read_bytes() == data
    assert s3.get_object(Bucket=name, Key="fw/firmware.bin")["Body"].read() == data
    assert s3.list_multipart_uploads(Bucket=name).get("Uploads") is None
    assert list(uploads_dir(server).iterdir()) == []  # parts removed after the commit


def test_completed_upload_is_a_new_version(s3: Any, bucket: str) -> None:
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    first = s3.put_object(Bucket=bucket, Key="app.bin", Body=b"small first image")["VersionId"]
    parts = [os.urandom(PART), os.urandom(1000)]
    upload = s3.create_multipart_upload(Bucket=bucket, Key="app.bin", ContentType="application/x-fw",
                                        Metadata={"build": "7"})
    listed = []
    for number, body in enumerate(parts, start=1):
        etag = s3.upload_part(Bucket=bucket, Key="app.bin", UploadId=upload["UploadId"], PartNumber=number,
                              Body=body)["ETag"]
        assert etag == f'"{hashlib.md5(body).hexdigest()}"'
        listed.append({"PartNumber": number, "ETag": etag})
    done = s3.complete_multipart_upload(Bucket=bucket, Key="app.bin", UploadId=upload["UploadId"],
                                        MultipartUpload={"Parts": listed})
    assert done["ETag"] == multipart_etag(parts)
    assert done["VersionId"] not in (None, first)
    versions = s3.list_object_versions(Bucket=bucket)["Versions"]
    assert [(v["VersionId"], v["IsLatest"]) for v in versions] == [(done["VersionId"], True), (first, False)]
    got = s3.get_object(Bucket=bucket, Key="app.bin")
    assert got["Body"].read() == b"".join(parts)
    assert (got["ContentType"], got["Metadata"]) == ("application/x-fw", {"build": "7"})
    assert s3.get_object(Bucket=bucket, Key="app.bin", VersionId=first)["Body"].read() == b"small first image"


def test_aws_cli_cp_round_trips(api: ApiServer, bucket: str, tmp_path: Path) -> None:
    aws = Path(sys.executable).with_name("aws")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({
        "AWS_ACCESS_KEY_ID": api.access_key, "AWS_SECRET_ACCESS_KEY": api.secret_key,
        "AWS_DEFAULT_REGION": REGION, "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_MAX_ATTEMPTS": "1",
    })
    data = os.urandom(17 * MIB)
    (tmp_path / "up.bin").write_bytes(data)

    def cli(*args: str) -> str:
        done = subprocess.run([str(aws), "--endpoint-url", api.endpoint, *args], env=env,
                              capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout

    cli("s3", "cp", str(tmp_path / "up.bin"), f"s3://{bucket}/cli/up.bin")
    cli("s3", "cp", f"s3://{bucket}/cli/up.bin", str(tmp_path / "down.bin"))
    assert (tmp_path / "down.bin").read_bytes() == data
    assert '"ETag": "\\"' + multipart_etag(split(data, 8 * MIB))[1:-1] + '\\""' in cli(
        "s3api", "head-object", "--bucket", bucket, "--key", "cli/up.bin")


# ---------------------------------------------------------------------- checksums


def test_composite_checksum_sha256(s3: Any, bucket: str) -> None:
    parts = [os.urandom(PART), b"tail"]
    upload = s3.create_multipart_upload(Bucket=bucket, Key="k", ChecksumAlgorithm="SHA256")
    assert (upload["ChecksumAlgorithm"], upload["ChecksumType"]) == ("SHA256", "COMPOSITE")
    listed = []
    for number, body in enumerate(parts, start=1):
        got = s3.upload_part(Bucket=bucket, Key="k", UploadId=upload["UploadId"], PartNumber=number,
                             Body=body, ChecksumAlgorithm="SHA256")
        assert got["ChecksumSHA256"] == b64(hashlib.sha256(body).digest())
        listed.append({"PartNumber": number, "ETag": got["ETag"], "ChecksumSHA256": got["ChecksumSHA256"]})
    stored = s3.list_parts(Bucket=bucket, Key="k", UploadId=upload["UploadId"])
    assert [p["ChecksumSHA256"] for p in stored["Parts"]] == [p["ChecksumSHA256"] for p in listed]
    done = s3.complete_multipart_upload(Bucket=bucket, Key="k", UploadId=upload["UploadId"],
                                        MultipartUpload={"Parts": listed})
    composite = hashlib.sha256(b"".join(hashlib.sha256(p).digest() for p in parts)).digest()
    assert done["ChecksumSHA256"] == f"{b64(composite)}-2"
    assert done["ChecksumType"] == "COMPOSITE"


def test_full_object_crc64nvme(s3: Any, bucket: str) -> None:
    parts = [os.urandom(PART), os.urandom(3000)]
    upload = s3.create_multipart_upload(Bucket=bucket, Key="k", ChecksumAlgorithm="CRC64NVME")
    assert upload["ChecksumType"] == "FULL_OBJECT"
    listed = []
    for number, body in enumerate(parts, start=1):
        value = b64(crc64nvme(body).to_bytes(8, "big"))
        got = s3.upload_part(Bucket=bucket, Key="k", UploadId=upload["UploadId"], PartNumber=number,
                             Body=body, ChecksumCRC64NVME=value)
        listed.append({"PartNumber": number, "ETag": got["ETag"]})
    whole = b64(crc64nvme(b"".join(parts)).to_bytes(8, "big"))
    done = s3.complete_multipart_upload(Bucket=bucket, Key="k", UploadId=upload["UploadId"],
                                        MultipartUpload={"Parts": listed}, ChecksumCRC64NVME=whole,
                                        ChecksumType="FULL_OBJECT", MpuObjectSize=sum(map(len, parts)))
    assert (done["ChecksumCRC64NVME"], done["ChecksumType"]) == (whole, "FULL_OBJECT")


def test_default_crc32_part_checksum_without_upload_algorithm(s3: Any, bucket: str) -> None:
    upload = s3.create_multipart_upload(Bucket=bucket, Key="k")
    got = s3.upload_part(Bucket=bucket, Key="k", UploadId=upload["UploadId"], PartNumber=1, Body=b"abc")
    # boto3 sends CRC32 by default; overair keeps and returns it.
    assert got["ChecksumCRC32"] == b64(zlib.crc32(b"abc").to_bytes(4, "big"))
    listed = [{"PartNumber": 1, "ETag": got["ETag"], "ChecksumCRC32": got["ChecksumCRC32"]}]
    s3.complete_multipart_upload(Bucket=bucket, Key="k", UploadId=upload["UploadId"],
                                 MultipartUpload={"Parts": listed})
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"abc"


@pytest.mark.parametrize("algorithm", ["CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"])
def test_wrong_part_checksum_is_bad_digest(s3: Any, bucket: str, algorithm: str) -> None:
    upload = s3.create_multipart_upload(Bucket=bucket, Key="k")
    with pytest.raises(ClientError) as exc:
        s3.upload_part(Bucket=bucket, Key="k", UploadId=upload["UploadId"], PartNumber=1, Body=b"payload",
                       **{f"Checksum{algorithm}": checksum_b64(algorithm, b"other")})
    assert error_of(exc) == ("BadDigest", 400)
    assert "Parts" not in s3.list_parts(Bucket=bucket, Key="k", UploadId=upload["UploadId"])


def test_checksum_rules(s3: Any, bucket: str) -> None:
    for config in ({"ChecksumAlgorithm": "CRC64NVME", "ChecksumType": "COMPOSITE"},
                   {"ChecksumAlgorithm": "SHA1", "ChecksumType": "FULL_OBJECT"}):
        with pytest.raises(ClientError) as exc:
            s3.create_multipart_upload(Bucket=bucket, Key="k", **config)
        assert error_of(exc) == ("InvalidRequest", 400)

    upload = s3.create_multipart_upload(Bucket=bucket, Key="k", ChecksumAlgorithm="SHA256")["UploadId"]
    with pytest.raises(ClientError) as exc:  # the upload uses SHA256; a CRC32 part does not fit
        s3.upload_part(Bucket=bucket, Key="k", UploadId=upload, PartNumber=1, Body=b"x",
                       ChecksumAlgorithm="CRC32")
    assert error_of(exc) == ("InvalidRequest", 400)
    part = s3.upload_part(Bucket=bucket, Key="k", UploadId=upload, PartNumber=1, Body=b"x",
                          ChecksumAlgorithm="SHA256")
    wrong = {"PartNumber": 1, "ETag": part["ETag"], "ChecksumSHA256": checksum_b64("sha256", b"y")}
    with pytest.raises(ClientError) as exc:
        s3.complete_multipart_upload(Bucket=bucket, Key="k", UploadId=upload,
                                     MultipartUpload={"Parts": [wrong]})
    assert error_of(exc) == ("InvalidPart", 400)

    crc = s3.create_multipart_upload(Bucket=bucket, Key="c", ChecksumAlgorithm="CRC32",
                                     ChecksumType="FULL_OBJECT")["UploadId"]
    etag = s3.upload_part(Bucket=bucket, Key="c", UploadId=crc, PartNumber=1, Body=b"data",
                          ChecksumAlgorithm="CRC32")["ETag"]
    only_part = {"Parts": [{"PartNumber": 1, "ETag": etag}]}
    for claim, code in (({"ChecksumCRC32": checksum_b64("crc32", b"atad")}, "BadDigest"),
                        ({"MpuObjectSize": 5}, "InvalidRequest")):
        with pytest.raises(ClientError) as exc:
            s3.complete_multipart_upload(Bucket=bucket, Key="c", UploadId=crc, MultipartUpload=only_part,
                                         **claim)
        assert error_of(exc) == (code, 400)
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="c")
    assert error_of(exc) == ("404", 404)
    done = s3.complete_multipart_upload(Bucket=bucket, Key="c", UploadId=crc,
                                        ChecksumCRC32=checksum_b64("crc32", b"data"),
                                        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
    assert done["ChecksumCRC32"] == checksum_b64("crc32", b"data")


# ------------------------------------------------------------------------- errors


def test_s3_error_rules(api: ApiServer, s3: Any, bucket: str) -> None:
    upload = s3.create_multipart_upload(Bucket=bucket, Key="k")["UploadId"]
    small = [s3.upload_part(Bucket=bucket, Key="k", UploadId=upload, PartNumber=n,
                            Body=b"tiny %d" % n)["ETag"]
             for n in (1, 2)]

    def complete(parts: list[dict[str, Any]]) -> tuple[str, int]:
        with pytest.raises(ClientError) as exc:
            s3.complete_multipart_upload(Bucket=bucket, Key="k", UploadId=upload,
                                         MultipartUpload={"Parts": parts})
        return error_of(exc)

    assert complete([{"PartNumber": 1, "ETag": small[0]}, {"PartNumber": 2, "ETag": small[1]}]) == (
        "EntityTooSmall", 400)
    assert complete([{"PartNumber": 2, "ETag": small[1]}, {"PartNumber": 1, "ETag": small[0]}]) == (
        "InvalidPartOrder", 400)
    assert complete([{"PartNumber": 1, "ETag": small[1]}]) == ("InvalidPart", 400)
    assert complete([{"PartNumber": 3, "ETag": small[0]}]) == ("InvalidPart", 400)
    for number in (0, 10001):
        with pytest.raises(ClientError) as exc:
            s3.upload_part(Bucket=bucket, Key="k", UploadId=upload, PartNumber=number, Body=b"x")
        assert error_of(exc) == ("InvalidArgument", 400)
    # Nothing above created the object or consumed the upload.
    assert len(s3.list_parts(Bucket=bucket, Key="k", UploadId=upload)["Parts"]) == 2
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="k")
    assert error_of(exc) == ("404", 404)

    calls: tuple[Callable[[], object], ...] = (
        lambda: s3.upload_part(Bucket=bucket, Key="k", UploadId="nope", PartNumber=1, Body=b"x"),
        lambda: s3.list_parts(Bucket=bucket, Key="k", UploadId="nope"),
        lambda: s3.abort_multipart_upload(Bucket=bucket, Key="k", UploadId="nope"),
        lambda: s3.complete_multipart_upload(
            Bucket=bucket, Key="k", UploadId="nope",
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": small[0]}]}),
    )
    for call in calls:
        with pytest.raises(ClientError) as exc:
            call()
        assert error_of(exc) == ("NoSuchUpload", 404)

    with pytest.raises(ClientError) as exc:
        s3.create_multipart_upload(Bucket="no-such-bucket-here", Key="k")
    assert error_of(exc) == ("NoSuchBucket", 404)


def test_object_size_limit_applies_to_the_whole_upload(api: ApiServer, s3: Any, bucket: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api.objects, "max_object_bytes", PART + MIB)
    upload = s3.create_multipart_upload(Bucket=bucket, Key="big")["UploadId"]
    parts = [{"PartNumber": n, "ETag": s3.upload_part(Bucket=bucket, Key="big", UploadId=upload, PartNumber=n,
                                                      Body=body)["ETag"]}
             for n, body in ((1, os.urandom(PART)), (2, os.urandom(2 * MIB)))]
    with pytest.raises(ClientError) as exc:
        s3.complete_multipart_upload(Bucket=bucket, Key="big", UploadId=upload,
                                     MultipartUpload={"Parts": parts})
    assert error_of(exc) == ("EntityTooLarge", 400)
    assert not [p for p in (api.root / "objects" / "data" / bucket).rglob("*") if p.is_file()]


def test_o1_upload_id_is_bound_to_its_bucket_and_key(s3: Any, bucket: str) -> None:
    """A caller allowed to write `public/x` must not add parts to, complete, or abort an
    upload of `private/y` by naming its upload id (authorization is per key)."""
    upload = s3.create_multipart_upload(Bucket=bucket, Key="private/y")["UploadId"]
    etag = s3.upload_part(Bucket=bucket, Key="private/y", UploadId=upload, PartNumber=1, Body=b"real")["ETag"]
    other = f"{bucket}-other"
    s3.create_bucket(Bucket=other)
    for target_bucket, key in ((bucket, "public/x"), (other, "private/y")):
        with pytest.raises(ClientError) as exc:
            s3.upload_part(Bucket=target_bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"evil")
        assert error_of(exc) == ("NoSuchUpload", 404)
        with pytest.raises(ClientError) as exc:
            s3.complete_multipart_upload(Bucket=target_bucket, Key=key, UploadId=upload,
                                         MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
        assert error_of(exc) == ("NoSuchUpload", 404)
        with pytest.raises(ClientError) as exc:
            s3.abort_multipart_upload(Bucket=target_bucket, Key=key, UploadId=upload)
        assert error_of(exc) == ("NoSuchUpload", 404)
    parts = s3.list_parts(Bucket=bucket, Key="private/y", UploadId=upload)["Parts"]
    assert [(p["PartNumber"], p["ETag"]) for p in parts] == [(1, etag)]


def test_o1_every_multipart_operation_is_authorized_before_it_acts(api: ApiServer, bucket: str) -> None:
    seen: list[tuple[str, str]] = []
    deny: set[str] = set()

    def authorize(caller: Caller, action: str, resource: str) -> None:
        seen.append((action, resource))
        if action in deny:
            raise ApiError("AccessDenied", "Access Denied", 403)

    s3 = S3Api(api.objects, region=REGION, authorize=authorize)
    caller = Caller("AKID", "arn:aws:iam::123456789012:user/op", "op", "127.0.0.1")
    target = {"Bucket": bucket, "Key": "fw.bin"}
    upload = s3.call("CreateMultipartUpload", dict(target), caller).output["UploadId"]
    deny.add("s3:PutObject")
    with pytest.raises(ApiError) as exc:
        s3.call("UploadPart", {**target, "UploadId": upload, "PartNumber": 1, "Body": b"x"}, caller)
    assert exc.value.code == "AccessDenied"
    deny.clear()
    assert s3.call("ListParts", {**target, "UploadId": upload}, caller).output["Parts"] is None
    s3.call("ListMultipartUploads", {"Bucket": bucket}, caller)
    s3.call("AbortMultipartUpload", {**target, "UploadId": upload}, caller)
    obj = f"arn:aws:s3:::{bucket}/fw.bin"
    assert seen == [
        ("s3:PutObject", obj), ("s3:PutObject", obj), ("s3:ListMultipartUploadParts", obj),
        ("s3:ListBucketMultipartUploads", f"arn:aws:s3:::{bucket}"), ("s3:AbortMultipartUpload", obj),
    ]
    assert s3.action_for("CompleteMultipartUpload", target) == ("s3:PutObject", obj)


def test_upload_part_copy_is_not_implemented(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="src", Body=b"source")
    upload = s3.create_multipart_upload(Bucket=bucket, Key="dst")["UploadId"]
    with pytest.raises(ClientError) as exc:
        s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=upload, PartNumber=1,
                            CopySource={"Bucket": bucket, "Key": "src"})
    assert error_of(exc) == ("NotImplemented", 501)
    assert "UploadPartCopy" in exc.value.response["Error"]["Message"]


def test_abort_removes_parts_and_unblocks_bucket_deletion(api: ApiServer, s3: Any, bucket: str) -> None:
    upload = s3.create_multipart_upload(Bucket=bucket, Key="k")["UploadId"]
    s3.upload_part(Bucket=bucket, Key="k", UploadId=upload, PartNumber=1, Body=b"part bytes")
    assert [p.name for p in (uploads_dir(api) / upload).iterdir()]
    with pytest.raises(ClientError) as exc:
        s3.delete_bucket(Bucket=bucket)
    assert error_of(exc) == ("BucketNotEmpty", 409)
    s3.abort_multipart_upload(Bucket=bucket, Key="k", UploadId=upload)
    assert not (uploads_dir(api) / upload).exists()
    with pytest.raises(ClientError) as exc:
        s3.list_parts(Bucket=bucket, Key="k", UploadId=upload)
    assert error_of(exc) == ("NoSuchUpload", 404)
    s3.delete_bucket(Bucket=bucket)


# --------------------------------------------------------------------- pagination


def test_list_parts_and_uploads_paginate(s3: Any, bucket: str) -> None:
    upload = s3.create_multipart_upload(Bucket=bucket, Key="k")["UploadId"]
    for number in (1, 2, 3, 5, 8):
        s3.upload_part(Bucket=bucket, Key="k", UploadId=upload, PartNumber=number, Body=b"p%d" % number)
    s3.upload_part(Bucket=bucket, Key="k", UploadId=upload, PartNumber=3, Body=b"replaced")
    pages = list(s3.get_paginator("list_parts").paginate(Bucket=bucket, Key="k", UploadId=upload,
                                                         PaginationConfig={"PageSize": 2}))
    assert len(pages) == 3
    parts = [(p["PartNumber"], p["Size"]) for page in pages for p in page["Parts"]]
    assert parts == [(1, 2), (2, 2), (3, 8), (5, 2), (8, 2)]

    ids = {upload: "k"}
    for key in ("a/1", "a/2", "b", "k", "k", "z/deep/1"):
        ids[s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]] = key
    pages = list(s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket,
                                                                      PaginationConfig={"PageSize": 2}))
    assert len(pages) == 4
    listed = [(u["Key"], u["UploadId"]) for page in pages for u in page.get("Uploads", [])]
    assert sorted(listed) == sorted((k, i) for i, k in ids.items())
    assert [k for k, _ in listed] == ["a/1", "a/2", "b", "k", "k", "k", "z/deep/1"]
    assert next(i for k, i in listed if k == "k") == upload  # same key: by initiation

    rolled = list(s3.get_paginator("list_multipart_uploads").paginate(
        Bucket=bucket, Delimiter="/", PaginationConfig={"PageSize": 1}))
    prefixes = [p["Prefix"] for page in rolled for p in page.get("CommonPrefixes", [])]
    keys = [u["Key"] for page in rolled for u in page.get("Uploads", [])]
    assert (prefixes, keys) == (["a/", "z/"], ["b", "k", "k", "k"])
    under = s3.list_multipart_uploads(Bucket=bucket, Prefix="a/")
    assert [u["Key"] for u in under["Uploads"]] == ["a/1", "a/2"]


# ---------------------------------------------------------------- presigned GETs


@pytest.mark.parametrize("signature_version", [None, "s3v4"])
def test_o1_presigned_get_of_multipart_object_with_urllib(api: ApiServer, bucket: str,
                                                          signature_version: str | None) -> None:
    s3 = api.client("s3", signature_version=signature_version)
    data = os.urandom(PART + 100)
    upload = s3.create_multipart_upload(Bucket=bucket, Key="fw.bin")["UploadId"]
    parts = [{"PartNumber": n, "ETag": s3.upload_part(Bucket=bucket, Key="fw.bin", UploadId=upload,
                                                      PartNumber=n, Body=body)["ETag"]}
             for n, body in enumerate(split(data, PART), start=1)]
    s3.complete_multipart_upload(Bucket=bucket, Key="fw.bin", UploadId=upload,
                                 MultipartUpload={"Parts": parts})
    s3.put_object(Bucket=bucket, Key="other.bin", Body=b"not yours")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "fw.bin"}, ExpiresIn=120)
    assert ("X-Amz-Signature=" in url) == (signature_version == "s3v4")

    with urllib.request.urlopen(url) as response:
        assert response.read() == data

    def refused(target: str) -> bytes:
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(target)
        assert exc.value.code == 403
        return bytes(exc.value.read())

    assert b"SignatureDoesNotMatch" in refused(url.replace("fw.bin", "other.bin"))
    api.clock.offset = 121
    assert b"<Code>RequestExpired</Code>" in refused(url)


# ----------------------------------------------------------- store guarantees


@pytest.fixture
def stores(database_url: str, blob_backend: BlobFactory,
           tmp_path: Path) -> Iterator[tuple[ObjectStore, MultipartStore]]:
    """An object store and its multipart uploads, on each database and each blob backend."""
    db = Database(database_url)
    migrate(db.engine)
    objects = ObjectStore(db, tmp_path / "objects", blobs=blob_backend(tmp_path / "objects"))
    objects.create_bucket("fw-bucket")
    try:
        yield objects, MultipartStore(objects)
    finally:
        db.close()


def _two_parts(uploads: MultipartStore, key: str = "app.bin") -> tuple[str, list[RequestedPart], bytes]:
    upload = uploads.create("fw-bucket", key)
    bodies = [os.urandom(PART), b"last part"]
    requested = [RequestedPart(n, uploads.upload_part("fw-bucket", key, upload.upload_id, n, body).etag)
                 for n, body in enumerate(bodies, start=1)]
    return upload.upload_id, requested, b"".join(bodies)


def _data_files(objects: ObjectStore) -> list[str]:
    return stored_names(objects.blobs, "data/")


def _part_names(objects: ObjectStore, upload_id: str) -> list[str]:
    return stored_names(objects.blobs, f"uploads/{upload_id}/")


def test_crash_before_commit_leaves_the_upload_and_no_object(stores: tuple[ObjectStore, MultipartStore],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    objects, uploads = stores
    upload_id, requested, data = _two_parts(uploads)

    def power_cut(*args: Any, **kwargs: Any) -> list[Path]:
        raise RuntimeError("simulated crash before the commit")

    monkeypatch.setattr(ObjectStore, "_drop_null", power_cut)
    with pytest.raises(RuntimeError):  # noqa: SIM117 - the failure is expected from the inner block
        with uploads.assemble("fw-bucket", "app.bin", upload_id, requested) as assembly:
            uploads.commit(assembly)
    monkeypatch.undo()
    with pytest.raises(ApiError) as exc:
        objects.head_object("fw-bucket", "app.bin")
    assert exc.value.code == "NoSuchKey"
    assert _data_files(objects) == []
    assert list((objects.root / "tmp").iterdir()) == []
    assert [p.part_number for p in uploads.list_parts("fw-bucket", "app.bin", upload_id).parts] == [1, 2]

    with uploads.assemble("fw-bucket", "app.bin", upload_id, requested) as assembly:  # the client retries
        stored = uploads.commit(assembly)
    assert objects.get_object("fw-bucket", "app.bin")[1] == data
    assert stored.etag.endswith('-2"')
    assert _part_names(objects, upload_id) == []
    with pytest.raises(ApiError) as exc:
        uploads.get_upload("fw-bucket", "app.bin", upload_id)
    assert exc.value.code == "NoSuchUpload"


def test_leftovers_of_a_crash_are_swept_at_start(stores: tuple[ObjectStore, MultipartStore],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    objects, uploads = stores
    done_id, requested, _ = _two_parts(uploads, "done.bin")
    monkeypatch.setattr(MultipartStore, "_remove_parts", lambda self, upload_id: None)  # crash after commit
    with uploads.assemble("fw-bucket", "done.bin", done_id, requested) as assembly:
        uploads.commit(assembly)
    monkeypatch.undo()
    live_id, _, _ = _two_parts(uploads, "live.bin")
    live_files = _part_names(objects, live_id)
    write_stored(objects.blobs, f"uploads/{live_id}/00003.deadbeef", b"orphan")  # installed, never committed
    if objects.blobs.shared:  # another process may be mid-upload: only old leftovers go
        MultipartStore(objects)  # a restart now leaves the young stray alone ...
        assert f"uploads/{live_id}/00003.deadbeef" in _part_names(objects, live_id)
        monkeypatch.setattr(multipart, "SHARED_SWEEP_AGE", -60.0)  # ... and an hour later sweeps it

    MultipartStore(objects)  # restart

    assert _part_names(objects, done_id) == []
    assert _part_names(objects, live_id) == live_files
    assert objects.head_object("fw-bucket", "done.bin").size == PART + len(b"last part")


def test_tampered_part_is_never_assembled(stores: tuple[ObjectStore, MultipartStore]) -> None:
    objects, uploads = stores
    upload_id, requested, _ = _two_parts(uploads)
    first = _part_names(objects, upload_id)[0]
    raw = bytearray(read_stored(objects.blobs, first))
    raw[1234] ^= 0x01
    write_stored(objects.blobs, first, bytes(raw))
    with pytest.raises(ApiError) as exc:  # noqa: SIM117 - raised while the parts are read
        with uploads.assemble("fw-bucket", "app.bin", upload_id, requested) as assembly:
            uploads.commit(assembly)
    assert (exc.value.code, exc.value.status) == ("CorruptObject", 500)
    with pytest.raises(ApiError):
        objects.head_object("fw-bucket", "app.bin")
    assert _data_files(objects) == []
    assert list((objects.root / "tmp").iterdir()) == []


def test_reuploaded_part_replaces_the_old_bytes(stores: tuple[ObjectStore, MultipartStore]) -> None:
    objects, uploads = stores
    upload = uploads.create("fw-bucket", "k")
    uploads.upload_part("fw-bucket", "k", upload.upload_id, 1, b"first try")
    second = uploads.upload_part("fw-bucket", "k", upload.upload_id, 1, b"second try")
    files = _part_names(objects, upload.upload_id)
    assert [read_stored(objects.blobs, f) for f in files] == [b"second try"]
    with uploads.assemble("fw-bucket", "k", upload.upload_id, [RequestedPart(1, second.etag)]) as assembly:
        uploads.commit(assembly)
    assert objects.get_object("fw-bucket", "k")[1] == b"second try"
