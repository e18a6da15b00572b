"""Fleet provisioning by claim at fleet size (`python -m bench.registry --claim N`).

N protocol-level devices (paho, MQTT 3.1.1, each its own mutual-TLS connection with the
shared claim certificate and its own client id), W at a time, each doing what the SDK's
fleet provisioning sample does on the wire: subscribe to the accepted/rejected topics,
CreateCertificateFromCsr with its own ECDSA P-256 CSR, RegisterThing with the ownership
token (the template makes the thing, activates and attaches the certificate and puts the
thing in a group; the answer comes once the broker enforces the attachment), disconnect.
Measured from the first connection to the last answer.

The fleet-wide claim budget (Limits.claim_requests_per_second, AWS's default quota of 10
requests/s) is lifted for the run, so the figure is the server's; at the default the
same N devices take 2N/10 s by design (printed beside it).

Compared with, in the same run: CSRs checked and signed per second in one thread (the
CPU part of each device), and bare mutual-TLS connections to the same broker per second
(CONNECT, CONNACK, DISCONNECT with the claim certificate, W at a time): the two things
every device needs that provisioning itself does not add.
"""

from __future__ import annotations

import json
import queue
import socket
import ssl
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select
from tests.server_harness import RunningServer

from overair.server.storage.schema import DeviceCertificate, ThingGroupMember, ThingPrincipal

TEMPLATE = "claim-bench"
GROUP = "claim-bench"
CSR_TOPIC = "$aws/certificates/create-from-csr/json"
REGISTER_TOPIC = f"$aws/provisioning-templates/{TEMPLATE}/provision/json"
WAIT = 60.0
TEMPLATE_BODY = json.dumps({
    "Parameters": {"SerialNumber": {"Type": "String"}, "AWS::IoT::Certificate::Id": {"Type": "String"}},
    "Resources": {
        "thing": {"Type": "AWS::IoT::Thing", "Properties": {
            "ThingName": {"Fn::Join": ["", ["claimed-", {"Ref": "SerialNumber"}]]},
            "ThingGroups": [GROUP]}},
        "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {
            "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "Active"}}}})
LIFTED = {"claim_requests_per_second": 1_000_000.0, "claim_request_burst": 1_000_000}


def _no_delay(_client: mqtt.Client, _userdata: object, sock: object) -> None:
    if isinstance(sock, socket.socket):  # an ssl.SSLSocket is one
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Device:
    """One protocol-level MQTT connection with the claim certificate."""

    def __init__(self, srv: RunningServer, context: ssl.SSLContext, client_id: str) -> None:
        self.answers: queue.Queue[tuple[str, bytes | bytearray]] = queue.Queue()
        self._ready = threading.Event()
        self._subscribed = threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        client.tls_set_context(context)
        # paho leaves Nagle on: the PUBACK of one answer and the next request would wait
        # for the broker's delayed ACK (~40 ms). A device's stack sends them at once.
        client.on_socket_open = _no_delay
        client.on_connect = lambda _c, _u, _f, reason, _p: None if reason.is_failure else self._ready.set()
        client.on_subscribe = lambda *_a: self._subscribed.set()
        client.on_message = lambda _c, _u, message: self.answers.put((message.topic, message.payload))
        client.connect("127.0.0.1", srv.settings.mqtt_port, keepalive=60)
        client.loop_start()
        self.client = client
        if not self._ready.wait(WAIT):
            self.close()
            raise RuntimeError(f"{client_id} could not connect")

    def subscribe(self, topics: list[str]) -> None:
        self.client.subscribe([(topic, 1) for topic in topics])
        if not self._subscribed.wait(WAIT):
            raise RuntimeError("no SUBACK")

    def call(self, topic: str, body: dict[str, object]) -> dict[str, object]:
        self.client.publish(topic, json.dumps(body), qos=1)
        answer_topic, payload = self.answers.get(timeout=WAIT)
        answer: dict[str, object] = json.loads(payload)
        if not answer_topic.endswith("/accepted"):
            raise RuntimeError(f"{topic} rejected: {answer}")
        return answer

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _setup(srv: RunningServer, root: Path) -> ssl.SSLContext:
    iot, iam = srv.client("iot"), srv.client("iam")
    iot.create_thing_group(thingGroupName=GROUP)
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                     "Principal": {"Service": "iot.amazonaws.com"}}]}
    role = iam.create_role(RoleName="claim-bench", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    iam.put_role_policy(RoleName="claim-bench", PolicyName="register", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "iot:CreateThing", "Resource": "*"}]}))
    iot.create_provisioning_template(templateName=TEMPLATE, templateBody=TEMPLATE_BODY,
                                     provisioningRoleArn=role, enabled=True)
    made = iot.create_keys_and_certificate(setAsActive=True)
    srv.client("overair").set_claim_certificate_templates(CertificateId=made["certificateId"],
                                                          TemplateNames=[TEMPLATE])
    (root / "claim.crt").write_text(made["certificatePem"])
    (root / "claim.key").write_text(made["keyPair"]["PrivateKey"])
    context = ssl.create_default_context(cafile=str(srv.settings.paths.fleet_ca_cert))
    context.load_cert_chain(str(root / "claim.crt"), str(root / "claim.key"))
    return context


