"""The one validated settings object, built in the composition root.

Library code never reads the environment (principle 9). `overair init` writes
`overair.toml` into the data directory; `overair serve` reads it and lets command-line
flags override it.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import tomli_w

from overair.core import presign
from overair.core.errors import MisuseError, PeerInputError
from overair.core.limits import DEFAULT_LIMITS, Limits
from overair.server.delivery.policy import DownloadLimits
from overair.server.delivery.policy import parse_settings as parse_download_policy
from overair.server.ota.profile_config import DeviceProfileConfig, parse_device_profiles
from overair.server.storage.blob_config import ObjectStoreConfig, parse_object_store

CONFIG_NAME = "overair.toml"
# The database password, for deployments that pass secrets in the environment (the one
# variable load_settings reads: settings are otherwise files and flags).
DATABASE_PASSWORD_ENV = "OVERAIR_DATABASE_PASSWORD"


class DataDir:
    """Where everything lives inside a data directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    config = property(lambda self: self.root / CONFIG_NAME)
    master_key = property(lambda self: self.root / "master.key")
    credentials = property(lambda self: self.root / "credentials")
    database = property(lambda self: self.root / "overair.db")
    backups = property(lambda self: self.root / "backups")  # taken before schema upgrades
    objects = property(lambda self: self.root / "objects")
    pki = property(lambda self: self.root / "pki")
    broker = property(lambda self: self.root / "broker")
    download_front = property(lambda self: self.root / "download-front")  # nginx: config, cache, logs
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
    # The deployment key (sealed with the master key) and its public key(s) for bundles (F1 F2).
    deployment_key = property(lambda self: self.pki / "deployment.key")
    deployment_keys = property(lambda self: self.pki / "deployment.pem")
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
    # Prometheus metrics (server/metrics.py) on http://<http_host>:<metrics_port>/metrics,
    # without credentials (bind the API's host to a monitoring network); 0: off.
    metrics_port: int = 0
    # The download endpoint's address as devices reach it, https://host[:port], which every
    # pre-signed URL starts with; "" means https://<device_host>:<download_port>. A port
    # of 443 is left out: FreeRTOS HTTP devices connect to 443 of everything between
    # `://` and the first `/` (core/presign.py; README, "HTTP delivery").
    download_public_url: str = ""
    # "nginx": Debian's nginx serves the downloads in front of the device endpoint, every
    # access still decided by overair (delivery/nginx_front.py, docs/scaling.md "HTTPS
    # delivery"); it listens on <mqtt_host>:<download_front_port> and pre-signed URLs name
    # it. "": devices download from the Python endpoint (download_port).
    download_front: str = ""
    download_front_port: int = 0
    nginx_binary: str = "/usr/sbin/nginx"
    # What each kind of device takes, and which things are which kind (server/ota/
    # profile_config.py; `[device_profiles]` in overair.toml).
    device_profiles: DeviceProfileConfig = field(default_factory=DeviceProfileConfig)
    database_url: str = ""
    # The database password never sits in overair.toml: it comes from the environment
    # (OVERAIR_DATABASE_PASSWORD) or this file (relative to the data directory, mode
    # 0600; `init` writes a password given in --database-url there).
    database_password_file: str = ""
    database_password: str = field(default="", repr=False)  # from the environment (load_settings)
    # An external broker (mqtts://host:port) instead of the Mosquitto overair runs. It must
    # use overair's ACL and CRL files and be reloaded by `broker_reload_command` (argv),
    # which overair runs after every access change; `serve` checks it enforces them
    # (gateway/broker_probe.py, docs/security.md "External broker").
    broker_url: str | None = None
    broker_reload_command: tuple[str, ...] = ()
    mosquitto_binary: str = "mosquitto"
    # MQTT persistent sessions at the broker overair runs (gateway/broker.py): how long
    # one outlives its device's disconnection (AWS: 1 hour by default, at most 7 days;
    # Mosquitto counts in hours), and how many QoS 1 messages it queues meanwhile.
    mqtt_session_expiry_hours: int = 1
    mqtt_max_queued_messages: int = 1000
    http_tls_cert: Path | None = None
    http_tls_key: Path | None = None
    dev_mode: bool = False
    # Testing only: let the certificate store accept self-signed code-signing certificates.
    allow_self_signed_code_signing: bool = False
    # PKCS#11 modules (.so paths) the certificate store may load for HSM keys. A URI's
    # module-path is operator input: loading any other library would be code execution.
    pkcs11_modules: tuple[str, ...] = ()
    # Reverse proxies (addresses or CIDR networks) whose X-Forwarded-For/-Proto set a
    # request's aws:SourceIp and aws:SecureTransport; empty: only the connection counts.
    trusted_proxies: tuple[str, ...] = ()
    # The fleet download policy (`[download_policy]`; server/delivery/policy.py): devices
    # downloading at once, bytes per second for all of them and for one; 0: unlimited.
    download_policy: DownloadLimits = field(default_factory=DownloadLimits)
    # Where object bytes live (`[object_store]`; server/storage/blob_config.py): the data
    # directory (default) or an S3 bucket several server processes share (docs/scaling.md).
    object_store: ObjectStoreConfig = field(default_factory=ObjectStoreConfig)
    limits: Limits = field(default_factory=lambda: DEFAULT_LIMITS)

    @property
    def paths(self) -> DataDir:
        return DataDir(self.data_dir)

    @property
    def db_url(self) -> str:
        """The URL the database is opened with, password included."""
        if not self.database_url:
            return f"sqlite:///{self.paths.database}"
        password = self.database_password or self._password_from_file()
        return with_password(self.database_url, password) if password else self.database_url

    def _password_from_file(self) -> str | None:
        if not self.database_password_file:
            return None
        path = self.data_dir / self.database_password_file
        try:
            return path.read_text().strip() or None
        except OSError as exc:
            raise MisuseError(f"database_password_file {path}: {exc.strerror}") from None

    @property
    def device_host(self) -> str:
        """The name devices use to reach this server: the first name given to `init
        --hostname`, else localhost."""
        given = [h for h in self.hostnames if h not in ("localhost", "127.0.0.1")]
        return given[0] if given else "localhost"

    @property
    def download_base_url(self) -> str:
        """What every pre-signed download URL starts with (no port when it is 443)."""
        host = f"[{self.device_host}]" if ":" in self.device_host else self.device_host
        port = self.download_front_port if self.download_front else self.download_port
        given = self.download_public_url or f"https://{host}:{port}"
        try:
            return presign.base_url(given)
        except ValueError as exc:
            raise MisuseError(f"download_public_url: {exc}") from exc

    @property
    def external_broker(self) -> tuple[str, int] | None:
        """(host, port) of the external broker, if one is configured."""
        if self.broker_url is None:
            return None
        url = urlsplit(self.broker_url)
        try:
            port = url.port or 8883
        except ValueError as exc:
            raise MisuseError(f"broker URL {self.broker_url!r}: {exc}") from exc
        if url.scheme != "mqtts" or not url.hostname or url.path not in ("", "/") or url.query:
            raise MisuseError(f"broker URL {self.broker_url!r} must be mqtts://host[:port]: plaintext "
                              "MQTT is never used")
        return url.hostname, port

    @property
    def device_mqtt_endpoint(self) -> tuple[str, int]:
        """Where devices connect: the external broker if there is one, else the broker
        overair runs (DescribeEndpoint answers this; device bundles name it)."""
        return self.external_broker or (self.device_host, self.mqtt_port)

    def arn(self, service: str, resource: str, *, regional: bool = True) -> str:
        region = self.region if regional else ""
        return f"arn:{self.partition}:{service}:{region}:{self.account_id}:{resource}"

    def check(self) -> None:
        """Refuse configurations that would be insecure."""
        if not _is_loopback(self.http_host) and not (self.http_tls_cert and self.http_tls_key):
            raise MisuseError(
                f"HTTP on {self.http_host} needs TLS (--tls-cert/--tls-key): plain HTTP is only "
                "allowed on loopback")
        if self.download_front not in ("", "nginx"):
            raise MisuseError(f"download_front must be \"nginx\" or \"\", got {self.download_front[:40]!r}")
        if self.download_front and not 0 < self.download_front_port <= 65535:
            raise MisuseError("download_front = \"nginx\" needs download_front_port (1 to 65535)")
        for port in (self.http_port, self.mqtt_port, self.download_port, self.metrics_port,
                     self.download_front_port):
            if not 0 <= port <= 65535:
                raise MisuseError(f"port {port} is out of range")
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError as exc:
                raise MisuseError(f"trusted_proxies: {proxy!r} is not an IP address or CIDR network") from exc
        if not 1 <= self.mqtt_session_expiry_hours <= 7 * 24:
            raise MisuseError("mqtt_session_expiry_hours must be 1 to 168 (7 days, AWS's maximum)")
        if not 1 <= self.mqtt_max_queued_messages <= 100_000:
            raise MisuseError("mqtt_max_queued_messages must be 1 to 100000")
        _ = self.download_base_url  # refuses a URL devices could not use
        if self.external_broker is not None and not self.broker_reload_command:
            raise MisuseError("an external broker (--broker) needs broker_reload_command (e.g. "
                              "--broker-reload-command 'systemctl reload mosquitto'): overair must make it "
                              "apply every access change; see docs/security.md, External broker")


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
    known = {f for f in Settings.__dataclass_fields__ if f not in ("data_dir", "limits", "database_password")}
    unknown = set(raw) - known
    if unknown:
        raise MisuseError(f"{paths.config}: unknown settings {sorted(unknown)}")
    _check_types(raw, paths.config)
    for key in ("hostnames", "pkcs11_modules", "broker_reload_command", "trusted_proxies"):
        if key in raw:
            raw[key] = tuple(raw[key])
    for key in ("http_tls_cert", "http_tls_key"):
        if key in raw:
            raw[key] = Path(raw[key])
    if "device_profiles" in raw:
        raw["device_profiles"] = parse_device_profiles(raw["device_profiles"])
    if "download_policy" in raw:
        try:
            raw["download_policy"] = parse_download_policy(raw["download_policy"])
        except PeerInputError as exc:
            raise MisuseError(f"{paths.config}: [download_policy]: {exc.message} "
                              "(docs/configuration.md)") from exc
    if "object_store" in raw:
        raw["object_store"] = parse_object_store(raw["object_store"], f"{paths.config}: [object_store]")
    settings = Settings(data_dir=data_dir, database_password=os.environ.get(DATABASE_PASSWORD_ENV, ""), **raw)
    given = {k: v for k, v in overrides.items() if v is not None}
    settings = replace(settings, **given)
    settings.check()
    return settings


