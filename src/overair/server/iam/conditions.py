"""The `Condition` element of IAM policies: compiled once, evaluated per request.

AWS semantics, kept exactly because policies are copied from AWS documentation:

* several operators in a block, and several keys under one operator, must all hold (AND);
  several values for one key are alternatives (OR); for a negated operator
  (`StringNotEquals`, `NotIpAddress`, ...) the context value must match none of them;
* a key missing from the request makes a condition false, or true for a negated
  operator; `...IfExists` makes it true; `Null` tests presence itself;
* `ForAnyValue:` holds if some value of a multi-valued key satisfies the operator (false
  when the key is missing); `ForAllValues:` if every value does (true when missing);
* condition keys are case-insensitive; policy variables are substituted in the values of
  the String and Arn operators (the only ones where AWS supports them).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from enum import Enum
from typing import Protocol

from overair.server.iam.wildcards import (
    Part,
    PatternSet,
    Segment,
    TemplateError,
    compile_glob,
    parse_template,
    plain_text,
    resolve,
    resolve_text,
    single_value_lookup,
)

# Condition key (lower-cased) -> its values in the request; a missing key is absent.
ContextValues = Mapping[str, tuple[str, ...]]

# ASCII digits only (`\d` would take any Unicode digit, which Decimal and float then read).
_NUMBER = re.compile(r"[+-]?(?:[0-9]{1,40}(?:\.[0-9]{0,40})?|\.[0-9]{1,40})")
_EPOCH = re.compile(r"-?[0-9]{1,20}(?:\.[0-9]{1,20})?")


class ConditionError(ValueError):
    """The Condition element is malformed; the message names the operator and key."""


class Qualifier(Enum):
    NONE = ""
    ANY = "ForAnyValue"
    ALL = "ForAllValues"


class ValueTest(Protocol):
    """Does one value from the request match any of the policy's values?"""

    def positive(self, value: str, ctx: ContextValues) -> bool: ...


# ------------------------------------------------------------------ value parsing


def parse_number(text: str) -> Decimal | None:
    text = text.strip()
    return Decimal(text) if _NUMBER.fullmatch(text) else None


def parse_date(text: str) -> float | None:
    """Seconds since the epoch from ISO 8601 (naive = UTC) or an epoch number."""
    text = text.strip()
    if _EPOCH.fullmatch(text):
        return float(text)
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


# ------------------------------------------------------------------ value tests


def _templates_of(values: Sequence[str], templates: bool) -> list[tuple[Part, ...]]:
    # Without policy variables (version 2008-10-17) "${" is ordinary text.
    return [parse_template(v) if templates else (v,) for v in values]


class _StringEquals:
    def __init__(self, values: Sequence[str], templates: bool, ignore_case: bool) -> None:
        self._fold: Callable[[str], str] = str.casefold if ignore_case else str
        parsed = _templates_of(values, templates)
        self._static = frozenset(self._fold(t) for p in parsed if (t := plain_text(p)) is not None)
        self._templates = tuple(p for p in parsed if plain_text(p) is None)

    def positive(self, value: str, ctx: ContextValues) -> bool:
        folded = self._fold(value)
        if folded in self._static:
            return True
        if not self._templates:
            return False
        lookup = single_value_lookup(ctx)
        for parts in self._templates:
            expected = resolve_text(parts, lookup)
            if expected is not None and self._fold(expected) == folded:
                return True
        return False


class _StringLike:
    def __init__(self, values: Sequence[str], templates: bool) -> None:
        parsed = _templates_of(values, templates)
        self._static = PatternSet(t for p in parsed if (t := plain_text(p)) is not None)
        self._templates = tuple(p for p in parsed if plain_text(p) is None)

    def positive(self, value: str, ctx: ContextValues) -> bool:
        if self._static.matches(value):
            return True
        if not self._templates:
            return False
        lookup = single_value_lookup(ctx)
        for parts in self._templates:
            segments = resolve(parts, lookup)
            if segments is not None and compile_glob(segments).fullmatch(value):
                return True
        return False


def _split_arn_segments(segments: Sequence[Segment]) -> list[tuple[Segment, ...]]:
    """Split at the first five colons (in pattern or substituted text) into components."""
    components: list[list[Segment]] = [[]]
    for text, active in segments:
        pieces = text.split(":", 5 - (len(components) - 1)) if len(components) < 6 else [text]
        components[-1].append((pieces[0], active))
        components.extend([(piece, active)] for piece in pieces[1:])
    return [tuple(c) for c in components]


