"""iot fleet indexing operations: SearchIndex, the aggregations (GetStatistics,
GetPercentiles, GetCardinality, GetBucketsAggregation), Get/UpdateIndexingConfiguration
and the dynamic thing groups (Create/Update/DeleteDynamicThingGroup)."""

from __future__ import annotations

from typing import Any

from overair.core import fleetstats
from overair.core.indexing import IndexingConfig, to_aws
from overair.core.limits import Limits
from overair.server.api.contract import ApiError, ApiRequest, OperationTable, invalid
from overair.server.api.paging import page_out, paginate
from overair.server.fleet.config import IndexingStore
from overair.server.fleet.dynamic import QUERY_VERSION, DynamicGroups
from overair.server.fleet.search import GROUPS_INDEX, THINGS_INDEX, FleetSearch, Indexed
from overair.server.registry.tags import GroupTags, check_tags


def _check_version(r: ApiRequest) -> None:
    if r.params.get("queryVersion") not in (None, QUERY_VERSION):
        raise invalid(f"queryVersion must be {QUERY_VERSION}")


def _invalid_aggregation(message: str) -> ApiError:
    return ApiError("InvalidAggregationException", message, 400)


def _field_type(config: IndexingConfig, index: str, name: str) -> str:
    kind = config.group_field_type(name) if index == GROUPS_INDEX else config.field_type(name)
    if kind is None:
        # AWS: "Custom fields must be specified in customFields to be indexed" for aggregation.
        raise _invalid_aggregation(f"{name} is not an indexed field of {index} with a type: aggregate a "
                                   "managed field or declare it in customFields "
                                   "(UpdateIndexingConfiguration)")
    return kind


def register(table: OperationTable, search: FleetSearch, store: IndexingStore, dynamic: DynamicGroups,
             limits: Limits, tags: GroupTags) -> None:
    def index_of(r: ApiRequest) -> str:
        return str(r.params.get("indexName") or THINGS_INDEX)

    def search_index(r: ApiRequest) -> dict[str, Any]:
        _check_version(r)
        index = index_of(r)
        found = search.search(index, r.params["queryString"])
        page, token = paginate(found, r.params, default=100, ceiling=500)
        return page_out("thingGroups" if index == GROUPS_INDEX else "things", page, token)

    def aggregate(r: ApiRequest, need_number: bool) -> tuple[list[Indexed], str | None, str | None]:
        """The matching documents, the aggregation field and its type."""
        _check_version(r)
        index = index_of(r)
        documents = search.matching(index, r.params["queryString"])
        name = r.params.get("aggregationField")
        if name is None:
            if need_number:
                raise _invalid_aggregation("aggregationField is required")
            return documents, None, None
        kind = _field_type(store.get(), index, str(name))
        if need_number and kind != "Number":
            raise _invalid_aggregation(f"{name} is a {kind} field; this aggregation needs a Number field")
        return documents, str(name), kind

    def get_statistics(r: ApiRequest) -> dict[str, Any]:
        documents, name, kind = aggregate(r, need_number=False)
        values = [doc.fields.get(name, []) if name else [] for doc in documents]
        return {"statistics": fleetstats.statistics(values, kind)}

    def get_percentiles(r: ApiRequest) -> dict[str, Any]:
        documents, name, _kind = aggregate(r, need_number=True)
        numbers = [fleetstats.number(v) or 0.0 for doc in documents
                   for v in fleetstats.typed(doc.fields.get(name or "", []), "Number")]
        percents = r.params.get("percents")
        if percents is not None and any(not 0 <= p <= 100 for p in percents):
            raise invalid("percents must be between 0 and 100")
        return {"percentiles": fleetstats.percentiles(numbers, percents)}

    def get_cardinality(r: ApiRequest) -> dict[str, Any]:
        documents, name, kind = aggregate(r, need_number=False)
        if name is None or kind is None:
            return {"cardinality": len({doc.name for doc in documents})}
        values = [v for doc in documents for v in fleetstats.typed(doc.fields.get(name, []), kind)]
        return {"cardinality": fleetstats.cardinality(values)}

    def get_buckets(r: ApiRequest) -> dict[str, Any]:
        documents, name, kind = aggregate(r, need_number=False)
        if name is None or kind is None:
            raise _invalid_aggregation("aggregationField is required")
        terms = (r.params.get("bucketsAggregationType") or {}).get("termsAggregation") or {}
        max_buckets = int(terms.get("maxBuckets") or 10)
        if not 1 <= max_buckets <= limits.max_aggregation_buckets:
            raise invalid(f"maxBuckets must be 1 to {limits.max_aggregation_buckets}")
        values = [v for doc in documents for v in fleetstats.typed(doc.fields.get(name, []), kind)]
        return {"totalCount": len(documents), "buckets": fleetstats.buckets(values, max_buckets)}

    def get_configuration(_r: ApiRequest) -> dict[str, Any]:
        return to_aws(store.get())

    def update_configuration(r: ApiRequest) -> dict[str, Any]:
        thing = r.params.get("thingIndexingConfiguration")
        group = r.params.get("thingGroupIndexingConfiguration")
        if thing is None and group is None:
            raise invalid("give thingIndexingConfiguration, thingGroupIndexingConfiguration or both")
        store.update(thing, group)
        return {}

    for name, handler in {
        "SearchIndex": search_index, "GetStatistics": get_statistics, "GetPercentiles": get_percentiles,
        "GetCardinality": get_cardinality, "GetBucketsAggregation": get_buckets,
        "GetIndexingConfiguration": get_configuration, "UpdateIndexingConfiguration": update_configuration,
    }.items():
        table.register("iot", name, handler)
    _register_indices(table, store)
    _register_dynamic(table, dynamic, tags)


