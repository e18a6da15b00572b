"""overair's CreateOfflineBundle: what an offline bundle (core/bundle.py) of an OTA
update for one thing carries, made by the server that holds the deployment key.

Why an API operation (model: apimodels/overair) rather than a command that opens the
data directory: the deployment key's sequence only goes up within the one process that
signs (server/ota/deployment.py), the caller is authorised and audited like any other
(IAM action `overair:CreateOfflineBundle`), and `overair bundle create` then works from
any operator's machine. The operation returns the document and the files' locations;
the CLI reads the files with S3 GetObject (the caller's own s3 permissions, as
CreateOTAUpdate requires of its role) so that an image of hundreds of MiB never travels
in a JSON body, checks them against the SHA-256 the metadata binds, and writes the file.

The thing must be a target of the update's job with a pending execution: the bundle
carries that execution's number, so that when the device next connects, the service
offers the same execution and the agent repeats the result it recorded (N3), which is
how the server learns the outcome of an offline install.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from collections.abc import Callable
from typing import Any

from overair.core.deployment import BUNDLE_SOURCE_PREFIX
from overair.core.jobstates import ExecStatus
from overair.server.api.contract import ApiError, ApiRequest, OperationTable
from overair.server.jobs.deliveries import HTTP_FILES
from overair.server.jobs.service import JobService
from overair.server.ota.deployment import DEPLOYMENT_FILES, DeploymentSigner
from overair.server.ota.manager import OtaManager
from overair.server.ota.profiles import OVERAIR_EXTENSION
from overair.server.storage.schema import Job
from overair.server.streams.service import StreamService

DEFAULT_VALID_HOURS = 72
MAX_VALID_HOURS = 24 * 366
_PENDING = (ExecStatus.QUEUED.value, ExecStatus.IN_PROGRESS.value)


def _invalid(message: str) -> ApiError:
    return ApiError("ValidationException", message, 400)  # the overair model's error


def bundle_stream_id(job_id: str) -> str:
    """The stream name a bundle's document gives (the agent reads its blocks from the
    bundle, never from a broker); it matches STREAM_ID_RE as the agent requires."""
    return "bundle-" + hashlib.sha256(job_id.encode()).hexdigest()[:32]


def bundle_document(job: Job, stream_id: str) -> dict[str, Any]:
    """The job's document as a bundle carries it: files from the stream `stream_id` (MQTT),
    no URL (the files are in the bundle)."""
    document = copy.deepcopy(job.document)
    ota = document["afr_ota"]
    ota["protocols"] = ["MQTT"]
    ota["streamname"] = stream_id
    for entry in ota.get("files") or []:
        entry.pop("update_data_url", None)
        entry.pop("auth_scheme", None)
    return document


class BundleMaker:
    def __init__(self, ota: OtaManager, jobs: JobService, streams: StreamService,
                 signer: Callable[[], DeploymentSigner], revocations: Callable[[], bytes],
                 trust_lists: Callable[[], bytes | None] = lambda: None) -> None:
        self._ota = ota
        self._jobs = jobs
        self._streams = streams
        self._signer = signer
        self._revocations = revocations
        self._trust_lists = trust_lists  # the published chain (key rotation), for offline devices too

    def make(self, ota_update_id: str, thing: str, valid_hours: int) -> dict[str, Any]:
        if not 1 <= valid_hours <= MAX_VALID_HOURS:
            raise _invalid(f"ValidHours must be between 1 and {MAX_VALID_HOURS}")
        row = self._ota.get(ota_update_id)
        if not row.job_id:
            raise _invalid(f"OTA update {ota_update_id} has no job yet (status {row.status})")
        job, _ = self._jobs.describe_job(row.job_id)
        if DEPLOYMENT_FILES not in job.config or not isinstance(job.document.get("afr_ota"), dict):
            raise _invalid(f"job {job.job_id} is not an OTA job whose files overair describes")
        execution = self._jobs.describe_execution(job.job_id, thing)  # ResourceNotFound: not a target
        if execution.status not in _PENDING:
            raise _invalid(f"the execution of job {job.job_id} on {thing} is {execution.status}: "
                          "there is nothing to install")
        original = job.document["afr_ota"]
        document = bundle_document(job, bundle_stream_id(job.job_id))
        signed = self._signer().sign_bundle(job, thing, document, f"{BUNDLE_SOURCE_PREFIX}{ota_update_id}",
                                            valid_hours * 3600)
        if signed is None:
            raise _invalid(f"job {job.job_id}: its files cannot be described in deployment metadata")
        document["overair"] = {**(job.config.get(OVERAIR_EXTENSION) or {}), "deployment": signed}
        files = [{"FileName": str(f["filepath"]), "Size": int(f["filesize"]), "Sha256": d["sha256"], **loc}
                 for f, d, loc in zip(original["files"], job.config[DEPLOYMENT_FILES],
                                      self._locations(job, original), strict=True)]
        chain = self._trust_lists()
        return {"ThingName": thing, "JobId": job.job_id, "ExecutionNumber": execution.execution_number,
                "Document": json.dumps(document, separators=(",", ":"), sort_keys=True),
                "Files": files, "RevocationList": base64.b64encode(self._revocations()).decode(),
                **({"TrustLists": base64.b64encode(chain).decode()} if chain is not None else {})}

    def _locations(self, job: Job, ota: dict[str, Any]) -> list[dict[str, str]]:
        """Where each file of the document is stored (the version the job delivers)."""
        stored: dict[int, dict[str, Any]] = {}
        if HTTP_FILES in job.config:
            for entry in job.config[HTTP_FILES]:
                stored[int(entry["fileId"])] = {"bucket": entry["bucket"], "key": entry["key"],
                                                "version": entry.get("version")}
        elif ota.get("streamname"):
            for entry in self._streams.describe_stream(str(ota["streamname"])).files:
                stored[int(entry["fileId"])] = entry["s3Location"]
        out = []
        for f in ota.get("files") or []:
            where = stored.get(int(f.get("fileid", 0)))
            if where is None:
                raise _invalid(f"job {job.job_id}: where file {f.get('filepath')!r} is stored is unknown")
            out.append({"Bucket": str(where["bucket"]), "Key": str(where["key"]),
                        **({"VersionId": str(where["version"])} if where.get("version") else {})})
        return out


def register(table: OperationTable, maker: BundleMaker) -> None:
    def create(r: ApiRequest) -> dict[str, Any]:
        return maker.make(r.params["OtaUpdateId"], r.params["ThingName"],
                          int(r.params.get("ValidHours", DEFAULT_VALID_HOURS)))

    table.register("overair", "CreateOfflineBundle", create)
