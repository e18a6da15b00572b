"""F1 (freeze: a device held on old instructions) and F2 (a job injected by a compromised
broker or server process): the deployment metadata decisions of agent/trust.py, through
the pure state machine. Each test names the check it proves; each fails when that check
is removed from `admit_deployment` / `admit_deployed_image` / `deployment_expired`.
Through a real server, broker and agent: tests/e2e/test_deployment_metadata.py."""

from __future__ import annotations

import base64
import copy
import hashlib
from dataclasses import replace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from overair.agent.machine import commands as c
from overair.agent.machine.events import Tick, VerifyResult
from overair.agent.machine.state import Journal, Phase, Settings, State
from overair.core import deployment
from overair.core.deployment import DeployedFile, Deployment
from tests.unit.test_agent_machine import (
    SETTINGS,
    SIZE,
    STREAM,
    THING,
    V2,
    booted,
    deliver,
    job,
    of,
    ota_doc,
    run,
    statuses,
)

KEY = ec.generate_private_key(ec.SECP256R1())
NOW = 1_000_000.0
DIGEST = hashlib.sha256(b"the image").digest()
REQUIRED = replace(SETTINGS, deployment_keys=(KEY.public_key(),), require_deployment=True,
                   deployment_refresh_margin=60.0)


def stated(**changes: Any) -> Deployment:
    base = Deployment(job_id="job-1", thing=THING,
                      files=(DeployedFile("/fw", SIZE, DIGEST, str(V2), 0),),
                      stream=STREAM, url_path="", expires=int(NOW) + 600, sequence=5)
    return replace(base, **changes)


def signed_doc(statement: Deployment | None = None, key: ec.EllipticCurvePrivateKey = KEY,
               **file_extra: Any) -> dict[str, Any]:
    doc = ota_doc(**file_extra)
    doc["overair"]["deployment"] = deployment.sign(statement or stated(), key)
    return doc


def offered(doc: dict[str, Any], settings: Settings = REQUIRED, journal: Journal | None = None,
            job_id: str = "job-1") -> tuple[State, list[c.Command]]:
    return run(booted(settings=settings, journal=journal, now=NOW), [job(job_id, doc)], NOW)


def refused_for(commands: list[c.Command], check: str) -> None:
    (status, details, _), = statuses(commands)
    assert status == "FAILED"
    assert details["check"] == check
    assert not of(commands, c.CreateStaging)  # nothing was downloaded


def test_f2_signed_metadata_for_this_thing_and_files_is_admitted() -> None:
    state, commands = offered(signed_doc())
    assert state.phase is Phase.DOWNLOADING
    assert state.journal.deployment_sequence == 5
    assert of(commands, c.CreateStaging)


def test_f2_job_forged_at_the_broker_without_metadata_is_refused() -> None:
    _, commands = offered(ota_doc())
    refused_for(commands, "MissingDeploymentMetadata")


def test_f2_without_the_requirement_a_job_without_metadata_still_runs() -> None:
    """Hand-made bundles keep working; `overair thing create` bundles require it."""
    state, _ = offered(ota_doc(), replace(REQUIRED, require_deployment=False))
    assert state.phase is Phase.DOWNLOADING


def test_f2_metadata_signed_by_an_unknown_key_is_refused() -> None:
    _, commands = offered(signed_doc(key=ec.generate_private_key(ec.SECP256R1())))
    refused_for(commands, "UnknownDeploymentKey")


def test_f2_metadata_whose_signature_does_not_match_is_refused() -> None:
    doc = signed_doc()
    forged = deployment.encode_payload(stated(thing=THING, sequence=99))
    doc["overair"]["deployment"]["payload"] = base64.b64encode(forged).decode()
    _, commands = offered(doc)
    refused_for(commands, "BadDeploymentSignature")


def test_f2_metadata_for_another_thing_is_refused() -> None:
    _, commands = offered(signed_doc(stated(thing="another-device")))
    refused_for(commands, "DeploymentForAnotherThing")


def test_f2_metadata_of_another_job_is_refused() -> None:
    _, commands = offered(signed_doc(stated(job_id="job-other")))
    refused_for(commands, "DeploymentForAnotherJob")


def test_f2_mixed_files_a_document_naming_other_files_is_refused() -> None:
    _, commands = offered(signed_doc(stated(files=(DeployedFile("/fw", SIZE + 1, DIGEST, str(V2), 0),))))
    refused_for(commands, "DeploymentFilesMismatch")


