"""SearchIndex through boto3 against the real server (issue 15, item 3, the part served):
one call answers which things run a version, which are offline, which match registry
and shadow fields."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.e2e.ota_helpers import wait_for
from tests.e2e.test_server_security import Device
from tests.server_harness import RunningServer


def _names(iot: Any, query: str, **extra: Any) -> list[str]:
    things = iot.search_index(indexName="AWS_Things", queryString=query, **extra)["things"]
    return sorted(t["thingName"] for t in things)


def test_search_by_registry_shadow_package_and_connectivity(srv: RunningServer, tmp_path: Path) -> None:
    iot, data = srv.client("iot"), srv.client("iot-data")
    iot.create_thing_group(thingGroupName="search-lab")
    for i, (color, battery, firmware) in enumerate([("red", 80, "1.2.0"), ("blue", 30, "1.2.0"),
                                                    ("red", 20, "1.3.0")]):
        name = f"search-{i}"
        iot.create_thing(thingName=name, attributePayload={"attributes": {"color": color}})
        if i < 2:
            iot.add_thing_to_thing_group(thingGroupName="search-lab", thingName=name)
        data.update_thing_shadow(thingName=name, payload=json.dumps(
            {"state": {"reported": {"battery": battery}, "desired": {"led": "on"}}}).encode())
        data.update_thing_shadow(thingName=name, shadowName="$package", payload=json.dumps(
            {"state": {"reported": {"firmware": {"version": firmware}}}}).encode())
    running = _names(iot, "shadow.name.$package.reported.firmware.version:1.2.0")
    assert running == ["search-0", "search-1"]
    assert _names(iot, "thingName:search-* AND shadow.reported.battery>50") == ["search-0"]
    assert _names(iot, "thingGroupNames:search-lab AND attributes.color:RED") == ["search-0"]
    assert _names(iot, "thingName:search-* AND -attributes.color:red") == ["search-1"]
    low = _names(iot, "thingName:search-* AND shadow.reported.battery:[10 TO 30]")
    assert low == ["search-1", "search-2"]
    assert _names(iot, "thingName:search-*", maxResults=2) == ["search-0", "search-1"]  # paged

    bundle = srv.provision("search-online", tmp_path / "search-online")
    device = Device(srv, bundle, "search-online")
    try:
        assert device.connect()
        query = "connectivity.connected:true AND thingName:search-*"
        wait_for(lambda: _names(iot, query) == ["search-online"], timeout=10, what="the connected thing")
    finally:
        device.close()
    offline = wait_for(lambda: iot.search_index(
        queryString="thingName:search-online AND connectivity.connected:false")["things"],
        timeout=10, what="the thing offline")
    assert offline[0]["connectivity"]["disconnectReason"] == "CLIENT_INITIATED_DISCONNECT"
    assert offline[0]["connectivity"]["timestamp"] > 1_600_000_000_000  # epoch milliseconds
    document = iot.search_index(queryString="thingName:search-0")["things"][0]
    package = json.loads(document["shadow"])["name"]["$package"]
    assert package["reported"] == {"firmware": {"version": "1.2.0"}}
    assert document["thingGroupNames"] == ["search-lab"]


@pytest.mark.parametrize(("query", "index", "code"), [
    ("thingName:a/b", "AWS_Things", "InvalidQueryException"),
    ("thingName:(", "AWS_Things", "InvalidQueryException"),
    ("thingName:a", "AWS_Nothing", "ResourceNotFoundException"),
])
def test_bad_queries_and_indexes_are_refused(srv: RunningServer, query: str, index: str, code: str) -> None:
    with pytest.raises(ClientError) as caught:
        srv.client("iot").search_index(indexName=index, queryString=query)
    assert caught.value.response["Error"]["Code"] == code
