"""Several `overair serve` processes sharing one PostgreSQL database and one S3 bucket,
each with the Mosquitto it runs (docs/scaling.md): the scale-out topology as real OS
processes, so a test can SIGKILL one. One data directory is initialized and copied for
each further process (the same fleet CA, master key, URL-signing and deployment keys,
administrator credentials), with its own ports.

    with server_cluster(tmp, database_url, object_store_toml, count=2) as (a, b): ...
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overair.cli.client import ApiClients
from overair.cli.provisioning import provision_thing
from overair.server.bootstrap import initialize
from overair.server.settings import Settings, load_settings
from tests.server_harness import free_port

START_SECONDS = 60.0


@dataclass
class ServerProcess:
    name: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def settings(self) -> Settings:
        return load_settings(self.data_dir)

    def client(self, service: str) -> Any:
        return ApiClients.from_data_dir(self.data_dir).client(service)

    def provision(self, thing: str, out_dir: Path, *, factory_image: Path | None = None) -> Path:
        """Register `thing` through this process's API; its bundle names this process's
        broker (as a load balancer in front of the brokers would)."""
        settings, paths = self.settings, self.settings.paths
        return provision_thing(self.client("iot"), thing, out_dir,
                               fleet_ca_pem=paths.fleet_ca_cert.read_bytes(),
                               code_signing_roots_pem=paths.code_signing_root.read_bytes(),
                               revocation_signer_pem=paths.revocation_signer_cert.read_bytes(),
                               deployment_keys_pem=paths.deployment_keys.read_bytes(),
                               mqtt_host="127.0.0.1", mqtt_port=settings.mqtt_port,
                               factory_image=factory_image).parent

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_SECONDS
        while "overair ready" not in self.log.read_text(errors="replace"):
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.process.returncode}):\n"
                                   f"{self.log.read_text(errors='replace')[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start in {START_SECONDS:.0f} s")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL to the process and the Mosquitto it runs (its own process group): the
        node is lost at once, as a machine that fails."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def _with_ports(config: str) -> str:
    # free_port() never returns a port twice (tests/ports.py), so the three are distinct.
    for key in ("http_port", "mqtt_port", "download_port"):
        port = free_port()
        config = re.sub(rf"^{key} = \d+$", f"{key} = {port}", config, flags=re.MULTILINE)
    return config


def start_server(name: str, data_dir: Path) -> ServerProcess:
    log = data_dir.parent / f"{name}.log"
    command = [str(Path(sys.executable).parent / "overair"), "serve", "--data-dir", str(data_dir)]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    server = ServerProcess(name, data_dir, process, log)
    server.wait_ready()
    return server


@contextmanager
def server_cluster(root: Path, database_url: str, settings_toml: str = "",
                   count: int = 2) -> Iterator[list[ServerProcess]]:
    """`count` serve processes over `database_url` (PostgreSQL) with `settings_toml`
    added to each overair.toml (an `[object_store]` table naming a shared bucket)."""
    first = root / "server-0"
    initialize(first, http_port=free_port(), mqtt_port=free_port(), download_port=free_port(),
               database_url=database_url)
    config = first / "overair.toml"
    config.write_text(config.read_text() + settings_toml + "\n")
    for i in range(1, count):
        copy = root / f"server-{i}"
        shutil.copytree(first, copy, symlinks=True)
        (copy / "overair.toml").write_text(_with_ports((copy / "overair.toml").read_text()))
    servers: list[ServerProcess] = []
    try:
        for i in range(count):
            servers.append(start_server(f"server-{i}", root / f"server-{i}"))
        yield servers
    finally:
        for server in servers:
            server.stop()
