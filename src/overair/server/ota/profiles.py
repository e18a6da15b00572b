"""Each thing's device profile (profile_config.py), read from the registry, and what it
changes: the job document a thing receives, and what CreateOTAUpdate checks.

The document an OTA job stores (and GetJobDocument returns) is AWS's: `afr_ota` only.
What only overair agents read (the signer chain, under the top-level `overair` key) is
kept in the job's configuration (`OVERAIR_EXTENSION`) and added when the document is
delivered to a thing whose profile takes it (`tailor`, composed into the job service's
document renderer). A FreeRTOS device never receives it, so it costs that device
nothing (issue 13: a chain with two intermediates pushed the notify-next message past
the demo's 4,224-byte buffer and the device never saw the job).

`largest_job_message` gives the size of the largest job message a thing receives for a document (the
`$next/get` answer after its reboot, as the demo sees it on notify-next), so that
CreateOTAUpdate can warn before a rollout strands devices.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session, object_session

from overair.core import jobs_wire as wire
from overair.core import topics
from overair.core.jobstates import ExecStatus
from overair.core.mqttsize import publish_packet_size
from overair.server.ota.profile_config import (
    PROFILE_ATTRIBUTE,
    DeviceProfile,
    DeviceProfileConfig,
    Resolution,
)
from overair.server.storage.db import Database
from overair.server.storage.schema import Job, Thing, ThingGroupMember

log = logging.getLogger("overair.ota")
# Job config key: the `overair` extension of an OTA job's document, for overair agents.
OVERAIR_EXTENSION = "overair_extension"
# Job config key of the file descriptions deployment metadata binds (server/ota/deployment.py).
DEPLOYMENT_FILES = "overair:deployment_files"
DocumentRenderer = Callable[[Job, str], dict[str, Any]]
# Signs deployment metadata for one delivery (server/ota/deployment.py); None: nothing to sign.
DeploymentSigning = Callable[[Job, str, dict[str, Any]], dict[str, Any] | None]
_CHUNK = 500  # things per registry query
# The largest job message a FreeRTOS device receives for an update: the `$next/get`
# answer after its reboot, with the library's client token (at most 64 characters, as
# AWS allows), the self-test status details it stored before rebooting, and room for
# 10-digit times and 5-digit version numbers.
_TOKEN = "9" * 64
_SELF_TEST_DETAILS = {"self_test": "ready", "updatedBy": "0xffffffff"}
_WIDE_NUMBER = 99_999
_WIDE_TIME = 9_999_999_999
_QOS = 1  # job messages are QoS 1 (gateway/device_service.py)
# What a profile is resolved from, for a chunk of things. Built once (expanding IN): a
# statement built and compiled per chunk was a third of resolving 10,000 things.
# Only the one attribute that names a profile is read, as JSON (NULL for most things):
# reading and decoding every thing's whole attributes was a sixth of notifying 10,000
# things (bench/fleet.py, py-spy over the fan-out).
_THINGS = (select(Thing.name, Thing.attributes[PROFILE_ATTRIBUTE], Thing.thing_type_name)
           .where(Thing.name.in_(bindparam("things", expanding=True))))
_MEMBERSHIPS = (select(ThingGroupMember.thing_name, ThingGroupMember.group_name)
                .where(ThingGroupMember.thing_name.in_(bindparam("things", expanding=True))))


class DeviceProfiles:
    def __init__(self, db: Database, config: DeviceProfileConfig) -> None:
        self._db = db
        self.config = config
        # Set by the app: signed deployment metadata for overair agents (F1 F2).
        self.sign_deployment: DeploymentSigning | None = None

    def resolve(self, things: Sequence[str]) -> dict[str, Resolution]:
        """Each existing thing's profile (things that do not exist are left out)."""
        with self._db.reading() as s:
            return self._resolve_in(s, things)

    def _resolve_in(self, s: Session, things: Sequence[str]) -> dict[str, Resolution]:
        found: dict[str, Resolution] = {}
        for i in range(0, len(things), _CHUNK):
            chunk = list(things[i:i + _CHUNK])
            rows = s.execute(_THINGS, {"things": chunk}).all()
            groups: dict[str, list[str]] = {}
            if self.config.groups:  # no group rule: memberships choose nothing
                for thing, group in s.execute(_MEMBERSHIPS, {"things": chunk}):
                    groups.setdefault(thing, []).append(group)
            for name, named, thing_type in rows:
                attributes = {} if named is None else {PROFILE_ATTRIBUTE: named}
                found[name] = self.config.resolve(name, attributes, thing_type, groups.get(name, ()))
        return found

    def prefetch(self, s: Session, things: Sequence[str]) -> None:
        """Resolve many things' profiles at once into this session's memo, so that
        rendering each one's document in the session costs no query (notify-next to a
        job's whole target list: two queries per thing were most of its time). The memo
        dies with the session, so it never outlives the snapshot it was read from."""
        found = self._resolve_in(s, things)
        s.info.setdefault(_MEMO, {}).update({thing: found.get(thing) for thing in things})

    def _profile_in(self, s: Session, thing: str) -> DeviceProfile:
        memo: dict[str, Resolution | None] = s.info.get(_MEMO, {})
        resolution = memo[thing] if thing in memo else self._resolve_in(s, [thing]).get(thing)
        return resolution.profile if resolution else self.config.profiles[self.config.default]

    def tailor(self, job: Job, thing: str, document: dict[str, Any]) -> dict[str, Any]:
        """The document as `thing` receives it: with the `overair` extension if the job
        has one and the thing's profile takes it. The job service renders inside its own
        transaction (the job was loaded there): the lookup runs in that one, so a
        delivery never holds two database connections at once."""
        extension = job.config.get(OVERAIR_EXTENSION)
        signs = self.sign_deployment is not None and DEPLOYMENT_FILES in job.config
        if not extension and not signs:
            return document
        session = object_session(job)
        if session is not None:
            profile = self._profile_in(session, thing)
        else:
            with self._db.reading() as s:
                profile = self._profile_in(s, thing)
        if not profile.overair_extension:
            return document
        signed = self.sign_deployment(job, thing, document) if self.sign_deployment is not None else None
        merged = {**(extension or {}), **({"deployment": signed} if signed is not None else {})}
        return {**document, "overair": merged} if merged else document

    def takes_extension(self, job: Job, thing: str) -> bool:
        """Whether `thing`'s profile takes overair's extensions (an overair agent), looked
        up in the job's session as `tailor` does."""
        session = object_session(job)
        if session is not None:
            return self._profile_in(session, thing).overair_extension
        with self._db.reading() as s:
            return self._profile_in(s, thing).overair_extension

    def refusal(self, job: Job, thing: str) -> str | None:
        """Why `thing` cannot take OTA job `job` (a file larger than its profile takes),
        None if it can or the job is not an OTA job. The check CreateOTAUpdate makes of its
        targets, made again for a thing that joins a CONTINUOUS job's group later."""
        sizes = [f.get("filesize") for f in _ota_files(job.document)]
        largest = max((n for n in sizes if isinstance(n, int) and not isinstance(n, bool)), default=0)
        if largest == 0:
            return None
        session = object_session(job)
        if session is not None:
            profile = self._profile_in(session, thing)
        else:
            with self._db.reading() as s:
                profile = self._profile_in(s, thing)
        if largest <= profile.max_file_bytes:
            return None
        return (f"its file of {largest} bytes is larger than {profile.describe()} takes (a FreeRTOS device "
                "ignores such a file; give the thing a device profile that takes it)")

    def renderer(self, inner: DocumentRenderer) -> DocumentRenderer:
        """`inner` (fresh pre-signed URLs: delivery/http_download.py), then `tailor`."""
        def render(job: Job, thing: str) -> dict[str, Any]:
            return self.tailor(job, thing, inner(job, thing))

        return render


