"""Device profiles: what a kind of device can take, and which things are which kind.

Limits such as "at most 1,024 blocks of 4 KiB" belong to a device build, not to the
server (device-protocol.md §2), so overair keeps them per profile and gives each thing
one profile:

- `freertos` (the default for things): a default-built FreeRTOS OTA device. Files of at
  most 4 MiB (`OTA_MAX_BLOCK_BITMAP_SIZE` 128 bytes = 1,024 blocks of 4 KiB; a larger
  file is silently ignored by the device), job messages within a 4 KiB budget (the demo's
  MQTT buffer is 4,224 bytes; coreMQTT drops a larger packet), and the job document AWS
  would send: `afr_ota` only.
- `overair-agent`: overair's own agent. Files up to its default `max_file_size` (64 MiB),
  job messages up to what it accepts (`agent_max_job_message_bytes`), and the `overair`
  extension of the job document (the signer chain), added when the document is delivered.

`overair.toml` may redefine these and add others, and says which things take which
(`[device_profiles]`; README, "Device profiles"). A thing's profile is, first match:
its attribute `overair:deviceProfile` (what `overair thing create` sets for agents; any
AWS tool can set it with CreateThing or UpdateThing), its entry under `things`, its thing
type under `thing_types`, the first group under `groups` (in file order) it belongs to,
else `default`.

Pure: parsing and the resolution rule; server/ota/profiles.py reads the registry.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from overair.core.errors import MisuseError
from overair.core.limits import DEFAULT_LIMITS, MIB, Limits

PROFILE_ATTRIBUTE = "overair:deviceProfile"
FREERTOS = "freertos"
OVERAIR_AGENT = "overair-agent"
FREERTOS_MESSAGE_BUDGET = 4096  # 4 KiB of the demo's 4,224-byte buffer (device-protocol.md §2)
AGENT_MAX_FILE_BYTES = 64 * MIB  # the agent's default [ota] max_file_size (agent/config.py)
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MIN_MESSAGE_BUDGET = 512
MAX_MESSAGE_BUDGET = 16 * MIB
_PROFILE_KEYS = ("max_file_bytes", "message_budget_bytes", "overair_extension")
_TABLE_KEYS = ("default", "profiles", "things", "thing_types", "groups")


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    name: str
    max_file_bytes: int  # largest file the device takes
    message_budget_bytes: int  # largest job message (whole MQTT packet) it receives
    overair_extension: bool  # whether its job documents carry the `overair` key

    def describe(self) -> str:
        return (f"device profile {self.name!r} (files up to {self.max_file_bytes} bytes, job messages up to "
                f"{self.message_budget_bytes} bytes)")


def builtin_profiles(limits: Limits = DEFAULT_LIMITS) -> dict[str, DeviceProfile]:
    return {
        FREERTOS: DeviceProfile(FREERTOS, limits.device_max_file_size, FREERTOS_MESSAGE_BUDGET, False),
        OVERAIR_AGENT: DeviceProfile(OVERAIR_AGENT, AGENT_MAX_FILE_BYTES, limits.agent_max_job_message_bytes,
                                     True),
    }


@dataclass(frozen=True, slots=True)
class Resolution:
    profile: DeviceProfile
    source: str  # what chose it: "attribute", "thing", "thing type T", "group G", "default"
    unknown: str | None = None  # an attribute naming a profile that does not exist


@dataclass(frozen=True, slots=True)
class DeviceProfileConfig:
    profiles: Mapping[str, DeviceProfile] = field(default_factory=builtin_profiles)
    default: str = FREERTOS
    things: Mapping[str, str] = field(default_factory=dict)
    thing_types: Mapping[str, str] = field(default_factory=dict)
    groups: tuple[tuple[str, str], ...] = ()  # (group, profile) in file order
    # The resolution of every thing no rule names (most of a fleet), made once: a new one
    # per thing was a visible share of notifying 10,000 things (docs/scaling.md).
    _default: Resolution | None = field(init=False, default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.default in self.profiles:
            object.__setattr__(self, "_default", Resolution(self.profiles[self.default], "default"))

    def resolve(self, thing: str, attributes: Mapping[str, Any], thing_type: str | None,
                groups: Iterable[str]) -> Resolution:
        """The profile of one thing (the rule in the module docstring)."""
        named = attributes.get(PROFILE_ATTRIBUTE)
        unknown = None
        if isinstance(named, str) and named:
            if named in self.profiles:
                return Resolution(self.profiles[named], "attribute")
            unknown = named
        if thing in self.things:
            return Resolution(self.profiles[self.things[thing]], "thing", unknown)
        if thing_type is not None and thing_type in self.thing_types:
            return Resolution(self.profiles[self.thing_types[thing_type]], f"thing type {thing_type}",
                              unknown)
        member = set(groups)
        for group, profile in self.groups:
            if group in member:
                return Resolution(self.profiles[profile], f"group {group}", unknown)
        if unknown is None and self._default is not None:
            return self._default
        return Resolution(self.profiles[self.default], "default", unknown)

    def group_profile(self, group: str) -> DeviceProfile | None:
        for name, profile in self.groups:
            if name == group:
                return self.profiles[profile]
        return None


def parse_device_profiles(raw: Any, limits: Limits = DEFAULT_LIMITS) -> DeviceProfileConfig:
    """`[device_profiles]` of overair.toml; MisuseError naming the first problem."""
    if not isinstance(raw, dict):
        raise MisuseError("device_profiles must be a table")
    unknown = set(raw) - set(_TABLE_KEYS)
    if unknown:
        raise MisuseError(f"device_profiles: unknown keys {sorted(unknown)} (known: {list(_TABLE_KEYS)})")
    builtin = builtin_profiles(limits)
    profiles = dict(builtin)
    defined = raw.get("profiles", {})
    if not isinstance(defined, dict):
        raise MisuseError("device_profiles.profiles must be a table of profiles")
    for name, table in defined.items():
        # A new profile starts from the built-in `freertos` (the cautious one).
        profiles[name] = _profile(name, table, builtin.get(name, builtin[FREERTOS]), limits)
    default = raw.get("default", FREERTOS)
    _known(default, profiles, "device_profiles.default")
    things = _mapping(raw.get("things", {}), "things", profiles)
    thing_types = _mapping(raw.get("thing_types", {}), "thing_types", profiles)
    groups = tuple(_mapping(raw.get("groups", {}), "groups", profiles).items())
    return DeviceProfileConfig(profiles, default, things, thing_types, groups)


def _profile(name: Any, table: Any, base: DeviceProfile, limits: Limits) -> DeviceProfile:
    where = f"device_profiles.profiles.{name}"
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise MisuseError(f"{where}: a profile name is 1-64 characters of [A-Za-z0-9_.-]")
    if not isinstance(table, dict):
        raise MisuseError(f"{where} must be a table")
    unknown = set(table) - set(_PROFILE_KEYS)
    if unknown:
        raise MisuseError(f"{where}: unknown keys {sorted(unknown)} (known: {list(_PROFILE_KEYS)})")
    max_file = table.get("max_file_bytes", base.max_file_bytes)
    budget = table.get("message_budget_bytes", base.message_budget_bytes)
    extension = table.get("overair_extension", base.overair_extension)
    if not _integer_in(max_file, 1, limits.max_object_bytes):
        raise MisuseError(f"{where}.max_file_bytes must be 1 to {limits.max_object_bytes} "
                          "(the largest object)")
    if not _integer_in(budget, MIN_MESSAGE_BUDGET, MAX_MESSAGE_BUDGET):
        raise MisuseError(f"{where}.message_budget_bytes must be {MIN_MESSAGE_BUDGET} to "
                          f"{MAX_MESSAGE_BUDGET}")
    if not isinstance(extension, bool):
        raise MisuseError(f"{where}.overair_extension must be true or false")
    return DeviceProfile(name, max_file, budget, extension)


def _integer_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _mapping(raw: Any, what: str, profiles: Mapping[str, DeviceProfile]) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise MisuseError(f"device_profiles.{what} must be a table of name = \"profile\"")
    for name, profile in raw.items():
        if not isinstance(name, str) or not name:
            raise MisuseError(f"device_profiles.{what}: names must be non-empty strings")
        _known(profile, profiles, f"device_profiles.{what}.{name}")
    return dict(raw)


def _known(name: Any, profiles: Mapping[str, DeviceProfile], where: str) -> None:
    if not isinstance(name, str) or name not in profiles:
        raise MisuseError(f"{where}: {name!r} is not a device profile (known: {sorted(profiles)})")
