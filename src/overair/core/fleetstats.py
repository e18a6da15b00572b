"""Fleet indexing aggregations (GetStatistics, GetPercentiles, GetCardinality,
GetBucketsAggregation) over the values of one field of the things a query matched, pure.

AWS's answers (iot API reference): `statistics` has count, average, sum, minimum,
maximum, sumOfSquares, variance and stdDeviation for a Number field, only count for a
String or Boolean one; values whose type does not match the field's are ignored
("the Fleet Indexing service ignores the inconsistent value for aggregation queries").
Percentiles default to 1, 5, 25, 50, 75, 95, 99. Buckets (terms aggregation) are the
most frequent values, `maxBuckets` of them (default 10).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

DEFAULT_PERCENTS = (1.0, 5.0, 25.0, 50.0, 75.0, 95.0, 99.0)
# overair's bound: values beyond it are not aggregated (as values of another type), so
# that sums and sums of squares over the largest fleet served stay finite doubles.
MAX_MAGNITUDE = 1e150


def number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and abs(value) <= MAX_MAGNITUDE else None


def typed(values: Sequence[str], kind: str) -> list[str]:
    """The values that are of the field's type (Number, Boolean, String)."""
    if kind == "Number":
        return [v for v in values if number(v) is not None]
    if kind == "Boolean":
        return [v for v in values if v in ("true", "false")]
    return list(values)


def statistics(per_thing: Sequence[Sequence[str]], kind: str | None) -> dict[str, Any]:
    """`per_thing`: the field's values of each matching thing (one list per thing)."""
    if kind is None:  # no aggregation field: the things that matched
        return {"count": len(per_thing)}
    kept = [typed(values, kind) for values in per_thing]
    if kind != "Number":
        return {"count": sum(1 for values in kept if values)}
    numbers = [number(v) or 0.0 for values in kept for v in values]
    if not numbers:
        return {"count": 0}
    total = math.fsum(numbers)
    squares = math.fsum(x * x for x in numbers)
    mean = total / len(numbers)
    variance = max(squares / len(numbers) - mean * mean, 0.0)
    return {"count": len(numbers), "average": mean, "sum": total, "minimum": min(numbers),
            "maximum": max(numbers), "sumOfSquares": squares, "variance": variance,
            "stdDeviation": math.sqrt(variance)}


def percentiles(values: Sequence[float], percents: Sequence[float] | None) -> list[dict[str, float]]:
    """Linear interpolation between the closest ranks (exact, not an estimate)."""
    wanted = list(percents) if percents else list(DEFAULT_PERCENTS)
    ordered = sorted(values)
    out: list[dict[str, float]] = []
    for percent in wanted:
        if not ordered:
            break
        rank = (len(ordered) - 1) * min(max(percent, 0.0), 100.0) / 100.0
        low, high = math.floor(rank), math.ceil(rank)
        value = ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
        out.append({"percent": float(percent), "value": value})
    return out


def cardinality(values: Sequence[str]) -> int:
    return len(set(values))


def buckets(values: Sequence[str], max_buckets: int) -> list[dict[str, Any]]:
    counts = Counter(values)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [{"keyValue": key, "count": count} for key, count in ranked[:max_buckets]]
