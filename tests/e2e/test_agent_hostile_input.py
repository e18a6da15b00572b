"""The device agent under hostile input, end to end (issue 12, finding 9): the real
server (API, device service, its own Mosquitto), a real agent (paho, LinuxSlots,
in-process reboots) and boto3.

An operator allowed to create jobs (or a compromised server, F2) sends the device hostile
OTA documents through CreateJob; whoever holds the service's broker identity publishes
hostile messages on the device's topics. Each job ends FAILED with a reason the server
shows, the agent keeps running, survives a restart, and then installs a good update.
"""

from __future__ import annotations

import base64
import json
import ssl
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from overair.agent.config import load_config
from overair.agent.runtime import Runtime
from overair.core.jobdoc import OtaFile, OtaJobDocument
from overair.core.versions import Version
from overair.sim.firmware import make_firmware
from tests.e2e.ota_helpers import create_ota, wait_for
from tests.server_harness import RunningServer

V1 = Version(1, 0, 0)
V2 = Version(1, 1, 0)
PARSER = "0x0000000c: 0x00000005"  # OtaErrJobParserError: NonConformingJobDoc
BAD_BLOCK = "0x000000e0: 0x00000000"  # FreeRTOS: a bad or undecodable block


def _document(**file_changes: Any) -> dict[str, Any]:
    file = OtaFile(filepath="/fw.bin", filesize=8192, fileid=0, certfile="/certs/signer.pem",
                   signature=bytes(70))
    doc = OtaJobDocument(protocols=("MQTT",), stream_name="hostile-stream", files=(file,),
                         signer_chain=(bytes(300),)).to_json_obj()
    doc["afr_ota"]["files"][0].update(file_changes)
    return doc


# Each becomes one CreateJob document (finding 9 first: non-ASCII base64 crashed the agent
# at every restart, leaving the execution QUEUED).
HOSTILE_DOCUMENTS: list[tuple[str, dict[str, Any]]] = [
    ("non-ascii-signature", _document(**{"sig-sha256-ecdsa": "MEUCIQ\u00e9\u00e9=="})),
    ("non-ascii-chain", {**_document(), "overair": {"signer_chain": ["MIIB\u00e9"]}}),
    ("full-width-size", _document(filesize="\uff18\uff11\uff19\uff12")),
    ("huge-size", _document(filesize=10**30)),
    ("chain-not-a-list", {**_document(), "overair": {"signer_chain": {"0": "MIIB"}}}),
    ("surrogate-path", _document(filepath="/fw\ud800.bin")),
]


class Injector:
    """A second certificate attached to the thing, on its own connection: it may publish
    on every topic of the thing, as a broker path could (each certificate is its own
    broker identity, so it takes no one's session over)."""

    def __init__(self, srv: RunningServer, thing: str, workdir: Path) -> None:
        iot = srv.client("iot")
        cert = iot.create_keys_and_certificate(setAsActive=True)
        iot.attach_thing_principal(thingName=thing, principal=cert["certificateArn"])
        (workdir / "injector.crt").write_text(cert["certificatePem"])
        (workdir / "injector.key").write_text(cert["keyPair"]["PrivateKey"])
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cafile=str(srv.settings.paths.fleet_ca_cert))
        context.load_cert_chain(str(workdir / "injector.crt"), str(workdir / "injector.key"))
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id=f"{thing}#injector",
                                  protocol=mqtt.MQTTv311)
        self.client.tls_set_context(context)
        self._seen: set[bytes] = set()
        self.client.on_message = lambda _c, _u, message: self._seen.add(bytes(message.payload))
        self.client.connect("127.0.0.1", srv.settings.mqtt_port)
        self.client.loop_start()
        self.client.subscribe(f"$aws/things/{thing}/injector-probe", 1)
        # The attachment reaches the broker's ACL asynchronously: probe until it has.
        wait_for(lambda: self._probe(f"$aws/things/{thing}/injector-probe"), 30, "the injector's grant")

    def _probe(self, topic: str) -> bool:
        token = f"probe {time.monotonic()}".encode()
        self.client.publish(topic, token, qos=1)
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            if token in self._seen:
                return True
            time.sleep(0.02)
        self.client.subscribe(topic, 1)
        return False

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(5)
        assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _start(bundle: Path) -> Runtime:
    runtime = Runtime(load_config(bundle))
    runtime.start()
    assert runtime.wait(lambda s: s.connected and s.phase == "idle", 30)
    return runtime


def _execution(srv: RunningServer, job_id: str, thing: str) -> dict[str, Any]:
    return dict(srv.client("iot").describe_job_execution(jobId=job_id, thingName=thing)["execution"])


