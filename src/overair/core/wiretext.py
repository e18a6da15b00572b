"""Short text fields from the wire (client tokens, status details), checked once.

A JSON string can hold what no store or log should take: lone surrogates (`"\\ud800"`
decodes to a `str` that cannot be encoded to UTF-8, so PostgreSQL, CBOR encoding and
`str.encode` all fail on it later, far from the input), NUL (refused by PostgreSQL) and
terminal control sequences (an ESC in a status detail reaches an operator's terminal).
`text_field` refuses those and anything over its byte length, with a `DecodeError`
naming the field; tab, newline and carriage return are kept (free-text reasons).
"""

from __future__ import annotations

import re
from typing import Any

from overair.core.errors import DecodeError

# C0 controls except \t \n \r, DEL, C1 controls, and the surrogate range.
_REFUSED = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def text_field(value: Any, *, name: str, max_bytes: int, code: str, allow_empty: bool = True) -> str:
    if not isinstance(value, str):
        raise DecodeError(f"{name} must be text", code=code)
    if not value and not allow_empty:
        raise DecodeError(f"{name} must not be empty", code=code)
    # Cheap length check first (a UTF-8 character is at most 4 bytes): no encoding of
    # an oversized value.
    if len(value) > max_bytes or _REFUSED.search(value) is not None:
        raise DecodeError(f"{name} must be at most {max_bytes} bytes of printable text", code=code)
    if len(value.encode("utf-8")) > max_bytes:
        raise DecodeError(f"{name} must be at most {max_bytes} bytes of printable text", code=code)
    return value
