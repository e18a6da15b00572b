"""The device bundle (agent.toml): paths relative to the file, clear errors, defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from overair.agent.config import ConfigError, load_config
from overair.agent.identity import check_certificate_identity
from tests.pki_helpers import issue, make_ca

FILES = ("device.crt", "device.key", "root-ca.pem", "code-signing-root.pem", "factory.bin")

BASE = """thing_name = "dev-1"
[mqtt]
host = "127.0.0.1"
port = 8883
client_cert = "device.crt"
client_key = "device.key"
ca_file = "root-ca.pem"
[trust]
code_signing_roots = "code-signing-root.pem"
[storage]
data_dir = "state"
factory_image = "factory.bin"
[self_test]
deadline_seconds = 60
command = ""
[ota]
block_size = 4096
blocks_per_request = 8
"""


def _bundle(tmp_path: Path, text: str = BASE) -> Path:
    for name in FILES:
        (tmp_path / name).write_text("x")
    (tmp_path / "agent.toml").write_text(text)
    return tmp_path


def test_bundle_directory_loads_with_paths_relative_to_the_file(tmp_path: Path) -> None:
    config = load_config(_bundle(tmp_path))
    assert config.thing_name == "dev-1"
    assert config.mqtt.client_cert == tmp_path / "device.crt"
    assert config.storage.data_dir == tmp_path / "state"
    assert config.storage.factory_image == tmp_path / "factory.bin"
    ota = config.ota
    assert (ota.block_size, ota.blocks_per_request, ota.status_every_blocks) == (4096, 8, 25)
    assert config.self_test.deadline_seconds == 60.0
    assert load_config(tmp_path / "agent.toml") == config


def test_optional_sections_default(tmp_path: Path) -> None:
    text = BASE.split("[self_test]", maxsplit=1)[0].replace('factory_image = "factory.bin"\n', "")
    config = load_config(_bundle(tmp_path, text))
    assert config.storage.factory_image is None
    assert config.self_test.command == ""
    assert config.ota.request_timeout_seconds == 10.0
    assert config.trust.trust_list_threshold == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('thing_name = "dev-1"', 'thing_name = "dev/1"'), "thing_name"),
        (("port = 8883", 'port = "8883"'), "[mqtt] port must be an integer"),
        (("port = 8883", "port = 70000"), "[mqtt] port"),
        (('client_key = "device.key"', 'client_key = "missing.key"'), "[mqtt] client_key names"),
        (("block_size = 4096", "block_size = 3000"), "power of two"),
        (("block_size = 4096", "block_size = 128"), "[ota] block_size"),
        (("blocks_per_request = 8", "blocks_per_request = 64"), "[ota] blocks_per_request"),
        (("deadline_seconds = 60", "deadline_seconds = -1"), "[self_test] deadline_seconds"),
        (("[storage]", "[storage_typo]"), "[storage] section is missing"),
        (('data_dir = "state"', "data_dir = 3"), "[storage] data_dir must be a string"),
        (("thing_name", "thing_name = = "), "not valid TOML"),
        (("[trust]\n", "[trust]\ntrust_list_threshold = 0\n"), "[trust] trust_list_threshold"),
    ],
)
def test_invalid_configuration_is_refused_with_a_clear_message(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_bundle(tmp_path, BASE.replace(*change, 1)))
    assert message in info.value.message
    assert str(tmp_path / "agent.toml") in info.value.message


def test_missing_file_and_skipped_file_checks(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such agent configuration"):
        load_config(tmp_path / "nope.toml")
    bundle = _bundle(tmp_path)
    (bundle / "device.key").unlink()
    with pytest.raises(ConfigError):
        load_config(bundle)
    assert load_config(bundle, check_files=False).thing_name == "dev-1"


def _with_certificate(tmp_path: Path, common_name: str) -> Path:
    tmp_path.mkdir(parents=True)
    bundle = _bundle(tmp_path)
    issue(make_ca("fleet"), common_name, client=True).write(bundle / "device.crt")
    return bundle


def test_n4_agent_refuses_a_certificate_issued_for_another_thing(tmp_path: Path) -> None:
    check_certificate_identity(load_config(_with_certificate(tmp_path / "ok", "dev-1")))
    with pytest.raises(ConfigError, match="not for thing_name 'dev-1'"):
        check_certificate_identity(load_config(_with_certificate(tmp_path / "other", "dev-2")))


def test_sim_mcu_storage_needs_a_unique_id_and_a_secret(tmp_path: Path) -> None:
    sim = BASE.replace(
        '[storage]\ndata_dir = "state"\n',
        '[storage]\ndata_dir = "state"\nplatform = "sim_mcu"\n'
        'flash_file = "flash.bin"\ndevice_secret_file = "secret.bin"\n',
    )
    (tmp_path / "secret.bin").write_bytes(b"s" * 32)
    with pytest.raises(ConfigError, match="unique_id"):
        load_config(_bundle(tmp_path, sim))
    config = load_config(
        _bundle(
            tmp_path,
            sim.replace(
                'platform = "sim_mcu"\n',
                'platform = "sim_mcu"\nunique_id = "00112233445566778899aabbccddeeff"\n',
            ),
        )
    )
    assert config.storage.unique_id == bytes(range(0, 256, 17))
    assert config.storage.flash_file == tmp_path / "flash.bin"
    with pytest.raises(ConfigError, match="platform"):
        load_config(
            _bundle(
                tmp_path, BASE.replace('data_dir = "state"\n', 'data_dir = "state"\nplatform = "esp32"\n')
            )
        )