class _ArnLike:
    """ArnEquals and ArnLike (AWS treats them alike): each of the six colon-separated
    components is matched on its own, so a `*` in the account cannot eat the resource
    type. A pattern with fewer than six components is matched as a whole."""

    def __init__(self, values: Sequence[str], templates: bool) -> None:
        parsed = _templates_of(values, templates)
        self._static = tuple(self._compile(((t, True),)) for p in parsed if (t := plain_text(p)) is not None)
        self._templates = tuple(p for p in parsed if plain_text(p) is None)

    @staticmethod
    def _compile(segments: tuple[Segment, ...]) -> tuple[re.Pattern[str], ...]:
        components = _split_arn_segments(segments)
        if len(components) < 6:
            return (compile_glob(segments),)
        return tuple(compile_glob(c) for c in components)

    @staticmethod
    def _match(compiled: tuple[re.Pattern[str], ...], value: str, split: list[str]) -> bool:
        if len(compiled) == 1:
            return compiled[0].fullmatch(value) is not None
        return len(split) == 6 and all(p.fullmatch(v) for p, v in zip(compiled, split, strict=True))

    def positive(self, value: str, ctx: ContextValues) -> bool:
        split = value.split(":", 5)
        if any(self._match(c, value, split) for c in self._static):
            return True
        if not self._templates:
            return False
        lookup = single_value_lookup(ctx)
        for parts in self._templates:
            segments = resolve(parts, lookup)
            if segments is not None and self._match(self._compile(segments), value, split):
                return True
        return False


class _Numeric:
    def __init__(self, values: Sequence[str], compare: Callable[[Decimal, Decimal], bool]) -> None:
        numbers = [parse_number(v) for v in values]
        bad = [v for v, n in zip(values, numbers, strict=True) if n is None]
        if bad:
            raise ConditionError(f"not a number: {bad[0]!r}")
        self._numbers = tuple(n for n in numbers if n is not None)
        self._compare = compare

    def positive(self, value: str, ctx: ContextValues) -> bool:
        number = parse_number(value)
        return number is not None and any(self._compare(number, n) for n in self._numbers)


class _Date:
    def __init__(self, values: Sequence[str], compare: Callable[[float, float], bool]) -> None:
        dates = [parse_date(v) for v in values]
        bad = [v for v, d in zip(values, dates, strict=True) if d is None]
        if bad:
            raise ConditionError(f"not an ISO 8601 date or epoch time: {bad[0]!r}")
        self._dates = tuple(d for d in dates if d is not None)
        self._compare = compare

    def positive(self, value: str, ctx: ContextValues) -> bool:
        when = parse_date(value)
        return when is not None and any(self._compare(when, d) for d in self._dates)


class _Bool:
    def __init__(self, values: Sequence[str]) -> None:
        lowered = {v.strip().lower() for v in values}
        if not lowered <= {"true", "false"}:
            raise ConditionError(f"Bool values must be true or false, got {sorted(lowered)}")
        self._accepted = frozenset(lowered)

    def positive(self, value: str, ctx: ContextValues) -> bool:
        return value.strip().lower() in self._accepted


class _IpAddress:
    def __init__(self, values: Sequence[str]) -> None:
        networks = []
        for v in values:
            try:
                networks.append(ipaddress.ip_network(v.strip(), strict=False))
            except ValueError as exc:
                raise ConditionError(f"not an IP address or CIDR block: {v!r}") from exc
        self._networks = tuple(networks)

    def positive(self, value: str, ctx: ContextValues) -> bool:
        address = _parse_ip(value)
        return address is not None and any(address in net for net in self._networks)


class _BinaryEquals:
    def __init__(self, values: Sequence[str]) -> None:
        self._values = frozenset(values)

    def positive(self, value: str, ctx: ContextValues) -> bool:
        return value in self._values


# name -> (build(values, variables_enabled), negated)
_Factory = Callable[[Sequence[str], bool], ValueTest]


def _string_equals(ignore_case: bool) -> _Factory:
    return lambda values, templates: _StringEquals(values, templates, ignore_case)


def _numeric(compare: Callable[[Decimal, Decimal], bool]) -> _Factory:
    return lambda values, _templates: _Numeric(values, compare)


def _date(compare: Callable[[float, float], bool]) -> _Factory:
    return lambda values, _templates: _Date(values, compare)


OPERATORS: dict[str, tuple[_Factory, bool]] = {
    "StringEquals": (_string_equals(False), False),
    "StringNotEquals": (_string_equals(False), True),
    "StringEqualsIgnoreCase": (_string_equals(True), False),
    "StringNotEqualsIgnoreCase": (_string_equals(True), True),
    "StringLike": (_StringLike, False),
    "StringNotLike": (_StringLike, True),
    "ArnEquals": (_ArnLike, False),
    "ArnLike": (_ArnLike, False),
    "ArnNotEquals": (_ArnLike, True),
    "ArnNotLike": (_ArnLike, True),
    "NumericEquals": (_numeric(operator.eq), False),
    "NumericNotEquals": (_numeric(operator.eq), True),
    "NumericLessThan": (_numeric(operator.lt), False),
    "NumericLessThanEquals": (_numeric(operator.le), False),
    "NumericGreaterThan": (_numeric(operator.gt), False),
    "NumericGreaterThanEquals": (_numeric(operator.ge), False),
    "DateEquals": (_date(operator.eq), False),
    "DateNotEquals": (_date(operator.eq), True),
    "DateLessThan": (_date(operator.lt), False),
    "DateLessThanEquals": (_date(operator.le), False),
    "DateGreaterThan": (_date(operator.gt), False),
    "DateGreaterThanEquals": (_date(operator.ge), False),
    "Bool": (lambda values, _t: _Bool(values), False),
    "IpAddress": (lambda values, _t: _IpAddress(values), False),
    "NotIpAddress": (lambda values, _t: _IpAddress(values), True),
    "BinaryEquals": (lambda values, _t: _BinaryEquals(values), False),
}


