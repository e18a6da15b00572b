"""Delta updates on the server: patches made at CreateOTAUpdate, offered per thing.

An operator asks for them with CreateOTAUpdate's `additionalParameters`
`overair:delta` = "true" (AWS clients pass additionalParameters through unchanged). For
each version the targets run (packages/inventory.py, recorded when an OTA job of this
server SUCCEEDED on them) whose image this server delivered before (an OTA job's image
object, kept in its configuration under `IMAGE_OBJECT`), the server makes a patch to the
new image (core/delta.py), stores it as an object beside the image (same bucket, key
`<image key>.overair-delta/<source sha256[:16]>-<target sha256[:16]>`), adds it to the
update's stream as file `DELTA_FILE_ID_BASE + n` and to its HTTPS files, and records it
in the job's configuration (`JOB_DELTAS`). A patch larger than
`Limits.delta_max_patch_percent` of the image is not offered, and no patch is made for
an image over `Limits.delta_max_image_bytes` (making one costs about 11x its size).

At each delivery (`DeltaRenderer`) a thing whose device profile takes overair's
extension and whose recorded running version is a patch's source receives the patch as
an `overair:delta` object on the file entry (core/delta_offer.py), with a fresh
pre-signed URL for HTTPS delivery. Every other thing, and every FreeRTOS device, receives
exactly the document it received before: the full image. The agent verifies the signature
over the image it rebuilds and falls back to the full image if anything fails, so an
offer that turns out wrong (a device whose recorded version is stale) costs a download,
never an update.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import object_session

from overair.core import delta as patches
from overair.core.delta_offer import OFFER_KEY, DeltaOffer
from overair.core.limits import Limits
from overair.core.versions import Version
from overair.server.jobs.deliveries import HTTP_FILES
from overair.server.jobs.service import IMAGE_VERSION, PACKAGE_NAME
from overair.server.packages.inventory import DEFAULT_PACKAGE
from overair.server.storage.db import Database
from overair.server.storage.objects import ObjectStore
from overair.server.storage.schema import InstalledSoftware, Job

log = logging.getLogger("overair.ota")
DELTA_PARAMETER = "overair:delta"  # CreateOTAUpdate additionalParameters switch
JOB_DELTAS = "overair:deltas"  # job config: the patches of this job
IMAGE_OBJECT = "overair:image_object"  # job config: the object its image came from
DELTA_FILE_ID_BASE = 100  # stream file ids of patches (an update's own files are 0..n)
MAX_DELTAS = 8  # source versions patched per update (the most common ones first)
DocumentRenderer = Callable[[Job, str], dict[str, Any]]


def requested(request: dict[str, Any]) -> bool:
    params = request.get("additionalParameters") or {}
    return str(params.get(DELTA_PARAMETER, "")).lower() == "true"


@dataclass(frozen=True, slots=True)
class Patch:
    file_id: int
    source_version: str
    source_sha256: str
    size: int
    sha256: str
    bucket: str
    key: str
    version: str | None

    def to_config(self) -> dict[str, Any]:
        return {"fileId": self.file_id, "sourceVersion": self.source_version,
                "sourceSha256": self.source_sha256, "size": self.size, "sha256": self.sha256,
                "bucket": self.bucket, "key": self.key, "version": self.version}


def job_config(image_object: dict[str, Any] | None, patches_made: list[Patch]) -> dict[str, Any]:
    """What an OTA job keeps: its image's object (a later update's delta source) and its patches."""
    config: dict[str, Any] = {}
    if image_object is not None:
        config[IMAGE_OBJECT] = image_object
    if patches_made:
        config[JOB_DELTAS] = [patch.to_config() for patch in patches_made]
    return config


class DeltaMaker:
    def __init__(self, db: Database, objects: ObjectStore, limits: Limits) -> None:
        self._db = db
        self._objects = objects
        self._limits = limits

    def _source_objects(self, versions: set[str]) -> dict[str, dict[str, Any]]:
        """version -> the image object of the latest OTA job that delivered it."""
        found: dict[str, dict[str, Any]] = {}
        with self._db.reading() as s:
            for job in s.query(Job).order_by(Job.created_at):
                config = job.config if isinstance(job.config, dict) else {}
                version, where = config.get(IMAGE_VERSION), config.get(IMAGE_OBJECT)
                if version in versions and isinstance(where, dict):
                    found[str(version)] = where
        return found

    def make(self, target: bytes, target_version: Version, location: dict[str, Any],
             running: dict[str, str]) -> list[Patch]:
        """Patches to `target` (stored at `location`) from the versions in `running`
        (thing -> version) for which this server has the image, most common first."""
        if len(target) > self._limits.delta_max_image_bytes:
            log.info("no delta to %s: the image is larger than %d bytes", target_version,
                     self._limits.delta_max_image_bytes)
            return []
        counts: dict[str, int] = {}
        for version in running.values():
            if version != str(target_version):
                counts[version] = counts.get(version, 0) + 1
        wanted = sorted(counts, key=lambda v: (-counts[v], v))[:MAX_DELTAS]
        sources = self._source_objects(set(wanted))
        target_sha = hashlib.sha256(target).hexdigest()
        made: list[Patch] = []
        for version in wanted:
            where = sources.get(version)
            if where is None:
                continue
            try:
                _, source = self._objects.get_object(where["bucket"], where["key"], where.get("version"))
            except Exception as exc:  # the old image is gone: that version gets the full image
                log.info("no delta from %s: its image cannot be read (%s)", version, exc)
                continue
            patch = patches.create_patch(source, target)
            if len(patch) * 100 > self._limits.delta_max_patch_percent * len(target):
                log.info("no delta from %s: the patch is %d bytes for a %d-byte image", version,
                         len(patch), len(target))
                continue
            source_sha = hashlib.sha256(source).hexdigest()
            key = f"{location['key']}.overair-delta/{source_sha[:16]}-{target_sha[:16]}"
            stored = self._objects.put_object(location["bucket"], key, patch)
            made.append(Patch(DELTA_FILE_ID_BASE + len(made), version, source_sha, len(patch),
                              hashlib.sha256(patch).hexdigest(), location["bucket"], key, stored.version_id))
            log.info("delta from %s to %s: %d bytes for a %d-byte image", version, target_version,
                     len(patch), len(target))
        return made


class DeltaRenderer:
    """Adds a thing's patch to its document (after the other renderers)."""

    def __init__(self, db: Database, takes_extension: Callable[[Job, str], bool],
                 url_for: Callable[[Job, dict[str, Any], str], str]) -> None:
        self._db = db
        self._takes_extension = takes_extension
        self._url_for = url_for

    def _running(self, job: Job, thing: str) -> str | None:
        package = str(job.config.get(PACKAGE_NAME) or DEFAULT_PACKAGE)
        session = object_session(job)
        if session is not None:
            row = session.get(InstalledSoftware, (thing, package))
            return None if row is None else str(row.version)
        with self._db.reading() as s:
            row = s.get(InstalledSoftware, (thing, package))
            return None if row is None else str(row.version)

    def offer(self, job: Job, thing: str) -> DeltaOffer | None:
        deltas = job.config.get(JOB_DELTAS) if isinstance(job.config, dict) else None
        if not deltas or not self._takes_extension(job, thing):
            return None
        running = self._running(job, thing)
        chosen = next((d for d in deltas if d.get("sourceVersion") == running), None)
        if chosen is None:
            return None
        url = self._url_for(job, chosen, thing) if job.config.get(HTTP_FILES) else None
        return DeltaOffer(int(chosen["fileId"]), int(chosen["size"]), bytes.fromhex(chosen["sha256"]),
                          Version.parse(str(chosen["sourceVersion"])), bytes.fromhex(chosen["sourceSha256"]),
                          url)

    def wrap(self, inner: DocumentRenderer) -> DocumentRenderer:
        def render(job: Job, thing: str) -> dict[str, Any]:
            document = inner(job, thing)
            offer = self.offer(job, thing)
            ota = document.get("afr_ota") if offer is not None else None
            if offer is None or not isinstance(ota, dict) or not ota.get("files"):
                return document
            rendered = copy.deepcopy(document)
            rendered["afr_ota"]["files"][0][OFFER_KEY] = offer.to_json_obj()
            return rendered

        return render
