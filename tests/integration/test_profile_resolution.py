"""Each thing's device profile read from the registry (ota/profiles.py `DeviceProfiles`),
on SQLite and PostgreSQL: the one attribute that names a profile is read as a JSON
element of the thing's attributes, group memberships only when a group rule exists, and
things no rule names share the default's resolution."""

from __future__ import annotations

from typing import Any

import pytest

from overair.server.ota.profile_config import PROFILE_ATTRIBUTE, parse_device_profiles
from overair.server.ota.profiles import DeviceProfiles
from overair.server.storage.db import Database
from overair.server.storage.schema import Thing, ThingGroup, ThingGroupMember

RULES: dict[str, Any] = {
    "default": "freertos",
    "profiles": {"big": {"max_file_bytes": 16 * 1024 * 1024}, "lab": {"overair_extension": True}},
    "things": {"named-by-rule": "big"},
    "thing_types": {"big-mcu": "big"},
    "groups": {"lab-a": "lab"},
}


def _add(db: Database, things: dict[str, tuple[dict[str, Any], str | None]],
         group_members: list[str]) -> None:
    with db.session() as s:
        for name, (attributes, thing_type) in things.items():
            s.add(Thing(name=name, thing_id=f"id-{name}", arn=f"arn:thing/{name}", thing_type_name=thing_type,
                        attributes=attributes, created_at=0.0))
        s.add(ThingGroup(name="lab-a", group_id="g-lab-a", arn="arn:thinggroup/lab-a", created_at=0.0))
        s.flush()
        for name in group_members:
            s.add(ThingGroupMember(group_name="lab-a", thing_name=name, added_at=0.0))


def test_each_rule_is_read_from_the_registry(db: Database) -> None:
    _add(db, {"by-attribute": ({PROFILE_ATTRIBUTE: "lab", "colour": "red"}, "big-mcu"),
              "unknown-attribute": ({PROFILE_ATTRIBUTE: "no-such"}, None),
              "named-by-rule": ({}, None), "by-type": ({"colour": "blue"}, "big-mcu"),
              "by-group": ({}, None), "plain": ({"colour": "green"}, "small-mcu"), "bare": ({}, None)},
         group_members=["by-group", "by-attribute"])
    profiles = DeviceProfiles(db, parse_device_profiles(RULES))
    found = profiles.resolve(["by-attribute", "unknown-attribute", "named-by-rule", "by-type", "by-group",
                              "plain", "bare", "not-registered"])
    assert {name: (r.profile.name, r.source, r.unknown) for name, r in found.items()} == {
        "by-attribute": ("lab", "attribute", None),
        "unknown-attribute": ("freertos", "default", "no-such"),
        "named-by-rule": ("big", "thing", None),
        "by-type": ("big", "thing type big-mcu", None),
        "by-group": ("lab", "group lab-a", None),
        "plain": ("freertos", "default", None),
        "bare": ("freertos", "default", None),
    }


@pytest.mark.parametrize("rules", [{}, RULES], ids=["no rules", "rules"])
def test_things_no_rule_names_share_one_resolution(db: Database, rules: dict[str, Any]) -> None:
    _add(db, {f"t-{i}": ({"colour": "red"}, None) for i in range(3)}, group_members=[])
    found = DeviceProfiles(db, parse_device_profiles(rules)).resolve(["t-0", "t-1", "t-2"])
    assert {r.source for r in found.values()} == {"default"}
    assert found["t-0"] is found["t-1"] is found["t-2"]
