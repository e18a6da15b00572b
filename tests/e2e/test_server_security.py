"""Security of the running server as a whole: operator authentication on the API, the
server-side signature check of CreateOTAUpdate, and device identity at the broker.

The real server (API, device service, its own Mosquitto) serves the module; devices are
plain paho clients holding the certificates `overair thing create` wrote. Threat ids in
test names: O1 unauthorized operator, N2 mis-signed update, N4 unauthorized device.
"""

from __future__ import annotations

import base64
import json
import re
import ssl
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import paho.mqtt.client as mqtt
import pytest
from botocore import UNSIGNED
from botocore.exceptions import ClientError
from paho.mqtt.enums import CallbackAPIVersion

from overair.core.streamcodec import GetStreamRequest, encode_get_stream
from overair.core.versions import Version
from overair.server.bootstrap import DEV_PROFILE
from overair.sim.firmware import make_firmware
from tests.pki_helpers import make_ca, make_signer, sign_file
from tests.server_harness import RunningServer

BUCKET = "firmware"
SIZE = 8 * 1024


# --- O1: every API call is authenticated -------------------------------------------------

def _raw(srv: RunningServer, method: str, path: str) -> tuple[int, str]:
    request = urllib.request.Request(srv.endpoint + path, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_o1_unsigned_api_request_is_refused(srv: RunningServer) -> None:
    status, body = _raw(srv, "GET", "/things")
    assert status == 403
    assert "MissingAuthenticationToken" in body
    unsigned = boto3.session.Session(region_name=srv.clients.region).client(
        "iot", endpoint_url=srv.endpoint,
        config=botocore.config.Config(signature_version=UNSIGNED, retries={"max_attempts": 1}))
    with pytest.raises(ClientError) as caught:
        unsigned.create_thing(thingName="made-without-a-signature")
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(ClientError):
        srv.client("iot").describe_thing(thingName="made-without-a-signature")  # nothing was created


@pytest.mark.parametrize("service", ["iot", "s3"])
def test_o1_api_request_signed_with_a_wrong_secret_is_refused(srv: RunningServer, service: str) -> None:
    key_id = srv.clients.access_key_id
    forged = boto3.session.Session(aws_access_key_id=key_id, aws_secret_access_key="not-the-secret" * 3,
                                   region_name=srv.clients.region).client(
        service, endpoint_url=srv.endpoint, config=botocore.config.Config(retries={"max_attempts": 1}))
    call = (lambda: forged.create_thing(thingName="forged")) if service == "iot" else forged.list_buckets
    with pytest.raises(ClientError) as caught:
        call()
    assert caught.value.response["Error"]["Code"] in {"SignatureDoesNotMatch", "InvalidSignatureException"}
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_o1_unknown_access_key_is_refused(srv: RunningServer) -> None:
    stranger = boto3.session.Session(aws_access_key_id="AKIANOBODYKNOWSTHIS1", aws_secret_access_key="x" * 40,
                                     region_name=srv.clients.region).client(
        "iot", endpoint_url=srv.endpoint, config=botocore.config.Config(retries={"max_attempts": 1}))
    with pytest.raises(ClientError) as caught:
        stranger.list_things()
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


# --- N2: CreateOTAUpdate checks signatures before any job exists -------------------------

def _custom_signed_update(srv: RunningServer, ota_id: str, thing_arn: str, image: bytes, signature: bytes,
                          chain_pem: bytes) -> dict[str, Any]:
    iot, s3 = srv.client("iot"), srv.client("s3")
    version = s3.put_object(Bucket=BUCKET, Key=f"custom/{ota_id}.bin", Body=image)["VersionId"]
    iot.create_ota_update(
        otaUpdateId=ota_id, targets=[thing_arn], protocols=["MQTT"],
        roleArn=f"arn:aws:iam::{srv.settings.account_id}:role/overair-ota",
        files=[{"fileName": "/firmware/app.bin", "fileVersion": "1",
                "fileLocation": {"s3Location": {"bucket": BUCKET, "key": f"custom/{ota_id}.bin",
                                                "version": version}},
                "codeSigning": {"customCodeSigning": {
                    "signature": {"inlineDocument": signature},
                    "certificateChain": {"certificateName": "/certs/signer.pem",
                                         "inlineDocument": chain_pem.decode()},
                    "hashAlgorithm": "SHA256", "signatureAlgorithm": "ECDSA"}}}])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        info: dict[str, Any] = iot.get_ota_update(otaUpdateId=ota_id)["otaUpdateInfo"]
        if info["otaUpdateStatus"] in ("CREATE_COMPLETE", "CREATE_FAILED"):
            return info
        time.sleep(0.1)
    raise AssertionError(f"OTA update {ota_id} did not finish")


@pytest.mark.parametrize("case", ["tampered", "untrusted-chain"])
def test_n2_custom_signed_image_that_does_not_verify_fails_create_ota_update_before_any_job(
        srv: RunningServer, case: str) -> None:
    iot = srv.client("iot")
    thing_arn = iot.create_thing(thingName=f"n2-custom-{case}")["thingArn"]
    root = make_ca(f"operator root {case}")
    signer = make_signer(root)
    image = make_firmware(Version(2, 0, 0), SIZE, seed=case)
    if case == "tampered":
        # The operator's root is trusted by the server, but the signature is over other bytes.
        roots = srv.settings.paths.code_signing_root
        roots.write_bytes(roots.read_bytes() + root.cert_pem)
        signature = sign_file(signer, image + b"x")
    else:
        signature = sign_file(signer, image)  # a valid signature from a root nobody trusts
    info = _custom_signed_update(srv, f"n2-{case}", thing_arn, image, signature, signer.cert_pem)
    assert info["otaUpdateStatus"] == "CREATE_FAILED"
    assert info["errorInfo"]["code"] == "SignatureVerificationFailed"
    expected = "BadSignature" if case == "tampered" else "UntrustedChain"
    assert expected in info["errorInfo"]["message"]
    job_ids = {j["jobId"] for j in iot.list_jobs()["jobs"]}
    assert f"AFR_OTA-n2-{case}" not in job_ids


def test_n2_custom_signed_image_that_verifies_is_accepted(srv: RunningServer) -> None:
    """The positive control of the test above: same path, a correct signature."""
    iot = srv.client("iot")
    thing_arn = iot.create_thing(thingName="n2-custom-good")["thingArn"]
    root = make_ca("operator root good")
    signer = make_signer(root)
    roots = srv.settings.paths.code_signing_root
    roots.write_bytes(roots.read_bytes() + root.cert_pem)
    image = make_firmware(Version(2, 0, 0), SIZE, seed="good")
    signature = sign_file(signer, image)
    info = _custom_signed_update(srv, "n2-good", thing_arn, image, signature, signer.cert_pem)
    assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info.get("errorInfo")
    document = json.loads(iot.get_job_document(jobId="AFR_OTA-n2-good")["document"])
    assert base64.b64decode(document["afr_ota"]["files"][0]["sig-sha256-ecdsa"]) == signature
    assert document["afr_ota"]["files"][0]["certfile"] == "/certs/signer.pem"


# --- N4: device identity at the broker -----------------------------------------------------

class Device:
    """A bare MQTT client with a provisioned thing's certificate (not an agent)."""

    def __init__(self, srv: RunningServer, bundle: Path, client_id: str) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cafile=str(bundle / "root-ca.pem"))
        context.load_cert_chain(str(bundle / "device.crt"), str(bundle / "device.key"))
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv311, clean_session=True)
        self.client.tls_set_context(context)
        self.messages: list[tuple[str, bytes]] = []
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.refused: Any = None
        self.client.on_message = lambda _c, _u, m: self.messages.append((m.topic, bytes(m.payload)))
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_a: self.disconnected.set()
        self.port = srv.settings.mqtt_port

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self.refused = reason
        else:
            self.connected.set()

    def connect(self, timeout: float = 10.0) -> bool:
        try:
            self.client.connect("127.0.0.1", self.port, keepalive=30)
        except (OSError, ssl.SSLError):
            return False
        self.client.loop_start()
        return self.connected.wait(timeout)

    def subscribe(self, topic: str) -> None:
        result, _mid = self.client.subscribe(topic, 1)
        assert result == mqtt.MQTT_ERR_SUCCESS

    def wait_for(self, topic_part: str, timeout: float = 10.0) -> list[tuple[str, bytes]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for m in self.messages if topic_part in m[0]]
            if found:
                return found
            time.sleep(0.05)
        return []

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def two_devices(srv: RunningServer, tmp_path: Path,
                request: pytest.FixtureRequest) -> tuple[str, Path, str, Path]:
    suffix = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name)[-28:].strip("-")
    a, b = f"a-{suffix}", f"b-{suffix}"
    return a, srv.provision(a, tmp_path / a), b, srv.provision(b, tmp_path / b)


