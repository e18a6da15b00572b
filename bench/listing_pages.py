"""Listings that page in the database (issue 20, item 3), at fleet size: for each listing
converted to keyset pages after ListThings, the time of a page through the API (boto3,
SigV4, IAM, audit) with 100 rows, and of a page at the end of the listing (its token made
for the last rows' key) with N rows.

    .venv/bin/python -m bench.listing_pages [--rows 100000]

The limit each is compared to, in the same run: the same listing's first page with 100
rows (target: a deep page with N rows within 2x of it). Rows are inserted directly into
the database (set-up, not measured): thing groups (all of one thing's), signing jobs,
packages, one package's versions, job templates, one thing's named shadows.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import insert
from tests.server_harness import RunningServer, running_server

from overair.server.api.paging import key_token
from overair.server.storage.schema import (
    JobTemplate,
    SigningJob,
    SoftwarePackage,
    SoftwarePackageVersion,
    ThingGroup,
    ThingGroupMember,
    ThingShadow,
)

THING = "lister"
CHUNK = 5000
NOW = time.time()


@dataclass(frozen=True)
class Listing:
    name: str
    page: int
    call: Callable[[dict[str, Any], dict[str, Any]], object]  # (clients by service, parameters)
    deep_token: Callable[[int], str]  # rows -> the token of the last page


def _group(i: int) -> str:
    return f"grp-{i:07d}"


LISTINGS = [
    Listing(
        "ListThingGroups",
        100,
        lambda c, p: c["iot"].list_thing_groups(maxResults=100, **p),
        lambda n: key_token(_group(n - 102)),
    ),
    Listing(
        "ListThingGroupsForThing",
        100,
        lambda c, p: c["iot"].list_thing_groups_for_thing(thingName=THING, maxResults=100, **p),
        lambda n: key_token(_group(n - 102)),
    ),
    Listing(
        "ListSigningJobs",
        25,
        lambda c, p: c["signer"].list_signing_jobs(maxResults=25, **p),
        lambda n: key_token(repr(NOW + n - 27), f"sj-{n - 27:07d}"),
    ),
    Listing(
        "ListPackages",
        100,
        lambda c, p: c["iot"].list_packages(maxResults=100, **p),
        lambda n: key_token(f"pkg-{n - 102:07d}"),
    ),
    Listing(
        "ListPackageVersions",
        100,
        lambda c, p: c["iot"].list_package_versions(packageName="pkg-0000000", maxResults=100, **p),
        lambda n: key_token(repr(NOW + n - 102), f"{n - 102}.0.0"),
    ),
    Listing(
        "ListJobTemplates",
        100,
        lambda c, p: c["iot"].list_job_templates(maxResults=100, **p),
        lambda n: key_token(repr(NOW + n - 102), f"tpl-{n - 102:07d}"),
    ),
    Listing(
        "ListNamedShadowsForThing",
        100,
        lambda c, p: c["iot-data"].list_named_shadows_for_thing(thingName=THING, pageSize=100, **p),
        lambda n: key_token(f"sh-{n - 102:07d}"),
    ),
]


def insert_rows(srv: RunningServer, start: int, stop: int) -> None:
    settings = srv.settings
    for base in range(start, stop, CHUNK):
        ids = range(base, min(stop, base + CHUNK))
        with srv.server.db.session() as s:
            s.execute(
                insert(ThingGroup),
                [
                    {
                        "name": _group(i),
                        "group_id": uuid.uuid4().hex,
                        "arn": settings.arn("iot", f"thinggroup/{_group(i)}"),
                        "created_at": NOW,
                    }
                    for i in ids
                ],
            )
            s.execute(
                insert(ThingGroupMember),
                [{"group_name": _group(i), "thing_name": THING, "added_at": NOW} for i in ids],
            )
            s.execute(
                insert(SigningJob),
                [
                    {
                        "job_id": f"sj-{i:07d}",
                        "profile_name": "p",
                        "source": {"s3": {}},
                        "destination": {"s3": {}},
                        "status": "Succeeded",
                        "created_at": NOW + i,
                    }
                    for i in ids
                ],
            )
            s.execute(
                insert(SoftwarePackage),
                [
                    {
                        "name": f"pkg-{i:07d}",
                        "arn": settings.arn("iot", f"package/pkg-{i:07d}"),
                        "created_at": NOW,
                        "updated_at": NOW,
                    }
                    for i in ids
                ],
            )
            s.execute(
                insert(SoftwarePackageVersion),
                [
                    {
                        "package": "pkg-0000000",
                        "version": f"{i}.0.0",
                        "status": "DRAFT",
                        "created_at": NOW + i,
                        "updated_at": NOW,
                        "arn": settings.arn("iot", f"package/pkg-0000000/version/{i}.0.0"),
                    }
                    for i in ids
                ],
            )
            s.execute(
                insert(JobTemplate),
                [
                    {
                        "template_id": f"tpl-{i:07d}",
                        "arn": settings.arn("iot", f"jobtemplate/tpl-{i:07d}"),
                        "document": {},
                        "created_at": NOW + i,
                    }
                    for i in ids
                ],
            )
            s.execute(
                insert(ThingShadow),
                [
                    {
                        "thing_name": THING,
                        "shadow_name": f"sh-{i:07d}",
                        "version": 1,
                        "present": True,
                        "updated_at": NOW,
                    }
                    for i in ids
                ],
            )


def median_ms(action: Callable[[], object], runs: int = 20) -> float:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="overair-bench-") as tmp,
        running_server(Path(tmp) / "data") as srv,
    ):
        # One client each, made once: a page's time is the server's, not boto3's client set-up.
        clients = {service: srv.client(service) for service in ("iot", "signer", "iot-data")}
        clients["iot"].create_thing(thingName=THING)
        insert_rows(srv, 0, 100)
        small = {
            listing.name: median_ms(functools.partial(listing.call, clients, {})) for listing in LISTINGS
        }
        started = time.perf_counter()
        insert_rows(srv, 100, args.rows)
        print(f"(set-up: {args.rows} rows of each listing inserted in {time.perf_counter() - started:.1f} s)")
        deep_header = f"last page, {args.rows} rows"
        print(f"\n{'listing':<26} {'first page, 100 rows':>22} {deep_header:>26} {'ratio':>7}")
        for listing in LISTINGS:
            token = {"nextToken": listing.deep_token(args.rows)}
            answer = listing.call(clients, token)
            assert isinstance(answer, dict)
            items = next(v for k, v in answer.items() if isinstance(v, list))
            if len(items) != listing.page or "nextToken" not in answer:
                raise SystemExit(f"{listing.name}: the deep page has {len(items)} items")
            deep = median_ms(functools.partial(listing.call, clients, token))
            first = small[listing.name]
            print(f"{listing.name:<26} {first:19.2f} ms {deep:23.2f} ms {deep / first:6.2f}x")
        print("(target: a deep page with N rows within 2x of the first page with 100 rows)")


if __name__ == "__main__":
    main()
