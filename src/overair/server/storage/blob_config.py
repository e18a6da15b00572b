"""`[object_store]` in overair.toml: where the object store keeps its bytes.

    [object_store]
    backend = "s3"                      # "local" (the default: <data dir>/objects)
    bucket = "overair-objects"          # must exist; overair never creates or deletes it
    endpoint_url = "https://s3.example.net:9000"   # "" = AWS S3 of `region`
    region = "eu-west-1"                # "" = boto3's default
    prefix = "prod/"                    # every name under this key prefix ("" = none)
    path_style = true                   # https://host/bucket/key (MinIO, Ceph RGW, SeaweedFS)
    access_key_id = "AKIA..."           # with secret_access_key_file; both "" = boto3's chain
    secret_access_key_file = "s3.secret" # relative to the data directory, mode 0600

Credentials, when not given here, come from boto3's usual chain: the environment
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE), the shared credentials file,
or the instance / container role. The secret never sits in overair.toml.
See docs/configuration.md and docs/scaling.md.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from overair.core.errors import MisuseError
from overair.server.storage.blobs import BlobStore, LocalBlobs

BACKENDS = ("local", "s3")


@dataclass(frozen=True, slots=True)
class ObjectStoreConfig:
    backend: str = "local"
    bucket: str = ""
    endpoint_url: str = ""
    region: str = ""
    prefix: str = ""
    path_style: bool = False
    access_key_id: str = ""
    secret_access_key_file: str = ""


def parse_object_store(raw: dict[str, Any], where: str = "[object_store]") -> ObjectStoreConfig:
    """The table as written in overair.toml; refuses unknown keys, wrong types and an
    incomplete S3 configuration."""
    known = {f.name: f for f in fields(ObjectStoreConfig)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise MisuseError(f"{where}: unknown settings {unknown} (docs/configuration.md)")
    for key, value in raw.items():
        want = bool if key == "path_style" else str
        if not isinstance(value, want):
            raise MisuseError(f"{where}: {key} must be {'true or false' if want is bool else 'a string'}")
    config = ObjectStoreConfig(**raw)
    if config.backend not in BACKENDS:
        raise MisuseError(f"{where}: backend must be one of {list(BACKENDS)}, not {config.backend!r}")
    if config.backend == "s3":
        if not config.bucket:
            raise MisuseError(f"{where}: backend \"s3\" needs a bucket")
        if bool(config.access_key_id) != bool(config.secret_access_key_file):
            raise MisuseError(f"{where}: give access_key_id and secret_access_key_file together, or "
                              "neither (boto3's credential chain: environment, shared file, role)")
        if config.endpoint_url and not config.endpoint_url.startswith(("https://", "http://")):
            raise MisuseError(f"{where}: endpoint_url must be an http(s):// URL")
        if config.prefix and not config.prefix.endswith("/"):
            raise MisuseError(f"{where}: prefix must end with '/'")
    elif config != ObjectStoreConfig():
        raise MisuseError(f"{where}: the local backend takes no other settings")
    return config


def _secret(data_dir: Path, name: str) -> str:
    path = data_dir / name
    try:
        mode = path.stat().st_mode
        secret = path.read_text().strip()
    except OSError as exc:
        raise MisuseError(f"[object_store] secret_access_key_file {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise MisuseError(f"[object_store] secret_access_key_file {path} must be readable by its owner "
                          "only (chmod 600)")
    if not secret:
        raise MisuseError(f"[object_store] secret_access_key_file {path} is empty")
    return secret


def make_blobs(config: ObjectStoreConfig, data_dir: Path, objects_root: Path) -> BlobStore:
    """The blob store the configuration names (local: `objects_root`)."""
    if config.backend == "local":
        return LocalBlobs(objects_root)
    # boto3 is loaded only when S3 is configured (settings are read by every command).
    from overair.server.storage.s3_blobs import S3Blobs, S3Location

    location = S3Location(
        bucket=config.bucket,
        endpoint_url=config.endpoint_url or None,
        region=config.region or None,
        prefix=config.prefix,
        path_style=config.path_style,
        access_key_id=config.access_key_id or None,
        secret_access_key=_secret(data_dir, config.secret_access_key_file)
        if config.secret_access_key_file else None,
    )
    return S3Blobs(location)
