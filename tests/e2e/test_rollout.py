"""Signed updates end to end: the real server (API, device service, its own Mosquitto
with mutual TLS), real agents (paho, LinuxSlots, in-process reboots) and boto3.

One server serves the whole module; each test provisions its own things so that tests
do not see each other's jobs. Threat ids in test names: N2 mis-signed update.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from overair.core.jobdoc import OtaFile, OtaJobDocument
from overair.core.versions import Version
from overair.server.bootstrap import DEV_PROFILE
from overair.sim.firmware import make_firmware
from overair.sim.fleet import Fleet
from tests.e2e.ota_helpers import create_ota, wait_for
from tests.pki_helpers import Issued, make_ca, make_signer, sign_file
from tests.postgres_harness import PostgresCluster
from tests.server_harness import RunningServer, running_server

V1 = Version(1, 0, 0)
V2 = Version(1, 1, 0)
SIZE = 48 * 1024 + 123  # 12 blocks of 4 KiB, the last one short
BUCKET = "firmware"
TERMINAL = {"SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT", "CANCELED", "REMOVED"}


@pytest.fixture(scope="module")
def test_signer() -> tuple[Issued, Issued]:
    """A code-signing root and signer of the test's own, which agents may be told to trust."""
    root = make_ca("e2e code-signing root")
    return root, make_signer(root, "e2e firmware signer")


def _bundles(
    srv: RunningServer, root: Path, names: list[str], *, group: str | None = None, extra_roots: bytes = b"",
    require_deployment_metadata: bool = True,
) -> list[Path]:
    """Agent bundles; jobs made by CreateJob (`_hand_made_job`) carry no signed deployment
    metadata, so their devices must not require it (docs/security.md)."""
    factory = root / "factory.bin"
    factory.write_bytes(make_firmware(V1, SIZE, seed="factory"))
    roots = srv.settings.paths.code_signing_root.read_bytes() + extra_roots
    return [
        srv.provision(name, root / name, group=group, factory_image=factory, code_signing_roots_pem=roots,
                      require_deployment_metadata=require_deployment_metadata)
        for name in names
    ]


def _upload(srv: RunningServer, key: str, data: bytes) -> str:
    return str(srv.client("s3").put_object(Bucket=BUCKET, Key=key, Body=data)["VersionId"])


def _executions(iot: Any, job_id: str) -> dict[str, dict[str, Any]]:
    summaries = iot.list_job_executions_for_job(jobId=job_id)["executionSummaries"]
    return {s["thingArn"].rpartition("/")[2]: s["jobExecutionSummary"] for s in summaries}


def _finished(iot: Any, job_id: str, things: list[str]) -> Callable[[], dict[str, str] | None]:
    def check() -> dict[str, str] | None:
        statuses = {t: e["status"] for t, e in _executions(iot, job_id).items()}
        done = set(things) <= statuses.keys() and all(statuses[t] in TERMINAL for t in things)
        return statuses if done else None

    return check


def _signed_rollout(srv: RunningServer, root: Path, prefix: str, devices: int) -> None:
    """Create `devices` agents in a group, roll a signed 1.1.0 out to it, check the outcome."""
    iot = srv.client("iot")
    names = [f"{prefix}-{i}" for i in range(devices)]
    group = iot.create_thing_group(thingGroupName=prefix)
    bundles = _bundles(srv, root, names, group=prefix)
    version_id = _upload(srv, f"app/{prefix}-1.1.0.bin", make_firmware(V2, SIZE, seed=prefix))
    with Fleet(bundles) as fleet:
        assert fleet.wait(lambda snaps: all(s.connected for s in snaps.values()), timeout=30)
        iot.create_ota_update(
            otaUpdateId=prefix,
            targets=[group["thingGroupArn"]],
            protocols=["MQTT"],
            roleArn=f"arn:aws:iam::{srv.settings.account_id}:role/overair-ota",
            files=[
                {
                    "fileName": "/firmware/app.bin",
                    "fileVersion": "1.1.0",
                    "fileLocation": {
                        "s3Location": {
                            "bucket": BUCKET,
                            "key": f"app/{prefix}-1.1.0.bin",
                            "version": version_id,
                        }
                    },
                    "codeSigning": {
                        "startSigningJobParameter": {
                            "signingProfileName": DEV_PROFILE,
                            "destination": {"s3Destination": {"bucket": BUCKET, "prefix": "signed/"}},
                        }
                    },
                }
            ],
        )
        info = wait_for(
            lambda: (
                (i := iot.get_ota_update(otaUpdateId=prefix)["otaUpdateInfo"])["otaUpdateStatus"]
                == "CREATE_COMPLETE"
                and i
            ),
            what="CREATE_COMPLETE",
        )
        job_id = info["awsIotJobId"]
        assert job_id == f"AFR_OTA-{prefix}"
        statuses = wait_for(_finished(iot, job_id, names), what="every execution to finish")
        assert statuses == dict.fromkeys(names, "SUCCEEDED")
        assert fleet.wait(
            lambda snaps: all(s.version == "1.1.0" and not s.trial for s in snaps.values()), timeout=10
        )
        snaps = fleet.snapshots()
    for name in names:
        assert snaps[name].slot == "b"  # the update went to the other slot
        execution = iot.describe_job_execution(jobId=job_id, thingName=name)["execution"]
        assert execution["statusDetails"]["detailsMap"]["reason"] == "accepted v1.1.0"
        assert execution["versionNumber"] > 1
    counts = iot.describe_job(jobId=job_id)["job"]["jobProcessDetails"]
    assert counts["numberOfSucceededThings"] == devices
    assert counts["numberOfQueuedThings"] == counts["numberOfInProgressThings"] == 0


