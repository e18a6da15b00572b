"""Bulk registration (StartThingRegistrationTask and its reports) and RegisterThing,
with unmodified boto3 against the real server, real CSRs, and devices that then connect
to the broker with the certificates they were given.

The module's server has small registration limits (20 lines, 64 KiB files, batches of
3 lines) so the bounds and the batching are exercised with small files.
"""

from __future__ import annotations

import configparser
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pytest
from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import text

from overair.server.settings import DataDir
from tests.e2e.test_examples import EXAMPLES, _environment
from tests.e2e.test_server_security import Device
from tests.server_harness import RunningServer, running_server

BUCKET = "registrations"
GROUP = "bulk-fleet"
MAX_LINES = 20
MAX_FILE = 64 * 1024
TEMPLATE = json.dumps({
    "Parameters": {"ThingName": {"Type": "String"}, "SerialNumber": {"Type": "String"},
                   "Group": {"Type": "String", "Default": GROUP}, "CSR": {"Type": "String"}},
    "Resources": {
        "thing": {"Type": "AWS::IoT::Thing", "Properties": {
            "ThingName": {"Ref": "ThingName"},
            "AttributePayload": {"serialNumber": {"Ref": "SerialNumber"},
                                 "batch": {"Fn::Join": ["-", ["lot", {"Ref": "SerialNumber"}]]}},
            "ThingGroups": [{"Ref": "Group"}]}},
        "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {
            "CertificateSigningRequest": {"Ref": "CSR"}, "Status": "Active"}}}})


def _server(data_dir: Path) -> AbstractContextManager[RunningServer]:
    return running_server(data_dir, limits={"max_registration_lines": MAX_LINES,
                                            "max_registration_file_bytes": MAX_FILE, "registration_batch": 3})


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with _server(tmp_path_factory.mktemp("server")) as running:
        running.client("s3").create_bucket(Bucket=BUCKET)
        running.client("iot").create_thing_group(thingGroupName=GROUP)
        yield running


@pytest.fixture(scope="module")
def role_arn(srv: RunningServer) -> str:
    """A service role iot.amazonaws.com may assume, allowed to read the input files."""
    iam = srv.client("iam")
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                     "Principal": {"Service": "iot.amazonaws.com"}}]}
    arn: str = iam.create_role(RoleName="bulk-registration",
                               AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    iam.put_role_policy(RoleName="bulk-registration", PolicyName="read-input", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject",
                                                "Resource": f"arn:aws:s3:::{BUCKET}/*"}]}))
    return arn


def _csr(key: ec.EllipticCurvePrivateKey, cn: str = "factory-csr") -> str:
    request = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
               .sign(key, hashes.SHA256()))
    return request.public_bytes(serialization.Encoding.PEM).decode()


