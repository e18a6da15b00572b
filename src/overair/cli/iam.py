"""`overair iam ...`: users, access keys, groups, roles and policies, through the same
iam/sts API that boto3 and the AWS CLI use (so every change is authorized and audited
like any other call)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from overair.cli.common import DataDirOption, api_client, api_errors, out
from overair.core.errors import MisuseError

iam_app = typer.Typer(help="Operators and their permissions (IAM users, groups, roles, policies).",
                      no_args_is_help=True)
user_app = typer.Typer(help="IAM users and their access keys.", no_args_is_help=True)
group_app = typer.Typer(help="IAM groups.", no_args_is_help=True)
role_app = typer.Typer(help="IAM roles (e.g. the OTA service role).", no_args_is_help=True)
policy_app = typer.Typer(help="Managed policies: overair's built-in ones and your own.", no_args_is_help=True)
for sub, name in ((user_app, "user"), (group_app, "group"), (role_app, "role"), (policy_app, "policy")):
    iam_app.add_typer(sub, name=name)

PolicyOption = Annotated[list[str] | None, typer.Option(
    "--policy", help="A managed policy to attach: an ARN or a name, e.g. OverairOTAOperator (repeatable).")]



def _policy_arn(iam: Any, name_or_arn: str) -> str:
    """ARNs as given; a name is looked up among the built-in and your own policies."""
    if name_or_arn.startswith("arn:"):
        return name_or_arn
    for page in iam.get_paginator("list_policies").paginate():
        for policy in page["Policies"]:
            if policy["PolicyName"] == name_or_arn:
                return str(policy["Arn"])
    raise MisuseError(f"no managed policy named {name_or_arn!r} (see `overair iam policy list`)",
                      code="NoSuchEntity")


def _principal(user: str | None, group: str | None, role: str | None) -> tuple[str, str]:
    named = (("User", user), ("Group", group), ("Role", role))
    given = [(kind, name) for kind, name in named if name]
    if len(given) != 1:
        raise MisuseError("name exactly one of --user, --group, --role")
    return given[0]


# Users ---------------------------------------------------------------------------------
@user_app.command("create")
def user_create(name: str, policy: PolicyOption = None,
                access_key: Annotated[bool, typer.Option(help="Also create an access key.")] = True,
                data_dir: DataDirOption = None) -> None:
    """Create a user, attach policies, and print its access key (the secret only now)."""
    with api_errors():
        iam = api_client(data_dir, "iam")
        arn = iam.create_user(UserName=name)["User"]["Arn"]
        for item in policy or []:
            iam.attach_user_policy(UserName=name, PolicyArn=_policy_arn(iam, item))
        out.print(f"user              {arn}")
        if access_key:
            key = iam.create_access_key(UserName=name)["AccessKey"]
            out.print(f"access key id     {key['AccessKeyId']}")
            out.print(f"secret access key {key['SecretAccessKey']}  (shown once: store it now)")


@user_app.command("list")
def user_list(data_dir: DataDirOption = None) -> None:
    """Users with their groups and attached policies."""
    with api_errors():
        iam = api_client(data_dir, "iam")
        table = Table(title="users")
        for column in ("user", "groups", "policies", "access keys"):
            table.add_column(column)
        for page in iam.get_paginator("list_users").paginate():
            for user in page["Users"]:
                name = user["UserName"]
                groups = [g["GroupName"] for g in iam.list_groups_for_user(UserName=name)["Groups"]]
                attached = [p["PolicyName"] for p in iam.list_attached_user_policies(UserName=name)[
                    "AttachedPolicies"]] + iam.list_user_policies(UserName=name)["PolicyNames"]
                keys = [f"{k['AccessKeyId']} ({k['Status']})"
                        for k in iam.list_access_keys(UserName=name)["AccessKeyMetadata"]]
                table.add_row(name, ", ".join(groups), ", ".join(attached), ", ".join(keys))
    out.print(table)


@user_app.command("delete")
def user_delete(name: str,
                force: Annotated[bool, typer.Option(help="First remove its keys, policies and groups.")]
                = False, data_dir: DataDirOption = None) -> None:
    """Delete a user (AWS refuses while it has keys, policies or groups: use --force)."""
    with api_errors():
        iam = api_client(data_dir, "iam")
        if force:
            for key in iam.list_access_keys(UserName=name)["AccessKeyMetadata"]:
                iam.delete_access_key(UserName=name, AccessKeyId=key["AccessKeyId"])
            for attached in iam.list_attached_user_policies(UserName=name)["AttachedPolicies"]:
                iam.detach_user_policy(UserName=name, PolicyArn=attached["PolicyArn"])
            for inline in iam.list_user_policies(UserName=name)["PolicyNames"]:
                iam.delete_user_policy(UserName=name, PolicyName=inline)
            for group in iam.list_groups_for_user(UserName=name)["Groups"]:
                iam.remove_user_from_group(GroupName=group["GroupName"], UserName=name)
        iam.delete_user(UserName=name)
    out.print(f"deleted user {name}")


@user_app.command("deactivate-key")
def user_deactivate_key(name: str, access_key_id: str, data_dir: DataDirOption = None) -> None:
    """Make an access key inactive: requests signed with it are refused from now on."""
    with api_errors():
        api_client(data_dir, "iam").update_access_key(UserName=name, AccessKeyId=access_key_id,
                                                      Status="Inactive")
    out.print(f"access key {access_key_id} of {name} is inactive")


# Groups --------------------------------------------------------------------------------
@group_app.command("create")
def group_create(name: str, policy: PolicyOption = None,
                 member: Annotated[list[str] | None, typer.Option(help="A user to add (repeatable).")]
                 = None, data_dir: DataDirOption = None) -> None:
    """Create a group, attach policies and add members."""
    with api_errors():
        iam = api_client(data_dir, "iam")
        arn = iam.create_group(GroupName=name)["Group"]["Arn"]
        for item in policy or []:
            iam.attach_group_policy(GroupName=name, PolicyArn=_policy_arn(iam, item))
        for user in member or []:
            iam.add_user_to_group(GroupName=name, UserName=user)
    out.print(arn)


# Roles ---------------------------------------------------------------------------------
@role_app.command("create")
def role_create(
    name: str,
    trust_service: Annotated[str | None, typer.Option(
        help="A service that may assume the role, e.g. iot.amazonaws.com for an OTA service role.")] = None,
    trust_file: Annotated[Path | None, typer.Option(help="A trust policy document (JSON) instead.")] = None,
    policy: PolicyOption = None, data_dir: DataDirOption = None,
) -> None:
    """Create a role with a trust policy and attach policies."""
    with api_errors():
        if (trust_service is None) == (trust_file is None):
            raise MisuseError("give exactly one of --trust-service and --trust-file")
        trust = trust_file.read_text() if trust_file is not None else json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"Service": trust_service},
                           "Action": "sts:AssumeRole"}]})
        iam = api_client(data_dir, "iam")
        arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust)["Role"]["Arn"]
        for item in policy or []:
            iam.attach_role_policy(RoleName=name, PolicyArn=_policy_arn(iam, item))
    out.print(arn)


@role_app.command("list")
def role_list(data_dir: DataDirOption = None) -> None:
    """Roles, who may assume them, and their policies."""
    with api_errors():
        iam = api_client(data_dir, "iam")
        table = Table(title="roles")
        for column in ("role", "trusted", "policies"):
            table.add_column(column)
        for page in iam.get_paginator("list_roles").paginate():
            for role in page["Roles"]:
                statements = role["AssumeRolePolicyDocument"].get("Statement", [])
                principals = [json.dumps(s.get("Principal")) for s in statements]
                name = role["RoleName"]
                attached = [p["PolicyName"] for p in iam.list_attached_role_policies(RoleName=name)[
                    "AttachedPolicies"]] + iam.list_role_policies(RoleName=name)["PolicyNames"]
                table.add_row(name, ", ".join(principals), ", ".join(attached))
    out.print(table)


# Policies ------------------------------------------------------------------------------
@policy_app.command("list")
def policy_list(data_dir: DataDirOption = None) -> None:
    """Built-in and customer managed policies."""
    with api_errors():
        iam = api_client(data_dir, "iam")
        table = Table(title="managed policies")
        for column in ("policy", "arn", "attached to", "description"):
            table.add_column(column)
        for page in iam.get_paginator("list_policies").paginate():
            for policy in page["Policies"]:
                table.add_row(policy["PolicyName"], policy["Arn"], str(policy["AttachmentCount"]),
                              policy.get("Description", ""))
    out.print(table)


@policy_app.command("show")
def policy_show(policy: str, data_dir: DataDirOption = None) -> None:
    """Print a managed policy's default document."""
    with api_errors():
        iam = api_client(data_dir, "iam")
        arn = _policy_arn(iam, policy)
        version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
        document = iam.get_policy_version(PolicyArn=arn, VersionId=version)["PolicyVersion"]["Document"]
    out.print_json(json.dumps(document))


