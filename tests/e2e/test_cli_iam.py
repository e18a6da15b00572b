"""`overair iam ...` against a running server: the README's commands, and a user the CLI
creates really has exactly the permissions it was given."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from typer.testing import CliRunner

from overair.cli.client import ApiClients
from overair.cli.main import app
from tests.server_harness import RunningServer

runner = CliRunner()


def _run(srv: RunningServer, *args: str) -> str:
    data_dir = str(srv.settings.paths.root)
    result = runner.invoke(app, [*args, "--data-dir", data_dir])
    assert result.exit_code == 0, result.output
    return result.output


def test_cli_creates_an_operator_whose_key_works_with_exactly_its_policy(srv: RunningServer) -> None:
    output = _run(srv, "iam", "user", "create", "cli-alice", "--policy", "OverairOTAOperator")
    key_id = re.search(r"access key id\s+(\S+)", output)
    secret = re.search(r"secret access key\s+(\S+)", output)
    assert key_id is not None
    assert secret is not None
    alice = ApiClients(srv.endpoint, key_id.group(1), secret.group(1), srv.clients.region)
    alice.client("iot").list_things()  # in the seed's list
    with pytest.raises(ClientError) as denied:
        alice.client("iot").create_thing(thingName="by-alice")  # not in it
    assert denied.value.response["Error"]["Code"] == "AccessDeniedException"
    assert "cli-alice" in _run(srv, "iam", "user", "list")
    assert "arn:aws:iam::" in _run(srv, "iam", "whoami")


def test_cli_roles_groups_and_policies(srv: RunningServer, tmp_path: Path) -> None:
    arn = _run(srv, "iam", "role", "create", "cli-ota-role", "--trust-service", "iot.amazonaws.com",
               "--policy", "AWSIoTOTAUpdate").strip()
    assert arn.endswith(":role/cli-ota-role")
    assert "cli-ota-role" in _run(srv, "iam", "role", "list")
    _run(srv, "iam", "user", "create", "cli-bob", "--no-access-key")
    _run(srv, "iam", "group", "create", "cli-auditors", "--policy", "OverairReadOnly", "--member", "cli-bob")
    document = tmp_path / "things.json"
    document.write_text('{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", '
                        '"Action": "iot:ListThings", "Resource": "*"}]}')
    policy_arn = _run(srv, "iam", "policy", "create", "CliThings", "--file", str(document)).strip()
    _run(srv, "iam", "policy", "attach", "CliThings", "--user", "cli-bob")
    assert '"iot:ListThings"' in _run(srv, "iam", "policy", "show", policy_arn)
    iam = srv.client("iam")
    attached = iam.list_attached_user_policies(UserName="cli-bob")["AttachedPolicies"]
    assert [p["PolicyName"] for p in attached] == ["CliThings"]
    _run(srv, "iam", "policy", "detach", "CliThings", "--user", "cli-bob")
    data_dir = str(srv.settings.paths.root)
    failed = runner.invoke(app, ["iam", "user", "delete", "cli-bob", "--data-dir", data_dir])
    assert failed.exit_code == 2
    assert "DeleteConflict" in failed.output  # still in a group: refused, with AWS's code
    _run(srv, "iam", "user", "delete", "cli-bob", "--force")
    with pytest.raises(ClientError):
        iam.get_user(UserName="cli-bob")
