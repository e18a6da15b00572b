"""Delta updates through the real server and real agents (issue 18, part 2).

A first OTA update installs 1.1.0 (full image): the server records what each thing runs
and where that image came from. A second update to 1.2.0 (a small change of 1.1.0) with
`additionalParameters` `overair:delta` = "true" makes a patch 1.1.0 -> 1.2.0, offers it
to the overair agents that run 1.1.0, and they download the patch (far fewer blocks than
the image), rebuild 1.2.0 into the inactive slot, verify its signature and activate it.
A thing with the FreeRTOS profile receives exactly the document it would without deltas.
Threat ids: N2 (a patch whose result is not the signed image is refused before activation
and the agent falls back to the full image).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from overair.core import delta as patches
from overair.core.delta_offer import OFFER_KEY
from overair.core.image import build_image
from overair.core.versions import Version
from overair.server.jobs.deliveries import HTTP_FILES
from overair.server.ota import delta
from overair.server.storage.schema import Job
from overair.sim.firmware import make_firmware
from overair.sim.fleet import Fleet
from tests.e2e.ota_helpers import create_ota, wait_for
from tests.server_harness import RunningServer

V1 = make_firmware(Version(1, 1, 0), 120_000, seed="delta")
# 1.2.0: the same payload with a small change in the middle (a maintenance release).
V2 = build_image(Version(1, 2, 0), V1[16:60_000] + b"overair build 2" + V1[60_015:])


def _statuses(srv: RunningServer, job_id: str, names: list[str]) -> set[str]:
    iot = srv.client("iot")
    return {iot.describe_job_execution(jobId=job_id, thingName=n)["execution"]["status"] for n in names}


def _install_v1(srv: RunningServer, fleet: Fleet, names: list[str], tag: str,
                protocols: tuple[str, ...]) -> list[str]:
    iot = srv.client("iot")
    targets = [iot.describe_thing(thingName=n)["thingArn"] for n in names]
    info = create_ota(srv, f"{tag}-v1", targets, V1, protocols=protocols)
    assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info.get("errorInfo")
    assert fleet.wait(lambda s: all(x.version == "1.1.0" and not x.trial for x in s.values()), 60), \
        fleet.snapshots()
    assert wait_for(lambda: _statuses(srv, f"AFR_OTA-{tag}-v1", names) == {"SUCCEEDED"}, 30, "v1 SUCCEEDED")
    return targets


def _delivered(srv: RunningServer, job_id: str, thing: str) -> dict[str, Any]:
    """The job document as the server renders it for `thing` at delivery."""
    with srv.server.db.reading() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return dict(srv.server.jobs.render_document(job, thing))


@pytest.mark.parametrize("protocols", [("MQTT",), ("HTTP",)])
def test_agents_apply_a_delta_through_the_real_server(srv: RunningServer, tmp_path: Path,
                                                      protocols: tuple[str, ...]) -> None:
    tag = f"delta-{protocols[0].lower()}"
    factory = tmp_path / "factory.bin"
    factory.write_bytes(make_firmware(Version(1, 0, 0), 4096, seed="factory"))
    names = [f"{tag}-{i}" for i in range(2)]
    bundles = [srv.provision(n, tmp_path / n, factory_image=factory) for n in names]
    totals: dict[tuple[str, str], int] = {}

    def progress(thing: str, job_id: str, _received: int, total: int) -> None:
        totals[(thing, job_id)] = total

    with Fleet(bundles, progress=progress) as fleet:
        assert fleet.wait(lambda s: all(x.connected for x in s.values()), 30)
        targets = _install_v1(srv, fleet, names, tag, protocols)
        info = create_ota(srv, f"{tag}-v2", targets, V2, protocols=protocols,
                          additionalParameters={"overair:delta": "true"})
        assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info.get("errorInfo")
        job_id = f"AFR_OTA-{tag}-v2"
        offer = _delivered(srv, job_id, names[0])["afr_ota"]["files"][0][OFFER_KEY]
        assert offer["sourceVersion"] == "1.1.0"
        assert offer["sourceSha256"] == hashlib.sha256(V1).hexdigest()
        assert offer["filesize"] < len(V2) // 20
        assert ("update_data_url" in offer) == (protocols == ("HTTP",))
        assert fleet.wait(lambda s: all(x.version == "1.2.0" and not x.trial for x in s.values()), 60), \
            fleet.snapshots()
        assert wait_for(lambda: _statuses(srv, job_id, names) == {"SUCCEEDED"}, 30, "v2 SUCCEEDED")
    # The agents downloaded the patch's blocks, not the image's.
    patch_blocks = -(-offer["filesize"] // 4096)
    assert {totals[(n, job_id)] for n in names} == {patch_blocks}
    assert all(totals[(n, f"AFR_OTA-{tag}-v1")] == -(-len(V1) // 4096) for n in names)


def test_freertos_devices_and_other_versions_get_todays_document(srv: RunningServer, tmp_path: Path) -> None:
    """Only an overair agent running a patch's source is offered the patch."""
    tag = "delta-profiles"
    factory = tmp_path / "factory.bin"
    factory.write_bytes(make_firmware(Version(1, 0, 0), 4096, seed="factory"))
    names = [f"{tag}-{i}" for i in range(2)]
    bundles = [srv.provision(n, tmp_path / n, factory_image=factory) for n in names]
    iot = srv.client("iot")
    with Fleet(bundles) as fleet:
        assert fleet.wait(lambda s: all(x.connected for x in s.values()), 30)
        targets = _install_v1(srv, fleet, names, tag, ("MQTT",))
    # The second thing becomes a FreeRTOS device (what a thing without the agent attribute is).
    iot.update_thing(thingName=names[1], attributePayload={
        "attributes": {"overair:deviceProfile": "freertos"}, "merge": True})
    info = create_ota(srv, f"{tag}-v2", targets, V2, additionalParameters={"overair:delta": "true"})
    assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info.get("errorInfo")
    job_id = f"AFR_OTA-{tag}-v2"
    stored = iot.get_job_document(jobId=job_id)["document"]
    freertos = _delivered(srv, job_id, names[1])
    assert freertos == json.loads(stored)  # exactly AWS's document, no overair key anywhere
    assert OFFER_KEY not in json.dumps(freertos)
    agent = _delivered(srv, job_id, names[0])
    assert OFFER_KEY in agent["afr_ota"]["files"][0]
    # A patch about as large as the image (an unrelated build) is not offered.
    unrelated = make_firmware(Version(1, 2, 1), 120_000, seed="unrelated")
    info = create_ota(srv, f"{tag}-unrelated", targets[:1], unrelated,
                      additionalParameters={"overair:delta": "true"})
    assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info.get("errorInfo")
    assert OFFER_KEY not in json.dumps(_delivered(srv, f"AFR_OTA-{tag}-unrelated", names[0]))
    # Without the switch no patch is made: the agent gets the full image only.
    info = create_ota(srv, f"{tag}-v3", targets[:1], build_image(Version(1, 3, 0), V2[16:]))
    assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info.get("errorInfo")
    assert OFFER_KEY not in json.dumps(_delivered(srv, f"AFR_OTA-{tag}-v3", names[0]))


