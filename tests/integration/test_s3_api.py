"""The embedded S3 API driven by real boto3 clients (http and, for aws-chunked
uploads with trailing checksums, https), plus the object store's integrity and
crash-safety guarantees."""

from __future__ import annotations

import base64
import hashlib
import io
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from botocore.exceptions import ClientError

from overair.server.api.contract import ApiError
from overair.server.api.s3_checksums import checksum_b64, crc32c, crc64nvme, verify_checksums
from overair.server.storage.objects import ObjectStore
from overair.server.storage.s3_blobs import S3Blobs
from tests.api_harness import ApiServer, running_api
from tests.blob_helpers import read_stored, stored_names, write_stored
from tests.seaweedfs_harness import SeaweedS3


@pytest.fixture(scope="module", params=["local", "s3"])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """The API with the object store's bytes on local disk, then in SeaweedFS's S3."""
    blobs = None
    if request.param == "s3":
        seaweed: SeaweedS3 = request.getfixturevalue("seaweedfs")
        blobs = S3Blobs(seaweed.location(seaweed.new_bucket()))
    with running_api(tmp_path_factory.mktemp("s3"), max_body_bytes=2 * 1024 * 1024, blobs=blobs) as server:
        yield server


@pytest.fixture(scope="module")
def tls_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    with running_api(tmp_path_factory.mktemp("s3tls"), tls=True, max_body_bytes=4 * 1024 * 1024) as server:
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
    name = f"bucket-{next(_counter)}"
    s3.create_bucket(Bucket=name)
    return name


