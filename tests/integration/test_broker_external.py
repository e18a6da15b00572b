"""`serve --broker`: an external broker is used only if it enforces overair's device
security (threats N4, L1; finding: an external broker without overair's ACL let one
device read another's jobs, kept revoked devices connected, and bundles pointed at an
unused local port).

A second, real Mosquitto is started by each test: configured with what `overair
broker-config` prints (what docs/security.md says), the server starts, its bundles name
that broker, devices are isolated and a revoked one is cut off; configured without
overair's ACL, CRL or certificate-subject identities, `overair serve` refuses to run and
says why (the refusal is checked on `Server.run`, which `overair serve` runs and whose
error it prints as `error (BrokerNotEnforcing): …`).
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import time
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from overair.cli.client import ApiClients
from overair.cli.main import app as overair_cli
from overair.cli.provisioning import provision_thing
from overair.core.errors import OverairError
from overair.server.app import ServerThread
from overair.server.bootstrap import initialize
from overair.server.settings import load_settings
from tests.e2e.test_n4_identity import Client
from tests.server_harness import MOSQUITTO, RunningServer, free_port

WAIT = 10.0


class ExternalBroker:
    def __init__(self, data_dir: Path, *, drop: tuple[str, ...] = (),
                 replace: dict[str, str] | None = None) -> None:
        self.port = free_port()
        result = CliRunner().invoke(overair_cli, ["broker-config", "--data-dir", str(data_dir),
                                                  "--listen-port", str(self.port)])
        assert result.exit_code == 0, result.output
        lines = [line for line in result.stdout.splitlines()
                 if not any(line.startswith(setting) for setting in drop)]
        lines = [(replace or {}).get(line, line) for line in lines]
        if os.geteuid() == 0:
            lines.insert(0, "user root")  # else Mosquitto drops to `mosquitto`, who cannot read the keys
        self.config = data_dir / "external-mosquitto.conf"
        self.config.write_text("\n".join(["persistence false", "log_dest stderr", *lines]) + "\n")
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + WAIT
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                assert self.process.poll() is None, "mosquitto did not start"
                assert time.monotonic() < deadline, "mosquitto did not listen"
                time.sleep(0.05)

    def configure_overair(self, data_dir: Path) -> None:
        config = data_dir / "overair.toml"
        config.write_text(config.read_text() + f'broker_url = "mqtts://127.0.0.1:{self.port}"\n'
                          f'broker_reload_command = ["kill", "-HUP", "{self.process.pid}"]\n')

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    initialize(root, http_port=free_port(), mqtt_port=free_port(), download_port=free_port())
    return root


def test_l1_n4_external_broker_configured_as_documented_is_used_and_enforces_device_security(
        data_dir: Path, tmp_path: Path) -> None:
    broker = ExternalBroker(data_dir)
    broker.configure_overair(data_dir)
    settings = load_settings(data_dir)
    thread = ServerThread(settings)
    try:
        thread.start()
        srv = RunningServer(settings, thread, ApiClients.from_data_dir(data_dir))
        iot = srv.client("iot")
        paths = settings.paths
        bundles = {}
        for thing in ("ext-a", "ext-b"):
            config = provision_thing(iot, thing, tmp_path / thing,
                                     fleet_ca_pem=paths.fleet_ca_cert.read_bytes(),
                                     code_signing_roots_pem=paths.code_signing_root.read_bytes())
            mqtt = tomllib.loads(config.read_text())["mqtt"]
            assert (mqtt["host"], mqtt["port"]) == ("127.0.0.1", broker.port)  # the broker devices use
            bundles[thing] = config.parent
        assert srv.server.broker_health() == (True, {"broker": "up", "brokerState": "external"})

        a, b = (_external_client(srv, bundles[thing], thing, broker.port) for thing in ("ext-a", "ext-b"))
        try:
            a.subscribe("$aws/things/ext-a/jobs/#")
            b.subscribe("$aws/things/ext-a/jobs/#")  # not its thing
            iot.create_job(jobId="ext-job", targets=[iot.describe_thing(thingName="ext-a")["thingArn"]],
                           document='{"operation":"x"}')
            a.wait_for("$aws/things/ext-a/jobs/notify-next", "ext-job")
            b.echo()
            assert b.things_messages() == []
            (principal,) = iot.list_thing_principals(thingName="ext-a")["principals"]
            iot.update_certificate(certificateId=principal.rpartition("/")[2], newStatus="REVOKED")
            assert a.gone.wait(WAIT), "the revoked device is still connected to the external broker"
            with pytest.raises((AssertionError, ssl.SSLError, OSError)):
                _external_client(srv, bundles["ext-a"], "ext-a-again", broker.port).close()
        finally:
            a.close()
            b.close()
    finally:
        thread.stop()
        broker.stop()


def _external_client(srv: RunningServer, bundle: Path, client_id: str, port: int) -> Client:
    return Client(srv, bundle / "device.crt", bundle / "device.key", client_id, port=port)


@pytest.mark.parametrize(("case", "drop", "replace", "says"), [
    ("no ACL, no CRL", ("acl_file", "crlfile"), {}, "does not enforce overair's ACL"),
    ("no CRL", ("crlfile",), {}, "accepted a certificate overair's CRL revokes"),
    ("CN as identity", (), {"use_subject_as_username true": "use_identity_as_username true"},
     "does not enforce overair's ACL"),
    ("client ids of the clients' choosing", ("use_username_as_clientid",), {},
     "does not make the certificate subject the client id"),
])
def test_l1_n4_serve_refuses_an_external_broker_that_does_not_enforce_device_security(
        data_dir: Path, case: str, drop: tuple[str, ...], replace: dict[str, str], says: str) -> None:
    broker = ExternalBroker(data_dir, drop=drop, replace=replace)
    broker.configure_overair(data_dir)
    thread = ServerThread(load_settings(data_dir))  # what `overair serve` runs
    try:
        with pytest.raises(OverairError) as refused:
            thread.start()
    finally:
        thread.stop()
        broker.stop()
    assert refused.value.code == "BrokerNotEnforcing", (case, refused.value)
    assert says in refused.value.message
    assert "docs/security.md" in refused.value.message
