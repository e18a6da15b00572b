"""Minimal, well-formed input for any botocore operation, generated from its model.

Used by tests that must call every routed operation (authorization coverage, protocol
conformance) without writing each request by hand: every required member gets the
smallest value of its type that passes the model's constraints as the server enforces
them (lengths, ranges, enums, patterns: server/api/constraints.py). The values name
nothing that exists, which is the point: an operation must be refused before it looks
anything up.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from botocore.model import OperationModel, Shape

from overair.server.api.model_patterns import compile_pattern

PLACEHOLDER = "overair-probe"
# For members with a `pattern`: the first of these that matches it (and fits its length).
PATTERN_CANDIDATES = (
    "overair_probe", "overairprobe", "v1", "AKIAOVERAIRPROBE0000", "123456789012", "0",
    "arn:aws:acm:us-east-1:123456789012:certificate/overair-probe",
    "arn:aws:iam::123456789012:role/overair-probe", "arn:aws:iot:us-east-1:123456789012:thing/overair-probe",
    "arn:aws:s3:::overair-probe/key", "/", "overair.example.com", "https://overair.example/probe",
)


def minimal_input(operation: OperationModel, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    shape = operation.input_shape
    params = _structure(shape, required_only=True) if shape is not None else {}
    params.update(overrides or {})
    return params


def _value(shape: Shape, depth: int = 0) -> Any:
    kind = shape.type_name
    if kind == "structure":
        return _structure(shape, required_only=True, depth=depth + 1)
    if kind == "list":
        minimum = max(1, int(shape.metadata.get("min", 1)))
        return [_value(shape.member, depth + 1) for _ in range(minimum)]
    if kind == "map":
        return {}
    if kind == "string":
        if shape.enum:
            return shape.enum[0]
        minimum = int(shape.metadata.get("min", 1))
        maximum = int(shape.metadata.get("max", 64))
        text = PLACEHOLDER + "x" * max(0, minimum - len(PLACEHOLDER))
        text = text[:maximum] if maximum >= minimum else text
        pattern = shape.metadata.get("pattern")
        if pattern is None or compile_pattern(pattern).fullmatch(text):
            return text
        for candidate in PATTERN_CANDIDATES:
            padded = candidate + candidate[-1] * max(0, minimum - len(candidate))
            if len(padded) <= maximum and compile_pattern(pattern).fullmatch(padded):
                return padded
        return text
    if kind in ("integer", "long"):
        return max(1, int(shape.metadata.get("min", 1)))
    if kind in ("float", "double"):
        return float(shape.metadata.get("min", 1))
    if kind == "boolean":
        return False
    if kind == "blob":
        return b"x" * max(1, int(shape.metadata.get("min", 1)))
    if kind == "timestamp":
        return dt.datetime.now(dt.UTC)
    raise ValueError(f"no minimal value for {kind}")


def _structure(shape: Shape, *, required_only: bool, depth: int = 0) -> dict[str, Any]:
    if depth > 8:  # recursive shapes: stop before botocore would
        return {}
    members = shape.members
    required = set(shape.required_members) if required_only else set(members)
    return {name: _value(members[name], depth) for name in members if name in required}
