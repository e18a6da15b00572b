"""nextToken/maxResults pagination over an ordered list (opaque offset tokens)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any, TypeVar

from overair.core.asciinum import parse_uint
from overair.server.api.contract import invalid

T = TypeVar("T")


def paginate(items: Sequence[T], params: dict[str, Any], *, limit_key: str = "maxResults",
             token_key: str = "nextToken", default: int = 100,
             ceiling: int = 250) -> tuple[list[T], str | None]:
    size = params.get(limit_key) or default
    if not isinstance(size, int) or not 1 <= size <= ceiling:
        raise invalid(f"{limit_key} must be between 1 and {ceiling}")
    start = 0
    token = params.get(token_key)
    if token:
        try:
            text = base64.urlsafe_b64decode(token.encode("utf-8")).decode("ascii")
            decoded = parse_uint(text, max_digits=9)
        except (ValueError, binascii.Error) as exc:  # not base64 / not ASCII
            raise invalid(f"{token_key} is not valid") from exc
        if decoded is None:
            raise invalid(f"{token_key} is not valid")
        start = decoded
    page = list(items[start:start + size])
    end = start + size
    return page, (base64.urlsafe_b64encode(str(end).encode()).decode() if end < len(items) else None)


def page_out(key: str, items: list[Any], token: str | None, token_key: str = "nextToken") -> dict[str, Any]:
    out: dict[str, Any] = {key: items}
    if token:
        out[token_key] = token
    return out
