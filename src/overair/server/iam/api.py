"""iam and sts operations (query protocol) over the identity, role and policy stores.

Policy documents go out URL-encoded, as AWS sends them (botocore decodes them into
dicts); they come in as JSON text (URL-encoded text is accepted too).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

from overair.server.api.contract import ApiError, ApiRequest, OperationTable
from overair.server.iam.actions import target_user
from overair.server.iam.arns import Arns
from overair.server.iam.errors import invalid_input
from overair.server.iam.identity import GroupView, IdentityStore, KeyView, UserView
from overair.server.iam.policies import PolicyStore, PolicyView, VersionView
from overair.server.iam.roles import RoleStore, RoleView

T = TypeVar("T")


def _page(items: Sequence[T], params: dict[str, Any]) -> tuple[list[T], dict[str, Any]]:
    """IAM's Marker/MaxItems/IsTruncated paging (opaque offset markers)."""
    size = params.get("MaxItems") or 100
    if not isinstance(size, int) or not 1 <= size <= 1000:
        raise invalid_input("MaxItems must be between 1 and 1000")
    start = 0
    marker = params.get("Marker")
    if marker:
        try:
            start = int(base64.urlsafe_b64decode(marker.encode()).decode())
        except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
            raise invalid_input("Marker is not valid") from exc
    end = start + size
    extra: dict[str, Any] = {"IsTruncated": end < len(items)}
    if end < len(items):
        extra["Marker"] = base64.urlsafe_b64encode(str(end).encode()).decode()
    return list(items[start:end]), extra


def user_out(u: UserView) -> dict[str, Any]:
    return {
        "Path": u.path,
        "UserName": u.name,
        "UserId": u.user_id,
        "Arn": u.arn,
        "CreateDate": u.created_at,
    }


def group_out(g: GroupView) -> dict[str, Any]:
    return {"Path": g.path, "GroupName": g.name, "GroupId": g.group_id, "Arn": g.arn,
            "CreateDate": g.created_at}


def role_out(r: RoleView, trust_policy: str) -> dict[str, Any]:
    """`trust_policy`: as shown (RoleStore.shown_trust_policy), not as stored."""
    out = {"Path": r.path, "RoleName": r.name, "RoleId": r.role_id, "Arn": r.arn, "CreateDate": r.created_at,
           "AssumeRolePolicyDocument": quote(trust_policy), "MaxSessionDuration": r.max_session_duration}
    if r.description:
        out["Description"] = r.description
    return out


def policy_out(p: PolicyView) -> dict[str, Any]:
    out = {"PolicyName": p.name, "PolicyId": p.policy_id, "Arn": p.arn, "Path": p.path,
           "DefaultVersionId": p.default_version, "AttachmentCount": p.attachment_count,
           "IsAttachable": True, "CreateDate": p.created_at, "UpdateDate": p.updated_at}
    if p.description:
        out["Description"] = p.description
    return out


def version_out(v: VersionView) -> dict[str, Any]:
    return {"Document": quote(v.document), "VersionId": v.version_id, "IsDefaultVersion": v.is_default,
            "CreateDate": v.created_at}


def key_out(k: KeyView) -> dict[str, Any]:
    return {"UserName": k.user_name, "AccessKeyId": k.access_key_id, "Status": k.status,
            "CreateDate": k.created_at}


def _paged(key: str, items: Sequence[Any], params: dict[str, Any],
           render: Callable[[Any], Any]) -> dict[str, Any]:
    page, extra = _page(items, params)
    return {key: [render(i) for i in page], **extra}


def _caller_user(r: ApiRequest) -> str:
    """Operations whose UserName defaults to the caller (as AWS); the authorizer checked
    the same user (server/iam/actions.py `target_user`)."""
    return target_user(r.params, r.caller)


Ops = dict[str, Callable[[ApiRequest], dict[str, Any]]]


def register_iam(table: OperationTable, identity: IdentityStore, roles: RoleStore,
                 policies: PolicyStore) -> None:
    ops: Ops = {**_user_ops(identity, policies), **_role_ops(roles, policies), **_policy_ops(policies),
                **_attachment_ops(policies)}
    for name, handler in ops.items():
        table.register("iam", name, handler)