def _bundle(srv: RunningServer, out: Path, key: ec.EllipticCurvePrivateKey, cert_pem: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "root-ca.pem").write_bytes(srv.settings.paths.fleet_ca_cert.read_bytes())
    (out / "device.crt").write_text(cert_pem)
    (out / "device.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return out


def _answers_jobs(srv: RunningServer, bundle: Path, thing: str) -> bool:
    """The device connects with its certificate and the broker lets it use its thing's
    Jobs topics (the service answers $next/get)."""
    device = Device(srv, bundle, thing)
    try:
        if not device.connect():
            return False
        device.subscribe(f"$aws/things/{thing}/jobs/#")
        device.client.publish(f"$aws/things/{thing}/jobs/$next/get", json.dumps({"clientToken": "t1"}), qos=1)
        return bool(device.wait_for("/jobs/$next/get/accepted", timeout=5))
    finally:
        device.close()


def _start(srv: RunningServer, role: str, key: str, body: bytes, template: str = TEMPLATE) -> str:
    srv.client("s3").put_object(Bucket=BUCKET, Key=key, Body=body)
    task: str = srv.client("iot").start_thing_registration_task(
        templateBody=template, inputFileBucket=BUCKET, inputFileKey=key, roleArn=role)["taskId"]
    return task


def _finished(srv: RunningServer, task: str, timeout: float = 60) -> dict[str, Any]:
    iot = srv.client("iot")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        described: dict[str, Any] = iot.describe_thing_registration_task(taskId=task)
        if described["status"] not in ("InProgress", "Cancelling"):
            return described
        time.sleep(0.05)
    raise AssertionError(f"task {task} still running after {timeout} s")


def _report(srv: RunningServer, task: str, report_type: str) -> list[dict[str, Any]]:
    links = srv.client("iot").list_thing_registration_task_reports(
        taskId=task, reportType=report_type)["resourceLinks"]
    assert len(links) == 1
    assert links[0].startswith(f"s3://{BUCKET}/")
    body = srv.client("s3").get_object(Bucket=BUCKET, Key=links[0].split("/", 3)[3])["Body"].read()
    return [json.loads(line) for line in body.decode().splitlines()]


def _missing(srv: RunningServer, thing: str) -> bool:
    try:
        srv.client("iot").describe_thing(thingName=thing)
    except ClientError as exc:
        return bool(exc.response["Error"]["Code"] == "ResourceNotFoundException")
    return False


def test_bulk_registration_registers_devices_that_connect_and_reports_each_bad_line(
        srv: RunningServer, role_arn: str, tmp_path: Path) -> None:
    iot = srv.client("iot")
    keys = {f"bulk-{i}": ec.generate_private_key(ec.SECP256R1()) for i in range(4)}
    other_key = ec.generate_private_key(ec.SECP256R1())
    lines = [json.dumps({"ThingName": name, "SerialNumber": str(i), "CSR": _csr(key)})
             for i, (name, key) in enumerate(keys.items())]
    lines[1:1] = [
        '{"ThingName": "bulk-bad-json", ',  # 1: not JSON
        json.dumps({"ThingName": "bulk-bad-csr", "SerialNumber": "9", "CSR": "-----BEGIN CERTIFICATE "
                    "REQUEST-----\nnot a csr\n-----END CERTIFICATE REQUEST-----\n"}),  # 2
        json.dumps({"ThingName": "bulk-no-group", "SerialNumber": "8", "Group": "no-such-group",
                    "CSR": _csr(other_key)}),  # 3: the group does not exist
        json.dumps({"ThingName": "bulk-0", "SerialNumber": "7", "CSR": _csr(other_key)}),  # 4: line 0's thing
        json.dumps({"SerialNumber": "6", "CSR": _csr(other_key)}),  # 5: no thing name
        json.dumps({"ThingName": "bulk-bad-attribute", "SerialNumber": "no spaces!",
                    "CSR": _csr(other_key)}),  # 6: not an attribute value
    ]
    certificates_before = len(iot.list_certificates(pageSize=250)["certificates"])
    task = _start(srv, role_arn, "bulk/devices.json", ("\n".join(lines) + "\n").encode())
    assert task in iot.list_thing_registration_tasks()["taskIds"]
    described = _finished(srv, task)
    assert (described["status"], described["successCount"], described["failureCount"],
            described["percentageProgress"]) == ("Completed", 4, 6, 100)
    assert described["templateBody"] == TEMPLATE
    assert described["roleArn"] == role_arn
    assert task in iot.list_thing_registration_tasks(status="Completed")["taskIds"]
    assert task not in iot.list_thing_registration_tasks(status="InProgress")["taskIds"]

    errors = {e["referenceId"]: e for e in _report(srv, task, "ERRORS")}
    assert sorted(errors) == ["1", "2", "3", "4", "5", "6"]
    assert errors["1"]["errorCode"] == "InvalidRequestException"
    assert "CSR" in errors["2"]["errorMessage"]
    assert errors["3"]["errorCode"] == "ResourceRegistrationFailureException"
    assert "no-such-group" in errors["3"]["errorMessage"]
    assert "already exists" in errors["4"]["errorMessage"] or "earlier line" in errors["4"]["errorMessage"]
    assert "ThingName" in errors["5"]["errorMessage"]
    assert "attribute" in errors["6"]["errorMessage"]
    for thing in ("bulk-bad-csr", "bulk-no-group", "bulk-bad-attribute"):
        assert _missing(srv, thing)  # registered nothing half-way
    # Four certificates: none for the lines that failed.
    assert len(iot.list_certificates(pageSize=250)["certificates"]) == certificates_before + 4

    results = {r["referenceId"]: r["response"] for r in _report(srv, task, "RESULTS")}
    assert sorted(results) == ["0", "7", "8", "9"]
    members = iot.list_things_in_thing_group(thingGroupName=GROUP)["things"]
    for reference, (name, key) in zip(("0", "7", "8", "9"), keys.items(), strict=True):
        response = results[reference]
        assert response["resourceArns"]["thing"].endswith(f":thing/{name}")
        cert_id = response["resourceArns"]["certificate"].rpartition("/")[2]
        assert iot.describe_certificate(certificateId=cert_id)["certificateDescription"]["status"] == "ACTIVE"
        principals = iot.list_thing_principals(thingName=name)["principals"]
        assert principals == [response["resourceArns"]["certificate"]]
        assert name in members
        attributes = iot.describe_thing(thingName=name)["attributes"]
        assert attributes["batch"] == f"lot-{attributes['serialNumber']}"
        cert = x509.load_pem_x509_certificate(response["certificatePem"].encode())
        assert cert.public_key() == key.public_key()  # the CSR's key, kept by the device
        assert _answers_jobs(srv, _bundle(srv, tmp_path / name, key, response["certificatePem"]), name)


def test_register_thing_registers_one_device_at_once(srv: RunningServer, tmp_path: Path) -> None:
    iot = srv.client("iot")
    key = ec.generate_private_key(ec.SECP256R1())
    template = TEMPLATE.replace('"ThingName": {"Ref": "ThingName"}',
                                '"ThingName": {"Fn::Sub": "reg-${SerialNumber}"}')
    out = iot.register_thing(templateBody=template, parameters={"SerialNumber": "one", "CSR": _csr(key)})
    assert out["resourceArns"]["thing"].endswith(":thing/reg-one")
    assert _answers_jobs(srv, _bundle(srv, tmp_path / "reg-one", key, out["certificatePem"]), "reg-one")
    with pytest.raises(ClientError) as again:  # the thing exists now
        iot.register_thing(templateBody=template, parameters={"SerialNumber": "one", "CSR": _csr(key)})
    assert again.value.response["Error"]["Code"] == "ResourceRegistrationFailureException"


def _code(call: Any, **kwargs: Any) -> str:
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    return str(caught.value.response["Error"]["Code"])


def _deep(depth: int) -> str:
    name: Any = {"Ref": "ThingName"}
    for _ in range(depth):
        name = {"Fn::Join": ["", [name]]}
    thing = {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": name}}
    return json.dumps({"Parameters": {"ThingName": {"Type": "String"}}, "Resources": {"thing": thing}})


@pytest.mark.parametrize(("template", "why"), [
    (TEMPLATE.replace('"Resources": {', '"Resources": {"policy": {"Type": "AWS::IoT::Policy", '
                      '"Properties": {"PolicyName": "p"}}, '), "AWS::IoT::Policy"),
    (_deep(8), "nested deeper"),  # within the JSON decoder's own depth bound (32), past the template's
    (TEMPLATE[:-3], "template"),
    # AWS's 10,240 characters: the edge's model constraint answers first.
    (TEMPLATE.replace('"Default": "bulk-fleet"', '"Default": "' + "x" * 11_000 + '"'), "10240"),
])
def test_an_unusable_template_is_refused_before_anything_runs(
        srv: RunningServer, role_arn: str, template: str, why: str) -> None:
    iot = srv.client("iot")
    s3 = srv.client("s3")
    s3.put_object(Bucket=BUCKET, Key="refused.json", Body=b'{"ThingName": "never"}\n')
    start = {"templateBody": template, "inputFileBucket": BUCKET, "inputFileKey": "refused.json",
             "roleArn": role_arn}
    register = {"templateBody": template, "parameters": {"ThingName": "never"}}
    for call, kwargs in ((iot.register_thing, register), (iot.start_thing_registration_task, start)):
        with pytest.raises(ClientError) as caught:
            call(**kwargs)
        assert caught.value.response["Error"]["Code"] == "InvalidRequestException"
        assert why in caught.value.response["Error"]["Message"]
    assert _missing(srv, "never")


def test_an_input_file_past_the_limits_registers_nothing(srv: RunningServer, role_arn: str) -> None:
    iot = srv.client("iot")
    too_big = b'{"ThingName": "huge"}\n' + b" " * MAX_FILE
    srv.client("s3").put_object(Bucket=BUCKET, Key="huge.json", Body=too_big)
    assert _code(iot.start_thing_registration_task, templateBody=TEMPLATE, inputFileBucket=BUCKET,
                 inputFileKey="huge.json", roleArn=role_arn) == "InvalidRequestException"
    key = ec.generate_private_key(ec.SECP256R1())
    lines = [json.dumps({"ThingName": f"many-{i}", "SerialNumber": str(i), "CSR": _csr(key)})
             for i in range(MAX_LINES + 1)]
    task = _start(srv, role_arn, "many.json", "\n".join(lines).encode())
    described = _finished(srv, task)
    assert described["status"] == "Failed"
    assert f"at most {MAX_LINES}" in described["message"]
    assert _missing(srv, "many-0")


def test_a_role_that_cannot_read_the_input_file_is_refused(srv: RunningServer) -> None:
    iam = srv.client("iam")
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                     "Principal": {"Service": "iot.amazonaws.com"}}]}
    arn = iam.create_role(RoleName="cannot-read", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    srv.client("s3").put_object(Bucket=BUCKET, Key="unreadable.json", Body=b'{"ThingName": "unread"}\n')
    iot = srv.client("iot")
    assert _code(iot.start_thing_registration_task, templateBody=TEMPLATE, inputFileBucket=BUCKET,
                 inputFileKey="unreadable.json", roleArn=arn) == "InvalidRequestException"


def test_stop_cancels_a_task_between_batches(srv: RunningServer, role_arn: str) -> None:
    iot = srv.client("iot")
    key = ec.generate_private_key(ec.SECP256R1())
    lines = [json.dumps({"ThingName": f"stopped-{i}", "SerialNumber": str(i), "CSR": _csr(key)})
             for i in range(6)]
    # Hold the tasks' worker so the stop surely arrives before the first batch.
    gate = threading.Event()
    srv.server.registration_tasks._worker.submit(gate.wait, 30)
    try:
        task = _start(srv, role_arn, "stopped.json", "\n".join(lines).encode())
        # Tasks run one at a time (as AWS): the next waits for this one.
        lines = [line.replace("stopped-", "after-") for line in lines]
        after = _start(srv, role_arn, "after.json", "\n".join(lines).encode())
        iot.stop_thing_registration_task(taskId=task)
        assert iot.describe_thing_registration_task(taskId=task)["status"] == "Cancelling"
        assert iot.describe_thing_registration_task(taskId=after)["status"] == "InProgress"
    finally:
        gate.set()
    described = _finished(srv, task)
    assert (described["status"], described["successCount"]) == ("Cancelled", 0)
    assert _missing(srv, "stopped-0")
    assert _finished(srv, after)["successCount"] == len(lines)
    assert _code(iot.stop_thing_registration_task, taskId=task) == "InvalidRequestException"
    assert _code(iot.describe_thing_registration_task, taskId="no-such-task") == "ResourceNotFoundException"


def test_tasks_are_not_resumed_across_a_server_restart(tmp_path: Path) -> None:
    """A task running when the server stops ends Failed before its next batch; one still
    queued (or left running by a crash) is Failed at the next start. Neither resumes."""
    data = tmp_path / "restarted"
    with _server(data) as first:
        first.client("s3").create_bucket(Bucket=BUCKET)
        first.client("iot").create_thing_group(thingGroupName=GROUP)
        iam = first.client("iam")
        trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                         "Principal": {"Service": "iot.amazonaws.com"}}]}
        role = iam.create_role(RoleName="restart", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
        iam.put_role_policy(RoleName="restart", PolicyName="read", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject",
                                                    "Resource": f"arn:aws:s3:::{BUCKET}/*"}]}))
        # Hold the running task inside its first batch (after its writes, where the batch
        # asks which groups CONTINUOUS jobs follow) until the server has begun to stop.
        inside, release = threading.Event(), threading.Event()
        registrar = first.server.registrar
        followed = registrar.followed

        def held() -> set[str]:
            inside.set()
            release.wait(30)
            return followed()

        registrar.followed = held
        key = ec.generate_private_key(ec.SECP256R1())
        lines = [json.dumps({"ThingName": f"cut-{i}", "SerialNumber": str(i), "CSR": _csr(key)})
                 for i in range(6)]
        running = _start(first, role, "cut.json", "\n".join(lines).encode())
        queued = _start(first, role, "queued.json", lines[0].replace("cut-", "queued-").encode())
        assert inside.wait(30)
        stopping = threading.Thread(target=first.thread.stop)
        stopping.start()
        tasks = first.server.registration_tasks
        deadline = time.monotonic() + 30
        while not tasks._server_stopping() and time.monotonic() < deadline:
            time.sleep(0.01)
        release.set()
        stopping.join(30)
    with _server(data) as second:
        iot = second.client("iot")
        cut = iot.describe_thing_registration_task(taskId=running)
        assert (cut["status"], cut["successCount"]) == ("Failed", 3)  # the first batch of 3, no more
        assert "interrupted by the server stopping after 3 of 6 lines" in cut["message"]
        assert not _missing(second, "cut-0")
        assert _missing(second, "cut-3")
        waiting = iot.describe_thing_registration_task(taskId=queued)
        assert waiting["status"] == "Failed"
        assert "interrupted by a server restart" in waiting["message"]
        assert _missing(second, "queued-0")


