"""iot operations of the registry: things, thing groups, certificates, endpoint."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from overair.server.api.contract import ApiRequest, OperationTable, invalid
from overair.server.api.paging import key_after, key_token, page_out, page_size
from overair.server.api.unsupported import refusing
from overair.server.iam.actions import THING_NAME_HEADER
from overair.server.iam.arns import Arns
from overair.server.registry.connectivity import Connectivity
from overair.server.registry.service import Registry, thing_view
from overair.server.storage.schema import ThingGroup

# overair extension: the CLI names the thing (header THING_NAME_HEADER) so the
# certificate's CN can be the thing name (the device agent checks it); AWS clients that
# omit it get a unique CN. Naming a thing needs iot:AttachThingPrincipal on it
# (server/iam/actions.py), as attaching the certificate would.
__all__ = ["THING_NAME_HEADER", "register"]

# Members refused by name (docs/compatibility.md): no billing groups, thing types are not
# managed, thing groups are flat.
_REFUSED = {
    "CreateThing": ("billingGroupName",),
    "UpdateThing": ("thingTypeName", "removeThingType"),
    "CreateThingGroup": ("parentGroupName",),
    "ListThingGroups": ("parentGroup",),
}


def _attribute_filter(params: dict[str, Any]) -> Callable[[dict[str, Any]], bool]:
    """ListThings' attributeName/attributeValue (exact, or prefix) and thingTypeName."""
    name, value = params.get("attributeName"), params.get("attributeValue")
    prefix = bool(params.get("usePrefixAttributeValue"))
    thing_type = params.get("thingTypeName")

    def keep(view: dict[str, Any]) -> bool:
        if thing_type is not None and view.get("thingTypeName") != thing_type:
            return False
        if name is None:
            return True
        actual = view["attributes"].get(name)
        if actual is None:
            return False
        if value is None:
            return True
        return bool(actual.startswith(value)) if prefix else bool(actual == value)

    return keep


def _listed_things(registry: Registry, params: dict[str, Any]) -> dict[str, Any]:
    keep = _attribute_filter(params)
    (after,) = key_after(params) or (None,)
    things, more = registry.page_things(after, page_size(params), lambda t: keep(thing_view(t)),
                                        params.get("thingTypeName"))
    views = [{k: v for k, v in thing_view(t).items() if k != "thingId"}  # not a member of ThingAttribute
             for t in things]
    return page_out("things", views, key_token(things[-1].name) if more else None)


def _certificate_summaries(registry: Registry, params: dict[str, Any]) -> dict[str, Any]:
    # AWS: newest first unless asked otherwise.
    after = key_after(params, token_key="marker", parts=2)
    try:
        start = None if after is None else (float(after[0]), after[1])
    except ValueError:
        raise invalid("marker is not valid") from None
    certs, more = registry.page_certificates(start, page_size(params, limit_key="pageSize"),
                                             bool(params.get("ascendingOrder")))
    summaries = [{"certificateArn": c.arn, "certificateId": c.certificate_id, "status": c.status,
                  "creationDate": c.created_at, "certificateMode": "DEFAULT"} for c in certs]
    token = key_token(repr(certs[-1].created_at), certs[-1].certificate_id) if more else None
    return page_out("certificates", summaries, token, token_key="nextMarker")


def _group_page(groups: list[ThingGroup], more: bool) -> dict[str, Any]:
    return page_out("thingGroups", [{"groupName": g.name, "groupArn": g.arn} for g in groups],
                    key_token(groups[-1].name) if more else None)


def _group_view(group: ThingGroup) -> dict[str, Any]:
    """DescribeThingGroup; a dynamic group (server/fleet/dynamic.py) adds its query and
    AWS's status BUILDING, REBUILDING or ACTIVE."""
    out: dict[str, Any] = {
        "thingGroupName": group.name, "thingGroupId": group.group_id,
        "thingGroupArn": group.arn, "version": group.version, "status": group.status,
        "thingGroupProperties": {"thingGroupDescription": group.description},
        "thingGroupMetadata": {"creationDate": group.created_at}}
    if group.attributes:
        out["thingGroupProperties"]["attributePayload"] = {"attributes": dict(group.attributes)}
    if group.query_string is not None:
        out.update(indexName=group.index_name, queryString=group.query_string,
                   queryVersion=group.query_version)
    return out


