"""The operator's first commands as a user types them: `overair init`, `overair serve`
(a real process with its Mosquitto child) and `overair thing create`."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from overair.agent.config import load_config
from overair.core.versions import Version
from overair.server.bootstrap import initialize
from overair.sim.firmware import make_firmware
from tests.postgres_harness import PostgresCluster
from tests.server_harness import free_port

OVERAIR = str(Path(sys.executable).parent / "overair")


def _run(*args: str, timeout: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([OVERAIR, *args], capture_output=True, text=True, timeout=timeout, check=False,
                          cwd=cwd)


def _init(data_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return _run("init", "--data-dir", str(data_dir), "--http-port", str(free_port()),
                "--mqtt-port", str(free_port()), "--download-port", str(free_port()), *extra)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_creates_identities_keys_and_credentials_and_keeps_keys_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = _init(data, "--hostname", "ota.example.com")
    assert result.returncode == 0, result.stderr
    keys = [p for p in data.rglob("*") if p.is_file() and (p.suffix == ".key" or "key" in p.name)]
    assert keys
    for key in keys:
        assert _mode(key) & 0o077 == 0, f"{key} is readable by others"
    credentials = (data / "credentials").read_text()
    assert _mode(data / "credentials") == 0o600
    assert "[default]" in credentials
    assert "aws_access_key_id" in credentials
    assert "aws_secret_access_key" in credentials

    broker = x509.load_pem_x509_certificate((data / "pki" / "broker.pem").read_bytes())
    names = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "ota.example.com"} <= set(names.get_values_for_type(x509.DNSName))
    assert "127.0.0.1" in {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}

    signing_root = x509.load_pem_x509_certificate((data / "pki" / "code-signing-root.pem").read_bytes())
    assert "DEVELOPMENT ONLY" in signing_root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert _init(data).returncode == 0
    before = (data / "credentials").read_text()
    again = _init(data)
    assert again.returncode != 0
    assert "--force" in again.stderr
    assert (data / "credentials").read_text() == before  # nothing was touched
    forced = _init(data, "--force")
    assert forced.returncode == 0, forced.stderr
    assert (data / "credentials").read_text() != before


def test_init_refuses_a_database_that_is_not_empty_and_leaves_nothing_behind(tmp_path: Path) -> None:
    assert _init(tmp_path / "first").returncode == 0
    # A second installation pointed at the first one's database (as with a shared
    # PostgreSQL database that is already in use).
    taken = f"sqlite:///{tmp_path / 'first' / 'overair.db'}"
    second = tmp_path / "second"
    refused = _init(second, "--database-url", taken)
    assert refused.returncode == 2
    assert "DatabaseNotEmpty" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not second.exists() or not any(second.iterdir())  # no half-made data directory
    assert _init(second).returncode == 0  # and the directory is still usable


def test_init_keeps_a_database_password_out_of_overair_toml(
    tmp_path: Path, postgres: PostgresCluster
) -> None:
    url = postgres.new_database().replace("@", ":n0t-in-the-toml@", 1)  # the cluster trusts any password
    data = tmp_path / "data"
    done = _init(data, "--database-url", url)
    assert done.returncode == 0, done.stderr
    assert "n0t-in-the-toml" not in (data / "overair.toml").read_text()
    assert (data / "database-password").read_text() == "n0t-in-the-toml"
    assert _mode(data / "database-password") == 0o600
    status = _run("db", "status", "--data-dir", str(data))
    assert status.returncode == 0, status.stderr
    assert "up to date" in status.stdout


def test_overair_without_the_server_extra_says_what_to_install(tmp_path: Path) -> None:
    # `pip install overair` alone: the server's packages are missing.
    script = ("import sys; sys.modules['sqlalchemy'] = None; sys.modules['botocore'] = None\n"
              "from overair.cli.main import main\n"
              f"sys.argv = ['overair', 'init', '--data-dir', {str(tmp_path / 'data')!r}]\nmain()\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 2
    assert "MissingServerExtra" in done.stderr
    assert "overair[server]" in done.stderr
    assert "Traceback" not in done.stderr


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """An initialised data directory (in-process: `overair init` itself is tested above)."""
    data = tmp_path / "data"
    initialize(data, http_port=free_port(), mqtt_port=free_port(), download_port=free_port())
    return data


@pytest.fixture
def serving(data_dir: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    process = subprocess.Popen([OVERAIR, "serve", "--data-dir", str(data_dir)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        yield process, data_dir
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def _health(port: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                return int(response.status)
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    raise AssertionError("the server never answered /health")


def test_serve_runs_the_broker_answers_health_and_sigterm_stops_everything(
        serving: tuple[subprocess.Popen[str], Path], tmp_path: Path) -> None:
    process, data = serving
    config = tomllib.loads((data / "overair.toml").read_text())
    assert _health(config["http_port"]) == 200
    (broker,) = [pid for pid in _children(process.pid) if "mosquitto" in
                 (Path("/proc") / str(pid) / "cmdline").read_bytes().decode(errors="replace")]
    with socket.create_connection(("127.0.0.1", config["mqtt_port"]), timeout=5):
        pass  # the broker listens

    created = _run("thing", "create", "dev-1", "--out", str(tmp_path / "dev-1"), "--data-dir", str(data))
    assert created.returncode == 0, created.stderr
    bundle = tmp_path / "dev-1"
    agent = tomllib.loads((bundle / "agent.toml").read_text())
    assert agent["thing_name"] == "dev-1"
    assert agent["mqtt"]["port"] == config["mqtt_port"]
    cert = x509.load_pem_x509_certificate((bundle / "device.crt").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev-1"
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usages
    assert _mode(bundle / "device.key") == 0o600
    duplicate = _run("thing", "create", "dev-1", "--out", str(tmp_path / "again"), "--data-dir", str(data))
    assert duplicate.returncode == 2
    assert "ResourceAlreadyExists" in duplicate.stderr
    assert "Traceback" not in duplicate.stderr

    # A factory image named relative to where the operator stands is copied into the
    # bundle, so the agent (which resolves paths against its bundle) finds it.
    image = make_firmware(Version(1, 0, 0), 8192, seed="factory")
    (tmp_path / "factory.bin").write_bytes(image)
    with_image = _run("thing", "create", "dev-2", "--out", "dev-2", "--factory-image", "factory.bin",
                      "--data-dir", str(data), cwd=tmp_path)
    assert with_image.returncode == 0, with_image.stderr
    storage = load_config(tmp_path / "dev-2" / "agent.toml").storage
    assert storage.factory_image == (tmp_path / "dev-2" / "factory.bin").resolve()
    assert storage.factory_image.read_bytes() == image
    # A missing image stops the command before anything is created.
    missing = _run("thing", "create", "dev-3", "--out", str(tmp_path / "dev-3"), "--factory-image",
                   str(tmp_path / "nope.bin"), "--data-dir", str(data))
    assert missing.returncode == 2
    assert "FileError" in missing.stderr
    assert "nope.bin" in missing.stderr
    assert "Traceback" not in missing.stderr
    assert not (tmp_path / "dev-3").exists()

    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "overair stopped" in output
    assert not _alive(broker)


def test_serve_reports_a_port_in_use(data_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run("serve", "--data-dir", str(data_dir), "--mqtt-port", str(port))
    assert result.returncode == 2
    assert f"port {port}" in result.stderr
    assert "already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_reports_a_missing_mosquitto(data_dir: Path) -> None:
    config = data_dir / "overair.toml"
    config.write_text(config.read_text() + 'mosquitto_binary = "/nonexistent/mosquitto"\n')
    result = _run("serve", "--data-dir", str(data_dir))
    assert result.returncode == 2
    assert "not installed" in result.stderr
    assert "apt-get install mosquitto" in result.stderr


def test_serve_refuses_plain_http_off_loopback(data_dir: Path) -> None:
    result = _run("serve", "--data-dir", str(data_dir), "--http-host", "0.0.0.0")
    assert result.returncode == 2
    assert "needs TLS" in result.stderr


def test_serve_without_init_says_what_to_do(tmp_path: Path) -> None:
    result = _run("serve", "--data-dir", str(tmp_path / "nothing"))
    assert result.returncode == 2
    assert "overair init" in result.stderr


def test_key_files_are_not_world_readable_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        assert _init(tmp_path / "data").returncode == 0
    finally:
        os.umask(old)
    for path in (tmp_path / "data").rglob("*"):
        if path.is_file() and ("key" in path.name or path.name == "credentials"):
            assert _mode(path) & 0o077 == 0, path
