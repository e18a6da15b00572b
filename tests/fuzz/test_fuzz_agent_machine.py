"""Fuzz target: the agent state machine's handling of every message kind it receives
(agent/machine/transitions.py `handle()`): notify-next and `$next/get/accepted` JSON,
stream data blocks (CBOR), the retained revocation list, and anything else a broker
could deliver on any topic (describe replies, rejected replies, update replies).

Whatever the message and whatever the phase (idle, downloading over MQTT or HTTPS,
verifying, in self-test), `handle()` returns the next state and its commands and never
raises (issue 12, finding 9); a job message that names a usable job gets an answer for
that job (its download starts, or it ends FAILED with a reason, or its recorded result
is repeated). A defect fed back as `HandlingFailed` never raises either.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import cbor2
from hypothesis import given
from hypothesis import strategies as st

from overair.agent.machine import commands as c
from overair.agent.machine.events import HandlingFailed, MessageReceived, VerifyResult
from overair.agent.machine.state import Phase, State
from overair.agent.machine.transitions import handle
from overair.core.revocation import REVOCATIONS_TOPIC
from overair.core.topics import notify_next_topic
from tests.fuzz.agent_strategies import HOSTILE_TEXT, JSON_VALUES
from tests.unit.test_agent_machine import (
    DATA,
    NEXT_GET,
    SETTINGS,
    THING,
    V2,
    booted,
    downloading,
    http_downloading,
    ota_doc,
    run,
    verifying,
)
from tests.unit.test_agent_machine import job as job_message

JOB_TOPICS = [notify_next_topic(THING), f"{NEXT_GET}/accepted"]
OTHER_TOPICS = [f"{NEXT_GET}/rejected", f"$aws/things/{THING}/jobs/job-1/update/accepted",
                f"$aws/things/{THING}/jobs/job-1/get/accepted",
                f"$aws/things/{THING}/streams/stream-1/data/json",
                f"$aws/things/{THING}/streams/stream-1/description/cbor",
                f"$aws/things/{THING}/streams/stream-1/rejected/cbor", "$aws/things/other/jobs/notify-next"]


def _in_self_test() -> State:
    state, _ = run(verifying(), [VerifyResult(True, V2)])
    return booted(V2, trial=True, journal=state.journal)


STATES = st.sampled_from([
    ("idle", booted()), ("downloading", downloading()), ("http", http_downloading()[0]),
    ("verifying", verifying()), ("self_test", _in_self_test()),
])
FILE_FIELDS = ["filepath", "filesize", "fileid", "certfile", "fileType", "update_data_url", "auth_scheme",
               "sig-sha256-ecdsa"]


@st.composite
def documents(draw: st.DrawFn) -> Any:
    """A job document: any JSON value, or a valid one with fields made hostile."""
    if draw(st.booleans()):
        return draw(JSON_VALUES)
    doc = ota_doc()
    # File fields first: a hostile `files` (an ota field) may leave no file to edit.
    kinds = sorted(draw(st.lists(st.sampled_from(["file", "signature", "chain", "ota"]), min_size=1,
                                 max_size=3)), key=["signature", "file", "chain", "ota"].index)
    for where in kinds:
        if where == "signature":
            doc["afr_ota"]["files"][0]["sig-sha256-ecdsa"] = draw(HOSTILE_TEXT)
        elif where == "file":
            doc["afr_ota"]["files"][0][draw(st.sampled_from(FILE_FIELDS))] = draw(JSON_VALUES)
        elif where == "ota":
            doc["afr_ota"][draw(st.sampled_from(["protocols", "streamname", "files"]))] = draw(JSON_VALUES)
        else:
            doc["overair"] = {"signer_chain": draw(st.lists(HOSTILE_TEXT | JSON_VALUES, max_size=4))}
    return doc


@st.composite
def job_payloads(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """A job message and the job id it names (None when it names no usable job)."""
    kind = draw(st.sampled_from(["bytes", "json", "execution"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300)), None
    if kind == "json":
        return json.dumps(draw(JSON_VALUES)).encode(), None
    job_id = draw(st.sampled_from(["job-1", "job-2", "job-\u00e9", "job-1\n", "", "x" * 65]))
    execution: dict[str, Any] = {"jobId": job_id, "jobDocument": draw(documents())}
    if draw(st.booleans()):
        execution["executionNumber"] = draw(JSON_VALUES | st.integers(0, 10))
    if draw(st.booleans()):
        execution["statusDetails"] = draw(JSON_VALUES | st.fixed_dictionaries(
            {"self_test": st.sampled_from(["ready", "active"])}, optional={"updatedBy": HOSTILE_TEXT}))
    usable = job_id in ("job-1", "job-2")
    return json.dumps({"timestamp": 1, "execution": execution}).encode(), job_id if usable else None


CBOR_KEYS = st.sampled_from(["f", "i", "l", "p", "x"])
CBOR_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-(2**80), 2**80) | st.binary(max_size=300)
                           | st.text(max_size=10) | st.floats(),
                           lambda children: st.lists(children, max_size=3)
                           | st.dictionaries(CBOR_KEYS, children, max_size=5),
                           max_leaves=10)


@st.composite
def block_payloads(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["bytes", "cbor", "block"]))
    if kind == "bytes":
        return draw(st.binary(max_size=400))
    if kind == "cbor":
        return cbor2.dumps(draw(CBOR_VALUES))
    block = {"f": 0, "i": 0, "l": 256, "p": b"\x00" * 256}
    for key in draw(st.lists(st.sampled_from(["f", "i", "l", "p"]), min_size=1, max_size=3)):
        block[key] = draw(CBOR_VALUES)
    return cbor2.dumps(block)


def _handle(state: State, message: MessageReceived) -> tuple[State, list[c.Command]]:
    new, commands = handle(state, message, 1.0)
    assert isinstance(new, State)
    assert all(not isinstance(x, type) for x in commands)
    again, _ = handle(new, HandlingFailed(message, "Exception: fuzzed defect"), 2.0)
    assert isinstance(again, State)
    return new, list(commands)


def _answered(commands: list[c.Command], job_id: str) -> bool:
    topic = f"$aws/things/{THING}/jobs/{job_id}/update"
    return any(isinstance(x, c.Publish) and x.topic == topic for x in commands) \
        or any(isinstance(x, c.CreateStaging | c.ResumeStaging | c.VerifyImage | c.RollbackAndReboot)
               for x in commands)


@given(STATES, st.sampled_from(JOB_TOPICS), job_payloads())
def test_fuzz_agent_job_messages_never_raise(phase_state: tuple[str, State], topic: str,
                                            payload: tuple[bytes, str | None]) -> None:
    phase, state = phase_state
    body, job_id = payload
    new, commands = _handle(state, MessageReceived(topic, body))
    if phase == "idle" and job_id is not None:
        # A usable job id in an idle agent always gets an answer for that job.
        assert _answered(commands, job_id) or new.phase is not Phase.IDLE, commands


@given(documents(), st.sampled_from(JOB_TOPICS), st.integers(1, 3))
def test_fuzz_agent_idle_job_with_a_hostile_document_starts_or_fails(document: Any, topic: str,
                                                                    number: int) -> None:
    """The case of finding 9: a usable job whose document is hostile, offered to an idle
    agent, starts downloading or ends FAILED with a reason; never an exception."""
    new, commands = _handle(booted(), job_message("job-1", doc=document, number=number, topic=topic))
    if new.phase is Phase.IDLE:
        (failed,) = [x for x in commands if isinstance(x, c.Publish) and x.topic.endswith("/job-1/update")]
        body = json.loads(failed.payload)
        assert body["status"] == "FAILED"
        assert body["statusDetails"]["reason"]


@given(st.sampled_from(["downloading", "idle"]), block_payloads())
def test_fuzz_agent_stream_data_blocks_never_raise(phase: str, payload: bytes) -> None:
    state = downloading() if phase == "downloading" else booted()
    new, commands = _handle(state, MessageReceived(DATA, payload))
    if phase == "downloading" and new.download is None:
        assert any(isinstance(x, c.Publish) and json.loads(x.payload)["status"] == "FAILED" for x in commands)


@given(STATES, st.sampled_from([REVOCATIONS_TOPIC, *OTHER_TOPICS]) | HOSTILE_TEXT,
       st.binary(max_size=300) | JSON_VALUES.map(lambda v: json.dumps(v).encode()))
def test_fuzz_agent_any_other_message_never_raises(phase_state: tuple[str, State], topic: str,
                                                  payload: bytes) -> None:
    _handle(phase_state[1], MessageReceived(topic, payload))


_OFFER = {"fileid": 7, "filesize": 300, "sha256": "11" * 32, "sourceVersion": "1.0.0",
          "sourceSha256": "22" * 32, "update_data_url": "https://example.invalid/p"}


@st.composite
def delta_documents(draw: st.DrawFn) -> Any:
    """A valid document whose file entry carries a hostile `overair:delta` offer (a valid
    offer for the running version with one field replaced, or any JSON value)."""
    doc = ota_doc()
    if draw(st.booleans()):
        offer = dict(_OFFER)
        offer[draw(st.sampled_from(sorted(_OFFER)))] = draw(JSON_VALUES | HOSTILE_TEXT)
        doc["afr_ota"]["files"][0]["overair:delta"] = offer
    else:
        doc["afr_ota"]["files"][0]["overair:delta"] = draw(JSON_VALUES)
    if draw(st.booleans()):
        doc["afr_ota"]["protocols"] = ["HTTP"]
        doc["afr_ota"]["files"][0]["update_data_url"] = "https://example.invalid/f"
    return doc


@given(delta_documents(), st.sampled_from(JOB_TOPICS))
def test_fuzz_agent_hostile_delta_offer_starts_a_download_or_fails(document: Any, topic: str) -> None:
    """An agent that takes deltas, offered a hostile patch: it downloads the patch or the
    image; never an exception."""
    state = booted(settings=replace(SETTINGS, accept_delta=True))
    new, _ = _handle(state, job_message("job-1", doc=document, topic=topic))
    assert new.phase is Phase.DOWNLOADING
    assert new.download is not None
    if new.download.delta is not None:  # only a patch no larger than the image it rebuilds
        assert new.download.image is not None
        assert new.download.file.size <= new.download.image.size
