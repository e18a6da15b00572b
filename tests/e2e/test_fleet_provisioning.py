"""Fleet provisioning by claim against the real server (API, device service, Mosquitto
with overair's access plugin): a device built on the AWS IoT Device SDK v2's identity
client holds only a claim certificate, provisions itself (CreateKeysAndCertificate or
CreateCertificateFromCsr, then RegisterThing) and completes an OTA update with the
certificate it received (issue 20, item 2). Then the attacks on it, by threat id
(../shared/design/threat-model.md): N4 unauthorized device.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as mqtt
import pytest
from awsiot import iotjobs
from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from overair.core import claimwire
from overair.core.versions import Version
from overair.server.provisioning.device import _Bucket
from overair.sim.firmware import make_firmware
from tests.e2e.claim_device import ClaimDevice, ClaimRejected, write_bundle
from tests.e2e.conftest import ShiftableClock
from tests.e2e.ota_helpers import create_ota, wait_for
from tests.e2e.sdk_device import Protocol, SdkDevice
from tests.e2e.test_examples import EXAMPLES, _environment
from tests.e2e.test_http_delivery import _get
from tests.server_harness import RunningServer

TEMPLATE = "factory"
ROLE = "fleet-provisioning"
IMAGE = make_firmware(Version(2, 0, 0), 20_000, seed="claim")
TEMPLATE_BODY = json.dumps({
    "Parameters": {"SerialNumber": {"Type": "String"},
                   "AWS::IoT::Certificate::Id": {"Type": "String"}},
    "Resources": {
        "thing": {"Type": "AWS::IoT::Thing", "Properties": {
            "ThingName": {"Fn::Join": ["", ["claimed-", {"Ref": "SerialNumber"}]]},
            "AttributePayload": {"serialNumber": {"Ref": "SerialNumber"}}}},
        "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {
            "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "Active"}}},
    "DeviceConfiguration": {"otaChannel": "stable"}})


def _role(srv: RunningServer) -> str:
    """A role iot.amazonaws.com may assume, allowed to create things (AWS's
    AWSIoTThingsRegistration policy grants the same)."""
    iam = srv.client("iam")
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                     "Principal": {"Service": "iot.amazonaws.com"}}]}
    try:
        arn: str = iam.get_role(RoleName=ROLE)["Role"]["Arn"]
        return arn
    except ClientError:
        pass
    arn = iam.create_role(RoleName=ROLE, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    iam.put_role_policy(RoleName=ROLE, PolicyName="register", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:CreateThing",
                                                "Resource": "*"}]}))
    return arn


@pytest.fixture(scope="module")
def template(clocked_srv: RunningServer) -> str:
    clocked_srv.client("iot").create_provisioning_template(
        templateName=TEMPLATE, templateBody=TEMPLATE_BODY, provisioningRoleArn=_role(clocked_srv),
        enabled=True)
    return TEMPLATE


def _claim_bundle(srv: RunningServer, directory: Path, templates: list[str]) -> tuple[str, Path]:
    """A claim certificate (made by CreateKeysAndCertificate, marked for `templates`)."""
    made = srv.client("iot").create_keys_and_certificate(setAsActive=True)
    srv.client("overair").set_claim_certificate_templates(CertificateId=made["certificateId"],
                                                          TemplateNames=templates)
    bundle = write_bundle(directory, made["certificatePem"], made["keyPair"]["PrivateKey"],
                          srv.settings.paths.fleet_ca_cert.read_bytes())
    return made["certificateId"], bundle


@pytest.fixture(scope="module")
def claim(clocked_srv: RunningServer, template: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _claim_bundle(clocked_srv, tmp_path_factory.mktemp("claim"), [template])[1]


@pytest.fixture
def claim_device(clocked_srv: RunningServer, claim: Path,
                 request: pytest.FixtureRequest) -> Iterator[ClaimDevice]:
    name = "".join(c if c.isalnum() else "-" for c in request.node.name[-40:])
    device = ClaimDevice(clocked_srv, claim, f"claimant-{name}")
    device.watch(TEMPLATE)
    yield device
    device.close()


def _csr(key: ec.EllipticCurvePrivateKey) -> str:
    request = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "factory-csr")]))
               .sign(key, hashes.SHA256()))
    return request.public_bytes(serialization.Encoding.PEM).decode()


def _update_over_https(srv: RunningServer, bundle: Path, thing: str) -> None:
    """The provisioned device, reconnected with its new certificate (the SDK's jobs
    client), takes an HTTPS OTA update through to SUCCEEDED."""
    iot = srv.client("iot")
    create_ota(srv, f"ota-{thing}", [iot.describe_thing(thingName=thing)["thingArn"]], IMAGE,
               protocols=("HTTP",))
    device = SdkDevice(srv, bundle, thing, Protocol.MQTT311)
    try:
        started = device.v1_start_next()
        assert started.execution.status == "IN_PROGRESS"
        file = started.execution.job_document["afr_ota"]["files"][0]
        status, _headers, body = _get(srv, file["update_data_url"])
        assert (status, body) == (200, IMAGE)
        done = device.v1_update(started.execution.job_id, "SUCCEEDED", include_job_execution_state=True)
        assert done.execution_state.status == "SUCCEEDED"
    finally:
        device.close()
    assert iot.describe_job_execution(jobId=f"AFR_OTA-ota-{thing}", thingName=thing)["execution"]["status"] \
        == "SUCCEEDED"


def test_sdk_identity_client_provisions_with_new_keys_and_completes_an_ota_update(
        clocked_srv: RunningServer, claim_device: ClaimDevice, tmp_path: Path) -> None:
    """CreateKeysAndCertificate then RegisterThing, as the SDK's fleet provisioning sample
    runs them; the certificate is PENDING_ACTIVATION until RegisterThing activates it."""
    keys = claim_device.create_keys()
    iot = clocked_srv.client("iot")
    assert iot.describe_certificate(certificateId=keys.certificate_id)["certificateDescription"]["status"] \
        == "PENDING_ACTIVATION"
    registered = claim_device.register(TEMPLATE, keys.certificate_ownership_token, {"SerialNumber": "k1"})
    assert registered.thing_name == "claimed-k1"
    assert registered.device_configuration == {"otaChannel": "stable"}
    assert iot.describe_certificate(certificateId=keys.certificate_id)["certificateDescription"]["status"] \
        == "ACTIVE"
    assert iot.list_thing_principals(thingName="claimed-k1")["principals"] == [
        iot.describe_certificate(certificateId=keys.certificate_id)["certificateDescription"]["certificateArn"]]
    claim_device.close()
    bundle = write_bundle(tmp_path / "k1", keys.certificate_pem, keys.private_key,
                          clocked_srv.settings.paths.fleet_ca_cert.read_bytes())
    _update_over_https(clocked_srv, bundle, "claimed-k1")
    claim_device.connection.connect().result(10)  # for the fixture's disconnect


def test_sdk_identity_client_provisions_from_a_csr_and_completes_an_ota_update(
        clocked_srv: RunningServer, claim_device: ClaimDevice, tmp_path: Path) -> None:
    """CreateCertificateFromCsr: the private key never leaves the device."""
    key = ec.generate_private_key(ec.SECP256R1())
    made = claim_device.create_from_csr(_csr(key))
    cert = x509.load_pem_x509_certificate(made.certificate_pem.encode())
    assert cert.public_key() == key.public_key()
    registered = claim_device.register(TEMPLATE, made.certificate_ownership_token, {"SerialNumber": "c1"})
    assert registered.thing_name == "claimed-c1"
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    bundle = write_bundle(tmp_path / "c1", made.certificate_pem, key_pem,
                          clocked_srv.settings.paths.fleet_ca_cert.read_bytes())
    _update_over_https(clocked_srv, bundle, "claimed-c1")


def test_rejected_answers_have_aws_shape(claim_device: ClaimDevice) -> None:
    """A bad CSR, and RegisterThing with a parameter the template needs missing, are
    answered on /rejected with statusCode, errorCode and errorMessage; nothing is made."""
    with pytest.raises(ClaimRejected) as bad_csr:
        claim_device.create_from_csr("-----BEGIN CERTIFICATE REQUEST-----\nnot one\n")
    assert (bad_csr.value.error.status_code, bad_csr.value.error.error_code) == (400, "InvalidCsr")
    keys = claim_device.create_keys()
    with pytest.raises(ClaimRejected) as missing:
        claim_device.register(TEMPLATE, keys.certificate_ownership_token, {})
    assert missing.value.error.status_code == 400
    assert missing.value.error.error_message


def test_n4_devices_sharing_a_claim_certificate_never_receive_each_others_answers(
        clocked_srv: RunningServer, claim: Path) -> None:
    """Many devices share one claim certificate, all subscribed to the same answer
    topics; each receives the answers to its own requests and nothing else (AWS answers
    "through the same MQTT connection used to publish the API request")."""
    devices = [ClaimDevice(clocked_srv, claim, f"shared-claim-{i}") for i in range(3)]
    try:
        for device in devices:
            device.watch(TEMPLATE)
        results: dict[str, list[str]] = {}

        def provision(device: ClaimDevice) -> None:
            results[device.client_id] = [device.create_keys().certificate_id for _ in range(3)]

        threads = [threading.Thread(target=provision, args=(device,)) for device in devices]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        for device in devices:
            mine = results[device.client_id]
            received = [body.certificate_id for _outcome, body in device.answers("keys")]
            assert received == mine
        every = [cert for certs in results.values() for cert in certs]
        assert len(set(every)) == len(every) == 9
    finally:
        for device in devices:
            device.close()


class _Peer:
    """A bare MQTT 3.1.1 client (paho) to probe what an identity may do."""

    def __init__(self, srv: RunningServer, bundle: Path, client_id: str) -> None:
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv311, clean_session=True)
        self.client.tls_set(ca_certs=str(bundle / "root-ca.pem"), certfile=str(bundle / "device.crt"),
                            keyfile=str(bundle / "device.key"))
        self.client.tls_insecure_set(True)  # the broker's name is not at issue here
        self.granted: dict[int, list[Any]] = {}
        self.messages: list[str] = []
        self.connected = threading.Event()
        self.closed = threading.Event()
        self.refused = threading.Event()
        self.client.on_connect = lambda _c, _u, _f, reason, _p: (
            self.refused if reason.is_failure else self.connected).set()
        self.client.on_disconnect = lambda *_a: self.closed.set()
        self.client.on_subscribe = lambda _c, _u, mid, codes, _p: self.granted.__setitem__(mid, list(codes))
        self.client.on_message = lambda _c, _u, m: self.messages.append(m.topic)
        self.port = srv.settings.mqtt_port

    def connect(self) -> bool:
        try:
            self.client.connect("127.0.0.1", self.port, keepalive=30)
        except OSError:
            return False
        self.client.loop_start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.connected.is_set():
                return True
            if self.refused.is_set() or self.closed.is_set():
                return False
            time.sleep(0.02)
        return False

    def subscribe_refused(self, topic: str) -> bool:
        _result, mid = self.client.subscribe(topic, 1)
        codes = wait_for(lambda: self.granted.get(mid or 0), 10, f"SUBACK for {topic}")
        return bool(codes[0].is_failure)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_n4_claim_identity_may_use_nothing_but_provisioning(clocked_srv: RunningServer, claim: Path,
                                                            tmp_path: Path) -> None:
    """SUBSCRIBE outside its answer topics is refused; a PUBLISH outside its request
    topics closes the connection (MQTT 3.1.1, as AWS); a thing's client id is refused."""
    thing = "claim-victim"
    victim = clocked_srv.provision(thing, tmp_path / thing)
    assert victim.is_dir()
    peer = _Peer(clocked_srv, claim, "claim-probe")
    try:
        assert peer.connect()
        for topic in (f"$aws/things/{thing}/jobs/#", "$aws/things/+/jobs/notify-next", "$aws/events/#",
                      claimwire.REQUEST_SUBSCRIPTION, "#",
                      "$aws/provisioning-templates/other/provision/json/+"):
            assert peer.subscribe_refused(topic), topic
        assert not peer.subscribe_refused("$aws/certificates/create/json/accepted")
        peer.client.publish(f"$aws/things/{thing}/jobs/$next/get", b"{}", qos=1)
        assert peer.closed.wait(10)
    finally:
        peer.close()
    takeover = _Peer(clocked_srv, claim, thing)
    try:
        assert not takeover.connect()
    finally:
        takeover.close()


