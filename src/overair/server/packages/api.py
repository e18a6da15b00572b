"""iot operations of the Software Package Catalog: Create/Get/List/Update/DeletePackage,
Create/Get/List/Update/DeletePackageVersion, Get/UpdatePackageConfiguration. IAM is
checked before these run on the package's and the version's ARNs
(`arn:aws:iot:<region>:<account>:package/<name>[/version/<version>]`, iam/actions.py)."""

from __future__ import annotations

from typing import Any

from overair.server.api.contract import ApiRequest, OperationTable
from overair.server.api.paging import key_after, key_token, page_out, page_size, time_key_after
from overair.server.packages.catalog import Catalog
from overair.server.storage.schema import SoftwarePackage, SoftwarePackageVersion


def _package_summary(p: SoftwarePackage) -> dict[str, Any]:
    out: dict[str, Any] = {"packageName": p.name, "creationDate": p.created_at,
                           "lastModifiedDate": p.updated_at}
    if p.default_version:
        out["defaultVersionName"] = p.default_version
    return out


def _version_summary(v: SoftwarePackageVersion) -> dict[str, Any]:
    return {"packageName": v.package, "versionName": v.version, "status": v.status,
            "creationDate": v.created_at, "lastModifiedDate": v.updated_at}


def _version_view(v: SoftwarePackageVersion) -> dict[str, Any]:
    out = {**_version_summary(v), "packageVersionArn": v.arn, "description": v.description,
           "attributes": dict(v.attributes)}
    if v.artifact:
        out["artifact"] = v.artifact
    if v.recipe:
        out["recipe"] = v.recipe
    return out


def register(table: OperationTable, catalog: Catalog) -> None:
    def create_package(r: ApiRequest) -> dict[str, Any]:
        p = catalog.create_package(r.params["packageName"], r.params.get("description", ""))
        return {"packageName": p.name, "packageArn": p.arn, "description": p.description}

    def get_package(r: ApiRequest) -> dict[str, Any]:
        p = catalog.get_package(r.params["packageName"])
        return {**_package_summary(p), "packageArn": p.arn, "description": p.description}

    def list_packages(r: ApiRequest) -> dict[str, Any]:
        (after,) = key_after(r.params) or (None,)
        rows, more = catalog.page_packages(after, page_size(r.params))
        return page_out("packageSummaries", [_package_summary(p) for p in rows],
                        key_token(rows[-1].name) if more else None)

    def update_package(r: ApiRequest) -> dict[str, Any]:
        catalog.update_package(r.params["packageName"], r.params.get("description"),
                               r.params.get("defaultVersionName"), bool(r.params.get("unsetDefaultVersion")))
        return {}

    def delete_package(r: ApiRequest) -> dict[str, Any]:
        catalog.delete_package(r.params["packageName"])
        return {}

    def create_version(r: ApiRequest) -> dict[str, Any]:
        v = catalog.create_version(r.params["packageName"], r.params["versionName"],
                                   r.params.get("description", ""), r.params.get("attributes") or {},
                                   r.params.get("artifact"), r.params.get("recipe", ""))
        return {k: val for k, val in _version_view(v).items()
                if k in ("packageVersionArn", "packageName", "versionName", "description", "attributes",
                         "status")}

    def get_version(r: ApiRequest) -> dict[str, Any]:
        return _version_view(catalog.get_version(r.params["packageName"], r.params["versionName"]))

    def list_versions(r: ApiRequest) -> dict[str, Any]:
        rows, more = catalog.page_versions(r.params["packageName"], r.params.get("status"),
                                           time_key_after(r.params), page_size(r.params))
        token = key_token(repr(rows[-1].created_at), rows[-1].version) if more else None
        return page_out("packageVersionSummaries", [_version_summary(v) for v in rows], token)

    def update_version(r: ApiRequest) -> dict[str, Any]:
        changes: dict[str, Any] = {k: r.params[k] for k in ("description", "attributes", "artifact", "recipe")
                                   if k in r.params}
        catalog.update_version(r.params["packageName"], r.params["versionName"], changes,
                               r.params.get("action"))
        return {}

    def delete_version(r: ApiRequest) -> dict[str, Any]:
        catalog.delete_version(r.params["packageName"], r.params["versionName"])
        return {}

    def get_configuration(_r: ApiRequest) -> dict[str, Any]:
        row = catalog.configuration()
        config: dict[str, Any] = {"enabled": row.jobs_update_versions}
        if row.role_arn:
            config["roleArn"] = row.role_arn
        return {"versionUpdateByJobsConfig": config}

    def update_configuration(r: ApiRequest) -> dict[str, Any]:
        config = r.params.get("versionUpdateByJobsConfig") or {}
        catalog.configure(config.get("enabled"), config.get("roleArn"))
        return {}

    for name, handler in {
        "CreatePackage": create_package, "GetPackage": get_package, "ListPackages": list_packages,
        "UpdatePackage": update_package, "DeletePackage": delete_package,
        "CreatePackageVersion": create_version, "GetPackageVersion": get_version,
        "ListPackageVersions": list_versions, "UpdatePackageVersion": update_version,
        "DeletePackageVersion": delete_version, "GetPackageConfiguration": get_configuration,
        "UpdatePackageConfiguration": update_configuration,
    }.items():
        table.register("iot", name, handler)
