"""iot operations of fleet provisioning templates, in AWS's shapes, and overair's
SetClaimCertificateTemplates / GetClaimCertificateTemplates (model: overair/apimodels):
what AWS does with a claim certificate's IoT policy (server/provisioning/claims.py)."""

from __future__ import annotations

from typing import Any

from overair.server.api.contract import ApiRequest, OperationTable, invalid
from overair.server.api.paging import key_after, key_token, page_out, page_size, paginate
from overair.server.provisioning.claims import ClaimCertificates
from overair.server.provisioning.templates import FLEET_PROVISIONING, ProvisioningTemplates, TemplateView


def _refuse_hook(r: ApiRequest) -> None:
    if r.params.get("preProvisioningHook") is not None:
        raise invalid(f"{r.operation}: preProvisioningHook is not supported: overair runs no Lambda "
                      "functions, so it cannot call a pre-provisioning hook (docs/compatibility.md)")


def _summary(view: TemplateView) -> dict[str, Any]:
    return {"templateArn": view.arn, "templateName": view.name, "description": view.description,
            "creationDate": view.created_at, "lastModifiedDate": view.last_modified_at,
            "enabled": view.enabled, "type": FLEET_PROVISIONING}


def register(table: OperationTable, templates: ProvisioningTemplates, claims: ClaimCertificates) -> None:
    def create(r: ApiRequest) -> dict[str, Any]:
        _refuse_hook(r)  # tags: accepted and not stored, as for every create (docs/compatibility.md)
        p = r.params
        view = templates.create(p["templateName"], p["templateBody"], p["provisioningRoleArn"],
                                p.get("description") or "", bool(p.get("enabled", False)),
                                p.get("type") or FLEET_PROVISIONING)
        return {"templateArn": view.arn, "templateName": view.name, "defaultVersionId": view.default_version}

    def describe(r: ApiRequest) -> dict[str, Any]:
        view = templates.describe(r.params["templateName"])
        return {**_summary(view), "defaultVersionId": view.default_version, "templateBody": view.body,
                "provisioningRoleArn": view.role_arn}

    def list_templates(r: ApiRequest) -> dict[str, Any]:
        after = key_after(r.params)
        views, more = templates.page(after[0] if after else None, page_size(r.params))
        token = key_token(views[-1].name) if more else None
        return page_out("templates", [_summary(v) for v in views], token)

    def update(r: ApiRequest) -> dict[str, Any]:
        _refuse_hook(r)
        p = r.params
        templates.update(p["templateName"], description=p.get("description"), enabled=p.get("enabled"),
                         default_version=p.get("defaultVersionId"), role_arn=p.get("provisioningRoleArn"))
        return {}

    def delete(r: ApiRequest) -> dict[str, Any]:
        templates.delete(r.params["templateName"])
        return {}

    def create_version(r: ApiRequest) -> dict[str, Any]:
        name = r.params["templateName"]
        version, default = templates.create_version(name, r.params["templateBody"],
                                                    bool(r.params.get("setAsDefault", False)))
        return {"templateArn": templates.arn(name), "templateName": name, "versionId": version,
                "isDefaultVersion": default}

    def describe_version(r: ApiRequest) -> dict[str, Any]:
        view = templates.version(r.params["templateName"], r.params["versionId"])
        return {"versionId": view.version_id, "creationDate": view.created_at, "templateBody": view.body,
                "isDefaultVersion": view.is_default}

    def list_versions(r: ApiRequest) -> dict[str, Any]:
        views = templates.versions(r.params["templateName"])
        page, token = paginate(views, r.params)
        return page_out("versions", [{"versionId": v.version_id, "creationDate": v.created_at,
                                      "isDefaultVersion": v.is_default} for v in page], token)

    def delete_version(r: ApiRequest) -> dict[str, Any]:
        templates.delete_version(r.params["templateName"], r.params["versionId"])
        return {}

    def set_claim(r: ApiRequest) -> dict[str, Any]:
        cert_id = r.params["CertificateId"]
        names = claims.set_templates(cert_id, r.params["TemplateNames"])
        return {"CertificateId": cert_id, "TemplateNames": names}

    def get_claim(r: ApiRequest) -> dict[str, Any]:
        cert_id = r.params["CertificateId"]
        return {"CertificateId": cert_id, "TemplateNames": claims.templates_of(cert_id)}

    table.register("iot", "CreateProvisioningTemplate", create)
    table.register("iot", "DescribeProvisioningTemplate", describe)
    table.register("iot", "ListProvisioningTemplates", list_templates)
    table.register("iot", "UpdateProvisioningTemplate", update)
    table.register("iot", "DeleteProvisioningTemplate", delete)
    table.register("iot", "CreateProvisioningTemplateVersion", create_version)
    table.register("iot", "DescribeProvisioningTemplateVersion", describe_version)
    table.register("iot", "ListProvisioningTemplateVersions", list_versions)
    table.register("iot", "DeleteProvisioningTemplateVersion", delete_version)
    table.register("overair", "SetClaimCertificateTemplates", set_claim)
    table.register("overair", "GetClaimCertificateTemplates", get_claim)
