"""The agent state machine under hostile input (issue 12, finding 9).

Whatever a server or broker sends, `handle()` returns commands and never raises: a
malformed job document fails that job with a parser reason, an unusable message is
ignored, and a defect (`HandlingFailed`, fed by the runtime's one boundary) fails the
job it concerns, journaled first so that the job offered again is a replay whose
document is never parsed again. No broker, no files: events in, commands out.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from overair.agent.machine import commands as c
from overair.agent.machine.events import (
    BlockStored,
    Booted,
    HandlingFailed,
    MessageReceived,
    Tick,
    VerifyResult,
)
from overair.agent.machine.state import JobRecord, JobStage, Journal, Phase, State
from overair.agent.machine.transitions import handle
from overair.core.topics import notify_next_topic
from tests.unit.test_agent_machine import (
    DATA,
    SETTINGS,
    STREAM,
    V1,
    V2,
    booted,
    downloading,
    job,
    of,
    ota_doc,
    publishes,
    run,
    statuses,
    verifying,
)

PARSER = "0x0000000c: 0x00000005"  # OtaErrJobParserError: NonConformingJobDoc
DEFECT = "0x00000002: 0x00000000"  # OtaErrPanic: a contained defect
NOTIFY = notify_next_topic("dev-1")


def _file(**changes: Any) -> dict[str, Any]:
    doc = ota_doc()
    doc["afr_ota"]["files"][0].update(changes)
    return doc


def _chain(value: Any) -> dict[str, Any]:
    doc = ota_doc()
    doc["overair"] = {"signer_chain": value}
    return doc


def _raw_job(execution: str) -> MessageReceived:
    return MessageReceived(NOTIFY, ('{"timestamp":1,"execution":' + execution + "}").encode())


HOSTILE_DOCUMENTS = [
    (_file(**{"sig-sha256-ecdsa": "MEUCIQ\u00e9=="}), "non-ASCII signature (finding 9)"),
    (_file(**{"sig-sha256-ecdsa": "\uff10\uff11\uff12\uff13"}), "full-width base64"),
    (_chain(["MII\u00e9"]), "non-ASCII signer chain (finding 9)"),
    (_chain("MIIB"), "signer chain that is not a list"),
    (_chain([5]), "signer chain entry that is not text"),
    (_chain(["AAAA"] * 100), "signer chain too long"),
    (_chain(["A" * 24_000]), "certificate too large"),
    ({**ota_doc(), "overair": "x"}, "overair extension that is not an object"),
    (_file(**{"sig-sha256-ecdsa": "A" * 10_000}), "signature too large"),
    (_file(filepath="/fw\ud800"), "lone surrogate in a path"),
    (_file(certfile=["/etc/passwd"]), "certfile that is not text"),
    (_file(filesize=10**30), "huge file size"),
    (_file(filesize=-1), "negative file size"),
    (_file(filesize=True), "boolean file size"),
    (_file(fileid="0"), "file id as text"),
    (_file(fileType=[0]), "file type that is not a number"),
    (_file(update_data_url={"u": 1}), "URL that is not text"),
    ({"afr_ota": {"protocols": ["MQTT"], "streamname": STREAM, "files": _file()["afr_ota"]["files"] * 50}},
     "too many files"),
    ({"afr_ota": {"protocols": "MQTT", "streamname": STREAM, "files": []}}, "protocols as text"),
    ({"afr_ota": {"protocols": [["MQTT"]], "streamname": STREAM, "files": [{}]}}, "nested protocols"),
    ({"afr_ota": {"protocols": ["MQTT"], "streamname": STREAM + "\n", "files": _file()["afr_ota"]["files"]}},
     "stream name with a trailing newline"),
    ({"afr_ota": {"protocols": ["MQTT"], "streamname": STREAM, "files": [None]}}, "null file"),
]


@pytest.mark.parametrize(("document", "why"), HOSTILE_DOCUMENTS, ids=[w for _, w in HOSTILE_DOCUMENTS])
def test_agent_survives_a_hostile_job_document_the_job_fails_with_a_parser_reason(document: Any,
                                                                                   why: str) -> None:
    state, commands = run(booted(), [job(doc=document)])
    ((status, details, qos),) = statuses(commands)
    assert (status, details["reason"], qos) == ("FAILED", PARSER, 1), why
    assert details["detail"].isascii()
    assert details["detail"].isprintable()
    assert state.phase is Phase.IDLE
    assert state.journal.result_for("job-1") is not None  # journaled: a re-offer is a replay
    assert not of(commands, c.CreateStaging)


@pytest.mark.parametrize(("payload", "why"), [
    (b"\xff\xfe\x00", "not UTF-8"),
    (b"[" * 100_000, "nested 100,000 deep"),
    (b'{"execution": ' * 50 + b"{}" + b"}" * 50, "nested executions"),
    (b'{"execution": {"jobId": "job-1\\n", "jobDocument": {}}}', "job id with a trailing newline"),
    (b'{"execution": {"jobId": "j\\u00e9", "jobDocument": {}}}', "job id that is not ASCII"),
    (b'{"execution": {"jobId": ["job-1"]}}', "job id that is not text"),
    (b'{"execution": "job-1"}', "execution that is not an object"),
    (b'{"execution": {"jobId": "job-1", "executionNumber": 1e999}}', "infinite execution number"),
    (b'{"execution": {"jobId": "job-1", "executionNumber": ' + b"9" * 5000 + b"}}", "5000-digit number"),
    (b"x" * 70_000, "larger than any job message"),
    (b"NaN", "not JSON"),
])
def test_agent_survives_an_unusable_job_message(payload: bytes, why: str) -> None:
    state = booted()
    new, commands = handle(state, MessageReceived(NOTIFY, payload), 0.0)
    assert not statuses(list(commands)), why
    assert new.phase is Phase.IDLE


def test_agent_survives_a_job_message_with_hostile_status_details() -> None:
    details = '{"self_test": "ready", "updatedBy": "0x\uff10\uff11"}'
    doc = json.dumps(ota_doc())
    execution = '{"jobId": "job-1", "executionNumber": 1, "statusDetails": ' + details
    state, commands = run(booted(), [_raw_job(execution + ', "jobDocument": ' + doc + "}")])
    ((status, details_out, _qos),) = statuses(commands)
    assert (status, details_out["reason"]) == ("FAILED", "rejected: 0x00000011")  # no usable updatedBy
    assert state.phase is Phase.IDLE


@pytest.mark.parametrize(("payload", "why"), [
    (b"\x9b\x00\x00\x00\xff\xff\xff\xff\xff", "array of 2^40 elements announced"),
    (b"\x81" * 300 + b"\x00", "nested 300 deep"),
    (b"\xa4\x61f\x00\x61i\x00\x61l\x19\x01\x00\x61p\xc2\x41\x01", "payload that is a bignum"),
    (b"\xa4\x61f\x00\x61i\xc2\x58\x40" + b"\xff" * 64 + b"\x61l\x00\x61p\x40", "huge block index"),
    (b"\xa1\x80\x00", "map with an array key"),
    (b"\xd8\x24\x61\x00", "MIME tag"),
    (bytes(2000), "larger than a block can be"),
])
def test_agent_survives_a_hostile_data_block_the_download_fails(payload: bytes, why: str) -> None:
    state, commands = run(downloading(), [MessageReceived(DATA, payload)])
    ((status, details, _qos),) = statuses(commands)
    assert (status, details["reason"]) == ("FAILED", "0x000000e0: 0x00000000"), why
    assert c.AbortStaging() in commands
    assert state.phase is Phase.IDLE


# --- defects: the runtime's boundary feeds HandlingFailed ---------------------------------------

def test_agent_survives_a_defect_on_a_job_message_the_job_fails_and_its_replay_is_not_handled() -> None:
    poison = job("job-poison", number=3)
    state, commands = run(booted(), [HandlingFailed(poison, "ValueError: a defect")])
    ((status, details, qos),) = statuses(commands)
    assert (status, details["reason"], details["check"], qos) == ("FAILED", DEFECT, "AgentDefect", 1)
    assert "ValueError: a defect" in details["detail"]
    assert publishes(commands, "/jobs/job-poison/update")
    result = state.journal.result_for("job-poison")
    assert result is not None
    assert (result.status, result.execution_number) == ("FAILED", 3)
    # After a restart the same execution is offered again: a replay, its result repeated,
    # its document never handled again.
    fresh = booted(journal=state.journal)
    again, commands = run(fresh, [poison])
    assert statuses(commands) == [("FAILED", details, 1)]
    assert again.phase is Phase.IDLE
    assert not of(commands, c.CreateStaging)


def test_agent_survives_a_defect_during_a_download_the_job_fails_and_the_next_job_runs() -> None:
    state = downloading()
    state, commands = run(state, [HandlingFailed(MessageReceived(DATA, b"\x00"), "KeyError: 'p'")])
    ((status, details, _qos),) = statuses(commands)
    assert (status, details["reason"], details["check"]) == ("FAILED", DEFECT, "AgentDefect")
    assert c.AbortStaging() in commands
    assert c.Unsubscribe(DATA) in commands
    assert (state.phase, state.download, state.journal.job) == (Phase.IDLE, None, None)
    state, commands = run(state, [job("job-2")])
    assert state.phase is Phase.DOWNLOADING
    assert of(commands, c.CreateStaging)


def test_defect_on_another_jobs_message_fails_that_job_and_the_download_goes_on() -> None:
    state = downloading()
    state, commands = run(state, [HandlingFailed(job("job-other", number=1), "TypeError: x")])
    ((status, details, _qos),) = statuses(commands)
    assert (status, details["check"]) == ("FAILED", "AgentDefect")
    assert publishes(commands, "/jobs/job-other/update")
    assert state.phase is Phase.DOWNLOADING
    assert state.download is not None
    assert state.download.job_id == "job-1"
    assert state.journal.job is not None
    assert state.journal.job.job_id == "job-1"
    assert not of(commands, c.AbortStaging)


def test_defect_on_a_finished_jobs_message_keeps_its_recorded_result() -> None:
    state, _ = run(booted(), [job(doc={"not": "ota"})])
    recorded = state.journal.result_for("job-1")
    new, commands = run(state, [HandlingFailed(job(), "ValueError")])
    assert not statuses(commands)
    assert new.journal.result_for("job-1") == recorded


def test_defect_while_verifying_fails_the_job_and_discards_the_staged_image() -> None:
    state = verifying()
    state, commands = run(state, [HandlingFailed(BlockStored(9), "UnsupportedAlgorithm: x")])
    ((status, details, _qos),) = statuses(commands)
    assert (status, details["check"]) == ("FAILED", "AgentDefect")
    assert c.AbortStaging() in commands
    assert state.phase is Phase.IDLE


def test_defect_during_the_self_test_fails_the_job_and_rolls_back() -> None:
    state, _ = run(verifying(), [VerifyResult(True, V2)])
    trial = booted(V2, trial=True, journal=state.journal)
    self_test = job(details={"self_test": "ready", "updatedBy": V1.hex()})
    state, commands = run(trial, [HandlingFailed(self_test, "IndexError")])
    ((status, details, _qos),) = statuses(commands)
    assert (status, details["check"]) == ("FAILED", "AgentDefect")
    assert commands[-1] == c.RollbackAndReboot()


def test_defect_at_boot_fails_the_journaled_job_and_boots_without_it() -> None:
    journal = Journal(job=JobRecord("job-1", 1, JobStage.ACTIVATING, updated_by=V1, new_version=V2))
    state = State(SETTINGS, journal=journal)
    state, commands = run(state, [HandlingFailed(Booted(V1, "a", False), "ValueError")])
    ((status, details, _qos),) = statuses(commands)
    assert (status, details["check"]) == ("FAILED", "AgentDefect")
    assert (state.phase, state.running, state.slot, state.journal.job) == (Phase.IDLE, V1, "a", None)


def test_defect_with_no_job_concerned_changes_nothing() -> None:
    state = booted()
    for cause in (Tick(), MessageReceived(NOTIFY, b"\xff"), MessageReceived("some/topic", b"{}")):
        new, commands = handle(state, HandlingFailed(cause, "RuntimeError"), 0.0)
        assert new == state
        assert not statuses(list(commands))
        assert [x.level for x in of(list(commands), c.Log)] == ["error"]


def test_defect_detail_quoting_hostile_text_is_printable_ascii() -> None:
    _state, commands = run(downloading(), [HandlingFailed(Tick(), "KeyError: '\u00e9\ud800\n\x00'" * 50)])
    ((_status, details, _qos),) = statuses(commands)
    assert details["detail"].isascii()
    assert details["detail"].isprintable()
    assert len(details["detail"]) <= 200
    json.dumps(details).encode("utf-8")


def test_oversized_data_block_is_refused_before_it_is_decoded() -> None:
    state = downloading()
    big = bytes(SETTINGS.block_size + 257)
    state, commands = run(state, [MessageReceived(DATA, big)])
    ((status, details, _qos),) = statuses(commands)
    assert status == "FAILED"
    assert "exceeds" in details["detail"]
    assert replace(state, journal=Journal()).phase is Phase.IDLE
