"""SearchIndex over the things (`AWS_Things`): registry attributes, thing groups, shadows
(classic and named, `$package` included, so `shadow.name.$package.reported.firmware.version`
answers which things run a version) and connectivity.

There is no index to maintain: each query reads the fleet's rows (five queries in all)
and matches them with core/fleetquery.py, so device traffic (shadow updates,
connections) pays nothing for indexing, and a query's cost grows with the fleet
(measured in the report of issue 15; bounded by `Limits.max_search_things`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from overair.core import fleetquery
from overair.core.limits import Limits
from overair.core.shadow import delta
from overair.server.api.contract import ApiError
from overair.server.storage.db import Database
from overair.server.storage.schema import Thing, ThingConnectivity, ThingGroupMember, ThingShadow

THINGS_INDEX = "AWS_Things"


@dataclass
class Indexed:
    """One thing's search document (fields) and its SearchIndex answer (view)."""

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


class FleetSearch:
    def __init__(self, db: Database, limits: Limits) -> None:
        self._db = db
        self._limits = limits

    def search(self, index: str, query_text: str) -> list[dict[str, Any]]:
        if index != THINGS_INDEX:
            raise ApiError("ResourceNotFoundException", f"index {index} does not exist (overair serves "
                                                        f"{THINGS_INDEX})", 404)
        try:
            query = fleetquery.parse(query_text)
        except fleetquery.InvalidQuery as exc:
            raise ApiError("InvalidQueryException", exc.message, 400) from exc
        return [doc.view for doc in self._documents() if fleetquery.matches(query, doc.fields)]

    def _documents(self) -> list[Indexed]:
        with self._db.reading() as s:
            count = s.scalar(select(func.count()).select_from(Thing)) or 0
            if count > self._limits.max_search_things:
                raise ApiError("InvalidRequestException", f"the fleet has {count} things; searching is "
                               f"served up to {self._limits.max_search_things} (overair's bound)", 400)
            things = list(s.scalars(select(Thing).order_by(Thing.name)))
            groups: dict[str, list[str]] = {}
            for thing, group in s.execute(select(ThingGroupMember.thing_name, ThingGroupMember.group_name)
                                          .order_by(ThingGroupMember.group_name)):
                groups.setdefault(thing, []).append(group)
            shadows: dict[str, list[ThingShadow]] = {}
            for row in s.scalars(select(ThingShadow).where(ThingShadow.present)):
                shadows.setdefault(row.thing_name, []).append(row)
            online = {row.thing_name: row for row in s.scalars(select(ThingConnectivity))}
            return [self._document(t, groups.get(t.name, []), shadows.get(t.name, []), online.get(t.name))
                    for t in things]

    @staticmethod
    def _document(thing: Thing, groups: list[str], shadows: list[ThingShadow],
                  online: ThingConnectivity | None) -> Indexed:
        doc = Indexed()
        view: dict[str, Any] = {"thingName": thing.name, "thingId": thing.thing_id,
                                "thingGroupNames": groups, "attributes": dict(thing.attributes)}
        doc.add("thingName", thing.name)
        doc.add("thingId", thing.thing_id)
        doc.add("thingGroupNames", groups)
        doc.add("attributes", dict(thing.attributes))
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
        if shadow:
            view["shadow"] = json.dumps(shadow, separators=(",", ":"))
        connectivity: dict[str, Any] = {"connected": bool(online and online.connected)}
        if online is not None:
            connectivity["timestamp"] = int(online.changed_at * 1000)  # AWS: epoch milliseconds
            if not online.connected and online.disconnect_reason:
                connectivity["disconnectReason"] = online.disconnect_reason
        view["connectivity"] = connectivity
        doc.add("connectivity", connectivity)
        doc.view = view
        return doc
