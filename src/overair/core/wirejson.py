"""The one JSON decoder for anything that crosses a trust boundary.

`json.loads` alone is not safe on hostile input: it recurses once per nesting level (a
body of 100,000 `[` exhausts the stack and raises RecursionError, which is not a
ValueError and escaped as a 500), accepts `NaN`/`Infinity`, turns `1e400` into
`inf`, and raises a bare ValueError for integers past Python's digit limit. `loads`
bounds size and depth *before* parsing (one linear scan, strings skipped), refuses
non-finite numbers and oversized integers, and raises only `DecodeError`.

Every network, device, operator and file input that is JSON goes through here, with
its bounds from the `Limits` object (core/limits.py).
"""

from __future__ import annotations

import json
import re
from typing import Any

from overair.core.errors import DecodeError
from overair.core.limits import DEFAULT_LIMITS, Limits

# A JSON string (escapes included) or one bracket. Strings are matched whole so that
# brackets inside them do not count.
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)
_OPEN = frozenset("[{")


class _Refused(Exception):
    """Raised inside the json hooks; becomes a DecodeError below."""


def _reject_constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def nesting_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in `text` (0 for a scalar)."""
    depth = deepest = 0
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token in _OPEN:
            depth += 1
            deepest = max(deepest, depth)
        elif token in "]}":
            depth -= 1
    return deepest


def loads(data: bytes | bytearray | memoryview | str, *, limits: Limits = DEFAULT_LIMITS,
          max_bytes: int | None = None, max_depth: int | None = None, what: str = "JSON",
          reject_duplicate_keys: bool = False) -> Any:
    """Decode one JSON value from hostile input; `DecodeError` (code `InvalidJson`) on
    anything malformed or past the bounds. `what` names the input in messages.
    `reject_duplicate_keys`: refuse an object with a key twice (IAM policies: two
    "Effect"s would be read differently by different tools)."""
    size_limit = limits.max_json_bytes if max_bytes is None else max_bytes
    depth_limit = limits.max_json_depth if max_depth is None else max_depth
    if len(data) > size_limit:
        raise DecodeError(f"{what} of {len(data)} bytes exceeds the limit of {size_limit}",
                          code="InvalidJson")
    if isinstance(data, str):
        text = data
    else:
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"{what} is not UTF-8: {exc.reason} at byte {exc.start}",
                              code="InvalidJson") from None
    # Only a text with enough brackets can be too deep: skip the scan otherwise.
    if text.count("[") + text.count("{") > depth_limit and nesting_depth(text) > depth_limit:
        raise DecodeError(f"{what} is nested deeper than {depth_limit} levels", code="InvalidJson")
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float,
                          parse_int=_bounded_int(limits.max_json_integer_digits),
                          object_pairs_hook=_unique_keys if reject_duplicate_keys else None)
    except _Refused as exc:
        raise DecodeError(f"{what}: {exc}", code="InvalidJson") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise DecodeError(f"{what} is not valid JSON: {exc}", code="InvalidJson") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(f"duplicate key {key[:40]!r}")
        out[key] = value
    return out


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _Refused(f"number {text[:40]} is out of range")
    return value


def _bounded_int(max_digits: int) -> Any:
    def parse(text: str) -> int:
        if len(text.lstrip("-")) > max_digits:
            raise _Refused(f"integer of {len(text)} digits is out of range")
        return int(text)

    return parse
