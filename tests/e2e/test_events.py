"""Event messages on AWS's reserved topics (issue 15, item 5) through the real server,
Mosquitto and TLS: UpdateEventConfigurations with boto3 decides what is published, an
event reader (CreateEventReader) receives job, job execution, presence and registry
events in AWS's shapes while a device run by the AWS IoT Device SDK v2 does a job, a
rolled-back change and a disabled type publish nothing, and a device gets nothing on
`$aws/events/#` (threat N4).

Absence is never waited for: each "nothing" is checked against a later event on the
same ordered path (one queue, one publishing thread, one subscriber connection)."""

from __future__ import annotations

import json
import os
import ssl
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from sqlalchemy import select

from overair.cli.client import ApiClients
from overair.server.storage.schema import AuditEntry, Thing
from tests.e2e.conftest import ShiftableClock
from tests.e2e.sdk_device import Protocol, SdkDevice
from tests.e2e.test_server_security import Device
from tests.mqtt_peer import MqttPeer
from tests.postgres_harness import PostgresCluster
from tests.server_harness import RunningServer, running_server

OVERAIR = str(Path(sys.executable).parent / "overair")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ALL_PUBLISHED = ("THING", "THING_GROUP", "THING_GROUP_MEMBERSHIP", "JOB", "JOB_EXECUTION")
Event = tuple[str, dict[str, Any]]


class Reader:
    """An event reader's MQTT client, with the certificate CreateEventReader returned."""

    def __init__(self, srv: RunningServer, tmp: Path, name: str) -> None:
        made = srv.client("overair").create_event_reader(Name=name)
        assert made["TopicFilter"] == "$aws/events/#"
        (tmp / f"{name}.crt").write_text(made["CertificatePem"])
        (tmp / f"{name}.key").write_text(made["PrivateKeyPem"])
        (tmp / f"{name}-ca.pem").write_text(made["RootCaPem"])
        self.made = made
        self.peer = connect_reader(srv, tmp / f"{name}.crt", tmp / f"{name}.key", tmp / f"{name}-ca.pem",
                                   made["ClientId"])

    def events(self) -> list[Event]:
        return [(topic, json.loads(payload)) for topic, payload in self.peer.received]

    def wait(self, topic: str, match: Callable[[dict[str, Any]], bool] = lambda _p: True) -> dict[str, Any]:
        def found(_received: object) -> bool:
            return any(t == topic and match(p) for t, p in self.events())
        self.peer.wait_until(found, f"no event on {topic}")
        return next(p for t, p in self.events() if t == topic and match(p))

    def before(self, topic: str) -> list[Event]:
        """Every event received before the first on `topic` (waited for)."""
        self.wait(topic)
        received = self.events()
        return received[:next(i for i, (t, _p) in enumerate(received) if t == topic)]


def connect_reader(srv: RunningServer, cert: Path, key: Path, root_ca: Path, client_id: str) -> MqttPeer:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(root_ca))
    context.load_cert_chain(str(cert), str(key))
    peer = MqttPeer(context, srv.settings.mqtt_port, client_id)
    peer.subscribe("$aws/events/#")
    return peer


@pytest.fixture
def reader(srv: RunningServer, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Reader]:
    made = Reader(srv, tmp_path, request.node.originalname.removeprefix("test_")[:40].replace("_", "-"))
    yield made
    made.peer.close()


def _configure(srv: RunningServer, **enabled: bool) -> None:
    srv.client("iot").update_event_configurations(
        eventConfigurations={name: {"Enabled": on} for name, on in enabled.items()})


def _error(call: Callable[..., Any], **kwargs: Any) -> str:
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    return str(caught.value.response["Error"]["Code"])


