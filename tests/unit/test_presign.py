"""Pre-signed download URLs (core/presign.py): what the signature binds, expiry, ranges."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import pytest

from overair.core import presign
from overair.core.errors import PeerInputError

SECRET = b"k" * 32
GRANT = presign.Grant("firmware", "app/v2.bin", "v-123", "dev-1", 2_000)


def _query(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


def test_signed_query_parses_to_its_fields() -> None:
    url = presign.sign(SECRET, "https://h", presign.Grant("firmware", "k", "v+1=", "dev-1", 2_000))
    fields = presign.parse_query(urlsplit(url).query)
    assert fields == _query(url)
    assert fields["version"] == "v+1="
    assert presign.verify(SECRET, "firmware", "k", fields, now=0).version == "v+1="


@pytest.mark.parametrize("change", [
    lambda q: "version=other&" + q,  # repeated: nginx reads the first, Python the last
    lambda q: q + "&signature=" + "0" * 64,
    lambda q: "VERSION=other&" + q,  # nginx matches names in any case
    lambda q: q.replace("thing=", "thin%67="),  # Python decodes names
    lambda q: q + "&x-id=GetObject",  # a field the signature does not cover
    lambda q: q + "&",
    lambda q: q.partition("&")[2],  # one missing
    lambda q: "",
    lambda q: q + "&version=" + "v" * presign.MAX_QUERY_LENGTH,
])
def test_n4_query_not_in_the_signed_form_is_refused(change: object) -> None:
    assert callable(change)
    query = urlsplit(presign.sign(SECRET, "https://h", GRANT)).query
    with pytest.raises(presign.UrlRefused) as refused:
        presign.parse_query(change(query))
    assert refused.value.code == "MalformedUrl"


def test_signed_url_verifies_and_names_its_object() -> None:
    url = presign.sign(SECRET, "https://ota.example:8443", GRANT)
    assert url.startswith("https://ota.example:8443/ota/firmware/app/v2.bin?")
    assert presign.verify(SECRET, "firmware", "app/v2.bin", _query(url), now=1_999) == GRANT


@pytest.mark.parametrize("field", ["version", "thing", "expires"])
def test_any_change_breaks_the_signature(field: str) -> None:
    query = _query(presign.sign(SECRET, "https://h", GRANT))
    query[field] = "2999" if field == "expires" else "other"
    with pytest.raises(presign.UrlRefused) as caught:
        presign.verify(SECRET, "firmware", "app/v2.bin", query, now=0)
    assert caught.value.code == "SignatureDoesNotMatch"


def test_another_object_or_key_breaks_the_signature() -> None:
    query = _query(presign.sign(SECRET, "https://h", GRANT))
    for bucket, key, secret in (("other", "app/v2.bin", SECRET), ("firmware", "x.bin", SECRET),
                                ("firmware", "app/v2.bin", b"j" * 32)):
        with pytest.raises(presign.UrlRefused):
            presign.verify(secret, bucket, key, query, now=0)


def test_expired_and_malformed_urls_are_refused() -> None:
    query = _query(presign.sign(SECRET, "https://h", GRANT))
    with pytest.raises(presign.UrlRefused) as expired:
        presign.verify(SECRET, "firmware", "app/v2.bin", query, now=2_001)
    assert expired.value.code == "ExpiredUrl"
    with pytest.raises(presign.UrlRefused) as malformed:
        presign.verify(SECRET, "firmware", "app/v2.bin", {"version": "v"}, now=0)
    assert malformed.value.code == "MalformedUrl"


@pytest.mark.parametrize(("header", "expected"), [
    (None, None), ("bytes=0-99", (0, 99)), ("bytes=900-", (900, 999)), ("bytes=-100", (900, 999)),
    ("bytes=990-2000", (990, 999)),
])
def test_ranges(header: str | None, expected: tuple[int, int] | None) -> None:
    assert presign.parse_range(header, 1000) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5-1", "items=0-1", "bytes=0-1,5-6", "bytes=x-y",
                                    "bytes=-0", "bytes"])
def test_unsatisfiable_ranges_are_refused(header: str) -> None:
    with pytest.raises(presign.UrlRefused) as caught:
        presign.parse_range(header, 1000)
    assert caught.value.code == "InvalidRange"


def test_expiry_bounds_follow_aws() -> None:
    assert presign.expiry_seconds(None) == 1800
    assert presign.expiry_seconds({"expiresInSec": 60}) == 60
    for bad in (59, 3601, "600", True):
        with pytest.raises(PeerInputError):
            presign.expiry_seconds({"expiresInSec": bad})


def test_plain_jobs_default_to_an_hour_and_ota_jobs_to_half_an_hour() -> None:
    # AWS: CreateJob's presignedUrlConfig defaults to 3600 s, CreateOTAUpdate's to 1800 s.
    role_only: dict[str, object] = {"roleArn": "arn:aws:iam::1:role/r"}
    assert presign.expiry_seconds(role_only, default=presign.JOB_DEFAULT_EXPIRY) == 3600
    assert presign.expiry_seconds({"expiresInSec": 120}, default=presign.JOB_DEFAULT_EXPIRY) == 120
    assert presign.expiry_seconds({}) == presign.DEFAULT_EXPIRY == 1800


# Hostile URLs and ranges reach the endpoint before any authentication (finding 10).

def test_no_500_non_ascii_or_malformed_signature_is_refused() -> None:
    query = _query(presign.sign(SECRET, "https://h", GRANT))
    valid = query["signature"]
    for signature in ("\u00e9" * 64, "\u0661" * 64, valid.upper(), valid + "\n", ""):
        with pytest.raises(presign.UrlRefused) as caught:
            presign.verify(SECRET, "firmware", "app/v2.bin", {**query, "signature": signature}, now=0)
        assert caught.value.code == "SignatureDoesNotMatch"


@pytest.mark.parametrize(("field", "value"), [
    ("expires", "\u0662\u0660\u0660\u0660"), ("expires", "²"), ("expires", " 2000"), ("expires", "2_000"),
    ("expires", "+2000"), ("expires", "9" * 5000), ("thing", "dev-1\n"), ("thing", "dev/1"),
    ("version", "v-123\n"), ("version", "v" * 2000),
])
def test_no_500_malformed_fields_are_refused_before_the_signature_is_computed(field: str, value: str) -> None:
    query = _query(presign.sign(SECRET, "https://h", GRANT))
    with pytest.raises(presign.UrlRefused) as caught:
        presign.verify(SECRET, "firmware", "app/v2.bin", {**query, field: value}, now=0)
    assert caught.value.code == "MalformedUrl"


@pytest.mark.parametrize("header", [
    "bytes=" + "9" * 5000 + "-", "bytes=0-" + "9" * 5000, "bytes=\u0661-\u0662", "bytes=+1-2", "bytes=1_0-20",
    "bytes= 1-2", "bytes=0x1-2", "bytes=-", "bytes=²-3",
])
def test_no_500_hostile_ranges_are_invalid_ranges(header: str) -> None:
    with pytest.raises(presign.UrlRefused) as caught:
        presign.parse_range(header, 1000)
    assert caught.value.code == "InvalidRange"
