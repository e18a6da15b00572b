"""The listings converted to keyset pages after the registry's (issue 20, item 3):
ListThingGroups (with a name prefix), ListThingGroupsForThing, ListSigningJobs (with its
filters), ListPackages, ListPackageVersions, ListJobTemplates and ListNamedShadowsForThing
return every row exactly once, in order, through their own parameter names; each request
deep in a listing loads one page of rows (counted with SQLAlchemy's ORM load events, as
test_registry_paging.py does, or for a listing of names, the rows its SELECTs return),
not every row before it; a forged token is refused."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest
from botocore.exceptions import ClientError
from sqlalchemy import insert

from overair.server.storage.schema import (
    JobTemplate,
    SigningJob,
    SoftwarePackage,
    SoftwarePackageVersion,
    Thing,
    ThingGroup,
    ThingGroupMember,
    ThingShadow,
)
from tests.row_counting import loads, returned
from tests.server_harness import RunningServer

ROWS = 1_050
PAGE = 100
SIGNER_PAGE = 25  # ListSigningJobs' maxResults is at most 25 (the signer model)
THING = "lister"


@pytest.fixture(scope="module")
def rows(srv: RunningServer) -> RunningServer:
    """ROWS of each listing, written directly (the API calls would take minutes); creation
    times tie in sevens, so the (time, id) keys are exercised on ties."""
    settings = srv.settings
    now = time.time()
    srv.client("iot").create_thing(thingName=THING)
    groups = [f"grp-{i:05d}" for i in range(ROWS)]
    with srv.server.db.session() as s:
        s.execute(insert(ThingGroup), [
            {"name": g, "group_id": uuid.uuid4().hex, "arn": settings.arn("iot", f"thinggroup/{g}"),
             "created_at": now} for g in groups])
        # A thing is in at most 10 static groups through the API (AWS's quota); the listing
        # must not depend on that to stay cheap.
        s.execute(insert(ThingGroupMember), [{"group_name": g, "thing_name": THING, "added_at": now}
                                             for g in groups])
        s.execute(insert(SigningJob), [
            {"job_id": f"sj-{i:05d}", "profile_name": "p", "source": {"s3": {}}, "destination": {"s3": {}},
             "status": "Succeeded" if i % 2 else "Failed", "created_at": now + i // 7,
             "platform_id": "AmazonFreeRTOS-Default", "revoked_at": now if i % 5 == 0 else None}
            for i in range(ROWS)])
        s.execute(insert(SoftwarePackage), [
            {"name": f"pkg-{i:05d}", "arn": settings.arn("iot", f"package/pkg-{i:05d}"), "created_at": now,
             "updated_at": now} for i in range(ROWS)])
        s.execute(insert(SoftwarePackageVersion), [
            {"package": "pkg-00000", "version": f"{i}.0.0",
             "arn": settings.arn("iot", f"package/pkg-00000/version/{i}.0.0"), "status": "DRAFT",
             "created_at": now + i // 7, "updated_at": now} for i in range(ROWS)])
        s.execute(insert(JobTemplate), [
            {"template_id": f"tpl-{i:05d}", "arn": settings.arn("iot", f"jobtemplate/tpl-{i:05d}"),
             "document": {}, "created_at": now + i // 7} for i in range(ROWS)])
        s.execute(insert(ThingShadow), [
            {"thing_name": THING, "shadow_name": f"sh-{i:05d}", "version": 1, "present": i % 3 != 0,
             "updated_at": now} for i in range(ROWS)])
    return srv


def walk(call: Callable[..., dict[str, Any]], key: str, model: type | None, *, size_key: str = "maxResults",
         token_in: str = "nextToken", token_out: str = "nextToken", size: int = PAGE,
         counter: Callable[[Any], AbstractContextManager[list[int]]] = loads,
         **params: object) -> tuple[list[Any], list[int]]:
    """Every item of a listing, page by page, and the `model` rows each request loaded."""
    items: list[Any] = []
    counts: list[int] = []
    token = None
    while True:
        with counter(model or Thing) as loaded:
            page = call(**params, **{size_key: size}, **({token_in: token} if token else {}))
        items.extend(page[key])
        counts.append(loaded[0])
        token = page.get(token_out)
        if not token:
            return items, counts


def test_thing_groups_and_a_things_groups(rows: RunningServer) -> None:
    iot = rows.client("iot")
    groups, counts = walk(iot.list_thing_groups, "thingGroups", ThingGroup)
    assert [g["groupName"] for g in groups if g["groupName"].startswith("grp-")] == \
        [f"grp-{i:05d}" for i in range(ROWS)]
    assert max(counts) <= PAGE + 1, counts  # the eleventh page costs what the first does
    prefixed, _ = walk(iot.list_thing_groups, "thingGroups", None, namePrefixFilter="grp-0099")
    assert [g["groupName"] for g in prefixed] == [f"grp-0099{i}" for i in range(10)]
    mine, counts = walk(iot.list_thing_groups_for_thing, "thingGroups", ThingGroup, thingName=THING)
    assert [g["groupName"] for g in mine] == [f"grp-{i:05d}" for i in range(ROWS)]
    assert max(counts) <= PAGE + 1, counts
    assert len(counts) == -(-ROWS // PAGE)


def test_signing_jobs_with_and_without_filters(rows: RunningServer) -> None:
    signer = rows.client("signer")
    jobs, counts = walk(signer.list_signing_jobs, "jobs", SigningJob, size=SIGNER_PAGE)
    ids = [j["jobId"] for j in jobs if j["jobId"].startswith("sj-")]
    assert ids == [f"sj-{i:05d}" for i in range(ROWS)]
    assert max(counts) <= SIGNER_PAGE + 1, counts
    revoked, counts = walk(signer.list_signing_jobs, "jobs", SigningJob, size=SIGNER_PAGE, status="Failed",
                           isRevoked=True)
    assert [j["jobId"] for j in revoked] == [f"sj-{i:05d}" for i in range(0, ROWS, 10)]
    assert max(counts) <= SIGNER_PAGE + 1, counts
    other, _ = walk(signer.list_signing_jobs, "jobs", None, size=SIGNER_PAGE,
                    platformId="AWSIoTDeviceManagement-SHA256-ECDSA")
    assert other == []


def test_packages_versions_and_job_templates(rows: RunningServer) -> None:
    iot = rows.client("iot")
    packages, counts = walk(iot.list_packages, "packageSummaries", SoftwarePackage)
    assert [p["packageName"] for p in packages if p["packageName"].startswith("pkg-")] == \
        [f"pkg-{i:05d}" for i in range(ROWS)]
    assert max(counts) <= PAGE + 1, counts
    versions, counts = walk(iot.list_package_versions, "packageVersionSummaries", SoftwarePackageVersion,
                            packageName="pkg-00000")
    # by creation time, then by name within a tie
    assert [v["versionName"] for v in versions] == sorted((f"{i}.0.0" for i in range(ROWS)),
                                                          key=lambda v: (int(v.split(".")[0]) // 7, v))
    assert max(counts) <= PAGE + 1, counts
    assert walk(iot.list_package_versions, "packageVersionSummaries", None, packageName="pkg-00000",
                status="PUBLISHED")[0] == []
    templates, counts = walk(iot.list_job_templates, "jobTemplates", JobTemplate)
    assert [t["jobTemplateId"] for t in templates if t["jobTemplateId"].startswith("tpl-")] == \
        [f"tpl-{i:05d}" for i in range(ROWS)]
    assert max(counts) <= PAGE + 1, counts


def test_named_shadows_page_by_name(rows: RunningServer) -> None:
    names, counts = walk(rows.client("iot-data").list_named_shadows_for_thing, "results", ThingShadow,
                         size_key="pageSize", counter=returned, thingName=THING)
    assert names == [f"sh-{i:05d}" for i in range(ROWS) if i % 3 != 0]  # deleted shadows are not listed
    assert max(counts) <= PAGE + 1, counts


@pytest.mark.parametrize("token", ["x", "MTA=", "azE6WyJhIl0", "azE6WyJhIiwgImIiXQ=="])
def test_a_forged_token_is_refused(rows: RunningServer, token: str) -> None:
    iot, signer = rows.client("iot"), rows.client("signer")
    calls: list[Callable[[], Any]] = [
        lambda: iot.list_thing_groups(nextToken=token),
        lambda: iot.list_thing_groups_for_thing(thingName=THING, nextToken=token),
        lambda: iot.list_packages(nextToken=token),
        lambda: iot.list_package_versions(packageName="pkg-00000", nextToken=token),
        lambda: iot.list_job_templates(nextToken=token),
        lambda: signer.list_signing_jobs(nextToken=token),
    ]
    for call in calls:
        with pytest.raises(ClientError) as refused:
            call()
        assert refused.value.response["Error"]["Code"] == "InvalidRequestException", refused.value.response