def _user_ops(identity: IdentityStore, policies: PolicyStore) -> Ops:
    # Users and keys
    def create_user(r: ApiRequest) -> dict[str, Any]:
        user = identity.create_user(r.params["UserName"], r.params.get("Path") or "/")
        policies.changed()  # a re-created name is another principal (its unique id)
        return {"User": user_out(user)}

    def get_user(r: ApiRequest) -> dict[str, Any]:
        return {"User": user_out(identity.get_user(_caller_user(r)))}

    def list_users(r: ApiRequest) -> dict[str, Any]:
        return _paged("Users", identity.list_users(r.params.get("PathPrefix") or "/"), r.params, user_out)

    def delete_user(r: ApiRequest) -> dict[str, Any]:
        identity.delete_user(r.params["UserName"])
        policies.changed()
        return {}

    def create_access_key(r: ApiRequest) -> dict[str, Any]:
        key, secret = identity.create_access_key(_caller_user(r))
        return {"AccessKey": {**key_out(key), "SecretAccessKey": secret}}

    def list_access_keys(r: ApiRequest) -> dict[str, Any]:
        user = _caller_user(r)
        return {**_paged("AccessKeyMetadata", identity.list_access_keys(user), r.params, key_out)}

    def update_access_key(r: ApiRequest) -> dict[str, Any]:
        identity.update_access_key(_caller_user(r), r.params["AccessKeyId"], r.params["Status"])
        return {}

    def delete_access_key(r: ApiRequest) -> dict[str, Any]:
        identity.delete_access_key(_caller_user(r), r.params["AccessKeyId"])
        return {}

    # Groups
    def create_group(r: ApiRequest) -> dict[str, Any]:
        return {"Group": group_out(identity.create_group(r.params["GroupName"], r.params.get("Path") or "/"))}

    def get_group(r: ApiRequest) -> dict[str, Any]:
        group, users = identity.get_group(r.params["GroupName"])
        return {"Group": group_out(group), **_paged("Users", users, r.params, user_out)}

    def list_groups(r: ApiRequest) -> dict[str, Any]:
        return _paged("Groups", identity.list_groups(r.params.get("PathPrefix") or "/"), r.params, group_out)

    def list_groups_for_user(r: ApiRequest) -> dict[str, Any]:
        return _paged("Groups", identity.groups_for_user(r.params["UserName"]), r.params, group_out)

    def delete_group(r: ApiRequest) -> dict[str, Any]:
        identity.delete_group(r.params["GroupName"])
        return {}

    def add_user_to_group(r: ApiRequest) -> dict[str, Any]:
        identity.add_user_to_group(r.params["GroupName"], r.params["UserName"])
        policies.changed()
        return {}

    def remove_user_from_group(r: ApiRequest) -> dict[str, Any]:
        identity.remove_user_from_group(r.params["GroupName"], r.params["UserName"])
        policies.changed()
        return {}

    return {
        "CreateUser": create_user,
        "GetUser": get_user,
        "ListUsers": list_users,
        "DeleteUser": delete_user,
        "CreateAccessKey": create_access_key,
        "ListAccessKeys": list_access_keys,
        "UpdateAccessKey": update_access_key,
        "DeleteAccessKey": delete_access_key,
        "CreateGroup": create_group,
        "GetGroup": get_group,
        "ListGroups": list_groups,
        "ListGroupsForUser": list_groups_for_user,
        "DeleteGroup": delete_group,
        "AddUserToGroup": add_user_to_group,
        "RemoveUserFromGroup": remove_user_from_group,
    }


def _role_ops(roles: RoleStore, policies: PolicyStore) -> Ops:
    # Roles
    def create_role(r: ApiRequest) -> dict[str, Any]:
        role = roles.create_role(r.params["RoleName"], r.params["AssumeRolePolicyDocument"],
                                 r.params.get("Path") or "/", r.params.get("Description") or "",
                                 r.params.get("MaxSessionDuration") or 3600)
        policies.changed()  # a re-created name is another principal (its unique id)
        return {"Role": shown(role)}

    def shown(role: RoleView) -> dict[str, Any]:
        return role_out(role, roles.shown_trust_policy(role))

    def get_role(r: ApiRequest) -> dict[str, Any]:
        return {"Role": shown(roles.get_role(r.params["RoleName"]))}

    def list_roles(r: ApiRequest) -> dict[str, Any]:
        return _paged("Roles", roles.list_roles(r.params.get("PathPrefix") or "/"), r.params, shown)

    def update_assume_role_policy(r: ApiRequest) -> dict[str, Any]:
        roles.update_trust_policy(r.params["RoleName"], r.params["PolicyDocument"])
        policies.changed()
        return {}

    def delete_role(r: ApiRequest) -> dict[str, Any]:
        roles.delete_role(r.params["RoleName"])
        policies.changed()
        return {}

    return {
        "CreateRole": create_role,
        "GetRole": get_role,
        "ListRoles": list_roles,
        "UpdateAssumeRolePolicy": update_assume_role_policy,
        "DeleteRole": delete_role,
    }


