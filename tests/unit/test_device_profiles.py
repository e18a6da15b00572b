"""server/ota/profile_config.py: device profiles from overair.toml and the rule that gives
each thing one (issue 13, item 4), and the settings that carry them and the download
endpoint's public URL (item 1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from overair.core.errors import MisuseError
from overair.core.limits import DEFAULT_LIMITS, MIB
from overair.core.mqttsize import publish_packet_size, remaining_length_bytes
from overair.server.gateway.mqtt_driver import qos0_publish_packet
from overair.server.ota.profile_config import (
    FREERTOS,
    OVERAIR_AGENT,
    PROFILE_ATTRIBUTE,
    DeviceProfileConfig,
    builtin_profiles,
    parse_device_profiles,
)
from overair.server.settings import CONFIG_NAME, load_settings

CONFIG: dict[str, Any] = {
    "default": "freertos",
    "profiles": {"freertos-16m": {"max_file_bytes": 16 * MIB}, "freertos": {"message_budget_bytes": 6144},
                 "lab": {"overair_extension": True}},
    "things": {"sensor-7": "freertos-16m"},
    "thing_types": {"big-mcu": "freertos-16m"},
    "groups": {"lab-a": "lab", "agents": "overair-agent"},
}


def test_builtin_profiles_are_a_default_freertos_device_and_the_overair_agent() -> None:
    profiles = builtin_profiles()
    assert (profiles[FREERTOS].max_file_bytes, profiles[FREERTOS].message_budget_bytes,
            profiles[FREERTOS].overair_extension) == (4 * MIB, 4096, False)
    agent = profiles[OVERAIR_AGENT]
    assert (agent.max_file_bytes, agent.message_budget_bytes, agent.overair_extension) == (
        64 * MIB, DEFAULT_LIMITS.agent_max_job_message_bytes, True)
    assert DeviceProfileConfig().resolve("any", {}, None, []).profile.name == FREERTOS


def test_profiles_are_defined_overridden_and_start_from_the_freertos_builtin() -> None:
    config = parse_device_profiles(CONFIG)
    assert config.profiles["freertos"].message_budget_bytes == 6144  # overridden
    assert config.profiles["freertos"].max_file_bytes == 4 * MIB  # the rest kept
    big = config.profiles["freertos-16m"]
    assert (big.max_file_bytes, big.message_budget_bytes, big.overair_extension) == (16 * MIB, 4096, False)
    assert config.profiles["lab"].overair_extension


@pytest.mark.parametrize(("attributes", "thing", "thing_type", "groups", "expected", "source"), [
    ({PROFILE_ATTRIBUTE: "overair-agent"}, "sensor-7", "big-mcu", ["lab-a"], "overair-agent", "attribute"),
    ({}, "sensor-7", "big-mcu", ["lab-a"], "freertos-16m", "thing"),
    ({}, "other", "big-mcu", ["lab-a"], "freertos-16m", "thing type big-mcu"),
    ({}, "other", None, ["agents", "lab-a"], "lab", "group lab-a"),  # file order, not membership order
    ({}, "other", "small-mcu", ["elsewhere"], "freertos", "default"),
])
def test_a_things_profile_is_the_first_rule_that_names_one(
        attributes: dict[str, str], thing: str, thing_type: str | None, groups: list[str], expected: str,
        source: str) -> None:
    resolution = parse_device_profiles(CONFIG).resolve(thing, attributes, thing_type, groups)
    assert (resolution.profile.name, resolution.source, resolution.unknown) == (expected, source, None)


def test_an_attribute_naming_no_profile_falls_through_and_is_reported() -> None:
    resolution = parse_device_profiles(CONFIG).resolve("sensor-7", {PROFILE_ATTRIBUTE: "nope"}, None, [])
    assert (resolution.profile.name, resolution.unknown) == ("freertos-16m", "nope")


@pytest.mark.parametrize(("raw", "message"), [
    ({"colour": "red"}, "unknown keys ['colour']"),
    ({"default": "nope"}, "device_profiles.default: 'nope' is not a device profile"),
    ({"things": {"t": "nope"}}, "device_profiles.things.t"),
    ({"groups": {"g": 7}}, "device_profiles.groups.g"),
    ({"profiles": {"x": {"max_file_bytes": 0}}}, "max_file_bytes must be 1 to"),
    ({"profiles": {"x": {"max_file_bytes": 2 ** 40}}}, "max_file_bytes must be 1 to"),
    ({"profiles": {"x": {"message_budget_bytes": True}}}, "message_budget_bytes must be"),
    ({"profiles": {"x": {"overair_extension": "yes"}}}, "overair_extension must be true or false"),
    ({"profiles": {"x": {"size": 1}}}, "unknown keys ['size']"),
    ({"profiles": {"bad name": {}}}, "a profile name is"),
    ({"profiles": []}, "must be a table"),
])
def test_a_bad_configuration_is_refused_naming_the_problem(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(MisuseError) as caught:
        parse_device_profiles(raw)
    assert message in caught.value.message


def _settings(tmp_path: Path, text: str) -> Any:
    (tmp_path / CONFIG_NAME).write_text('account_id = "123456789012"\n' + text)
    return load_settings(tmp_path)


def test_overair_toml_carries_the_profiles(tmp_path: Path) -> None:
    settings = _settings(tmp_path, '[device_profiles.thing_types]\nbig-mcu = "overair-agent"\n')
    assert settings.device_profiles.thing_types == {"big-mcu": "overair-agent"}
    with pytest.raises(MisuseError, match="is not a device profile"):
        _settings(tmp_path, '[device_profiles.thing_types]\nbig-mcu = "nope"\n')


@pytest.mark.parametrize(("line", "expected"), [
    ("", "https://localhost:8443"),
    ('hostnames = ["ota.example.com"]', "https://ota.example.com:8443"),
    ('download_public_url = "https://ota.example.com:443"', "https://ota.example.com"),
    ('download_public_url = "https://ota.example.com"', "https://ota.example.com"),
    ('download_public_url = "https://ota.example.com:9443/"', "https://ota.example.com:9443"),
    ('hostnames = ["fd00::1"]', "https://[fd00::1]:8443"),
])
def test_download_urls_start_with_the_public_url_and_no_port_443(
        tmp_path: Path, line: str, expected: str) -> None:
    assert _settings(tmp_path, line + "\n").download_base_url == expected


@pytest.mark.parametrize("url", ["http://ota.example.com", "https://ota.example.com/ota", "https://u@h",
                                 "https://h:0", "https://h:70000", "ftp://h"])
def test_a_public_url_devices_could_not_use_is_refused(tmp_path: Path, url: str) -> None:
    with pytest.raises(MisuseError, match="download_public_url"):
        _settings(tmp_path, f'download_public_url = "{url}"\n')


@pytest.mark.parametrize(("length", "size"), [(0, 1), (127, 1), (128, 2), (16_383, 2), (16_384, 3),
                                              (2_097_151, 3), (2_097_152, 4)])
def test_remaining_length_takes_one_to_four_bytes(length: int, size: int) -> None:
    assert remaining_length_bytes(length) == size


@pytest.mark.parametrize("payload", [0, 1, 100, 4096, 20_000])
def test_publish_size_is_the_packet_the_service_sends(payload: int) -> None:
    topic = "$aws/things/dev-1/jobs/notify-next"
    assert publish_packet_size(topic, payload, 0) == len(qos0_publish_packet(topic, bytes(payload)))
    assert publish_packet_size(topic, payload, 1) == len(qos0_publish_packet(topic, bytes(payload + 2)))
