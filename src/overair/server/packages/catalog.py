"""The Software Package Catalog (AWS IoT Device Management): packages, their versions
and the package configuration.

AWS's package version lifecycle (developer guide, "Preparing to use Software Package
Catalog"): a version is created DRAFT, where it cannot be deployed and its description
and attributes may change; PUBLISH makes it PUBLISHED (deployable, may be the
package's default version; only the description may change then); DEPRECATE makes it
DEPRECATED (PUBLISH brings it back). A version can be deleted in any state; a package
only once its versions are gone. Errors are the catalog's own (ValidationException,
ConflictException, ResourceNotFoundException), not iot's InvalidRequestException.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from overair.server.api.contract import ApiError
from overair.server.clock import Clock
from overair.server.settings import Settings
from overair.server.storage.db import Database
from overair.server.storage.keyset import page_query, split
from overair.server.storage.schema import PackageConfiguration, SoftwarePackage, SoftwarePackageVersion

DRAFT, PUBLISHED, DEPRECATED = "DRAFT", "PUBLISHED", "DEPRECATED"
_ACTIONS = {"PUBLISH": PUBLISHED, "DEPRECATE": DEPRECATED}


def validation(message: str) -> ApiError:
    return ApiError("ValidationException", message, 400)


def conflict(message: str) -> ApiError:
    return ApiError("ConflictException", message, 409)


def missing(message: str) -> ApiError:
    return ApiError("ResourceNotFoundException", message, 404)


class Catalog:
    def __init__(self, db: Database, settings: Settings, clock: Clock) -> None:
        self._db = db
        self._settings = settings
        self._clock = clock

    def package_arn(self, name: str) -> str:
        return self._settings.arn("iot", f"package/{name}")

    def version_arn(self, name: str, version: str) -> str:
        return self._settings.arn("iot", f"package/{name}/version/{version}")

    # Packages ---------------------------------------------------------------------
    def create_package(self, name: str, description: str) -> SoftwarePackage:
        now = self._clock()
        with self._db.session() as s:
            existing = s.get(SoftwarePackage, name)
            if existing is not None:
                if existing.description == description:
                    return existing  # an identical repeat, as the other creates
                raise conflict(f"package {name} already exists")
            package = SoftwarePackage(name=name, arn=self.package_arn(name), description=description,
                                      default_version=None, created_at=now, updated_at=now)
            s.add(package)
            return package

    def get_package(self, name: str) -> SoftwarePackage:
        with self._db.reading() as s:
            package = s.get(SoftwarePackage, name)
            if package is None:
                raise missing(f"package {name} does not exist")
            return package

    def page_packages(self, after: str | None, size: int) -> tuple[list[SoftwarePackage], bool]:
        """ListPackages: by name after `after`, over the primary key."""
        query = page_query(select(SoftwarePackage), [SoftwarePackage.name],
                           None if after is None else [after], size)
        with self._db.reading() as s:
            return split(list(s.scalars(query)), size)

    def update_package(self, name: str, description: str | None, default_version: str | None,
                       unset_default: bool) -> None:
        if default_version is not None and unset_default:
            raise validation("give defaultVersionName or unsetDefaultVersion, not both")
        with self._db.session() as s:
            package = s.get(SoftwarePackage, name, with_for_update=True)
            if package is None:
                raise missing(f"package {name} does not exist")
            if default_version is not None:
                version = s.get(SoftwarePackageVersion, (name, default_version))
                if version is None:
                    raise missing(f"package {name} has no version {default_version}")
                if version.status != PUBLISHED:
                    raise conflict(f"version {default_version} is {version.status}; only a PUBLISHED "
                                   "version can be the default")
                package.default_version = default_version
            if unset_default:
                package.default_version = None
            if description is not None:
                package.description = description
            package.updated_at = self._clock()

    def delete_package(self, name: str) -> None:
        """AWS: "All package versions must be deleted before deleting the software
        package"; deleting one that does not exist succeeds."""
        with self._db.session() as s:
            package = s.get(SoftwarePackage, name, with_for_update=True)
            if package is None:
                return
            versions = s.scalar(select(func.count()).select_from(SoftwarePackageVersion)
                                .where(SoftwarePackageVersion.package == name)) or 0
            if versions:
                raise validation(f"package {name} still has {versions} version(s); delete them first")
            s.delete(package)

    # Versions ---------------------------------------------------------------------
    def create_version(self, name: str, version: str, description: str, attributes: dict[str, str],
                       artifact: dict[str, Any] | None, recipe: str) -> SoftwarePackageVersion:
        now = self._clock()
        with self._db.session() as s:
            if s.get(SoftwarePackage, name) is None:
                raise validation(f"package {name} does not exist")
            if s.get(SoftwarePackageVersion, (name, version)) is not None:
                raise conflict(f"package {name} already has version {version}")
            row = SoftwarePackageVersion(package=name, version=version, arn=self.version_arn(name, version),
                                         description=description, attributes=dict(attributes),
                                         artifact=artifact, recipe=recipe, status=DRAFT,
                                         created_at=now, updated_at=now)
            s.add(row)
            return row

    def get_version(self, name: str, version: str) -> SoftwarePackageVersion:
        with self._db.reading() as s:
            row = s.get(SoftwarePackageVersion, (name, version))
            if row is None:
                raise missing(f"package {name} has no version {version}")
            return row

    def page_versions(self, name: str, status: str | None, after: tuple[float, str] | None,
                      size: int) -> tuple[list[SoftwarePackageVersion], bool]:
        """ListPackageVersions: oldest first, after (creation time, version), over the
        (package, creation time, version) index (0017)."""
        query = select(SoftwarePackageVersion).where(SoftwarePackageVersion.package == name)
        if status:
            query = query.where(SoftwarePackageVersion.status == status)
        query = page_query(query, [SoftwarePackageVersion.created_at, SoftwarePackageVersion.version],
                           after, size)
        with self._db.reading() as s:
            return split(list(s.scalars(query)), size)

    def update_version(self, name: str, version: str, changes: dict[str, Any], action: str | None) -> None:
        """Description always; attributes, artifact and recipe only while DRAFT; `action`
        PUBLISH or DEPRECATE moves it along the lifecycle."""
        with self._db.session() as s:
            row = s.get(SoftwarePackageVersion, (name, version), with_for_update=True)
            if row is None:
                raise missing(f"package {name} has no version {version}")
            draft_only = sorted(k for k in ("attributes", "artifact", "recipe") if k in changes)
            if draft_only and row.status != DRAFT:
                raise conflict(f"version {version} is {row.status}: {', '.join(draft_only)} can change "
                               "only while it is DRAFT")
            for key in ("description", "attributes", "artifact", "recipe"):
                if key in changes:
                    setattr(row, key, changes[key])
            if action is not None:
                target = _ACTIONS[action]
                if target == DEPRECATED and row.status == DRAFT:
                    raise conflict(f"version {version} is DRAFT; publish it before deprecating it")
                row.status = target
                package = s.get(SoftwarePackage, name)
                if target == DEPRECATED and package is not None and package.default_version == version:
                    package.default_version = None  # a default must be deployable
            row.updated_at = self._clock()

    def delete_version(self, name: str, version: str) -> None:
        with self._db.session() as s:
            row = s.get(SoftwarePackageVersion, (name, version), with_for_update=True)
            if row is None:
                return
            package = s.get(SoftwarePackage, name)
            if package is not None and package.default_version == version:
                package.default_version = None
            s.delete(row)

    def published_versions(self, arns: list[str]) -> list[tuple[str, str]]:
        """(package, version) of each package version ARN; each must be PUBLISHED, as AWS
        deploys only published versions (CreateJob's destinationPackageVersions)."""
        out = []
        with self._db.reading() as s:
            for arn in arns:
                name, _, version = arn.rpartition(":package/")[2].partition("/version/")
                row = s.get(SoftwarePackageVersion, (name, version)) if version else None
                if row is None:
                    raise validation(f"{arn} is not a package version of this server")
                if row.status != PUBLISHED:
                    raise validation(f"package version {name}/{version} is {row.status}, not PUBLISHED")
                out.append((name, version))
        return out

    # Configuration ----------------------------------------------------------------
    def configuration(self) -> PackageConfiguration:
        with self._db.reading() as s:
            return s.get(PackageConfiguration, 1) or PackageConfiguration(id=1, jobs_update_versions=False,
                                                                            role_arn="")

    def configure(self, enabled: bool | None, role_arn: str | None) -> None:
        with self._db.session() as s:
            row = s.get(PackageConfiguration, 1, with_for_update=True)
            if row is None:
                row = PackageConfiguration(id=1, jobs_update_versions=False, role_arn="")
                s.add(row)
            if enabled is not None:
                row.jobs_update_versions = enabled
            if role_arn is not None:
                row.role_arn = role_arn
