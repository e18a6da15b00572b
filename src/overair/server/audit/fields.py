"""Audit field values made storable on both database backends, so that an append never
fails on what a peer chose to send (a client id, a resource name) and what is hashed is
exactly what is stored and read back."""

from __future__ import annotations

import json
import re
from typing import Any

_SURROGATE_ESCAPE = re.compile(r"\\ud[89a-f]", re.IGNORECASE)


def clean_text(value: object, limit: int | None = None) -> str:
    """`value` as text PostgreSQL accepts (no NUL, no lone surrogates), cut to the
    column's length."""
    text = value if isinstance(value, str) else str(value)
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")  # lone surrogates -> "?"
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    return text if limit is None else text[:limit]


def clean_detail(detail: dict[str, Any] | None) -> Any:
    """`detail` as the JSON column gives it back: keys as strings, tuples as lists,
    unknown objects as their str(); something that is not JSON at all (NaN, a cycle)
    becomes its repr, so that recording never fails on it."""
    if not detail:
        return {}
    try:
        encoded = json.dumps(detail, default=str, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return {"unencodable": clean_text(repr(detail), 4096)}
    value = json.loads(encoded)
    # Only then is a walk through every string needed (also for any character beyond
    # the BMP, which ASCII JSON writes as a surrogate pair; cleaning leaves those be).
    if "\\u0000" in encoded or _SURROGATE_ESCAPE.search(encoded):
        value = _clean_strings(value)
    return value


def _clean_strings(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list):
        return [_clean_strings(item) for item in value]
    if isinstance(value, dict):
        return {clean_text(key): _clean_strings(item) for key, item in value.items()}
    return value
