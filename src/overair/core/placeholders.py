"""Pre-signed URL placeholders in plain job documents, as AWS IoT Jobs has them; pure.

A job document may carry `${aws:iot:s3-presigned-url:<S3 URL>}` (or the `-v2` prefix
AWS documents now); each time a device receives the document the placeholder is
replaced by a fresh pre-signed URL for that object. The S3 URL forms AWS's guides use
are all accepted:

    https://s3.amazonaws.com/<bucket>/<key>              path style, global
    https://s3.<region>.amazonaws.com/<bucket>/<key>     path style, regional
    https://s3-<region>.amazonaws.com/<bucket>/<key>     path style, legacy regional
    https://<bucket>.s3[.<region>].amazonaws.com/<key>   virtual-hosted style
    <bucket>/<key>                                       the oldest documented form

The key is percent-decoded (`my%20file.bin` is the key `my file.bin`). The region is
not checked: overair has one object store, whatever the URL says.

Decisions (documented in README): placeholders are replaced wherever they sit inside a
JSON string value (alone or within other text). A placeholder with our prefix that does
not parse -- an unknown URL form, a query string, a missing closing brace, or one in
an object key -- is refused at CreateJob rather than delivered to devices unreplaced.
Other `${...}` text is not ours and is left exactly as it is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from overair.core.errors import PeerInputError

MARKER = "${aws:iot:s3-presigned-url"
PLACEHOLDER = re.compile(r"\$\{aws:iot:s3-presigned-url(?:-v2)?:([^{}]*)\}")
S3_HOST = r"s3(?:[.-][a-z0-9-]+)?\.amazonaws\.com(?:\.cn)?"  # s3, s3.<region>, s3-<region>
# Hosts and bucket names are matched whole (`fullmatch`: `^...$` with `match` accepts a
# trailing newline).
PATH_STYLE_HOST = re.compile(S3_HOST)
VIRTUAL_HOST = re.compile(rf"(?P<bucket>[a-z0-9][a-z0-9.-]*[a-z0-9])\.{S3_HOST}")
BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class PlaceholderError(PeerInputError):
    code = "InvalidRequestException"


@dataclass(frozen=True, slots=True)
class S3Reference:
    bucket: str
    key: str


def parse_s3_url(url: str) -> S3Reference:
    """The bucket and key an S3 object URL (or `bucket/key`) names."""
    text = url.strip()
    # urlsplit silently drops tabs and newlines; a URL carrying them is refused instead.
    if any(ord(char) < 0x21 or ord(char) == 0x7F for char in text):
        raise PlaceholderError(f"{url[:80]!r}: control characters or spaces in an S3 URL")
    if "://" not in text:
        bucket, _, raw_key = text.partition("/")
    else:
        try:
            parts = urlsplit(text)
            host = (parts.hostname or "").lower()
        except ValueError as exc:  # e.g. "https://[": an unterminated IPv6 host
            raise PlaceholderError(f"{url[:80]!r} is not a URL: {exc}") from None
        if parts.scheme.lower() != "https":
            raise PlaceholderError(f"{url!r}: only https:// S3 URLs are supported")
        if parts.query or parts.fragment:
            raise PlaceholderError(f"{url!r}: an S3 URL here cannot carry a query or fragment")
        virtual = VIRTUAL_HOST.fullmatch(host)
        if virtual:
            bucket, raw_key = virtual.group("bucket"), parts.path[1:]
        elif PATH_STYLE_HOST.fullmatch(host):
            bucket, _, raw_key = parts.path[1:].partition("/")
        else:
            raise PlaceholderError(f"{url!r}: not an Amazon S3 object URL (https://s3.<region>."
                                   "amazonaws.com/<bucket>/<key>)")
    key = unquote(raw_key)
    if not BUCKET.fullmatch(bucket):
        raise PlaceholderError(f"{url!r}: {bucket!r} is not a valid bucket name")
    if not key:
        raise PlaceholderError(f"{url!r} names a bucket but no object key")
    return S3Reference(bucket, key)


def _placeholders_in(text: str) -> list[tuple[str, S3Reference]]:
    found = []
    position = text.find(MARKER)
    while position != -1:
        match = PLACEHOLDER.match(text, position)
        if match is None:
            snippet = text[position:position + 80]
            raise PlaceholderError(f"malformed pre-signed URL placeholder {snippet!r}: expected "
                                   "${aws:iot:s3-presigned-url:https://s3.<region>.amazonaws.com/<bucket>/<key>}")
        found.append((match.group(0), parse_s3_url(match.group(1))))
        position = text.find(MARKER, match.end())
    return found


def find(document: Any) -> dict[str, S3Reference]:
    """Every placeholder in the document's string values (placeholder text -> object),
    in order of first appearance."""
    found: dict[str, S3Reference] = {}

    def walk(node: Any) -> None:
        if isinstance(node, str):
            for text, reference in _placeholders_in(node):
                found.setdefault(text, reference)
        elif isinstance(node, Mapping):
            for key, value in node.items():
                if MARKER in str(key):
                    raise PlaceholderError(f"a pre-signed URL placeholder in the object key {key!r} "
                                           "is not replaced; put it in a value")
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(document)
    return found


def substitute(document: Any, urls: Mapping[str, str]) -> Any:
    """A copy of the document with each placeholder replaced by its URL."""
    if isinstance(document, str):
        if MARKER not in document:
            return document
        return PLACEHOLDER.sub(lambda m: urls.get(m.group(0), m.group(0)), document)
    if isinstance(document, Mapping):
        return {key: substitute(value, urls) for key, value in document.items()}
    if isinstance(document, list):
        return [substitute(item, urls) for item in document]
    return document
