"""The agent's state: what survives a reboot (`Journal`) and what does not (`State`).

The journal is the device's trusted memory (threat N3, R2): the job it is working on
and at which stage, the results of the jobs it finished (so that a replayed or re-sent
job is never applied twice) and the version floor below which it never goes back (N1).
It is small, JSON, and rewritten atomically by the runtime whenever it changes.

A download's bitmap is deliberately *not* journaled: the platform keeps it beside the
partial file (agent/progress.py), saved only after the blocks it claims are durable, and
hands it back at boot (`Booted.staged`); when the same job is offered again the download
resumes there, asking only for the blocks still missing (R2). The security counter
(N1) lives in the platform too, raised by the same write that commits an image.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from overair.agent.progress import StagedProgress
from overair.core.delta_offer import DeltaOffer
from overair.core.deployment import Deployment
from overair.core.errors import DecodeError
from overair.core.limits import MIB
from overair.core.versions import Version

JOURNAL_FORMAT = 1
NO_VERSION = Version(0, 0, 0)  # before the first boot
MAX_RESULTS = 64  # finished jobs remembered for replay protection


class Phase(StrEnum):
    BOOTING = "booting"
    IDLE = "idle"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    ACTIVATING = "activating"
    SELF_TEST = "self_test"
    COMMITTING = "committing"
    REBOOTING = "rebooting"


class DataProtocol(StrEnum):
    """How the blocks of a file travel (the job document's `protocols`, device-protocol.md
    §3-§4); job status always flows over MQTT."""

    MQTT = "MQTT"  # CBOR GetStream requests on the stream's topics
    HTTP = "HTTP"  # HTTPS Range requests on the job's pre-signed `update_data_url`


class JobStage(StrEnum):
    """How far the current job got; journaled so that it survives a reboot."""

    DOWNLOADING = "downloading"
    ACTIVATING = "activating"  # self_test ready sent, new image activated, rebooting
    SELF_TEST = "self_test"  # booted the new image, self_test active sent
    COMMITTING = "committing"  # self-test passed, commit under way


@dataclass(frozen=True, slots=True)
class Settings:
    """What the machine needs from the configuration (no paths, no I/O)."""

    thing_name: str
    block_size: int = 4096
    blocks_per_request: int = 8
    status_every_blocks: int = 25
    # Progress reports are also paced by time: a fast download must not spend the
    # device's job-update budget on them (the server throttles a device past it).
    status_min_interval: float = 1.0
    # HTTP: blocks fetched per Range request (FreeRTOS fetches one; a larger range costs
    # the server one request per span instead of one per 4 KiB block).
    http_range_blocks: int = 16
    request_timeout: float = 10.0
    max_request_momentum: int = 32
    max_next_job_retry: float = 300.0  # cap of the backoff re-asking an unanswered $next/get
    # Retries of a download (machine/backoff.py, issue 18): capped exponential backoff
    # with full jitter from `retry_base` to `retry_cap` seconds, and at most
    # `job_retry_budget` failed requests per job (a refused URL, an HTTP error, no
    # response, a stream request rejected); past it the job ends FAILED with the last
    # failure as its reason. A server asking the device to slow down (HTTP 429/503 with
    # Retry-After, a throttled stream request) spends no budget: it is waited out.
    retry_base: float = 1.0
    retry_cap: float = 60.0
    job_retry_budget: int = 20
    self_test_deadline: float = 60.0
    max_file_size: int = 64 * MIB
    prefer_http: bool = False  # a job offering both protocols is downloaded over HTTPS
    save_progress_every: int = 8  # blocks between two saves of a resumable download's bitmap
    # Deployment metadata (core/deployment.py, F1 F2): the trusted public keys, whether a
    # job without valid metadata is refused, and how long before its expiry a download
    # asks for the job again (the server signs fresh metadata into each delivery).
    deployment_keys: tuple[ec.EllipticCurvePublicKey, ...] = ()
    require_deployment: bool = False
    deployment_refresh_margin: float = 60.0
    # Installing an offline bundle (agent/bundle_install.py): only metadata signed for a
    # bundle is admitted, and online only metadata that is not.
    offline_bundle: bool = False
    # Delta updates (core/delta.py): the platform can read the running image, so a patch
    # from it (the document's `overair:delta`) is downloaded instead of the full image.
    accept_delta: bool = False


@dataclass(frozen=True, slots=True)
class FileSpec:
    """The file of an OTA job, as the agent needs it to download and verify."""

    stream: str  # "" when the file is delivered over HTTP only
    file_id: int
    size: int
    signature: bytes
    signature_key: str
    certfile: str
    signer_chain: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class JobRecord:
    job_id: str
    execution_number: int | None
    stage: JobStage
    updated_by: Version | None = None  # the version that ran when the update started
    new_version: Version | None = None


@dataclass(frozen=True, slots=True)
class JobResult:
    job_id: str
    execution_number: int | None
    status: str
    details: tuple[tuple[str, str], ...]
    at: float

    @property
    def details_dict(self) -> dict[str, str]:
        return dict(self.details)

    @property
    def reason(self) -> str:
        return self.details_dict.get("reason", "")

    def to_json_obj(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "execution_number": self.execution_number,
                "status": self.status, "details": self.details_dict, "at": self.at}


@dataclass(frozen=True, slots=True)
class Journal:
    job: JobRecord | None = None
    results: tuple[JobResult, ...] = ()
    version_floor: Version | None = None
    deployment_sequence: int = 0  # of the newest deployment metadata admitted (F1: never goes back)

    @property
    def last_result(self) -> JobResult | None:
        return self.results[-1] if self.results else None

    def result_for(self, job_id: str) -> JobResult | None:
        for result in reversed(self.results):
            if result.job_id == job_id:
                return result
        return None

    def with_result(self, result: JobResult, *, finishes_current: bool = True) -> Journal:
        """Remember `result`; it ends the current job unless `finishes_current` is False
        (a job other than the current one, refused on arrival)."""
        kept = tuple(r for r in self.results if r.job_id != result.job_id)
        return replace(self, job=None if finishes_current else self.job,
                       results=(*kept, result)[-MAX_RESULTS:])

    def to_json_obj(self) -> dict[str, Any]:
        job = None
        if self.job is not None:
            job = {"job_id": self.job.job_id, "execution_number": self.job.execution_number,
                   "stage": self.job.stage.value,
                   "updated_by": _version_text(self.job.updated_by),
                   "new_version": _version_text(self.job.new_version)}
        return {"format": JOURNAL_FORMAT, "job": job,
                "results": [r.to_json_obj() for r in self.results],
                "version_floor": _version_text(self.version_floor),
                "deployment_sequence": self.deployment_sequence}

    @classmethod
    def from_json_obj(cls, obj: Any) -> Journal:
        """Parse a journal; anything unexpected is a DecodeError (the caller decides)."""
        try:
            if not isinstance(obj, dict) or obj.get("format") != JOURNAL_FORMAT:
                raise DecodeError("unknown journal format")
            job_obj = obj.get("job")
            job = None
            if job_obj is not None:
                job = JobRecord(
                    job_id=_text(job_obj["job_id"]),
                    execution_number=_opt_int(job_obj.get("execution_number")),
                    stage=JobStage(job_obj["stage"]),
                    updated_by=_version(job_obj.get("updated_by")),
                    new_version=_version(job_obj.get("new_version")),
                )
            results = tuple(
                JobResult(
                    job_id=_text(r["job_id"]),
                    execution_number=_opt_int(r.get("execution_number")),
                    status=_text(r["status"]),
                    details=tuple((_text(k), _text(v)) for k, v in dict(r.get("details", {})).items()),
                    at=float(r.get("at", 0.0)),
                )
                for r in obj.get("results", [])
            )
            sequence = obj.get("deployment_sequence", 0)
            if isinstance(sequence, bool) or not isinstance(sequence, int) or sequence < 0:
                raise DecodeError("malformed journal: deployment_sequence", code="BadJournal")
            return cls(job=job, results=results[-MAX_RESULTS:],
                       version_floor=_version(obj.get("version_floor")), deployment_sequence=sequence)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DecodeError(f"malformed journal: {exc}", code="BadJournal") from exc


@dataclass(frozen=True, slots=True)
class Download:
    """A file download in progress (FreeRTOS file context), over an MQTT stream or HTTPS.

    Over HTTP one Range request is in flight at a time, as FreeRTOS does, but it asks
    for a run of up to `http_range_blocks` missing blocks (FreeRTOS: one block);
    `url` is the pre-signed URL of the latest job document (a re-sent document replaces
    it without restarting the download) and `in_flight` the number of the request whose
    answer is awaited (`HttpGetRange.request`), so that a late answer to an older request
    is never taken for the current one.
    """

    job_id: str
    execution_number: int | None
    file: FileSpec
    total_blocks: int
    needed: bytes  # whole-file bitmap, bit set = still needed (device-protocol.md §3)
    remaining: int  # blocks not yet received
    unstored: int = 0  # received, handed to WriteBlock, BlockStored not yet seen
    awaiting: int = 0  # new blocks still expected for the last request
    last_activity: float = 0.0  # last request sent or new block received
    momentum: int = 0  # requests sent since the last new block
    protocol: DataProtocol = DataProtocol.MQTT
    url: str | None = None  # HTTP: the pre-signed URL blocks are fetched from
    in_flight: int | None = None  # HTTP: the range request awaiting its answer
    in_flight_block: int = 0  # HTTP: the first block that request asked for
    in_flight_count: int = 1  # HTTP: how many blocks it asked for
    retry_at: float | None = None  # when a failed or refused request is sent again (backoff)
    retries: int = 0  # failed requests of this job (against `job_retry_budget`)
    throttled: int = 0  # requests the server asked to slow down, in a row (backoff exponent)
    last_failure: str = ""  # why the latest request failed (the job's reason if the budget runs out)
    reported_at: float | None = None  # when progress was last reported
    binding: bytes = b""  # agent/progress.py binding of this download
    saved: int = 0  # blocks stored when the bitmap was last saved
    resumed: int = 0  # blocks already held when the download (re)started
    deployment: Deployment | None = None  # the admitted signed metadata of this job (F1 F2)
    deployment_refresh_asked: bool = False  # fresh metadata was asked for before expiry
    # A delta download: `file` is then the patch, `image` the full image it rebuilds
    # (verified as such), and the download falls back to `image` if the patch fails.
    delta: DeltaOffer | None = None
    image: FileSpec | None = None
    image_url: str | None = None  # HTTP: the full image's pre-signed URL (for the fallback)

    @property
    def stored(self) -> int:
        return self.total_blocks - self.remaining - self.unstored

    def is_needed(self, block: int) -> bool:
        return bool(self.needed[block // 8] & (1 << (block % 8)))

    def needed_run(self, first: int, limit: int) -> int:
        """How many blocks from `first` on are needed in a row, at most `limit`."""
        count = 0
        while count < limit and first + count < self.total_blocks and self.is_needed(first + count):
            count += 1
        return count

    def first_needed(self) -> int | None:
        """The lowest block still needed, None when every block was received."""
        skipped = len(self.needed) - len(self.needed.lstrip(b"\x00"))  # whole bytes done
        for block in range(skipped * 8, min(self.total_blocks, skipped * 8 + 8)):
            if self.is_needed(block):
                return block
        return None


@dataclass(frozen=True, slots=True)
class State:
    settings: Settings
    journal: Journal = field(default_factory=Journal)
    phase: Phase = Phase.BOOTING
    connected: bool = False
    running: Version = NO_VERSION
    slot: str = ""
    trial: bool = False
    self_test_deadline: float | None = None
    download: Download | None = None
    requests_sent: int = 0  # clientToken counter
    range_requests: int = 0  # HttpGetRange numbering (never reused within a boot)
    # When the last `$next/get` went out and was not answered yet (None: answered), and
    # how many times in a row it went unanswered; drives the re-ask backoff.
    next_job_asked_at: float | None = None
    next_job_unanswered: int = 0
    # A partial download the platform kept across the reboot; used (or dropped) by the
    # first job started after it.
    resumable: StagedProgress | None = None
    security_counter: int = 0  # the floor: images with a lower one are refused (N1)


def _version_text(version: Version | None) -> str | None:
    return None if version is None else str(version)


def _version(value: Any) -> Version | None:
    return None if value is None else Version.parse(_text(value))


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _opt_int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("expected an integer")
    return value
