"""The agent state machine: every transition of the device side of an OTA update.

`handle(state, event, now)` is pure: it reads no clock, file or socket and returns the
next state and the commands the runtime must run. All transitions are in `TABLE`
below, keyed by (phase, event type); `None` as the phase means "in any phase not
listed". Behaviour follows the FreeRTOS OTA agent (device-protocol.md §1-§5), whose
quirks are the contract:

- On connect: subscribe to `notify-next`, publish `$next/get` with a clientToken. A job
  message without `execution` means "no job".
- A job whose document is not `afr_ota` is FAILED with a parser-error reason.
- Blocks are requested with a CBOR GetStream request carrying the bitmap of the blocks
  still needed; the next request goes out after `n` new blocks or after 10 s of
  silence; 32 unanswered requests abort the job. Duplicates are ignored. One
  undecodable or out-of-range block fails the job.
- HTTP delivery (device-protocol.md §4; a job offering only "HTTP", or both protocols
  when `prefer_http`): one `Range` request of one block at a time on the document's
  pre-signed `update_data_url`, first missing block first, as FreeRTOS does, for a run of
  up to `http_range_blocks` missing blocks (FreeRTOS: one); 400, 403 or
  404 means the URL expired: ask `$next/get`, and the re-sent document's fresh URL
  replaces the old one, the download going on from the first missing block. Other
  failures are retried after the response's Retry-After or else `request_timeout`,
  with the same momentum abort as MQTT
  requests. A document that chooses HTTP without a usable https URL fails the job.
- Progress `IN_PROGRESS {"receive": "k/N"}` (QoS 0) after the first block and every
  `status_every_blocks` blocks, at most one per `status_min_interval`.
- Resumable download (R2): every `save_progress_every` stored blocks the bitmap is
  saved with the partial file (SaveProgress). After a reboot the platform hands it
  back (`Booted.staged`); if the first job started is the same download (same binding:
  job, stream, file, size, block size, signature) it resumes and asks only for the
  missing blocks, else the kept file is discarded.
- Complete file: verify (signature, signer chain to the device's code-signing roots,
  usages, revocation; threat N2), refuse an image whose security counter is below the
  device's (N1: `rejected: 0x0000000f`, `check: SecurityCounter`), then anything not
  newer than the running version (N1: `rejected: 0x0000000f` older, `0x00000010`
  same), report
  `self_test: ready` with `updatedBy` = the running version, activate, reboot.
- A health-gated rollout's document carries `overair.health.windowSeconds`: the image
  stays on trial that long after its self-test passed (the self-test result waits), and
  a job message naming no job or another one during the self-test means the service
  ended the execution (a health gate canceled it): the image is rolled back.
- After the reboot the execution comes back with `statusDetails.self_test` (or the
  journal says this execution was activated and its image is the one running: a
  `self_test: ready` report lost on its way does not roll a good image back): the agent
  compares the running version with `updatedBy` like FreeRTOS, reports
  `self_test: active`, runs the self-test, commits, reports SUCCEEDED; a failed or
  late self-test reports FAILED and rolls back (R1).
- Any job message for another job (or "no job") during a download aborts it and asks
  `$next/get` again; a repeat of the current job is ignored (no thrash).
- Finished jobs are remembered in the journal: a replayed job is never applied again;
  the agent re-sends the result it recorded (N3).
- On connect the agent also subscribes to the retained code-signing revocation list
  (before asking for a job, so that the list arrives first); in any phase a list is
  handed to the runtime (`ApplyRevocations`), which verifies and keeps it (O2). So is
  the retained trust list chain that rotates code-signing roots and deployment keys
  (`ApplyTrustList`, core/trustlist.py).
- Everything a message carries is hostile until parsed (issue 12): job messages with
  core.wirejson, documents with core.jobdoc, blocks bounded before they are decoded.
  `handle()` raises for no message; should handling any event still raise (a defect),
  the runtime feeds `HandlingFailed`, and the job concerned ends FAILED
  (`0x00000002: 0x00000000`, `check: AgentDefect`) while the agent goes on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from overair.agent import trust
from overair.agent.machine import backoff, reasons
from overair.agent.machine.commands import (
    AbortStaging,
    ActivateAndReboot,
    ApplyRevocations,
    ApplyTrustList,
    Command,
    CommitImage,
    CreateStaging,
    HttpGetRange,
    Log,
    Publish,
    ReportProgress,
    ResumeStaging,
    RollbackAndReboot,
    RunSelfTest,
    SaveProgress,
    Subscribe,
    Unsubscribe,
    VerifyImage,
    WriteBlock,
)
from overair.agent.machine.events import (
    BlockStored,
    Booted,
    Connected,
    Disconnected,
    Event,
    HandlingFailed,
    HttpRangeFailed,
    HttpRangeReceived,
    ImageCommitted,
    MessageReceived,
    PlatformFailed,
    SelfTestResult,
    Tick,
    VerifyResult,
)
from overair.agent.machine.state import (
    DataProtocol,
    Download,
    FileSpec,
    JobRecord,
    JobResult,
    JobStage,
    Phase,
    State,
)
from overair.agent.progress import binding as staging_binding
from overair.agent.progress import missing_blocks, well_formed
from overair.core import bitmap, wirejson
from overair.core.delta_offer import DeltaOffer, parse_offer
from overair.core.deployment import Deployment
from overair.core.errors import DecodeError
from overair.core.health import health_window
from overair.core.jobdoc import OtaJobDocument, parse_job_document
from overair.core.jobs_wire import REQUEST_THROTTLED
from overair.core.jobstates import ExecStatus
from overair.core.limits import DEFAULT_LIMITS
from overair.core.revocation import REVOCATIONS_TOPIC
from overair.core.streamcodec import GetStreamRequest, decode_data_block, decode_rejection, encode_get_stream
from overair.core.topics import (
    JOB_ID_RE,
    STREAM_ID_RE,
    jobs_prefix,
    notify_next_topic,
    stream_data_topic,
    stream_get_topic,
    stream_rejected_topic,
)
from overair.core.trustlist import TRUST_TOPIC
from overair.core.versions import Version

# A request's bitmap covers at most this many blocks from its offset (128 bytes, the
# FreeRTOS default capacity): files up to 1024 blocks are always requested from offset
# 0 with the whole bitmap, exactly as FreeRTOS does; larger files slide the window.
WINDOW_BLOCKS = 1024
LIMITS = DEFAULT_LIMITS
CLIENT_TOKEN_MAX = LIMITS.max_client_token_length
MAX_EXECUTION_NUMBER = (1 << 63) - 1  # AWS: a long
# `updatedBy` as the agent writes it (Version.hex: 0x%08x), or decimal; ASCII only, so
# that no Unicode digit or oversized number reaches int() (issue 12).
_VERSION_WORD = re.compile(r"0[xX][0-9a-fA-F]{1,8}|[0-9]{1,10}")
# The end of overair's throttled stream rejection (server/gateway/device_service.py).
_RETRY_HINT = re.compile(r"retry after ([0-9]{1,6}(?:\.[0-9]{1,3})?) s\Z")

# OtaErr_t OtaErrInitFileTransferFailed: the file transfer cannot start (HTTP chosen but
# no usable `update_data_url`). Kept here rather than in reasons.py for now.
ERR_INIT_FILE_TRANSFER_FAILED = 0x07
URL_NOT_USABLE = 0x01  # overair sub-code of ERR_INIT_FILE_TRANSFER_FAILED
# HTTP answers meaning "this pre-signed URL no longer works": ask for a fresh one
# (the FreeRTOS HTTP demo does the same for these three).
URL_REFRESH_STATUSES = frozenset({400, 403, 404})
# "Slow down" answers: with a Retry-After they are waited out and spend no retry budget.
THROTTLED_STATUSES = frozenset({429, 503})
RETRY_BUDGET_CHECK = "RetryBudgetExhausted"
# A range request with no answer at all after this many request timeouts is deemed
# lost and sent again. The runtime answers every request, within about four timeouts
# (agent/transport/http.py), so this is only a safety net.
HTTP_LOST_AFTER_TIMEOUTS = 6

Step = tuple[State, list[Command]]


# --- derived events (what a MessageReceived turns out to be) -----------------------------

@dataclass(frozen=True, slots=True)
class Execution:
    job_id: str
    execution_number: int | None
    status_details: dict[str, str]
    document: Any


@dataclass(frozen=True, slots=True)
class JobMessage:
    """A job message (notify-next or a `$next/get` reply); `execution` None = no job."""

    execution: Execution | None


@dataclass(frozen=True, slots=True)
class BlockMessage:
    payload: bytes


@dataclass(frozen=True, slots=True)
class StreamRejection:
    """AWS's rejected response to one of the download's stream requests (undecoded)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class RevocationMessage:
    """The (retained) signed revocation list; unverified until the runtime checks it."""

    envelope: bytes


