"""S3 GetObject/HeadObject conditional requests and response-header overrides.

Preconditions follow RFC 7232 as S3 applies them: If-Match, else If-Unmodified-Since,
decide 412 PreconditionFailed; then If-None-Match, else If-Modified-Since, decide 304
Not Modified. So If-Match true with If-Unmodified-Since false answers 200, and
If-None-Match false with If-Modified-Since true answers 304, as S3 documents.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from overair.server.api.contract import ApiError

# ResponseX request members -> the output member they replace.
_OVERRIDES = {
    "ResponseContentType": "ContentType",
    "ResponseContentDisposition": "ContentDisposition",
    "ResponseCacheControl": "CacheControl",
    "ResponseContentEncoding": "ContentEncoding",
    "ResponseContentLanguage": "ContentLanguage",
    "ResponseExpires": "Expires",
}


def _tags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/").strip('"') for tag in header.split(",") if tag.strip()}


def _matches(header: str, etag: str) -> bool:
    tags = _tags(header)
    return "*" in tags or etag.strip('"') in tags


def _seconds(value: Any) -> float:
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()
    return float(value)


class NotModified(Exception):
    """304: the client's copy is current."""


def check_preconditions(params: dict[str, Any], etag: str, last_modified: float) -> None:
    """Raise ApiError 412 or NotModified (304) when the request's conditions say so."""
    # HTTP dates have whole seconds: compare at that precision.
    modified = int(last_modified)
    if params.get("IfMatch") is not None:
        if not _matches(str(params["IfMatch"]), etag):
            raise _failed("If-Match")
    elif params.get("IfUnmodifiedSince") is not None and modified > _seconds(params["IfUnmodifiedSince"]):
        raise _failed("If-Unmodified-Since")
    if params.get("IfNoneMatch") is not None:
        if _matches(str(params["IfNoneMatch"]), etag):
            raise NotModified
    elif params.get("IfModifiedSince") is not None and modified <= _seconds(params["IfModifiedSince"]):
        raise NotModified


def _failed(condition: str) -> ApiError:
    return ApiError("PreconditionFailed", f"At least one of the pre-conditions you specified did not hold "
                    f"({condition})", 412)


def apply_overrides(params: dict[str, Any], output: dict[str, Any]) -> None:
    """`response-content-type=...` and friends (presigned GETs use them) replace headers."""
    for member, target in _OVERRIDES.items():
        if params.get(member) is not None:
            output[target] = params[member]
