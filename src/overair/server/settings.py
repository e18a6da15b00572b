"""The one validated settings object, built in the composition root.

Library code never reads the environment (principle 9). `overair init` writes
`overair.toml` into the data directory; `overair serve` reads it and lets command-line
flags override it.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from overair.core.errors import MisuseError
from overair.core.limits import DEFAULT_LIMITS, Limits

CONFIG_NAME = "overair.toml"


class DataDir:
    """Where everything lives inside a data directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    config = property(lambda self: self.root / CONFIG_NAME)
    master_key = property(lambda self: self.root / "master.key")
    credentials = property(lambda self: self.root / "credentials")
    database = property(lambda self: self.root / "overair.db")
    objects = property(lambda self: self.root / "objects")
    pki = property(lambda self: self.root / "pki")
    broker = property(lambda self: self.root / "broker")
    fleet_ca_cert = property(lambda self: self.pki / "fleet-ca.pem")
    fleet_ca_key = property(lambda self: self.pki / "fleet-ca.key")
    broker_cert = property(lambda self: self.pki / "broker.pem")
    broker_key = property(lambda self: self.pki / "broker.key")
    service_cert = property(lambda self: self.pki / "service.pem")
    service_key = property(lambda self: self.pki / "service.key")
    # The operator's trusted code-signing roots (a PEM bundle; the development root at first).
    code_signing_root = property(lambda self: self.pki / "code-signing-root.pem")
    revocation_signer_cert = property(lambda self: self.pki / "revocation-signer.pem")
    revocation_signer_key = property(lambda self: self.pki / "revocation-signer.key")
    crl = property(lambda self: self.pki / "crl.pem")
    url_signing_key = property(lambda self: self.root / "url-signing.key")


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path
    account_id: str
    region: str = "us-east-1"
    partition: str = "aws"
    hostnames: tuple[str, ...] = ("localhost", "127.0.0.1")
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 8883
    download_port: int = 8443  # HTTPS for devices: pre-signed OTA file downloads
    database_url: str = ""
    broker_url: str | None = None  # an external broker: mqtts://host:port
    mosquitto_binary: str = "mosquitto"
    http_tls_cert: Path | None = None
    http_tls_key: Path | None = None
    dev_mode: bool = False
    # Testing only: let the certificate store accept self-signed code-signing certificates.
    allow_self_signed_code_signing: bool = False
    # PKCS#11 modules (.so paths) the certificate store may load for HSM keys. A URI's
    # module-path is operator input: loading any other library would be code execution.
    pkcs11_modules: tuple[str, ...] = ()
    limits: Limits = field(default_factory=lambda: DEFAULT_LIMITS)

    @property
    def paths(self) -> DataDir:
        return DataDir(self.data_dir)

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.paths.database}"

    @property
    def device_host(self) -> str:
        """The name devices use to reach this server: the first name given to `init
        --hostname`, else localhost."""
        given = [h for h in self.hostnames if h not in ("localhost", "127.0.0.1")]
        return given[0] if given else "localhost"

    def arn(self, service: str, resource: str, *, regional: bool = True) -> str:
        region = self.region if regional else ""
        return f"arn:{self.partition}:{service}:{region}:{self.account_id}:{resource}"

    def check(self) -> None:
        """Refuse configurations that would be insecure."""
        if not _is_loopback(self.http_host) and not (self.http_tls_cert and self.http_tls_key):
            raise MisuseError(
                f"HTTP on {self.http_host} needs TLS (--tls-cert/--tls-key): plain HTTP is only "
                "allowed on loopback")
        for port in (self.http_port, self.mqtt_port, self.download_port):
            if not 0 <= port <= 65535:
                raise MisuseError(f"port {port} is out of range")
        if self.broker_url is not None and not self.broker_url.startswith("mqtts://"):
            raise MisuseError("--broker must be an mqtts:// URL: plaintext MQTT is never used")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_settings(data_dir: Path, **overrides: Any) -> Settings:
    paths = DataDir(data_dir)
    try:
        raw = tomllib.loads(paths.config.read_text())
    except FileNotFoundError as exc:
        raise MisuseError(f"{data_dir} is not an overair data directory: run "
                          f"`overair init --data-dir {data_dir}` first") from exc
    except tomllib.TOMLDecodeError as exc:
        raise MisuseError(f"{paths.config} is not valid TOML: {exc}") from exc
    known = {f for f in Settings.__dataclass_fields__ if f not in ("data_dir", "limits")}
    unknown = set(raw) - known
    if unknown:
        raise MisuseError(f"{paths.config}: unknown settings {sorted(unknown)}")
    for key in ("hostnames", "pkcs11_modules"):
        if key in raw:
            raw[key] = tuple(raw[key])
    settings = Settings(data_dir=data_dir, **raw)
    given = {k: v for k, v in overrides.items() if v is not None}
    settings = replace(settings, **given)
    settings.check()
    return settings


def dump_settings(settings: Settings) -> str:
    lines = [
        "# overair server settings; command-line flags of `overair serve` override them.",
        f'account_id = "{settings.account_id}"',
        f'region = "{settings.region}"',
        "hostnames = [" + ", ".join(f'"{h}"' for h in settings.hostnames) + "]",
        f"http_port = {settings.http_port}",
        f"mqtt_port = {settings.mqtt_port}",
        f"download_port = {settings.download_port}",
    ]
    if settings.database_url:
        lines.append(f'database_url = "{settings.database_url}"')
    return "\n".join(lines) + "\n"