@policy_app.command("create")
def policy_create(name: str,
                  file: Annotated[Path, typer.Option(help="The policy document (JSON).")],
                  data_dir: DataDirOption = None) -> None:
    """Create a customer managed policy from a document."""
    with api_errors():
        arn = api_client(data_dir, "iam").create_policy(PolicyName=name, PolicyDocument=file.read_text())[
            "Policy"]["Arn"]
    out.print(arn)


def _change_attachment(data_dir: Path | None, verb: str, policy: str, user: str | None, group: str | None,
                       role: str | None) -> None:
    """`verb` is attach or detach; exactly one of user, group, role."""
    with api_errors():
        kind, name = _principal(user, group, role)
        iam = api_client(data_dir, "iam")
        arn = _policy_arn(iam, policy)
        getattr(iam, f"{verb}_{kind.lower()}_policy")(**{f"{kind}Name": name, "PolicyArn": arn})
    out.print(f"{verb}ed {arn} {'to' if verb == 'attach' else 'from'} {kind.lower()} {name}")


@policy_app.command("attach")
def policy_attach(policy: str,
                  user: Annotated[str | None, typer.Option()] = None,
                  group: Annotated[str | None, typer.Option()] = None,
                  role: Annotated[str | None, typer.Option()] = None, data_dir: DataDirOption = None) -> None:
    """Attach a managed policy to a user, group or role."""
    _change_attachment(data_dir, "attach", policy, user, group, role)


@policy_app.command("detach")
def policy_detach(policy: str,
                  user: Annotated[str | None, typer.Option()] = None,
                  group: Annotated[str | None, typer.Option()] = None,
                  role: Annotated[str | None, typer.Option()] = None, data_dir: DataDirOption = None) -> None:
    """Detach a managed policy from a user, group or role."""
    _change_attachment(data_dir, "detach", policy, user, group, role)


@iam_app.command("whoami")
def whoami(data_dir: DataDirOption = None) -> None:
    """The identity the data directory's credentials sign as (sts GetCallerIdentity)."""
    with api_errors():
        identity = api_client(data_dir, "sts").get_caller_identity()
    out.print(identity["Arn"])


def register(app: typer.Typer) -> None:
    app.add_typer(iam_app, name="iam")
