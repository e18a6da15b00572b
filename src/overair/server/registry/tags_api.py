"""TagResource, UntagResource and ListTagsForResource, for thing groups (static and
dynamic): registry/tags.py. `resourceArn` was parsed and checked to be a thing group ARN
of this deployment before the handler runs (iam/actions.py ARN_MEMBERS); an ARN of any
other resource is InvalidRequestException there, as tags of other resources are not
kept (docs/compatibility.md)."""

from __future__ import annotations

from typing import Any

from overair.core.arn import parse_arn
from overair.server.api.contract import ApiRequest, OperationTable
from overair.server.registry.tags import GroupTags, check_tags


def _group(r: ApiRequest) -> str:
    return parse_arn(str(r.params["resourceArn"])).resource_name


def register(table: OperationTable, tags: GroupTags) -> None:
    def tag_resource(r: ApiRequest) -> dict[str, Any]:
        tags.tag(_group(r), check_tags(r.params.get("tags")))
        return {}

    def untag_resource(r: ApiRequest) -> dict[str, Any]:
        tags.untag(_group(r), [str(k) for k in r.params.get("tagKeys") or ()])
        return {}

    def list_tags(r: ApiRequest) -> dict[str, Any]:
        return {"tags": tags.list(_group(r))}  # at most 50: one page

    for name, handler in {"TagResource": tag_resource, "UntagResource": untag_resource,
                          "ListTagsForResource": list_tags}.items():
        table.register("iot", name, handler)