def _signed_update_for(srv: RunningServer, ota_id: str, thing: str) -> str:
    """A real signed OTA update to `thing`; returns its stream id."""
    iot, s3 = srv.client("iot"), srv.client("s3")
    version = s3.put_object(Bucket=BUCKET, Key=f"fw/{ota_id}.bin",
                            Body=make_firmware(Version(3, 0, 0), SIZE, seed=ota_id))["VersionId"]
    iot.create_ota_update(
        otaUpdateId=ota_id, targets=[iot.describe_thing(thingName=thing)["thingArn"]], protocols=["MQTT"],
        roleArn=f"arn:aws:iam::{srv.settings.account_id}:role/overair-ota",
        files=[{"fileName": "/firmware/app.bin",
                "fileLocation": {"s3Location": {"bucket": BUCKET, "key": f"fw/{ota_id}.bin",
                                                "version": version}},
                "codeSigning": {"startSigningJobParameter": {"signingProfileName": DEV_PROFILE}}}])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        info = iot.get_ota_update(otaUpdateId=ota_id)["otaUpdateInfo"]
        if info["otaUpdateStatus"] == "CREATE_COMPLETE":
            return str(json.loads(iot.get_job_document(jobId=info["awsIotJobId"])["document"])
                       ["afr_ota"]["streamname"])
        assert info["otaUpdateStatus"] != "CREATE_FAILED", info.get("errorInfo")
        time.sleep(0.1)
    raise AssertionError("the OTA update was not created")