def test_event_configurations_start_as_aws_and_refuse_bad_input(srv: RunningServer) -> None:
    iot = srv.client("iot")
    described = iot.describe_event_configurations()
    # AWS: registry and job events "are not available by default".
    assert described["eventConfigurations"]["JOB"] == {"Enabled": False}
    assert all(not c["Enabled"] for c in described["eventConfigurations"].values())
    assert len(described["eventConfigurations"]) == 11
    assert _error(iot.update_event_configurations,
                  eventConfigurations={"NOT_A_TYPE": {"Enabled": True}}) == "InvalidRequestException"
    assert iot.describe_event_configurations()["eventConfigurations"] == described["eventConfigurations"]
    iot.update_event_configurations(eventConfigurations={"THING_TYPE": {"Enabled": True}})
    after = iot.describe_event_configurations()
    assert after["eventConfigurations"]["THING_TYPE"] == {"Enabled": True}
    assert after["eventConfigurations"]["JOB"] == {"Enabled": False}  # types not named keep their state
    assert after["lastModifiedDate"] >= after["creationDate"]
    iot.update_event_configurations(eventConfigurations={"THING_TYPE": {"Enabled": False}})


def test_disabled_types_and_rolled_back_changes_publish_nothing(srv: RunningServer, reader: Reader) -> None:
    iot = srv.client("iot")
    _configure(srv, THING=False)
    iot.create_thing(thingName="ev-quiet")  # THING disabled: no event
    _configure(srv, THING=True)
    # A change flushed in a transaction that then rolls back (the server's own session).
    def abandoned() -> None:
        with srv.server.db.session() as s:
            s.add(Thing(name="ev-rolled-back", thing_id="x" * 36, arn="arn:x", attributes={}, version=1,
                        created_at=0.0))
            s.flush()
            raise RuntimeError("abandon the transaction")

    with pytest.raises(RuntimeError):
        abandoned()
    iot.create_thing(thingName="ev-barrier")
    earlier = reader.before("$aws/events/thing/ev-barrier/created")
    assert [t for t, _p in earlier if "ev-quiet" in t or "ev-rolled-back" in t] == []
    _configure(srv, THING=False)


