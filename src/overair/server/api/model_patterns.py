"""The `pattern` constraints of the botocore models, compiled for Python.

The models' patterns are Java regular expressions (AWS validates with them on the
service side; botocore never checks them). Python's `re` reads almost all of them the
same way once `\\w`, `\\d` and `\\s` are ASCII as in Java (`re.ASCII`), except the
property classes `\\p{...}`, which `re` lacks. Those are rewritten into explicit
character ranges: the Unicode general categories (`L`, `N`, `Z`, `C`) from
`unicodedata`, the POSIX classes (`Graph`, `Upper`, `Digit`, `Cntrl`, ...) as Java defines
them (US-ASCII). A pattern naming any other class is refused when compiled, so a model
update cannot silently turn a constraint into a different one.

Patterns are matched with `fullmatch`, as Java's `String.matches` does: `re.match` with a
trailing `$` would accept a value that ends in a newline.
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata

# Java's POSIX classes (US-ASCII only unless UNICODE_CHARACTER_CLASS, which AWS does not use).
_POSIX = {
    "Lower": "a-z",
    "Upper": "A-Z",
    "ASCII": "\\x00-\\x7f",
    "Alpha": "a-zA-Z",
    "Digit": "0-9",
    "Alnum": "a-zA-Z0-9",
    "Punct": "!-/:-@\\[-`{-~",
    "Graph": "!-~",
    "Print": " -~",
    "Blank": " \\t",
    "Cntrl": "\\x00-\\x1f\\x7f",
    "XDigit": "0-9a-fA-F",
    "Space": " \\t\\n\\x0b\\f\\r",
}
_CATEGORIES = ("L", "N", "Z", "C")
_PROPERTY = re.compile(r"\\p\{([A-Za-z]+)\}")


class UnsupportedPattern(ValueError):
    """A model pattern uses a construct this translation does not know."""


@functools.cache
def _category_ranges() -> dict[str, str]:
    """Each general category (by its first letter) as a character-class body of ranges.
    Computed once, on first use of a pattern that needs it."""
    ranges: dict[str, list[tuple[int, int]]] = {c: [] for c in _CATEGORIES}
    for code in range(sys.maxunicode + 1):
        major = unicodedata.category(chr(code))[0]
        spans = ranges.get(major)
        if spans is None:
            continue
        if spans and spans[-1][1] == code - 1:
            spans[-1] = (spans[-1][0], code)
        else:
            spans.append((code, code))
    return {major: "".join(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in spans)
            for major, spans in ranges.items()}


def _class_body(name: str) -> str:
    if name in _POSIX:
        return _POSIX[name]
    if name in _CATEGORIES:
        return _category_ranges()[name]
    raise UnsupportedPattern(f"\\p{{{name}}} is not a supported character property")


def translate(java: str) -> str:
    """Python `re` source for a model's Java pattern."""
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(java):
        char = java[i]
        if char == "\\":
            prop = _PROPERTY.match(java, i)
            if prop is not None:
                body = _class_body(prop.group(1))
                out.append(body if in_class else f"[{body}]")
                i = prop.end()
                continue
            out.append(java[i:i + 2])
            i += 2
            continue
        if char == "[" and not in_class:
            in_class = True
            out.append(char)
            # A ']' right after '[' or '[^' is a literal in both dialects.
            if java.startswith("^", i + 1):
                out.append("^")
                i += 1
            i += 1
            continue
        if char == "]" and in_class:
            in_class = False
        out.append(char)
        i += 1
    return "".join(out)


@functools.cache
def compile_pattern(java: str) -> re.Pattern[str]:
    """The compiled pattern (cached); use its `fullmatch`."""
    return re.compile(translate(java), re.ASCII)
