"""The server side of F1 F2 (server/ota/deployment.py): what the deployment key signs
into a delivery, and how the key is kept. Real ECDSA; the statement is read back with
core/deployment.py as an agent reads it."""

from __future__ import annotations

import hashlib
from pathlib import Path

from overair.core import deployment
from overair.core.jobdoc import OtaFile, OtaJobDocument
from overair.core.versions import Version
from overair.server.ota.deployment import (
    DEPLOYMENT_FILES,
    DeploymentSigner,
    describe_file,
    load_or_create_key,
)
from overair.server.ota.manager import _with_extension
from overair.server.ota.profile_config import FREERTOS, OVERAIR_AGENT, builtin_profiles
from overair.server.sealing import Sealer
from overair.server.storage.schema import Job
from overair.sim.firmware import make_firmware

IMAGE = make_firmware(Version(2, 1, 0), 3000, seed="signed delivery", security_counter=4)
URL = "https://localhost:8443/ota/firmware/fw.bin?X-Amz-Signature=abc"


def _job(**config: object) -> Job:
    return Job(job_id="AFR_OTA-u1", document={}, config=config)


def _document(url: str | None = URL) -> dict[str, object]:
    return OtaJobDocument(protocols=("MQTT", "HTTP"), stream_name="ota-1",
                          files=(OtaFile(filepath="/fw.bin", filesize=len(IMAGE), fileid=0, certfile="c",
                                         signature=b"s", update_data_url=url),)).to_json_obj()


def _signer(tmp_path: Path, now: list[float]) -> DeploymentSigner:
    key = load_or_create_key(tmp_path / "deployment.key", tmp_path / "deployment-keys.pem",
                             Sealer(bytes(32)))
    return DeploymentSigner(key, lambda: now[0], ttl_seconds=600)


def test_f2_delivery_binds_thing_job_files_stream_url_path_and_expiry(tmp_path: Path) -> None:
    signer = _signer(tmp_path, [1000.0])
    envelope = signer.sign_delivery(_job(**{DEPLOYMENT_FILES: [describe_file(IMAGE)]}), "dev-7", _document())
    trusted = deployment.load_public_keys((tmp_path / "deployment-keys.pem").read_bytes())
    stated = deployment.verify(envelope, trusted)
    assert (stated.job_id, stated.thing, stated.stream, stated.url_path, stated.expires) == \
        ("AFR_OTA-u1", "dev-7", "ota-1", "/ota/firmware/fw.bin", 1600)
    (file,) = stated.files
    assert (file.name, file.size, file.sha256, file.version, file.security_counter) == \
        ("/fw.bin", len(IMAGE), hashlib.sha256(IMAGE).digest(), "2.1.0", 4)


def test_f1_sequence_only_goes_up_even_within_one_millisecond(tmp_path: Path) -> None:
    now = [1000.0]
    signer = _signer(tmp_path, now)
    job = _job(**{DEPLOYMENT_FILES: [describe_file(IMAGE)]})
    trusted = deployment.load_public_keys((tmp_path / "deployment-keys.pem").read_bytes())
    first, second = (deployment.verify(signer.sign_delivery(job, "d", _document()), trusted).sequence
                     for _ in range(2))
    now[0] = 2000.0
    third = deployment.verify(signer.sign_delivery(job, "d", _document()), trusted).sequence
    assert first < second < third


def test_a_job_without_file_descriptions_gets_no_metadata(tmp_path: Path) -> None:
    """CreateJob jobs: nothing to bind, nothing signed (strict agents refuse them)."""
    assert _signer(tmp_path, [0.0]).sign_delivery(_job(), "d", _document()) is None


def test_the_key_is_sealed_at_rest_and_reopened(tmp_path: Path) -> None:
    sealer = Sealer(bytes(range(32)))
    key = load_or_create_key(tmp_path / "k", tmp_path / "k.pem", sealer)
    secret = key.private_numbers().private_value.to_bytes(32, "big")
    assert secret not in (tmp_path / "k").read_bytes()
    again = load_or_create_key(tmp_path / "k", tmp_path / "k.pem", sealer)
    assert deployment.key_id(again.public_key()) == deployment.key_id(key.public_key())


def test_the_budget_check_counts_the_metadata_an_agent_receives(tmp_path: Path) -> None:
    """CreateOTAUpdate's size estimate (issue 13) includes the metadata, within the few
    bytes a DER signature's length varies; a FreeRTOS profile gets none."""

    config = {DEPLOYMENT_FILES: [describe_file(IMAGE)]}
    job = _job(**config)
    profiles = builtin_profiles()
    estimated = _with_extension(_document(), config, profiles[OVERAIR_AGENT], job, "dev-7")
    real = _signer(tmp_path, [9_999_999_999.0]).sign_delivery(job, "dev-7", _document())
    assert real is not None
    size = len(str(real))
    assert abs(len(str(estimated["overair"]["deployment"])) - size) <= 4
    assert "overair" not in _with_extension(_document(), config, profiles[FREERTOS], job, "dev-7")
