"""The pure agent state machine, transition by transition (device-protocol.md §1-§5).

No broker, no files, no clock: events in, commands out. Threat ids in test names:
R1 flawed update, N1 downgrade, N2 mis-signed, N3 replay, O2 revoked signer.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import cbor2
import pytest

from overair.agent.machine import commands as c
from overair.agent.machine.events import (
    BlockStored,
    Booted,
    Connected,
    Disconnected,
    Event,
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
    JobRecord,
    JobResult,
    JobStage,
    Journal,
    Phase,
    Settings,
    State,
)
from overair.agent.machine.transitions import HTTP_LOST_AFTER_TIMEOUTS, handle
from overair.agent.progress import binding as staging_binding
from overair.core.jobdoc import OtaFile, OtaJobDocument
from overair.core.revocation import REVOCATIONS_TOPIC
from overair.core.streamcodec import DataBlock, encode_data_block
from overair.core.topics import notify_next_topic, stream_data_topic, stream_rejected_topic
from overair.core.versions import Version

THING = "dev-1"
STREAM = "stream-1"
BS = 256
# FreeRTOS's own pacing: one block per Range request, progress by block count alone
# (the agent's defaults, larger ranges and time-paced progress, have their own tests).
SETTINGS = Settings(thing_name=THING, block_size=BS, blocks_per_request=4, status_every_blocks=5,
                    request_timeout=10.0, max_request_momentum=32, self_test_deadline=60.0,
                    status_min_interval=0.0, http_range_blocks=1)
V0_9 = Version(0, 9, 0)
V1 = Version(1, 0, 0)
V2 = Version(1, 1, 0)
SIZE = 10 * BS - 5  # 10 blocks, the last one short
NEXT_GET = f"$aws/things/{THING}/jobs/$next/get"
DATA = stream_data_topic(THING, STREAM, "cbor")
REJECTED = stream_rejected_topic(THING, STREAM, "cbor")
GET = f"$aws/things/{THING}/streams/{STREAM}/get/cbor"


# --- helpers ------------------------------------------------------------------------------

def run(state: State, events: list[Event], now: float = 0.0) -> tuple[State, list[c.Command]]:
    out: list[c.Command] = []
    for event in events:
        state, commands = handle(state, event, now)
        out.extend(commands)
    return state, out


def booted(version: Version = V1, *, trial: bool = False, journal: Journal | None = None,
           fell_back: bool = False, now: float = 0.0, settings: Settings = SETTINGS) -> State:
    state, _ = run(State(settings, journal=journal or Journal()),
                   [Booted(version, "b" if trial else "a", trial, fell_back), Connected()], now)
    return state


def ota_doc(size: int = SIZE, **extra: Any) -> dict[str, Any]:
    doc = OtaJobDocument(protocols=("MQTT",), stream_name=STREAM,
                         files=(OtaFile(filepath="/fw", filesize=size, fileid=0, certfile="signer.crt",
                                        signature=b"\x30\x45sig"),),
                         signer_chain=(b"der-cert",)).to_json_obj()
    doc["afr_ota"]["files"][0].update(extra)
    return doc


def job(job_id: str = "job-1", doc: Any = None, details: dict[str, str] | None = None, number: int = 1,
        topic: str = notify_next_topic(THING)) -> MessageReceived:
    ex: dict[str, Any] = {"jobId": job_id, "thingName": THING, "status": "QUEUED", "queuedAt": 1,
                          "lastUpdatedAt": 1, "versionNumber": 1, "executionNumber": number,
                          "jobDocument": ota_doc() if doc is None else doc}
    if details:
        ex["statusDetails"] = details
    return MessageReceived(topic, json.dumps({"timestamp": 1, "execution": ex}).encode())


def block(i: int, size: int | None = None, file_id: int = 0) -> MessageReceived:
    length = size if size is not None else (SIZE - 9 * BS if i == 9 else BS)
    return MessageReceived(DATA, encode_data_block(DataBlock(file_id, i, bytes([i]) * length)))


def publishes(commands: list[c.Command], topic_suffix: str) -> list[c.Publish]:
    return [x for x in commands if isinstance(x, c.Publish) and x.topic.endswith(topic_suffix)]


def statuses(commands: list[c.Command]) -> list[tuple[str, dict[str, str], int]]:
    out = []
    for p in publishes(commands, "/update"):
        body = json.loads(p.payload)
        out.append((body["status"], body["statusDetails"], p.qos))
    return out


def requests(commands: list[c.Command]) -> list[dict[str, Any]]:
    return [cbor2.loads(p.payload) for p in publishes(commands, "/get/cbor")]


def of(commands: list[c.Command], kind: type) -> list[Any]:
    return [x for x in commands if isinstance(x, kind)]


def downloading(now: float = 0.0) -> State:
    state, _ = run(booted(), [job()], now)
    assert state.phase is Phase.DOWNLOADING
    return state


def deliver(state: State, blocks: list[int], now: float = 0.0) -> tuple[State, list[c.Command]]:
    out: list[c.Command] = []
    for i in blocks:
        state, commands = run(state, [block(i)], now)
        out += commands
        writes = of(commands, c.WriteBlock)
        if writes:
            state, commands = run(state, [BlockStored(writes[0].block_id)], now)
            out += commands
    return state, out


def verifying() -> State:
    state, _ = deliver(downloading(), list(range(10)))
    assert state.phase is Phase.VERIFYING
    return state


def after_activation() -> Journal:
    state, _ = run(verifying(), [VerifyResult(True, V2)])
    return state.journal


READY = {"self_test": "ready", "updatedBy": V1.hex()}


# --- §1 jobs ----------------------------------------------------------------------------

def test_connect_subscribes_notify_next_and_asks_next_job() -> None:
    state = State(SETTINGS)
    state, boot_cmds = handle(state, Booted(V1, "a", False), 0.0)
    assert not publishes(list(boot_cmds), "")  # nothing goes out before the connection
    state, commands = handle(state, Connected(), 0.0)
    assert commands[0] == c.Subscribe(notify_next_topic(THING), 1)
    (ask,) = publishes(list(commands), "/$next/get")
    assert ask.topic == NEXT_GET
    token = json.loads(ask.payload)["clientToken"]
    assert 0 < len(token) <= 64
    # The FreeRTOS agent never subscribes to $next/get/accepted.
    assert not [x for x in commands if isinstance(x, c.Subscribe) and "accepted" in x.topic]
    _, again = handle(state, Connected(), 0.0)
    assert json.loads(publishes(list(again), "/$next/get")[0].payload)["clientToken"] != token


def test_unanswered_next_job_question_is_asked_again_with_backoff() -> None:
    """A lost `$next/get` reply (or a notify-next subscription refused while the broker
    reloaded its ACL) must not leave the device deaf to its jobs until it reconnects."""
    def asks_of(thing: str) -> list[int]:
        state = booted(now=0.0, settings=replace(SETTINGS, thing_name=thing))
        asks = [0]
        for second in range(0, 400):
            state, commands = handle(state, Tick(), float(second))
            if publishes(list(commands), "/$next/get"):
                asks.append(second)
                assert c.Subscribe(notify_next_topic(thing), 1) in commands  # subscription retried too
        return asks

    asks = asks_of(THING)
    gaps = [b - a for a, b in itertools.pairwise(asks)]
    # A request_timeout for the answer, then full jitter below a doubling ceiling (issue 18).
    assert len(gaps) >= 4
    for k, gap in enumerate(gaps):
        assert 10 <= gap <= 10 + min(300, 10 * 2**k) + 1, (k, gaps)
    # Devices draw differently: a fleet does not ask again in lock-step.
    assert len({tuple(asks_of(f"dev-{i}")) for i in range(5)}) == 5


def test_answered_next_job_question_is_not_asked_again() -> None:
    state, _ = run(booted(), [MessageReceived(notify_next_topic(THING), b'{"timestamp":5}')])
    _, commands = run(state, [Tick()], now=1000.0)
    assert not publishes(commands, "/$next/get")


def test_next_job_question_is_not_repeated_while_offline() -> None:
    state, _ = run(booted(), [Disconnected("network down")])
    _, commands = run(state, [Tick()], now=1000.0)
    assert not publishes(commands, "")


@pytest.mark.parametrize("topic", [notify_next_topic(THING), f"{NEXT_GET}/accepted"])
def test_reply_without_execution_means_no_job(topic: str) -> None:
    state, commands = run(booted(), [MessageReceived(topic, b'{"clientToken":"1:dev-1","timestamp":5}')])
    assert state.phase is Phase.IDLE
    assert not publishes(commands, "")
    assert not of(commands, c.CreateStaging)


@pytest.mark.parametrize(("document", "why"), [
    ({"operation": "reboot"}, "custom job"),
    (json.dumps(ota_doc()), "stringified document"),
    ({"afr_ota": {"protocols": ["MQTT"], "streamname": STREAM}}, "no files"),
    ({"afr_ota": {"protocols": ["MQTT"], "streamname": STREAM,
                  "files": [{"filepath": "f", "filesize": 0, "fileid": 0, "certfile": "c",
                             "sig-sha256-ecdsa": "AAAA"}]}}, "empty file"),
])
def test_document_that_is_not_an_ota_job_fails(document: Any, why: str) -> None:
    state, commands = run(booted(), [job(doc=document)])
    ((status, details, qos),) = statuses(commands)
    assert (status, details["reason"], qos) == ("FAILED", "0x0000000c: 0x00000005", 1), why
    assert publishes(commands, "/update")[0].topic == f"$aws/things/{THING}/jobs/job-1/update"
    assert not of(commands, c.CreateStaging)
    assert state.phase is Phase.IDLE
    assert state.journal.last_result is not None
    assert state.journal.last_result.status == "FAILED"


def test_unparseable_messages_are_ignored() -> None:
    for payload in (b"not json", b"[]", b'{"execution": {"jobDocument": {}}}',
                    b'{"execution": {"jobId": "a/b"}}'):
        state, commands = run(booted(), [MessageReceived(notify_next_topic(THING), payload)])
        assert state.phase is Phase.IDLE
        assert not publishes(commands, "")


# --- §3 file delivery ---------------------------------------------------------------------

def test_job_creates_file_subscribes_then_requests_with_bitmap() -> None:
    state, commands = run(booted(), [job()])
    kinds = [type(x) for x in commands if not isinstance(x, c.Log)]
    assert kinds == [c.CreateStaging, c.Subscribe, c.Subscribe, c.Publish]
    bound = staging_binding("job-1", STREAM, 0, SIZE, BS, b"\x30\x45sig")
    assert of(commands, c.CreateStaging) == [c.CreateStaging(SIZE, bound, BS)]
    assert of(commands, c.Subscribe) == [c.Subscribe(DATA, 0), c.Subscribe(REJECTED, 0)]
    (request_pub,) = publishes(commands, "/get/cbor")
    assert request_pub.topic == GET
    request = cbor2.loads(request_pub.payload)
    assert list(request) == ["c", "f", "l", "o", "b", "n"]
    # 10 blocks needed: bits 0-7 of byte 0 and bits 0-1 of byte 1, least significant first.
    assert request == {"c": "rdy", "f": 0, "l": BS, "o": 0, "b": b"\xff\x03", "n": 4}
    assert state.journal.job == JobRecord("job-1", 1, JobStage.DOWNLOADING)


def test_blocks_are_written_at_their_offset_and_requested_n_at_a_time() -> None:
    state = downloading()
    state, commands = run(state, [block(2)])
    assert of(commands, c.WriteBlock) == [c.WriteBlock(2, 2 * BS, bytes([2]) * BS)]
    state, commands = run(state, [BlockStored(2)])
    assert of(commands, c.ReportProgress) == [c.ReportProgress("job-1", 1, 10)]
    assert not requests(commands)  # 1 of the 4 requested blocks
    state, commands = deliver(state, [0, 1, 3])
    (request,) = requests(commands)  # the 4th new block triggers the next request
    assert request["b"] == b"\xf0\x03"
    assert request["o"] == 0
    assert request["n"] == 4


def test_duplicate_blocks_are_ignored() -> None:
    state, _ = deliver(downloading(), [0])
    for _ in range(3):
        state, commands = run(state, [block(0)])
        assert not of(commands, c.WriteBlock)
        assert not publishes(commands, "")
    assert state.download is not None
    assert state.download.remaining == 9


def test_progress_is_reported_at_qos0_after_first_block_and_every_few_blocks() -> None:
    state, commands = downloading(), []
    for i in range(10):  # one block a second: the time pacing never holds a report back
        state, delivered = deliver(state, [i], now=float(i))
        commands += delivered
    progress = [(s, d, q) for s, d, q in statuses(commands) if "receive" in d]
    # First block, then every 5; the last block goes to verification instead.
    assert progress == [("IN_PROGRESS", {"receive": "1/10"}, 0), ("IN_PROGRESS", {"receive": "5/10"}, 0)]


def test_progress_reports_are_paced_by_time_so_a_fast_download_keeps_its_update_budget() -> None:
    # Every block at once: only the first is reported; "5/10" falls within
    # status_min_interval of it. The budget is then left for self_test and the result.
    state, _ = run(booted(settings=replace(SETTINGS, status_min_interval=1.0)), [job()])
    _, commands = deliver(state, list(range(10)), now=0.5)
    progress = [d for _, d, _ in statuses(commands) if "receive" in d]
    assert progress == [{"receive": "1/10"}]


def test_silence_of_ten_seconds_re_requests_and_momentum_aborts() -> None:
    state, _ = deliver(downloading(now=100.0), [0], now=100.0)
    state, commands = run(state, [Tick()], now=109.9)
    assert not publishes(commands, "")
    state, commands = run(state, [Tick()], now=110.0)
    (request,) = requests(commands)
    assert request["b"] == b"\xfe\x03"
    now = 110.0
    for _ in range(31):
        now += 10.0
        state, commands = run(state, [Tick()], now=now)
        assert len(requests(commands)) == 1
    state, commands = run(state, [Tick()], now=now + 10.0)
    assert statuses(commands)[0][:2] == ("FAILED", {"reason": "aborted: 0x0000000e",
                                                    "detail": "32 block requests went unanswered"})
    assert of(commands, c.AbortStaging)
    assert of(commands, c.Unsubscribe)
    assert state.phase is Phase.IDLE


def test_a_new_block_resets_the_request_timer() -> None:
    state, _ = deliver(downloading(now=0.0), [0], now=0.0)
    state, _ = deliver(state, [1], now=8.0)
    _, commands = run(state, [Tick()], now=12.0)
    assert not requests(commands)


@pytest.mark.parametrize(("message", "why"), [
    (block(3, size=BS - 1), "short block that is not the last"),
    (block(9, size=BS), "last block too long"),
    (block(10), "index beyond the file"),
    (block(1, file_id=1), "another file"),
    (MessageReceived(DATA, b"\xff\x00garbage"), "undecodable"),
])
def test_bad_block_fails_the_job(message: MessageReceived, why: str) -> None:
    state, commands = run(downloading(), [message])
    ((status, details, _),) = statuses(commands)
    assert (status, details["reason"]) == ("FAILED", "0x000000e0: 0x00000000"), why
    assert of(commands, c.AbortStaging)
    assert of(commands, c.Unsubscribe) == [c.Unsubscribe(DATA), c.Unsubscribe(REJECTED)]
    assert state.phase is Phase.IDLE
    assert state.download is None


def test_storage_failure_fails_the_job() -> None:
    state, commands = run(downloading(), [PlatformFailed("create", "disk full")])
    assert statuses(commands)[0][1]["reason"] == "aborted: 0x000000e4"
    assert state.phase is Phase.IDLE


def test_complete_file_goes_to_verification() -> None:
    state, commands = deliver(downloading(), list(range(10)))
    (verify,) = of(commands, c.VerifyImage)
    assert verify.file.size == SIZE
    assert verify.file.signature == b"\x30\x45sig"
    assert verify.file.signer_chain == (b"der-cert",)
    assert verify.file.certfile == "signer.crt"
    assert c.Unsubscribe(DATA) in commands
    assert state.phase is Phase.VERIFYING
    # Late blocks after completion are not written.
    _, late = run(state, [block(3)])
    assert not of(late, c.WriteBlock)


def test_large_file_requests_slide_a_window_over_the_bitmap() -> None:
    blocks = 1100
    state, commands = run(booted(), [job(doc=ota_doc(size=blocks * BS))])
    (first,) = requests(commands)
    assert first["o"] == 0
    assert len(first["b"]) == 128
    dl = state.download
    assert dl is not None
    needed = bytearray(dl.needed)
    needed[:2] = b"\x00\x00"  # blocks 0-15 received
    state = replace(state, download=replace(dl, needed=bytes(needed), remaining=blocks - 16))
    _, commands = run(state, [Tick()], now=20.0)
    (request,) = requests(commands)
    assert request["o"] == 16
    assert len(request["b"]) == 128
    assert request["b"][0] == 0xFF


# --- verification, anti-rollback (N1, N2) ------------------------------------------------

@pytest.mark.parametrize(("result", "reason", "check"), [
    (VerifyResult(True, V0_9), "rejected: 0x0000000f", None),
    (VerifyResult(True, V1), "rejected: 0x00000010", None),
    (VerifyResult(False, check="BadSignature", message="signature does not match"),
     "0x000000e3: 0x00000001", "BadSignature"),
    (VerifyResult(False, check="UntrustedChain"), "0x000000e7: 0x00000001", "UntrustedChain"),
    (VerifyResult(False, check="MissingCodeSigningUsage"), "0x000000e7: 0x00000002",
     "MissingCodeSigningUsage"),
    (VerifyResult(False, check="CertificateRevoked"), "0x000000e7: 0x00000006", "CertificateRevoked"),
])
def test_refused_image_is_reported_and_never_activated(result: VerifyResult, reason: str,
                                                       check: str | None) -> None:
    state, commands = run(verifying(), [result])
    ((status, details, _),) = statuses(commands)
    assert status == "FAILED"
    assert details["reason"] == reason
    assert details.get("check") == check
    assert of(commands, c.AbortStaging)
    assert not of(commands, c.ActivateAndReboot)
    assert state.phase is Phase.IDLE
    assert state.journal.job is None


def test_version_floor_refuses_what_was_once_superseded() -> None:
    journal = Journal(version_floor=Version(1, 5, 0))
    state, _ = deliver(run(booted(V1, journal=journal), [job()])[0], list(range(10)))
    _, commands = run(state, [VerifyResult(True, V2)])
    assert statuses(commands)[0][1]["reason"] == "rejected: 0x0000000f"


def test_verified_newer_image_reports_ready_then_activates() -> None:
    state, commands = run(verifying(), [VerifyResult(True, V2)])
    assert statuses(commands) == [("IN_PROGRESS", READY, 1)]
    assert isinstance(commands[-1], c.ActivateAndReboot)
    assert state.journal.job == JobRecord("job-1", 1, JobStage.ACTIVATING, updated_by=V1, new_version=V2)


# --- §5 self-test after the reboot (R1) --------------------------------------------------

def test_self_test_sequence_active_then_commit_then_succeeded() -> None:
    state = booted(V2, trial=True, journal=after_activation(), now=1000.0)
    assert state.trial
    assert state.self_test_deadline == 1060.0
    state, commands = run(state, [job(details=READY)], now=1001.0)
    assert statuses(commands) == [("IN_PROGRESS", {"self_test": "active", "updatedBy": V2.hex()}, 1)]
    assert of(commands, c.RunSelfTest) == [c.RunSelfTest("job-1", 1060.0)]
    assert state.journal.job is not None
    assert state.journal.job.stage is JobStage.SELF_TEST
    state, commands = run(state, [SelfTestResult(True)], now=1002.0)
    assert [x for x in commands if not isinstance(x, c.Log)] == [c.CommitImage()]
    assert not statuses(commands)  # committed before SUCCEEDED is reported
    assert state.journal.job is not None
    assert state.journal.job.stage is JobStage.COMMITTING
    state, commands = run(state, [ImageCommitted()], now=1003.0)
    assert statuses(commands) == [("SUCCEEDED", {"reason": "accepted v1.1.0"}, 1)]
    assert not state.trial
    assert state.self_test_deadline is None
    assert state.journal.version_floor == V2
    assert state.journal.job is None
    assert state.journal.last_result is not None
    assert state.journal.last_result.status == "SUCCEEDED"


@pytest.mark.parametrize(("event", "now", "detail"), [
    (SelfTestResult(False, "command 'check' exited 3"), 1010.0, "self-test failed: command 'check' exited 3"),
    (Tick(), 1060.0, "self-test did not pass within 60 s"),
])
def test_self_test_failure_or_deadline_fails_and_rolls_back(event: Event, now: float, detail: str) -> None:
    state = booted(V2, trial=True, journal=after_activation(), now=1000.0)
    state, _ = run(state, [job(details=READY)], now=1001.0)
    state, commands = run(state, [event], now=now)
    assert statuses(commands) == [("FAILED", {"reason": "rejected: 0x00000000", "detail": detail}, 1)]
    assert isinstance(commands[-1], c.RollbackAndReboot)
    assert state.phase is Phase.REBOOTING
    assert state.journal.last_result is not None
    assert state.journal.last_result.status == "FAILED"


def test_trial_image_without_a_self_test_job_rolls_back_at_the_deadline() -> None:
    state = booted(V2, trial=True, journal=after_activation(), now=0.0)
    state, commands = run(state, [MessageReceived(notify_next_topic(THING), b'{"timestamp":1}')], now=1.0)
    assert not of(commands, c.RollbackAndReboot)
    _, commands = run(state, [Tick()], now=59.0)
    assert not of(commands, c.RollbackAndReboot)
    _, commands = run(state, [Tick()], now=60.0)
    assert of(commands, c.RollbackAndReboot)


@pytest.mark.parametrize("details", [None, {"receive": "10/10"}])
def test_self_test_runs_when_the_ready_report_was_lost_but_the_journal_activated_this_job(
        details: dict[str, str] | None) -> None:
    # `self_test: ready` was throttled or lost: the service still holds the last progress
    # (or nothing). The journal is trusted: the booted image is the one this execution
    # activated, so it is self-tested, not rolled back and downloaded again.
    state = booted(V2, trial=True, journal=after_activation(), now=1000.0)
    state, commands = run(state, [job(details=details)], now=1001.0)
    assert not of(commands, c.RollbackAndReboot)
    assert statuses(commands) == [("IN_PROGRESS", {"self_test": "active", "updatedBy": V2.hex()}, 1)]
    assert of(commands, c.RunSelfTest) == [c.RunSelfTest("job-1", 1060.0)]


@pytest.mark.parametrize(("job_id", "number", "running"), [
    ("job-1", 2, V2),  # another execution of the job (a retry the device never activated)
    ("job-2", 1, V2),  # another job
])
def test_trial_image_offered_another_execution_without_self_test_rolls_back(
        job_id: str, number: int, running: Version) -> None:
    state = booted(running, trial=True, journal=after_activation())
    _, commands = run(state, [job(job_id, number=number)])
    assert of(commands, c.RollbackAndReboot)


def test_trial_image_offered_a_job_not_in_self_test_rolls_back() -> None:
    state = booted(V2, trial=True, journal=after_activation())
    _, commands = run(state, [job("job-2")])
    assert of(commands, c.RollbackAndReboot)
    assert not of(commands, c.CreateStaging)


@pytest.mark.parametrize(("running", "updated_by", "trial", "reason"), [
    (V1, V1, False, "rejected: 0x00000010"),  # the new image never came up: fell back
    (V0_9, V1, False, "rejected: 0x0000000f"),
    (V2, V1, False, "rejected: 0x00000011"),  # job in self-test, platform is not
])
def test_self_test_version_checks_as_freertos(running: Version, updated_by: Version, trial: bool,
                                              reason: str) -> None:
    state = booted(running, trial=trial, journal=after_activation(), fell_back=True)
    state, commands = run(state, [job(details={"self_test": "ready", "updatedBy": updated_by.hex()})])
    ((status, details, _),) = statuses(commands)
    assert (status, details["reason"]) == ("FAILED", reason)
    assert not of(commands, c.RollbackAndReboot)  # nothing to roll back
    assert state.phase is Phase.IDLE


@pytest.mark.parametrize("details", [READY, {"self_test": "active", "updatedBy": V2.hex()}])
def test_commit_done_but_not_reported_is_reported_after_reset(details: dict[str, str]) -> None:
    journal = Journal(job=JobRecord("job-1", 1, JobStage.COMMITTING, updated_by=V1, new_version=V2))
    _, commands = run(booted(V2, journal=journal), [job(details=details)])
    assert statuses(commands) == [("SUCCEEDED", {"reason": "accepted v1.1.0"}, 1)]
    assert not of(commands, c.RollbackAndReboot)


def test_reset_during_self_test_runs_the_self_test_again() -> None:
    # The service now holds "active" with the new version; the journal still knows the old one.
    journal = Journal(job=JobRecord("job-1", 1, JobStage.SELF_TEST, updated_by=V1, new_version=V2))
    _, commands = run(booted(V2, trial=True, journal=journal),
                      [job(details={"self_test": "active", "updatedBy": V2.hex()})])
    assert statuses(commands) == [("IN_PROGRESS", {"self_test": "active", "updatedBy": V2.hex()}, 1)]
    assert of(commands, c.RunSelfTest)


def test_interrupted_download_is_forgotten_at_boot() -> None:
    journal = Journal(job=JobRecord("job-1", 1, JobStage.DOWNLOADING))
    assert booted(journal=journal).journal.job is None


# --- N3: a job is applied once --------------------------------------------------------------

def _finished(status: str, number: int = 1) -> Journal:
    reason = "accepted v1.1.0" if status == "SUCCEEDED" else "rejected: 0x0000000f"
    details = (("reason", reason),)
    return Journal(results=(JobResult("job-1", number, status, details, 5.0),), version_floor=V2)


@pytest.mark.parametrize(("journal", "number", "status_details"), [
    (_finished("SUCCEEDED"), 1, None),
    (_finished("SUCCEEDED"), 7, None),  # even as a new execution number
    (_finished("SUCCEEDED"), 1, READY),  # a replayed self-test message
    (_finished("FAILED"), 1, None),
])
def test_replayed_job_is_not_applied_twice(journal: Journal, number: int,
                                           status_details: dict[str, str] | None) -> None:
    state = booted(V2, journal=journal)
    state, commands = run(state, [job(number=number, details=status_details)])
    assert not of(commands, c.CreateStaging)
    assert not of(commands, c.RunSelfTest)
    recorded = journal.results[0]
    assert statuses(commands) == [(recorded.status, recorded.details_dict, 1)]  # idempotent re-report
    assert state.phase is Phase.IDLE
    assert state.journal == booted(V2, journal=journal).journal


def test_retry_of_a_failed_job_runs_again() -> None:
    state, commands = run(booted(V2, journal=_finished("FAILED", number=1)), [job(number=2)])
    assert of(commands, c.CreateStaging)
    assert state.phase is Phase.DOWNLOADING


def test_journal_round_trips_through_json() -> None:
    journal = replace(_finished("SUCCEEDED"), job=JobRecord("job-2", None, JobStage.SELF_TEST, V1, V2))
    assert Journal.from_json_obj(json.loads(json.dumps(journal.to_json_obj()))) == journal


# --- job messages during a download ---------------------------------------------------------

@pytest.mark.parametrize("message", [
    job("job-2"),
    MessageReceived(notify_next_topic(THING), b'{"timestamp":9}'),  # the job was cancelled
])
def test_another_job_during_download_aborts_and_asks_again(message: MessageReceived) -> None:
    state, _ = deliver(downloading(), [0, 1])
    state, commands = run(state, [message])
    assert of(commands, c.Unsubscribe) == [c.Unsubscribe(DATA), c.Unsubscribe(REJECTED)]
    assert of(commands, c.AbortStaging)
    assert len(publishes(commands, "/$next/get")) == 1
    assert not statuses(commands)
    assert state.phase is Phase.IDLE
    assert state.download is None
    assert state.journal.job is None
    # The next job then starts from block 0.
    state, commands = run(state, [job("job-2")])
    assert requests(commands)[0]["b"] == b"\xff\x03"


def test_same_job_notified_again_does_not_restart_the_download() -> None:
    state, _ = deliver(downloading(), [0, 1])
    after, commands = run(state, [job(), job(topic=f"{NEXT_GET}/accepted")])
    assert after == state
    assert not [x for x in commands if not isinstance(x, c.Log)]


def test_reconnect_during_download_resubscribes_and_requests_again() -> None:
    state, _ = deliver(downloading(), [0])
    state, commands = run(state, [Connected()], now=3.0)
    assert c.Subscribe(DATA, 0) in commands
    assert publishes(commands, "/$next/get")
    assert requests(commands)[0]["b"] == b"\xfe\x03"


# --- code-signing revocation lists (O2) --------------------------------------------------------

ENVELOPE = b'{"list":"e30=","signature":"MEU="}'  # the machine never looks inside


def test_o2_connect_subscribes_revocations_before_asking_for_a_job() -> None:
    """The retained list is delivered during the SUBSCRIBE: subscribing before `$next/get`
    puts it ahead of any job offered at this connect."""
    state, _ = handle(State(SETTINGS), Booted(V1, "a", False), 0.0)
    for _ in range(2):  # every connect, not only the first
        state, commands = handle(state, Connected(), 0.0)
        subscribe = commands.index(c.Subscribe(REVOCATIONS_TOPIC, 1))
        ask = commands.index(publishes(list(commands), "/$next/get")[0])
        assert subscribe < ask


def test_o2_reconnect_during_download_subscribes_revocations_too() -> None:
    state, _ = deliver(downloading(), [0])
    _, commands = run(state, [Connected()], now=3.0)
    assert c.Subscribe(REVOCATIONS_TOPIC, 1) in commands


def in_self_test() -> State:
    state, _ = run(booted(V2, trial=True, journal=after_activation(), now=1000.0), [job(details=READY)],
                   now=1001.0)
    return state


PHASES: dict[str, Callable[[], State]] = {
    "booting": lambda: State(SETTINGS), "idle": booted,
    "downloading": lambda: deliver(downloading(), [0, 1])[0], "verifying": verifying,
    "self_test": in_self_test}


@pytest.mark.parametrize("phase", PHASES)
def test_o2_revocation_list_is_handed_to_the_runtime_in_any_phase(phase: str) -> None:
    state = PHASES[phase]()
    assert state.phase.value == phase
    after, commands = handle(state, MessageReceived(REVOCATIONS_TOPIC, ENVELOPE), 5.0)
    assert commands == (c.ApplyRevocations(ENVELOPE),)
    assert after == state  # the list changes what the runtime trusts, not the update under way


def test_o2_cleared_retained_list_changes_nothing() -> None:
    """Clearing the retained message (an empty payload) must not look like an empty list."""
    state = booted()
    after, commands = handle(state, MessageReceived(REVOCATIONS_TOPIC, b""), 0.0)
    assert after == state
    assert not of(list(commands), c.ApplyRevocations)


@pytest.mark.parametrize("topic", [f"{REVOCATIONS_TOPIC}/extra", "overair/code-signing/revocation",
                                   f"$aws/things/{THING}/revocations"])
def test_o2_only_the_revocation_topic_carries_lists(topic: str) -> None:
    _, commands = handle(booted(), MessageReceived(topic, ENVELOPE), 0.0)
    assert not of(list(commands), c.ApplyRevocations)


# --- §4 file delivery over HTTP (pre-signed URLs) -------------------------------------------

URL = "https://files.example:8443/fw.bin?expires=100&sig=first"
FRESH_URL = "https://files.example:8443/fw.bin?expires=200&sig=second"


def http_doc(url: str | None = URL, protocols: tuple[str, ...] = ("HTTP",)) -> dict[str, Any]:
    doc = ota_doc()
    doc["afr_ota"]["protocols"] = list(protocols)
    if "MQTT" not in protocols:
        del doc["afr_ota"]["streamname"]
    if url is not None:
        doc["afr_ota"]["files"][0].update({"update_data_url": url, "auth_scheme": "aws.s3.presigned"})
    return doc


def ranges(commands: list[c.Command]) -> list[c.HttpGetRange]:
    return of(commands, c.HttpGetRange)


def http_downloading(now: float = 0.0, url: str = URL) -> tuple[State, c.HttpGetRange]:
    state, commands = run(booted(), [job(doc=http_doc(url))], now)
    assert state.phase is Phase.DOWNLOADING
    (request,) = ranges(commands)
    return state, request


def answer(state: State, request: c.HttpGetRange, now: float = 0.0) -> tuple[State, list[c.Command]]:
    """The server answers 206 with the block; the runtime stores it."""
    last = (request.offset + request.length - 1) // BS
    data = b"".join(bytes([block_id]) * BS for block_id in range(request.offset // BS, last + 1))
    state, out = run(state, [HttpRangeReceived(request.request, request.offset,
                                               data[:request.length])], now)
    for write in of(out, c.WriteBlock):
        state, commands = run(state, [BlockStored(write.block_id)], now)
        out += commands
    return state, out


def fail(state: State, request: c.HttpGetRange, status: int, now: float = 0.0,
         reason: str = "refused") -> tuple[State, list[c.Command]]:
    return run(state, [HttpRangeFailed(request.request, request.offset, status, reason)], now)


def test_http_job_fetches_one_block_per_range_request_in_order() -> None:
    state, commands = run(booted(), [job(doc=http_doc())])
    kinds = [type(x) for x in commands if not isinstance(x, c.Log)]
    assert kinds == [c.CreateStaging, c.HttpGetRange]  # no stream subscription, no GetStream
    assert state.download is not None
    assert (state.download.protocol, state.download.url) == (DataProtocol.HTTP, URL)
    assert state.journal.job == JobRecord("job-1", 1, JobStage.DOWNLOADING)
    (request,) = ranges(commands)
    asked = [(request.url, request.offset, request.length)]
    out: list[c.Command] = []
    while state.phase is Phase.DOWNLOADING:
        state, commands = answer(state, request)
        out += commands
        more = ranges(commands)
        if more:
            (request,) = more  # one request in flight at a time
            asked.append((request.url, request.offset, request.length))
    assert asked == [(URL, i * BS, BS) for i in range(9)] + [(URL, 9 * BS, SIZE - 9 * BS)]
    assert [(w.block_id, w.offset, len(w.data)) for w in of(out, c.WriteBlock)] == \
        [(i, i * BS, BS) for i in range(9)] + [(9, 9 * BS, SIZE - 9 * BS)]
    progress = [(s, d, q) for s, d, q in statuses(out) if "receive" in d]
    assert progress == [("IN_PROGRESS", {"receive": "1/10"}, 0), ("IN_PROGRESS", {"receive": "5/10"}, 0)]
    assert [x.received for x in of(out, c.ReportProgress)] == list(range(1, 11))
    (verify,) = of(out, c.VerifyImage)
    assert verify.file.size == SIZE
    assert not of(out, c.Unsubscribe)
    assert not publishes(out, "/get/cbor")
    assert state.phase is Phase.VERIFYING
    # The rest (verification, activation, self-test) is the same as over MQTT.
    _, commands = run(state, [VerifyResult(True, V2)])
    assert statuses(commands) == [("IN_PROGRESS", READY, 1)]


def test_http_agent_fetches_runs_of_missing_blocks_per_range_request() -> None:
    # The agent's default: up to http_range_blocks blocks per request, each block of the
    # answer written where it belongs; a block already held is never asked for again.
    settings = replace(SETTINGS, http_range_blocks=4)
    state, commands = run(booted(settings=settings), [job(doc=http_doc())])
    (request,) = ranges(commands)
    asked = [(request.offset, request.length)]
    out: list[c.Command] = []
    while state.phase is Phase.DOWNLOADING:
        state, commands = answer(state, request)
        out += commands
        more = ranges(commands)
        if more:
            (request,) = more
            asked.append((request.offset, request.length))
    assert asked == [(0, 4 * BS), (4 * BS, 4 * BS), (8 * BS, SIZE - 8 * BS)]
    assert [(w.block_id, w.offset, w.data[:1]) for w in of(out, c.WriteBlock)] == \
        [(i, i * BS, bytes([i])) for i in range(10)]
    assert state.phase is Phase.VERIFYING


def test_http_range_stops_at_a_block_already_held() -> None:
    settings = replace(SETTINGS, http_range_blocks=8)
    state, _ = run(booted(settings=settings), [job(doc=http_doc())])
    assert state.download is not None
    held = bytearray(state.download.needed)
    held[0] &= ~(1 << 3) & 0xFF  # block 3 already stored (a resumed download)
    dl = replace(state.download, needed=bytes(held), remaining=state.download.remaining - 1, in_flight=None)
    state, commands = run(replace(state, download=dl), [Tick()], now=20.0)
    (request,) = ranges(commands)
    assert (request.offset, request.length) == (0, 3 * BS)


def test_http_throttled_request_waits_for_retry_after_not_the_request_timeout() -> None:
    state, request = http_downloading(now=100.0)
    throttled = HttpRangeFailed(request.request, request.offset, 429, "429 Too Many", retry_after=2.0)
    state, commands = run(state, [throttled], now=100.5)
    assert not ranges(commands)
    assert state.download is not None
    assert state.download.retry_at is not None
    # The server's 2 s, plus full jitter below the first ceiling (retry_base, 1 s).
    assert 102.5 <= state.download.retry_at < 103.5
    assert state.download.retries == 0  # being asked to slow down spends no retry budget
    _, commands = run(state, [Tick()], now=102.4)
    assert not ranges(commands)  # the server asked for 2 s
    _, commands = run(state, [Tick()], now=state.download.retry_at)
    (again,) = ranges(commands)
    assert again.offset == request.offset


def test_http_hostile_retry_after_is_capped() -> None:
    # A Retry-After of days cannot park the download: at most max_next_job_retry.
    state, request = http_downloading(now=0.0)
    state, _ = run(state, [HttpRangeFailed(request.request, request.offset, 503, "busy",
                                           retry_after=999_999.0)], now=1.0)
    _, commands = run(state, [Tick()], now=1.0 + SETTINGS.max_next_job_retry + SETTINGS.retry_base)
    assert len(ranges(commands)) == 1


def test_http_range_requests_are_numbered_and_their_url_redacted_in_logs() -> None:
    state, first = http_downloading()
    state, commands = answer(state, first)
    (second,) = ranges(commands)
    assert second.request == first.request + 1
    assert "sig=" not in repr(second)
    assert "sig=" not in " ".join(x.message for x in commands if isinstance(x, c.Log))


@pytest.mark.parametrize("status", [400, 403, 404])
def test_http_expired_url_asks_for_the_job_again_and_continues_with_the_fresh_url(status: int) -> None:
    state, request = http_downloading()
    for _ in range(3):
        state, commands = answer(state, request)
        (request,) = ranges(commands)
    assert request.offset == 3 * BS
    state, commands = fail(state, request, status, now=1.0)
    assert len(publishes(commands, "/$next/get")) == 1  # a fresh URL comes with the job document
    assert not ranges(commands)
    assert not statuses(commands)
    assert state.phase is Phase.DOWNLOADING
    # The service re-sends the job with a new pre-signed URL (on /accepted and notify-next).
    # (after the backoff: full jitter below retry_base, 1 s)
    state, commands = run(state, [job(doc=http_doc(FRESH_URL), topic=f"{NEXT_GET}/accepted")], now=2.0)
    (request,) = ranges(commands)
    assert (request.url, request.offset, request.length) == (FRESH_URL, 3 * BS, BS)
    assert not of(commands, c.CreateStaging)  # the download was not restarted
    assert not of(commands, c.AbortStaging)
    state, commands = run(state, [job(doc=http_doc(FRESH_URL))], now=2.0)
    assert not ranges(commands)  # the copy on notify-next: a request is already in flight
    assert state.download is not None
    assert (state.download.url, state.download.stored) == (FRESH_URL, 3)
    offsets: list[int] = []
    while state.phase is Phase.DOWNLOADING:
        offsets.append(request.offset)
        state, commands = answer(state, request, now=2.0)
        if ranges(commands):
            (request,) = ranges(commands)
            assert request.url == FRESH_URL
    assert offsets == [i * BS for i in range(3, 10)]  # stored blocks are never fetched again
    assert state.phase is Phase.VERIFYING


def test_http_server_errors_back_off_with_full_jitter_then_the_retry_budget_fails_the_job() -> None:
    state, request = http_downloading(now=100.0)
    state, commands = answer(state, request, now=100.0)
    (request,) = ranges(commands)
    state, commands = fail(state, request, 503, now=100.5, reason="503 Service Unavailable")
    assert not ranges(commands)
    assert not publishes(commands, "")  # not a URL problem: no job request
    failures, waits, now = 1, [], 100.5
    while True:
        assert state.download is not None
        assert state.download.retry_at is not None
        waits.append(state.download.retry_at - now)
        _, early = run(state, [Tick()], now=state.download.retry_at - 0.01)
        assert not ranges(early)  # never before its backoff is over
        now = state.download.retry_at
        state, commands = run(state, [Tick()], now=now)
        (request,) = ranges(commands)
        assert (request.url, request.offset) == (URL, BS)
        now += 1.0
        state, commands = fail(state, request, 0 if failures % 2 else 500, now=now, reason="timed out")
        failures += 1
        if state.download is None:
            break
    assert failures == SETTINGS.job_retry_budget + 1
    # Capped exponential ceilings with full jitter below them: never above, and spread.
    for attempt, wait in enumerate(waits):
        assert 0.0 <= wait <= min(SETTINGS.retry_cap, SETTINGS.retry_base * 2**attempt)
    assert len({round(w, 3) for w in waits}) == len(waits)
    (status,) = statuses(commands)
    assert status[0] == "FAILED"
    assert status[1]["reason"] == "aborted: 0x0000000e"
    assert status[1]["check"] == "RetryBudgetExhausted"
    assert status[1]["detail"].startswith(f"{failures} requests failed (budget {SETTINGS.job_retry_budget}); "
                                          "last: HTTP 500 (timed out)")
    assert of(commands, c.AbortStaging)
    assert not of(commands, c.Unsubscribe)  # HTTP held no subscription
    assert state.phase is Phase.IDLE


def test_http_momentum_still_aborts_requests_that_go_unanswered() -> None:
    # The runtime answers every request; should one still get lost, the Tick re-sends it
    # and FreeRTOS's momentum abort remains the backstop.
    state, _ = http_downloading(now=0.0)
    now, sent = 0.0, 1
    while True:
        now += SETTINGS.request_timeout * 6
        state, commands = run(state, [Tick()], now=now)
        if not ranges(commands):
            break
        sent += 1
    assert sent == 32
    assert statuses(commands) == [("FAILED", {"reason": "aborted: 0x0000000e",
                                              "detail": "32 block requests failed or went unanswered"}, 1)]


def test_http_new_block_resets_momentum() -> None:
    state, request = http_downloading()
    now = 0.0
    for _ in range(1, 20):
        now += 1.0
        state, _ = fail(state, request, 502, now=now)
        assert state.download is not None
        assert state.download.retry_at is not None
        now = state.download.retry_at
        state, commands = run(state, [Tick()], now=now)
        (request,) = ranges(commands)
    state, commands = answer(state, request, now=now + 1.0)
    assert state.download is not None
    assert state.download.momentum == 1  # the request for the next block only
    assert ranges(commands)[0].offset == BS


def test_http_wrong_answers_are_never_written() -> None:
    state, request = http_downloading()
    # An answer to another (older) request, or at another offset: ignored.
    for event in (HttpRangeReceived(request.request - 1, request.offset, b"x" * BS),
                  HttpRangeReceived(request.request, request.offset + BS, b"x" * BS),
                  HttpRangeFailed(request.request + 1, request.offset, 403, "expired")):
        state, commands = run(state, [event])
        assert not of(commands, c.WriteBlock)
        assert not publishes(commands, "")
    # The right request with the wrong length (the runtime refuses those already).
    state, commands = run(state, [HttpRangeReceived(request.request, 0, b"x" * (BS + 1))])
    assert not of(commands, c.WriteBlock)
    assert not ranges(commands)
    state, commands = run(state, [Tick()], now=10.0)
    (again,) = ranges(commands)
    assert (again.offset, again.length) == (0, BS)


def test_http_request_without_any_answer_is_eventually_sent_again() -> None:
    state, request = http_downloading(now=0.0)
    _, commands = run(state, [Tick()], now=10.0)
    assert not ranges(commands)  # in flight: the runtime's own timeout answers it
    _, commands = run(state, [Tick()], now=HTTP_LOST_AFTER_TIMEOUTS * 10.0)
    (again,) = ranges(commands)
    assert again.offset == request.offset
    assert again.request != request.request


NOT_HTTPS = "HTTP delivery with an update_data_url that is not a usable https URL"


@pytest.mark.parametrize(("url", "detail"), [
    (None, "HTTP delivery with no update_data_url"),
    ("http://files.example/fw.bin?sig=x", NOT_HTTPS),
    ("https:///fw.bin", NOT_HTTPS),
    ("https://files.example:99999/fw.bin", NOT_HTTPS),
])
def test_http_job_without_a_usable_url_fails(url: str | None, detail: str) -> None:
    state, commands = run(booted(), [job(doc=http_doc(url))])
    assert statuses(commands) == [("FAILED", {"reason": "0x00000007: 0x00000001", "detail": detail}, 1)]
    assert not of(commands, c.CreateStaging)
    assert not ranges(commands)
    assert state.phase is Phase.IDLE
    assert state.journal.last_result is not None
    assert state.journal.last_result.reason == "0x00000007: 0x00000001"


@pytest.mark.parametrize(("prefer_http", "url", "expected"), [
    (False, URL, DataProtocol.MQTT),
    (True, URL, DataProtocol.HTTP),
    (True, None, DataProtocol.MQTT),  # HTTP preferred but not usable: the stream is
])
def test_both_protocols_prefer_mqtt_unless_configured(prefer_http: bool, url: str | None,
                                                      expected: DataProtocol) -> None:
    settings = replace(SETTINGS, prefer_http=prefer_http)
    state, commands = run(booted(settings=settings), [job(doc=http_doc(url, ("MQTT", "HTTP")))])
    assert state.download is not None
    assert state.download.protocol is expected
    if expected is DataProtocol.MQTT:
        assert of(commands, c.Subscribe) == [c.Subscribe(DATA, 0), c.Subscribe(REJECTED, 0)]
        assert len(requests(commands)) == 1
        assert not ranges(commands)
        assert state.download.url is None
    else:
        assert not of(commands, c.Subscribe)
        assert not requests(commands)
        assert [(r.url, r.offset) for r in ranges(commands)] == [(URL, 0)]


def test_http_download_ignores_stream_messages() -> None:
    state, _ = http_downloading()
    _, commands = run(state, [block(0)])
    assert not of(commands, c.WriteBlock)


def test_http_reconnect_asks_for_the_job_without_a_second_request_in_flight() -> None:
    state, request = http_downloading()
    state, commands = run(state, [Disconnected("broker restart"), Connected()], now=3.0)
    assert not [x for x in of(commands, c.Subscribe) if "/streams/" in x.topic]
    assert len(publishes(commands, "/$next/get")) == 1
    assert not ranges(commands)
    # The job comes back with a fresh URL while the request is still in flight: the URL is
    # replaced and the answer drives the next request, which uses it.
    state, commands = run(state, [job(doc=http_doc(FRESH_URL))], now=3.1)
    assert not ranges(commands)
    state, commands = answer(state, request, now=3.2)
    assert [(r.url, r.offset) for r in ranges(commands)] == [(FRESH_URL, BS)]


def test_http_same_job_without_a_url_keeps_the_previous_one() -> None:
    state, request = http_downloading()
    state, _ = fail(state, request, 503)
    state, commands = run(state, [job(doc=http_doc(None))], now=1.0)
    assert [(r.url, r.offset) for r in ranges(commands)] == [(URL, 0)]


def test_http_another_job_during_download_aborts_it() -> None:
    state, request = http_downloading()
    state, _ = answer(state, request)
    state, commands = run(state, [job("job-2", doc=http_doc(FRESH_URL))])
    assert of(commands, c.AbortStaging)
    assert not of(commands, c.Unsubscribe)
    assert len(publishes(commands, "/$next/get")) == 1
    assert state.phase is Phase.IDLE
    # A late answer for the aborted download changes nothing.
    after, commands = run(state, [HttpRangeReceived(request.request + 1, BS, b"x" * BS)])
    assert after == state
    assert not of(commands, c.WriteBlock)