def test_job_presence_and_registry_events_in_aws_shapes(srv: RunningServer, reader: Reader,
                                                        tmp_path: Path) -> None:
    iot = srv.client("iot")
    account = srv.settings.account_id
    _configure(srv, **dict.fromkeys(ALL_PUBLISHED, True))
    iot.create_thing_group(thingGroupName="ev-group", thingGroupProperties={"thingGroupDescription": "d"})
    bundle = srv.provision("ev-dev", tmp_path / "ev-dev")
    thing = iot.describe_thing(thingName="ev-dev")
    created = reader.wait("$aws/events/thing/ev-dev/created")
    assert {k: created[k] for k in ("eventType", "operation", "accountId", "thingId", "thingName",
                                    "versionNumber", "thingTypeName")} == {
        "eventType": "THING_EVENT", "operation": "CREATED", "accountId": account,
        "thingId": thing["thingId"], "thingName": "ev-dev", "versionNumber": 1, "thingTypeName": None}
    assert isinstance(created["eventId"], str)
    assert created["timestamp"] > 10**12  # milliseconds
    group = reader.wait("$aws/events/thingGroup/ev-group/created")
    assert (group["eventType"], group["thingGroupName"], group["description"]) == (
        "THING_GROUP_EVENT", "ev-group", "d")
    iot.add_thing_to_thing_group(thingGroupName="ev-group", thingName="ev-dev")
    joined = reader.wait("$aws/events/thingGroupMembership/thingGroup/ev-group/thing/ev-dev/added")
    assert (joined["eventType"], joined["operation"], joined["thingArn"], joined["thingId"]) == (
        "THING_GROUP_MEMBERSHIP_EVENT", "ADDED", thing["thingArn"], thing["thingId"])

    device = SdkDevice(srv, bundle, "ev-dev", Protocol.MQTT311)
    try:
        online = reader.wait("$aws/events/presence/connected/ev-dev")
        principal = iot.list_thing_principals(thingName="ev-dev")["principals"][0].rsplit("/", 1)[1]
        assert (online["clientId"], online["eventType"], online["principalIdentifier"],
                online["ipAddress"]) == ("ev-dev", "connected", principal, "127.0.0.1")
        assert online["versionNumber"] >= 1
        assert online["sessionIdentifier"]

        iot.create_job(jobId="ev-job", targets=[thing["thingArn"]], document=json.dumps({"op": "x"}),
                       description="events")
        device.v1_start_next()
        device.v1_update("ev-job", "SUCCEEDED", status_details={"step": "done"})
        succeeded = reader.wait("$aws/events/jobExecution/ev-job/succeeded")
        assert {k: succeeded[k] for k in ("eventType", "operation", "jobId", "thingArn", "status",
                                          "statusDetails")} == {
            "eventType": "JOB_EXECUTION", "operation": "succeeded", "jobId": "ev-job",
            "thingArn": thing["thingArn"], "status": "SUCCEEDED", "statusDetails": {"step": "done"}}
        completed = reader.wait("$aws/events/job/ev-job/completed")
        assert (completed["eventType"], completed["status"], completed["targets"], completed["description"],
                completed["jobProcessDetails"]["numberOfSucceededThings"]) == (
            "JOB", "COMPLETED", [thing["thingArn"]], "events", 1)

        iot.create_job(jobId="ev-cancel", targets=[thing["thingArn"]], document=json.dumps({"op": "y"}))
        iot.cancel_job(jobId="ev-cancel", comment="not now")
        canceled = reader.wait("$aws/events/jobExecution/ev-cancel/canceled")
        assert (canceled["status"], canceled["thingArn"]) == ("CANCELED", thing["thingArn"])
        order = [t for t, _p in reader.before("$aws/events/job/ev-cancel/canceled") if "/job/ev-cancel/" in t]
        assert order == ["$aws/events/job/ev-cancel/cancellation_in_progress"]
        job_canceled = reader.wait("$aws/events/job/ev-cancel/canceled")
        assert (job_canceled["status"], job_canceled["comment"], job_canceled["forceCanceled"],
                job_canceled["jobProcessDetails"]["numberOfCanceledThings"]) == (
            "CANCELED", "not now", False, 1)
        starting = reader.wait("$aws/events/job/ev-cancel/cancellation_in_progress")
        assert starting["status"] == "CANCELLATION_IN_PROGRESS"
        # AWS's jobs examples give `timestamp` in seconds, createdAt in milliseconds.
        assert starting["timestamp"] < 10**11 < starting["createdAt"]
        iot.delete_job(jobId="ev-cancel")
        deleting = reader.wait("$aws/events/job/ev-cancel/deletion_in_progress")
        assert deleting["status"] == "DELETION_IN_PROGRESS"
        deleted = reader.wait("$aws/events/job/ev-cancel/deleted")
        assert (deleted["jobId"], deleted["status"]) == ("ev-cancel", "DELETED")
    finally:
        device.close()
    offline = reader.wait("$aws/events/presence/disconnected/ev-dev")
    assert (offline["disconnectReason"], offline["clientInitiatedDisconnect"], offline["sessionIdentifier"],
            offline["versionNumber"]) == ("CLIENT_INITIATED_DISCONNECT", True, online["sessionIdentifier"],
                                          online["versionNumber"])

    iot.update_thing(thingName="ev-dev", attributePayload={"attributes": {"site": "b"}})
    updated = reader.wait("$aws/events/thing/ev-dev/updated")
    assert (updated["versionNumber"], updated["attributes"]) == (2, {"site": "b"})
    iot.remove_thing_from_thing_group(thingGroupName="ev-group", thingName="ev-dev")
    reader.wait("$aws/events/thingGroupMembership/thingGroup/ev-group/thing/ev-dev/removed")
    iot.delete_thing_group(thingGroupName="ev-group")
    reader.wait("$aws/events/thingGroup/ev-group/deleted")
    _configure(srv, **dict.fromkeys(ALL_PUBLISHED, False))


def test_n4_a_device_subscribed_to_events_receives_nothing_a_reader_does(
        srv: RunningServer, reader: Reader, tmp_path: Path) -> None:
    """A device's access is its things' topics: `$aws/events/#` (other devices'
    connections, every job) is refused to it, while the reader gets the same events."""
    bundle = srv.provision("ev-snoop", tmp_path / "ev-snoop")
    snoop = Device(srv, bundle, "ev-snoop")
    assert snoop.connect()
    try:
        snoop.subscribe("$aws/events/#")
        snoop.subscribe("$aws/events/presence/connected/+")
        other = Device(srv, srv.provision("ev-other", tmp_path / "ev-other"), "ev-other")
        assert other.connect()
        other.close()
        reader.wait("$aws/events/presence/disconnected/ev-other")
        # A round trip on the snoop's own topics after the events were published: the
        # broker would have delivered any event to it before this reply.
        snoop.subscribe("$aws/things/ev-snoop/jobs/get/accepted")
        snoop.client.publish("$aws/things/ev-snoop/jobs/get", b"{}", qos=1)
        assert snoop.wait_for("jobs/get/accepted")
        assert [t for t, _p in snoop.messages if t.startswith("$aws/events/")] == []
    finally:
        snoop.close()


