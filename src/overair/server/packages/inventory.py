"""What each thing runs, per package, and since when (issue 15, item 2).

FreeRTOS devices report nothing of the kind, so the server records it: when an OTA
job's execution on a thing ends SUCCEEDED, the image version that job installs
(jobs/service.py IMAGE_VERSION) becomes what the thing runs, from that moment. The row
is written in the same transaction as the execution's status, so the record and the
execution cannot disagree after a crash. A repeated SUCCEEDED of the same version
(e.g. a retry) keeps the original `since`.

Operators read it the AWS way, from the thing's reserved `$package` named shadow
(Software Package Catalog): `reported.<package>.version`, its metadata timestamp being
since when (server/packages/shadow_sync.py writes it after the commit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from overair.server.storage.db import Database
from overair.server.storage.schema import InstalledSoftware

# The package an OTA update's image belongs to unless it names one (AWS's Software
# Package Catalog has no default; a FreeRTOS image is the device's firmware).
DEFAULT_PACKAGE = "firmware"


@dataclass(frozen=True, slots=True)
class Installed:
    thing: str
    package: str
    version: str
    since: float
    job_id: str
    catalog: bool = False  # a Software Package Catalog version (destinationPackageVersions)


def record_installed(s: Any, thing: str, package: str, version: str, job_id: str,
                     now: float, *, catalog: bool = False,
                     known: dict[tuple[str, str], InstalledSoftware] | None = None) -> Installed | None:
    """In the caller's transaction: `thing` runs `version` of `package` from `now`.
    None when it already ran exactly that version (nothing changed; `since` stays).
    `known`: every row of the thing, read by the caller (`read_installed`), kept up to date here."""
    row = s.get(InstalledSoftware, (thing, package)) if known is None else known.get((thing, package))
    if row is None:
        row = InstalledSoftware(thing_name=thing, package=package, version=version, since=now, job_id=job_id)
        s.add(row)
        if known is not None:
            known[(thing, package)] = row
    elif row.version != version:
        row.version, row.since, row.job_id = version, now, job_id
    else:
        return None
    return Installed(thing, package, version, now, job_id, catalog)


def read_installed(s: Any, things: list[str]) -> dict[tuple[str, str], InstalledSoftware]:
    """Every (thing, package) row of `things`, in one statement (for `record_installed`)."""
    if not things:
        return {}
    rows = s.scalars(select(InstalledSoftware).where(InstalledSoftware.thing_name.in_(things)))
    return {(row.thing_name, row.package): row for row in rows}


class Inventory:
    def __init__(self, db: Database) -> None:
        self._db = db

    def running(self, thing: str) -> list[Installed]:
        with self._db.reading() as s:
            rows = s.scalars(select(InstalledSoftware).where(InstalledSoftware.thing_name == thing)
                             .order_by(InstalledSoftware.package))
            return [Installed(r.thing_name, r.package, r.version, r.since, r.job_id) for r in rows]

    def running_versions(self, things: list[str], package: str = DEFAULT_PACKAGE) -> dict[str, str]:
        """thing -> the version of `package` it runs, for the things that have one."""
        out: dict[str, str] = {}
        with self._db.reading() as s:
            for start in range(0, len(things), 500):
                part = things[start:start + 500]
                query = select(InstalledSoftware.thing_name, InstalledSoftware.version).where(
                    InstalledSoftware.thing_name.in_(part), InstalledSoftware.package == package)
                out.update(s.execute(query).tuples().all())
        return out