def test_signed_rollout_to_a_thing_group_reaches_succeeded_on_every_agent(
    srv: RunningServer, tmp_path: Path
) -> None:
    _signed_rollout(srv, tmp_path, "e2e-ok", 3)


def test_signed_rollout_with_postgresql_metadata(tmp_path: Path, postgres: PostgresCluster) -> None:
    with running_server(tmp_path / "server", database_url=postgres.new_database()) as pg_srv:
        s3 = pg_srv.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        _signed_rollout(pg_srv, tmp_path, "e2e-pg", 3)


def _hand_made_job(
    srv: RunningServer, name: str, image: bytes, signature: bytes, signer: Issued, tag: str | None = None
) -> str:
    """An OTA job built with the plain Jobs and Streams APIs, so the server does not check
    the signature: only the device stands between a bad image and running it."""
    iot = srv.client("iot")
    tag = tag or name
    version_id = _upload(srv, f"bad/{tag}.bin", image)
    stream_id = f"stream-{tag}"
    iot.create_stream(
        streamId=stream_id,
        roleArn=f"arn:aws:iam::{srv.settings.account_id}:role/overair-ota",
        files=[
            {"fileId": 0, "s3Location": {"bucket": BUCKET, "key": f"bad/{tag}.bin", "version": version_id}}
        ],
    )
    document = OtaJobDocument(
        protocols=("MQTT",),
        stream_name=stream_id,
        files=(
            OtaFile(
                filepath="/firmware/app.bin",
                filesize=len(image),
                fileid=0,
                certfile="/certs/signer.pem",
                signature=signature,
            ),
        ),
        signer_chain=(signer.cert_der,),
    ).to_json_obj()
    job_id = f"job-{tag}"
    iot.create_job(
        jobId=job_id,
        targets=[f"arn:aws:iot:{srv.clients.region}:{srv.settings.account_id}:thing/{name}"],
        document=json.dumps(document),
    )
    return job_id


