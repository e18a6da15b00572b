"""Fleet indexing queries (SearchIndex's `queryString`): a parser and a matcher, pure.

The subset of AWS's query syntax (AWS IoT developer guide, "Query syntax") served here:
terms and quoted phrases, `field:value`, prefix search (`value*`) and `*` alone (any
value), one leading wildcard per query (`*value`, then at most 100 characters), range
search (`field:[a TO b]`, `{a TO b}`, `*` as an open end) and comparisons
(`field<v`, `field<=v`, `field>v`, `field>=v`), AND, OR, NOT and `-`, the default AND,
grouping and field grouping (`field:(a OR b)`), case-insensitive values with
case-sensitive field names, at most 12 terms. A term without a field matches any field.
Refused with InvalidQuery, as AWS refuses them: the special characters
`` ` @ # % \\ / ' ; , `` (so no escaping either), regular expressions, fuzzy and
proximity search, boosting. Numbers compare as numbers when both sides are numbers.

A document is a mapping from field names (`thingName`, `attributes.color`,
`shadow.reported.fw.version`, ...) to the string values of that field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from overair.core.errors import PeerInputError

MAX_TERMS = 12  # AWS: "The maximum number of terms in a query is 12"
MAX_QUERY_LENGTH = 1024  # overair's bound on queryString (AWS's model sets only min 1)
MAX_LEADING_WILDCARD_QUERY = 100  # AWS: queries with a leading wildcard, at most 100 characters
_FORBIDDEN = set("`@#%\\/';,~^")  # AWS's unsupported special characters, and fuzzy/boost
_WORD = re.compile(r'[^\s()"\[\]{}:<>=]+')

Document = Mapping[str, Sequence[str]]


class InvalidQuery(PeerInputError):
    def __init__(self, message: str) -> None:
        super().__init__(message, code="InvalidQueryException")


@dataclass(frozen=True, slots=True)
class Term:
    field: str | None
    kind: str  # "exact" | "prefix" | "suffix" | "any" | "range" | "compare"
    value: str = ""
    low: str | None = None  # range ends (None: open)
    high: str | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True
    op: str = ""  # compare: < <= > >=


@dataclass(frozen=True, slots=True)
class And:
    parts: tuple[Query, ...]


@dataclass(frozen=True, slots=True)
class Or:
    parts: tuple[Query, ...]


@dataclass(frozen=True, slots=True)
class Not:
    part: Query


Query = Term | And | Or | Not


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch == '"':
            end = text.find('"', i + 1)
            if end < 0:
                raise InvalidQuery("a quoted phrase is not closed")
            out.append(text[i:end + 1])
            i = end + 1
        elif text.startswith(("<=", ">="), i):
            out.append(text[i:i + 2])
            i += 2
        elif ch in "()[]{}:<>":
            out.append(ch)
            i += 1
        else:
            found = _WORD.match(text, i)
            if found is None:
                raise InvalidQuery(f"unexpected {ch!r}")
            out.append(found.group())
            i = found.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        if not text.strip():
            raise InvalidQuery("the query is empty")
        if len(text) > MAX_QUERY_LENGTH:
            raise InvalidQuery(f"the query is longer than {MAX_QUERY_LENGTH} characters")
        bad = sorted(set(text) & _FORBIDDEN)
        if bad:
            raise InvalidQuery(f"the query contains unsupported characters: {' '.join(bad)}")
        self.tokens = _tokens(text)
        self.pos = 0
        self.terms = 0
        self.leading = 0
        self.length = len(text)

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            raise InvalidQuery(f"expected {expected or 'a term'} at the end of the query" if token is None
                               else f"expected {expected!r}, found {token!r}")
        self.pos += 1
        return token

    def parse(self) -> Query:
        query = self.expression(None)
        if self.peek() is not None:
            raise InvalidQuery(f"unexpected {self.peek()!r}")
        return query

    def expression(self, field: str | None) -> Query:
        parts = [self.conjunction(field)]
        while self.peek() == "OR":
            self.take()
            parts.append(self.conjunction(field))
        return parts[0] if len(parts) == 1 else Or(tuple(parts))

    def conjunction(self, field: str | None) -> Query:
        parts = [self.unary(field)]
        while self.peek() not in (None, ")", "OR"):
            if self.peek() == "AND":
                self.take()
            parts.append(self.unary(field))
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def unary(self, field: str | None) -> Query:
        token = self.peek()
        if token == "NOT":
            self.take()
            return Not(self.unary(field))
        if token is not None and token.startswith("-") and len(token) > 1:
            self.tokens[self.pos] = token[1:]
            return Not(self.unary(field))
        return self.primary(field)

    def primary(self, field: str | None) -> Query:
        token = self.take()
        if token == "(":
            inner = self.expression(field)
            self.take(")")
            return inner
        if token in (")", ":", "[", "]", "{", "}", "AND", "OR", "<", ">", "<=", ">="):
            raise InvalidQuery(f"unexpected {token!r}")
        following = self.peek()
        if field is None and following == ":" and not token.startswith('"'):
            self.take(":")
            if self.peek() == "(":
                self.take("(")
                inner = self.expression(token)
                self.take(")")
                return inner
            if self.peek() in ("[", "{"):
                return self.range(token)
            return self.value(token, self.take())
        if field is None and following in ("<", "<=", ">", ">=") and not token.startswith('"'):
            op = self.take()
            return self.counted(Term(token, "compare", self.take().lower(), op=op))
        if following in ("[", "{") and field is None:
            raise InvalidQuery("a range needs a field")
        return self.value(field, token)

    def range(self, field: str) -> Query:
        low_inclusive = self.take() == "["
        low = self.take()
        self.take("TO")
        high = self.take()
        close = self.take()
        if close not in ("]", "}"):
            raise InvalidQuery(f"expected ']' or '}}', found {close!r}")
        return self.counted(Term(field, "range", low=None if low == "*" else low.lower(),
                                 high=None if high == "*" else high.lower(),
                                 low_inclusive=low_inclusive, high_inclusive=close == "]"))

    def value(self, field: str | None, token: str) -> Query:
        if token in ("(", ")", ":", "[", "]", "{", "}", "AND", "OR", "NOT"):
            raise InvalidQuery(f"expected a value, found {token!r}")
        if token.startswith('"'):
            return self.counted(Term(field, "exact", token[1:-1].lower()))
        text = token.lower()
        if text == "*":
            return self.counted(Term(field, "any"))
        if "*" in text.strip("*") or "?" in text:
            raise InvalidQuery(f"{token!r}: wildcards are supported at the start or the end of a term only")
        if text.startswith("*"):
            self.leading += 1
            if self.leading > 1 or self.length > MAX_LEADING_WILDCARD_QUERY:
                raise InvalidQuery("a query may have one leading wildcard, and then at most "
                                   f"{MAX_LEADING_WILDCARD_QUERY} characters")
            if text.endswith("*") and len(text) > 1:
                raise InvalidQuery(f"{token!r}: a term cannot start and end with a wildcard")
            return self.counted(Term(field, "suffix", text[1:]))
        if text.endswith("*"):
            return self.counted(Term(field, "prefix", text[:-1]))
        return self.counted(Term(field, "exact", text))

    def counted(self, term: Term) -> Term:
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise InvalidQuery(f"a query has at most {MAX_TERMS} terms")
        return term


def parse(text: str) -> Query:
    """The query, or InvalidQuery saying what is wrong."""
    return _Parser(text).parse()


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _compare(a: str, b: str) -> int:
    x, y = _number(a), _number(b)
    if x is not None and y is not None:
        return (x > y) - (x < y)
    return (a > b) - (a < b)


def _term_matches(term: Term, value: str) -> bool:
    value = value.lower()
    if term.kind == "any":
        return True
    if term.kind == "exact":
        return value == term.value or (_number(value) is not None and _compare(value, term.value) == 0)
    if term.kind == "prefix":
        return value.startswith(term.value)
    if term.kind == "suffix":
        return value.endswith(term.value)
    if term.kind == "compare":
        order = _compare(value, term.value)
        return {"<": order < 0, "<=": order <= 0, ">": order > 0, ">=": order >= 0}[term.op]
    low_ok = term.low is None or (_compare(value, term.low) >= 0 if term.low_inclusive
                                  else _compare(value, term.low) > 0)
    high_ok = term.high is None or (_compare(value, term.high) <= 0 if term.high_inclusive
                                    else _compare(value, term.high) < 0)
    return low_ok and high_ok


def matches(query: Query, document: Document) -> bool:
    if isinstance(query, And):
        return all(matches(part, document) for part in query.parts)
    if isinstance(query, Or):
        return any(matches(part, document) for part in query.parts)
    if isinstance(query, Not):
        return not matches(query.part, document)
    fields = [query.field] if query.field is not None else list(document)
    return any(_term_matches(query, value) for name in fields for value in document.get(name, ()))