@dataclass(frozen=True, slots=True)
class TrustListMessage:
    """The (retained) trust list chain; unverified until the runtime's trust walks it."""

    chain: bytes


# --- entry point --------------------------------------------------------------------------

def handle(state: State, event: Event, now: float) -> tuple[State, tuple[Command, ...]]:
    """Apply one event; return the new state and the commands to run, in order."""
    routed: Event | Classified | None = event
    if isinstance(event, MessageReceived):
        routed = _classify(state, event)
        if routed is None:
            return state, (Log("debug", f"ignored message on {event.topic}"),)
    assert routed is not None
    if isinstance(routed, JobMessage):
        state = replace(state, next_job_asked_at=None, next_job_unanswered=0)  # any job message answers
    handler = TABLE.get((state.phase, type(routed))) or TABLE.get((None, type(routed)))
    if handler is None:
        return state, (Log("debug", f"ignored {type(routed).__name__} while {state.phase}"),)
    new_state, commands = handler(state, routed, now)
    return new_state, tuple(commands)


Classified = JobMessage | BlockMessage | RevocationMessage | TrustListMessage | StreamRejection


def _classify(state: State, event: MessageReceived) -> Classified | None:
    thing = state.settings.thing_name
    if event.topic in (notify_next_topic(thing), f"{next_get_topic(thing)}/accepted"):
        return _parse_job_message(event.payload)
    if event.topic == REVOCATIONS_TOPIC:
        return RevocationMessage(event.payload)
    if event.topic == TRUST_TOPIC:
        return TrustListMessage(event.payload)
    dl = state.download
    if dl is not None and dl.protocol is DataProtocol.MQTT and event.topic == _data_topic(state, dl.file):
        return BlockMessage(event.payload)
    if dl is not None and dl.protocol is DataProtocol.MQTT \
            and event.topic == _rejected_topic(state, dl.file):
        return StreamRejection(event.payload)
    return None


def _parse_job_message(payload: bytes) -> JobMessage | None:
    """Lenient where FreeRTOS is (extra keys), strict where a reply could go astray.

    The payload is whatever the broker delivered: decoded with core.wirejson (bounded
    size and depth, only DecodeError), then every field is type-checked; a message that
    names no usable job is ignored (there is nobody to report to). The job document is
    parsed later, by the handler of the job (a bad one fails that job)."""
    try:
        obj = wirejson.loads(payload, max_bytes=LIMITS.agent_max_job_message_bytes, what="job message")
    except DecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    ex = obj.get("execution")
    if ex is None:
        return JobMessage(None)
    if not isinstance(ex, dict):
        return None
    job_id = ex.get("jobId")
    if not isinstance(job_id, str) or not JOB_ID_RE.fullmatch(job_id):
        return None  # without a usable job id there is nobody to report to
    raw_details = ex.get("statusDetails")
    details = ({k: v for k, v in raw_details.items() if isinstance(k, str) and isinstance(v, str)}
               if isinstance(raw_details, dict) else {})
    number = ex.get("executionNumber")
    execution_number = number if isinstance(number, int) and not isinstance(number, bool) \
        and 0 <= number <= MAX_EXECUTION_NUMBER else None
    return JobMessage(Execution(job_id, execution_number, details, ex.get("jobDocument")))


# --- topics and payloads ------------------------------------------------------------------

def next_get_topic(thing: str) -> str:
    return f"{jobs_prefix(thing)}/$next/get"


def update_topic(thing: str, job_id: str) -> str:
    return f"{jobs_prefix(thing)}/{job_id}/update"


def _data_topic(state: State, file: FileSpec) -> str:
    return stream_data_topic(state.settings.thing_name, file.stream, "cbor")


def _rejected_topic(state: State, file: FileSpec) -> str:
    return stream_rejected_topic(state.settings.thing_name, file.stream, "cbor")


def _listen(state: State, file: FileSpec) -> list[Command]:
    """An MQTT download's subscriptions: its blocks, and the service's rejections of its
    requests (which FreeRTOS does not read; the overair agent backs off on them)."""
    return [Subscribe(_data_topic(state, file), 0), Subscribe(_rejected_topic(state, file), 0)]


def _status(state: State, job_id: str, status: ExecStatus, details: dict[str, str], qos: int = 1) -> Publish:
    body = json.dumps({"status": status.value, "statusDetails": details}, separators=(",", ":"))
    return Publish(update_topic(state.settings.thing_name, job_id), body.encode(), qos)


def _ask_next_job(state: State, now: float) -> tuple[State, Publish]:
    seq = state.requests_sent + 1
    token = f"{seq}:{state.settings.thing_name}"[:CLIENT_TOKEN_MAX]
    body = json.dumps({"clientToken": token}, separators=(",", ":")).encode()
    return (replace(state, requests_sent=seq, next_job_asked_at=now),
            Publish(next_get_topic(state.settings.thing_name), body, 1))


def _next_job_retry_due(state: State, now: float) -> bool:
    """An unanswered `$next/get` is asked again after request_timeout, doubling up to a cap:
    a reply lost (or a subscription refused while the broker reloaded its ACL) must not
    leave the device deaf to its jobs until the next reconnect."""
    asked = state.next_job_asked_at
    if asked is None or not state.connected:
        return False
    # A request_timeout for the answer, then a full-jitter backoff (machine/backoff.py):
    # a fleet whose broker restarted does not ask again all at once.
    timeout = state.settings.request_timeout
    key = f"{state.settings.thing_name}/$next/get/{state.requests_sent}"
    cap = state.settings.max_next_job_retry
    wait = timeout + backoff.full_jitter(state.next_job_unanswered, timeout, cap, key)
    return now - asked >= wait