@pytest.mark.parametrize("case", ["tampered-image", "untrusted-signer"])
def test_n2_mis_signed_image_is_refused_by_the_agent_and_the_job_fails_with_a_reason(
    srv: RunningServer, tmp_path: Path, test_signer: tuple[Issued, Issued], case: str
) -> None:
    root, signer = test_signer
    name = f"e2e-n2-{case}"
    (bundle,) = _bundles(srv, tmp_path, [name], extra_roots=root.cert_pem, require_deployment_metadata=False)
    genuine = make_firmware(V2, SIZE, seed=case)
    if case == "tampered-image":
        signature = sign_file(signer, genuine)
        delivered = bytearray(genuine)
        delivered[SIZE // 2] ^= 0x01  # one bit flipped after signing
        used_signer = signer
    else:
        rogue = make_signer(make_ca("rogue root"), "rogue signer")  # not a root the device trusts
        delivered, signature, used_signer = bytearray(genuine), sign_file(rogue, genuine), rogue
    iot = srv.client("iot")
    with Fleet([bundle]) as fleet:
        assert fleet.wait(lambda snaps: all(s.connected for s in snaps.values()), timeout=30)
        job_id = _hand_made_job(srv, name, bytes(delivered), signature, used_signer)
        statuses = wait_for(_finished(iot, job_id, [name]), what="the execution to finish")
        snap = fleet.snapshots()[name]
    assert statuses[name] == "FAILED"
    details = iot.describe_job_execution(jobId=job_id, thingName=name)["execution"]["statusDetails"]
    reason = details["detailsMap"]
    assert reason["reason"].startswith("0x")  # FreeRTOS-style "<result>: <detail>" codes
    assert reason["detail"]  # and a sentence for the operator
    assert reason["check"] == ("BadSignature" if case == "tampered-image" else "UntrustedChain")
    assert snap.version == "1.0.0"
    assert snap.slot == "a"


def test_o2_revoking_a_code_signing_certificate_reaches_running_agents(
    srv: RunningServer, tmp_path: Path, test_signer: tuple[Issued, Issued]
) -> None:
    """Revoke through the API while the agent runs: the signed list reaches it and an
    image signed with the revoked key is refused, while another signer still works."""
    root, _ = test_signer
    roots = srv.settings.paths.code_signing_root
    roots.write_bytes(roots.read_bytes() + root.cert_pem)  # the operator trusts its root
    revoked, kept = make_signer(root, "signer to revoke"), make_signer(root, "signer kept")
    acm = srv.client("acm")
    revoked_arn = acm.import_certificate(Certificate=revoked.cert_pem, PrivateKey=revoked.key_pem)[
        "CertificateArn"
    ]
    name = "e2e-o2-revoked"
    (bundle,) = _bundles(srv, tmp_path, [name], extra_roots=root.cert_pem, require_deployment_metadata=False)
    iot = srv.client("iot")
    with Fleet([bundle]) as fleet:
        assert fleet.wait(lambda snaps: all(s.connected for s in snaps.values()), timeout=30)
        held = fleet.snapshots()[name].revocation_sequence or 0
        srv.client("overair").revoke_code_signing_certificate(CertificateArn=revoked_arn, Reason="leaked")
        assert fleet.wait(lambda snaps: (snaps[name].revocation_sequence or 0) > held, timeout=15)

        image = make_firmware(V2, SIZE, seed="o2-revoked")
        job_id = _hand_made_job(srv, name, image, sign_file(revoked, image), revoked, "o2-revoked")
        assert wait_for(_finished(iot, job_id, [name]))[name] == "FAILED"
        reason = iot.describe_job_execution(jobId=job_id, thingName=name)["execution"]["statusDetails"]
        assert reason["detailsMap"]["check"] == "CertificateRevoked"
        assert fleet.snapshots()[name].version == "1.0.0"

        job_id = _hand_made_job(srv, name, image, sign_file(kept, image), kept, "o2-kept")
        assert wait_for(_finished(iot, job_id, [name]))[name] == "SUCCEEDED"  # positive control


def test_signed_rollout_to_a_simulated_mcu_with_encrypted_flash(srv: RunningServer, tmp_path: Path) -> None:
    """The same update on the simulated MCU platform: encrypted flash (P1), and the
    signature kept with the image is checked again at the next cold boot (P2)."""
    name = "e2e-mcu"
    (bundle,) = _bundles(srv, tmp_path, [name])
    (bundle / "device-secret.bin").write_bytes(bytes(range(32)))
    config = bundle / "agent.toml"
    config.write_text(
        config.read_text().replace(
            '[storage]\ndata_dir = "state"\n',
            '[storage]\ndata_dir = "state"\nplatform = "sim_mcu"\nflash_file = "flash.bin"\n'
            'unique_id = "0123456789abcdef0123456789abcdef"\ndevice_secret_file = "device-secret.bin"\n'
            "image_capacity = 65536\n",
        )
    )
    image = make_firmware(V2, SIZE, seed="mcu")
    iot = srv.client("iot")
    with Fleet([bundle]) as fleet:
        assert fleet.wait(lambda s: s[name].connected and s[name].version == "1.0.0", 30)
        info = create_ota(srv, "e2e-mcu", [iot.describe_thing(thingName=name)["thingArn"]], image)
        assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info.get("errorInfo")
        assert fleet.wait(lambda s: s[name].version == "1.1.0" and not s[name].trial, 60), fleet.snapshots()
    flash = (bundle / "flash.bin").read_bytes()
    assert image[100:132] not in flash  # P1: no plaintext image bytes in raw flash
    with Fleet([bundle]) as again:  # a cold boot: secure boot verifies the stored signature
        assert again.wait(lambda s: s[name].connected, 30)
        assert again.snapshots()[name].version == "1.1.0"
