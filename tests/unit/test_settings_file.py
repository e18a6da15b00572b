"""overair.toml is written by a TOML library and reads back exactly what was written."""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import pytest

from overair.core.errors import MisuseError
from overair.server.bootstrap import keep_password_apart
from overair.server.settings import (
    _KINDS,
    DATABASE_PASSWORD_ENV,
    DataDir,
    Settings,
    dump_settings,
    load_settings,
    split_password,
)


def test_a_database_url_with_quotes_and_backslashes_reads_back_exactly(tmp_path: Path) -> None:
    url = 'postgresql://o"t\\a@db.example.com:5432/over\'air'
    settings = Settings(data_dir=tmp_path, account_id="123456789012",
                        hostnames=("localhost", "ota.example.com"), http_port=8080, mqtt_port=8883,
                        download_port=8443, database_url=url)
    DataDir(tmp_path).config.write_text(dump_settings(settings))
    loaded = load_settings(tmp_path)
    assert loaded.database_url == url
    assert loaded.hostnames == ("localhost", "ota.example.com")
    assert (loaded.account_id, loaded.http_port, loaded.mqtt_port, loaded.download_port) == (
        "123456789012", 8080, 8883, 8443)


def test_the_database_password_is_never_written_to_overair_toml(tmp_path: Path) -> None:
    url = "postgresql://ota:s3cr%40t%2Fx@db.example.com:5432/overair"
    plain, password_file = keep_password_apart(tmp_path, url)
    assert (plain, password_file) == ("postgresql://ota@db.example.com:5432/overair", "database-password")
    assert (tmp_path / "database-password").read_text() == "s3cr@t/x"
    assert stat.S_IMODE((tmp_path / "database-password").stat().st_mode) == 0o600
    settings = Settings(data_dir=tmp_path, account_id="123456789012", database_url=url,
                        database_password_file=password_file)
    DataDir(tmp_path).config.write_text(dump_settings(settings))
    assert "s3cr" not in DataDir(tmp_path).config.read_text()
    loaded = load_settings(tmp_path)
    assert "s3cr" not in repr(loaded)
    assert split_password(loaded.db_url) == (plain, "s3cr@t/x")  # opened with the password


def test_the_environment_password_wins_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "database-password").write_text("from-file")
    settings = Settings(data_dir=tmp_path, account_id="123456789012",
                        database_url="postgresql://ota@db/overair",
                        database_password_file="database-password")
    DataDir(tmp_path).config.write_text(dump_settings(settings))
    monkeypatch.setenv(DATABASE_PASSWORD_ENV, "from-env")
    assert split_password(load_settings(tmp_path).db_url)[1] == "from-env"
    monkeypatch.delenv(DATABASE_PASSWORD_ENV)
    assert split_password(load_settings(tmp_path).db_url)[1] == "from-file"
    assert os.environ.get(DATABASE_PASSWORD_ENV) is None


@pytest.mark.parametrize(("line", "why"), [
    ('hostnames = "abc"', "hostnames must be a list of strings"),
    ('http_port = "8080"', "http_port must be an integer"),
    ("http_port = true", "http_port must be an integer"),
    ("dev_mode = 1", "dev_mode must be true or false"),
    ("region = 5", "region must be a string"),
])
def test_every_setting_is_type_checked_at_load(tmp_path: Path, line: str, why: str) -> None:
    DataDir(tmp_path).config.write_text(f'account_id = "123456789012"\n{line}\n')
    with pytest.raises(MisuseError, match=why):
        load_settings(tmp_path)


def test_every_setting_has_a_declared_kind() -> None:
    fields = {f.name for f in dataclasses.fields(Settings)} - {"data_dir", "limits", "database_password"}
    assert fields == set(_KINDS)
