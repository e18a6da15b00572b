"""Fleet indexing configuration (UpdateIndexingConfiguration / GetIndexingConfiguration), pure.

AWS's shapes (AWS IoT developer guide, "Manage thing indexing" and "Manage thing group
indexing"; iot API reference, ThingIndexingConfiguration): `thingIndexingMode` OFF |
REGISTRY | REGISTRY_AND_SHADOW, `thingConnectivityIndexingMode` OFF | STATUS,
`namedShadowIndexingMode` OFF | ON with `filter.namedShadowNames` (the named shadows
indexed; "By default, you can add up to 10 shadow names per AWS account"),
`customFields` (name and type Number | String | Boolean; "Custom fields must be specified
in customFields to be indexed" for aggregation), `managedFields` (the service's, answered
by Get), and `thingGroupIndexingMode` OFF | ON. Connectivity needs a thing index ("OFF
STATUS: not allowed"); a field from a shadow needs REGISTRY_AND_SHADOW ("if you specify
the REGISTRY indexing mode, you cannot specify a field from a thing shadow").

Not served, refused by name: Device Defender violations (`deviceDefenderIndexingMode`
VIOLATIONS) and `filter.geoLocations` (overair indexes no location).

Before any UpdateIndexingConfiguration, overair indexes everything it has (registry,
every shadow, named ones included, and connectivity) so SearchIndex works out of the box;
`DEFAULT` says so. Once configured, exactly the configured sources are indexed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from overair.core.errors import PeerInputError

THING_MODES = ("OFF", "REGISTRY", "REGISTRY_AND_SHADOW")
CONNECTIVITY_MODES = ("OFF", "STATUS")
ON_OFF = ("OFF", "ON")
FIELD_TYPES = ("Number", "String", "Boolean")
MAX_NAMED_SHADOW_NAMES = 10  # AWS's default quota of shadow names in the indexing filter
MAX_CUSTOM_FIELDS = 100  # overair's bound on customFields per index
_FIELD_NAME = re.compile(r"[A-Za-z0-9_$.:-]{1,256}")

# AWS's managed fields (GetIndexingConfiguration's managedFields), by data source.
REGISTRY_FIELDS = {"thingName": "String", "thingId": "String", "thingTypeName": "String",
                   "thingGroupNames": "String", "registry.version": "Number"}
SHADOW_FIELDS = {"shadow.version": "Number", "shadow.hasDelta": "Boolean"}
CONNECTIVITY_FIELDS = {"connectivity.connected": "Boolean", "connectivity.timestamp": "Number",
                       "connectivity.disconnectReason": "String"}
GROUP_FIELDS = {"thingGroupName": "String", "thingGroupId": "String", "thingGroupDescription": "String",
                "parentGroupNames": "String"}


class InvalidConfiguration(PeerInputError):
    def __init__(self, message: str) -> None:
        super().__init__(message, code="InvalidRequestException")


@dataclass(frozen=True, slots=True)
class IndexingConfig:
    thing_mode: str = "REGISTRY_AND_SHADOW"
    connectivity: str = "STATUS"
    named_shadows: str = "ON"
    shadow_names: tuple[str, ...] | None = None  # None: every named shadow (overair's default)
    custom_fields: tuple[tuple[str, str], ...] = ()
    group_mode: str = "ON"
    group_custom_fields: tuple[tuple[str, str], ...] = ()

    @property
    def things_indexed(self) -> bool:
        return self.thing_mode != "OFF"

    @property
    def shadows_indexed(self) -> bool:
        return self.thing_mode == "REGISTRY_AND_SHADOW"

    def named_shadow_indexed(self, name: str) -> bool:
        if not self.shadows_indexed or self.named_shadows != "ON":
            return False
        return self.shadow_names is None or name in self.shadow_names

    def managed_fields(self) -> dict[str, str]:
        fields = dict(REGISTRY_FIELDS) if self.things_indexed else {}
        if self.shadows_indexed:
            fields.update(SHADOW_FIELDS)
        if self.things_indexed and self.connectivity == "STATUS":
            fields.update(CONNECTIVITY_FIELDS)
        return fields

    def field_type(self, name: str) -> str | None:
        """The type of a thing field for aggregation, or None: not an indexed typed field."""
        return self.managed_fields().get(name) or dict(self.custom_fields).get(name)

    def group_field_type(self, name: str) -> str | None:
        if self.group_mode != "ON":
            return None
        return GROUP_FIELDS.get(name) or dict(self.group_custom_fields).get(name)


DEFAULT = IndexingConfig()


def _choice(value: Any, allowed: tuple[str, ...], what: str, default: str) -> str:
    if value is None:
        return default
    if value not in allowed:
        raise InvalidConfiguration(f"{what} must be one of {', '.join(allowed)}")
    return str(value)


def _fields(value: Any, what: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_CUSTOM_FIELDS:
        raise InvalidConfiguration(f"{what} must be a list of at most {MAX_CUSTOM_FIELDS} fields")
    out: dict[str, str] = {}
    for item in value:
        if not isinstance(item, Mapping):
            raise InvalidConfiguration(f"each of {what} must have a name and a type")
        name, kind = item.get("name"), item.get("type")
        if not isinstance(name, str) or not _FIELD_NAME.fullmatch(name):
            raise InvalidConfiguration(f"{what}: field name {name!r} is not valid")
        if kind not in FIELD_TYPES:
            raise InvalidConfiguration(f"{what}: field {name} must have type Number, String or Boolean")
        if out.get(name, kind) != kind:
            raise InvalidConfiguration(f"{what}: field {name} is given two types")
        out[name] = str(kind)
    return tuple(sorted(out.items()))


def _check_source(config: IndexingConfig) -> None:
    for name, _kind in config.custom_fields:
        if name.startswith("shadow.") and not config.shadows_indexed:
            raise InvalidConfiguration(f"custom field {name} is a shadow field: it needs thingIndexingMode "
                                       "REGISTRY_AND_SHADOW")
        if name.startswith("shadow.name.") and config.named_shadows != "ON":
            raise InvalidConfiguration(f"custom field {name} is a named shadow field: it needs "
                                       "namedShadowIndexingMode ON")
        if name.startswith("connectivity.") and config.connectivity != "STATUS":
            raise InvalidConfiguration(f"custom field {name} needs thingConnectivityIndexingMode STATUS")


def parse_thing(spec: Mapping[str, Any], current: IndexingConfig) -> IndexingConfig:
    """A ThingIndexingConfiguration applied over `current` (its group part kept)."""
    mode = _choice(spec.get("thingIndexingMode"), THING_MODES, "thingIndexingMode", "")
    if not mode:
        raise InvalidConfiguration("thingIndexingMode is required")
    connectivity = _choice(spec.get("thingConnectivityIndexingMode"), CONNECTIVITY_MODES,
                           "thingConnectivityIndexingMode", "OFF")
    named = _choice(spec.get("namedShadowIndexingMode"), ON_OFF, "namedShadowIndexingMode", "OFF")
    if _choice(spec.get("deviceDefenderIndexingMode"), ("OFF", "VIOLATIONS"),
               "deviceDefenderIndexingMode", "OFF") != "OFF":
        raise InvalidConfiguration("deviceDefenderIndexingMode VIOLATIONS is not served: overair has no "
                                   "Device Defender")
    if mode == "OFF" and connectivity == "STATUS":
        raise InvalidConfiguration("thingConnectivityIndexingMode STATUS needs thingIndexingMode REGISTRY "
                                   "or REGISTRY_AND_SHADOW")
    if named == "ON" and mode != "REGISTRY_AND_SHADOW":
        raise InvalidConfiguration("namedShadowIndexingMode ON needs thingIndexingMode REGISTRY_AND_SHADOW")
    filter_spec = spec.get("filter") or {}
    if not isinstance(filter_spec, Mapping):
        raise InvalidConfiguration("filter must be an object")
    if filter_spec.get("geoLocations"):
        raise InvalidConfiguration("filter.geoLocations is not served: overair indexes no location")
    names = filter_spec.get("namedShadowNames") or []
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise InvalidConfiguration("filter.namedShadowNames must be a list of shadow names")
    if len(set(names)) > MAX_NAMED_SHADOW_NAMES:
        raise InvalidConfiguration(f"filter.namedShadowNames holds at most {MAX_NAMED_SHADOW_NAMES} names")
    if spec.get("managedFields"):
        raise InvalidConfiguration("managedFields are the service's; set customFields")
    config = IndexingConfig(thing_mode=mode, connectivity=connectivity, named_shadows=named,
                            shadow_names=tuple(sorted(set(names))),
                            custom_fields=_fields(spec.get("customFields"), "customFields"),
                            group_mode=current.group_mode, group_custom_fields=current.group_custom_fields)
    _check_source(config)
    return config


def parse_group(spec: Mapping[str, Any], current: IndexingConfig) -> IndexingConfig:
    mode = _choice(spec.get("thingGroupIndexingMode"), ON_OFF, "thingGroupIndexingMode", "")
    if not mode:
        raise InvalidConfiguration("thingGroupIndexingMode is required")
    if spec.get("managedFields"):
        raise InvalidConfiguration("managedFields are the service's; set customFields")
    return IndexingConfig(thing_mode=current.thing_mode, connectivity=current.connectivity,
                          named_shadows=current.named_shadows, shadow_names=current.shadow_names,
                          custom_fields=current.custom_fields, group_mode=mode,
                          group_custom_fields=_fields(spec.get("customFields"), "customFields"))


def _field_list(fields: Mapping[str, str] | tuple[tuple[str, str], ...]) -> list[dict[str, str]]:
    items = fields.items() if isinstance(fields, Mapping) else fields
    return [{"name": name, "type": kind} for name, kind in items]


def to_aws(config: IndexingConfig) -> dict[str, Any]:
    """GetIndexingConfiguration's answer."""
    thing: dict[str, Any] = {"thingIndexingMode": config.thing_mode,
                             "thingConnectivityIndexingMode": config.connectivity,
                             "namedShadowIndexingMode": config.named_shadows,
                             "deviceDefenderIndexingMode": "OFF",
                             "managedFields": _field_list(config.managed_fields()),
                             "customFields": _field_list(config.custom_fields)}
    if config.shadow_names:
        thing["filter"] = {"namedShadowNames": list(config.shadow_names)}
    group: dict[str, Any] = {"thingGroupIndexingMode": config.group_mode,
                             "customFields": _field_list(config.group_custom_fields)}
    if config.group_mode == "ON":
        group["managedFields"] = _field_list(GROUP_FIELDS)
    return {"thingIndexingConfiguration": thing, "thingGroupIndexingConfiguration": group}


def to_stored(config: IndexingConfig) -> dict[str, Any]:
    return {"thing_mode": config.thing_mode, "connectivity": config.connectivity,
            "named_shadows": config.named_shadows,
            "shadow_names": None if config.shadow_names is None else list(config.shadow_names),
            "custom_fields": [list(f) for f in config.custom_fields], "group_mode": config.group_mode,
            "group_custom_fields": [list(f) for f in config.group_custom_fields]}


def from_stored(stored: Mapping[str, Any]) -> IndexingConfig:
    names = stored.get("shadow_names")
    return IndexingConfig(
        thing_mode=str(stored["thing_mode"]), connectivity=str(stored["connectivity"]),
        named_shadows=str(stored["named_shadows"]),
        shadow_names=None if names is None else tuple(str(n) for n in names),
        custom_fields=tuple((str(n), str(t)) for n, t in stored.get("custom_fields", [])),
        group_mode=str(stored.get("group_mode", "OFF")),
        group_custom_fields=tuple((str(n), str(t)) for n, t in stored.get("group_custom_fields", [])))