def _in_parallel(count: int, workers: int, one: Callable[[int], None]) -> float:
    """Seconds to run one(i) for i < count, `workers` at a time; the first error re-raised."""
    failures: list[BaseException] = []
    lock = threading.Lock()
    next_index = [0]

    def work() -> None:
        while True:
            with lock:
                if failures or next_index[0] >= count:
                    return
                i = next_index[0]
                next_index[0] += 1
            try:
                one(i)
            except BaseException as exc:  # reported after the run
                with lock:
                    failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(workers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    if failures:
        raise failures[0]
    return seconds


def claim(srv: RunningServer, root: Path, count: int, workers: int, csrs: list[str],
          signing_rate: Callable[[list[str]], float]) -> None:
    context = _setup(srv, root)
    steps: dict[str, list[float]] = {"connect + subscribe": [], "CreateCertificateFromCsr": [],
                                     "RegisterThing": []}

    def provision(i: int) -> None:
        started = time.perf_counter()
        device = _Device(srv, context, f"claimant-{i}")
        try:
            device.subscribe([f"{CSR_TOPIC}/accepted", f"{CSR_TOPIC}/rejected",
                              f"{REGISTER_TOPIC}/accepted", f"{REGISTER_TOPIC}/rejected"])
            subscribed = time.perf_counter()
            issued = device.call(CSR_TOPIC, {"certificateSigningRequest": csrs[i]})
            token = issued["certificateOwnershipToken"]
            signed = time.perf_counter()
            registered = device.call(REGISTER_TOPIC, {"certificateOwnershipToken": token,
                                                      "parameters": {"SerialNumber": str(i)}})
            steps["connect + subscribe"].append(subscribed - started)
            steps["CreateCertificateFromCsr"].append(signed - subscribed)
            steps["RegisterThing"].append(time.perf_counter() - signed)
            if registered.get("thingName") != f"claimed-{i}":
                raise RuntimeError(f"device {i} registered as {registered.get('thingName')}")
        finally:
            device.close()

    seconds = _in_parallel(count, workers, provision)
    with srv.server.db.reading() as s:
        members = s.scalar(select(func.count()).select_from(ThingGroupMember)
                           .where(ThingGroupMember.group_name == GROUP))
        attached = s.scalar(select(func.count()).select_from(ThingPrincipal).join(
            DeviceCertificate, DeviceCertificate.arn == ThingPrincipal.principal)
            .where(ThingPrincipal.thing_name.startswith("claimed-"), DeviceCertificate.status == "ACTIVE"))
    if (members, attached) != (count, count):
        raise SystemExit(f"after the run: {members} things in the group, {attached} active attached "
                         f"certificates of {count}")

    def connect_only(i: int) -> None:
        _Device(srv, context, f"connect-only-{i}").close()

    connects = count / _in_parallel(count, workers, connect_only)
    sign = signing_rate(csrs[:1000])
    print(f"\nfleet provisioning by claim of {count} devices, {workers} at a time (mutual TLS, "
          "CreateCertificateFromCsr + RegisterThing: thing, certificate activated and attached, group):")
    print(f"  {'first connection to last RegisterThing answer':<48} {seconds:8.1f} s   = "
          f"{count / seconds:7.0f} devices/s")
    print(f"  {'limit: CSR check + signing, one thread':<48} {sign:8.0f} /s   "
          f"(provisioning: {count / seconds / sign:.2f} of it)")
    print(f"  {'limit: bare mutual-TLS connections, same broker':<48} {connects:8.0f} /s   "
          f"(provisioning: {count / seconds / connects:.2f} of it)")
    print(f"  {'at the default claim budget (10 requests/s)':<48} {2 * count / 10:8.1f} s   (by design)")
    for step, seconds_each in steps.items():
        ordered = sorted(seconds_each)
        print(f"  {'a device: ' + step:<48} median {statistics.median(ordered) * 1000:6.1f} ms   "
              f"p90 {ordered[int(len(ordered) * 0.9)] * 1000:6.1f} ms")
