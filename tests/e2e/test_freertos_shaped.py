"""Every OTA scenario against a FreeRTOS-shaped device (tests/freertos_device.py), through
the real server, its Mosquitto and its download endpoint (issue 13, items 1 to 4).

The server here is set up as a FreeRTOS HTTP fleet needs it: `download_public_url =
"https://localhost:443"`, so pre-signed URLs read `https://localhost/ota/...` (no port).
The device resolves `localhost` and connects to port 443; the test network maps that
port to the endpoint's real one (as a NAT or a TLS-passthrough proxy in front of it
would), so the device's own parsing of the URL is what is tested: a URL with `:port`
fails it (`test_freertos_http_device_with_a_ported_url_...`).

The code-signing chain is the one of the issue: root -> two intermediates -> signer.
FreeRTOS devices get AWS's document (`afr_ota` only); overair agents get the chain too.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from overair.core.versions import Version
from overair.server.bootstrap import DEV_PROFILE
from overair.server.ota.profile_config import OVERAIR_AGENT, PROFILE_ATTRIBUTE
from overair.sim.firmware import make_firmware
from overair.sim.fleet import Fleet
from tests.e2e.conftest import ShiftableClock
from tests.e2e.ota_helpers import FINISHED, wait_for
from tests.freertos_device import HTTP_DEMO, DeviceSettings, FreeRtosDevice, provision
from tests.pki_chain import signer_two_below
from tests.pki_helpers import Issued, make_ca, sign_file
from tests.server_harness import RunningServer, running_server

BUCKET = "firmware"
CERTFILE = "/certs/ota-signer.pem"  # where the device holds the signer certificate
PROFILE = "freertos_two_intermediates"
V1, V11, V2 = Version(1, 0, 0), Version(1, 1, 0), Version(2, 0, 0)
IMAGE_SIZE = 100 * 1024 + 123  # 26 blocks of 4 KiB, the last one short
SERVER_TOML = """download_public_url = "https://localhost:443"

[device_profiles.profiles.freertos-16m]
max_file_bytes = 16777216

[device_profiles.thing_types]
big-mcu = "freertos-16m"