def error_of(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    return exc.value.response["Error"]["Code"], exc.value.response["ResponseMetadata"]["HTTPStatusCode"]


def stored_file(api: ApiServer, sha256: str) -> str:
    matches = [name for name in stored_names(api.objects.blobs, "data/") if name.endswith(f".{sha256}")]
    assert len(matches) == 1
    return matches[0]


def stored_leaves(api: ApiServer, bucket: str) -> list[str]:
    """The last part of the names of a bucket's stored bytes (`<version>.<sha256>`)."""
    return [name.rsplit("/", 1)[1] for name in stored_names(api.objects.blobs, f"data/{bucket}/")]


# ------------------------------------------------------------------------------ buckets


def test_buckets(api: ApiServer, s3: Any) -> None:
    s3.create_bucket(Bucket="ota-images")
    s3.head_bucket(Bucket="ota-images")
    assert s3.get_bucket_location(Bucket="ota-images")["LocationConstraint"] is None
    assert "ota-images" in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert s3.get_bucket_versioning(Bucket="ota-images").get("Status") is None

    with pytest.raises(ClientError) as exc:
        s3.create_bucket(Bucket="ota-images")
    assert error_of(exc) == ("BucketAlreadyOwnedByYou", 409)
    with pytest.raises(ClientError) as exc:
        s3.create_bucket(Bucket="Bad_Name")
    assert error_of(exc) == ("InvalidBucketName", 400)
    with pytest.raises(ClientError) as exc:
        s3.head_bucket(Bucket="never-created")
    assert error_of(exc) == ("404", 404)
    with pytest.raises(ClientError) as exc:
        s3.list_objects_v2(Bucket="never-created")
    assert error_of(exc) == ("NoSuchBucket", 404)


def test_create_bucket_with_configuration(api: ApiServer, s3: Any) -> None:
    s3.create_bucket(Bucket="with-config", CreateBucketConfiguration={"LocationConstraint": "us-east-1"})
    assert api.objects.bucket_exists("with-config")
    with pytest.raises(ClientError) as exc:
        s3.create_bucket(Bucket="elsewhere", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    assert error_of(exc) == ("IllegalLocationConstraintException", 400)
    assert not api.objects.bucket_exists("elsewhere")


def test_bucket_policy(s3: Any, bucket: str) -> None:
    policy = '{"Version": "2012-10-17", "Statement": []}'
    s3.put_bucket_policy(Bucket=bucket, Policy=policy)
    assert s3.get_bucket_policy(Bucket=bucket)["Policy"] == policy
    s3.delete_bucket_policy(Bucket=bucket)
    with pytest.raises(ClientError) as exc:
        s3.get_bucket_policy(Bucket=bucket)
    assert error_of(exc) == ("NoSuchBucketPolicy", 404)


# ------------------------------------------------------------------------------ objects


def test_versioned_objects(s3: Any, bucket: str) -> None:
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    key = "firmware/app v1+ü.bin"
    first = s3.put_object(Bucket=bucket, Key=key, Body=b"first image")
    second = s3.put_object(Bucket=bucket, Key=key, Body=b"second image!")
    v1, v2 = first["VersionId"], second["VersionId"]
    assert v1
    assert v2
    assert v1 != v2
    assert first["ETag"] == '"' + hashlib.md5(b"first image").hexdigest() + '"'

    assert s3.get_object(Bucket=bucket, Key=key, VersionId=v1)["Body"].read() == b"first image"
    got = s3.get_object(Bucket=bucket, Key=key, VersionId=v2)
    assert got["Body"].read() == b"second image!"
    assert got["VersionId"] == v2
    latest = s3.get_object(Bucket=bucket, Key=key)
    assert (latest["Body"].read(), latest["VersionId"]) == (b"second image!", v2)

    versions = s3.list_object_versions(Bucket=bucket, Prefix="firmware/")["Versions"]
    assert [(v["Key"], v["VersionId"], v["IsLatest"], v["Size"]) for v in versions] == [
        (key, v2, True, 13), (key, v1, False, 11)]

    head = s3.head_object(Bucket=bucket, Key=key, VersionId=v1)
    assert (head["ContentLength"], head["VersionId"]) == (11, v1)

    deleted = s3.delete_object(Bucket=bucket, Key=key)
    assert deleted["DeleteMarker"] is True
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key=key)
    assert error_of(exc) == ("NoSuchKey", 404)
    assert s3.get_object(Bucket=bucket, Key=key, VersionId=v1)["Body"].read() == b"first image"
    listing = s3.list_object_versions(Bucket=bucket)
    assert [m["VersionId"] for m in listing["DeleteMarkers"]] == [deleted["VersionId"]]
    assert listing["DeleteMarkers"][0]["IsLatest"] is True
    assert len(listing["Versions"]) == 2
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key=key, VersionId="no-such-version")
    assert error_of(exc) == ("NoSuchVersion", 404)


def test_unversioned_bucket_overwrites(api: ApiServer, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"one")
    second = s3.put_object(Bucket=bucket, Key="k", Body=b"two")
    assert "VersionId" not in second
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"two"
    versions = s3.list_object_versions(Bucket=bucket)["Versions"]
    assert [v["VersionId"] for v in versions] == ["null"]
    assert len([n for n in stored_leaves(api, bucket) if n.startswith("null.")]) == 1  # old bytes removed
    s3.delete_object(Bucket=bucket, Key="k")
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="k")
    assert error_of(exc) == ("404", 404)
    assert stored_leaves(api, bucket) == []


def test_range_get_and_head(s3: Any, bucket: str) -> None:
    data = bytes(range(256)) * 4
    s3.put_object(Bucket=bucket, Key="blob", Body=data, ContentType="application/x-firmware",
                  Metadata={"build": "42"})
    part = s3.get_object(Bucket=bucket, Key="blob", Range="bytes=10-19")
    assert part["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert part["ContentRange"] == f"bytes 10-19/{len(data)}"
    assert part["Body"].read() == data[10:20]
    assert s3.get_object(Bucket=bucket, Key="blob", Range="bytes=-5")["Body"].read() == data[-5:]
    assert s3.get_object(Bucket=bucket, Key="blob", Range="bytes=1000-")["Body"].read() == data[1000:]
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="blob", Range=f"bytes={len(data)}-")
    assert error_of(exc) == ("InvalidRange", 416)

    head = s3.head_object(Bucket=bucket, Key="blob")
    assert head["ContentLength"] == len(data)
    assert head["ContentType"] == "application/x-firmware"
    assert head["Metadata"] == {"build": "42"}
    assert head["ETag"] == '"' + hashlib.md5(data).hexdigest() + '"'
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="missing")
    assert error_of(exc) == ("NoSuchKey", 404)


