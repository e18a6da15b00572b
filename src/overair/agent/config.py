"""The device bundle: one TOML file that tells an agent who it is and whom it trusts.

The server writes a bundle directory per device (`agent.toml` plus the files it names);
every path in the TOML file is relative to the file's own directory, so a bundle can be
moved as a whole. Loading validates everything up front and fails with one message that
names the file, the key and what is wrong: a device that starts must be able to run.

```
thing_name = "dev-1"
[mqtt]
host = "127.0.0.1"
port = 8883
client_cert = "device.crt"
client_key = "device.key"
ca_file = "root-ca.pem"            # fleet root CA that signed the broker's certificate
keepalive_seconds = 30             # optional
[trust]
code_signing_roots = "code-signing-root.pem"
revoked_serials = []               # optional: signer serials (int or "0x..") never trusted
revocation_signer = "revocation-signer.pem"  # optional: verifies signed revocation lists
deployment_keys = "deployment-keys.pem"  # optional: public keys that sign deployment metadata
require_deployment_metadata = false   # true: refuse jobs without valid signed metadata (F1, F2)
trust_list_threshold = 1           # optional: root signatures the first trust list needs (rotation)
[storage]
data_dir = "state"
factory_image = "factory.bin"      # optional: installed when the slot store is empty
max_boot_attempts = 3              # optional: trial boots of a new image before fallback
platform = "linux"                 # optional: "linux" (slot directories) or "sim_mcu"
# linux, optional: with a device secret, images (staged, in the slots, the factory
# copy) and the MQTT private key are encrypted at rest under a key derived from the
# secret and this machine's id, so a copied directory does not decrypt elsewhere.
device_secret_file = "device-secret.bin"
machine_id_file = "/etc/machine-id"   # optional, the default
# sim_mcu only: the flash file, the device-unique 128-bit id (32 hex digits), the file
# holding the device secret, and the largest image the slots hold.
flash_file = "flash.bin"
unique_id = "00112233445566778899aabbccddeeff"
device_secret_file = "device-secret.bin"
image_capacity = 4194304
[self_test]
deadline_seconds = 60
command = ""                       # optional: must exit 0 for the self-test to pass
[app]
command = ["./app", "--serve"]     # optional: the application, started after every boot
[health]                           # optional: health reports (shadow overair-health)
report_interval_seconds = 300      # 0: none; else also at boot, on a crash and the self-test
metrics_command = ""               # optional: prints a JSON object of numeric metrics
[ota]
block_size = 4096
blocks_per_request = 8
status_every_blocks = 25           # optional: "receive k/N" progress frequency
status_min_interval_seconds = 1    # optional: and at most one progress report per interval
http_range_blocks = 16             # optional: blocks per HTTPS Range request (FreeRTOS: 1)
request_timeout_seconds = 10       # optional: re-request after this much silence
max_file_size = 67108864           # optional
prefer_http = false                # optional: a job offering MQTT and HTTP downloads over HTTPS
accept_delta = true                # optional: download a patch from the running image when offered
save_progress_every_blocks = 8     # optional: a resumable download's bitmap is saved this often
retry_base_seconds = 1             # optional: backoff of a failed request, first ceiling
retry_cap_seconds = 60             # optional: and its cap (full jitter below the ceiling)
job_retry_budget = 20              # optional: failed requests per job before it ends FAILED
reconnect_cap_seconds = 60         # optional: cap of the MQTT reconnect backoff (full jitter)
```

Jobs that offer only HTTP (`"protocols": ["HTTP"]`) are downloaded over HTTPS from the
job's pre-signed `update_data_url` whatever `prefer_http` says. The HTTPS server is
authenticated like the broker: against `[mqtt] ca_file`, host name checked, TLS 1.2 or
newer; no client certificate is sent (the pre-signed URL carries the authorization).
`request_timeout_seconds` is also the timeout of each HTTPS request.

A failed download request (an HTTP error, no response, a refused URL, a rejected stream
request) is retried after a capped exponential backoff with full jitter, and each one
spends one of the job's `job_retry_budget` retries: past it the job ends FAILED
(`0x0000000e`, check `RetryBudgetExhausted`, the last failure in `detail`). A server
asking the device to slow down (HTTP 429/503 with Retry-After, a throttled stream
request) is waited out and spends no budget.

`[trust] revocation_signer` is the PEM certificate (EC key) of the server's revocation
key: with it the agent accepts the signed revocation lists the server publishes
(core.revocation, threat O2) and refuses images from the signers they name, on top of
`revoked_serials`; without it those lists are ignored.

The signer certificate of an image comes only from the job document's signer chain,
checked against `code_signing_roots`: the agent never reads a certificate from the
path a job's `certfile` names (older bundles' `signer_certs_dir` is ignored).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from overair.core.errors import MisuseError
from overair.core.limits import DEFAULT_LIMITS, MIB
from overair.core.topics import THING_NAME_RE

PLATFORMS = ("linux", "sim_mcu")

BUNDLE_CONFIG_NAME = "agent.toml"
DEFAULT_MACHINE_ID_FILE = Path("/etc/machine-id")


class ConfigError(MisuseError):
    """The agent configuration is missing, malformed or names files that do not exist."""

    code = "InvalidAgentConfig"


@dataclass(frozen=True, slots=True)
class MqttConfig:
    host: str
    port: int
    client_cert: Path
    client_key: Path
    ca_file: Path
    keepalive_seconds: int = 30
    # Never read from the file: set at start when the key is sealed (agent/sealed_key.py).
    client_key_password: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class TrustConfig:
    code_signing_roots: Path
    revoked_serials: frozenset[int] = frozenset()
    # Verifies the revocation lists the server publishes (core.revocation); None: ignore them.
    revocation_signer: Path | None = None
    # Public keys (PEM) that sign deployment metadata (core/deployment.py, F1 F2); and
    # whether a job without valid metadata is refused (set by `overair thing create`).
    deployment_keys: Path | None = None
    require_deployment_metadata: bool = False
    # Signatures by distinct code-signing roots that the first trust list (rotation of
    # roots and deployment keys, core/trustlist.py) needs; later lists say their own.
    trust_list_threshold: int = 1


@dataclass(frozen=True, slots=True)
class StorageConfig:
    data_dir: Path
    factory_image: Path | None = None
    max_boot_attempts: int = 3
    platform: str = "linux"
    flash_file: Path | None = None
    unique_id: bytes = b""
    device_secret_file: Path | None = None
    image_capacity: int = 4 * MIB
    machine_id_file: Path = DEFAULT_MACHINE_ID_FILE  # linux encryption at rest: the machine-unique id


@dataclass(frozen=True, slots=True)
class SelfTestConfig:
    deadline_seconds: float = 60.0
    command: str = ""


@dataclass(frozen=True, slots=True)
class OtaConfig:
    block_size: int = 4096
    blocks_per_request: int = 8
    status_every_blocks: int = 25
    status_min_interval_seconds: float = 1.0
    http_range_blocks: int = 16
    request_timeout_seconds: float = 10.0
    max_file_size: int = 64 * MIB
    prefer_http: bool = False  # both protocols offered: download over HTTPS, not MQTT
    accept_delta: bool = True  # a job's `overair:delta` patch is used (core/delta.py)
    save_progress_every_blocks: int = 8
    retry_base_seconds: float = 1.0
    retry_cap_seconds: float = 60.0
    job_retry_budget: int = 20
    reconnect_cap_seconds: int = 60


@dataclass(frozen=True, slots=True)
class AppConfig:
    command: tuple[str, ...] = ()  # argv of the application; empty: the agent runs none


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """Health reports in the `overair-health` shadow (agent/health.py, core/health.py)."""

    report_interval_seconds: float = 300.0  # 0: no reports (a 10,000-device fleet: 33 shadow updates/s)
    metrics_command: str = ""  # prints a JSON object of numbers: the report's metrics


@dataclass(frozen=True, slots=True)
class AgentConfig:
    thing_name: str
    mqtt: MqttConfig
    trust: TrustConfig
    storage: StorageConfig
    self_test: SelfTestConfig
    ota: OtaConfig
    source: Path  # the TOML file this was loaded from
    app: AppConfig = AppConfig()
    health: HealthConfig = HealthConfig()

    @property
    def base_dir(self) -> Path:
        return self.source.parent


def resolve_config_path(path: Path) -> Path:
    """A bundle directory means its `agent.toml`; a file is taken as is."""
    return path / BUNDLE_CONFIG_NAME if path.is_dir() else path


def load_config(path: Path, *, check_files: bool = True) -> AgentConfig:
    """Load and validate an agent configuration (a TOML file or a bundle directory).

    `check_files=False` skips the existence checks of certificates and keys, for tools
    that only read the device's persisted state.
    """
    source = resolve_config_path(Path(path)).absolute()
    try:
        doc = tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{source}: no such agent configuration file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    return _Loader(source, check_files).load(doc)


class _Loader:
    def __init__(self, source: Path, check_files: bool) -> None:
        self.source = source
        self.base = source.parent
        self.check_files = check_files

    def fail(self, where: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {where} {problem}")

    def section(self, doc: dict[str, Any], name: str, required: bool) -> dict[str, Any]:
        value = doc.get(name)
        if value is None:
            if required:
                raise self.fail(f"[{name}]", "section is missing")
            return {}
        if not isinstance(value, dict):
            raise self.fail(f"[{name}]", "must be a table")
        return value

    def string(self, table: dict[str, Any], where: str, key: str, default: str | None = None) -> str:
        value = table.get(key, default)
        if value is None:
            raise self.fail(f"{where} {key}", "is required")
        if not isinstance(value, str):
            raise self.fail(f"{where} {key}", f"must be a string, got {type(value).__name__}")
        return value

    def integer(self, table: dict[str, Any], where: str, key: str, default: int | None,
                low: int, high: int) -> int:
        value = table.get(key, default)
        if value is None:
            raise self.fail(f"{where} {key}", "is required")
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(f"{where} {key}", f"must be an integer in [{low}, {high}], got {value!r}")
        return value

    def boolean(self, table: dict[str, Any], where: str, key: str, default: bool) -> bool:
        value = table.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(f"{where} {key}", f"must be true or false, got {value!r}")
        return value

    def number(self, table: dict[str, Any], where: str, key: str, default: float,
               low: float, high: float) -> float:
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise self.fail(f"{where} {key}", f"must be a number in [{low}, {high}], got {value!r}")
        return float(value)

    def path(self, table: dict[str, Any], where: str, key: str, *, must_exist: bool,
             directory: bool = False) -> Path:
        text = self.string(table, where, key)
        if not text.strip():
            raise self.fail(f"{where} {key}", "must not be empty")
        resolved = (self.base / text).resolve()
        if must_exist and self.check_files:
            if directory and not resolved.is_dir():
                raise self.fail(f"{where} {key}", f"names {resolved}, which is not a directory")
            if not directory and not resolved.is_file():
                raise self.fail(f"{where} {key}", f"names {resolved}, which does not exist")
        return resolved

    def load(self, doc: dict[str, Any]) -> AgentConfig:
        thing = self.string(doc, "", "thing_name")
        if not THING_NAME_RE.match(thing):
            raise self.fail("thing_name", f"{thing!r} is not a valid thing name ([a-zA-Z0-9:_-], 1-128)")
        return AgentConfig(
            thing_name=thing,
            mqtt=self.mqtt(self.section(doc, "mqtt", True)),
            trust=self.trust(self.section(doc, "trust", True)),
            storage=self.storage(self.section(doc, "storage", True)),
            self_test=self.self_test(self.section(doc, "self_test", False)),
            ota=self.ota(self.section(doc, "ota", False)),
            source=self.source,
            app=self.app(self.section(doc, "app", False)),
            health=self.health(self.section(doc, "health", False)),
        )

    def health(self, t: dict[str, Any]) -> HealthConfig:
        w = "[health]"
        return HealthConfig(self.number(t, w, "report_interval_seconds", 300.0, 0.0, 24 * 3600.0),
                            self.string(t, w, "metrics_command", ""))

    def app(self, t: dict[str, Any]) -> AppConfig:
        w = "[app]"
        command = t.get("command", [])
        if not isinstance(command, list) or not all(isinstance(a, str) for a in command):
            raise self.fail(f"{w} command", "must be a list of strings (the program and its arguments)")
        if command and not command[0].strip():
            raise self.fail(f"{w} command", "must name a program first")
        return AppConfig(tuple(command))

    def mqtt(self, t: dict[str, Any]) -> MqttConfig:
        w = "[mqtt]"
        host = self.string(t, w, "host")
        if not host.strip():
            raise self.fail(f"{w} host", "must not be empty")
        return MqttConfig(
            host=host,
            port=self.integer(t, w, "port", None, 1, 65535),
            client_cert=self.path(t, w, "client_cert", must_exist=True),
            client_key=self.path(t, w, "client_key", must_exist=True),
            ca_file=self.path(t, w, "ca_file", must_exist=True),
            keepalive_seconds=self.integer(t, w, "keepalive_seconds", 30, 5, 3600),
        )

    def trust(self, t: dict[str, Any]) -> TrustConfig:
        w = "[trust]"
        roots = self.path(t, w, "code_signing_roots", must_exist=True)
        raw = t.get("revoked_serials", [])
        if not isinstance(raw, list):
            raise self.fail(f"{w} revoked_serials", "must be a list")
        serials: set[int] = set()
        for item in raw:
            try:
                serial = item if isinstance(item, int) and not isinstance(item, bool) else int(str(item), 0)
            except ValueError as exc:
                raise self.fail(f"{w} revoked_serials", f"entry {item!r} is not an integer") from exc
            serials.add(serial)
        signer = self.path(t, w, "revocation_signer", must_exist=True) if "revocation_signer" in t else None
        keys = self.path(t, w, "deployment_keys", must_exist=True) if "deployment_keys" in t else None
        required = self.boolean(t, w, "require_deployment_metadata", False)
        if required and keys is None:
            raise self.fail(f"{w} require_deployment_metadata", "needs deployment_keys")
        threshold = self.integer(t, w, "trust_list_threshold", 1, 1, 8)
        return TrustConfig(roots, frozenset(serials), signer, keys, required, threshold)

    def storage(self, t: dict[str, Any]) -> StorageConfig:
        w = "[storage]"
        factory = self.path(t, w, "factory_image", must_exist=True) if "factory_image" in t else None
        platform = self.string(t, w, "platform", "linux")
        if platform not in PLATFORMS:
            raise self.fail(f"{w} platform", f"must be one of {PLATFORMS}, not {platform!r}")
        storage = StorageConfig(
            data_dir=self.path(t, w, "data_dir", must_exist=False),
            factory_image=factory,
            max_boot_attempts=self.integer(t, w, "max_boot_attempts", 3, 1, 100),
            platform=platform,
        )
        if platform != "sim_mcu":
            secret = None
            if "device_secret_file" in t:
                secret = self.path(t, w, "device_secret_file", must_exist=True)
            machine_id = self.path(t, w, "machine_id_file", must_exist=secret is not None) \
                if "machine_id_file" in t else DEFAULT_MACHINE_ID_FILE
            return StorageConfig(data_dir=storage.data_dir, factory_image=factory,
                                 max_boot_attempts=storage.max_boot_attempts, platform=platform,
                                 device_secret_file=secret, machine_id_file=machine_id)
        unique_text = self.string(t, w, "unique_id")
        try:
            unique_id = bytes.fromhex(unique_text)
        except ValueError:
            unique_id = b""
        if len(unique_id) != 16:
            raise self.fail(f"{w} unique_id", "must be the device's 128-bit id as 32 hex digits")
        return StorageConfig(
            data_dir=storage.data_dir, factory_image=factory, max_boot_attempts=storage.max_boot_attempts,
            platform=platform, unique_id=unique_id,
            flash_file=self.path(t, w, "flash_file", must_exist=False),
            device_secret_file=self.path(t, w, "device_secret_file", must_exist=True),
            image_capacity=self.integer(t, w, "image_capacity", 4 * MIB, 4096, 1 << 30),
        )

    def self_test(self, t: dict[str, Any]) -> SelfTestConfig:
        w = "[self_test]"
        return SelfTestConfig(
            deadline_seconds=self.number(t, w, "deadline_seconds", 60.0, 0.1, 24 * 3600.0),
            command=self.string(t, w, "command", ""),
        )

    def ota(self, t: dict[str, Any]) -> OtaConfig:
        w = "[ota]"
        limits = DEFAULT_LIMITS
        block_size = self.integer(t, w, "block_size", 4096, limits.min_block_size, limits.max_block_size)
        if block_size & (block_size - 1):
            raise self.fail(f"{w} block_size", f"must be a power of two, got {block_size}")
        # The service serves at most 128 KiB per request (device-protocol.md §3).
        max_blocks = max(1, limits.max_bytes_per_stream_request // block_size)
        return OtaConfig(
            block_size=block_size,
            blocks_per_request=self.integer(t, w, "blocks_per_request", 8, 1, max_blocks),
            status_every_blocks=self.integer(t, w, "status_every_blocks", 25, 1, 1 << 20),
            status_min_interval_seconds=self.number(t, w, "status_min_interval_seconds", 1.0, 0.0, 3600.0),
            http_range_blocks=self.integer(t, w, "http_range_blocks", min(16, max_blocks), 1, max_blocks),
            request_timeout_seconds=self.number(t, w, "request_timeout_seconds", 10.0, 0.1, 3600.0),
            max_file_size=self.integer(t, w, "max_file_size", 64 * MIB, 1, 0xFFFFFFFF),
            prefer_http=self.boolean(t, w, "prefer_http", False),
            accept_delta=self.boolean(t, w, "accept_delta", True),
            save_progress_every_blocks=self.integer(t, w, "save_progress_every_blocks", 8, 1, 1 << 20),
            retry_base_seconds=self.number(t, w, "retry_base_seconds", 1.0, 0.01, 3600.0),
            retry_cap_seconds=self.number(t, w, "retry_cap_seconds", 60.0, 0.01, 86400.0),
            job_retry_budget=self.integer(t, w, "job_retry_budget", 20, 0, 10_000),
            reconnect_cap_seconds=self.integer(t, w, "reconnect_cap_seconds", 60, 1, 86400),
        )
