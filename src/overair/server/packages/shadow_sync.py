"""Reporting what a thing runs in its reserved `$package` named shadow, in AWS's
Software Package Catalog shape (AWS IoT developer guide, "Preparing to use the $package
reserved named shadow"):

    {"state": {"reported": {"<package>": {"version": "<version>", "attributes": {...}}}}}

so `GetThingShadow(thingName=..., shadowName="$package")` answers which version a thing
runs, and the metadata timestamp of `reported.<package>.version` since when. The update
is also published on the shadow's MQTT topics, as any other shadow update.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from overair.core.errors import OverairError
from overair.core.shadow import PACKAGE_SHADOW
from overair.server.packages.inventory import Installed
from overair.server.shadow.mqtt import messages
from overair.server.shadow.service import ShadowService

log = logging.getLogger("overair.packages")
Publish = Callable[[list[tuple[str, bytes]]], None]


class PackageShadowSync:
    def __init__(self, shadows: ShadowService, publish: Publish,
                 catalog_reporting: Callable[[], bool]) -> None:
        self._shadows = shadows
        self._publish = publish
        # AWS reports a job's destinationPackageVersions only while the package
        # configuration's versionUpdateByJobsConfig is enabled (UpdatePackageConfiguration).
        # The firmware an OTA update installed is overair's own record: always reported.
        self._catalog_reporting = catalog_reporting

    def installed(self, installed: Installed) -> None:
        if installed.catalog and not self._catalog_reporting():
            return
        request = {"state": {"reported": {installed.package: {
            "version": installed.version, "attributes": {"installedByJob": installed.job_id}}}}}
        try:
            published = self._shadows.update(installed.thing, PACKAGE_SHADOW, request)
        except OverairError as exc:
            # The inventory row is the record (written with the execution); the shadow is
            # its view: say why it could not be written rather than fail the device's update.
            log.error("could not report %s %s on %s in its $package shadow: %s", installed.package,
                      installed.version, installed.thing, exc.message)
            return
        self._publish(messages(installed.thing, PACKAGE_SHADOW, published))