# ------------------------------------------------------------------ key tests


class KeyTest:
    """One operator applied to one condition key."""

    __slots__ = ("if_exists", "key", "negated", "qualifier", "test")

    def __init__(self, key: str, test: ValueTest, negated: bool, qualifier: Qualifier,
                 if_exists: bool) -> None:
        self.key = key
        self.test = test
        self.negated = negated
        self.qualifier = qualifier
        self.if_exists = if_exists

    def holds(self, ctx: ContextValues) -> bool:
        values = ctx.get(self.key)
        if not values:
            if self.if_exists or self.qualifier is Qualifier.ALL:
                return True
            if self.qualifier is Qualifier.ANY:
                return False
            return self.negated
        test, negated = self.test, self.negated
        if self.qualifier is Qualifier.ALL:
            return all(test.positive(v, ctx) != negated for v in values)
        if self.qualifier is Qualifier.ANY:
            return any(test.positive(v, ctx) != negated for v in values)
        return any(test.positive(v, ctx) for v in values) != negated


class NullTest:
    """`Null`: "true" holds when the key is absent, "false" when it is present."""

    __slots__ = ("absent_expected", "key")

    def __init__(self, key: str, values: Sequence[str]) -> None:
        lowered = {v.strip().lower() for v in values}
        if not lowered <= {"true", "false"}:
            raise ConditionError(f"Null values must be true or false, got {sorted(lowered)}")
        self.key = key
        self.absent_expected = frozenset(v == "true" for v in lowered)

    def holds(self, ctx: ContextValues) -> bool:
        return (not ctx.get(self.key)) in self.absent_expected


class Condition:
    """A compiled Condition element: every test must hold."""

    __slots__ = ("tests",)

    def __init__(self, tests: Sequence[KeyTest | NullTest]) -> None:
        self.tests = tuple(tests)

    def holds(self, ctx: ContextValues) -> bool:
        return all(t.holds(ctx) for t in self.tests)


# ------------------------------------------------------------------ compilation


def _scalar_text(value: object, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    raise ConditionError(f"{where}: condition values must be strings, numbers or booleans")


def _values(raw: object, where: str) -> list[str]:
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise ConditionError(f"{where}: no values given")
    return [_scalar_text(v, where) for v in items]


def split_operator(name: str) -> tuple[Qualifier, str, bool]:
    """`ForAnyValue:StringLikeIfExists` -> (ANY, "StringLike", True)."""
    qualifier = Qualifier.NONE
    prefix, colon, rest = name.partition(":")
    if colon:
        try:
            qualifier = Qualifier(prefix)
        except ValueError:
            raise ConditionError(f"unknown set qualifier {prefix!r} in {name!r}") from None
        if qualifier is Qualifier.NONE:
            raise ConditionError(f"unknown set qualifier in {name!r}")
        name = rest
    if_exists = name.endswith("IfExists") and name != "IfExists"
    base = name[: -len("IfExists")] if if_exists else name
    return qualifier, base, if_exists


def compile_condition(block: object, variables: bool) -> Condition:
    """Compile a Condition element; raise `ConditionError` naming what is wrong."""
    if not isinstance(block, dict):
        raise ConditionError("Condition must be an object of operators")
    tests: list[KeyTest | NullTest] = []
    for op_name, keys in block.items():
        qualifier, base, if_exists = split_operator(op_name)
        if not isinstance(keys, dict) or not keys:
            raise ConditionError(f"operator {op_name!r} must map condition keys to values")
        if base == "Null":
            if if_exists or qualifier is not Qualifier.NONE:
                raise ConditionError(f"operator {op_name!r} is not supported (Null takes no modifiers)")
        elif base not in OPERATORS:
            raise ConditionError(f"operator {op_name!r} is not supported")
        for key, raw in keys.items():
            where = f"{op_name} {key}"
            if not isinstance(key, str) or ":" not in key or key.strip() != key:
                raise ConditionError(f"{where}: condition keys have the form prefix:name")
            values = _values(raw, where)
            if base == "Null":
                tests.append(NullTest(key.lower(), values))
                continue
            factory, negated = OPERATORS[base]
            try:
                test = factory(values, variables)
            except TemplateError as exc:
                raise ConditionError(f"{where}: {exc}") from exc
            except ConditionError as exc:
                raise ConditionError(f"{where}: {exc}") from exc
            tests.append(KeyTest(key.lower(), test, negated, qualifier, if_exists))
    return Condition(tests)
