"""Fuzz target: UpdateIndexingConfiguration's input (core/indexing.py) and the
aggregations over hostile field values (core/fleetstats.py). `parse_thing` and
`parse_group` raise only InvalidConfiguration; what they accept round-trips through
storage and answers GetIndexingConfiguration; aggregations never raise."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from overair.core import fleetstats, indexing
from overair.core.indexing import InvalidConfiguration
from tests.fuzz.device_strategies import HOSTILE_TEXT

SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | HOSTILE_TEXT | st.sampled_from(
    ["OFF", "ON", "REGISTRY", "REGISTRY_AND_SHADOW", "STATUS", "VIOLATIONS", "Number", "String", "Boolean",
     "attributes.x", "shadow.reported.y", "shadow.name.a.reported.z", "connectivity.connected", "$package"])
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=12)
                      | st.dictionaries(st.sampled_from(["name", "type", "namedShadowNames", "geoLocations"])
                                        | HOSTILE_TEXT, inner, max_size=4), max_leaves=30)
KEYS = st.sampled_from(["thingIndexingMode", "thingConnectivityIndexingMode", "namedShadowIndexingMode",
                        "deviceDefenderIndexingMode", "customFields", "managedFields", "filter",
                        "thingGroupIndexingMode"])
SPECS = st.dictionaries(KEYS, VALUES, max_size=6)


@given(SPECS, SPECS)
def test_fuzz_configurations_parse_or_refuse(thing: dict[str, Any], group: dict[str, Any]) -> None:
    config = indexing.DEFAULT
    try:
        config = indexing.parse_thing(thing, config)
        config = indexing.parse_group(group, config)
    except InvalidConfiguration:
        return
    assert indexing.from_stored(indexing.to_stored(config)) == config
    indexing.to_aws(config)


@given(st.lists(st.lists(HOSTILE_TEXT | st.sampled_from(["1", "-2.5", "nan", "inf", "1e308", "true"]),
                         max_size=4), max_size=20),
       st.sampled_from(["Number", "String", "Boolean", None]), st.integers(1, 50))
def test_fuzz_aggregations_never_raise(values: list[list[str]], kind: str | None, buckets: int) -> None:
    stats = fleetstats.statistics(values, kind)
    assert stats["count"] >= 0
    flat = [v for vs in values for v in vs]
    numbers = [fleetstats.number(v) or 0.0 for v in fleetstats.typed(flat, "Number")]
    fleetstats.percentiles(numbers, None)
    assert fleetstats.cardinality(flat) <= len(flat)
    assert len(fleetstats.buckets(flat, buckets)) <= buckets
