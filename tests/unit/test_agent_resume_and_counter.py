"""The state machine's resumable download (R2) and security counter (N1), and the
threat-named replay (N3) and self-test (R1) transitions. Pure: events in, commands out."""

from __future__ import annotations

import base64
from dataclasses import replace

import cbor2

from overair.agent.machine import commands as c
from overair.agent.machine.events import (
    BlockStored,
    Booted,
    Connected,
    HttpRangeReceived,
    ImageCommitted,
    SelfTestResult,
    Tick,
    VerifyResult,
)
from overair.agent.machine.state import Phase, State
from overair.agent.progress import StagedProgress, is_needed
from overair.agent.progress import binding as staging_binding
from overair.core import bitmap
from overair.core.versions import Version
from tests.unit.test_agent_machine import (
    BS,
    READY,
    SETTINGS,
    SIZE,
    STREAM,
    V1,
    V2,
    block,
    deliver,
    http_doc,
    job,
    of,
    publishes,
    ranges,
    requests,
    run,
    statuses,
    verifying,
)

SIGNATURE = b"\x30\x45sig"  # what ota_doc() carries
BOUND = staging_binding("job-1", STREAM, 0, SIZE, BS, SIGNATURE)
V3 = Version(1, 2, 0)


def kept(held: range, binding: bytes = BOUND, size: int = SIZE) -> StagedProgress:
    total = -(-size // BS)
    missing = [i for i in range(total) if i not in held]
    return StagedProgress(binding, size, BS, bitmap.make_bitmap(missing, 0, total))


def booted_with(staged: StagedProgress | None = None, counter: int = 0, version: Version = V1) -> State:
    state, _ = run(State(SETTINGS), [Booted(version, "a", False, False, staged, counter), Connected()])
    return state


# --- R2: resumable download ---------------------------------------------------------------------

def test_r2_same_job_after_reboot_resumes_and_asks_only_for_the_missing_blocks() -> None:
    state, commands = run(booted_with(kept(range(0, 5))), [job()])
    assert state.phase is Phase.DOWNLOADING
    assert of(commands, c.ResumeStaging) == [c.ResumeStaging(kept(range(0, 5)))]
    assert not of(commands, c.CreateStaging)
    (request,) = requests(commands)
    assert request["b"] == b"\xe0\x03"  # blocks 5-9 only
    assert state.resumable is None
    # Blocks already held, re-sent anyway, are not written again.
    state, commands = run(state, [block(2)])
    assert not of(commands, c.WriteBlock)
    state, commands = deliver(state, [5, 6, 7, 8, 9])
    assert of(commands, c.VerifyImage)
    assert state.phase is Phase.VERIFYING


def test_r2_http_resume_starts_with_the_first_missing_byte_range() -> None:
    doc = http_doc()
    signature = doc["afr_ota"]["files"][0]["sig-sha256-ecdsa"]
    bound = staging_binding("job-1", "", 0, SIZE, BS, base64.b64decode(signature))
    state, commands = run(booted_with(kept(range(0, 3), binding=bound)), [job(doc=doc)])
    (request,) = ranges(commands)
    assert (request.offset, request.length) == (3 * BS, BS)
    state, commands = run(state, [HttpRangeReceived(request.request, request.offset, bytes(BS))])
    assert of(commands, c.WriteBlock) == [c.WriteBlock(3, 3 * BS, bytes(BS))]
    state, commands = run(state, [BlockStored(3)])
    (request,) = ranges(commands)
    assert request.offset == 4 * BS


def test_r2_progress_of_another_download_is_discarded() -> None:
    others = [
        kept(range(0, 5), binding=staging_binding("job-0", STREAM, 0, SIZE, BS, SIGNATURE)),  # another job
        kept(range(0, 5), binding=staging_binding("job-1", "s-2", 0, SIZE, BS, SIGNATURE)),  # another stream
        kept(range(0, 5), binding=staging_binding("job-1", STREAM, 0, SIZE, BS, b"resigned")),  # other file
        kept(range(0, 5), binding=BOUND, size=SIZE + BS),  # another size
    ]
    for staged in others:
        state, commands = run(booted_with(staged), [job()])
        assert of(commands, c.CreateStaging) == [c.CreateStaging(SIZE, BOUND, BS)], staged
        assert not of(commands, c.ResumeStaging)
        (request,) = requests(commands)
        assert request["b"] == b"\xff\x03"
        assert state.resumable is None


def test_r2_kept_progress_is_used_once() -> None:
    state, _ = run(booted_with(kept(range(0, 5))), [job("job-0")])
    assert state.resumable is None  # the first job started decided its fate


def test_r2_every_block_held_goes_straight_to_verification() -> None:
    state, commands = run(booted_with(kept(range(0, 10))), [job()])
    assert state.phase is Phase.VERIFYING
    assert [type(x) for x in commands if not isinstance(x, c.Log)] == [c.ResumeStaging, c.VerifyImage]
    state, commands = run(state, [VerifyResult(True, V2)])
    assert of(commands, c.ActivateAndReboot)


def test_r2_bitmap_is_saved_every_few_stored_blocks_and_only_for_stored_blocks() -> None:
    settings = replace(SETTINGS, save_progress_every=3)
    state, _ = run(State(settings), [Booted(V1, "a", False), Connected(), job()])
    saves: list[bytes] = []
    for i in range(9):
        state, commands = run(state, [block(i)])
        assert not of(commands, c.SaveProgress)  # received is not stored
        state, commands = run(state, [BlockStored(i)])
        saves += [s.needed for s in of(commands, c.SaveProgress)]
    assert len(saves) == 3
    for count, needed in zip((3, 6, 9), saves, strict=True):
        assert [is_needed(needed, i) for i in range(10)] == [i >= count for i in range(10)]


# --- N1: security counter -------------------------------------------------------------------------

def test_n1_image_with_a_lower_security_counter_is_refused_even_when_newer() -> None:
    state = replace(verifying(), security_counter=3)
    state, commands = run(state, [VerifyResult(True, V3, security_counter=2)])
    assert statuses(commands)[0][:2] == ("FAILED", {
        "reason": "rejected: 0x0000000f", "check": "SecurityCounter",
        "detail": "image security counter 2 is below the device's 3"})
    assert of(commands, c.AbortStaging)
    assert not of(commands, c.ActivateAndReboot)
    assert state.phase is Phase.IDLE


def test_n1_same_version_with_a_lower_security_counter_is_refused_for_its_counter() -> None:
    state = replace(verifying(), security_counter=1)
    state, commands = run(state, [VerifyResult(True, V1, security_counter=0)])
    assert statuses(commands)[0][1]["check"] == "SecurityCounter"


def test_n1_equal_or_higher_security_counter_is_accepted() -> None:
    for counter in (3, 4):
        state = replace(verifying(), security_counter=3)
        state, commands = run(state, [VerifyResult(True, V2, security_counter=counter)])
        assert of(commands, c.ActivateAndReboot)


def test_n1_security_counter_comes_from_the_platform_and_rises_at_commit() -> None:
    assert booted_with(counter=5).security_counter == 5
    trial, _ = run(State(SETTINGS), [Booted(V2, "b", True, False, None, 2), Connected(),
                                     job(details=READY)])
    assert trial.phase is Phase.SELF_TEST
    trial, _ = run(trial, [SelfTestResult(True)])
    trial, commands = run(trial, [ImageCommitted(security_counter=4)])
    assert statuses(commands)[-1][:2] == ("SUCCEEDED", {"reason": "accepted v1.1.0"})
    assert trial.security_counter == 4


# --- N3: replays ----------------------------------------------------------------------------------

def test_n3_replayed_job_after_succeeded_is_not_applied_twice() -> None:
    trial, _ = run(State(SETTINGS), [Booted(V2, "b", True), Connected(), job(details=READY)])
    trial, _ = run(trial, [SelfTestResult(True)])
    done, _ = run(trial, [ImageCommitted()])
    for details in (None, READY, {"self_test": "active", "updatedBy": V2.hex()}):
        state, commands = run(done, [job(details=details)])
        assert statuses(commands) == [("SUCCEEDED", {"reason": "accepted v1.1.0"}, 1)]
        assert not of(commands, c.CreateStaging)
        assert not of(commands, c.RunSelfTest)
        assert not of(commands, c.CommitImage)
        assert state.phase is Phase.IDLE


def test_n3_replayed_stream_blocks_change_nothing() -> None:
    state, _ = deliver(booted_with(), [])
    state, _ = run(state, [job()])
    state, _ = deliver(state, [0, 1, 2])
    before = state
    for i in (0, 1, 2, 0, 2):
        state, commands = run(state, [block(i, size=BS)])
        assert not of(commands, c.WriteBlock)
        assert not publishes(commands, "")
    assert state == before
    # A replayed block with other bytes for a held block is not written either.
    state, commands = run(state, [block(1, size=BS)])
    assert not of(commands, c.WriteBlock)


# --- R1: self-test --------------------------------------------------------------------------------

def test_r1_self_test_failure_reports_failed_with_a_reason_and_rolls_back() -> None:
    trial, _ = run(State(SETTINGS), [Booted(V2, "b", True), Connected(), job(details=READY)])
    _, commands = run(trial, [SelfTestResult(False, "health check exited 3")])
    status, details, _ = statuses(commands)[-1]
    assert (status, details["reason"]) == ("FAILED", "rejected: 0x00000000")
    assert "health check exited 3" in details["detail"]
    assert of(commands, c.RollbackAndReboot)
    assert not of(commands, c.CommitImage)


def test_r1_self_test_hanging_past_the_deadline_rolls_back() -> None:
    trial, _ = run(State(SETTINGS), [Booted(V2, "b", True), Connected(), job(details=READY)], now=0.0)
    state, commands = run(trial, [Tick()], now=59.0)
    assert not of(commands, c.RollbackAndReboot)
    state, commands = run(state, [Tick()], now=60.0)
    status, details, _ = statuses(commands)[-1]
    assert status == "FAILED"
    assert "did not pass within 60 s" in details["detail"]
    assert of(commands, c.RollbackAndReboot)
    # The late result of the hung self-test changes nothing.
    _, late = run(state, [SelfTestResult(True)])
    assert not of(late, c.CommitImage)


def test_requests_carry_the_resumed_bitmap_in_cbor() -> None:
    _, commands = run(booted_with(kept(range(0, 8))), [job()])
    (publish,) = publishes(commands, "/get/cbor")
    assert cbor2.loads(publish.payload)["b"] == b"\x00\x03"
