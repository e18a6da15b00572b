"""The `overair` CLI as a second operator uses it (issue 16, item 1): from another
machine, as an IAM user of an AWS profile (no data directory), the day-two commands
through the real server: wrap a binary, roll it out to two agents, watch it, see the
fleet, retry the failed device, cancel; and what a user without the rights, or without
an endpoint, is told. Each command runs as its own process, as a user types it."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from overair.core.versions import Version
from overair.server.bootstrap import DEV_PROFILE
from overair.sim.firmware import make_firmware
from overair.sim.fleet import Fleet
from tests.server_harness import RunningServer

OVERAIR = str(Path(sys.executable).parent / "overair")
V1 = Version(1, 0, 0)
SIZE = 24 * 1024


@pytest.fixture(scope="module")
def home(srv: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home directory with AWS config files for two users: `ops` (OTA operator, read-only
    and the upload it needs) and `nobody` (no policy)."""
    root = tmp_path_factory.mktemp("home")
    iam = srv.client("iam")
    keys = {}
    for user, policies in (("ops", ["OverairOTAOperator", "OverairReadOnly"]), ("nobody", [])):
        iam.create_user(UserName=user)
        for policy in policies:
            iam.attach_user_policy(UserName=user, PolicyArn=f"arn:aws:iam::aws:policy/{policy}")
        keys[user] = iam.create_access_key(UserName=user)["AccessKey"]
    iam.put_user_policy(UserName="ops", PolicyName="upload", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["s3:PutObject", "s3:HeadBucket"],
                       "Resource": "arn:aws:s3:::firmware/*"},
                      {"Effect": "Allow", "Action": "iot:CancelJob", "Resource": "*"}]}))
    aws = root / ".aws"
    aws.mkdir()
    (aws / "credentials").write_text("".join(
        f"[{user}]\naws_access_key_id = {key['AccessKeyId']}\n"
        f"aws_secret_access_key = {key['SecretAccessKey']}\n" for user, key in keys.items()))
    endpoint = srv.clients.endpoint_url
    (aws / "config").write_text("".join(
        f"[profile {user}]\nregion = {srv.settings.region}\nendpoint_url = {endpoint}\n" for user in keys))
    return root


