"""Fleet indexing configuration (core/indexing.py) and aggregations (core/fleetstats.py)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from overair.core import fleetstats, indexing
from overair.core.indexing import InvalidConfiguration


def test_default_indexes_everything_and_a_configuration_replaces_it() -> None:
    default = indexing.DEFAULT
    assert default.shadows_indexed
    assert default.named_shadow_indexed("anything")
    assert default.field_type("connectivity.connected") == "Boolean"
    spec = {"thingIndexingMode": "REGISTRY_AND_SHADOW", "namedShadowIndexingMode": "ON",
            "filter": {"namedShadowNames": ["$package"]},
            "customFields": [{"name": "attributes.battery", "type": "Number"}]}
    config = indexing.parse_thing(spec, default)
    assert config.named_shadow_indexed("$package")
    assert not config.named_shadow_indexed("config")
    assert config.connectivity == "OFF"
    assert config.field_type("connectivity.connected") is None
    assert config.field_type("attributes.battery") == "Number"
    assert config.field_type("attributes.other") is None
    assert config.group_mode == default.group_mode  # the group part is kept
    answer = indexing.to_aws(config)["thingIndexingConfiguration"]
    assert answer["filter"] == {"namedShadowNames": ["$package"]}
    assert answer["customFields"] == [{"name": "attributes.battery", "type": "Number"}]
    assert indexing.from_stored(indexing.to_stored(config)) == config


def test_named_shadows_on_without_names_indexes_none() -> None:
    spec = {"thingIndexingMode": "REGISTRY_AND_SHADOW", "namedShadowIndexingMode": "ON"}
    config = indexing.parse_thing(spec, indexing.DEFAULT)
    assert not config.named_shadow_indexed("$package")


@pytest.mark.parametrize("spec", [
    {},
    {"thingIndexingMode": "SOMETIMES"},
    {"thingIndexingMode": "OFF", "thingConnectivityIndexingMode": "STATUS"},
    {"thingIndexingMode": "REGISTRY", "namedShadowIndexingMode": "ON"},
    {"thingIndexingMode": "REGISTRY", "customFields": [{"name": "shadow.reported.x", "type": "Number"}]},
    {"thingIndexingMode": "REGISTRY_AND_SHADOW",
     "customFields": [{"name": "shadow.name.a.reported.x", "type": "Number"}]},
    {"thingIndexingMode": "REGISTRY", "customFields": [{"name": "connectivity.timestamp", "type": "Number"}]},
    {"thingIndexingMode": "REGISTRY", "customFields": [{"name": "attributes.x", "type": "Date"}]},
    {"thingIndexingMode": "REGISTRY", "customFields": [{"name": "attributes.x", "type": "Number"},
                                                       {"name": "attributes.x", "type": "String"}]},
    {"thingIndexingMode": "REGISTRY", "customFields": [{"name": "a b", "type": "Number"}]},
    {"thingIndexingMode": "REGISTRY", "managedFields": [{"name": "thingName", "type": "String"}]},
    {"thingIndexingMode": "REGISTRY", "deviceDefenderIndexingMode": "VIOLATIONS"},
    {"thingIndexingMode": "REGISTRY_AND_SHADOW", "namedShadowIndexingMode": "ON",
     "filter": {"namedShadowNames": [str(i) for i in range(11)]}},
    {"thingIndexingMode": "REGISTRY", "filter": {"geoLocations": [{"name": "x"}]}},
])
def test_refused_configurations(spec: dict[str, Any]) -> None:
    with pytest.raises(InvalidConfiguration):
        indexing.parse_thing(spec, indexing.DEFAULT)


def test_group_configuration() -> None:
    config = indexing.parse_group({"thingGroupIndexingMode": "OFF"}, indexing.DEFAULT)
    assert config.group_field_type("thingGroupName") is None
    assert config.thing_mode == indexing.DEFAULT.thing_mode
    with pytest.raises(InvalidConfiguration):
        indexing.parse_group({}, indexing.DEFAULT)


def test_statistics_of_numbers_strings_and_no_field() -> None:
    stats = fleetstats.statistics([["1"], ["3"], ["x"], []], "Number")
    assert stats == {"count": 2, "average": 2.0, "sum": 4.0, "minimum": 1.0, "maximum": 3.0,
                     "sumOfSquares": 10.0, "variance": 1.0, "stdDeviation": 1.0}
    assert fleetstats.statistics([["a"], [], ["b", "c"]], "String") == {"count": 2}
    assert fleetstats.statistics([["true"], ["maybe"]], "Boolean") == {"count": 1}
    assert fleetstats.statistics([[], []], None) == {"count": 2}
    assert fleetstats.statistics([["1e200"]], "Number") == {"count": 0}  # beyond the bound: ignored
    assert math.isfinite(fleetstats.statistics([["1e150"]] * 1000, "Number")["sumOfSquares"])


def test_percentiles_cardinality_and_buckets() -> None:
    values = [10.0, 20.0, 30.0, 40.0, 100.0]
    got = fleetstats.percentiles(values, [0, 25, 50, 90, 100])
    assert [p["value"] for p in got] == [10.0, 20.0, 30.0, 76.0, 100.0]
    assert [p["percent"] for p in fleetstats.percentiles(values, None)] == list(fleetstats.DEFAULT_PERCENTS)
    assert fleetstats.percentiles([], None) == []
    assert fleetstats.cardinality(["a", "b", "a"]) == 2
    assert fleetstats.buckets(["b", "a", "b", "c", "a", "b"], 2) == [{"keyValue": "b", "count": 3},
                                                                    {"keyValue": "a", "count": 2}]
