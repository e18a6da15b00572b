"""Registry listings page in the database (issue 20, item 3): ListThings (with and without
an attribute filter), ListThingsInThingGroup, ListThingPrincipals and ListCertificates
(both orders, ties on the creation time) return every row exactly once through boto3's
paginators, and each request loads about one page of rows however deep it is in the
listing (counted with SQLAlchemy's ORM load events), not every row before it."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError
from sqlalchemy import insert

from overair.server.storage.schema import (
    DeviceCertificate,
    JobExecution,
    Thing,
    ThingGroupMember,
    ThingPrincipal,
)
from tests.row_counting import loads
from tests.server_harness import RunningServer

THINGS = 1_050
PAGE = 100


@pytest.fixture(scope="module")
def fleet(srv: RunningServer) -> RunningServer:
    settings = srv.settings
    now = time.time()
    srv.client("iot").create_thing_group(thingGroupName="paged")
    things = [
        {
            "name": f"page-{i:05d}",
            "thing_id": uuid.uuid4().hex,
            "arn": settings.arn("iot", f"thing/page-{i:05d}"),
            "thing_type_name": None,
            "attributes": {"tenth": "yes"} if i % 10 == 0 else {},
            "version": 1,
            "created_at": now,
        }
        for i in range(THINGS)
    ]
    certs = [
        {
            "certificate_id": f"{i:064x}",
            "arn": settings.arn("iot", f"cert/{i:064x}"),
            "pem": "",
            "serial": f"{i:x}",
            "status": "INACTIVE",
            "created_at": now + (i // 7),  # ties of 7
            "last_modified_at": now,
        }
        for i in range(THINGS)
    ]
    with srv.server.db.session() as s:
        s.execute(insert(Thing), things)
        s.execute(
            insert(ThingGroupMember),
            [{"group_name": "paged", "thing_name": t["name"], "added_at": now} for t in things],
        )
        s.execute(insert(DeviceCertificate), certs)
        s.execute(
            insert(ThingPrincipal), [{"thing_name": "page-00000", "principal": c["arn"]} for c in certs]
        )
    return srv


def all_pages(client: Any, operation: str, key: str, **params: object) -> list[Any]:
    paginator = client.get_paginator(operation)
    return [item for page in paginator.paginate(**params) for item in page[key]]


def test_every_thing_is_listed_once_in_order_with_and_without_a_filter(fleet: RunningServer) -> None:
    iot = fleet.client("iot")
    names = [
        t["thingName"]
        for t in all_pages(iot, "list_things", "things", PaginationConfig={"PageSize": PAGE})
        if t["thingName"].startswith("page-")
    ]
    assert names == [f"page-{i:05d}" for i in range(THINGS)]
    tenth = [
        t["thingName"]
        for t in all_pages(
            iot,
            "list_things",
            "things",
            attributeName="tenth",
            attributeValue="yes",
            PaginationConfig={"PageSize": 7},
        )
    ]
    assert tenth == [f"page-{i:05d}" for i in range(0, THINGS, 10)]


def test_group_members_principals_and_certificates_are_listed_once(fleet: RunningServer) -> None:
    iot = fleet.client("iot")
    members = all_pages(
        iot,
        "list_things_in_thing_group",
        "things",
        thingGroupName="paged",
        PaginationConfig={"PageSize": PAGE},
    )
    assert members == [f"page-{i:05d}" for i in range(THINGS)]
    principals = all_pages(
        iot,
        "list_thing_principals",
        "principals",
        thingName="page-00000",
        PaginationConfig={"PageSize": PAGE},
    )
    assert len(principals) == THINGS
    assert len(set(principals)) == THINGS
    for ascending in (True, False):
        certs = [
            c
            for c in all_pages(
                iot,
                "list_certificates",
                "certificates",
                ascendingOrder=ascending,
                PaginationConfig={"PageSize": 33},
            )
            if c["status"] == "INACTIVE"
        ]
        ids = [c["certificateId"] for c in certs]
        assert len(ids) == THINGS
        assert len(set(ids)) == THINGS
        times = [c["creationDate"] for c in certs]
        assert times == sorted(times, reverse=not ascending)


def test_a_page_deep_in_the_listing_loads_one_page_of_rows(fleet: RunningServer) -> None:
    iot = fleet.client("iot")
    token = None
    counts = []
    for _ in range(THINGS // PAGE):
        with loads(Thing) as loaded:
            page = iot.list_things(maxResults=PAGE, **({"nextToken": token} if token else {}))
        counts.append(loaded[0])
        token = page.get("nextToken")
    assert max(counts) <= PAGE + 1, counts  # the tenth page costs what the first does
    with loads(DeviceCertificate) as loaded:
        first = iot.list_certificates(pageSize=PAGE)
        iot.list_certificates(pageSize=PAGE, marker=first["nextMarker"])
    assert loaded[0] <= 2 * (PAGE + 1)


@pytest.mark.parametrize("token", ["x", "AAAA", "azE6WyJhIl0", "azE6eyJhIjogMX0=", "MTA=", "\u00e9"])
def test_a_token_that_is_not_one_of_ours_is_refused(fleet: RunningServer, token: str) -> None:
    with pytest.raises(ClientError) as refused:
        fleet.client("iot").list_things(nextToken=token)
    assert refused.value.response["Error"]["Code"] == "InvalidRequestException"


def test_a_rollouts_executions_and_the_jobs_page_in_the_database(fleet: RunningServer) -> None:
    iot = fleet.client("iot")
    group = iot.describe_thing_group(thingGroupName="paged")["thingGroupArn"]
    iot.create_job(jobId="paged-job", targets=[group], document='{"step": 1}')
    for n in range(12):
        iot.create_job(
            jobId=f"paged-small-{n}",
            targets=[iot.describe_thing(thingName="page-00001")["thingArn"]],
            document='{"step": 2}',
        )
    things = [
        e["thingArn"].rpartition("/")[2]
        for e in all_pages(
            iot,
            "list_job_executions_for_job",
            "executionSummaries",
            jobId="paged-job",
            PaginationConfig={"PageSize": PAGE},
        )
    ]
    assert things == [f"page-{i:05d}" for i in range(THINGS)]
    token = None
    counts = []
    for _ in range(THINGS // PAGE):
        with loads(JobExecution) as loaded:
            page = iot.list_job_executions_for_job(
                jobId="paged-job", maxResults=PAGE, **({"nextToken": token} if token else {})
            )
        counts.append(loaded[0])
        token = page.get("nextToken")
    assert max(counts) <= PAGE + 1, counts
    jobs = [j["jobId"] for j in all_pages(iot, "list_jobs", "jobs", PaginationConfig={"PageSize": 5})]
    assert {"paged-job", *(f"paged-small-{n}" for n in range(12))} <= set(jobs)
    assert len(jobs) == len(set(jobs))
    mine = [
        e["jobId"]
        for e in all_pages(
            iot,
            "list_job_executions_for_thing",
            "executionSummaries",
            thingName="page-00001",
            PaginationConfig={"PageSize": 4},
        )
    ]
    assert sorted(mine) == sorted(["paged-job", *(f"paged-small-{n}" for n in range(12))])


def test_ota_updates_and_streams_page_in_the_database(fleet: RunningServer) -> None:
    iot = fleet.client("iot")
    fleet.client("s3").put_object(Bucket="firmware", Key="paged.bin", Body=b"firmware")
    for n in range(7):
        iot.create_stream(
            streamId=f"paged-stream-{n}",
            files=[{"fileId": 0, "s3Location": {"bucket": "firmware", "key": "paged.bin"}}],
            roleArn=f"arn:aws:iam::{fleet.settings.account_id}:role/x",
        )
    streams = [
        s["streamId"] for s in all_pages(iot, "list_streams", "streams", PaginationConfig={"PageSize": 2})
    ]
    assert [s for s in streams if s.startswith("paged-stream-")] == [f"paged-stream-{n}" for n in range(7)]
    assert len(streams) == len(set(streams))
    updates = all_pages(iot, "list_ota_updates", "otaUpdates", PaginationConfig={"PageSize": 2})
    assert len(updates) == len({u["otaUpdateId"] for u in updates})
