"""Wildcard patterns (`*`, `?`) and policy variables (`${key}`) of the IAM policy grammar.

Patterns are turned into regular expressions that run in linear time whatever the
pattern: a policy author can write `*a*a*a*a*b` and a caller can send a long ARN, and
a naive translation (`.*a.*a.*...`) would backtrack exponentially. Every `*` except the
last becomes an atomic group that takes the leftmost occurrence of the following
fixed-length chunk and never gives it back; for globs the leftmost occurrence is always
the best choice, so nothing is lost.

Policy variables (policy version 2012-10-17 only) are parsed into a template. A value
substituted for a variable, and the escapes `${*}`, `${?}`, `${$}`, are always literal
text: a user called `*` must not turn `home/${aws:username}/*` into `home/*/*`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

# A piece of pattern text: (text, wildcards_active). Literal pieces come from variables.
Segment = tuple[str, bool]
# How a template looks up a variable: lower-cased key -> its single value, or None.
VariableLookup = Callable[[str], str | None]

_ESCAPES = frozenset("*?$")
_VARIABLE_NAME = re.compile(r"[^\s${}',]+")


class TemplateError(ValueError):
    """A `${...}` that is not a well-formed policy variable."""


def has_wildcards(pattern: str) -> bool:
    return "*" in pattern or "?" in pattern


def _chunk_source(text: str, active: bool) -> str:
    if not active:
        return re.escape(text)
    return "".join("." if ch == "?" else re.escape(ch) for ch in text)


def glob_source(segments: Iterable[Segment]) -> str:
    """Regex source (for `fullmatch`) of a wildcard pattern made of segments."""
    # Split the whole pattern at its active stars into fixed-length chunks.
    chunks: list[list[str]] = [[]]
    for text, active in segments:
        if not active:
            chunks[-1].append(_chunk_source(text, False))
            continue
        pieces = text.split("*")
        chunks[-1].append(_chunk_source(pieces[0], True))
        for piece in pieces[1:]:
            chunks.append([_chunk_source(piece, True)])
    sources = ["".join(c) for c in chunks]
    if len(sources) == 1:
        return sources[0]
    middle = "".join(f"(?>.*?{src})" for src in sources[1:-1] if src)
    return f"{sources[0]}{middle}.*{sources[-1]}"


@lru_cache(maxsize=4096)
def compile_glob(segments: tuple[Segment, ...], ignore_case: bool = False) -> re.Pattern[str]:
    flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    return re.compile(glob_source(segments), flags)


def glob(pattern: str, ignore_case: bool = False) -> re.Pattern[str]:
    """A compiled wildcard pattern; use its `fullmatch`."""
    return compile_glob(((pattern, True),), ignore_case)


class PatternSet:
    """Several wildcard patterns, any of which may match; built for speed.

    `*` alone, exact names and `prefix*` patterns (the common cases) avoid the regex
    engine entirely, and `matches` is chosen once for the mix at hand, so a set of exact
    names costs one C-level set lookup. Values must already be folded the way the
    patterns were."""

    __slots__ = ("exact", "match_all", "matches", "prefixes", "regex")

    def __init__(self, patterns: Iterable[str]) -> None:
        exact: set[str] = set()
        prefixes: list[str] = []
        general: list[str] = []
        self.match_all = False
        for pattern in patterns:
            if pattern == "*":
                self.match_all = True
            elif not has_wildcards(pattern):
                exact.add(pattern)
            elif pattern.endswith("*") and not has_wildcards(pattern[:-1]):
                prefixes.append(pattern[:-1])
            else:
                general.append(glob_source(((pattern, True),)))
        self.exact = frozenset(exact)
        self.prefixes = tuple(prefixes)
        self.regex = re.compile("|".join(f"(?:{s})" for s in general), re.DOTALL) if general else None
        self.matches: Callable[[str], bool] = self._specialised()

    def _specialised(self) -> Callable[[str], bool]:
        if self.match_all:
            return _always
        if self.regex is None and not self.prefixes:
            return self.exact.__contains__
        if self.regex is None and not self.exact:
            prefixes = self.prefixes
            return lambda value: value.startswith(prefixes)
        return self._any

    def _any(self, value: str) -> bool:
        if value in self.exact:
            return True
        if self.prefixes and value.startswith(self.prefixes):
            return True
        return self.regex is not None and self.regex.fullmatch(value) is not None


def _always(_value: str) -> bool:
    return True


# ------------------------------------------------------------------ policy variables


@dataclass(frozen=True, slots=True)
class Variable:
    key: str  # lower-cased: condition keys are case-insensitive
    default: str | None


@dataclass(frozen=True, slots=True)
class Escaped:
    """`${*}`, `${?}` or `${$}`: the character itself, never a wildcard."""

    char: str


# A template part: pattern text (wildcards active where the operator has them),
# a variable, or an escaped character.
Part = str | Variable | Escaped


def parse_template(text: str) -> tuple[Part, ...]:
    """Split text into plain parts, variables and escapes; raise `TemplateError`."""
    parts: list[Part] = []
    pos = 0
    while True:
        start = text.find("${", pos)
        if start < 0:
            break
        end = _closing_brace(text, start)
        if start > pos:
            parts.append(text[pos:start])
        parts.append(_parse_variable(text[start + 2 : end], text))
        pos = end + 1
    if pos < len(text) or not parts:
        parts.append(text[pos:])
    return tuple(parts)


def _closing_brace(text: str, start: int) -> int:
    # A default value is quoted and may contain '}' (quotes doubled inside).
    i = start + 2
    in_quote = False
    while i < len(text):
        ch = text[i]
        if ch == "'":
            if in_quote and text[i + 1 : i + 2] == "'":
                i += 2
                continue
            in_quote = not in_quote
        elif ch == "}" and not in_quote:
            return i
        i += 1
    raise TemplateError(f"unterminated policy variable in {text!r}")


def _parse_variable(body: str, text: str) -> Variable | Escaped:
    if body in _ESCAPES:
        return Escaped(body)
    name, comma, default = body.partition(",")
    name = name.strip()
    if not _VARIABLE_NAME.fullmatch(name) or ":" not in name:
        raise TemplateError(f"invalid policy variable ${{{body}}} in {text!r}")
    if not comma:
        return Variable(name.lower(), None)
    default = default.strip()
    if len(default) < 2 or default[0] != "'" or default[-1] != "'":
        raise TemplateError(f"policy variable default must be quoted: ${{{body}}} in {text!r}")
    inner = default[1:-1]
    if "'" in inner.replace("''", ""):
        raise TemplateError(f"unescaped quote in policy variable default: ${{{body}}} in {text!r}")
    return Variable(name.lower(), inner.replace("''", "'"))


def plain_text(parts: Sequence[Part]) -> str | None:
    """The text of a template without variables or escapes, else None."""
    return parts[0] if len(parts) == 1 and isinstance(parts[0], str) else None


def resolve(parts: Sequence[Part], lookup: VariableLookup) -> tuple[Segment, ...] | None:
    """The template's segments with variables filled in; None if one has no value."""
    out: list[Segment] = []
    for part in parts:
        if isinstance(part, str):
            out.append((part, True))
        elif isinstance(part, Variable):
            value = lookup(part.key)
            if value is None:
                value = part.default
            if value is None:
                return None
            out.append((value, False))
        else:
            out.append((part.char, False))
    return tuple(out)


def resolve_text(parts: Sequence[Part], lookup: VariableLookup) -> str | None:
    segments = resolve(parts, lookup)
    return None if segments is None else "".join(text for text, _ in segments)


def single_value_lookup(values: Mapping[str, tuple[str, ...]]) -> VariableLookup:
    """Variables take single-valued keys only; a multi-valued key has no value."""

    def lookup(key: str) -> str | None:
        found = values.get(key)
        return found[0] if found is not None and len(found) == 1 else None

    return lookup
