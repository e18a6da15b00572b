"""Reporting what a thing runs in its reserved `$package` named shadow, in AWS's
Software Package Catalog shape (AWS IoT developer guide, "Preparing to use the $package
reserved named shadow"):

    {"state": {"reported": {"<package>": {"version": "<version>", "attributes": {...}}}}}

so `GetThingShadow(thingName=..., shadowName="$package")` answers which version a thing
runs, and the metadata timestamp of `reported.<package>.version` since when. The update
is also published on the shadow's MQTT topics, as any other shadow update.

The shadow is written just after the execution's transaction, by one worker thread, and
the installs that wait for it are written together (server/serial_batches.py): in a
rollout thousands of devices end within seconds, and a transaction per device (its
BEGIN, thing read and COMMIT, each statement a wait for the interpreter while SQLite's
one write lock is held) would slow every other device's status updates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from overair.core.errors import OverairError
from overair.core.shadow import PACKAGE_SHADOW
from overair.server.packages.inventory import Installed
from overair.server.serial_batches import SerialBatches
from overair.server.shadow.mqtt import messages
from overair.server.shadow.service import Published, ShadowService

log = logging.getLogger("overair.packages")
Publish = Callable[[list[tuple[str, bytes]]], None]


class PackageShadowSync:
    def __init__(self, shadows: ShadowService, publish: Publish,
                 catalog_reporting: Callable[[], bool], worker: ThreadPoolExecutor, max_batch: int) -> None:
        self._shadows = shadows
        self._publish = publish
        # AWS reports a job's destinationPackageVersions only while the package
        # configuration's versionUpdateByJobsConfig is enabled (UpdatePackageConfiguration).
        # The firmware an OTA update installed is overair's own record: always reported.
        self._catalog_reporting = catalog_reporting
        self._batches: SerialBatches[Installed] = SerialBatches(
            worker, self._write, "$package shadow reports", max_batch)

    def installed(self, installed: Installed) -> None:
        """Any thread; never waits for the write."""
        if installed.catalog and not self._catalog_reporting():
            return
        self._batches.add(installed)

    def _write(self, batch: list[Installed]) -> None:
        requests = [(i.thing, PACKAGE_SHADOW, {"state": {"reported": {i.package: {
            "version": i.version, "attributes": {"installedByJob": i.job_id}}}}}) for i in batch]
        results: list[list[Published] | OverairError]
        try:
            results = list(self._shadows.update_many(requests))
        except OverairError as exc:
            results = [exc] * len(batch)
        for installed, result in zip(batch, results, strict=True):
            if isinstance(result, OverairError):
                # The inventory row is the record (written with the execution); the shadow is
                # its view: say why it could not be written rather than fail the device's update.
                log.error("could not report %s %s on %s in its $package shadow: %s", installed.package,
                          installed.version, installed.thing, result.message)
                continue
            self._publish(messages(installed.thing, PACKAGE_SHADOW, result))