def test_the_bulk_registration_example_runs_as_written(srv: RunningServer, tmp_path: Path) -> None:
    """examples/bulk_registration_boto3.py, run as a user runs it, registers devices that
    then connect with the certificates and keys it wrote."""
    out = tmp_path / "devices"
    done = subprocess.run([sys.executable, str(EXAMPLES / "bulk_registration_boto3.py"), "--count", "3",
                           "--out", str(out)], env=_environment(srv), capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    for n in range(3):
        bundle = out / f"bulk-example-{n}"
        (bundle / "root-ca.pem").write_bytes(srv.settings.paths.fleet_ca_cert.read_bytes())
        assert _answers_jobs(srv, bundle, f"bulk-example-{n}")


def test_registration_tasks_page_oldest_first(srv: RunningServer, role_arn: str) -> None:
    iot = srv.client("iot")
    started = [_start(srv, role_arn, f"paged-{i}.json", json.dumps({"ThingName": f"paged-{i}"}).encode(),
                      template=_deep(0)) for i in range(3)]
    for task in started:
        _finished(srv, task)
    pages = iot.get_paginator("list_thing_registration_tasks").paginate(PaginationConfig={"PageSize": 1})
    listed = [task for page in pages for task in page["taskIds"]]
    assert listed == iot.list_thing_registration_tasks(maxResults=250)["taskIds"]
    assert listed[-3:] == started
    assert _code(iot.list_thing_registration_tasks, nextToken="bm90IGEgdG9rZW4=") == "InvalidRequestException"


def test_register_thing_attaches_an_existing_certificate_by_id(srv: RunningServer, tmp_path: Path) -> None:
    iot = srv.client("iot")
    template = json.dumps({
        "Parameters": {"ThingName": {"Type": "String"}, "CertificateId": {"Type": "String"}},
        "Resources": {"thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "ThingName"}}},
                      "cert": {"Type": "AWS::IoT::Certificate",
                               "Properties": {"CertificateId": {"Ref": "CertificateId"}}}}})
    made = iot.create_keys_and_certificate(setAsActive=True)
    out = iot.register_thing(templateBody=template,
                             parameters={"ThingName": "by-id", "CertificateId": made["certificateId"]})
    assert out["resourceArns"] == {"thing": iot.describe_thing(thingName="by-id")["thingArn"],
                                   "cert": made["certificateArn"]}
    assert out["certificatePem"] == made["certificatePem"]
    bundle = tmp_path / "by-id"
    bundle.mkdir()
    (bundle / "root-ca.pem").write_bytes(srv.settings.paths.fleet_ca_cert.read_bytes())
    (bundle / "device.crt").write_text(made["certificatePem"])
    (bundle / "device.key").write_text(made["keyPair"]["PrivateKey"])
    assert _answers_jobs(srv, bundle, "by-id")
    revoked = iot.create_keys_and_certificate(setAsActive=True)["certificateId"]
    iot.update_certificate(certificateId=revoked, newStatus="REVOKED")
    for cert_id, why in ((revoked, "revoked"), ("f" * 64, "does not exist")):
        with pytest.raises(ClientError) as caught:
            iot.register_thing(templateBody=template,
                               parameters={"ThingName": "by-id-2", "CertificateId": cert_id})
        assert caught.value.response["Error"]["Code"] == "ResourceRegistrationFailureException"
        assert why in caught.value.response["Error"]["Message"]
    assert _missing(srv, "by-id-2")


def test_a_batch_the_broker_cannot_confirm_is_recorded_and_register_thing_answers_503(
        srv: RunningServer, role_arn: str, tmp_path: Path) -> None:
    """The broker is alive but stopped (SIGSTOP), so the access plugin never answers: the
    lines are registered (saved), the task says the change was not confirmed, and
    RegisterThing answers 503 as AttachThingPrincipal does. Once the broker runs again
    the attachments are in force."""
    iot = srv.client("iot")
    keys = {f"frozen-{i}": ec.generate_private_key(ec.SECP256R1()) for i in range(2)}
    lines = [json.dumps({"ThingName": name, "SerialNumber": str(i), "CSR": _csr(key)})
             for i, (name, key) in enumerate(keys.items())]
    single = ec.generate_private_key(ec.SECP256R1())
    broker = srv.server.broker
    assert broker is not None
    assert broker.process is not None
    os.kill(broker.process.pid, signal.SIGSTOP)
    try:
        with pytest.raises(ClientError) as refused:  # boto3 retries a 503 unless told not to
            _iot_without_retries(srv).register_thing(
                templateBody=TEMPLATE,
                parameters={"ThingName": "frozen-one", "SerialNumber": "1", "CSR": _csr(single)})
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503, refused.value.response
        assert refused.value.response["Error"]["Code"] == "ServiceUnavailableException"
        assert "could not confirm" in refused.value.response["Error"]["Message"]
        described = _finished(srv, _start(srv, role_arn, "frozen.json", "\n".join(lines).encode()))
    finally:
        os.kill(broker.process.pid, signal.SIGCONT)
    assert (described["status"], described["successCount"], described["failureCount"]) == ("Completed", 2, 0)
    assert "could not confirm" in described["message"]
    results = {r["referenceId"]: r["response"] for r in _report(srv, described["taskId"], "RESULTS")}
    assert sorted(results) == ["0", "1"]
    # Saved during the 503: the thing and its attached certificate are in the registry.
    assert len(iot.list_thing_principals(thingName="frozen-one")["principals"]) == 1
    for reference, (name, key) in zip(("0", "1"), keys.items(), strict=True):
        assert iot.list_thing_principals(thingName=name)["principals"] == \
            [results[reference]["resourceArns"]["certificate"]]
        # The control messages queued while it was stopped are applied once it runs.
        bundle = _bundle(srv, tmp_path / name, key, results[reference]["certificatePem"])
        assert _eventually(lambda b=bundle, n=name: _answers_jobs(srv, b, n)), name


def _iot_without_retries(srv: RunningServer) -> Any:
    section = configparser.ConfigParser()
    section.read(DataDir(srv.settings.data_dir).credentials)
    return boto3.session.Session(
        aws_access_key_id=section["default"]["aws_access_key_id"],
        aws_secret_access_key=section["default"]["aws_secret_access_key"], region_name=srv.clients.region,
    ).client("iot", endpoint_url=srv.endpoint,
             config=botocore.config.Config(retries={"total_max_attempts": 1}))


def _eventually(check: Any, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def test_a_batch_whose_transaction_fails_is_registered_line_by_line(
        srv: RunningServer, role_arn: str) -> None:
    """The database refuses one line's thing (a real SQLite trigger, as a constraint or a
    corrupt page would): the batch's single transaction fails, each of its lines is
    retried in its own, and only that line is reported and leaves nothing behind."""
    iot = srv.client("iot")
    key = ec.generate_private_key(ec.SECP256R1())
    names = ["retry-0", "poison-1", "retry-2"]  # one batch (registration_batch is 3)
    lines = [json.dumps({"ThingName": name, "SerialNumber": str(i), "CSR": _csr(key)})
             for i, name in enumerate(names)]
    certificates_before = len(iot.list_certificates(pageSize=250)["certificates"])
    with srv.server.db.session() as s:
        s.execute(text("CREATE TRIGGER refuse_poison BEFORE INSERT ON things WHEN NEW.name LIKE 'poison-%' "
                       "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"))
    try:
        described = _finished(srv, _start(srv, role_arn, "retry.json", "\n".join(lines).encode()))
    finally:
        with srv.server.db.session() as s:
            s.execute(text("DROP TRIGGER refuse_poison"))
    assert (described["status"], described["successCount"], described["failureCount"]) == ("Completed", 2, 1)
    (error,) = _report(srv, described["taskId"], "ERRORS")
    assert (error["referenceId"], error["errorCode"]) == ("1", "ResourceRegistrationFailureException")
    assert "could not be stored" in error["errorMessage"]
    assert sorted(r["referenceId"] for r in _report(srv, described["taskId"], "RESULTS")) == ["0", "2"]
    assert _missing(srv, "poison-1")
    for name in ("retry-0", "retry-2"):
        assert len(iot.list_thing_principals(thingName=name)["principals"]) == 1
        assert name in iot.list_things_in_thing_group(thingGroupName=GROUP, maxResults=250)["things"]
    # No certificate for the refused line: its own transaction rolled back whole.
    assert len(iot.list_certificates(pageSize=250)["certificates"]) == certificates_before + 2