def test_n4_device_cannot_fetch_a_stream_no_job_of_its_own_references(
        srv: RunningServer, two_devices: tuple[str, Path, str, Path]) -> None:
    a, bundle_a, b, bundle_b = two_devices
    stream = _signed_update_for(srv, "n4-stream", a)
    request = encode_get_stream(GetStreamRequest(client_token="t1", stream_version=None, file_id=0,
                                                 block_size=1024, block_offset=0, number_of_blocks=2,
                                                 bitmap=b"\xff"), "cbor")
    thief, owner = Device(srv, bundle_b, b), Device(srv, bundle_a, a)
    try:
        assert thief.connect()
        assert owner.connect()
        # B asks for A's stream on its own topics, the only ones its ACL allows.
        thief.subscribe(f"$aws/things/{b}/streams/{stream}/#")
        owner.subscribe(f"$aws/things/{a}/streams/{stream}/#")
        time.sleep(0.3)
        thief.client.publish(f"$aws/things/{b}/streams/{stream}/get/cbor", request, qos=1)
        owner.client.publish(f"$aws/things/{a}/streams/{stream}/get/cbor", request, qos=1)
        assert owner.wait_for(f"/streams/{stream}/data/cbor")  # the targeted device is served
        rejected = thief.wait_for(f"/streams/{stream}/rejected/cbor")
        assert rejected, "B got no answer"
        assert not [m for m in thief.messages if "/data/" in m[0]]
        assert b"ResourceNotFound" in rejected[0][1]
    finally:
        thief.close()
        owner.close()


def test_n4_device_cannot_take_over_another_devices_session(
        srv: RunningServer, two_devices: tuple[str, Path, str, Path]) -> None:
    """MQTT drops a session when another client connects with the same client id; B
    using A's thing name as its client id must not kick A off."""
    a, bundle_a, _b, bundle_b = two_devices
    victim, intruder = Device(srv, bundle_a, a), Device(srv, bundle_b, a)
    try:
        assert victim.connect()
        # A client id is one of the certificate's own things' (the access plugin): B's
        # CONNECT with A's id is refused before it can take anything over.
        assert not intruder.connect(timeout=3)
        assert intruder.refused == "Not authorized"
        assert not victim.disconnected.is_set()
        victim.subscribe(f"$aws/things/{a}/jobs/notify-next")
        time.sleep(0.3)
        srv.client("iot").create_job(jobId="n4-session", targets=[
            srv.client("iot").describe_thing(thingName=a)["thingArn"]], document='{"operation":"x"}')
        assert victim.wait_for("/jobs/notify-next")  # A still gets its messages
    finally:
        victim.close()
        intruder.close()


