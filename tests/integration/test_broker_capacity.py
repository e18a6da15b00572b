"""Connection capacity (issue 20, item 4): `overair serve` started under a low soft
open-file limit raises it for itself and its broker, so more devices connect than the
limit it was started with allows, and /health reports connections against capacity."""

from __future__ import annotations

import json
import resource
import socket
import ssl
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from overair.server.bootstrap import initialize
from tests.server_harness import free_port

OVERAIR = str(Path(sys.executable).parent / "overair")
START_SOFT_LIMIT = 256  # as a 1,024 default, scaled down: the test stays quick
DEVICES = 300  # more connections than START_SOFT_LIMIT allows


def _connect_packet(client_id: str) -> bytes:
    ident = client_id.encode()
    variable = b"\x00\x04MQTT" + bytes([4, 0x02, 0, 60]) + len(ident).to_bytes(2, "big") + ident
    return bytes([0x10, len(variable)]) + variable


def _low_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (START_SOFT_LIMIT, hard))


def _health(port: int) -> dict[str, object]:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as answer:
                body: dict[str, object] = json.loads(answer.read())
                return body
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Path]:
    data = tmp_path / "data"
    initialize(data, http_port=free_port(), mqtt_port=free_port(), download_port=free_port())
    # Its log goes to a file: a pipe nobody reads fills up and stops the server.
    with (tmp_path / "serve.log").open("w") as log:
        process = subprocess.Popen([OVERAIR, "serve", "--data-dir", str(data)], stdout=log,
                                   stderr=subprocess.STDOUT, preexec_fn=_low_limit)  # noqa: PLW1509
        try:
            yield data
        finally:
            process.terminate()
            process.wait(timeout=30)


def test_devices_beyond_the_starting_open_file_limit_connect_and_health_counts_them(
        server: Path, tmp_path: Path) -> None:
    config = tomllib.loads((server / "overair.toml").read_text())
    _health(config["http_port"])
    created = subprocess.run([OVERAIR, "thing", "create", "dev-1", "--out", str(tmp_path / "dev-1"),
                              "--data-dir", str(server)], capture_output=True, text=True, timeout=60,
                             check=False)
    assert created.returncode == 0, created.stderr
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * DEVICES)), hard))  # for this side
    context = ssl.create_default_context(cafile=str(server / "pki" / "fleet-ca.pem"))
    context.check_hostname = False
    context.load_cert_chain(str(tmp_path / "dev-1" / "device.crt"), str(tmp_path / "dev-1" / "device.key"))
    held: list[ssl.SSLSocket] = []
    try:
        for i in range(DEVICES):  # one certificate may hold many connections, each its own id
            raw = socket.create_connection(("127.0.0.1", config["mqtt_port"]), timeout=10)
            tls = context.wrap_socket(raw)
            held.append(tls)
            tls.sendall(_connect_packet(f"dev-1#{i}"))
            assert tls.recv(4) == bytes([0x20, 2, 0, 0]), f"connection {i} was refused"
        health = _health(config["http_port"])
        assert isinstance(health["brokerConnections"], int)
        assert health["brokerConnections"] >= DEVICES
        assert isinstance(health["brokerCapacity"], int)
        assert health["brokerCapacity"] > DEVICES
    finally:
        for tls in held:
            tls.close()
