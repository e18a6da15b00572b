"""overair.toml is written by a TOML library and reads back exactly what was written."""

from __future__ import annotations

from pathlib import Path

from overair.server.settings import DataDir, Settings, dump_settings, load_settings


def test_a_database_url_with_quotes_and_backslashes_reads_back_exactly(tmp_path: Path) -> None:
    url = 'postgresql://ota:p"w\\d\'x@db.example.com:5432/overair'
    settings = Settings(data_dir=tmp_path, account_id="123456789012",
                        hostnames=("localhost", "ota.example.com"), http_port=8080, mqtt_port=8883,
                        download_port=8443, database_url=url)
    DataDir(tmp_path).config.write_text(dump_settings(settings))
    loaded = load_settings(tmp_path)
    assert loaded.database_url == url
    assert loaded.hostnames == ("localhost", "ota.example.com")
    assert (loaded.account_id, loaded.http_port, loaded.mqtt_port, loaded.download_port) == (
        "123456789012", 8080, 8883, 8443)
