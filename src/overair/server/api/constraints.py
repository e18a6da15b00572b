"""The botocore model's constraints, enforced on every request's input at the edge.

After a request is parsed into the members of its operation's input shape, this walks
the shape and the value together and reports every member that breaks a constraint of
the model: a required member missing, a string's `min`/`max` length (in UTF-16 code
units, as AWS counts), `pattern` (`model_patterns.py`, matched whole) or `enum`, a
number's `min`/`max` value, a list's or map's `min`/`max` size, a blob's length. So no
handler ever sees a value the AWS service would have refused, for every operation of
every service, without a line of per-operation code (principle 4: every input bounded).

Two rules hold for every string, map key and document value whatever the model says,
because no AWS text can carry them and the storage layer cannot: no lone surrogate
(not Unicode; SQLite's driver fails to encode it) and no NUL (PostgreSQL refuses it).

Messages follow AWS's wording (`1 validation error detected: Value 'x' at 'thingName'
failed to satisfy constraint: Member must ...`); values of members the model marks
`sensitive` are never echoed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from overair.server.api.model_patterns import compile_pattern

# At most this many problems are listed in one answer (AWS lists them all; a hostile
# request could have thousands).
MAX_REPORTED = 10
_SHOWN_CHARS = 64


def input_problems(shape: Any, params: Mapping[str, Any], *, enums: bool = True) -> list[str]:
    """Every constraint `params` (parsed members of `shape`) breaks, in AWS's words.
    `enums=False` leaves enum sets unchecked (S3: its model's enums are open lists that
    S3 itself does not enforce, e.g. a LocationConstraint naming this server's region)."""
    problems: list[str] = []
    _walk(shape, params, "", problems, sensitive=False, enums=enums)
    return problems[:MAX_REPORTED]


def describe(problems: list[str]) -> str:
    count = len(problems)
    plural = "error" if count == 1 else "errors"
    return f"{count} validation {plural} detected: " + "; ".join(problems)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _shown(value: Any, sensitive: bool) -> str:
    if sensitive:
        return "Value"
    if isinstance(value, str):
        text = value if len(value) <= _SHOWN_CHARS else value[:_SHOWN_CHARS] + "..."
        return "Value " + repr(text)
    if isinstance(value, bool | int | float):
        return f"Value '{value}'"
    return "Value"


def _fail(problems: list[str], value: Any, path: str, rule: str, sensitive: bool) -> None:
    problems.append(f"{_shown(value, sensitive)} at '{path}' failed to satisfy constraint: {rule}")


def _walk(shape: Any, value: Any, path: str, problems: list[str], *, sensitive: bool, enums: bool) -> None:
    if value is None or len(problems) >= MAX_REPORTED:
        return
    sensitive = sensitive or bool(shape.metadata.get("sensitive"))
    kind = shape.type_name
    if kind == "structure":
        if getattr(shape, "is_document_type", False):
            _document(value, path, problems)
            return
        for name in shape.required_members:
            if value.get(name) is None:
                problems.append(f"Value null at '{_join(path, name)}' failed to satisfy constraint: "
                                "Member must not be null")
        for name, member in shape.members.items():
            if name in value:
                _walk(member, value[name], _join(path, name), problems, sensitive=sensitive, enums=enums)
    elif kind == "list":
        _bounds(shape, len(value), value, path, problems, "length", sensitive)
        for index, item in enumerate(value, start=1):
            _walk(shape.member, item, f"{path}.{index}.member", problems, sensitive=sensitive, enums=enums)
    elif kind == "map":
        _bounds(shape, len(value), value, path, problems, "length", sensitive)
        for key, item in value.items():
            _walk(shape.key, key, f"{path}.key", problems, sensitive=sensitive, enums=enums)
            _walk(shape.value, item, f"{path}.{key}", problems, sensitive=sensitive, enums=enums)
    elif kind == "string":
        if isinstance(value, str):
            _string(shape, value, path, problems, sensitive, enums)
        else:  # a `jsonvalue` header member, decoded
            _document(value, path, problems)
    elif kind in ("integer", "long", "float", "double"):
        _bounds(shape, value, value, path, problems, "value", sensitive)
    elif kind == "blob" and isinstance(value, bytes | bytearray):
        _bounds(shape, len(value), value, path, problems, "length", sensitive)


def _bounds(shape: Any, measure: Any, value: Any, path: str, problems: list[str], what: str,
            sensitive: bool) -> None:
    low, high = shape.metadata.get("min"), shape.metadata.get("max")
    if low is not None and measure < low:
        _fail(problems, value, path, f"Member must have {what} greater than or equal to {low}", sensitive)
    elif high is not None and measure > high:
        _fail(problems, value, path, f"Member must have {what} less than or equal to {high}", sensitive)


def _utf16_length(text: str) -> int:
    return len(text) + sum(1 for char in text if ord(char) > 0xFFFF)


def text_problem(text: str) -> str | None:
    """Why `text` cannot be stored or compared as AWS text, or None."""
    if "\x00" in text:
        return "Member must not contain NUL characters"
    if any("\ud800" <= char <= "\udfff" for char in text):
        return "Member must be valid Unicode (no unpaired surrogates)"
    return None


def _string(shape: Any, value: str, path: str, problems: list[str], sensitive: bool, enums: bool) -> None:
    unusable = text_problem(value)
    if unusable is not None:
        _fail(problems, value, path, unusable, sensitive)
        return
    _bounds(shape, _utf16_length(value), value, path, problems, "length", sensitive)
    enum = shape.enum if enums else None
    if enum and value not in enum:
        _fail(problems, value, path, f"Member must satisfy enum value set: [{', '.join(enum)}]", sensitive)
        return
    pattern = shape.metadata.get("pattern")
    if pattern is not None and compile_pattern(pattern).fullmatch(value) is None:
        _fail(problems, value, path, f"Member must satisfy regular expression pattern: {pattern}",
              sensitive)


def _document(value: Any, path: str, problems: list[str]) -> None:
    """A free-form document (already bounded in depth by the JSON decoder): only the
    text rules apply."""
    stack = [value]
    while stack and len(problems) < MAX_REPORTED:
        item = stack.pop()
        if isinstance(item, str):
            unusable = text_problem(item)
            if unusable is not None:
                _fail(problems, item, path, unusable, False)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