def _group_and_thing(arns: Arns, params: dict[str, Any]) -> tuple[str, str]:
    """The group and thing of Add/RemoveThingToThingGroup, by name or by canonical ARN,
    read exactly as the authorizer read them (server/iam/actions.py; threat O1)."""
    group = arns.named("iot", params, "thingGroupName", "thingGroupArn", "iot", "thinggroup")
    thing = arns.named("iot", params, "thingName", "thingArn", "iot", "thing")
    if group is None or thing is None:
        raise invalid("name the thing group (thingGroupName or thingGroupArn) and the thing "
                      "(thingName or thingArn)")
    return group, thing


def register(table: OperationTable, registry: Registry, endpoint: tuple[str, int], arns: Arns) -> None:
    def create_thing(r: ApiRequest) -> dict[str, Any]:
        attributes = (r.params.get("attributePayload") or {}).get("attributes")
        thing = registry.create_thing(r.params["thingName"], attributes, r.params.get("thingTypeName"))
        return {"thingName": thing.name, "thingArn": thing.arn, "thingId": thing.thing_id}

    def describe_thing(r: ApiRequest) -> dict[str, Any]:
        thing = registry.describe_thing(r.params["thingName"])
        return {**thing_view(thing), "defaultClientId": thing.name}

    def list_things(r: ApiRequest) -> dict[str, Any]:
        return _listed_things(registry, r.params)

    def update_thing(r: ApiRequest) -> dict[str, Any]:
        payload = r.params.get("attributePayload") or {}
        registry.update_thing(r.params["thingName"], payload.get("attributes"),
                              bool(payload.get("merge", False)), r.params.get("expectedVersion"))
        return {}

    def delete_thing(r: ApiRequest) -> dict[str, Any]:
        registry.delete_thing(r.params["thingName"], r.params.get("expectedVersion"))
        return {}

    def create_group(r: ApiRequest) -> dict[str, Any]:
        props = r.params.get("thingGroupProperties") or {}
        group = registry.create_group(r.params["thingGroupName"], props.get("thingGroupDescription", ""))
        return {"thingGroupName": group.name, "thingGroupArn": group.arn, "thingGroupId": group.group_id}

    def describe_group(r: ApiRequest) -> dict[str, Any]:
        return _group_view(registry.describe_group(r.params["thingGroupName"]))

    def list_groups(r: ApiRequest) -> dict[str, Any]:
        (after,) = key_after(r.params) or (None,)
        groups, more = registry.page_groups(r.params.get("namePrefixFilter"), after, page_size(r.params))
        return _group_page(groups, more)

    def delete_group(r: ApiRequest) -> dict[str, Any]:
        registry.delete_group(r.params["thingGroupName"])
        return {}

    def add_to_group(r: ApiRequest) -> dict[str, Any]:
        registry.add_to_group(*_group_and_thing(arns, r.params))
        return {}

    def remove_from_group(r: ApiRequest) -> dict[str, Any]:
        registry.remove_from_group(*_group_and_thing(arns, r.params))
        return {}

    def things_in_group(r: ApiRequest) -> dict[str, Any]:
        (after,) = key_after(r.params) or (None,)
        names, more = registry.page_group_members(r.params["thingGroupName"], after, page_size(r.params))
        return page_out("things", names, key_token(names[-1]) if more else None)

    def create_keys_and_certificate(r: ApiRequest) -> dict[str, Any]:
        new = registry.create_keys_and_certificate(bool(r.params.get("setAsActive", False)),
                                                   r.headers.get(THING_NAME_HEADER))
        return {"certificateArn": new.arn, "certificateId": new.certificate_id,
                "certificatePem": new.pem,
                "keyPair": {"PublicKey": new.public_key_pem, "PrivateKey": new.private_key_pem}}

    def describe_certificate(r: ApiRequest) -> dict[str, Any]:
        cert = registry.describe_certificate(r.params["certificateId"])
        return {"certificateDescription": {
            "certificateArn": cert.arn, "certificateId": cert.certificate_id, "status": cert.status,
            "certificatePem": cert.pem, "creationDate": cert.created_at,
            "lastModifiedDate": cert.last_modified_at, "certificateMode": "DEFAULT"}}

    def list_certificates(r: ApiRequest) -> dict[str, Any]:
        return _certificate_summaries(registry, r.params)

    def update_certificate(r: ApiRequest) -> dict[str, Any]:
        registry.update_certificate(r.params["certificateId"], r.params["newStatus"])
        return {}

    def attach(r: ApiRequest) -> dict[str, Any]:
        registry.attach_principal(r.params["thingName"], r.params["principal"])
        return {}

    def detach(r: ApiRequest) -> dict[str, Any]:
        registry.detach_principal(r.params["thingName"], r.params["principal"])
        return {}

    def principals(r: ApiRequest) -> dict[str, Any]:
        (after,) = key_after(r.params) or (None,)
        arns, more = registry.page_thing_principals(r.params["thingName"], after, page_size(r.params))
        return page_out("principals", arns, key_token(arns[-1]) if more else None)

    def describe_endpoint(_r: ApiRequest) -> dict[str, Any]:
        host, port = endpoint
        return {"endpointAddress": host if port == 8883 else f"{host}:{port}"}

    for name, handler in {
        "CreateThing": create_thing, "DescribeThing": describe_thing, "ListThings": list_things,
        "UpdateThing": update_thing, "DeleteThing": delete_thing,
        "CreateThingGroup": create_group, "DescribeThingGroup": describe_group,
        "ListThingGroups": list_groups, "DeleteThingGroup": delete_group,
        "AddThingToThingGroup": add_to_group, "RemoveThingFromThingGroup": remove_from_group,
        "ListThingsInThingGroup": things_in_group,
        "CreateKeysAndCertificate": create_keys_and_certificate,
        "DescribeCertificate": describe_certificate, "ListCertificates": list_certificates,
        "UpdateCertificate": update_certificate, "AttachThingPrincipal": attach,
        "DetachThingPrincipal": detach, "ListThingPrincipals": principals,
        "DescribeEndpoint": describe_endpoint,
    }.items():
        table.register("iot", name, refusing(_REFUSED.get(name, ()), handler))
    _register_inventory(table, registry)