[device_profiles.groups]
agents-lab = "overair-agent"
"""


@dataclass
class World:
    srv: RunningServer
    root: Issued
    chain: tuple[Issued, Issued, Issued]  # upper intermediate, lower intermediate, signer
    tmp: Path

    @property
    def signer(self) -> Issued:
        return self.chain[2]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("freertos")
    with running_server(tmp / "server", settings_toml=SERVER_TOML) as srv:
        s3 = srv.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        root = make_ca("operator code-signing root")
        roots = srv.settings.paths.code_signing_root
        roots.write_bytes(roots.read_bytes() + root.cert_pem)
        upper, lower, signer = signer_two_below(root)
        # A signing profile whose certificate was imported with its chain (acm).
        arn = srv.client("acm").import_certificate(
            Certificate=signer.cert_pem, PrivateKey=signer.key_pem,
            CertificateChain=lower.cert_pem + upper.cert_pem)["CertificateArn"]
        srv.client("signer").put_signing_profile(
            profileName=PROFILE, platformId="AmazonFreeRTOS-Default",
            signingMaterial={"certificateArn": arn}, signingParameters={"certname": CERTFILE})
        yield World(srv, root, (upper, lower, signer), tmp)


MQTT_DEMO = DeviceSettings()


def _thing(world: World, name: str, **provision_kwargs: Any) -> Path:
    """A thing created with plain AWS calls, as for any FreeRTOS device: profile `freertos`."""
    fleet_ca = world.srv.settings.paths.fleet_ca_cert.read_bytes()
    return provision(world.srv.client("iot"), name, world.tmp / name, fleet_ca, **provision_kwargs)


def _device(world: World, name: str, version: Version = V1, settings: DeviceSettings = MQTT_DEMO,
            **provision_kwargs: Any) -> FreeRtosDevice:
    srv = world.srv
    # The device's network: port 443 of localhost is where the download endpoint listens.
    nat = {("127.0.0.1", 443): ("127.0.0.1", srv.settings.download_port)}
    return FreeRtosDevice(name, _thing(world, name, **provision_kwargs), srv.settings.mqtt_port, version,
                          certfiles={CERTFILE: world.signer.cert_pem}, settings=settings, network=nat)


def _arn(srv: RunningServer, thing: str) -> str:
    return str(srv.client("iot").describe_thing(thingName=thing)["thingArn"])


def _request(srv: RunningServer, ota_id: str, targets: list[str], image: bytes, *, protocols: list[str],
             code_signing: dict[str, Any], file_name: str = "/fw.bin", **extra: Any) -> None:
    version = srv.client("s3").put_object(Bucket=BUCKET, Key=f"{ota_id}.bin", Body=image)["VersionId"]
    location = {"s3Location": {"bucket": BUCKET, "key": f"{ota_id}.bin", "version": version}}
    srv.client("iot").create_ota_update(
        otaUpdateId=ota_id, targets=targets, protocols=protocols,
        roleArn=f"arn:aws:iam::{srv.settings.account_id}:role/overair-ota",
        files=[{"fileName": file_name, "fileLocation": location, "codeSigning": code_signing}], **extra)


def _finished(srv: RunningServer, ota_id: str) -> dict[str, Any]:
    iot = srv.client("iot")

    def done() -> dict[str, Any] | None:
        info: dict[str, Any] = iot.get_ota_update(otaUpdateId=ota_id)["otaUpdateInfo"]
        return info if info["otaUpdateStatus"] in FINISHED else None

    return dict(wait_for(done, what=f"OTA update {ota_id}"))


def _ota(world: World, ota_id: str, targets: list[str], image: bytes, *,
         protocols: tuple[str, ...] = ("MQTT",), code_signing: dict[str, Any] | None = None,
         **extra: Any) -> dict[str, Any]:
    signing = code_signing or {"startSigningJobParameter": {"signingProfileName": PROFILE}}
    _request(world.srv, ota_id, targets, image, protocols=list(protocols), code_signing=signing, **extra)
    return _finished(world.srv, ota_id)


def _status(srv: RunningServer, job_id: str, thing: str) -> str:
    execution = srv.client("iot").describe_job_execution(jobId=job_id, thingName=thing)["execution"]
    return str(execution["status"])


def _clean(device: FreeRtosDevice) -> None:
    """Nothing a real device would have choked on, and nothing it would have missed."""
    assert device.log.violations == []
    assert device.log.dropped == []
    assert device.log.restarts == 0
    assert all(set(doc) == {"afr_ota"} for doc in device.log.documents), device.log.documents
    assert max(device.log.job_messages) <= device.settings.mqtt_buffer


# --- MQTT, a signing profile with an imported chain (items 2, 3) --------------------------------

@pytest.mark.parametrize("token_style", ["v3.4.0", "main"])
def test_freertos_mqtt_update_signed_by_a_profile_with_an_imported_chain_succeeds(
        world: World, token_style: str) -> None:
    name = f"fr-mqtt-{token_style.replace('.', '')}"
    device = _device(world, name, settings=DeviceSettings(token_style=token_style))
    device.start()
    try:
        info = _ota(world, name, [_arn(world.srv, name)], make_firmware(V11, IMAGE_SIZE, seed=name))
        assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info
        assert "errorInfo" not in info  # within the 4 KiB budget
        job = info["awsIotJobId"]
        final = device.terminal(job)
        assert (final.status, final.details) == ("SUCCEEDED", {"reason": "accepted  v1.1.0",
                                                              "updatedBy": "  v1.0.0"})
        assert wait_for(lambda: _status(world.srv, job, name) == "SUCCEEDED", what="SUCCEEDED on the server")
        assert device.version == V11
        updates = device.log.updates
        steps = [(u.status, u.details.get("self_test")) for u in updates if "receive" not in u.details]
        assert steps == [("IN_PROGRESS", "ready"), ("IN_PROGRESS", "active"), ("SUCCEEDED", None)]
        receive = [u.details["receive"] for u in device.log.updates if "receive" in u.details]
        assert receive == ["1/26", "25/26"]
        _clean(device)
        # The stored document and GetJobDocument are AWS's: afr_ota only.
        assert set(json.loads(world.srv.client("iot").get_job_document(jobId=job)["document"])) == {"afr_ota"}
        if token_style == "main":
            assert device.log.tokens[:2] == [f":{name}", f":{name}"]
        else:
            assert device.log.tokens[:2] == [f"0:{name}", f"1:{name}"]
    finally:
        device.stop()


# --- HTTP through port 443 (item 1) -------------------------------------------------------------

def test_freertos_http_update_through_port_443_succeeds(world: World) -> None:
    name = "fr-http"
    device = _device(world, name, settings=HTTP_DEMO)
    device.start()
    try:
        info = _ota(world, name, [_arn(world.srv, name)], make_firmware(V11, IMAGE_SIZE, seed=name),
                    protocols=("HTTP",))
        assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info
        assert "errorInfo" not in info
        final = device.terminal(info["awsIotJobId"])
        assert final.status == "SUCCEEDED", device.log
        url = device.log.documents[0]["afr_ota"]["files"][0]["update_data_url"]
        assert url.startswith("https://localhost/ota/"), url  # no port: S3's form
        assert set(device.log.http_connects) == {("localhost", 443)}
        assert device.log.http_failures == []
        _clean(device)
    finally:
        device.stop()


# --- custom signing with two intermediates, base64 DER (item 3), next to an overair agent ------

def _custom(world: World, image: bytes, chain_document: str) -> dict[str, Any]:
    return {"customCodeSigning": {
        "signature": {"inlineDocument": sign_file(world.signer, image)},
        "certificateChain": {"certificateName": CERTFILE, "inlineDocument": chain_document},
        "hashAlgorithm": "SHA256", "signatureAlgorithm": "ECDSA"}}


def _der_chain(world: World) -> bytes:
    return b"".join(c.cert.public_bytes(serialization.Encoding.DER) for c in reversed(world.chain))


def test_custom_signing_with_two_intermediates_updates_a_freertos_device_and_an_agent(world: World) -> None:
    srv = world.srv
    device = _device(world, "fr-custom")
    factory = world.tmp / "factory.bin"
    factory.write_bytes(make_firmware(V1, 4096, seed="factory"))
    agent_bundle = srv.provision("agent-custom", world.tmp / "agent-custom", factory_image=factory)
    image = make_firmware(V11, IMAGE_SIZE, seed="custom")
    # AWS's documented form: base64 of the binary chain (DER signer, lower, upper).
    document = base64.b64encode(_der_chain(world)).decode()
    device.start()
    with Fleet([agent_bundle]) as fleet:
        try:
            info = _ota(world, "custom-two", [_arn(srv, "fr-custom"), _arn(srv, "agent-custom")], image,
                        code_signing=_custom(world, image, document))
            assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info
            assert "errorInfo" not in info
            assert device.terminal(info["awsIotJobId"]).status == "SUCCEEDED", device.log
            # The agent checks the chain to its root: it got the chain at delivery.
            agent = "agent-custom"
            updated = fleet.wait(lambda s: s[agent].version == "1.1.0" and not s[agent].trial, 60)
            assert updated, fleet.snapshots()
            assert wait_for(lambda: _status(srv, info["awsIotJobId"], "agent-custom") == "SUCCEEDED",
                            what="the agent's SUCCEEDED")
            _clean(device)
        finally:
            device.stop()


@pytest.mark.parametrize("form", ["base64-der", "base64-der-root-first", "base64-pkcs7", "base64-pem", "pem"])
def test_custom_signing_chain_is_accepted_in_each_documented_form(world: World, form: str) -> None:
    ders = [c.cert.public_bytes(serialization.Encoding.DER) for c in reversed(world.chain)]
    pem = b"".join(c.cert_pem for c in reversed(world.chain))
    document = {
        "base64-der": base64.b64encode(b"".join(ders)).decode(),
        "base64-der-root-first": base64.encodebytes(b"".join(reversed(ders))).decode(),  # wrapped lines
        "base64-pkcs7": base64.b64encode(pkcs7.serialize_certificates(
            [c.cert for c in world.chain], serialization.Encoding.DER)).decode(),
        "base64-pem": base64.b64encode(pem).decode(),
        "pem": pem.decode(),
    }[form]
    image = make_firmware(V11, 8192, seed=form)
    thing = f"fr-form-{form}"
    _thing(world, thing)
    info = _ota(world, f"form-{form}", [_arn(world.srv, thing)], image,
                code_signing=_custom(world, image, document))
    assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info


def test_custom_signing_chain_that_is_not_certificates_fails_the_update_clearly(world: World) -> None:
    image = make_firmware(V11, 8192, seed="garbage-chain")
    thing = "fr-garbage-chain"
    _thing(world, thing)
    info = _ota(world, "garbage-chain", [_arn(world.srv, thing)], image,
                code_signing=_custom(world, image, base64.b64encode(b"\x30\x03\x02\x01\x05").decode()))
    assert info["otaUpdateStatus"] == "CREATE_FAILED"
    assert info["errorInfo"]["code"] == "InvalidRequestException"
    assert "certificateChain.inlineDocument" in info["errorInfo"]["message"]


# --- same and older versions are rejected by the device ----------------------------------------

@pytest.mark.parametrize(("running", "reason"), [(V11, "rejected: 0x00000010"), (V2, "rejected: 0x0000000f")])
def test_freertos_device_rejects_the_same_or_an_older_version(
        world: World, running: Version, reason: str) -> None:
    name = f"fr-reject-{running.major}{running.minor}"
    device = _device(world, name, version=running)
    device.start()
    try:
        info = _ota(world, name, [_arn(world.srv, name)], make_firmware(V11, IMAGE_SIZE, seed=name))
        assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info
        final = device.terminal(info["awsIotJobId"])
        assert (final.status, final.details) == ("FAILED", {"reason": reason})
        assert wait_for(lambda: _status(world.srv, info["awsIotJobId"], name) == "FAILED", what="FAILED")
        device.wait_until(lambda _log: device.version == running, 10, "the rollback")
        _clean(device)
    finally:
        device.stop()


# --- the device message budget (item 2) ----------------------------------------------------------

def test_document_over_the_budget_is_warned_at_creation_and_is_what_the_device_drops(world: World) -> None:
    name = "fr-over-budget"
    device = _device(world, name)
    device.start()
    try:
        long_path = "/" + "p" * 4200  # a file name that alone outgrows the 4,224-byte buffer
        info = _ota(world, name, [_arn(world.srv, name)], make_firmware(V11, 8192, seed=name),
                    file_name=long_path)
        assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info
        warning = info["errorInfo"]
        assert warning["code"] == "DeviceMessageOverBudget", warning
        assert "'freertos'" in warning["message"], warning
        assert name in warning["message"], warning
        announced = int(warning["message"].split(" would be ")[1].split(" bytes")[0])
        device.wait_until(lambda log: bool(log.dropped), 20, "the job message to be dropped")
        dropped = device.log.dropped[0][1]
        assert device.settings.mqtt_buffer < dropped <= announced  # the warning is about this message
        time.sleep(1.0)
        assert device.log.updates == []
        assert _status(world.srv, info["awsIotJobId"], name) == "QUEUED"  # stranded, as the warning said
    finally:
        device.stop()


# --- device profiles and file sizes (item 4) ---------------------------------------------------

SIX_MIB = 6 * 1024 * 1024


@pytest.mark.parametrize(("case", "expected"), [
    ("freertos", "CREATE_FAILED"),
    ("agent-attribute", "CREATE_COMPLETE"),
    ("thing-type", "CREATE_COMPLETE"),
    ("group", "CREATE_COMPLETE"),
    ("unknown-profile", "CREATE_FAILED"),
])
def test_files_over_4_mib_are_refused_only_for_targets_with_freertos_limits(
        world: World, case: str, expected: str) -> None:
    srv = world.srv
    iot = srv.client("iot")
    thing = f"big-{case}"
    made: dict[str, dict[str, Any]] = {
        "agent-attribute": {"attributes": {PROFILE_ATTRIBUTE: OVERAIR_AGENT}},
        "thing-type": {"thing_type": "big-mcu"},
        "unknown-profile": {"attributes": {PROFILE_ATTRIBUTE: "no-such-profile"}},
    }
    kwargs = made.get(case, {})
    _thing(world, thing, **kwargs)
    targets = [_arn(srv, thing)]
    if case == "group":
        group = iot.create_thing_group(thingGroupName="agents-lab")["thingGroupArn"]
        iot.add_thing_to_thing_group(thingGroupName="agents-lab", thingName=thing)
        targets = [group]
    info = _ota(world, f"big-{case}", targets, make_firmware(V11, SIX_MIB, seed=case))
    assert info["otaUpdateStatus"] == expected, info
    if case == "freertos":
        message = info["errorInfo"]["message"]
        assert "device profile 'freertos'" in message, message
        assert thing in message, message
        assert "files up to 4194304 bytes" in message, message
    if case == "unknown-profile":
        assert "no-such-profile" in info["errorInfo"]["message"]


# --- a device that never reports still ends (item 1) --------------------------------------------

def test_freertos_http_device_with_a_ported_url_is_stranded_and_its_execution_ends_at_the_rollout_end(
        clocked_srv: RunningServer, clock: ShiftableClock, tmp_path: Path) -> None:
    """The server's default URL carries the endpoint's port: the device cannot use it (DNS
    of "localhost:<port>"), gives up after its retries and never reports: QUEUED. AWS's
    in-progress timeout does not apply to QUEUED executions (it starts at IN_PROGRESS);
    the rollout's end does (overair:endTime with endBehavior CANCEL)."""
    srv = clocked_srv
    iot = srv.client("iot")
    name, peer = "fr-stranded", "fr-stranded-peer"
    fleet_ca = srv.settings.paths.fleet_ca_cert.read_bytes()
    bundle = provision(iot, name, tmp_path / name, fleet_ca)
    peer_bundle = provision(iot, peer, tmp_path / peer, fleet_ca)
    quick = DeviceSettings(blocks_per_request=1, data_protocols=("HTTP",), request_wait=0.05)
    device = FreeRtosDevice(name, bundle, srv.settings.mqtt_port, V1, certfiles={}, settings=quick)
    end = dt.datetime.fromtimestamp(clock() + 240, dt.UTC).strftime("%Y-%m-%dT%H:%M")  # 3-4 min ahead
    image = make_firmware(V11, IMAGE_SIZE, seed=name)
    device.start()
    try:
        _request(srv, name, [_arn(srv, name), _arn(srv, peer)], image, protocols=["HTTP"],
                 code_signing={"startSigningJobParameter": {"signingProfileName": DEV_PROFILE}},
                 awsJobTimeoutConfig={"inProgressTimeoutInMinutes": 1},
                 additionalParameters={"overair:endTime": end, "overair:endBehavior": "CANCEL"})
        assert _finished(srv, name)["otaUpdateStatus"] == "CREATE_COMPLETE"
        job = f"AFR_OTA-{name}"
        device.wait_until(lambda log: log.shut_down, 30, "the device to give up")
        assert any(f"DNS 'localhost:{srv.settings.download_port}'" in f for f in device.log.http_failures), \
            device.log.http_failures
        assert device.log.updates == []
        assert device.log.http_connects == []
        # The peer starts its execution (IN_PROGRESS) over the Jobs HTTPS API ...
        jobs = boto3.client("iot-jobs-data", region_name=srv.settings.region,
                            endpoint_url=f"https://localhost:{srv.settings.download_port}",
                            verify=str(peer_bundle / "root-ca.pem"),
                            config=Config(signature_version=UNSIGNED, client_cert=(
                                str(peer_bundle / "device.crt"), str(peer_bundle / "device.key"))))
        assert jobs.start_next_pending_job_execution(thingName=peer)["execution"]["jobId"] == job
        clock.offset += 2 * 60  # ... and times out; the stranded QUEUED execution does not
        assert wait_for(lambda: _status(srv, job, peer) == "TIMED_OUT", timeout=10, what="the peer's timeout")
        assert _status(srv, job, name) == "QUEUED"
        clock.offset += 3 * 60  # past endTime (SigV4 allows 15 minutes of skew)
        assert wait_for(lambda: _status(srv, job, name) == "CANCELED", timeout=10, what="CANCELED at the end")
        assert iot.describe_job(jobId=job)["job"]["status"] == "CANCELED"
    finally:
        device.stop()
