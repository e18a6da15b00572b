"""Pre-signed URL placeholders in plain job documents (core/placeholders.py): which forms
are understood, which are refused, and how they are replaced."""

from __future__ import annotations

from typing import Any

import pytest

from overair.core.placeholders import PlaceholderError, S3Reference, find, parse_s3_url, substitute


@pytest.mark.parametrize(
    ("url", "bucket", "key"),
    [
        ("https://s3.amazonaws.com/firmware/app.bin", "firmware", "app.bin"),
        ("https://s3.eu-west-1.amazonaws.com/firmware/dir/app.bin", "firmware", "dir/app.bin"),
        ("https://s3-us-west-2.amazonaws.com/firmware/app.bin", "firmware", "app.bin"),
        ("https://firmware.s3.amazonaws.com/app.bin", "firmware", "app.bin"),
        ("https://my.fw.bucket.s3.us-east-1.amazonaws.com/a/b.bin", "my.fw.bucket", "a/b.bin"),
        ("https://s3.cn-north-1.amazonaws.com.cn/firmware/app.bin", "firmware", "app.bin"),
        ("HTTPS://S3.AMAZONAWS.COM/firmware/app.bin", "firmware", "app.bin"),
        ("firmware/app.bin", "firmware", "app.bin"),  # the oldest documented form
        # keys are percent-decoded; '+' stays a '+' in a path
        ("https://s3.amazonaws.com/firmware/my%20file%2Bv2.bin", "firmware", "my file+v2.bin"),
        ("https://s3.amazonaws.com/firmware/a+b/%E2%9C%93.bin", "firmware", "a+b/\u2713.bin"),
    ],
)
def test_s3_url_forms(url: str, bucket: str, key: str) -> None:
    assert parse_s3_url(url) == S3Reference(bucket, key)


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("http://s3.amazonaws.com/firmware/app.bin", "only https://"),
        ("https://example.com/firmware/app.bin", "not an Amazon S3 object URL"),
        ("https://s3.amazonaws.com.evil.example/firmware/app.bin", "not an Amazon S3 object URL"),
        ("https://s3.amazonaws.com/firmware/app.bin?versionId=3", "query or fragment"),
        ("https://s3.amazonaws.com/firmware", "no object key"),
        ("https://s3.amazonaws.com/firmware/", "no object key"),
        ("https://s3.amazonaws.com/Bad_Bucket/app.bin", "not a valid bucket name"),
        ("firmware", "no object key"),
    ],
)
def test_other_urls_are_refused(url: str, complaint: str) -> None:
    with pytest.raises(PlaceholderError) as caught:
        parse_s3_url(url)
    assert complaint in caught.value.message
    assert caught.value.code == "InvalidRequestException"


A = "${aws:iot:s3-presigned-url:https://s3.amazonaws.com/firmware/app.bin}"
B = "${aws:iot:s3-presigned-url-v2:https://s3.us-east-1.amazonaws.com/firmware/cfg%20v2.json}"


def test_find_collects_every_placeholder_once_in_document_order() -> None:
    document = {
        "operation": "download",
        "files": [{"url": A}, {"url": B}, {"again": A}],
        "note": f"mirror: {B} (primary {A})",  # placeholders inside other text count too
        "template": "${aws:iot:parameter:version}",  # not ours: left alone
        "count": 3,
    }
    assert list(find(document).items()) == [
        (A, S3Reference("firmware", "app.bin")),
        (B, S3Reference("firmware", "cfg v2.json")),
    ]


def test_substitute_replaces_each_placeholder_and_nothing_else() -> None:
    document: dict[str, Any] = {
        "url": A,
        "nested": {"list": [B, 7, None, True]},
        "note": f"get {A} now",
        "template": "${aws:iot:parameter:version}",
    }
    rendered = substitute(document, {A: "https://dl/a?sig=1&x=2", B: "https://dl/b"})
    assert rendered == {
        "url": "https://dl/a?sig=1&x=2",
        "nested": {"list": ["https://dl/b", 7, None, True]},
        "note": "get https://dl/a?sig=1&x=2 now",
        "template": "${aws:iot:parameter:version}",
    }
    assert document["url"] == A  # the stored document is not touched


def test_a_document_without_placeholders_has_none() -> None:
    assert find({"operation": "reboot", "url": "https://s3.amazonaws.com/firmware/app.bin"}) == {}


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        ({"url": "${aws:iot:s3-presigned-url:https://s3.amazonaws.com/firmware/app.bin"}, "malformed"),
        ({"url": "${aws:iot:s3-presigned-url:ftp://s3.amazonaws.com/firmware/app.bin}"}, "only https://"),
        ({"url": "${aws:iot:s3-presigned-url:https://example.com/firmware/app.bin}"}, "not an Amazon S3"),
        ({"url": "${aws:iot:s3-presigned-url-v3:https://s3.amazonaws.com/f/a.bin}"}, "malformed"),
        ({"url": "${aws:iot:s3-presigned-url:https://s3.amazonaws.com/firmware/}"}, "no object key"),
        ({A: "the key of an object"}, "object key"),
    ],
)
def test_placeholders_that_do_not_parse_are_refused_not_delivered(document: Any, complaint: str) -> None:
    with pytest.raises(PlaceholderError) as caught:
        find(document)
    assert complaint in caught.value.message


@pytest.mark.parametrize("url", [
    "https://[",  # an unterminated IPv6 host: urlsplit raises ValueError
    "https://[::1/bucket/key",
    "https://s3.amazonaws.com\n/bucket/key",
    "bucket\n/key",
    "https://bucket\n.s3.amazonaws.com/key",
])
def test_no_500_hostile_urls_are_placeholder_errors(url: str) -> None:
    with pytest.raises(PlaceholderError) as caught:
        parse_s3_url(url)
    assert caught.value.code == "InvalidRequestException"
    with pytest.raises(PlaceholderError):
        find({"url": "${aws:iot:s3-presigned-url:" + url + "}"})
