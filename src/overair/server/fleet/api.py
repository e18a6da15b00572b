"""iot SearchIndex over `AWS_Things` (server/fleet/search.py)."""

from __future__ import annotations

from typing import Any

from overair.server.api.contract import ApiRequest, OperationTable, invalid
from overair.server.api.paging import page_out, paginate
from overair.server.fleet.search import FleetSearch

# AWS's one query language version (SearchIndex's queryVersion).
QUERY_VERSION = "2017-09-30"


def register(table: OperationTable, search: FleetSearch) -> None:
    def search_index(r: ApiRequest) -> dict[str, Any]:
        if r.params.get("queryVersion") not in (None, QUERY_VERSION):
            raise invalid(f"queryVersion must be {QUERY_VERSION}")
        things = search.search(r.params.get("indexName") or "AWS_Things", r.params["queryString"])
        page, token = paginate(things, r.params, default=100, ceiling=500)
        return page_out("things", page, token)

    table.register("iot", "SearchIndex", search_index)