def _schema(config: IndexingConfig) -> str:
    """DescribeIndex's schema for AWS_Things (iot API reference, DescribeIndex)."""
    if config.named_shadows == "ON":
        return "MULTI_INDEXING_MODE"  # AWS: "multiple data sources" (named shadows)
    schema = "REGISTRY_AND_SHADOW" if config.shadows_indexed else "REGISTRY"
    return schema + ("_AND_CONNECTIVITY_STATUS" if config.connectivity == "STATUS" else "")


def _register_indices(table: OperationTable, store: IndexingStore) -> None:
    """ListIndices and DescribeIndex: the indexes the configuration enables, always
    ACTIVE (overair builds nothing ahead: a query reads the fleet)."""

    def indices(config: IndexingConfig) -> dict[str, str]:
        out = {THINGS_INDEX: _schema(config)} if config.things_indexed else {}
        if config.group_mode == "ON":
            out[GROUPS_INDEX] = "THING_GROUPS"
        return out

    def list_indices(r: ApiRequest) -> dict[str, Any]:
        page, token = paginate(sorted(indices(store.get())), r.params)
        return page_out("indexNames", page, token)

    def describe_index(r: ApiRequest) -> dict[str, Any]:
        name = r.params["indexName"]
        schema = indices(store.get()).get(name)
        if schema is None:
            raise ApiError("ResourceNotFoundException", f"index {name} does not exist", 404)
        return {"indexName": name, "indexStatus": "ACTIVE", "schema": schema}

    table.register("iot", "ListIndices", list_indices)
    table.register("iot", "DescribeIndex", describe_index)


def _register_dynamic(table: OperationTable, dynamic: DynamicGroups, tags: GroupTags) -> None:
    def create_dynamic(r: ApiRequest) -> dict[str, Any]:
        wanted = check_tags(r.params.get("tags"))  # before the group exists: all or nothing
        group = dynamic.create(r.params["thingGroupName"], r.params)
        if wanted:
            tags.tag(group.name, wanted)
        return {"thingGroupName": group.name, "thingGroupArn": group.arn, "thingGroupId": group.group_id,
                "indexName": group.index_name, "queryString": group.query_string,
                "queryVersion": group.query_version}

    def update_dynamic(r: ApiRequest) -> dict[str, Any]:
        return {"version": dynamic.update(r.params["thingGroupName"], r.params)}

    def delete_dynamic(r: ApiRequest) -> dict[str, Any]:
        dynamic.delete(r.params["thingGroupName"], r.params.get("expectedVersion"))
        return {}

    for name, handler in {"CreateDynamicThingGroup": create_dynamic,
                          "UpdateDynamicThingGroup": update_dynamic,
                          "DeleteDynamicThingGroup": delete_dynamic}.items():
        table.register("iot", name, handler)
