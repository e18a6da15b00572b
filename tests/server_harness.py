"""Run a complete overair server for tests: `overair init` into a temporary data
directory, then the real `Server` (HTTP API, device service and its own Mosquitto child)
on free loopback ports in a background thread.

Use `running_server(data_dir)` as a context manager; `RunningServer.client(service)`
returns a boto3 client with the administrator key from the data directory's
`credentials`, exactly as the `overair` CLI builds it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overair.cli.client import ApiClients
from overair.cli.provisioning import provision_thing
from overair.server.app import Server, ServerThread
from overair.server.bootstrap import initialize
from overair.server.settings import Settings, load_settings
from tests.ports import free_port

# free_port is re-exported: tests and bench/ import it from here.
__all__ = ["MOSQUITTO", "RunningServer", "free_port", "running_server"]

MOSQUITTO = "/usr/sbin/mosquitto"


@dataclass
class RunningServer:
    settings: Settings
    thread: ServerThread
    clients: ApiClients

    @property
    def server(self) -> Server:
        return self.thread.server

    @property
    def endpoint(self) -> str:
        return self.clients.endpoint_url

    def client(self, service: str) -> Any:
        return self.clients.client(service)

    def provision(self, thing: str, out_dir: Path, *, group: str | None = None,
                  factory_image: Path | None = None, code_signing_roots_pem: bytes | None = None,
                  require_deployment_metadata: bool = True) -> Path:
        """Register `thing` and write its agent bundle; returns the bundle directory. The
        agent trusts the server's code-signing root unless other roots are given, and
        requires signed deployment metadata (F1 F2) as `overair thing create` makes it,
        unless told not to (for jobs made by CreateJob, which carry none)."""
        paths = self.settings.paths
        roots = code_signing_roots_pem or paths.code_signing_root.read_bytes()
        return provision_thing(self.client("iot"), thing, out_dir,
                               fleet_ca_pem=paths.fleet_ca_cert.read_bytes(),
                               code_signing_roots_pem=roots,
                               revocation_signer_pem=paths.revocation_signer_cert.read_bytes(),
                               # As `overair thing create`: the agent requires signed deployment
                               # metadata (F1 F2).
                               deployment_keys_pem=paths.deployment_keys.read_bytes()
                               if require_deployment_metadata else None,
                               mqtt_host="127.0.0.1", mqtt_port=self.settings.mqtt_port,
                               group=group, factory_image=factory_image).parent


@contextmanager
def running_server(data_dir: Path, *, database_url: str = "", settings_toml: str = "",
                   clock: Callable[[], float] = time.time,
                   limits: Mapping[str, Any] | None = None) -> Iterator[RunningServer]:
    """`settings_toml`: extra lines for overair.toml (e.g. `pkcs11_modules = [...]`);
    `clock`: the server's idea of now (tests shift it to make timeouts happen); `limits`:
    fields of `Limits` to change. A data directory that already holds an installation is
    started again as it is (a restart)."""
    if not (data_dir / "overair.toml").exists():
        initialize(data_dir, http_port=free_port(), mqtt_port=free_port(), download_port=free_port(),
                   database_url=database_url)
        if settings_toml:
            config = data_dir / "overair.toml"
            config.write_text(config.read_text() + settings_toml + "\n")
    settings = load_settings(data_dir)
    if limits:
        settings = dataclasses.replace(settings, limits=dataclasses.replace(settings.limits, **limits))
    thread = ServerThread(settings, clock)
    thread.start()
    try:
        yield RunningServer(settings, thread, ApiClients.from_data_dir(data_dir))
    finally:
        thread.stop()
