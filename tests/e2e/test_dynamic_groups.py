"""Dynamic thing groups through boto3 and real devices against the real server (issue 15,
item 3): membership follows registry attributes, shadows, package versions and
connectivity; CONTINUOUS jobs and OTA updates aimed at a dynamic group reach things as
they start to match, and not things that stop matching before their release; the static
group operations AWS refuses on dynamic groups are refused."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from overair.core.versions import Version
from overair.sim.firmware import make_firmware
from overair.sim.fleet import Fleet
from tests.e2e.ota_helpers import create_ota, wait_for
from tests.e2e.test_server_security import Device
from tests.server_harness import RunningServer


def _members(iot: Any, group: str) -> list[str]:
    return sorted(iot.list_things_in_thing_group(thingGroupName=group)["things"])


def _settled(iot: Any, group: str, expected: list[str], what: str) -> None:
    wait_for(lambda: _members(iot, group) == expected, timeout=15, what=f"{what}: {expected}")


def _active(iot: Any, group: str) -> dict[str, Any]:
    return dict(wait_for(lambda: (d := iot.describe_thing_group(thingGroupName=group))["status"] == "ACTIVE"
                         and d, timeout=15, what=f"{group} ACTIVE"))


def _report(data: Any, thing: str, state: dict[str, Any], shadow: str | None = None) -> None:
    extra = {"shadowName": shadow} if shadow else {}
    data.update_thing_shadow(thingName=thing, payload=json.dumps({"state": {"reported": state}}).encode(),
                             **extra)


def _code(call: Any, **params: Any) -> str:
    with pytest.raises(ClientError) as caught:
        call(**params)
    return str(caught.value.response["Error"]["Code"])


def test_membership_follows_attributes_shadows_and_package_versions(srv: RunningServer) -> None:
    iot, data = srv.client("iot"), srv.client("iot-data")
    for name, zone, battery in [("dyn-0", "hot", 80), ("dyn-1", "cold", 90), ("dyn-2", "hot", 20)]:
        iot.create_thing(thingName=name, attributePayload={"attributes": {"zone": zone}})
        _report(data, name, {"battery": battery})
    created = iot.create_dynamic_thing_group(
        thingGroupName="dyn-hot", queryString="attributes.zone:hot AND shadow.reported.battery>50",
        thingGroupProperties={"thingGroupDescription": "hot and charged"})
    assert created["queryString"] == "attributes.zone:hot AND shadow.reported.battery>50"
    assert created["indexName"] == "AWS_Things"
    assert created["queryVersion"] == "2017-09-30"
    described = _active(iot, "dyn-hot")
    assert described["queryString"] == created["queryString"]
    assert described["indexName"] == "AWS_Things"
    assert described["thingGroupProperties"]["thingGroupDescription"] == "hot and charged"
    assert _members(iot, "dyn-hot") == ["dyn-0"]

    iot.update_thing(thingName="dyn-1", attributePayload={"attributes": {"zone": "hot"}, "merge": True})
    _settled(iot, "dyn-hot", ["dyn-0", "dyn-1"], "a registry attribute changed")
    _report(data, "dyn-0", {"battery": 10})
    _settled(iot, "dyn-hot", ["dyn-1"], "a shadow changed")
    groups = iot.list_thing_groups_for_thing(thingName="dyn-1")["thingGroups"]
    assert [g["groupName"] for g in groups] == ["dyn-hot"]
    assert {g["groupName"] for g in iot.list_thing_groups()["thingGroups"]} >= {"dyn-hot"}
    assert iot.search_index(queryString="thingGroupNames:dyn-hot")["things"][0]["thingName"] == "dyn-1"

    iot.create_dynamic_thing_group(thingGroupName="dyn-on-1-2",
                                   queryString="shadow.name.$package.reported.firmware.version:1.2.0")
    _report(data, "dyn-2", {"firmware": {"version": "1.2.0"}}, "$package")
    _settled(iot, "dyn-on-1-2", ["dyn-2"], "a package version reported")
    _report(data, "dyn-2", {"firmware": {"version": "1.3.0"}}, "$package")
    _settled(iot, "dyn-on-1-2", [], "a package version moved on")

    # A new query rebuilds the group; expectedVersion guards it.
    version = iot.describe_thing_group(thingGroupName="dyn-hot")["version"]
    assert _code(iot.update_dynamic_thing_group, thingGroupName="dyn-hot", queryString="attributes.zone:hot",
                 thingGroupProperties={}, expectedVersion=version + 5) == "VersionConflictException"
    updated = iot.update_dynamic_thing_group(thingGroupName="dyn-hot", queryString="attributes.zone:hot",
                                             thingGroupProperties={}, expectedVersion=version)
    assert updated["version"] == version + 1
    assert _active(iot, "dyn-hot")["queryString"] == "attributes.zone:hot"
    assert _members(iot, "dyn-hot") == ["dyn-0", "dyn-1", "dyn-2"]
    iot.delete_dynamic_thing_group(thingGroupName="dyn-hot")
    iot.delete_dynamic_thing_group(thingGroupName="dyn-hot")  # AWS: no ResourceNotFoundException
    assert _code(iot.describe_thing_group, thingGroupName="dyn-hot") == "ResourceNotFoundException"
    assert iot.list_thing_groups_for_thing(thingName="dyn-1")["thingGroups"] == []


def test_membership_follows_connectivity_from_the_broker(srv: RunningServer, tmp_path: Path) -> None:
    iot = srv.client("iot")
    bundle = srv.provision("dyn-online", tmp_path / "dyn-online")
    iot.create_dynamic_thing_group(thingGroupName="dyn-connected",
                                   queryString="thingName:dyn-online AND connectivity.connected:true")
    _active(iot, "dyn-connected")
    assert _members(iot, "dyn-connected") == []
    device = Device(srv, bundle, "dyn-online")
    try:
        assert device.connect()
        _settled(iot, "dyn-connected", ["dyn-online"], "the device connected")
    finally:
        device.close()
    _settled(iot, "dyn-connected", [], "the device disconnected")


def test_operations_aws_refuses_on_dynamic_groups(srv: RunningServer) -> None:
    iot = srv.client("iot")
    iot.create_thing(thingName="dyn-refused")
    iot.create_thing_group(thingGroupName="dyn-static")
    iot.create_dynamic_thing_group(thingGroupName="dyn-query", queryString="thingName:dyn-refused")
    _settled(iot, "dyn-query", ["dyn-refused"], "the initial build")
    refused: list[tuple[Any, dict[str, Any]]] = [
        (iot.add_thing_to_thing_group, {"thingGroupName": "dyn-query", "thingName": "dyn-refused"}),
        (iot.remove_thing_from_thing_group, {"thingGroupName": "dyn-query", "thingName": "dyn-refused"}),
        (iot.delete_thing_group, {"thingGroupName": "dyn-query"}),
        (iot.update_dynamic_thing_group, {"thingGroupName": "dyn-static", "queryString": "thingName:x",
                                          "thingGroupProperties": {}}),
        (iot.delete_dynamic_thing_group, {"thingGroupName": "dyn-static"}),
        (iot.create_thing_group, {"thingGroupName": "dyn-query"}),
    ]
    for call, params in refused:
        code = _code(call, **params)
        assert code in ("InvalidRequestException", "ResourceAlreadyExistsException"), (call, code)
    assert _members(iot, "dyn-query") == ["dyn-refused"]  # nothing changed
    assert _code(iot.create_dynamic_thing_group, thingGroupName="dyn-static",
                 queryString="thingName:x") == "ResourceAlreadyExistsException"
    assert _code(iot.create_dynamic_thing_group, thingGroupName="dyn-bad",
                 queryString="thingName:a/b") == "InvalidQueryException"
    assert _code(iot.create_dynamic_thing_group, thingGroupName="dyn-bad", queryString="thingName:x",
                 indexName="AWS_ThingGroups") == "ResourceNotFoundException"
    # Dynamic groups live on the thing index: it cannot be turned off under them.
    assert _code(iot.update_indexing_configuration,
                 thingIndexingConfiguration={"thingIndexingMode": "OFF"}) == "InvalidRequestException"
    iot.delete_dynamic_thing_group(thingGroupName="dyn-query")


def _closed_window() -> dict[str, Any]:
    """A daily maintenance window that opens twelve hours from now: a job created with
    it releases nothing during the test."""
    hour = (dt.datetime.now(dt.UTC).hour + 12) % 24
    return {"maintenanceWindows": [{"startTime": f"cron(0 {hour} * * ? *)", "durationInMinutes": 30}]}


def _execution(iot: Any, job_id: str, thing: str) -> dict[str, Any]:
    return dict(iot.describe_job_execution(jobId=job_id, thingName=thing)["execution"])


def _status(iot: Any, job_id: str, thing: str) -> str | None:
    try:
        return str(_execution(iot, job_id, thing)["status"])
    except iot.exceptions.ResourceNotFoundException:
        return None


def test_continuous_jobs_reach_things_as_they_match_and_not_those_that_stop_before_release(
    srv: RunningServer, tmp_path: Path
) -> None:
    iot = srv.client("iot")
    for name in ("dyn-job-a", "dyn-job-b"):
        iot.create_thing(thingName=name, attributePayload={"attributes": {"ring": "alpha"}})
    group = iot.create_dynamic_thing_group(thingGroupName="dyn-beta", queryString="attributes.ring:beta")
    _active(iot, "dyn-beta")
    held = iot.create_job(jobId="dyn-held", targets=[group["thingGroupArn"]], document="{}",
                          targetSelection="CONTINUOUS", schedulingConfig=_closed_window())["jobId"]

    iot.update_thing(thingName="dyn-job-a", attributePayload={"attributes": {"ring": "beta"}, "merge": True})
    iot.update_thing(thingName="dyn-job-b", attributePayload={"attributes": {"ring": "beta"}, "merge": True})
    wait_for(lambda: iot.list_job_executions_for_job(jobId=held)["executionSummaries"][1:], timeout=15,
             what="both things targeted")
    assert _execution(iot, held, "dyn-job-a")["status"] == "QUEUED"  # waiting for the window
    # dyn-job-a stops matching before its execution is released: the job no longer reaches it.
    iot.update_thing(thingName="dyn-job-a", attributePayload={"attributes": {"ring": "alpha"}, "merge": True})
    wait_for(lambda: _execution(iot, held, "dyn-job-a")["status"] == "REMOVED", timeout=15, what="REMOVED")
    assert _execution(iot, held, "dyn-job-b")["status"] == "QUEUED"
    counts = iot.describe_job(jobId=held)["job"]["jobProcessDetails"]
    assert counts["numberOfRemovedThings"] == 1
    assert counts["numberOfQueuedThings"] == 1
    # Matching again makes it a target again.
    iot.update_thing(thingName="dyn-job-a", attributePayload={"attributes": {"ring": "beta"}, "merge": True})
    wait_for(lambda: _execution(iot, held, "dyn-job-a")["status"] == "QUEUED", timeout=15, what="requeued")
    assert _execution(iot, held, "dyn-job-a")["executionNumber"] == 2

    # A device's own shadow update makes it match; the job reaches it at once (notify-next).
    bundle = srv.provision("dyn-job-device", tmp_path / "dyn-job-device")
    iot.create_dynamic_thing_group(thingGroupName="dyn-charged",
                                   queryString="thingName:dyn-job-* AND shadow.reported.battery>50")
    group_arn = _active(iot, "dyn-charged")["thingGroupArn"]
    live = iot.create_job(jobId="dyn-live", targets=[group_arn], document='{"op":"reboot"}',
                          targetSelection="CONTINUOUS")["jobId"]
    device = Device(srv, bundle, "dyn-job-device")
    try:
        assert device.connect()
        device.subscribe("$aws/things/dyn-job-device/jobs/notify-next")
        device.client.publish("$aws/things/dyn-job-device/shadow/update",
                              json.dumps({"state": {"reported": {"battery": 20}}}), qos=1)
        first = "thingName:dyn-job-device AND shadow.reported.battery:20"
        wait_for(lambda: iot.search_index(queryString=first)["things"], timeout=10, what="the first report")
        assert not device.wait_for("/jobs/notify-next", timeout=1)
        device.client.publish("$aws/things/dyn-job-device/shadow/update",
                              json.dumps({"state": {"reported": {"battery": 80}}}), qos=1)
        notified = device.wait_for("/jobs/notify-next", timeout=15)
        assert notified
        assert json.loads(notified[0][1])["execution"]["jobId"] == live
        # Released already: leaving the group does not take it away.
        device.client.publish("$aws/things/dyn-job-device/shadow/update",
                              json.dumps({"state": {"reported": {"battery": 5}}}), qos=1)
        _settled(iot, "dyn-charged", [], "the battery ran low")
        assert _execution(iot, live, "dyn-job-device")["status"] == "QUEUED"
    finally:
        device.close()


def test_ota_update_to_a_dynamic_group_reaches_an_agent_once_it_qualifies(
    srv: RunningServer, tmp_path: Path
) -> None:
    """A rollout to a query-defined group: an agent joins when its registry record says it
    is in the beta ring and it does not run 1.1.0 yet; it installs 1.1.0 and, running it,
    leaves the group (its SUCCEEDED execution stays)."""
    iot = srv.client("iot")
    factory = tmp_path / "factory.bin"
    factory.write_bytes(make_firmware(Version(1, 0, 0), 32 * 1024, seed="factory"))
    bundle = srv.provision("dyn-agent", tmp_path / "dyn-agent", factory_image=factory)
    query = ("thingName:dyn-agent AND attributes.ring:beta"
             " AND NOT shadow.name.$package.reported.firmware.version:1.1.0")
    group_arn = iot.create_dynamic_thing_group(thingGroupName="dyn-ota-beta",
                                               queryString=query)["thingGroupArn"]
    _active(iot, "dyn-ota-beta")
    info = create_ota(srv, "dyn-ota", [group_arn], make_firmware(Version(1, 1, 0), 32 * 1024, seed="dyn-ota"),
                      targetSelection="CONTINUOUS")
    assert info["otaUpdateStatus"] == "CREATE_COMPLETE", info.get("errorInfo")
    job_id = str(info["awsIotJobId"])
    with Fleet([bundle]) as fleet:
        assert fleet.wait(lambda s: all(x.connected for x in s.values()), 30)
        assert fleet.snapshots()["dyn-agent"].job_id is None
        beta = {"attributes": {"ring": "beta"}, "merge": True}
        iot.update_thing(thingName="dyn-agent", attributePayload=beta)
        wait_for(lambda: _status(iot, job_id, "dyn-agent") == "SUCCEEDED", what="the update")
        assert fleet.snapshots()["dyn-agent"].version == "1.1.0"
    _settled(iot, "dyn-ota-beta", [], "running 1.1.0, the agent no longer matches")
    assert _execution(iot, job_id, "dyn-agent")["status"] == "SUCCEEDED"