# What each overair.toml key must be (a string "hostnames" would otherwise be read as a
# list of its characters). device_profiles has its own parser (ota/profile_config.py).
_KINDS: dict[str, str] = {
    "account_id": "str", "region": "str", "partition": "str", "hostnames": "strings", "http_host": "str",
    "http_port": "int", "mqtt_host": "str", "mqtt_port": "int", "download_port": "int", "metrics_port": "int",
    "download_public_url": "str", "download_front": "str", "download_front_port": "int",
    "nginx_binary": "str", "database_url": "str", "database_password_file": "str",
    "broker_url": "str", "broker_reload_command": "strings", "mosquitto_binary": "str",
    "mqtt_session_expiry_hours": "int", "mqtt_max_queued_messages": "int", "http_tls_cert": "str",
    "http_tls_key": "str", "dev_mode": "bool", "allow_self_signed_code_signing": "bool",
    "pkcs11_modules": "strings", "trusted_proxies": "strings", "device_profiles": "table",
    "download_policy": "table", "object_store": "table",
}
_KIND_TEXT = {"str": "a string", "int": "an integer", "bool": "true or false", "strings": "a list of strings",
              "table": "a table"}


def _is(kind: str, value: Any) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "strings":
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    return isinstance(value, dict)


def _check_types(raw: dict[str, Any], where: Path) -> None:
    for key, value in raw.items():
        kind = _KINDS.get(key)
        if kind is not None and not _is(kind, value):
            raise MisuseError(f"{where}: {key} must be {_KIND_TEXT[kind]}, got {type(value).__name__} "
                              f"{str(value)[:60]!r} (docs/configuration.md)")


def split_password(url: str) -> tuple[str, str | None]:
    """A database URL without its password, and the password (None if it had none)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url, None
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}")), unquote(parts.password)


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}"))


def dump_settings(settings: Settings) -> str:
    """overair.toml for these settings, written by a TOML library: any value (a
    database URL with quotes or backslashes) reads back exactly as given."""
    values: dict[str, Any] = {
        "account_id": settings.account_id,
        "region": settings.region,
        "hostnames": list(settings.hostnames),
        "http_port": settings.http_port,
        "mqtt_port": settings.mqtt_port,
        "download_port": settings.download_port,
    }
    if settings.metrics_port:
        values["metrics_port"] = settings.metrics_port
    if settings.database_url:
        values["database_url"] = split_password(settings.database_url)[0]  # never the password
    if settings.database_password_file:
        values["database_password_file"] = settings.database_password_file
    return "# overair server settings; command-line flags of `overair serve` override them.\n" + \
        tomli_w.dumps(values)
