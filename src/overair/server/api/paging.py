"""nextToken/maxResults pagination: keyset pages read from the database (below), and
`paginate` over an ordered list in memory (opaque offset tokens) for small listings."""

from __future__ import annotations

import base64
import binascii
import json
import math
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


# --- keyset pagination ----------------------------------------------------------------------
# A page is read from the database after the last key of the previous page, over an index:
# a page costs the same with 100 rows and with 100,000 (an offset reads and drops every row
# before it). The token is that last key, opaque to the client; a forged token only moves
# where a listing the caller may read anyway starts.

MAX_KEY_CHARS = 2048
KEYSET_PREFIX = "k1:"


def page_size(params: dict[str, Any], *, limit_key: str = "maxResults", default: int = 100,
              ceiling: int = 250) -> int:
    size = params.get(limit_key) or default
    if not isinstance(size, int) or not 1 <= size <= ceiling:
        raise invalid(f"{limit_key} must be between 1 and {ceiling}")
    return size


def key_after(params: dict[str, Any], *, token_key: str = "nextToken",
              parts: int = 1) -> tuple[str, ...] | None:
    """The key a page starts after (None: from the start); `parts` strings."""
    token = params.get(token_key)
    if not token:
        return None
    try:
        text = base64.urlsafe_b64decode(str(token).encode("ascii")).decode("utf-8")
        if not text.startswith(KEYSET_PREFIX) or len(text) > MAX_KEY_CHARS:
            raise ValueError(text[:8])
        value = json.loads(text[len(KEYSET_PREFIX):])
    except (ValueError, UnicodeError, binascii.Error) as exc:  # JSONDecodeError is a ValueError
        raise invalid(f"{token_key} is not valid") from exc
    if not (isinstance(value, list) and len(value) == parts and all(isinstance(v, str) for v in value)):
        raise invalid(f"{token_key} is not valid")
    return tuple(value)


def key_token(*key: str) -> str:
    return base64.urlsafe_b64encode((KEYSET_PREFIX + json.dumps(list(key))).encode("utf-8")).decode("ascii")


def time_key_after(params: dict[str, Any], *, token_key: str = "nextToken") -> tuple[float, str] | None:
    """A (creation time, id) key: the time written with repr, finite."""
    after = key_after(params, token_key=token_key, parts=2)
    if after is None:
        return None
    try:
        at = float(after[0])
    except ValueError:
        raise invalid(f"{token_key} is not valid") from None
    if not math.isfinite(at):
        raise invalid(f"{token_key} is not valid")
    return at, after[1]