def test_n4_a_claim_subscriber_receives_nothing_published_on_answer_topics(
        clocked_srv: RunningServer, claim: Path, claim_device: ClaimDevice) -> None:
    """Another connection with the same claim certificate, subscribed to every answer
    topic, receives nothing while a device provisions."""
    spy = _Peer(clocked_srv, claim, "claim-spy")
    try:
        assert spy.connect()
        for verb in ("create", "create-from-csr"):
            assert not spy.subscribe_refused(f"$aws/certificates/{verb}/json/+")
        assert not spy.subscribe_refused(f"$aws/provisioning-templates/{TEMPLATE}/provision/json/+")
        keys = claim_device.create_keys()
        claim_device.register(TEMPLATE, keys.certificate_ownership_token, {"SerialNumber": "spied"})
        # The spy's own request is answered to it: so everything before has been delivered.
        spy.client.publish("$aws/certificates/create/json", b"{}", qos=1)
        wait_for(lambda: spy.messages, 10, "the spy's own answer")
        assert spy.messages == ["$aws/certificates/create/json/accepted"]
    finally:
        spy.close()


def test_n4_forged_expired_or_foreign_ownership_tokens_are_rejected(
        clocked_srv: RunningServer, claim_device: ClaimDevice, clock: ShiftableClock) -> None:
    keys = claim_device.create_keys()
    token = keys.certificate_ownership_token
    version, cert_id, expiry, mac = token.split(".")
    forged = [f"{version}.{cert_id}.{int(expiry) + 86400}.{mac}",  # a later expiry, same MAC
              f"{version}.{'0' * 64}.{expiry}.{mac}",  # another certificate, same MAC
              f"{version}.{cert_id}.{expiry}.{'A' * len(mac)}", "not-a-token"]
    for bad in forged:
        with pytest.raises(ClaimRejected) as refused:
            claim_device.register(TEMPLATE, bad, {"SerialNumber": "forged"})
        assert refused.value.error.error_code == "InvalidCertificateOwnershipToken", bad
    # Another device's token, once that device registered with it: no longer good.
    other = claim_device.create_keys()
    claim_device.register(TEMPLATE, other.certificate_ownership_token, {"SerialNumber": "first"})
    with pytest.raises(ClaimRejected) as reused:
        claim_device.register(TEMPLATE, other.certificate_ownership_token, {"SerialNumber": "second"})
    assert reused.value.error.error_code == "InvalidCertificateOwnershipToken"
    try:
        clock.offset = 3601.0  # AWS: the token is valid for one hour
        with pytest.raises(ClaimRejected) as expired:
            claim_device.register(TEMPLATE, token, {"SerialNumber": "late"})
        assert "expired" in expired.value.error.error_message
    finally:
        clock.offset = 0.0
    iot = clocked_srv.client("iot")
    for name in ("claimed-forged", "claimed-late", "claimed-second"):
        with pytest.raises(iot.exceptions.ResourceNotFoundException):
            iot.describe_thing(thingName=name)