def _policy_ops(policies: PolicyStore) -> Ops:
    # Managed policies
    def create_policy(r: ApiRequest) -> dict[str, Any]:
        view = policies.create_policy(r.params["PolicyName"], r.params["PolicyDocument"],
                                      r.params.get("Path") or "/", r.params.get("Description") or "")
        return {"Policy": policy_out(view)}

    def get_policy(r: ApiRequest) -> dict[str, Any]:
        return {"Policy": policy_out(policies.get_policy(r.params["PolicyArn"]))}

    def list_policies(r: ApiRequest) -> dict[str, Any]:
        scope = r.params.get("Scope") or "All"
        views = policies.list_policies(scope, bool(r.params.get("OnlyAttached")))
        prefix = r.params.get("PathPrefix") or "/"
        return _paged("Policies", [v for v in views if v.path.startswith(prefix)], r.params, policy_out)

    def delete_policy(r: ApiRequest) -> dict[str, Any]:
        policies.delete_policy(r.params["PolicyArn"])
        return {}

    def create_policy_version(r: ApiRequest) -> dict[str, Any]:
        version = policies.create_version(r.params["PolicyArn"], r.params["PolicyDocument"],
                                          bool(r.params.get("SetAsDefault")))
        return {"PolicyVersion": version_out(version)}

    def get_policy_version(r: ApiRequest) -> dict[str, Any]:
        version = policies.get_version(r.params["PolicyArn"], r.params["VersionId"])
        return {"PolicyVersion": version_out(version)}

    def list_policy_versions(r: ApiRequest) -> dict[str, Any]:
        return _paged("Versions", policies.list_versions(r.params["PolicyArn"]), r.params, version_out)

    def set_default_policy_version(r: ApiRequest) -> dict[str, Any]:
        policies.set_default_version(r.params["PolicyArn"], r.params["VersionId"])
        return {}

    def delete_policy_version(r: ApiRequest) -> dict[str, Any]:
        policies.delete_version(r.params["PolicyArn"], r.params["VersionId"])
        return {}

    def list_entities_for_policy(r: ApiRequest) -> dict[str, Any]:
        entities = policies.entities_for_policy(r.params["PolicyArn"])
        return {
            "PolicyUsers": [{"UserName": n} for k, n in entities if k == "user"],
            "PolicyGroups": [{"GroupName": n} for k, n in entities if k == "group"],
            "PolicyRoles": [{"RoleName": n} for k, n in entities if k == "role"],
            "IsTruncated": False,
        }

    return {
        "CreatePolicy": create_policy,
        "GetPolicy": get_policy,
        "ListPolicies": list_policies,
        "DeletePolicy": delete_policy,
        "CreatePolicyVersion": create_policy_version,
        "GetPolicyVersion": get_policy_version,
        "ListPolicyVersions": list_policy_versions,
        "SetDefaultPolicyVersion": set_default_policy_version,
        "DeletePolicyVersion": delete_policy_version,
        "ListEntitiesForPolicy": list_entities_for_policy,
    }


