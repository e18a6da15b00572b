"""Minimal, well-formed input for any botocore operation, generated from its model.

Used by tests that must call every routed operation (authorization coverage, protocol
conformance) without writing each request by hand: every required member gets the
smallest value of its type that passes botocore's client-side validation (lengths,
ranges, enums). The values name nothing that exists, which is the point: an operation
must be refused before it looks anything up.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from botocore.model import OperationModel, Shape

PLACEHOLDER = "overair-probe"


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
        return [_value(shape.member, depth + 1) for _ in range(minimum)]  # type: ignore[attr-defined]
    if kind == "map":
        return {}
    if kind == "string":
        if shape.enum:
            return shape.enum[0]
        minimum = int(shape.metadata.get("min", 1))
        maximum = int(shape.metadata.get("max", 64))
        text = PLACEHOLDER + "x" * max(0, minimum - len(PLACEHOLDER))
        return text[:maximum] if maximum >= minimum else text
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
    members = shape.members  # type: ignore[attr-defined]
    required = set(shape.required_members) if required_only else set(members)  # type: ignore[attr-defined]
    return {name: _value(members[name], depth) for name in members if name in required}