def test_list_objects_v2(s3: Any, bucket: str) -> None:
    keys = ["a/1", "a/2", "b/x y+z", "c", "d/ü/1"]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    top = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [c["Key"] for c in top["Contents"]] == ["c"]
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["a/", "b/", "d/"]
    assert top["KeyCount"] == 4
    under = s3.list_objects_v2(Bucket=bucket, Prefix="b/")
    assert [c["Key"] for c in under["Contents"]] == ["b/x y+z"]
    paged = [c["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, PaginationConfig={"PageSize": 2}) for c in page.get("Contents", [])]
    assert paged == keys
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Delimiter="/",
                                                          PaginationConfig={"PageSize": 1})
    prefixes = [p["Prefix"] for page in pages for p in page.get("CommonPrefixes", [])]
    assert prefixes == ["a/", "b/", "d/"]
    assert s3.list_objects(Bucket=bucket, Prefix="a/")["Contents"][1]["Key"] == "a/2"
    v1 = [c["Key"] for page in s3.get_paginator("list_objects").paginate(
        Bucket=bucket, PaginationConfig={"PageSize": 2}) for c in page.get("Contents", [])]
    assert v1 == keys
    pages = s3.get_paginator("list_objects").paginate(Bucket=bucket, Delimiter="/",
                                                       PaginationConfig={"PageSize": 1})
    assert [p["Prefix"] for page in pages for p in page.get("CommonPrefixes", [])] == ["a/", "b/", "d/"]


def test_list_object_versions_paginates(s3: Any, bucket: str) -> None:
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    for key, count in (("a/1", 3), ("a/2", 1), ("b", 2), ("c/x/1", 1), ("d", 2)):
        for n in range(count):
            s3.put_object(Bucket=bucket, Key=key, Body=b"%d" % n)
    s3.delete_object(Bucket=bucket, Key="b")
    whole = s3.list_object_versions(Bucket=bucket)

    def entries(page: dict[str, Any]) -> list[tuple[str, str, bool]]:
        found = [(v["Key"], v["VersionId"], v["IsLatest"]) for v in page.get("Versions", [])]
        found += [(m["Key"], m["VersionId"], m["IsLatest"]) for m in page.get("DeleteMarkers", [])]
        return found

    pages = list(s3.get_paginator("list_object_versions").paginate(Bucket=bucket,
                                                                    PaginationConfig={"PageSize": 2}))
    assert len(pages) == 5  # 9 versions and 1 delete marker
    assert sorted(e for page in pages for e in entries(page)) == sorted(entries(whole))
    assert len(entries(whole)) == 10
    rolled = list(s3.get_paginator("list_object_versions").paginate(
        Bucket=bucket, Delimiter="/", PaginationConfig={"PageSize": 1}))
    assert [p["Prefix"] for page in rolled for p in page.get("CommonPrefixes", [])] == ["a/", "c/"]
    assert sorted({e[0] for page in rolled for e in entries(page)}) == ["b", "d"]


def test_corrupted_object_is_not_served(api: ApiServer, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="image.bin", Body=b"A" * 1000)
    stored = api.objects.head_object(bucket, "image.bin")
    name = stored_file(api, stored.sha256)
    raw = bytearray(read_stored(api.objects.blobs, name))
    raw[500] ^= 0x01
    write_stored(api.objects.blobs, name, bytes(raw))
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="image.bin")
    assert error_of(exc) == ("CorruptObject", 500)
    with pytest.raises(ApiError) as direct:
        api.objects.get_object(bucket, "image.bin")
    assert direct.value.code == "CorruptObject"
    write_stored(api.objects.blobs, name, b"short")
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="image.bin")
    assert error_of(exc) == ("500", 500)


