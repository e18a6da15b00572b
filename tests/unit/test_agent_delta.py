"""The agent state machine with a delta offer (pure: no I/O): when it downloads the patch
instead of the image, and how it falls back to the image when the patch fails (N2)."""

from __future__ import annotations

from dataclasses import replace

from overair.agent.machine import commands as c
from overair.agent.machine.events import BlockStored, Booted, Connected, Tick, VerifyResult
from overair.agent.machine.state import Phase, Settings, State
from overair.agent.progress import StagedProgress
from overair.agent.progress import binding as staging_binding
from overair.core import bitmap
from overair.core.delta_offer import OFFER_KEY, DeltaOffer
from overair.core.versions import Version
from tests.unit.test_agent_machine import (
    BS,
    SETTINGS,
    SIZE,
    STREAM,
    V1,
    V2,
    block,
    booted,
    job,
    of,
    ota_doc,
    requests,
    run,
    statuses,
)

DELTA = replace(SETTINGS, accept_delta=True)
PATCH = 2 * BS - 7  # two blocks


def offer(source: Version = V1, size: int = PATCH) -> dict[str, object]:
    return DeltaOffer(7, size, b"\x11" * 32, source, b"\x22" * 32).to_json_obj()


def started(settings: Settings = DELTA, source: Version = V1,
            size: int = PATCH) -> tuple[State, list[c.Command]]:
    doc = ota_doc()
    doc["afr_ota"]["files"][0][OFFER_KEY] = offer(source, size)
    return run(booted(settings=settings), [job(doc=doc)])


def test_an_agent_running_the_source_downloads_the_patch() -> None:
    state, commands = started()
    assert state.download is not None
    file = state.download.file
    assert (file.file_id, file.size, state.download.total_blocks) == (7, PATCH, 2)
    assert state.download.image is not None
    assert state.download.image.size == SIZE
    assert of(commands, c.CreateStaging)[0].size == PATCH
    assert {r["f"] for r in requests(commands)} == {7}


def test_the_patch_is_verified_as_the_image_it_rebuilds() -> None:
    state, _ = started()
    for i in range(2):
        state, commands = run(state, [block(i, size=BS if i == 0 else PATCH - BS, file_id=7)])
        state, commands = run(state, [BlockStored(i)])
    (verify,) = of(commands, c.VerifyImage)
    assert verify.delta is not None
    assert verify.image is not None
    assert (verify.file.size, verify.image.size) == (PATCH, SIZE)


def test_no_patch_for_another_source_a_larger_patch_or_an_agent_that_does_not_take_them() -> None:
    for state, commands in (started(source=Version(0, 9, 0)), started(size=SIZE + 1), started(SETTINGS)):
        assert state.download is not None
        assert state.download.delta is None
        assert state.download.file.size == SIZE
        assert {r["f"] for r in requests(commands)} == {0}


def test_n2_a_failed_patch_falls_back_to_the_full_image_of_the_same_job() -> None:
    state, _ = started()
    for i in range(2):
        state, _ = run(state, [block(i, size=BS if i == 0 else PATCH - BS, file_id=7)])
        state, _ = run(state, [BlockStored(i)])
    assert state.phase is Phase.VERIFYING
    state, commands = run(state, [VerifyResult(False, check="BadSignature", message="no")])
    assert state.phase is Phase.DOWNLOADING
    assert state.download is not None
    assert state.download.delta is None
    assert state.download.file.size == SIZE
    assert of(commands, c.CreateStaging)[0].size == SIZE
    assert {r["f"] for r in requests(commands)} == {0}
    assert not statuses(commands)  # nothing reported: the job goes on
    # The full image then fails like any image: no second fallback.
    for i in range(10):
        state, _ = run(state, [block(i)])
        state, _ = run(state, [BlockStored(i)])
    state, commands = run(state, [VerifyResult(False, check="BadSignature", message="no")])
    assert statuses(commands)[0][0] == "FAILED"
    # And a good one is activated.
    state, _ = started()
    for i in range(2):
        state, _ = run(state, [block(i, size=BS if i == 0 else PATCH - BS, file_id=7)])
        state, _ = run(state, [BlockStored(i)])
    state, commands = run(state, [VerifyResult(True, V2)])
    assert of(commands, c.ActivateAndReboot)


def test_a_patch_that_cannot_be_downloaded_falls_back_to_the_image() -> None:
    """The stream refuses the patch's file (or its requests go unanswered): the agent does
    not fail the job, it downloads the image."""
    state, _ = started()
    now = 0.0
    for _ in range(200):
        now += 11.0
        state, commands = run(state, [Tick()], now)
        if state.download is not None and state.download.delta is None:
            break
    assert state.download is not None
    assert state.download.delta is None
    assert state.download.file.size == SIZE
    assert of(commands, c.CreateStaging)[0].size == SIZE
    assert not statuses(commands)


def test_r2_an_interrupted_patch_download_resumes_where_it_stopped() -> None:
    """The patch is downloaded like any file: its bitmap, kept with the partial file,
    makes a reboot ask only for the blocks still missing."""
    first, _ = started()
    assert first.download is not None
    key = first.download.binding
    assert key == staging_binding("job-1", STREAM, 7, PATCH, BS, first.download.file.signature)
    kept = StagedProgress(key, PATCH, BS, bitmap.make_bitmap([1], 0, 2))  # block 0 held
    state, _ = run(State(DELTA), [Booted(V1, "a", False, staged=kept), Connected()])
    doc = ota_doc()
    doc["afr_ota"]["files"][0][OFFER_KEY] = offer()
    state, commands = run(state, [job(doc=doc)])
    assert of(commands, c.ResumeStaging) == [c.ResumeStaging(kept)]
    assert state.download is not None
    assert state.download.remaining == 1
    assert state.download.delta is not None
