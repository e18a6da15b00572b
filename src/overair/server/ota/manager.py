"""CreateOTAUpdate, end to end.

`create()` validates the request, records it as CREATE_PENDING and returns at once,
as AWS does; `process()` then signs (or checks the given signature), creates the
stream and the job `AFR_OTA-<otaUpdateId>`, and ends CREATE_COMPLETE or CREATE_FAILED
with `errorInfo`. Every step is idempotent (it reuses what an earlier attempt
created), so an update interrupted by a restart is simply processed again.

Nothing reaches a device unless its signature verifies against the configured trusted
code-signing roots with a valid, unrevoked signer certificate (threat N2), and the file
fits every target's device profile (server/ota/profile_config.py: a default-built
FreeRTOS device silently ignores a file over 4 MiB; overair agents take far more).

The job document is AWS's (`afr_ota` only); the signer chain overair agents need goes
into the job's configuration and reaches them at delivery (server/ota/profiles.py).
When the largest job message a target would receive exceeds its profile's message
budget, the update is still created (AWS would create it too) but says so: a warning
in the log and in GetOTAUpdate's `errorInfo` (code `DeviceMessageOverBudget`) while the
status is CREATE_COMPLETE.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import logging
import re
import secrets
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select

from overair.core import certchain, codesign, presign, rollout
from overair.core.arn import ArnError, parse_arn
from overair.core.errors import DecodeError, OverairError, PeerInputError
from overair.core.image import parse_header
from overair.core.jobdoc import OtaFile, OtaJobDocument, overair_extension
from overair.core.limits import Limits
from overair.core.versions import Version
from overair.server.api.contract import ApiError, already_exists, invalid, not_found
from overair.server.clock import Clock
from overair.server.delivery import policy as download_policy
from overair.server.health import gates as health_gates
from overair.server.jobs.deliveries import HTTP_FILES
from overair.server.jobs.service import IMAGE_VERSION, SKIPPED_THINGS, JobService
from overair.server.ota import delta
from overair.server.ota.delta import Patch
from overair.server.ota.deployment import DEPLOYMENT_FILES, DeploymentSigner, describe_file
from overair.server.ota.profile_config import DeviceProfile
from overair.server.ota.profiles import OVERAIR_EXTENSION, DeviceProfiles, largest_job_message
from overair.server.settings import Settings
from overair.server.signing.import_checks import EXPIRY_WARNING
from overair.server.signing.service import DEFAULT_PLATFORM, Signed, SigningService
from overair.server.storage.db import Database
from overair.server.storage.keyset import page_query, split
from overair.server.storage.objects import ObjectStore
from overair.server.storage.schema import Job, OtaUpdate
from overair.server.streams.service import StreamService

log = logging.getLogger("overair.ota")
OTA_ID_RE = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
JOB_PREFIX = "AFR_OTA-"
CREATE_PENDING, CREATE_IN_PROGRESS = "CREATE_PENDING", "CREATE_IN_PROGRESS"
CREATE_COMPLETE, CREATE_FAILED = "CREATE_COMPLETE", "CREATE_FAILED"
ALLOW_DOWNGRADE = "overair:allowDowngrade"
# additionalParameters that end the job's rollout (schedulingConfig endTime/endBehavior,
# which CreateOTAUpdate has no member for): a device that never reports (stays QUEUED;
# AWS's in-progress timeout starts only at IN_PROGRESS) is then CANCELED at the end.
END_TIME, END_BEHAVIOR = "overair:endTime", "overair:endBehavior"
OVER_BUDGET = "DeviceMessageOverBudget"
# errorInfo code of a CREATE_COMPLETE update whose signer certificate (or a CA of its
# chain) expires before the rollout ends: devices verify the signer's validity against
# their clock when they admit an image (N2), so a device reached after that instant
# refuses the update. Without an endTime the horizon is the certificate store's 30 days.
SIGNER_EXPIRES = "SignerExpiresBeforeRolloutEnd"
SHOWN_THINGS = 5  # things named in a message


class OtaFailure(OverairError):
    """A reason an OTA update cannot be created; becomes `errorInfo`."""


# Each step the OTA Update Manager takes as the update's service role (`roleArn`) is
# authorized by a StepGate: (IAM action, resource ARN) -> None, raising ApiError
# (AccessDeniedException) when the role may not, which fails the update with that reason.
# A RoleAssumer makes one per update: (role ARN, OTA update id) -> StepGate; it raises
# the same way when the role cannot be assumed (missing, or not trusting the service).
StepGate = Callable[[str, str], None]
RoleAssumer = Callable[[str, str], StepGate]


def _no_iam(_role_arn: str, _ota_id: str) -> StepGate:
    """For embedding the manager without IAM (unit tests of the pipeline itself)."""
    return lambda _action, _resource: None


def job_id_for(ota_update_id: str) -> str:
    return (JOB_PREFIX + ota_update_id)[:64]


class OtaManager:
    def __init__(self, db: Database, settings: Settings, objects: ObjectStore, signing: SigningService,
                 streams: StreamService, jobs: JobService, trust_roots: Callable[[], list[x509.Certificate]],
                 clock: Clock, profiles: DeviceProfiles, resolve_targets: Callable[[list[str]], list[str]],
                 on_job_created: Callable[[list[str]], None] = lambda _things: None,
                 assume_role: RoleAssumer | None = None) -> None:
        self._db = db
        self.profiles = profiles
        self._resolve_targets = resolve_targets
        self._assume_role: RoleAssumer = assume_role or _no_iam
        self._settings = settings
        self._objects = objects
        self._signing = signing
        self._streams = streams
        self._jobs = jobs
        self._trust_roots = trust_roots
        self._clock = clock
        self.on_job_created = on_job_created
        self._deltas = delta.DeltaMaker(db, objects, settings.limits)

    def arn(self, ota_update_id: str) -> str:
        return self._settings.arn("iot", f"otaupdate/{ota_update_id}")

    def create(self, request: dict[str, Any]) -> OtaUpdate:
        ota_id = request.get("otaUpdateId", "")
        if not OTA_ID_RE.fullmatch(ota_id):
            raise invalid("otaUpdateId must be 1-128 characters of [a-zA-Z0-9_-]")
        protocols = request.get("protocols") or ["MQTT"]
        if not protocols or not set(protocols) <= {"MQTT", "HTTP"}:
            raise invalid("protocols must be MQTT and/or HTTP")
        try:
            presign.expiry_seconds(request.get("awsJobPresignedUrlConfig"))
        except PeerInputError as exc:
            raise invalid(f"awsJobPresignedUrlConfig: {exc.message}") from exc
        if not request.get("targets"):
            raise invalid("targets must name at least one thing or thing group")
        files = request.get("files") or []
        if not files:
            raise invalid("files must contain at least one file")
        now = self._clock()
        scheduling = scheduling_from_ota(request)
        try:
            plan = rollout.schedule(scheduling)
        except PeerInputError as exc:
            raise invalid(f"additionalParameters: {exc.message}") from exc
        if plan.end is not None and plan.end <= now:
            raise invalid(f"additionalParameters: {END_TIME} must be in the future")
        try:  # the rollout's download limits and health gates (issue 18), checked before anything is stored
            download_policy.parse_parameters(request.get("additionalParameters"))
            health_gates.parse_parameters(request.get("additionalParameters"), self._settings.limits)
        except PeerInputError as exc:
            raise invalid(f"additionalParameters: {exc.message}") from exc
        with self._db.session() as s:
            if s.get(OtaUpdate, ota_id) is not None:
                raise already_exists(f"OTA update {ota_id}")
            row = OtaUpdate(ota_update_id=ota_id, arn=self.arn(ota_id), status=CREATE_PENDING,
                            request=_jsonable(request), created_at=now, last_modified_at=now)
            s.add(row)
            return row

    def get(self, ota_id: str) -> OtaUpdate:
        with self._db.session() as s:
            row = s.get(OtaUpdate, ota_id)
            if row is None:
                raise not_found(f"OTA update {ota_id}")
            return row

    def list_updates(self, status: str | None = None) -> list[OtaUpdate]:
        with self._db.session() as s:
            query = select(OtaUpdate).order_by(OtaUpdate.created_at)
            if status:
                query = query.where(OtaUpdate.status == status)
            return list(s.scalars(query))

    def page_updates(self, status: str | None, after: tuple[float, str] | None,
                     size: int) -> tuple[list[OtaUpdate], bool]:
        """ListOTAUpdates by creation time then id, one page (keyset: api/paging.py)."""
        query = select(OtaUpdate)
        if status:
            query = query.where(OtaUpdate.status == status)
        query = page_query(query, [OtaUpdate.created_at, OtaUpdate.ota_update_id], after, size)
        with self._db.reading() as s:
            return split(list(s.scalars(query)), size)

    def pending_ids(self) -> list[str]:
        return [row.ota_update_id for row in self.list_updates() if row.status in (CREATE_PENDING,
                                                                          CREATE_IN_PROGRESS)]

    def delete(self, ota_id: str, delete_stream: bool, force_delete_job: bool) -> None:
        row = self.get(ota_id)
        if delete_stream and row.stream_id:
            with contextlib.suppress(ApiError):
                self._streams.delete_stream(row.stream_id)
        if row.job_id:
            try:
                self._jobs.delete_job(row.job_id, force=force_delete_job)
            except ApiError as exc:
                if exc.code != "ResourceNotFoundException":
                    raise
        with self._db.session() as s:
            found = s.get(OtaUpdate, ota_id)
            if found is not None:
                s.delete(found)

    # Processing -----------------------------------------------------------------------
    def process(self, ota_id: str) -> None:
        self._set(ota_id, status=CREATE_IN_PROGRESS)
        try:
            row = self.get(ota_id)
            # The role is assumed once per update; every step below is checked against it.
            gate = self._assume_role(str(row.request.get("roleArn", "")), ota_id)
            things, warnings = self._build(row, gate)
        except (OtaFailure, OverairError) as exc:
            log.warning("OTA update %s failed: %s %s", ota_id, exc.code, exc.message)
            self._set(ota_id, status=CREATE_FAILED, error_info={"code": exc.code, "message": exc.message})
            return
        except Exception as exc:
            log.exception("OTA update %s failed unexpectedly", ota_id)
            self._set(ota_id, status=CREATE_FAILED,
                      error_info={"code": "InternalError",
                                  "message": f"internal error: {type(exc).__name__}"})
            return
        if warnings:
            message = "; ".join(text for _, text in warnings)
            log.warning("OTA update %s: %s", ota_id, message)
            self._set(ota_id, status=CREATE_COMPLETE, error_info={"code": warnings[0][0], "message": message})
        else:
            self._set(ota_id, status=CREATE_COMPLETE)
        # Every target counts, also those a staged rollout has not released yet (`things`
        # are only the ones notified now).
        _, counts = self._jobs.describe_job(job_id_for(ota_id))
        log.info("OTA update %s created: job %s for %d thing(s), %d notified now", ota_id,
                 job_id_for(ota_id), sum(counts.values()), len(things))
        self.on_job_created(things)

    def _set(self, ota_id: str, **values: Any) -> None:
        with self._db.session() as s:
            row = s.get(OtaUpdate, ota_id)
            if row is None:
                return
            for key, value in values.items():
                setattr(row, key, value)
            row.last_modified_at = self._clock()

    def _build(self, row: OtaUpdate, gate: StepGate) -> tuple[list[str], list[tuple[str, str]]]:
        """Creates the stream and the job; returns the things to notify and the warnings
        (errorInfo code, message)."""
        request = row.request
        protocols = tuple(request.get("protocols") or ["MQTT"])
        # The targets resolved once: every check below and the job itself are about the
        # same things (each resolution of a 10,000-thing group took ~45 ms).
        targets = self._resolve_targets(list(request["targets"]))
        profiles = self._target_profiles(list(request["targets"]), targets)
        existing = self._existing_stream(request["files"])
        stream_id = existing or row.stream_id or self._new_stream_id()
        self._set(row.ota_update_id, stream_id=stream_id)
        ota_files: list[OtaFile] = []
        stream_files: list[dict[str, Any]] = []
        http_files: list[dict[str, Any]] = []
        image_versions: list[Version] = []
        running: list[str] = []  # targets that already run the image: left out of the job
        chain: list[x509.Certificate] = []
        described: list[dict[str, Any]] = []  # DEPLOYMENT_FILES: bound by the signed metadata
        first: tuple[bytes, Version, dict[str, Any]] | None = None  # file 0's image and object
        for index, spec in enumerate(request["files"]):
            stream_ref = (spec.get("fileLocation") or {}).get("stream") or {}
            # A file of an existing stream keeps its id there: devices ask the stream for it.
            file_id = int(stream_ref.get("fileId", 0)) if stream_ref else index
            location = self._location(spec)
            gate("s3:GetObjectVersion" if location.get("version") else "s3:GetObject",
                          f"arn:{self._settings.partition}:s3:::{location['bucket']}/{location['key']}")
            stored, data = self._objects.get_object(location["bucket"], location["key"],
                                                    location.get("version"))
            self._check_size(spec.get("fileName", ""), len(data), profiles)
            signed = self._signature(spec, location, row, gate)
            self._verify(data, signed)
            version = image_version(data, spec.get("fileVersion"))
            if index == 0 and version is not None:
                running = self._refuse_downgrade(request, version, targets)
                image_versions.append(version)
                first = (data, version, {"bucket": location["bucket"], "key": location["key"],
                                         "version": stored.version_id})
            chain = chain or signed.chain
            described.append(describe_file(data))
            ota_files.append(OtaFile(filepath=spec.get("fileName") or location["key"],
                                     filesize=len(data), fileid=file_id,
                                     certfile=signed.certificate_path_on_device,
                                     signature=signed.signature, signature_key=signed.signature_key,
                                     file_type=spec.get("fileType", 0)))
            stream_files.append({"fileId": file_id, "s3Location": {
                "bucket": location["bucket"], "key": location["key"], "version": stored.version_id}})
            http_files.append({"fileId": file_id, "bucket": location["bucket"], "key": location["key"],
                               "version": stored.version_id})
        # An existing stream is left as it is: no patch can be added to it.
        deltas = self._make_deltas(request, first if existing is None else None, stream_files, http_files,
                                   targets)
        if "MQTT" in protocols:
            self._ensure_stream(stream_id, stream_files, row, gate)
        # AWS's document; the chain goes to overair agents only, at delivery.
        document = OtaJobDocument(protocols=protocols, files=tuple(ota_files),
                                  stream_name=stream_id if "MQTT" in protocols else None).to_json_obj()
        config = _job_config(request, described, chain, image_versions, running,
                             http_files if "HTTP" in protocols else None)
        config.update(delta.job_config(first[2] if first else None, deltas))
        job_id = job_id_for(row.ota_update_id)
        warnings = self._warnings(job_id, document, config, profiles, chain)
        for resource in [self._settings.arn("iot", f"job/{job_id}"), *request["targets"]]:
            gate("iot:CreateJob", resource)
        self._set(row.ota_update_id, job_id=job_id)
        try:
            _, notify = self._jobs.create_job(
                job_id, list(request["targets"]), document,
                description=request.get("description", ""),
                target_selection=request.get("targetSelection", "SNAPSHOT"),
                config=config, things=targets)
        except ApiError as exc:
            if exc.code != "ResourceAlreadyExistsException":
                raise
            notify = []  # an earlier attempt created it; its devices were notified then
        return notify, warnings

    def _make_deltas(self, request: dict[str, Any], first: tuple[bytes, Version, dict[str, Any]] | None,
                     stream_files: list[dict[str, Any]], http_files: list[dict[str, Any]],
                     things: list[str]) -> list[Patch]:
        """The patches asked for (server/ota/delta.py), added to the files delivered."""
        if first is None or not delta.requested(request):
            return []
        data, version, image_object = first
        deltas = self._deltas.make(data, version, image_object, self._jobs.running_versions(things))
        for patch in deltas:  # delivered like the update's own files
            stream_files.append({"fileId": patch.file_id, "s3Location": {
                "bucket": patch.bucket, "key": patch.key, "version": patch.version}})
            http_files.append({"fileId": patch.file_id, "bucket": patch.bucket, "key": patch.key,
                               "version": patch.version})
        return deltas

    def _ensure_stream(self, stream_id: str, files: list[dict[str, Any]], row: OtaUpdate,
                       gate: StepGate) -> None:
        try:
            self._streams.describe_stream(stream_id)
        except ApiError:
            gate("iot:CreateStream", self._settings.arn("iot", f"stream/{stream_id}"))
            self._streams.create_stream(stream_id, files, f"OTA update {row.ota_update_id}",
                                        row.request.get("roleArn", ""))

    def _target_profiles(self, targets: list[str], things: list[str]) -> dict[DeviceProfile, list[str]]:
        """The device profiles among the targets, each with its things (sorted). A group
        target given a profile in overair.toml counts with that profile even while empty
        (a CONTINUOUS job reaches its later members); with no thing at all, the default
        profile counts (the things that join later are most likely of that kind).
        `things`: the targets resolved."""
        resolved = self.profiles.resolve(things)
        unknown = sorted((thing, r.unknown) for thing, r in resolved.items() if r.unknown)
        if unknown:
            shown = ", ".join(f"{thing} names {name!r}" for thing, name in unknown[:SHOWN_THINGS])
            raise OtaFailure(f"targets name device profiles that do not exist ({shown}); known profiles: "
                             f"{sorted(self.profiles.config.profiles)} (attribute overair:deviceProfile)",
                             code="InvalidRequestException")
        by_profile: dict[DeviceProfile, list[str]] = {}
        for thing in things:
            by_profile.setdefault(resolved[thing].profile, []).append(thing)
        for target in targets:
            try:
                arn = parse_arn(target)
            except ArnError:
                continue  # resolve_targets refused anything it could not use
            group = self.profiles.config.group_profile(arn.resource_name) \
                if arn.resource_type == "thinggroup" else None
            if group is not None:
                by_profile.setdefault(group, [])
        if not by_profile:
            by_profile[self.profiles.config.profiles[self.profiles.config.default]] = []
        return by_profile

    def _warnings(self, job_id: str, document: dict[str, Any], config: dict[str, Any],
                  profiles: dict[DeviceProfile, list[str]],
                  chain: list[x509.Certificate]) -> list[tuple[str, str]]:
        """What CREATE_COMPLETE reports in errorInfo: (code, message) pairs."""
        warnings = [(OVER_BUDGET, text) for text in self._over_budget(job_id, document, config, profiles)]
        expiry = signer_expiry_warning(chain, rollout.schedule(config.get("schedulingConfig")).end,
                                       self._clock())
        if expiry is not None:
            warnings.append((SIGNER_EXPIRES, expiry))
        return warnings

    def _over_budget(self, job_id: str, document: dict[str, Any], config: dict[str, Any],
                     profiles: dict[DeviceProfile, list[str]]) -> list[str]:
        """For each profile among the targets: the largest job message its thing with the
        longest name would receive (the document as delivered to it: fresh URL, and the
        overair extension if the profile takes it), against the profile's budget."""
        job = Job(job_id=job_id, document=document, config=config)  # not stored: only rendered
        warnings = []
        for profile, things in sorted(profiles.items(), key=lambda item: item[0].name):
            longest = max(things, key=len) if things else "x" * 128  # a later member: AWS's longest name
            # As delivered (a fresh URL), with the extension exactly as this profile gets it.
            delivered = {k: v for k, v in self._jobs.render_document(job, longest).items() if k != "overair"}
            as_received = _with_extension(delivered, config, profile, job, longest)
            size = largest_job_message(job_id, longest, as_received)
            if size > profile.message_budget_bytes:
                shown = ", ".join(things[:SHOWN_THINGS]) + (", ..." if len(things) > SHOWN_THINGS else "")
                warnings.append(
                    f"the job message for {len(things)} target(s) with {profile.describe()} would be "
                    f"{size} bytes, over their budget of {profile.message_budget_bytes}: such devices drop "
                    f"it and never see the job" + (f" ({shown})" if things else ""))
        return warnings

    def _new_stream_id(self) -> str:
        # Short ids leave room in the device's receive buffer (device-protocol.md §2).
        return "ota-" + secrets.token_hex(5)

    @staticmethod
    def _existing_stream(files: list[dict[str, Any]]) -> str | None:
        """The stream named by files given as fileLocation.stream (one stream per update)."""
        named = {str((f.get("fileLocation") or {}).get("stream", {}).get("streamId"))
                 for f in files if (f.get("fileLocation") or {}).get("stream")}
        if len(named) > 1:
            raise OtaFailure("all files given by stream must use the same stream",
                             code="InvalidRequestException")
        return named.pop() if named else None

    def _location(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The object version a file comes from: its s3Location, or the s3Location of the
        named file of an existing stream."""
        file_location = spec.get("fileLocation") or {}
        stream_ref = file_location.get("stream")
        if isinstance(stream_ref, dict) and stream_ref.get("streamId"):
            stream = self._streams.describe_stream(str(stream_ref["streamId"]))
            file_id = stream_ref.get("fileId", 0)
            for entry in stream.files:
                if entry["fileId"] == file_id:
                    return dict(entry["s3Location"])
            raise OtaFailure(f"stream {stream.stream_id} has no file {file_id}",
                             code="InvalidRequestException")
        location = file_location.get("s3Location")
        if not isinstance(location, dict) or not location.get("bucket") or not location.get("key"):
            raise OtaFailure("each file needs fileLocation.s3Location (bucket and key) or "
                             "fileLocation.stream", code="InvalidRequestException")
        return location

    @staticmethod
    def _check_size(name: str, size: int, profiles: dict[DeviceProfile, list[str]]) -> None:
        """Each target's profile must take the file: a FreeRTOS device silently ignores
        one larger than its block bitmap tracks (device-protocol.md §2)."""
        if size == 0:
            raise OtaFailure(f"file {name!r} is empty; devices ignore empty files",
                             code="InvalidRequestException")
        too_small = sorted((p for p in profiles if size > p.max_file_bytes), key=lambda p: p.name)
        if too_small:
            parts = []
            for profile in too_small:
                things = profiles[profile]
                shown = ", ".join(things[:SHOWN_THINGS]) + (", ..." if len(things) > SHOWN_THINGS else "")
                parts.append(f"{len(things)} target(s) with {profile.describe()}"
                             + (f": {shown}" if things else ""))
            raise OtaFailure(f"file {name!r} is {size} bytes, larger than these devices take: "
                             + "; ".join(parts) + " (a FreeRTOS device ignores such a file; give the things "
                             "a device profile that takes it in overair.toml [device_profiles], or target "
                             "overair agents only)", code="InvalidRequestException")

    def _signature(self, spec: dict[str, Any], location: dict[str, Any], row: OtaUpdate,
                   gate: StepGate) -> Signed:
        code_signing = spec.get("codeSigning") or {}
        if code_signing.get("awsSignerJobId"):
            signer_job = str(code_signing["awsSignerJobId"])
            gate("signer:DescribeSigningJob",
                          self._settings.arn("signer", f"/signing-jobs/{signer_job}"))
            return self._signing.signed_by_job(signer_job)
        start = code_signing.get("startSigningJobParameter")
        if start:
            destination = ((start.get("destination") or {}).get("s3Destination") or {})
            profile = start.get("signingProfileName")
            if not profile:
                raise OtaFailure("startSigningJobParameter needs signingProfileName",
                                 code="InvalidRequestException")
            self._ensure_profile(gate, profile, start.get("signingProfileParameter"))
            gate("signer:StartSigningJob",
                          self._settings.arn("signer", f"/signing-profiles/{profile}"))
            # The signing job reads the image and writes the signed object as the role.
            return self._signing.sign_object(profile, location["bucket"], location["key"],
                                             location.get("version"),
                                             destination.get("bucket") or location["bucket"],
                                             destination.get("prefix", "signed/"),
                                             requested_by=f"ota/{row.ota_update_id}", authorize=gate)
        custom = code_signing.get("customCodeSigning")
        if custom:
            return self._custom(custom, self._settings.limits)
        raise OtaFailure("each file needs codeSigning: startSigningJobParameter, awsSignerJobId or "
                         "customCodeSigning", code="InvalidRequestException")

    def _refuse_downgrade(self, request: dict[str, Any], version: Version, things: list[str]) -> list[str]:
        """Threat N1 at the source: an image older than what this server already
        installed on a target is refused, unless additionalParameters says
        `overair:allowDowngrade` = "true" (devices refuse it anyway: anti-rollback).
        Targets that already run this very version are returned, to be left out of the job:
        re-sending a version to a group reaches the members that failed it or never got
        it (issue 15), and never the ones that run it."""
        allowed = (request.get("additionalParameters") or {}).get(ALLOW_DOWNGRADE, "").lower() == "true"
        if allowed:
            return []
        installed = self._jobs.installed_versions(things)
        # What a target runs now (a later, allowed downgrade may have replaced the highest).
        now_running = {**installed, **self._jobs.running_versions(list(installed))} if installed else {}
        running = sorted(t for t, v in now_running.items() if Version.parse(v) == version)
        newer = sorted((v, t) for t, v in installed.items() if Version.parse(v) > version)
        if newer:
            shown = ", ".join(f"{thing} runs {v}" for v, thing in newer[:5])
            raise OtaFailure(f"image version {version} is older than what targets already run ({shown}); "
                             f"set additionalParameters {ALLOW_DOWNGRADE}=true to send it anyway",
                             code="InvalidRequestException")
        return running

    def _ensure_profile(self, gate: StepGate, name: str, parameter: dict[str, Any] | None) -> None:
        """As in AWS: a signingProfileParameter creates the named profile when it does
        not exist yet (platform, certificate and certificatePathOnDevice)."""
        try:
            self._signing.get_profile(name)
            return
        except ApiError:
            if not parameter:
                raise OtaFailure(f"signing profile {name} does not exist (give signingProfileParameter "
                                 "to create it)", code="ResourceNotFoundException") from None
        gate("signer:PutSigningProfile",
                      self._settings.arn("signer", f"/signing-profiles/{name}"))
        self._signing.put_profile(name, parameter.get("platform") or DEFAULT_PLATFORM,
                                  str(parameter.get("certificateArn", "")),
                                  str(parameter.get("certificatePathOnDevice", "")))

    @staticmethod
    def _custom(custom: dict[str, Any], limits: Limits) -> Signed:
        signature = (custom.get("signature") or {}).get("inlineDocument")
        chain_spec = custom.get("certificateChain") or {}
        if not isinstance(signature, bytes | str) or not chain_spec.get("inlineDocument"):
            raise OtaFailure("customCodeSigning needs signature.inlineDocument and "
                             "certificateChain.inlineDocument", code="InvalidRequestException")
        if isinstance(signature, str):
            signature = base64.b64decode(signature)
        algorithm = str(custom.get("signatureAlgorithm", "ECDSA")).upper()
        key = "sig-sha256-rsa" if algorithm == "RSA" else "sig-sha256-ecdsa"
        try:  # base64 DER as AWS documents it, or PEM (core/certchain.py)
            chain = certchain.parse_chain_document(str(chain_spec["inlineDocument"]),
                                                   max_certificates=limits.agent_max_signer_chain)
        except DecodeError as exc:
            raise OtaFailure(f"customCodeSigning.certificateChain.inlineDocument: {exc.message}",
                             code="InvalidRequestException") from exc
        return Signed(signature, chain, chain_spec.get("certificateName", "/certs/code-signing.pem"),
                      key, "")

    def _verify(self, data: bytes, signed: Signed) -> None:
        trust = codesign.TrustPolicy(tuple(self._trust_roots()), self._signing.revoked_serials())
        now = dt.datetime.fromtimestamp(self._clock(), dt.UTC)
        try:
            codesign.verify_file_signature(codesign.sha256(data), signed.signature, signed.chain,
                                           trust, now)
        except OverairError as exc:
            raise OtaFailure(f"signature check failed ({exc.code}): {exc.message}",
                             code="SignatureVerificationFailed") from exc


def image_version(data: bytes, file_version: Any) -> Version | None:
    """The firmware version a file installs: its overair image header, else the
    request's fileVersion when it reads as MAJOR.MINOR.BUILD, else unknown."""
    try:
        return parse_header(data).version
    except DecodeError:
        pass
    try:
        return Version.parse(str(file_version)) if file_version else None
    except (ValueError, DecodeError):
        return None


def signer_expiry_warning(chain: list[x509.Certificate], end: float | None, now: float) -> str | None:
    """The warning for a signer chain that expires before the rollout's end (its endTime,
    else 30 days from now, the horizon of `overair signing list`); None if it does not."""
    if not chain:
        return None
    first = min(chain, key=lambda cert: cert.not_valid_after_utc)
    expires = first.not_valid_after_utc.timestamp()
    horizon = end if end is not None else now + EXPIRY_WARNING.total_seconds()
    if expires >= horizon:
        return None
    what = "the signer certificate" if first is chain[0] else "a CA certificate of the signer chain"
    until = "the rollout's endTime" if end is not None else "30 days from now"
    when = dt.datetime.fromtimestamp(expires, dt.UTC).strftime("%Y-%m-%dT%H:%M")
    return (f"{what} ({first.subject.rfc4514_string()}) expires at {when} UTC, before {until}: devices "
            "that receive the job after that refuse the image (CertificateExpired); sign it with a "
            "certificate that outlives the rollout")


def job_config_from_ota(request: dict[str, Any]) -> dict[str, Any]:
    """CreateOTAUpdate's awsJob* blocks in CreateJob's terms (the abort list is renamed)."""
    config: dict[str, Any] = {}
    if request.get("awsJobExecutionsRolloutConfig"):
        config["jobExecutionsRolloutConfig"] = request["awsJobExecutionsRolloutConfig"]
    if request.get("awsJobAbortConfig"):
        config["abortConfig"] = {"criteriaList": request["awsJobAbortConfig"].get("abortCriteriaList", [])}
    if request.get("awsJobTimeoutConfig"):
        config["timeoutConfig"] = request["awsJobTimeoutConfig"]
    if request.get("awsJobPresignedUrlConfig"):
        config["presignedUrlConfig"] = request["awsJobPresignedUrlConfig"]
    scheduling = scheduling_from_ota(request)
    if scheduling:
        config["schedulingConfig"] = scheduling
    limits = download_policy.parse_parameters(request.get("additionalParameters"))
    if limits is not None:  # read by the download policy (server/delivery/download_gate.py)
        config[download_policy.JOB_CONFIG_KEY] = limits.to_config()
    gates = health_gates.parse_parameters(request.get("additionalParameters"))
    if gates is not None:  # read by the health monitor (server/health/monitor.py)
        config[health_gates.JOB_CONFIG_KEY] = gates.to_config()
    return config


def scheduling_from_ota(request: dict[str, Any]) -> dict[str, Any]:
    """CreateJob's schedulingConfig from the additionalParameters overair:endTime (AWS's
    `yyyy-MM-ddTHH:mm`, UTC) and overair:endBehavior (STOP_ROLLOUT, CANCEL, FORCE_CANCEL)."""
    params = request.get("additionalParameters") or {}
    scheduling: dict[str, Any] = {}
    if params.get(END_TIME):
        scheduling["endTime"] = params[END_TIME]
    if params.get(END_BEHAVIOR):
        scheduling["endBehavior"] = params[END_BEHAVIOR]
    return scheduling


def _with_extension(document: dict[str, Any], config: dict[str, Any],
                    profile: DeviceProfile, job: Job | None = None, thing: str = "") -> dict[str, Any]:
    """The document as `profile` receives it: with the signer chain and, for `job`, signed
    deployment metadata as large as the real one (a throwaway key of the same type, the
    widest expiry and sequence), so that the budget check counts it."""
    if not profile.overair_extension:
        return document
    extension = dict(config.get(OVERAIR_EXTENSION) or {})
    if job is not None:
        signed = _SIZE_ESTIMATOR.sign_delivery(job, thing, document)
        if signed is not None:
            extension["deployment"] = signed
    return {**document, "overair": extension} if extension else document


# Signs only to measure: never delivered, its key never trusted by anyone.
_SIZE_ESTIMATOR = DeploymentSigner(ec.generate_private_key(ec.SECP256R1()), lambda: 9_999_999_999.0)


def _jsonable(value: Any) -> Any:
    """The request as stored: blobs as base64 text, datetimes as epoch seconds."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dt.datetime):
        return value.timestamp()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _job_config(request: dict[str, Any], described: list[dict[str, Any]], chain: list[x509.Certificate],
                image_versions: list[Version], running: list[str],
                http_files: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The OTA job's configuration: AWS's job options from the request, plus what overair
    keeps for delivery (the files the deployment metadata binds, the chain for overair
    agents, the image version, the targets left out, the files HTTP delivery signs URLs for)."""
    config = {**job_config_from_ota(request), DEPLOYMENT_FILES: described}
    if chain:
        config[OVERAIR_EXTENSION] = overair_extension(
            tuple(c.public_bytes(serialization.Encoding.DER) for c in chain))
    gates = health_gates.HealthGates.from_config(config.get(health_gates.JOB_CONFIG_KEY))
    if gates is not None:  # overair agents keep the image on trial for the window (core/health.py)
        config[OVERAIR_EXTENSION] = {**(config.get(OVERAIR_EXTENSION) or {}),
                                     "health": {"windowSeconds": gates.window_seconds}}
    if image_versions:
        config[IMAGE_VERSION] = str(image_versions[0])
    if running:
        config[SKIPPED_THINGS] = running
    if http_files is not None:  # the job service renders a fresh URL into each delivery
        config[HTTP_FILES] = http_files
    return config