# --- adversarial (threat N2; the patch is hostile input) -------------------------------------

EVIL = build_image(Version(1, 2, 0), V1[16:60_000] + b"overair evil  2" + V1[60_015:])  # never signed


def _evil_patch(_offer: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """A well-formed patch from the right source that rebuilds another (unsigned) image."""
    return patches.create_patch(V1, EVIL), {}


OTHER = build_image(Version(1, 1, 0), V1[16:30_000] + b"another build" + V1[30_013:])


def _wrong_source(_offer: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """A patch to the signed 1.2.0 from another 1.1.0 build than the device runs."""
    return patches.create_patch(OTHER, V2), {"sourceSha256": hashlib.sha256(OTHER).hexdigest()}


def _garbage(_offer: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """A patch whose header claims a huge output (tests/fuzz/test_fuzz_delta.py: any bytes)."""
    good = patches.create_patch(V1, V2)
    return good[:1] + b"\xbf\xff\xff\xff\x7f" + good[6:], {}


def _swap_patch(srv: RunningServer, job_id: str, tamper: Any) -> None:
    """What a compromised store or server process could do: the job's patch replaced (in
    its HTTPS files, or in its stream through UpdateStream)."""
    with srv.server.db.reading() as s:
        job = s.get(Job, job_id)
        assert job is not None
        config = dict(job.config)
        stream = job.document["afr_ota"].get("streamname")
    entry = dict(config[delta.JOB_DELTAS][0])
    data, changes = tamper(entry)
    if data:
        key = entry["key"] + ".tampered"
        stored = srv.server.objects.put_object(entry["bucket"], key, data)
        entry.update(key=key, version=stored.version_id, size=len(data),
                     sha256=hashlib.sha256(data).hexdigest())
        if HTTP_FILES in config:
            config[HTTP_FILES] = [*config[HTTP_FILES], {"fileId": entry["fileId"], "bucket": entry["bucket"],
                                                        "key": key, "version": stored.version_id}]
        if stream:
            iot = srv.client("iot")
            files = [f for f in iot.describe_stream(streamId=stream)["streamInfo"]["files"]
                     if f["fileId"] != entry["fileId"]]
            iot.update_stream(streamId=stream, files=[*files, {"fileId": entry["fileId"], "s3Location": {
                "bucket": entry["bucket"], "key": key, "version": stored.version_id}}])
    entry.update(changes)
    config[delta.JOB_DELTAS] = [entry]
    with srv.server.db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        job.config = config


@pytest.mark.parametrize("protocol", ["HTTP", "MQTT"])
@pytest.mark.parametrize(("tamper", "why"), [
    (_evil_patch, "BadSignature"),  # the result is checked as a full image: its signature fails
    (_wrong_source, "the running image is not the patch's source"),  # never applied
    (_garbage, "patch makes"),  # refused from its header, nothing written
], ids=["rebuilds-another-image", "wrong-source", "garbage"])
def test_n2_a_bad_patch_is_refused_before_activation_and_the_agent_falls_back(
        srv: RunningServer, tmp_path: Path, tamper: Any, why: str, protocol: str,
        caplog: pytest.LogCaptureFixture) -> None:
    tag = f"delta-n2-{protocol.lower()}-{tamper.__name__.strip('_').replace('_', '-')}"
    factory = tmp_path / "factory.bin"
    factory.write_bytes(make_firmware(Version(1, 0, 0), 4096, seed="factory"))
    names = [f"{tag}-0"]
    bundles = [srv.provision(n, tmp_path / n, factory_image=factory) for n in names]
    with Fleet(bundles) as fleet:
        assert fleet.wait(lambda s: all(x.connected for x in s.values()), 30)
        targets = _install_v1(srv, fleet, names, tag, (protocol,))
    info = create_ota(srv, f"{tag}-v2", targets, V2, protocols=(protocol,),
                      additionalParameters={"overair:delta": "true"})
    assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info.get("errorInfo")
    job_id = f"AFR_OTA-{tag}-v2"
    _swap_patch(srv, job_id, tamper)
    assert OFFER_KEY in _delivered(srv, job_id, names[0])["afr_ota"]["files"][0]
    totals: list[int] = []
    with Fleet(bundles, progress=lambda _t, job, _r, total: totals.append(total) if job == job_id else None) \
            as fleet:
        # Never activated: the agent ends on the signed 1.2.0, through the full image.
        assert fleet.wait(lambda s: all(x.version == "1.2.0" and not x.trial for x in s.values()), 60), \
            fleet.snapshots()
        assert wait_for(lambda: _statuses(srv, job_id, names) == {"SUCCEEDED"}, 30, "v2 SUCCEEDED")
    fell_back = [r.getMessage() for r in caplog.records if "delta update failed" in r.getMessage()]
    assert len(fell_back) == 1, fell_back
    assert why in fell_back[0]
    assert totals[-1] == -(-len(V2) // 4096)  # the fallback downloaded the whole image
    assert min(totals) < totals[-1]  # after the patch's blocks