# Session.info key of `prefetch`'s memo.
_MEMO = "overair.profile_resolutions"


def _ota_files(document: Any) -> list[dict[str, Any]]:
    ota = document.get("afr_ota") if isinstance(document, dict) else None
    files = ota.get("files") if isinstance(ota, dict) else None
    return [f for f in files if isinstance(f, dict)] if isinstance(files, list) else []


def largest_job_message(job_id: str, thing: str, document: dict[str, Any]) -> int:
    """Bytes of the largest MQTT packet with this job document that `thing` receives
    (see `_TOKEN`): what must fit the device's receive buffer."""
    execution = wire.ExecutionView(
        job_id=job_id, thing_name=thing, status=ExecStatus.IN_PROGRESS,
        status_details=dict(_SELF_TEST_DETAILS), queued_at=_WIDE_TIME, started_at=_WIDE_TIME,
        last_updated_at=_WIDE_TIME, version_number=_WIDE_NUMBER, execution_number=_WIDE_NUMBER,
        job_document=document)
    payload = wire.encode(wire.execution_reply(execution, _TOKEN, _WIDE_TIME))
    # AWS answers on `$next/get/accepted` (the demo takes it there too); overair also
    # on notify-next, a shorter topic: count the longer one.
    accepted = topics.jobs_reply_topic(f"{topics.jobs_prefix(thing)}/{topics.NEXT}/get", accepted=True)
    return publish_packet_size(max(accepted, topics.notify_next_topic(thing), key=len), len(payload), _QOS)