def _attachment_ops(policies: PolicyStore) -> Ops:
    """Attach/Detach/ListAttached and Put/Get/Delete/List inline, for users, groups, roles."""
    ops: Ops = {}
    for kind, title, member in (("user", "User", "UserName"), ("group", "Group", "GroupName"),
                                ("role", "Role", "RoleName")):
        def attach(r: ApiRequest, kind: str = kind, member: str = member) -> dict[str, Any]:
            policies.attach(kind, r.params[member], r.params["PolicyArn"])
            return {}

        def detach(r: ApiRequest, kind: str = kind, member: str = member) -> dict[str, Any]:
            policies.detach(kind, r.params[member], r.params["PolicyArn"])
            return {}

        def list_attached(r: ApiRequest, kind: str = kind, member: str = member) -> dict[str, Any]:
            views = policies.attached(kind, r.params[member])
            return _paged("AttachedPolicies", views, r.params,
                         lambda v: {"PolicyName": v.name, "PolicyArn": v.arn})

        def put_inline(r: ApiRequest, kind: str = kind, member: str = member) -> dict[str, Any]:
            policies.put_inline(kind, r.params[member], r.params["PolicyName"], r.params["PolicyDocument"])
            return {}

        def get_inline(r: ApiRequest, kind: str = kind, member: str = member) -> dict[str, Any]:
            name = r.params[member]
            document = policies.get_inline(kind, name, r.params["PolicyName"])
            return {member: name, "PolicyName": r.params["PolicyName"], "PolicyDocument": quote(document)}

        def delete_inline(r: ApiRequest, kind: str = kind, member: str = member) -> dict[str, Any]:
            policies.delete_inline(kind, r.params[member], r.params["PolicyName"])
            return {}

        def list_inline(r: ApiRequest, kind: str = kind, member: str = member) -> dict[str, Any]:
            return _paged("PolicyNames", policies.list_inline(kind, r.params[member]), r.params, str)

        ops.update({
            f"Attach{title}Policy": attach, f"Detach{title}Policy": detach,
            f"ListAttached{title}Policies": list_attached, f"Put{title}Policy": put_inline,
            f"Get{title}Policy": get_inline, f"Delete{title}Policy": delete_inline,
            f"List{title}Policies": list_inline,
        })
    return ops


# AssumeRole members overair refuses rather than ignores.
SESSION_OPTIONS_NOT_SUPPORTED = frozenset({"Policy", "PolicyArns", "Tags", "TransitiveTagKeys",
                                           "SerialNumber", "TokenCode", "SourceIdentity", "ProvidedContexts"})


def register_sts(table: OperationTable, identity: IdentityStore, roles: RoleStore, arns: Arns) -> None:
    def get_caller_identity(r: ApiRequest) -> dict[str, Any]:
        if r.caller.principal_kind == "role":
            role = roles.get_role(r.caller.principal_name)
            session = r.caller.principal_arn.rsplit("/", 1)[-1]
            user_id = f"{role.role_id}:{session}"
        else:
            user_id = identity.get_user(r.caller.principal_name).user_id
        return {"UserId": user_id, "Account": arns.scope.account, "Arn": r.caller.principal_arn}

    def assume_role(r: ApiRequest) -> dict[str, Any]:
        # The edge has authorized sts:AssumeRole on this canonical role ARN, by the
        # caller's policies and the role's trust policy (with sts:ExternalId), before
        # this runs; the role acted on is the one that ARN names, path included.
        unsupported = sorted(SESSION_OPTIONS_NOT_SUPPORTED & {k for k, v in r.params.items() if v})
        if unsupported:
            # A session policy narrows the session; ignoring it would grant more than asked.
            raise ApiError("ValidationError", f"AssumeRole with {', '.join(unsupported)} is not supported "
                           "by overair (sessions carry the role's policies only)", 400)
        role = roles.role_by_arn(arns.require("sts", "RoleArn", r.params["RoleArn"], "iam", ("role",)))
        if role is None:
            # As AWS: a role that does not exist is a refusal, not an existence oracle.
            raise ApiError("AccessDenied", f"User: {r.caller.principal_arn} is not authorized to perform: "
                           f"sts:AssumeRole on resource: {r.params['RoleArn']}", 403)
        creds = roles.start_session(role, r.params["RoleSessionName"], r.params.get("DurationSeconds"))
        return {
            "Credentials": {"AccessKeyId": creds.access_key_id, "SecretAccessKey": creds.secret_access_key,
                            "SessionToken": creds.session_token, "Expiration": creds.expires_at},
            "AssumedRoleUser": {"AssumedRoleId": creds.assumed_role_id, "Arn": creds.arn},
        }

    table.register("sts", "GetCallerIdentity", get_caller_identity)
    table.register("sts", "AssumeRole", assume_role)
