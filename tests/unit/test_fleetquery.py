"""core/fleetquery.py: AWS's fleet indexing query syntax, the subset served."""

from __future__ import annotations

import pytest

from overair.core.fleetquery import InvalidQuery, matches, parse

DOC = {
    "thingName": ["tv-kitchen"], "thingGroupNames": ["living", "screens"],
    "attributes.color": ["Red"], "attributes.battery": ["72"],
    "shadow.reported.fw.version": ["1.2.0"], "shadow.name.$package.reported.firmware.version": ["1.1.0"],
    "connectivity.connected": ["false"], "connectivity.timestamp": ["1700000000000"],
}


@pytest.mark.parametrize(("query", "expected"), [
    ("thingName:tv-kitchen", True),
    ("thingName:TV-KITCHEN", True),  # values are case-insensitive
    ("thingname:tv-kitchen", False),  # field names are not
    ("thingName:tv*", True),
    ("thingName:*kitchen", True),
    ("thingName:(tv* AND -plasma)", True),
    ("thingName:(tv* AND NOT tv-kitchen)", False),
    ("thingGroupNames:screens attributes.color:red", True),  # default AND
    ("thingGroupNames:garden OR attributes.color:red", True),
    ("attributes.battery>50", True),
    ("attributes.battery>=72 AND attributes.battery<=72", True),
    ("attributes.battery<50", False),
    ("attributes.battery:[50 TO 80]", True),
    ("attributes.battery:{72 TO 80]", False),
    ("attributes.battery:[* TO 10]", False),
    ('shadow.reported.fw.version:"1.2.0"', True),
    ("shadow.name.$package.reported.firmware.version:1.1.0", True),
    ("connectivity.connected:false AND connectivity.timestamp<1800000000000", True),
    ("kitchen*", False), ("tv-kitchen", True),  # no field: any field
    ("attributes.size:*", False), ("attributes.color:*", True),
    ("NOT (thingName:x OR thingName:y)", True),
])
def test_queries_match_as_aws_describes(query: str, expected: bool) -> None:
    assert matches(parse(query), DOC) is expected


@pytest.mark.parametrize("query", [
    "", "thingName:", "thingName:(a", "a OR", "thingName:a@b", "thingName:a/b", "x:[1 TO",
    "thingName:*a AND attributes.x:*b", "thingName:a*b", "thingName:a~", "x:'y'",
    " ".join(f"t{i}:v" for i in range(13)), '"open',
])
def test_unsupported_or_malformed_queries_are_refused(query: str) -> None:
    with pytest.raises(InvalidQuery):
        parse(query)
