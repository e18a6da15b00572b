"""What the S3 operation modules share: the reply type and output conventions."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from overair.server.api.contract import ApiError

# overair has one account: every bucket, object and upload belongs to it.
OWNER = {"ID": "overair", "DisplayName": "overair"}
STORAGE_CLASS = "STANDARD"


@dataclass(slots=True)
class S3Reply:
    """An operation's output members, plus how to render them."""

    output: dict[str, Any] = field(default_factory=dict)
    status: int | None = None
    root: str | None = None  # XML root element name
    raw_body: bytes | None = None  # a verbatim XML body (GetBucketLocation)


def timestamp(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, tz=dt.UTC)


def url_encoder(params: dict[str, Any]) -> Callable[[str | None], str | None]:
    """URL-encode key names in list output when the client asked for encoding-type=url."""
    if params.get("EncodingType") == "url":
        return lambda v: None if v is None else quote(v, safe="/")
    return lambda v: v


def list_limit(params: dict[str, Any], member: str, default: int = 1000) -> int:
    """A MaxKeys-style member: absent means `default`; negative is refused."""
    value = params.get(member)
    if value is None:
        return default
    if int(value) < 0:
        raise ApiError("InvalidArgument", f"{member} must not be negative", 400)
    return int(value)


def refuse_sse_c(params: dict[str, Any]) -> None:
    if params.get("SSECustomerAlgorithm") or params.get("SSECustomerKey"):
        raise ApiError("NotImplemented", "SSE-C is not implemented by overair", 501)