def test_default_checksums_and_bad_digest(api: ApiServer, s3: Any, bucket: str) -> None:
    put = s3.put_object(Bucket=bucket, Key="c", Body=b"checksummed")
    assert put["ChecksumCRC32"] == base64.b64encode(zlib.crc32(b"checksummed").to_bytes(4, "big")).decode()
    s3.put_object(Bucket=bucket, Key="s", Body=b"sha", ChecksumAlgorithm="SHA256")
    wrong = base64.b64encode(zlib.crc32(b"other").to_bytes(4, "big")).decode()
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="bad", Body=b"checksummed", ChecksumCRC32=wrong)
    assert error_of(exc) == ("BadDigest", 400)
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="bad")
    assert error_of(exc) == ("404", 404)
    s3.upload_fileobj(io.BytesIO(b"u" * 70_000), bucket, "uploaded")
    assert s3.get_object(Bucket=bucket, Key="uploaded")["Body"].read() == b"u" * 70_000


def test_aws_chunked_uploads_over_tls(tls_api: ApiServer) -> None:
    s3 = tls_api.client("s3")
    bucket = f"chunked-{next(_counter)}"  # tls_api outlives the api fixture's parameters
    s3.create_bucket(Bucket=bucket)
    data = bytes(range(251)) * 6000  # ~1.5 MB: more than one 1 MiB aws-chunked chunk
    s3.upload_fileobj(io.BytesIO(data), bucket, "big.bin")
    got = s3.get_object(Bucket=bucket, Key="big.bin")
    assert got["Body"].read() == data
    assert got["ContentLength"] == len(data)
    put = s3.put_object(Bucket=bucket, Key="small", Body=b"trailer checksum")
    assert put["ChecksumCRC32"] == checksum_b64("crc32", b"trailer checksum")
    s3.put_object(Bucket=bucket, Key="sha1", Body=b"sha1 trailer", ChecksumAlgorithm="SHA1")
    assert s3.get_object(Bucket=bucket, Key="sha1")["Body"].read() == b"sha1 trailer"
    assert tls_api.objects.head_object(bucket, "small").size == len(b"trailer checksum")


def test_body_too_large(s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="huge", Body=b"x" * (3 * 1024 * 1024))
    assert error_of(exc) == ("EntityTooLarge", 413)


@pytest.mark.parametrize("algorithm", ["CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"])
@pytest.mark.parametrize("transport", ["http", "https"])
def test_every_checksum_algorithm(request: pytest.FixtureRequest, transport: str, algorithm: str) -> None:
    """boto3 computes CRC32, SHA1 and SHA256 itself (CRC32C and CRC64NVME need awscrt, so
    those values are supplied); over https they travel as aws-chunked trailers."""
    server: ApiServer = request.getfixturevalue("api" if transport == "http" else "tls_api")
    s3 = server.client("s3")
    name = f"sums-{transport}-{algorithm.lower()}-{next(_counter)}"
    s3.create_bucket(Bucket=name)
    body = b"firmware bytes " * 100
    member = f"Checksum{algorithm}"
    computed_by_sdk = algorithm in ("CRC32", "SHA1", "SHA256")
    args = {"ChecksumAlgorithm": algorithm} if computed_by_sdk else {member: checksum_b64(algorithm, body)}
    put = s3.put_object(Bucket=name, Key="ok", Body=body, **args)
    assert put[member] == checksum_b64(algorithm, body)
    got = s3.get_object(Bucket=name, Key="ok", ChecksumMode="ENABLED")
    assert got["Body"].read() == body
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=name, Key="bad", Body=body, **{member: checksum_b64(algorithm, b"other")})
    assert error_of(exc) == ("BadDigest", 400)
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=name, Key="bad")
    assert error_of(exc) == ("404", 404)