def _cli(srv: RunningServer, *args: str) -> str:
    result = subprocess.run([OVERAIR, *args, "--data-dir", str(srv.settings.data_dir)], capture_output=True,
                            text=True, timeout=120, check=False, env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_reader_made_with_the_cli_reads_until_revoked(srv: RunningServer, tmp_path: Path) -> None:
    """`overair events reader create NAME --out DIR` writes what the reader connects with;
    `overair events reader revoke NAME` cuts it off before it returns."""
    out = tmp_path / "cli-reader"
    _cli(srv, "events", "reader", "create", "ev-cli", "--out", str(out))
    assert stat.S_IMODE((out / "reader.key").stat().st_mode) == 0o600
    client_id = (out / "client-id").read_text().strip()
    peer = connect_reader(srv, out / "reader.crt", out / "reader.key", out / "root-ca.pem", client_id)
    _cli(srv, "events", "enable", "THING")
    assert "THING: on" in _cli(srv, "events", "show")
    srv.client("iot").create_thing(thingName="ev-cli-thing")
    peer.wait_until(lambda got: any(t == "$aws/events/thing/ev-cli-thing/created" for t, _p in got),
                    "the CLI reader got no event")
    overair = srv.client("overair")
    assert _error(overair.create_event_reader, Name="ev-cli") == "ResourceAlreadyExistsException"
    assert ["ev-cli", "ACTIVE", client_id] in [line.split() for line in
                                               _cli(srv, "events", "reader", "list").splitlines()]
    _cli(srv, "events", "reader", "revoke", "ev-cli")
    assert peer.gone.wait(10)  # the broker dropped it when the revocation was applied
    peer.close()
    listed = {r["Name"]: r for r in overair.list_event_readers()["EventReaders"]}
    assert (listed["ev-cli"]["Status"], listed["ev-cli"]["ClientId"]) == ("REVOKED", client_id)
    assert _error(overair.revoke_event_reader, Name="no-such-reader") == "ResourceNotFoundException"
    _cli(srv, "events", "disable", "THING")


def test_the_events_example_runs_as_written(srv: RunningServer) -> None:
    """examples/events_reader_boto3.py with the administrator's keys and the endpoints, as
    its docstring says, prints the thing's created and deleted events."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(srv.settings.paths.credentials), AWS_CONFIG_FILE=os.devnull,
               AWS_DEFAULT_REGION=srv.clients.region, OVERAIR_ENDPOINT=srv.endpoint)
    done = subprocess.run([sys.executable, str(EXAMPLES / "events_reader_boto3.py"), "--mqtt-port",
                           str(srv.settings.mqtt_port)], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    topics = [line.split(" ", 1)[0] for line in done.stdout.splitlines()]
    assert topics[-2:] == ["$aws/events/thing/events-example-thing/created",
                           "$aws/events/thing/events-example-thing/deleted"]
    readers = srv.client("overair").list_event_readers()["EventReaders"]
    assert {r["Name"]: r["Status"] for r in readers}["example-reader"] == "REVOKED"
    _configure(srv, **dict.fromkeys(ALL_PUBLISHED, False))


def test_events_after_commit_on_postgresql(tmp_path: Path, postgres: PostgresCluster) -> None:
    """The same recorder on PostgreSQL: a cancel (one UPDATE of the executions, read first
    in the same transaction) publishes each execution and the job; a rolled-back change
    nothing."""
    with running_server(tmp_path / "server", database_url=postgres.new_database()) as pg_srv:
        reader = Reader(pg_srv, tmp_path, "pg-reader")
        iot = pg_srv.client("iot")
        _configure(pg_srv, **dict.fromkeys(ALL_PUBLISHED, True))
        arns = [iot.create_thing(thingName=f"pg-{n}")["thingArn"] for n in range(2)]
        iot.create_job(jobId="pg-job", targets=arns, document=json.dumps({"op": "x"}))

        def abandoned() -> None:
            with pg_srv.server.db.session() as s:
                s.add(Thing(name="pg-rolled-back", thing_id="y" * 36, arn="arn:y", attributes={}, version=1,
                            created_at=0.0))
                s.flush()
                raise RuntimeError("abandon the transaction")

        with pytest.raises(RuntimeError):
            abandoned()
        iot.cancel_job(jobId="pg-job")
        earlier = reader.before("$aws/events/job/pg-job/canceled")
        execution_topic = "$aws/events/jobExecution/pg-job/canceled"
        canceled = sorted(p["thingArn"] for t, p in earlier if t == execution_topic)
        assert canceled == sorted(arns)
        assert [t for t, _p in earlier if "pg-rolled-back" in t] == []
        reader.peer.close()


def test_a_timeout_and_dynamic_group_membership_publish_events(
        clocked_srv: RunningServer, clock: ShiftableClock, tmp_path: Path) -> None:
    """Changes the server makes by itself: the scheduler timing an execution out, and a
    dynamic group's worker adding and removing members as a thing's attributes change."""
    reader = Reader(clocked_srv, tmp_path, "clocked-reader")
    iot = clocked_srv.client("iot")
    try:
        _configure(clocked_srv, **dict.fromkeys(ALL_PUBLISHED, True))
        iot.create_dynamic_thing_group(thingGroupName="ev-dyn", queryString="attributes.evzone:hot")
        bundle = clocked_srv.provision("ev-slow", tmp_path / "ev-slow")
        arn = iot.describe_thing(thingName="ev-slow")["thingArn"]
        iot.update_thing(thingName="ev-slow",
                         attributePayload={"attributes": {"evzone": "hot"}, "merge": True})
        added = reader.wait("$aws/events/thingGroupMembership/thingGroup/ev-dyn/thing/ev-slow/added")
        assert (added["thingArn"], added["operation"]) == (arn, "ADDED")
        iot.update_thing(thingName="ev-slow",
                         attributePayload={"attributes": {"evzone": "cold"}, "merge": True})
        reader.wait("$aws/events/thingGroupMembership/thingGroup/ev-dyn/thing/ev-slow/removed")

        iot.create_job(jobId="ev-slow-job", targets=[arn], document=json.dumps({"op": "x"}),
                       timeoutConfig={"inProgressTimeoutInMinutes": 1})
        device = SdkDevice(clocked_srv, bundle, "ev-slow", Protocol.MQTT311)
        try:
            device.v1_start_next()
            clock.offset += 61
            timed_out = reader.wait("$aws/events/jobExecution/ev-slow-job/timed_out")
            assert (timed_out["status"], timed_out["thingArn"]) == ("TIMED_OUT", arn)
        finally:
            clock.offset = 0.0
            device.close()
    finally:
        _configure(clocked_srv, **dict.fromkeys(ALL_PUBLISHED, False))
        reader.peer.close()


def test_o1_event_operations_need_their_iam_actions_and_are_audited(srv: RunningServer) -> None:
    iam = srv.client("iam")
    iam.create_user(UserName="ev-watcher")
    iam.put_user_policy(UserName="ev-watcher", PolicyName="read-events", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "iot:DescribeEventConfigurations", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="ev-watcher")["AccessKey"]
    clients = ApiClients(srv.endpoint, key["AccessKeyId"], key["SecretAccessKey"], srv.clients.region)
    clients.client("iot").describe_event_configurations()
    assert _error(clients.client("iot").update_event_configurations,
                  eventConfigurations={"JOB": {"Enabled": True}}) == "AccessDeniedException"
    assert _error(clients.client("overair").create_event_reader, Name="ev-sneaky") == "AccessDeniedException"
    arn = f"arn:aws:iam::{srv.settings.account_id}:user/ev-watcher"
    with srv.server.db.reading() as s:
        rows = s.scalars(select(AuditEntry).where(AuditEntry.principal == arn)).all()
        seen = {(r.action, r.decision) for r in rows}
    assert {("iot:DescribeEventConfigurations", "Allow"), ("iot:UpdateEventConfigurations", "ImplicitDeny"),
            ("overair:CreateEventReader", "ImplicitDeny")} <= seen
    assert not srv.client("iot").describe_event_configurations()["eventConfigurations"]["JOB"]["Enabled"]
