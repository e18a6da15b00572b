"""Fleet indexing configuration and aggregations through boto3 against the real server
(issue 15, item 3): UpdateIndexingConfiguration decides what SearchIndex sees, and
GetStatistics, GetPercentiles, GetCardinality and GetBucketsAggregation answer over the
things a query matches."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from botocore.exceptions import ClientError

from overair.cli.client import ApiClients
from tests.server_harness import RunningServer

BATTERIES = {"agg-0": 10, "agg-1": 20, "agg-2": 30, "agg-3": 40, "agg-4": 100}


def _names(iot: Any, query: str) -> list[str]:
    return sorted(t["thingName"] for t in iot.search_index(queryString=query)["things"])


def _code(call: Any, **params: Any) -> str:
    with pytest.raises(ClientError) as caught:
        call(**params)
    return str(caught.value.response["Error"]["Code"])


@pytest.fixture(scope="module")
def fleet(srv: RunningServer) -> RunningServer:
    iot, data = srv.client("iot"), srv.client("iot-data")
    for i, (name, battery) in enumerate(BATTERIES.items()):
        iot.create_thing(thingName=name, attributePayload={"attributes": {
            "battery": str(battery), "model": "m1" if i < 3 else "m2"}})
        data.update_thing_shadow(thingName=name, payload=json.dumps(
            {"state": {"reported": {"temp": 20 + i}}}).encode())
        data.update_thing_shadow(thingName=name, shadowName="config", payload=json.dumps(
            {"state": {"reported": {"mode": "eco" if i % 2 else "full"}}}).encode())
        data.update_thing_shadow(thingName=name, shadowName="$package", payload=json.dumps(
            {"state": {"reported": {"firmware": {"version": "1.0.0"}}}}).encode())
    return srv


def test_indexing_configuration_decides_what_search_index_sees(fleet: RunningServer) -> None:
    iot = fleet.client("iot")
    # Before any configuration overair indexes everything it has.
    default = iot.get_indexing_configuration()["thingIndexingConfiguration"]
    assert default["thingIndexingMode"] == "REGISTRY_AND_SHADOW"
    assert default["thingConnectivityIndexingMode"] == "STATUS"
    assert _names(iot, "thingName:agg-* AND shadow.name.config.reported.mode:eco") == ["agg-1", "agg-3"]

    iot.update_indexing_configuration(thingIndexingConfiguration={"thingIndexingMode": "REGISTRY"})
    got = iot.get_indexing_configuration()["thingIndexingConfiguration"]
    assert got["thingIndexingMode"] == "REGISTRY"
    assert got["thingConnectivityIndexingMode"] == "OFF"
    assert {"name": "registry.version", "type": "Number"} in got["managedFields"]
    assert not any(f["name"].startswith("shadow.") for f in got["managedFields"])
    # A shadow field is not indexed: its terms match nothing; registry terms still do.
    assert _names(iot, "thingName:agg-* AND shadow.reported.temp:20") == []
    assert _names(iot, "attributes.model:m2") == ["agg-3", "agg-4"]
    assert iot.describe_index(indexName="AWS_Things")["schema"] == "REGISTRY"
    thing = iot.search_index(queryString="thingName:agg-0")["things"][0]
    assert "shadow" not in thing
    assert "connectivity" not in thing

    # Named shadows: only those the filter names (and $package when named, as AWS).
    iot.update_indexing_configuration(thingIndexingConfiguration={
        "thingIndexingMode": "REGISTRY_AND_SHADOW", "thingConnectivityIndexingMode": "STATUS",
        "namedShadowIndexingMode": "ON", "filter": {"namedShadowNames": ["$package"]}})
    got = iot.get_indexing_configuration()["thingIndexingConfiguration"]
    assert got["filter"] == {"namedShadowNames": ["$package"]}
    assert _names(iot, "thingName:agg-* AND shadow.reported.temp:20") == ["agg-0"]
    assert _names(iot, "shadow.name.config.reported.mode:eco") == []
    assert len(_names(iot, "thingName:agg-* AND shadow.name.$package.reported.firmware.version:1.0.0")) == 5
    assert "connectivity" in iot.search_index(queryString="thingName:agg-0")["things"][0]

    iot.update_indexing_configuration(thingIndexingConfiguration={"thingIndexingMode": "OFF"})
    assert _code(iot.search_index, queryString="thingName:agg-0") == "ResourceNotFoundException"
    iot.update_indexing_configuration(thingIndexingConfiguration={
        "thingIndexingMode": "REGISTRY_AND_SHADOW", "thingConnectivityIndexingMode": "STATUS",
        "namedShadowIndexingMode": "ON", "filter": {"namedShadowNames": ["config", "$package"]},
        "customFields": [{"name": "attributes.battery", "type": "Number"},
                         {"name": "attributes.model", "type": "String"},
                         {"name": "shadow.reported.temp", "type": "Number"}]})
    assert _names(iot, "thingName:agg-* AND shadow.name.config.reported.mode:eco") == ["agg-1", "agg-3"]


@pytest.mark.parametrize("config", [
    {"thingIndexingMode": "OFF", "thingConnectivityIndexingMode": "STATUS"},  # AWS: not allowed
    {"thingIndexingMode": "REGISTRY", "namedShadowIndexingMode": "ON"},
    {"thingIndexingMode": "REGISTRY_AND_SHADOW", "deviceDefenderIndexingMode": "VIOLATIONS"},
    {"thingIndexingMode": "REGISTRY", "customFields": [{"name": "shadow.reported.x", "type": "Number"}]},
    {"thingIndexingMode": "REGISTRY_AND_SHADOW", "namedShadowIndexingMode": "ON",
     "filter": {"namedShadowNames": [f"s{i}" for i in range(11)]}},  # AWS: up to 10 names
    {"thingIndexingMode": "REGISTRY_AND_SHADOW",
     "filter": {"geoLocations": [{"name": "shadow.reported.loc"}]}},
])
def test_configurations_aws_refuses_or_overair_cannot_serve_are_refused(
    fleet: RunningServer, config: dict[str, Any]
) -> None:
    iot = fleet.client("iot")
    before = iot.get_indexing_configuration()["thingIndexingConfiguration"]
    code = _code(iot.update_indexing_configuration, thingIndexingConfiguration=config)
    assert code == "InvalidRequestException"
    assert iot.get_indexing_configuration()["thingIndexingConfiguration"] == before


def _configured(iot: Any) -> None:
    iot.update_indexing_configuration(thingIndexingConfiguration={
        "thingIndexingMode": "REGISTRY_AND_SHADOW", "thingConnectivityIndexingMode": "STATUS",
        "customFields": [{"name": "attributes.battery", "type": "Number"},
                         {"name": "attributes.model", "type": "String"}]})


def test_statistics_percentiles_cardinality_and_buckets(fleet: RunningServer) -> None:
    iot = fleet.client("iot")
    _configured(iot)
    stats = iot.get_statistics(queryString="thingName:agg-*",
                               aggregationField="attributes.battery")["statistics"]
    values = list(BATTERIES.values())
    mean = sum(values) / len(values)
    variance = sum((v - mean) ** 2 for v in values) / len(values)
    assert stats["count"] == 5
    assert stats["sum"] == 200
    assert stats["minimum"] == 10
    assert stats["maximum"] == 100
    assert stats["average"] == pytest.approx(mean)
    assert stats["sumOfSquares"] == pytest.approx(sum(v * v for v in values))
    assert stats["variance"] == pytest.approx(variance)
    assert stats["stdDeviation"] == pytest.approx(math.sqrt(variance))
    # The query narrows the things aggregated; no field: the count of things.
    assert iot.get_statistics(queryString="attributes.model:m1")["statistics"] == {"count": 3}
    narrowed = iot.get_statistics(queryString="attributes.model:m1", aggregationField="attributes.battery")
    assert narrowed["statistics"]["maximum"] == 30
    # A String field: only the count, as AWS.
    strings = iot.get_statistics(queryString="thingName:agg-*", aggregationField="attributes.model")
    assert strings["statistics"] == {"count": 5}

    percentiles = iot.get_percentiles(queryString="thingName:agg-*", aggregationField="attributes.battery",
                                      percents=[0, 50, 100])["percentiles"]
    assert [(p["percent"], p["value"]) for p in percentiles] == [(0, 10), (50, 30), (100, 100)]
    assert iot.get_cardinality(queryString="thingName:agg-*", aggregationField="attributes.model")[
        "cardinality"] == 2
    buckets = iot.get_buckets_aggregation(queryString="thingName:agg-*", aggregationField="attributes.model",
                                          bucketsAggregationType={"termsAggregation": {"maxBuckets": 1}})
    assert buckets["totalCount"] == 5
    assert buckets["buckets"] == [{"keyValue": "m1", "count": 3}]
    managed = iot.get_buckets_aggregation(queryString="thingName:agg-*",
                                          aggregationField="connectivity.connected",
                                          bucketsAggregationType={"termsAggregation": {"maxBuckets": 5}})
    assert managed["buckets"] == [{"keyValue": "false", "count": 5}]


@pytest.mark.parametrize(("operation", "params"), [
    # Not declared in customFields: AWS aggregates typed fields only.
    ("get_statistics", {"aggregationField": "attributes.undeclared"}),
    ("get_statistics", {"aggregationField": "shadow.reported.temp"}),
    # Percentiles need a Number field.
    ("get_percentiles", {"aggregationField": "attributes.model"}),
])
def test_aggregating_a_field_not_indexed_with_a_type_is_refused(
    fleet: RunningServer, operation: str, params: dict[str, Any]
) -> None:
    iot = fleet.client("iot")
    _configured(iot)
    assert _code(getattr(iot, operation), queryString="thingName:agg-*", **params) == \
        "InvalidAggregationException"


def test_thing_group_index(fleet: RunningServer) -> None:
    iot = fleet.client("iot")
    assert iot.list_indices()["indexNames"] == ["AWS_ThingGroups", "AWS_Things"]
    assert iot.describe_index(indexName="AWS_ThingGroups")["schema"] == "THING_GROUPS"
    assert iot.describe_index(indexName="AWS_Things")["indexStatus"] == "ACTIVE"
    iot.create_thing_group(thingGroupName="agg-lab", thingGroupProperties={"thingGroupDescription": "lab"})
    found = iot.search_index(indexName="AWS_ThingGroups", queryString="thingGroupName:agg-*")["thingGroups"]
    assert [(g["thingGroupName"], g["thingGroupDescription"]) for g in found] == [("agg-lab", "lab")]
    iot.update_indexing_configuration(thingGroupIndexingConfiguration={"thingGroupIndexingMode": "OFF"})
    group_config = iot.get_indexing_configuration()["thingGroupIndexingConfiguration"]
    assert group_config["thingGroupIndexingMode"] == "OFF"
    assert _code(iot.search_index, indexName="AWS_ThingGroups", queryString="thingGroupName:agg-*") == \
        "ResourceNotFoundException"
    assert iot.list_indices()["indexNames"] == ["AWS_Things"]
    assert _code(iot.describe_index, indexName="AWS_ThingGroups") == "ResourceNotFoundException"
    assert _names(iot, "thingName:agg-0") == ["agg-0"]  # the thing index is unchanged


def test_iam_authorizes_queries_on_the_index_and_dynamic_groups_by_name(fleet: RunningServer) -> None:
    """AWS's resources: SearchIndex and the aggregations act on `index/<indexName>`
    (AWS_Things when none is named), the dynamic group operations on `thinggroup/<name>`,
    the indexing configuration on `*`."""
    iam = fleet.client("iam")
    prefix = f"arn:aws:iot:{fleet.settings.region}:{fleet.settings.account_id}"
    iam.create_user(UserName="fleet-analyst")
    iam.put_user_policy(UserName="fleet-analyst", PolicyName="things-index", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["iot:SearchIndex", "iot:GetStatistics"],
             "Resource": f"{prefix}:index/AWS_Things"},
            {"Effect": "Allow", "Action": "iot:CreateDynamicThingGroup",
             "Resource": f"{prefix}:thinggroup/analyst-*"}]}))
    key = iam.create_access_key(UserName="fleet-analyst")["AccessKey"]
    iot = ApiClients(fleet.endpoint, key["AccessKeyId"], key["SecretAccessKey"],
                     fleet.clients.region).client("iot")
    assert _names(iot, "thingName:agg-0") == ["agg-0"]
    assert iot.get_statistics(queryString="thingName:agg-*")["statistics"] == {"count": 5}
    assert _code(iot.search_index, indexName="AWS_ThingGroups", queryString="thingGroupName:x") == \
        "AccessDeniedException"
    assert _code(iot.get_percentiles, queryString="thingName:agg-*") == "AccessDeniedException"
    iot.create_dynamic_thing_group(thingGroupName="analyst-low", queryString="attributes.battery<20")
    assert _code(iot.create_dynamic_thing_group, thingGroupName="ops-low",
                 queryString="attributes.battery<20") == "AccessDeniedException"
    assert _code(iot.update_indexing_configuration,
                 thingIndexingConfiguration={"thingIndexingMode": "REGISTRY"}) == "AccessDeniedException"