def _failed(srv: RunningServer, job_id: str, thing: str) -> dict[str, str]:
    execution = wait_for(lambda: (e := _execution(srv, job_id, thing))["status"] in ("FAILED", "SUCCEEDED")
                         and e, what=f"{job_id} to end")
    assert execution["status"] == "FAILED", execution
    details: dict[str, str] = execution["statusDetails"]["detailsMap"]
    return details


def _alive(runtime: Runtime) -> None:
    snapshot = runtime.snapshot()
    assert (snapshot.alive, snapshot.error) == (True, None)


def test_agent_survives_hostile_jobs_and_messages_restarts_and_then_updates(
        srv: RunningServer, tmp_path: Path) -> None:
    name = "hostile-target"
    iot = srv.client("iot")
    factory = tmp_path / "factory.bin"
    factory.write_bytes(make_firmware(V1, 8192, seed="factory"))
    # Its jobs are made with CreateJob (hostile documents), which carry no signed deployment
    # metadata: a device requiring it would refuse them all before parsing (F2).
    bundle = srv.provision(name, tmp_path / name, factory_image=factory, require_deployment_metadata=False)
    thing_arn = iot.describe_thing(thingName=name)["thingArn"]
    runtime = _start(bundle)
    injector = Injector(srv, name, tmp_path)
    try:
        # 1. Hostile OTA documents created through the API: each job FAILED with the
        #    parser's reason, one after the other, and the agent keeps serving.
        for job_id, document in HOSTILE_DOCUMENTS:
            iot.create_job(jobId=job_id, targets=[thing_arn], document=json.dumps(document))
            details = _failed(srv, job_id, name)
            assert details["reason"] == PARSER, (job_id, details)
            assert details["detail"]
            _alive(runtime)

        # 2. Hostile messages on the device's job topic, from the broker path.
        notify = f"$aws/things/{name}/jobs/notify-next"
        for payload in (b"\xff\xfe\xfd", b"[" * 50_000 + b"]" * 50_000, b"{" * 40 + b"}" * 40, b"x" * 70_000,
                        b'{"execution": {"jobId": "ghost\\n", "jobDocument": {}}}',
                        b'{"execution": {"jobId": "ghost", "executionNumber": ' + b"9" * 5000 + b"}}"):
            injector.publish(notify, payload)
        hostile_job = {"timestamp": 1, "execution": {
            "jobId": "injected-job", "executionNumber": 1, "status": "QUEUED",
            "jobDocument": _document(**{"sig-sha256-ecdsa": "\u00e9" * 8})}}
        injector.publish(notify, json.dumps(hostile_job).encode())
        assert runtime.wait(lambda s: s.last_result is not None and s.last_result.job_id == "injected-job",
                            10)
        last = runtime.snapshot().last_result
        assert last is not None
        assert (last.status, last.reason) == ("FAILED", PARSER)
        _alive(runtime)

        # 3. A hostile stream data block, retained on the data topic of a job's stream so
        #    that it is the first thing the agent receives when it subscribes.
        data_topic = f"$aws/things/{name}/streams/hostile-stream/data/cbor"
        injector.publish(data_topic, b"\x9b\x00\x00\x00\xff\xff\xff\xff\xff", retain=True)
        try:
            good_shape = _document(**{"sig-sha256-ecdsa": base64.b64encode(bytes(70)).decode()})
            iot.create_job(jobId="hostile-block", targets=[thing_arn], document=json.dumps(good_shape))
            assert _failed(srv, "hostile-block", name)["reason"] == BAD_BLOCK
        finally:
            injector.publish(data_topic, b"", retain=True)
        _alive(runtime)
        assert runtime.snapshot().version == "1.0.0"
    finally:
        injector.close()
        runtime.stop()
    assert runtime.wait(lambda s: not s.alive, 10)

    # 4. A restart: the agent comes back (no crash loop) and nothing it reported changes.
    before = {job_id: _execution(srv, job_id, name) for job_id, _ in HOSTILE_DOCUMENTS}
    runtime = _start(bundle)
    try:
        time.sleep(1.0)  # give a crash loop every chance to show
        _alive(runtime)
        for job_id, execution in before.items():
            after = _execution(srv, job_id, name)
            assert after["status"] == execution["status"]
            assert after["versionNumber"] == execution["versionNumber"]

        # 5. Then a good, signed update installs as usual.
        info = create_ota(srv, "after-hostile", [thing_arn], make_firmware(V2, 20_000, seed="good"))
        assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info.get("errorInfo")
        execution = wait_for(lambda: (e := _execution(srv, "AFR_OTA-after-hostile", name))["status"]
                             in ("SUCCEEDED", "FAILED") and e, what="the good update")
        assert execution["status"] == "SUCCEEDED", execution
        assert runtime.wait(lambda s: s.version == "1.1.0" and not s.trial, 20)
        _alive(runtime)
    finally:
        runtime.stop()
