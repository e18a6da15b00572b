"""boto3 clients for the overair CLI: the same AWS API any operator tool uses."""

from __future__ import annotations

import configparser
from pathlib import Path
from typing import Any

import boto3
import botocore.session
from botocore.config import Config

from overair.apimodels import MODELS_DIR
from overair.core.errors import MisuseError
from overair.server.settings import DataDir, load_settings


class ApiClients:
    def __init__(self, endpoint_url: str, access_key_id: str, secret: str, region: str) -> None:
        self.endpoint_url = endpoint_url
        self.region = region
        self.access_key_id = access_key_id
        core = botocore.session.get_session()
        core.get_component("data_loader").search_paths.append(str(MODELS_DIR))  # the `overair` service
        self._session = boto3.Session(aws_access_key_id=access_key_id, aws_secret_access_key=secret,
                                      region_name=region, botocore_session=core)
        self._config = Config(retries={"max_attempts": 2, "mode": "standard"},
                              s3={"addressing_style": "path"})

    def client(self, service: str) -> Any:
        return self._session.client(service, endpoint_url=self.endpoint_url, config=self._config)

    @classmethod
    def from_data_dir(cls, data_dir: Path, profile: str = "default") -> ApiClients:
        settings = load_settings(data_dir)
        parser = configparser.ConfigParser()
        if not parser.read(DataDir(data_dir).credentials):
            raise MisuseError(f"no credentials file in {data_dir}")
        if profile not in parser:
            raise MisuseError(f"profile {profile!r} not found in {DataDir(data_dir).credentials}")
        section = parser[profile]
        scheme = "https" if settings.http_tls_cert else "http"
        return cls(f"{scheme}://{settings.http_host}:{settings.http_port}",
                   section["aws_access_key_id"], section["aws_secret_access_key"], settings.region)
