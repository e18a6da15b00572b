"""Fleet provisioning templates and their versions (CreateProvisioningTemplate and its
family, AWS's shapes), stored; the body is checked by the same template engine bulk
registration uses (core/provtemplate.py) in its fleet form.

AWS (iot API reference, developer guide "Provisioning templates", "AWS IoT Core endpoints
and quotas"):
- `type` FLEET_PROVISIONING (the default) or JITP; overair serves fleet provisioning
  only, so JITP is refused by name.
- A template has at most 5 versions (VersionsLimitExceededException); the default
  version cannot be deleted; CreateProvisioningTemplateVersion with setAsDefault makes
  the new one the default.
- `preProvisioningHook` names a Lambda function AWS calls before provisioning: overair
  runs no Lambda functions, so it is refused rather than silently not called
  (docs/compatibility.md).
- `provisioningRoleArn` is the role AWS IoT assumes to create the device's resources:
  checked here as bulk registration checks its role, by assuming it (the role's trust
  policy must let iot.amazonaws.com assume it), at creation and at every RegisterThing.

A fleet template must give its certificate resource `CertificateId: {"Ref":
"AWS::IoT::Certificate::Id"}`: the certificate RegisterThing registers is the one the
ownership token names, never one a device chose.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import func, select

from overair.core.claimwire import CERTIFICATE_ID_PARAMETER, TEMPLATE_NAME_RE
from overair.core.limits import Limits
from overair.core.provtemplate import Template, TemplateError, parse_template
from overair.server.api.contract import ApiError, already_exists, invalid, not_found
from overair.server.clock import Clock
from overair.server.settings import Settings
from overair.server.storage.db import Database
from overair.server.storage.schema import ProvisioningTemplate, ProvisioningTemplateVersion

FLEET_PROVISIONING = "FLEET_PROVISIONING"
RoleCheck = Callable[[str], None]  # raises ApiError if IoT cannot assume the role


@dataclass(frozen=True, slots=True)
class TemplateView:
    name: str
    arn: str
    template_id: str
    description: str
    enabled: bool
    role_arn: str
    default_version: int
    body: str
    created_at: float
    last_modified_at: float


@dataclass(frozen=True, slots=True)
class VersionView:
    version_id: int
    body: str
    created_at: float
    is_default: bool


def check_fleet_body(body: str, limits: Limits) -> Template:
    """The parsed template; InvalidRequestException if it cannot provision by claim."""
    try:
        template = parse_template(body, limits, fleet=True)
    except TemplateError as exc:
        raise invalid(f"templateBody: {exc.message}") from None
    reference = template.certificate.get("CertificateId") if template.certificate_resource else None
    if reference != {"Ref": CERTIFICATE_ID_PARAMETER} or CERTIFICATE_ID_PARAMETER not in template.parameters:
        raise invalid(f"templateBody: a fleet provisioning template declares the parameter "
                      f"{CERTIFICATE_ID_PARAMETER} and an AWS::IoT::Certificate whose CertificateId is "
                      f"{{\"Ref\": \"{CERTIFICATE_ID_PARAMETER}\"}} (the certificate the ownership "
                      "token names)")
    return template


class ProvisioningTemplates:
    def __init__(self, db: Database, settings: Settings, clock: Clock, role_check: RoleCheck) -> None:
        self._db = db
        self._settings = settings
        self._limits = settings.limits
        self._clock = clock
        self._role_check = role_check
        # Told when a template goes or stops being usable (its claim certificates' topics).
        self.on_change: Callable[[], None] = lambda: None

    def arn(self, name: str) -> str:
        return self._settings.arn("iot", f"provisioningtemplate/{name}")

    def create(self, name: str, body: str, role_arn: str, description: str, enabled: bool,
               kind: str) -> TemplateView:
        if kind != FLEET_PROVISIONING:
            raise invalid(f"type {kind}: overair serves FLEET_PROVISIONING templates only (no JITP)")
        if not TEMPLATE_NAME_RE.fullmatch(name):
            raise invalid("templateName must be 1-36 characters of [0-9A-Za-z_-]")
        check_fleet_body(body, self._limits)
        self._role_check(role_arn)
        now = self._clock()
        with self._db.session() as s:
            if s.get(ProvisioningTemplate, name) is not None:
                raise already_exists(f"provisioning template {name}")
            count = s.scalar(select(func.count()).select_from(ProvisioningTemplate)) or 0
            if count >= self._limits.max_provisioning_templates:
                raise ApiError("LimitExceededException", f"at most {self._limits.max_provisioning_templates} "
                               "provisioning templates are allowed", 410)
            s.add(ProvisioningTemplate(name=name, template_id=str(uuid.uuid4()), description=description,
                                       enabled=enabled, role_arn=role_arn, default_version=1, next_version=2,
                                       created_at=now, last_modified_at=now))
            s.flush()
            s.add(ProvisioningTemplateVersion(template_name=name, version_id=1, body=body, created_at=now))
        self.on_change()
        return self.describe(name)

    def describe(self, name: str) -> TemplateView:
        with self._db.reading() as s:
            row = s.get(ProvisioningTemplate, name)
            if row is None:
                raise not_found(f"provisioning template {name}")
            version = s.get(ProvisioningTemplateVersion, (name, row.default_version))
            return TemplateView(row.name, self.arn(row.name), row.template_id, row.description, row.enabled,
                                row.role_arn, row.default_version, version.body if version else "",
                                row.created_at, row.last_modified_at)

    def page(self, after: str | None, size: int) -> tuple[list[TemplateView], bool]:
        with self._db.reading() as s:
            query = select(ProvisioningTemplate.name).order_by(ProvisioningTemplate.name).limit(size + 1)
            if after is not None:
                query = query.where(ProvisioningTemplate.name > after)
            names = list(s.scalars(query))
        return [self.describe(name) for name in names[:size]], len(names) > size

    def update(self, name: str, *, description: str | None, enabled: bool | None, default_version: int | None,
               role_arn: str | None) -> None:
        if role_arn is not None:
            self._role_check(role_arn)
        with self._db.session() as s:
            row = s.get(ProvisioningTemplate, name, with_for_update=True)
            if row is None:
                raise not_found(f"provisioning template {name}")
            if default_version is not None:
                if s.get(ProvisioningTemplateVersion, (name, default_version)) is None:
                    raise not_found(f"version {default_version} of provisioning template {name}")
                row.default_version = default_version
            if description is not None:
                row.description = description
            if enabled is not None:
                row.enabled = enabled
            if role_arn is not None:
                row.role_arn = role_arn
            row.last_modified_at = self._clock()

    def delete(self, name: str) -> None:
        """Its versions and every claim certificate's grant for it go with it."""
        with self._db.session() as s:
            row = s.get(ProvisioningTemplate, name, with_for_update=True)
            if row is None:
                raise not_found(f"provisioning template {name}")
            s.delete(row)
        self.on_change()

    def create_version(self, name: str, body: str, set_as_default: bool) -> tuple[int, bool]:
        check_fleet_body(body, self._limits)
        with self._db.session() as s:
            row = s.get(ProvisioningTemplate, name, with_for_update=True)
            if row is None:
                raise not_found(f"provisioning template {name}")
            count = s.scalar(select(func.count()).select_from(ProvisioningTemplateVersion)
                             .where(ProvisioningTemplateVersion.template_name == name)) or 0
            if count >= self._limits.max_provisioning_template_versions:
                raise ApiError("VersionsLimitExceededException",
                               f"provisioning template {name} has {count} versions, the most allowed; delete "
                               "one first", 409)
            version = row.next_version
            row.next_version += 1
            s.add(ProvisioningTemplateVersion(template_name=name, version_id=version, body=body,
                                              created_at=self._clock()))
            if set_as_default:
                row.default_version = version
            row.last_modified_at = self._clock()
        return version, set_as_default

    def versions(self, name: str) -> list[VersionView]:
        with self._db.reading() as s:
            row = s.get(ProvisioningTemplate, name)
            if row is None:
                raise not_found(f"provisioning template {name}")
            rows = s.scalars(select(ProvisioningTemplateVersion)
                             .where(ProvisioningTemplateVersion.template_name == name)
                             .order_by(ProvisioningTemplateVersion.version_id))
            return [VersionView(v.version_id, v.body, v.created_at, v.version_id == row.default_version)
                    for v in rows]

    def version(self, name: str, version_id: int) -> VersionView:
        for view in self.versions(name):
            if view.version_id == version_id:
                return view
        raise not_found(f"version {version_id} of provisioning template {name}")

    def delete_version(self, name: str, version_id: int) -> None:
        with self._db.session() as s:
            row = s.get(ProvisioningTemplate, name, with_for_update=True)
            if row is None:
                raise not_found(f"provisioning template {name}")
            version = s.get(ProvisioningTemplateVersion, (name, version_id))
            if version is None:
                raise not_found(f"version {version_id} of provisioning template {name}")
            if version_id == row.default_version:
                raise ApiError("DeleteConflictException", f"version {version_id} is the default version of "
                               f"provisioning template {name}; make another the default first", 409)
            s.delete(version)

    def for_registration(self, name: str) -> tuple[Template, str]:
        """The default version's template and the provisioning role, for RegisterThing;
        ClaimError-free: NotFound (missing or disabled) as an ApiError."""
        view = self.describe(name)
        if not view.enabled:
            raise not_found(f"provisioning template {name} is not enabled")
        return check_fleet_body(view.body, self._limits), view.role_arn