@pytest.mark.parametrize("status", ["INACTIVE", "REVOKED"])
def test_n4_a_withdrawn_claim_certificate_cannot_connect(clocked_srv: RunningServer, template: str,
                                                         tmp_path: Path, status: str) -> None:
    cert_id, bundle = _claim_bundle(clocked_srv, tmp_path / "claim", [template])
    live = _Peer(clocked_srv, bundle, f"withdrawn-{status.lower()}")
    try:
        assert live.connect()
        clocked_srv.client("iot").update_certificate(certificateId=cert_id, newStatus=status)
        assert live.closed.wait(10)  # its open session is closed
    finally:
        live.close()
    again = _Peer(clocked_srv, bundle, f"withdrawn-{status.lower()}-again")
    try:
        assert not again.connect()
    finally:
        again.close()
    assert iotjobs  # the SDK's jobs module is what _update_over_https drives


def test_cbor_requests_are_answered_in_cbor(clocked_srv: RunningServer, claim: Path) -> None:
    """The `cbor` topics: the request and the answer are CBOR (AWS: "depending on the
    payload-format of the topic")."""
    peer = _Peer(clocked_srv, claim, "claim-cbor")
    answers: list[tuple[str, bytes]] = []
    peer.client.on_message = lambda _c, _u, m: answers.append((m.topic, bytes(m.payload)))
    try:
        assert peer.connect()
        for topic in ("$aws/certificates/create/cbor",
                      f"$aws/provisioning-templates/{TEMPLATE}/provision/cbor"):
            assert not peer.subscribe_refused(f"{topic}/+")
        peer.client.publish("$aws/certificates/create/cbor", cbor2.dumps({}), qos=1)
        wait_for(lambda: answers, 10, "the CreateKeysAndCertificate answer")
        topic, payload = answers[0]
        keys = cbor2.loads(payload)
        assert topic == "$aws/certificates/create/cbor/accepted"
        assert set(keys) == {"certificateId", "certificatePem", "privateKey", "certificateOwnershipToken"}
        peer.client.publish(f"$aws/provisioning-templates/{TEMPLATE}/provision/cbor", cbor2.dumps(
            {"certificateOwnershipToken": keys["certificateOwnershipToken"],
             "parameters": {"SerialNumber": "cbor"}}), qos=1)
        wait_for(lambda: len(answers) > 1, 10, "the RegisterThing answer")
        assert answers[1][0] == f"$aws/provisioning-templates/{TEMPLATE}/provision/cbor/accepted"
        assert cbor2.loads(answers[1][1]) == {"thingName": "claimed-cbor",
                                              "deviceConfiguration": {"otaChannel": "stable"}}
        peer.client.publish("$aws/certificates/create/cbor", b"\xff\x00", qos=1)
        wait_for(lambda: len(answers) > 2, 10, "the answer to bad CBOR")
        assert answers[2][0] == "$aws/certificates/create/cbor/rejected"
        assert cbor2.loads(answers[2][1])["errorCode"] == "InvalidPayload"
    finally:
        peer.close()