def _request_blocks(state: State, dl: Download, now: float) -> tuple[Download, Publish]:
    total = dl.total_blocks
    if total <= WINDOW_BLOCKS:
        offset, span = 0, total
    else:
        first = next(i for i in range(total) if dl.is_needed(i))
        offset = first - first % 8
        span = min(WINDOW_BLOCKS, total - offset)
    window = dl.needed[offset // 8:(offset + span + 7) // 8]
    n = state.settings.blocks_per_request
    request = GetStreamRequest(client_token="rdy", file_id=dl.file.file_id,
                               block_size=state.settings.block_size, block_offset=offset, bitmap=window,
                               number_of_blocks=n, stream_version=None)
    topic = stream_get_topic(state.settings.thing_name, dl.file.stream, "cbor")
    dl = replace(dl, awaiting=min(n, dl.remaining), last_activity=now, momentum=dl.momentum + 1)
    return dl, Publish(topic, encode_get_stream(request), 0)


def _request_range(state: State, dl: Download, now: float) -> tuple[State, HttpGetRange | None]:
    """The HTTP request for the first missing block and the missing ones right after it,
    up to `http_range_blocks` (None when every block is in)."""
    block = dl.first_needed()
    url = dl.url
    if block is None or url is None:
        return replace(state, download=dl), None
    count = dl.needed_run(block, max(1, state.settings.http_range_blocks))
    seq = state.range_requests + 1
    dl = replace(dl, awaiting=count, last_activity=now, momentum=dl.momentum + 1, in_flight=seq,
                 in_flight_block=block, in_flight_count=count, retry_at=None)
    request = HttpGetRange(url, block * state.settings.block_size, _span_length(state, dl, block, count), seq)
    return replace(state, download=dl, range_requests=seq), request


def _request_next(state: State, dl: Download, now: float) -> tuple[State, list[Command]]:
    """Ask for more blocks over the download's protocol; `state.download` becomes `dl`
    with the request accounted for."""
    if dl.protocol is DataProtocol.HTTP:
        state, request = _request_range(state, dl, now)
        return state, [] if request is None else [request]
    dl, publish = _request_blocks(state, dl, now)
    return replace(state, download=dl), [publish]


def _span_length(state: State, dl: Download, first: int, count: int) -> int:
    """Bytes of blocks `first` .. `first + count - 1` (the last block of the file is short)."""
    size = state.settings.block_size
    return min(count * size, dl.file.size - first * size)


def _release(state: State, dl: Download) -> list[Command]:
    """Stop listening for the download's blocks (MQTT; HTTP holds no subscription)."""
    if dl.protocol is not DataProtocol.MQTT:
        return []
    return [Unsubscribe(_data_topic(state, dl.file)), Unsubscribe(_rejected_topic(state, dl.file))]


def _redacted(url: str) -> str:
    """A pre-signed URL without its query (the signature is a credential): for logs."""
    return url.split("?", 1)[0]


def _usable_url(url: str | None) -> bool:
    if url is None or len(url) > LIMITS.agent_max_job_text_length \
            or any(ch.isspace() or ord(ch) < 0x20 for ch in url):
        return False
    try:
        parts = urlsplit(url)
        _ = parts.port  # a malformed port raises
    except ValueError:
        return False
    return parts.scheme == "https" and bool(parts.hostname)


def _choose_protocol(state: State, doc: OtaJobDocument) -> DataProtocol:
    """MQTT unless the document offers only HTTP, or offers both with a URL and the
    device prefers HTTP (`[ota] prefer_http`)."""
    if "MQTT" not in doc.protocols:
        return DataProtocol.HTTP
    if "HTTP" in doc.protocols and state.settings.prefer_http and doc.files[0].update_data_url is not None:
        return DataProtocol.HTTP
    return DataProtocol.MQTT


# --- results --------------------------------------------------------------------------------

def _finish(state: State, job_id: str, execution_number: int | None, status: ExecStatus,
            details: dict[str, str], now: float, *, rollback: bool = False) -> Step:
    """Record a terminal result in the journal, report it, and go idle (or roll back)."""
    result = JobResult(job_id, execution_number, status.value, tuple(details.items()), now)
    level = "info" if status is ExecStatus.SUCCEEDED else "warning"
    commands: list[Command] = [Log(level, f"job {job_id} {status.value}: {details.get('reason', '')}"),
                               _status(state, job_id, status, details)]
    state = replace(state, journal=state.journal.with_result(result), download=None, phase=Phase.IDLE)
    if rollback:
        state = replace(state, phase=Phase.REBOOTING)
        commands.append(RollbackAndReboot())
    return state, commands


def _fail(state: State, job_id: str, execution_number: int | None, reason: str, now: float, *,
          detail: str = "", check: str = "", rollback: bool = False) -> Step:
    details = {"reason": reason}
    if check:
        details["check"] = check
    if detail:
        details["detail"] = reasons.detail(detail)
    return _finish(state, job_id, execution_number, ExecStatus.FAILED, details, now, rollback=rollback)


def _fail_download(state: State, reason: str, now: float, *, detail: str = "", check: str = "") -> Step:
    dl = state.download
    assert dl is not None
    if dl.delta is not None:  # the patch could not be downloaded: the full image instead
        released = _release(state, dl)
        state, commands = _fall_back_to_image(state, dl, f"{check or reason}: {detail}", now)
        return state, [*released, *commands]
    cleanup: list[Command] = [*_release(state, dl), AbortStaging()]
    state, commands = _fail(state, dl.job_id, dl.execution_number, reason, now, detail=detail, check=check)
    return state, cleanup + commands


# --- handlers -------------------------------------------------------------------------------

def on_booted(state: State, event: Booted, now: float) -> Step:
    journal = state.journal
    commands: list[Command] = [Log("info", f"booted {event.running} from slot {event.slot}"
                                           + (" (trial: self-test pending)" if event.trial else ""))]
    if event.fell_back:
        commands.append(Log("warning", "the new image was never committed: booted the confirmed image"))
    if journal.job is not None and journal.job.stage is JobStage.DOWNLOADING:
        # The staging file did not survive as a whole: the download restarts from block 0.
        journal = replace(journal, job=None)
    journal = replace(journal, version_floor=trust.floor_after_boot(journal.version_floor, event.running,
                                                                    trial=event.trial))
    deadline = now + state.settings.self_test_deadline if event.trial else None
    if event.staged is not None:
        commands.append(Log("info", f"a partial download was kept ({missing_blocks(event.staged)} blocks "
                                    "missing): it resumes if its job is offered again"))
    return replace(state, phase=Phase.IDLE, running=event.running, slot=event.slot, trial=event.trial,
                   journal=journal, self_test_deadline=deadline, resumable=event.staged,
                   security_counter=max(state.security_counter, event.security_counter)), commands


def on_connected(state: State, _event: Connected, now: float) -> Step:
    thing = state.settings.thing_name
    # The broker sends the retained revocation list while handling the SUBSCRIBE, so it
    # is queued before any reply to the `$next/get` below: a job offered at this connect
    # is verified against the newest list (O2).
    # The trust list chain likewise: a job at this connect is checked with rotated keys.
    commands: list[Command] = [Subscribe(notify_next_topic(thing), 1), Subscribe(REVOCATIONS_TOPIC, 1),
                               Subscribe(TRUST_TOPIC, 1)]
    dl = state.download
    mqtt = dl is not None and dl.protocol is DataProtocol.MQTT
    if dl is not None and mqtt:
        commands += _listen(state, dl.file)
    state, ask = _ask_next_job(replace(state, connected=True, next_job_unanswered=0), now)
    commands.append(ask)
    # An HTTP download does not depend on the MQTT session: the reply to this `$next/get`
    # brings a fresh URL, and a request goes out then if none is in flight.
    if dl is not None and mqtt and state.phase is Phase.DOWNLOADING:
        # Requests sent while offline were lost: ask again at once, momentum reset.
        dl, request = _request_blocks(state, replace(dl, momentum=0, retry_at=None), now)
        state = replace(state, download=dl)
        commands.append(request)
    return state, commands


def on_disconnected(state: State, event: Disconnected, _now: float) -> Step:
    return replace(state, connected=False), [Log("warning", f"disconnected: {event.reason}")]


def on_job_idle(state: State, message: JobMessage, now: float) -> Step:
    ex = message.execution
    if ex is None:
        return state, [Log("info", "no pending job")]
    recorded = state.journal.result_for(ex.job_id)
    if recorded is not None and _is_replay(recorded, ex):
        # N3: never apply a finished job twice; repeat its result, which is idempotent.
        return state, [Log("warning", f"job {ex.job_id} was already finished ({recorded.status}): "
                                      "not applying it again"),
                       _status(state, ex.job_id, ExecStatus(recorded.status), recorded.details_dict)]
    if "self_test" in ex.status_details or _activated_here(state, ex):
        return _self_test_job(state, ex, now)
    if state.trial:
        # FreeRTOS: the platform is in self-test but the job is not; reset so the
        # uncommitted image is rolled back.
        return replace(state, phase=Phase.REBOOTING), [
            Log("warning", f"job {ex.job_id} is not in self-test while the platform is: rolling back"),
            RollbackAndReboot()]
    return _start_job(state, ex, now)


def _activated_here(state: State, ex: Execution) -> bool:
    """The device's journal says it activated this very execution and booted its image,
    whatever the service recorded: a `self_test: ready` report lost or throttled on its
    way must not turn a good update into a rollback (and a download again)."""
    record = state.journal.job
    return (state.trial and record is not None and record.job_id == ex.job_id
            and record.stage in (JobStage.ACTIVATING, JobStage.SELF_TEST)
            and record.new_version == state.running
            and (ex.execution_number is None or record.execution_number is None
                 or ex.execution_number == record.execution_number))


def _is_replay(recorded: JobResult, ex: Execution) -> bool:
    return trust.is_replay(recorded, ex.execution_number)


def _start_job(state: State, ex: Execution, now: float) -> Step:
    try:
        doc = parse_job_document(ex.document)
    except DecodeError as exc:
        return _fail(state, ex.job_id, ex.execution_number,
                     reasons.with_value(reasons.ERR_JOB_PARSER, reasons.PARSE_NON_CONFORMING_JOB_DOC), now,
                     detail=exc.message)
    file = doc.files[0]
    stream = doc.stream_name
    protocol = _choose_protocol(state, doc)
    if protocol is DataProtocol.MQTT and (stream is None or not STREAM_ID_RE.fullmatch(stream)):
        return _fail(state, ex.job_id, ex.execution_number,
                     reasons.with_value(reasons.ERR_JOB_PARSER, reasons.PARSE_NON_CONFORMING_JOB_DOC), now,
                     detail=f"invalid stream name {(stream or '')[:64]!r}")
    if protocol is DataProtocol.HTTP and not _usable_url(file.update_data_url):
        what = "no update_data_url" if file.update_data_url is None \
            else "an update_data_url that is not a usable https URL"
        return _fail(state, ex.job_id, ex.execution_number,
                     reasons.with_value(ERR_INIT_FILE_TRANSFER_FAILED, URL_NOT_USABLE), now,
                     detail=f"HTTP delivery with {what}")
    if file.file_type not in (None, 0):
        return _fail(state, ex.job_id, ex.execution_number,
                     reasons.with_value(reasons.ERR_JOB_PARSER, reasons.PARSE_NON_CONFORMING_JOB_DOC), now,
                     detail=f"fileType {file.file_type} is not firmware")
    if file.filesize > state.settings.max_file_size:
        return _fail(state, ex.job_id, ex.execution_number, reasons.aborted(reasons.ERR_FILE_SIZE_OVERFLOW),
                     now, detail=f"file of {file.filesize} bytes exceeds {state.settings.max_file_size}")
    stated = trust.admit_deployment(_deployment_envelope(ex.document), state.settings,
                                    held_sequence=state.journal.deployment_sequence, job_id=ex.job_id,
                                    doc=doc, url=file.update_data_url, now=now)
    if isinstance(stated, trust.Refusal):  # F1 F2: nothing is downloaded
        return _fail(state, ex.job_id, ex.execution_number, stated.reason, now, check=stated.check,
                     detail=stated.detail)
    if stated is not None:
        state = replace(state, journal=replace(state.journal, deployment_sequence=max(
            state.journal.deployment_sequence, stated.sequence)))
    spec = FileSpec(stream=stream or "", file_id=file.fileid, size=file.filesize, signature=file.signature,
                    signature_key=file.signature_key, certfile=file.certfile, signer_chain=doc.signer_chain)
    url = file.update_data_url if protocol is DataProtocol.HTTP else None
    image: FileSpec | None = None
    image_url = url
    offer = _usable_delta(state, ex.document, protocol, file.filesize)
    if offer is not None:  # download the patch; `image` is what it must rebuild
        image, spec = spec, replace(spec, file_id=offer.file_id, size=offer.size)
        url = offer.url if protocol is DataProtocol.HTTP else None
    block_size = state.settings.block_size
    total = bitmap.block_count(spec.size, block_size)
    key = staging_binding(ex.job_id, spec.stream, spec.file_id, spec.size, block_size, spec.signature)
    kept = state.resumable
    journal = replace(state.journal, job=JobRecord(ex.job_id, ex.execution_number, JobStage.DOWNLOADING))
    state = replace(state, phase=Phase.DOWNLOADING, journal=journal, resumable=None)
    staging: Command
    if kept is not None and kept.binding == key and kept.size == spec.size and kept.block_size == block_size \
            and well_formed(kept):
        missing = missing_blocks(kept)
        dl = Download(job_id=ex.job_id, execution_number=ex.execution_number, file=spec, total_blocks=total,
                      needed=kept.needed, remaining=missing, protocol=protocol, url=url, binding=key,
                      saved=total - missing, resumed=total - missing, deployment=stated,
                      delta=offer, image=image, image_url=image_url)
        staging = ResumeStaging(kept)
        what = f"resuming: {total - missing} of {total} blocks already held"
    else:
        dl = Download(job_id=ex.job_id, execution_number=ex.execution_number, file=spec, total_blocks=total,
                      needed=bitmap.make_bitmap(range(total), 0, total), remaining=total, protocol=protocol,
                      url=url, binding=key, deployment=stated, delta=offer, image=image,
                      image_url=image_url)
        staging = CreateStaging(spec.size, key, block_size)
        what = f"{total} blocks"
    source = f"from stream {stream}" if url is None else f"over HTTPS from {_redacted(url)}"
    start: list[Command] = [
        Log("info", f"job {ex.job_id}: downloading {spec.size} bytes ({what}) {source}"
                    + (f", a patch from {offer.source_version}" if offer is not None else "")), staging]
    if dl.remaining == 0:
        # Every block was stored before the reboot: straight to verification.
        return replace(state, download=dl, phase=Phase.VERIFYING), [*start, _verify_command(dl)]
    state, requests = _request_next(state, dl, now)
    listen: list[Command] = _listen(state, spec) if url is None else []
    return state, [*start, *listen, *requests]


def _usable_delta(state: State, document: Any, protocol: DataProtocol, image_size: int) -> DeltaOffer | None:
    """The document's delta offer if this agent can use it: a patch from the version it
    runs, no larger than the image, reachable over the chosen protocol."""
    if not state.settings.accept_delta:
        return None
    ota = document.get("afr_ota") if isinstance(document, dict) else None
    files = ota.get("files") if isinstance(ota, dict) else None
    offer = parse_offer(files[0]) if isinstance(files, list) and files else None
    if offer is None or offer.source_version != state.running or offer.size > image_size:
        return None
    if protocol is DataProtocol.HTTP and not _usable_url(offer.url):
        return None
    return offer


def _verify_command(dl: Download) -> VerifyImage:
    return VerifyImage(dl.file, dl.delta, dl.image)


def _fall_back_to_image(state: State, dl: Download, why: str, now: float) -> Step:
    """The patch failed (core/delta.py, or its result was refused): download the full
    image of the same job instead, from scratch, through the same checks."""
    image = dl.image
    assert image is not None
    block_size = state.settings.block_size
    total = bitmap.block_count(image.size, block_size)
    key = staging_binding(dl.job_id, image.stream, image.file_id, image.size, block_size, image.signature)
    url = dl.image_url if dl.protocol is DataProtocol.HTTP else None
    full = Download(job_id=dl.job_id, execution_number=dl.execution_number, file=image, total_blocks=total,
                    needed=bitmap.make_bitmap(range(total), 0, total), remaining=total, protocol=dl.protocol,
                    url=url, binding=key, deployment=dl.deployment)
    state = replace(state, phase=Phase.DOWNLOADING, download=full)
    commands: list[Command] = [Log("warning", f"job {dl.job_id}: delta update failed ({why}); "
                                              f"downloading the full image ({image.size} bytes)"),
                               CreateStaging(image.size, key, block_size)]
    state, requests = _request_next(state, full, now)
    listen: list[Command] = _listen(state, image) if url is None else []
    return state, [*commands, *listen, *requests]


def on_job_downloading(state: State, message: JobMessage, now: float) -> Step:
    dl = state.download
    assert dl is not None
    ex = message.execution
    if ex is not None and ex.job_id == dl.job_id:
        state, dl, fresh = _refresh_deployment(state, dl, ex, now)
        if dl.protocol is DataProtocol.HTTP:
            state, commands = _refresh_url(state, dl, ex, now)
            return state, fresh + commands
        return state, [*fresh, Log("debug", f"job {ex.job_id} notified again: download continues")]
    # FreeRTOS jobNotificationHandler: abort the current file and ask for the next job.
    other = "no job" if ex is None else f"job {ex.job_id}"
    journal = replace(state.journal, job=None)
    state = replace(state, phase=Phase.IDLE, download=None, journal=journal)
    state, ask = _ask_next_job(state, now)
    return state, [Log("warning", f"{other} notified during the download of {dl.job_id}: aborting it"),
                   *_release(state, dl), AbortStaging(), ask]


def _deployment_envelope(document: Any) -> Any:
    """The document's `overair.deployment` (None when absent); core/deployment.py checks
    whatever shape it has."""
    extension = document.get("overair") if isinstance(document, dict) else None
    return extension.get("deployment") if isinstance(extension, dict) else None


def _refresh_deployment(state: State, dl: Download, ex: Execution,
                        now: float) -> tuple[State, Download, list[Command]]:
    """The current job delivered again carries freshly signed deployment metadata (the
    server signs each delivery): admitted like the first, it extends the download's
    deadline (F1). Anything else leaves the old metadata, which then expires."""
    if dl.deployment is None:
        return replace(state, download=dl), dl, []
    try:
        doc = parse_job_document(ex.document)
    except DecodeError as exc:
        return replace(state, download=dl), dl, [Log("warning", f"job {ex.job_id} re-sent unparsable: "
                                                                f"{exc.message}")]
    stated = trust.admit_deployment(_deployment_envelope(ex.document), state.settings,
                                    held_sequence=state.journal.deployment_sequence, job_id=ex.job_id,
                                    doc=doc, url=doc.files[0].update_data_url, now=now)
    if not isinstance(stated, Deployment):
        why = "none" if stated is None else stated.detail
        return replace(state, download=dl), dl, [
            Log("warning", f"job {ex.job_id} re-sent without fresh deployment metadata ({why})")]
    dl = replace(dl, deployment=stated, deployment_refresh_asked=False)
    journal = replace(state.journal,
                      deployment_sequence=max(state.journal.deployment_sequence, stated.sequence))
    return replace(state, download=dl, journal=journal), dl, [
        Log("info", f"job {ex.job_id}: deployment metadata renewed until {stated.expires}")]


def _refresh_url(state: State, dl: Download, ex: Execution, now: float) -> Step:
    """The current HTTP job delivered again (FreeRTOS "update job"): its document carries
    a freshly pre-signed URL, which replaces the old one; the download goes on where it
    stopped (blocks already stored are never fetched again)."""
    try:
        url = parse_job_document(ex.document).files[0].update_data_url
    except DecodeError:
        url = None
    held = dl.delta
    if held is not None:  # a patch download: the fresh URL is the patch's
        dl = replace(dl, image_url=url if _usable_url(url) else dl.image_url)
        offer = _usable_delta(state, ex.document, dl.protocol, dl.image.size if dl.image else 0)
        url = offer.url if offer is not None and offer.sha256 == held.sha256 else None
    commands: list[Command] = []
    if not _usable_url(url):
        commands.append(Log("warning", f"job {ex.job_id} notified again without a usable update_data_url: "
                                       "keeping the previous URL"))
    elif url != dl.url:
        assert url is not None
        dl = replace(dl, url=url)
        commands.append(Log("info", f"job {ex.job_id}: fresh download URL; continuing from block "
                                    f"{dl.first_needed()}"))
    if dl.in_flight is not None:  # its answer drives the next request
        return replace(state, download=dl), commands
    if dl.retry_at is not None and now < dl.retry_at:  # the backoff is not over: Tick sends it
        return replace(state, download=dl), commands
    return _retry_range(replace(state, download=dl), replace(dl, retry_at=None), now, commands)


def _retry_range(state: State, dl: Download, now: float, commands: list[Command]) -> Step:
    """Send the next range request unless too many went without a new block."""
    if dl.momentum >= state.settings.max_request_momentum:
        state = replace(state, download=dl)
        state, failed = _fail_download(state, reasons.aborted(reasons.ERR_MOMENTUM_ABORT), now,
                                       detail=f"{dl.momentum} block requests failed or went unanswered")
        return state, commands + failed
    state, requests = _request_next(state, dl, now)
    return state, commands + requests


def on_job_busy(state: State, message: JobMessage, _now: float) -> Step:
    ex = message.execution
    name = "no job" if ex is None else f"job {ex.job_id}"
    return state, [Log("debug", f"{name} notified while {state.phase}: ignored")]


def on_block(state: State, message: BlockMessage, now: float) -> Step:
    dl = state.download
    assert dl is not None
    bound = state.settings.block_size + LIMITS.agent_max_block_overhead
    if len(message.payload) > bound:
        # Refused before decoding: no block of this download can be larger (the CBOR
        # decoder is never handed an arbitrarily large message).
        return _fail_download(state, reasons.with_value(reasons.PAL_UNINITIALIZED, 0), now,
                              detail=f"data block message of {len(message.payload)} bytes exceeds {bound}")
    try:
        block = decode_data_block(message.payload)
    except DecodeError as exc:
        return _fail_download(state, reasons.with_value(reasons.PAL_UNINITIALIZED, 0), now,
                              detail=f"undecodable data block: {exc.message}")
    last = dl.total_blocks - 1
    expected = dl.file.size - last * state.settings.block_size if block.block_id == last \
        else state.settings.block_size
    if block.file_id != dl.file.file_id or block.block_id > last or len(block.payload) != expected:
        return _fail_download(state, reasons.with_value(reasons.PAL_UNINITIALIZED, 0), now,
                              detail=f"block {block.block_id} of file {block.file_id} with "
                                     f"{len(block.payload)} bytes is out of range")
    if not dl.is_needed(block.block_id):
        return state, [Log("debug", f"duplicate block {block.block_id} ignored")]
    return _accept_block(state, dl, block.block_id, block.payload, now)


def _accept_block(state: State, dl: Download, block_id: int, data: bytes, now: float) -> Step:
    needed = bytearray(dl.needed)
    needed[block_id // 8] &= ~(1 << (block_id % 8)) & 0xFF
    dl = replace(dl, needed=bytes(needed), remaining=dl.remaining - 1, unstored=dl.unstored + 1,
                 last_activity=now, momentum=0, throttled=0)
    return replace(state, download=dl), [WriteBlock(block_id, block_id * state.settings.block_size, data)]


def on_range_received(state: State, event: HttpRangeReceived, now: float) -> Step:
    dl = state.download
    assert dl is not None
    if not _answers_in_flight(state, dl, event.request, event.offset):
        return state, [Log("debug", f"late answer to range request {event.request} ignored")]
    first, count = dl.in_flight_block, dl.in_flight_count
    dl = replace(dl, in_flight=None)
    expected = _span_length(state, dl, first, count)
    if len(event.data) != expected:
        # The runtime refuses such responses already; never write what was not asked for.
        return replace(state, download=dl), [
            Log("warning", f"blocks {first}+{count}: {len(event.data)} bytes instead of {expected}: "
                           "requesting them again")]
    size = state.settings.block_size
    commands: list[Command] = []
    for block in range(first, first + count):
        if not dl.is_needed(block):  # pragma: no cover - one request in flight, for needed blocks
            continue
        start = (block - first) * size
        state, stored = _accept_block(state, dl, block, event.data[start:start + size], now)
        assert state.download is not None
        dl = state.download
        commands += stored
    return state, commands


def on_range_failed(state: State, event: HttpRangeFailed, now: float) -> Step:
    dl = state.download
    assert dl is not None
    if not _answers_in_flight(state, dl, event.request, event.offset):
        return state, [Log("debug", f"late failure of range request {event.request} ignored")]
    block = dl.in_flight_block
    what = f"HTTP {event.status}" if event.status else "no response"
    dl = replace(dl, in_flight=None)
    if event.status in THROTTLED_STATUSES and event.retry_after is not None:
        # The server asks the device to slow down and says when (the download policy,
        # a device budget): waited out, with up to `retry_base` of jitter on top so that
        # the devices it refused together do not come back together; no retry budget is
        # spent.
        asked = min(max(event.retry_after, 0.0), state.settings.max_next_job_retry)
        wait = asked + _spread(state, dl.throttled, asked)
        dl = replace(dl, retry_at=now + wait, throttled=dl.throttled + 1)
        return replace(state, download=dl), [
            Log("info", f"block {block}: {what} ({event.reason}): asked to wait; "
                        f"retrying after {wait:.1f} s")]
    state, dl, failed = _spend_retry(state, dl, f"{what} ({event.reason})", now)
    if failed is not None:
        return failed
    assert dl.retry_at is not None
    delay = dl.retry_at - now
    if event.status in URL_REFRESH_STATUSES:
        # The pre-signed URL expired (or was refused): the job document, asked again,
        # brings a fresh one (on_job_downloading), and the download goes on from there
        # once the backoff is over.
        state, ask = _ask_next_job(state, now)
        return state, [Log("warning", f"block {block}: {what} ({event.reason}): asking for the job "
                                      f"again for a fresh URL; retrying after {delay:.1f} s"), ask]
    return state, [Log("warning", f"block {block}: {what} ({event.reason}): retrying after {delay:.1f} s")]


def _jitter_key(state: State) -> str:
    dl = state.download
    return f"{state.settings.thing_name}/{dl.job_id if dl is not None else ''}"


def _jitter(state: State, attempt: int) -> float:
    """Capped exponential backoff with full jitter after `attempt` failures in a row."""
    settings = state.settings
    return backoff.full_jitter(attempt, settings.retry_base, settings.retry_cap, _jitter_key(state))


def _spread(state: State, attempt: int, asked: float) -> float:
    """Jitter on top of a wait the server asked for: up to a quarter of it, at most
    `retry_base`; enough to part devices told the same instant, not so much that a
    device's fair share goes unused."""
    ceiling = min(state.settings.retry_base, asked / 4)
    return ceiling * backoff.fraction(_jitter_key(state) + "/asked", attempt)


def _spend_retry(state: State, dl: Download, why: str, now: float) -> tuple[State, Download, Step | None]:
    """A request of the download failed: one more retry of the job's budget, sent after
    the backoff (`dl.retry_at`); past the budget the job ends FAILED with `why`
    (`0x0000000e` as FreeRTOS's momentum abort, check RetryBudgetExhausted)."""
    retries = dl.retries + 1
    dl = replace(dl, retries=retries, last_failure=why, last_activity=now)
    budget = state.settings.job_retry_budget
    if retries > budget:
        state = replace(state, download=dl)
        return state, dl, _fail_download(state, reasons.aborted(reasons.ERR_MOMENTUM_ABORT), now,
                                         check=RETRY_BUDGET_CHECK,
                                         detail=f"{retries} requests failed (budget {budget}); last: {why}")
    dl = replace(dl, retry_at=now + _jitter(replace(state, download=dl), retries - 1))
    return replace(state, download=dl), dl, None


def _answers_in_flight(state: State, dl: Download, request: int, offset: int) -> bool:
    return (dl.protocol is DataProtocol.HTTP and dl.in_flight == request
            and offset == dl.in_flight_block * state.settings.block_size)


def on_stream_rejected(state: State, message: StreamRejection, now: float) -> Step:
    """The service rejected a stream request (AWS's `{"o": code, "m": message}`): a
    throttled request is retried after a jittered backoff without spending the job's
    retry budget; any other rejection (the stream or its file gone, an internal error)
    spends one retry, and past the budget the job ends FAILED with it as the reason."""
    dl = state.download
    assert dl is not None
    try:
        code, text = decode_rejection(message.payload, "cbor")
    except DecodeError as exc:
        return state, [Log("warning", f"undecodable stream rejection ignored: {exc.message}")]
    why = f"stream request rejected: {code} ({text[:200]})"
    if code == REQUEST_THROTTLED:
        # overair's download policy says when to come back at the end of its message
        # ("... retry after N s"); without it, the backoff of a failure (no budget spent).
        hint = _RETRY_HINT.search(text)
        asked = min(float(hint[1]), state.settings.max_next_job_retry) if hint else None
        wait = _jitter(state, dl.throttled) if asked is None else asked + _spread(state, dl.throttled, asked)
        dl = replace(dl, retry_at=now + wait, throttled=dl.throttled + 1, last_activity=now)
        return replace(state, download=dl), [Log("info", f"{why}: retrying after {wait:.1f} s")]
    state, dl, failed = _spend_retry(state, dl, why, now)
    if failed is not None:
        return failed
    assert dl.retry_at is not None
    return state, [Log("warning", f"{why}: retrying after {dl.retry_at - now:.1f} s")]


def on_block_stored(state: State, _event: BlockStored, now: float) -> Step:
    dl = state.download
    assert dl is not None
    dl = replace(dl, unstored=dl.unstored - 1, awaiting=dl.awaiting - 1)
    received = dl.stored
    commands: list[Command] = [ReportProgress(dl.job_id, received, dl.total_blocks)]
    if dl.remaining == 0:
        if dl.unstored == 0:
            commands += [Log("info", f"job {dl.job_id}: all {dl.total_blocks} blocks received"),
                         *_release(state, dl), _verify_command(dl)]
            return replace(state, download=dl, phase=Phase.VERIFYING), commands
        return replace(state, download=dl), commands
    if dl.unstored == 0 and received - dl.saved >= state.settings.save_progress_every:
        dl = replace(dl, saved=received)
        commands.append(SaveProgress(dl.needed))
    if _progress_due(state, dl, received, now):
        dl = replace(dl, reported_at=now)
        commands.append(_status(state, dl.job_id, ExecStatus.IN_PROGRESS,
                                {"receive": f"{received}/{dl.total_blocks}"}, qos=0))
    if dl.awaiting <= 0:
        state, requests = _request_next(state, dl, now)
        return state, commands + requests
    return replace(state, download=dl), commands


def _progress_due(state: State, dl: Download, received: int, now: float) -> bool:
    """FreeRTOS reports after the first block and every `status_every_blocks`; the agent
    also leaves `status_min_interval` between two reports, so that a fast download does
    not spend the job-update budget its self-test and result reports need."""
    if received != 1 and received % state.settings.status_every_blocks != 0:
        return False
    return dl.reported_at is None or now - dl.reported_at >= state.settings.status_min_interval


def on_download_platform_failed(state: State, event: PlatformFailed, now: float) -> Step:
    code = reasons.aborted(reasons.PAL_RX_FILE_CREATE_FAILED) if event.operation == "create" \
        else reasons.with_value(reasons.PAL_UNINITIALIZED, 0)
    return _fail_download(state, code, now, detail=f"{event.operation} failed: {event.message}")


def on_verified(state: State, event: VerifyResult, now: float) -> Step:
    dl = state.download
    assert dl is not None
    job_id, number = dl.job_id, dl.execution_number
    if (not event.ok or event.version is None) and dl.delta is not None:
        return _fall_back_to_image(state, dl, f"{event.check}: {event.message}", now)
    if not event.ok or event.version is None:
        check = event.check or "BadImage"
        state, commands = _fail(state, job_id, number, reasons.check_reason(check), now,
                                check=check, detail=event.message)
        return state, [AbortStaging(), *commands]
    refusal = trust.admit_deployed_image(dl.deployment, event, now, state.settings.deployment_keys) \
        or trust.admit_version(event.version, event.security_counter, running=state.running,
                                  floor=state.journal.version_floor, device_counter=state.security_counter)
    if refusal is not None:
        state, commands = _fail(state, job_id, number, refusal.reason, now, check=refusal.check,
                                detail=refusal.detail)
        return state, [AbortStaging(), *commands]
    record = JobRecord(job_id, number, JobStage.ACTIVATING, updated_by=state.running,
                       new_version=event.version)
    state = replace(state, phase=Phase.ACTIVATING, download=None, journal=replace(state.journal, job=record))
    return state, [
        Log("info", f"job {job_id}: image {event.version} verified; activating it"),
        _status(state, job_id, ExecStatus.IN_PROGRESS,
                {"self_test": "ready", "updatedBy": state.running.hex()}),
        ActivateAndReboot()]


def on_activate_failed(state: State, event: PlatformFailed, now: float) -> Step:
    record = state.journal.job
    assert record is not None
    return _fail(state, record.job_id, record.execution_number, reasons.aborted(reasons.ERR_ACTIVATE_FAILED),
                 now, detail=f"{event.operation} failed: {event.message}")


def _self_test_job(state: State, ex: Execution, now: float) -> Step:
    """FreeRTOS handleSelfTestJobDoc + inSelfTestHandler, against the booted image."""
    record = state.journal.job if state.journal.job and state.journal.job.job_id == ex.job_id else None
    # The device's own journal is trusted over the network's copy; it also survives a
    # reset during the self-test, after which the service holds "active" and the new
    # version in updatedBy.
    updated_by = record.updated_by if record is not None and record.updated_by is not None \
        else _parse_version_word(ex.status_details.get("updatedBy"))
    running = state.running

    def reject(code: int, detail: str) -> Step:
        return _fail(state, ex.job_id, ex.execution_number, reasons.rejected(code), now,
                     detail=detail, rollback=state.trial)

    if updated_by is None:
        return reject(reasons.ERR_IMAGE_STATE_MISMATCH, "self-test job without a usable updatedBy")
    if running == updated_by:
        return reject(reasons.ERR_SAME_FIRMWARE_VERSION,
                      f"still running {running}: the new image did not boot")
    if running < updated_by:
        return reject(reasons.ERR_DOWNGRADE_NOT_ALLOWED, f"running {running} is older than {updated_by}")
    if not state.trial:
        if record is not None and record.stage is JobStage.COMMITTING and record.new_version == running:
            # The commit completed before a reset cut the report short: report it now.
            return _succeed(state, ex.job_id, ex.execution_number, now)
        return reject(reasons.ERR_IMAGE_STATE_MISMATCH,
                      "the job is in self-test but the running image is not")
    deadline = state.self_test_deadline
    if deadline is None:  # pragma: no cover - set at every trial boot
        return reject(reasons.ERR_IMAGE_STATE_MISMATCH, "no self-test deadline")
    window = health_window(ex.document)
    if window:  # the trial lasts the health window, and the self-test's own time after it
        deadline = max(deadline, now + window + state.settings.self_test_deadline)
    record = JobRecord(ex.job_id, ex.execution_number, JobStage.SELF_TEST, updated_by=updated_by,
                       new_version=running)
    state = replace(state, phase=Phase.SELF_TEST, journal=replace(state.journal, job=record),
                    self_test_deadline=deadline)
    # The built-in part of the self-test already passed: this execution arrived over a
    # mutually authenticated TLS session with the new image running.
    return state, [Log("info", f"job {ex.job_id}: running the self-test of {running}"),
                   _status(state, ex.job_id, ExecStatus.IN_PROGRESS,
                           {"self_test": "active", "updatedBy": running.hex()}),
                   RunSelfTest(ex.job_id, deadline, window)]


def on_job_self_test(state: State, message: JobMessage, now: float) -> Step:
    """A job message during the self-test (health window included). Our execution stays
    the thing's next job while it is in progress: a message naming no job or another one
    means the service ended it (canceled, e.g. by a rollout's health gate), and the image
    on trial is rolled back rather than committed."""
    record = state.journal.job
    ex = message.execution
    if record is None or (ex is not None and ex.job_id == record.job_id):
        return on_job_busy(state, message, now)
    other = "no job" if ex is None else f"job {ex.job_id}"
    return _fail(state, record.job_id, record.execution_number, reasons.rejected(reasons.ERR_NONE), now,
                 detail=f"{other} notified during the self-test of {record.job_id}: the execution ended; "
                        "rolling back", rollback=True)


def _parse_version_word(text: str | None) -> Version | None:
    if text is None or not _VERSION_WORD.fullmatch(text):
        return None
    try:
        return Version.from_u32(int(text, 0))
    except (ValueError, DecodeError):  # ValueError: decimal with leading zeros
        return None


def on_self_test_result(state: State, event: SelfTestResult, now: float) -> Step:
    record = state.journal.job
    assert record is not None
    if not event.ok:
        return _fail(state, record.job_id, record.execution_number, reasons.rejected(reasons.ERR_NONE), now,
                     detail=f"self-test failed: {event.message}", rollback=True)
    record = replace(record, stage=JobStage.COMMITTING)
    return replace(state, phase=Phase.COMMITTING, journal=replace(state.journal, job=record)), [
        Log("info", f"job {record.job_id}: self-test passed; committing {state.running}"), CommitImage()]


def on_committed(state: State, event: ImageCommitted, now: float) -> Step:
    record = state.journal.job
    assert record is not None
    state = replace(state, security_counter=max(state.security_counter, event.security_counter))
    return _succeed(state, record.job_id, record.execution_number, now)


def _succeed(state: State, job_id: str, execution_number: int | None, now: float) -> Step:
    journal = replace(state.journal, version_floor=state.running)
    state = replace(state, trial=False, self_test_deadline=None, journal=journal)
    return _finish(state, job_id, execution_number, ExecStatus.SUCCEEDED,
                   {"reason": reasons.accepted(state.running)}, now)


def on_commit_failed(state: State, event: PlatformFailed, now: float) -> Step:
    record = state.journal.job
    assert record is not None
    return _fail(state, record.job_id, record.execution_number, reasons.rejected(reasons.PAL_COMMIT_FAILED),
                 now, detail=f"commit failed: {event.message}", rollback=True)


def on_revocations(state: State, message: RevocationMessage, _now: float) -> Step:
    if not message.envelope:
        # What a subscriber sees when the retained list is cleared: it revokes nothing,
        # and the held list stays (a revocation is final).
        return state, [Log("info", "the revocation list was cleared on the broker: keeping the held one")]
    return state, [ApplyRevocations(message.envelope)]


def on_trust_list(state: State, message: TrustListMessage, _now: float) -> Step:
    if not message.chain:
        # A cleared retained message names no list: the held one stays (it never goes back).
        return state, [Log("info", "the trust list was cleared on the broker: keeping the held one")]
    return state, [ApplyTrustList(message.chain)]


def on_tick(state: State, _event: Tick, now: float) -> Step:
    deadline = state.self_test_deadline
    if deadline is not None and now >= deadline and state.phase in (Phase.IDLE, Phase.SELF_TEST):
        record = state.journal.job
        limit = f"{state.settings.self_test_deadline:g} s"
        if state.phase is Phase.SELF_TEST and record is not None:
            return _fail(state, record.job_id, record.execution_number, reasons.rejected(reasons.ERR_NONE),
                         now, detail=f"self-test did not pass within {limit}", rollback=True)
        return replace(state, phase=Phase.REBOOTING), [
            Log("warning", f"no self-test within {limit} of booting the new image: rolling back"),
            RollbackAndReboot()]
    dl = state.download
    if state.phase is Phase.DOWNLOADING and dl is not None and dl.deployment is not None \
            and trust.deployment_expired(dl.deployment, now):
        # F1: a device held on expired instructions stops acting on them, and says so.
        return _fail_download(state, reasons.check_reason("DeploymentMetadataExpired"), now,
                              check="DeploymentMetadataExpired",
                              detail="the deployment metadata expired during the download")
    if _next_job_retry_due(state, now):
        unanswered = state.next_job_unanswered + 1
        state, ask = _ask_next_job(replace(state, next_job_unanswered=unanswered), now)
        return state, [Log("warning", f"$next/get unanswered ({unanswered}x): subscribing and asking again"),
                       Subscribe(notify_next_topic(state.settings.thing_name), 1), ask]
    dl = state.download
    timeout = state.settings.request_timeout
    if state.phase is not Phase.DOWNLOADING or dl is None:
        return state, []
    if dl.deployment is not None:
        renew_at = dl.deployment.expires - state.settings.deployment_refresh_margin
        if not dl.deployment_refresh_asked and now >= renew_at:
            asked = replace(dl, deployment_refresh_asked=True)
            state, ask = _ask_next_job(replace(state, download=asked), now)
            return state, [Log("info", f"job {dl.job_id}: deployment metadata expires soon: asking for "
                                       "the job again"), ask]
    if dl.protocol is DataProtocol.HTTP and dl.retry_at is not None and dl.in_flight is None:
        # A failed range request goes out again when its Retry-After (or request_timeout)
        # is over, not earlier (the server asked for the pause) and not later.
        if now < dl.retry_at or dl.unstored:
            return state, []
        log = Log("info", f"requesting block {dl.first_needed()} again")
        return _retry_range(state, replace(dl, retry_at=None), now, [log])
    if dl.protocol is DataProtocol.MQTT and dl.retry_at is not None:
        # A rejected stream request goes out again when its backoff is over.
        if now < dl.retry_at:
            return state, []
        dl, request = _request_blocks(state, replace(dl, retry_at=None), now)
        return replace(state, download=dl), [Log("info", "requesting blocks again after a rejection"),
                                             request]
    if now - dl.last_activity < timeout:
        return state, []
    if dl.protocol is DataProtocol.HTTP:
        if dl.in_flight is not None and now - dl.last_activity < HTTP_LOST_AFTER_TIMEOUTS * timeout:
            return state, []  # the runtime's own timeout answers it
        if dl.unstored:
            return state, []  # a block is being written; its BlockStored asks for the next one
        log = Log("info", f"no block for {timeout:g} s: requesting block {dl.first_needed()} again")
        return _retry_range(state, replace(dl, in_flight=None), now, [log])
    if dl.momentum >= state.settings.max_request_momentum:
        return _fail_download(state, reasons.aborted(reasons.ERR_MOMENTUM_ABORT), now,
                              detail=f"{dl.momentum} block requests went unanswered")
    dl, request = _request_blocks(state, dl, now)
    silence = f"no block for {timeout:g} s: requesting again"
    return replace(state, download=dl), [Log("info", silence), request]


# --- defects -------------------------------------------------------------------------------

def on_handling_failed(state: State, event: HandlingFailed, now: float) -> Step:
    """Contain a defect (issue 12, finding 9): handling `event.cause` raised. The job it
    concerns ends FAILED with `0x00000002: 0x00000000` (OtaErrPanic) and `check:
    AgentDefect`; the result is journaled before anything else runs, so that a restart
    does not replay the poison (the job, offered again, is a replay: its result is
    repeated, its document never parsed again); every other job is served as usual.

    The job concerned is the one the cause names (a job message), else the one in
    progress. A job message that names no usable job, with nothing in progress, is only
    logged: there is nobody to report to."""
    reason = reasons.with_value(reasons.ERR_PANIC, 0)
    detail = f"the agent could not handle {_describe(event.cause)}: {event.error}"
    named = _named_job(state, event.cause)
    current = _current_job(state)
    if named is not None and (current is None or named[0] != current[0]):
        job_id, number = named
        recorded = state.journal.result_for(job_id)
        if recorded is not None and _is_replay(recorded, Execution(job_id, number, {}, None)):
            return state, [Log("error", f"job {job_id} (finished {recorded.status}) could not be handled "
                                        f"again: {event.error}")]
        details = {"reason": reason, "check": reasons.DEFECT_CHECK, "detail": reasons.detail(detail)}
        result = JobResult(job_id, number, ExecStatus.FAILED.value, tuple(details.items()), now)
        # Recorded without disturbing the job in progress, which goes on.
        state = replace(state, journal=state.journal.with_result(result, finishes_current=False))
        return state, [Log("error", f"job {job_id} FAILED: {detail}"),
                       _status(state, job_id, ExecStatus.FAILED, details)]
    if current is None:
        return state, [Log("error", f"{detail}; no job concerned: ignored")]
    if state.download is not None:
        return _fail_download(state, reason, now, detail=detail, check=reasons.DEFECT_CHECK)
    job_id, number = current
    if isinstance(event.cause, Booted):
        # The journaled job made the boot fail: fail it, then boot without it.
        state, failed = _fail(state, job_id, number, reason, now, detail=detail, check=reasons.DEFECT_CHECK)
        state, booted = on_booted(state, event.cause, now)
        return state, failed + booted
    return _fail(state, job_id, number, reason, now, detail=detail, check=reasons.DEFECT_CHECK,
                 rollback=state.trial)


def _current_job(state: State) -> tuple[str, int | None] | None:
    if state.download is not None:
        return state.download.job_id, state.download.execution_number
    record = state.journal.job
    return None if record is None else (record.job_id, record.execution_number)


def _named_job(state: State, cause: Event) -> tuple[str, int | None] | None:
    """The job a job message names, if it names one. Parsing is what may have failed, so
    any exception here means "no job named"."""
    if not isinstance(cause, MessageReceived):
        return None
    try:
        message = _classify(state, cause)
    except Exception:  # containment: the parse itself is the suspect
        return None
    if isinstance(message, JobMessage) and message.execution is not None:
        return message.execution.job_id, message.execution.execution_number
    return None


def _describe(event: Event) -> str:
    if isinstance(event, MessageReceived):
        return f"a message of {len(event.payload)} bytes on {reasons.detail(event.topic)}"
    return type(event).__name__


# --- the table ------------------------------------------------------------------------------

Handler = Callable[[State, Any, float], Step]

TABLE: dict[tuple[Phase | None, type], Handler] = {
    (Phase.BOOTING, Booted): on_booted,
    (None, Connected): on_connected,
    (None, Disconnected): on_disconnected,
    (None, Tick): on_tick,
    (None, RevocationMessage): on_revocations,  # any phase: it only tightens what is trusted
    (None, TrustListMessage): on_trust_list,  # any phase: a retired key stops working at once
    (None, HandlingFailed): on_handling_failed,  # any phase: a defect fails its job, never the agent
    (Phase.IDLE, JobMessage): on_job_idle,
    (Phase.DOWNLOADING, JobMessage): on_job_downloading,
    (Phase.SELF_TEST, JobMessage): on_job_self_test,
    (None, JobMessage): on_job_busy,
    (Phase.DOWNLOADING, BlockMessage): on_block,
    (Phase.DOWNLOADING, StreamRejection): on_stream_rejected,
    (Phase.DOWNLOADING, BlockStored): on_block_stored,
    (Phase.DOWNLOADING, HttpRangeReceived): on_range_received,
    (Phase.DOWNLOADING, HttpRangeFailed): on_range_failed,
    (Phase.DOWNLOADING, PlatformFailed): on_download_platform_failed,
    (Phase.VERIFYING, VerifyResult): on_verified,
    (Phase.ACTIVATING, PlatformFailed): on_activate_failed,
    (Phase.SELF_TEST, SelfTestResult): on_self_test_result,
    (Phase.COMMITTING, ImageCommitted): on_committed,
    (Phase.COMMITTING, PlatformFailed): on_commit_failed,
}
