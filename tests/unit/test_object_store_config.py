"""`[object_store]` in overair.toml: parsing and refusals (server/storage/blob_config.py)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from overair.core.errors import MisuseError
from overair.server.settings import load_settings
from overair.server.storage.blob_config import ObjectStoreConfig, make_blobs, parse_object_store
from overair.server.storage.blobs import LocalBlobs
from overair.server.storage.s3_blobs import S3Blobs

S3 = {"backend": "s3", "bucket": "fw", "endpoint_url": "https://s3.example.net:9000", "path_style": True}


def test_defaults_to_the_local_directory(tmp_path: Path) -> None:
    config = parse_object_store({})
    assert config == ObjectStoreConfig()
    blobs = make_blobs(config, tmp_path, tmp_path / "objects")
    assert isinstance(blobs, LocalBlobs)
    assert not blobs.shared


def test_s3_with_credentials_from_a_private_file(tmp_path: Path) -> None:
    secret = tmp_path / "s3.secret"
    secret.write_text("the-secret\n")
    os.chmod(secret, 0o600)
    config = parse_object_store({**S3, "access_key_id": "AKIAEXAMPLE", "secret_access_key_file": "s3.secret",
                                 "prefix": "prod/", "region": "eu-west-1"})
    blobs = make_blobs(config, tmp_path, tmp_path / "objects")
    assert isinstance(blobs, S3Blobs)
    assert blobs.shared
    assert blobs.description == "S3 bucket fw at https://s3.example.net:9000"


@pytest.mark.parametrize(("raw", "says"), [
    ({"backend": "gcs"}, "backend must be one of"),
    ({"backend": "s3"}, "needs a bucket"),
    ({**S3, "access_key_id": "AKIA"}, "together"),
    ({**S3, "secret_access_key_file": "s"}, "together"),
    ({**S3, "endpoint_url": "s3.example.net"}, "http(s)://"),
    ({**S3, "prefix": "no-slash"}, "must end with '/'"),
    ({**S3, "secret_access_key": "inline"}, "unknown settings"),
    ({**S3, "path_style": "yes"}, "true or false"),
    ({"bucket": "fw"}, "local backend takes no other settings"),
])
def test_refuses_what_would_not_work(raw: dict[str, Any], says: str) -> None:
    with pytest.raises(MisuseError) as exc:
        parse_object_store(raw)
    assert says in exc.value.message


def test_a_secret_file_others_can_read_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "s3.secret"
    secret.write_text("the-secret\n")
    os.chmod(secret, 0o644)
    config = parse_object_store({**S3, "access_key_id": "AKIA", "secret_access_key_file": "s3.secret"})
    with pytest.raises(MisuseError) as exc:
        make_blobs(config, tmp_path, tmp_path / "objects")
    assert "chmod 600" in exc.value.message


def test_the_documented_example_is_what_overair_toml_takes(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    (example,) = [b for b in re.findall(r"```toml\n(.*?)```", text, re.S) if "[object_store]" in b]
    (tmp_path / "overair.toml").write_text('account_id = "123456789012"\n' + example)
    (tmp_path / "s3.secret").write_text("the-secret\n")
    os.chmod(tmp_path / "s3.secret", 0o600)
    settings = load_settings(tmp_path)
    assert settings.object_store == ObjectStoreConfig(
        backend="s3", bucket="overair-objects", endpoint_url="https://minio.example.net:9000",
        region="us-east-1", path_style=True, access_key_id="overair", secret_access_key_file="s3.secret")
    blobs = make_blobs(settings.object_store, tmp_path, settings.paths.objects)
    assert blobs.description == "S3 bucket overair-objects at https://minio.example.net:9000"
    (tmp_path / "overair.toml").write_text('account_id = "123456789012"\n[object_store]\nbackend = "s4"\n')
    with pytest.raises(MisuseError, match=r"\[object_store\]: backend must be one of"):
        load_settings(tmp_path)