def overair(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OVERAIR_"))}
    env.update(HOME=str(home), AWS_CONFIG_FILE=str(home / ".aws" / "config"),
               AWS_SHARED_CREDENTIALS_FILE=str(home / ".aws" / "credentials"), COLUMNS="200")
    return subprocess.run([OVERAIR, *args], capture_output=True, text=True, timeout=timeout, check=False,
                          env=env, cwd=home)


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _agents(srv: RunningServer, root: Path, names: list[str]) -> list[Path]:
    factory = root / "factory.bin"
    factory.write_bytes(make_firmware(V1, SIZE, seed="cli-factory"))
    return [srv.provision(name, root / name, group="cli-fleet", factory_image=factory) for name in names]


def test_an_iam_user_rolls_out_a_wrapped_binary_and_follows_it_from_another_machine(
    srv: RunningServer, home: Path, tmp_path: Path
) -> None:
    srv.client("iot").create_thing_group(thingGroupName="cli-fleet")
    good, bad = _agents(srv, tmp_path, ["cli-good", "cli-bad"])
    binary = tmp_path / "app.bin"
    binary.write_bytes(os.urandom(20_000))
    image = tmp_path / "app-1.1.0.img"
    wrapped = overair(home, "image", "wrap", str(binary), "--version", "1.1.0", "--security-counter", "2",
                      "--out", str(image))
    assert wrapped.returncode == 0, wrapped.stderr
    assert as_json(overair(home, "image", "show", str(image), "--json")) == {
        "version": "1.1.0", "securityCounter": 2, "payloadBytes": 20_000}

    with Fleet([good]) as healthy, Fleet([bad], self_test_hook=lambda _v: "watchdog fired") as failing:
        assert healthy.wait(lambda s: all(x.connected for x in s.values()), 30)
        assert failing.wait(lambda s: all(x.connected for x in s.values()), 30)
        created = as_json(overair(home, "--profile", "ops", "ota", "create", "cli-1", "--image", str(image),
                                  "--group", "cli-fleet", "--signing-profile", DEV_PROFILE, "--json"))
        assert (created["status"], created["version"]) == ("CREATE_COMPLETE", "1.1.0")
        # `watch` follows it to the end; it exits 1 since one device failed.
        watched = overair(home, "--profile", "ops", "ota", "watch", "cli-1", "--interval", "0.5")
        assert watched.returncode == 1, watched.stderr
        status = as_json(overair(home, "--profile", "ops", "ota", "status", "cli-1", "--json"))
        assert {k: v for k, v in status["counts"].items() if v} == {"SUCCEEDED": 1, "FAILED": 1}
        (failed,) = status["devices"]
        assert (failed["thing"], failed["status"]) == ("cli-bad", "FAILED")
        assert "watchdog fired" in failed["detail"]  # the device's own reason

        fleet = {row["thing"]: row for row in as_json(overair(
            home, "--profile", "ops", "fleet", "list", "--group", "cli-fleet", "--jobs", "--json"))}
        assert fleet["cli-good"]["lastJob"] == {"jobId": "AFR_OTA-cli-1", "status": "SUCCEEDED"}
        assert fleet["cli-good"]["profile"] == "overair-agent"
        shown = as_json(overair(home, "--profile", "ops", "thing", "show", "cli-bad", "--json"))
        assert [e["status"] for e in shown["executions"]] == ["FAILED"]
        assert len(shown["certificates"]) == 1

        retried = overair(home, "--profile", "ops", "ota", "retry-failed", "cli-1")
        assert retried.returncode == 0, retried.stderr
        info = srv.client("iot").get_ota_update(otaUpdateId="cli-1-retry-1")["otaUpdateInfo"]
        assert [t.rpartition("/")[2] for t in info["targets"]] == ["cli-bad"]


def test_cancel_stops_a_rollout_to_offline_devices(srv: RunningServer, home: Path, tmp_path: Path) -> None:
    srv.client("iot").create_thing(thingName="cli-offline")
    image = tmp_path / "app.img"
    overair(home, "image", "wrap", str(_payload(tmp_path)), "--version", "2.0.0", "--out", str(image))
    created = as_json(overair(home, "--profile", "ops", "ota", "create", "cli-2", "--image", str(image),
                              "--thing", "cli-offline", "--signing-profile", DEV_PROFILE, "--json"))
    assert created["status"] == "CREATE_COMPLETE"
    canceled = overair(home, "--profile", "ops", "ota", "cancel", "cli-2", "--comment", "wrong build")
    assert canceled.returncode == 0, canceled.stderr
    job = srv.client("iot").describe_job(jobId="AFR_OTA-cli-2")["job"]
    assert (job["status"], job["comment"]) == ("CANCELED", "wrong build")


def _payload(root: Path) -> Path:
    path = root / "payload.bin"
    path.write_bytes(b"firmware" * 1000)
    return path


def test_a_user_without_the_rights_is_told_and_nothing_changes(srv: RunningServer, home: Path) -> None:
    before = srv.client("iot").list_ota_updates()["otaUpdates"]
    refused = overair(home, "--profile", "nobody", "ota", "list")
    assert refused.returncode == 2
    assert "AccessDenied" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert srv.client("iot").list_ota_updates()["otaUpdates"] == before


def test_without_an_endpoint_the_cli_never_calls_aws(home: Path, tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("[profile lost]\nregion = us-east-1\n")
    credentials = tmp_path / "credentials"
    credentials.write_text("[lost]\naws_access_key_id = AKIAX\naws_secret_access_key = x\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OVERAIR_"))}
    env.update(HOME=str(tmp_path), AWS_CONFIG_FILE=str(config), AWS_SHARED_CREDENTIALS_FILE=str(credentials))
    result = subprocess.run([OVERAIR, "--profile", "lost", "fleet", "list"], capture_output=True, text=True,
                            env=env, timeout=60, check=False)
    assert result.returncode == 2
    assert "NoEndpoint" in result.stderr
    assert "--endpoint-url" in result.stderr
    unknown = overair(home, "--profile", "nope", "fleet", "list")
    assert unknown.returncode == 2
    assert "ProfileNotFound" in unknown.stderr


def test_signing_root_and_signer_are_production_shaped_and_importable(
    srv: RunningServer, home: Path, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    assert overair(home, "signing", "create-root", "--out", str(keys), "--name", "ACME firmware root"
                   ).returncode == 0
    made = overair(home, "signing", "create-signer", "--root-cert", str(keys / "root.pem"), "--root-key",
                   str(keys / "root.key"), "--out", str(keys), "--name", "ACME signer 2026")
    assert made.returncode == 0, made.stderr
    for key in ("root.key", "signer.key"):
        assert stat.S_IMODE((keys / key).stat().st_mode) == 0o600
    signer = x509.load_pem_x509_certificate((keys / "signer.pem").read_bytes())
    usage = signer.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert not usage.key_cert_sign
    assert signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.CODE_SIGNING])
    again = overair(home, "signing", "create-root", "--out", str(keys))
    assert again.returncode != 0
    assert "refusing to overwrite" in again.stderr
    # The operator imports it into the certificate store from their own machine: refused
    # while the server does not trust the new root (the message names the file) ...
    def import_cert() -> subprocess.CompletedProcess[str]:
        return overair(home, "--profile", "ops", "signing", "import-cert", "--cert", str(keys / "signer.pem"),
                       "--key", str(keys / "signer.key"))

    untrusted = import_cert()
    assert untrusted.returncode == 2
    assert "UntrustedChain" in untrusted.stderr
    assert "code-signing-root.pem" in untrusted.stderr
    # ... and accepted once the server's administrator added it to the trusted roots.
    roots = srv.settings.paths.code_signing_root
    roots.write_bytes(roots.read_bytes() + (keys / "root.pem").read_bytes())
    imported = import_cert()
    assert imported.returncode == 0, imported.stderr
    assert "arn:aws:acm:" in imported.stdout