@pytest.mark.parametrize("status", ["REVOKED", "INACTIVE"])
def test_n4_certificate_taken_out_of_service_is_refused_at_connect(
        srv: RunningServer, two_devices: tuple[str, Path, str, Path], status: str) -> None:
    a, bundle_a, _b, _ = two_devices
    first = Device(srv, bundle_a, a)
    assert first.connect()
    first.close()
    iot = srv.client("iot")
    (principal,) = iot.list_thing_principals(thingName=a)["principals"]
    iot.update_certificate(certificateId=principal.rpartition("/")[2], newStatus=status)
    again = Device(srv, bundle_a, a)
    try:
        connected = again.connect(timeout=3)
        if connected:
            # INACTIVE keeps the certificate valid for TLS; it must then grant nothing.
            again.subscribe(f"$aws/things/{a}/jobs/notify-next")
            time.sleep(0.3)
            iot.create_job(jobId=f"n4-{status.lower()}", targets=[
                iot.describe_thing(thingName=a)["thingArn"]], document='{"operation":"x"}')
            assert not again.wait_for("/jobs/notify-next", timeout=2)
        assert status == "INACTIVE" or not connected  # a revoked certificate is refused by TLS (CRL)
    finally:
        again.close()


def test_n4_attaching_a_certificate_grants_access_before_the_api_call_returns(
        srv: RunningServer, tmp_path: Path) -> None:
    """A device started right after provisioning must find its topics open, and one
    detached must lose them at once: the broker confirms its ACL reload before
    AttachThingPrincipal / DetachThingPrincipal answer (no sleep between call and use)."""
    iot = srv.client("iot")
    name = "n4-attach-then-connect"
    bundle = srv.provision(name, tmp_path / name)
    (principal,) = iot.list_thing_principals(thingName=name)["principals"]
    iot.detach_thing_principal(thingName=name, principal=principal)
    detached = Device(srv, bundle, name)
    device = Device(srv, bundle, name)

    def answered(token: str, timeout: float) -> bool:
        device.client.publish(f"$aws/things/{name}/jobs/$next/get", json.dumps({"clientToken": token}), qos=1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(token.encode() in payload for _, payload in device.messages):
                return True
            time.sleep(0.01)
        return False

    try:
        # Attached to nothing, the certificate may use no client id (access plugin).
        assert not detached.connect(timeout=3)
        assert detached.refused == "Not authorized"
        # paho goes on retrying with the same client id: once the attach grants access, a
        # retry would take the session over and cut `device` off (seen under load).
        detached.close()
        iot.attach_thing_principal(thingName=name, principal=principal)
        assert device.connect()
        device.subscribe(f"$aws/things/{name}/jobs/#")
        assert answered("right-after-attach", 5.0)
        iot.detach_thing_principal(thingName=name, principal=principal)
        # The reload the API waited for re-authenticated the session: it is closed.
        assert device.disconnected.wait(5.0)
        assert not answered("right-after-detach", 1.0)
    finally:
        detached.close()
        device.close()


def test_notify_carries_the_pending_list_whenever_it_changes(srv: RunningServer, tmp_path: Path) -> None:
    """`jobs/notify` (AWS): sent when an execution joins or leaves the pending list, even
    when the next job stays the same (FreeRTOS listens to notify-next only)."""
    name = "notify-listener"
    bundle = srv.provision(name, tmp_path / name)
    iot = srv.client("iot")
    arn = iot.describe_thing(thingName=name)["thingArn"]
    device = Device(srv, bundle, name)

    def last_notify() -> dict[str, Any]:
        # Wait for jobs/notify itself: the device's own publish to jobs/notify-1/update
        # comes back to it (jobs/#) and also contains "/jobs/notify".
        deadline = time.monotonic() + 10
        while not (notified := [json.loads(p) for t, p in list(device.messages)
                                if t.endswith("/jobs/notify")]):
            assert time.monotonic() < deadline, "no jobs/notify"
            time.sleep(0.05)
        jobs: dict[str, Any] = notified[-1]["jobs"]
        return jobs

    try:
        assert device.connect()
        device.subscribe(f"$aws/things/{name}/jobs/#")
        time.sleep(0.3)
        iot.create_job(jobId="notify-1", targets=[arn], document='{"operation":"a"}')
        assert [j["jobId"] for j in last_notify()["QUEUED"]] == ["notify-1"]
        device.messages.clear()
        iot.create_job(jobId="notify-2", targets=[arn], document='{"operation":"b"}')
        assert [j["jobId"] for j in last_notify()["QUEUED"]] == ["notify-1", "notify-2"]
        assert not [m for m in device.messages if m[0].endswith("/notify-next")]  # next unchanged
        device.messages.clear()
        device.client.publish(f"$aws/things/{name}/jobs/notify-1/update",
                              json.dumps({"status": "SUCCEEDED"}), qos=1)
        assert [j["jobId"] for j in last_notify()["QUEUED"]] == ["notify-2"]
    finally:
        device.close()
