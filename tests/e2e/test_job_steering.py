"""Rollouts an operator can see and steer (issue 15), through unmodified boto3 against the
real server: every target counted and listed from the start, UpdateJob,
AssociateTargetsWithJob, DeleteJobExecution, job templates, ListThingGroupsForThing,
DeleteCertificate, ListJobExecutionsForThing filters."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.server_harness import RunningServer

DOCUMENT = '{"operation": "reboot"}'


def _group(iot: Any, name: str, things: list[str]) -> str:
    arn = str(iot.create_thing_group(thingGroupName=name)["thingGroupArn"])
    for thing in things:
        iot.create_thing(thingName=thing)
        iot.add_thing_to_thing_group(thingGroupName=name, thingName=thing)
    return arn


def _statuses(iot: Any, job_id: str, **filters: Any) -> dict[str, str]:
    summaries = iot.list_job_executions_for_job(jobId=job_id, **filters)["executionSummaries"]
    return {s["thingArn"].rpartition("/")[2]: s["jobExecutionSummary"]["status"] for s in summaries}


def _code(call: Any, **params: Any) -> str:
    with pytest.raises(ClientError) as caught:
        call(**params)
    return str(caught.value.response["Error"]["Code"])


def test_a_staged_rollout_counts_and_lists_every_target_from_the_start(srv: RunningServer) -> None:
    """DescribeJob said 0 queued while 4 devices waited, and 0 canceled after a cancel
    (issue 15): the targets a rollout has not released yet are QUEUED, then CANCELED."""
    iot = srv.client("iot")
    things = [f"staged-{i}" for i in range(4)]
    group = _group(iot, "staged", things)
    iot.create_job(jobId="staged-1", targets=[group], document=DOCUMENT,
                   jobExecutionsRolloutConfig={"maximumPerMinute": 1})
    details = iot.describe_job(jobId="staged-1")["job"]["jobProcessDetails"]
    assert details["numberOfQueuedThings"] == 4
    assert _statuses(iot, "staged-1") == dict.fromkeys(things, "QUEUED")
    execution = iot.describe_job_execution(jobId="staged-1", thingName=things[3])["execution"]
    assert execution["status"] == "QUEUED"
    iot.cancel_job(jobId="staged-1")
    details = iot.describe_job(jobId="staged-1")["job"]["jobProcessDetails"]
    assert (details["numberOfCanceledThings"], details["numberOfQueuedThings"]) == (4, 0)
    assert _statuses(iot, "staged-1", status="CANCELED") == dict.fromkeys(things, "CANCELED")


def test_update_job_changes_description_and_configuration(srv: RunningServer) -> None:
    iot = srv.client("iot")
    thing = iot.create_thing(thingName="updated-target")["thingArn"]
    iot.create_job(jobId="update-1", targets=[thing], document=DOCUMENT, description="first")
    retry = {"criteriaList": [{"failureType": "FAILED", "numberOfRetries": 2}]}
    iot.update_job(jobId="update-1", description="second", jobExecutionsRetryConfig=retry,
                   timeoutConfig={"inProgressTimeoutInMinutes": 30},
                   jobExecutionsRolloutConfig={"maximumPerMinute": 50})
    job = iot.describe_job(jobId="update-1")["job"]
    assert job["description"] == "second"
    assert job["jobExecutionsRetryConfig"] == retry
    assert job["timeoutConfig"] == {"inProgressTimeoutInMinutes": 30}
    assert job["jobExecutionsRolloutConfig"] == {"maximumPerMinute": 50}
    bad = {"criteriaList": [{"failureType": "FAILED", "numberOfRetries": 11}]}
    assert _code(iot.update_job, jobId="update-1", jobExecutionsRetryConfig=bad) == "InvalidRequestException"
    iot.cancel_job(jobId="update-1")
    assert _code(iot.update_job, jobId="update-1", description="late") == "InvalidRequestException"
    assert _code(iot.update_job, jobId="no-such-job", description="x") == "ResourceNotFoundException"


def test_associate_targets_with_a_continuous_job(srv: RunningServer) -> None:
    iot = srv.client("iot")
    first = _group(iot, "assoc-a", ["assoc-a-1"])
    second = _group(iot, "assoc-b", ["assoc-b-1", "assoc-b-2"])
    iot.create_job(jobId="assoc-1", targets=[first], document=DOCUMENT, targetSelection="CONTINUOUS")
    out = iot.associate_targets_with_job(jobId="assoc-1", targets=[second], comment="widen")
    assert out["jobId"] == "assoc-1"
    job = iot.describe_job(jobId="assoc-1")["job"]
    assert job["targets"] == [first, second]
    assert job["comment"] == "widen"
    assert _statuses(iot, "assoc-1") == dict.fromkeys(["assoc-a-1", "assoc-b-1", "assoc-b-2"], "QUEUED")
    # Associating again adds nothing twice.
    iot.associate_targets_with_job(jobId="assoc-1", targets=[second])
    assert iot.describe_job(jobId="assoc-1")["job"]["jobProcessDetails"]["numberOfQueuedThings"] == 3
    iot.create_job(jobId="assoc-snap", targets=[first], document=DOCUMENT)
    assert _code(iot.associate_targets_with_job, jobId="assoc-snap",
                 targets=[second]) == "InvalidRequestException"


def test_delete_job_execution_needs_force_unless_it_ended(srv: RunningServer) -> None:
    iot = srv.client("iot")
    things = ["del-exec-1", "del-exec-2"]
    group = _group(iot, "del-exec", things)
    iot.create_job(jobId="del-exec", targets=[group], document=DOCUMENT)
    assert _code(iot.delete_job_execution, jobId="del-exec", thingName=things[0],
                 executionNumber=1) == "InvalidStateTransitionException"
    iot.delete_job_execution(jobId="del-exec", thingName=things[0], executionNumber=1, force=True)
    iot.cancel_job_execution(jobId="del-exec", thingName=things[1])
    iot.delete_job_execution(jobId="del-exec", thingName=things[1], executionNumber=1)
    assert _statuses(iot, "del-exec") == {}
    assert _code(iot.delete_job_execution, jobId="del-exec", thingName=things[1],
                 executionNumber=1) == "ResourceNotFoundException"
    assert iot.describe_job(jobId="del-exec")["job"]["status"] == "COMPLETED"


def test_job_templates_make_jobs(srv: RunningServer) -> None:
    iot = srv.client("iot")
    thing = iot.create_thing(thingName="templated")["thingArn"]
    timeout = {"inProgressTimeoutInMinutes": 15}
    made = iot.create_job_template(jobTemplateId="reboot-tpl", description="reboot", document=DOCUMENT,
                                   timeoutConfig=timeout)
    assert made["jobTemplateArn"].endswith(":jobtemplate/reboot-tpl")
    assert _code(iot.create_job_template, jobTemplateId="reboot-tpl", description="again",
                 document=DOCUMENT) == "ConflictException"
    described = iot.describe_job_template(jobTemplateId="reboot-tpl")
    assert (json.loads(described["document"]), described["timeoutConfig"]) == (json.loads(DOCUMENT), timeout)
    iot.create_job(jobId="from-tpl", targets=[thing], jobTemplateArn=made["jobTemplateArn"])
    assert json.loads(iot.get_job_document(jobId="from-tpl")["document"]) == json.loads(DOCUMENT)
    assert iot.describe_job(jobId="from-tpl")["job"]["timeoutConfig"] == timeout
    # The request's own members win over the template's.
    iot.create_job(jobId="from-tpl-2", targets=[thing], jobTemplateArn=made["jobTemplateArn"],
                   document='{"operation": "other"}', timeoutConfig={"inProgressTimeoutInMinutes": 5})
    assert json.loads(iot.get_job_document(jobId="from-tpl-2")["document"]) == {"operation": "other"}
    assert iot.describe_job(jobId="from-tpl-2")["job"]["timeoutConfig"] == {"inProgressTimeoutInMinutes": 5}
    copied = iot.create_job_template(jobTemplateId="copied-tpl", description="copy",
                                     jobArn=iot.describe_job(jobId="from-tpl-2")["job"]["jobArn"])
    assert json.loads(iot.describe_job_template(jobTemplateId="copied-tpl")["document"]) == {
        "operation": "other"}
    listed = {t["jobTemplateId"] for t in iot.list_job_templates()["jobTemplates"]}
    assert {"reboot-tpl", "copied-tpl"} <= listed
    iot.delete_job_template(jobTemplateId=copied["jobTemplateId"])
    assert _code(iot.describe_job_template, jobTemplateId="copied-tpl") == "ResourceNotFoundException"
    other_account = made["jobTemplateArn"].replace(srv.settings.account_id, "210987654321")
    assert _code(iot.create_job, jobId="from-elsewhere", targets=[thing],
                 jobTemplateArn=other_account) == "InvalidRequestException"


def test_list_thing_groups_for_thing_and_executions_for_thing_filters(srv: RunningServer) -> None:
    iot = srv.client("iot")
    _group(iot, "member-of-a", ["member"])
    iot.create_thing_group(thingGroupName="member-of-b")
    iot.add_thing_to_thing_group(thingGroupName="member-of-b", thingName="member")
    groups = iot.list_thing_groups_for_thing(thingName="member")["thingGroups"]
    assert [g["groupName"] for g in groups] == ["member-of-a", "member-of-b"]
    assert groups[0]["groupArn"].endswith(":thinggroup/member-of-a")
    assert _code(iot.list_thing_groups_for_thing, thingName="nobody") == "ResourceNotFoundException"
    arn = iot.describe_thing(thingName="member")["thingArn"]
    for job in ("member-job-1", "member-job-2"):
        iot.create_job(jobId=job, targets=[arn], document=DOCUMENT)
    iot.cancel_job(jobId="member-job-1")

    def listed(**filters: Any) -> list[tuple[str, str]]:
        rows = iot.list_job_executions_for_thing(thingName="member", **filters)["executionSummaries"]
        return [(r["jobId"], r["jobExecutionSummary"]["status"]) for r in rows]

    assert listed(status="QUEUED") == [("member-job-2", "QUEUED")]
    assert listed(jobId="member-job-1") == [("member-job-1", "CANCELED")]
    assert listed(jobId="member-job-1", status="QUEUED") == []


def test_delete_certificate_as_aws_and_keep_it_refused_by_the_broker(srv: RunningServer) -> None:
    iot = srv.client("iot")
    iot.create_thing(thingName="cert-holder")
    cert = iot.create_keys_and_certificate(setAsActive=True)
    cert_id, cert_arn = cert["certificateId"], cert["certificateArn"]
    iot.attach_thing_principal(thingName="cert-holder", principal=cert_arn)
    assert _code(iot.delete_certificate, certificateId=cert_id) == "CertificateStateException"
    iot.update_certificate(certificateId=cert_id, newStatus="INACTIVE")
    assert _code(iot.delete_certificate, certificateId=cert_id) == "DeleteConflictException"
    iot.detach_thing_principal(thingName="cert-holder", principal=cert_arn)
    serial = int(srv.server.registry.describe_certificate(cert_id).serial, 16)
    iot.delete_certificate(certificateId=cert_id)
    assert _code(iot.describe_certificate, certificateId=cert_id) == "ResourceNotFoundException"
    assert cert_id not in {c["certificateId"] for c in iot.list_certificates()["certificates"]}
    # Gone from the registry, still in the broker's revocation list.
    assert serial in srv.server.registry.revoked_serials()