# --------------------------------------------------------------------------- presigned


@pytest.mark.parametrize("signature_version", [None, "s3v4"])
def test_o1_presigned_get(api: ApiServer, bucket: str, signature_version: str | None) -> None:
    # boto3's default for us-east-1 is the older query form (AWSAccessKeyId/Signature/Expires).
    s3 = api.client("s3", signature_version=signature_version)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    v1 = s3.put_object(Bucket=bucket, Key="dl/fw.bin", Body=b"version one")["VersionId"]
    s3.put_object(Bucket=bucket, Key="dl/fw.bin", Body=b"version two")
    s3.put_object(Bucket=bucket, Key="dl/other.bin", Body=b"someone else")
    params = {"Bucket": bucket, "Key": "dl/fw.bin", "VersionId": v1}
    url = s3.generate_presigned_url("get_object", Params=params, ExpiresIn=300)
    assert ("X-Amz-Signature=" in url) == (signature_version == "s3v4")
    ok = api.send("GET", url)
    assert (ok.status, ok.data) == (200, b"version one")

    tampered = api.send("GET", url.replace("dl/fw.bin", "dl/other.bin"))
    assert tampered.status == 403
    assert b"<Code>SignatureDoesNotMatch</Code>" in tampered.data
    assert b"someone else" not in tampered.data
    bad_sig = api.send("GET", url[:-3] + ("000" if not url.endswith("000") else "111"))
    assert bad_sig.status == 403

    api.clock.offset = 301
    expired = api.send("GET", url)
    assert expired.status == 403
    assert b"<Code>RequestExpired</Code>" in expired.data


def test_presigned_url_for_unsigned_path_characters(api: ApiServer, s3: Any, bucket: str) -> None:
    key = "dir with space/ü+x.bin"
    s3.put_object(Bucket=bucket, Key=key, Body=b"odd key")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=60)
    assert quote("ü") in url
    response = api.send("GET", url)
    assert (response.status, response.data) == (200, b"odd key")


# ---------------------------------------------------------------------- store guarantees


def test_failed_overwrite_keeps_previous_version(api: ApiServer, monkeypatch: pytest.MonkeyPatch,
                                                 bucket: str) -> None:
    store = api.objects
    store.put_object(bucket, "keep", b"original bytes")

    def explode(*args: Any, **kwargs: Any) -> list[Path]:
        raise RuntimeError("simulated crash before commit")

    monkeypatch.setattr(ObjectStore, "_drop_null", explode)
    with pytest.raises(RuntimeError):
        store.put_object(bucket, "keep", b"replacement")
    monkeypatch.undo()
    obj, data = store.get_object(bucket, "keep")
    assert data == b"original bytes"
    assert stored_leaves(api, bucket) == [f"null.{obj.sha256}"]  # the new bytes were not left behind
    assert list((api.root / "objects" / "tmp").iterdir()) == []


def test_put_into_missing_bucket_leaves_nothing(api: ApiServer) -> None:
    with pytest.raises(ApiError) as exc:
        api.objects.put_object("not-there", "k", b"data")
    assert exc.value.code == "NoSuchBucket"
    assert stored_names(api.objects.blobs, "data/not-there/") == []
    assert list((api.root / "objects" / "tmp").iterdir()) == []


def test_key_validation(api: ApiServer, bucket: str) -> None:
    with pytest.raises(ApiError) as exc:
        api.objects.put_object(bucket, "k" * 1025, b"x")
    assert exc.value.code == "KeyTooLongError"
    api.objects.put_object(bucket, "k" * 1024, b"x")


# ------------------------------------------------------------------------------ checksums


