"""SearchIndex over the things (`AWS_Things`): registry attributes, thing groups, shadows
(classic and named, `$package` included, so `shadow.name.$package.reported.firmware.version`
answers which things run a version) and connectivity; and over the thing groups
(`AWS_ThingGroups`).

Only what the indexing configuration (core/indexing.py, server/fleet/config.py) indexes
is in a thing's document: with `thingIndexingMode` REGISTRY there are no `shadow.*`
fields, a named shadow outside `filter.namedShadowNames` is absent, connectivity is
absent unless STATUS. A query term on a field that is not indexed matches no thing (the
field is not in any document), as a term on a field no thing has; the answer's
`shadow` and `connectivity` members appear only when indexed. With `thingIndexingMode`
OFF the index does not exist (ResourceNotFoundException), as AWS deletes it.

There is no index to maintain for searching: each query reads the fleet's rows (five
queries in all) and matches them with core/fleetquery.py, so device traffic (shadow
updates, connections) pays nothing for searching, and a query's cost grows with the
fleet (bounded by `Limits.max_search_things`). Dynamic thing groups (fleet/dynamic.py)
build the documents of the few things that changed through `documents(names)`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from overair.core import fleetquery
from overair.core.indexing import IndexingConfig
from overair.core.limits import Limits
from overair.core.shadow import delta
from overair.server.api.contract import ApiError
from overair.server.storage.db import Database
from overair.server.storage.schema import (
    Thing,
    ThingConnectivity,
    ThingGroup,
    ThingGroupMember,
    ThingShadow,
)

THINGS_INDEX = "AWS_Things"
GROUPS_INDEX = "AWS_ThingGroups"


@dataclass
class Indexed:
    """One thing's (or group's) search document (fields) and its SearchIndex answer (view)."""

    name: str = ""
    fields: dict[str, list[str]] = field(default_factory=dict)
    view: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                self.add(f"{name}.{key}", inner)
        elif isinstance(value, list):
            for item in value:
                self.add(name, item)
        elif value is not None:
            text = ("true" if value else "false") if isinstance(value, bool) else str(value)
            self.fields.setdefault(name, []).append(text)


def _shadow_part(row: ThingShadow) -> dict[str, Any]:
    part: dict[str, Any] = {"version": row.version, "hasDelta": bool(delta(row.desired, row.reported))}
    for section in ("desired", "reported"):
        value = getattr(row, section)
        if value:
            part[section] = value
    return part


def parse_query(text: str) -> fleetquery.Query:
    try:
        return fleetquery.parse(text)
    except fleetquery.InvalidQuery as exc:
        raise ApiError("InvalidQueryException", exc.message, 400) from exc


def _missing_index(index: str) -> ApiError:
    return ApiError("ResourceNotFoundException", f"index {index} does not exist (overair serves "
                    f"{THINGS_INDEX} and {GROUPS_INDEX} as the indexing configuration enables them)", 404)


class FleetSearch:
    def __init__(self, db: Database, limits: Limits, config: Callable[[], IndexingConfig]) -> None:
        self._db = db
        self._limits = limits
        self._config = config

    def search(self, index: str, query_text: str) -> list[dict[str, Any]]:
        return [doc.view for doc in self.matching(index, query_text)]

    def matching(self, index: str, query_text: str) -> list[Indexed]:
        """The documents of `index` the query matches, in name order."""
        config = self._config()
        query = parse_query(query_text)
        if index == GROUPS_INDEX and config.group_mode == "ON":
            return [doc for doc in self._group_documents() if fleetquery.matches(query, doc.fields)]
        if index != THINGS_INDEX or not config.things_indexed:
            raise _missing_index(index)
        return [doc for doc in self.documents(None, config) if fleetquery.matches(query, doc.fields)]

    def documents(self, names: Sequence[str] | None, config: IndexingConfig) -> list[Indexed]:
        """The search documents of these things (None: every thing), as `config` indexes them."""
        with self._db.reading() as s:
            things_q = select(Thing).order_by(Thing.name)
            groups_q = select(ThingGroupMember.thing_name, ThingGroupMember.group_name).order_by(
                ThingGroupMember.group_name)
            shadows_q = select(ThingShadow).where(ThingShadow.present)
            online_q = select(ThingConnectivity)
            if names is None:
                count = s.scalar(select(func.count()).select_from(Thing)) or 0
                if count > self._limits.max_search_things:
                    raise ApiError("InvalidRequestException", f"the fleet has {count} things; searching is "
                                   f"served up to {self._limits.max_search_things} (overair's bound)", 400)
            else:
                wanted = list(names)
                things_q = things_q.where(Thing.name.in_(wanted))
                groups_q = groups_q.where(ThingGroupMember.thing_name.in_(wanted))
                shadows_q = shadows_q.where(ThingShadow.thing_name.in_(wanted))
                online_q = online_q.where(ThingConnectivity.thing_name.in_(wanted))
            things = list(s.scalars(things_q))
            groups: dict[str, list[str]] = {}
            for thing, group in s.execute(groups_q):
                groups.setdefault(thing, []).append(group)
            shadows: dict[str, list[ThingShadow]] = {}
            if config.shadows_indexed:
                for row in s.scalars(shadows_q):
                    if not row.shadow_name or config.named_shadow_indexed(row.shadow_name):
                        shadows.setdefault(row.thing_name, []).append(row)
            online: dict[str, ThingConnectivity] = {}
            if config.connectivity == "STATUS":
                online = {row.thing_name: row for row in s.scalars(online_q)}
            return [self._document(t, groups.get(t.name, []), shadows.get(t.name, []),
                                   online.get(t.name), config.connectivity == "STATUS")
                    for t in things]

    @staticmethod
    def _document(thing: Thing, groups: list[str], shadows: list[ThingShadow],
                  online: ThingConnectivity | None, with_connectivity: bool) -> Indexed:
        doc = Indexed(thing.name)
        view: dict[str, Any] = {"thingName": thing.name, "thingId": thing.thing_id,
                                "thingGroupNames": groups, "attributes": dict(thing.attributes)}
        doc.add("thingName", thing.name)
        doc.add("thingId", thing.thing_id)
        doc.add("thingGroupNames", groups)
        doc.add("attributes", dict(thing.attributes))
        doc.add("registry.version", thing.version)
        if thing.thing_type_name:
            view["thingTypeName"] = thing.thing_type_name
            doc.add("thingTypeName", thing.thing_type_name)
        shadow: dict[str, Any] = {}
        for row in shadows:
            part = _shadow_part(row)
            if row.shadow_name:
                shadow.setdefault("name", {})[row.shadow_name] = part
            else:
                shadow.update(part)
        for prefix, part in [("shadow", {k: v for k, v in shadow.items() if k != "name"}),
                             *((f"shadow.name.{n}", p) for n, p in shadow.get("name", {}).items())]:
            for section in ("desired", "reported"):
                doc.add(f"{prefix}.{section}", part.get(section))
            if part:
                doc.add(f"{prefix}.hasDelta", part["hasDelta"])
                doc.add(f"{prefix}.version", part["version"])
        if shadow:
            view["shadow"] = json.dumps(shadow, separators=(",", ":"))
        if with_connectivity:
            connectivity: dict[str, Any] = {"connected": bool(online and online.connected)}
            if online is not None:
                connectivity["timestamp"] = int(online.changed_at * 1000)  # AWS: epoch milliseconds
                if not online.connected and online.disconnect_reason:
                    connectivity["disconnectReason"] = online.disconnect_reason
            view["connectivity"] = connectivity
            doc.add("connectivity", connectivity)
        doc.view = view
        return doc

    def _group_documents(self) -> list[Indexed]:
        """AWS_ThingGroups: name, id, description, attributes, parent groups (none: flat)."""
        with self._db.reading() as s:
            groups = list(s.scalars(select(ThingGroup).order_by(ThingGroup.name)))
        out = []
        for group in groups:
            doc = Indexed(group.name)
            doc.add("thingGroupName", group.name)
            doc.add("thingGroupId", group.group_id)
            doc.add("thingGroupDescription", group.description or None)
            doc.add("attributes", dict(group.attributes))
            doc.view = {"thingGroupName": group.name, "thingGroupId": group.group_id,
                        "thingGroupDescription": group.description, "attributes": dict(group.attributes),
                        "parentGroupNames": []}
            out.append(doc)
        return out