def test_provisioning_templates_follow_aws_rules(clocked_srv: RunningServer, template: str,
                                                tmp_path: Path) -> None:
    """Versions (at most 5, the default one cannot be deleted, setAsDefault), what is
    refused by name (JITP, a pre-provisioning hook, a template RegisterThing could not
    bind to the token's certificate, a role IoT cannot assume), and claim marks."""
    iot, name = clocked_srv.client("iot"), "rules-template"
    role = _role(clocked_srv)
    made = iot.create_provisioning_template(templateName=name, templateBody=TEMPLATE_BODY,
                                            provisioningRoleArn=role)
    assert made["defaultVersionId"] == 1
    described = iot.describe_provisioning_template(templateName=name)
    assert (described["enabled"], described["type"], described["templateBody"]) == (
        False, "FLEET_PROVISIONING", TEMPLATE_BODY)
    assert name in [t["templateName"] for t in iot.list_provisioning_templates()["templates"]]
    for _ in range(4):
        iot.create_provisioning_template_version(templateName=name, templateBody=TEMPLATE_BODY)
    with pytest.raises(iot.exceptions.VersionsLimitExceededException):
        iot.create_provisioning_template_version(templateName=name, templateBody=TEMPLATE_BODY)
    with pytest.raises(iot.exceptions.DeleteConflictException):
        iot.delete_provisioning_template_version(templateName=name, versionId=1)
    iot.delete_provisioning_template_version(templateName=name, versionId=5)
    latest = iot.create_provisioning_template_version(templateName=name, templateBody=TEMPLATE_BODY,
                                                      setAsDefault=True)
    assert (latest["versionId"], latest["isDefaultVersion"]) == (6, True)
    versions = iot.list_provisioning_template_versions(templateName=name)["versions"]
    assert [(v["versionId"], v["isDefaultVersion"]) for v in versions] == [
        (1, False), (2, False), (3, False), (4, False), (6, True)]
    iot.update_provisioning_template(templateName=name, defaultVersionId=2, enabled=True)
    assert iot.describe_provisioning_template(templateName=name)["defaultVersionId"] == 2

    hook = {"targetArn": f"arn:aws:lambda:{clocked_srv.settings.region}:{clocked_srv.settings.account_id}"
                         ":function:pre", "payloadVersion": "2020-04-01"}
    no_cert = json.dumps({"Parameters": {}, "Resources": {"thing": {"Type": "AWS::IoT::Thing",
                                                                     "Properties": {"ThingName": "x"}}}})
    for refused in ({"type": "JITP"}, {"preProvisioningHook": hook}, {"templateBody": no_cert},
                    {"provisioningRoleArn": f"arn:aws:iam::{clocked_srv.settings.account_id}:role/none"}):
        params = {"templateName": "refused", "templateBody": TEMPLATE_BODY, "provisioningRoleArn": role,
                  **refused}
        with pytest.raises(ClientError) as error:
            iot.create_provisioning_template(**params)
        assert error.value.response["Error"]["Code"] in ("InvalidRequestException", "AccessDeniedException")
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_provisioning_template(templateName="refused")

    overair = clocked_srv.client("overair")
    device = clocked_srv.provision("attached-device", tmp_path / "attached")
    assert device.is_dir()
    attached = iot.list_thing_principals(thingName="attached-device")["principals"][0].rsplit("/", 1)[1]
    with pytest.raises(ClientError):
        overair.set_claim_certificate_templates(CertificateId=attached, TemplateNames=[name])
    spare = iot.create_keys_and_certificate(setAsActive=True)["certificateId"]
    with pytest.raises(ClientError):
        overair.set_claim_certificate_templates(CertificateId=spare, TemplateNames=["no-such-template"])
    overair.set_claim_certificate_templates(CertificateId=spare, TemplateNames=[name, template])
    assert overair.get_claim_certificate_templates(CertificateId=spare)["TemplateNames"] == sorted(
        [name, template])
    iot.delete_provisioning_template(templateName=name)
    assert overair.get_claim_certificate_templates(CertificateId=spare)["TemplateNames"] == [template]