def test_checksum_algorithms() -> None:
    assert crc32c(b"123456789") == 0xE3069283
    assert crc64nvme(b"123456789") == 0xAE8B14860A799888
    assert checksum_b64("sha256", b"abc") == base64.b64encode(hashlib.sha256(b"abc").digest()).decode()
    verify_checksums({"x-amz-checksum-crc32c": checksum_b64("crc32c", b"abc")}, b"abc")
    with pytest.raises(ApiError) as exc:
        verify_checksums({"x-amz-checksum-crc32c": checksum_b64("crc32c", b"abd")}, b"abc")
    assert exc.value.code == "BadDigest"
    md5 = base64.b64encode(hashlib.md5(b"abc").digest()).decode()
    verify_checksums({"content-md5": md5}, b"abc")
    with pytest.raises(ApiError):
        verify_checksums({"content-md5": md5}, b"abd")
    with pytest.raises(ApiError) as exc:
        verify_checksums({"x-amz-checksum-xxhash64": "AAAA"}, b"abc")
    assert exc.value.code == "InvalidRequest"


# --- conditional requests, response overrides, ListBuckets paging ---------------------------


def test_conditional_get_and_head_answer_304_and_412_as_s3(s3: Any) -> None:
    import datetime as dt

    from botocore.exceptions import ClientError

    s3.create_bucket(Bucket="conditional")
    etag = s3.put_object(Bucket="conditional", Key="k", Body=b"v1")["ETag"]
    long_ago = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)

    def code(**conditions: Any) -> str:
        try:
            s3.get_object(Bucket="conditional", Key="k", **conditions)["Body"].read()
        except ClientError as exc:
            return str(exc.response["Error"]["Code"])
        return "200"

    assert code(IfMatch=etag) == "200"
    assert code(IfMatch='"0000"') == "PreconditionFailed"
    assert code(IfNoneMatch=etag) == "304"
    assert code(IfNoneMatch='"0000"') == "200"
    assert code(IfModifiedSince=later) == "304"
    assert code(IfModifiedSince=long_ago) == "200"
    assert code(IfUnmodifiedSince=long_ago) == "PreconditionFailed"
    # S3's documented combinations: If-Match true with If-Unmodified-Since false is 200;
    # If-None-Match false (the ETag matches) with If-Modified-Since true is 304. A present
    # If-None-Match decides alone (RFC 7232), so a non-matching one with a stale date is 200.
    assert code(IfMatch=etag, IfUnmodifiedSince=long_ago) == "200"
    assert code(IfNoneMatch=etag, IfModifiedSince=long_ago) == "304"
    assert code(IfNoneMatch='"0000"', IfModifiedSince=later) == "200"
    try:
        s3.head_object(Bucket="conditional", Key="k", IfNoneMatch=etag)
        head = "200"
    except ClientError as exc:
        head = str(exc.response["Error"]["Code"])
    assert head == "304"


def test_response_overrides_replace_headers(s3: Any) -> None:
    s3.create_bucket(Bucket="overrides")
    s3.put_object(Bucket="overrides", Key="fw.bin", Body=b"x", ContentType="application/octet-stream")
    got = s3.get_object(Bucket="overrides", Key="fw.bin", ResponseContentType="text/plain",
                        ResponseContentDisposition='attachment; filename="fw.bin"')
    assert got["ContentType"] == "text/plain"
    assert got["ContentDisposition"] == 'attachment; filename="fw.bin"'


def test_list_buckets_pages_with_continuation_tokens(s3: Any) -> None:
    names = [f"paged-bucket-{i}" for i in range(5)]
    for name in names:
        s3.create_bucket(Bucket=name)
    pages = list(s3.get_paginator("list_buckets").paginate(Prefix="paged-bucket-",
                                                           PaginationConfig={"PageSize": 2}))
    assert [[b["Name"] for b in p["Buckets"]] for p in pages] == [names[0:2], names[2:4], names[4:5]]
