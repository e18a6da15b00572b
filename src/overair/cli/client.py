"""boto3 clients for the overair CLI: the same AWS API any operator tool uses."""

from __future__ import annotations

import configparser
import os
from pathlib import Path
from typing import Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import ProfileNotFound

from overair.apimodels import MODELS_DIR
from overair.core.errors import MisuseError
from overair.server.settings import DataDir, load_settings

DEFAULT_REGION = "us-east-1"  # what overair init uses when the profile names none


class ApiClients:
    def __init__(self, endpoint_url: str, access_key_id: str | None, secret: str | None, region: str | None,
                 *, profile: str | None = None) -> None:
        core = botocore.session.get_session()
        core.get_component("data_loader").search_paths.append(str(MODELS_DIR))  # the `overair` service
        try:
            self._session = boto3.Session(aws_access_key_id=access_key_id, aws_secret_access_key=secret,
                                          region_name=region, botocore_session=core, profile_name=profile)
        except ProfileNotFound as exc:
            raise MisuseError(f"{exc} (profiles live in ~/.aws/config and ~/.aws/credentials)",
                              code="ProfileNotFound") from None
        self.endpoint_url = endpoint_url
        self.region = self._session.region_name or DEFAULT_REGION
        credentials = self._session.get_credentials()
        if credentials is None:
            raise MisuseError("no AWS credentials: give --profile, set AWS_ACCESS_KEY_ID and "
                              "AWS_SECRET_ACCESS_KEY, or run on the server host with --data-dir",
                              code="NoCredentials")
        self.access_key_id = credentials.access_key
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

    @classmethod
    def from_profile(cls, profile: str | None = None, endpoint_url: str | None = None,
                     region: str | None = None) -> ApiClients:
        """An operator anywhere, as the AWS CLI would be: credentials and region from the
        profile (`--profile`, AWS_PROFILE), the environment and the AWS config files. The
        endpoint must be overair's: `--endpoint-url`, AWS_ENDPOINT_URL, or the profile's
        `endpoint_url`; never AWS itself by default."""
        core = botocore.session.Session(profile=profile)
        try:
            scoped = core.get_scoped_config()
        except ProfileNotFound as exc:
            raise MisuseError(f"{exc} (profiles live in ~/.aws/config and ~/.aws/credentials)",
                              code="ProfileNotFound") from None
        endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or scoped.get("endpoint_url")
        if not endpoint:
            raise MisuseError("which overair server? Give --endpoint-url (before the command: `overair "
                              "--endpoint-url https://ota.example:8443 ota list`), set AWS_ENDPOINT_URL, put "
                              "endpoint_url in the profile, or run on the server host with --data-dir",
                              code="NoEndpoint")
        return cls(str(endpoint), None, None, region, profile=profile)