def test_the_fleet_provisioning_example_runs_as_written(clocked_srv: RunningServer, tmp_path: Path) -> None:
    """examples/fleet_provisioning_sdk.py, run as a user runs it: the operator half makes
    the template and claim certificate, the SDK device provisions itself and connects."""
    done = subprocess.run([sys.executable, str(EXAMPLES / "fleet_provisioning_sdk.py"),
                           "--ca", str(clocked_srv.settings.paths.fleet_ca_cert),
                           "--mqtt-port", str(clocked_srv.settings.mqtt_port), "--serial", "ex1",
                           "--out", str(tmp_path / "out")],
                          env=_environment(clocked_srv), capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "claim-example-ex1 connected with its own certificate" in done.stdout
    principals = clocked_srv.client("iot").list_thing_principals(thingName="claim-example-ex1")["principals"]
    assert len(principals) == 1
    assert (tmp_path / "out" / "claim-example-ex1" / "device.key").is_file()


def test_n4_no_device_can_forge_a_moved_request_or_an_answer(clocked_srv: RunningServer,
                                                             tmp_path: Path) -> None:
    """The service trusts that `$overair/claim/v1/...` comes from the access plugin and
    the plugin that `$CONTROL/overair-claim/v1` comes from the service: a device
    publishing to either is refused (MQTT 3.1.1: disconnected), and nothing is minted."""
    thing = "claim-forger"
    bundle = clocked_srv.provision(thing, tmp_path / thing)
    before = len(clocked_srv.client("iot").list_certificates(pageSize=250)["certificates"])
    for topic, payload in ((f"{claimwire.REQUEST_PREFIX}1/{thing}/$aws/certificates/create/json", b"{}"),
                           (claimwire.ANSWER_TOPIC,
                            f"1 {thing} $aws/certificates/create/json/accepted\n{{}}".encode())):
        peer = _Peer(clocked_srv, bundle, thing)
        try:
            assert peer.connect()
            peer.client.publish(topic, payload, qos=1)
            assert peer.closed.wait(10), topic
        finally:
            peer.close()
    assert len(clocked_srv.client("iot").list_certificates(pageSize=250)["certificates"]) == before


def test_n4_a_connection_that_takes_a_claim_client_id_over_gets_nothing_meant_for_the_earlier_one(
        clocked_srv: RunningServer, claim: Path) -> None:
    """Device A asks; before the answer, B (same claim certificate) connects with A's
    client id and takes the session over. A's answer (a private key) goes to nobody:
    the plugin delivers only while the connection that asked holds the id. B's own
    request is answered to B. (The service's claim worker is held so that the takeover
    comes first.)"""
    connection = clocked_srv.server.connection
    assert connection is not None
    gate = threading.Event()
    connection._claim_executor.submit(gate.wait, 60)
    queue = connection._claim_executor._work_queue
    first = _Peer(clocked_srv, claim, "claim-taken-over")
    second = _Peer(clocked_srv, claim, "claim-taken-over")
    try:
        assert first.connect()
        assert not first.subscribe_refused("$aws/certificates/create/json/+")
        first.client.publish("$aws/certificates/create/json", b"{}", qos=1)
        wait_for(lambda: queue.qsize() >= 1, 10, "A's request at the service")
        assert second.connect()
        assert first.closed.wait(10)
        assert not second.subscribe_refused("$aws/certificates/create/json/+")
        second.client.publish("$aws/certificates/create/json", b"{}", qos=1)
        wait_for(lambda: queue.qsize() >= 2, 10, "B's request at the service")
        gate.set()
        # One worker answers in order, and the broker delivers to one client in order: an
        # answer to A handed to B would have arrived before B's own.
        wait_for(lambda: second.messages, 10, "B's own answer")
        assert second.messages == ["$aws/certificates/create/json/accepted"]
        assert first.messages == []
    finally:
        gate.set()
        first.close()
        second.close()


SERIAL_NR = {"SerialNumber": "nr"}


def test_registration_needs_an_enabled_template_and_a_role_that_may_create_the_thing(
        clocked_srv: RunningServer, template: str, tmp_path: Path) -> None:
    """RegisterThing runs as the template's provisioning role (AWS: the role IoT assumes
    to create the resources): a role without iot:CreateThing is refused, and so is a
    disabled template (AWS: NotFound); nothing is registered either way."""
    iot, iam = clocked_srv.client("iot"), clocked_srv.client("iam")
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                     "Principal": {"Service": "iot.amazonaws.com"}}]}
    powerless = iam.create_role(RoleName="claim-powerless", AssumeRolePolicyDocument=json.dumps(trust))
    iot.create_provisioning_template(templateName="no-rights", templateBody=TEMPLATE_BODY, enabled=True,
                                     provisioningRoleArn=powerless["Role"]["Arn"])
    _cert, bundle = _claim_bundle(clocked_srv, tmp_path / "claim", [template, "no-rights"])
    device = ClaimDevice(clocked_srv, bundle, "claim-rights")
    try:
        device.watch("no-rights")
        with pytest.raises(ClaimRejected) as denied:
            device.register("no-rights", device.create_keys().certificate_ownership_token, SERIAL_NR)
        assert (denied.value.error.status_code, denied.value.error.error_code) == (403, "AccessDenied")
        iot.update_provisioning_template(templateName="no-rights", enabled=False,
                                         provisioningRoleArn=_role(clocked_srv))
        with pytest.raises(ClaimRejected) as disabled:
            device.register("no-rights", device.create_keys().certificate_ownership_token, SERIAL_NR)
        assert disabled.value.error.status_code == 404
        assert disabled.value.error.error_code == "ResourceNotFound"
        iot.update_provisioning_template(templateName="no-rights", enabled=True)
        keys = device.create_keys()
        assert device.register("no-rights", keys.certificate_ownership_token,
                               {"SerialNumber": "nr"}).thing_name == "claimed-nr"
    finally:
        device.close()


def test_requests_over_the_fleet_wide_budget_are_answered_429(clocked_srv: RunningServer,
                                                               claim_device: ClaimDevice) -> None:
    """Every claim device presents the same certificate, so the budget is fleet-wide
    (Limits.claim_requests_per_second); past it the answer is 429 ThrottlingException,
    given before any worker or database is involved. (The running service's budget is
    narrowed to one request for the test.)"""
    service = clocked_srv.server.claim_service
    budget = service._budget
    service._budget = _Bucket(rate=1e-6, burst=1)
    try:
        claim_device.create_keys()
        with pytest.raises(ClaimRejected) as throttled:
            claim_device.create_keys()
        assert throttled.value.error.status_code == 429
        assert throttled.value.error.error_code == "ThrottlingException"
    finally:
        service._budget = budget
    claim_device.create_keys()