def _register_inventory(table: OperationTable, registry: Registry) -> None:
    """ListThingGroupsForThing and DeleteCertificate (issue 15)."""

    def groups_of_thing(r: ApiRequest) -> dict[str, Any]:
        (after,) = key_after(r.params) or (None,)
        groups, more = registry.page_groups_of_thing(r.params["thingName"], after, page_size(r.params))
        return _group_page(groups, more)

    def delete_certificate(r: ApiRequest) -> dict[str, Any]:
        # forceDelete concerns attached policies (AWS): device certificates here carry none.
        registry.delete_certificate(r.params["certificateId"])
        return {}

    table.register("iot", "ListThingGroupsForThing", groups_of_thing)
    table.register("iot", "DeleteCertificate", delete_certificate)


def register_connectivity(table: OperationTable, registry: Registry, connectivity: Connectivity) -> None:
    """GetThingConnectivityData: connected or not, when that last changed, and AWS's
    disconnectReason (from the broker, registry/connectivity.py)."""

    def connectivity_data(r: ApiRequest) -> dict[str, Any]:
        thing = registry.describe_thing(r.params["thingName"]).name
        row = connectivity.get(thing)
        if row is None:
            return {"thingName": thing, "connected": False}  # never seen connected
        out: dict[str, Any] = {"thingName": thing, "connected": row.connected, "timestamp": row.changed_at}
        if not row.connected and row.disconnect_reason:
            out["disconnectReason"] = row.disconnect_reason
        return out

    table.register("iot", "GetThingConnectivityData", connectivity_data)