def test_f2_mixed_files_another_stream_is_refused() -> None:
    _, commands = offered(signed_doc(stated(stream="stream-of-another-release")))
    refused_for(commands, "DeploymentSourceMismatch")


def test_f2_mixed_files_a_downloaded_file_other_than_the_described_one_is_refused() -> None:
    state, _ = offered(signed_doc())
    state, _ = deliver(state, list(range(10)), NOW)
    assert state.phase is Phase.VERIFYING
    other = hashlib.sha256(b"another release's image").digest()
    state, commands = run(state, [VerifyResult(True, V2, sha256=other)], NOW)
    (status, details, _), = statuses(commands)
    assert (status, details["check"]) == ("FAILED", "DeploymentFilesMismatch")
    assert not of(commands, c.ActivateAndReboot)


def test_f2_the_described_file_is_activated() -> None:
    state, _ = offered(signed_doc())
    state, _ = deliver(state, list(range(10)), NOW)
    _, commands = run(state, [VerifyResult(True, V2, sha256=DIGEST)], NOW)
    assert of(commands, c.ActivateAndReboot)


def test_f1_expired_metadata_is_refused() -> None:
    _, commands = offered(signed_doc(stated(expires=int(NOW) - 1)))
    refused_for(commands, "DeploymentMetadataExpired")


def test_f1_replayed_older_metadata_is_refused() -> None:
    _, commands = offered(signed_doc(stated(sequence=4)), journal=Journal(deployment_sequence=5))
    refused_for(commands, "DeploymentMetadataReplayed")


def test_f1_metadata_expiring_mid_download_stops_the_job() -> None:
    state, _ = offered(signed_doc(stated(expires=int(NOW) + 100)))
    state, _ = deliver(state, [0, 1], NOW)
    # Before expiry the agent asks for the job again, once, to get fresh metadata ...
    state, commands = run(state, [Tick()], NOW + 45)
    assert [p.topic for p in of(commands, c.Publish)] == [f"$aws/things/{THING}/jobs/$next/get"]
    state, commands = run(state, [Tick()], NOW + 46)
    assert not [p for p in of(commands, c.Publish) if p.topic.endswith("$next/get")]
    # ... and, with none arriving, stops acting on the expired instructions.
    state, commands = run(state, [Tick()], NOW + 100)
    (status, details, _), = statuses(commands)
    assert (status, details["check"]) == ("FAILED", "DeploymentMetadataExpired")
    assert of(commands, c.AbortStaging)
    assert state.phase is Phase.IDLE


def test_f1_metadata_renewed_by_a_fresh_delivery_keeps_the_download_going() -> None:
    state, _ = offered(signed_doc(stated(expires=int(NOW) + 100)))
    state, _ = deliver(state, [0, 1], NOW)
    renewed = signed_doc(stated(expires=int(NOW) + 700, sequence=6))
    state, _ = run(state, [job("job-1", renewed)], NOW + 50)
    state, commands = run(state, [Tick()], NOW + 150)
    assert not statuses(commands)
    assert state.phase is Phase.DOWNLOADING
    assert state.journal.deployment_sequence == 6


def test_f1_a_renewal_that_does_not_verify_does_not_extend_the_deadline() -> None:
    state, _ = offered(signed_doc(stated(expires=int(NOW) + 100)))
    rogue = ec.generate_private_key(ec.SECP256R1())
    forged = signed_doc(stated(expires=int(NOW) + 700, sequence=6), key=rogue)
    state, _ = run(state, [job("job-1", forged)], NOW + 50)
    _, commands = run(state, [Tick()], NOW + 100)
    assert statuses(commands)[0][1]["check"] == "DeploymentMetadataExpired"


@pytest.mark.parametrize("envelope", [None, 5, "x", [], {"payloadType": "x"},
                                      {"payload": "!!", "payloadType": deployment.PAYLOAD_TYPE,
                                       "signatures": []}])
def test_f2_malformed_metadata_is_refused_never_raised(envelope: Any) -> None:
    doc = copy.deepcopy(ota_doc())
    doc["overair"]["deployment"] = envelope
    _, commands = offered(doc)
    assert statuses(commands)[0][0] == "FAILED"
